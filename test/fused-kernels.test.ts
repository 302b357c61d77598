/**
 * The fused WebGPU kernels (core/model/webgpu) against the reference tfjs ops: every op's value and
 * gradients, computed by the fused kernels on the webgpu backend (Mesa lavapipe on CPU machines,
 * required in CI) and by the reference ops on the cpu backend from the same inputs; then a whole
 * model's logits and gradients, the fused AdamW step, and 200 training steps of the fused and
 * unfused paths on the same data and seed.
 */
import { afterAll, describe, expect, it } from 'vitest';

import {
  AdamW,
  GPTNeoX,
  Trainer,
  causalSelfAttention,
  clipByGlobalNorm,
  crossEntropy,
  distillationLoss,
  gatherRows,
  layerNorm,
  topKFromLogits,
} from '../core/model/index.js';
import { gelu, linear, matMul } from '../core/model/ops.js';
import * as tf from '../core/model/tfjs.js';
import {
  fusedAttention,
  fusedCrossEntropy,
  fusedGatherRows,
  fusedLayerNorm,
  fusedLinear,
  fusedMatMulNT,
  fusedTopKDistill,
  setFusedKernels,
} from '../core/model/webgpu/fused.js';
import { matmul } from '../core/model/webgpu/matmul.js';
import { toTensor } from '../core/model/webgpu/runtime.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { syntheticBatches, tinyConfig, tinyHyper } from './helpers/tiny.js';

const backends = await testBackends();
const hasWebGPU = backends.includes('webgpu');

afterAll(async () => {
  setFusedKernels(null);
  await useBackend('cpu');
});

interface Host {
  shape: number[];
  data: Float32Array | Int32Array;
  dtype?: 'float32' | 'int32';
}

function rand(shape: number[], seed: number, scale = 1): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = seed * 2654435761 + 1;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    data[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return { shape, data };
}

function ints(shape: number[], max: number, seed: number): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Int32Array(n);
  for (let i = 0; i < n; i++) data[i] = (i * 7919 + seed * 104729 + ((i * i) % 13)) % max;
  return { shape, data, dtype: 'int32' };
}

const toT = (h: Host) => tf.tensor(h.data, h.shape, h.dtype ?? 'float32');

/**
 * Value and gradients (w.r.t. the float inputs listed in `diff`, with a fixed random upstream
 * gradient) of `f` on a backend; host arrays back.
 */
async function valueAndGrads(
  backend: 'cpu' | 'webgpu',
  inputs: Host[],
  diff: number[],
  f: (ts: tf.Tensor[]) => tf.Tensor,
): Promise<{ value: Float32Array; grads: Float32Array[] }> {
  await useBackend(backend);
  const ts = inputs.map(toT);
  const value = tf.tidy(() => f(ts));
  if (diff.length === 0) {
    const out = { value: (await value.data()) as Float32Array, grads: [] };
    tf.dispose([...ts, value]);
    return out;
  }
  const dy = tf.tensor(rand(value.shape, 99).data, value.shape);
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

/** max |a − b| / max(|b|, floor). */
function relErr(a: Float32Array, b: Float32Array, floor = 1e-6): number {
  expect(a.length).toBe(b.length);
  let e = 0;
  let m = floor;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    e = Math.max(e, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return e / m;
}

async function compare(
  inputs: Host[],
  diff: number[],
  reference: (ts: tf.Tensor[]) => tf.Tensor,
  fused: (ts: tf.Tensor[]) => tf.Tensor,
  tol = 2e-5,
): Promise<void> {
  const ref = await valueAndGrads('cpu', inputs, diff, reference);
  const got = await valueAndGrads('webgpu', inputs, diff, fused);
  expect(relErr(got.value, ref.value), 'value').toBeLessThan(tol);
  got.grads.forEach((g, i) => expect(relErr(g, ref.grads[i]), `gradient of input ${diff[i]}`).toBeLessThan(tol));
}

describe.skipIf(!hasWebGPU)('fused WebGPU kernels match the reference ops', () => {
  it.each([
    ['vectorised, exact tiles', 128, 64, 64, false, false],
    ['vectorised, ragged', 37, 20, 52, false, false],
    ['scalar loads, ragged', 33, 13, 7, false, false],
    ['A transposed', 40, 24, 36, true, false],
    ['B transposed', 40, 24, 36, false, true],
    ['both transposed, odd', 19, 9, 11, true, true],
    ['split-K (long K)', 16, 2048, 12, false, false],
    ['split-K, transposed A, ragged', 20, 1100, 28, true, false],
  ] as const)('matrix product: %s (M %i, K %i, N %i)', async (_name, M, K, N, transA, transB) => {
    const a = rand(transA ? [K, M] : [M, K], 1);
    const b = rand(transB ? [N, K] : [K, N], 2);
    const ref = await valueAndGrads('cpu', [a, b], [], ([x, y]) => tf.matMul(x, y, transA, transB));
    const got = await valueAndGrads('webgpu', [a, b], [], ([x, y]) => toTensor(matmul({ a: x, b: y, M, N, K, transA, transB }).c));
    expect(relErr(got.value, ref.value)).toBeLessThan(2e-6);
  });

  it.each([
    [37, 20, 52],
    [33, 13, 7],
    [64, 128, 256],
  ])('linear + bias (N %i, in %i, out %i)', async (n, i, o) => {
    await compare([rand([n, i], 3), rand([o, i], 4, 0.3), rand([o], 5)], [0, 1, 2], ([x, w, b]) => linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D), ([x, w, b]) =>
      fusedLinear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D),
    );
  });

  it.each([
    [37, 20, 52],
    [21, 16, 9],
  ])('linear + bias + GELU (N %i, in %i, out %i)', async (n, i, o) => {
    await compare(
      [rand([n, i], 6), rand([o, i], 7, 0.5), rand([o], 8)],
      [0, 1, 2],
      ([x, w, b]) => gelu(linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D)),
      ([x, w, b]) => fusedLinear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, 'gelu'),
    );
  });

  it('logits product h · Wᵀ with a long vocabulary (split-K in the backward pass)', async () => {
    await compare(
      [rand([24, 16], 9), rand([1100, 16], 10, 0.2)],
      [0, 1],
      ([h, w]) => matMul(h, w, false, true),
      ([h, w]) => fusedMatMulNT(h as tf.Tensor2D, w as tf.Tensor2D),
    );
  });

  it.each([
    [29, 48],
    [70, 200],
    [5, 32],
  ])('LayerNorm (N %i, D %i)', async (n, d) => {
    await compare(
      [rand([n, d], 11, 2), rand([d], 12), rand([d], 13)],
      [0, 1, 2],
      ([x, w, b]) => layerNorm(x, w, b, 1e-5),
      ([x, w, b]) => fusedLayerNorm(x as tf.Tensor2D, w as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
    );
  });

  it.each([
    ['one block', 2, 9, 3, 16, 4],
    ['several blocks, ragged', 2, 70, 3, 16, 4],
    ['head size 12, full rotary', 1, 67, 2, 12, 12],
    ['no rotary', 1, 33, 2, 8, 0],
    ['head size 64, Pythia rotary', 1, 130, 2, 64, 16],
  ] as const)('causal attention with rotary: %s (B %i, T %i, H %i, hs %i, rotated %i)', async (_n, B, T, H, hs, rd) => {
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
    const shape = { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd };
    await compare(
      [rand([B * T, H * 3 * hs], 14, 1.5), { shape: [T, rd], data: cos }, { shape: [T, rd], data: sin }, { shape: [T, T], data: mask }],
      [0],
      ([x, c, s, m]) => causalSelfAttention(x as tf.Tensor2D, c as tf.Tensor2D, s as tf.Tensor2D, m as tf.Tensor2D, shape),
      ([x, c, s]) => fusedAttention(x as tf.Tensor2D, c as tf.Tensor2D, s as tf.Tensor2D, shape),
      5e-5,
    );
  });

  it.each([
    [19, 101],
    [8, 256],
  ])('softmax cross-entropy (N %i, V %i)', async (n, v) => {
    await compare(
      [rand([n, v], 15, 4), ints([n], v, 1)],
      [0],
      ([x, t]) => crossEntropy(x as tf.Tensor2D, t as tf.Tensor1D),
      ([x, t]) => fusedCrossEntropy(x as tf.Tensor2D, t as tf.Tensor1D),
    );
  });

  it.each([
    ['forward', 0.5, 2, 5],
    ['reverse', 0.5, 1, 5],
    ['symmetric', 0.3, 1.5, 7],
    ['forward', 0, 1, 3],
    ['forward', 0.5, 1, 97],
  ] as const)('top-k distillation: %s KL, alpha %f, temperature %f, k %i', async (direction, alpha, temperature, k) => {
    const n = 7;
    const v = 97;
    const student = rand([n, v], 16, 3);
    const teacherLogits = rand([n, v], 17, 3);
    // The teacher's top-k view, computed once on the cpu backend.
    await useBackend('cpu');
    const tl = tf.tensor2d(teacherLogits.data, [n, v]);
    const top = topKFromLogits(tl, k, temperature);
    const host = {
      indices: { shape: [n, k], data: (await top.indices.data()) as Int32Array, dtype: 'int32' as const },
      logits: { shape: [n, k], data: (await top.logits.data()) as Float32Array },
      logZ: { shape: [n], data: (await top.logNormaliser.data()) as Float32Array },
    };
    tf.dispose([tl, top.indices, top.logits, top.logNormaliser]);
    const opts = { alpha, temperature, direction };
    await compare(
      [student, ints([n], v, 2), host.indices, host.logits, host.logZ],
      [0],
      ([x, t, i, l, z]) => distillationLoss(x as tf.Tensor2D, t as tf.Tensor1D, { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D }, opts),
      ([x, t, i, l, z]) =>
        fusedTopKDistill(x as tf.Tensor2D, t as tf.Tensor1D, { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D }, alpha, temperature, direction),
      5e-5,
    );
  });

  it('embedding rows and their gradient (repeated ids)', async () => {
    const ids: Host = { shape: [40], data: Int32Array.from({ length: 40 }, (_, i) => (i * i) % 11), dtype: 'int32' };
    await compare(
      [rand([13, 24], 18), ids],
      [0],
      ([t, i]) => gatherRows(t as tf.Tensor2D, i as tf.Tensor1D),
      ([t, i]) => fusedGatherRows(t as tf.Tensor2D, i as tf.Tensor1D),
    );
  });

  it('AdamW with global-norm clipping, fused and on the device, matches clipByGlobalNorm + AdamW.apply', async () => {
    const shapes = [[33, 20], [20], [7, 5]];
    const run = async (backend: 'cpu' | 'webgpu') => {
      await useBackend(backend);
      setFusedKernels(backend === 'webgpu');
      const params = new Map(shapes.map((s, i) => [i === 1 ? 'layernorm.bias' : `w${i}`, tf.variable(toT(rand(s, 20 + i)))]));
      const opt = new AdamW({ weightDecay: 0.1 });
      const norms: number[] = [];
      for (let step = 0; step < 3; step++) {
        const grads: Record<string, tf.Tensor> = {};
        [...params.keys()].forEach((name, i) => (grads[name] = toT(rand(shapes[i], 30 + step * 7 + i, step === 1 ? 5 : 0.01))));
        const norm = backend === 'webgpu' ? opt.applyClipped(params, grads, 1e-2, 1) : (() => {
          const { grads: c, norm: nn } = clipByGlobalNorm(grads, 1);
          opt.apply(params, c, 1e-2);
          return nn;
        })();
        norms.push((await norm.data())[0]);
        tf.dispose([norm, ...Object.values(grads)]);
      }
      const out = await Promise.all([...params.values()].map(async (p) => (await p.data()) as Float32Array));
      const state = await opt.stateToHost();
      opt.dispose();
      for (const p of params.values()) p.dispose();
      setFusedKernels(null);
      return { out, norms, state };
    };
    const ref = await run('cpu');
    const got = await run('webgpu');
    got.out.forEach((p, i) => expect(relErr(p, ref.out[i])).toBeLessThan(1e-5));
    got.norms.forEach((n, i) => expect(Math.abs(n - ref.norms[i]) / ref.norms[i]).toBeLessThan(1e-5));
    for (const [key, t] of ref.state) {
      if (key === 'step') expect(got.state.get(key)!.data[0]).toBe(t.data[0]);
      else expect(relErr(got.state.get(key)!.data as Float32Array, t.data as Float32Array)).toBeLessThan(1e-5);
    }
  });

  it('a whole model: logits and every parameter gradient match the cpu backend', async () => {
    const config = tinyConfig({ vocabSize: 50, hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 128 });
    const ids = Int32Array.from({ length: 2 * 70 }, (_, i) => (i * 7 + 3) % 50);
    const targets = Int32Array.from({ length: 2 * 70 }, (_, i) => (i * 11 + 1) % 50);
    const run = async (backend: 'cpu' | 'webgpu') => {
      await useBackend(backend);
      const model = GPTNeoX.random(config, 3);
      const t = tf.tensor2d(ids, [2, 70], 'int32');
      const y = tf.tensor1d(targets, 'int32');
      const { value, grads } = tf.variableGrads(() => crossEntropy(model.logits2d(t), y), model.variables());
      const g = new Map<string, Float32Array>();
      for (const [n, v] of model.params) g.set(n, (await grads[v.name].data()) as Float32Array);
      const loss = (await value.data())[0];
      tf.dispose([t, y, value, ...Object.values(grads)]);
      model.dispose();
      return { loss, g };
    };
    const ref = await run('cpu');
    const got = await run('webgpu');
    expect(Math.abs(got.loss - ref.loss)).toBeLessThan(1e-5);
    for (const [n, g] of ref.g) expect(relErr(got.g.get(n)!, g), n).toBeLessThan(2e-5);
  });

  it('loss curves of the fused and unfused paths agree over 200 steps on the same data and seed', async () => {
    await useBackend('webgpu');
    const config = tinyConfig({ vocabSize: 48, hiddenSize: 32, numLayers: 2, numHeads: 4 });
    const curve = async (fused: boolean) => {
      setFusedKernels(fused);
      const losses: number[] = [];
      const trainer = new Trainer(GPTNeoX.random(config, 7), {
        hyper: tinyHyper(200, { batchSize: 2, seqLen: 16 }),
        batches: syntheticBatches(48, 2, 16, 5),
        reportEvery: 10,
        onStep: (r) => losses.push(r.loss),
      });
      await trainer.run();
      trainer.dispose();
      setFusedKernels(null);
      return losses;
    };
    const unfused = await curve(false);
    const fused = await curve(true);
    expect(fused.length).toBe(20);
    for (let i = 0; i < fused.length; i++) expect(Math.abs(fused[i] - unfused[i]), `report ${i}`).toBeLessThan(2e-3 * Math.max(1, unfused[i]));
    // It learned (the synthetic stream is predictable).
    expect(fused[fused.length - 1]).toBeLessThan(unfused[0] / 2);
  }, 600_000);
});
