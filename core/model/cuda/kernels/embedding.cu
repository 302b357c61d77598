// The embedding's backward: rows of dy [n, D] added into a zeroed table [V, D] at their token ids.
// Atomic adds: ids repeat within a batch.
#include "common.cuh"

extern "C" __global__ void scatter_add_rows(float* table, const void* dy, int dySt, const int* ids, int n, int D) {
  FOR_EACH(i, (i64)n * D) {
    int c;
    const int r = (int)div_rem(i, D, c);
    atomicAdd(table + (i64)ids[r] * D + c, load_any(dy, dySt, i));
  }
}
