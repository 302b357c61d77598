/**
 * Correctness checks of the cuda backend on the card: each operation's value and gradients (for a
 * fixed random upstream gradient) against the reference ops on the cpu backend in f32, in f32 and in
 * mixed precision (bf16 tolerances), and tfjs's own kernels (elementwise, layout, reductions,
 * products) against the cpu backend. bench/gpu-train --check runs them.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tf from '../tfjs.js';

import { initBackend } from '../backend.js';
import { type Host, intHost, randHost, relErr, ropeTables, valueAndGrads } from '../kernel-check.js';
import { loadCheckpoint, saveCheckpoint } from '../checkpoint.js';
import type { NeoXConfig } from '../config.js';
import { GPTNeoX } from '../gptneox.js';
import { presetConfig } from '../presets.js';
import { readSafetensors } from '../safetensors.js';
import {
  CURVE_RECIPE,
  CURVE_TOLERANCE,
  curveDistance,
  curveInit,
  sampleCurve,
  textBatches,
  torchTrainingCurve,
  trainCurve,
  withinCurveTolerance,
} from '../curve.js';
import type { Batch } from '../train.js';
import { distillationLoss } from '../losses.js';
import {
  type AdamWEntry,
  AdamWState,
  type AdamWStep,
  PositionTables,
  causalSelfAttention,
  clippedAdamW,
  crossEntropy,
  gatherRows,
  gelu,
  layerNorm,
  linear,
  matMul,
  type TopKTeacher,
  topKFromLogits,
} from '../ops/index.js';
import { type Precision, setPrecision } from '../precision.js';
import { cudaClipAdamW } from './adamw.js';
import { cudaAttention } from './attention.js';
import { cudaCrossEntropy } from './cross-entropy.js';
import { cudaFullDistill, cudaTopKDistill } from './distill.js';
import { cudaGatherRows } from './embedding.js';
import { fallbackCounts, resetFallbackCounts } from './kernels.js';
import { cudaLayerNorm } from './layer-norm.js';
import { cudaLinear, cudaMatMulNT } from './linear.js';
import { toTensor } from './custom-op.js';
import { cast } from './elementwise.js';
import { bf16ToF32, f32ToBf16 } from './storage.js';
import { cudaBackendOrThrow } from './tfjs-backend.js';
import { cudaTopKFromLogits } from './topk.js';

export interface CudaCase {
  name: string;
  inputs: () => Host[] | Promise<Host[]>;
  /** Inputs to differentiate. */
  diff: number[];
  reference: (ts: tf.Tensor[]) => tf.Tensor;
  cuda: (ts: tf.Tensor[]) => tf.Tensor;
  /** Tolerance of max |error| / max |reference| in f32 and in mixed precision. */
  tol: { f32: number; mixed: number };
}

export interface CudaCaseResult {
  name: string;
  precision: Precision;
  valueErr: number;
  gradErrs: number[];
  tol: number;
  ok: boolean;
  /** tfjs kernels that ran through the host during the case. */
  viaHost: string[];
}

/** Runs one case on the cpu backend (reference, f32) and on cuda at `precision`, and compares. */
export async function runCudaCase(c: CudaCase, precision: Precision): Promise<CudaCaseResult> {
  const inputs = await c.inputs();
  await initBackend('cpu', () => {});
  const ref = await valueAndGrads(inputs, c.diff, c.reference);
  await initBackend('cuda', () => {});
  setPrecision(precision);
  resetFallbackCounts();
  try {
    const got = await valueAndGrads(inputs, c.diff, c.cuda);
    const valueErr = relErr(got.value, ref.value);
    const gradErrs = got.grads.map((g, i) => relErr(g, ref.grads[i]));
    const tol = c.tol[precision];
    return {
      name: c.name,
      precision,
      valueErr,
      gradErrs,
      tol,
      ok: valueErr < tol && gradErrs.every((e) => e < tol),
      viaHost: Object.keys(fallbackCounts()),
    };
  } finally {
    setPrecision(null);
  }
}

const F32 = 2e-4;
/** bf16 operands carry 8 significant bits: products of a few hundred terms land near 1e-2 of the largest value. */
const BF16 = 3e-2;

function layerNormCase(N: number, D: number): CudaCase {
  return {
    name: `LayerNorm (N ${N}, D ${D})`,
    inputs: () => [randHost([N, D], 11, 2), randHost([D], 12), randHost([D], 13)],
    diff: [0, 1, 2],
    reference: ([x, w, b]) => layerNorm.reference(x, w, b, 1e-5),
    cuda: ([x, w, b]) => cudaLayerNorm(x as tf.Tensor2D, w as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
    tol: { f32: F32, mixed: 1e-2 },
  };
}

export function cudaCases(scale: 'small' | 'pythia' = 'small'): CudaCase[] {
  const big = scale === 'pythia';
  const N = big ? 4096 : 256;
  const D = big ? 512 : 128;
  const F = big ? 2048 : 512;
  const V = big ? 50304 : 1000;
  const B = big ? 8 : 2;
  const T = big ? 512 : 64;
  const tol = { f32: F32, mixed: BF16 };
  const topk = (
    direction: 'forward' | 'reverse' | 'symmetric',
    alpha: number,
    temperature: number,
    k: number,
    n: number,
  ): CudaCase => ({
    name: `top-k distillation (N ${n}, V ${V}, k ${k}, ${direction}, alpha ${alpha}, T ${temperature})`,
    inputs: async () => {
      await initBackend('cpu', () => {});
      const tl = tf.tensor2d(randHost([n, V], 17, 3).data, [n, V]);
      const top = topKFromLogits(tl, k, temperature);
      const hosts: Host[] = [
        randHost([n, V], 16, 3),
        intHost([n], V, 2),
        { shape: [n, k], data: (await top.indices.data()) as Int32Array, dtype: 'int32' },
        { shape: [n, k], data: (await top.logits.data()) as Float32Array },
        { shape: [n], data: (await top.logNormaliser.data()) as Float32Array },
      ];
      tf.dispose([tl, top.indices, top.logits, top.logNormaliser]);
      return hosts;
    },
    diff: [0],
    reference: ([x, t, i, l, z]) =>
      distillationLoss(
        x as tf.Tensor2D,
        t as tf.Tensor1D,
        { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D },
        { alpha, temperature, direction },
      ),
    cuda: ([x, t, i, l, z]) =>
      cudaTopKDistill(
        x as tf.Tensor2D,
        t as tf.Tensor1D,
        { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D },
        alpha,
        temperature,
        direction,
      ),
    tol: { f32: 5e-4, mixed: BF16 },
  });
  const full = (
    direction: 'forward' | 'reverse' | 'symmetric',
    alpha: number,
    temperature: number,
    n: number,
  ): CudaCase => ({
    name: `full-logit distillation (N ${n}, V ${V}, ${direction}, alpha ${alpha}, T ${temperature})`,
    inputs: () => [randHost([n, V], 18, 3), intHost([n], V, 4), randHost([n, V], 19, 3)],
    diff: [0],
    reference: ([x, t, l]) =>
      distillationLoss(x as tf.Tensor2D, t as tf.Tensor1D, l as tf.Tensor2D, { alpha, temperature, direction }),
    cuda: ([x, t, l]) =>
      cudaFullDistill(x as tf.Tensor2D, t as tf.Tensor1D, l as tf.Tensor2D, alpha, temperature, direction),
    tol: { f32: 5e-4, mixed: BF16 },
  });
  const attention = (b: number, t: number, h: number, hs: number, rd: number): CudaCase => {
    const shape = { batch: b, seqLen: t, heads: h, headSize: hs, rotated: rd };
    return {
      name: `causal attention with rotary (B ${b}, T ${t}, H ${h}, hs ${hs}, rotated ${rd})`,
      inputs: () => {
        const r = ropeTables(t, rd);
        return [randHost([b * t, h * 3 * hs], 14, 1.5), r.cos, r.sin, r.mask];
      },
      diff: [0],
      reference: ([x, c, s, m]) =>
        causalSelfAttention.reference(
          x as tf.Tensor2D,
          new PositionTables(c as tf.Tensor2D, s as tf.Tensor2D, m as tf.Tensor2D),
          shape,
        ),
      cuda: ([x, c, s]) => cudaAttention(x as tf.Tensor2D, c as tf.Tensor2D, s as tf.Tensor2D, shape),
      tol,
    };
  };
  return [
    {
      name: `linear (N ${N}, in ${D}, out ${3 * D})`,
      inputs: () => [randHost([N, D], 3), randHost([3 * D, D], 4, 0.3), randHost([3 * D], 5)],
      diff: [0, 1, 2],
      reference: ([x, w, b]) => linear.reference(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D),
      cuda: ([x, w, b]) => cudaLinear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D),
      tol,
    },
    {
      name: `linear + GELU (N ${N}, in ${D}, out ${F})`,
      inputs: () => [randHost([N, D], 6), randHost([F, D], 7, 0.5), randHost([F], 8)],
      diff: [0, 1, 2],
      reference: ([x, w, b]) => gelu(linear.reference(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D)),
      cuda: ([x, w, b]) => cudaLinear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, 'gelu'),
      tol,
    },
    // Output columns that fill no group of four (the bias gradient's vector loads fall back to single ones).
    {
      name: `linear + GELU (N ${N / 4 + 3}, in ${D}, out ${F / 4 + 5})`,
      inputs: () => [randHost([N / 4 + 3, D], 6), randHost([F / 4 + 5, D], 7, 0.5), randHost([F / 4 + 5], 8)],
      diff: [0, 1, 2],
      reference: ([x, w, b]) => gelu(linear.reference(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D)),
      cuda: ([x, w, b]) => cudaLinear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, 'gelu'),
      tol,
    },
    {
      name: `logits product (N ${N / 4}, D ${D}, V ${V})`,
      inputs: () => [randHost([N / 4, D], 9), randHost([V, D], 10, 0.2)],
      diff: [0, 1],
      reference: ([h, w]) => matMul.reference(h, w, false, true),
      cuda: ([h, w]) => cudaMatMulNT(h as tf.Tensor2D, w as tf.Tensor2D),
      tol,
    },
    layerNormCase(N, D),
    // Rows that fill no block of eight, columns no warp or chunk of 32.
    layerNormCase(N / 4 + 3, D / 2 + 7),
    attention(B, T, 8, 64, 16),
    attention(1, 33, 2, 16, 0),
    // Rotated halves of 3 dims: the layout kernels' one-dim-a-thread path.
    attention(1, 17, 2, 12, 6),
    {
      name: `softmax cross-entropy (N ${N / 4}, V ${V})`,
      inputs: () => [randHost([N / 4, V], 15, 4), intHost([N / 4], V, 1)],
      diff: [0],
      reference: ([x, t]) => crossEntropy.reference(x as tf.Tensor2D, t as tf.Tensor1D),
      cuda: ([x, t]) => cudaCrossEntropy(x as tf.Tensor2D, t as tf.Tensor1D),
      tol: { f32: F32, mixed: 1e-2 },
    },
    topk('forward', 0.5, 2, 64, N / 4),
    topk('reverse', 0, 1, 16, N / 8),
    topk('symmetric', 0.3, 1.5, 32, N / 8),
    teacherTopK(N / 4, V, 64, 2, tol),
    // Rows of a length that is no multiple of 4 load element by element.
    teacherTopK(5, 301, 1, 1, tol),
    teacherTopK(N / 4, V, 64, 1, tol, { offset: 0 }),
    teacherTopK(6, 299, 40, 1, tol, { offset: -5 }),
    full('forward', 0.5, 1, N / 4),
    full('reverse', 0, 2, N / 8),
    full('symmetric', 0.3, 1.5, N / 8),
    {
      name: `embedding rows and gradient (table ${V} × ${D}, ${N} ids)`,
      inputs: () => [
        randHost([V, D], 18),
        { shape: [N], data: Int32Array.from({ length: N }, (_, i) => (i * i + 3 * i) % V), dtype: 'int32' },
      ],
      diff: [0],
      reference: ([t, i]) => gatherRows.reference(t as tf.Tensor2D, i as tf.Tensor1D),
      cuda: ([t, i]) => cudaGatherRows(t as tf.Tensor2D, i as tf.Tensor1D),
      tol: { f32: 1e-5, mixed: 1e-5 },
    },
    adamwCase([[D, D], [D], [V, D]]),
    ...tfjsKernelCases(),
  ];
}

/** One clipped AdamW step of a few parameters: the norm and new weights against the operation's reference. */
function adamwCase(shapes: number[][]): CudaCase {
  const step: AdamWStep = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 3, maxNorm: 0.5 };
  const abs = (h: Host): Host => ({ ...h, data: (h.data as Float32Array).map(Math.abs) });
  const inputs = () =>
    shapes.flatMap((s, i) => [
      randHost(s, 40 + i),
      randHost(s, 50 + i, 0.05),
      randHost(s, 60 + i, 0.01),
      abs(randHost(s, 70 + i, 0.001)),
    ]);
  /** Weights, gradients and moments from the inputs, one update by `update`, then the norm and the new weights. */
  const run = (update: (state: AdamWState, entries: AdamWEntry[], s: AdamWStep) => tf.Scalar) => (ts: tf.Tensor[]) => {
    const state = new AdamWState();
    const entries: AdamWEntry[] = shapes.map((shape, i) => {
      const [p, g, m, v] = ts.slice(4 * i, 4 * i + 4);
      const name = `p${i}`;
      const param = tf.variable(p);
      const moments = state.moments(name, param);
      moments.m.assign(m);
      moments.v.assign(v);
      return { name, param, grad: g, decays: shape.length >= 2 };
    });
    const norm = update(state, entries, step);
    const out = tf.concat([tf.reshape(norm, [1]), ...entries.map((e) => tf.reshape(e.param, [-1]))]);
    for (const e of entries) e.param.dispose();
    state.dispose();
    return out;
  };
  return {
    name: `AdamW with global-norm clipping (${shapes.map((s) => s.join('×')).join(', ')})`,
    inputs,
    diff: [],
    reference: run((state, entries, s) => clippedAdamW.reference(state, entries, s)),
    cuda: run(cudaClipAdamW),
    tol: { f32: 1e-5, mixed: 1e-5 },
  };
}

/**
 * A teacher's top-k view of its logits with the log-normaliser, one kernel against tfjs's topk and
 * logSumExp. `bf16`: the logits held as bf16 (as mixed precision's logits products write them; the
 * kernel selects on their 16 bits), their values shifted by `offset` (negative: the k-th largest
 * negative, whose key differs from a positive's below the selected bits) and rounded to bf16 (ties).
 */
function teacherTopK(
  n: number,
  V: number,
  k: number,
  temperature: number,
  tol: CudaCase['tol'],
  bf16?: { offset: number },
): CudaCase {
  const flat = (t: TopKTeacher) =>
    tf.concat([tf.reshape(t.logits, [-1]), tf.cast(tf.reshape(t.indices, [-1]), 'float32'), t.logNormaliser]);
  const logits = (): Host => {
    const x = randHost([n, V], 18, 3);
    if (!bf16) return x;
    return { shape: x.shape, data: bf16ToF32(f32ToBf16(Float32Array.from(x.data, (v) => v + bf16.offset))) };
  };
  return {
    name: `teacher top-k with its log-normaliser (N ${n}, V ${V}, k ${k}, T ${temperature}${bf16 ? `, bf16 logits + ${bf16.offset}` : ''})`,
    inputs: () => [logits()],
    diff: [],
    reference: ([x]) => flat(topKFromLogits.reference(x as tf.Tensor2D, k, temperature)),
    cuda: ([x]) => {
      const held = bf16 ? toTensor<tf.Tensor2D>(cast(cudaBackendOrThrow(), x, 'float32', 'bf16')) : (x as tf.Tensor2D);
      try {
        return flat(cudaTopKFromLogits(held, k, temperature));
      } finally {
        if (held !== x) held.dispose();
      }
    },
    tol,
  };
}

/** tfjs programs that touch the kernels the cuda backend runs itself. */
function tfjsKernelCases(): CudaCase[] {
  const tol = { f32: 1e-5, mixed: 1e-5 };
  const c = (
    name: string,
    inputs: Host[],
    f: (ts: tf.Tensor[]) => tf.Tensor,
    diff: number[] = [],
    t = tol,
  ): CudaCase => ({ name: `tfjs: ${name}`, inputs: () => inputs, diff, reference: f, cuda: f, tol: t });
  const a = randHost([4, 5, 6], 81);
  const long = randHost([3, 40_000], 84);
  const bb = randHost([5, 1], 82);
  const pos = { ...randHost([4, 5, 6], 83), data: randHost([4, 5, 6], 83).data.map((x) => Math.abs(x) + 0.1) };
  return [
    // tfjs's Maximum gradient does not reduce over broadcast axes: maximum takes same-shape inputs here.
    c(
      'broadcast add, sub, mul, div; maximum',
      [a, bb, pos],
      ([x, y, p]) => tf.stack([tf.add(x, y), tf.sub(x, y), tf.mul(x, y), tf.div(x, p), tf.maximum(x, p)]),
      [0, 1, 2],
    ),
    c(
      'unary exp, log, sqrt, rsqrt, tanh, erf, sigmoid, neg, abs',
      [a, pos],
      ([x, p]) =>
        tf.stack([
          tf.exp(x),
          tf.log(p),
          tf.sqrt(p),
          tf.rsqrt(p),
          tf.tanh(x),
          tf.erf(x),
          tf.sigmoid(x),
          tf.neg(x),
          tf.abs(x),
        ]),
      [0, 1],
    ),
    c(
      'sum, mean, max, min over axes, keepDims',
      [a],
      ([x]) =>
        tf.concat([
          tf.reshape(tf.sum(x, [0, 2]), [-1]),
          tf.reshape(tf.mean(x, 1, true), [-1]),
          tf.reshape(tf.max(x, -1), [-1]),
          tf.reshape(tf.min(x), [-1]),
          tf.reshape(tf.sum(x), [-1]),
        ]),
      [0],
    ),
    c('sum, mean, max, min of a few long rows (cut into chunks) and of everything', [long], ([x]) =>
      tf.concat([
        tf.sum(x, 1),
        tf.mean(x, 1),
        tf.max(x, 1),
        tf.min(x, 1),
        tf.reshape(tf.sum(x), [1]),
        tf.reshape(tf.max(x), [1]),
      ]),
    ),
    c(
      'transpose, slice, concat, reshape',
      [a],
      ([x]) =>
        tf.concat([
          tf.reshape(tf.transpose(x, [2, 0, 1]), [-1]),
          tf.reshape(tf.slice(x, [1, 2, 3], [2, 3, 2]), [-1]),
          tf.reshape(tf.concat([x, tf.mul(x, 2)], 1), [-1]),
        ]),
      [0],
    ),
    c(
      'gather rows, argMax, cast',
      [a, { shape: [7], data: Int32Array.from([3, 0, 2, 2, 1, 3, 0]), dtype: 'int32' }],
      ([x, i]) => tf.concat([tf.reshape(tf.gather(x, i), [-1]), tf.cast(tf.argMax(x, 2), 'float32').reshape([-1])]),
    ),
    c(
      'batched matMul with transposes',
      [randHost([3, 4, 5], 84), randHost([3, 6, 5], 85), randHost([3, 4, 2], 86)],
      ([x, y, z]) =>
        tf.concat([tf.reshape(tf.matMul(x, y, false, true), [-1]), tf.reshape(tf.matMul(x, z, true), [-1])]),
      [0, 1, 2],
    ),
    // tfjs's BatchMatMul gradient does not reduce over a broadcast batch: the value only.
    c('batched matMul with a broadcast batch', [randHost([3, 4, 5], 87), randHost([5, 2], 88)], ([x, z]) =>
      tf.matMul(x, z),
    ),
    c(
      'topk, sorted, with ties, k 1 and 40',
      [{ shape: [3, 300], data: randHost([3, 300], 89).data.map((x) => Math.round(x * 8) / 8) }],
      ([x]) => {
        const a = tf.topk(x, 40);
        const one = tf.topk(x, 1);
        return tf.concat([
          tf.reshape(a.values, [-1]),
          tf.cast(tf.reshape(a.indices, [-1]), 'float32'),
          tf.reshape(one.values, [-1]),
          tf.cast(tf.reshape(one.indices, [-1]), 'float32'),
        ]);
      },
    ),
    c(
      'addN, fill, ones, zeros, softmax (host), int32 math',
      [a, a],
      ([x, y]) =>
        tf.concat([
          tf.reshape(tf.addN([x, y, x]), [-1]),
          tf.fill([3], 2.5),
          tf.ones([2]),
          tf.zeros([2]),
          tf.reshape(tf.softmax(x), [-1]),
          tf.cast(tf.add(tf.mul(tf.range(0, 5, 1, 'int32'), 3), 2), 'float32'),
        ]),
      [0, 1],
    ),
  ];
}

/** Runs every case at both precisions; prints one JSON line each through `log`. Returns the failures. */
export async function runCudaChecks(
  scale: 'small' | 'pythia',
  log: (line: Record<string, unknown>) => void,
): Promise<number> {
  let failed = 0;
  for (const c of cudaCases(scale)) {
    for (const p of ['f32', 'mixed'] as const) {
      const t0 = performance.now();
      try {
        const r = await runCudaCase(c, p);
        if (!r.ok) failed++;
        log({ ...r, ms: Math.round(performance.now() - t0) });
      } catch (e) {
        failed++;
        log({ name: c.name, precision: p, ok: false, error: (e as Error).stack?.split('\n').slice(0, 6).join(' | ') });
      }
    }
  }
  return failed;
}

// ---------------------------------------------------------------------------------------------
// Whole-model checks on the card: against the webgpu backend's f32 kernels and transformers' logits

/** A learnable token stream: each next token a fixed function of the last two, with some noise. */
function patternBatch(step: number, batchSize: number, seqLen: number, vocab: number): Batch {
  const n = batchSize * seqLen;
  const input = new Int32Array(n);
  const target = new Int32Array(n);
  let s = (step * 2654435761 + 7) >>> 0;
  for (let r = 0; r < batchSize; r++) {
    let a = (r * 131 + step * 17) % 512;
    let b = (r * 71 + step * 29) % 512;
    for (let t = 0; t <= seqLen; t++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const next = s >>> 24 < 20 ? (s >>> 8) % 512 : (a * 7 + b * 3 + 11) % 512;
      if (t < seqLen) input[r * seqLen + t] = b;
      if (t > 0) target[r * seqLen + t - 1] = b;
      a = b;
      b = Math.min(next, vocab - 1);
    }
  }
  return { batchSize, seqLen, input, target };
}

/** Loss and every parameter's gradient of a freshly initialised model on one batch, on `backend` at `precision`. */
async function modelGradients(
  config: NeoXConfig,
  batch: Batch,
  backend: 'cuda' | 'webgpu' | 'cpu',
  precision: Precision,
): Promise<{ loss: number; grads: Map<string, Float32Array> }> {
  await initBackend(backend, () => {});
  setPrecision(precision);
  try {
    const model = GPTNeoX.random(config, 3);
    const ids = tf.tensor2d(batch.input, [batch.batchSize, batch.seqLen], 'int32');
    const targets = tf.tensor1d(batch.target, 'int32');
    const { value, grads } = tf.variableGrads(() => crossEntropy(model.logits2d(ids), targets), model.variables());
    const out = new Map<string, Float32Array>();
    for (const [name, v] of model.params) out.set(name, (await grads[v.name].data()) as Float32Array);
    const loss = (await value.data())[0];
    tf.dispose([ids, targets, value, ...Object.values(grads)]);
    model.dispose();
    return { loss, grads: out };
  } finally {
    setPrecision(null);
  }
}

/**
 * A model's loss and every gradient on the cuda backend, in f32 and in mixed precision, against a
 * reference in f32: by default a Pythia-70M-shaped model against the webgpu backend's kernels on the
 * same card (the CUDA emulator's test checks a tiny one against the cpu backend).
 */
export async function modelGradientChecks(
  batchSize: number,
  seqLen: number,
  log: (line: Record<string, unknown>) => void,
  model: { name: string; config: NeoXConfig; reference: 'webgpu' | 'cpu' } = {
    name: 'pythia-70m',
    config: presetConfig('pythia-70m', 50304),
    reference: 'webgpu',
  },
): Promise<number> {
  const { config, reference } = model;
  const batch = patternBatch(0, batchSize, seqLen, config.vocabSize);
  const ref = await modelGradients(config, batch, reference, 'f32');
  let failed = 0;
  for (const [precision, tol] of [
    ['f32', 1e-3],
    ['mixed', 5e-2],
  ] as const) {
    const got = await modelGradients(config, batch, 'cuda', precision);
    let worst = { name: '', err: -1 };
    for (const [name, g] of ref.grads) {
      const err = relErr(got.grads.get(name)!, g);
      if (err > worst.err) worst = { name, err };
    }
    const lossDiff = Math.abs(got.loss - ref.loss);
    const ok = lossDiff < (precision === 'f32' ? 1e-3 : 2e-2) && worst.err < tol;
    if (!ok) failed++;
    log({
      name: `${model.name} model, batch ${batchSize} × ${seqLen}: loss and every gradient vs ${reference} f32`,
      precision,
      ok,
      loss: got.loss,
      referenceLoss: ref.loss,
      lossDiff,
      worstGradient: worst,
      tol,
    });
  }
  return failed;
}

/** A curve of training steps from `curveInit` on `backend` at `precision`. */
async function lossCurve(backend: 'cuda' | 'webgpu', precision: Precision, batches: Batch[]): Promise<number[]> {
  await initBackend(backend, () => {});
  setPrecision(precision);
  try {
    return (await trainCurve(curveInit(), batches, CURVE_RECIPE)).losses;
  } finally {
    setPrecision(null);
  }
}

/** The same init and data as `lossCurve`, trained by PyTorch (`torchTrainingCurve`) on the card. */
async function torchCurves(python: string, batches: Batch[]): Promise<Record<'f32' | 'bf16', number[]>> {
  await initBackend('cpu', () => {});
  const model = curveInit();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-curve-init-'));
  try {
    await saveCheckpoint(dir, model.config, await model.toHost(), {
      dtype: 'float32',
      requireTransformersCompatible: true,
    });
    const curve = (mode: 'f32' | 'bf16') =>
      torchTrainingCurve({ python, modelDir: dir, batches, ...CURVE_RECIPE, mode, device: 'cuda' });
    return { f32: curve('f32'), bf16: curve('bf16') };
  } finally {
    model.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * `steps` steps of cuda in mixed precision (CUDA graphs after the first steps) against webgpu in f32
 * from the same init and data (`textBatches`), within `CURVE_TOLERANCE` (core/model/curve.ts). cuda in
 * f32 runs too, against the same reference and tolerance, so a miss says whether the implementation
 * (f32 apart) or bf16 (only mixed apart) moved the curve. With a `python` that has torch and
 * transformers, PyTorch trains the same init on the same data in f32 and in bf16 autocast, and a last
 * line reports how far each curve is from PyTorch's, and how far PyTorch's own bf16 curve is from its
 * f32 one: what mixed precision alone moves.
 */
export async function curveCheck(
  steps: number,
  batchSize: number,
  seqLen: number,
  log: (line: Record<string, unknown>) => void,
  python?: string,
): Promise<number> {
  const batches = await textBatches(steps, batchSize, seqLen);
  const ref = await lossCurve('webgpu', 'f32', batches);
  let failed = 0;
  const cuda: Partial<Record<Precision, number[]>> = {};
  for (const p of ['f32', 'mixed'] as const) {
    const got = await lossCurve('cuda', p, batches);
    cuda[p] = got;
    const ok = withinCurveTolerance(got, ref, steps);
    if (!ok) failed++;
    log({
      name: `${steps} steps, pythia-70m, batch ${batchSize} × ${seqLen}: cuda ${p} (CUDA graphs) vs webgpu f32, same init and data`,
      ok,
      ...curveDistance(got, ref),
      tol: CURVE_TOLERANCE,
      ...(p === 'mixed' && cuda.f32?.length === steps ? { fromCudaF32: curveDistance(got, cuda.f32) } : {}),
      cuda: sampleCurve(got),
      webgpu: sampleCurve(ref),
    });
  }
  if (python) {
    const torch = await torchCurves(python, batches);
    const complete = (c: number[] | undefined) => (c?.length === steps ? c : undefined);
    const from = (c: number[] | undefined, r: number[]) => (complete(c) ? curveDistance(c!, r) : 'incomplete');
    log({
      name: `${steps} steps, pythia-70m, batch ${batchSize} × ${seqLen}: PyTorch (transformers, torch AdamW) from the same init and data`,
      torchBf16FromTorchF32: curveDistance(torch.bf16, torch.f32),
      webgpuF32FromTorchF32: curveDistance(ref, torch.f32),
      cudaF32FromTorchF32: from(cuda.f32, torch.f32),
      cudaMixedFromTorchBf16: from(cuda.mixed, torch.bf16),
      torchF32: sampleCurve(torch.f32),
      torchBf16: sampleCurve(torch.bf16),
    });
  }
  return failed;
}

/** transformers' logits of the committed fixtures (test/fixtures/neox) on cuda in f32 (1e-4) and mixed precision (reported). */
export async function parityChecks(fixtures: string, log: (line: Record<string, unknown>) => void): Promise<number> {
  await initBackend('cuda', () => {});
  let failed = 0;
  for (const name of fs
    .readdirSync(fixtures)
    .filter((n) => fs.existsSync(path.join(fixtures, n, 'reference.safetensors')))) {
    const dir = path.join(fixtures, name);
    const ckpt = loadCheckpoint(dir);
    const ref = readSafetensors(path.join(dir, 'reference.safetensors')).tensors;
    const ids = ref.get('input_ids')!;
    const expected = ref.get('logits')!.data as Float32Array;
    for (const precision of ['f32', 'mixed'] as const) {
      setPrecision(precision);
      const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, dir);
      const logits = tf.tidy(() =>
        model.logits(tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32')),
      );
      const got = (await logits.data()) as Float32Array;
      let maxAbs = 0;
      for (let i = 0; i < expected.length; i++) maxAbs = Math.max(maxAbs, Math.abs(got[i] - expected[i]));
      tf.dispose(logits);
      model.dispose();
      setPrecision(null);
      const ok = precision === 'mixed' || maxAbs < 1e-4;
      if (!ok) failed++;
      log({
        name: `transformers' logits: ${name}`,
        precision,
        ok,
        maxAbsDiff: maxAbs,
        ...(precision === 'f32' ? { tol: 1e-4 } : {}),
      });
    }
  }
  return failed;
}
