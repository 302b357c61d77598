// bf16 for kernels compiled for the CPU by the CUDA emulator (in place of CUDA's cuda_bf16.h):
// storage as the upper 16 bits of an f32, conversion rounding to nearest even, as the GPU does.
#pragma once
#include <string.h>

struct __nv_bfloat16 {
  unsigned short bits;
};

static inline float __bfloat162float(__nv_bfloat16 h) {
  unsigned u = (unsigned)h.bits << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  __nv_bfloat16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    h.bits = (unsigned short)((u >> 16) | 0x40);  // NaN stays a (quiet) NaN
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    h.bits = (unsigned short)(u >> 16);
  }
  return h;
}
