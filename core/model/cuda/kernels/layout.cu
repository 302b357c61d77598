// tfjs's data-movement kernels on the cuda backend: transpose, slice, concatenation (as copies into
// a slice of the output), row gathers, and reductions over the innermost axis. Copies move elements
// of 1, 2 or 4 bytes unchanged, so bf16 data stays bf16.
#include "common.cuh"

#define MAX_RANK 6
struct Layout { int rank; int dim[MAX_RANK]; int inStride[MAX_RANK]; int outStride[MAX_RANK]; };

// Output element i sits at sum(idx_d * outStride_d) and comes from sum(idx_d * inStride_d) + inOffset,
// where idx is i decomposed over `dim` (the copied block's shape).
template <typename T>
__device__ __forceinline__ void strided_copy(T* out, const T* in, i64 n, const Layout& L, i64 inOffset, i64 outOffset) {
  FOR_EACH(i, n) {
    i64 rest = i, src = inOffset, dst = outOffset;
    for (int d = L.rank - 1; d >= 0; d--) {
      int r;
      rest = div_rem(rest, L.dim[d], r);
      src += (i64)r * L.inStride[d];
      dst += (i64)r * L.outStride[d];
    }
    out[dst] = in[src];
  }
}

extern "C" __global__ void copy_strided_4(unsigned int* out, const unsigned int* in, i64 n, Layout L, i64 inOffset, i64 outOffset) {
  strided_copy(out, in, n, L, inOffset, outOffset);
}
extern "C" __global__ void copy_strided_2(unsigned short* out, const unsigned short* in, i64 n, Layout L, i64 inOffset, i64 outOffset) {
  strided_copy(out, in, n, L, inOffset, outOffset);
}
extern "C" __global__ void copy_strided_1(unsigned char* out, const unsigned char* in, i64 n, Layout L, i64 inOffset, i64 outOffset) {
  strided_copy(out, in, n, L, inOffset, outOffset);
}

// out[r, :] = table[idx[r], :] for `rows` indices into a [tableRows, width] table (any 4-byte type);
// an index outside the table gives zeros, as tfjs's gather on GPUs.
extern "C" __global__ void gather_rows_4(unsigned int* out, const unsigned int* table, const int* idx, int rows, int width, int tableRows) {
  FOR_EACH(i, (i64)rows * width) {
    int c;
    const int r = (int)div_rem(i, width, c);
    const int t = idx[r];
    out[i] = (t >= 0 && t < tableRows) ? table[(i64)t * width + c] : 0u;
  }
}

// Reductions of [rows, cols] over cols (f32 out): op 0 sum, 1 mean, 2 max, 3 min, 4 prod. Each row is
// cut into `chunks` spans of `span` columns, one block of 256 threads a span (blocks fold into grid.y
// past 65535), so that a few long rows (a whole tensor's sum) spread over the GPU; out is [rows, chunks]
// and a second launch reduces the chunks' partials. A mean divides by `divisor` (the row's length) at
// the last launch and is a sum before it.
extern "C" __global__ void reduce_rows(float* out, const void* x, int xSt, int rows, i64 cols, int op, int chunks, i64 span, float divisor) {
  __shared__ float scratch[32];
  const i64 b = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (b >= (i64)rows * chunks) return;
  const i64 row = b / chunks, chunk = b - row * chunks;
  const i64 base = row * cols;
  const i64 end = min(cols, (chunk + 1) * span);
  float acc = op == 2 ? NEG_INF : op == 3 ? POS_INF : op == 4 ? 1.f : 0.f;
  for (i64 c = chunk * span + threadIdx.x; c < end; c += blockDim.x) {
    const float v = load_any(x, xSt, base + c);
    acc = op == 2 ? fmaxf(acc, v) : op == 3 ? fminf(acc, v) : op == 4 ? acc * v : acc + v;
  }
  if (op == 2) acc = block_max(acc, scratch);
  else if (op == 3) acc = -block_max(-acc, scratch);
  else if (op == 4) {
    // Products are rare (tfjs's Prod): a shared-memory tree keeps them exact enough.
    __shared__ float prod[256];
    __syncthreads();
    prod[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) prod[threadIdx.x] *= prod[threadIdx.x + s];
      __syncthreads();
    }
    acc = prod[0];
  } else acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[b] = op == 1 ? acc / divisor : acc;
}

// Index of the max (op 0) or min (op 1) over cols per row, first on ties (tfjs's ArgMax/ArgMin).
extern "C" __global__ void arg_reduce_rows(int* out, const void* x, int xSt, int rows, int cols, int op) {
  __shared__ float bestV[256];
  __shared__ int bestI[256];
  const i64 row = (i64)blockIdx.y * gridDim.x + blockIdx.x;
  if (row >= rows) return;
  float v = op == 0 ? NEG_INF : POS_INF;
  int vi = 0x7fffffff;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float x1 = load_any(x, xSt, row * cols + c);
    if (op == 0 ? x1 > v : x1 < v) { v = x1; vi = c; }
  }
  bestV[threadIdx.x] = v;
  bestI[threadIdx.x] = vi;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const float o = bestV[threadIdx.x + s];
      const int oi = bestI[threadIdx.x + s];
      const bool better = op == 0 ? (o > bestV[threadIdx.x]) : (o < bestV[threadIdx.x]);
      if (better || (o == bestV[threadIdx.x] && oi < bestI[threadIdx.x])) { bestV[threadIdx.x] = o; bestI[threadIdx.x] = oi; }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[row] = bestI[0] == 0x7fffffff ? 0 : bestI[0];
}
