import { describe, expect, it } from 'vitest';
import { passDurations, passGaps } from '../core/model/webgpu/profiler.js';

/** Timestamps in ns from (begin, end) pairs in µs. */
const stamps = (pairs: Array<[number, number]>) => new BigUint64Array(pairs.flat().map((us) => BigInt(us * 1000)));

describe("the webgpu profiler's pass durations", () => {
  it('counts a pass from the end of the one before when its first timestamp came earlier', () => {
    // The second pass's first stamp was taken while the first still ran (top of the pipe, before its barrier).
    const ms = passDurations(
      stamps([
        [0, 100],
        [10, 150],
        [200, 260],
      ]),
      3,
    );
    expect(ms).toEqual([0.1, 0.05, 0.06]);
    // The sum is the GPU's busy span, not more.
    expect(ms.reduce((a, b) => a + b, 0)).toBeCloseTo(0.21, 12);
  });

  it('counts a pass whose stamps are missing or out of order as nothing', () => {
    expect(passDurations(stamps([[50, 40]]), 1)).toEqual([0]);
    expect(
      passDurations(
        stamps([
          [0, 1e9],
          [20, 30],
        ]),
        2,
      ),
    ).toEqual([0, 0]);
  });

  it("counts the GPU's waits for work: a pass that started after the one before had ended", () => {
    const ts = stamps([
      [0, 100],
      [10, 150],
      [400, 460],
      [470, 500],
    ]);
    expect(passGaps(ts, 4).map((ms) => Number(ms.toFixed(6)))).toEqual([0, 0, 0.25, 0.01]);
  });
});
