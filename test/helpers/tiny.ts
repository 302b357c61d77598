/** Tiny models and synthetic batches for tests that need a model but not real data. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  type Batch,
  GPTNeoX,
  type NeoXConfig,
  type TrainHyperparameters,
  Trainer,
  runRepeatedPass,
  topKFromLogits,
  uniformConfig,
} from '../../core/model/index.js';
import * as tf from '../../core/model/tfjs.js';

export function tinyConfig(overrides: Partial<Parameters<typeof uniformConfig>[0]> = {}): NeoXConfig {
  return uniformConfig({ vocabSize: 48, hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 64, ...overrides });
}

/** A learnable synthetic stream: each token is followed by (token + 1) mod vocab; the start depends on (seed, step, row). */
export function syntheticBatches(vocab: number, batchSize: number, seqLen: number, seed = 0): (step: number) => Batch {
  return (step) => {
    const input = new Int32Array(batchSize * seqLen);
    const target = new Int32Array(batchSize * seqLen);
    for (let b = 0; b < batchSize; b++) {
      const start = (seed * 31 + step * 17 + b * 7) % vocab;
      for (let t = 0; t < seqLen; t++) {
        input[b * seqLen + t] = (start + t) % vocab;
        target[b * seqLen + t] = (start + t + 1) % vocab;
      }
    }
    return { batchSize, seqLen, input, target };
  };
}

export function tinyHyper(steps: number, overrides: Partial<TrainHyperparameters> = {}): TrainHyperparameters {
  return {
    steps,
    batchSize: 2,
    seqLen: 8,
    schedule: { maxLr: 3e-3, minLr: 3e-4, warmupSteps: 2, totalSteps: steps },
    adamw: {},
    gradClip: 1,
    seed: 1,
    ...overrides,
  };
}

/**
 * The weights after `hyper.steps` steps trained straight through, and after resuming by a fresh
 * Trainer (from a differently initialised model) from the periodic checkpoint of step `stopAt`
 * that the straight run wrote in the background while it trained on, as a kill -9 after that
 * checkpoint leaves it; on the active backend, with the steps the checkpoint held and the resumed
 * trainer started from.
 */
export async function straightAndResumed(
  config: NeoXConfig,
  hyper: TrainHyperparameters,
  batches: (step: number) => Batch,
  stopAt: number,
) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-resume-'));
  const dir = path.join(root, 'checkpoint');
  const kept = path.join(root, `checkpoint-${stopAt}`);
  try {
    const straight = new Trainer(GPTNeoX.random(config, 11), {
      hyper,
      batches,
      checkpointDir: dir,
      checkpointEvery: stopAt,
      // The next periodic checkpoint starts only after this one is reported: the folder holds it now.
      onCheckpoint: (c) => {
        if (c.step === stopAt) fs.cpSync(dir, kept, { recursive: true });
      },
    });
    await straight.run();
    const expected = await straight.model.toHost();
    straight.dispose();
    const stoppedAt = JSON.parse(fs.readFileSync(path.join(kept, 'trainer_state.json'), 'utf8')).step as number;
    const second = Trainer.createOrResume(config, () => GPTNeoX.random(config, 999), {
      hyper,
      batches,
      checkpointDir: kept,
    });
    const resumedAt = second.step;
    await second.run();
    const resumed = await second.model.toHost();
    second.dispose();
    return { expected, resumed, stoppedAt, resumedAt };
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/**
 * Runs a teacher's forward pass and top-k over `tokens` (`rows` rows) as the teacher service does, a
 * pass a backend may replay (ops/step.ts runRepeatedPass); its logits, indices and log-normalisers.
 */
async function teacherTopKPass(model: GPTNeoX, tokens: Int32Array, rows: number, k: number): Promise<number[][]> {
  const outs = runRepeatedPass({
    key: 'teacher top-k',
    inputs: [{ shape: [rows, tokens.length / rows], dtype: 'int32', data: tokens }],
    state: model.variables(),
    body: ([t]) => {
      const top = topKFromLogits(model.logits2d(t as tf.Tensor2D), k, 1);
      return [top.logits, top.indices, top.logNormaliser];
    },
  });
  const data = await Promise.all(outs.map((o) => o.data()));
  tf.dispose(outs);
  return data.map((d) => Array.from(d));
}

/**
 * Six teacher passes (teacherTopKPass) alternating two token sets, their answers in order: the
 * first two run eagerly, the third is recorded (or captured) and the rest replayed, so each later
 * answer must equal the first of its token set.
 */
export async function alternatingTeacherPasses(
  model: GPTNeoX,
  rows: number,
  seqLen: number,
  k: number,
): Promise<number[][][]> {
  const tokens = [3, 5].map((m) => Int32Array.from({ length: rows * seqLen }, (_, i) => (i * m + 1) % 256));
  const answers: number[][][] = [];
  for (let i = 0; i < 6; i++) answers.push(await teacherTopKPass(model, tokens[i % 2], rows, k));
  return answers;
}
