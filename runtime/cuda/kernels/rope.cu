// rope.cu — rotary position embeddings, in place, "rotate half" (NeoX / Hugging Face llama)
// pairing: element i of a head pairs with element i + head_dim/2.
//
// rope(x, positions, n_tokens, n_heads, head_dim, row_stride, head_offset, theta)
//   x: f32, token t's row starts at x + t * row_stride; the heads to rotate are the n_heads
//   consecutive slices of head_dim floats starting at column head_offset (so q and k are
//   rotated inside the fused QKV output: one launch with head_offset 0 for q, one with
//   head_offset n_heads_q * head_dim for k). positions: u32 [n_tokens].
//   For i < head_dim/2: f = theta^(-2i/head_dim), a = positions[t] * f,
//     (x_i, x_{i+h}) <- (x_i cos a - x_{i+h} sin a, x_{i+h} cos a + x_i sin a).
//   head_dim must be even.
//   Launch: grid (n_tokens, n_heads), block 64; threads stride over i.

extern "C" __global__ void rope(float* x, const u32* positions, u32 n_tokens, u32 n_heads, u32 head_dim,
                                u32 row_stride, u32 head_offset, float theta) {
    const u32 t = blockIdx.x;
    const u32 h = blockIdx.y;
    if (t >= n_tokens || h >= n_heads) return;
    const u32 half_dim = head_dim / 2;
    float* head = x + (size_t)t * row_stride + head_offset + (size_t)h * head_dim;
    const float pos = (float)positions[t];
    for (u32 i = threadIdx.x; i < half_dim; i += blockDim.x) {
        const float freq = powf(theta, -2.0f * (float)i / (float)head_dim);
        float s, c;
        sincosf(pos * freq, &s, &c);
        const float a = head[i];
        const float b = head[i + half_dim];
        head[i] = a * c - b * s;
        head[i + half_dim] = b * c + a * s;
    }
}
