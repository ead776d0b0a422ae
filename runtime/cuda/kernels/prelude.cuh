// prelude.cuh — compiled in front of every kernel file (see `kernels.rs`): NVRTC is used
// without CUDA headers (the `nvidia-cuda-nvrtc-cu12` wheel ships none), so the few types and
// helpers the kernels need are defined here.
//
// Conventions of every kernel:
// - `f16` is an IEEE binary16 value held in its 16 bits; convert with `f16_to_f32` /
//   `f32_to_f16` (round to nearest even), which compile to one PTX `cvt` each.
// - Matrices are row-major; a "row" is one token unless a kernel says otherwise.
// - Kernels that reduce over a row (`block_sum`, `block_max`) must be launched with
//   blockDim.x a multiple of 32 and at most 1024, and with blockDim.y = blockDim.z = 1.
// - Sizes are u32; the host checks that every index fits before launching.

typedef unsigned short f16;
typedef unsigned int u32;
typedef unsigned char u8;
typedef signed char i8;

#define NEG_INF __int_as_float(0xff800000)
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float f16_to_f32(f16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ f16 f32_to_f16(float f) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// The sum of `v` over the block, returned to every thread. `scratch` is 32 floats of shared
// memory; the leading __syncthreads() makes back-to-back calls with one scratch safe.
__device__ float block_sum(float v, float* scratch) {
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 warps = (blockDim.x + 31u) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < warps ? scratch[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    return scratch[0];
}

// The maximum of `v` over the block, returned to every thread (same contract as block_sum).
__device__ float block_max(float v, float* scratch) {
    const u32 lane = threadIdx.x & 31u;
    const u32 warp = threadIdx.x >> 5;
    const u32 warps = (blockDim.x + 31u) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < warps ? scratch[lane] : NEG_INF;
        w = warp_max(w);
        if (lane == 0) scratch[0] = w;
    }
    __syncthreads();
    return scratch[0];
}
