/**
 * The sub-network search space: core/search's `SearchSpace` over sub-network specs of one teacher,
 * held inside a parameter range (a bin).
 *
 * Spaces, coarse to fine (the genomes are plain SubnetSpec JSON):
 *   uniform     { layers: n, embedding: e, headSize: hs, heads: h, mlp: m }: one value for all layers
 *   layer-wise  { layers: n, embedding: e, headSize: hs, perLayer: [{ heads, mlp }, ...] }
 *   granular    { layers: [teacher indices], embedding: [channels], headSize: hs,
 *                 perLayer: [{ heads: [indices], mlp: [indices] }, ...] }
 * Counts resolve first-k (first-n layers) unless extraction is told otherwise.
 *
 * Every genome sample / mutate / crossover return is valid and inside the range. Repair, in rounds:
 * if one dimension alone (embedding width, head size, the heads or MLP width of one layer — or of all
 * layers in the uniform space — or the layer count in the uniform space) can bring the parameter
 * count into the range, set it to a random allowed value that does (the count is linear in each of
 * them, so this is solved exactly); otherwise move a random dimension to the allowed value that brings
 * the count closest to the middle of the range (adding or removing a layer in the layer-wise and
 * granular spaces) and go on. After `repairRounds` rounds the candidate is dropped and the operation
 * starts over (a fresh sample, mutation or crossover); after `attempts` such tries a mutation or
 * crossover falls back to a parent, and sampling throws a TargetError. createSubnetSpace checks up
 * front that the range is reachable, so that error means a bug, not bad luck.
 *
 * Pure and deterministic: all randomness comes from the Rng argument; no tfjs, no I/O, no clock.
 */
import type { NeoXConfig } from '../model/index.js';
import { type Rng, type SearchSpace, SeededRng } from '../search/index.js';
import { type Dims, type SpaceChoices, type SpaceKind, SPACE_KINDS, dimsParamRange, resolveDims } from './choices.js';
import { layerParameters } from './count.js';
import {
  type CanonicalSpec,
  type SubnetSpec,
  SpecError,
  canonicalHash,
  canonicalize,
  describeCanonical,
  teacherShape,
} from './spec.js';

/** A target range that cannot be met, or is malformed; `field` is "target". */
export class TargetError extends SpecError {
  constructor(message: string) {
    super('target', message);
    this.name = 'TargetError';
  }
}

export interface ParamTarget {
  minParams: number;
  maxParams: number;
}

export interface SubnetSpaceOptions {
  space: SpaceKind;
  /** Inclusive parameter range every genome stays in. */
  target: ParamTarget;
  /** Allowed values per dimension (default: every count from 1 to the teacher's; head size fixed). */
  choices?: SpaceChoices;
  /** Repair rounds per try (default 48). */
  repairRounds?: number;
  /** Tries per operation before falling back or failing (default 64). */
  attempts?: number;
}

/** The working form of a genome: counts, plus index sets in the granular space. */
interface Geno {
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

type Dim =
  | { k: 'e' }
  | { k: 'hs' }
  | { k: 'heads'; i: number }
  | { k: 'mlp'; i: number }
  | { k: 'heads-all' }
  | { k: 'mlp-all' }
  | { k: 'layers-all' };

// ---------------------------------------------------------------------------------------------------
// Small pure helpers.

function pick<T>(list: readonly T[], rng: Rng): T {
  return list[rng.nextInt(list.length)];
}

function shuffle<T>(list: T[], rng: Rng): T[] {
  for (let i = list.length - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    [list[i], list[j]] = [list[j], list[i]];
  }
  return list;
}

/** k distinct values of [0, n), sorted (partial Fisher-Yates over a sparse map). */
function randomSubset(n: number, k: number, rng: Rng): number[] {
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
function resize(set: number[], size: number, universe: number, rng: Rng): number[] {
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
function swapMembers(set: number[], universe: number, count: number, rng: Rng): number[] {
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
function lowerBound(list: readonly number[], x: number): number {
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
function nearest(list: readonly number[], x: number): number {
  const i = lowerBound(list, x);
  if (i === 0) return list[0];
  if (i === list.length) return list[list.length - 1];
  return x - list[i - 1] <= list[i] - x ? list[i - 1] : list[i];
}

function cloneGeno(g: Geno): Geno {
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

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

export function formatParams(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

// ---------------------------------------------------------------------------------------------------
// The space's machinery, shared by createSubnetSpace and the reachability check.

class Machinery {
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
    for (let i = 0; i < g.heads.length; i++) n += layerParameters(g.e, g.hs, { numHeads: g.heads[i], intermediateSize: g.mlp[i] });
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
    for (let i = 0; i < heads.length; i++) n += layerParameters(e, hs, { numHeads: heads[i], intermediateSize: mlp[i] });
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
  private newLayer(g: Geno, t: number, rng: Rng): { h: number; m: number; hIdx: number[] | null; mIdx: number[] | null } {
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
      return { layers: range(n), e, hs, heads: Array(n).fill(h), mlp: Array(n).fill(m), eIdx: null, headIdx: null, mlpIdx: null };
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
      return { format: 1, teacher, layers: g.layers.length, embedding: g.e, headSize: g.hs, heads: g.heads[0], mlp: g.mlp[0] };
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
      return { layers: range(n), e, hs, heads: Array(n).fill(heads[0]), mlp: Array(n).fill(mlp[0]), eIdx: null, headIdx: null, mlpIdx: null };
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
    if (!has(this.dims.layers, g.layers.length) || !has(this.dims.embedding, g.e) || !has(this.dims.headSize, g.hs)) return false;
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
  private vary(g: Geno, dim: Dim, rng: Rng): void {
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

  mutateOnce(g: Geno, rng: Rng): void {
    type Op = () => void;
    const ops: Op[] = [];
    ops.push(() => this.vary(g, { k: 'e' }, rng));
    if (this.dims.headSize.length > 1) ops.push(() => this.vary(g, { k: 'hs' }, rng));
    if (this.uniform) {
      ops.push(() => this.vary(g, { k: 'heads-all' }, rng));
      ops.push(() => this.vary(g, { k: 'mlp-all' }, rng));
      ops.push(() => this.vary(g, { k: 'layers-all' }, rng));
    } else {
      ops.push(() => this.vary(g, { k: 'heads', i: rng.nextInt(g.heads.length) }, rng));
      ops.push(() => this.vary(g, { k: 'mlp', i: rng.nextInt(g.mlp.length) }, rng));
      ops.push(() => {
        const counts = this.dims.layers;
        const i = lowerBound(counts, g.layers.length);
        const j = rng.nextFloat() < 0.5 ? i - 1 : i + 1;
        if (j >= 0 && j < counts.length) this.setLayerCount(g, counts[j], rng);
      });
    }
    if (this.granular) {
      const swaps = (size: number) => 1 + rng.nextInt(Math.max(1, Math.ceil(size / 16)));
      ops.push(() => {
        // Move one kept layer to an unused teacher layer, keeping its counts where the new layer allows.
        const used = new Set(g.layers);
        const free = range(this.L).filter((t) => !used.has(t));
        if (free.length === 0) return;
        const pos = rng.nextInt(g.layers.length);
        const t = pick(free, rng);
        const h = nearest(this.headChoices(t), g.heads[pos]);
        const m = nearest(this.mlpChoices(t), g.mlp[pos]);
        const keep = { h: randomSubset(this.dims.teacherHeads[t], h, rng), m: randomSubset(this.dims.teacherMlp[t], m, rng) };
        for (const arr of [g.layers, g.heads, g.mlp, g.headIdx!, g.mlpIdx!] as unknown[][]) arr.splice(pos, 1);
        const at = lowerBound(g.layers, t);
        g.layers.splice(at, 0, t);
        g.heads.splice(at, 0, h);
        g.mlp.splice(at, 0, m);
        g.headIdx!.splice(at, 0, keep.h);
        g.mlpIdx!.splice(at, 0, keep.m);
      });
      ops.push(() => {
        g.eIdx = swapMembers(g.eIdx!, this.teacher.hiddenSize, swaps(g.e), rng);
      });
      ops.push(() => {
        const i = rng.nextInt(g.layers.length);
        g.headIdx![i] = swapMembers(g.headIdx![i], this.dims.teacherHeads[g.layers[i]], 1, rng);
      });
      ops.push(() => {
        const i = rng.nextInt(g.layers.length);
        g.mlpIdx![i] = swapMembers(g.mlpIdx![i], this.dims.teacherMlp[g.layers[i]], swaps(g.mlp[i]), rng);
      });
    }
    pick(ops, rng)();
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

// ---------------------------------------------------------------------------------------------------
// Reachability.

export interface Reachability {
  /** A spec in the range, when one was found. */
  spec: SubnetSpec | null;
  /** True when "not found" is proven (exhaustive over the counts), false when only repair failed. */
  exhaustive: boolean;
  /** The space's smallest and largest parameter counts. */
  spaceRange: { min: number; max: number };
}

function arithmetic(list: number[]): { start: number; step: number; count: number } | null {
  if (list.length === 1) return { start: list[0], step: 1, count: 1 };
  const step = list[1] - list[0];
  for (let i = 2; i < list.length; i++) if (list[i] - list[i - 1] !== step) return null;
  return { start: list[0], step, count: list.length };
}

const EXACT_BUDGET = 30_000_000;

/** Distributes a sum of `total` steps over n layers, each taking at most `max` steps. */
function spread(n: number, total: number, max: number): number[] {
  const out = Array<number>(n).fill(0);
  for (let i = 0; i < n && total > 0; i++) {
    out[i] = Math.min(max, total);
    total -= out[i];
  }
  return out;
}

/**
 * Exhaustive search over the counts (uniform teachers): in the uniform space for any choices, in the
 * layer-wise and granular spaces when the heads and MLP choices are evenly spaced. Returns a genome,
 * null (proven unreachable) or 'unknown' (over budget or not applicable).
 */
function exactSearch(m: Machinery): Geno | null | 'unknown' {
  const d = m.dims;
  const V = m.vocab;
  const uniformTeacher = d.teacherHeads.every((h) => h === d.teacherHeads[0]) && d.teacherMlp.every((x) => x === d.teacherMlp[0]);
  const make = (n: number, e: number, hs: number, heads: number[], mlp: number[]): Geno => ({
    layers: range(n),
    e,
    hs,
    heads,
    mlp,
    eIdx: m.granular ? range(e) : null,
    headIdx: m.granular ? heads.map(range) : null,
    mlpIdx: m.granular ? mlp.map(range) : null,
  });
  if (m.uniform || !uniformTeacher) {
    if (!m.uniform) return 'unknown';
    const work = d.layers.length * d.embedding.length * d.headSize.length * d.heads.length;
    if (work > EXACT_BUDGET) return 'unknown';
    for (const n of d.layers)
      for (const e of d.embedding)
        for (const hs of d.headSize)
          for (const h of d.heads) {
            // cost = base + n·(c0 + (2e + 1)·mlp), linear in the MLP width.
            const base = 2 * V * e + 2 * e;
            const c0 = layerParameters(e, hs, { numHeads: h, intermediateSize: 0 });
            const slope = n * (2 * e + 1);
            const lo = Math.ceil((m.lo - base - n * c0) / slope);
            const hi = Math.floor((m.hi - base - n * c0) / slope);
            const i0 = lowerBound(d.mlp, lo);
            if (i0 < d.mlp.length && d.mlp[i0] <= hi) return make(n, e, hs, Array(n).fill(h), Array(n).fill(d.mlp[i0]));
          }
    return null;
  }
  const H = arithmetic(d.heads);
  const M = arithmetic(d.mlp);
  if (!H || !M) return 'unknown';
  let work = 0;
  for (const n of d.layers) work += d.embedding.length * d.headSize.length * (n * (H.count - 1) + 1);
  if (work > EXACT_BUDGET) return 'unknown';
  for (const n of d.layers)
    for (const e of d.embedding)
      for (const hs of d.headSize) {
        // cost = base + n·γ + α·ΣH + β·ΣM; the sums of n evenly spaced choices are evenly spaced too.
        const base = 2 * V * e + 2 * e + n * layerParameters(e, hs, { numHeads: 0, intermediateSize: 0 });
        const alpha = layerParameters(e, hs, { numHeads: 1, intermediateSize: 0 }) - layerParameters(e, hs, { numHeads: 0, intermediateSize: 0 });
        const beta = 2 * e + 1;
        for (let jh = 0; jh <= n * (H.count - 1); jh++) {
          const sumH = n * H.start + jh * H.step;
          const rest = base + alpha * sumH;
          const smLo = Math.ceil((m.lo - rest) / beta);
          const smHi = Math.floor((m.hi - rest) / beta);
          const jLo = Math.max(0, Math.ceil((smLo - n * M.start) / M.step));
          const jHi = Math.min(n * (M.count - 1), Math.floor((smHi - n * M.start) / M.step));
          if (jLo <= jHi) {
            const hs1 = spread(n, jh, H.count - 1).map((j) => H.start + j * H.step);
            const ms1 = spread(n, jLo, M.count - 1).map((j) => M.start + j * M.step);
            return make(n, e, hs, hs1, ms1);
          }
        }
      }
  return null;
}

function findGeno(m: Machinery, tries: number): { geno: Geno | null; exhaustive: boolean } {
  // The exhaustive check first where it applies (cheap for these sizes), then repair from random starts.
  const exact = exactSearch(m);
  if (exact !== 'unknown') return { geno: exact, exhaustive: exact === null };
  const rng = new SeededRng(0x5eed);
  for (let i = 0; i < tries; i++) {
    const g = m.repair(m.random(rng), rng);
    if (g && m.countsAllowed(g)) return { geno: g, exhaustive: false };
  }
  return { geno: null, exhaustive: false };
}

function checkTarget(target: ParamTarget): void {
  const { minParams, maxParams } = target ?? ({} as ParamTarget);
  for (const [k, v] of [['minParams', minParams], ['maxParams', maxParams]] as const) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new TargetError(`${k} must be a non-negative number, got ${JSON.stringify(v)}`);
    }
  }
  if (minParams > maxParams) throw new TargetError(`minParams ${minParams} exceeds maxParams ${maxParams}`);
}

function checkKind(kind: SpaceKind): void {
  if (!SPACE_KINDS.includes(kind)) throw new SpecError('space', `must be one of ${SPACE_KINDS.join(', ')}, got ${JSON.stringify(kind)}`);
}

/**
 * Whether some sub-network of the space has a parameter count in [minParams, maxParams]. Deterministic.
 */
export function findInRange(
  teacher: NeoXConfig,
  options: { space: SpaceKind; target: ParamTarget; choices?: SpaceChoices },
): Reachability {
  checkKind(options.space);
  checkTarget(options.target);
  const dims = resolveDims(teacher, options.space, options.choices);
  const spaceRange = dimsParamRange(teacher, options.space, dims);
  const lo = Math.ceil(options.target.minParams);
  const hi = Math.floor(options.target.maxParams);
  if (lo > hi || hi < spaceRange.min || lo > spaceRange.max) return { spec: null, exhaustive: true, spaceRange };
  const m = new Machinery(teacher, options.space, dims, lo, hi, 64);
  const { geno, exhaustive } = findGeno(m, 200);
  return { spec: geno ? m.toSpec(geno) : null, exhaustive, spaceRange };
}

/** The message for a range no sub-network reaches. */
export function unreachableMessage(what: string, space: SpaceKind, r: Reachability): string {
  const span = `the ${space} space spans ${r.spaceRange.min.toLocaleString('en-US')} to ${r.spaceRange.max.toLocaleString('en-US')} parameters`;
  return r.exhaustive
    ? `${what}: no sub-network of the ${space} space has a parameter count in it (${span})`
    : `${what}: no sub-network found in it after repeated repair, and the exhaustive check does not apply to these choices (${span})`;
}

function describeRange(t: ParamTarget): string {
  return `[${Math.ceil(t.minParams).toLocaleString('en-US')}, ${Math.floor(t.maxParams).toLocaleString('en-US')}] parameters`;
}

// ---------------------------------------------------------------------------------------------------
// The adapter.

export interface SubnetSearchSpace extends SearchSpace<SubnetSpec> {
  readonly kind: SpaceKind;
  readonly target: ParamTarget;
  /** Normalised allowed values per dimension. */
  readonly dims: Dims;
  isValid(g: SubnetSpec): boolean;
  costRange(): { min: number; max: number };
  /** The canonical form of a genome. */
  canonical(g: SubnetSpec): CanonicalSpec;
}

/**
 * The search space of sub-networks of `teacher` within the target parameter range. Throws a
 * TargetError when no sub-network of the space reaches the range, a SpecError for bad choices.
 */
export function createSubnetSpace(teacher: NeoXConfig, options: SubnetSpaceOptions): SubnetSearchSpace {
  checkKind(options.space);
  checkTarget(options.target);
  const dims = resolveDims(teacher, options.space, options.choices);
  const lo = Math.ceil(options.target.minParams);
  const hi = Math.floor(options.target.maxParams);
  const attempts = options.attempts ?? 64;
  const m = new Machinery(teacher, options.space, dims, lo, hi, options.repairRounds ?? 48);
  const reach = findInRange(teacher, options);
  if (!reach.spec) throw new TargetError(unreachableMessage(describeRange(options.target), options.space, reach));

  const valid = (g: Geno) => m.countsAllowed(g) && m.inRange(m.cost(g));

  const sample = (rng: Rng): SubnetSpec => {
    for (let i = 0; i < attempts; i++) {
      const g = m.repair(m.random(rng), rng);
      if (g && valid(g)) return m.toSpec(g);
    }
    throw new TargetError(`${describeRange(options.target)}: no sub-network of the ${options.space} space found in ${attempts} tries`);
  };

  /** A parent (as a copy) when it is itself valid, else a fresh sample. */
  const fallback = (parents: SubnetSpec[], rng: Rng): SubnetSpec => {
    for (const p of parents) {
      try {
        const g = m.fromSpec(p);
        if (valid(g)) return m.toSpec(g);
      } catch {
        // not a genome of this space: sample instead
      }
    }
    return sample(rng);
  };

  const space: SubnetSearchSpace = {
    kind: options.space,
    target: { minParams: lo, maxParams: hi },
    dims,
    sample,
    mutate(g, rng) {
      const base = m.fromSpec(g);
      for (let i = 0; i < attempts; i++) {
        const child = cloneGeno(base);
        m.mutateOnce(child, rng);
        if (rng.nextFloat() < 0.3) m.mutateOnce(child, rng);
        m.snap(child, rng);
        const r = m.repair(child, rng);
        if (r && valid(r)) return m.toSpec(r);
      }
      return fallback([g], rng);
    },
    crossover(a, b, rng) {
      const ga = m.fromSpec(a);
      const gb = m.fromSpec(b);
      for (let i = 0; i < attempts; i++) {
        const child = m.cross(ga, gb, rng);
        m.snap(child, rng);
        const r = m.repair(child, rng);
        if (r && valid(r)) return m.toSpec(r);
      }
      return fallback(rng.nextFloat() < 0.5 ? [a, b] : [b, a], rng);
    },
    key(g) {
      return canonicalHash(canonicalize(g, teacher));
    },
    cost(g) {
      return m.cost(m.fromSpec(g));
    },
    describe(g) {
      const c = canonicalize(g, teacher);
      return `${describeCanonical(c)}: ${formatParams(m.cost(m.fromCanonical(c)))} parameters`;
    },
    isValid(g) {
      try {
        const c = canonicalize(g, teacher);
        const geno = m.fromCanonical(c);
        // The genome must be of this space (a projection onto it must not change the network).
        if (canonicalHash(canonicalize(m.toSpec(geno), teacher)) !== canonicalHash(c)) return false;
        return valid(geno);
      } catch {
        return false;
      }
    },
    costRange() {
      return { min: lo, max: hi };
    },
    canonical(g) {
      return canonicalize(g, teacher);
    },
  };
  return space;
}
