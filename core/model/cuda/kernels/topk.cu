// tfjs's TopK on the cuda backend: the k largest values of each row with their indices, sorted by
// value (descending), ties by index (ascending), as tfjs's cpu kernel orders them. One block of 256
// threads per row: the k-th largest value is found by radix selection on the bits of the values
// (8-bit histograms, highest digit first: four passes for f32, two for bf16, whose low 16 bits are
// zero; a row of Pythia's vocabulary stays in L2 between passes), the values above it and the first
// ones equal to it are gathered in one pass, and the k winners are sorted in shared memory. Every pass
// reads the row in tiles of 1024 elements, four consecutive ones a thread (one 16- or 8-byte load
// where the row's length is a multiple of 4); a warp's lanes whose elements fall in the same
// histogram bin add to it once (logits share their exponent, so most of a tile does). Dynamic shared
// memory: 2 · kPow2 words (kPow2: k rounded up to a power of two).
// With `lse` set, the first pass also gives each row's logsumexp of x · invTemperature (a teacher's
// log-normaliser: topKFromLogits), so the row is not read again for it.
#include "common.cuh"

#define THREADS 256
#define WARPS (THREADS / 32)
#define PER 4
#define TILE (THREADS * PER)
#define FULL_MASK 0xffffffffu

// Order-preserving map of a float's bits to an unsigned key (larger float, larger key).
__device__ __forceinline__ unsigned key_of(float x) {
  const unsigned u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

extern "C" __global__ void __launch_bounds__(THREADS) top_k(float* values, int* indices, float* lse, const void* x, int xSt, int rows,
                                                           int V, int k, int kPow2, float invTemperature) {
  extern __shared__ unsigned shared[];
  float* candV = (float*)shared;
  int* candI = (int*)(shared + kPow2);
  __shared__ int hist[256];
  __shared__ int tileCounts[WARPS][2];
  __shared__ unsigned prefixS;
  __shared__ int needS;
  __shared__ float lseScratch[32];
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= rows) return;
  const i64 base = row * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // Radix selection of the k-th largest key: `prefix` fixes the high digits found so far.
  unsigned prefix = 0, mask = 0;
  int need = k;  // how many of the elements matching the prefix are still to be taken from the top
  const int lastShift = xSt == ST_BF16 ? 16 : 0;
  // Rows start at multiples of 4 elements too, so whole groups of 4 load as one.
  const bool vec = V % PER == 0;
  for (int shift = 24; shift >= lastShift; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += THREADS) hist[i] = 0;
    __syncthreads();
    // This thread's running max of x · invTemperature and its sum of exp(· − max), on the first pass.
    float m = NEG_INF, sum = 0.f;
    // Whole tiles, so that every lane of a warp takes part in its votes.
    for (int t = 0; t < V; t += TILE) {
      const int v0 = t + threadIdx.x * PER;
      const int count = min(PER, V - v0);
      float xv[PER];
      load4_any(x, xSt, base + v0, max(count, 0), vec && count == PER, xv);
#pragma unroll
      for (int e = 0; e < PER; e++) {
        const unsigned kk = key_of(xv[e]);
        const bool counted = e < count && (kk & mask) == prefix;
        const unsigned digit = (kk >> shift) & 255u;
        // Lanes of one bin: the lowest adds them all. Uncounted lanes vote 256, no bin.
        const unsigned peers = __match_any_sync(FULL_MASK, counted ? digit : 256u);
        if (counted && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
      }
      if (lse && shift == 24) {
        float top = NEG_INF;
#pragma unroll
        for (int e = 0; e < PER; e++)
          if (e < count) top = fmaxf(top, xv[e] * invTemperature);
        if (top > m) {
          sum *= expf(m - top);
          m = top;
        }
#pragma unroll
        for (int e = 0; e < PER; e++) {
          const float y = xv[e] * invTemperature;
          if (e < count && y != NEG_INF) sum += expf(y - m);
        }
      }
    }
    if (lse && shift == 24) {
      const float rowMax = block_max(m, lseScratch);
      const float rowSum = block_sum(m == NEG_INF ? 0.f : sum * expf(m - rowMax), lseScratch);
      if (threadIdx.x == 0) lse[row] = rowMax + logf(rowSum);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int acc = 0, digit = 255;
      for (; digit > 0; digit--) {
        if (acc + hist[digit] >= need) break;
        acc += hist[digit];
      }
      prefixS = prefix | ((unsigned)digit << shift);
      needS = need - acc;
    }
    __syncthreads();
    prefix = prefixS;
    need = needS;
    mask |= 255u << shift;
  }
  // prefix is now the k-th largest key; k − need elements lie above it, and of those equal to it the
  // `need` with the lowest indices are taken. One pass in index order: per tile, a scan of the warp's
  // counts gives each lane its places, and the warps before it in the tile and the tiles before, its offset.
  const int aboveTotal = k - need;
  int aboveSeen = 0, equalSeen = 0;
  for (int t = 0; t < V && (aboveSeen < aboveTotal || equalSeen < need); t += TILE) {
    const int v0 = t + threadIdx.x * PER;
    const int count = min(PER, V - v0);
    float xv[PER];
    load4_any(x, xSt, base + v0, max(count, 0), vec && count == PER, xv);
    bool above[PER], equal[PER];
    int counts = 0;  // this lane's above | equal << 16
#pragma unroll
    for (int e = 0; e < PER; e++) {
      // The digits selected (all of them, or a bf16's 16: the rest of its key is its sign's filler).
      const unsigned kk = key_of(xv[e]) & mask;
      above[e] = e < count && kk > prefix;
      equal[e] = e < count && kk == prefix;
      counts += above[e] ? 1 : equal[e] ? 1 << 16 : 0;
    }
    int inclusive = counts;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int n = __shfl_up_sync(FULL_MASK, inclusive, o);
      if (lane >= o) inclusive += n;
    }
    if (lane == 31) {
      tileCounts[warp][0] = inclusive & 0xffff;
      tileCounts[warp][1] = inclusive >> 16;
    }
    __syncthreads();
    const int before = inclusive - counts;
    int aboveAt = aboveSeen + (before & 0xffff), equalAt = equalSeen + (before >> 16);
    for (int w = 0; w < WARPS; w++) {
      if (w < warp) {
        aboveAt += tileCounts[w][0];
        equalAt += tileCounts[w][1];
      }
      aboveSeen += tileCounts[w][0];
      equalSeen += tileCounts[w][1];
    }
#pragma unroll
    for (int e = 0; e < PER; e++) {
      if (above[e]) {
        candV[aboveAt] = xv[e];
        candI[aboveAt] = v0 + e;
        aboveAt++;
      } else if (equal[e]) {
        if (equalAt < need) {
          candV[aboveTotal + equalAt] = xv[e];
          candI[aboveTotal + equalAt] = v0 + e;
        }
        equalAt++;
      }
    }
    // tileCounts is written again by the next tile.
    __syncthreads();
  }
  for (int i = k + threadIdx.x; i < kPow2; i += THREADS) {
    candV[i] = NEG_INF;
    candI[i] = 0x7fffffff;
  }
  __syncthreads();
  // Bitonic sort of kPow2 (value, index) pairs: value descending, index ascending.
  for (int size = 2; size <= kPow2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < kPow2; i += THREADS) {
        const int j = i ^ stride;
        if (j > i) {
          const bool descending = (i & size) == 0;
          const float a = candV[i], b = candV[j];
          const int ia = candI[i], ib = candI[j];
          const bool aFirst = a > b || (a == b && ia < ib);
          if (aFirst != descending) {
            candV[i] = b;
            candV[j] = a;
            candI[i] = ib;
            candI[j] = ia;
          }
        }
      }
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < k; i += THREADS) {
    values[row * k + i] = candV[i];
    indices[row * k + i] = candI[i];
  }
}
