// tfjs's elementwise kernels on the cuda backend: unary and binary math (with broadcasting through
// strides), casts, n-ary sums and fills. Inputs of any storage; float outputs are f32 unless the
// caller asks for bf16; int32 arithmetic stays integer.
#include "common.cuh"

#define MAX_RANK 6

// Unary operations (elementwise.ts's UNARY codes).
__device__ __forceinline__ float unary_op(int op, float x) {
  switch (op) {
    case 0: return -x;
    case 1: return expf(x);
    case 2: return logf(x);
    case 3: return sqrtf(x);
    case 4: return rsqrtf(x);
    case 5: return x * x;
    case 6: return fabsf(x);
    case 7: return erff(x);
    case 8: return tanhf(x);
    case 9: return 1.f / (1.f + expf(-x));
    case 10: return fmaxf(x, 0.f);
    case 11: return 1.f / x;
    case 12: return log1pf(x);
    case 13: return expm1f(x);
    case 14: return sinf(x);
    case 15: return cosf(x);
    case 16: return floorf(x);
    case 17: return ceilf(x);
    case 18: return rintf(x);
    case 19: return x > 0.f ? 1.f : x < 0.f ? -1.f : 0.f;
    case 20: return x * 0.5f * (1.f + erff(x * 0.70710678118654752f)); // exact GELU
    case 21: return (float)(isnan(x) ? 1 : 0);
    case 22: return (float)(isinf(x) ? 1 : 0);
    case 23: return x == 0.f ? 1.f : 0.f; // logical not
    case 24: return x > 0.f ? x : expm1f(x); // elu
    default: return x;
  }
}

// Binary operations (elementwise.ts's BINARY codes); comparisons give 0 or 1.
__device__ __forceinline__ float binary_op(int op, float a, float b) {
  switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    case 4: return fmaxf(a, b);
    case 5: return fminf(a, b);
    case 6: { float d = a - b; return d * d; }
    case 7: return powf(a, b);
    case 8: return (float)(a == b);
    case 9: return (float)(a != b);
    case 10: return (float)(a < b);
    case 11: return (float)(a <= b);
    case 12: return (float)(a > b);
    case 13: return (float)(a >= b);
    case 14: return (float)(a != 0.f && b != 0.f);
    case 15: return (float)(a != 0.f || b != 0.f);
    case 16: return floorf(a / b);
    case 17: return atan2f(a, b);
    case 18: return b == 0.f ? 0.f : a / b; // divNoNan
    default: return a;
  }
}

__device__ __forceinline__ int binary_op_int(int op, int a, int b) {
  switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 4: return max(a, b);
    case 5: return min(a, b);
    case 6: return (a - b) * (a - b);
    case 8: return a == b;
    case 9: return a != b;
    case 10: return a < b;
    case 11: return a <= b;
    case 12: return a > b;
    case 13: return a >= b;
    case 16: { int q = a / b; return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q; } // floorDiv
    default: return a;
  }
}

struct Strides { int dim[MAX_RANK]; int a[MAX_RANK]; int b[MAX_RANK]; };

// Offsets of output element i in a and b (row-major dims, stride 0 where an input broadcasts). One dim
// needs no division; more take one per dim (div_rem: 32-bit below 2^32).
__device__ __forceinline__ void offsets(i64 i, int rank, const Strides& s, i64& oa, i64& ob) {
  if (rank == 1) {
    oa = i * s.a[0];
    ob = i * s.b[0];
    return;
  }
  oa = 0; ob = 0;
  for (int d = rank - 1; d >= 0; d--) {
    int r;
    i = div_rem(i, s.dim[d], r);
    oa += (i64)r * s.a[d];
    ob += (i64)r * s.b[d];
  }
}

// Flat kernels (unary, add_n, cast, same-shape binary) take four elements a thread, one vector load
// and store each for f32 and bf16, as these kernels are all memory traffic: a grid-stride loop over
// groups of four of n elements, i the first of each (a quarter of n threads suffice).
#define FOR_EACH_4(i, n) \
  for (i64 q_ = (i64)blockIdx.x * blockDim.x + threadIdx.x, i = q_ * 4; i < (n); q_ += (i64)gridDim.x * blockDim.x, i = q_ * 4)

extern "C" __global__ void unary(void* out, int outSt, const void* x, int xSt, i64 n, int op) {
  FOR_EACH_4(i, n) {
    const int count = (int)min((i64)4, n - i);
    float v[4];
    load4_any(x, xSt, i, count, count == 4, v);
#pragma unroll
    for (int k = 0; k < 4; k++) v[k] = unary_op(op, v[k]);
    store4_any(out, outSt, i, count, count == 4, v);
  }
}

extern "C" __global__ void binary(void* out, int outSt, const void* a, int aSt, const void* b, int bSt, i64 n, int op, int rank,
                                  Strides s) {
  const bool ints = outSt == ST_I32 && aSt == ST_I32 && bSt == ST_I32;
  if (!ints && rank == 1 && s.a[0] == 1 && s.b[0] == 1) {
    FOR_EACH_4(i, n) {
      const int count = (int)min((i64)4, n - i);
      float va[4], vb[4];
      load4_any(a, aSt, i, count, count == 4, va);
      load4_any(b, bSt, i, count, count == 4, vb);
#pragma unroll
      for (int k = 0; k < 4; k++) va[k] = binary_op(op, va[k], vb[k]);
      store4_any(out, outSt, i, count, count == 4, va);
    }
    return;
  }
  FOR_EACH(i, n) {
    i64 oa, ob;
    offsets(i, rank, s, oa, ob);
    if (ints) {
      ((int*)out)[i] = binary_op_int(op, ((const int*)a)[oa], ((const int*)b)[ob]);
    } else {
      store_any(out, outSt, i, binary_op(op, load_any(a, aSt, oa), load_any(b, bSt, ob)));
    }
  }
}

// Converts storage: any to any (float → int truncates, as tfjs's cast).
extern "C" __global__ void cast(void* out, int outSt, const void* x, int xSt, i64 n) {
  FOR_EACH_4(i, n) {
    const int count = (int)min((i64)4, n - i);
    if (outSt == ST_I32 && xSt == ST_I32) {
      for (int k = 0; k < count; k++) ((int*)out)[i + k] = ((const int*)x)[i + k];
    } else {
      float v[4];
      load4_any(x, xSt, i, count, count == 4, v);
      store4_any(out, outSt, i, count, count == 4, v);
    }
  }
}

// Up to 8 same-shape inputs summed in order (tfjs's AddN).
struct Inputs8 { const void* p[8]; int st[8]; };
extern "C" __global__ void add_n(void* out, int outSt, Inputs8 in, int inputs, i64 n) {
  FOR_EACH_4(i, n) {
    const int count = (int)min((i64)4, n - i);
    float acc[4], v[4];
    load4_any(in.p[0], in.st[0], i, count, count == 4, acc);
    for (int j = 1; j < inputs; j++) {
      load4_any(in.p[j], in.st[j], i, count, count == 4, v);
#pragma unroll
      for (int k = 0; k < 4; k++) acc[k] += v[k];
    }
    store4_any(out, outSt, i, count, count == 4, acc);
  }
}

// out = select(cond, a, b) with same shapes (tfjs's Select with equal shapes).
extern "C" __global__ void select3(void* out, int outSt, const unsigned char* cond, const void* a, int aSt, const void* b, int bSt, i64 n) {
  FOR_EACH(i, n) store_any(out, outSt, i, cond[i] ? load_any(a, aSt, i) : load_any(b, bSt, i));
}

// start, start + step, ... (tfjs's Range for float32 and int32).
extern "C" __global__ void range_fill(void* out, int outSt, float start, float step, i64 n) {
  FOR_EACH(i, n) {
    if (outSt == ST_I32) ((int*)out)[i] = (int)(start + (float)i * step);
    else store_any(out, outSt, i, start + (float)i * step);
  }
}
