/**
 * What the events of a run add up to, as pure reducers:
 * - RunStatus: the small summary kept in the KV bucket (one key per run), updated by every publisher
 *   after each stored event; idempotent for an event applied twice in a row (it remembers recent ids).
 * - RunState: the full picture `offshoot watch` draws (candidates, loss series, workers, errors).
 */
import type { EventOf, ProgressEvent } from './events.js';

export type RunPhase = 'running' | 'completed' | 'failed' | 'cancelled';

export interface CandidateRef {
  candidate: number | string;
  params: number;
  fitness: number;
}

export interface ErrorNote {
  time: string;
  activity?: string;
  attempt?: number;
  worker?: string;
  error: string;
}

/** The KV value of a run (bucket offshoot_runs, key = run id). */
export interface RunStatus {
  run: string;
  mode?: 'search' | 'pretrain' | 'pipeline';
  state: RunPhase;
  startedAt?: string;
  updatedAt: string;
  finishedAt?: string;
  /** Planned generations, and generations finished. */
  generations?: number;
  generationsDone: number;
  /** Planned evaluations, evaluations done (successful and failed), and failed ones. */
  budget?: number;
  evaluated: number;
  failed: number;
  best?: CandidateRef;
  /** The student's pretraining. */
  pretrain?: {
    step: number;
    steps?: number;
    loss?: number;
    valLoss?: number;
    tokens?: number;
    tokensPerSecond?: number;
  };
  lastCheckpoint?: { step: number; uri: string };
  lastError?: ErrorNote;
  error?: string;
  /** Events applied. */
  events: number;
  /** Ids of the last events applied (so an update retried after a lost acknowledgement is not counted twice). */
  recent: string[];
}

const RECENT = 64;

export function initialStatus(run: string, time: string): RunStatus {
  return { run, state: 'running', updatedAt: time, generationsDone: 0, evaluated: 0, failed: 0, events: 0, recent: [] };
}

function better(a: CandidateRef | undefined, b: CandidateRef | undefined): CandidateRef | undefined {
  if (!a) return b;
  if (!b) return a;
  return b.fitness < a.fitness ? b : a;
}

function maxTime(a: string | undefined, b: string): string {
  return a && a > b ? a : b;
}

/** The status after `event`; the input is not modified. Returns the same object when the event was already applied. */
export function applyStatus(prev: RunStatus | undefined, event: ProgressEvent): RunStatus {
  if (prev?.recent.includes(event.id)) return prev;
  const s: RunStatus = prev ? structuredClone(prev) : initialStatus(event.run, event.time);
  s.events += 1;
  s.recent.push(event.id);
  if (s.recent.length > RECENT) s.recent.splice(0, s.recent.length - RECENT);
  s.updatedAt = maxTime(s.updatedAt, event.time);
  switch (event.kind) {
    case 'run.started':
      s.mode = event.mode;
      s.startedAt = event.time;
      s.generations = event.generations ?? s.generations;
      s.budget = event.budget ?? s.budget;
      if (event.pretrainSteps) s.pretrain = { step: 0, ...s.pretrain, steps: event.pretrainSteps };
      break;
    case 'generation.finished':
      s.generationsDone = Math.max(s.generationsDone, event.generation + 1);
      s.generations = event.generations ?? s.generations;
      s.best = better(s.best, event.best);
      break;
    case 'candidate.evaluated':
      s.evaluated += 1;
      if (event.fitness === null) s.failed += 1;
      else s.best = better(s.best, { candidate: event.candidate, params: event.params, fitness: event.fitness });
      break;
    case 'pretrain.step':
      if (event.series === 'student') {
        const p = (s.pretrain ??= { step: 0 });
        if (event.step >= p.step) {
          p.step = event.step;
          p.loss = event.loss;
          p.tokens = event.tokens ?? p.tokens;
          p.tokensPerSecond = event.tokensPerSecond ?? p.tokensPerSecond;
        }
        p.steps = event.steps ?? p.steps;
      }
      break;
    case 'pretrain.eval':
      if (event.series === 'student') {
        const p = (s.pretrain ??= { step: 0 });
        p.valLoss = event.valLoss;
        p.step = Math.max(p.step, event.step);
      }
      break;
    case 'checkpoint.saved':
      if (event.series === 'student' && (!s.lastCheckpoint || event.step >= s.lastCheckpoint.step))
        s.lastCheckpoint = { step: event.step, uri: event.uri };
      break;
    case 'activity.failed':
      s.lastError = {
        time: event.time,
        activity: event.activity,
        attempt: event.attempt,
        worker: event.source?.worker,
        error: event.error,
      };
      break;
    case 'activity.retried':
      if (event.error)
        s.lastError = {
          time: event.time,
          activity: event.activity,
          attempt: event.attempt,
          worker: event.source?.worker,
          error: event.error,
        };
      break;
    case 'service.exited':
      s.lastError = { time: event.time, error: serviceExit(event) };
      break;
    case 'run.finished':
      s.state = event.status;
      s.finishedAt = event.time;
      s.error = event.error;
      s.best = better(s.best, event.best);
      break;
    case 'activity.started':
    case 'activity.completed':
    case 'service.restarted':
      break;
  }
  return s;
}

function serviceExit(e: EventOf<'service.exited'>): string {
  return `${e.service} (pid ${e.pid}) exited (${e.signal ? `signal ${e.signal}` : `code ${e.code}`})${e.willRestart ? '; restarting it' : `; not restarted${e.error ? `: ${e.error}` : ''}`}`;
}

// ---- the full picture ----------------------------------------------------------------------------

export interface CandidateRow {
  generation: number;
  candidate: number | string;
  params: number;
  fitness: number | null;
  error?: string;
  worker?: string;
  durationMs?: number;
  time: string;
}

export interface SeriesPoint {
  step: number;
  value: number;
  tokens?: number;
  time: number;
}

export interface SeriesState {
  name: string;
  step: number;
  steps?: number;
  tokens?: number;
  tokensPerSecond?: number;
  /** Training loss per step (the last MAX_POINTS kept) and validation loss per evaluation. */
  train: SeriesPoint[];
  val: SeriesPoint[];
  lastCheckpoint?: { step: number; uri: string };
}

export interface WorkerState {
  worker: string;
  state: 'busy' | 'idle' | 'failed';
  activity?: string;
  detail?: string;
  attempt?: number;
  since: string;
  lastSeen: string;
}

export interface RunState {
  run: string;
  status: RunStatus;
  startedAt?: number;
  /** Time of each finished generation (ms since epoch), by generation. */
  generationTimes: Map<number, number>;
  populationSize?: number;
  candidates: Map<string, CandidateRow>;
  /** Evaluations per generation, and the time of each evaluation (for rates). */
  perGeneration: Map<number, number>;
  evaluationTimes: number[];
  series: Map<string, SeriesState>;
  workers: Map<string, WorkerState>;
  errors: ErrorNote[];
  /** The last event's time (ms since epoch). */
  lastTime?: number;
  baselines: string[];
}

const MAX_POINTS = 5000;
const MAX_ERRORS = 20;

export function initialRunState(run: string): RunState {
  return {
    run,
    status: initialStatus(run, new Date(0).toISOString()),
    generationTimes: new Map(),
    candidates: new Map(),
    perGeneration: new Map(),
    evaluationTimes: [],
    series: new Map(),
    workers: new Map(),
    errors: [],
    baselines: [],
  };
}

function seriesOf(state: RunState, name: string): SeriesState {
  let s = state.series.get(name);
  if (!s) state.series.set(name, (s = { name, step: 0, train: [], val: [] }));
  return s;
}

/** Replaces the point at the same step (a redone step after a retry), else appends in step order. */
function addPoint(points: SeriesPoint[], p: SeriesPoint): void {
  const last = points[points.length - 1];
  if (!last || p.step > last.step) {
    points.push(p);
    if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
    return;
  }
  const i = points.findIndex((q) => q.step >= p.step);
  if (points[i].step === p.step) points[i] = p;
  else points.splice(i, 0, p);
}

function touchWorker(state: RunState, event: ProgressEvent): WorkerState | undefined {
  const name = event.source?.worker;
  if (!name) return undefined;
  let w = state.workers.get(name);
  // Workers are what runs activities; other publishers (a workflow's bookkeeping) are not listed.
  if (!w && !event.kind.startsWith('activity.')) return undefined;
  if (!w) state.workers.set(name, (w = { worker: name, state: 'idle', since: event.time, lastSeen: event.time }));
  w.lastSeen = maxTime(w.lastSeen, event.time);
  return w;
}

/** Applies an event to the full picture, in place (events arrive in stream order). */
export function applyEvent(state: RunState, event: ProgressEvent): RunState {
  state.status = applyStatus(state.status, event);
  const t = Date.parse(event.time);
  state.lastTime = Math.max(state.lastTime ?? t, t);
  const w = touchWorker(state, event);
  switch (event.kind) {
    case 'run.started':
      state.startedAt = t;
      state.populationSize = event.populationSize;
      state.baselines = event.baselines ?? [];
      break;
    case 'generation.finished':
      state.generationTimes.set(event.generation, t);
      break;
    case 'candidate.evaluated': {
      const key = `${event.generation}:${event.candidate}`;
      if (!state.candidates.has(key)) {
        state.perGeneration.set(event.generation, (state.perGeneration.get(event.generation) ?? 0) + 1);
        state.evaluationTimes.push(t);
        if (state.evaluationTimes.length > MAX_POINTS) state.evaluationTimes.shift();
      }
      state.candidates.set(key, {
        generation: event.generation,
        candidate: event.candidate,
        params: event.params,
        fitness: event.fitness,
        error: event.error,
        worker: event.source?.worker,
        durationMs: event.durationMs,
        time: event.time,
      });
      break;
    }
    case 'pretrain.step': {
      const s = seriesOf(state, event.series);
      s.step = Math.max(s.step, event.step);
      s.steps = event.steps ?? s.steps;
      s.tokens = event.tokens ?? s.tokens;
      s.tokensPerSecond = event.tokensPerSecond ?? s.tokensPerSecond;
      addPoint(s.train, { step: event.step, value: event.loss, tokens: event.tokens, time: t });
      break;
    }
    case 'pretrain.eval': {
      const s = seriesOf(state, event.series);
      addPoint(s.val, { step: event.step, value: event.valLoss, tokens: event.tokens, time: t });
      break;
    }
    case 'checkpoint.saved': {
      const s = seriesOf(state, event.series);
      if (!s.lastCheckpoint || event.step >= s.lastCheckpoint.step)
        s.lastCheckpoint = { step: event.step, uri: event.uri };
      break;
    }
    case 'activity.started':
    case 'activity.retried':
      if (w)
        Object.assign(w, {
          state: 'busy',
          activity: event.activity,
          detail: event.detail,
          attempt: event.attempt,
          since: event.time,
        });
      if (event.kind === 'activity.retried') {
        state.errors.push({
          time: event.time,
          activity: event.activity,
          attempt: event.attempt,
          worker: event.source?.worker,
          error: `retried${event.error ? ` after: ${event.error}` : ''}`,
        });
      }
      break;
    case 'activity.completed':
      if (w)
        Object.assign(w, {
          state: 'idle',
          activity: event.activity,
          detail: event.detail,
          attempt: event.attempt,
          since: event.time,
        });
      break;
    case 'activity.failed':
      if (w)
        Object.assign(w, {
          state: 'failed',
          activity: event.activity,
          detail: event.detail,
          attempt: event.attempt,
          since: event.time,
        });
      state.errors.push({
        time: event.time,
        activity: event.activity,
        attempt: event.attempt,
        worker: event.source?.worker,
        error: event.error,
      });
      break;
    case 'service.exited':
      state.errors.push({ time: event.time, error: serviceExit(event) });
      break;
    case 'service.restarted':
      state.errors.push({
        time: event.time,
        error: `${event.service} restarted (pid ${event.pid}, down ${(event.downMs / 1000).toFixed(1)} s)`,
      });
      break;
    case 'run.finished':
      if (event.error) state.errors.push({ time: event.time, error: `run ${event.status}: ${event.error}` });
      break;
  }
  if (state.errors.length > MAX_ERRORS) state.errors.splice(0, state.errors.length - MAX_ERRORS);
  return state;
}

/** Pareto front of (params, fitness), both minimised, sorted by params. */
export function paretoFront<T extends { params: number; fitness: number | null }>(
  rows: Iterable<T>,
): (T & { fitness: number })[] {
  const ok = [...rows].filter((r): r is T & { fitness: number } => r.fitness !== null && Number.isFinite(r.fitness));
  ok.sort((a, b) => a.params - b.params || a.fitness - b.fitness);
  const front: (T & { fitness: number })[] = [];
  for (const r of ok) if (!front.length || r.fitness < front[front.length - 1].fitness) front.push(r);
  return front;
}
