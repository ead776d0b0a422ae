// elementwise.cu — residual adds, biases and casts on the f32 residual stream.
//
// residual_add(x, y, n):          x[i] += y[i]                 x, y: f32 [n]
// add_bias(x, bias, rows, cols):  x[r, c] += bias[c]           x: f32 [rows, cols]; bias: f32 [cols]
// cast_f16(x, out, n):            out[i] = f16(x[i])           x: f32 [n]; out: f16 [n]
//
// Launch all: a 1-D grid over the elements, block 256.

extern "C" __global__ void residual_add(float* x, const float* y, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

extern "C" __global__ void add_bias(float* x, const float* bias, u32 rows, u32 cols) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (size_t)rows * cols) x[i] += bias[i % cols];
}

extern "C" __global__ void cast_f16(const float* x, f16* out, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = f32_to_f16(x[i]);
}
