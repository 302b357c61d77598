/**
 * Compiles the backend's CUDA C++ sources (kernels/*.cu, one file per operation, sharing
 * kernels/common.cuh) with NVRTC into machine code for one GPU architecture. Shapes are kernel
 * arguments, never compiled in, so each file is compiled once per architecture and NVRTC version;
 * the cubin is cached on disk (${OFFSHOOT_CACHE}/cuda-kernels), keyed by a hash of the sources and
 * options, and later processes load it without compiling.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { type Libraries, check } from './driver.js';
import type { CudaLibraries } from './libraries.js';

/** The folder of the .cu sources (copied beside the compiled JS by `npm run build`). */
export const KERNEL_DIR = fileURLToPath(new URL('./kernels/', import.meta.url));

/** Every kernel source file (without .cu). */
export function kernelFiles(): string[] {
  return fs
    .readdirSync(KERNEL_DIR)
    .filter((f) => f.endsWith('.cu'))
    .map((f) => f.slice(0, -3))
    .sort();
}

function cacheDir(): string {
  const cache = process.env.OFFSHOOT_CACHE?.trim() || path.join(os.homedir(), '.cache', 'offshoot');
  return path.join(cache, 'cuda-kernels');
}

/** What goes into a compile and its cache key: the source, every shared header, the options. */
function compileInputs(
  file: string,
  arch: string,
  libs: CudaLibraries,
): { source: string; options: string[]; key: string } {
  const source = fs.readFileSync(path.join(KERNEL_DIR, `${file}.cu`), 'utf8');
  const headers = fs
    .readdirSync(KERNEL_DIR)
    .filter((f) => f.endsWith('.cuh'))
    .sort()
    .map((f) => `${f}\n${fs.readFileSync(path.join(KERNEL_DIR, f), 'utf8')}`);
  const options = [`--gpu-architecture=${arch}`, '--std=c++17', '-DNDEBUG', `-I${KERNEL_DIR}`, `-I${libs.include}`];
  const hash = createHash('sha256');
  for (const part of [source, ...headers, ...options.filter((o) => !o.startsWith('-I')), libs.versions])
    hash.update(part).update('\0');
  return { source, options, key: `${file}-${arch}-${hash.digest('hex').slice(0, 16)}` };
}

export interface CompileResult {
  cubin: Buffer;
  cached: boolean;
  ms: number;
}

/** Machine code for `file`.cu on `arch` (e.g. sm_90), from the disk cache or NVRTC. */
export function compileKernels(libs: Libraries, cudaLibs: CudaLibraries, file: string, arch: string): CompileResult {
  const t0 = performance.now();
  const { source, options, key } = compileInputs(file, arch, cudaLibs);
  const cached = path.join(cacheDir(), `${key}.cubin`);
  if (fs.existsSync(cached)) return { cubin: fs.readFileSync(cached), cached: true, ms: performance.now() - t0 };
  const cubin = nvrtcCompile(libs, source, `${file}.cu`, options);
  fs.mkdirSync(cacheDir(), { recursive: true });
  const tmp = `${cached}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, cubin);
  fs.renameSync(tmp, cached);
  return { cubin, cached: false, ms: performance.now() - t0 };
}

/** A failed compile, with NVRTC's log. */
export class KernelCompileError extends Error {
  constructor(file: string, log: string) {
    super(`NVRTC could not compile ${file}:\n${log.trim()}`);
    this.name = 'KernelCompileError';
  }
}

function nvrtcCompile(libs: Libraries, source: string, name: string, options: string[]): Buffer {
  const { fn } = libs;
  const prog: [unknown] = [null];
  check(libs, 'nvrtcCreateProgram', fn.nvrtcCreateProgram(prog, source, name, 0, null, null));
  try {
    const status = fn.nvrtcCompileProgram(prog[0], options.length, options);
    if (status !== 0) {
      const size: [number] = [0];
      fn.nvrtcGetProgramLogSize(prog[0], size);
      const log = Buffer.alloc(Number(size[0]));
      fn.nvrtcGetProgramLog(prog[0], log);
      throw new KernelCompileError(name, log.toString('utf8').replace(/\0+$/, ''));
    }
    const size: [number] = [0];
    check(libs, 'nvrtcGetCUBINSize', fn.nvrtcGetCUBINSize(prog[0], size));
    const cubin = Buffer.alloc(Number(size[0]));
    check(libs, 'nvrtcGetCUBIN', fn.nvrtcGetCUBIN(prog[0], cubin));
    return cubin;
  } finally {
    fn.nvrtcDestroyProgram(prog);
  }
}

/** NVRTC's version, e.g. "13.0". */
export function nvrtcVersion(libs: Libraries): string {
  const major: [number] = [0];
  const minor: [number] = [0];
  check(libs, 'nvrtcVersion', libs.fn.nvrtcVersion(major, minor));
  return `${major[0]}.${minor[0]}`;
}
