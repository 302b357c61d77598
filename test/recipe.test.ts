/**
 * One training recipe: teacher training (core/teacher), fitness evaluation (core/subnet) and a
 * pretraining segment (the pretrain worker's trainSegment activity, run in Temporal's activity test
 * environment) train with the same optimiser and schedule when given the same recipe. Each is run for
 * real on a tiny model (cpu backend, bit for bit) and compared with a Trainer built straight from
 * `trainingHyperparameters`: same weights, same validation loss, same saved hyperparameters.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { evalBatches, sampleBatch } from '../core/data/index.js';
import { initBackend } from '../core/model/backend.js';
import {
  GPTNeoX,
  type HostTensor,
  RECIPE_DEFAULTS,
  type TrainHyperparameters,
  Trainer,
  type TrainingRecipe,
  evaluateLoss,
  learningRate,
  loadCheckpoint,
  readTrainerState,
  recipeOptimizer,
  trainingHyperparameters,
} from '../core/model/index.js';
import {
  type FitnessContext,
  createFitnessContext,
  disposeFitnessContext,
  evaluateFitness,
} from '../core/subnet/index.js';
import { trainTeacher } from '../core/teacher/index.js';
import { localEnv } from '../services/orchestration/index.js';
import { createPretrainActivities } from '../services/pretrain/index.js';
import type {
  PrepareStudentInput,
  PretrainHyper,
  StudentRef,
  TeacherRef,
  TrainSegmentInput,
  TrainSegmentOutput,
} from '../workflows/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-recipe-'));
const tokenCache = path.join(tmp, 'cache', 'tokens');
const tokenizer = path.join(import.meta.dirname, 'fixtures', 'tokenizer', 'offshoot-bpe512', 'tokenizer.json');
const teacherDir = path.join(tmp, 'teacher');

/** The recipe all three are given, and the batches of the run. */
const RECIPE: TrainingRecipe = { steps: 6, lr: 2e-2, warmup: 2 };
const SHAPE = { batchSize: 2, seqLen: 16, seed: 3 };
const EVAL = { seqLen: SHAPE.seqLen, batchSize: SHAPE.batchSize, maxTokens: 256 };
const FULL_TINY = { layers: 2, embedding: 32, heads: 4, mlp: 128 };

let ctx: FitnessContext;
let teacherWeights: Map<string, HostTensor>;

/** A Trainer built straight from the recipe, from `initial`, on the run's batches: its weights after training. */
async function trainedByRecipe(
  initial: GPTNeoX,
  hyper: TrainHyperparameters = trainingHyperparameters(RECIPE, SHAPE),
): Promise<GPTNeoX> {
  const trainer = new Trainer(initial, { hyper, batches: (step) => sampleBatch(ctx.train, { ...SHAPE, step }) });
  await trainer.run();
  trainer.optimizer.dispose();
  return trainer.model;
}

function expectSameWeights(actual: Map<string, HostTensor>, expected: Map<string, HostTensor>): void {
  expect([...actual.keys()].sort()).toEqual([...expected.keys()].sort());
  for (const [name, t] of expected) expect(actual.get(name)!.data, name).toEqual(t.data);
}

beforeAll(async () => {
  await initBackend('cpu', () => {});
  process.env.OFFSHOOT_CACHE = path.join(tmp, 'cache');
  // The teacher: trained by core/teacher with the recipe, from a random model of the tiny preset.
  await trainTeacher({
    preset: 'tiny',
    vocab: 512,
    tokenizer,
    data: 'sotu:train',
    val: 'sotu:val',
    out: teacherDir,
    tokenCache,
    steps: RECIPE.steps,
    lr: RECIPE.lr,
    warmup: RECIPE.warmup,
    ...SHAPE,
    evalTokens: 256,
  });
  ctx = await createFitnessContext(teacherDir, { tokenCache });
  teacherWeights = loadCheckpoint(teacherDir).tensors;
}, 120_000);

afterAll(() => {
  if (ctx) disposeFitnessContext(ctx);
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('the training recipe', () => {
  it('has documented defaults: AdamW weight decay 0.1, clipping at 1, cosine to a tenth after warmup', () => {
    expect(RECIPE_DEFAULTS).toEqual({ minLrDivisor: 10, weightDecay: 0.1, gradClip: 1 });
    const o = recipeOptimizer({ steps: 100, lr: 3e-3, warmup: 10 });
    expect(o).toEqual({
      schedule: { maxLr: 3e-3, minLr: 3e-3 / 10, warmupSteps: 10, totalSteps: 100 },
      adamw: { weightDecay: 0.1 },
      gradClip: 1,
    });
    expect(learningRate(9, o.schedule)).toBeCloseTo(3e-3, 12);
    expect(learningRate(100, o.schedule)).toBeCloseTo(3e-4, 12);
    // Warmup longer than the run is capped at the run.
    expect(recipeOptimizer({ steps: 5, lr: 1, warmup: 20 }).schedule.warmupSteps).toBe(5);
  });

  it('names the field and value of a bad recipe', () => {
    expect(() => recipeOptimizer({ steps: 0, lr: 1, warmup: 0 })).toThrow(
      'training recipe: steps must be a positive integer, got 0',
    );
    expect(() => recipeOptimizer({ steps: 5, lr: -1, warmup: 0 })).toThrow(
      'training recipe: lr must be a positive number, got -1',
    );
    expect(() => recipeOptimizer({ steps: 5, lr: 1, warmup: 1.5 })).toThrow(
      'training recipe: warmup must be a non-negative integer, got 1.5',
    );
    expect(() => recipeOptimizer({ steps: 5, lr: 1, warmup: 0, gradClip: 0 })).toThrow(
      'training recipe: gradClip must be a positive number, got 0',
    );
    expect(() => trainingHyperparameters({ steps: 5, lr: 1, warmup: 0 }, { ...SHAPE, seqLen: -2 })).toThrow(
      'training recipe: seqLen must be a positive integer, got -2',
    );
  });

  it('teacher training builds its optimiser and schedule from it', async () => {
    expect(readTrainerState(teacherDir)!.hyper).toEqual(trainingHyperparameters(RECIPE, SHAPE));
    const reference = await trainedByRecipe(GPTNeoX.random(ctx.checkpoint.config, SHAPE.seed));
    expectSameWeights(teacherWeights, await reference.toHost());
    reference.dispose();
  });

  it('fitness evaluation builds the same optimiser and schedule from it', async () => {
    const lrs: number[] = [];
    const metrics = await evaluateFitness(
      {
        teacher: teacherDir,
        spec: FULL_TINY,
        budget: {
          kind: 'brief',
          steps: RECIPE.steps,
          lr: RECIPE.lr,
          warmup: RECIPE.warmup,
          batchSize: SHAPE.batchSize,
          seqLen: SHAPE.seqLen,
          loss: 'ce',
          evalTokens: EVAL.maxTokens,
        },
        seed: SHAPE.seed,
      },
      { ...ctx, onStep: (r) => lrs.push(r.lr) },
    );
    const hyper = trainingHyperparameters(RECIPE, SHAPE);
    expect(lrs).toEqual(Array.from({ length: RECIPE.steps }, (_, step) => learningRate(step, hyper.schedule)));
    const reference = await trainedByRecipe(GPTNeoX.fromTensors(ctx.checkpoint.config, teacherWeights, 'teacher'));
    expect(metrics.valLoss).toBe((await evaluateLoss(reference, evalBatches(ctx.val, EVAL))).loss);
    // The comparison sees a drift: without weight decay the same run ends elsewhere.
    const drifted = await trainedByRecipe(
      GPTNeoX.fromTensors(ctx.checkpoint.config, teacherWeights, 'teacher'),
      trainingHyperparameters({ ...RECIPE, weightDecay: 0 }, SHAPE),
    );
    expect((await evaluateLoss(drifted, evalBatches(ctx.val, EVAL))).loss).not.toBe(metrics.valLoss);
    reference.dispose();
    drifted.dispose();
  });

  it('a pretraining segment builds the same optimiser and schedule from it', async () => {
    const activities = createPretrainActivities(localEnv({ log: () => undefined }));
    const run = { runId: 'recipe', dir: path.join(tmp, 'run') };
    const teacher: TeacherRef = {
      dir: teacherDir,
      hash: ctx.checkpoint.hash,
      config: ctx.checkpoint.config,
      parameters: 0,
    };
    const data = { train: 'sotu:train', val: 'sotu:val', tokenizer };
    const hyper: PretrainHyper = { steps: RECIPE.steps, lr: RECIPE.lr, warmup: RECIPE.warmup, ...SHAPE, distill: null };
    const env = new MockActivityEnvironment();
    const prepare: PrepareStudentInput = {
      run,
      name: 'student',
      init: { kind: 'subnet', spec: FULL_TINY, order: 'first-k', layers: 'first' },
      teacher,
      hyper,
      data,
    };
    const student = (await env.run(activities.prepareStudent, prepare)) as StudentRef;
    const segment: TrainSegmentInput = {
      run,
      name: 'student',
      from: student.checkpoint,
      toStep: RECIPE.steps,
      teacher,
      data,
      hyper,
      checkpointEvery: RECIPE.steps,
      evalEvery: RECIPE.steps,
      evalTokens: EVAL.maxTokens,
    };
    const out = (await env.run(activities.trainSegment, segment)) as TrainSegmentOutput;
    expect(out.step).toBe(RECIPE.steps);
    expect(readTrainerState(out.checkpoint.dir)!.hyper).toEqual(trainingHyperparameters(RECIPE, SHAPE));
    const reference = await trainedByRecipe(GPTNeoX.fromTensors(ctx.checkpoint.config, teacherWeights, 'teacher'));
    expectSameWeights(loadCheckpoint(out.checkpoint.dir).tensors, await reference.toHost());
    reference.dispose();
  });
});
