import { describe, expect, it } from 'vitest';
import {
  createSearch,
  crowdingDistance,
  dominates,
  nonDominatedSort,
  resolveSearchOptions,
  restoreSearch,
  runSearchSync,
  type Search,
  SEARCH_DEFAULTS,
  SearchError,
  SeededRng,
  type Candidate,
  type EvaluationResult,
  type SearchOptions,
  type SearchSpace,
} from '../core/search/index.js';
import { benchmarkSpace, distanceToTarget, FaultySpace, TARGET, VecSpace, type Vec } from './search-synthetic.js';

/** Drives a search to the end, checking every asked candidate against the space and for duplicates. */
function drive(
  search: Search<Vec>,
  space: VecSpace,
  fitness: (g: Vec, c: Candidate<Vec>) => number | null = distanceToTarget,
): { asked: Candidate<Vec>[]; batches: number } {
  const asked: Candidate<Vec>[] = [];
  const keys = new Set<string>();
  let batches = 0;
  while (!search.done()) {
    const batch = search.ask();
    if (batch.length === 0) {
      expect(search.done()).toBe(true); // only an exhausted space ends a search this way
      break;
    }
    batches++;
    for (const c of batch) {
      expect(space.isValid(c.genome)).toBe(true);
      expect(c.key).toBe(space.key(c.genome));
      expect(c.cost).toBe(space.cost(c.genome));
      if (c.origin !== 'retry') {
        expect(keys.has(c.key)).toBe(false);
        keys.add(c.key);
      }
    }
    asked.push(...batch);
    search.tell(batch.map((c) => ({ id: c.id, fitness: fitness(c.genome, c) })));
  }
  return { asked, batches };
}

const ALL: SearchOptions[] = [
  { algorithm: 'evolution' },
  { algorithm: 'evolution', multiObjective: true },
  { algorithm: 'random' },
  { algorithm: 'stratified-random' },
];

describe('SeededRng', () => {
  it('is xoshiro128** (reference output from state [1, 2, 3, 4])', () => {
    const rng = SeededRng.fromState({ algorithm: 'xoshiro128**', s: [1, 2, 3, 4] });
    // Reference values of the C implementation (Blackman and Vigna) from this state.
    expect([rng.nextUint32(), rng.nextUint32(), rng.nextUint32()]).toEqual([11520, 0, 5927040]);
  });

  it('is reproducible per seed and resumes from its JSON state', () => {
    const a = new SeededRng(42);
    const b = new SeededRng(42);
    const xs = Array.from({ length: 100 }, () => a.nextUint32());
    expect(Array.from({ length: 100 }, () => b.nextUint32())).toEqual(xs);
    expect(new SeededRng(43).nextUint32()).not.toBe(xs[0]);
    expect(new SeededRng(2 ** 40).nextUint32()).not.toBe(new SeededRng(0).nextUint32());

    const c = new SeededRng(7);
    for (let i = 0; i < 10; i++) c.nextFloat();
    const resumed = SeededRng.fromState(JSON.parse(JSON.stringify(c.state())));
    expect(Array.from({ length: 50 }, () => resumed.nextFloat())).toEqual(
      Array.from({ length: 50 }, () => c.nextFloat()),
    );
  });

  it('draws floats in [0, 1) and unbiased integers in [0, n)', () => {
    const rng = new SeededRng(1);
    const counts = new Array<number>(7).fill(0);
    for (let i = 0; i < 70_000; i++) {
      const f = rng.nextFloat();
      expect(f >= 0 && f < 1).toBe(true);
      counts[rng.nextInt(7)]++;
    }
    for (const c of counts) expect(Math.abs(c - 10_000)).toBeLessThan(500);
    expect(rng.nextInt(1)).toBe(0);
    expect(() => rng.nextInt(0)).toThrow(/n must be an integer/);
    expect(() => rng.nextInt(2.5)).toThrow(/n must be an integer/);
    expect(() => new SeededRng(-1)).toThrow(/seed/);
    expect(() => SeededRng.fromState({ algorithm: 'xoshiro128**', s: [0, 0, 0, 0] })).toThrow(/all-zero/);
    expect(() => SeededRng.fromState({ algorithm: 'pcg', s: [1, 2, 3, 4] } as never)).toThrow(/xoshiro128/);
  });
});

describe('search options', () => {
  it('fills in the documented defaults', () => {
    const o = resolveSearchOptions({});
    expect(o).toMatchObject(SEARCH_DEFAULTS);
    expect(o.batchSize).toBe(SEARCH_DEFAULTS.population - SEARCH_DEFAULTS.elitism);
    expect(o.costRange).toBeNull();
    expect(resolveSearchOptions({ algorithm: 'random' }).batchSize).toBe(SEARCH_DEFAULTS.population);
  });

  it('shrinks the default tournament and elite to a population smaller than them', () => {
    expect(resolveSearchOptions({ population: 2 })).toMatchObject({ tournamentSize: 2, elitism: 1 });
    expect(resolveSearchOptions({ population: 3 })).toMatchObject({ tournamentSize: 3, elitism: 2 });
  });

  it.each([
    [{ population: 1 }, 'population', /"population" must be an integer ≥ 2, got 1/],
    [{ population: 2.5 }, 'population', /got 2.5/],
    [{ population: 10, tournamentSize: 11 }, 'tournamentSize', /\[1, population = 10\], got 11/],
    [{ tournamentSize: 0 }, 'tournamentSize', /got 0/],
    [{ population: 10, elitism: 10 }, 'elitism', /\[0, population − 1 = 9\], got 10/],
    [{ crossoverProbability: 1.5 }, 'crossoverProbability', /probability in \[0, 1\], got 1.5/],
    [{ mutationProbability: -0.1 }, 'mutationProbability', /got -0.1/],
    [{ mutationProbability: Number.NaN }, 'mutationProbability', /got NaN/],
    [{ population: 20, budget: 19 }, 'budget', /≥ population \(20\) for evolution, got 19/],
    [{ algorithm: 'random', budget: 0 }, 'budget', /"budget" must be an integer ≥ 1, got 0/],
    [{ algorithm: 'annealing' }, 'algorithm', /one of evolution, random, stratified-random, got "annealing"/],
    [{ seed: -3 }, 'seed', /non-negative safe integer, got -3/],
    [{ batchSize: 0 }, 'batchSize', /got 0/],
    [{ strata: 0 }, 'strata', /got 0/],
    [{ costRange: [5, 1] }, 'costRange', /min ≤ max, got \[5,1\]/],
    [{ logStrata: true, costRange: [0, 10] }, 'costRange', /positive when logStrata/],
    [{ multiObjective: 'yes' }, 'multiObjective', /true or false, got "yes"/],
    [{ retryFailed: -1 }, 'retryFailed', /got -1/],
    [{ populaton: 10 }, 'populaton', /unknown search option "populaton"/],
  ])('rejects %j naming %s', (options, field, message) => {
    let err: unknown;
    try {
      resolveSearchOptions(options as SearchOptions);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SearchError);
    expect((err as SearchError).field).toBe(field);
    expect((err as SearchError).message).toMatch(message);
    expect(() => createSearch(options as SearchOptions, benchmarkSpace())).toThrow(message);
  });

  it('rejects a space without the required methods', () => {
    const space = benchmarkSpace() as unknown as Record<string, unknown>;
    const broken = { sample: space.sample, key: space.key, cost: space.cost, crossover: space.crossover };
    expect(() => createSearch({}, broken as unknown as SearchSpace<Vec>)).toThrow(/mutate must be a function/);
  });
});

describe('validity and deduplication (property tests)', () => {
  it('thousands of mutations and crossovers through the search stay valid, in bin and unique', () => {
    const space = benchmarkSpace();
    let children = 0;
    for (const seed of [1, 2, 3]) {
      const search = createSearch({ seed, population: 30, budget: 2000, crossoverProbability: 0.6 }, space);
      const { asked } = drive(search, space);
      expect(asked.length).toBe(2000);
      children += asked.filter((c) => c.origin !== 'sample').length;
      expect(asked.some((c) => c.origin === 'crossover')).toBe(true);
      expect(asked.some((c) => c.origin === 'crossover+mutation')).toBe(true);
      expect(asked.some((c) => c.origin === 'mutation')).toBe(true);
      const st = search.status();
      expect(st).toMatchObject({ asked: 2000, evaluated: 2000, failed: 0, pending: 0, remaining: 0, done: true });
    }
    expect(children).toBeGreaterThan(5000);
  });

  it('never emits what a faulty space produces: invalid genomes and repeats are filtered and counted', () => {
    const inner = benchmarkSpace();
    for (const options of ALL) {
      const space = new FaultySpace(inner, 0.3);
      const search = createSearch({ ...options, seed: 5, budget: 600, population: 20 }, space);
      const { asked } = drive(search, inner);
      expect(asked.length).toBe(600);
      const { counters } = search.status();
      expect(counters.invalid).toBeGreaterThan(10);
      expect(counters.duplicate).toBeGreaterThan(10);
    }
  });

  it('asks every genome of a small space once, then reports it exhausted', () => {
    // dims 2, max 3, x0 even: 2 × 4 = 8 genomes, all with cost ≤ 8.
    const space = new VecSpace({ dims: 2, max: 3, lo: 0, hi: 8 });
    const all: string[] = [];
    for (const x0 of [0, 2]) for (let x1 = 0; x1 <= 3; x1++) if (space.isValid([x0, x1])) all.push(`${x0},${x1}`);
    for (const options of ALL) {
      const search = createSearch(
        { ...options, seed: 3, budget: 50, population: 4, tournamentSize: 2, strata: 2 },
        space,
      );
      const { asked } = drive(search, space);
      expect(asked.map((c) => c.key).sort()).toEqual(all.slice().sort());
      expect(search.status()).toMatchObject({ exhausted: true, done: true, asked: all.length });
      expect(search.ask()).toEqual([]);
    }
  });
});

describe('determinism and serialisation', () => {
  function trace(options: SearchOptions, space = benchmarkSpace()): { asks: string[]; final: string } {
    const search = createSearch(options, space);
    const asks: string[] = [];
    while (!search.done()) {
      const batch = search.ask();
      asks.push(JSON.stringify(batch));
      search.tell(batch.map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) })));
    }
    return { asks, final: JSON.stringify(search.toJSON()) };
  }

  it.each(ALL)('the same seed gives the same search (%j)', (options) => {
    const a = trace({ ...options, seed: 11, budget: 300 });
    const b = trace({ ...options, seed: 11, budget: 300 });
    expect(b.asks).toEqual(a.asks);
    expect(b.final).toBe(a.final);
    const c = trace({ ...options, seed: 12, budget: 300 });
    expect(c.asks[0]).not.toBe(a.asks[0]);
  });

  it.each(ALL)('serialise/restore mid-search gives exactly the uninterrupted result (%j)', (options) => {
    const opts = { ...options, seed: 21, budget: 250, population: 16, retryFailed: 1 };
    const space = benchmarkSpace();
    // Fails every 7th genome by key hash, so failures and retries are part of the state too.
    const fitnessOf = (c: Candidate<Vec>): number | null =>
      c.key.length % 7 === 3 && c.attempt === 1 ? null : distanceToTarget(c.genome);

    const straight = createSearch(opts, space);
    while (!straight.done()) {
      const batch = straight.ask();
      straight.tell(batch.map((c) => ({ id: c.id, fitness: fitnessOf(c), metrics: { tokens: c.id * 10 } })));
    }

    // Interrupted: restore from JSON text at three kinds of points — between batches, right after an
    // ask (all pending), and after a partial tell — each time through a brand-new Search object.
    let s = createSearch(opts, space);
    let step = 0;
    while (!s.done()) {
      let batch = s.ask();
      if (step % 3 === 1) {
        s = restoreSearch(JSON.stringify(s.toJSON()), space);
        expect(s.ask()).toEqual([]); // still pending: nothing new
        batch = s.pending();
      }
      const results = batch.map((c) => ({ id: c.id, fitness: fitnessOf(c), metrics: { tokens: c.id * 10 } }));
      const half = Math.floor(results.length / 2);
      s.tell(results.slice(0, half));
      if (step % 3 === 2) s = restoreSearch(JSON.parse(JSON.stringify(s.toJSON())), space);
      s.tell(results.slice(half));
      if (step % 3 === 0) s = restoreSearch(JSON.stringify(s), space);
      step++;
    }
    expect(step).toBeGreaterThan(5);
    expect(JSON.stringify(s.toJSON())).toBe(JSON.stringify(straight.toJSON()));
    expect(s.best()).toEqual(straight.best());
    expect(s.paretoFront()).toEqual(straight.paretoFront());
    expect(straight.status().failed).toBeGreaterThan(0);
  });

  it('does not depend on the order in which results arrive', () => {
    for (const options of ALL) {
      const space = benchmarkSpace();
      const inOrder = createSearch({ ...options, seed: 8, budget: 200 }, space);
      const shuffled = createSearch({ ...options, seed: 8, budget: 200 }, space);
      const order = new SeededRng(99);
      while (!inOrder.done()) {
        const a = inOrder.ask();
        inOrder.tell(a.map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) })));
        const b = shuffled.ask();
        const results: EvaluationResult[] = b.map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) }));
        for (let i = results.length - 1; i > 0; i--) {
          const j = order.nextInt(i + 1);
          [results[i], results[j]] = [results[j], results[i]];
        }
        for (const r of results) shuffled.tell([r]);
      }
      expect(shuffled.done()).toBe(true);
      expect(JSON.stringify(shuffled.toJSON())).toBe(JSON.stringify(inOrder.toJSON()));
    }
  });

  it('rejects a corrupt state or one made with another space, naming the field', () => {
    const space = benchmarkSpace();
    const s = createSearch({ seed: 1, budget: 40 }, space);
    s.tell(s.ask().map((c) => ({ id: c.id, fitness: 1 })));
    const good = s.toJSON();
    expect(() => restoreSearch('{not json', space)).toThrow(/not valid JSON/);
    expect(() => restoreSearch({ ...good, version: 2 } as never, space)).toThrow(/"version" must be 1/);
    expect(() => restoreSearch({ ...good, options: { ...good.options, population: 1 } }, space)).toThrow(
      /"population"/,
    );
    const records = good.records.map((r) => ({ ...r }));
    records[3].id = 7;
    expect(() => restoreSearch({ ...good, records }, space)).toThrow(/"records\[3\].id" must equal its index 3/);
    const other = new VecSpace({ dims: 10, max: 31, lo: 700, hi: 1000 });
    other.key = (g: Vec) => g.join('|');
    expect(() => restoreSearch(good, other)).toThrow(/records\[0\].key.*another search space/);
    expect(() => restoreSearch({ ...good, population: [999] }, space)).toThrow(
      /"population" must be an array of record ids/,
    );
    expect(restoreSearch(good, space).status()).toEqual(s.status());
  });
});

describe('ask/tell protocol, budget and early stop', () => {
  it('hands out the first generation, then offspring batches, and validates tell', () => {
    const space = benchmarkSpace();
    const s = createSearch({ seed: 2, population: 10, elitism: 3, budget: 30 }, space);
    const first = s.ask();
    expect(first.length).toBe(10);
    expect(first.map((c) => c.id)).toEqual([...Array(10).keys()]);
    expect(first.every((c) => c.origin === 'sample' && c.generation === 0 && c.parents.length === 0)).toBe(true);
    expect(s.ask()).toEqual([]);
    expect(s.pending().map((c) => c.id)).toEqual(first.map((c) => c.id));

    expect(() => s.tell([{ id: 10, fitness: 1 }])).toThrow(/results\[0\].id 10 was never asked/);
    expect(() =>
      s.tell([
        { id: 1, fitness: 1 },
        { id: 1, fitness: 2 },
      ]),
    ).toThrow(/appears twice/);
    expect(() =>
      s.tell([
        { id: 0, fitness: 1 },
        { id: 2, fitness: '3' as never },
      ]),
    ).toThrow(/results\[1\].fitness must be a number or null/);
    expect(s.pending().length).toBe(10); // failed calls changed nothing
    s.tell([{ id: 0, fitness: 5 }]);
    expect(() => s.tell([{ id: 0, fitness: 5 }])).toThrow(/results\[0\].id 0 is not pending \(already told: ok\)/);
    s.tell(first.slice(1).map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) })));

    const second = s.ask();
    expect(second.length).toBe(7); // population − elitism
    expect(second.every((c) => c.generation === 1 && c.parents.length >= 1)).toBe(true);
    expect(s.population().length).toBe(10);
    s.tell(second.map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) })));
    expect(s.ask().length).toBe(7);
  });

  it('keeps the elites and a population of the best', () => {
    const space = benchmarkSpace();
    const s = createSearch({ seed: 4, population: 12, elitism: 2, budget: 200 }, space);
    let bestSoFar = Infinity;
    while (!s.done()) {
      const batch = s.ask();
      s.tell(batch.map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) })));
      const pop = s.population();
      expect(pop.length).toBe(12);
      // elitism: the best so far always survives
      bestSoFar = Math.min(bestSoFar, ...batch.map((c) => distanceToTarget(c.genome)));
      expect(pop[0].fitness).toBe(bestSoFar);
    }
    expect(s.best()?.fitness).toBe(bestSoFar);
  });

  it('records failures, never retries them by default, and retries at most retryFailed times', () => {
    const space = benchmarkSpace();
    const failing = (g: Vec): number | null => (g[1] % 3 === 0 ? null : distanceToTarget(g));
    for (const options of ALL) {
      const s = createSearch({ ...options, seed: 6, budget: 200 }, space);
      drive(s, space, failing);
      const h = s.history();
      expect(h.length).toBe(200);
      const failed = h.filter((r) => r.status === 'failed');
      expect(failed.length).toBeGreaterThan(10);
      expect(failed.every((r) => r.fitness === null && r.error === 'evaluation failed')).toBe(true);
      expect(new Set(h.map((r) => r.key)).size).toBe(200);
      expect(s.population().every((r) => r.status === 'ok')).toBe(true);
      expect(s.best()?.status).toBe('ok');
    }

    const s = createSearch({ seed: 6, budget: 200, retryFailed: 2 }, space);
    const attempts = new Map<string, number>();
    drive(s, space, (g, c) => {
      attempts.set(c.key, (attempts.get(c.key) ?? 0) + 1);
      return failing(g);
    });
    const retries = s.history().filter((r) => r.origin === 'retry');
    expect(retries.length).toBeGreaterThan(5);
    expect(Math.max(...attempts.values())).toBe(3);
    for (const r of retries) expect(s.history()[r.parents[0]].key).toBe(r.key);
  });

  it('treats NaN and Infinity as failures and keeps their metrics and error', () => {
    const s = createSearch({ algorithm: 'random', seed: 1, budget: 3, population: 3 }, benchmarkSpace());
    const [a, b, c] = s.ask();
    s.tell([
      { id: a.id, fitness: Number.NaN, metrics: { steps: 3 } },
      { id: b.id, fitness: Infinity },
      { id: c.id, fitness: null, error: 'evaluator lost' },
    ]);
    expect(s.history().map((r) => [r.status, r.error])).toEqual([
      ['failed', 'non-finite fitness NaN'],
      ['failed', 'non-finite fitness Infinity'],
      ['failed', 'evaluator lost'],
    ]);
    expect(s.history()[0].metrics).toEqual({ steps: 3 });
    expect(s.best()).toBeUndefined();
    expect(s.done()).toBe(true);
  });

  it('survives a generation in which every evaluation fails', () => {
    const space = benchmarkSpace();
    const s = createSearch({ seed: 3, population: 8, budget: 40 }, space);
    s.tell(s.ask().map((c) => ({ id: c.id, fitness: null })));
    const next = s.ask();
    expect(next.length).toBe(8); // population empty: a fresh random generation
    expect(next.every((c) => c.origin === 'sample')).toBe(true);
  });

  it('changes the budget and stops early mid-search', () => {
    const space = benchmarkSpace();
    const s = createSearch({ seed: 9, population: 10, elitism: 2, budget: 100 }, space);
    const tellAll = (b: Candidate<Vec>[]) => s.tell(b.map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) })));
    tellAll(s.ask());
    tellAll(s.ask());
    expect(s.status().asked).toBe(18);
    s.setBudget(22);
    const last = s.ask();
    expect(last.length).toBe(4); // clipped to the new budget
    tellAll(last);
    expect(s.done()).toBe(true);
    expect(s.ask()).toEqual([]);
    s.setBudget(40); // raising it again resumes a finished (not stopped) search
    expect(s.done()).toBe(false);
    const more = s.ask();
    expect(more.length).toBe(8);
    s.setBudget(5); // below what was asked: ends once the pending ones are told
    expect(s.done()).toBe(false);
    tellAll(more);
    expect(s.done()).toBe(true);
    expect(s.status()).toMatchObject({ asked: 30, remaining: 0, budget: 5 });
    expect(() => s.setBudget(-1)).toThrow(/"?budget"?.*non-negative integer, got -1/);
    expect(() => s.setBudget(1.5)).toThrow(SearchError);

    const t = createSearch({ seed: 9, population: 10, budget: 100 }, space);
    const batch = t.ask();
    t.stop();
    expect(t.done()).toBe(false); // pending still
    expect(t.ask()).toEqual([]);
    t.tell(batch.map((c) => ({ id: c.id, fitness: distanceToTarget(c.genome) })));
    expect(t.done()).toBe(true);
    expect(t.status()).toMatchObject({ stopped: true, asked: 10, evaluated: 10 });
    t.setBudget(1000);
    expect(t.done()).toBe(true); // stop is final
    expect(t.best()?.fitness).toBe(Math.min(...batch.map((c) => distanceToTarget(c.genome))));
  });

  it('runSearchSync tells a throwing evaluation as a failure', () => {
    const s = runSearchSync(
      createSearch({ algorithm: 'random', seed: 1, budget: 20, population: 5 }, benchmarkSpace()),
      (c) => {
        if (c.id % 4 === 0) throw new Error(`boom ${c.id}`);
        return { fitness: distanceToTarget(c.genome), metrics: { id: c.id } };
      },
    );
    const h = s.history();
    expect(h.filter((r) => r.status === 'failed').map((r) => r.error)).toEqual([
      'boom 0',
      'boom 4',
      'boom 8',
      'boom 12',
      'boom 16',
    ]);
    expect(h[1].metrics).toEqual({ id: 1 });
  });
});

describe('baselines', () => {
  it('stratified random search spreads candidates evenly over the cost strata', () => {
    // A space whose random samples crowd the middle of the cost range (about 0.9% in each end stratum).
    const space = new VecSpace({ dims: 3, max: 31, lo: 0, hi: 185 });
    const strataOf = (cost: number) => Math.min(9, Math.floor((cost / 185) * 10));
    const spread = (options: SearchOptions) => {
      const s = createSearch(
        { ...options, seed: 2, budget: 200, population: 20, strata: 10, emptyStrataTolerance: 0 },
        space,
      );
      const { asked } = drive(s, space);
      const counts = new Array<number>(10).fill(0);
      for (const c of asked) counts[strataOf(c.cost)]++;
      return counts;
    };
    const random = spread({ algorithm: 'random' });
    const stratified = spread({ algorithm: 'stratified-random', samplePatience: 5000 });
    expect(Math.min(...random)).toBeLessThan(5); // the tails are rare under uniform sampling
    expect(stratified).toEqual(new Array(10).fill(20));
  });

  it('stratified random search estimates the cost range when the space gives none', () => {
    const space = new VecSpace({ dims: 6, max: 15, lo: 20, hi: 250, withCostRange: false });
    const s = createSearch({ algorithm: 'stratified-random', seed: 1, budget: 60, strata: 5 }, space);
    drive(s, space);
    const st = s.toJSON().strata;
    expect(st).not.toBeNull();
    expect(st!.edges[0]).toBeGreaterThanOrEqual(20);
    expect(st!.edges[5]).toBeLessThanOrEqual(250);
    expect(st!.counts.reduce((a, b) => a + b, 0)).toBe(60);
  });
});

describe('evolution beats random search', () => {
  it('at the same evaluation budget, averaged over 10 seeds', () => {
    const space = benchmarkSpace();
    const budget = 300;
    const run = (options: SearchOptions, seed: number) => {
      const s = createSearch({ ...options, seed, budget, population: 20 }, space);
      drive(s, space);
      expect(s.status().asked).toBe(budget);
      return s.best()!.fitness as number;
    };
    const seeds = [...Array(10).keys()].map((i) => 1000 + i);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const evo = seeds.map((seed) => run({ algorithm: 'evolution' }, seed));
    const rnd = seeds.map((seed) => run({ algorithm: 'random' }, seed));
    const strat = seeds.map((seed) => run({ algorithm: 'stratified-random' }, seed));
    const report = { budget, evolution: mean(evo), random: mean(rnd), stratifiedRandom: mean(strat), evo, rnd, strat };
    console.log(`search benchmark (squared distance to the optimum, lower is better): ${JSON.stringify(report)}`);
    expect(mean(evo)).toBeLessThan(mean(rnd));
    expect(mean(evo)).toBeLessThan(mean(strat));
    expect(mean(evo)).toBeLessThan(0.5 * mean(rnd));
    // the optimum itself is valid and reachable
    expect(space.isValid(TARGET)).toBe(true);
  });
});

describe('multi-objective mode', () => {
  // Cost Σ(i+1)·x_i against fitness Σ(15 − x_i)²: a bigger genome is better. Known extremes: the zero
  // vector (cost 0, the only genome that cheap) and [14, 15, 15, 15] (fitness 1, the best there is).
  const space = new VecSpace({ dims: 4, max: 15, lo: 0, hi: 149 });
  const fitness = (g: Vec) => g.reduce((a, x) => a + (15 - x) ** 2, 0);
  const cheapest = [0, 0, 0, 0];
  const fittest = [14, 15, 15, 15];

  it('dominates, sorts fronts and computes crowding like NSGA-II', () => {
    expect(dominates([1, 1], [1, 2])).toBe(true);
    expect(dominates([1, 2], [1, 2])).toBe(false);
    expect(dominates([0, 3], [1, 2])).toBe(false);
    const pts = [
      [1, 5],
      [2, 2],
      [5, 1],
      [3, 3],
      [4, 4],
      [6, 6],
    ];
    expect(nonDominatedSort(pts)).toEqual([[0, 1, 2], [3], [4], [5]]);
    expect(crowdingDistance(pts, [0, 1, 2])).toEqual([Infinity, 2, Infinity]);
  });

  it('finds a non-dominated Pareto front holding the known extremes', () => {
    expect(space.isValid(cheapest) && space.isValid(fittest)).toBe(true);
    for (const seed of [1, 2, 3, 4, 5]) {
      const s = createSearch({ seed, multiObjective: true, population: 30, budget: 900 }, space);
      drive(s, space, fitness);
      const front = s.paretoFront();
      const all = s.history();
      // non-dominated among themselves, and every other evaluation is dominated by a member
      for (const a of front)
        for (const b of front) expect(dominates([a.fitness!, a.cost], [b.fitness!, b.cost])).toBe(false);
      const onFront = new Set(front.map((r) => r.id));
      for (const r of all) {
        if (!onFront.has(r.id))
          expect(front.some((f) => dominates([f.fitness!, f.cost], [r.fitness!, r.cost]))).toBe(true);
      }
      // sorted by cost, and contains both extremes
      for (let i = 1; i < front.length; i++) expect(front[i].cost).toBeGreaterThanOrEqual(front[i - 1].cost);
      expect(front[0].genome).toEqual(cheapest);
      expect(front[front.length - 1].genome).toEqual(fittest);
      expect(s.best()?.genome).toEqual(fittest);
      expect(front.length).toBeGreaterThan(20);
    }
  });
});
