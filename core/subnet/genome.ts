/**
 * The sub-network space's working genome (counts, plus index sets in the granular space) and the
 * machinery over it: parameter counts, allowed values per dimension, edits that keep a genome
 * consistent, repair into the parameter range, random genomes, crossover and conversion to and from
 * specs (space.ts has the module comment on how they work together). Internal to core/subnet: the
 * search sees only SubnetSpec JSON, through space.ts; mutations.ts holds the mutation operators.
 *
 * Pure and deterministic: all randomness comes from the Rng argument; no tfjs, no I/O, no clock.
 */
import type { NeoXConfig } from '../model/index.js';
import type { Rng } from '../search/index.js';
import type { Dims, SpaceKind } from './choices.js';
import { layerParameters } from './count.js';
import { type CanonicalSpec, type SubnetSpec, canonicalize, teacherShape } from './spec.js';

/** The working form of a genome: counts, plus index sets in the granular space. */
export interface Geno {
  /** Teacher layer indices (ascending); 0..n−1 outside the granular space. */
  layers: number[];
  e: number;
  hs: number;
  heads: number[];
  mlp: number[];
  /** Granular only: kept channels, heads and neurons (sorted). */
  eIdx: number[] | null;
  headIdx: number[][] | null;
  mlpIdx: number[][] | null;
}

export type Dim =
  | { k: 'e' }
  | { k: 'hs' }
  | { k: 'heads'; i: number }
  | { k: 'mlp'; i: number }
  | { k: 'heads-all' }
  | { k: 'mlp-all' }
  | { k: 'layers-all' };

// ---------------------------------------------------------------------------------------------------
// Small pure helpers.

export function pick<T>(list: readonly T[], rng: Rng): T {
  return list[rng.nextInt(list.length)];
}

export function shuffle<T>(list: T[], rng: Rng): T[] {
  for (let i = list.length - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    [list[i], list[j]] = [list[j], list[i]];
  }
  return list;
}

/** k distinct values of [0, n), sorted (partial Fisher-Yates over a sparse map). */
export function randomSubset(n: number, k: number, rng: Rng): number[] {
  const swapped = new Map<number, number>();
  const out: number[] = [];
  for (let i = 0; i < k; i++) {
    const j = i + rng.nextInt(n - i);
    const vj = swapped.get(j) ?? j;
    swapped.set(j, swapped.get(i) ?? i);
    out.push(vj);
  }
  return out.sort((a, b) => a - b);
}

/** Resizes a sorted index set within [0, universe): drops random members or adds random non-members. */
export function resize(set: number[], size: number, universe: number, rng: Rng): number[] {
  if (size === set.length) return set.slice();
  if (size < set.length) {
    const keep = randomSubset(set.length, size, rng);
    return keep.map((i) => set[i]);
  }
  const inSet = new Set(set);
  const free: number[] = [];
  for (let v = 0; v < universe; v++) if (!inSet.has(v)) free.push(v);
  const add = randomSubset(free.length, size - set.length, rng).map((i) => free[i]);
  return [...set, ...add].sort((a, b) => a - b);
}

/** Replaces up to `count` random members of a sorted set by random non-members (size unchanged). */
export function swapMembers(set: number[], universe: number, count: number, rng: Rng): number[] {
  if (set.length >= universe || set.length === 0) return set.slice();
  const n = Math.min(count, set.length, universe - set.length);
  const shrunk = resize(set, set.length - n, universe, rng);
  const inSet = new Set(set); // neither the kept members nor the ones just taken out
  const free: number[] = [];
  for (let v = 0; v < universe; v++) if (!inSet.has(v)) free.push(v);
  if (free.length < n) return set.slice();
  const add = randomSubset(free.length, n, rng).map((i) => free[i]);
  return [...shrunk, ...add].sort((a, b) => a - b);
}

/** Index of the first value ≥ x in a sorted list (list.length when none). */
export function lowerBound(list: readonly number[], x: number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The allowed value nearest to x (the lower one on a tie). */
export function nearest(list: readonly number[], x: number): number {
  const i = lowerBound(list, x);
  if (i === 0) return list[0];
  if (i === list.length) return list[list.length - 1];
  return x - list[i - 1] <= list[i] - x ? list[i - 1] : list[i];
}

export function cloneGeno(g: Geno): Geno {
  return {
    layers: g.layers.slice(),
    e: g.e,
    hs: g.hs,
    heads: g.heads.slice(),
    mlp: g.mlp.slice(),
    eIdx: g.eIdx ? g.eIdx.slice() : null,
    headIdx: g.headIdx ? g.headIdx.map((s) => s.slice()) : null,
    mlpIdx: g.mlpIdx ? g.mlpIdx.map((s) => s.slice()) : null,
  };
}

export function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

// ---------------------------------------------------------------------------------------------------
// The space's machinery, shared by createSubnetSpace, its mutation operators and the reachability check.

export class Machinery {
  readonly granular: boolean;
  readonly uniform: boolean;
  readonly vocab: number;
  readonly L: number;

  constructor(
    readonly teacher: NeoXConfig,
    readonly kind: SpaceKind,
    readonly dims: Dims,
    readonly lo: number,
    readonly hi: number,
    readonly rounds: number,
  ) {
    this.granular = kind === 'granular';
    this.uniform = kind === 'uniform';
    this.vocab = teacher.vocabSize;
    this.L = teacher.numLayers;
  }

  // Costs ------------------------------------------------------------------------------------------

  cost(g: Geno): number {
    let n = 2 * this.vocab * g.e + 2 * g.e;
    for (let i = 0; i < g.heads.length; i++)
      n += layerParameters(g.e, g.hs, { numHeads: g.heads[i], intermediateSize: g.mlp[i] });
    return n;
  }

  inRange(p: number): boolean {
    return p >= this.lo && p <= this.hi;
  }

  /** Cost with one dimension set to v (counts only). */
  costWith(g: Geno, dim: Dim, v: number): number {
    const V = this.vocab;
    let e = g.e;
    let hs = g.hs;
    let heads = g.heads;
    let mlp = g.mlp;
    switch (dim.k) {
      case 'e':
        e = v;
        break;
      case 'hs':
        hs = v;
        break;
      case 'heads':
        heads = heads.slice();
        heads[dim.i] = v;
        break;
      case 'mlp':
        mlp = mlp.slice();
        mlp[dim.i] = v;
        break;
      case 'heads-all':
        heads = heads.map(() => v);
        break;
      case 'mlp-all':
        mlp = mlp.map(() => v);
        break;
      case 'layers-all': {
        const per = layerParameters(e, hs, { numHeads: heads[0], intermediateSize: mlp[0] });
        return 2 * V * e + 2 * e + v * per;
      }
    }
    let n = 2 * V * e + 2 * e;
    for (let i = 0; i < heads.length; i++)
      n += layerParameters(e, hs, { numHeads: heads[i], intermediateSize: mlp[i] });
    return n;
  }

  current(g: Geno, dim: Dim): number {
    switch (dim.k) {
      case 'e':
        return g.e;
      case 'hs':
        return g.hs;
      case 'heads':
        return g.heads[dim.i];
      case 'mlp':
        return g.mlp[dim.i];
      case 'heads-all':
        return g.heads[0];
      case 'mlp-all':
        return g.mlp[0];
      case 'layers-all':
        return g.layers.length;
    }
  }

  /** Allowed values of a dimension (per-layer caps in the granular space). */
  allowed(g: Geno, dim: Dim): number[] {
    const d = this.dims;
    switch (dim.k) {
      case 'e':
        return d.embedding;
      case 'hs':
        return d.headSize;
      case 'heads':
        return this.granular ? this.headChoices(g.layers[dim.i]) : d.heads;
      case 'mlp':
        return this.granular ? this.mlpChoices(g.layers[dim.i]) : d.mlp;
      case 'heads-all':
        return d.heads;
      case 'mlp-all':
        return d.mlp;
      case 'layers-all':
        return d.layers;
    }
  }

  headChoices(t: number): number[] {
    const cap = this.dims.teacherHeads[t];
    return this.dims.heads.filter((v) => v <= cap);
  }

  mlpChoices(t: number): number[] {
    const cap = this.dims.teacherMlp[t];
    return this.dims.mlp.filter((v) => v <= cap);
  }

  /** The dimensions repair solves exactly (each linear in the cost). */
  linearDims(g: Geno): Dim[] {
    const out: Dim[] = [{ k: 'e' }];
    if (this.dims.headSize.length > 1) out.push({ k: 'hs' });
    if (this.uniform) {
      out.push({ k: 'heads-all' }, { k: 'mlp-all' }, { k: 'layers-all' });
    } else {
      for (let i = 0; i < g.heads.length; i++) out.push({ k: 'heads', i }, { k: 'mlp', i });
    }
    return out;
  }

  // Edits ------------------------------------------------------------------------------------------

  /** Sets a dimension (keeping the granular index sets in step). Mutates g. */
  set(g: Geno, dim: Dim, v: number, rng: Rng): void {
    switch (dim.k) {
      case 'e':
        g.e = v;
        if (g.eIdx) g.eIdx = resize(g.eIdx, v, this.teacher.hiddenSize, rng);
        return;
      case 'hs':
        g.hs = v;
        return;
      case 'heads':
        g.heads[dim.i] = v;
        if (g.headIdx) g.headIdx[dim.i] = resize(g.headIdx[dim.i], v, this.dims.teacherHeads[g.layers[dim.i]], rng);
        return;
      case 'mlp':
        g.mlp[dim.i] = v;
        if (g.mlpIdx) g.mlpIdx[dim.i] = resize(g.mlpIdx[dim.i], v, this.dims.teacherMlp[g.layers[dim.i]], rng);
        return;
      case 'heads-all':
        g.heads = g.heads.map(() => v);
        return;
      case 'mlp-all':
        g.mlp = g.mlp.map(() => v);
        return;
      case 'layers-all':
        this.setLayerCount(g, v, rng);
        return;
    }
  }

  /** A fresh layer entry (random heads / MLP from the choices) for teacher layer t. */
  private newLayer(
    g: Geno,
    t: number,
    rng: Rng,
  ): { h: number; m: number; hIdx: number[] | null; mIdx: number[] | null } {
    if (this.uniform && g.heads.length > 0) return { h: g.heads[0], m: g.mlp[0], hIdx: null, mIdx: null };
    const h = pick(this.granular ? this.headChoices(t) : this.dims.heads, rng);
    const m = pick(this.granular ? this.mlpChoices(t) : this.dims.mlp, rng);
    return {
      h,
      m,
      hIdx: this.granular ? randomSubset(this.dims.teacherHeads[t], h, rng) : null,
      mIdx: this.granular ? randomSubset(this.dims.teacherMlp[t], m, rng) : null,
    };
  }

  addLayer(g: Geno, rng: Rng): void {
    if (this.granular) {
      const used = new Set(g.layers);
      const free = range(this.L).filter((t) => !used.has(t));
      if (free.length === 0) return;
      const t = pick(free, rng);
      const pos = lowerBound(g.layers, t);
      const entry = this.newLayer(g, t, rng);
      g.layers.splice(pos, 0, t);
      g.heads.splice(pos, 0, entry.h);
      g.mlp.splice(pos, 0, entry.m);
      g.headIdx!.splice(pos, 0, entry.hIdx!);
      g.mlpIdx!.splice(pos, 0, entry.mIdx!);
      return;
    }
    const pos = this.uniform ? g.heads.length : rng.nextInt(g.heads.length + 1);
    const entry = this.newLayer(g, pos, rng);
    g.heads.splice(pos, 0, entry.h);
    g.mlp.splice(pos, 0, entry.m);
    g.layers = range(g.heads.length);
  }

  removeLayer(g: Geno, rng: Rng): void {
    if (g.layers.length <= 1) return;
    const pos = rng.nextInt(g.layers.length);
    g.layers.splice(pos, 1);
    g.heads.splice(pos, 1);
    g.mlp.splice(pos, 1);
    g.headIdx?.splice(pos, 1);
    g.mlpIdx?.splice(pos, 1);
    if (!this.granular) g.layers = range(g.heads.length);
  }

  setLayerCount(g: Geno, n: number, rng: Rng): void {
    // (addLayer / removeLayer do nothing when no teacher layer is left / one layer remains.)
    for (let before = -1; g.layers.length < n && g.layers.length !== before; ) {
      before = g.layers.length;
      this.addLayer(g, rng);
    }
    for (let before = -1; g.layers.length > n && g.layers.length !== before; ) {
      before = g.layers.length;
      this.removeLayer(g, rng);
    }
  }

  /** Moves every count onto an allowed value (after crossover, or for a genome from elsewhere). Mutates g. */
  snap(g: Geno, rng: Rng): void {
    const n = nearest(this.dims.layers, g.layers.length);
    this.setLayerCount(g, n, rng);
    for (const dim of this.linearDims(g)) {
      if (dim.k === 'layers-all') continue;
      const allowed = this.allowed(g, dim);
      const cur = this.current(g, dim);
      const ok = allowed[lowerBound(allowed, cur)] === cur;
      if (dim.k === 'heads-all' || dim.k === 'mlp-all') {
        const values = dim.k === 'heads-all' ? g.heads : g.mlp;
        if (!ok || values.some((v) => v !== cur)) this.set(g, dim, nearest(allowed, cur), rng);
      } else if (!ok) {
        this.set(g, dim, nearest(allowed, cur), rng);
      }
    }
  }

  // Repair -----------------------------------------------------------------------------------------

  /** Brings g into the range (see the module comment); null when the rounds run out. Mutates g. */
  repair(g: Geno, rng: Rng): Geno | null {
    for (let round = 0; round < this.rounds; round++) {
      const p = this.cost(g);
      if (this.inRange(p)) return g;
      const up = p < this.lo;
      const dims = shuffle(this.linearDims(g), rng);
      // 1. One dimension that lands in the range on its own.
      for (const dim of dims) {
        const b = this.costWith(g, dim, 0);
        const a = this.costWith(g, dim, 1) - b;
        if (a <= 0) continue;
        const vlo = Math.ceil((this.lo - b) / a);
        const vhi = Math.floor((this.hi - b) / a);
        const allowed = this.allowed(g, dim);
        const i0 = lowerBound(allowed, vlo);
        const i1 = lowerBound(allowed, vhi + 1);
        if (i1 > i0) {
          this.set(g, dim, allowed[i0 + rng.nextInt(i1 - i0)], rng);
          if (this.inRange(this.cost(g))) return g;
        }
      }
      // 2. Otherwise a move towards the middle of the range.
      const mid = (this.lo + this.hi) / 2;
      type Move = () => void;
      const moves: Move[] = [];
      for (const dim of dims) {
        const allowed = this.allowed(g, dim);
        const cur = this.current(g, dim);
        const canMove = up ? allowed[allowed.length - 1] > cur : allowed[0] < cur;
        if (!canMove) continue;
        moves.push(() => {
          const b = this.costWith(g, dim, 0);
          const a = this.costWith(g, dim, 1) - b;
          const target = a > 0 ? (mid - b) / a : up ? Infinity : -Infinity;
          const beyond = up ? allowed.filter((v) => v > cur) : allowed.filter((v) => v < cur);
          this.set(g, dim, nearest(beyond, target), rng);
        });
      }
      if (!this.uniform) {
        const counts = this.dims.layers;
        const n = g.layers.length;
        const next = up ? counts.find((c) => c > n) : [...counts].reverse().find((c) => c < n);
        const free = this.granular ? this.L - n : Infinity;
        if (next !== undefined && (!up || free >= next - n)) moves.push(() => this.setLayerCount(g, next, rng));
      }
      if (moves.length === 0) return null;
      pick(moves, rng)();
    }
    return this.inRange(this.cost(g)) ? g : null;
  }

  // Random genomes ---------------------------------------------------------------------------------

  random(rng: Rng): Geno {
    const n = pick(this.dims.layers, rng);
    const e = pick(this.dims.embedding, rng);
    const hs = pick(this.dims.headSize, rng);
    if (this.uniform) {
      const h = pick(this.dims.heads, rng);
      const m = pick(this.dims.mlp, rng);
      return {
        layers: range(n),
        e,
        hs,
        heads: Array(n).fill(h),
        mlp: Array(n).fill(m),
        eIdx: null,
        headIdx: null,
        mlpIdx: null,
      };
    }
    if (!this.granular) {
      const heads = range(n).map(() => pick(this.dims.heads, rng));
      const mlp = range(n).map(() => pick(this.dims.mlp, rng));
      return { layers: range(n), e, hs, heads, mlp, eIdx: null, headIdx: null, mlpIdx: null };
    }
    const layers = randomSubset(this.L, n, rng);
    const heads = layers.map((t) => pick(this.headChoices(t), rng));
    const mlp = layers.map((t) => pick(this.mlpChoices(t), rng));
    return {
      layers,
      e,
      hs,
      heads,
      mlp,
      eIdx: randomSubset(this.teacher.hiddenSize, e, rng),
      headIdx: layers.map((t, i) => randomSubset(this.dims.teacherHeads[t], heads[i], rng)),
      mlpIdx: layers.map((t, i) => randomSubset(this.dims.teacherMlp[t], mlp[i], rng)),
    };
  }

  // Conversions ------------------------------------------------------------------------------------

  toSpec(g: Geno): SubnetSpec {
    const teacher = teacherShape(this.teacher);
    if (this.uniform) {
      return {
        format: 1,
        teacher,
        layers: g.layers.length,
        embedding: g.e,
        headSize: g.hs,
        heads: g.heads[0],
        mlp: g.mlp[0],
      };
    }
    if (!this.granular) {
      return {
        format: 1,
        teacher,
        layers: g.layers.length,
        embedding: g.e,
        headSize: g.hs,
        perLayer: g.heads.map((h, i) => ({ heads: h, mlp: g.mlp[i] })),
      };
    }
    return {
      format: 1,
      teacher,
      layers: g.layers.slice(),
      embedding: g.eIdx!.slice(),
      headSize: g.hs,
      perLayer: g.headIdx!.map((h, i) => ({ heads: h.slice(), mlp: g.mlpIdx![i].slice() })),
    };
  }

  /** A genome from any spec of this teacher (validated); a spec of another space is projected onto this one. */
  fromSpec(spec: unknown): Geno {
    const c = canonicalize(spec, this.teacher);
    return this.fromCanonical(c);
  }

  fromCanonical(c: CanonicalSpec): Geno {
    const n = c.layers.length;
    const e = c.embedding.length;
    const hs = c.headSize.length;
    const heads = c.perLayer.map((l) => l.heads.length);
    const mlp = c.perLayer.map((l) => l.mlp.length);
    if (this.uniform) {
      return {
        layers: range(n),
        e,
        hs,
        heads: Array(n).fill(heads[0]),
        mlp: Array(n).fill(mlp[0]),
        eIdx: null,
        headIdx: null,
        mlpIdx: null,
      };
    }
    if (!this.granular) return { layers: range(n), e, hs, heads, mlp, eIdx: null, headIdx: null, mlpIdx: null };
    return {
      layers: c.layers.slice(),
      e,
      hs,
      heads,
      mlp,
      eIdx: c.embedding.slice(),
      headIdx: c.perLayer.map((l) => l.heads.slice()),
      mlpIdx: c.perLayer.map((l) => l.mlp.slice()),
    };
  }

  /** Whether every count is an allowed value (and the uniform space's layers are alike). */
  countsAllowed(g: Geno): boolean {
    const has = (list: number[], v: number) => list[lowerBound(list, v)] === v;
    if (!has(this.dims.layers, g.layers.length) || !has(this.dims.embedding, g.e) || !has(this.dims.headSize, g.hs))
      return false;
    for (let i = 0; i < g.heads.length; i++) {
      const hc = this.granular ? this.headChoices(g.layers[i]) : this.dims.heads;
      const mc = this.granular ? this.mlpChoices(g.layers[i]) : this.dims.mlp;
      if (!has(hc, g.heads[i]) || !has(mc, g.mlp[i])) return false;
    }
    if (this.uniform && (g.heads.some((h) => h !== g.heads[0]) || g.mlp.some((m) => m !== g.mlp[0]))) return false;
    return true;
  }

  // Variation --------------------------------------------------------------------------------------

  /** A new value for a dimension: a neighbouring allowed value (half the time) or a uniform draw. */
  vary(g: Geno, dim: Dim, rng: Rng): void {
    const allowed = this.allowed(g, dim);
    if (allowed.length <= 1) return;
    const cur = this.current(g, dim);
    let v: number;
    if (rng.nextFloat() < 0.5) {
      const i = Math.max(0, Math.min(allowed.length - 1, lowerBound(allowed, cur)));
      const step = 1 + rng.nextInt(3);
      const j = rng.nextFloat() < 0.5 ? i - step : i + step;
      v = allowed[Math.max(0, Math.min(allowed.length - 1, j))];
    } else {
      v = pick(allowed, rng);
    }
    this.set(g, dim, v, rng);
  }

  cross(a: Geno, b: Geno, rng: Rng): Geno {
    const coin = () => rng.nextFloat() < 0.5;
    if (this.uniform) {
      const n = coin() ? a.layers.length : b.layers.length;
      const h = coin() ? a.heads[0] : b.heads[0];
      const m = coin() ? a.mlp[0] : b.mlp[0];
      return {
        layers: range(n),
        e: coin() ? a.e : b.e,
        hs: coin() ? a.hs : b.hs,
        heads: Array(n).fill(h),
        mlp: Array(n).fill(m),
        eIdx: null,
        headIdx: null,
        mlpIdx: null,
      };
    }
    const fromA = coin();
    const e = fromA ? a.e : b.e;
    const eIdx = this.granular ? (fromA ? a.eIdx! : b.eIdx!).slice() : null;
    const hs = coin() ? a.hs : b.hs;
    if (!this.granular) {
      const n = coin() ? a.layers.length : b.layers.length;
      const heads: number[] = [];
      const mlp: number[] = [];
      for (let i = 0; i < n; i++) {
        const src = i < a.heads.length && i < b.heads.length ? (coin() ? a : b) : i < a.heads.length ? a : b;
        heads.push(src.heads[i]);
        mlp.push(src.mlp[i]);
      }
      return { layers: range(n), e, hs, heads, mlp, eIdx: null, headIdx: null, mlpIdx: null };
    }
    // Granular: each teacher layer kept by both parents is kept (its entry from either), one kept by
    // one parent is kept half the time.
    const g: Geno = { layers: [], e, hs, heads: [], mlp: [], eIdx, headIdx: [], mlpIdx: [] };
    const posA = new Map(a.layers.map((t, i) => [t, i]));
    const posB = new Map(b.layers.map((t, i) => [t, i]));
    for (let t = 0; t < this.L; t++) {
      const ia = posA.get(t);
      const ib = posB.get(t);
      if (ia === undefined && ib === undefined) continue;
      let src: { p: Geno; i: number };
      if (ia !== undefined && ib !== undefined) src = coin() ? { p: a, i: ia } : { p: b, i: ib };
      else if (!coin()) continue;
      else src = ia !== undefined ? { p: a, i: ia } : { p: b, i: ib! };
      g.layers.push(t);
      g.heads.push(src.p.heads[src.i]);
      g.mlp.push(src.p.mlp[src.i]);
      g.headIdx!.push(src.p.headIdx![src.i].slice());
      g.mlpIdx!.push(src.p.mlpIdx![src.i].slice());
    }
    if (g.layers.length === 0) {
      const src = coin() ? a : b;
      const i = rng.nextInt(src.layers.length);
      g.layers.push(src.layers[i]);
      g.heads.push(src.heads[i]);
      g.mlp.push(src.mlp[i]);
      g.headIdx!.push(src.headIdx![i].slice());
      g.mlpIdx!.push(src.mlpIdx![i].slice());
    }
    return g;
  }
}
