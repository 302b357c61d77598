/**
 * Synthetic progress events of a plausible run (a search, then the student's and a baseline's
 * pretraining), for the watch and dashboard tests. Deterministic for a given seed; event times advance
 * with a simulated clock so rates and ETAs come out sensible.
 */
import type { ProgressEventInput } from '../../services/progress/index.js';

export interface SimOptions {
  run: string;
  generations?: number;
  population?: number;
  steps?: number;
  evalEvery?: number;
  workers?: number;
  seed?: number;
  /** Start of the simulated clock (ms since epoch). */
  start?: number;
}

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 4294967296;
  };
}

/** The events of a run in publish order; the search part first (`searchEnd` is the index after it). */
export function simulatedRun(o: SimOptions): { events: ProgressEventInput[]; candidates: number; searchEnd: number } {
  const generations = o.generations ?? 4;
  const population = o.population ?? 8;
  const steps = o.steps ?? 200;
  const evalEvery = o.evalEvery ?? 25;
  const nWorkers = o.workers ?? 3;
  const rand = rng(o.seed ?? 7);
  // Default: the run started a while ago, so times are recent and ETAs sensible.
  let t = o.start ?? Date.now() - 10 * 60_000;
  const time = (dtMs: number) => new Date((t += dtMs)).toISOString();
  const worker = (i: number) => `evaluator-${(i % nWorkers) + 1}`;
  const run = o.run;
  const events: ProgressEventInput[] = [];
  events.push({
    run,
    kind: 'run.started',
    time: time(0),
    mode: 'pipeline',
    generations,
    populationSize: population,
    budget: generations * population,
    pretrainSteps: steps,
    bin: { index: 3, lo: 60e6, hi: 75e6 },
    teacher: 'pythia-410m',
    baselines: ['random-init'],
    source: { worker: 'orchestrator' },
  });
  let id = 0;
  let best = Infinity;
  const all: { candidate: number; params: number; fitness: number }[] = [];
  for (let g = 0; g < generations; g++) {
    let failed = 0;
    for (let k = 0; k < population; k++, id++) {
      const w = worker(id);
      const activityId = `eval-${id}`;
      events.push({
        run,
        kind: 'activity.started',
        time: time(50),
        activity: 'evaluateCandidate',
        activityId,
        detail: `candidate ${id}`,
        source: { worker: w },
      });
      const params = Math.round(60e6 + rand() * 15e6);
      // Later generations do better; smaller models a little worse.
      const fitness = 3.4 - 0.08 * g - 0.3 * rand() + (75e6 - params) / 75e6;
      if (id === 5) {
        events.push({
          run,
          kind: 'activity.failed',
          time: time(3000),
          activity: 'evaluateCandidate',
          activityId,
          detail: `candidate ${id}`,
          error: 'teacher service unavailable (UNAVAILABLE: connection refused)',
          willRetry: true,
          source: { worker: w },
        });
        events.push({
          run,
          kind: 'activity.retried',
          time: time(1000),
          activity: 'evaluateCandidate',
          activityId,
          attempt: 2,
          detail: `candidate ${id}`,
          source: { worker: worker(id + 1) },
        });
      }
      if (id === 11) {
        failed++;
        events.push({
          run,
          kind: 'candidate.evaluated',
          time: time(2000),
          generation: g,
          candidate: id,
          params,
          fitness: null,
          error: 'out of memory',
          source: { worker: w },
        });
        events.push({
          run,
          kind: 'activity.completed',
          time: time(10),
          activity: 'evaluateCandidate',
          activityId,
          detail: `candidate ${id}`,
          durationMs: 2000,
          source: { worker: w },
        });
        continue;
      }
      const durationMs = 8000 + Math.round(rand() * 4000);
      events.push({
        run,
        kind: 'candidate.evaluated',
        time: time(durationMs / nWorkers),
        generation: g,
        candidate: id,
        params,
        fitness,
        durationMs,
        specHash: `sha${id}`,
        source: { worker: w },
      });
      events.push({
        run,
        kind: 'activity.completed',
        time: time(10),
        activity: 'evaluateCandidate',
        activityId,
        detail: `candidate ${id}`,
        durationMs,
        source: { worker: w },
      });
      best = Math.min(best, fitness);
      all.push({ candidate: id, params, fitness });
    }
    const bestRef = all.reduce((a, b) => (b.fitness < a.fitness ? b : a));
    events.push({
      run,
      kind: 'generation.finished',
      time: time(100),
      generation: g,
      generations,
      evaluated: population,
      failed,
      best: bestRef,
      source: { worker: 'orchestrator' },
    });
  }
  const searchEnd = events.length;
  // The student and a baseline pretrain side by side on two workers.
  const trainers = [
    { series: 'student', w: 'pretrain-1', offset: 0 },
    { series: 'random-init', w: 'pretrain-2', offset: 1.2 },
  ];
  for (const { series, w } of trainers) {
    events.push({
      run,
      kind: 'activity.started',
      time: time(100),
      activity: 'trainSegment',
      activityId: `train-${series}`,
      detail: `${series} steps 0-${steps}`,
      source: { worker: w },
    });
  }
  for (let s = 1; s <= steps; s++) {
    for (const { series, w, offset } of trainers) {
      const base = 2.6 + offset + 4.5 * Math.exp(-s / (steps / 4));
      events.push({
        run,
        kind: 'pretrain.step',
        time: time(100),
        series,
        step: s,
        steps,
        loss: base + 0.15 * (rand() - 0.5),
        tokens: s * 16384,
        tokensPerSecond: 81920 + 4000 * rand(),
        source: { worker: w },
      });
      if (s % evalEvery === 0) {
        events.push({
          run,
          kind: 'pretrain.eval',
          time: time(50),
          series,
          step: s,
          valLoss: base + 0.1,
          source: { worker: w },
        });
        events.push({
          run,
          kind: 'checkpoint.saved',
          time: time(20),
          series,
          step: s,
          uri: `/runs/${run}/${series}/step-${s}`,
          hash: `h${s}`,
          source: { worker: w },
        });
      }
    }
  }
  for (const { series, w } of trainers) {
    events.push({
      run,
      kind: 'activity.completed',
      time: time(100),
      activity: 'trainSegment',
      activityId: `train-${series}`,
      detail: `${series} steps 0-${steps}`,
      durationMs: steps * 200,
      source: { worker: w },
    });
  }
  return { events, candidates: id, searchEnd };
}
