// LayerNorm over the last axis: forward (saving mean and 1/std per row) and backward (dx, and the
// weight and bias gradients as per-block partial sums reduced by linear.cu's sum_partials).
#include "common.cuh"

// One block per row (rows fold into grid.y past 65535). y in any float storage.
extern "C" __global__ void layer_norm_forward(void* y, int ySt, float* mean, float* rstd, const void* x, int xSt, const float* w,
                                              const float* b, int N, int D, float eps) {
  __shared__ float scratch[32];
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= N) return;
  const i64 base = row * D;
  float s = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) s += load_any(x, xSt, base + i);
  const float mu = block_sum(s, scratch) / D;
  float v = 0.f;
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    const float d = load_any(x, xSt, base + i) - mu;
    v += d * d;
  }
  const float rs = rsqrtf(block_sum(v, scratch) / D + eps);
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    store_any(y, ySt, base + i, (load_any(x, xSt, base + i) - mu) * rs * w[i] + b[i]);
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// dx [N, D] (f32) and per-block partial sums of dw, db ([gridDim.x, D] each). A warp per row (the
// block's warps take rows blockIdx.x · warps + warp, then every gridDim.x · warps further): a row's two
// sums are warp shuffles, with no block-wide barrier per row (a block per row waited on two of them,
// which left the kernel bound by latency, not memory). The warps add their dw, db terms into the
// block's accumulators in dynamic shared memory (2·D floats).
extern "C" __global__ void layer_norm_backward(float* dx, float* dwPartial, float* dbPartial, const void* dy, int dySt, const void* x,
                                               int xSt, const float* mean, const float* rstd, const float* w, int N, int D) {
  extern __shared__ float shared[];
  float* sdw = shared;
  float* sdb = shared + D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) sdw[i] = sdb[i] = 0.f;
  __syncthreads();
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (i64 r = (i64)blockIdx.x * warps + (threadIdx.x >> 5); r < N; r += (i64)gridDim.x * warps) {
    const i64 base = r * D;
    const float mu = mean[r], rs = rstd[r];
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
      const float d = load_any(dy, dySt, base + i);
      const float xh = (load_any(x, xSt, base + i) - mu) * rs;
      dx[base + i] = rs * (d * w[i] - ma - xh * mc);
      atomicAdd(sdw + i, d * xh);
      atomicAdd(sdb + i, d);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    dwPartial[(i64)blockIdx.x * D + i] = sdw[i];
    dbPartial[(i64)blockIdx.x * D + i] = sdb[i];
  }
}
