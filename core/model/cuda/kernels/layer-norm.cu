// LayerNorm over the last axis: forward (saving mean and 1/std per row) and backward (dx, then the
// weight and bias gradients as partial column sums reduced by linear.cu's sum_partials).
#include "common.cuh"

// A warp per row, 8 rows to a block of 256 threads: a row's sums are warp shuffles, with no block-wide
// barrier (a block per row waits on them, which leaves these kernels bound by latency, not memory).

// y in any float storage; mean and 1/std per row saved for the backward.
extern "C" __global__ void layer_norm_forward(void* y, int ySt, float* mean, float* rstd, const void* x, int xSt, const float* w,
                                              const float* b, int N, int D, float eps) {
  const i64 row = ((i64)blockIdx.y * gridDim.x + blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (row >= N) return;
  const int lane = threadIdx.x & 31;
  const i64 base = row * D;
  float s = 0.f;
  for (int i = lane; i < D; i += 32) s += load_any(x, xSt, base + i);
  const float mu = warp_sum(s) / D;
  float v = 0.f;
  for (int i = lane; i < D; i += 32) {
    const float d = load_any(x, xSt, base + i) - mu;
    v += d * d;
  }
  const float rs = rsqrtf(warp_sum(v) / D + eps);
  for (int i = lane; i < D; i += 32) {
    store_any(y, ySt, base + i, (load_any(x, xSt, base + i) - mu) * rs * w[i] + b[i]);
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// dx [N, D] (f32).
extern "C" __global__ void layer_norm_backward(float* dx, const void* dy, int dySt, const void* x, int xSt, const float* mean,
                                               const float* rstd, const float* w, int N, int D) {
  const i64 row = ((i64)blockIdx.y * gridDim.x + blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (row >= N) return;
  const int lane = threadIdx.x & 31;
  const i64 base = row * D;
  const float mu = mean[row], rs = rstd[row];
  float a = 0.f, c = 0.f;
  for (int i = lane; i < D; i += 32) {
    const float g = load_any(dy, dySt, base + i) * w[i];
    const float xh = (load_any(x, xSt, base + i) - mu) * rs;
    a += g;
    c += g * xh;
  }
  const float ma = warp_sum(a) / D;
  const float mc = warp_sum(c) / D;
  for (int i = lane; i < D; i += 32) {
    const float xh = (load_any(x, xSt, base + i) - mu) * rs;
    dx[base + i] = rs * (load_any(dy, dySt, base + i) * w[i] - ma - xh * mc);
  }
}

// The weight and bias gradients' column sums, dw = Σ dy·x̂ and db = Σ dy, over chunks of rows:
// partials [chunks, D] each, added in a fixed order (deterministic), reduced by linear.cu's
// sum_partials. Blocks of 32 × 8 threads: 32 columns, 8 rows at a time; grid (ceil(D / 32), chunks).
extern "C" __global__ void layer_norm_param_partials(float* dwPartial, float* dbPartial, const void* dy, int dySt, const void* x,
                                                     int xSt, const float* mean, const float* rstd, int N, int D,
                                                     int rowsPerChunk) {
  __shared__ float accW[8][33], accB[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int r0 = blockIdx.y * rowsPerChunk;
  const int r1 = min(N, r0 + rowsPerChunk);
  float sw = 0.f, sb = 0.f;
  if (c < D) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const i64 i = (i64)r * D + c;
      const float d = load_any(dy, dySt, i);
      sw += d * (load_any(x, xSt, i) - mean[r]) * rstd[r];
      sb += d;
    }
  }
  accW[threadIdx.y][threadIdx.x] = sw;
  accB[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float tw = 0.f, tb = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) {
      tw += accW[k][threadIdx.x];
      tb += accB[k][threadIdx.x];
    }
    dwPartial[(i64)blockIdx.y * D + c] = tw;
    dbPartial[(i64)blockIdx.y * D + c] = tb;
  }
}
