/**
 * Correctness checks of the fused kernels against the reference tfjs ops: the value and the
 * gradients (for a fixed random upstream gradient) of each fused op, computed on the webgpu backend,
 * against the reference ops computed either on the cpu backend (small shapes: what the tests run,
 * on lavapipe in CI) or on the webgpu backend with the fused kernels off (tfjs's stock kernels, at
 * the shapes of a Pythia-70M training step: what bench/gpu-train --check runs on the card). This is
 * the harness and the matrix products' case; each operation's case is in its file (linearCase in
 * linear.ts, attentionCase in attention.ts, ...).
 */
import * as tf from '../tfjs.js';

import type { NeoXConfig } from '../config.js';
import { crossEntropy } from '../ops/index.js';
import { setFusedKernels } from './fused.js';
import { matmul } from './matmul.js';
import { toTensor } from './runtime.js';

export interface Host {
  shape: number[];
  data: Float32Array | Int32Array;
  dtype?: 'float32' | 'int32';
}

export function randHost(shape: number[], seed: number, scale = 1): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    data[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return { shape, data };
}

export function intHost(shape: number[], max: number, seed: number): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Int32Array(n);
  for (let i = 0; i < n; i++) data[i] = (i * 7919 + seed * 104729 + ((i * i) % 13)) % max;
  return { shape, data, dtype: 'int32' };
}

const toT = (h: Host) => tf.tensor(h.data, h.shape, h.dtype ?? 'float32');

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

/** Value and gradients w.r.t. the inputs listed in `diff` of `f`, for a fixed random upstream gradient. */
async function valueAndGrads(
  inputs: Host[],
  diff: number[],
  f: (ts: tf.Tensor[]) => tf.Tensor,
): Promise<{ value: Float32Array; grads: Float32Array[] }> {
  const ts = inputs.map(toT);
  const value = tf.tidy(() => f(ts));
  if (diff.length === 0) {
    const out = { value: (await value.data()) as Float32Array, grads: [] };
    tf.dispose([...ts, value]);
    return out;
  }
  const dy = tf.tensor(randHost(value.shape, 99).data, value.shape);
  const g = tf.grads((...xs: tf.Tensor[]) => {
    const all = ts.slice();
    diff.forEach((d, i) => (all[d] = xs[i]));
    return f(all);
  });
  const grads = g(
    diff.map((d) => ts[d]),
    dy,
  );
  const out = {
    value: (await value.data()) as Float32Array,
    grads: await Promise.all(grads.map(async (x) => (await x.data()) as Float32Array)),
  };
  tf.dispose([...ts, value, dy, ...grads]);
  return out;
}

/** max |a − b| / max |b| (Infinity for a length mismatch or a non-finite value). */
export function relErr(a: Float32Array, b: Float32Array, floor = 1e-6): number {
  if (a.length !== b.length) return Infinity;
  let e = 0;
  let m = floor;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    const d = Math.abs(a[i] - b[i]);
    if (d > e) e = d;
    const v = Math.abs(b[i]);
    if (v > m) m = v;
  }
  return e / m;
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
  ok: boolean;
}

/** Runs one case: the reference where asked, the fused op on webgpu, and compares. */
export async function runCase(c: KernelCase, reference: Reference): Promise<CaseResult> {
  const inputs = await c.inputs();
  await onBackend(reference);
  const ref = await valueAndGrads(inputs, c.diff, c.reference);
  await onBackend('webgpu');
  const got = await valueAndGrads(inputs, c.diff, c.fused);
  setFusedKernels(null);
  const valueErr = relErr(got.value, ref.value);
  const gradErrs = got.grads.map((g, i) => relErr(g, ref.grads[i]));
  return { name: c.name, valueErr, gradErrs, tol: c.tol, ok: valueErr < c.tol && gradErrs.every((e) => e < c.tol) };
}

/** cos/sin [T, rd] with equal halves (as the model's are) and the additive causal mask [T, T]. */
export function ropeTables(T: number, rd: number): { cos: Host; sin: Host; mask: Host } {
  const half = rd / 2;
  const cos = new Float32Array(T * rd);
  const sin = new Float32Array(T * rd);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const a = t / 10000 ** ((2 * i) / rd);
      cos[t * rd + i] = cos[t * rd + i + half] = Math.cos(a);
      sin[t * rd + i] = sin[t * rd + i + half] = Math.sin(a);
    }
  }
  const mask = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) mask[i * T + j] = -1e9;
  return {
    cos: { shape: [T, rd], data: cos },
    sin: { shape: [T, rd], data: sin },
    mask: { shape: [T, T], data: mask },
  };
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
    const { value, grads } = tf.variableGrads(() => crossEntropy(model.logits2d(t), y), model.variables());
    const g = new Map<string, Float32Array>();
    for (const [name, v] of model.params) g.set(name, (await grads[v.name].data()) as Float32Array);
    const loss = (await value.data())[0];
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
