import type { Rng } from './space.js';

/** The serialisable state of a `SeededRng`: xoshiro128** words, each an unsigned 32-bit integer. */
export interface RngState {
  algorithm: 'xoshiro128**';
  s: [number, number, number, number];
}

const TWO_32 = 4294967296;

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** SplitMix32 step: used only to expand a seed into the four state words. */
function splitmix32(state: { x: number }): number {
  state.x = (state.x + 0x9e3779b9) >>> 0;
  let z = state.x;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

function isWord(x: unknown): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x < TWO_32;
}

/**
 * A seeded pseudo-random generator: xoshiro128** (Blackman and Vigna) in 32-bit integer arithmetic,
 * seeded through SplitMix32. Identical output on every platform; its whole state is four integers, so
 * `state()` / `SeededRng.fromState()` make it resumable from JSON.
 */
export class SeededRng implements Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** `seed`: a non-negative safe integer (both 32-bit halves are used). */
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new RangeError(`SeededRng: seed must be a non-negative safe integer, got ${String(seed)}`);
    }
    const lo = seed >>> 0;
    const hi = Math.floor(seed / TWO_32) >>> 0;
    const mix = { x: (lo ^ Math.imul(hi, 0x27d4eb2d)) >>> 0 };
    this.s0 = splitmix32(mix);
    this.s1 = splitmix32(mix);
    this.s2 = splitmix32(mix) ^ hi;
    this.s3 = splitmix32(mix);
    this.s2 >>>= 0;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // the all-zero state is a fixed point
  }

  static fromState(state: RngState): SeededRng {
    if (
      state === null ||
      typeof state !== 'object' ||
      state.algorithm !== 'xoshiro128**' ||
      !Array.isArray(state.s) ||
      state.s.length !== 4 ||
      !state.s.every(isWord)
    ) {
      throw new TypeError(
        `SeededRng.fromState: expected { algorithm: 'xoshiro128**', s: [4 unsigned 32-bit integers] }, got ${JSON.stringify(state)}`,
      );
    }
    if (state.s.every((w) => w === 0)) throw new TypeError('SeededRng.fromState: the all-zero state is invalid');
    const rng = new SeededRng(0);
    [rng.s0, rng.s1, rng.s2, rng.s3] = state.s;
    return rng;
  }

  state(): RngState {
    return { algorithm: 'xoshiro128**', s: [this.s0, this.s1, this.s2, this.s3] };
  }

  clone(): SeededRng {
    return SeededRng.fromState(this.state());
  }

  /** Uniform integer in [0, 2^32). */
  nextUint32(): number {
    const result = Math.imul(rotl(Math.imul(this.s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.s1 << 9) >>> 0;
    this.s2 = (this.s2 ^ this.s0) >>> 0;
    this.s3 = (this.s3 ^ this.s1) >>> 0;
    this.s1 = (this.s1 ^ this.s2) >>> 0;
    this.s0 = (this.s0 ^ this.s3) >>> 0;
    this.s2 = (this.s2 ^ t) >>> 0;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** Uniform float in [0, 1), with 32 bits of resolution. */
  nextFloat(): number {
    return this.nextUint32() / TWO_32;
  }

  /** Uniform integer in [0, n) without modulo bias; n a positive integer ≤ 2^32. */
  nextInt(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > TWO_32) {
      throw new RangeError(`SeededRng.nextInt: n must be an integer in [1, 2^32], got ${String(n)}`);
    }
    const limit = TWO_32 - (TWO_32 % n);
    for (;;) {
      const x = this.nextUint32();
      if (x < limit) return x % n;
    }
  }
}
