/**
 * Progress events without a server: the schema (and its JSON schema in docs/), message ids, the
 * reducers behind the KV status and `offshoot watch`, the one-line format and the live view.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  EVENT_KINDS,
  MemoryProgressPublisher,
  PROGRESS_SCHEMA_VERSION,
  type ProgressEvent,
  ProgressEventError,
  applyEvent,
  applyStatus,
  createProgressPublisher,
  eventSubject,
  formatEventLine,
  initialRunState,
  makeEvent,
  paretoFront,
  parseEvent,
  progressEventJsonSchema,
  renderView,
} from '../services/progress/index.js';
import { simulatedRun } from './helpers/progress-sim.js';

const SCHEMA_FILE = path.join(import.meta.dirname, '..', 'docs', 'progress-events.schema.json');

describe('progress event schema', () => {
  it('fills in version, time and a natural message id; validates every kind', () => {
    const e = makeEvent(
      { run: 'r1', kind: 'candidate.evaluated', generation: 2, candidate: 17, params: 68_000_000, fitness: 3.2 },
      new Date('2026-01-02T03:04:05Z'),
    );
    expect(e).toEqual({
      v: 1,
      id: 'r1.cand.2.17',
      run: 'r1',
      kind: 'candidate.evaluated',
      time: '2026-01-02T03:04:05.000Z',
      generation: 2,
      candidate: 17,
      params: 68_000_000,
      fitness: 3.2,
    });
    expect(eventSubject('r1', e.kind)).toBe('offshoot.r1.candidate.evaluated');

    const ids = [
      makeEvent({ run: 'r', kind: 'run.started', mode: 'pipeline' }).id,
      makeEvent({ run: 'r', kind: 'generation.finished', generation: 3, evaluated: 8 }).id,
      makeEvent({ run: 'r', kind: 'pretrain.step', step: 10, loss: 3 }).id,
      makeEvent({ run: 'r', kind: 'pretrain.eval', series: 'first-k', step: 10, valLoss: 3 }).id,
      makeEvent({ run: 'r', kind: 'checkpoint.saved', step: 10, uri: '/x' }).id,
      makeEvent({ run: 'r', kind: 'run.finished', status: 'completed' }).id,
    ];
    expect(ids).toEqual([
      'r.run.started',
      'r.gen.3',
      'r.step.student.10',
      'r.eval.first-k.10',
      'r.ckpt.student.10',
      'r.run.finished',
    ]);
    // Activity events have no natural key (Temporal's activity ids repeat across workflows): random, unique ids.
    const a = makeEvent({ run: 'r', kind: 'activity.started', activity: 'evaluateCandidate', activityId: '1' });
    const b = makeEvent({ run: 'r', kind: 'activity.started', activity: 'evaluateCandidate', activityId: '1' });
    expect(a.id).not.toBe(b.id);
    expect(a.id).toMatch(/^r\.activity\.started\./);
    expect(a.attempt).toBe(1);
    // An explicit id wins.
    expect(makeEvent({ run: 'r', kind: 'pretrain.step', step: 1, loss: 2, id: 'mine' }).id).toBe('mine');
  });

  it('rejects bad events, naming every field', () => {
    const bad = () =>
      makeEvent({
        run: 'a.b',
        kind: 'candidate.evaluated',
        generation: -1,
        candidate: 1,
        params: 10,
        fitness: Number.NaN,
      } as never);
    expect(bad).toThrow(ProgressEventError);
    try {
      bad();
    } catch (err) {
      const issues = (err as ProgressEventError).issues.join('\n');
      expect(issues).toMatch(/^run: run id/m);
      expect(issues).toMatch(/^generation: /m);
      expect(issues).toMatch(/^fitness: /m);
    }
    expect(() => makeEvent({ run: 'r', kind: 'no.such' } as never)).toThrow(/kind/);
    expect(() => makeEvent({ run: 'r', kind: 'run.finished', status: 'done' } as never)).toThrow(/status/);
  });

  it('parses stored events, and refuses other versions and garbage without throwing', () => {
    const e = makeEvent({ run: 'r', kind: 'pretrain.step', step: 5, loss: 2.5, tokens: 100 });
    expect(parseEvent(JSON.stringify(e))).toEqual({ ok: true, event: e });
    expect(parseEvent(new TextEncoder().encode(JSON.stringify(e)))).toEqual({ ok: true, event: e });
    // A later minor addition (an unknown field) is accepted and dropped.
    expect(parseEvent({ ...e, extra: 1 })).toEqual({ ok: true, event: e });
    expect(parseEvent({ ...e, v: 2 })).toMatchObject({ ok: false, error: 'unsupported schema version 2' });
    expect(parseEvent('{')).toMatchObject({ ok: false, error: expect.stringMatching(/^not JSON/) });
    expect(parseEvent({ ...e, step: 'x' })).toMatchObject({ ok: false, error: expect.stringMatching(/^step: /) });
  });

  it('docs/progress-events.schema.json is the schema the code validates (OFFSHOOT_WRITE_SCHEMA=1 rewrites it)', () => {
    const generated = `${JSON.stringify(progressEventJsonSchema(), null, 2)}\n`;
    if (process.env.OFFSHOOT_WRITE_SCHEMA) fs.writeFileSync(SCHEMA_FILE, generated);
    expect(fs.readFileSync(SCHEMA_FILE, 'utf8')).toBe(generated);
    const schema = JSON.parse(generated) as {
      oneOf?: { properties: { kind: { const: string } } }[];
      anyOf?: { properties: { kind: { const: string } } }[];
    };
    const kinds = (schema.oneOf ?? schema.anyOf ?? []).map((s) => s.properties.kind.const);
    expect(kinds).toEqual([...EVENT_KINDS]);
    expect(PROGRESS_SCHEMA_VERSION).toBe(1);
  });
});

describe('progress reducers', () => {
  const sim = simulatedRun({
    run: 'sim',
    generations: 3,
    population: 6,
    steps: 40,
    evalEvery: 10,
    start: Date.parse('2026-01-01T00:00:00Z'),
  });
  const events: ProgressEvent[] = sim.events.map((e) => makeEvent(e));

  it('the KV status follows the run and ignores an event applied twice in a row', () => {
    let s = applyStatus(undefined, events[0]);
    for (const e of events.slice(1)) {
      const once = applyStatus(s, e);
      expect(applyStatus(once, e)).toBe(once);
      s = once;
    }
    expect(s).toMatchObject({
      run: 'sim',
      mode: 'pipeline',
      state: 'running',
      generations: 3,
      generationsDone: 3,
      budget: 18,
      evaluated: 18,
      failed: 1,
    });
    expect(s.pretrain).toMatchObject({ step: 40, steps: 40 });
    expect(s.lastCheckpoint).toEqual({ step: 40, uri: '/runs/sim/student/step-40' });
    expect(s.lastError?.error).toContain('teacher service unavailable');
    expect(s.recent.length).toBeLessThanOrEqual(64);
    const best = events
      .filter((e) => e.kind === 'candidate.evaluated' && e.fitness !== null)
      .reduce((a, b) => ((b as { fitness: number }).fitness < (a as { fitness: number }).fitness ? b : a));
    expect(s.best?.candidate).toBe((best as { candidate: number }).candidate);
    const done = applyStatus(s, makeEvent({ run: 'sim', kind: 'run.finished', status: 'failed', error: 'boom' }));
    expect(done).toMatchObject({ state: 'failed', error: 'boom' });
    expect(s.state).toBe('running'); // not modified in place
  });

  it('the run state has every candidate, both loss series, workers and errors; the live view draws them', () => {
    const state = initialRunState('sim');
    for (const e of events) applyEvent(state, e);
    expect(state.candidates.size).toBe(18);
    expect([...state.perGeneration.values()]).toEqual([6, 6, 6]);
    expect([...state.series.keys()]).toEqual(['student', 'random-init']);
    expect(state.series.get('student')!.train).toHaveLength(40);
    expect(state.series.get('random-init')!.val.map((p) => p.step)).toEqual([10, 20, 30, 40]);
    expect([...state.workers.keys()].sort()).toEqual([
      'evaluator-1',
      'evaluator-2',
      'evaluator-3',
      'pretrain-1',
      'pretrain-2',
    ]);
    expect(state.workers.get('pretrain-1')).toMatchObject({ state: 'idle', activity: 'trainSegment' });
    expect(state.errors.map((e) => e.activity)).toEqual(['evaluateCandidate', 'evaluateCandidate']);

    // A redone step (a retried segment) replaces the point rather than adding one.
    applyEvent(state, makeEvent({ run: 'sim', kind: 'pretrain.step', step: 20, loss: 9.9 }));
    expect(state.series.get('student')!.train).toHaveLength(40);
    expect(state.series.get('student')!.train[19].value).toBe(9.9);

    const now = Date.parse(state.status.updatedAt) + 1000;
    const view = renderView(state, now).join('\n');
    expect(view).toMatch(/^offshoot run sim · pipeline · running · /);
    expect(view).toMatch(/generations +█+ 100% 3\/3/);
    expect(view).toMatch(/evaluations +█+ 100% 18\/18 +1 failed/);
    expect(view).toMatch(/pretraining +█+ 100% 40\/40/);
    expect(view).toMatch(/best so far +\d\.\d{4} +#\d+ +\d+\.\dM params/);
    expect(view).toMatch(/workers +evaluator-1 +idle after evaluateCandidate/);
    expect(view).toMatch(
      /last errors +\d\d:\d\d:\d\d evaluateCandidate attempt 1 on evaluator-3: teacher service unavailable/,
    );
  });

  it('a run in progress shows ETAs from the event rate', () => {
    const state = initialRunState('half');
    const half = simulatedRun({
      run: 'half',
      generations: 4,
      population: 5,
      steps: 10,
      start: Date.parse('2026-01-01T00:00:00Z'),
    });
    // Up to the end of generation 2 of 4.
    const upto = half.events.findIndex((e) => e.kind === 'generation.finished' && e.generation === 1);
    for (const e of half.events.slice(0, upto + 1)) applyEvent(state, makeEvent(e));
    const view = renderView(state, state.lastTime!);
    expect(view.join('\n')).toMatch(/generations +█+░+ +50% 2\/4 +ETA \d+s/);
    expect(view.join('\n')).toMatch(/evaluations +█+░+ +50% 10\/20 +ETA \d+s/);
    expect(view.join('\n')).toMatch(/pretraining +░+ +0% 0\/10 +not started/);
  });

  it('Pareto front: fewest parameters for each fitness, failures left out', () => {
    const rows = [
      { params: 5, fitness: 3 },
      { params: 3, fitness: 4 },
      { params: 4, fitness: 3.5 },
      { params: 6, fitness: 3.2 },
      { params: 7, fitness: 2 },
      { params: 1, fitness: null },
    ];
    expect(paretoFront(rows).map((r) => r.params)).toEqual([3, 4, 5, 7]);
  });

  it('one line per event', () => {
    const lines = events.slice(0, 4).map(formatEventLine);
    expect(lines[0]).toBe(
      '2026-01-01T00:00:00.000Z sim run started: pipeline, 3 generations x 6, budget 18 evaluations, pretrain 40 steps, bin 60.0M-75.0M params, baselines random-init [orchestrator]',
    );
    expect(lines[1]).toMatch(/^\S+ sim activity evaluateCandidate started \(attempt 1\): candidate 0 \[evaluator-1\]$/);
    expect(lines[2]).toMatch(
      /^\S+ sim candidate #0 \(gen 0\): fitness \d\.\d{4}, \d+\.\dM params, \d+s \[evaluator-1\]$/,
    );
    const fail = events.find((e) => e.kind === 'activity.failed')!;
    expect(formatEventLine(fail)).toMatch(
      /activity evaluateCandidate FAILED \(attempt 1, will retry\) candidate 5: teacher service unavailable/,
    );
  });
});

describe('publishers without NATS', () => {
  it('memory and no-op publishers; createProgressPublisher picks no-op without a NATS address', async () => {
    const mem = new MemoryProgressPublisher('w');
    const e = await mem.publish({ run: 'r', kind: 'pretrain.step', step: 1, loss: 2 });
    expect(e.source).toEqual({ worker: 'w' });
    expect(mem.events).toEqual([e]);
    expect(() => mem.publish({ run: 'r', kind: 'pretrain.step', step: -1, loss: 2 })).toThrow(ProgressEventError);

    const saved = process.env.OFFSHOOT_NATS_URL;
    delete process.env.OFFSHOOT_NATS_URL;
    try {
      const p = createProgressPublisher();
      expect(p.constructor.name).toBe('NoopProgressPublisher');
      await expect(p.publish({ run: 'r', kind: 'run.finished', status: 'completed' })).resolves.toMatchObject({
        id: 'r.run.finished',
      });
      await p.close();
    } finally {
      if (saved !== undefined) process.env.OFFSHOOT_NATS_URL = saved;
    }
  });
});
