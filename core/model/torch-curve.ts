/**
 * PyTorch's loss curve under offshoot's recipe (bench/torch_training_curve.py: transformers'
 * GPTNeoXForCausalLM with torch's AdamW, clipping and the same schedule) from a checkpoint folder and
 * the batches of each step: the oracle that the training parity test (f32 on the CPU) and the cuda
 * backend's curve check (f32 and bf16 autocast on the card) compare offshoot's training with.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { RECIPE_DEFAULTS } from './recipe.js';
import { writeSafetensors } from './safetensors.js';
import type { Batch } from './train.js';

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
