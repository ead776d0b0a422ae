// attention.cu — causal multi-head attention (grouped-query heads allowed) for prefill and for
// batched decode over a paged KV cache.
//
// Shared layouts:
// - qkv: f32 [n_tokens, qkv_stride], the fused projection output after RoPE: columns
//   [0, n_heads*head_dim) are q, then n_kv_heads*head_dim of k, then as many of v.
//   Query head h reads key/value head h / (n_heads / n_kv_heads); n_heads is a multiple of
//   n_kv_heads.
// - The paged KV cache of one layer: k_cache and v_cache, f16 [n_slots, n_kv_heads, head_dim],
//   where slot = block * block_size + offset. A sequence's block table lists its blocks in
//   order; its position p lives in slot block_table[p / block_size] * block_size + p % block_size.
// - out: f16 [n_tokens, n_heads * head_dim], the input of the output projection.
// - head_dim <= MAX_HEAD_DIM (256); launch the attention kernels with ATTN_THREADS (128)
//   threads, grid (tokens or sequences, n_heads).
//
// kv_cache_write(qkv, k_cache, v_cache, slots, n_tokens, n_heads, n_kv_heads, head_dim, qkv_stride)
//   Copies token t's k and v (rounded to f16) into slot slots[t]. Launch: grid (n_tokens), block 256.
//
// attention_prefill(qkv, out, seq_starts, token_seq, n_tokens, n_heads, n_kv_heads, head_dim,
//                   qkv_stride, scale)
//   Whole prompts packed one after another: sequence s owns tokens [seq_starts[s],
//   seq_starts[s+1]); token_seq[t] = s. Token t attends to the tokens of its own sequence up to
//   and including itself, reading k and v from qkv in f32. scale = 1/sqrt(head_dim) usually.
//
// paged_attention_decode(qkv, k_cache, v_cache, block_tables, context_lens, out, n_seqs, n_heads,
//                        n_kv_heads, head_dim, block_size, max_blocks, qkv_stride, scale)
//   One new token per sequence: row s of qkv is sequence s's token, whose k and v were already
//   written to the cache by kv_cache_write. It attends to cache positions [0, context_lens[s])
//   (the new token included). block_tables: u32 [n_seqs, max_blocks].
//
// Both attention kernels use one streaming softmax ("online softmax"): keys are visited in
// chunks of blockDim.x; each thread scores one key of the chunk, the block finds the chunk's
// maximum and sum, rescales its running output and adds the chunk's weighted values (each
// thread owns output elements d = threadIdx.x + k * blockDim.x).

#define MAX_HEAD_DIM 256
#define ATTN_THREADS 128
#define OUT_PER_THREAD (MAX_HEAD_DIM / ATTN_THREADS)

// Keys and values of one prompt, read from the fused QKV rows.
struct PromptKeys {
    const float* k;  // row 0's k head
    const float* v;
    u32 stride;
    __device__ float key(u32 j, u32 d) const { return k[(size_t)j * stride + d]; }
    __device__ float value(u32 j, u32 d) const { return v[(size_t)j * stride + d]; }
};

// Keys and values of one sequence, read from the paged cache.
struct PagedKeys {
    const f16* k;  // the cache, kv head already applied: slot s at k + s * slot_stride
    const f16* v;
    const u32* block_table;
    u32 block_size;
    u32 slot_stride;
    __device__ size_t slot(u32 j) const {
        return (size_t)block_table[j / block_size] * block_size + j % block_size;
    }
    __device__ float key(u32 j, u32 d) const { return f16_to_f32(k[slot(j) * slot_stride + d]); }
    __device__ float value(u32 j, u32 d) const { return f16_to_f32(v[slot(j) * slot_stride + d]); }
};

// out[0..head_dim) = softmax(q . K^T * scale) V over keys [0, n_keys).
template <class Keys>
__device__ void attend(const Keys& kv, u32 n_keys, const float* q, u32 head_dim, float scale, f16* out) {
    __shared__ float q_s[MAX_HEAD_DIM];
    __shared__ float p_s[ATTN_THREADS];
    __shared__ float scratch[32];
    for (u32 d = threadIdx.x; d < head_dim; d += blockDim.x) q_s[d] = q[d];
    __syncthreads();

    float m = NEG_INF;  // running maximum score
    float l = 0.0f;     // running sum of exp(score - m)
    float acc[OUT_PER_THREAD];
    for (u32 k = 0; k < OUT_PER_THREAD; ++k) acc[k] = 0.0f;

    for (u32 base = 0; base < n_keys; base += blockDim.x) {
        const u32 j = base + threadIdx.x;
        float s = NEG_INF;
        if (j < n_keys) {
            float dot = 0.0f;
            for (u32 d = 0; d < head_dim; ++d) dot += q_s[d] * kv.key(j, d);
            s = dot * scale;
        }
        // The chunk has at least one key (base < n_keys), so its maximum is finite.
        const float new_m = fmaxf(m, block_max(s, scratch));
        const float p = j < n_keys ? expf(s - new_m) : 0.0f;
        p_s[threadIdx.x] = p;
        const float chunk_sum = block_sum(p, scratch);  // its barriers publish p_s too
        const float correction = expf(m - new_m);        // 0 on the first chunk (m = -inf)
        l = l * correction + chunk_sum;
        const u32 count = min((u32)blockDim.x, n_keys - base);
        for (u32 k = 0; k < OUT_PER_THREAD; ++k) {
            const u32 d = threadIdx.x + k * blockDim.x;
            if (d >= head_dim) break;
            float a = acc[k] * correction;
            for (u32 i = 0; i < count; ++i) a += p_s[i] * kv.value(base + i, d);
            acc[k] = a;
        }
        m = new_m;
        __syncthreads();  // every thread is done with p_s before the next chunk writes it
    }
    const float inv = n_keys > 0 ? 1.0f / l : 0.0f;
    for (u32 k = 0; k < OUT_PER_THREAD; ++k) {
        const u32 d = threadIdx.x + k * blockDim.x;
        if (d < head_dim) out[d] = f32_to_f16(acc[k] * inv);
    }
}

extern "C" __global__ void kv_cache_write(const float* qkv, f16* k_cache, f16* v_cache, const u32* slots,
                                          u32 n_tokens, u32 n_heads, u32 n_kv_heads, u32 head_dim,
                                          u32 qkv_stride) {
    const u32 t = blockIdx.x;
    if (t >= n_tokens) return;
    const u32 width = n_kv_heads * head_dim;
    const float* k = qkv + (size_t)t * qkv_stride + (size_t)n_heads * head_dim;
    const float* v = k + width;
    const size_t dst = (size_t)slots[t] * width;
    for (u32 i = threadIdx.x; i < width; i += blockDim.x) {
        k_cache[dst + i] = f32_to_f16(k[i]);
        v_cache[dst + i] = f32_to_f16(v[i]);
    }
}

extern "C" __global__ void attention_prefill(const float* qkv, f16* out, const u32* seq_starts,
                                             const u32* token_seq, u32 n_tokens, u32 n_heads,
                                             u32 n_kv_heads, u32 head_dim, u32 qkv_stride, float scale) {
    const u32 t = blockIdx.x;
    const u32 h = blockIdx.y;
    if (t >= n_tokens || h >= n_heads || head_dim > MAX_HEAD_DIM) return;
    const u32 start = seq_starts[token_seq[t]];
    const u32 kv_head = h / (n_heads / n_kv_heads);
    const float* first = qkv + (size_t)start * qkv_stride;
    PromptKeys kv;
    kv.k = first + (size_t)n_heads * head_dim + (size_t)kv_head * head_dim;
    kv.v = kv.k + (size_t)n_kv_heads * head_dim;
    kv.stride = qkv_stride;
    const float* q = qkv + (size_t)t * qkv_stride + (size_t)h * head_dim;
    attend(kv, t - start + 1, q, head_dim, scale, out + (size_t)t * n_heads * head_dim + (size_t)h * head_dim);
}

extern "C" __global__ void paged_attention_decode(const float* qkv, const f16* k_cache, const f16* v_cache,
                                                  const u32* block_tables, const u32* context_lens, f16* out,
                                                  u32 n_seqs, u32 n_heads, u32 n_kv_heads, u32 head_dim,
                                                  u32 block_size, u32 max_blocks, u32 qkv_stride, float scale) {
    const u32 s = blockIdx.x;
    const u32 h = blockIdx.y;
    if (s >= n_seqs || h >= n_heads || head_dim > MAX_HEAD_DIM) return;
    const u32 kv_head = h / (n_heads / n_kv_heads);
    PagedKeys kv;
    kv.k = k_cache + (size_t)kv_head * head_dim;
    kv.v = v_cache + (size_t)kv_head * head_dim;
    kv.block_table = block_tables + (size_t)s * max_blocks;
    kv.block_size = block_size;
    kv.slot_stride = n_kv_heads * head_dim;
    const float* q = qkv + (size_t)s * qkv_stride + (size_t)h * head_dim;
    attend(kv, context_lens[s], q, head_dim, scale, out + (size_t)s * n_heads * head_dim + (size_t)h * head_dim);
}
