// What the CUDA emulator's core (emulator.cpp) and a kernel module compiled for the CPU share: the
// running thread's coordinates and the synchronisation calls. The core runs a block's threads as
// fibers on one OS thread and updates `current` before it switches to one.
#pragma once

struct EmuDim3 {
  unsigned x, y, z;
};

struct EmuThreadState {
  // (Not named threadIdx and so on: the kernels' prelude defines those names as macros.)
  EmuDim3 thread, block, blockSize, gridSize;
  // This warp's 32 exchange slots (shuffles) and the launch's dynamic shared memory.
  unsigned long long* warpSlots;
  void* dynamicShared;
};

struct EmuRuntime {
  EmuThreadState current;
  void (*syncBlock)();
  void (*syncWarp)();
};
