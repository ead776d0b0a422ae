// activation.cu — MLP activations, f32 matmul output in, f16 matmul input out.
//
// silu_gate(gate_up, out, n_tokens, width)      (llama's SwiGLU)
// gelu_tanh_gate(gate_up, out, n_tokens, width) (gemma's GeGLU)
//   gate_up: f32 [n_tokens, 2 * width], the fused gate and up projections: columns
//   [0, width) are the gate, [width, 2 * width) the up projection. out: f16 [n_tokens, width].
//   out[t, i] = act(gate[t, i]) * up[t, i], with silu(g) = g / (1 + e^-g) and gelu_tanh below.
//
// gelu_tanh(x, out, n) (transformer_lm's MLP, after its bias was added)
//   x: f32 [n]; out: f16 [n]; gelu_tanh(v) = 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3))),
//   the approximation candle's `gelu` uses.
//
// Launch all: a 1-D grid over the n_tokens * width (or n) outputs, block 256.

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

__device__ __forceinline__ float gelu_tanh_of(float v) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
}

extern "C" __global__ void silu_gate(const float* gate_up, f16* out, u32 n_tokens, u32 width) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n_tokens * width) return;
    const size_t t = i / width, c = i % width;
    const float* row = gate_up + t * 2 * width;
    out[i] = f32_to_f16(silu(row[c]) * row[width + c]);
}

extern "C" __global__ void gelu_tanh_gate(const float* gate_up, f16* out, u32 n_tokens, u32 width) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n_tokens * width) return;
    const size_t t = i / width, c = i % width;
    const float* row = gate_up + t * 2 * width;
    out[i] = f32_to_f16(gelu_tanh_of(row[c]) * row[width + c]);
}

extern "C" __global__ void gelu_tanh(const float* x, f16* out, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = f32_to_f16(gelu_tanh_of(x[i]));
}
