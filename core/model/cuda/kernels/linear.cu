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
// written to dz first (the pre-activation gradient). Blocks of 32 × 8 threads, each thread 4 adjacent
// columns (vector loads where C is a multiple of 4): 128 columns, 8 rows at a time; grid
// (ceil(C / 128), chunks).
extern "C" __global__ void colsum_partial(float* partial, void* dz, int dzSt, const void* da, int daSt, const void* z, int zSt,
                                          int N, int C, int rowsPerChunk, int gelu) {
  __shared__ float acc[8][129];
  const int c0 = (blockIdx.x * 32 + threadIdx.x) * 4;
  const int count = min(4, C - c0);
  const bool vec = count == 4 && (C & 3) == 0;
  const int r0 = blockIdx.y * rowsPerChunk;
  const int r1 = min(N, r0 + rowsPerChunk);
  float s[4] = {0.f, 0.f, 0.f, 0.f};
  if (count > 0) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const i64 i = (i64)r * C + c0;
      float g[4];
      load4_any(da, daSt, i, count, vec, g);
      if (gelu) {
        float zv[4];
        load4_any(z, zSt, i, count, vec, zv);
#pragma unroll
        for (int k = 0; k < 4; k++) g[k] *= gelu_grad(zv[k]);
        store4_any(dz, dzSt, i, count, vec, g);
      }
#pragma unroll
      for (int k = 0; k < 4; k++) s[k] += g[k];
    }
  }
  column_partials(acc, s, partial, C);
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
