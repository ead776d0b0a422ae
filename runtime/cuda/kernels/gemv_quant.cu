// gemv_quant.cu — dequantizing matrix-vector products for int8 and int4 weights: a few
// activation rows (the decode batch) times a quantized weight matrix, f32 accumulate.
//
// Weight layouts (packed on the host by `quant.rs`, which also holds the reference math):
// - int8 per output channel: w: i8 [out, in]; scales: f32 [out];
//   W[o, i] = w[o, i] * scales[o] (symmetric, scales[o] = max_i |W[o, i]| / 127).
// - int4 per group of `group` inputs: w: u8 [out, in / 2], byte k of row o holding input 2k in
//   its low nibble and 2k + 1 in its high nibble, each an unsigned q in 0..15;
//   scales: f16 [out, in / group]; W[o, i] = (q - 8) * scales[o, i / group]
//   (symmetric, scale = max |W| over the group / 7). in and group are even, group divides in.
//
// gemv_int8(w, scales, x, y, rows, in, out)
// gemv_int4(w, scales, x, y, rows, in, out, group)
//   x: f16 [rows, in]; y: f32 [rows, out]; y[r, o] = sum_i W[o, i] * x[r, i].
//   One warp per (o, r): launch grid (ceil(out / 8), rows), block 256 (8 warps).

#define GEMV_WARPS 8

extern "C" __global__ void gemv_int8(const i8* w, const float* scales, const f16* x, float* y,
                                     u32 rows, u32 in, u32 out) {
    const u32 lane = threadIdx.x & 31u;
    const u32 o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const u32 r = blockIdx.y;
    if (o >= out || r >= rows) return;  // whole warps leave together
    const i8* wrow = w + (size_t)o * in;
    const f16* xrow = x + (size_t)r * in;
    float acc = 0.0f;
    for (u32 i = lane; i < in; i += 32) acc += (float)wrow[i] * f16_to_f32(xrow[i]);
    acc = warp_sum(acc);
    if (lane == 0) y[(size_t)r * out + o] = acc * scales[o];
}

extern "C" __global__ void gemv_int4(const u8* w, const f16* scales, const f16* x, float* y,
                                     u32 rows, u32 in, u32 out, u32 group) {
    const u32 lane = threadIdx.x & 31u;
    const u32 o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    const u32 r = blockIdx.y;
    if (o >= out || r >= rows) return;
    const u8* wrow = w + (size_t)o * (in / 2);
    const f16* srow = scales + (size_t)o * (in / group);
    const f16* xrow = x + (size_t)r * in;
    float acc = 0.0f;
    for (u32 k = lane; k < in / 2; k += 32) {
        const u32 byte = wrow[k];
        const u32 i = 2 * k;
        const float s = f16_to_f32(srow[i / group]);  // i and i + 1 share a group (group even)
        const float w0 = (float)((int)(byte & 15u) - 8) * s;
        const float w1 = (float)((int)(byte >> 4) - 8) * s;
        acc += w0 * f16_to_f32(xrow[i]) + w1 * f16_to_f32(xrow[i + 1]);
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(size_t)r * out + o] = acc;
}
