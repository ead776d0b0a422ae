// softmax.cu — softmax over each row, in place, with a temperature.
//
// softmax_rows(x, rows, cols, inv_temperature)
//   x: f32 [rows, cols]; x[r, c] <- exp((x[r, c] - max_r) * inv_temperature) / sum_r, the
//   maximum subtracted first so that no exponent overflows. A row of all -inf becomes NaN
//   (the host never passes one: a logit row always has a finite entry).
//   Launch: grid (rows), block 256 (a multiple of 32); one block per row.

extern "C" __global__ void softmax_rows(float* x, u32 rows, u32 cols, float inv_temperature) {
    __shared__ float scratch[32];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    float* row = x + (size_t)r * cols;
    float m = NEG_INF;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, row[c]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) {
        const float e = expf((row[c] - m) * inv_temperature);
        row[c] = e;
        s += e;
    }
    const float inv = 1.0f / block_sum(s, scratch);
    for (u32 c = threadIdx.x; c < cols; c += blockDim.x) row[c] *= inv;
}
