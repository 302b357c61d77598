/**
 * The matrix-product autotuner's choices kept on disk, one JSON file per GPU model: for each shape
 * class (matmul.ts), the tile and split-K slices it timed fastest. A process reads them before it
 * tunes anything, so a class tuned once on a GPU model is never tuned again there:
 *
 * - `${OFFSHOOT_CACHE:-~/.cache/offshoot}/matmul-plans/`: written after every autotuning, read first;
 * - the directories in env OFFSHOOT_MATMUL_PLANS (separated like PATH), read-only: plans mounted or
 *   baked into an image;
 * - `plans/` beside this module (copied into dist/ by the build, so every install and image carries
 *   it), read-only: plans shipped for common GPUs.
 *
 * A file is named after the GPU it was tuned on and the version of the kernels (a hash of their
 * generated sources), so plans of other kernels are never read, and says both inside. Files or entries
 * that do not parse are ignored with a warning: a bad file never stops training, its classes are tuned
 * again (a cache file that is not JSON at all is then replaced; one of another format or GPU is left
 * alone, and nothing is saved over it). Writes are atomic (a temporary file renamed over the old one)
 * and merge with what the file holds by then, so evaluators sharing a cache lose at most a class
 * another wrote at the same moment.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The GPU a plan file was tuned on (WebGPU's adapter info). */
export interface GpuIdentity {
  vendor: string;
  architecture: string;
  device: string;
  /** The driver's description; recorded, not matched (a driver update keeps the plans). */
  description: string;
}

/** One class's plan: a tile (`BMxBNxBKxTMxTN`, `d` for two slabs) and its split-K slices. */
export interface PlanRecord {
  tile: string;
  slices: number;
  /** The product timed for it (`MxNxK` and transposes) and its time, for reading. */
  shape?: string;
  ms?: number;
}

export const PLAN_FILE_FORMAT = 1;

export interface PlanFile {
  format: typeof PLAN_FILE_FORMAT;
  gpu: GpuIdentity;
  /** Hash of the kernels' generated sources the plans were timed with. */
  kernels: string;
  plans: Record<string, PlanRecord>;
}

/** The shipped plans' directory (beside this module in the sources and in dist/). */
export const SHIPPED_PLANS_DIR = fileURLToPath(new URL('./plans/', import.meta.url));

/** The writable cache directory: ${OFFSHOOT_CACHE:-~/.cache/offshoot}/matmul-plans. */
export function planCacheDir(): string {
  return path.join(process.env.OFFSHOOT_CACHE?.trim() || path.join(os.homedir(), '.cache', 'offshoot'), 'matmul-plans');
}

/** Where plans are read from, first match wins: the cache, env OFFSHOOT_MATMUL_PLANS, the shipped ones. */
export function planDirs(): string[] {
  const extra = (process.env.OFFSHOOT_MATMUL_PLANS ?? '')
    .split(path.delimiter)
    .map((d) => d.trim())
    .filter(Boolean);
  return [planCacheDir(), ...extra, SHIPPED_PLANS_DIR];
}

const slug = (s: string) =>
  s
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '') || 'unknown';

/** The file name of a GPU's plans for a kernel version: vendor, architecture, device and version, e.g. `nvidia-hopper-nvidia-h200.3f2a9c0e1b7d.json`. */
export function planFileName(gpu: GpuIdentity, kernels: string): string {
  return `${slug(gpu.vendor)}-${slug(gpu.architecture)}-${slug(gpu.device)}.${slug(kernels)}.json`;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The plans a file holds for this GPU and kernel version, and what was wrong with it. A missing file
 * holds nothing and says nothing; every other problem is a warning naming the file and the field.
 * `replaceable`: the file may be written over (missing, or not JSON at all: nothing in it to keep).
 */
export function readPlanFile(
  file: string,
  gpu: GpuIdentity,
  kernels: string,
): { plans: Map<string, PlanRecord>; warnings: string[]; replaceable: boolean } {
  const plans = new Map<string, PlanRecord>();
  const warnings: string[] = [];
  const ignored = (why: string, replaceable = false) => {
    warnings.push(`${file}: ${why}; ignored`);
    return { plans, warnings, replaceable };
  };
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { plans, warnings, replaceable: true };
    return ignored(`cannot be read (${(err as Error).message})`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    return ignored(`not valid JSON (${(err as Error).message})`, true);
  }
  if (!isRecord(data)) return ignored('expected a JSON object', true);
  if (data.format !== PLAN_FILE_FORMAT)
    return ignored(`format ${JSON.stringify(data.format)}, expected ${PLAN_FILE_FORMAT}`);
  const g = data.gpu;
  if (!isRecord(g) || g.vendor !== gpu.vendor || g.architecture !== gpu.architecture || g.device !== gpu.device) {
    return ignored(`gpu ${JSON.stringify(g)} is not this one (${gpu.vendor}, ${gpu.architecture}, ${gpu.device})`);
  }
  if (data.kernels !== kernels)
    return ignored(`kernels ${JSON.stringify(data.kernels)}, expected ${JSON.stringify(kernels)}`);
  if (!isRecord(data.plans)) return ignored('"plans" must be an object of shape class → {"tile", "slices"}');
  for (const [cls, rec] of Object.entries(data.plans)) {
    if (
      !isRecord(rec) ||
      typeof rec.tile !== 'string' ||
      !Number.isSafeInteger(rec.slices) ||
      (rec.slices as number) < 1
    ) {
      warnings.push(
        `${file}: plans[${JSON.stringify(cls)}] = ${JSON.stringify(rec)}: expected {"tile": "BMxBNxBKxTMxTN", "slices": n ≥ 1}; entry ignored`,
      );
      continue;
    }
    plans.set(cls, {
      tile: rec.tile,
      slices: rec.slices as number,
      ...(typeof rec.shape === 'string' ? { shape: rec.shape } : {}),
      ...(typeof rec.ms === 'number' ? { ms: rec.ms } : {}),
    });
  }
  return { plans, warnings, replaceable: true };
}

/**
 * Adds `plans` to the GPU's file in `dir` (created if need be), keeping the entries it already holds
 * for other classes. Atomic: readers see the old file or the new. Returns the file, with `skipped`
 * saying why nothing was written when a file of another format or GPU stands there (left as it is).
 */
export function savePlans(
  dir: string,
  gpu: GpuIdentity,
  kernels: string,
  plans: Map<string, PlanRecord>,
): { file: string; skipped?: string } {
  const file = path.join(dir, planFileName(gpu, kernels));
  const existing = readPlanFile(file, gpu, kernels);
  if (!existing.replaceable) return { file, skipped: existing.warnings.join('; ') };
  const merged: Record<string, PlanRecord> = Object.fromEntries(existing.plans);
  for (const [cls, rec] of plans) merged[cls] = rec;
  const sorted = Object.fromEntries(
    Object.keys(merged)
      .sort()
      .map((k) => [k, merged[k]]),
  );
  const content: PlanFile = { format: PLAN_FILE_FORMAT, gpu, kernels, plans: sorted };
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.writeFileSync(tmp, `${JSON.stringify(content, null, 1)}\n`);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  return { file };
}
