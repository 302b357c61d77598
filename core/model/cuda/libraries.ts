/**
 * Where the cuda backend finds NVIDIA's libraries: the CUDA 13 wheels that scripts/setup-cuda.sh
 * puts under the cache (lib/ and include/), or a folder named by env OFFSHOOT_CUDA_HOME with the
 * same layout; libcuda.so.1 comes from the NVIDIA driver through the dynamic loader.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface CudaLibraries {
  /** Folder holding libnvrtc.so.13, libnvrtc-builtins.so.13.0, libcublasLt.so.13. */
  lib: string;
  /** Folder holding cuda.h, cuda_bf16.h, nvrtc.h, cublasLt.h (NVRTC's include path). */
  include: string;
  /** What setup-cuda.sh installed (its `versions` file), or the folder when that is absent. */
  versions: string;
}

/** The reason the libraries cannot be used, with how to fix it. */
export class CudaLibrariesMissing extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CudaLibrariesMissing';
  }
}

export function cudaHome(): string {
  const explicit = process.env.OFFSHOOT_CUDA_HOME?.trim();
  if (explicit) return explicit;
  const cache = process.env.OFFSHOOT_CACHE?.trim() || path.join(os.homedir(), '.cache', 'offshoot');
  return path.join(cache, 'cuda', '13');
}

/** Finds the libraries; throws CudaLibrariesMissing naming the folder and the setup step. */
export function findCudaLibraries(): CudaLibraries {
  const home = cudaHome();
  const lib = path.join(home, 'lib');
  const include = path.join(home, 'include');
  const needed = [
    path.join(lib, 'libnvrtc.so.13'),
    path.join(lib, 'libnvrtc-builtins.so.13.0'),
    path.join(include, 'cuda_bf16.h'),
  ];
  const missing = needed.filter((f) => !fs.existsSync(f));
  if (missing.length > 0) {
    throw new CudaLibrariesMissing(
      `CUDA 13 libraries not found in ${home} (missing ${missing.map((m) => path.basename(m)).join(', ')}); ` +
        'run scripts/setup-cuda.sh (or set OFFSHOOT_CUDA_HOME to a folder with lib/ and include/)',
    );
  }
  const versionsFile = path.join(home, 'versions');
  const versions = fs.existsSync(versionsFile)
    ? fs.readFileSync(versionsFile, 'utf8').trim().split('\n').join(', ')
    : home;
  return { lib, include, versions };
}
