/** Search options: types, documented defaults and validation with errors that name the field. */

export const ALGORITHMS = ['evolution', 'random', 'stratified-random'] as const;
export type Algorithm = (typeof ALGORITHMS)[number];

export interface SearchOptions {
  /** 'evolution' (default), 'random' or 'stratified-random'. */
  algorithm?: Algorithm;
  /** Total evaluations (every asked candidate, failures and retries included). Default 100. */
  budget?: number;
  /** Seed of the search's generator, a non-negative safe integer. Default 0. */
  seed?: number;
  /** Evolution: population size (≥ 2). Random baselines: the default batch size. Default 20. */
  population?: number;
  /**
   * Candidates per `ask()`. Evolution: offspring per generation (default population − elitism; the
   * first generation is always `population` random samples). Random baselines: default `population`.
   */
  batchSize?: number;
  /** Evolution: individuals drawn (without replacement) per tournament, 1..population. Default 3 (the population, if smaller). */
  tournamentSize?: number;
  /** Evolution, single-objective: best individuals carried unchanged into the next population, 0..population−1. Default 2 (population − 1, if smaller). */
  elitism?: number;
  /** Evolution: probability that a child is made by crossover of two tournament winners. Default 0.5. */
  crossoverProbability?: number;
  /**
   * Evolution: probability that a crossover child is also mutated. A child not made by crossover is
   * always mutated (otherwise it would be a copy of its parent). Default 0.8.
   */
  mutationProbability?: number;
  /** Minimise (fitness, cost) jointly: NSGA-II ranks and crowding for selection and survival. Default false. */
  multiObjective?: boolean;
  /** Stratified random search: number of cost strata. Default 20 (whittle's bins). */
  strata?: number;
  /** Stratified random search: log-spaced strata instead of linear. Default false. */
  logStrata?: boolean;
  /** Stratified random search: [min, max] cost range to stratify. Default the space's `costRange()`, else estimated. */
  costRange?: [number, number];
  /** Stratified random search: samples drawn to estimate the cost range when none is given. Default 200. */
  strataWarmup?: number;
  /** Stratified random search: strata that may stay empty before every stratum's quota rises (whittle: 4). Default 4. */
  emptyStrataTolerance?: number;
  /** Stratified random search: samples rejected (stratum full) before one is accepted anyway. Default 1000. */
  samplePatience?: number;
  /** Attempts to produce one new, valid, unseen genome before giving up on it. Default 100. */
  maxAttempts?: number;
  /** Times a failed candidate (fitness null) is asked again; each attempt costs one evaluation. Default 0. */
  retryFailed?: number;
}

export type ResolvedSearchOptions = Required<Omit<SearchOptions, 'costRange'>> & {
  costRange: [number, number] | null;
};

export const SEARCH_DEFAULTS = {
  algorithm: 'evolution',
  budget: 100,
  seed: 0,
  population: 20,
  tournamentSize: 3,
  elitism: 2,
  crossoverProbability: 0.5,
  mutationProbability: 0.8,
  multiObjective: false,
  strata: 20,
  logStrata: false,
  strataWarmup: 200,
  emptyStrataTolerance: 4,
  samplePatience: 1000,
  maxAttempts: 100,
  retryFailed: 0,
} as const;

/** Invalid search option, state or call; `field` names the offending option or argument. */
export class SearchError extends Error {
  readonly field: string;
  readonly value: unknown;
  constructor(field: string, value: unknown, message: string) {
    super(message);
    this.name = 'SearchError';
    this.field = field;
    this.value = value;
  }
}

export function show(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || value === undefined) {
    return String(value);
  }
  try {
    const s = JSON.stringify(value);
    return s === undefined ? String(value) : s.length > 200 ? `${s.slice(0, 200)}…` : s;
  } catch {
    return String(value);
  }
}

function fail(field: string, value: unknown, expectation: string): never {
  throw new SearchError(field, value, `search option "${field}" ${expectation}, got ${show(value)}`);
}

function int(field: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER, what?: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    fail(
      field,
      value,
      what ??
        (max === Number.MAX_SAFE_INTEGER ? `must be an integer ≥ ${min}` : `must be an integer in [${min}, ${max}]`),
    );
  }
  return value;
}

function probability(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > 1) {
    fail(field, value, 'must be a probability in [0, 1]');
  }
  return value;
}

function bool(field: string, value: unknown): boolean {
  if (typeof value !== 'boolean') fail(field, value, 'must be true or false');
  return value;
}

const KNOWN = new Set<string>([
  'algorithm',
  'budget',
  'seed',
  'population',
  'batchSize',
  'tournamentSize',
  'elitism',
  'crossoverProbability',
  'mutationProbability',
  'multiObjective',
  'strata',
  'logStrata',
  'costRange',
  'strataWarmup',
  'emptyStrataTolerance',
  'samplePatience',
  'maxAttempts',
  'retryFailed',
]);

/** Fills in defaults and validates; throws `SearchError` naming the first bad field. */
export function resolveSearchOptions(options: SearchOptions = {}): ResolvedSearchOptions {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new SearchError('options', options, `search options must be an object, got ${show(options)}`);
  }
  for (const k of Object.keys(options)) {
    if (!KNOWN.has(k)) {
      throw new SearchError(
        k,
        (options as Record<string, unknown>)[k],
        `unknown search option "${k}" (known: ${[...KNOWN].join(', ')})`,
      );
    }
  }
  const o = { ...options } as Record<string, unknown>;
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  const d = SEARCH_DEFAULTS;

  const algorithm = (o.algorithm ?? d.algorithm) as Algorithm;
  if (!ALGORITHMS.includes(algorithm)) fail('algorithm', algorithm, `must be one of ${ALGORITHMS.join(', ')}`);
  const seed = int('seed', o.seed ?? d.seed, 0, Number.MAX_SAFE_INTEGER, 'must be a non-negative safe integer');
  const population = int('population', o.population ?? d.population, 2);
  const tournamentSize = int(
    'tournamentSize',
    // Defaults shrink to a small population; a value the caller asked for is checked as given.
    o.tournamentSize ?? Math.min(d.tournamentSize, population),
    1,
    population,
    `must be an integer in [1, population = ${population}]`,
  );
  const elitism = int(
    'elitism',
    o.elitism ?? Math.min(d.elitism, population - 1),
    0,
    population - 1,
    `must be an integer in [0, population − 1 = ${population - 1}]`,
  );
  const crossoverProbability = probability('crossoverProbability', o.crossoverProbability ?? d.crossoverProbability);
  const mutationProbability = probability('mutationProbability', o.mutationProbability ?? d.mutationProbability);
  const multiObjective = bool('multiObjective', o.multiObjective ?? d.multiObjective);
  const defaultBatch = algorithm === 'evolution' ? population - elitism : population;
  const batchSize = int('batchSize', o.batchSize ?? defaultBatch, 1);
  const budget =
    algorithm === 'evolution'
      ? int(
          'budget',
          o.budget ?? d.budget,
          population,
          Number.MAX_SAFE_INTEGER,
          `must be an integer ≥ population (${population}) for evolution`,
        )
      : int('budget', o.budget ?? d.budget, 1);
  const strata = int('strata', o.strata ?? d.strata, 1);
  const logStrata = bool('logStrata', o.logStrata ?? d.logStrata);
  const strataWarmup = int('strataWarmup', o.strataWarmup ?? d.strataWarmup, 1);
  const emptyStrataTolerance = int('emptyStrataTolerance', o.emptyStrataTolerance ?? d.emptyStrataTolerance, 0);
  const samplePatience = int('samplePatience', o.samplePatience ?? d.samplePatience, 1);
  const maxAttempts = int('maxAttempts', o.maxAttempts ?? d.maxAttempts, 1);
  const retryFailed = int('retryFailed', o.retryFailed ?? d.retryFailed, 0);

  let costRange: [number, number] | null = null;
  if (o.costRange !== undefined) {
    const r = o.costRange;
    if (
      !Array.isArray(r) ||
      r.length !== 2 ||
      !r.every((x) => typeof x === 'number' && Number.isFinite(x)) ||
      r[0] > r[1]
    ) {
      fail('costRange', r, 'must be [min, max] with finite numbers and min ≤ max');
    }
    costRange = [r[0], r[1]];
  }
  if (logStrata && costRange !== null && costRange[0] <= 0) {
    fail('costRange', costRange, 'must be positive when logStrata is true');
  }

  return {
    algorithm,
    budget,
    seed,
    population,
    batchSize,
    tournamentSize,
    elitism,
    crossoverProbability,
    mutationProbability,
    multiObjective,
    strata,
    logStrata,
    costRange,
    strataWarmup,
    emptyStrataTolerance,
    samplePatience,
    maxAttempts,
    retryFailed,
  };
}
