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
import { type Geno, Machinery, cloneGeno, lowerBound, range } from './genome.js';
import { SUBNET_MUTATIONS } from './mutations.js';
import {
  type CanonicalSpec,
  type SubnetSpec,
  SpecError,
  canonicalHash,
  canonicalize,
  describeCanonical,
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
  /** Chance that a mutation applies a second operator after the first (mutations.ts). Default 0.3. */
  secondMutationProbability?: number;
}

export const SUBNET_SPACE_DEFAULTS = { repairRounds: 48, attempts: 64, secondMutationProbability: 0.3 } as const;

export function formatParams(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
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
  const uniformTeacher =
    d.teacherHeads.every((h) => h === d.teacherHeads[0]) && d.teacherMlp.every((x) => x === d.teacherMlp[0]);
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
        const alpha =
          layerParameters(e, hs, { numHeads: 1, intermediateSize: 0 }) -
          layerParameters(e, hs, { numHeads: 0, intermediateSize: 0 });
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
  for (const [k, v] of [
    ['minParams', minParams],
    ['maxParams', maxParams],
  ] as const) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
      throw new TargetError(`${k} must be a non-negative number, got ${JSON.stringify(v)}`);
    }
  }
  if (minParams > maxParams) throw new TargetError(`minParams ${minParams} exceeds maxParams ${maxParams}`);
}

function checkKind(kind: SpaceKind): void {
  if (!SPACE_KINDS.includes(kind))
    throw new SpecError('space', `must be one of ${SPACE_KINDS.join(', ')}, got ${JSON.stringify(kind)}`);
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
  const d = SUBNET_SPACE_DEFAULTS;
  const attempts = options.attempts ?? d.attempts;
  const secondMutationProbability = options.secondMutationProbability ?? d.secondMutationProbability;
  if (
    typeof secondMutationProbability !== 'number' ||
    !(secondMutationProbability >= 0 && secondMutationProbability <= 1)
  ) {
    throw new SpecError(
      'secondMutationProbability',
      `must be a probability in [0, 1], got ${JSON.stringify(secondMutationProbability)}`,
    );
  }
  const m = new Machinery(teacher, options.space, dims, lo, hi, options.repairRounds ?? d.repairRounds);
  const reach = findInRange(teacher, options);
  if (!reach.spec) throw new TargetError(unreachableMessage(describeRange(options.target), options.space, reach));

  const valid = (g: Geno) => m.countsAllowed(g) && m.inRange(m.cost(g));

  const sample = (rng: Rng): SubnetSpec => {
    for (let i = 0; i < attempts; i++) {
      const g = m.repair(m.random(rng), rng);
      if (g && valid(g)) return m.toSpec(g);
    }
    throw new TargetError(
      `${describeRange(options.target)}: no sub-network of the ${options.space} space found in ${attempts} tries`,
    );
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
        SUBNET_MUTATIONS.mutate(child, m, rng, secondMutationProbability);
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
