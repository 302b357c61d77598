/**
 * The cuda backend: what can be checked without a GPU runs everywhere (every kernel source compiles
 * with NVRTC, every FFI binding matches the headers in the CUDA wheels and resolves in its library,
 * the caching allocator's bookkeeping, backend selection without a driver); the kernels themselves
 * are checked against the cpu backend on a machine with an NVIDIA GPU (skipped elsewhere, naming why)
 * and, everywhere, on the CPU's CUDA emulator (cuda-emulator.test.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { initBackend } from '../core/model/backend.js';
import { CachingAllocator, DeviceOutOfMemory, planArena, roundSize } from '../core/model/cuda/allocator.js';
import { compileKernels, kernelFiles } from '../core/model/cuda/compile.js';
import { broadcastStrides } from '../core/model/cuda/elementwise.js';
import { BINDINGS, type LibraryName, loadLibraries, symbolOf } from '../core/model/cuda/driver.js';
import { findCudaLibraries } from '../core/model/cuda/libraries.js';

let libsReason: string | null = null;
try {
  findCudaLibraries();
} catch (e) {
  libsReason = (e as Error).message;
}

let gpuReason: string | null = libsReason;
if (!gpuReason) {
  try {
    const { cudaDevice } = await import('../core/model/cuda/device.js');
    cudaDevice();
  } catch (e) {
    gpuReason = (e as Error).message.replace(/^cuda backend unavailable: /, '');
  }
}

describe(`cuda without a GPU${libsReason ? ` (skipped: ${libsReason})` : ''}`, () => {
  it.skipIf(!!libsReason)(
    'compiles every kernel source with NVRTC for Hopper (sm_90) and Ampere (sm_80)',
    () => {
      const cudaLibs = findCudaLibraries();
      const libs = loadLibraries(cudaLibs, ['nvrtc']);
      const files = kernelFiles();
      expect(files).toEqual(
        expect.arrayContaining([
          'adamw',
          'attention',
          'cross-entropy',
          'distill',
          'elementwise',
          'embedding',
          'layer-norm',
          'layout',
          'linear',
        ]),
      );
      for (const arch of ['sm_90', 'sm_80']) {
        for (const f of files) {
          const { cubin } = compileKernels(libs, cudaLibs, f, arch);
          // An ELF image with machine code.
          expect(cubin.subarray(0, 4).toString('latin1'), `${f} for ${arch}`).toBe('\x7fELF');
        }
      }
    },
    300_000,
  );

  it.skipIf(!!libsReason)('binds every function of NVRTC and cuBLASLt (the libraries load without a GPU)', () => {
    const libs = loadLibraries(findCudaLibraries(), ['nvrtc', 'cublasLt']);
    for (const [lib, proto] of BINDINGS) {
      if (lib !== 'cuda') expect(typeof libs.fn[symbolOf(proto)], proto).toBe('function');
    }
    // A real call: NVRTC's version.
    const major: [number] = [0];
    const minor: [number] = [0];
    expect(libs.fn.nvrtcVersion(major, minor)).toBe(0);
    expect(major[0]).toBe(13);
  });

  it.skipIf(!!libsReason)("every binding's symbol and argument kinds match the headers shipped in the wheels", () => {
    const include = findCudaLibraries().include;
    const headers: Record<LibraryName, string> = {
      cuda: fs.readFileSync(path.join(include, 'cuda.h'), 'utf8'),
      nvrtc: fs.readFileSync(path.join(include, 'nvrtc.h'), 'utf8'),
      cublasLt: fs.readFileSync(path.join(include, 'cublasLt.h'), 'utf8'),
    };
    for (const [lib, proto] of BINDINGS) {
      const symbol = symbolOf(proto);
      const text = headers[lib];
      // The documented name: the one the header #defines to this symbol, else the symbol less its _vN.
      const renamed = new RegExp(`#define\\s+(\\w+)\\s+(?:__CUDA_API_PTS[ZD]\\()?${symbol}\\b`).exec(text);
      const base = renamed ? renamed[1] : symbol.replace(/_v\d+$/, '');
      // The header maps the documented name to the versioned symbol the library exports.
      const define = new RegExp(`#define\\s+${base}\\s+(?:__CUDA_API_PTS[ZD]\\()?(\\w+)`).exec(text);
      expect(define ? define[1] : base, `${symbol}: the name ${base} resolves to`).toBe(symbol);
      const declared = prototypeParams(text, base);
      expect(declared, `${base} is declared in ${lib}'s header`).not.toBeNull();
      const ours = proto
        .slice(proto.indexOf('(') + 1, proto.lastIndexOf(')'))
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean);
      expect(ours.map(kindOf), `${symbol}: argument kinds`).toEqual(declared!.map(kindOf));
    }
  });

  it('backend selection without an NVIDIA driver: auto moves on, an explicit request says why', async () => {
    if (!gpuReason) return;
    const info = await initBackend('auto', () => {});
    expect(info.name).not.toBe('cuda');
    expect(info.reason).toMatch(/cuda unavailable: /);
    await expect(initBackend('cuda', () => {})).rejects.toThrow(/cuda backend unavailable: .*scripts\/setup-cuda\.sh/);
  });
});

/** The parameter list of `name`'s prototype in a header (comments stripped), or null. */
function prototypeParams(header: string, name: string): string[] | null {
  const text = header.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '');
  const m = new RegExp(
    `\\b(?:CUresult|nvrtcResult|cublasStatus_t|size_t|const char\\s*\\*)\\s*(?:CUDAAPI\\s+|CUBLASWINAPI\\s+)?${name}\\s*\\(([^)]*)\\)\\s*;`,
  ).exec(text);
  if (!m) return null;
  return m[1]
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p && p !== 'void');
}

/**
 * How the x86-64 ABI passes a parameter: an 8-byte word (pointers, handles, 64-bit integers: the
 * bindings pass pinned host addresses as uint64_t), a 32-bit integer (enums too), a byte, a float.
 */
function kindOf(param: string): string {
  const p = param.replace(/\b(const|_Out_|_Inout_)\b/g, '').trim();
  if (p.includes('*') || p.includes('[')) return 'word64';
  const type = p.split(/\s+/).slice(0, -1).join(' ') || p;
  if (
    /^(CUdeviceptr|size_t|uint64_t|int64_t|unsigned long long|void|CUcontext|CUmodule|CUfunction|CUstream|CUevent|CUgraph|CUgraphExec|nvrtcProgram|cudaStream_t|cublasLtHandle_t|cublasLtMatmulDesc_t|cublasLtMatrixLayout_t|cublasLtMatmulPreference_t)$/.test(
      type,
    )
  )
    return 'word64';
  if (/^(unsigned char|uint8_t)$/.test(type)) return 'int8';
  if (type === 'float') return 'float';
  return 'int32';
}

describe('cuda elementwise broadcasting', () => {
  it('merges the dims both inputs walk as one, so same-shape operands cost the kernel no division', () => {
    expect(broadcastStrides([8, 512, 64], [8, 512, 64])).toEqual({
      shape: [8, 512, 64],
      dims: [262144],
      a: [1],
      b: [1],
    });
    // A row's statistic against its row: nothing merges.
    expect(broadcastStrides([4096, 50304], [4096, 1])).toEqual({
      shape: [4096, 50304],
      dims: [4096, 50304],
      a: [50304, 1],
      b: [1, 0],
    });
    // A bias over [B, T, D]: B and T merge, the broadcast dim stays.
    expect(broadcastStrides([8, 512, 768], [768])).toEqual({
      shape: [8, 512, 768],
      dims: [4096, 768],
      a: [768, 1],
      b: [0, 1],
    });
    // Logits of 64 × 2048 tokens: 6.6·10⁹ elements, past the kernel's 32-bit dims, stay two dims.
    expect(broadcastStrides([131072, 50304], [131072, 50304])?.dims).toEqual([131072, 50304]);
    // A scalar against anything: one dim.
    expect(broadcastStrides([], [3, 5])).toEqual({ shape: [3, 5], dims: [15], a: [0], b: [1] });
  });
});

describe('cuda caching allocator', () => {
  /** Device memory on the host: addresses handed out in order, a capacity, and what is live. */
  function fakeDevice(capacity = 64 << 20) {
    let next = 1 << 20;
    let used = 0;
    const live = new Map<number, number>();
    return {
      live,
      alloc(bytes: number) {
        if (used + bytes > capacity) return null;
        const p = next;
        next += bytes;
        used += bytes;
        live.set(p, bytes);
        return p;
      },
      free(p: number) {
        used -= live.get(p)!;
        live.delete(p);
      },
    };
  }

  it('rounds to 512 bytes below 1 MiB and to 2 MiB above', () => {
    expect(roundSize(1)).toBe(512);
    expect(roundSize(513)).toBe(1024);
    expect(roundSize((1 << 20) - 1)).toBe(1 << 20);
    expect(roundSize((1 << 20) + 1)).toBe(2 << 20);
    expect(roundSize(5 << 20)).toBe(6 << 20);
  });

  it('hands the lowest free address of a size back first, so a repeated sequence gets the same addresses', () => {
    const a = new CachingAllocator(fakeDevice());
    const first = [a.alloc(1000), a.alloc(1000), a.alloc(1000)];
    // Freed in another order than allocated.
    for (const p of [first[1], first[2], first[0]]) a.release(p);
    const second = [a.alloc(1000), a.alloc(1000), a.alloc(1000)];
    expect(second).toEqual(first);
    expect(a.stats().driverAllocs).toBe(3);
  });

  it('empties its cache and retries when the device is full, then says what it needed', () => {
    const dev = fakeDevice(8 << 20);
    const a = new CachingAllocator(dev);
    const p = a.alloc(6 << 20);
    a.release(p);
    // 6 MiB cached; 4 MiB more does not fit until the cache goes back.
    const q = a.alloc(4 << 20);
    expect(a.stats().flushes).toBe(1);
    expect(dev.live.size).toBe(1);
    expect(() => a.alloc(6 << 20)).toThrow(DeviceOutOfMemory);
    expect(() => a.alloc(6 << 20)).toThrow(/out of GPU memory allocating 0\.01 GiB/);
    a.release(q);
    expect(a.stats().inUse).toBe(0);
  });

  it("keeps a graph capture's blocks in a private pool until the graph is dissolved", () => {
    const a = new CachingAllocator(fakeDevice());
    const outside = a.alloc(1000);
    a.release(outside);
    const pool = a.beginCapture();
    const scratch = a.alloc(1000);
    expect(scratch).not.toBe(outside); // a capture never takes the general pool's blocks
    const out = a.alloc(2000);
    a.release(scratch);
    a.endCapture();
    // The graph's scratch stays reserved for its replays and counts as in use.
    expect(a.alloc(1000)).toBe(outside);
    expect(a.stats().inUse).toBe(roundSize(1000) * 2 + roundSize(2000));
    a.dissolve(pool);
    a.release(out);
    // Dissolved: the scratch is the general pool's again.
    expect(a.alloc(1000)).toBe(scratch);
  });

  it('lays blocks out so that those alive at once never share bytes, reusing the bytes of those freed', () => {
    // [size, start, end): a and b overlap in time, c comes after both, d lives to the end.
    const blocks = [
      { size: 4096, start: 0, end: 3 },
      { size: 1024, start: 1, end: 2 },
      { size: 4096, start: 4, end: 6 },
      { size: 512, start: 5, end: Number.POSITIVE_INFINITY },
    ];
    const plan = planArena(blocks);
    const overlaps = (i: number, j: number) =>
      blocks[i].start < blocks[j].end &&
      blocks[j].start < blocks[i].end &&
      plan.offsets[i] < plan.offsets[j] + blocks[j].size &&
      plan.offsets[j] < plan.offsets[i] + blocks[i].size;
    for (let i = 0; i < blocks.length; i++)
      for (let j = i + 1; j < blocks.length; j++) expect(overlaps(i, j)).toBe(false);
    // The most bytes alive at once: a and b (5 KiB), or c and d (4.5 KiB).
    expect(plan.bytes).toBe(5120);
    expect(plan.sizes).toEqual([4096, 1024, 4096, 512]);
  });

  it("traces a step and serves the capture's blocks from one arena laid out by the trace", () => {
    const dev = fakeDevice();
    const a = new CachingAllocator(dev);
    const step = () => {
      const x = a.alloc(300_000);
      const y = a.alloc(300_000);
      a.release(x);
      const z = a.alloc(300_000);
      const out = a.alloc(1000);
      a.release(y);
      a.release(z);
      return { x, y, z, out };
    };
    a.beginTrace();
    a.release(step().out);
    const plan = a.endTrace();
    // x and z do not live at once: two 300 KB blocks and the output, not three.
    expect(plan.bytes).toBe(2 * roundSize(300_000) + roundSize(1000));
    const before = a.stats();
    const pool = a.beginCapture(plan);
    const captured = step();
    a.endCapture();
    const base = Math.min(captured.x, captured.y, captured.out);
    for (const p of [captured.x, captured.y, captured.z, captured.out]) expect(p - base).toBeLessThan(plan.bytes);
    expect(captured.z).toBe(captured.x);
    // One driver allocation; the arena counts as in use while the graph lives (its output too).
    expect(a.stats().driverAllocs - before.driverAllocs).toBe(1);
    expect(a.stats().inUse - before.inUse).toBe(plan.bytes);
    a.dissolve(pool);
    // The output is still alive: the arena waits for it, then goes back to the driver.
    expect(a.stats().reserved - before.reserved).toBe(plan.bytes);
    a.release(captured.out);
    expect(a.stats().reserved).toBe(before.reserved);
    expect(a.stats().inUse).toBe(before.inUse);
  });

  it('keeps to its plan past a request the traced step did not make, and past one it made that the capture does not', () => {
    const a = new CachingAllocator(fakeDevice());
    const sizes = [4096, 8192, 16384, 32768];
    a.beginTrace();
    const traced = sizes.map((n) => a.alloc(n));
    for (const p of traced) a.release(p);
    const plan = a.endTrace();
    const pool = a.beginCapture(plan);
    const base = a.alloc(4096);
    const extra = a.alloc(100_000); // not in the plan
    const third = a.alloc(16384); // the plan's 8192 block is never asked for
    const fourth = a.alloc(32768);
    a.endCapture();
    const start = base - plan.offsets[0];
    const inArena = (p: number) => p >= start && p < start + plan.bytes;
    expect(inArena(extra)).toBe(false);
    expect([third, fourth].every(inArena)).toBe(true);
    expect(third - base).toBe(plan.offsets[2] - plan.offsets[0]);
    expect(fourth - base).toBe(plan.offsets[3] - plan.offsets[0]);
    for (const p of [base, extra, third, fourth]) a.release(p);
    a.dissolve(pool);
    expect(a.stats().inUse).toBe(0);
  });

  it('serves a request the plan did not foresee, or one whose bytes are still in use, from a private pool', () => {
    const a = new CachingAllocator(fakeDevice());
    a.beginTrace();
    const x = a.alloc(4096);
    a.release(x);
    a.release(a.alloc(4096)); // planned at x's bytes: x was freed first
    const plan = a.endTrace();
    expect(plan.bytes).toBe(4096);
    const pool = a.beginCapture(plan);
    const first = a.alloc(4096);
    // Not freed this time: the second block would overlap it, so it comes from the private pool.
    const second = a.alloc(4096);
    const unplanned = a.alloc(100_000);
    expect(second - first >= 4096 || first - second >= 4096).toBe(true);
    expect(unplanned - first >= 4096 || first - unplanned >= 100_000).toBe(true);
    a.endCapture();
    for (const p of [first, second, unplanned]) a.release(p);
    a.dissolve(pool);
    expect(a.stats().inUse).toBe(0);
  });
});

describe(`cuda on the GPU${gpuReason ? ` (skipped: ${gpuReason})` : ''}`, () => {
  it.skipIf(!!gpuReason)(
    'every operation and tfjs kernel matches the cpu backend in f32 and mixed precision',
    async () => {
      const { runCudaChecks } = await import('../core/model/cuda/check.js');
      const failures: unknown[] = [];
      const failed = await runCudaChecks('small', (line) => {
        if (!line.ok) failures.push(line);
      });
      expect(failures).toEqual([]);
      expect(failed).toBe(0);
    },
    600_000,
  );
});
