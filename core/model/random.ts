/**
 * A small seeded generator (SplitMix32 mixing) so weight initialisation is identical on every
 * backend and every run with the same seed.
 */
export class SeededRandom {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform integer in [0, 2^32). */
  nextUint32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }

  /** Uniform float in (0, 1). */
  nextFloat(): number {
    return (this.nextUint32() + 0.5) / 4294967296;
  }

  /** Standard normal samples (Box-Muller), `count` of them scaled by `std`. */
  normal(count: number, std: number): Float32Array {
    const out = new Float32Array(count);
    for (let i = 0; i < count; i += 2) {
      const r = Math.sqrt(-2 * Math.log(this.nextFloat()));
      const theta = 2 * Math.PI * this.nextFloat();
      out[i] = r * Math.cos(theta) * std;
      if (i + 1 < count) out[i + 1] = r * Math.sin(theta) * std;
    }
    return out;
  }
}

/** A seed derived from a base seed and a name, so each tensor gets its own stream. */
export function deriveSeed(seed: number, name: string): number {
  let h = (seed ^ 0x811c9dc5) >>> 0;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}
