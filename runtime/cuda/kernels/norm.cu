// norm.cu — RMSNorm and LayerNorm of the f32 residual stream into f16 matmul inputs.
//
// rms_norm(x, weight, out, rows, dim, eps, weight_offset)
//   x: f32 [rows, dim]; weight: f32 [dim]; out: f16 [rows, dim].
//   out[r, d] = x[r, d] / sqrt(mean_d(x[r, :]^2) + eps) * (weight[d] + weight_offset)
//   (weight_offset = 0 for llama, 1 for gemma, whose weights are stored as w - 1).
//
// layer_norm(x, weight, bias, out, rows, dim, eps)
//   x: f32 [rows, dim]; weight, bias: f32 [dim]; out: f16 [rows, dim].
//   out[r, d] = (x[r, d] - mean) / sqrt(var + eps) * weight[d] + bias[d], the variance
//   biased (divided by dim), computed in two passes over the row for accuracy.
//
// Launch both: grid (rows), block 256 (a multiple of 32); one block normalises one row.

extern "C" __global__ void rms_norm(const float* x, const float* weight, f16* out,
                                    u32 rows, u32 dim, float eps, float weight_offset) {
    __shared__ float scratch[32];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const float* row = x + (size_t)r * dim;
    float sq = 0.0f;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) sq += row[d] * row[d];
    const float total = block_sum(sq, scratch);
    const float inv = rsqrtf(total / (float)dim + eps);
    f16* dst = out + (size_t)r * dim;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x)
        dst[d] = f32_to_f16(row[d] * inv * (weight[d] + weight_offset));
}

extern "C" __global__ void layer_norm(const float* x, const float* weight, const float* bias, f16* out,
                                      u32 rows, u32 dim, float eps) {
    __shared__ float scratch[32];
    const u32 r = blockIdx.x;
    if (r >= rows) return;
    const float* row = x + (size_t)r * dim;
    float s = 0.0f;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) s += row[d];
    const float mean = block_sum(s, scratch) / (float)dim;
    float v = 0.0f;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) {
        const float c = row[d] - mean;
        v += c * c;
    }
    const float inv = rsqrtf(block_sum(v, scratch) / (float)dim + eps);
    f16* dst = out + (size_t)r * dim;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x)
        dst[d] = f32_to_f16((row[d] - mean) * inv * weight[d] + bias[d]);
}
