/**
 * One GPU as the cuda backend uses it: the driver context, one stream that every kernel, copy and
 * cuBLASLt call goes to (so stream order is the only synchronisation a step needs), the caching
 * allocator, pinned staging memory for copies, the compiled kernel modules, and kernel launches.
 * The device is the first one the process sees (CUDA_VISIBLE_DEVICES chooses it).
 */
import { measureShapeCost, notePipeline } from '../shape-costs.js';
import { CachingAllocator } from './allocator.js';
import { compileKernels, nvrtcVersion } from './compile.js';
import { type Libraries, CudaError, check, koffi, loadLibraries } from './driver.js';
import { type CudaLibraries, findCudaLibraries } from './libraries.js';

/** Why the backend cannot run here, in a phrase `auto` can report. */
export class CudaUnavailable extends Error {
  constructor(readonly short: string) {
    super(`cuda backend unavailable: ${short}`);
    this.name = 'CudaUnavailable';
  }
}

/**
 * A kernel argument: a device pointer, a 32-bit int or unsigned, a float, a 64-bit int, or the bytes
 * of a struct passed by value (laid out as the kernel declares it; see `struct32`).
 */
export type KernelArg =
  | ['p', number]
  | ['i', number]
  | ['u', number]
  | ['f', number]
  | ['l', number]
  | ['b', Uint8Array];

/** The bytes of a struct of 32-bit fields (ints, or floats given as such) passed by value. */
export function struct32(fields: ArrayLike<number>, floats = false): ['b', Uint8Array] {
  const a = floats ? new Float32Array(fields) : new Int32Array(fields);
  return ['b', new Uint8Array(a.buffer)];
}

export type Dim3 = [number, number, number];

/** The 32-bit value the bytes repeat, or null (a length not a multiple of 4, or two values). */
function repeatedWord(bytes: Uint8Array): number | null {
  if (bytes.byteLength % 4 !== 0) return null;
  const words =
    bytes.byteOffset % 4 === 0
      ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4)
      : new Uint32Array(bytes.slice().buffer);
  const first = words[0];
  for (let i = 1; i < words.length; i++) if (words[i] !== first) return null;
  return first;
}

const CU_STREAM_NON_BLOCKING = 1;
const CU_EVENT_DEFAULT = 0;
const CUDA_ERROR_OUT_OF_MEMORY = 2;
const CUDA_ERROR_NOT_READY = 600;
const ATTR = { smCount: 16, ccMajor: 75, ccMinor: 76, maxSharedOptin: 97 } as const;
const MAX_SHARED_ATTR = 8; // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
const DEFAULT_SHARED = 48 * 1024;
const MAX_ARGS = 48;
const ARG_BYTES = 4096;

export interface DeviceInfo {
  name: string;
  /** e.g. sm_90 */
  arch: string;
  multiprocessors: number;
  totalBytes: number;
  driverVersion: string;
  nvrtcVersion: string;
  libraries: string;
}

/** Pinned host memory that grows on demand; copies go through it so they can be asynchronous. */
export class PinnedBuffer {
  ptr: unknown = null;
  address = 0;
  bytes = 0;
  view = new Uint8Array(0);

  constructor(private readonly libs: Libraries) {}

  free(): void {
    if (this.ptr) check(this.libs, 'cuMemFreeHost', this.libs.fn.cuMemFreeHost(this.ptr));
    this.ptr = null;
    this.bytes = 0;
    this.view = new Uint8Array(0);
  }

  ensure(bytes: number): void {
    if (bytes <= this.bytes) return;
    const size = Math.max(bytes, this.bytes * 2, 1 << 20);
    if (this.ptr) check(this.libs, 'cuMemFreeHost', this.libs.fn.cuMemFreeHost(this.ptr));
    const out: [unknown] = [null];
    check(this.libs, 'cuMemAllocHost_v2', this.libs.fn.cuMemAllocHost_v2(out, size));
    this.ptr = out[0];
    this.address = Number(koffi().address(this.ptr));
    this.bytes = size;
    this.view = new Uint8Array(koffi().view(this.ptr, size));
  }
}

export class CudaDevice {
  readonly libs: Libraries;
  readonly cudaLibs: CudaLibraries;
  readonly info: DeviceInfo;
  readonly stream: unknown;
  readonly allocator: CachingAllocator;
  /** Kernel launches so far (the host's share of a step's cost). */
  launches = 0;
  /** True while a CUDA graph is being captured from the stream (graphs.ts): nothing may wait for the GPU. */
  capturing = false;
  private readonly modules = new Map<string, unknown>();
  private readonly functions = new Map<string, unknown>();
  private readonly names = new Map<unknown, string>();
  private profiling: Array<{ name: string; start: unknown; end: unknown }> | null = null;
  private readonly argBytes: DataView;
  private readonly argArea: Uint8Array;
  private readonly argBase: number;
  private readonly argTable: unknown;
  private readonly argTableView: DataView;
  private readonly upload: PinnedBuffer;
  private readonly download: PinnedBuffer;
  private readonly maxSharedOptin: number;
  /** Dynamic shared memory each kernel has opted in to, past the default. */
  private readonly sharedAllowed = new Map<unknown, number>();

  private constructor(libs: Libraries, cudaLibs: CudaLibraries) {
    this.libs = libs;
    this.cudaLibs = cudaLibs;
    const { fn } = libs;
    const dev: [number] = [0];
    check(libs, 'cuDeviceGet', fn.cuDeviceGet(dev, 0));
    const ctx: [unknown] = [null];
    check(libs, 'cuDevicePrimaryCtxRetain', fn.cuDevicePrimaryCtxRetain(ctx, dev[0]));
    check(libs, 'cuCtxSetCurrent', fn.cuCtxSetCurrent(ctx[0]));
    const attr = (a: number) => {
      const v: [number] = [0];
      check(libs, 'cuDeviceGetAttribute', fn.cuDeviceGetAttribute(v, a, dev[0]));
      return v[0];
    };
    const nameBuf = Buffer.alloc(256);
    check(libs, 'cuDeviceGetName', fn.cuDeviceGetName(nameBuf, 256, dev[0]));
    const total: [number] = [0];
    check(libs, 'cuDeviceTotalMem_v2', fn.cuDeviceTotalMem_v2(total, dev[0]));
    const driver: [number] = [0];
    check(libs, 'cuDriverGetVersion', fn.cuDriverGetVersion(driver));
    this.maxSharedOptin = attr(ATTR.maxSharedOptin);
    this.info = {
      name: nameBuf.toString('utf8').replace(/\0.*$/s, ''),
      arch: `sm_${attr(ATTR.ccMajor)}${attr(ATTR.ccMinor)}`,
      multiprocessors: attr(ATTR.smCount),
      totalBytes: Number(total[0]),
      driverVersion: `${Math.floor(driver[0] / 1000)}.${(driver[0] % 1000) / 10}`,
      nvrtcVersion: nvrtcVersion(libs),
      libraries: cudaLibs.versions,
    };
    const stream: [unknown] = [null];
    check(libs, 'cuStreamCreate', fn.cuStreamCreate(stream, CU_STREAM_NON_BLOCKING));
    this.stream = stream[0];
    this.allocator = new CachingAllocator({
      alloc: (bytes) => {
        const out: [number] = [0];
        const status = fn.cuMemAlloc_v2(out, bytes);
        if (status === CUDA_ERROR_OUT_OF_MEMORY) return null;
        check(libs, 'cuMemAlloc_v2', status);
        return Number(out[0]);
      },
      free: (ptr) => check(libs, 'cuMemFree_v2', fn.cuMemFree_v2(ptr)),
    });
    // cuLaunchKernel takes an array of pointers, one per argument: a fixed table into one fixed
    // argument area, which each launch fills.
    const k = koffi();
    const area = k.alloc('uint8_t', ARG_BYTES);
    this.argArea = new Uint8Array(k.view(area, ARG_BYTES));
    this.argBytes = new DataView(this.argArea.buffer);
    this.argBase = Number(k.address(area));
    this.argTable = k.alloc('uint64_t', MAX_ARGS);
    this.argTableView = new DataView(k.view(this.argTable, MAX_ARGS * 8));
    this.upload = new PinnedBuffer(libs);
    this.download = new PinnedBuffer(libs);
  }

  /** Opens the first visible GPU; throws CudaUnavailable saying why when there is none. */
  static open(): CudaDevice {
    let cudaLibs: CudaLibraries;
    try {
      cudaLibs = findCudaLibraries();
    } catch (e) {
      throw new CudaUnavailable((e as Error).message);
    }
    let libs: Libraries;
    try {
      libs = loadLibraries(cudaLibs);
    } catch (e) {
      const msg = (e as Error).message;
      if (/libcuda\.so\.1/.test(msg)) throw new CudaUnavailable('no NVIDIA driver (libcuda.so.1 not found)');
      throw new CudaUnavailable(`could not load the CUDA libraries: ${msg.split('\n')[0]}`);
    }
    const status = libs.fn.cuInit(0);
    if (status !== 0)
      throw new CudaUnavailable(`cuInit failed: ${libs.statusName('cuInit', Number(status))} (no usable GPU)`);
    const count: [number] = [0];
    check(libs, 'cuDeviceGetCount', libs.fn.cuDeviceGetCount(count));
    if (count[0] === 0) throw new CudaUnavailable('the driver sees no GPU');
    return new CudaDevice(libs, cudaLibs);
  }

  /** The kernel `name` of kernels/`file`.cu, compiled (or loaded from the cache) on first use. */
  kernel(file: string, name: string): unknown {
    const key = `${file}:${name}`;
    let f = this.functions.get(key);
    if (f !== undefined) return f;
    let mod = this.modules.get(file);
    if (mod === undefined) {
      notePipeline(`${file}.cu`);
      mod = measureShapeCost('compile', () => {
        const { cubin } = compileKernels(this.libs, this.cudaLibs, file, this.info.arch);
        const out: [unknown] = [null];
        check(this.libs, 'cuModuleLoadData', this.libs.fn.cuModuleLoadData(out, cubin));
        return out[0];
      });
      this.modules.set(file, mod);
    }
    const out: [unknown] = [null];
    check(this.libs, `cuModuleGetFunction(${name})`, this.libs.fn.cuModuleGetFunction(out, mod, name));
    f = out[0];
    this.functions.set(key, f);
    this.names.set(f, name);
    return f;
  }

  /** Launches `fn` on the stream. */
  launch(fn: unknown, grid: Dim3, block: Dim3, args: readonly KernelArg[], sharedBytes = 0): void {
    this.timed(this.names.get(fn) ?? 'kernel', () => this.launchNow(fn, grid, block, args, sharedBytes));
  }

  private launchNow(fn: unknown, grid: Dim3, block: Dim3, args: readonly KernelArg[], sharedBytes: number): void {
    if (args.length > MAX_ARGS) throw new Error(`kernel launch with ${args.length} arguments (at most ${MAX_ARGS})`);
    const v = this.argBytes;
    let o = 0;
    for (let i = 0; i < args.length; i++) {
      const [kind, value] = args[i];
      o = kind === 'i' || kind === 'u' || kind === 'f' ? (o + 3) & ~3 : (o + 7) & ~7;
      const at = this.argBase + o;
      this.argTableView.setUint32(i * 8, at % 4294967296, true);
      this.argTableView.setUint32(i * 8 + 4, Math.floor(at / 4294967296), true);
      switch (kind) {
        case 'p':
        case 'l':
          v.setUint32(o, value % 4294967296, true);
          v.setUint32(o + 4, Math.floor(value / 4294967296), true);
          o += 8;
          break;
        case 'i':
          v.setInt32(o, value, true);
          o += 4;
          break;
        case 'u':
          v.setUint32(o, value, true);
          o += 4;
          break;
        case 'f':
          v.setFloat32(o, value, true);
          o += 4;
          break;
        case 'b':
          this.argArea.set(value, o);
          o += value.byteLength;
          break;
      }
      if (o > ARG_BYTES) throw new Error(`kernel launch arguments exceed ${ARG_BYTES} bytes`);
    }
    if (grid[0] < 1 || grid[1] < 1 || grid[2] < 1) return;
    if (sharedBytes > DEFAULT_SHARED && (this.sharedAllowed.get(fn) ?? DEFAULT_SHARED) < sharedBytes) {
      // Past 48 KiB a kernel must opt in to more dynamic shared memory (up to the device's limit).
      if (sharedBytes > this.maxSharedOptin)
        throw new Error(
          `kernel launch needs ${sharedBytes} bytes of shared memory; the device allows ${this.maxSharedOptin}`,
        );
      check(this.libs, 'cuFuncSetAttribute', this.libs.fn.cuFuncSetAttribute(fn, MAX_SHARED_ATTR, sharedBytes));
      this.sharedAllowed.set(fn, sharedBytes);
    }
    const status = this.libs.fn.cuLaunchKernel(
      fn,
      grid[0],
      grid[1],
      grid[2],
      block[0],
      block[1],
      block[2],
      sharedBytes,
      this.stream,
      this.argTable,
      null,
    );
    if (status !== 0)
      throw new CudaError('cuLaunchKernel', Number(status), this.libs.statusName('cuLaunchKernel', Number(status)));
    this.launches++;
  }

  /** Runs `enqueue` (work on the stream), bracketed by events under the name while profiling. */
  timed(name: string, enqueue: () => void): void {
    const p = this.profiling;
    if (!p) {
      enqueue();
      return;
    }
    const start = this.event();
    this.record(start);
    enqueue();
    const end = this.event();
    this.record(end);
    p.push({ name, start, end });
  }

  /** Starts timing every launch on the GPU (events around each; bench/gpu-train --profile). */
  beginProfile(): void {
    this.profiling = [];
  }

  /** GPU time per name since beginProfile, largest first. */
  async endProfile(): Promise<{
    totalMs: number;
    launches: number;
    byName: Array<{ name: string; ms: number; count: number }>;
  }> {
    const p = this.profiling ?? [];
    this.profiling = null;
    await this.idle();
    const by = new Map<string, { ms: number; count: number }>();
    let total = 0;
    for (const { name, start, end } of p) {
      const ms = this.elapsed(start, end);
      total += ms;
      const e = by.get(name) ?? { ms: 0, count: 0 };
      e.ms += ms;
      e.count++;
      by.set(name, e);
      this.releaseEvent(start);
      this.releaseEvent(end);
    }
    const byName = [...by].map(([name, e]) => ({ name, ...e })).sort((a, b) => b.ms - a.ms);
    return { totalMs: total, launches: p.length, byName };
  }

  alloc(bytes: number): number {
    return this.allocator.alloc(bytes);
  }

  free(ptr: number): void {
    this.allocator.release(ptr);
  }

  zero(ptr: number, bytes: number): void {
    this.fill8(ptr, 0, bytes);
  }

  fill8(ptr: number, value: number, count: number): void {
    check(this.libs, 'cuMemsetD8Async', this.libs.fn.cuMemsetD8Async(ptr, value, count, this.stream));
  }

  fill32(ptr: number, bits: number, count: number): void {
    check(this.libs, 'cuMemsetD32Async', this.libs.fn.cuMemsetD32Async(ptr, bits >>> 0, count, this.stream));
  }

  copy(dst: number, src: number, bytes: number): void {
    if (bytes > 0)
      check(this.libs, 'cuMemcpyDtoDAsync_v2', this.libs.fn.cuMemcpyDtoDAsync_v2(dst, src, bytes, this.stream));
  }

  /**
   * Copies host bytes to the device without waiting for the GPU: they are staged in a ring of pinned
   * memory and the copy is queued on the stream. A region of the ring is written again only after
   * the copies that used it have completed (each records an event). Bytes that are one 32-bit value
   * repeated (a scalar, or tfjs's ones and zeros, which its gradients make) are a memset instead:
   * nothing to stage, and a graph capture can hold them.
   */
  write(dst: number, data: ArrayBufferView): void {
    const bytes = data.byteLength;
    if (bytes === 0) return;
    const src = new Uint8Array(data.buffer, data.byteOffset, bytes);
    const word = repeatedWord(src);
    if (word !== null) {
      this.fill32(dst, word, bytes / 4);
      return;
    }
    if (this.capturing)
      throw new Error(
        `an upload of ${bytes} bytes during a CUDA graph capture (only one 32-bit value, or one repeated, can be captured)`,
      );
    const at = this.stage(bytes);
    this.upload.view.set(src, at);
    check(
      this.libs,
      'cuMemcpyHtoDAsync_v2',
      this.libs.fn.cuMemcpyHtoDAsync_v2(dst, this.upload.address + at, bytes, this.stream),
    );
    const ev = this.event();
    this.record(ev);
    this.staged.push({ start: at, end: at + bytes, ev });
  }

  /**
   * Copies bytes that are a constant of the work being queued. Outside a graph capture this is
   * write(); inside one, the bytes go to pinned memory kept with the graph (constantArena), and the
   * captured copy reads them from there at every replay.
   */
  writeConstant(dst: number, data: Uint8Array): void {
    if (!this.capturing) {
      this.write(dst, data);
      return;
    }
    const arena = this.constantArena;
    if (!arena || arena.used + data.byteLength > arena.buffer.bytes)
      throw new Error(
        `constants of a captured step exceed the graph's ${arena?.buffer.bytes ?? 0} bytes of pinned memory`,
      );
    arena.buffer.view.set(data, arena.used);
    check(
      this.libs,
      'cuMemcpyHtoDAsync_v2',
      this.libs.fn.cuMemcpyHtoDAsync_v2(dst, arena.buffer.address + arena.used, data.byteLength, this.stream),
    );
    arena.used += Math.ceil(data.byteLength / 256) * 256;
  }

  /** Pinned memory for the constants of the graph being captured (graphs.ts makes and keeps it). */
  constantArena: { buffer: PinnedBuffer; used: number } | null = null;

  /** Pinned host memory of at least `bytes` (for a graph's constants; freeHost releases it). */
  pinned(bytes: number): PinnedBuffer {
    const p = new PinnedBuffer(this.libs);
    p.ensure(bytes);
    return p;
  }

  /** Copies in flight from the upload ring, oldest first. */
  private readonly staged: Array<{ start: number; end: number; ev: unknown }> = [];
  private stagingHead = 0;

  /** Where `bytes` can be staged: the ring's head (or its start), once no copy in flight uses it. */
  private stage(bytes: number): number {
    const aligned = Math.ceil(bytes / 256) * 256;
    if (aligned > this.upload.bytes) {
      this.synchronize();
      for (const s of this.staged.splice(0)) this.releaseEvent(s.ev);
      this.upload.ensure(Math.max(aligned, 64 << 20));
      this.stagingHead = 0;
    }
    const at = this.stagingHead + aligned <= this.upload.bytes ? this.stagingHead : 0;
    // Oldest copies first: wait for each that overlaps [at, at + aligned).
    while (this.staged.length > 0 && this.staged.some((s) => s.start < at + aligned && at < s.end)) {
      const s = this.staged.shift()!;
      check(this.libs, 'cuEventSynchronize', this.libs.fn.cuEventSynchronize(s.ev));
      this.releaseEvent(s.ev);
    }
    // Completed copies need no tracking.
    while (this.staged.length > 0 && this.libs.fn.cuEventQuery(this.staged[0].ev) === 0)
      this.releaseEvent(this.staged.shift()!.ev);
    this.stagingHead = at + aligned;
    return at;
  }

  /** Copies device bytes to a new host buffer, waiting for the stream. */
  read(src: number, bytes: number): Uint8Array {
    const out = new Uint8Array(bytes);
    if (bytes === 0) return out;
    this.download.ensure(bytes);
    check(
      this.libs,
      'cuMemcpyDtoHAsync_v2',
      this.libs.fn.cuMemcpyDtoHAsync_v2(this.download.address, src, bytes, this.stream),
    );
    this.synchronize();
    out.set(this.download.view.subarray(0, bytes));
    return out;
  }

  /**
   * Like read, but yields to the event loop while the GPU works instead of blocking the thread; the
   * bytes as of this call, though the copy to the host waits for the stream: work queued meanwhile (the
   * next training steps, which update weights in place) must not show, so they are first copied on
   * the device, in stream order.
   */
  async readAsync(src: number, bytes: number): Promise<Uint8Array> {
    if (bytes === 0) return new Uint8Array(0);
    this.notCapturing();
    const copy = this.alloc(bytes);
    try {
      this.copy(copy, src, bytes);
      await this.idle();
      return this.read(copy, bytes);
    } finally {
      this.free(copy);
    }
  }

  synchronize(): void {
    this.notCapturing();
    check(this.libs, 'cuStreamSynchronize', this.libs.fn.cuStreamSynchronize(this.stream));
  }

  /** Resolves once the stream has finished the work queued so far (polling an event). */
  async idle(): Promise<void> {
    this.notCapturing();
    const ev = this.event();
    this.record(ev);
    for (;;) {
      const s = this.libs.fn.cuEventQuery(ev);
      if (s === 0) break;
      if (s !== CUDA_ERROR_NOT_READY) check(this.libs, 'cuEventQuery', s);
      await new Promise((r) => setTimeout(r, 0.2));
    }
    this.eventPool.push(ev);
  }

  private readonly eventPool: unknown[] = [];

  private notCapturing(): void {
    if (this.capturing) throw new Error('waiting for the GPU (a read-back) during a CUDA graph capture');
  }

  /** A timing-capable event (from a pool). */
  event(): unknown {
    const pooled = this.eventPool.pop();
    if (pooled) return pooled;
    const out: [unknown] = [null];
    check(this.libs, 'cuEventCreate', this.libs.fn.cuEventCreate(out, CU_EVENT_DEFAULT));
    return out[0];
  }

  record(ev: unknown): void {
    check(this.libs, 'cuEventRecord', this.libs.fn.cuEventRecord(ev, this.stream));
  }

  /** Milliseconds between two recorded events (waits for the second). */
  elapsed(start: unknown, end: unknown): number {
    check(this.libs, 'cuEventSynchronize', this.libs.fn.cuEventSynchronize(end));
    const ms: [number] = [0];
    check(this.libs, 'cuEventElapsedTime_v2', this.libs.fn.cuEventElapsedTime_v2(ms, start, end));
    return ms[0];
  }

  releaseEvent(ev: unknown): void {
    this.eventPool.push(ev);
  }

  /** Free and total device memory as the driver reports them. */
  memoryInfo(): { free: number; total: number } {
    const free: [number] = [0];
    const total: [number] = [0];
    check(this.libs, 'cuMemGetInfo_v2', this.libs.fn.cuMemGetInfo_v2(free, total));
    return { free: Number(free[0]), total: Number(total[0]) };
  }
}

let opened: CudaDevice | undefined;

/** The process's device, opened on first use. */
export function cudaDevice(): CudaDevice {
  opened ??= CudaDevice.open();
  return opened;
}

/** The device if it has been opened, else null (no side effects). */
export function openedCudaDevice(): CudaDevice | null {
  return opened ?? null;
}
