/**
 * The loss-curve comparison behind the on-card curve checks (core/model/curve.ts): the natural-text
 * batches both checks and PyTorch train on, the distance and tolerance between two curves, and
 * `trainCurve` (the recipe's Trainer, one step a batch) on the cpu backend.
 */
import { describe, expect, it } from 'vitest';

import { initBackend } from '../core/model/backend.js';
import {
  CURVE_TOLERANCE,
  curveDistance,
  sampleCurve,
  textBatches,
  trainCurve,
  withinCurveTolerance,
} from '../core/model/curve.js';
import { GPTNeoX } from '../core/model/index.js';
import { tinyConfig } from './helpers/tiny.js';

describe('textBatches', () => {
  it('gives the corpus bytes as tokens, each target the next byte, a different window each row and step, the same every call', async () => {
    const batches = await textBatches(3, 4, 32);
    expect(batches).toHaveLength(3);
    const rows = new Set<string>();
    for (const b of batches) {
      expect([b.batchSize, b.seqLen, b.input.length, b.target.length]).toEqual([4, 32, 128, 128]);
      for (let r = 0; r < 4; r++) {
        const input = b.input.subarray(r * 32, (r + 1) * 32);
        const target = b.target.subarray(r * 32, (r + 1) * 32);
        expect(Array.from(target.subarray(0, 31))).toEqual(Array.from(input.subarray(1)));
        rows.add(Buffer.from(Uint8Array.from(input)).toString('latin1'));
      }
      expect(Math.max(...b.input, ...b.target)).toBeLessThan(256);
    }
    expect(rows.size).toBe(12);
    // Natural text: mostly letters and spaces.
    const text = Buffer.from(Uint8Array.from(batches[0].input)).toString('latin1');
    expect((text.match(/[A-Za-z ]/g) ?? []).length / text.length).toBeGreaterThan(0.8);
    const again = await textBatches(3, 4, 32);
    expect(again.map((b) => Array.from(b.input))).toEqual(batches.map((b) => Array.from(b.input)));
  });

  it('refuses a window longer than the corpus', async () => {
    await expect(textBatches(1, 1, 1e9)).rejects.toThrow(/seqLen 1000000000 is longer than the corpus/);
  });
});

describe('curve distance and tolerance', () => {
  it('measures the last 50 steps on average and every step at most', () => {
    const ref = Array.from({ length: 100 }, (_, i) => 5 - i / 50);
    const got = ref.map((l, i) => l + (i === 10 ? 0.2 : i >= 50 ? 0.01 : 0));
    const d = curveDistance(got, ref);
    expect(d.meanAbsDiffLast50).toBeCloseTo(0.01, 9);
    expect(d.maxAbsDiff).toBeCloseTo(0.2, 9);
    expect(withinCurveTolerance(got, ref, 100)).toBe(true);
  });

  it('fails a curve that drifts, jumps or stops short', () => {
    const ref = Array.from({ length: 100 }, () => 3);
    const drift = ref.map((l, i) => l + (i >= 50 ? 1.1 * CURVE_TOLERANCE.meanAbsDiffLast50 : 0));
    const jump = ref.map((l, i) => l + (i === 3 ? 1.1 * CURVE_TOLERANCE.maxAbsDiff : 0));
    expect(withinCurveTolerance(drift, ref, 100)).toBe(false);
    expect(withinCurveTolerance(jump, ref, 100)).toBe(false);
    expect(withinCurveTolerance(ref.slice(0, 99), ref, 100)).toBe(false);
  });

  it('samples every tenth step and the last', () => {
    const losses = Array.from({ length: 25 }, (_, i) => i);
    expect(sampleCurve(losses)).toEqual([0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]);
  });
});

describe('trainCurve', () => {
  it('trains under the recipe, a step a batch, and learns the text', async () => {
    await initBackend('cpu', () => {});
    const config = tinyConfig({ vocabSize: 256, hiddenSize: 32, numLayers: 2, numHeads: 4 });
    const batches = await textBatches(40, 4, 32);
    const a = await trainCurve(GPTNeoX.random(config, 5), batches, { lr: 3e-3, warmup: 5 });
    expect(a.losses).toHaveLength(40);
    expect(a.skippedSteps).toBe(0);
    // From about ln 256 (5.5) towards the bytes' unigram entropy.
    expect(a.losses[0]).toBeGreaterThan(5);
    expect(a.losses[39]).toBeLessThan(a.losses[0] - 1.5);
    // Same init, same batches: the same curve.
    const b = await trainCurve(GPTNeoX.random(config, 5), batches, { lr: 3e-3, warmup: 5 });
    expect(b.losses).toEqual(a.losses);
  }, 120_000);

  it('says when there is nothing to train on', async () => {
    await initBackend('cpu', () => {});
    await expect(trainCurve(GPTNeoX.random(tinyConfig(), 1), [], { lr: 1e-3, warmup: 0 })).rejects.toThrow(
      /no batches/,
    );
  });
});
