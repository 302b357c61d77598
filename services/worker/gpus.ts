/**
 * The GPUs of this host, as `nvidia-smi -L` lists them, and `--gpus` (a count, `all`, or a list of
 * indices) resolved against them. A process is pinned to one of them by the environment data-parallel.ts
 * deviceEnv() gives it (CUDA_VISIBLE_DEVICES for cuda, OFFSHOOT_WEBGPU_ADAPTER for webgpu).
 */
import { spawnSync } from 'node:child_process';

export interface Gpu {
  /** nvidia-smi's index (PCI bus order). */
  index: number;
  name: string;
  uuid?: string;
}

/** A `--gpus` value that cannot be satisfied here, or a host whose GPUs cannot be listed. */
export class GpuSelectionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GpuSelectionError';
  }
}

/** Parses `nvidia-smi -L` output: lines like `GPU 0: NVIDIA H200 (UUID: GPU-…)`. */
export function parseNvidiaSmiList(output: string): Gpu[] {
  const gpus: Gpu[] = [];
  for (const line of output.split('\n')) {
    const m = /^GPU (\d+): (.*?)(?: \(UUID: ([^)]+)\))?\s*$/.exec(line.trim());
    if (m) gpus.push({ index: Number(m[1]), name: m[2], ...(m[3] ? { uuid: m[3] } : {}) });
  }
  return gpus;
}

/** The GPUs nvidia-smi lists; throws a GpuSelectionError saying what is missing when it cannot. */
export function listGpus(nvidiaSmi = 'nvidia-smi'): Gpu[] {
  const r = spawnSync(nvidiaSmi, ['-L'], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) {
    const missing = (r.error as NodeJS.ErrnoException).code === 'ENOENT';
    throw new GpuSelectionError(
      missing
        ? `--gpus: cannot list this machine's GPUs: ${nvidiaSmi} is not installed (it comes with the NVIDIA driver); on a machine without NVIDIA GPUs leave --gpus out (evaluators: start several workers or use --slots; pretraining: --ranks N)`
        : `--gpus: ${nvidiaSmi} -L failed: ${r.error.message}`,
    );
  }
  if (r.status !== 0)
    throw new GpuSelectionError(
      `--gpus: ${nvidiaSmi} -L exited with ${r.status}: ${(r.stderr || r.stdout).trim().split('\n')[0] || 'no output'}`,
    );
  return parseNvidiaSmiList(r.stdout);
}

function describe(gpus: Gpu[]): string {
  if (gpus.length === 0) return 'none';
  return gpus.map((g) => `${g.index} ${g.name}`).join(', ');
}

/**
 * The GPU indices `--gpus` asks for: `N` (the first N), `all`, or a comma-separated list of indices
 * (`0,2`; a single index as `3,`). `available` is what the host has (listGpus()). Errors name the
 * value and what the host has.
 */
export function selectGpus(value: string, available: Gpu[]): number[] {
  const v = value.trim().toLowerCase();
  const have = `this machine has ${available.length} GPU${available.length === 1 ? '' : 's'} (nvidia-smi -L: ${describe(available)})`;
  if (available.length === 0) throw new GpuSelectionError(`--gpus ${value}: nvidia-smi lists no GPU on this machine`);
  if (v === 'all') return available.map((g) => g.index);
  if (/^\d+$/.test(v)) {
    const n = Number(v);
    if (n < 1) throw new GpuSelectionError(`--gpus ${value}: ask for at least one GPU`);
    if (n > available.length) throw new GpuSelectionError(`--gpus ${value}: asks for ${n} GPUs, but ${have}`);
    return available.slice(0, n).map((g) => g.index);
  }
  if (/^\d+(\s*,\s*\d+)*\s*,?$/.test(v)) {
    const indices = v
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
      .map(Number);
    const seen = new Set<number>();
    for (const i of indices) {
      if (seen.has(i)) throw new GpuSelectionError(`--gpus ${value}: GPU ${i} is listed twice`);
      seen.add(i);
      if (!available.some((g) => g.index === i))
        throw new GpuSelectionError(`--gpus ${value}: there is no GPU ${i}; ${have}`);
    }
    return indices;
  }
  throw new GpuSelectionError(
    `--gpus: expected a number of GPUs (2), all, or a comma-separated list of GPU indices (0,2; one GPU: 3,), got ${JSON.stringify(value)}`,
  );
}
