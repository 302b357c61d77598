// Softmax cross-entropy of logits [N, V] against int32 targets, without a one-hot: the forward
// writes each row's loss and log-sum-exp; the backward writes (softmax − onehot) · dy / N directly.
#include "common.cuh"

// Running (max, Σ exp(x − max)) of a row, merged over the block; returns the log-sum-exp.
__device__ __forceinline__ float block_lse(float m, float s, float* sm, float* ss) {
  const float M = block_max(m, sm);
  const float part = m == NEG_INF ? 0.f : s * expf(m - M);
  return M + logf(block_sum(part, ss));
}

__device__ __forceinline__ void online_lse(float xv, float& m, float& s) {
  if (xv > m) {
    s = s * expf(m - xv) + 1.f;
    m = xv;
  } else {
    s += expf(xv - m);
  }
}

// One block per row.
extern "C" __global__ void cross_entropy_forward(float* loss, float* lse, const void* x, int xSt, const int* targets, int N, int V) {
  __shared__ float sm[32], ss[32];
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= N) return;
  const i64 base = row * V;
  float m = NEG_INF, s = 0.f;
  for (int v = threadIdx.x; v < V; v += blockDim.x) online_lse(load_any(x, xSt, base + v), m, s);
  const float l = block_lse(m, s, sm, ss);
  if (threadIdx.x == 0) {
    lse[row] = l;
    loss[row] = l - load_any(x, xSt, base + targets[row]);
  }
}

extern "C" __global__ void cross_entropy_backward(void* dx, int dxSt, const void* x, int xSt, const float* lse, const int* targets,
                                                  const float* dy, float invN, int N, int V) {
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= N) return;
  const i64 base = row * V;
  const float l = lse[row];
  const int t = targets[row];
  const float scale = dy[0] * invN;
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float p = expf(load_any(x, xSt, base + v) - l);
    store_any(dx, dxSt, base + v, (p - (v == t ? 1.f : 0.f)) * scale);
  }
}
