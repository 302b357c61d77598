/**
 * The tensorflow backend's own ops (core/model/tensorflow) against the reference tfjs ops: every
 * op's value and gradients, computed by the TensorFlow ops on the `tensorflow` backend and by the
 * reference ops on the cpu backend from the same inputs; then a whole model's loss and gradients,
 * the ResourceApplyAdam AdamW against clipByGlobalNorm + AdamW.apply (state round trip included),
 * and training on the tensorflow backend with these ops on and off. Skipped where the tensorflow
 * backend does not load (required in CI with OFFSHOOT_REQUIRE_TENSORFLOW=1).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { AdamW, GPTNeoX, Trainer, causalSelfAttention, clipByGlobalNorm, distillationLoss } from '../core/model/index.js';
import { crossEntropy, gatherRows, layerNorm, linear, linearGelu, matMulNT } from '../core/model/ops.js';
import { tensorflowKernelsActive, setTensorflowKernels } from '../core/model/tensorflow/native.js';
import { type RotaryTables, rotaryTables, tfAttention } from '../core/model/tensorflow/ops.js';
import * as tf from '../core/model/tfjs.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { syntheticBatches, tinyConfig, tinyHyper } from './helpers/tiny.js';

const backends = await testBackends();
const hasTensorflow = backends.includes('tensorflow');

afterAll(async () => {
  setTensorflowKernels(null);
  await useBackend('cpu');
});

interface Host {
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Deterministic values in [−scale, scale). */
function rand(shape: number[], seed: number, scale = 1): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    data[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return { shape, data };
}

function ints(n: number, max: number, seed: number): Host {
  const r = rand([n], seed);
  return { shape: [n], data: Int32Array.from(r.data, (x) => Math.floor(((x + 1) / 2) * max)) };
}

/** max |a − b| / max |b|. */
function relErr(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let e = 0;
  let m = 1e-6;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    e = Math.max(e, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return e / m;
}

interface Case {
  name: string;
  /** Inputs; the first `diff` are differentiated (float32), the rest are int32 or constants. */
  inputs: Host[];
  diff: number;
  f: (...xs: tf.Tensor[]) => tf.Tensor;
  tol: number;
  /** Frees what f kept for the gradient. */
  after?: () => void;
}

/** Value and gradients (under a random upstream gradient) of a case on a backend. */
async function evaluate(c: Case, backend: 'cpu' | 'tensorflow'): Promise<{ value: Float32Array; grads: Float32Array[]; tfOps: boolean }> {
  await useBackend(backend);
  const xs = c.inputs.map((h) => tf.tensor(h.data, h.shape, h.data instanceof Int32Array ? 'int32' : 'float32'));
  const rest = xs.slice(c.diff);
  const fn = (...d: tf.Tensor[]) => c.f(...d, ...rest);
  const value = tf.tidy(() => fn(...xs.slice(0, c.diff)));
  const dy = tf.tensor(rand(value.shape, 99).data, value.shape);
  const grads = tf.grads(fn)(xs.slice(0, c.diff), dy);
  const out = {
    value: (await value.data()) as Float32Array,
    grads: await Promise.all(grads.map(async (g) => (await g.data()) as Float32Array)),
    tfOps: tensorflowKernelsActive(),
  };
  tf.dispose([...xs, value, dy, ...grads]);
  c.after?.();
  return out;
}

const [N, IN, OUT] = [37, 24, 52];
const CASES: Case[] = [
  { name: 'linear', inputs: [rand([N, IN], 1), rand([OUT, IN], 2, 0.3), rand([OUT], 3)], diff: 3, f: (x, w, b) => linear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D), tol: 2e-6 },
  { name: 'linear + GELU', inputs: [rand([N, IN], 4, 2), rand([OUT, IN], 5, 0.5), rand([OUT], 6)], diff: 3, f: (x, w, b) => linearGelu(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D), tol: 2e-6 },
  { name: 'logits product', inputs: [rand([N, IN], 7), rand([101, IN], 8)], diff: 2, f: (x, w) => matMulNT(x as tf.Tensor2D, w as tf.Tensor2D), tol: 2e-6 },
  { name: 'LayerNorm', inputs: [rand([N, 48], 9, 3), rand([48], 10), rand([48], 11)], diff: 3, f: (x, w, b) => layerNorm(x, w, b, 1e-5), tol: 1e-5 },
  { name: 'cross-entropy', inputs: [rand([N, 101], 12, 4), ints(N, 101, 13)], diff: 1, f: (x, t) => crossEntropy(x as tf.Tensor2D, t as tf.Tensor1D), tol: 2e-6 },
  // Distillation runs the reference top-k KL with the tensorflow cross-entropy inside.
  {
    name: 'top-k distillation with cross-entropy',
    inputs: [rand([N, 97], 15, 3), ints(N, 97, 16), { shape: [N, 5], data: Int32Array.from(ints(N * 5, 97, 17).data) }, rand([N, 5], 18, 3), rand([N], 19, 1)],
    diff: 1,
    f: (x, t, idx, tl, ln) =>
      distillationLoss(x as tf.Tensor2D, t as tf.Tensor1D, { indices: idx as tf.Tensor2D, logits: tl as tf.Tensor2D, logNormaliser: tf.add(ln, 4) as tf.Tensor1D }, { alpha: 0.3, temperature: 2, direction: 'symmetric' }),
    tol: 2e-6,
  },
  // Repeated ids: their gradients must be summed.
  { name: 'embedding lookup', inputs: [rand([19, 16], 14), { shape: [9], data: Int32Array.from([3, 0, 18, 3, 7, 7, 7, 1, 3]) }], diff: 1, f: (t, i) => gatherRows(t as tf.Tensor2D, i as tf.Tensor1D), tol: 0 },
];

/** cos/sin [T, rd] with equal halves (as the model's are) and the causal mask. */
function ropeHost(T: number, rd: number): { cos: Float32Array; sin: Float32Array; mask: Float32Array } {
  const cos = new Float32Array(T * rd);
  const sin = new Float32Array(T * rd);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < rd / 2; i++) {
      const a = t / 10000 ** ((2 * i) / rd);
      cos[t * rd + i] = cos[t * rd + i + rd / 2] = Math.cos(a);
      sin[t * rd + i] = sin[t * rd + i + rd / 2] = Math.sin(a);
    }
  }
  const mask = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) mask[i * T + j] = -1e9;
  return { cos, sin, mask };
}

/** Attention of a fused QKV [B·T, H·3·hs]: tfAttention on tensorflow, causalSelfAttention elsewhere. */
function attentionCase(B: number, T: number, H: number, hs: number, rd: number): Case {
  const { cos, sin, mask } = ropeHost(T, rd);
  const shape = { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd };
  // Kept tensors, as a model caches them: the gradient reads them after the forward pass.
  let tables: RotaryTables | undefined;
  return {
    name: `attention B${B} T${T} H${H} hs${hs} rotary ${rd}`,
    inputs: [rand([B * T, H * 3 * hs], 20 + T), { shape: [T, rd], data: cos }, { shape: [T, rd], data: sin }, { shape: [T, T], data: mask }],
    diff: 1,
    f: (x, c, s, m) => {
      if (!tensorflowKernelsActive()) return causalSelfAttention(x as tf.Tensor2D, c as tf.Tensor2D, s as tf.Tensor2D, m as tf.Tensor2D, shape);
      tables ??= rotaryTables(cos, sin, T, hs, rd);
      return tfAttention(x as tf.Tensor2D, tables, m as tf.Tensor2D, shape);
    },
    tol: 1e-5,
    after: () => {
      if (tables) tf.dispose([tables.cos, tables.sin]);
      tables = undefined;
    },
  };
}

CASES.push(attentionCase(2, 9, 3, 16, 4), attentionCase(1, 33, 2, 8, 8), attentionCase(2, 12, 2, 12, 0), attentionCase(1, 20, 4, 64, 16));

describe.skipIf(!hasTensorflow)('tensorflow ops match the reference ops on cpu', () => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const ref = await evaluate(c, 'cpu');
    const got = await evaluate(c, 'tensorflow');
    expect(ref.tfOps).toBe(false);
    expect(got.tfOps).toBe(true);
    expect(relErr(got.value, ref.value), 'value').toBeLessThanOrEqual(c.tol);
    got.grads.forEach((g, i) => expect(relErr(g, ref.grads[i]), `gradient of input ${i}`).toBeLessThanOrEqual(c.tol));
  });
});

describe.skipIf(!hasTensorflow)('tensorflow training path', () => {
  it('AdamW on resource variables matches clipByGlobalNorm + AdamW.apply, state round trip included', async () => {
    // Same-shaped small parameters share variables when they decay alike (w2/w3, the two
    // layernorm vectors); large ones (big0, big1) and the rest have their own.
    const shapes = [[33, 20], [20], [7, 5], [7, 5], [20], [300, 300], [300, 300]];
    const names = ['w0', 'layernorm.bias', 'w2', 'w3', 'layernorm.weight', 'big0', 'big1'];
    // Step 1 is clipped (large gradients), the others are not; step 2 takes the stock path (the
    // moments move out of the resources), step 3 runs after a state round trip, step 4 has no
    // gradient for w3 (it must not move) and step 5 has all again.
    const gradScale = [0.01, 5, 0.01, 0.02, 0.01, 0.01];
    const run = async (backend: 'cpu' | 'tensorflow') => {
      await useBackend(backend);
      const params = new Map(shapes.map((s, i) => [names[i], tf.tidy(() => tf.variable(tf.tensor(rand(s, 20 + i).data, s)))]));
      let opt = new AdamW({ weightDecay: 0.1 });
      const norms: number[] = [];
      for (let step = 0; step < gradScale.length; step++) {
        if (step === 3) {
          const state = await opt.stateToHost();
          opt.dispose();
          opt = new AdamW({ weightDecay: 0.1 });
          opt.loadState(state);
        }
        const grads: Record<string, tf.Tensor> = {};
        names.forEach((name, i) => {
          if (step !== 4 || name !== 'w3') grads[name] = tf.tensor(rand(shapes[i], 30 + step * 7 + i, gradScale[step]).data, shapes[i]);
        });
        setTensorflowKernels(step === 2 ? false : null);
        const norm =
          backend === 'tensorflow'
            ? opt.applyClipped(params, grads, 1e-2, 1)
            : tf.tidy(() => {
                const { grads: c, norm: nn } = clipByGlobalNorm(grads, 1);
                opt.apply(params, c, 1e-2);
                return nn;
              });
        setTensorflowKernels(null);
        norms.push((await norm.data())[0]);
        tf.dispose([norm, ...Object.values(grads)]);
      }
      const out = await Promise.all([...params.values()].map(async (p) => (await p.data()) as Float32Array));
      const state = await opt.stateToHost();
      opt.dispose();
      for (const p of params.values()) p.dispose();
      return { out, norms, state };
    };
    const ref = await run('cpu');
    await run('tensorflow');
    // The first run makes the cached constants; a second leaves nothing behind.
    const numTensors = tf.memory().numTensors;
    const got = await run('tensorflow');
    expect(tf.memory().numTensors).toBe(numTensors);
    got.out.forEach((p, i) => expect(relErr(p, ref.out[i]), names[i]).toBeLessThan(1e-5));
    got.norms.forEach((n, i) => expect(Math.abs(n - ref.norms[i]) / ref.norms[i]).toBeLessThan(1e-5));
    expect([...got.state.keys()].sort()).toEqual([...ref.state.keys()].sort());
    for (const [key, t] of ref.state) {
      if (key === 'step') expect(got.state.get(key)!.data[0]).toBe(t.data[0]);
      else expect(relErr(got.state.get(key)!.data as Float32Array, t.data as Float32Array), key).toBeLessThan(1e-5);
    }
  });

  it('a whole model: loss and every parameter gradient match the cpu backend', async () => {
    const config = tinyConfig({ vocabSize: 50, hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 128 });
    const [B, T] = [2, 70];
    const ids = ints(B * T, config.vocabSize, 70).data as Int32Array;
    const targets = ints(B * T, config.vocabSize, 71).data as Int32Array;
    const run = async (backend: 'cpu' | 'tensorflow') => {
      await useBackend(backend);
      const model = GPTNeoX.random(config, 3);
      const { value, grads } = tf.variableGrads(() => crossEntropy(model.logits2d(tf.tensor2d(ids, [B, T], 'int32')), tf.tensor1d(targets, 'int32')), model.variables());
      const byName = new Map<string, Float32Array>();
      for (const [name, v] of model.params) byName.set(name, (await grads[v.name].data()) as Float32Array);
      const loss = (await value.data())[0];
      tf.dispose([value, ...Object.values(grads)]);
      model.dispose();
      return { loss, byName };
    };
    const ref = await run('cpu');
    const got = await run('tensorflow');
    expect(Math.abs(got.loss - ref.loss)).toBeLessThan(1e-5);
    for (const [name, g] of ref.byName) expect(relErr(got.byName.get(name)!, g), name).toBeLessThan(2e-5);
  });

  it('loss curves with the tensorflow ops on and off agree over 100 steps; the tensor count stays flat', async () => {
    await useBackend('tensorflow');
    const config = tinyConfig({ vocabSize: 48, hiddenSize: 32, numLayers: 2, numHeads: 4, parallelResidual: false });
    const curve = async (on: boolean) => {
      setTensorflowKernels(on);
      const losses: number[] = [];
      const counts: number[] = [];
      const trainer = new Trainer(GPTNeoX.random(config, 7), {
        hyper: tinyHyper(100, { batchSize: 2, seqLen: 16 }),
        batches: syntheticBatches(48, 2, 16, 5),
        reportEvery: 10,
        onStep: (r) => {
          losses.push(r.loss);
          counts.push(tf.memory().numTensors);
        },
      });
      await trainer.run();
      trainer.dispose();
      setTensorflowKernels(null);
      return { losses, counts };
    };
    const stock = await curve(false);
    const ours = await curve(true);
    expect(ours.losses.length).toBe(10);
    for (let i = 0; i < ours.losses.length; i++) expect(Math.abs(ours.losses[i] - stock.losses[i]), `report ${i}`).toBeLessThan(2e-3 * Math.max(1, stock.losses[i]));
    expect(new Set(ours.counts).size).toBe(1);
    expect(ours.losses[9]).toBeLessThan(ours.losses[0] / 2);
  });

  it('resumes from a checkpoint to the weights of an uninterrupted run', async () => {
    await useBackend('tensorflow');
    const config = tinyConfig();
    const hyper = tinyHyper(12);
    const batches = syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen, 3);
    const straight = new Trainer(GPTNeoX.random(config, 11), { hyper, batches });
    await straight.run();
    const expected = await straight.model.toHost();
    straight.dispose();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-tf-resume-'));
    const first = Trainer.createOrResume(config, () => GPTNeoX.random(config, 11), { hyper, batches, checkpointDir: dir });
    await first.run(5);
    first.dispose();
    const second = Trainer.createOrResume(config, () => GPTNeoX.random(config, 999), { hyper, batches, checkpointDir: dir });
    expect(second.step).toBe(5);
    await second.run();
    const resumed = await second.model.toHost();
    second.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
    for (const [name, t] of expected) expect(relErr(resumed.get(name)!.data as Float32Array, t.data as Float32Array), name).toBeLessThan(1e-6);
  });
});
