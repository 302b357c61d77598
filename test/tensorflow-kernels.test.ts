/**
 * The tensorflow backend's own ops (core/model/tensorflow) against the reference tfjs ops: every
 * op's value and gradients, computed by the TensorFlow ops on the `tensorflow` backend and by the
 * reference ops on the cpu backend from the same inputs; then a whole model's loss and gradients,
 * the ResourceApplyAdam AdamW against clipByGlobalNorm + AdamW.apply (state round trip included),
 * and training on the tensorflow backend with these ops on and off. Skipped where the tensorflow
 * backend does not load (required in CI with OFFSHOOT_REQUIRE_TENSORFLOW=1).
 */
import { afterAll, describe, expect, it } from 'vitest';

import {
  AdamW,
  GPTNeoX,
  PositionTables,
  Trainer,
  causalSelfAttention,
  clipByGlobalNorm,
  crossEntropy,
  distillationLoss,
  gatherRows,
  layerNorm,
  linear,
  matMulNT,
} from '../core/model/index.js';
import { setTensorflowKernels } from '../core/model/tensorflow/native.js';
import * as tf from '../core/model/tfjs.js';
import { type Host, randHost, relErr, ropeTables } from '../core/model/kernel-check.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { straightAndResumed, syntheticBatches, tinyConfig, tinyHyper } from './helpers/tiny.js';

const backends = await testBackends();
const hasTensorflow = backends.includes('tensorflow');

afterAll(async () => {
  setTensorflowKernels(null);
  await useBackend('cpu');
});

function ints(n: number, max: number, seed: number): Host {
  const r = randHost([n], seed);
  return { shape: [n], data: Int32Array.from(r.data, (x) => Math.floor(((x + 1) / 2) * max)) };
}

interface Case {
  name: string;
  /** Inputs; the first `diff` are differentiated (float32), the rest are int32 or constants. */
  inputs: Host[];
  diff: number;
  f: (...xs: tf.Tensor[]) => tf.Tensor;
  /** The backend of the kernel f's operation runs with these inputs (null: the reference). */
  kernel: (...xs: tf.Tensor[]) => { backend: string } | null;
  tol: number;
  /** Frees what f kept for the gradient. */
  after?: () => void;
}

/** Value and gradients (under a random upstream gradient) of a case on a backend. */
async function evaluate(
  c: Case,
  backend: 'cpu' | 'tensorflow',
): Promise<{ value: Float32Array; grads: Float32Array[]; kernel: string }> {
  await useBackend(backend);
  const xs = c.inputs.map((h) => tf.tensor(h.data, h.shape, h.data instanceof Int32Array ? 'int32' : 'float32'));
  const rest = xs.slice(c.diff);
  const fn = (...d: tf.Tensor[]) => c.f(...d, ...rest);
  const value = tf.tidy(() => fn(...xs.slice(0, c.diff)));
  const dy = tf.tensor(randHost(value.shape, 99).data, value.shape);
  const grads = tf.grads(fn)(xs.slice(0, c.diff), dy);
  const out = {
    value: (await value.data()) as Float32Array,
    grads: await Promise.all(grads.map(async (g) => (await g.data()) as Float32Array)),
    kernel: c.kernel(...xs)?.backend ?? 'reference',
  };
  tf.dispose([...xs, value, dy, ...grads]);
  c.after?.();
  return out;
}

const [N, IN, OUT] = [37, 24, 52];
const t2 = (x: tf.Tensor) => x as tf.Tensor2D;
const t1 = (x: tf.Tensor) => x as tf.Tensor1D;
const CASES: Case[] = [
  {
    name: 'linear',
    inputs: [randHost([N, IN], 1), randHost([OUT, IN], 2, 0.3), randHost([OUT], 3)],
    diff: 3,
    f: (x, w, b) => linear(t2(x), t2(w), t1(b)),
    kernel: (x, w, b) => linear.kernelFor(t2(x), t2(w), t1(b)),
    tol: 2e-6,
  },
  {
    name: 'linear + GELU',
    inputs: [randHost([N, IN], 4, 2), randHost([OUT, IN], 5, 0.5), randHost([OUT], 6)],
    diff: 3,
    f: (x, w, b) => linear(t2(x), t2(w), t1(b), 'gelu'),
    kernel: (x, w, b) => linear.kernelFor(t2(x), t2(w), t1(b), 'gelu'),
    tol: 2e-6,
  },
  {
    name: 'logits product',
    inputs: [randHost([N, IN], 7), randHost([101, IN], 8)],
    diff: 2,
    f: (x, w) => matMulNT(t2(x), t2(w)),
    kernel: (x, w) => matMulNT.kernelFor(t2(x), t2(w)),
    tol: 2e-6,
  },
  {
    name: 'LayerNorm',
    inputs: [randHost([N, 48], 9, 3), randHost([48], 10), randHost([48], 11)],
    diff: 3,
    f: (x, w, b) => layerNorm(x, w, b, 1e-5),
    kernel: (x, w, b) => layerNorm.kernelFor(x, w, b, 1e-5),
    tol: 1e-5,
  },
  {
    name: 'cross-entropy',
    inputs: [randHost([N, 101], 12, 4), ints(N, 101, 13)],
    diff: 1,
    f: (x, t) => crossEntropy(t2(x), t1(t)),
    kernel: (x, t) => crossEntropy.kernelFor(t2(x), t1(t)),
    tol: 2e-6,
  },
  // Distillation runs the reference top-k KL with the tensorflow cross-entropy inside.
  {
    name: 'top-k distillation with cross-entropy',
    inputs: [
      randHost([N, 97], 15, 3),
      ints(N, 97, 16),
      { shape: [N, 5], data: Int32Array.from(ints(N * 5, 97, 17).data) },
      randHost([N, 5], 18, 3),
      randHost([N], 19, 1),
    ],
    diff: 1,
    f: (x, t, idx, tl, ln) =>
      distillationLoss(
        t2(x),
        t1(t),
        { indices: t2(idx), logits: t2(tl), logNormaliser: tf.add(ln, 4) as tf.Tensor1D },
        { alpha: 0.3, temperature: 2, direction: 'symmetric' },
      ),
    kernel: (x, t) => crossEntropy.kernelFor(t2(x), t1(t)),
    tol: 2e-6,
  },
  // Repeated ids: their gradients must be summed.
  {
    name: 'embedding lookup',
    inputs: [randHost([19, 16], 14), { shape: [9], data: Int32Array.from([3, 0, 18, 3, 7, 7, 7, 1, 3]) }],
    diff: 1,
    f: (t, i) => gatherRows(t2(t), t1(i)),
    kernel: (t, i) => gatherRows.kernelFor(t2(t), t1(i)),
    tol: 0,
  },
];

/** Attention of a fused QKV [B·T, H·3·hs]. */
function attentionCase(B: number, T: number, H: number, hs: number, rd: number): Case {
  const rope = ropeTables(T, rd);
  const shape = { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd };
  // One per evaluation, as a model keeps one per length: the tensorflow kernel derives its tables
  // from it once, and the gradient reads them after the forward pass.
  let positions: PositionTables | undefined;
  return {
    name: `attention B${B} T${T} H${H} hs${hs} rotary ${rd}`,
    inputs: [randHost([B * T, H * 3 * hs], 20 + T), rope.cos, rope.sin, rope.mask],
    diff: 1,
    f: (x, c, s, m) => causalSelfAttention(t2(x), (positions ??= new PositionTables(t2(c), t2(s), t2(m))), shape),
    kernel: (x, c, s, m) => causalSelfAttention.kernelFor(t2(x), new PositionTables(t2(c), t2(s), t2(m)), shape),
    tol: 1e-5,
    after: () => {
      positions?.dispose();
      positions = undefined;
    },
  };
}

CASES.push(
  attentionCase(2, 9, 3, 16, 4),
  attentionCase(1, 33, 2, 8, 8),
  attentionCase(2, 12, 2, 12, 0),
  attentionCase(1, 20, 4, 64, 16),
);

describe.skipIf(!hasTensorflow)('tensorflow ops match the reference ops on cpu', () => {
  it.each(CASES.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const ref = await evaluate(c, 'cpu');
    const got = await evaluate(c, 'tensorflow');
    expect(ref.kernel).toBe('reference');
    expect(got.kernel).toBe('tensorflow');
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
      const params = new Map(
        shapes.map((s, i) => [names[i], tf.tidy(() => tf.variable(tf.tensor(randHost(s, 20 + i).data, s)))]),
      );
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
          if (step !== 4 || name !== 'w3')
            grads[name] = tf.tensor(randHost(shapes[i], 30 + step * 7 + i, gradScale[step]).data, shapes[i]);
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
      const { value, grads } = tf.variableGrads(
        () => crossEntropy(model.logits2d(tf.tensor2d(ids, [B, T], 'int32')), tf.tensor1d(targets, 'int32')),
        model.variables(),
      );
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
    for (let i = 0; i < ours.losses.length; i++)
      expect(Math.abs(ours.losses[i] - stock.losses[i]), `report ${i}`).toBeLessThan(
        2e-3 * Math.max(1, stock.losses[i]),
      );
    expect(new Set(ours.counts).size).toBe(1);
    expect(ours.losses[9]).toBeLessThan(ours.losses[0] / 2);
  });

  it('resumes from a periodic checkpoint to the weights of an uninterrupted run', async () => {
    await useBackend('tensorflow');
    const config = tinyConfig();
    const hyper = tinyHyper(12);
    const batches = syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen, 3);
    const { expected, resumed, resumedAt } = await straightAndResumed(config, hyper, batches, 5);
    expect(resumedAt).toBe(5);
    for (const [name, t] of expected)
      expect(relErr(resumed.get(name)!.data as Float32Array, t.data as Float32Array), name).toBeLessThan(1e-6);
  });
});
