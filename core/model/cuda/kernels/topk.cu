// tfjs's TopK on the cuda backend: the k largest values of each row with their indices, sorted by
// value (descending), ties by index (ascending), as tfjs's cpu kernel orders them. One block of 256
// threads per row: the k-th largest value is found by radix selection on the bits of the values
// (four passes of 8-bit histograms; a row of Pythia's vocabulary stays in L2 between passes), the
// values above it and the first ones equal to it are gathered, and the k winners are sorted in shared
// memory. Dynamic shared memory: 2 · kPow2 words (kPow2: k rounded up to a power of two).
// With `lse` set, the first pass also gives each row's logsumexp of x · invTemperature (a teacher's
// log-normaliser: topKFromLogits), so the row is not read again for it.
#include "common.cuh"

#define THREADS 256

// Order-preserving map of a float's bits to an unsigned key (larger float, larger key).
__device__ __forceinline__ unsigned key_of(float x) {
  const unsigned u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum over the block of one int per thread; returns the total through `total`.
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int n = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += n;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  int warpBase = 0;
  total = 0;
  for (int w = 0; w < THREADS / 32; w++) {
    if (w < warp) warpBase += scratch[w];
    total += scratch[w];
  }
  return warpBase + incl - v;
}

extern "C" __global__ void __launch_bounds__(THREADS) top_k(float* values, int* indices, float* lse, const void* x, int xSt, int rows,
                                                           int V, int k, int kPow2, float invTemperature) {
  extern __shared__ unsigned shared[];
  float* candV = (float*)shared;
  int* candI = (int*)(shared + kPow2);
  __shared__ int hist[256];
  __shared__ int scratch[32];
  __shared__ unsigned prefixS;
  __shared__ int needS;
  __shared__ float lseScratch[32];
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= rows) return;
  const i64 base = row * V;

  // Radix selection of the k-th largest key: `prefix` fixes the high digits found so far.
  unsigned prefix = 0, mask = 0;
  int need = k;  // how many of the elements matching the prefix are still to be taken from the top
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += THREADS) hist[i] = 0;
    __syncthreads();
    // This thread's running max of x · invTemperature and its sum of exp(· − max), on the first pass.
    float m = NEG_INF, sum = 0.f;
    for (int v = threadIdx.x; v < V; v += THREADS) {
      const float xv = load_any(x, xSt, base + v);
      const unsigned kk = key_of(xv);
      if ((kk & mask) == prefix) atomicAdd(&hist[(kk >> shift) & 255], 1);
      if (lse && shift == 24) {
        const float y = xv * invTemperature;
        if (y > m) {
          sum = sum * expf(m - y) + 1.f;
          m = y;
        } else if (y != NEG_INF) sum += expf(y - m);
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
  // prefix is now the k-th largest key; `need` elements equal to it are taken (the lowest indices).
  const unsigned kth = prefix;
  // Gather in index order: each thread scans a contiguous chunk, and a block scan gives each its slots.
  const int chunk = (V + THREADS - 1) / THREADS;
  const int v0 = threadIdx.x * chunk, v1 = min(V, v0 + chunk);
  int above = 0, equal = 0;
  for (int v = v0; v < v1; v++) {
    const unsigned kk = key_of(load_any(x, xSt, base + v));
    above += kk > kth;
    equal += kk == kth;
  }
  int aboveTotal, equalTotal;
  int aboveAt = block_exclusive_scan(above, scratch, aboveTotal);
  int equalAt = block_exclusive_scan(equal, scratch, equalTotal);
  for (int v = v0; v < v1; v++) {
    const float xv = load_any(x, xSt, base + v);
    const unsigned kk = key_of(xv);
    if (kk > kth) {
      candV[aboveAt] = xv;
      candI[aboveAt] = v;
      aboveAt++;
    } else if (kk == kth) {
      if (equalAt < need) {
        candV[aboveTotal + equalAt] = xv;
        candI[aboveTotal + equalAt] = v;
      }
      equalAt++;
    }
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
