// embedding.cu — token and position embeddings into the f32 residual stream.
//
// embedding_gather(table, ids, out, n_tokens, dim, vocab, scale)
//   table: f16 [vocab, dim]; ids: u32 [n_tokens]; out: f32 [n_tokens, dim].
//   out[t, d] = table[ids[t], d] * scale (scale = 1 for llama, sqrt(dim) for gemma).
//   An id >= vocab writes a zero row (the host rejects such ids before launching).
//   Launch: grid (n_tokens), block 256; threads stride over d.
//
// embedding_add_positions(x, table, positions, n_tokens, dim, max_positions)
//   x: f32 [n_tokens, dim], updated in place; table: f16 [max_positions, dim];
//   positions: u32 [n_tokens]. x[t, d] += table[positions[t], d] (learned positions, as
//   transformer_lm). A position >= max_positions adds nothing.
//   Launch: grid (n_tokens), block 256.

extern "C" __global__ void embedding_gather(const f16* table, const u32* ids, float* out,
                                            u32 n_tokens, u32 dim, u32 vocab, float scale) {
    const u32 t = blockIdx.x;
    if (t >= n_tokens) return;
    const u32 id = ids[t];
    float* row = out + (size_t)t * dim;
    if (id >= vocab) {
        for (u32 d = threadIdx.x; d < dim; d += blockDim.x) row[d] = 0.0f;
        return;
    }
    const f16* src = table + (size_t)id * dim;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) row[d] = f16_to_f32(src[d]) * scale;
}

extern "C" __global__ void embedding_add_positions(float* x, const f16* table, const u32* positions,
                                                   u32 n_tokens, u32 dim, u32 max_positions) {
    const u32 t = blockIdx.x;
    if (t >= n_tokens) return;
    const u32 p = positions[t];
    if (p >= max_positions) return;
    float* row = x + (size_t)t * dim;
    const f16* src = table + (size_t)p * dim;
    for (u32 d = threadIdx.x; d < dim; d += blockDim.x) row[d] += f16_to_f32(src[d]);
}
