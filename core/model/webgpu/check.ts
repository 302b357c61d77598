/**
 * Correctness checks of the fused kernels against the reference tfjs ops: the value and the
 * gradients (for a fixed random upstream gradient) of each fused op, computed on the webgpu backend,
 * against the reference ops computed either on the cpu backend (small shapes: what the tests run,
 * on lavapipe in CI) or on the webgpu backend with the fused kernels off (tfjs's stock kernels, at
 * the shapes of a Pythia-70M training step: what bench/gpu-train --check runs on the card).
 */
import * as tf from '../tfjs.js';

import { initBackend } from '../backend.js';
import { causalSelfAttention } from '../gptneox.js';
import { distillationLoss, topKFromLogits } from '../losses.js';
import { crossEntropy, gatherRows, gelu, layerNorm, linear, matMul } from '../ops.js';
import {
  type AttentionKernels,
  fusedAttention,
  fusedCrossEntropy,
  fusedGatherRows,
  fusedLayerNorm,
  fusedLinear,
  fusedMatMulNT,
  fusedTopKDistill,
  setAttentionKernels,
  setFusedKernels,
} from './fused.js';
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

async function onBackend(where: Reference | 'webgpu'): Promise<void> {
  await initBackend(where === 'cpu' ? 'cpu' : 'webgpu', () => {});
  setFusedKernels(where === 'webgpu-unfused' ? false : null);
}

/** Value and gradients w.r.t. the inputs listed in `diff` of `f`, for a fixed random upstream gradient. */
async function valueAndGrads(inputs: Host[], diff: number[], f: (ts: tf.Tensor[]) => tf.Tensor): Promise<{ value: Float32Array; grads: Float32Array[] }> {
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
  const out = { value: (await value.data()) as Float32Array, grads: await Promise.all(grads.map(async (x) => (await x.data()) as Float32Array)) };
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
  return { cos: { shape: [T, rd], data: cos }, sin: { shape: [T, rd], data: sin }, mask: { shape: [T, T], data: mask } };
}

export function matmulCase(name: string, M: number, K: number, N: number, transA: boolean, transB: boolean, tol = 2e-6): KernelCase {
  return {
    name,
    inputs: () => [randHost(transA ? [K, M] : [M, K], 1), randHost(transB ? [N, K] : [K, N], 2)],
    diff: [],
    reference: ([x, y]) => tf.matMul(x, y, transA, transB),
    fused: ([x, y]) => toTensor(matmul({ a: x, b: y, M, N, K, transA, transB }).c),
    tol,
  };
}

export function linearCase(N: number, inF: number, outF: number, activation: 'none' | 'gelu', tol = 2e-5): KernelCase {
  return {
    name: `linear${activation === 'gelu' ? ' + GELU' : ''} (N ${N}, in ${inF}, out ${outF})`,
    inputs: () => [randHost([N, inF], 3), randHost([outF, inF], 4, activation === 'gelu' ? 0.5 : 0.3), randHost([outF], 5)],
    diff: [0, 1, 2],
    reference: ([x, w, b]) => {
      const y = linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D);
      return activation === 'gelu' ? gelu(y) : y;
    },
    fused: ([x, w, b]) => fusedLinear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, activation),
    tol,
  };
}

export function logitsCase(N: number, D: number, V: number, tol = 2e-5): KernelCase {
  return {
    name: `logits product h · Wᵀ (N ${N}, D ${D}, V ${V})`,
    inputs: () => [randHost([N, D], 9), randHost([V, D], 10, 0.2)],
    diff: [0, 1],
    reference: ([h, w]) => matMul(h, w, false, true),
    fused: ([h, w]) => fusedMatMulNT(h as tf.Tensor2D, w as tf.Tensor2D),
    tol,
  };
}

export function layerNormCase(N: number, D: number, tol = 2e-5): KernelCase {
  return {
    name: `LayerNorm (N ${N}, D ${D})`,
    inputs: () => [randHost([N, D], 11, 2), randHost([D], 12), randHost([D], 13)],
    diff: [0, 1, 2],
    reference: ([x, w, b]) => layerNorm(x, w, b, 1e-5),
    fused: ([x, w, b]) => fusedLayerNorm(x as tf.Tensor2D, w as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
    tol,
  };
}

export function attentionCase(kernels: AttentionKernels, B: number, T: number, H: number, hs: number, rd: number, tol = 5e-5): KernelCase {
  const shape = { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd };
  return {
    name: `causal attention with rotary, ${kernels} kernels (B ${B}, T ${T}, H ${H}, hs ${hs}, rotated ${rd})`,
    inputs: () => {
      const r = ropeTables(T, rd);
      return [randHost([B * T, H * 3 * hs], 14, 1.5), r.cos, r.sin, r.mask];
    },
    diff: [0],
    reference: ([x, c, s, m]) => causalSelfAttention(x as tf.Tensor2D, c as tf.Tensor2D, s as tf.Tensor2D, m as tf.Tensor2D, shape),
    fused: ([x, c, s]) => {
      // The path is chosen in the forward; its gradient follows it.
      setAttentionKernels(kernels);
      try {
        return fusedAttention(x as tf.Tensor2D, c as tf.Tensor2D, s as tf.Tensor2D, shape);
      } finally {
        setAttentionKernels(null);
      }
    },
    tol,
  };
}

export function crossEntropyCase(N: number, V: number, tol = 2e-5): KernelCase {
  return {
    name: `softmax cross-entropy (N ${N}, V ${V})`,
    inputs: () => [randHost([N, V], 15, 4), intHost([N], V, 1)],
    diff: [0],
    reference: ([x, t]) => crossEntropy(x as tf.Tensor2D, t as tf.Tensor1D),
    fused: ([x, t]) => fusedCrossEntropy(x as tf.Tensor2D, t as tf.Tensor1D),
    tol,
  };
}

export function topKCase(N: number, V: number, k: number, direction: 'forward' | 'reverse' | 'symmetric', alpha: number, temperature: number, tol = 5e-5): KernelCase {
  return {
    name: `top-k distillation (N ${N}, V ${V}, k ${k}, ${direction} KL, alpha ${alpha}, temperature ${temperature})`,
    inputs: async () => {
      // The teacher's top-k view, computed once on the cpu backend.
      await onBackend('cpu');
      const teacher = randHost([N, V], 17, 3);
      const tl = tf.tensor2d(teacher.data, [N, V]);
      const top = topKFromLogits(tl, k, temperature);
      const hosts: Host[] = [
        randHost([N, V], 16, 3),
        intHost([N], V, 2),
        { shape: [N, k], data: (await top.indices.data()) as Int32Array, dtype: 'int32' },
        { shape: [N, k], data: (await top.logits.data()) as Float32Array },
        { shape: [N], data: (await top.logNormaliser.data()) as Float32Array },
      ];
      tf.dispose([tl, top.indices, top.logits, top.logNormaliser]);
      return hosts;
    },
    diff: [0],
    reference: ([x, t, i, l, z]) =>
      distillationLoss(x as tf.Tensor2D, t as tf.Tensor1D, { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D }, { alpha, temperature, direction }),
    fused: ([x, t, i, l, z]) =>
      fusedTopKDistill(x as tf.Tensor2D, t as tf.Tensor1D, { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D }, alpha, temperature, direction),
    tol,
  };
}

export function embeddingCase(rows: number, width: number, n: number, tol = 2e-5): KernelCase {
  return {
    name: `embedding rows and gradient (table ${rows} × ${width}, ${n} ids)`,
    inputs: () => [randHost([rows, width], 18), { shape: [n], data: Int32Array.from({ length: n }, (_, i) => (i * i + 3 * i) % rows), dtype: 'int32' }],
    diff: [0],
    reference: ([t, i]) => gatherRows(t as tf.Tensor2D, i as tf.Tensor1D),
    fused: ([t, i]) => fusedGatherRows(t as tf.Tensor2D, i as tf.Tensor1D),
    tol,
  };
}

/**
 * The cases at the shapes of a Pythia-70M training step (batch 8 × 512, width 512, vocabulary
 * 50304, head size 64), checked on the card against tfjs's stock webgpu kernels. `shrink` divides
 * the token, width and vocabulary sizes (head size stays 64), to try the same path on a slow adapter.
 */
export function pythiaScaleCases(shrink = 1): KernelCase[] {
  const d = (n: number) => Math.max(4, Math.round(n / shrink / 4) * 4);
  const [N, D, V, F, QKV] = [d(4096), d(512), d(50304), d(2048), d(1536)];
  const T = d(512);
  return [
    matmulCase('matrix product NT (logits shape)', N, D, V, false, true, 1e-5),
    matmulCase('matrix product NN, split-K (logits backward)', N, V, D, false, false, 5e-5),
    matmulCase('matrix product TN (embed_out gradient)', V, N, D, true, false, 1e-5),
    linearCase(N, D, QKV, 'none', 1e-4),
    linearCase(N, D, F, 'gelu', 1e-4),
    linearCase(N, F, D, 'none', 1e-4),
    logitsCase(d(1024), D, V, 1e-4),
    layerNormCase(N, D, 1e-4),
    attentionCase('scores', Math.max(1, Math.round(8 / shrink)), T, 8, 64, 16, 1e-4),
    attentionCase('flash', Math.max(1, Math.round(8 / shrink)), T, 8, 64, 16, 1e-4),
    crossEntropyCase(d(1024), V, 1e-4),
    topKCase(d(1024), V, 64, 'forward', 0.5, 2, 1e-4),
    embeddingCase(V, D, N, 1e-4),
  ];
}

/**
 * A whole model's loss and every parameter's gradient, fused kernels on webgpu against the reference
 * (cpu, or webgpu with the fused kernels off). Returns the loss difference and the worst gradient.
 */
export async function modelGradientCheck(
  config: import('../config.js').NeoXConfig,
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
