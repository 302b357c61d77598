/**
 * Matrix products on the WebGPU backend with offshoot's register-tiled f32 kernel
 * (wgsl-matmul.ts): a plan per shape (tile, and split-K when the output has too few tiles to fill
 * the GPU and K is long), bias and bias + GELU epilogues, and an autotuner that times the candidate
 * plans of each shape class seen so far on the device and keeps the fastest (autotuneMatMuls), in
 * this process and in a plan file per GPU (matmul-plans.ts), so that no class is tuned twice.
 * Shapes are uniforms of the kernels: a pipeline serves every shape of its variant (tile, transposes,
 * epilogue, and what stays compiled in for speed: four-wide loads and the absence of bounds checks).
 */
/// <reference types="@webgpu/types" />
import { createHash } from 'node:crypto';
import * as path from 'node:path';

import { measureShapeCostAsync, shapeClassesEnabled } from '../shape-costs.js';
import * as tf from '../tfjs.js';

import {
  type GpuIdentity,
  type PlanRecord,
  planCacheDir,
  planDirs,
  planFileName,
  readPlanFile,
  savePlans,
} from './matmul-plans.js';
import {
  type Kernel,
  type UniformValue,
  allocate,
  capabilities,
  dispatch,
  grid1d,
  kernelFor,
  release,
  webgpuBackend,
} from './runtime.js';
import {
  type MatMulTile,
  type MatMulVariant,
  matmulGrid,
  matmulSource,
  parseTile,
  sumSlicesSource,
  sumSlicesWideSource,
  tileName,
  variantKey,
} from './wgsl-matmul.js';

/** The tiles the planner and the autotuner choose from (every one is covered by the kernel tests). */
export const MATMUL_TILES: Record<string, MatMulTile> = {
  large: { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 },
  largeK16: { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8 },
  tall: { BM: 128, BN: 128, BK: 8, TM: 16, TN: 4 },
  medium: { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4 },
  small: { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
  wide: { BM: 256, BN: 128, BK: 16, TM: 8, TN: 8 },
  wideN: { BM: 128, BN: 256, BK: 16, TM: 8, TN: 16 },
  largeDouble: { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8, double: true },
  largeK16Double: { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8, double: true },
  tallDouble: { BM: 128, BN: 128, BK: 8, TM: 16, TN: 4, double: true },
  mediumDouble: { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4, double: true },
};
/**
 * Narrower tiles the autotuner also tries for batched products (attention's, whose N is the head
 * size): more workgroups per product, shorter per-invocation work.
 */
export const BATCHED_TILES: Record<string, MatMulTile> = {
  ...MATMUL_TILES,
  narrow: { BM: 64, BN: 64, BK: 16, TM: 8, TN: 4 },
  slim: { BM: 32, BN: 64, BK: 16, TM: 4, TN: 4 },
};
const { large: LARGE, medium: MEDIUM, small: SMALL } = MATMUL_TILES;
/** Workgroups that fill a large GPU about twice (an H100/H200 has 132 multiprocessors). */
const TARGET_WORKGROUPS = 264;

/** OFFSHOOT_MATMUL_TILE=BMxBNxBKxTMxTN[d] forces one tile (d: two slabs in workgroup memory); OFFSHOOT_MATMUL_SPLITK=0 turns split-K off. */
const forcedTile = process.env.OFFSHOOT_MATMUL_TILE ? parseTile(process.env.OFFSHOOT_MATMUL_TILE) : null;
const splitKEnabled = process.env.OFFSHOOT_MATMUL_SPLITK !== '0';

export interface MatMulPlan {
  tile: MatMulTile;
  /** K slices (1: no split). */
  S: number;
  kChunk: number;
}

function tilesOf(t: MatMulTile, M: number, N: number): number {
  return Math.ceil(M / t.BM) * Math.ceil(N / t.BN);
}

/** A plan with `tile` and about S K-slices (chunks a multiple of the tile's BK). */
export function makePlan(tile: MatMulTile, K: number, S: number): MatMulPlan {
  if (S <= 1) return { tile, S: 1, kChunk: K };
  const kChunk = Math.ceil(K / S / tile.BK) * tile.BK;
  const slices = Math.ceil(K / kChunk);
  return slices <= 1 ? { tile, S: 1, kChunk: K } : { tile, S: slices, kChunk };
}

/** Split-K slices that bring `tile`'s workgroups to about TARGET_WORKGROUPS (1 when K is short). */
function autoSlices(tile: MatMulTile, M: number, N: number, K: number): number {
  const tiles = tilesOf(tile, M, N);
  if (!splitKEnabled || tiles >= TARGET_WORKGROUPS || K < 1024) return 1;
  return Math.max(1, Math.min(Math.ceil(TARGET_WORKGROUPS / tiles), Math.floor(K / 256), 32));
}

/** The plan without tuning: the largest tile that still fills the GPU, else split-K over a large tile when K is long. */
export function defaultPlan(M: number, N: number, K: number): MatMulPlan {
  if (forcedTile) return makePlan(forcedTile, K, autoSlices(forcedTile, M, N, K));
  let tile: MatMulTile;
  if (tilesOf(LARGE, M, N) >= TARGET_WORKGROUPS || (K >= 1024 && M >= 128 && N >= 128)) tile = LARGE;
  else if (tilesOf(MEDIUM, M, N) >= TARGET_WORKGROUPS) tile = MEDIUM;
  else tile = SMALL;
  return makePlan(tile, K, autoSlices(tile, M, N, K));
}

type Triangle = NonNullable<MatMulVariant['triangle']>;

interface Shape {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  /** Products in the batch (1: a single product). */
  batch: number;
  triangle: Triangle;
}

const shapeKey = (s: Shape) =>
  `${s.batch > 1 ? `${s.batch}@` : ''}${s.M}x${s.N}x${s.K}${s.transA ? 'T' : 'N'}${s.transB ? 'T' : 'N'}${s.triangle === 'none' ? '' : `/${s.triangle}`}`;

function pow2AtLeast(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * A shape's class: M, N, K and the batch each rounded up to a power of two, with the transposes and
 * the causal shortcut (`4096x512x512NT` holds every M in 2049..4096, N and K in 257..512). Shapes of a
 * class share one tuned plan: the tile that fills the GPU best, and the split-K slices, change little
 * within a factor of two. A class is tuned once, on the first of its shapes seen.
 */
export function shapeClass(
  s: Pick<Shape, 'M' | 'N' | 'K' | 'transA' | 'transB'> & Partial<Pick<Shape, 'batch' | 'triangle'>>,
): string {
  const batch = s.batch ?? 1;
  const triangle = s.triangle ?? 'none';
  return shapeKey({
    ...s,
    M: pow2AtLeast(s.M),
    N: pow2AtLeast(s.N),
    K: pow2AtLeast(s.K),
    batch: batch > 1 ? pow2AtLeast(batch) : 1,
    triangle,
  });
}

/** Shapes seen and not yet tuned, by shape class (by shape with shape classes off). */
const pending = new Map<string, Shape>();
/** Plans of shapes seen since their class was tuned, by shape. */
const tuned = new Map<string, MatMulPlan>();
/** Tuned plans by shape class: the autotuner's, and the plan files' (matmul-plans.ts). */
const classPlans = new Map<string, { tile: MatMulTile; S: number }>();
/** The device whose plan files were read into classPlans. */
let plansReadFor: GPUDevice | null = null;
/** Shape classes (shapes, with shape classes off) tuned by this process. */
let tunedHere = 0;

/** Tuned shape classes known now (the plan files' included, read on the active webgpu device), and how many of them this process tuned. */
export function matmulPlanCounts(): { classes: number; tuned: number } {
  if (shapeClassesEnabled()) readPlanFiles();
  return { classes: shapeClassesEnabled() ? classPlans.size : tuned.size, tuned: tunedHere };
}

/** Untuned shapes' plans, made once (the same object each time, so its prepared dispatches are reused), with their class. */
const defaults = new Map<string, { plan: MatMulPlan; cls: string }>();

/** Forgets tuned plans and shapes waiting to be tuned (plan files are read again on next use). */
export function clearMatMulTuning(): void {
  pending.clear();
  tuned.clear();
  classPlans.clear();
  defaults.clear();
  plansReadFor = null;
}

/**
 * The tuned plan of a shape (`key` is its shapeKey), from its class's when that is tuned, else the
 * default one, noting the shape's class for the autotuner.
 */
function planFor(key: string, s: Shape): MatMulPlan {
  const t = tuned.get(key) ?? defaults.get(key)?.plan;
  if (t) return t;
  const byClass = shapeClassesEnabled();
  const cls = byClass ? shapeClass(s) : key;
  if (byClass) {
    readPlanFiles();
    const c = classPlans.get(cls);
    if (c) {
      const plan = makePlan(c.tile, s.K, c.S);
      tuned.set(key, plan);
      return plan;
    }
  }
  const plan = s.batch > 1 || s.triangle !== 'none' ? batchedPlan(s.M, s.N, s.K) : defaultPlan(s.M, s.N, s.K);
  defaults.set(key, { plan, cls });
  if (!pending.has(cls)) pending.set(cls, s);
  return plan;
}

// ---------------------------------------------------------------------------------------------
// Plan files (matmul-plans.ts)

const planLog = (msg: string): void => {
  process.stderr.write(`matmul plans: ${msg}\n`);
};

/** This device's GPU, as plan files name it. */
function gpuIdentity(device: GPUDevice): GpuIdentity {
  const info = (device as unknown as { adapterInfo?: Partial<GpuIdentity> }).adapterInfo ?? {};
  return {
    vendor: info.vendor || 'unknown',
    architecture: info.architecture || 'unknown',
    device: info.device || 'unknown',
    description: info.description || '',
  };
}

let kernelsVersion: string | undefined;

/**
 * The version of the product kernels that tuned plans depend on: a hash of the generated sources of
 * every tile (a plain and a split-K variant each), the slices' reductions and the planner's target.
 * Any change to the kernels gives new plan files.
 */
export function matmulKernelsVersion(): string {
  if (kernelsVersion) return kernelsVersion;
  const hash = createHash('sha256').update(`${TARGET_WORKGROUPS}\0${JSON.stringify(BATCHED_TILES)}\0`);
  for (const tile of Object.values(BATCHED_TILES)) {
    const base = { ...tile, transA: false, transB: true, vecA: true, vecB: true, vecC: true, exact: false } as const;
    hash
      .update(matmulSource({ ...base, epilogue: 'bias-gelu', splitK: false }))
      .update(matmulSource({ ...base, transA: true, transB: false, vecA: false, epilogue: 'none', splitK: true }));
  }
  for (const epilogue of ['none', 'bias', 'bias-gelu'] as const) hash.update(sumSlicesSource({ epilogue }));
  return (kernelsVersion = hash.update(sumSlicesWideSource()).digest('hex').slice(0, 12));
}

/** Whether a class (or shape key) is of batched or triangular products: `64@…` or `…/lowerC`. */
const batchedClass = (cls: string) => cls.includes('@') || cls.includes('/');

/** The tiles a class may use: those the autotuner tries for it. */
function allowedTiles(cls: string): Map<string, MatMulTile> {
  return new Map(Object.values(batchedClass(cls) ? BATCHED_TILES : MATMUL_TILES).map((t) => [tileName(t), t]));
}

/** Reads this device's plan files into classPlans, once per device; problems are logged and skipped. */
function readPlanFiles(): void {
  const b = webgpuBackend();
  if (!b || plansReadFor === b.device) return;
  plansReadFor = b.device;
  const gpu = gpuIdentity(b.device);
  const version = matmulKernelsVersion();
  for (const dir of planDirs()) {
    const file = path.join(dir, planFileName(gpu, version));
    const { plans, warnings } = readPlanFile(file, gpu, version);
    for (const w of warnings) planLog(w);
    for (const [cls, rec] of plans) {
      if (classPlans.has(cls)) continue;
      const tile = allowedTiles(cls).get(rec.tile);
      // Batched and triangular products take no split-K.
      if (!tile || (rec.slices > 1 && batchedClass(cls))) {
        planLog(
          `${file}: plans[${JSON.stringify(cls)}]: tile ${rec.tile} with ${rec.slices} slices is not a plan this class can use; entry ignored`,
        );
        continue;
      }
      classPlans.set(cls, { tile, S: rec.slices });
    }
  }
}

/** Adds newly tuned classes to the plan cache file (a failure to write is logged: the plans still hold in this process). */
function savePlanFile(results: TuneResult[]): void {
  const b = webgpuBackend();
  if (!b || results.length === 0) return;
  const records = new Map<string, PlanRecord>();
  for (const r of results) {
    const c = classPlans.get(r.class);
    if (c) records.set(r.class, { tile: tileName(c.tile), slices: c.S, shape: r.shape, ms: r.ms });
  }
  try {
    const { skipped } = savePlans(planCacheDir(), gpuIdentity(b.device), matmulKernelsVersion(), records);
    if (skipped) planLog(`not saved: ${skipped}`);
  } catch (err) {
    planLog(`could not save to ${planCacheDir()}: ${(err as Error).message}`);
  }
}

/** Batches and triangular products take no split-K; the batch fills the GPU, so the largest tile that fits the product. */
function batchedPlan(M: number, N: number, K: number): MatMulPlan {
  const tile = forcedTile ?? (M >= 128 && N >= 128 ? LARGE : N >= 64 && M >= 128 ? MEDIUM : SMALL);
  return makePlan(tile, K, 1);
}

function mmKernel(v: MatMulVariant): Kernel {
  const tri = v.triangle && v.triangle !== 'none' ? `_${v.triangle}` : '';
  const name = `matmul_${v.transA ? 'T' : 'N'}${v.transB ? 'T' : 'N'}_${v.BM}x${v.BN}${v.splitK ? '_splitk' : ''}${v.batched ? '_batched' : ''}${tri}${v.epilogue === 'none' ? '' : `_${v.epilogue}`}`;
  return kernelFor(variantKey(v), name, () => matmulSource(v));
}

function sumKernel(epilogue: 'none' | 'bias' | 'bias-gelu'): Kernel {
  return kernelFor(`sumslices_${epilogue}`, `sum_slices${epilogue === 'none' ? '' : `_${epilogue}`}`, () =>
    sumSlicesSource({ epilogue }),
  );
}

export interface MatMulArgs {
  /** A is [M, K], or [K, M] when transA. */
  a: tf.TensorInfo;
  /** B is [K, N], or [N, K] when transB. */
  b: tf.TensorInfo;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  /** [N], added to every row. */
  bias?: tf.TensorInfo;
  /** Apply exact GELU after the bias; the pre-activation comes back as `z`. */
  gelu?: boolean;
  /** A batch of products: A, B and C are [batch, …] (no bias). */
  batch?: number;
  /** Causal shortcuts of square products (MatMulVariant.triangle). */
  triangle?: Triangle;
  /** Use this plan instead of the tuned or default one. */
  plan?: MatMulPlan;
}

/** A product's dispatches for one plan, worked out once (a training step repeats the same products). */
interface Prepared {
  kernel: Kernel;
  grid: [number, number, number];
  uniforms: UniformValue[];
  /** Split-K: the slices' reduction (with the epilogue). */
  sum?: { kernel: Kernel; grid: [number, number, number]; uniforms: UniformValue[] };
}
const preparedByPlan = new WeakMap<MatMulPlan, Map<string, Prepared>>();

function prepare(plan: MatMulPlan, s: Shape, epilogue: MatMulVariant['epilogue']): Prepared {
  const { M, N, K, transA, transB, batch, triangle } = s;
  const uniforms: UniformValue[] = [
    ['u', M],
    ['u', N],
    ['u', K],
    ['u', plan.kChunk],
  ];
  const base = {
    ...plan.tile,
    transA,
    transB,
    vecA: (transA ? M : K) % 4 === 0,
    vecB: (transB ? K : N) % 4 === 0,
    vecC: N % 4 === 0,
  };
  if (plan.S === 1) {
    const v: MatMulVariant = {
      ...base,
      exact: M % plan.tile.BM === 0 && N % plan.tile.BN === 0 && K % plan.tile.BK === 0,
      epilogue,
      splitK: false,
      batched: batch > 1,
      triangle,
    };
    return { kernel: mmKernel(v), grid: matmulGrid(v, M, N, batch), uniforms };
  }
  const v: MatMulVariant = {
    ...base,
    exact:
      M % plan.tile.BM === 0 && N % plan.tile.BN === 0 && plan.kChunk % plan.tile.BK === 0 && K % plan.kChunk === 0,
    epilogue: 'none',
    splitK: true,
  };
  return {
    kernel: mmKernel(v),
    grid: matmulGrid(v, M, N, plan.S),
    uniforms,
    sum: {
      kernel: sumKernel(epilogue),
      grid: grid1d(M * N),
      uniforms: [
        ['u', plan.S],
        ['u', M * N],
        ['u', N],
        ['u', 0],
      ],
    },
  };
}

/** C [M, N] = op(A) · op(B) (+ bias) (→ GELU). Returns tensor data (wrap with toTensor). */
export function matmul(args: MatMulArgs): { c: tf.TensorInfo; z?: tf.TensorInfo } {
  const { a, b, M, N, K, transA = false, transB = false, bias, gelu = false, batch = 1, triangle = 'none' } = args;
  if (gelu && !bias) throw new Error('matmul: GELU epilogue needs a bias');
  if (K === 0) throw new Error('matmul: K is 0');
  const epilogue = gelu ? 'bias-gelu' : bias ? 'bias' : 'none';
  const shape: Shape = { M, N, K, transA, transB, batch, triangle };
  const key = shapeKey(shape);
  const plan = args.plan ?? planFor(key, shape);
  if ((batch > 1 || triangle !== 'none') && (bias || plan.S !== 1))
    throw new Error('matmul: batched and triangular products take no bias or split-K');
  let byShape = preparedByPlan.get(plan);
  if (!byShape) preparedByPlan.set(plan, (byShape = new Map()));
  const preparedKey = `${key}|${epilogue}`;
  let p = byShape.get(preparedKey);
  if (!p) byShape.set(preparedKey, (p = prepare(plan, shape, epilogue)));
  const c = allocate(batch > 1 ? [batch, M, N] : [M, N]);
  const z = gelu ? allocate([M, N]) : undefined;
  const outs = z ? [c, z] : [c];
  if (!p.sum) {
    dispatch(p.kernel, bias ? [a, b, bias] : [a, b], outs, p.uniforms, p.grid);
    return { c, z };
  }
  const partial = allocate([plan.S, M, N]);
  dispatch(p.kernel, [a, b], [partial], p.uniforms, p.grid);
  dispatch(p.sum.kernel, bias ? [partial, bias] : [partial], outs, p.sum.uniforms, p.sum.grid);
  release(partial);
  return { c, z };
}

const wideSum: Kernel = { key: 'sumslices_wide', name: 'sum_slices_wide', source: sumSlicesWideSource };

/** Sums the S slices of x [S, L] into [L] (one thread per column for few slices, cooperative for many). */
export function sumSlices(x: tf.TensorInfo, S: number, L: number): tf.TensorInfo {
  const y = allocate([L]);
  if (S <= 16)
    dispatch(
      sumKernel('none'),
      [x],
      [y],
      [
        ['u', S],
        ['u', L],
        ['u', L],
        ['u', 0],
      ],
      grid1d(L),
    );
  else
    dispatch(
      wideSum,
      [x],
      [y],
      [
        ['u', S],
        ['u', L],
        ['u', 0],
        ['u', 0],
      ],
      grid1d(L, 16),
    );
  return y;
}

// ---------------------------------------------------------------------------------------------
// Autotuning

/**
 * The plans the autotuner tries for a shape: every tile, each without split-K and (for long K) with
 * about the slices that fill the GPU and twice that; with `noSplit` (batched or triangular
 * products) every batched-product tile no larger than the product, without split-K.
 */
export function candidatePlans(M: number, N: number, K: number, noSplit = false): MatMulPlan[] {
  const out: MatMulPlan[] = [];
  const seen = new Set<string>();
  for (const tile of Object.values(noSplit ? BATCHED_TILES : MATMUL_TILES)) {
    if (noSplit) {
      if (tile.BM <= Math.max(64, M) && tile.BN <= Math.max(64, N)) out.push(makePlan(tile, K, 1));
      continue;
    }
    const auto = autoSlices(tile, M, N, K);
    for (const S of new Set([1, auto, auto > 1 ? auto * 2 : 1])) {
      const p = makePlan(tile, K, S);
      const key = planName(p);
      if (!seen.has(key)) {
        seen.add(key);
        out.push(p);
      }
    }
  }
  return out;
}

export interface TuneResult {
  /** The shape timed. */
  shape: string;
  /** Its shape class, which the plan now serves. */
  class: string;
  plan: string;
  ms: number;
  defaultMs: number;
  tflops: number;
}

function planName(p: MatMulPlan): string {
  return `${p.tile.BM}x${p.tile.BN}x${p.tile.BK} t${p.tile.TM}x${p.tile.TN}${p.tile.double ? ' double' : ''}${p.S > 1 ? ` split-K ${p.S}` : ''}`;
}

async function drain(): Promise<void> {
  const b = webgpuBackend()!;
  b.endComputePassEncoder();
  if (b.commandEncoder) b.submitQueue();
  await b.device.queue.onSubmittedWorkDone();
}

/**
 * Times every candidate plan of one shape of each shape class used since the last call and not tuned
 * yet, on the device, and keeps the fastest for the class (by shape, with shape classes off). First
 * every candidate runs once (compiling its pipeline), then the GPU is kept busy for a while (clocks
 * up), then the candidates are timed in turn, three rounds of enough repetitions for about `targetMs`
 * each, keeping each one's best round. The choices go to the plan cache file. Call it between
 * training steps (it waits for the device). Returns what it chose; its time counts as autotuning.
 */
export async function autotuneMatMuls(opts: { targetMs?: number } = {}): Promise<TuneResult[]> {
  if (webgpuBackend() === null || pending.size === 0) return [];
  const results = await measureShapeCostAsync('autotune', () => tunePending(opts.targetMs ?? 12));
  if (shapeClassesEnabled()) savePlanFile(results);
  return results;
}

async function tunePending(targetMs: number): Promise<TuneResult[]> {
  const results: TuneResult[] = [];
  const shapes = [...pending.entries()];
  pending.clear();
  for (const [cls, s] of shapes) {
    const key = shapeKey(s);
    const a = tf.randomUniform([s.batch, ...(s.transA ? [s.K, s.M] : [s.M, s.K])], -1, 1);
    const b = tf.randomUniform([s.batch, ...(s.transB ? [s.N, s.K] : [s.K, s.N])], -1, 1);
    const flops = 2 * s.batch * s.M * s.N * s.K * (s.triangle === 'none' ? 1 : 0.5);
    const noSplit = s.batch > 1 || s.triangle !== 'none';
    const def = noSplit ? batchedPlan(s.M, s.N, s.K) : defaultPlan(s.M, s.N, s.K);
    const plans = [def, ...candidatePlans(s.M, s.N, s.K, noSplit)];
    const run = (plan: MatMulPlan, reps: number) => {
      for (let i = 0; i < reps; i++) release(matmul({ a, b, ...s, plan }).c);
    };
    const timed = async (plan: MatMulPlan, reps: number): Promise<number> => {
      await drain();
      const t0 = performance.now();
      run(plan, reps);
      await drain();
      return (performance.now() - t0) / reps;
    };
    // Compile and estimate.
    const estimate = new Map<MatMulPlan, number>();
    for (const p of plans) {
      run(p, 1);
      estimate.set(p, await timed(p, 1));
    }
    // Clocks up: about 50 ms of the default plan (300 ms before the first shape: an idle GPU's
    // clocks take longer than 50 ms to rise, and the first shape's choice was skewed by it).
    const warmMs = cls === shapes[0][0] ? 300 : 50;
    await timed(def, Math.max(2, Math.min(2000, Math.ceil(warmMs / Math.max(estimate.get(def)!, 0.01)))));
    const best = new Map<MatMulPlan, number>();
    for (let round = 0; round < 3; round++) {
      for (const p of plans) {
        const reps = Math.max(2, Math.min(200, Math.ceil(targetMs / Math.max(estimate.get(p)!, 0.01))));
        const ms = await timed(p, reps);
        best.set(p, Math.min(best.get(p) ?? Infinity, ms));
      }
    }
    let choice = def;
    for (const p of plans) if (best.get(p)! < best.get(choice)!) choice = p;
    tuned.set(key, choice);
    tunedHere++;
    if (shapeClassesEnabled()) classPlans.set(cls, { tile: choice.tile, S: choice.S });
    // The class's other shapes seen so far take its plan from their next product on.
    for (const [k, d] of defaults) if (d.cls === cls) defaults.delete(k);
    const ms = best.get(choice)!;
    results.push({
      shape: key,
      class: cls,
      plan: planName(choice),
      ms: Number(ms.toFixed(3)),
      defaultMs: Number(best.get(def)!.toFixed(3)),
      tflops: Number((flops / ms / 1e9).toFixed(2)),
    });
    tf.dispose([a, b]);
  }
  return results;
}

/**
 * autotuneMatMuls on a hardware adapter (a software one, such as lavapipe, would spend minutes) unless
 * OFFSHOOT_MATMUL_AUTOTUNE=0, or on any adapter with OFFSHOOT_MATMUL_AUTOTUNE=1: webgpu's
 * afterFirstTrainingStep, which the trainer runs after its first step.
 */
export async function autotuneIfHardware(): Promise<TuneResult[]> {
  const setting = process.env.OFFSHOOT_MATMUL_AUTOTUNE;
  if (webgpuBackend() === null || setting === '0' || (capabilities().software && setting !== '1')) return [];
  return autotuneMatMuls();
}
