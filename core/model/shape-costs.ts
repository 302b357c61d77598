/**
 * Per-shape costs: the work a backend does once for each new shape, before it can run it at speed —
 * compiling GPU programs (WebGPU pipelines, CUDA modules, cuBLASLt plans) and autotuning them. The
 * backends measure it where it happens, so that a fitness evaluation can tell it apart from its steady
 * compute (core/subnet/fitness.ts reports both).
 *
 * Shape classes keep that work from repeating: kernels read their shapes from uniforms instead of
 * compiling them in, so one pipeline serves a class of shapes, and the matrix-product autotuner tunes a
 * class once and keeps the result on disk (docs/gpu-kernels.md). `OFFSHOOT_SHAPE_CLASSES=0` (or
 * `setShapeClasses(false)`) turns this off: every shape compiled and tuned on its own, in memory only —
 * what a benchmark measures the classes against.
 */

/** The kinds of per-shape work. */
export const SHAPE_COSTS = ['compile', 'autotune'] as const;
export type ShapeCost = (typeof SHAPE_COSTS)[number];

export type ShapeCostTotals = Record<ShapeCost, { ms: number; count: number }>;

const totals: ShapeCostTotals = { compile: { ms: 0, count: 0 }, autotune: { ms: 0, count: 0 } };
/** The work being measured now: nested work (an autotuner's compiles) counts as the outer kind. */
let open: ShapeCost | null = null;

/** Pipelines compiled since the last takeCompiledPipelines, by label (the kernel's name). */
let compiledPipelines = new Map<string, number>();

/** Notes a compiled pipeline's label, for takeCompiledPipelines. */
export function notePipeline(label: string | undefined): void {
  const name = label || '(unlabelled)';
  compiledPipelines.set(name, (compiledPipelines.get(name) ?? 0) + 1);
}

/** The pipelines compiled since the last call, by kernel name: which kernels a new shape compiled. */
export function takeCompiledPipelines(): Record<string, number> {
  const taken = Object.fromEntries(compiledPipelines);
  compiledPipelines = new Map();
  return taken;
}

/** Runs `f`, counting its time as per-shape work of this kind. */
export function measureShapeCost<T>(kind: ShapeCost, f: () => T): T {
  if (open !== null) return f();
  open = kind;
  const t0 = performance.now();
  try {
    return f();
  } finally {
    totals[kind].ms += performance.now() - t0;
    totals[kind].count++;
    open = null;
  }
}

/** measureShapeCost for asynchronous work (the autotuner waits for the device). */
export async function measureShapeCostAsync<T>(kind: ShapeCost, f: () => Promise<T>): Promise<T> {
  if (open !== null) return f();
  open = kind;
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    totals[kind].ms += performance.now() - t0;
    totals[kind].count++;
    open = null;
  }
}

/** Per-shape work so far in this process (milliseconds and occurrences per kind). */
export function shapeCostTotals(): ShapeCostTotals {
  return { compile: { ...totals.compile }, autotune: { ...totals.autotune } };
}

let classesOverride: boolean | null = null;

/** Whether kernels and autotuning work by shape class (default on; OFFSHOOT_SHAPE_CLASSES=0 turns it off). */
export function shapeClassesEnabled(): boolean {
  if (classesOverride !== null) return classesOverride;
  return process.env.OFFSHOOT_SHAPE_CLASSES !== '0';
}

/** Turns shape classes on or off for this process (null: back to env OFFSHOOT_SHAPE_CLASSES). */
export function setShapeClasses(on: boolean | null): void {
  classesOverride = on;
}
