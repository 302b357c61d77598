// AdamW with global gradient-norm clipping for every parameter in three launches, with no read-back:
// sums of squares per chunk, the norm, then the update of weights and both moments in place (the
// arithmetic of optim.ts's AdamW.apply after clipByGlobalNorm). A table of entries on the device says
// where each parameter's chunks start; a block finds its entry by binary search. The step's numbers
// (learning rate, bias corrections, ...) are read from the device, so a captured step replays with
// the next step's numbers (graphs.ts).
#include "common.cuh"

#define CHUNK 4096

struct AdamEntry {
  float* p;
  const void* g;
  float* m;
  float* v;
  bf16* shadow;  // the weight's bf16 copy for mixed-precision products, refreshed here; or null
  i64 n;
  i64 firstBlock;
  int gSt;
  int decays;  // weight decay applies (matrices), or not (biases, norms)
};

// The step's numbers, in adamw.ts's ADAMW_STEP order.
struct Hyper {
  float lr, beta1, beta2, eps, bc1, bc2, maxNorm, weightDecay;
};

__device__ __forceinline__ int entry_of(const AdamEntry* e, int count, i64 block) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (e[mid].firstBlock <= block) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

extern "C" __global__ void grad_sum_squares(float* partials, const AdamEntry* entries, int count, i64 blocks) {
  __shared__ float scratch[32];
  const i64 blk = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (blk >= blocks) return;
  const AdamEntry e = entries[entry_of(entries, count, blk)];
  const i64 start = (blk - e.firstBlock) * CHUNK;
  const i64 end = min(e.n, start + CHUNK);
  float acc = 0.f;
  for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
    const float g = load_any(e.g, e.gSt, i);
    acc += g * g;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partials[blk] = acc;
}

// One block: norm[0] = sqrt(Σ partials), summed in a fixed order.
extern "C" __global__ void grad_norm(float* norm, const float* partials, i64 count) {
  __shared__ float scratch[32];
  float acc = 0.f;
  for (i64 i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) norm[0] = sqrtf(acc);
}

extern "C" __global__ void adamw_update(const AdamEntry* entries, int count, i64 blocks, const float* norm, const Hyper* hyper) {
  const i64 blk = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (blk >= blocks) return;
  const AdamEntry e = entries[entry_of(entries, count, blk)];
  const Hyper h = *hyper;
  const float lr = h.lr, beta1 = h.beta1, beta2 = h.beta2, eps = h.eps, bc1 = h.bc1, bc2 = h.bc2;
  const float scale = fminf(1.f, h.maxNorm / (norm[0] + 1e-6f));
  const float decay = e.decays ? 1.f - lr * h.weightDecay : 1.f;
  const i64 start = (blk - e.firstBlock) * CHUNK;
  const i64 end = min(e.n, start + CHUNK);
  for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
    const float g = load_any(e.g, e.gSt, i) * scale;
    const float m = e.m[i] * beta1 + g * (1.f - beta1);
    const float v = e.v[i] * beta2 + (g * g) * (1.f - beta2);
    e.m[i] = m;
    e.v[i] = v;
    const float p = e.p[i] * decay - ((m / bc1) / (sqrtf(v / bc2) + eps)) * lr;
    e.p[i] = p;
    if (e.shadow) e.shadow[i] = __float2bfloat16_rn(p);
  }
}
