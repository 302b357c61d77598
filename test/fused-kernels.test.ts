/**
 * The fused WebGPU kernels (core/model/webgpu) against the reference tfjs ops: every op's value and
 * gradients, computed by the fused kernels on the webgpu backend (Mesa lavapipe on CPU machines,
 * required in CI) and by the reference ops on the cpu backend from the same inputs (each op's
 * case from its file, run by core/model/webgpu/check.ts, which bench/gpu-train --check also runs
 * on the card); then a whole model's loss and gradients, the fused AdamW step, and 200 training
 * steps of the fused and unfused paths on the same data and seed.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { AdamW, GPTNeoX, Trainer, clipByGlobalNorm } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { attentionCase, setSubgroupSoftmax } from '../core/model/webgpu/attention.js';
import { randHost, relErr } from '../core/model/kernel-check.js';
import { type KernelCase, matmulCase, modelGradientCheck, runCase } from '../core/model/webgpu/check.js';
import { crossEntropyCase } from '../core/model/webgpu/cross-entropy.js';
import { fullCase, topKCase } from '../core/model/webgpu/distill.js';
import { embeddingCase } from '../core/model/webgpu/embedding.js';
import { kernel, setFusedKernels } from '../core/model/webgpu/fused.js';
import { layerNormCase } from '../core/model/webgpu/layer-norm.js';
import { linearCase, logitsCase } from '../core/model/webgpu/linear.js';
import { residualCase } from '../core/model/webgpu/residual.js';
import {
  BATCHED_TILES,
  MATMUL_TILES,
  autotuneMatMuls,
  clearMatMulTuning,
  makePlan,
  matmul,
} from '../core/model/webgpu/matmul.js';
import { allocate, dispatch, dispatchCounts, grid1d, toTensor, webgpuBackend } from '../core/model/webgpu/runtime.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { straightAndResumed, syntheticBatches, tinyConfig, tinyHyper } from './helpers/tiny.js';

const backends = await testBackends();
const hasWebGPU = backends.includes('webgpu');
// The autotuner's plan file goes to a cache of this run's own, so no earlier run's plans are found.
process.env.OFFSHOOT_CACHE = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-fused-'));

afterAll(async () => {
  setFusedKernels(null);
  await useBackend('cpu');
});

const CASES: KernelCase[] = [
  matmulCase('matrix product: vectorised, exact tiles', 128, 64, 64, false, false),
  matmulCase('matrix product: vectorised, ragged', 37, 20, 52, false, false),
  matmulCase('matrix product: scalar loads, ragged', 33, 13, 7, false, false),
  matmulCase('matrix product: A transposed', 40, 24, 36, true, false),
  matmulCase('matrix product: B transposed', 40, 24, 36, false, true),
  matmulCase('matrix product: both transposed, odd', 19, 9, 11, true, true),
  matmulCase('matrix product: split-K (long K)', 16, 2048, 12, false, false),
  matmulCase('matrix product: split-K, transposed A, ragged', 20, 1100, 28, true, false),
  linearCase(37, 20, 52, 'none'),
  linearCase(33, 13, 7, 'none'),
  linearCase(64, 128, 256, 'none'),
  linearCase(37, 20, 52, 'gelu'),
  linearCase(21, 16, 9, 'gelu'),
  // Enough rows that the bias gradient's partial sums take the many-slice sum, eight loads at a time.
  linearCase(2100, 12, 20, 'gelu'),
  logitsCase(24, 16, 1100),
  layerNormCase(29, 48),
  layerNormCase(70, 200),
  layerNormCase(5, 32),
  layerNormCase(1100, 24),
  attentionCase('flash', 2, 9, 3, 16, 4),
  attentionCase('flash', 2, 70, 3, 16, 4),
  attentionCase('flash', 1, 67, 2, 12, 12),
  attentionCase('flash', 1, 33, 2, 8, 0),
  // Head size 64 (Pythia's) is checked on the card by bench/gpu-train --check: lavapipe takes minutes to compile its unrolled kernels.
  attentionCase('flash', 1, 130, 2, 32, 8),
  attentionCase('scores', 2, 9, 3, 16, 4),
  attentionCase('scores', 2, 70, 3, 16, 4),
  attentionCase('scores', 1, 67, 2, 12, 12),
  attentionCase('scores', 1, 33, 2, 8, 0),
  // Ragged tiles on both sides of the diagonal (T 130 over 128-row tiles), then every tile exact.
  attentionCase('scores', 1, 130, 2, 32, 8),
  attentionCase('scores', 1, 256, 2, 64, 16),
  crossEntropyCase(19, 101),
  crossEntropyCase(8, 256),
  topKCase(7, 97, 5, 'forward', 0.5, 2),
  topKCase(7, 97, 5, 'reverse', 0.5, 1),
  topKCase(7, 97, 7, 'symmetric', 0.3, 1.5),
  topKCase(7, 97, 3, 'forward', 0, 1),
  topKCase(7, 97, 97, 'forward', 0.5, 1),
  fullCase(7, 97, 'forward', 0.5, 2),
  fullCase(7, 97, 'reverse', 0.5, 1),
  fullCase(7, 97, 'symmetric', 0.3, 1.5),
  fullCase(5, 300, 'forward', 0, 1),
  embeddingCase(13, 24, 40),
  residualCase(37, 20),
];

describe.skipIf(!hasWebGPU)('fused WebGPU kernels match the reference ops', () => {
  // Generous timeouts: a cold lavapipe compiles each new kernel in seconds to tens of seconds.
  it.each(CASES.map((c) => [c.name, c] as const))(
    '%s',
    async (_name, c) => {
      const r = await runCase(c, 'cpu');
      expect(r.deviceErrors, 'device errors').toEqual([]);
      expect(r.valueErr, 'value').toBeLessThan(c.tol);
      r.gradErrs.forEach((e, i) => expect(e, `gradient of input ${c.diff[i]}`).toBeLessThan(c.tol));
    },
    600_000,
  );

  it("a case whose kernel the device refuses fails with the device's message, not a stale buffer's values", async () => {
    const broken: KernelCase = {
      name: 'a kernel that does not compile',
      inputs: () => [randHost([64], 1)],
      diff: [],
      reference: ([x]) => tf.neg(x),
      fused: ([x]) => {
        const out = allocate([64]);
        const k = kernel('refused_by_the_device', 'test', () => 'fn main() { let x: u32 = 1.5; }');
        dispatch(k, [x], [out], null, grid1d(64));
        return toTensor(out);
      },
      tol: 1e-6,
    };
    const r = await runCase(broken, 'cpu');
    expect(r.ok).toBe(false);
    // The message names the kernel (its label) and what is wrong with it.
    const message = r.deviceErrors.join('\n');
    expect(message).toContain('refused_by_the_device');
    expect(message).toContain('u32');
    // The device is still good for the next case.
    const after = await runCase(matmulCase('after a refused kernel', 8, 8, 8, false, false), 'cpu');
    expect(after.ok).toBe(true);
  }, 120_000);

  // Where subgroups run (lavapipe's size is 8) the scores path's softmax takes a subgroup per row;
  // adapters whose subgroup size varies keep the workgroup-per-row kernels.
  it.each(
    [attentionCase('scores', 2, 70, 3, 16, 4), attentionCase('scores', 1, 130, 2, 32, 8)].map(
      (c) => [c.name, c] as const,
    ),
  )(
    'workgroup-per-row softmax: %s',
    async (_name, c) => {
      setSubgroupSoftmax(false);
      try {
        const r = await runCase(c, 'cpu');
        expect(r.valueErr, 'value').toBeLessThan(c.tol);
        r.gradErrs.forEach((e, i) => expect(e, `gradient of input ${c.diff[i]}`).toBeLessThan(c.tol));
      } finally {
        setSubgroupSoftmax(true);
      }
    },
    600_000,
  );

  // One ragged shape (no vector loads, no exact tiles), each tile with and without split-K; the
  // autotuner then reuses these pipelines (lavapipe compiles each variant slowly).
  const [tM, tK, tN] = [150, 1030, 70];
  it('every matrix-product tile, with and without split-K', async () => {
    const [a, b] = [randHost([tM, tK], 1), randHost([tK, tN], 2)];
    await useBackend('cpu');
    const refT = tf.matMul(tf.tensor(a.data, a.shape), tf.tensor(b.data, b.shape));
    const ref = (await refT.data()) as Float32Array;
    refT.dispose();
    await useBackend('webgpu');
    const [ta, tb] = [tf.tensor(a.data, a.shape), tf.tensor(b.data, b.shape)];
    for (const tile of Object.values(MATMUL_TILES)) {
      for (const S of [1, 3]) {
        const plan = makePlan(tile, tK, S);
        const c = toTensor(matmul({ a: ta, b: tb, M: tM, N: tN, K: tK, plan }).c);
        expect(relErr((await c.data()) as Float32Array, ref), JSON.stringify(plan)).toBeLessThan(2e-6);
        c.dispose();
      }
    }
    tf.dispose([ta, tb]);
  }, 900_000);

  // The batched causal products of the 'scores' attention, on every tile (the autotuner may pick
  // any): ragged T, triangular operands, only the wanted triangle of C compared.
  it('every tile: batched products with causal shortcuts (lowerC, lowerA, upperA)', async () => {
    const [nb, T, d] = [2, 150, 20];
    const lower = (h: ReturnType<typeof randHost>) => {
      const x = h.data.slice();
      for (let b = 0; b < nb; b++)
        for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) x[(b * T + i) * T + j] = 0;
      return { shape: h.shape, data: x };
    };
    const q = randHost([nb, T, d], 5);
    const k = randHost([nb, T, d], 6);
    const p = lower(randHost([nb, T, T], 7));
    const cases = [
      { triangle: 'lowerC', a: q, b: k, N: T, K: d, transA: false, transB: true },
      { triangle: 'lowerA', a: p, b: k, N: d, K: T, transA: false, transB: false },
      { triangle: 'upperA', a: p, b: k, N: d, K: T, transA: true, transB: false },
    ] as const;
    await useBackend('cpu');
    const refs = cases.map((c) => {
      const r = tf.matMul(
        tf.tensor3d(c.a.data, c.a.shape as [number, number, number]),
        tf.tensor3d(c.b.data, c.b.shape as [number, number, number]),
        c.transA,
        c.transB,
      );
      const out = r.dataSync() as Float32Array;
      r.dispose();
      return out;
    });
    await useBackend('webgpu');
    for (const tile of Object.values(BATCHED_TILES)) {
      for (const [i, c] of cases.entries()) {
        const [ta, tb] = [tf.tensor(c.a.data, c.a.shape), tf.tensor(c.b.data, c.b.shape)];
        const out = toTensor(
          matmul({
            a: ta,
            b: tb,
            M: T,
            N: c.N,
            K: c.K,
            transA: c.transA,
            transB: c.transB,
            batch: nb,
            triangle: c.triangle,
            plan: makePlan(tile, c.K, 1),
          }).c,
        );
        const got = (await out.data()) as Float32Array;
        const want = refs[i].slice();
        if (c.triangle === 'lowerC') {
          // Only n ≤ m is defined.
          for (let b = 0; b < nb; b++)
            for (let m = 0; m < T; m++)
              for (let n = m + 1; n < T; n++) got[(b * T + m) * T + n] = want[(b * T + m) * T + n] = 0;
        }
        expect(relErr(got, want), `${c.triangle} ${JSON.stringify(tile)}`).toBeLessThan(2e-6);
        tf.dispose([ta, tb, out]);
      }
    }
  }, 900_000);

  it('the autotuner picks a plan per shape and products stay correct', async () => {
    await useBackend('webgpu');
    clearMatMulTuning();
    const ta = tf.tensor(randHost([tM, tK], 3).data, [tM, tK]);
    const tb = tf.tensor(randHost([tK, tN], 4).data, [tK, tN]);
    const first = toTensor(matmul({ a: ta, b: tb, M: tM, N: tN, K: tK }).c);
    const before = (await first.data()) as Float32Array;
    const tuned = await autotuneMatMuls({ targetMs: 1 });
    expect(tuned.map((t) => t.shape)).toContain(`${tM}x${tN}x${tK}NN`);
    // The candidates' operands and results are destroyed, not kept in tfjs's pool for the process.
    const freeLists = [...webgpuBackend()!.bufferManager.freeBuffers.values()];
    expect(freeLists.flat().length).toBe(0);
    const again = toTensor(matmul({ a: ta, b: tb, M: tM, N: tN, K: tK }).c);
    expect(relErr((await again.data()) as Float32Array, before)).toBeLessThan(2e-6);
    tf.dispose([ta, tb, first, again]);
    clearMatMulTuning();
  }, 900_000);

  it('AdamW with global-norm clipping, fused and on the device, matches clipByGlobalNorm + AdamW.apply', async () => {
    // More tensors than one dispatch binds (sums of squares and AdamW group them), sizes across
    // several chunks and workgroups, decayed and undecayed.
    const shapes = [
      [33, 20],
      [20],
      [7, 5],
      [70, 90],
      [3],
      [257],
      [16, 16],
      [1],
      [40, 9],
      [5000],
      [11, 3],
      [64],
      [2, 2],
      [9],
      [31, 33],
      [6],
      [300],
      [4, 4, 4],
      [17],
      [128, 40],
    ];
    const run = async (backend: 'cpu' | 'webgpu') => {
      await useBackend(backend);
      setFusedKernels(backend === 'webgpu');
      const params = new Map(
        shapes.map((s, i) => [
          i === 1 ? 'layernorm.bias' : `w${i}`,
          tf.variable(tf.tensor(randHost(s, 20 + i).data, s)),
        ]),
      );
      const opt = new AdamW({ weightDecay: 0.1 });
      const norms: number[] = [];
      for (let step = 0; step < 3; step++) {
        const grads: Record<string, tf.Tensor> = {};
        [...params.keys()].forEach(
          (name, i) =>
            (grads[name] = tf.tensor(randHost(shapes[i], 30 + step * 7 + i, step === 1 ? 5 : 0.01).data, shapes[i])),
        );
        const norm =
          backend === 'webgpu'
            ? opt.applyClipped(params, grads, 1e-2, 1)
            : (() => {
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

  it('a whole model: loss and every parameter gradient match the cpu backend', async () => {
    const config = tinyConfig({ vocabSize: 50, hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 128 });
    const r = await modelGradientCheck(config, 2, 70, 'cpu');
    expect(r.lossDiff).toBeLessThan(1e-5);
    expect(r.worstGradient.err, r.worstGradient.name).toBeLessThan(2e-5);
  });

  it('training steps after the first two record from cached bind groups only', async () => {
    await useBackend('webgpu');
    setFusedKernels(true);
    const config = tinyConfig({ vocabSize: 48, hiddenSize: 32, numLayers: 2, numHeads: 4 });
    const trainer = new Trainer(GPTNeoX.random(config, 3), {
      hyper: tinyHyper(8, { batchSize: 2, seqLen: 16 }),
      batches: syntheticBatches(48, 2, 16, 5),
    });
    const losses: number[] = [];
    // As in training: the loss is read now and then, not every step.
    const step = async (read: boolean) => {
      const { loss, gradNorm } = await trainer.trainStep();
      if (read) losses.push((await loss.data())[0]);
      tf.dispose([loss, gradNorm]);
    };
    await step(true);
    await step(false);
    const before = dispatchCounts();
    for (let i = 0; i < 5; i++) await step(i === 2);
    const after = dispatchCounts();
    trainer.dispose();
    setFusedKernels(null);
    // Every step gets the same buffers from the pool, so none of its bind groups is new.
    expect(after.dispatches - before.dispatches).toBeGreaterThan(5 * 20);
    expect(after.bindGroupsCreated - before.bindGroupsCreated).toBe(0);
    expect(losses.every(Number.isFinite)).toBe(true);
  }, 600_000);

  it('resuming from a periodic checkpoint, read back while the next steps ran, gives the uninterrupted weights', async () => {
    await useBackend('webgpu');
    setFusedKernels(true);
    try {
      const config = tinyConfig({ vocabSize: 48, hiddenSize: 32, numLayers: 2, numHeads: 4 });
      const hyper = tinyHyper(6, { batchSize: 2, seqLen: 16 });
      const { expected, resumed, stoppedAt, resumedAt } = await straightAndResumed(
        config,
        hyper,
        syntheticBatches(48, 2, 16, 5),
        3,
      );
      expect([stoppedAt, resumedAt]).toEqual([3, 3]);
      // Within the order of the embedding gradient's atomic adds; a checkpoint of a later step is ~1e-3 off.
      for (const [name, t] of expected)
        expect(relErr(resumed.get(name)!.data as Float32Array, t.data as Float32Array), name).toBeLessThan(1e-5);
    } finally {
      setFusedKernels(null);
    }
  }, 600_000);

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
    for (let i = 0; i < fused.length; i++)
      expect(Math.abs(fused[i] - unfused[i]), `report ${i}`).toBeLessThan(2e-3 * Math.max(1, unfused[i]));
    // It learned (the synthetic stream is predictable).
    expect(fused[fused.length - 1]).toBeLessThan(unfused[0] / 2);
  }, 600_000);
});
