/**
 * Loss curves: a model trained under offshoot's recipe from a fixed init on fixed batches, the loss of
 * every step, and how far two such curves are apart. The on-card checks compare backends and precisions
 * this way (cuda/check.ts: cuda against webgpu f32 and PyTorch; webgpu/check.ts: mixed precision against
 * f32), and the training parity test compares offshoot with PyTorch (`torchTrainingCurve`:
 * bench/torch_training_curve.py, transformers' GPTNeoXForCausalLM with torch's AdamW, clipping and the
 * same schedule) on the CPU.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { GPTNeoX } from './gptneox.js';
import { presetConfig } from './presets.js';
import { RECIPE_DEFAULTS, trainingHyperparameters } from './recipe.js';
import { writeSafetensors } from './safetensors.js';
import { type Batch, Trainer } from './train.js';

/** The on-card curve checks' peak learning rate and warmup; the rest is the recipe's (recipe.ts). */
export const CURVE_RECIPE = { lr: 1e-3, warmup: 20 };

/**
 * How close a curve must stay to its reference in the on-card checks: the mean absolute difference over
 * the last 50 steps below 0.05 nats (the curves must not drift apart) and no step more than 0.25 apart
 * (bf16 or f16 products move single steps). On `textBatches` PyTorch's own bf16 curve ends 0.011 from its
 * f32 one (mean of the last 50 of 300 steps, CPU).
 */
export const CURVE_TOLERANCE = { meanAbsDiffLast50: 0.05, maxAbsDiff: 0.25 };

/** The on-card curve checks' model as it starts, the same for every backend and for PyTorch: a seeded Pythia-70M. */
export const curveInit = (): GPTNeoX => GPTNeoX.random(presetConfig('pythia-70m', 50304), 5);

/**
 * Natural text for the on-card curve checks: windows of the embedded State of the Union corpus's UTF-8
 * bytes (a byte a token id, so any vocabulary of 256 or more) at fixed pseudo-random offsets, one batch
 * a step. A loss curve on it falls smoothly, so correct implementations stay close: on the CPU over 300
 * steps of 8 × 128 from `curveInit`, offshoot f32 and PyTorch f32 ended 0.008 nats apart (mean of the
 * last 50 steps), PyTorch bf16 0.011 from PyTorch f32. On an arithmetic token pattern, learnt in a sudden
 * drop whose timing rounding moves, the two f32 curves ended 0.19 apart: a curve there cannot tell a bug
 * from rounding.
 */
export async function textBatches(steps: number, batchSize: number, seqLen: number): Promise<Batch[]> {
  const { loadCorpus } = await import('../data/index.js');
  const text = Buffer.from((await loadCorpus('sotu:train')).documents.join('\n\n'), 'utf8');
  if (text.length < seqLen + 2) throw new Error(`textBatches: seqLen ${seqLen} is longer than the corpus`);
  let s = 12345;
  return Array.from({ length: steps }, () => {
    const input = new Int32Array(batchSize * seqLen);
    const target = new Int32Array(batchSize * seqLen);
    for (let r = 0; r < batchSize; r++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      const offset = Math.floor((s / 2 ** 32) * (text.length - seqLen - 1));
      for (let t = 0; t < seqLen; t++) {
        input[r * seqLen + t] = text[offset + t];
        target[r * seqLen + t] = text[offset + t + 1];
      }
    }
    return { batchSize, seqLen, input, target };
  });
}

export interface LossCurve {
  /** The loss of each step, before its update. */
  losses: number[];
  /** With loss scaling (mixed precision on webgpu): the scale at the end and the steps skipped for overflow. */
  lossScale?: number;
  skippedSteps: number;
}

/**
 * Trains `model` on the active backend at the active precision, one step a batch, under offshoot's
 * recipe with the peak learning rate and warmup given; disposes it at the end.
 */
export async function trainCurve(
  model: GPTNeoX,
  batches: Batch[],
  schedule: { lr: number; warmup: number },
): Promise<LossCurve> {
  if (batches.length === 0) throw new Error('trainCurve: no batches');
  const { batchSize, seqLen } = batches[0];
  const curve: LossCurve = { losses: [], skippedSteps: 0 };
  const trainer = new Trainer(model, {
    hyper: trainingHyperparameters({ steps: batches.length, ...schedule }, { batchSize, seqLen, seed: 1 }),
    batches: (step) => batches[step],
    reportEvery: 1,
    onStep: (r) => {
      curve.losses.push(r.loss);
      if (r.lossScale !== undefined) {
        curve.lossScale = r.lossScale;
        curve.skippedSteps = r.skippedSteps ?? 0;
      }
    },
  });
  try {
    await trainer.run();
  } finally {
    trainer.dispose();
  }
  return curve;
}

export interface CurveDistance {
  /** Mean |Δloss| over the last 50 steps (all, when fewer), and the largest |Δloss| of any step. */
  meanAbsDiffLast50: number;
  maxAbsDiff: number;
}

/** How far curve `got` is from `ref`, step by step over the steps both have. */
export function curveDistance(got: number[], ref: number[]): CurveDistance {
  const diffs = got.slice(0, ref.length).map((l, i) => Math.abs(l - ref[i]));
  const tail = diffs.slice(-50);
  return { meanAbsDiffLast50: tail.reduce((a, b) => a + b, 0) / tail.length, maxAbsDiff: Math.max(...diffs) };
}

/** Whether `got` is a whole curve of `steps` losses within `CURVE_TOLERANCE` of `ref`. */
export function withinCurveTolerance(got: number[], ref: number[], steps: number): boolean {
  if (got.length !== steps || ref.length !== steps) return false;
  const d = curveDistance(got, ref);
  return d.meanAbsDiffLast50 < CURVE_TOLERANCE.meanAbsDiffLast50 && d.maxAbsDiff < CURVE_TOLERANCE.maxAbsDiff;
}

/** Every `steps / 10`-th loss and the last, for a report line. */
export function sampleCurve(losses: number[]): number[] {
  const every = Math.max(1, Math.floor(losses.length / 10));
  return losses.filter((_, i) => i % every === 0 || i === losses.length - 1).map((x) => Number(x.toFixed(4)));
}

export interface TorchCurveOptions {
  /** A Python with torch, transformers and safetensors. */
  python: string;
  /** A checkpoint folder transformers loads (saveCheckpoint with requireTransformersCompatible). */
  modelDir: string;
  /** One batch a step, all of one shape. */
  batches: Batch[];
  /** Peak learning rate and warmup steps; the rest of the recipe is RECIPE_DEFAULTS. */
  lr: number;
  warmup: number;
  mode: 'f32' | 'bf16';
  device: 'cpu' | 'cuda';
}

/** The script, beside this file's package root in the source tree and in a build (dist/). */
function script(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [2, 3].map((up) =>
    path.join(here, ...Array<string>(up).fill('..'), 'bench', 'torch_training_curve.py'),
  );
  const found = candidates.find((f) => fs.existsSync(f));
  if (!found) throw new Error(`bench/torch_training_curve.py not found (looked at ${candidates.join(', ')})`);
  return found;
}

/** The loss of each step, before its update, as PyTorch trains. */
export function torchTrainingCurve(o: TorchCurveOptions): number[] {
  if (o.batches.length === 0) throw new Error('torchTrainingCurve: no batches');
  const { batchSize: B, seqLen: T } = o.batches[0];
  if (o.batches.some((b) => b.batchSize !== B || b.seqLen !== T))
    throw new Error('torchTrainingCurve: the batches must all be of one shape');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-torch-curve-'));
  try {
    const file = path.join(tmp, 'batches.safetensors');
    const stack = (pick: (b: Batch) => Int32Array) => {
      const out = new Int32Array(o.batches.length * B * T);
      o.batches.forEach((b, i) => out.set(pick(b), i * B * T));
      return { dtype: 'I32' as const, shape: [o.batches.length, B, T], data: out };
    };
    writeSafetensors(
      file,
      new Map([
        ['input', stack((b) => b.input)],
        ['target', stack((b) => b.target)],
      ]),
    );
    const args = [
      script(),
      ...['--model', o.modelDir, '--batches', file, '--lr', String(o.lr), '--warmup', String(o.warmup)],
      ...['--weight-decay', String(RECIPE_DEFAULTS.weightDecay), '--grad-clip', String(RECIPE_DEFAULTS.gradClip)],
      ...['--min-lr-divisor', String(RECIPE_DEFAULTS.minLrDivisor), '--mode', o.mode, '--device', o.device],
    ];
    const run = spawnSync(o.python, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (run.status !== 0)
      throw new Error(
        `torch_training_curve.py failed (${run.error?.message ?? `exit ${run.status}`}): ${run.stderr.slice(-2000)}`,
      );
    const losses = JSON.parse(run.stdout.trim().split('\n').pop()!).losses as number[];
    if (losses.length !== o.batches.length)
      throw new Error(`torch_training_curve.py gave ${losses.length} losses for ${o.batches.length} steps`);
    return losses;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
