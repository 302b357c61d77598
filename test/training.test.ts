import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import {
  GPTNeoX,
  Trainer,
  clipByGlobalNorm,
  crossEntropy,
  distillationLoss,
  gatherRows,
  learningRate,
  loadCheckpoint,
  takeAlongLastAxis,
  topKFromLogits,
} from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { straightAndResumed, syntheticBatches, tinyConfig, tinyHyper } from './helpers/tiny.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-train-'));
}

describe('custom-gradient ops', () => {
  it('gatherRows matches tf.gather in value and gradient, duplicates summed', () => {
    const table = tf.randomNormal([5, 3], 0, 1, 'float32', 1);
    const ids = tf.tensor1d([0, 3, 3, 1], 'int32');
    const w = tf.randomNormal([4, 3], 0, 1, 'float32', 2);
    const ours = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(gatherRows(t as tf.Tensor2D, ids), w)))(table);
    const ref = tf.grad((t: tf.Tensor) => tf.sum(tf.mul(tf.gather(t, ids), w)))(table);
    expect(Array.from(ours.dataSync())).toEqual(Array.from(ref.dataSync()).map((x) => expect.closeTo(x, 6)));
  });

  it('crossEntropy equals −mean log-softmax at the targets, gradient softmax − one-hot', () => {
    const logits = tf.randomNormal([6, 11], 0, 2, 'float32', 3) as tf.Tensor2D;
    const targets = tf.tensor1d([0, 10, 5, 5, 2, 7], 'int32');
    const refLoss = (x: tf.Tensor) => tf.neg(tf.mean(tf.sum(tf.mul(tf.logSoftmax(x), tf.oneHot(targets, 11)), 1)));
    expect(crossEntropy(logits, targets).dataSync()[0]).toBeCloseTo(refLoss(logits).dataSync()[0], 5);
    const g1 = tf
      .grad((x: tf.Tensor) => crossEntropy(x as tf.Tensor2D, targets))(logits)
      .dataSync();
    const g2 = tf.grad(refLoss)(logits).dataSync();
    g1.forEach((v, i) => expect(v).toBeCloseTo(g2[i], 5));
  });

  it('takeAlongLastAxis gradient scatters into the picked positions', () => {
    const x = tf.randomNormal([3, 4], 0, 1, 'float32', 4) as tf.Tensor2D;
    const idx = tf.tensor2d(
      [
        [1, 2],
        [0, 0],
        [3, 1],
      ],
      [3, 2],
      'int32',
    );
    expect(Array.from(takeAlongLastAxis(x, idx).dataSync())).toEqual(
      [
        [0, 1],
        [0, 2],
        [1, 0],
        [1, 0],
        [2, 3],
        [2, 1],
      ].map(([r, c]) => x.arraySync()[r][c]),
    );
    const g = tf
      .grad((t: tf.Tensor) => tf.sum(takeAlongLastAxis(t as tf.Tensor2D, idx)))(x)
      .arraySync() as number[][];
    expect(g).toEqual([
      [0, 1, 1, 0],
      [2, 0, 0, 0],
      [0, 1, 0, 1],
    ]);
  });
});

describe('distillation losses', () => {
  const student = tf.randomNormal([5, 9], 0, 2, 'float32', 5) as tf.Tensor2D;
  const teacher = tf.randomNormal([5, 9], 0, 2, 'float32', 6) as tf.Tensor2D;
  const targets = tf.tensor1d([1, 2, 3, 4, 5], 'int32');

  for (const direction of ['forward', 'reverse', 'symmetric'] as const) {
    for (const temperature of [1, 2.5]) {
      it(`top-k with k = vocab equals the full-logit loss (${direction}, T=${temperature})`, () => {
        const options = { alpha: 0.3, temperature, direction };
        const full = distillationLoss(student, targets, teacher, options).dataSync()[0];
        const top = distillationLoss(student, targets, topKFromLogits(teacher, 9, temperature), options).dataSync()[0];
        expect(top).toBeCloseTo(full, 4);
        const gFull = tf
          .grad((s: tf.Tensor) => distillationLoss(s as tf.Tensor2D, targets, teacher, options))(student)
          .dataSync();
        const gTop = tf
          .grad((s: tf.Tensor) =>
            distillationLoss(s as tf.Tensor2D, targets, topKFromLogits(teacher, 9, temperature), options),
          )(student)
          .dataSync();
        gFull.forEach((v, i) => expect(gTop[i]).toBeCloseTo(v, 4));
      });
    }
  }

  it('forward KL of a distribution with itself is zero; alpha 1 is plain cross-entropy', () => {
    const kl = distillationLoss(teacher, targets, teacher, {
      alpha: 0,
      temperature: 2,
      direction: 'forward',
    }).dataSync()[0];
    expect(Math.abs(kl)).toBeLessThan(1e-5);
    const ce = distillationLoss(student, targets, teacher, {
      alpha: 1,
      temperature: 2,
      direction: 'forward',
    }).dataSync()[0];
    expect(ce).toBeCloseTo(crossEntropy(student, targets).dataSync()[0], 6);
  });

  it('top-k with a small k is still a proper, non-negative KL', () => {
    const v = distillationLoss(student, targets, topKFromLogits(teacher, 3), {
      alpha: 0,
      temperature: 1,
      direction: 'forward',
    }).dataSync()[0];
    expect(v).toBeGreaterThanOrEqual(0);
  });
});

describe('optimiser primitives', () => {
  it('warmup then cosine decay', () => {
    const s = { maxLr: 1, minLr: 0.1, warmupSteps: 10, totalSteps: 110 };
    expect(learningRate(0, s)).toBeCloseTo(0.1);
    expect(learningRate(9, s)).toBeCloseTo(1);
    expect(learningRate(60, s)).toBeCloseTo(0.55);
    expect(learningRate(110, s)).toBeCloseTo(0.1);
    expect(learningRate(500, s)).toBeCloseTo(0.1);
  });

  it('clips to the global norm', () => {
    const { grads, norm } = clipByGlobalNorm({ a: tf.tensor1d([3, 0]), b: tf.tensor1d([4]) }, 1);
    expect(norm.dataSync()[0]).toBeCloseTo(5);
    expect(Array.from(grads.a.dataSync())).toEqual([expect.closeTo(0.6, 5), 0]);
    expect(grads.b.dataSync()[0]).toBeCloseTo(0.8, 5);
  });
});

describe('training loop', () => {
  it('trains 50 steps without growing the tensor count, and the loss falls', async () => {
    const config = tinyConfig();
    const losses: number[] = [];
    const counts: number[] = [];
    const trainer = new Trainer(GPTNeoX.random(config, 7), {
      hyper: tinyHyper(50, { batchSize: 4, seqLen: 16 }),
      batches: syntheticBatches(config.vocabSize, 4, 16),
      onStep: (r) => {
        losses.push(r.loss);
        counts.push(tf.memory().numTensors);
      },
    });
    await trainer.run();
    expect(counts.length).toBe(50);
    // The first step creates the optimiser slots and rotary caches; after that nothing may accumulate.
    expect(new Set(counts.slice(1)).size).toBe(1);
    expect(losses[49]).toBeLessThan(losses[0] * 0.7);
    trainer.dispose();
  });

  it('resuming from a periodic checkpoint, written while training went on, gives bit-identical weights to an uninterrupted run', async () => {
    const config = tinyConfig({ parallelResidual: false });
    const hyper = tinyHyper(12);
    const batches = syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen, 3);
    const { expected, resumed, stoppedAt, resumedAt } = await straightAndResumed(config, hyper, batches, 5);
    expect(stoppedAt).toBe(5);
    expect(resumedAt).toBe(5);
    for (const [name, t] of expected) {
      expect(Buffer.from(resumed.get(name)!.data.buffer).equals(Buffer.from(t.data.buffer)), name).toBe(true);
    }
  });

  it('refuses to resume with different hyperparameters', async () => {
    const config = tinyConfig();
    const dir = tmpDir();
    const hyper = tinyHyper(3);
    const batches = syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen);
    const t = Trainer.createOrResume(config, () => GPTNeoX.random(config, 1), { hyper, batches, checkpointDir: dir });
    await t.run(1);
    t.dispose();
    expect(() =>
      Trainer.createOrResume(config, () => GPTNeoX.random(config, 1), {
        hyper: { ...hyper, seed: 2 },
        batches,
        checkpointDir: dir,
      }),
    ).toThrow(/different hyperparameters \(seed 1 vs 2\)/);
  });

  it('refuses a batch with a token id outside the vocabulary, naming the step and position', async () => {
    const config = tinyConfig();
    const hyper = tinyHyper(2);
    const good = syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen);
    const withId = (field: 'input' | 'target', id: number) => (step: number) => {
      const b = good(step);
      const bad = { ...b, [field]: b[field].slice() };
      if (step === 1) bad[field][5] = id;
      return bad;
    };
    for (const [field, id] of [
      ['input', config.vocabSize],
      ['target', -1],
    ] as const) {
      const t = new Trainer(GPTNeoX.random(config, 1), { hyper, batches: withId(field, id) });
      await t.trainStep();
      await expect(t.trainStep()).rejects.toThrow(
        `batch for step 1, ${field}: token id ${id} at position 5 is outside the vocabulary [0, ${config.vocabSize})`,
      );
      t.dispose();
    }
  });

  it('stops at a step boundary when aborted and checkpoints there', async () => {
    const config = tinyConfig();
    const dir = tmpDir();
    const controller = new AbortController();
    const hyper = tinyHyper(20);
    const t = new Trainer(GPTNeoX.random(config, 1), {
      hyper,
      batches: syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen),
      checkpointDir: dir,
      onStep: (r) => {
        if (r.step === 4) controller.abort();
      },
      signal: controller.signal,
    });
    const result = await t.run();
    t.dispose();
    expect(result).toMatchObject({ step: 4, stopped: true });
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'trainer_state.json'), 'utf8')).step).toBe(4);
  });

  it('writes periodic checkpoints on the writer thread while training goes on: in order, each whole and resumable', async () => {
    const config = tinyConfig();
    const dir = tmpDir();
    const hyper = tinyHyper(6);
    const batches = syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen);
    const saved: { step: number; hash: string; onDisk: number }[] = [];
    const t = new Trainer(GPTNeoX.random(config, 1), {
      hyper,
      batches,
      checkpointDir: dir,
      checkpointEvery: 2,
      onCheckpoint: (c) =>
        saved.push({
          step: c.step,
          hash: c.hash,
          onDisk: JSON.parse(fs.readFileSync(path.join(dir, 'trainer_state.json'), 'utf8')).step,
        }),
    });
    const result = await t.run();
    // Reported once in place, each before the next starts; the last is the run's own final save.
    expect(saved.map((c) => [c.step, c.onDisk])).toEqual([
      [2, 2],
      [4, 4],
      [6, 6],
    ]);
    expect(result.checkpointHash).toBe(saved[2].hash);
    expect(loadCheckpoint(dir).hash).toBe(saved[2].hash);
    // The thread's checkpoint is the one saveCheckpoint writes for the same state.
    const again = path.join(tmpDir(), 'again');
    expect(await t.saveCheckpoint(again)).toBe(saved[2].hash);
    t.dispose();
  });

  it("a periodic checkpoint that cannot be written stops the run with the writer's error", async () => {
    const config = tinyConfig();
    const file = path.join(tmpDir(), 'a-file');
    fs.writeFileSync(file, 'not a folder');
    const hyper = tinyHyper(6);
    const t = new Trainer(GPTNeoX.random(config, 1), {
      hyper,
      batches: syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen),
      checkpointDir: path.join(file, 'checkpoint'),
      checkpointEvery: 2,
    });
    await expect(t.run()).rejects.toThrow(
      /the checkpoint of step 2 could not be written to .*a-file.checkpoint: (EEXIST|ENOTDIR)/,
    );
    expect(t.step).toBeLessThan(6);
    t.dispose();
  });
});
