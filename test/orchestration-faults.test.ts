/**
 * Failure behaviour of the orchestration against real servers: the Temporal dev server and nats-server
 * (services/stack), offshoot workers as child processes, a tiny teacher trained by the CLI.
 *
 * - the pretraining actor survives kill -9 of its worker mid-segment (resume from the last checkpoint)
 * - a SIGTERM'd pretrain worker checkpoints and exits; another goes on, no step redone
 * - an evaluator killed mid-evaluation: retried on another worker, recorded once
 * - the Temporal server stopped mid-search and restarted on its database: same result as uninterrupted
 * - a long search continues-as-new with a bounded history; stop signal and setBudget update
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { computeCheckpointHash } from '../core/model/index.js';
import {
  type LossLine,
  evolutionInput,
  pretrainInput,
  readLosses,
  retrying,
  trainTinyTeacher,
  waitUntil,
} from './helpers/orchestration.js';
import {
  type Stack,
  type WorkerProcess,
  startStack,
  startTemporal,
  startWorker,
  temporalAnswers,
} from '../services/stack/index.js';
import { connectClient } from '../services/worker/index.js';
import {
  type EvolutionResult,
  type RunRef,
  type TeacherRef,
  evolution,
  evolutionBestQuery,
  evolutionParetoQuery,
  evolutionStatusQuery,
  pretrain,
  setBudgetUpdate,
  stopSignal,
} from '../workflows/index.js';

const EventType = temporal.api.enums.v1.EventType;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-orch-'));
let stack: Stack;
let client: Client;
let teacher: TeacherRef;
const workers: WorkerProcess[] = [];
/** Workers a test started; stopped (killed) after it, whatever happened. */
let testWorkers: WorkerProcess[] = [];

async function worker(queues: string[], name: string): Promise<WorkerProcess> {
  const w = await startWorker({ queues, name, temporal: stack.temporal.address, extra: ['--grace-period', '20'] });
  workers.push(w);
  testWorkers.push(w);
  return w;
}

function run(name: string): RunRef {
  return { runId: name, dir: path.join(tmp, 'runs', name) };
}

let ids = 0;
const wid = (name: string) => `test/${name}/${Date.now()}-${ids++}`;

beforeAll(async () => {
  [stack, teacher] = await Promise.all([
    startStack({ dir: path.join(tmp, 'stack'), logs: true }),
    Promise.resolve(trainTinyTeacher(path.join(tmp, 'teacher'))),
  ]);
  client = await connectClient({ address: stack.temporal.address });
  await worker(['orchestrate'], 'orchestrate');
  testWorkers = [];
}, 300_000);

afterEach(async () => {
  await Promise.all(testWorkers.map((w) => w.kill9()));
  testWorkers = [];
});

afterAll(async () => {
  await client?.connection.close();
  await Promise.all(workers.map((w) => w.kill9()));
  await stack?.stop();
}, 60_000);

describe('pretraining actor', () => {
  it('survives kill -9 of its worker mid-segment: another worker resumes from the last checkpoint', async () => {
    const r = run('kill9');
    const p1 = await worker(['pretrain'], 'pretrain-1');
    const handle = await client.workflow.start(pretrain, {
      workflowId: wid('kill9'),
      taskQueue: 'orchestrate',
      args: [pretrainInput(r, teacher, 'student')],
    });
    const lossFile = path.join(r.dir, 'student', 'losses.jsonl');
    // Kill well into the segment, past at least two checkpoints (every 50 steps).
    await waitUntil('step 130', () => readLosses(lossFile).some((l) => l.step >= 130), 120_000, 20);
    await p1.kill9();
    const first = readLosses(lossFile);
    const killStep = Math.max(...first.map((l) => l.step));
    const p2 = await worker(['pretrain'], 'pretrain-2');
    const result = await handle.result();

    expect(result.steps).toBe(400);
    expect(result.checkpoint.step).toBe(400);
    expect(computeCheckpointHash(result.checkpoint.dir)).toBe(result.checkpoint.hash);
    const seg = result.segments[0];
    expect(seg.attempt).toBe(2);
    expect(seg.worker).toBe(p2.identity);
    // Resumed from the last checkpoint at or before the kill: at most one checkpoint interval redone.
    // (A kill between logging a checkpoint step and writing its checkpoint resumes one interval back.)
    expect(seg.resumedFrom % 50).toBe(0);
    expect(seg.resumedFrom).toBeGreaterThanOrEqual(Math.floor((killStep - 1) / 50) * 50);
    expect(killStep - seg.resumedFrom).toBeLessThanOrEqual(50);
    const all = readLosses(lossFile);
    const second = all.filter((l) => l.attempt === 2);
    expect(second[0].step).toBe(seg.resumedFrom + 1);
    expect(second.map((l) => l.step)).toEqual(
      Array.from({ length: 400 - seg.resumedFrom }, (_, i) => seg.resumedFrom + 1 + i),
    );
    expect(new Set(second.map((l) => l.worker))).toEqual(new Set([p2.identity]));
    // The loss curve continues: the redone steps repeat the first attempt's losses (same data, same
    // weights), far below where training started.
    const a1 = new Map(first.map((l) => [l.step, l.loss]));
    for (const l of second.filter((x) => x.step <= killStep))
      expect(Math.abs(l.loss - a1.get(l.step)!)).toBeLessThan(0.02);
    const mean = (xs: LossLine[]) => xs.reduce((a, l) => a + l.loss, 0) / xs.length;
    expect(mean(second.slice(0, 10))).toBeLessThan(mean(first.slice(0, 10)) - 0.05);
    expect(result.evals.map((e) => e.step)).toEqual([200, 400]);
  }, 240_000);

  it('a SIGTERM checkpoints the running segment and exits; another worker finishes, nothing redone', async () => {
    const r = run('sigterm');
    const p1 = await worker(['pretrain'], 'pretrain-3');
    const handle = await client.workflow.start(pretrain, {
      workflowId: wid('sigterm'),
      taskQueue: 'orchestrate',
      args: [pretrainInput(r, teacher, 'student', { checkpointEvery: 100 })],
    });
    const lossFile = path.join(r.dir, 'student', 'losses.jsonl');
    await waitUntil('step 120', () => readLosses(lossFile).some((l) => l.step >= 120), 120_000, 20);
    const t = Date.now();
    const exit = await p1.stop(30_000);
    expect(exit.code).toBe(0);
    expect(Date.now() - t).toBeLessThan(20_000);
    const p2 = await worker(['pretrain'], 'pretrain-4');
    const result = await handle.result();
    expect(result.steps).toBe(400);
    const [a, b] = result.segments;
    expect(a.stopped).toBe('worker-shutdown');
    expect(a.worker).toBe(p1.identity);
    expect(b.fromStep).toBe(a.toStep);
    expect(b.worker).toBe(p2.identity);
    // Checkpointed where it stopped (not at the last interval): every step trained exactly once.
    const steps = readLosses(lossFile).map((l) => l.step);
    expect(steps).toEqual(Array.from({ length: 400 }, (_, i) => i + 1));
  }, 240_000);

  it('stops at a target perplexity', async () => {
    const r = run('target');
    await worker(['pretrain'], 'pretrain-5');
    const input = pretrainInput(r, teacher, 'student', { evalEvery: 20, checkpointEvery: 10, targetPpl: 1000 });
    const result = await client.workflow.execute(pretrain, {
      workflowId: wid('target'),
      taskQueue: 'orchestrate',
      args: [input],
    });
    expect(result.reachedTarget).toBe(true);
    expect(result.steps).toBe(20);
    expect(result.evals).toHaveLength(1);
    expect(result.evals[0].valPpl).toBeLessThanOrEqual(1000);
    expect(result.checkpoint.step).toBe(20);
  }, 120_000);
});

describe('evolution actor', () => {
  it('an evaluator killed mid-evaluation: the evaluation is retried on another worker and recorded once', async () => {
    const e1 = await worker(['evaluate'], 'evaluate-1');
    const e2 = await worker(['evaluate'], 'evaluate-2');
    const input = evolutionInput(run('evalkill'), teacher, {
      search: { budget: 6, population: 3, seed: 7 },
      fitness: {
        budget: { kind: 'brief', steps: 60, batchSize: 8, seqLen: 32, evalTokens: 2048 },
        order: 'first-k',
        layers: 'first',
      },
    });
    const handle = await client.workflow.start(evolution, {
      workflowId: wid('evalkill'),
      taskQueue: 'orchestrate',
      args: [input],
    });
    const m = await waitUntil(
      'an evaluation on evaluate-1',
      () => /evaluate: candidate (\d+) \(\w+\) attempt 1/.exec(e1.output()),
      120_000,
      10,
    );
    const killed = Number(m[1]);
    await e1.kill9();
    const result = await handle.result();
    expect(result.history.map((h) => h.id)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(result.history.every((h) => h.status === 'ok')).toBe(true);
    const h = result.history.find((x) => x.id === killed)!;
    expect(h.metrics?.attempt).toBe(2);
    expect(h.metrics?.worker).toBe(e2.identity);
    // Recorded once: one completed evaluate activity per candidate in the workflow's history.
    const history = await handle.fetchHistory();
    const events = history.events ?? [];
    const scheduled = new Map(
      events
        .filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
        .map((e) => [String(e.eventId), e.activityTaskScheduledEventAttributes?.activityType?.name]),
    );
    const completed = events.filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED);
    const evaluations = completed.filter(
      (e) => scheduled.get(String(e.activityTaskCompletedEventAttributes?.scheduledEventId)) === 'evaluateCandidate',
    );
    expect(evaluations).toHaveLength(6);
  }, 240_000);

  it('the Temporal server stopped mid-search and restarted on its database: the search ends as an uninterrupted one', async () => {
    const _e = await worker(['evaluate'], 'evaluate-3');
    const input = evolutionInput(run('restart'), teacher, {
      search: { budget: 24, population: 4, seed: 11 },
      continueAsNewEvery: 4,
    });
    const reference = await client.workflow.execute(evolution, {
      workflowId: wid('restart-ref'),
      taskQueue: 'orchestrate',
      args: [input],
    });

    const handle = await client.workflow.start(evolution, {
      workflowId: wid('restart'),
      taskQueue: 'orchestrate',
      args: [input],
    });
    const before = await waitUntil(
      '6 evaluations',
      async () => {
        const s = await handle.query(evolutionStatusQuery);
        return s.evaluated >= 6 ? s : undefined;
      },
      60_000,
      20,
    );
    expect(before.evaluated).toBeLessThan(24);
    await stack.restartTemporal({ downMs: 2000 });
    const result: EvolutionResult = await retrying(() => handle.result());

    const summary = (r: EvolutionResult) => r.history.map((h) => [h.id, h.key, h.status, h.fitness?.toFixed(6)]);
    expect(summary(result)).toEqual(summary(reference));
    expect(result.best.key).toBe(reference.best.key);
    expect(result.best.spec).toEqual(reference.best.spec);
    expect(result.status.evaluated).toBe(24);
  }, 240_000);

  it('a long search continues-as-new and its history stays bounded', async () => {
    const _e = await worker(['evaluate'], 'evaluate-4');
    // Past a few generations the search state (about 1 KB per evaluation here) is over the 8 KB set
    // here, so it goes to shared storage and travels by reference.
    const input = evolutionInput(run('long'), teacher, {
      search: { budget: 44, population: 4, seed: 3 },
      continueAsNewEvery: 3,
      parallelism: 2,
      inlineStateBytes: 8192,
    });
    const id = wid('long');
    const handle = await client.workflow.start(evolution, { workflowId: id, taskQueue: 'orchestrate', args: [input] });
    const result = await handle.result();
    expect(result.status.evaluated).toBe(44);
    const lengths = result.status.historyLengths;
    expect(lengths.length).toBe(result.status.run);
    // 1 + 20 generations (4, then 2 per generation), 3 per run.
    expect(result.status.run).toBe(7);
    // Every run's history has the same bound, however many evaluations came before it.
    const bound = Math.max(...lengths.slice(0, 2)) + 10;
    for (const n of lengths) expect(n).toBeLessThanOrEqual(bound);
    expect(lengths.reduce((a, b) => a + b, 0)).toBeGreaterThan(3 * bound);
    const blobs = fs.readdirSync(path.join(input.run.dir, 'blobs'));
    expect(blobs.length).toBeGreaterThanOrEqual(3);
    expect(result.history).toEqual([]);
    expect(result.historyRef?.blob).toMatch(/blobs\/[0-9a-f]{64}\.json$/);
    expect((JSON.parse(fs.readFileSync(result.historyRef!.blob, 'utf8')) as unknown[]).length).toBe(44);
    // The first run ended by continuing as new.
    const firstRun = client.workflow.getHandle(id, handle.firstExecutionRunId);
    expect((await firstRun.describe()).status.name).toBe('CONTINUED_AS_NEW');
  }, 240_000);

  it('setBudget (update) and stop (signal) end a search early', async () => {
    const _e = await worker(['evaluate'], 'evaluate-5');
    const big = { budget: 1000, population: 4, seed: 9 };
    const h1 = await client.workflow.start(evolution, {
      workflowId: wid('budget'),
      taskQueue: 'orchestrate',
      args: [evolutionInput(run('budget'), teacher, { search: big, continueAsNewEvery: 1000 })],
    });
    await waitUntil('4 evaluations', async () => (await h1.query(evolutionStatusQuery)).evaluated >= 4, 60_000, 20);
    const best = await h1.query(evolutionBestQuery);
    expect(best?.status).toBe('ok');
    expect(best?.spec).toBeDefined();
    const front = await h1.query(evolutionParetoQuery);
    expect(front.length).toBeGreaterThan(0);
    expect(front.some((f) => f.id === best!.id)).toBe(true);
    const after = await h1.executeUpdate(setBudgetUpdate, { args: [10] });
    expect(after.budget).toBe(10);
    const rejected = await h1.executeUpdate(setBudgetUpdate, { args: [-1] }).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(String((rejected?.cause as Error | undefined)?.message)).toMatch(
      /budget must be a non-negative integer, got -1/,
    );
    const r1 = await h1.result();
    expect(r1.status.asked).toBe(10);

    const h2 = await client.workflow.start(evolution, {
      workflowId: wid('stop'),
      taskQueue: 'orchestrate',
      args: [evolutionInput(run('stop'), teacher, { search: big, continueAsNewEvery: 1000 })],
    });
    await waitUntil('4 evaluations', async () => (await h2.query(evolutionStatusQuery)).evaluated >= 4, 60_000, 20);
    await h2.signal(stopSignal, 'test');
    const r2 = await h2.result();
    expect(r2.status.stopped).toBe(true);
    expect(r2.status.asked).toBeLessThan(40);
    expect(r2.best.fitness).toBeGreaterThan(0);
  }, 240_000);
});

describe('stack helper', () => {
  it('waits for a server through a blocked event loop (a teacher training in the same process)', async () => {
    const starting = startTemporal({ dbFile: path.join(tmp, 'busy', 'temporal.db'), timeoutMs: 1000 });
    const until = Date.now() + 2500;
    while (Date.now() < until) {
      // busy: no timers, no I/O
    }
    const server = await starting;
    expect(await temporalAnswers(server.address)).toBe(true);
    await server.stop();
  }, 60_000);
});

describe('payloads', () => {
  it('a payload over 2 MB is refused where it is made, naming the limit', async () => {
    const input = evolutionInput(run('big'), teacher);
    const huge = {
      ...input,
      space: { ...input.space, choices: { layers: Array.from({ length: 1_200_000 }, () => 1) } },
    };
    await expect(
      client.workflow.start(evolution, { workflowId: wid('big'), taskQueue: 'orchestrate', args: [huge] }),
    ).rejects.toThrow(/exceeds offshoot's 2 MB limit/);
  });
});
