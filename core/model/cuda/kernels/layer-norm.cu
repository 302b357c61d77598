// LayerNorm over the last axis: forward (saving mean and 1/std per row) and backward (dx, then the
// weight and bias gradients as partial column sums reduced by linear.cu's sum_partials).
#include "common.cuh"

// A warp per row, 8 rows to a block of 256 threads: a row's sums are warp shuffles, with no block-wide
// barrier (a block per row waits on them, which leaves these kernels bound by latency, not memory).
// Each lane takes 4 adjacent elements at a time (vector loads where D is a multiple of 4).
#define ROW_LOOP(i, D) for (int i = (threadIdx.x & 31) * 4; i < (D); i += 128)

// y in any float storage; mean and 1/std per row saved for the backward.
extern "C" __global__ void layer_norm_forward(void* y, int ySt, float* mean, float* rstd, const void* x, int xSt, const float* w,
                                              const float* b, int N, int D, float eps) {
  const i64 row = ((i64)blockIdx.y * gridDim.x + blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (row >= N) return;
  const bool aligned = (D & 3) == 0;
  const i64 base = row * D;
  float v[4];
  float s = 0.f;
  ROW_LOOP(i, D) {
    load4_any(x, xSt, base + i, min(4, D - i), aligned, v);
    s += (v[0] + v[1]) + (v[2] + v[3]);
  }
  const float mu = warp_sum(s) / D;
  float var = 0.f;
  ROW_LOOP(i, D) {
    const int count = min(4, D - i);
    load4_any(x, xSt, base + i, count, aligned, v);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float d = k < count ? v[k] - mu : 0.f;
      var += d * d;
    }
  }
  const float rs = rsqrtf(warp_sum(var) / D + eps);
  ROW_LOOP(i, D) {
    const int count = min(4, D - i);
    float wv[4], bv[4];
    load4_any(x, xSt, base + i, count, aligned, v);
    load4_any(w, ST_F32, i, count, aligned, wv);
    load4_any(b, ST_F32, i, count, aligned, bv);
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = (v[k] - mu) * rs * wv[k] + bv[k];
    store4_any(y, ySt, base + i, count, aligned, v);
  }
  if ((threadIdx.x & 31) == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// dx [N, D] (f32).
extern "C" __global__ void layer_norm_backward(float* dx, const void* dy, int dySt, const void* x, int xSt, const float* mean,
                                               const float* rstd, const float* w, int N, int D) {
  const i64 row = ((i64)blockIdx.y * gridDim.x + blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (row >= N) return;
  const bool aligned = (D & 3) == 0;
  const i64 base = row * D;
  const float mu = mean[row], rs = rstd[row];
  float g[4], xv[4], wv[4];
  // Both passes read the same four columns of dy, x and w.
  auto load = [&](int i, int count) {
    load4_any(dy, dySt, base + i, count, aligned, g);
    load4_any(x, xSt, base + i, count, aligned, xv);
    load4_any(w, ST_F32, i, count, aligned, wv);
  };
  float a = 0.f, c = 0.f;
  ROW_LOOP(i, D) {
    const int count = min(4, D - i);
    load(i, count);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float gw = g[k] * wv[k];  // zero past the row's end, as g is
      a += gw;
      c += gw * (xv[k] - mu) * rs;
    }
  }
  const float ma = warp_sum(a) / D;
  const float mc = warp_sum(c) / D;
  ROW_LOOP(i, D) {
    const int count = min(4, D - i);
    load(i, count);
#pragma unroll
    for (int k = 0; k < 4; k++) g[k] = rs * (g[k] * wv[k] - ma - (xv[k] - mu) * rs * mc);
    store4_any(dx, ST_F32, base + i, count, aligned, g);
  }
}

// The weight and bias gradients' column sums, dw = Σ dy·x̂ and db = Σ dy, over chunks of rows:
// partials [chunks, D] each, added in a fixed order (deterministic), reduced by linear.cu's
// sum_partials. Blocks of 32 × 8 threads, each thread 4 adjacent columns: 128 columns, 8 rows at a
// time; grid (ceil(D / 128), chunks).
extern "C" __global__ void layer_norm_param_partials(float* dwPartial, float* dbPartial, const void* dy, int dySt, const void* x,
                                                     int xSt, const float* mean, const float* rstd, int N, int D,
                                                     int rowsPerChunk) {
  __shared__ float accW[8][129], accB[8][129];
  const int c0 = (blockIdx.x * 32 + threadIdx.x) * 4;
  const int count = min(4, D - c0);
  const bool vec = count == 4 && (D & 3) == 0;
  const int r0 = blockIdx.y * rowsPerChunk;
  const int r1 = min(N, r0 + rowsPerChunk);
  float sw[4] = {0.f, 0.f, 0.f, 0.f}, sb[4] = {0.f, 0.f, 0.f, 0.f};
  if (count > 0) {
    for (int r = r0 + threadIdx.y; r < r1; r += 8) {
      const i64 i = (i64)r * D + c0;
      float g[4], xv[4];
      load4_any(dy, dySt, i, count, vec, g);
      load4_any(x, xSt, i, count, vec, xv);
      const float mu = mean[r], rs = rstd[r];
#pragma unroll
      for (int k = 0; k < 4; k++) {
        sw[k] += g[k] * (xv[k] - mu) * rs;
        sb[k] += g[k];
      }
    }
  }
  column_partials(accW, sw, dwPartial, D);
  column_partials(accB, sb, dbPartial, D);
}
