// Included before every kernel source the CUDA emulator compiles for the CPU: CUDA C++'s qualifiers,
// built-in variables and intrinsics as plain C++ over the emulator's fibers (emu_runtime.h).
#pragma once
#include <math.h>
#include <string.h>

#include "emu_runtime.h"

static EmuRuntime* emu_rt;
extern "C" void emu_bind(EmuRuntime* rt) { emu_rt = rt; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
// One block runs at a time, its threads as fibers of one OS thread: a block's shared variables are
// the function's statics.
#define __shared__ static

#define threadIdx (emu_rt->current.thread)
#define blockIdx (emu_rt->current.block)
#define blockDim (emu_rt->current.blockSize)
#define gridDim (emu_rt->current.gridSize)

static inline void __syncthreads() { emu_rt->syncBlock(); }

static inline unsigned emu_lane() {
  const EmuThreadState& s = emu_rt->current;
  return (s.thread.x + s.thread.y * s.blockSize.x + s.thread.z * s.blockSize.x * s.blockSize.y) & 31u;
}

// A shuffle: every lane of the warp publishes its value, then reads its source lane's.
template <typename T>
static inline T emu_shuffle(T v, int src, bool keepOwn) {
  const unsigned lane = emu_lane();
  unsigned long long* slots = emu_rt->current.warpSlots;
  slots[lane] = 0;
  memcpy(&slots[lane], &v, sizeof(T));
  emu_rt->syncWarp();
  T r = v;
  if (!keepOwn) memcpy(&r, &slots[src & 31], sizeof(T));
  emu_rt->syncWarp();
  return r;
}
template <typename T>
static inline T __shfl_xor_sync(unsigned, T v, int laneMask) {
  return emu_shuffle(v, (int)emu_lane() ^ laneMask, false);
}
template <typename T>
static inline T __shfl_up_sync(unsigned, T v, unsigned delta) {
  const int lane = (int)emu_lane();
  return emu_shuffle(v, lane - (int)delta, lane < (int)delta);
}
template <typename T>
static inline T __shfl_down_sync(unsigned, T v, unsigned delta) {
  const int lane = (int)emu_lane();
  return emu_shuffle(v, lane + (int)delta, lane + (int)delta > 31);
}
template <typename T>
static inline T __shfl_sync(unsigned, T v, int src) {
  return emu_shuffle(v, src, false);
}

// Every lane publishes its value, then reads all 32: the lanes holding the same value as this one.
static inline unsigned __match_any_sync(unsigned, unsigned v) {
  const unsigned lane = emu_lane();
  unsigned long long* slots = emu_rt->current.warpSlots;
  slots[lane] = v;
  emu_rt->syncWarp();
  unsigned r = 0;
  for (unsigned i = 0; i < 32; i++)
    if (slots[i] == v) r |= 1u << i;
  emu_rt->syncWarp();
  return r;
}
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }

// Fibers of one OS thread never interleave inside an atomic.
template <typename T>
static inline T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}

static inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
static inline int __float_as_int(float f) { int u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
static inline float __int_as_float(int u) { float f; memcpy(&f, &u, 4); return f; }
static inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }

template <typename A, typename B>
static inline auto min(A a, B b) -> decltype(a + b) { return a < b ? a : b; }
template <typename A, typename B>
static inline auto max(A a, B b) -> decltype(a + b) { return a > b ? a : b; }

// A kernel's entry for the emulator: unpacks cuLaunchKernel's parameter array into its arguments.
#include <cstddef>
#include <type_traits>
#include <utility>
template <typename... A, std::size_t... I>
static inline void emu_call(void (*f)(A...), void** params, std::index_sequence<I...>) {
  f(*static_cast<std::decay_t<A>*>(params[I])...);
}
template <typename... A>
static inline void emu_invoke(void (*f)(A...), void** params) {
  emu_call(f, params, std::index_sequence_for<A...>{});
}
template <typename... A>
static inline int emu_param_sizes(void (*)(A...), unsigned long long* sizes) {
  const unsigned long long s[] = {sizeof(std::decay_t<A>)..., 0};
  for (std::size_t i = 0; i < sizeof...(A); i++) sizes[i] = s[i];
  return (int)sizeof...(A);
}
#define EMU_KERNEL(name)                                                                 \
  extern "C" void emu_kernel_##name(void** params) { emu_invoke(name, params); }         \
  extern "C" int emu_sizes_##name(unsigned long long* sizes) { return emu_param_sizes(name, sizes); }
