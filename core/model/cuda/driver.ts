/**
 * Calls into NVIDIA's libraries from TypeScript through koffi (a C FFI with prebuilt binaries in
 * its npm package, so nothing is compiled at install): the CUDA driver API (libcuda.so.1, from the
 * driver), NVRTC and cuBLASLt (from the CUDA 13 wheels, libraries.ts). koffi was chosen over a
 * small N-API addon because it needs no compiler or CUDA headers on the machine that installs
 * offshoot, and its per-call cost (about 0.1–0.3 µs) is small next to the driver's own cost of a
 * kernel launch (a few µs); docs/cuda-backend.md has the measurements.
 *
 * Every binding is declared once, in BINDINGS, as the C prototype koffi parses; the symbol is the one
 * the header's #defines resolve to (cuMemAlloc is cuMemAlloc_v2). Device pointers (CUdeviceptr) are
 * uint64_t, and so are the pinned host addresses the copies take (an offset into a staging buffer is
 * plain arithmetic that way; the ABI is the same as a pointer's on x86-64). test/cuda-backend.test.ts checks each
 * prototype against the headers shipped in the wheels.
 */
import { createRequire } from 'node:module';
import * as path from 'node:path';

import type { CudaLibraries } from './libraries.js';

type Koffi = typeof import('koffi');
type Fn = (...args: unknown[]) => unknown;

let koffiModule: Koffi | undefined;
/** koffi, loaded on first use (CommonJS). */
export function koffi(): Koffi {
  koffiModule ??= createRequire(import.meta.url)('koffi') as Koffi;
  return koffiModule;
}

export type LibraryName = 'cuda' | 'nvrtc' | 'cublasLt';

/** [library, C prototype] for every function offshoot calls. Handles are void*, CUdeviceptr is uint64_t. */
export const BINDINGS = [
  ['cuda', 'int cuInit(unsigned int flags)'],
  ['cuda', 'int cuDriverGetVersion(_Out_ int* version)'],
  ['cuda', 'int cuDeviceGetCount(_Out_ int* count)'],
  ['cuda', 'int cuDeviceGet(_Out_ int* device, int ordinal)'],
  ['cuda', 'int cuDeviceGetName(_Out_ uint8_t* name, int len, int dev)'],
  ['cuda', 'int cuDeviceGetAttribute(_Out_ int* value, int attrib, int dev)'],
  ['cuda', 'int cuDeviceTotalMem_v2(_Out_ size_t* bytes, int dev)'],
  ['cuda', 'int cuDevicePrimaryCtxRetain(_Out_ void** ctx, int dev)'],
  ['cuda', 'int cuCtxSetCurrent(void* ctx)'],
  ['cuda', 'int cuCtxSynchronize()'],
  ['cuda', 'int cuMemAlloc_v2(_Out_ uint64_t* dptr, size_t bytes)'],
  ['cuda', 'int cuMemFree_v2(uint64_t dptr)'],
  ['cuda', 'int cuMemGetInfo_v2(_Out_ size_t* free, _Out_ size_t* total)'],
  ['cuda', 'int cuMemAllocHost_v2(_Out_ void** host, size_t bytes)'],
  ['cuda', 'int cuMemFreeHost(void* host)'],
  ['cuda', 'int cuMemcpyHtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void* stream)'],
  ['cuda', 'int cuMemcpyDtoHAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void* stream)'],
  ['cuda', 'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void* stream)'],
  ['cuda', 'int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t count, void* stream)'],
  ['cuda', 'int cuMemsetD32Async(uint64_t dst, uint32_t value, size_t count, void* stream)'],
  ['cuda', 'int cuModuleLoadData(_Out_ void** module, void* image)'],
  ['cuda', 'int cuModuleGetFunction(_Out_ void** fn, void* module, const char* name)'],
  ['cuda', 'int cuFuncSetAttribute(void* fn, int attrib, int value)'],
  [
    'cuda',
    'int cuLaunchKernel(void* fn, uint32_t gridX, uint32_t gridY, uint32_t gridZ, uint32_t blockX, uint32_t blockY, uint32_t blockZ, uint32_t sharedBytes, void* stream, void* params, void* extra)',
  ],
  ['cuda', 'int cuStreamCreate(_Out_ void** stream, uint32_t flags)'],
  ['cuda', 'int cuStreamSynchronize(void* stream)'],
  ['cuda', 'int cuEventCreate(_Out_ void** event, uint32_t flags)'],
  ['cuda', 'int cuEventRecord(void* event, void* stream)'],
  ['cuda', 'int cuEventQuery(void* event)'],
  ['cuda', 'int cuEventSynchronize(void* event)'],
  ['cuda', 'int cuEventElapsedTime_v2(_Out_ float* ms, void* start, void* end)'],
  ['cuda', 'int cuGetErrorName(int error, _Out_ const char** name)'],
  ['cuda', 'int cuStreamBeginCapture_v2(void* stream, int mode)'],
  ['cuda', 'int cuStreamEndCapture(void* stream, _Out_ void** graph)'],
  ['cuda', 'int cuGraphInstantiateWithFlags(_Out_ void** exec, void* graph, uint64_t flags)'],
  ['cuda', 'int cuGraphLaunch(void* exec, void* stream)'],
  ['cuda', 'int cuGraphExecDestroy(void* exec)'],
  ['cuda', 'int cuGraphDestroy(void* graph)'],
  ['nvrtc', 'int nvrtcVersion(_Out_ int* major, _Out_ int* minor)'],
  [
    'nvrtc',
    'int nvrtcCreateProgram(_Out_ void** prog, const char* src, const char* name, int numHeaders, void* headers, void* includeNames)',
  ],
  ['nvrtc', 'int nvrtcCompileProgram(void* prog, int numOptions, const char** options)'],
  ['nvrtc', 'int nvrtcGetProgramLogSize(void* prog, _Out_ size_t* size)'],
  ['nvrtc', 'int nvrtcGetProgramLog(void* prog, _Out_ uint8_t* log)'],
  ['nvrtc', 'int nvrtcGetCUBINSize(void* prog, _Out_ size_t* size)'],
  ['nvrtc', 'int nvrtcGetCUBIN(void* prog, _Out_ uint8_t* cubin)'],
  ['nvrtc', 'int nvrtcDestroyProgram(_Inout_ void** prog)'],
  ['nvrtc', 'const char* nvrtcGetErrorString(int result)'],
  ['cublasLt', 'size_t cublasLtGetVersion()'],
  ['cublasLt', 'int cublasLtCreate(_Out_ void** handle)'],
  ['cublasLt', 'int cublasLtMatmulDescCreate(_Out_ void** desc, int computeType, int scaleType)'],
  ['cublasLt', 'int cublasLtMatmulDescSetAttribute(void* desc, int attr, void* value, size_t size)'],
  [
    'cublasLt',
    'int cublasLtMatrixLayoutCreate(_Out_ void** layout, int type, uint64_t rows, uint64_t cols, int64_t ld)',
  ],
  ['cublasLt', 'int cublasLtMatrixLayoutSetAttribute(void* layout, int attr, void* value, size_t size)'],
  ['cublasLt', 'int cublasLtMatmulPreferenceCreate(_Out_ void** pref)'],
  ['cublasLt', 'int cublasLtMatmulPreferenceSetAttribute(void* pref, int attr, void* value, size_t size)'],
  [
    'cublasLt',
    'int cublasLtMatmulAlgoGetHeuristic(void* handle, void* desc, void* a, void* b, void* c, void* d, void* pref, int requested, _Out_ uint8_t* results, _Out_ int* returned)',
  ],
  [
    'cublasLt',
    'int cublasLtMatmul(void* handle, void* desc, void* alpha, uint64_t a, void* aDesc, uint64_t b, void* bDesc, void* beta, uint64_t c, void* cDesc, uint64_t d, void* dDesc, void* algo, uint64_t workspace, size_t workspaceBytes, void* stream)',
  ],
] as const satisfies ReadonlyArray<readonly [LibraryName, string]>;

/** The loaded functions by symbol name. */
export type Bound = Record<string, Fn>;

/** A failing call: the function, its status and the library's name for it. */
export class CudaError extends Error {
  constructor(
    readonly fn: string,
    readonly status: number,
    readonly statusName: string,
  ) {
    super(`${fn} failed: ${statusName} (${status})`);
    this.name = 'CudaError';
  }
}

/** Status names of cuBLAS (cublas_api.h), for error messages. */
const CUBLAS_STATUS: Record<number, string> = {
  1: 'CUBLAS_STATUS_NOT_INITIALIZED',
  3: 'CUBLAS_STATUS_ALLOC_FAILED',
  7: 'CUBLAS_STATUS_INVALID_VALUE',
  8: 'CUBLAS_STATUS_ARCH_MISMATCH',
  11: 'CUBLAS_STATUS_MAPPING_ERROR',
  13: 'CUBLAS_STATUS_EXECUTION_FAILED',
  14: 'CUBLAS_STATUS_INTERNAL_ERROR',
  15: 'CUBLAS_STATUS_NOT_SUPPORTED',
  16: 'CUBLAS_STATUS_LICENSE_ERROR',
};

export interface Libraries {
  fn: Bound;
  /** Status code → name for a function's library. */
  statusName(fn: string, status: number): string;
}

/** Symbol names of one library's bindings. */
export function bindingsOf(lib: LibraryName): string[] {
  return BINDINGS.filter(([l]) => l === lib).map(([, proto]) => symbolOf(proto));
}

export function symbolOf(prototype: string): string {
  const m = /^[\w\s*]+?\**\s*\b(\w+)\(/.exec(prototype);
  if (!m) throw new Error(`binding prototype without a name: ${prototype}`);
  return m[1];
}

/** The driver library: the NVIDIA driver's libcuda.so.1 through the loader, or the file OFFSHOOT_CUDA_DRIVER names. */
export function driverLibrary(): string {
  return process.env.OFFSHOOT_CUDA_DRIVER?.trim() || 'libcuda.so.1';
}

/**
 * Loads the libraries and binds every function. `which` limits it (NVRTC alone compiles kernels on
 * a machine without a GPU). libcuda.so.1 is the driver's; the others come from `libs`.
 */
export function loadLibraries(
  libs: CudaLibraries,
  which: readonly LibraryName[] = ['cuda', 'nvrtc', 'cublasLt'],
): Libraries {
  const k = koffi();
  const handles = new Map<LibraryName, ReturnType<Koffi['load']>>();
  const open = (file: string) => {
    try {
      return k.load(file);
    } catch (e) {
      throw new Error(`${path.basename(file)}: ${(e as Error).message}`);
    }
  };
  for (const lib of which) {
    if (lib === 'cuda') handles.set(lib, open(driverLibrary()));
    else if (lib === 'nvrtc') {
      // libnvrtc dlopens its builtins by soname: loaded first, the loader finds them already mapped.
      open(path.join(libs.lib, 'libnvrtc-builtins.so.13.0'));
      handles.set(lib, open(path.join(libs.lib, 'libnvrtc.so.13')));
    } else handles.set(lib, open(path.join(libs.lib, 'libcublasLt.so.13')));
  }
  const fn = {} as Bound;
  for (const [lib, proto] of BINDINGS) {
    const h = handles.get(lib);
    if (h) fn[symbolOf(proto)] = h.func(proto) as Fn;
  }
  const statusName = (name: string, status: number): string => {
    if (name.startsWith('nvrtc') && fn.nvrtcGetErrorString) return String(fn.nvrtcGetErrorString(status));
    if (name.startsWith('cublas')) return CUBLAS_STATUS[status] ?? 'CUBLAS_STATUS_UNKNOWN';
    if (fn.cuGetErrorName) {
      const out: [string | null] = [null];
      if (fn.cuGetErrorName(status, out) === 0 && out[0]) return out[0];
    }
    return 'unknown status';
  };
  return { fn, statusName };
}

/** Throws a CudaError unless `status` is 0 (success in all three libraries). */
export function check(libs: Libraries, name: string, status: unknown): void {
  if (status !== 0) throw new CudaError(name, Number(status), libs.statusName(name, Number(status)));
}
