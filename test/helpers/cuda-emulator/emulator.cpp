// A CPU emulation of the parts of the CUDA driver API, NVRTC and cuBLASLt that offshoot's cuda
// backend calls (core/model/cuda/driver.ts, BINDINGS), for tests on machines without a GPU. Built as
// one shared library that stands in for libcuda.so.1, libnvrtc.so.13 and libcublasLt.so.13, so the
// backend's own TypeScript runs unchanged: the kernels' CUDA C++ sources are compiled for the CPU by
// g++ (in place of NVRTC) with prelude.h, a block's threads run as fibers of one OS thread (so
// __syncthreads and warp shuffles keep their meaning), products run as plain loops, and a captured
// CUDA graph is a recorded list of the stream's work, replayed in order. Device memory is host
// memory. It checks the logic of kernels and of the backend around them, not speed, and not what
// only the hardware decides (the products' accumulation order, the speed of anything). Each block of
// device memory ends at an inaccessible page, so an access past its end faults where it happens;
// OFFSHOOT_CUDA_EMULATOR_TRACE=1 prints every launch (to find the kernel that faulted).
#include <dlfcn.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_bf16.h"
#include "emu_runtime.h"

#define EXPORT extern "C" __attribute__((visibility("default")))

enum : int {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_INVALID_IMAGE = 200,
  CUDA_ERROR_NOT_FOUND = 500,
  CUDA_ERROR_LAUNCH_FAILED = 719,
  CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900,
  CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901,
};

// ---------------------------------------------------------------------------------------------
// The stream: work runs at once, or is recorded while a graph is being captured.

struct Graph {
  std::vector<std::function<void()>> work;
};

// OFFSHOOT_CUDA_EMULATOR_NO_COMPUTE=1: kernels and products do nothing (memory starts zeroed), while
// allocations, copies and graphs are as always: the backend's memory use at shapes too large to
// compute on a CPU (its allocator's figures are the same as on a GPU).
static const bool noCompute = [] {
  const char* v = getenv("OFFSHOOT_CUDA_EMULATOR_NO_COMPUTE");
  return v && *v && strcmp(v, "0") != 0;
}();

static Graph* capture = nullptr;
static bool captureInvalidated = false;
static int lastLaunchStatus = CUDA_SUCCESS;

static void enqueue(std::function<void()> work) {
  if (capture)
    capture->work.push_back(std::move(work));
  else
    work();
}

// A call that waits for the capturing stream: not allowed while capturing (it invalidates the capture,
// as on a GPU).
static int waits() {
  if (!capture) return CUDA_SUCCESS;
  captureInvalidated = true;
  return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

// ---------------------------------------------------------------------------------------------
// Blocks of fibers.

enum FiberState { READY, BLOCK_WAIT, WARP_WAIT, DONE };
static const size_t STACK_BYTES = 256 << 10;

// A thread of the block: started once on a stack of its own (makecontext), then switched to and from
// with _setjmp/_longjmp, which (unlike swapcontext) make no system call. It runs the kernel for one
// block after another.
struct Fiber {
  jmp_buf ctx;
  ucontext_t start;
  FiberState state;
  bool started = false;
  char* stack = nullptr;
};

static EmuRuntime runtime;
static std::vector<Fiber> fibers;
static std::vector<unsigned long long> warpSlots;
static jmp_buf scheduler;
static int running = -1;
static void (*entry)(void**) = nullptr;
static void** entryParams = nullptr;

static void yieldAs(FiberState s) {
  Fiber& f = fibers[running];
  f.state = s;
  if (!_setjmp(f.ctx)) _longjmp(scheduler, 1);
}
static void syncBlock() { yieldAs(BLOCK_WAIT); }
static void syncWarp() { yieldAs(WARP_WAIT); }

static void fiberMain() {
  for (;;) {
    entry(entryParams);
    yieldAs(DONE);
  }
}

static void enter(int i, const EmuDim3& block) {
  running = i;
  EmuThreadState& s = runtime.current;
  s.thread = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
  s.warpSlots = &warpSlots[(size_t)(i / 32) * 32];
  Fiber& f = fibers[i];
  if (_setjmp(scheduler)) return;
  if (f.started) _longjmp(f.ctx, 1);
  f.started = true;
  getcontext(&f.start);
  f.start.uc_stack.ss_sp = f.stack;
  f.start.uc_stack.ss_size = STACK_BYTES;
  f.start.uc_link = nullptr;
  makecontext(&f.start, fiberMain, 0);
  setcontext(&f.start);
}

// Runs one block; false when its threads deadlock (a barrier some never reach), and then the
// fibers start afresh at the next launch. Between barriers the threads run one after another, first
// to last or (`reverse`) last to first: a read of shared memory that another thread writes without a
// barrier between them sees the wrong value in one of the two orders.
static bool runBlock(int n, const EmuDim3& block, bool reverse) {
  for (int i = 0; i < n; i++) fibers[i].state = READY;
  for (;;) {
    for (int k = 0; k < n; k++) {
      const int i = reverse ? n - 1 - k : k;
      if (fibers[i].state == READY) enter(i, block);
    }
    bool released = false, done = true;
    for (int w = 0; w * 32 < n; w++) {
      bool waiting = false, all = true;
      for (int i = w * 32; i < n && i < w * 32 + 32; i++) {
        waiting |= fibers[i].state == WARP_WAIT;
        all &= fibers[i].state == WARP_WAIT || fibers[i].state == DONE;
      }
      if (waiting && all) {
        for (int i = w * 32; i < n && i < w * 32 + 32; i++)
          if (fibers[i].state == WARP_WAIT) fibers[i].state = READY;
        released = true;
      }
    }
    if (!released) {
      bool waiting = false, all = true;
      for (int i = 0; i < n; i++) {
        waiting |= fibers[i].state == BLOCK_WAIT;
        all &= fibers[i].state == BLOCK_WAIT || fibers[i].state == DONE;
      }
      if (waiting && all) {
        for (int i = 0; i < n; i++)
          if (fibers[i].state == BLOCK_WAIT) fibers[i].state = READY;
        released = true;
      }
    }
    for (int i = 0; i < n; i++) done &= fibers[i].state == DONE;
    if (done) return true;
    if (!released) {
      for (Fiber& f : fibers) f.started = false;
      return false;
    }
  }
}

struct Function {
  std::string name;
  void (*entry)(void**);
  std::vector<size_t> sizes;
};

static std::vector<char> dynamicShared;

static int runGrid(const Function* fn, EmuDim3 grid, EmuDim3 block, unsigned sharedBytes, void** params) {
  const int n = (int)(block.x * block.y * block.z);
  if (n < 1 || n > 1024) return CUDA_ERROR_INVALID_VALUE;
  while ((int)fibers.size() < n) {
    fibers.emplace_back();
    fibers.back().stack = (char*)malloc(STACK_BYTES);
  }
  warpSlots.assign((size_t)((n + 31) / 32) * 32, 0);
  if (dynamicShared.size() < sharedBytes) dynamicShared.resize(sharedBytes);
  runtime.current.blockSize = block;
  runtime.current.gridSize = grid;
  runtime.current.dynamicShared = dynamicShared.data();
  entry = fn->entry;
  entryParams = params;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        runtime.current.block = {x, y, z};
        if (!runBlock(n, block, (x + y + z) & 1)) {
          fprintf(stderr, "cuda emulator: %s deadlocked in block (%u, %u, %u): a barrier not every thread reaches\n",
                  fn->name.c_str(), x, y, z);
          return CUDA_ERROR_LAUNCH_FAILED;
        }
      }
  return CUDA_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// Driver API.

static size_t allocated = 0;
struct Mapping {
  void* base;
  size_t mapped, bytes;
};
static std::map<uint64_t, Mapping> allocations;
static const size_t TOTAL_BYTES = 16ull << 30;

EXPORT int cuInit(unsigned) {
  runtime.syncBlock = syncBlock;
  runtime.syncWarp = syncWarp;
  return CUDA_SUCCESS;
}
EXPORT int cuDriverGetVersion(int* v) { *v = 13000; return CUDA_SUCCESS; }
EXPORT int cuDeviceGetCount(int* n) { *n = 1; return CUDA_SUCCESS; }
EXPORT int cuDeviceGet(int* d, int ordinal) { *d = ordinal; return ordinal == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE; }
EXPORT int cuDeviceGetName(uint8_t* name, int len, int) {
  snprintf((char*)name, len, "offshoot CUDA emulator (CPU)");
  return CUDA_SUCCESS;
}
EXPORT int cuDeviceGetAttribute(int* v, int attrib, int) {
  switch (attrib) {
    case 16: *v = 4; break;             // multiprocessors
    case 75: *v = 9; break;             // compute capability major
    case 76: *v = 0; break;             // minor
    case 97: *v = 227 * 1024; break;    // max shared memory per block, opted in
    default: *v = 0;
  }
  return CUDA_SUCCESS;
}
EXPORT int cuDeviceTotalMem_v2(size_t* bytes, int) { *bytes = TOTAL_BYTES; return CUDA_SUCCESS; }
EXPORT int cuDevicePrimaryCtxRetain(void** ctx, int) { *ctx = (void*)&runtime; return CUDA_SUCCESS; }
EXPORT int cuCtxSetCurrent(void*) { return CUDA_SUCCESS; }
EXPORT int cuCtxSynchronize() { return waits() ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : lastLaunchStatus; }

// Each block ends where an inaccessible page begins (and one precedes it), so a kernel, product or
// copy that writes or reads past a block's end faults there instead of corrupting other memory.
EXPORT int cuMemAlloc_v2(uint64_t* dptr, size_t bytes) {
  if (allocated + bytes > TOTAL_BYTES) return CUDA_ERROR_OUT_OF_MEMORY;
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  const size_t rounded = (bytes + 255) & ~(size_t)255;
  const size_t body = (rounded + page - 1) / page * page;
  const size_t mapped = body + 2 * page;
  char* base = (char*)mmap(nullptr, mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  if (mprotect(base + page, body, PROT_READ | PROT_WRITE) != 0) {
    munmap(base, mapped);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  char* p = base + page + (body - rounded);
  // Fresh device memory is not zeroed on a GPU either: fill it with a NaN pattern so reads of
  // unwritten memory show.
  memset(p, noCompute ? 0 : 0xff, rounded);
  *dptr = (uint64_t)p;
  allocations[*dptr] = {base, mapped, rounded};
  allocated += rounded;
  return CUDA_SUCCESS;
}
EXPORT int cuMemFree_v2(uint64_t dptr) {
  auto it = allocations.find(dptr);
  if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  allocated -= it->second.bytes;
  munmap(it->second.base, it->second.mapped);
  allocations.erase(it);
  return CUDA_SUCCESS;
}
EXPORT int cuMemGetInfo_v2(size_t* freeBytes, size_t* total) {
  *freeBytes = TOTAL_BYTES - allocated;
  *total = TOTAL_BYTES;
  return CUDA_SUCCESS;
}
EXPORT int cuMemAllocHost_v2(void** host, size_t bytes) {
  *host = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
  return *host ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
EXPORT int cuMemFreeHost(void* host) { free(host); return CUDA_SUCCESS; }

static int copyAsync(uint64_t dst, uint64_t src, size_t bytes) {
  enqueue([=] { memmove((void*)dst, (const void*)src, bytes); });
  return CUDA_SUCCESS;
}
EXPORT int cuMemcpyHtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void*) { return copyAsync(dst, src, bytes); }
EXPORT int cuMemcpyDtoHAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void*) { return copyAsync(dst, src, bytes); }
EXPORT int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void*) { return copyAsync(dst, src, bytes); }
EXPORT int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t count, void*) {
  enqueue([=] { memset((void*)dst, value, count); });
  return CUDA_SUCCESS;
}
EXPORT int cuMemsetD32Async(uint64_t dst, uint32_t value, size_t count, void*) {
  enqueue([=] {
    uint32_t* p = (uint32_t*)dst;
    for (size_t i = 0; i < count; i++) p[i] = value;
  });
  return CUDA_SUCCESS;
}

struct Module {
  void* handle;
};

// A "cubin" here is the kernel module as a shared object (nvrtcGetCUBIN below): its size from its
// ELF header (the section table ends the file), loaded from an anonymous file.
EXPORT int cuModuleLoadData(void** module, void* image) {
  const unsigned char* e = (const unsigned char*)image;
  if (memcmp(e, "\x7f" "ELF", 4) != 0) return CUDA_ERROR_INVALID_IMAGE;
  uint64_t shoff;
  uint16_t shentsize, shnum;
  memcpy(&shoff, e + 0x28, 8);
  memcpy(&shentsize, e + 0x3a, 2);
  memcpy(&shnum, e + 0x3c, 2);
  const size_t size = shoff + (size_t)shentsize * shnum;
  const int fd = memfd_create("offshoot-kernel", 0);
  if (fd < 0 || write(fd, image, size) != (ssize_t)size) return CUDA_ERROR_INVALID_IMAGE;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  // The file stays open: the loader tells libraries apart by path, and a closed descriptor's number
  // (so its /proc path) would come back for the next module.
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "cuda emulator: %s\n", dlerror());
    return CUDA_ERROR_INVALID_IMAGE;
  }
  auto bind = (void (*)(EmuRuntime*))dlsym(h, "emu_bind");
  if (!bind) return CUDA_ERROR_INVALID_IMAGE;
  bind(&runtime);
  *module = new Module{h};
  return CUDA_SUCCESS;
}

EXPORT int cuModuleGetFunction(void** fn, void* module, const char* name) {
  void* h = ((Module*)module)->handle;
  auto run = (void (*)(void**))dlsym(h, ("emu_kernel_" + std::string(name)).c_str());
  auto sizes = (int (*)(unsigned long long*))dlsym(h, ("emu_sizes_" + std::string(name)).c_str());
  if (!run || !sizes) return CUDA_ERROR_NOT_FOUND;
  unsigned long long s[64];
  const int n = sizes(s);
  *fn = new Function{name, run, std::vector<size_t>(s, s + n)};
  return CUDA_SUCCESS;
}

EXPORT int cuFuncSetAttribute(void*, int, int) { return CUDA_SUCCESS; }

EXPORT int cuLaunchKernel(void* f, uint32_t gx, uint32_t gy, uint32_t gz, uint32_t bx, uint32_t by, uint32_t bz,
                          uint32_t sharedBytes, void*, void* params, void*) {
  const Function* fn = (const Function*)f;
  // The arguments' values are taken now, as cuLaunchKernel does (and a graph keeps them).
  auto args = std::make_shared<std::vector<std::vector<char>>>();
  for (size_t i = 0; i < fn->sizes.size(); i++) {
    const char* p = ((char**)params)[i];
    args->emplace_back(p, p + fn->sizes[i]);
  }
  const EmuDim3 grid{gx, gy, gz}, block{bx, by, bz};
  if (noCompute) return lastLaunchStatus;
  enqueue([=] {
    if (getenv("OFFSHOOT_CUDA_EMULATOR_TRACE")) fprintf(stderr, "cuda emulator: %s grid (%u, %u, %u) block (%u, %u, %u)\n", fn->name.c_str(), grid.x, grid.y, grid.z, block.x, block.y, block.z);
    std::vector<void*> ptrs;
    for (auto& a : *args) ptrs.push_back(a.data());
    const int status = runGrid(fn, grid, block, sharedBytes, ptrs.data());
    if (status != CUDA_SUCCESS) lastLaunchStatus = status;
  });
  return lastLaunchStatus;
}

EXPORT int cuStreamCreate(void** stream, uint32_t) { *stream = (void*)&runtime; return CUDA_SUCCESS; }
EXPORT int cuStreamSynchronize(void*) { return waits() ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : lastLaunchStatus; }

struct Event {
  double ms = 0;
};
static double nowMs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}
EXPORT int cuEventCreate(void** ev, uint32_t) { *ev = new Event(); return CUDA_SUCCESS; }
EXPORT int cuEventRecord(void* ev, void*) {
  Event* e = (Event*)ev;
  enqueue([e] { e->ms = nowMs(); });
  return CUDA_SUCCESS;
}
// Work runs when it is queued, so every event has completed (a relaxed capture may ask).
EXPORT int cuEventQuery(void*) { return CUDA_SUCCESS; }
EXPORT int cuEventSynchronize(void*) { return CUDA_SUCCESS; }
EXPORT int cuEventElapsedTime_v2(float* ms, void* start, void* end) {
  *ms = (float)(((Event*)end)->ms - ((Event*)start)->ms);
  return CUDA_SUCCESS;
}

EXPORT int cuGetErrorName(int error, const char** name) {
  switch (error) {
    case CUDA_SUCCESS: *name = "CUDA_SUCCESS"; break;
    case CUDA_ERROR_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; break;
    case CUDA_ERROR_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case CUDA_ERROR_INVALID_IMAGE: *name = "CUDA_ERROR_INVALID_IMAGE"; break;
    case CUDA_ERROR_NOT_FOUND: *name = "CUDA_ERROR_NOT_FOUND"; break;
    case CUDA_ERROR_LAUNCH_FAILED: *name = "CUDA_ERROR_LAUNCH_FAILED"; break;
    case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: *name = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"; break;
    case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: *name = "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"; break;
    default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

EXPORT int cuStreamBeginCapture_v2(void*, int) {
  if (capture) return CUDA_ERROR_INVALID_VALUE;
  capture = new Graph();
  captureInvalidated = false;
  return CUDA_SUCCESS;
}
EXPORT int cuStreamEndCapture(void*, void** graph) {
  Graph* g = capture;
  capture = nullptr;
  if (!g) return CUDA_ERROR_INVALID_VALUE;
  if (captureInvalidated) {
    delete g;
    *graph = nullptr;
    return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  }
  *graph = g;
  return CUDA_SUCCESS;
}
EXPORT int cuGraphInstantiateWithFlags(void** exec, void* graph, uint64_t) {
  *exec = new Graph(*(Graph*)graph);
  return CUDA_SUCCESS;
}
EXPORT int cuGraphLaunch(void* exec, void*) {
  if (capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  for (auto& w : ((Graph*)exec)->work) w();
  return lastLaunchStatus;
}
EXPORT int cuGraphExecDestroy(void* exec) { delete (Graph*)exec; return CUDA_SUCCESS; }
EXPORT int cuGraphDestroy(void* graph) { delete (Graph*)graph; return CUDA_SUCCESS; }

// ---------------------------------------------------------------------------------------------
// NVRTC: the source compiled by g++ for the CPU, with prelude.h, into a shared object.

struct Program {
  std::string source, name, log;
  std::vector<char> image;
};

EXPORT int nvrtcVersion(int* major, int* minor) { *major = 13; *minor = 0; return 0; }
EXPORT int nvrtcCreateProgram(void** prog, const char* src, const char* name, int, void*, void*) {
  *prog = new Program{src, name ? name : "kernel.cu", "", {}};
  return 0;
}

static std::string shellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

static bool readFile(const std::string& path, std::vector<char>& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

EXPORT int nvrtcCompileProgram(void* p, int numOptions, const char** options) {
  Program* prog = (Program*)p;
  // Dynamic shared memory becomes a pointer to the launch's buffer; each kernel gets an entry that
  // unpacks cuLaunchKernel's parameter array.
  std::string src = std::regex_replace(
      prog->source, std::regex(R"(extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\s*\[\s*\]\s*;)"),
      "$1* $2 = ($1*)emu_rt->current.dynamicShared;");
  std::regex kernel(R"(extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\()");
  std::string entries;
  for (auto it = std::sregex_iterator(src.begin(), src.end(), kernel); it != std::sregex_iterator(); ++it)
    entries += "EMU_KERNEL(" + (*it)[1].str() + ")\n";
  src += "\n" + entries;
  char dir[] = "/tmp/offshoot-emu-XXXXXX";
  if (!mkdtemp(dir)) return 3;  // NVRTC_ERROR_INVALID_INPUT
  const std::string d = dir, source = d + "/kernel.cpp", object = d + "/kernel.so", log = d + "/log";
  std::ofstream(source) << src;
  const char* cxx = getenv("CXX");
  std::string cmd = std::string(cxx && *cxx ? cxx : "g++") +
                    " -std=c++17 -O2 -fPIC -shared -fno-exceptions -Wno-unknown-pragmas -include prelude.h";
  for (int i = 0; i < numOptions; i++) {
    const std::string o = options[i];
    if (o.rfind("-I", 0) == 0 || o.rfind("-D", 0) == 0) cmd += " " + shellQuote(o);
  }
  cmd += " -o " + shellQuote(object) + " " + shellQuote(source) + " > " + shellQuote(log) + " 2>&1";
  const int status = system(cmd.c_str());
  std::vector<char> text;
  readFile(log, text);
  prog->log.assign(text.begin(), text.end());
  const bool ok = status == 0 && readFile(object, prog->image);
  unlink(source.c_str());
  unlink(object.c_str());
  unlink(log.c_str());
  rmdir(dir);
  return ok ? 0 : 6;  // NVRTC_ERROR_COMPILATION
}
EXPORT int nvrtcGetProgramLogSize(void* p, size_t* size) { *size = ((Program*)p)->log.size() + 1; return 0; }
EXPORT int nvrtcGetProgramLog(void* p, uint8_t* log) {
  const std::string& l = ((Program*)p)->log;
  memcpy(log, l.c_str(), l.size() + 1);
  return 0;
}
EXPORT int nvrtcGetCUBINSize(void* p, size_t* size) { *size = ((Program*)p)->image.size(); return 0; }
EXPORT int nvrtcGetCUBIN(void* p, uint8_t* out) {
  const auto& img = ((Program*)p)->image;
  memcpy(out, img.data(), img.size());
  return 0;
}
EXPORT int nvrtcDestroyProgram(void** p) {
  delete (Program*)*p;
  *p = nullptr;
  return 0;
}
EXPORT const char* nvrtcGetErrorString(int result) {
  return result == 0 ? "NVRTC_SUCCESS" : result == 6 ? "NVRTC_ERROR_COMPILATION" : "NVRTC_ERROR";
}

// ---------------------------------------------------------------------------------------------
// cuBLASLt: D = alpha·op(A)·op(B) + beta·C (+ bias per row of D), column-major, strided batches,
// f32 or bf16 operands, f32 accumulation.

enum { R_32F = 0, R_16BF = 14 };
enum { DESC_TRANSA = 3, DESC_TRANSB = 4, DESC_EPILOGUE = 7, DESC_BIAS_POINTER = 8, DESC_BIAS_DATA_TYPE = 26 };
enum { EPILOGUE_BIAS = 4 };
enum { LAYOUT_BATCH_COUNT = 5, LAYOUT_STRIDED_BATCH_OFFSET = 6 };
enum { CUBLAS_STATUS_INVALID_VALUE = 7 };

struct MatmulDesc {
  int transa = 0, transb = 0;
  uint32_t epilogue = 1;
  uint64_t bias = 0;
  int biasType = R_32F;
};
struct Layout {
  int type;
  uint64_t rows, cols;
  int64_t ld;
  int32_t batch = 1;
  int64_t stride = 0;
};

EXPORT size_t cublasLtGetVersion() { return 130100; }
EXPORT int cublasLtCreate(void** handle) { *handle = (void*)&runtime; return 0; }
EXPORT int cublasLtMatmulDescCreate(void** desc, int, int) { *desc = new MatmulDesc(); return 0; }
EXPORT int cublasLtMatmulDescSetAttribute(void* d, int attr, void* value, size_t size) {
  MatmulDesc* m = (MatmulDesc*)d;
  switch (attr) {
    case DESC_TRANSA: memcpy(&m->transa, value, 4); break;
    case DESC_TRANSB: memcpy(&m->transb, value, 4); break;
    case DESC_EPILOGUE: memcpy(&m->epilogue, value, 4); break;
    case DESC_BIAS_POINTER: memcpy(&m->bias, value, 8); break;
    case DESC_BIAS_DATA_TYPE: memcpy(&m->biasType, value, 4); break;
    default: return CUBLAS_STATUS_INVALID_VALUE;
  }
  return size > 0 ? 0 : CUBLAS_STATUS_INVALID_VALUE;
}
EXPORT int cublasLtMatrixLayoutCreate(void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
  if (type != R_32F && type != R_16BF) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new Layout{type, rows, cols, ld};
  return 0;
}
EXPORT int cublasLtMatrixLayoutSetAttribute(void* l, int attr, void* value, size_t) {
  Layout* m = (Layout*)l;
  if (attr == LAYOUT_BATCH_COUNT) memcpy(&m->batch, value, 4);
  else if (attr == LAYOUT_STRIDED_BATCH_OFFSET) memcpy(&m->stride, value, 8);
  else return CUBLAS_STATUS_INVALID_VALUE;
  return 0;
}
EXPORT int cublasLtMatmulPreferenceCreate(void** pref) { *pref = new int(0); return 0; }
EXPORT int cublasLtMatmulPreferenceSetAttribute(void*, int, void*, size_t) { return 0; }

static bool conforms(const MatmulDesc* m, const Layout* a, const Layout* b, const Layout* d) {
  const uint64_t M = m->transa ? a->cols : a->rows, K = m->transa ? a->rows : a->cols;
  const uint64_t Kb = m->transb ? b->cols : b->rows, N = m->transb ? b->rows : b->cols;
  return K == Kb && M == d->rows && N == d->cols;
}

EXPORT int cublasLtMatmulAlgoGetHeuristic(void*, void* desc, void* a, void* b, void*, void* d, void*, int requested,
                                          uint8_t* results, int* returned) {
  const MatmulDesc* m = (const MatmulDesc*)desc;
  // As cuBLASLt: the bias comes in the output's type.
  if (!conforms(m, (Layout*)a, (Layout*)b, (Layout*)d) ||
      (m->epilogue == EPILOGUE_BIAS && m->biasType != ((Layout*)d)->type))
    return CUBLAS_STATUS_INVALID_VALUE;
  memset(results, 0, 96 * (size_t)(requested > 0 ? 1 : 0));
  *returned = requested > 0 ? 1 : 0;
  return 0;
}

static inline float loadAs(int type, const void* p, int64_t i) {
  return type == R_16BF ? __bfloat162float(((const __nv_bfloat16*)p)[i]) : ((const float*)p)[i];
}
static inline void storeAs(int type, void* p, int64_t i, float v) {
  if (type == R_16BF) ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn(v);
  else ((float*)p)[i] = v;
}

EXPORT int cublasLtMatmul(void*, void* desc, void* alpha, uint64_t A, void* aDesc, uint64_t B, void* bDesc, void* beta,
                          uint64_t C, void* cDesc, uint64_t D, void* dDesc, void*, uint64_t, size_t, void*) {
  // The scalars and the bias pointer are read now (host pointer mode), as cuBLASLt does.
  const MatmulDesc m = *(const MatmulDesc*)desc;
  const Layout a = *(Layout*)aDesc, b = *(Layout*)bDesc, c = *(Layout*)cDesc, d = *(Layout*)dDesc;
  const float al = *(const float*)alpha, be = *(const float*)beta;
  if (!conforms(&m, &a, &b, &d)) return CUBLAS_STATUS_INVALID_VALUE;
  if (noCompute) return 0;
  enqueue([=] {
    const int64_t M = d.rows, N = d.cols, K = m.transa ? a.rows : a.cols;
    for (int32_t batch = 0; batch < d.batch; batch++) {
      const void* pa = (const char*)A + batch * a.stride * (a.type == R_16BF ? 2 : 4);
      const void* pb = (const char*)B + batch * b.stride * (b.type == R_16BF ? 2 : 4);
      const void* pc = (const char*)C + batch * c.stride * (c.type == R_16BF ? 2 : 4);
      void* pd = (char*)D + batch * d.stride * (d.type == R_16BF ? 2 : 4);
      for (int64_t j = 0; j < N; j++)
        for (int64_t i = 0; i < M; i++) {
          float acc = 0.f;
          for (int64_t k = 0; k < K; k++) {
            const float x = loadAs(a.type, pa, m.transa ? k + i * a.ld : i + k * a.ld);
            const float y = loadAs(b.type, pb, m.transb ? j + k * b.ld : k + j * b.ld);
            acc += x * y;
          }
          float v = al * acc;
          if (be != 0.f) v += be * loadAs(c.type, pc, i + j * c.ld);
          if (m.epilogue == EPILOGUE_BIAS) v += loadAs(m.biasType, (const void*)m.bias, i);
          storeAs(d.type, pd, i + j * d.ld, v);
        }
    }
  });
  return 0;
}
