/**
 * The CUDA emulator (cuda-emulator/emulator.cpp) for tests of the cuda backend on machines without a
 * GPU: built with g++ once per version of its sources into the cache, as a folder laid out like the
 * CUDA libraries' (lib/ and include/), with one library standing in for the driver, NVRTC and
 * cuBLASLt. `useCudaEmulator` points the backend at it (OFFSHOOT_CUDA_HOME, OFFSHOOT_CUDA_DRIVER); run as a
 * script, it prints those variables for a shell.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const SOURCES = path.join(import.meta.dirname, 'cuda-emulator');
const HEADERS = ['prelude.h', 'emu_runtime.h', 'cuda_bf16.h'];
/** The names the backend loads (driver.ts, libraries.ts), all the one emulator library. */
const LIBRARY_NAMES = ['libcuda.so.1', 'libnvrtc.so.13', 'libnvrtc-builtins.so.13.0', 'libcublasLt.so.13'];

export interface CudaEmulator {
  home: string;
  driver: string;
}

/** Builds the emulator if its sources changed; throws with the compiler's output when g++ fails. */
export function buildCudaEmulator(): CudaEmulator {
  const hash = createHash('sha256');
  for (const f of ['emulator.cpp', ...HEADERS]) hash.update(fs.readFileSync(path.join(SOURCES, f))).update('\0');
  const version = hash.digest('hex').slice(0, 16);
  const cache = process.env.OFFSHOOT_CACHE?.trim() || path.join(os.homedir(), '.cache', 'offshoot');
  const home = path.join(cache, 'cuda-emulator', version);
  const driver = path.join(home, 'lib', 'libcuda.so.1');
  if (fs.existsSync(path.join(home, 'versions'))) return { home, driver };
  const tmp = `${home}.${process.pid}.tmp`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(path.join(tmp, 'lib'), { recursive: true });
  fs.mkdirSync(path.join(tmp, 'include'), { recursive: true });
  const library = path.join(tmp, 'lib', 'libcuda-emulator.so');
  try {
    execFileSync(
      process.env.CXX || 'g++',
      ['-std=c++17', '-O2', '-fPIC', '-shared', '-o', library, path.join(SOURCES, 'emulator.cpp'), '-ldl'],
      { stdio: 'pipe' },
    );
  } catch (e) {
    const err = e as { stderr?: Buffer; message: string };
    throw new Error(`building the CUDA emulator failed: ${err.stderr?.toString() || err.message}`);
  }
  for (const name of LIBRARY_NAMES) fs.symlinkSync('libcuda-emulator.so', path.join(tmp, 'lib', name));
  for (const h of HEADERS) fs.copyFileSync(path.join(SOURCES, h), path.join(tmp, 'include', h));
  fs.writeFileSync(path.join(tmp, 'versions'), `offshoot CUDA emulator ${version}\n`);
  try {
    fs.renameSync(tmp, home);
  } catch {
    // Another process built the same version first.
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { home, driver };
}

/** Points the cuda backend at the emulator for this process; returns a function that undoes it. */
export function useCudaEmulator(): () => void {
  const { home, driver } = buildCudaEmulator();
  const saved = { home: process.env.OFFSHOOT_CUDA_HOME, driver: process.env.OFFSHOOT_CUDA_DRIVER };
  process.env.OFFSHOOT_CUDA_HOME = home;
  process.env.OFFSHOOT_CUDA_DRIVER = driver;
  return () => {
    for (const [key, value] of [
      ['OFFSHOOT_CUDA_HOME', saved.home],
      ['OFFSHOOT_CUDA_DRIVER', saved.driver],
    ] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  };
}

// `eval "$(npx tsx test/helpers/cuda-emulator.ts)"` points a shell's commands at the emulator.
if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(import.meta.filename)) {
  const { home, driver } = buildCudaEmulator();
  console.log(`export OFFSHOOT_CUDA_HOME='${home}' OFFSHOOT_CUDA_DRIVER='${driver}'`);
}
