// sampling.cu — the next token of each sequence from its logits row.
//
// argmax_rows(logits, out, rows, vocab)
//   logits: f32 [rows, vocab]; out: u32 [rows]. The index of the largest logit, ties to the
//   lowest index (as the CPU's greedy decoding). NaN logits are never chosen.
//   Launch: grid (rows), block 256 (a power of two).
//
// top_p_sample(logits, uniforms, out, rows, vocab, inv_temperature, top_p)
//   logits: f32 [rows, vocab]; uniforms: f32 [rows], one draw in [0, 1) per row (the host
//   draws it from the sequence's seeded generator, so a sample does not depend on its batch);
//   out: u32 [rows].
//   p_i = softmax(logits * inv_temperature). The nucleus is {i : p_i >= tau}, tau the largest
//   threshold whose nucleus mass reaches top_p, found by 40 bisection steps on [0, p_max]
//   (within p_max * 2^-40 of the exact cut; ties at the cut are all kept). The token is the
//   first id, in id order, at which the nucleus' running mass exceeds uniform * mass.
//   Sorting is avoided: the CPU sampler draws in sorted order instead, so with the same
//   uniform the two may pick different tokens of the same distribution. Greedy decoding
//   (temperature 0) uses argmax_rows. top_p >= 1 keeps every token.
//   Launch: grid (rows), block SAMPLE_THREADS (256).

#define SAMPLE_THREADS 256

extern "C" __global__ void argmax_rows(const float* logits, u32* out, u32 rows, u32 vocab) {
    __shared__ float best_v[1024];
    __shared__ u32 best_i[1024];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const float* row = logits + (size_t)r * vocab;
    float bv = NEG_INF;
    u32 bi = 0xffffffffu;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
        const float v = row[c];
        if (v > bv) { bv = v; bi = c; }  // strided ascending: the first maximum of this thread
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (u32 half_n = blockDim.x / 2; half_n > 0; half_n /= 2) {
        if (threadIdx.x < half_n) {
            const float ov = best_v[threadIdx.x + half_n];
            const u32 oi = best_i[threadIdx.x + half_n];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = best_i[0] == 0xffffffffu ? 0u : best_i[0];
}

extern "C" __global__ void top_p_sample(const float* logits, const float* uniforms, u32* out, u32 rows,
                                        u32 vocab, float inv_temperature, float top_p) {
    __shared__ float scratch[32];
    __shared__ float prefix[SAMPLE_THREADS];
    __shared__ u32 chosen;
    __shared__ u32 last_thread;
    const u32 r = blockIdx.x;
    if (r >= rows || blockDim.x != SAMPLE_THREADS) return;
    const float* row = logits + (size_t)r * vocab;

    float m = NEG_INF;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, row[c]);
    m = block_max(m, scratch);
    float z = 0.0f;
    for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) z += expf((row[c] - m) * inv_temperature);
    const float inv_z = 1.0f / block_sum(z, scratch);
#define PROB(c) (expf((row[(c)] - m) * inv_temperature) * inv_z)

    // Bisection for tau: mass(lo) >= top_p holds throughout (mass(0) = 1).
    float lo = 0.0f;
    if (top_p < 1.0f) {
        float hi = inv_z;  // the largest probability (that of the maximum logit)
        for (int step = 0; step < 40; ++step) {
            const float mid = 0.5f * (lo + hi);
            float mass = 0.0f;
            for (u32 c = threadIdx.x; c < vocab; c += blockDim.x) {
                const float p = PROB(c);
                if (p >= mid) mass += p;
            }
            if (block_sum(mass, scratch) >= top_p) lo = mid; else hi = mid;
        }
    }
    const float tau = lo;

    // Each thread owns a contiguous run of ids; an exclusive scan of the runs' nucleus masses
    // finds the run holding the target, and its thread walks it.
    const u32 run = (vocab + blockDim.x - 1) / blockDim.x;
    const u32 begin = min(threadIdx.x * run, vocab);
    const u32 end = min(begin + run, vocab);
    float own = 0.0f;
    u32 last_kept = 0xffffffffu;
    for (u32 c = begin; c < end; ++c) {
        const float p = PROB(c);
        if (p >= tau) { own += p; last_kept = c; }
    }
    prefix[threadIdx.x] = own;
    if (threadIdx.x == 0) chosen = 0xffffffffu;
    __syncthreads();
    if (threadIdx.x == 0) {
        float running = 0.0f;
        for (u32 i = 0; i < blockDim.x; ++i) {
            const float o = prefix[i];
            prefix[i] = running;
            running += o;
        }
        scratch[0] = running;  // the nucleus mass
    }
    __syncthreads();
    const float total = scratch[0];
    const float target = uniforms[r] * total;
    const float before = prefix[threadIdx.x];
    if (own > 0.0f && target >= before && target < before + own) {
        float acc = before;
        u32 pick = last_kept;
        for (u32 c = begin; c < end; ++c) {
            const float p = PROB(c);
            if (p < tau) continue;
            acc += p;
            if (acc > target) { pick = c; break; }
        }
        atomicMin(&chosen, pick);
    }
    __syncthreads();
    // Rounding can leave the target at or past the total: take the last nucleus token, held
    // by the last thread whose run has nucleus mass.
    if (chosen == 0xffffffffu) {
        if (threadIdx.x == 0) last_thread = 0;
        __syncthreads();
        if (own > 0.0f) atomicMax(&last_thread, threadIdx.x);
        __syncthreads();
        if (own > 0.0f && threadIdx.x == last_thread) chosen = last_kept;
        __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = chosen == 0xffffffffu ? 0u : chosen;
#undef PROB
}
