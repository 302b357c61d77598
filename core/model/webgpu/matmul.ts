/**
 * Matrix products on the WebGPU backend with offshoot's register-tiled f32 kernel
 * (wgsl-matmul.ts): a plan per shape (tile, and split-K when the output has too few tiles to fill
 * the GPU and K is long), bias and bias + GELU epilogues, and an autotuner that times the candidate
 * plans of every shape seen so far on the device and keeps the fastest (autotuneMatMuls).
 */
import * as tf from '../tfjs.js';

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
/** Shapes seen and not yet tuned. */
const pending = new Map<string, Shape>();
/** Tuned plans by shape. */
const tuned = new Map<string, MatMulPlan>();

/** Untuned shapes' plans, made once (the same object each time, so its prepared dispatches are reused). */
const defaults = new Map<string, MatMulPlan>();

/** Forgets tuned plans and shapes waiting to be tuned. */
export function clearMatMulTuning(): void {
  pending.clear();
  tuned.clear();
  defaults.clear();
}

/** The tuned plan of a shape (`key` is its shapeKey), else the default one, noting the shape for the autotuner. */
function planFor(key: string, s: Shape): MatMulPlan {
  const t = tuned.get(key);
  if (t) return t;
  let d = defaults.get(key);
  if (!d) {
    d = s.batch > 1 || s.triangle !== 'none' ? batchedPlan(s.M, s.N, s.K) : defaultPlan(s.M, s.N, s.K);
    defaults.set(key, d);
    pending.set(key, s);
  }
  return d;
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
  shape: string;
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
 * Times every candidate plan of each matrix-product shape used since the last call, on the device,
 * and keeps the fastest for that shape. First every candidate runs once (compiling its pipeline),
 * then the GPU is kept busy for a while (clocks up), then the candidates are timed in turn, three
 * rounds of enough repetitions for about `targetMs` each, keeping each one's best round. Call it
 * between training steps (it waits for the device). Returns what it chose.
 */
export async function autotuneMatMuls(opts: { targetMs?: number } = {}): Promise<TuneResult[]> {
  if (webgpuBackend() === null || pending.size === 0) return [];
  const targetMs = opts.targetMs ?? 12;
  const results: TuneResult[] = [];
  const shapes = [...pending.entries()];
  pending.clear();
  for (const [key, s] of shapes) {
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
    const warmMs = key === shapes[0][0] ? 300 : 50;
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
    const ms = best.get(choice)!;
    results.push({
      shape: key,
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
 * autotuneMatMuls on a hardware adapter (a software one, such as lavapipe, would spend minutes), unless
 * OFFSHOOT_MATMUL_AUTOTUNE=0: webgpu's afterFirstTrainingStep, which the trainer runs after its first step.
 */
export async function autotuneIfHardware(): Promise<TuneResult[]> {
  if (webgpuBackend() === null || process.env.OFFSHOOT_MATMUL_AUTOTUNE === '0' || capabilities().software) return [];
  return autotuneMatMuls();
}
