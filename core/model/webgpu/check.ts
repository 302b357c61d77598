/**
 * Correctness checks of the fused kernels against the reference tfjs ops: the value and the
 * gradients (for a fixed random upstream gradient) of each fused op, computed on the webgpu backend,
 * against the reference ops computed either on the cpu backend (small shapes: what the tests run,
 * on lavapipe in CI) or on the webgpu backend with the fused kernels off (tfjs's stock kernels, at
 * the shapes of a Pythia-70M training step: what bench/gpu-train --check runs on the card). This is
 * the runner and the matrix products' case, on the backend-neutral harness of core/model/kernel-check.ts;
 * each operation's case is in its file (linearCase in linear.ts, attentionCase in attention.ts, ...).
 */
import * as tf from '../tfjs.js';

import { type CurveDistance, curveDistance, trainCurve } from '../curve.js';
import { type Host, randHost, relErr, valueAndGrads } from '../kernel-check.js';
import type { NeoXConfig } from '../config.js';
import type { GPTNeoX } from '../gptneox.js';
import type { Batch } from '../train.js';
import { DEFAULT_LOSS_SCALE, gelu, lossScaling } from '../ops/index.js';
import { type Precision, setPrecision } from '../precision.js';
import { setFusedKernels } from './fused.js';
import { halfProducts, toHalf } from './half.js';
import { type MatMulPlan, makePlan, matmul } from './matmul.js';
import { release, toTensor, withDeviceErrors } from './runtime.js';
import { type SgMatMulTile, sgTileDescription } from './wgsl-sgmatrix.js';

export type Reference = 'cpu' | 'webgpu-unfused';

/**
 * Makes `where` the active backend, with the fused kernels on (webgpu) or off (webgpu-unfused).
 * The caller loads webgpu first (initBackend).
 */
export async function onBackend(where: Reference | 'webgpu'): Promise<void> {
  const name = where === 'cpu' ? 'cpu' : 'webgpu';
  if (tf.getBackend() !== name && !(await tf.setBackend(name)))
    throw new Error(`kernel check: the ${name} backend failed to initialise`);
  await tf.ready();
  setFusedKernels(where === 'webgpu-unfused' ? false : null);
}

export interface KernelCase {
  name: string;
  inputs: () => Host[] | Promise<Host[]>;
  /** Inputs to differentiate. */
  diff: number[];
  reference: (ts: tf.Tensor[]) => tf.Tensor;
  fused: (ts: tf.Tensor[]) => tf.Tensor;
  tol: number;
}

export interface CaseResult {
  name: string;
  valueErr: number;
  gradErrs: number[];
  tol: number;
  /** The device's validation and internal errors while the fused op ran (a refused pipeline, an invalid dispatch). */
  deviceErrors: string[];
  ok: boolean;
}

/** Runs one case: the reference where asked, the fused op on webgpu, and compares. */
export async function runCase(c: KernelCase, reference: Reference): Promise<CaseResult> {
  const inputs = await c.inputs();
  await onBackend(reference);
  const ref = await valueAndGrads(inputs, c.diff, c.reference);
  await onBackend('webgpu');
  const { result: got, errors: deviceErrors } = await withDeviceErrors(() => valueAndGrads(inputs, c.diff, c.fused));
  setFusedKernels(null);
  const valueErr = relErr(got.value, ref.value);
  const gradErrs = got.grads.map((g, i) => relErr(g, ref.grads[i]));
  const ok = deviceErrors.length === 0 && valueErr < c.tol && gradErrs.every((e) => e < c.tol);
  return { name: c.name, valueErr, gradErrs, tol: c.tol, deviceErrors, ok };
}

export function matmulCase(
  name: string,
  M: number,
  K: number,
  N: number,
  transA: boolean,
  transB: boolean,
  tol = 2e-6,
): KernelCase {
  return {
    name,
    inputs: () => [randHost(transA ? [K, M] : [M, K], 1), randHost(transB ? [N, K] : [K, N], 2)],
    diff: [],
    reference: ([x, y]) => tf.matMul(x, y, transA, transB),
    fused: ([x, y]) => toTensor(matmul({ a: x, b: y, M, N, K, transA, transB }).c),
    tol,
  };
}

/**
 * A whole model's loss and every parameter's gradient, fused kernels on webgpu against the reference
 * (cpu, or webgpu with the fused kernels off). Returns the loss difference and the worst gradient.
 */
export async function modelGradientCheck(
  config: NeoXConfig,
  batch: number,
  seqLen: number,
  reference: Reference,
): Promise<{ lossDiff: number; worstGradient: { name: string; err: number } }> {
  const { GPTNeoX } = await import('../gptneox.js');
  const n = batch * seqLen;
  const ids = Int32Array.from({ length: n }, (_, i) => (i * 7 + 3) % config.vocabSize);
  const targets = Int32Array.from({ length: n }, (_, i) => (i * 11 + 1) % config.vocabSize);
  const run = async () => {
    const model = GPTNeoX.random(config, 3);
    const t = tf.tensor2d(ids, [batch, seqLen], 'int32');
    const y = tf.tensor1d(targets, 'int32');
    // Where gradients pass through f16, the trainer differentiates the loss times its scale: unscaled,
    // the softmax part of the logits gradient (about 1 / (vocabulary · tokens)) falls below f16's range.
    const scale = lossScaling() ? DEFAULT_LOSS_SCALE.initScale : 1;
    const { value, grads } = tf.variableGrads(
      () => tf.mul(model.crossEntropy(t, y), scale) as tf.Scalar,
      model.variables(),
    );
    const g = new Map<string, Float32Array>();
    for (const [name, v] of model.params) {
      const data = (await grads[v.name].data()) as Float32Array;
      g.set(name, scale === 1 ? data : data.map((x) => x / scale));
    }
    const loss = (await value.data())[0] / scale;
    tf.dispose([t, y, value, ...Object.values(grads)]);
    model.dispose();
    return { loss, g };
  };
  await onBackend(reference);
  const ref = await run();
  await onBackend('webgpu');
  const got = await run();
  setFusedKernels(null);
  let worst = { name: '', err: -1 };
  for (const [name, g] of ref.g) {
    const err = relErr(got.g.get(name)!, g);
    if (err > worst.err) worst = { name, err };
  }
  return { lossDiff: Math.abs(got.loss - ref.loss), worstGradient: worst };
}

// ---------------------------------------------------------------------------------------------
// Mixed precision (half.ts): f16 products against f32

/**
 * Tolerance of an f16 product against the f32 one, as relErr (max |Δ| / max |reference|): each
 * input rounded to f16 is off by up to 2^-11 ≈ 4.9·10⁻⁴ of itself, and over sums of tens to tens of
 * thousands of terms of either sign the largest error stays within a few times that of the largest
 * output. Gradients of layers (an f16 output gradient as well) get twice this.
 */
export const F16_PRODUCT_TOL = 5e-3;

export interface HalfProductOptions {
  name?: string;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  /** Products in the batch; with a triangle, M = K (lowerA, upperA) or M = N (lowerC). */
  batch?: number;
  triangle?: 'none' | 'lowerC' | 'lowerA' | 'upperA';
  epilogue?: 'none' | 'bias' | 'bias-gelu';
  /** A fixed plan (a subgroup-matrix tile's); else the planner's. */
  plan?: MatMulPlan;
  /** Subgroup-matrix plans: walk M blocks first (else as the planner decides). */
  walkM?: boolean;
  tol?: number;
}

/**
 * A matrix product with f16 operands (the f32 inputs converted) against tf.matMul in f32, value
 * only. Triangular products get a lower-triangular A (lowerA, and upperA through its transpose) and
 * compare C's lower triangle only (lowerC), as attention uses them.
 */
export function halfProductCase(o: HalfProductOptions): KernelCase {
  const { M, N, K, transA = false, transB = false, batch = 1, triangle = 'none', epilogue = 'none' } = o;
  const lead = batch > 1 ? [batch] : [];
  const aShape = [...lead, ...(transA ? [K, M] : [M, K])];
  const bShape = [...lead, ...(transB ? [N, K] : [K, N])];
  const lowerMask = (rows: number, cols: number): Host => {
    const data = new Float32Array(rows * cols);
    for (let i = 0; i < rows; i++) for (let j = 0; j <= Math.min(i, cols - 1); j++) data[i * cols + j] = 1;
    return { shape: [rows, cols], data };
  };
  // Tiles above the diagonal are left unwritten (any value, NaN too): compared as zeros.
  const masked = (t: tf.Tensor, mask: tf.Tensor) =>
    triangle === 'lowerC' ? tf.where(tf.greater(mask, 0), t, tf.zerosLike(t)) : t;
  const name =
    o.name ??
    `f16 product ${transA ? 'T' : 'N'}${transB ? 'T' : 'N'} ${batch > 1 ? `${batch}×` : ''}${M}×${N}×${K}${triangle === 'none' ? '' : ` ${triangle}`}${epilogue === 'none' ? '' : ` + ${epilogue}`}${o.walkM ? ', walking M' : ''}`;
  return {
    name,
    inputs: () => {
      const a = randHost(aShape, 1);
      if (triangle === 'lowerA' || triangle === 'upperA') {
        const mask = lowerMask(M, K).data;
        for (let i = 0; i < a.data.length; i++) a.data[i] *= mask[i % (M * K)];
      }
      return [a, randHost(bShape, 2), randHost([N], 3), lowerMask(M, N)];
    },
    diff: [],
    reference: ([a, b, bias, mask]) => {
      let c = tf.matMul(a, b, transA, transB);
      if (epilogue !== 'none') c = tf.add(c, bias);
      if (epilogue === 'bias-gelu') c = gelu(c);
      return masked(c, mask);
    },
    fused: ([a, b, bias, mask]) => {
      const [ah, bh] = [toHalf(a), toHalf(b)];
      const { c } = matmul({
        a: ah,
        b: bh,
        M,
        N,
        K,
        transA,
        transB,
        batch,
        triangle,
        aType: 'f16',
        bType: 'f16',
        plan: o.plan,
        walkM: o.walkM,
        ...(epilogue === 'none' ? {} : { bias, gelu: epilogue === 'bias-gelu' }),
      });
      release(ah);
      release(bh);
      return masked(toTensor(c), mask);
    },
    tol: o.tol ?? F16_PRODUCT_TOL,
  };
}

/**
 * The shapes the tile checks run a subgroup-matrix tile on (with their split-K slices): whole tiles
 * of every layout, epilogue, split-K and triangle, and for workgroup staging ragged ones too (direct
 * loads serve only whole tiles, so each of their shapes is a multiple of BM, BN and BK).
 */
export function sgTileShapes(tile: SgMatMulTile): Array<{ o: HalfProductOptions; S: number }> {
  const { BM, BN, BK } = tile;
  const T = 2 * Math.max(BM, BN);
  const whole: HalfProductOptions[] = [
    { M: 2 * BM, N: 2 * BN, K: 3 * BK, transB: true },
    { M: 2 * BM, N: 2 * BN, K: 3 * BK, epilogue: 'bias' },
    { M: 2 * BM, N: BN, K: 2 * BK, transB: true, epilogue: 'bias-gelu' },
    { M: 2 * BM, N: BN, K: 3 * BK, transA: true },
    { M: 3 * BM, N: 2 * BN, K: 2 * BK, transB: true, walkM: true },
    { M: T, N: T, K: BK, batch: 2, triangle: 'lowerC', transB: true },
    { M: T, N: BN, K: T, batch: 2, triangle: 'lowerA' },
    { M: T, N: BN, K: T, batch: 2, triangle: 'upperA', transA: true },
  ];
  const shapes = [...whole.map((o) => ({ o, S: 1 })), { o: { M: BM, N: 2 * BN, K: 8 * BK }, S: 2 }];
  if (tile.staging === 'direct') return shapes;
  const rT = BM + 9;
  const ragged: HalfProductOptions[] = [
    { M: BM + 8, N: BN + 16, K: 2 * BK + 8, transB: true, epilogue: 'bias-gelu' },
    { M: BM + 5, N: BN + 3, K: BK + 7 },
    { M: BM + 4, N: BN + 8, K: 2 * BK + 3, transA: true },
    { M: BM + 3, N: BN + 5, K: BK + 1, transA: true, transB: true },
    { M: 2 * BM + 3, N: BN + 8, K: BK + 5, epilogue: 'bias', walkM: true },
    { M: rT, N: rT, K: 20, batch: 2, triangle: 'lowerC', transB: true },
    { M: rT, N: 20, K: rT, batch: 2, triangle: 'lowerA' },
    { M: rT, N: 20, K: rT, batch: 2, triangle: 'upperA', transA: true },
  ];
  return [...shapes, ...ragged.map((o) => ({ o, S: 1 })), { o: { M: BM + 1, N: BN + 4, K: 8 * BK + 16 }, S: 3 }];
}

/**
 * The checks of one subgroup-matrix tile (any plan the autotuner may pick), on sgTileShapes against
 * f32: every transpose, ragged and whole shapes (scalar, 4- and 8-wide loads; results through
 * workgroup memory and stored straight), the bias and GELU epilogues, split-K, and the batched causal
 * products. A tile with direct loads runs only whole shapes.
 */
export function sgTileCases(tile: SgMatMulTile, tol = F16_PRODUCT_TOL): KernelCase[] {
  return sgTileShapes(tile).map(({ o, S }) =>
    halfProductCase({
      ...o,
      plan: makePlan(tile, o.K, S),
      tol,
      name: `${sgTileDescription(tile)}: ${halfProductCase(o).name}${S > 1 ? `, split-K ${S}` : ''}`,
    }),
  );
}

export interface CurveComparison extends CurveDistance {
  /** The products mixed precision ran (half.ts). */
  halfProducts: string;
  f32: number[];
  mixed: number[];
  /** Mixed precision's loss scale at the end, and its steps skipped for overflowed gradients. */
  lossScale: number;
  skippedSteps: number;
}

/**
 * Training on webgpu in f32 and in mixed precision from the same init (`init()` makes it, once a
 * curve) and batches, the loss of every step, and how far mixed is from f32.
 */
export async function mixedCurveCheck(
  init: () => GPTNeoX,
  batches: Batch[],
  schedule: { lr: number; warmup: number },
): Promise<CurveComparison> {
  await onBackend('webgpu');
  const curve = async (p: Precision) => {
    setPrecision(p);
    try {
      return { ...(await trainCurve(init(), batches, schedule)), mode: halfProducts() };
    } finally {
      setPrecision(null);
    }
  };
  const f32 = await curve('f32');
  const mixed = await curve('mixed');
  return {
    halfProducts: mixed.mode,
    f32: f32.losses,
    mixed: mixed.losses,
    ...curveDistance(mixed.losses, f32.losses),
    lossScale: mixed.lossScale ?? Number.NaN,
    skippedSteps: mixed.skippedSteps,
  };
}
