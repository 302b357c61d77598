/**
 * The search as an ask/tell state machine. `ask()` hands out the next batch of candidates, `tell()`
 * takes their fitness back (minimised; null = failed); when the whole batch is told the search moves
 * on (for evolution: survivor selection, next generation). Everything it holds is plain JSON
 * (`toJSON()` / `Search.restore()`), all randomness comes from one `SeededRng` inside that state, and
 * nothing depends on the order in which results arrive — so a Temporal workflow can drive it, replay
 * it and carry it across continue-as-new.
 */
import { SeededRng, type RngState } from './rng.js';
import type { SearchSpace } from './space.js';
import {
  resolveSearchOptions,
  SearchError,
  show,
  type Algorithm,
  type ResolvedSearchOptions,
  type SearchOptions,
} from './options.js';
import { crowdingDistance, nonDominatedSort, paretoIndices, rankAndCrowding } from './pareto.js';

/** How a candidate was made. */
export type Origin = 'sample' | 'stratified' | 'mutation' | 'crossover' | 'crossover+mutation' | 'retry';

export interface Candidate<G> {
  /** Sequential, unique within the search (0, 1, 2, …); also the evaluation's index in `history()`. */
  id: number;
  /** `space.key(genome)`. */
  key: string;
  genome: G;
  /** `space.cost(genome)`. */
  cost: number;
  /** Index of the batch (for evolution: the generation) that asked it. */
  generation: number;
  origin: Origin;
  /** Ids of the parents (crossover: two, mutation: one, retry: the failed attempt, sample: none). */
  parents: number[];
  /** 1 for a first evaluation, 2… for retries of a failed one (`retryFailed`). */
  attempt: number;
}

/** JSON-serialisable metrics reported with a result (tokens, FLOPs, seconds, …). */
export type Metrics = Record<string, unknown>;

export interface EvaluationResult {
  id: number;
  /** Minimised (validation loss). null, NaN or ±Infinity: the evaluation failed. */
  fitness: number | null;
  metrics?: Metrics;
  /** Why it failed, when it did. */
  error?: string;
}

export type EvaluationStatus = 'pending' | 'ok' | 'failed';

export interface EvaluationRecord<G> extends Candidate<G> {
  status: EvaluationStatus;
  /** A finite number when status is 'ok', otherwise null. */
  fitness: number | null;
  metrics?: Metrics;
  error?: string;
}

/** Stratified random search: stratum edges (strata + 1, ascending), candidates asked per stratum, quota. */
export interface StrataState {
  edges: number[];
  counts: number[];
  quota: number;
}

export interface SearchCounters {
  /** Genomes the space produced that failed `isValid`, had a non-finite cost or were not JSON. */
  invalid: number;
  /** Genomes the space produced whose key had already been asked. */
  duplicate: number;
  /** Stratified random search: samples passed over because their stratum was full. */
  stratumFull: number;
}

/** The complete state of a search; plain JSON. */
export interface SearchState<G> {
  format: 'offshoot.search';
  version: 1;
  options: ResolvedSearchOptions;
  /** Current budget (total evaluations); starts at options.budget, changed by setBudget. */
  budget: number;
  stopped: boolean;
  /** The space could not produce a new genome (all attempts gave duplicates or invalid genomes). */
  exhausted: boolean;
  /** Batches completed so far; the next ask() belongs to this generation. */
  generation: number;
  rng: RngState;
  /** Every candidate ever asked, indexed by id. */
  records: EvaluationRecord<G>[];
  /** Ids of the last batch asked while any of it is pending; [] otherwise. */
  batch: number[];
  /** Evolution: ids of the current population (successful evaluations only). */
  population: number[];
  /** Ids of failed evaluations waiting to be asked again (retryFailed > 0). */
  retryQueue: number[];
  strata: StrataState | null;
  counters: SearchCounters;
}

export interface SearchStatus {
  algorithm: Algorithm;
  multiObjective: boolean;
  generation: number;
  budget: number;
  /** Candidates asked so far (each one evaluation of the budget). */
  asked: number;
  evaluated: number;
  failed: number;
  pending: number;
  /** Evaluations the budget still allows. */
  remaining: number;
  stopped: boolean;
  exhausted: boolean;
  done: boolean;
  bestFitness: number | null;
  counters: SearchCounters;
}

const FORMAT = 'offshoot.search';

function clone<T>(x: T): T {
  return JSON.parse(JSON.stringify(x)) as T;
}

/** A genome as it would come back from JSON, or undefined when it is not JSON data. */
function canonical<G>(g: G): G | undefined {
  let text: string | undefined;
  try {
    text = JSON.stringify(g);
  } catch {
    return undefined;
  }
  return text === undefined ? undefined : (JSON.parse(text) as G);
}

function finite(x: unknown): x is number {
  return typeof x === 'number' && Number.isFinite(x);
}

interface Admitted<G> {
  genome: G;
  key: string;
  cost: number;
}

interface Selection<G> {
  pop: EvaluationRecord<G>[];
  /** better(i, j) < 0 when pop[i] beats pop[j]. */
  better: (i: number, j: number) => number;
}

function compareSingle<G>(a: EvaluationRecord<G>, b: EvaluationRecord<G>): number {
  return (a.fitness as number) - (b.fitness as number) || a.cost - b.cost || a.id - b.id;
}

export class Search<G> {
  private readonly space: SearchSpace<G>;
  private readonly s: SearchState<G>;
  private readonly rng: SeededRng;
  private readonly seen: Set<string>;

  private constructor(space: SearchSpace<G>, state: SearchState<G>) {
    this.space = space;
    this.s = state;
    this.rng = SeededRng.fromState(state.rng);
    this.seen = new Set(state.records.map((r) => r.key));
  }

  /** A new search over `space`; throws SearchError naming the field on a bad option. */
  static create<G>(options: SearchOptions, space: SearchSpace<G>): Search<G> {
    checkSpace(space);
    const o = resolveSearchOptions(options);
    return new Search(space, {
      format: FORMAT,
      version: 1,
      options: o,
      budget: o.budget,
      stopped: false,
      exhausted: false,
      generation: 0,
      rng: new SeededRng(o.seed).state(),
      records: [],
      batch: [],
      population: [],
      retryQueue: [],
      strata: null,
      counters: { invalid: 0, duplicate: 0, stratumFull: 0 },
    });
  }

  /**
   * Resumes a search from `toJSON()` output (the object or its JSON text) over the same space. The
   * restored search continues exactly as the original would have.
   */
  static restore<G>(json: SearchState<G> | string, space: SearchSpace<G>): Search<G> {
    checkSpace(space);
    let state: unknown;
    if (typeof json === 'string') {
      try {
        state = JSON.parse(json);
      } catch (e) {
        throw new SearchError('state', json, `search state is not valid JSON: ${(e as Error).message}`);
      }
    } else {
      state = clone(json);
    }
    return new Search(space, validateState(state as SearchState<G>, space));
  }

  // ---------------------------------------------------------------- ask / tell

  /**
   * The next batch of candidates to evaluate. Returns [] while candidates of the previous batch are
   * still pending (see `pending()`), after `stop()`, when the budget is spent, and when the space can
   * produce nothing new. Every candidate is valid per the space, in its range, and has a key never
   * asked before (except explicit retries of failed evaluations).
   */
  ask(): Candidate<G>[] {
    const s = this.s;
    if (s.batch.length > 0 || s.stopped || s.exhausted) return [];
    const remaining = s.budget - s.records.length;
    if (remaining <= 0) return [];

    const o = s.options;
    const popSize = s.population.length;
    const size = Math.min(o.algorithm === 'evolution' && popSize === 0 ? o.population : o.batchSize, remaining);
    const out: EvaluationRecord<G>[] = [];

    while (out.length < size && s.retryQueue.length > 0) {
      const failed = s.records[s.retryQueue.shift() as number];
      out.push(
        this.emit(
          { genome: clone(failed.genome), key: failed.key, cost: failed.cost },
          'retry',
          [failed.id],
          failed.attempt + 1,
        ),
      );
    }

    if (o.algorithm === 'evolution') {
      const sel = popSize > 0 ? this.selection() : null;
      while (out.length < size) {
        const r = sel ? this.breed(sel) : this.sampleNew();
        if (!r) break;
        out.push(r);
      }
    } else if (o.algorithm === 'random') {
      while (out.length < size) {
        const r = this.sampleNew();
        if (!r) break;
        out.push(r);
      }
    } else {
      if (!s.strata) s.strata = this.initStrata();
      while (out.length < size && s.strata) {
        const r = this.sampleStratified(s.strata);
        if (!r) break;
        out.push(r);
      }
    }

    if (out.length === 0) {
      s.exhausted = true;
    } else {
      s.batch = out.map((r) => r.id);
    }
    this.saveRng();
    return out.map((r) => candidateOf(r));
  }

  /** Candidates asked and not yet told (e.g. to dispatch again after a restore). */
  pending(): Candidate<G>[] {
    return this.s.batch
      .map((id) => this.s.records[id])
      .filter((r) => r.status === 'pending')
      .map((r) => candidateOf(r));
  }

  /**
   * Results for pending candidates, in any order and any grouping: a batch may be told in several
   * calls. The call is atomic: a bad entry (unknown or already told id, fitness neither a number nor
   * null) throws SearchError and changes nothing. Non-finite fitness counts as a failure.
   */
  tell(results: readonly EvaluationResult[]): void {
    if (!Array.isArray(results))
      throw new SearchError('results', results, `tell(results): results must be an array, got ${show(results)}`);
    const s = this.s;
    const ids = new Set<number>();
    results.forEach((res, i) => {
      const where = `results[${i}]`;
      if (res === null || typeof res !== 'object')
        throw new SearchError(where, res, `tell: ${where} must be an object, got ${show(res)}`);
      const { id, fitness, metrics, error } = res;
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= s.records.length) {
        throw new SearchError(`${where}.id`, id, `tell: ${where}.id ${show(id)} was never asked`);
      }
      if (s.records[id].status !== 'pending' || !s.batch.includes(id)) {
        throw new SearchError(
          `${where}.id`,
          id,
          `tell: ${where}.id ${id} is not pending (already told: ${s.records[id].status})`,
        );
      }
      if (ids.has(id)) throw new SearchError(`${where}.id`, id, `tell: ${where}.id ${id} appears twice in one call`);
      ids.add(id);
      if (fitness !== null && typeof fitness !== 'number') {
        throw new SearchError(
          `${where}.fitness`,
          fitness,
          `tell: ${where}.fitness must be a number or null, got ${show(fitness)}`,
        );
      }
      if (metrics !== undefined && (metrics === null || typeof metrics !== 'object' || Array.isArray(metrics))) {
        throw new SearchError(
          `${where}.metrics`,
          metrics,
          `tell: ${where}.metrics must be an object, got ${show(metrics)}`,
        );
      }
      if (error !== undefined && typeof error !== 'string') {
        throw new SearchError(`${where}.error`, error, `tell: ${where}.error must be a string, got ${show(error)}`);
      }
    });
    for (const res of results) {
      const r = s.records[res.id];
      if (res.metrics !== undefined) r.metrics = canonical(res.metrics) as Metrics;
      if (finite(res.fitness)) {
        r.status = 'ok';
        r.fitness = res.fitness;
      } else {
        r.status = 'failed';
        r.fitness = null;
        r.error =
          res.error ?? (res.fitness === null ? 'evaluation failed' : `non-finite fitness ${String(res.fitness)}`);
      }
    }
    if (s.batch.every((id) => s.records[id].status !== 'pending')) this.finishBatch();
  }

  /** True when no candidate is pending and none will be asked (stopped, budget spent or space exhausted). */
  done(): boolean {
    const s = this.s;
    return s.batch.length === 0 && (s.stopped || s.exhausted || s.records.length >= s.budget);
  }

  /**
   * Changes the total evaluation budget mid-search. Lowering it below what was already asked ends the
   * search once pending candidates are told; raising it lets a finished (not stopped) search go on.
   */
  setBudget(budget: number): void {
    if (typeof budget !== 'number' || !Number.isSafeInteger(budget) || budget < 0) {
      throw new SearchError('budget', budget, `setBudget: budget must be a non-negative integer, got ${show(budget)}`);
    }
    this.s.budget = budget;
  }

  /** Early stop: nothing more is asked; pending candidates may still be told. Final. */
  stop(): void {
    this.s.stopped = true;
  }

  // ---------------------------------------------------------------- results

  /** The successful evaluation with the lowest fitness (ties: lower cost, then earlier id). */
  best(): EvaluationRecord<G> | undefined {
    let best: EvaluationRecord<G> | undefined;
    for (const r of this.s.records) {
      if (r.status === 'ok' && (!best || compareSingle(r, best) < 0)) best = r;
    }
    return best ? clone(best) : undefined;
  }

  /**
   * Non-dominated successful evaluations in (fitness, cost), both minimised, sorted by cost ascending
   * (then fitness, then id). Available in either mode.
   */
  paretoFront(): EvaluationRecord<G>[] {
    const ok = this.s.records.filter((r) => r.status === 'ok');
    const front = paretoIndices(ok.map((r) => [r.fitness as number, r.cost])).map((i) => ok[i]);
    front.sort((a, b) => a.cost - b.cost || (a.fitness as number) - (b.fitness as number) || a.id - b.id);
    return clone(front);
  }

  /** Every told evaluation (successes and failures), in id order. */
  history(): EvaluationRecord<G>[] {
    return clone(this.s.records.filter((r) => r.status !== 'pending'));
  }

  /** Evolution: the current population (best first by fitness). Empty for the random baselines. */
  population(): EvaluationRecord<G>[] {
    return clone(this.s.population.map((id) => this.s.records[id]).sort(compareSingle));
  }

  status(): SearchStatus {
    const s = this.s;
    let evaluated = 0;
    let failed = 0;
    let pending = 0;
    for (const r of s.records) {
      if (r.status === 'ok') evaluated++;
      else if (r.status === 'failed') failed++;
      else pending++;
    }
    const b = this.best();
    return {
      algorithm: s.options.algorithm,
      multiObjective: s.options.multiObjective,
      generation: s.generation,
      budget: s.budget,
      asked: s.records.length,
      evaluated,
      failed,
      pending,
      remaining: Math.max(0, s.budget - s.records.length),
      stopped: s.stopped,
      exhausted: s.exhausted,
      done: this.done(),
      bestFitness: b ? (b.fitness as number) : null,
      counters: { ...s.counters },
    };
  }

  get options(): ResolvedSearchOptions {
    return clone(this.s.options);
  }

  /** The whole state as plain JSON data (a deep copy); `Search.restore(state, space)` resumes it. */
  toJSON(): SearchState<G> {
    this.saveRng();
    return clone(this.s);
  }

  // ---------------------------------------------------------------- internals

  private saveRng(): void {
    this.s.rng = this.rng.state();
  }

  private emit(a: Admitted<G>, origin: Origin, parents: number[], attempt = 1): EvaluationRecord<G> {
    const r: EvaluationRecord<G> = {
      id: this.s.records.length,
      key: a.key,
      genome: a.genome,
      cost: a.cost,
      generation: this.s.generation,
      origin,
      parents,
      attempt,
      status: 'pending',
      fitness: null,
    };
    this.s.records.push(r);
    this.seen.add(a.key);
    return r;
  }

  /** Checks a genome the space produced: JSON data, valid, finite cost, never seen. */
  private admit(g: G, dedup = true): Admitted<G> | null {
    const c = dedup ? this.s.counters : { invalid: 0, duplicate: 0, stratumFull: 0 };
    const genome = canonical(g);
    if (genome === undefined) {
      c.invalid++;
      return null;
    }
    if (this.space.isValid) {
      let ok = false;
      try {
        ok = this.space.isValid(clone(genome)) === true;
      } catch {
        ok = false;
      }
      if (!ok) {
        c.invalid++;
        return null;
      }
    }
    const key = this.space.key(clone(genome));
    if (typeof key !== 'string') {
      throw new SearchError('space.key', key, `search space: key() must return a string, got ${show(key)}`);
    }
    if (dedup && this.seen.has(key)) {
      c.duplicate++;
      return null;
    }
    const cost = this.space.cost(clone(genome));
    if (!finite(cost)) {
      c.invalid++;
      return null;
    }
    return { genome, key, cost };
  }

  private sampleNew(origin: Origin = 'sample'): EvaluationRecord<G> | null {
    for (let attempt = 0; attempt < this.s.options.maxAttempts; attempt++) {
      const a = this.admit(this.space.sample(this.rng));
      if (a) return this.emit(a, origin, []);
    }
    return null;
  }

  // ------------------------------------------------ evolution

  private selection(): Selection<G> {
    const pop = this.s.population.map((id) => this.s.records[id]);
    if (!this.s.options.multiObjective) {
      return { pop, better: (i, j) => compareSingle(pop[i], pop[j]) };
    }
    const { rank, crowding } = rankAndCrowding(pop.map((r) => [r.fitness as number, r.cost]));
    return {
      pop,
      better: (i, j) =>
        rank[i] - rank[j] ||
        (crowding[i] === crowding[j] ? 0 : crowding[i] > crowding[j] ? -1 : 1) ||
        pop[i].id - pop[j].id,
    };
  }

  /** Tournament: `tournamentSize` distinct individuals drawn uniformly (excluding `exclude`); the best wins. */
  private tournament(sel: Selection<G>, exclude = -1): number {
    const idx: number[] = [];
    for (let i = 0; i < sel.pop.length; i++) if (i !== exclude) idx.push(i);
    const k = Math.min(this.s.options.tournamentSize, idx.length);
    let winner = -1;
    for (let t = 0; t < k; t++) {
      const j = t + this.rng.nextInt(idx.length - t);
      [idx[t], idx[j]] = [idx[j], idx[t]];
      if (winner < 0 || sel.better(idx[t], winner) < 0) winner = idx[t];
    }
    return winner;
  }

  private breed(sel: Selection<G>): EvaluationRecord<G> | null {
    const o = this.s.options;
    for (let attempt = 0; attempt < o.maxAttempts; attempt++) {
      const i1 = this.tournament(sel);
      const p1 = sel.pop[i1];
      let genome: G;
      let origin: Origin;
      let parents: number[];
      if (sel.pop.length >= 2 && this.rng.nextFloat() < o.crossoverProbability) {
        const p2 = sel.pop[this.tournament(sel, i1)];
        genome = this.space.crossover(clone(p1.genome), clone(p2.genome), this.rng);
        origin = 'crossover';
        parents = [p1.id, p2.id];
        if (this.rng.nextFloat() < o.mutationProbability) {
          genome = this.space.mutate(genome, this.rng);
          origin = 'crossover+mutation';
        }
      } else {
        genome = this.space.mutate(clone(p1.genome), this.rng);
        origin = 'mutation';
        parents = [p1.id];
      }
      const a = this.admit(genome);
      if (a) return this.emit(a, origin, parents);
    }
    // The neighbourhood of the population is used up: fall back to fresh samples.
    return this.sampleNew();
  }

  private finishBatch(): void {
    const s = this.s;
    const batch = s.batch.map((id) => s.records[id]);
    for (const r of batch) {
      if (r.status === 'failed' && r.attempt <= s.options.retryFailed) s.retryQueue.push(r.id);
    }
    if (s.options.algorithm === 'evolution') {
      const offspring = batch.filter((r) => r.status === 'ok');
      s.population = s.options.multiObjective ? this.surviveNsga2(offspring) : this.surviveElitist(offspring);
    }
    s.batch = [];
    s.generation++;
  }

  /** Single-objective: the `elitism` best parents, then the best offspring, then the best other parents. */
  private surviveElitist(offspring: EvaluationRecord<G>[]): number[] {
    const o = this.s.options;
    const old = this.s.population.map((id) => this.s.records[id]).sort(compareSingle);
    const elites = old.slice(0, o.elitism);
    const rest = [...offspring.slice().sort(compareSingle), ...old.slice(o.elitism)];
    return [...elites, ...rest.slice(0, o.population - elites.length)].map((r) => r.id);
  }

  /** Multi-objective: NSGA-II environmental selection over parents and offspring together. */
  private surviveNsga2(offspring: EvaluationRecord<G>[]): number[] {
    const P = this.s.options.population;
    const pool = [...this.s.population.map((id) => this.s.records[id]), ...offspring].sort((a, b) => a.id - b.id);
    const points = pool.map((r) => [r.fitness as number, r.cost]);
    const chosen: number[] = [];
    for (const front of nonDominatedSort(points)) {
      if (chosen.length + front.length <= P) {
        chosen.push(...front);
        if (chosen.length === P) break;
        continue;
      }
      const d = crowdingDistance(points, front);
      const order = front.map((_, i) => i).sort((a, b) => (d[a] === d[b] ? front[a] - front[b] : d[a] > d[b] ? -1 : 1));
      for (const i of order.slice(0, P - chosen.length)) chosen.push(front[i]);
      break;
    }
    return chosen.map((i) => pool[i].id);
  }

  // ------------------------------------------------ stratified random search

  private initStrata(): StrataState | null {
    const o = this.s.options;
    let min: number;
    let max: number;
    if (o.costRange) {
      [min, max] = o.costRange;
    } else if (this.space.costRange) {
      const r = this.space.costRange();
      if (!r || !finite(r.min) || !finite(r.max) || r.min > r.max) {
        throw new SearchError(
          'space.costRange',
          r,
          `search space: costRange() must return finite { min ≤ max }, got ${show(r)}`,
        );
      }
      ({ min, max } = r);
    } else {
      min = Infinity;
      max = -Infinity;
      for (let i = 0; i < o.strataWarmup; i++) {
        const a = this.admit(this.space.sample(this.rng), false);
        if (!a) continue;
        if (a.cost < min) min = a.cost;
        if (a.cost > max) max = a.cost;
      }
      if (!finite(min)) return null; // nothing valid to stratify: the space is exhausted
    }
    if (o.logStrata && min <= 0) {
      throw new SearchError(
        'logStrata',
        true,
        `search option "logStrata" needs a positive cost range, got [${min}, ${max}]`,
      );
    }
    const edges: number[] = [];
    for (let i = 0; i <= o.strata; i++) {
      const t = i / o.strata;
      edges.push(o.logStrata ? Math.exp(Math.log(min) + t * (Math.log(max) - Math.log(min))) : min + t * (max - min));
    }
    edges[0] = min;
    edges[o.strata] = max;
    return { edges, counts: new Array<number>(o.strata).fill(0), quota: 1 };
  }

  private stratumOf(st: StrataState, cost: number): number {
    const n = st.counts.length;
    for (let i = 0; i < n - 1; i++) if (cost < st.edges[i + 1]) return i;
    return n - 1;
  }

  /**
   * whittle's stratified sampling: a sample is accepted while its stratum holds fewer than `quota`
   * candidates; the quota rises once all strata but `emptyStrataTolerance` are full. After
   * `samplePatience` passed-over samples the last one is taken anyway.
   */
  private sampleStratified(st: StrataState): EvaluationRecord<G> | null {
    const o = this.s.options;
    let last: Admitted<G> | null = null;
    let passed = 0;
    let failures = 0;
    while (failures < o.maxAttempts) {
      const a = this.admit(this.space.sample(this.rng));
      if (!a) {
        failures++;
        continue;
      }
      failures = 0;
      last = a;
      if (st.counts[this.stratumOf(st, a.cost)] < st.quota || passed >= o.samplePatience) break;
      passed++;
      this.s.counters.stratumFull++;
    }
    if (!last) return null;
    st.counts[this.stratumOf(st, last.cost)]++;
    const full = st.counts.filter((c) => c >= st.quota).length;
    if (full + o.emptyStrataTolerance >= st.counts.length) st.quota++;
    return this.emit(last, 'stratified', []);
  }
}

function candidateOf<G>(r: EvaluationRecord<G>): Candidate<G> {
  return clone({
    id: r.id,
    key: r.key,
    genome: r.genome,
    cost: r.cost,
    generation: r.generation,
    origin: r.origin,
    parents: r.parents,
    attempt: r.attempt,
  });
}

function checkSpace<G>(space: SearchSpace<G>): void {
  if (space === null || typeof space !== 'object') {
    throw new SearchError('space', space, `search space must be an object, got ${show(space)}`);
  }
  for (const m of ['sample', 'mutate', 'crossover', 'key', 'cost'] as const) {
    if (typeof space[m] !== 'function')
      throw new SearchError(`space.${m}`, space[m], `search space: ${m} must be a function`);
  }
}

function bad(field: string, value: unknown, what: string): never {
  throw new SearchError(field, value, `search state: "${field}" ${what}, got ${show(value)}`);
}

const ORIGINS: readonly Origin[] = ['sample', 'stratified', 'mutation', 'crossover', 'crossover+mutation', 'retry'];
const STATUSES: readonly EvaluationStatus[] = ['pending', 'ok', 'failed'];

function validateState<G>(state: SearchState<G>, space: SearchSpace<G>): SearchState<G> {
  if (state === null || typeof state !== 'object') bad('state', state, 'must be an object');
  if (state.format !== FORMAT) bad('format', state.format, `must be "${FORMAT}"`);
  if (state.version !== 1) bad('version', state.version, 'must be 1 (the only version this code reads)');
  const { costRange, ...rest } = (state.options ?? {}) as ResolvedSearchOptions;
  const options = resolveSearchOptions(costRange === null ? rest : { ...rest, costRange });
  SeededRng.fromState(state.rng);
  if (!Number.isSafeInteger(state.budget) || state.budget < 0)
    bad('budget', state.budget, 'must be a non-negative integer');
  if (typeof state.stopped !== 'boolean') bad('stopped', state.stopped, 'must be a boolean');
  if (typeof state.exhausted !== 'boolean') bad('exhausted', state.exhausted, 'must be a boolean');
  if (!Number.isSafeInteger(state.generation) || state.generation < 0)
    bad('generation', state.generation, 'must be a non-negative integer');
  if (!Array.isArray(state.records)) bad('records', state.records, 'must be an array');
  state.records.forEach((r, i) => {
    const f = `records[${i}]`;
    if (r === null || typeof r !== 'object') bad(f, r, 'must be an object');
    if (r.id !== i) bad(`${f}.id`, r.id, `must equal its index ${i}`);
    if (!STATUSES.includes(r.status)) bad(`${f}.status`, r.status, `must be one of ${STATUSES.join(', ')}`);
    if (!ORIGINS.includes(r.origin)) bad(`${f}.origin`, r.origin, `must be one of ${ORIGINS.join(', ')}`);
    if (r.status === 'ok' ? !finite(r.fitness) : r.fitness !== null)
      bad(`${f}.fitness`, r.fitness, `does not match status ${r.status}`);
    if (!finite(r.cost)) bad(`${f}.cost`, r.cost, 'must be a finite number');
    const key = space.key(clone(r.genome));
    if (key !== r.key)
      bad(
        `${f}.key`,
        r.key,
        `differs from space.key(genome) = ${show(key)}: the state was made with another search space`,
      );
  });
  const ids = (field: string, v: unknown): number[] => {
    if (!Array.isArray(v) || !v.every((id) => Number.isInteger(id) && id >= 0 && id < state.records.length)) {
      bad(field, v, 'must be an array of record ids');
    }
    return v as number[];
  };
  const batch = ids('batch', state.batch);
  const pendingIds = state.records.filter((r) => r.status === 'pending').map((r) => r.id);
  if (pendingIds.some((id) => !batch.includes(id)))
    bad('batch', batch, `must contain every pending record (${pendingIds.join(', ')})`);
  if (batch.length > 0 && pendingIds.length === 0) bad('batch', batch, 'must be empty when nothing is pending');
  if (ids('population', state.population).some((id) => state.records[id].status !== 'ok')) {
    bad('population', state.population, 'must hold only successful evaluations');
  }
  if (ids('retryQueue', state.retryQueue).some((id) => state.records[id].status !== 'failed')) {
    bad('retryQueue', state.retryQueue, 'must hold only failed evaluations');
  }
  const st = state.strata;
  if (st !== null) {
    if (
      typeof st !== 'object' ||
      !Array.isArray(st.edges) ||
      !Array.isArray(st.counts) ||
      st.edges.length !== st.counts.length + 1 ||
      !st.edges.every(finite) ||
      !st.counts.every((c) => Number.isSafeInteger(c) && c >= 0) ||
      !Number.isSafeInteger(st.quota)
    ) {
      bad('strata', st, 'must be { edges: number[strata + 1], counts: integer[strata], quota: integer }');
    }
  }
  const c = state.counters;
  if (
    c === null ||
    typeof c !== 'object' ||
    ![c.invalid, c.duplicate, c.stratumFull].every((x) => Number.isSafeInteger(x))
  ) {
    bad('counters', c, 'must be { invalid, duplicate, stratumFull } integers');
  }
  return { ...state, options };
}

/** A new search over `space` (see `SearchOptions` for the defaults). */
export function createSearch<G>(options: SearchOptions, space: SearchSpace<G>): Search<G> {
  return Search.create(options, space);
}

/** Resumes a search from `toJSON()` output; see `Search.restore`. */
export function restoreSearch<G>(json: SearchState<G> | string, space: SearchSpace<G>): Search<G> {
  return Search.restore(json, space);
}
