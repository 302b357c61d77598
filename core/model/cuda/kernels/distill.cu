// Knowledge distillation, α·CE + (1 − α)·T²·KL, over the teacher's top-k logits plus one bucket for
// the remaining mass (ops/distill.ts's topKLogitKL) and, at the end, over its full logits, each in two
// kernels that never materialise a log-softmax of the student's logits: the forward writes each row's
// loss and the log-sum-exps, the backward writes the gradient directly. One block per row; for top-k,
// dynamic shared memory holds 3·k floats. direction: 0 forward KL, 1 reverse, 2 symmetric.
#include "common.cuh"

#define TINY 1e-30f

struct KD {
  int N, V, k, direction;
  float alpha, T, wKL, invN;
};

__device__ __forceinline__ void online_lse2(float xv, float& m, float& s) {
  if (xv > m) {
    s = s * expf(m - xv) + 1.f;
    m = xv;
  } else {
    s += expf(xv - m);
  }
}

__device__ __forceinline__ float merge_lse(float m, float s, float* sm, float* ss) {
  const float M = block_max(m, sm);
  return M + logf(block_sum(m == NEG_INF ? 0.f : s * expf(m - M), ss));
}

// A row's loss from its two KL sums (forward, reverse) and, for cross-entropy, the log-sum-exp of the
// logits and the target's logit.
__device__ __forceinline__ float row_loss(const KD& u, float fwSum, float rvSum, float lse1, float xTarget) {
  const float kl = u.direction == 1 ? rvSum : u.direction == 2 ? 0.5f * (fwSum + rvSum) : fwSum;
  return u.alpha * (u.alpha != 0.f ? lse1 - xTarget : 0.f) + u.wKL * kl;
}

// LS, LT: the student's and teacher's log-probabilities (at T) of the kept tokens; returns S = Σ exp(LS)
// and P = Σ exp(LT) through the references.
__device__ __forceinline__ void kept(const KD& u, i64 row, const void* x, int xSt, const int* tIdx, const float* tLogits,
                                     const float* tLogZ, float lseT, float* LS, float* LT, float* sm, float& S, float& P) {
  const i64 base = row * u.V;
  for (int j = threadIdx.x; j < u.k; j += blockDim.x) {
    const int i = tIdx[row * u.k + j];
    LS[j] = load_any(x, xSt, base + i) / u.T - lseT;
    LT[j] = tLogits[row * u.k + j] / u.T - tLogZ[row];
  }
  __syncthreads();
  float ps = 0.f, pt = 0.f;
  for (int j = threadIdx.x; j < u.k; j += blockDim.x) {
    ps += expf(LS[j]);
    pt += expf(LT[j]);
  }
  S = block_sum(ps, sm);
  P = block_sum(pt, sm);
}

extern "C" __global__ void topk_distill_forward(float* loss, float* lse1Out, float* lseTOut, const void* x, int xSt, const int* targets,
                                                const int* tIdx, const float* tLogits, const float* tLogZ, KD u) {
  extern __shared__ float shared[];
  __shared__ float sm[32], ss[32];
  float* LS = shared;
  float* LT = shared + u.k;
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= u.N) return;
  const i64 base = row * u.V;
  float m1 = NEG_INF, s1 = 0.f, mT = NEG_INF, sT = 0.f;
  for (int v = threadIdx.x; v < u.V; v += blockDim.x) {
    const float xv = load_any(x, xSt, base + v);
    online_lse2(xv, m1, s1);
    online_lse2(xv / u.T, mT, sT);
  }
  const float lse1 = merge_lse(m1, s1, sm, ss);
  const float lseT = merge_lse(mT, sT, sm, ss);
  float S, P;
  kept(u, row, x, xSt, tIdx, tLogits, tLogZ, lseT, LS, LT, sm, S, P);
  const float lsRem = logf(fmaxf(1.f - S, TINY));
  const float ltRem = logf(fmaxf(1.f - P, TINY));
  float fw = 0.f, rv = 0.f;
  for (int j = threadIdx.x; j < u.k; j += blockDim.x) {
    fw += expf(LT[j]) * (LT[j] - LS[j]);
    rv += expf(LS[j]) * (LS[j] - LT[j]);
  }
  const float fwSum = block_sum(fw, sm) + expf(ltRem) * (ltRem - lsRem);
  const float rvSum = block_sum(rv, ss) + expf(lsRem) * (lsRem - ltRem);
  if (threadIdx.x == 0) {
    loss[row] = row_loss(u, fwSum, rvSum, lse1, load_any(x, xSt, base + targets[row]));
    lse1Out[row] = lse1;
    lseTOut[row] = lseT;
  }
}

__device__ __forceinline__ float g_of(int direction, float ls, float lt) {
  const float fw = -expf(lt);
  const float rv = expf(ls) * (ls - lt + 1.f);
  return direction == 1 ? rv : direction == 2 ? 0.5f * (fw + rv) : fw;
}

extern "C" __global__ void topk_distill_backward(void* dx, int dxSt, const void* x, int xSt, const int* targets, const int* tIdx,
                                                 const float* tLogits, const float* tLogZ, const float* lse1In, const float* lseTIn,
                                                 const float* dy, KD u) {
  extern __shared__ float shared[];
  __shared__ float sm[32];
  float* LS = shared;
  float* LT = shared + u.k;
  float* GJ = shared + 2 * u.k;
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= u.N) return;
  const i64 base = row * u.V;
  const float lse1 = lse1In[row], lseT = lseTIn[row];
  float S, P;
  kept(u, row, x, xSt, tIdx, tLogits, tLogZ, lseT, LS, LT, sm, S, P);
  const float lsRem = logf(fmaxf(1.f - S, TINY));
  const float ltRem = logf(fmaxf(1.f - P, TINY));
  float gsum = 0.f;
  for (int j = threadIdx.x; j < u.k; j += blockDim.x) {
    const float g = g_of(u.direction, LS[j], LT[j]);
    GJ[j] = g;
    gsum += g;
  }
  const float G = block_sum(gsum, sm);
  const float R = 1.f - S >= TINY ? g_of(u.direction, lsRem, ltRem) / (1.f - S) : 0.f;
  const float scale = dy[0] * u.invN;
  const float cOut = u.wKL * (R * S - G) / u.T;
  const int target = targets[row];
  for (int v = threadIdx.x; v < u.V; v += blockDim.x) {
    const float xv = load_any(x, xSt, base + v);
    const float sT = expf(xv / u.T - lseT);
    const float s1 = expf(xv - lse1);
    store_any(dx, dxSt, base + v, scale * (cOut * sT + u.alpha * (s1 - (v == target ? 1.f : 0.f))));
  }
  // The kept tokens' entries are written again, whole, once every thread's first pass is done.
  __syncthreads();
  const float cIn = G + R - R * S;
  for (int j = threadIdx.x; j < u.k; j += blockDim.x) {
    const int i = tIdx[row * u.k + j];
    const float xv = load_any(x, xSt, base + i);
    const float sT = expf(xv / u.T - lseT);
    const float s1 = expf(xv - lse1);
    store_any(dx, dxSt, base + i, scale * (u.wKL * (GJ[j] - sT * cIn) / u.T + u.alpha * (s1 - (i == target ? 1.f : 0.f))));
  }
}

// Full-logit distillation (ops/distill.ts's fullDistillation): the teacher's whole row of logits t
// instead of its top-k, so no bucket: with ls = log softmax(x / T) and lt = log softmax(t / T),
// KL's gradient in ls is g = g_of(ls, lt), and in x it is (g − softmax(x / T) · Σ g) / T. The forward
// writes each row's loss and the three log-sum-exps the backward needs (student at 1 and T, teacher at T).
extern "C" __global__ void full_distill_forward(float* loss, float* lse1Out, float* lseTOut, float* lseTeacherOut, const void* x,
                                                int xSt, const int* targets, const void* t, int tSt, KD u) {
  __shared__ float sm[32], ss[32];
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= u.N) return;
  const i64 base = row * u.V;
  float m1 = NEG_INF, s1 = 0.f, mT = NEG_INF, sT = 0.f, mt = NEG_INF, st = 0.f;
  for (int v = threadIdx.x; v < u.V; v += blockDim.x) {
    const float xv = load_any(x, xSt, base + v);
    online_lse2(xv, m1, s1);
    online_lse2(xv / u.T, mT, sT);
    online_lse2(load_any(t, tSt, base + v) / u.T, mt, st);
  }
  const float lse1 = merge_lse(m1, s1, sm, ss);
  const float lseT = merge_lse(mT, sT, sm, ss);
  const float lseTeacher = merge_lse(mt, st, sm, ss);
  float fw = 0.f, rv = 0.f;
  for (int v = threadIdx.x; v < u.V; v += blockDim.x) {
    const float ls = load_any(x, xSt, base + v) / u.T - lseT;
    const float lt = load_any(t, tSt, base + v) / u.T - lseTeacher;
    // A probability of exactly 0 contributes 0 (not 0 · ∞), as the reference's KL terms.
    const float pt = expf(lt), ps = expf(ls);
    if (pt > 0.f) fw += pt * (lt - ls);
    if (ps > 0.f) rv += ps * (ls - lt);
  }
  const float fwSum = block_sum(fw, sm);
  const float rvSum = block_sum(rv, ss);
  if (threadIdx.x == 0) {
    loss[row] = row_loss(u, fwSum, rvSum, lse1, load_any(x, xSt, base + targets[row]));
    lse1Out[row] = lse1;
    lseTOut[row] = lseT;
    lseTeacherOut[row] = lseTeacher;
  }
}

extern "C" __global__ void full_distill_backward(void* dx, int dxSt, const void* x, int xSt, const int* targets, const void* t,
                                                 int tSt, const float* lse1In, const float* lseTIn, const float* lseTeacherIn,
                                                 const float* dy, KD u) {
  __shared__ float sm[32];
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= u.N) return;
  const i64 base = row * u.V;
  const float lse1 = lse1In[row], lseT = lseTIn[row], lseTeacher = lseTeacherIn[row];
  float gsum = 0.f;
  for (int v = threadIdx.x; v < u.V; v += blockDim.x) {
    const float ls = load_any(x, xSt, base + v) / u.T - lseT;
    const float lt = load_any(t, tSt, base + v) / u.T - lseTeacher;
    gsum += g_of(u.direction, ls, lt);
  }
  const float G = block_sum(gsum, sm);
  const float scale = dy[0] * u.invN;
  const int target = targets[row];
  for (int v = threadIdx.x; v < u.V; v += blockDim.x) {
    const float xv = load_any(x, xSt, base + v);
    const float ls = xv / u.T - lseT;
    const float lt = load_any(t, tSt, base + v) / u.T - lseTeacher;
    const float g = g_of(u.direction, ls, lt);
    const float s1 = expf(xv - lse1);
    store_any(dx, dxSt, base + v, scale * (u.wKL * (g - expf(ls) * G) / u.T + u.alpha * (s1 - (v == target ? 1.f : 0.f))));
  }
}
