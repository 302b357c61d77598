/**
 * Parity with Hugging Face transformers, the oracle no one here wrote: logits of the committed
 * fixtures (random GPTNeoXForCausalLM models saved by transformers, test/fixtures/neox) on every
 * backend, a checkpoint written by offshoot loaded back in transformers, and training: the Trainer's
 * losses against PyTorch's (transformers' model, torch's AdamW) from the same checkpoint, data and recipe.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import {
  type Batch,
  GPTNeoX,
  loadCheckpoint,
  parameterCount,
  readSafetensors,
  saveCheckpoint,
} from '../core/model/index.js';
import { torchTrainingCurve, trainCurve } from '../core/model/curve.js';
import * as tf from '../core/model/tfjs.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { hfPython, requireHfPython } from './helpers/python.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures', 'neox');
const fixtureNames = fs
  .readdirSync(FIXTURES)
  .filter((n) => fs.existsSync(path.join(FIXTURES, n, 'reference.safetensors')));
const backends = await testBackends();

afterAll(() => useBackend('cpu'));

async function maxAbsDiff(a: tf.Tensor, b: Float32Array): Promise<number> {
  const data = await a.data();
  let m = 0;
  for (let i = 0; i < b.length; i++) m = Math.max(m, Math.abs(data[i] - b[i]));
  return m;
}

describe.each(backends)('logits match transformers on %s', (backend) => {
  it.each(fixtureNames)('%s', async (name) => {
    await useBackend(backend);
    const dir = path.join(FIXTURES, name);
    const ckpt = loadCheckpoint(dir);
    const ref = readSafetensors(path.join(dir, 'reference.safetensors')).tensors;
    const ids = ref.get('input_ids')!;
    const expected = ref.get('logits')!;
    const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, dir);
    const logits = tf.tidy(() =>
      model.logits(tf.tensor2d(ids.data as Int32Array, ids.shape as [number, number], 'int32')),
    );
    expect(logits.shape).toEqual(expected.shape);
    expect(await maxAbsDiff(logits, expected.data as Float32Array)).toBeLessThan(1e-4);
    logits.dispose();
    model.dispose();
  });
});

describe('checkpoints offshoot writes load in transformers', () => {
  // CI installs the oracle (scripts/setup-python.sh); elsewhere the round trip needs it set up first.
  const python = process.env.CI ? requireHfPython() : hfPython();

  it.skipIf(python === null).each(['float32', 'bfloat16'] as const)(
    'same logits and parameter count (%s)',
    async (dtype) => {
      await useBackend('cpu');
      const src = path.join(FIXTURES, 'odd-h48-heads3');
      const ckpt = loadCheckpoint(src);
      const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, src);
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-hf-'));
      const out = path.join(tmp, 'student');
      await saveCheckpoint(out, model.config, await model.toHost(), { dtype, requireTransformersCompatible: true });
      const ids = [
        [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43],
        [0, 96, 1, 2, 50, 50, 50, 7, 8, 9, 10, 11, 12],
      ];
      fs.writeFileSync(path.join(tmp, 'ids.json'), JSON.stringify(ids));
      const run = spawnSync(
        python!,
        [
          path.join(import.meta.dirname, 'fixtures', 'hf_logits.py'),
          '--model',
          out,
          '--ids',
          path.join(tmp, 'ids.json'),
          '--out',
          path.join(tmp, 'logits.safetensors'),
        ],
        { encoding: 'utf8' },
      );
      expect(run.status, run.stderr).toBe(0);
      expect(JSON.parse(run.stdout.trim().split('\n').pop()!).num_parameters).toBe(parameterCount(model.config));
      const theirs = readSafetensors(path.join(tmp, 'logits.safetensors')).tensors.get('logits')!;
      // Ours, from the weights as written (bf16 rounds them).
      const reloaded = loadCheckpoint(out);
      const ours = GPTNeoX.fromTensors(reloaded.config, reloaded.tensors, out);
      const logits = tf.tidy(() => ours.logits(tf.tensor2d(ids, [2, 13], 'int32')));
      expect(await maxAbsDiff(logits, theirs.data as Float32Array)).toBeLessThan(1e-4);
      tf.dispose([logits]);
      ours.dispose();
      model.dispose();
    },
  );
});

describe('training matches PyTorch', () => {
  // CI installs the oracle (scripts/setup-python.sh); elsewhere this needs it set up first.
  const python = process.env.CI ? requireHfPython() : hfPython();
  const dir = path.join(FIXTURES, 'pythia-style');
  const [steps, B, T, lr, warmup] = [30, 2, 16, 3e-3, 5];
  /** Pseudo-random tokens of the fixture's 128-id vocabulary, a different batch each step. */
  const batches = Array.from({ length: steps }, (_, step): Batch => {
    let s = (step * 2654435761 + 1) >>> 0;
    const next = () => {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      return (s >>> 9) % 128;
    };
    const input = Int32Array.from({ length: B * T }, next);
    const target = Int32Array.from({ length: B * T }, (_, i) => ((i + 1) % T === 0 ? next() : input[i + 1]));
    return { batchSize: B, seqLen: T, input, target };
  });
  let torchLosses: number[] | undefined;

  it.skipIf(python === null).each(backends)(
    `%s: ${steps} steps of the Trainer and of PyTorch (AdamW, clipping, warmup and cosine) from the same checkpoint and data: the same losses (f32)`,
    async (backend) => {
      torchLosses ??= torchTrainingCurve({
        python: python!,
        modelDir: dir,
        batches,
        lr,
        warmup,
        mode: 'f32',
        device: 'cpu',
      });
      await useBackend(backend);
      const ckpt = loadCheckpoint(dir);
      const { losses } = await trainCurve(GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, dir), batches, { lr, warmup });
      expect(losses).toHaveLength(steps);
      // The loss must really move for the comparison to mean anything.
      expect(torchLosses[0] - torchLosses[steps - 1]).toBeGreaterThan(0.3);
      const worst = Math.max(...losses.map((l, i) => Math.abs(l - torchLosses![i])));
      expect(worst, `offshoot ${losses.join(', ')}\ntorch ${torchLosses.join(', ')}`).toBeLessThan(1e-4);
    },
  );
});
