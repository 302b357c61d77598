/**
 * Synthetic search spaces for the core/search tests: integer vectors with constraints and a cost,
 * standing in for sub-network specs (which core/subnet adapts to the same interface).
 *
 * A genome x has `dims` integers in [0, max]; x[0] must be even (a divisibility rule, like heads
 * dividing the width); its cost is Σ (i + 1)·x[i] (a weighted "parameter count") and must lie in
 * [lo, hi] (the target bin). mutate and crossover repair their children into that set. And a
 * synthetic fitness of real sub-network specs, for the workflow tests' stub evaluator.
 */
import type { Rng, SearchSpace } from '../core/search/index.js';
import type { SubnetSpec } from '../core/subnet/pure.js';

export type Vec = number[];

export interface VecSpaceOptions {
  dims: number;
  max: number;
  lo: number;
  hi: number;
  /** Expose costRange() to the search (stratified random search). Default true. */
  withCostRange?: boolean;
}

export class VecSpace implements SearchSpace<Vec> {
  readonly dims: number;
  readonly max: number;
  readonly lo: number;
  readonly hi: number;
  readonly weights: number[];
  costRange?: () => { min: number; max: number };

  constructor(o: VecSpaceOptions) {
    this.dims = o.dims;
    this.max = o.max;
    this.lo = o.lo;
    this.hi = o.hi;
    this.weights = Array.from({ length: o.dims }, (_, i) => i + 1);
    // Repair moves the cost by at most 2·max weight per step, so the window must be at least that wide.
    if (o.hi - o.lo < 2 * o.dims) throw new Error('VecSpace: bin narrower than a repair step');
    const maxCost = this.cost(this.top());
    if (o.lo < 0 || o.hi > maxCost || o.lo > o.hi) throw new Error('VecSpace: bin outside the reachable costs');
    if (o.withCostRange !== false) this.costRange = () => ({ min: this.lo, max: this.hi });
  }

  /** The largest genome (every coordinate at its maximum). */
  top(): Vec {
    return Array.from({ length: this.dims }, (_, i) => (i === 0 ? this.max - (this.max % 2) : this.max));
  }

  cost(g: Vec): number {
    let c = 0;
    for (let i = 0; i < g.length; i++) c += this.weights[i] * g[i];
    return c;
  }

  isValid(g: Vec): boolean {
    if (!Array.isArray(g) || g.length !== this.dims) return false;
    if (!g.every((x) => Number.isInteger(x) && x >= 0 && x <= this.max)) return false;
    if (g[0] % 2 !== 0) return false;
    const c = this.cost(g);
    return c >= this.lo && c <= this.hi;
  }

  key(g: Vec): string {
    return g.join(',');
  }

  describe(g: Vec): string {
    return `[${g.join(' ')}] cost ${this.cost(g)}`;
  }

  private step(i: number): number {
    return i === 0 ? 2 : 1;
  }

  /** Clamp, fix the parity rule, then walk the cost into [lo, hi] one coordinate step at a time. */
  repair(g: Vec, rng: Rng): Vec {
    const x = g.map((v) => Math.min(this.max, Math.max(0, Math.round(v))));
    if (x[0] % 2 !== 0) x[0] -= 1;
    let c = this.cost(x);
    while (c > this.hi) {
      const i = rng.nextInt(this.dims);
      if (x[i] >= this.step(i)) {
        x[i] -= this.step(i);
        c -= this.step(i) * this.weights[i];
      }
    }
    while (c < this.lo) {
      const i = rng.nextInt(this.dims);
      if (x[i] + this.step(i) <= this.max) {
        x[i] += this.step(i);
        c += this.step(i) * this.weights[i];
      }
    }
    return x;
  }

  sample(rng: Rng): Vec {
    return this.repair(
      Array.from({ length: this.dims }, () => rng.nextInt(this.max + 1)),
      rng,
    );
  }

  mutate(g: Vec, rng: Rng): Vec {
    const x = g.slice();
    const changes = 1 + rng.nextInt(2);
    for (let k = 0; k < changes; k++) {
      const i = rng.nextInt(this.dims);
      if (rng.nextFloat() < 0.2) x[i] = rng.nextInt(this.max + 1);
      else x[i] += (rng.nextInt(2) === 0 ? -1 : 1) * this.step(i) * (1 + rng.nextInt(3));
    }
    return this.repair(x, rng);
  }

  crossover(a: Vec, b: Vec, rng: Rng): Vec {
    return this.repair(
      a.map((v, i) => (rng.nextFloat() < 0.5 ? v : b[i])),
      rng,
    );
  }
}

/** The single-objective benchmark: 10 dims in [0, 31], bin [700, 1000], optimum `TARGET` (fitness 0). */
export const TARGET: Vec = [10, 3, 25, 17, 8, 30, 12, 5, 21, 14];

export function benchmarkSpace(): VecSpace {
  return new VecSpace({ dims: 10, max: 31, lo: 700, hi: 1000 });
}

/** Squared distance to TARGET: minimised, 0 exactly at the known optimum. */
export function distanceToTarget(g: Vec): number {
  let d = 0;
  for (let i = 0; i < g.length; i++) d += (g[i] - TARGET[i]) ** 2;
  return d;
}

/**
 * Wraps a space and sabotages it: a share of its outputs is invalid (out of range, parity broken) or
 * a copy of an earlier genome. The search must filter all of them out.
 */
export class FaultySpace implements SearchSpace<Vec> {
  private readonly inner: VecSpace;
  private readonly rate: number;
  readonly costRange?: () => { min: number; max: number };

  constructor(inner: VecSpace, rate = 0.2) {
    this.inner = inner;
    this.rate = rate;
    this.costRange = inner.costRange;
  }

  private spoil(g: Vec, rng: Rng): Vec {
    const r = rng.nextFloat();
    if (r >= this.rate) return g;
    const x = g.slice();
    if (r < this.rate / 3)
      x[0] += 1; // parity broken
    else if (r < (2 * this.rate) / 3)
      x[this.inner.dims - 1] = this.inner.max + 5; // out of range
    else return this.inner.top().map((v, i) => Math.min(v, this.inner.lo > 0 ? TARGET[i] : 0)); // a repeat
    return x;
  }

  sample(rng: Rng): Vec {
    return this.spoil(this.inner.sample(rng), rng);
  }
  mutate(g: Vec, rng: Rng): Vec {
    return this.spoil(this.inner.mutate(g, rng), rng);
  }
  crossover(a: Vec, b: Vec, rng: Rng): Vec {
    return this.spoil(this.inner.crossover(a, b, rng), rng);
  }
  key(g: Vec): string {
    return this.inner.key(g);
  }
  cost(g: Vec): number {
    return this.inner.cost(g);
  }
  isValid(g: Vec): boolean {
    return this.inner.isValid(g);
  }
}

/** The uniform sub-network shape `subnetDistance` is minimised at. */
export const SUBNET_TARGET = { layers: 2, embedding: 24, heads: 3, mlp: 64 };

/**
 * A synthetic fitness of a uniform-space sub-network spec, standing in for a trained one where only
 * the orchestration is under test: the squared distance of its shape to `SUBNET_TARGET` (widths in
 * units of 8), 0 exactly there.
 */
export function subnetDistance(spec: SubnetSpec): number {
  const shape = spec as { layers: number; embedding: number; heads: number; mlp: number };
  const t = SUBNET_TARGET;
  return (
    (shape.layers - t.layers) ** 2 +
    ((shape.embedding - t.embedding) / 8) ** 2 +
    (shape.heads - t.heads) ** 2 +
    ((shape.mlp - t.mlp) / 8) ** 2
  );
}
