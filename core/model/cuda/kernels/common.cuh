// Shared by every kernel file: element loads and stores for each storage type, and reductions.
// Storage codes (storage.ts): 0 f32, 1 bf16, 2 i32, 3 u8. Arithmetic is always f32.
#pragma once
#include <cuda_bf16.h>

typedef __nv_bfloat16 bf16;
typedef long long i64;

enum { ST_F32 = 0, ST_BF16 = 1, ST_I32 = 2, ST_U8 = 3 };

#define NEG_INF __int_as_float(0xff800000)
#define POS_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) { return __float2bfloat16_rn(x); }

// A value of a tensor whose storage is known only at run time (the branch is uniform per launch).
__device__ __forceinline__ float load_any(const void* p, int st, i64 i) {
  switch (st) {
    case ST_BF16: return __bfloat162float(((const bf16*)p)[i]);
    case ST_I32: return (float)((const int*)p)[i];
    case ST_U8: return (float)((const unsigned char*)p)[i];
    default: return ((const float*)p)[i];
  }
}

__device__ __forceinline__ void store_any(void* p, int st, i64 i, float v) {
  switch (st) {
    case ST_BF16: ((bf16*)p)[i] = __float2bfloat16_rn(v); break;
    case ST_I32: ((int*)p)[i] = (int)v; break;
    case ST_U8: ((unsigned char*)p)[i] = v != 0.f ? 1 : 0; break;
    default: ((float*)p)[i] = v;
  }
}

// Four consecutive elements from index i, the first `count` of them (the rest read as zero): with
// `vec` (count 4, i a multiple of 4 and the tensor's base aligned, as the allocator's 512-byte blocks
// are), f32 and bf16 go as one 16- or 8-byte load, as memory-bound kernels need; else one by one.
struct alignas(16) f32x4 { float v[4]; };
struct alignas(8) bf16x4 { bf16 v[4]; };
__device__ __forceinline__ void load4_any(const void* p, int st, i64 i, int count, bool vec, float out[4]) {
  if (vec && st == ST_F32) {
    const f32x4 q = *(const f32x4*)((const float*)p + i);
#pragma unroll
    for (int k = 0; k < 4; k++) out[k] = q.v[k];
  } else if (vec && st == ST_BF16) {
    const bf16x4 q = *(const bf16x4*)((const bf16*)p + i);
#pragma unroll
    for (int k = 0; k < 4; k++) out[k] = __bfloat162float(q.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < 4; k++) out[k] = k < count ? load_any(p, st, i + k) : 0.f;
  }
}

__device__ __forceinline__ void store4_any(void* p, int st, i64 i, int count, bool vec, const float v[4]) {
  if (vec && st == ST_F32) {
    f32x4 q;
#pragma unroll
    for (int k = 0; k < 4; k++) q.v[k] = v[k];
    *(f32x4*)((float*)p + i) = q;
  } else if (vec && st == ST_BF16) {
    bf16x4 q;
#pragma unroll
    for (int k = 0; k < 4; k++) q.v[k] = __float2bfloat16_rn(v[k]);
    *(bf16x4*)((bf16*)p + i) = q;
  } else {
#pragma unroll
    for (int k = 0; k < 4; k++)
      if (k < count) store_any(p, st, i + k, v[k]);
  }
}

// Column sums by chunks of rows (linear.cu, layer-norm.cu): in blocks of 32 × 8 threads, each thread
// holding sums `s` of 4 adjacent columns, writes the block's 128 columns of partial[blockIdx.y, ·] of
// [chunks, C], adding the 8 rows of threads in a fixed order (deterministic). `acc` is the block's
// __shared__ float[8][129]; every thread of the block must call this.
__device__ __forceinline__ void column_partials(float (*acc)[129], const float s[4], float* partial, int C) {
#pragma unroll
  for (int k = 0; k < 4; k++) acc[threadIdx.y][threadIdx.x * 4 + k] = s[k];
  __syncthreads();
  // One column per thread of the first four rows of threads.
  const int t = threadIdx.y * 32 + threadIdx.x;
  const int c = blockIdx.x * 128 + t;
  if (t < 128 && c < C) {
    float total = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) total += acc[k][t];
    partial[(i64)blockIdx.y * C + c] = total;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats; the block must not use it again before the next __syncthreads.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : NEG_INF;
  return warp_max(v);
}

// i / d for a non-negative i and a positive d, with i − q·d in rem. Below 2^32 the division is 32-bit:
// a 64-bit one is a long software routine on the GPU, paid per element (the branch is uniform in
// practice: a launch's indices are all below 2^32 or nearly all above).
__device__ __forceinline__ i64 div_rem(i64 i, int d, int& rem) {
  if (i <= 0xFFFFFFFFll) {
    const unsigned int q = (unsigned int)i / (unsigned int)d;
    rem = (int)((unsigned int)i - q * (unsigned int)d);
    return q;
  }
  const i64 q = i / d;
  rem = (int)(i - q * d);
  return q;
}

// A grid-stride loop over n elements.
#define FOR_EACH(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)
