// The linear operation's own kernels (its products run in cuBLASLt, matmul.ts): the GELU backward
// fused with the bias gradient's column sums, and the sum of those partial sums.
#include "common.cuh"

// d/dz of the exact (erf) GELU.
__device__ __forceinline__ float gelu_grad(float z) {
  const float cdf = 0.5f * (1.f + erff(z * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * expf(-0.5f * z * z);
  return cdf + z * pdf;
}

// Column sums of g [N, C] over chunks of rows: partial[chunk, c]. With `gelu`, g = da · gelu'(z) is
// written to dz first (the pre-activation gradient). Blocks of 32 × 8 threads: 32 columns, 8 rows at a
// time; grid (ceil(C / 32), chunks).
extern "C" __global__ void colsum_partial(float* partial, void* dz, int dzSt, const void* da, int daSt, const void* z, int zSt,
                                          int N, int C, int rowsPerChunk, int gelu) {
  __shared__ float acc[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int r0 = blockIdx.y * rowsPerChunk;
  const int r1 = min(N, r0 + rowsPerChunk);
  float s = 0.f;
  if (c < C) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const i64 i = (i64)r * C + c;
      float g = load_any(da, daSt, i);
      if (gelu) {
        g *= gelu_grad(load_any(z, zSt, i));
        store_any(dz, dzSt, i, g);
      }
      s += g;
    }
  }
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) t += acc[k][threadIdx.x];
    partial[(i64)blockIdx.y * C + c] = t;
  }
}

// out[c] = Σ_g partial[g, c], in order (deterministic); with outB, the same for partialB in the same launch.
extern "C" __global__ void sum_partials(float* out, const float* partial, float* outB, const float* partialB, int G, int C) {
  FOR_EACH(i, (i64)(outB ? 2 : 1) * C) {
    const bool second = i >= C;
    const int c = (int)(second ? i - C : i);
    const float* p = second ? partialB : partial;
    float t = 0.f;
    for (int g = 0; g < G; g++) t += p[(i64)g * C + c];
    (second ? outB : out)[c] = t;
  }
}
