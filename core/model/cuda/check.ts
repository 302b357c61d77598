/**
 * Correctness checks of the cuda backend on the card: each operation's value and gradients (for a
 * fixed random upstream gradient) against the reference ops on the cpu backend in f32, in f32 and in
 * mixed precision (bf16 tolerances), and tfjs's own kernels (elementwise, layout, reductions,
 * products) against the cpu backend. bench/gpu-train --check runs them.
 */
import * as tf from '../tfjs.js';

import { initBackend } from '../backend.js';
import { distillationLoss, topKFromLogits } from '../losses.js';
import { PositionTables, causalSelfAttention, clipByGlobalNorm, crossEntropy, gatherRows, gelu, layerNorm, linear, matMul } from '../ops/index.js';
import { type Precision, setPrecision } from '../precision.js';
import { type Host, intHost, randHost, relErr, ropeTables } from '../webgpu/check.js';
import { cudaClipAdamW } from './adamw.js';
import { cudaAttention } from './attention.js';
import { cudaCrossEntropy } from './cross-entropy.js';
import { cudaTopKDistill } from './distill.js';
import { cudaGatherRows } from './embedding.js';
import { fallbackCounts, resetFallbackCounts } from './kernels.js';
import { cudaLayerNorm } from './layer-norm.js';
import { cudaLinear, cudaMatMulNT } from './linear.js';

const toT = (h: Host) => tf.tensor(h.data, h.shape, h.dtype ?? 'float32');

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

async function valueAndGrads(inputs: Host[], diff: number[], f: (ts: tf.Tensor[]) => tf.Tensor): Promise<{ value: Float32Array; grads: Float32Array[] }> {
  const ts = inputs.map(toT);
  const value = tf.tidy(() => f(ts));
  let grads: tf.Tensor[] = [];
  const dy = tf.tensor(randHost(value.shape, 99).data, value.shape);
  if (diff.length > 0) {
    const g = tf.grads((...xs: tf.Tensor[]) => {
      const all = ts.slice();
      diff.forEach((d, i) => (all[d] = xs[i]));
      return f(all);
    });
    grads = g(
      diff.map((d) => ts[d]),
      dy,
    );
  }
  const out = { value: (await value.data()) as Float32Array, grads: await Promise.all(grads.map(async (x) => (await x.data()) as Float32Array)) };
  tf.dispose([...ts, value, dy, ...grads]);
  return out;
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
    return { name: c.name, precision, valueErr, gradErrs, tol, ok: valueErr < tol && gradErrs.every((e) => e < tol), viaHost: Object.keys(fallbackCounts()) };
  } finally {
    setPrecision(null);
  }
}

const F32 = 2e-4;
/** bf16 operands carry 8 significant bits: products of a few hundred terms land near 1e-2 of the largest value. */
const BF16 = 3e-2;

export function cudaCases(scale: 'small' | 'pythia' = 'small'): CudaCase[] {
  const big = scale === 'pythia';
  const N = big ? 4096 : 256;
  const D = big ? 512 : 128;
  const F = big ? 2048 : 512;
  const V = big ? 50304 : 1000;
  const B = big ? 8 : 2;
  const T = big ? 512 : 64;
  const tol = { f32: F32, mixed: BF16 };
  const topk = (direction: 'forward' | 'reverse' | 'symmetric', alpha: number, temperature: number, k: number, n: number): CudaCase => ({
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
      distillationLoss(x as tf.Tensor2D, t as tf.Tensor1D, { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D }, { alpha, temperature, direction }),
    cuda: ([x, t, i, l, z]) =>
      cudaTopKDistill(x as tf.Tensor2D, t as tf.Tensor1D, { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D }, alpha, temperature, direction),
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
      reference: ([x, c, s, m]) => causalSelfAttention.reference(x as tf.Tensor2D, new PositionTables(c as tf.Tensor2D, s as tf.Tensor2D, m as tf.Tensor2D), shape),
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
    {
      name: `logits product (N ${N / 4}, D ${D}, V ${V})`,
      inputs: () => [randHost([N / 4, D], 9), randHost([V, D], 10, 0.2)],
      diff: [0, 1],
      reference: ([h, w]) => matMul.reference(h, w, false, true),
      cuda: ([h, w]) => cudaMatMulNT(h as tf.Tensor2D, w as tf.Tensor2D),
      tol,
    },
    {
      name: `LayerNorm (N ${N}, D ${D})`,
      inputs: () => [randHost([N, D], 11, 2), randHost([D], 12), randHost([D], 13)],
      diff: [0, 1, 2],
      reference: ([x, w, b]) => layerNorm.reference(x, w, b, 1e-5),
      cuda: ([x, w, b]) => cudaLayerNorm(x as tf.Tensor2D, w as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
      tol: { f32: F32, mixed: 1e-2 },
    },
    attention(B, T, 8, 64, 16),
    attention(1, 33, 2, 16, 0),
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
    {
      name: `embedding rows and gradient (table ${V} × ${D}, ${N} ids)`,
      inputs: () => [randHost([V, D], 18), { shape: [N], data: Int32Array.from({ length: N }, (_, i) => (i * i + 3 * i) % V), dtype: 'int32' }],
      diff: [0],
      reference: ([t, i]) => gatherRows.reference(t as tf.Tensor2D, i as tf.Tensor1D),
      cuda: ([t, i]) => cudaGatherRows(t as tf.Tensor2D, i as tf.Tensor1D),
      tol: { f32: 1e-5, mixed: 1e-5 },
    },
    adamwCase([[D, D], [D], [V, D]]),
    ...tfjsKernelCases(),
  ];
}

/** One clipped AdamW step of a few parameters: the new weights and the norm against clipByGlobalNorm + the update. */
function adamwCase(shapes: number[][]): CudaCase {
  const lr = 3e-3;
  const [beta1, beta2, eps, wd, maxNorm] = [0.9, 0.95, 1e-8, 0.1, 0.5];
  const step = 3;
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  const inputs = () => shapes.flatMap((s, i) => [randHost(s, 40 + i), randHost(s, 50 + i, 0.05), randHost(s, 60 + i, 0.01), { ...randHost(s, 70 + i, 0.001), data: randHost(s, 70 + i, 0.001).data.map(Math.abs) }]);
  const k = shapes.length;
  const decay = (s: number[]) => (s.length >= 2 ? 1 - lr * wd : 1);
  return {
    name: `AdamW with global-norm clipping (${shapes.map((s) => s.join('×')).join(', ')})`,
    inputs,
    diff: [],
    reference: (ts) => {
      const grads: Record<string, tf.Tensor> = {};
      for (let i = 0; i < k; i++) grads[i] = ts[4 * i + 1];
      const { grads: clipped, norm } = clipByGlobalNorm(grads, maxNorm);
      const outs: tf.Tensor[] = [tf.reshape(norm, [1])];
      for (let i = 0; i < k; i++) {
        const [p, , m, v] = ts.slice(4 * i, 4 * i + 4);
        const g = clipped[i];
        const mNew = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
        const vNew = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
        const upd = tf.div(tf.div(mNew, bc1), tf.add(tf.sqrt(tf.div(vNew, bc2)), eps));
        outs.push(tf.reshape(tf.sub(tf.mul(p, decay(shapes[i])), tf.mul(upd, lr)), [-1]));
      }
      return tf.concat(outs);
    },
    cuda: (ts) => {
      const entries = [];
      for (let i = 0; i < k; i++) {
        const [p, g, m, v] = ts.slice(4 * i, 4 * i + 4);
        entries.push({ param: tf.variable(p), grad: g, m: tf.variable(m), v: tf.variable(v), decays: shapes[i].length >= 2 });
      }
      const norm = cudaClipAdamW(entries, { lr, beta1, beta2, eps, bc1, bc2, maxNorm, weightDecay: wd });
      const out = tf.concat([tf.reshape(norm, [1]), ...entries.map((e) => tf.reshape(e.param, [-1]))]);
      for (const e of entries) tf.dispose([e.param, e.m, e.v]);
      return out;
    },
    tol: { f32: 1e-5, mixed: 1e-5 },
  };
}

/** tfjs programs that touch the kernels the cuda backend runs itself. */
function tfjsKernelCases(): CudaCase[] {
  const tol = { f32: 1e-5, mixed: 1e-5 };
  const c = (name: string, inputs: Host[], f: (ts: tf.Tensor[]) => tf.Tensor, diff: number[] = [], t = tol): CudaCase => ({ name: `tfjs: ${name}`, inputs: () => inputs, diff, reference: f, cuda: f, tol: t });
  const a = randHost([4, 5, 6], 81);
  const bb = randHost([5, 1], 82);
  const pos = { ...randHost([4, 5, 6], 83), data: randHost([4, 5, 6], 83).data.map((x) => Math.abs(x) + 0.1) };
  return [
    // tfjs's Maximum gradient does not reduce over broadcast axes: maximum takes same-shape inputs here.
    c('broadcast add, sub, mul, div; maximum', [a, bb, pos], ([x, y, p]) => tf.stack([tf.add(x, y), tf.sub(x, y), tf.mul(x, y), tf.div(x, p), tf.maximum(x, p)]), [0, 1, 2]),
    c('unary exp, log, sqrt, rsqrt, tanh, erf, sigmoid, neg, abs', [a, pos], ([x, p]) => tf.stack([tf.exp(x), tf.log(p), tf.sqrt(p), tf.rsqrt(p), tf.tanh(x), tf.erf(x), tf.sigmoid(x), tf.neg(x), tf.abs(x)]), [0, 1]),
    c('sum, mean, max, min over axes, keepDims', [a], ([x]) => tf.concat([tf.reshape(tf.sum(x, [0, 2]), [-1]), tf.reshape(tf.mean(x, 1, true), [-1]), tf.reshape(tf.max(x, -1), [-1]), tf.reshape(tf.min(x), [-1]), tf.reshape(tf.sum(x), [-1])]), [0]),
    c('transpose, slice, concat, reshape', [a], ([x]) => tf.concat([tf.reshape(tf.transpose(x, [2, 0, 1]), [-1]), tf.reshape(tf.slice(x, [1, 2, 3], [2, 3, 2]), [-1]), tf.reshape(tf.concat([x, tf.mul(x, 2)], 1), [-1])]), [0]),
    c('gather rows, argMax, cast', [a, { shape: [7], data: Int32Array.from([3, 0, 2, 2, 1, 3, 0]), dtype: 'int32' }], ([x, i]) => tf.concat([tf.reshape(tf.gather(x, i), [-1]), tf.cast(tf.argMax(x, 2), 'float32').reshape([-1])])),
    c('batched matMul with transposes', [randHost([3, 4, 5], 84), randHost([3, 6, 5], 85), randHost([3, 4, 2], 86)], ([x, y, z]) => tf.concat([tf.reshape(tf.matMul(x, y, false, true), [-1]), tf.reshape(tf.matMul(x, z, true), [-1])]), [0, 1, 2]),
    // tfjs's BatchMatMul gradient does not reduce over a broadcast batch: the value only.
    c('batched matMul with a broadcast batch', [randHost([3, 4, 5], 87), randHost([5, 2], 88)], ([x, z]) => tf.matMul(x, z)),
    c('topk, sorted, with ties, k 1 and 40', [{ shape: [3, 300], data: randHost([3, 300], 89).data.map((x) => Math.round(x * 8) / 8) }], ([x]) => {
      const a = tf.topk(x, 40);
      const one = tf.topk(x, 1);
      return tf.concat([tf.reshape(a.values, [-1]), tf.cast(tf.reshape(a.indices, [-1]), 'float32'), tf.reshape(one.values, [-1]), tf.cast(tf.reshape(one.indices, [-1]), 'float32')]);
    }),
    c('addN, fill, ones, zeros, softmax (host), int32 math', [a, a], ([x, y]) => tf.concat([tf.reshape(tf.addN([x, y, x]), [-1]), tf.fill([3], 2.5), tf.ones([2]), tf.zeros([2]), tf.reshape(tf.softmax(x), [-1]), tf.cast(tf.add(tf.mul(tf.range(0, 5, 1, 'int32'), 3), 2), 'float32')]), [0, 1]),
  ];
}

/** Runs every case at both precisions; prints one JSON line each through `log`. Returns the failures. */
export async function runCudaChecks(scale: 'small' | 'pythia', log: (line: Record<string, unknown>) => void): Promise<number> {
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
