// Causal self-attention's own kernels. The four products around the softmax run in cuBLASLt as
// batched products over B·H (attention.ts); here: splitting the fused QKV projection into heads with
// rotary embeddings (rotate_half on the first rd dims of q and k), the causal softmax and its
// backward over materialised scores, and the head layout changes.
#include "common.cuh"

// The layout kernels below take four adjacent dims a thread (vector loads, one index computation)
// where no group of four straddles a head (hs), the rotated dims (rd) or their halves; else one.
__device__ __forceinline__ bool groups_of_4(int hs, int rd) { return (hs & 3) == 0 && ((rd / 2) & 3) == 0; }

// qkv [B·T, H·3·hs] (rows interleaved per head: q, k, v) → q, k, v [B·H, T, hs].
extern "C" __global__ void rotary_split(void* q, void* k, void* v, int outSt, const void* qkv, int inSt, const float* cosT,
                                        const float* sinT, int B, int T, int H, int hs, int rd) {
  const int half = rd / 2;
  const bool vec = groups_of_4(hs, rd);
  const int W = vec ? 4 : 1;
  FOR_EACH(g, (i64)B * H * T * hs / W) {
    const i64 i = g * W;
    int d, t, h;
    const int b = (int)div_rem(div_rem(div_rem(i, hs, d), T, t), H, h);
    const i64 src = (((i64)b * T + t) * H + h) * 3 * hs;
    float qv[4], kv[4], vv[4];
    load4_any(qkv, inSt, src + d, W, vec, qv);
    load4_any(qkv, inSt, src + hs + d, W, vec, kv);
    load4_any(qkv, inSt, src + 2 * hs + d, W, vec, vv);
    if (d < rd) {
      const int o = d < half ? d + half : d - half;
      const float sign = d < half ? -1.f : 1.f;
      float c[4], sn[4], qo[4], ko[4];
      load4_any(cosT, ST_F32, (i64)t * rd + d, W, vec, c);
      load4_any(sinT, ST_F32, (i64)t * rd + d, W, vec, sn);
      load4_any(qkv, inSt, src + o, W, vec, qo);
      load4_any(qkv, inSt, src + hs + o, W, vec, ko);
#pragma unroll
      for (int e = 0; e < 4; e++) {
        qv[e] = qv[e] * c[e] + sign * qo[e] * sn[e];
        kv[e] = kv[e] * c[e] + sign * ko[e] * sn[e];
      }
    }
    store4_any(q, outSt, i, W, vec, qv);
    store4_any(k, outSt, i, W, vec, kv);
    store4_any(v, outSt, i, W, vec, vv);
  }
}

// dq, dk, dv [B·H, T, hs] → dqkv [B·T, H·3·hs], undoing the rotation of q and k.
extern "C" __global__ void rotary_merge_backward(void* dqkv, int outSt, const void* dq, const void* dk, const void* dv, int inSt,
                                                 const float* cosT, const float* sinT, int B, int T, int H, int hs, int rd) {
  const int half = rd / 2;
  const bool vec = groups_of_4(hs, rd);
  const int W = vec ? 4 : 1;
  FOR_EACH(g, (i64)B * T * H * 3 * hs / W) {
    const i64 i = g * W;
    int e, h, t;
    const int b = (int)div_rem(div_rem(div_rem(i, 3 * hs, e), H, h), T, t);
    const int part = e / hs, d = e - part * hs;
    const i64 src = (((i64)b * H + h) * T + t) * hs;
    const void* grad = part == 0 ? dq : part == 1 ? dk : dv;
    float val[4];
    load4_any(grad, inSt, src + d, W, vec, val);
    if (part < 2 && d < rd) {
      const int o = d < half ? d + half : d - half;
      const float sign = d < half ? 1.f : -1.f;
      float c[4], sn[4], go[4];
      load4_any(cosT, ST_F32, (i64)t * rd + d, W, vec, c);
      load4_any(sinT, ST_F32, (i64)t * rd + o, W, vec, sn);
      load4_any(grad, inSt, src + o, W, vec, go);
#pragma unroll
      for (int k = 0; k < 4; k++) val[k] = val[k] * c[k] + sign * go[k] * sn[k];
    }
    store4_any(dqkv, outSt, i, W, vec, val);
  }
}

// [B·H, T, hs] ↔ [B·T, H·hs]: toHeads = 0 merges heads, 1 splits them.
extern "C" __global__ void heads_layout(void* out, int outSt, const void* in, int inSt, int B, int T, int H, int hs, int toHeads) {
  const bool vec = (hs & 3) == 0;
  const int W = vec ? 4 : 1;
  FOR_EACH(g, (i64)B * T * H * hs / W) {
    // i indexes the merged layout [b, t, h, d].
    const i64 i = g * W;
    int d, h, t;
    const int b = (int)div_rem(div_rem(div_rem(i, hs, d), H, h), T, t);
    const i64 j = (((i64)b * H + h) * T + t) * hs + d;
    float v[4];
    load4_any(in, inSt, toHeads ? i : j, W, vec, v);
    store4_any(out, outSt, toHeads ? j : i, W, vec, v);
  }
}

// P = softmax over j ≤ i of scores S [rows = B·H·T, T] (already scaled), zero above the diagonal.
// One warp per row, 4 rows per block of 128 threads.
extern "C" __global__ void causal_softmax(void* P, int pSt, const float* S, i64 rows, int T) {
  const i64 row = ((i64)blockIdx.y * gridDim.x + blockIdx.x) * 4 + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const int i = (int)(row % T);
  const float* s = S + row * T;
  float m = NEG_INF;
  for (int j = lane; j <= i; j += 32) m = fmaxf(m, s[j]);
  m = warp_max(m);
  float sum = 0.f;
  for (int j = lane; j <= i; j += 32) sum += expf(s[j] - m);
  const float inv = 1.f / warp_sum(sum);
  for (int j = lane; j < T; j += 32) store_any(P, pSt, row * T + j, j <= i ? expf(s[j] - m) * inv : 0.f);
}

// dS = P ∘ (dP − Σ_j P·dP) per row (the softmax backward), zero above the diagonal.
extern "C" __global__ void causal_softmax_backward(void* dS, int dsSt, const void* P, int pSt, const float* dP, i64 rows, int T) {
  const i64 row = ((i64)blockIdx.y * gridDim.x + blockIdx.x) * 4 + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int lane = threadIdx.x & 31;
  const int i = (int)(row % T);
  const i64 base = row * T;
  float dot = 0.f;
  for (int j = lane; j <= i; j += 32) dot += load_any(P, pSt, base + j) * dP[base + j];
  dot = warp_sum(dot);
  for (int j = lane; j < T; j += 32) {
    store_any(dS, dsSt, base + j, j <= i ? load_any(P, pSt, base + j) * (dP[base + j] - dot) : 0.f);
  }
}
