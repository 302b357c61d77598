/**
 * The workflows' own logic, in seconds: the evolution, pretrain and pipeline workflows on a local
 * Temporal (@temporalio/testing's TestWorkflowEnvironment over the Temporal CLI that
 * scripts/setup-services.sh builds), with stub activities in this process — evaluations score a
 * candidate by a synthetic fitness (test/search-synthetic.ts), training segments advance steps without
 * training. Continue-as-new, stop, setBudget, activity retries and budget accounting. The real-stack
 * tests (orchestration-*.test.ts) cover the same paths with real workers and real training.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { presetConfig } from '../core/model/index.js';
import { getBlob, putBlob, writeReportFiles } from '../services/orchestration/index.js';
import { parseConfig, pipelineInput } from '../services/config/index.js';
import { temporalBinary } from '../services/stack/index.js';
import { workflowBundle } from '../services/worker/index.js';
import {
  type EvaluateActivities,
  type EvaluateInput,
  type EvolutionInput,
  type EvolutionResult,
  type OrchestrateActivities,
  type PretrainActivities,
  type PretrainInput,
  type RunRef,
  type TeacherRef,
  type TrainSegmentInput,
  TASK_QUEUES,
  evolution,
  evolutionStatusQuery,
  pipeline,
  pipelineStatusQuery,
  pretrain,
  pretrainStatusQuery,
  setBudgetUpdate,
  stopPretrainSignal,
  stopSignal,
} from '../workflows/index.js';
import { evolutionInput, policy, pretrainInput, waitUntil } from './helpers/orchestration.js';
import { subnetDistance } from './search-synthetic.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-workflows-'));
const config = presetConfig('tiny', 300);
const teacher: TeacherRef = { dir: path.join(tmp, 'teacher'), hash: 'synthetic-teacher', config, parameters: 45_000 };

/** What a run's stub activities do besides succeeding (by run id). */
interface Script {
  /** Candidates whose first evaluation attempt fails (a lost evaluator: Temporal retries it). */
  lostOnce?: number[];
  /** Candidates the evaluator rejects (a non-retryable SpecError: the search records a failure). */
  rejected?: number[];
  /** Evaluations of candidates from this id on wait for `gate`. */
  gateFrom?: number;
  /** Training segments starting at this step wait for `gate`. */
  gateAtStep?: number;
  gate?: Promise<void>;
  /** The first attempt of the segment starting at this step fails (a lost worker). */
  segmentLostAt?: number;
  /** The segment running through this step stops there once (its worker shuts down). */
  shutdownAt?: number;
  /** The validation perplexity reaches the target at this step. */
  targetAt?: number;
  /** prepareTeacher fails with this (non-retryable). */
  teacherError?: string;
}

const scripts = new Map<string, Script>();
const calls: { activity: string; run: string; key: string; attempt: number }[] = [];
const events: { kind: string; run: string; status?: unknown }[] = [];

function record(activity: string, run: string, key: string): { script: Script; attempt: number } {
  const attempt = Context.current().info.attempt;
  calls.push({ activity, run, key, attempt });
  return { script: scripts.get(run) ?? {}, attempt };
}

const evaluateActivities: EvaluateActivities = {
  async evaluateCandidate(input: EvaluateInput) {
    const { script: s, attempt } = record('evaluateCandidate', input.run.runId, String(input.candidateId));
    if (s.gate && s.gateFrom !== undefined && input.candidateId >= s.gateFrom) await s.gate;
    if (s.lostOnce?.includes(input.candidateId) && attempt === 1)
      throw new Error(`evaluator lost during candidate ${input.candidateId}`);
    if (s.rejected?.includes(input.candidateId))
      throw ApplicationFailure.nonRetryable(`candidate ${input.candidateId} rejected`, 'SpecError');
    const fitness = subnetDistance(input.spec);
    return {
      fitness,
      metrics: {
        valLoss: fitness,
        valPpl: Math.exp(fitness),
        parameters: 0,
        trainTokens: 100,
        evalTokens: 10,
        flops: 1000,
        seconds: 0,
        specHash: input.key,
        worker: 'stub',
        attempt,
      },
    };
  },
};

const stopsDone = new Set<string>();

const pretrainActivities: PretrainActivities = {
  async prepareTeacher(input) {
    const { script: s } = record('prepareTeacher', input.run.runId, input.dir);
    if (s.teacherError) throw ApplicationFailure.nonRetryable(s.teacherError, 'CheckpointError');
    return { ...teacher, dir: input.dir };
  },
  async prepareStudent(input) {
    record('prepareStudent', input.run.runId, input.name);
    return {
      checkpoint: { dir: path.join(input.run.dir, input.name, 'step-0'), hash: `${input.name}@0`, step: 0 },
      parameters: 20_000,
      config,
    };
  },
  async trainSegment(input: TrainSegmentInput) {
    const from = input.from.step ?? 0;
    const { script: s, attempt } = record('trainSegment', input.run.runId, `${input.name}@${from}`);
    if (s.gate && s.gateAtStep === from) await s.gate;
    if (s.segmentLostAt === from && attempt === 1) throw new Error(`worker lost during the segment from step ${from}`);
    let step = input.toStep;
    let stopped: 'worker-shutdown' | 'target-reached' | undefined;
    const key = `${input.run.runId}/${input.name}`;
    if (s.shutdownAt !== undefined && from < s.shutdownAt && s.shutdownAt < step && !stopsDone.has(key)) {
      stopsDone.add(key);
      [step, stopped] = [s.shutdownAt, 'worker-shutdown'];
    }
    if (s.targetAt !== undefined && from < s.targetAt && s.targetAt <= step)
      [step, stopped] = [s.targetAt, 'target-reached'];
    const tokens = (step - from) * input.hyper.batchSize * input.hyper.seqLen;
    return {
      checkpoint: { dir: path.join(input.run.dir, input.name, `step-${step}`), hash: `${input.name}@${step}`, step },
      step,
      resumedFrom: from,
      attempt,
      worker: 'stub',
      tokens,
      flops: { training: 6 * tokens, teacher: input.hyper.distill ? 2 * tokens : 0 },
      firstLoss: 10 - from / 100,
      lastLoss: 10 - step / 100,
      evals: stopped === 'target-reached' ? [{ step, valLoss: 1, valPpl: Math.E }] : [],
      seconds: 0,
      ...(stopped ? { stopped } : {}),
    };
  },
  async evaluateCheckpoint(input) {
    const valLoss = 2 + input.checkpoint.hash.length / 100;
    // Four bytes a token, as a stand-in for the text's bytes.
    return {
      valLoss,
      valPpl: Math.exp(valLoss),
      valBpb: valLoss / (4 * Math.LN2),
      tokens: input.evalTokens,
      bytes: 4 * input.evalTokens,
    };
  },
  async evaluateTasks(input) {
    return input.files.map((f) => ({
      task: f,
      docs: input.limit ?? 10,
      metrics: { acc: { value: 0.5, stderr: 0.1 } },
    }));
  },
};

const orchestrateActivities: OrchestrateActivities = {
  async putBlob({ runDir, value }) {
    return putBlob(runDir, value);
  },
  async getBlob(ref) {
    return getBlob(ref);
  },
  async writeReport({ runDir, result }) {
    return writeReportFiles(runDir, result);
  },
  async publishProgress(event) {
    events.push(event);
  },
};

let env: TestWorkflowEnvironment;
let workers: Worker[];
let running: Promise<unknown>;

function run(name: string): RunRef {
  return { runId: name, dir: path.join(tmp, 'runs', name) };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const start = <W extends typeof evolution | typeof pretrain | typeof pipeline>(
  workflow: W,
  id: string,
  input: Parameters<W>[0],
) =>
  env.client.workflow.start(workflow, {
    workflowId: `${id}/${Date.now()}`,
    taskQueue: TASK_QUEUES.orchestrate,
    args: [input] as never,
  });

/** A small search: 12 evaluations, 4 at first and 2 per generation after (elitism 2). */
const search = (r: RunRef, overrides: Partial<EvolutionInput> = {}): EvolutionInput =>
  evolutionInput(r, teacher, { search: { budget: 12, population: 4, seed: 5 }, activity: policy(10, 3), ...overrides });

const summary = (r: EvolutionResult) => r.history.map((h) => [h.id, h.key, h.origin, h.status, h.fitness]);

beforeAll(async () => {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
  const [e, bundle] = await Promise.all([
    TestWorkflowEnvironment.createLocal({
      server: {
        executable: { type: 'existing-path', path: temporalBinary() },
        ip: '127.0.0.1',
        // A new run of a workflow id waits out this interval (1 s by default) after the previous one: no
        // use where continue-as-new is what is tested.
        extraArgs: ['--dynamic-config-value', 'history.workflowIdReuseMinimalInterval="0s"'],
      },
    }),
    workflowBundle(),
  ]);
  env = e;
  const connection = env.nativeConnection;
  workers = await Promise.all([
    Worker.create({
      connection,
      taskQueue: TASK_QUEUES.orchestrate,
      workflowBundle: bundle,
      activities: orchestrateActivities,
    }),
    Worker.create({
      connection,
      taskQueue: TASK_QUEUES.evaluate,
      activities: evaluateActivities,
      maxConcurrentActivityTaskExecutions: 8,
    }),
    Worker.create({ connection, taskQueue: TASK_QUEUES.pretrain, activities: pretrainActivities }),
  ]);
  running = Promise.all(workers.map((w) => w.run()));
}, 120_000);

afterAll(async () => {
  for (const w of workers ?? []) w.shutdown();
  await running;
  await env?.teardown();
  fs.rmSync(tmp, { recursive: true, force: true });
}, 60_000);

describe('evolution workflow', () => {
  it('spends exactly its budget: failures count, retries of failed candidates count, FLOPs add up', async () => {
    scripts.set('budget', { rejected: [2] });
    const r = await (
      await start(
        evolution,
        'budget',
        search(run('budget'), { search: { budget: 12, population: 4, seed: 5, retryFailed: 1 } }),
      )
    ).result();
    expect(r.status).toMatchObject({ asked: 12, evaluated: 11, failed: 1, pending: 0, done: true, stopped: false });
    expect(r.history.map((h) => h.id)).toEqual([...Array(12).keys()]);
    const failed = r.history.find((h) => h.status === 'failed')!;
    expect(failed.id).toBe(2);
    expect(failed.error).toMatch(/candidate 2 rejected/);
    // The failed candidate was asked again, as one more evaluation of the budget.
    expect(r.history.filter((h) => h.origin === 'retry').map((h) => h.key)).toEqual([failed.key]);
    expect(r.searchFlops).toBe(11 * 1000);
    expect(r.best.fitness).toBe(Math.min(...r.history.filter((h) => h.status === 'ok').map((h) => h.fitness!)));
    // One evaluation activity per candidate: no retries of a non-retryable failure.
    expect(calls.filter((c) => c.run === 'budget' && c.activity === 'evaluateCandidate')).toHaveLength(12);
    expect(events.filter((e) => e.run === 'budget' && e.kind === 'generation.finished')).toHaveLength(5);
  });

  it('retries a lost evaluation and records it once, with its attempt', async () => {
    scripts.set('retry', { lostOnce: [5] });
    const r = await (await start(evolution, 'retry', search(run('retry')))).result();
    expect(r.status).toMatchObject({ asked: 12, evaluated: 12, failed: 0 });
    expect(r.history.find((h) => h.id === 5)!.metrics?.attempt).toBe(2);
    const five = calls.filter((c) => c.run === 'retry' && c.activity === 'evaluateCandidate' && c.key === '5');
    expect(five.map((c) => c.attempt)).toEqual([1, 2]);
  });

  it('continues as new every generation, with its state by reference, and ends as one run would', async () => {
    const straight = await (await start(evolution, 'straight', search(run('straight')))).result();
    const handle = await start(evolution, 'can', search(run('can'), { continueAsNewEvery: 1, inlineStateBytes: 256 }));
    const r = await handle.result();
    // The history was too large to return inline: it is on shared storage.
    expect(r.history).toEqual([]);
    expect(summary({ ...r, history: (await getBlob(r.historyRef!)) as EvolutionResult['history'] })).toEqual(
      summary(straight),
    );
    expect(r.best.spec).toEqual(straight.best.spec);
    expect(r.status.run).toBe(5);
    expect(r.status.historyLengths).toHaveLength(5);
    expect(
      (await env.client.workflow.getHandle(handle.workflowId, handle.firstExecutionRunId).describe()).status.name,
    ).toBe('CONTINUED_AS_NEW');
    expect(fs.readdirSync(path.join(run('can').dir, 'blobs')).length).toBeGreaterThanOrEqual(4);
  });

  it('stop: no new evaluations start; those running finish and are recorded', async () => {
    const gate = deferred();
    scripts.set('stop', { gateFrom: 6, gate: gate.promise });
    const handle = await start(
      evolution,
      'stop',
      search(run('stop'), { search: { budget: 1000, population: 4, seed: 5 } }),
    );
    await waitUntil(
      'candidates 6 and 7 running',
      async () => (await handle.query(evolutionStatusQuery)).inFlight.join() === '6,7',
      20_000,
      20,
    );
    await handle.signal(stopSignal, 'test');
    gate.resolve();
    const r = await handle.result();
    expect(r.status).toMatchObject({ stopped: true, asked: 8, evaluated: 8, done: true });
    expect(r.history.map((h) => h.status)).toEqual(Array(8).fill('ok'));
  });

  it('setBudget: a smaller budget ends the search there; a bad one is refused, naming the value', async () => {
    const gate = deferred();
    scripts.set('setbudget', { gateFrom: 4, gate: gate.promise });
    const handle = await start(
      evolution,
      'setbudget',
      search(run('setbudget'), { search: { budget: 1000, population: 4, seed: 5 } }),
    );
    await waitUntil(
      '4 evaluations',
      async () => (await handle.query(evolutionStatusQuery)).evaluated === 4,
      20_000,
      20,
    );
    const after = await handle.executeUpdate(setBudgetUpdate, { args: [10] });
    expect(after.budget).toBe(10);
    const refused = await handle.executeUpdate(setBudgetUpdate, { args: [-1] }).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(String((refused?.cause as Error | undefined)?.message)).toMatch(
      /budget must be a non-negative integer, got -1/,
    );
    gate.resolve();
    const r = await handle.result();
    expect(r.status).toMatchObject({ budget: 10, asked: 10, evaluated: 10, stopped: false });
  });
});

describe('pretrain workflow', () => {
  const input = (name: string, overrides: Partial<PretrainInput> = {}): PretrainInput =>
    pretrainInput(run(name), teacher, 'student', {
      hyper: {
        steps: 10,
        batchSize: 2,
        seqLen: 8,
        lr: 1e-3,
        warmup: 1,
        seed: 1,
        distill: { alpha: 0.5, temperature: 1, direction: 'forward' },
      },
      segmentSteps: 4,
      checkpointEvery: 2,
      activity: policy(10, 3),
      ...overrides,
    });

  it('trains in segments and adds up their tokens and FLOPs', async () => {
    const r = await (await start(pretrain, 'segments', input('segments'))).result();
    expect(r.segments.map((s) => [s.fromStep, s.toStep])).toEqual([
      [0, 4],
      [4, 8],
      [8, 10],
    ]);
    expect(r).toMatchObject({
      steps: 10,
      tokens: 10 * 16,
      flops: { training: 6 * 160, teacher: 2 * 160, total: 8 * 160 },
      reachedTarget: false,
    });
    expect(r.checkpoint).toEqual({
      dir: path.join(run('segments').dir, 'student', 'step-10'),
      hash: 'student@10',
      step: 10,
    });
  });

  it('retries a lost segment; a segment cut short by a shutdown is followed by one from where it stopped', async () => {
    scripts.set('faults', { segmentLostAt: 4, shutdownAt: 6 });
    const r = await (await start(pretrain, 'faults', input('faults'))).result();
    expect(r.segments.map((s) => [s.fromStep, s.toStep, s.attempt, s.stopped ?? ''])).toEqual([
      [0, 4, 1, ''],
      [4, 6, 2, 'worker-shutdown'],
      [6, 10, 1, ''],
    ]);
    expect(r.steps).toBe(10);
    expect(r.tokens).toBe(10 * 16);
  });

  it('ends at the target perplexity', async () => {
    scripts.set('target', { targetAt: 5 });
    const r = await (await start(pretrain, 'target', input('target', { targetPpl: 3 }))).result();
    expect(r).toMatchObject({ reachedTarget: true, steps: 5 });
    expect(r.segments).toHaveLength(2);
  });

  it('stop: ends after the running segment, whose checkpoint is the result', async () => {
    const gate = deferred();
    scripts.set('pstop', { gateAtStep: 4, gate: gate.promise });
    const handle = await start(pretrain, 'pstop', input('pstop'));
    await waitUntil(
      'the second segment running',
      () => calls.some((c) => c.run === 'pstop' && c.key === 'student@4'),
      20_000,
      20,
    );
    await handle.signal(stopPretrainSignal, 'test');
    expect((await handle.query(pretrainStatusQuery)).stopRequested).toBe(true);
    gate.resolve();
    const r = await handle.result();
    expect(r.steps).toBe(8);
    expect(r.segments).toHaveLength(2);
  });

  it('continues as new every few segments and carries its progress', async () => {
    scripts.set('pcan', { segmentLostAt: 5 });
    const handle = await start(pretrain, 'pcan', input('pcan', { segmentSteps: 1, continueAsNewEvery: 3 }));
    const r = await handle.result();
    expect(r.steps).toBe(10);
    expect(r.segments.map((s) => s.toStep)).toEqual([...Array(10).keys()].map((i) => i + 1));
    expect(r.segments[5].attempt).toBe(2);
    expect(r).toMatchObject({ tokens: 10 * 16, flops: { training: 6 * 160, teacher: 2 * 160, total: 8 * 160 } });
    expect(
      (await env.client.workflow.getHandle(handle.workflowId, handle.firstExecutionRunId).describe()).status.name,
    ).toBe('CONTINUED_AS_NEW');
  });
});

describe('pipeline workflow', () => {
  const input = (name: string) =>
    pipelineInput(
      parseConfig({
        run: { name },
        storage: { root: path.join(tmp, 'runs') },
        search: { budget: 6, population: 4, parallelism: 2 },
        pretrain: { steps: 8, warmup: 2, segmentSteps: 4, checkpointEvery: 2 },
      }),
    );

  it('teacher, search, the student and its baselines, final evaluation and report, with progress events', async () => {
    const handle = await start(pipeline, 'pipeline', input('pipeline'));
    const r = await handle.result();
    expect(r.rows.map((row) => row.name)).toEqual(['student', 'random-init', 'first-k']);
    expect(r.search.evaluations).toBe(6);
    expect(r.rows.every((row) => row.tokens === 8 * 8 * 64)).toBe(true);
    expect(r.rows[0].searchFlops).toBe(6 * 1000);
    expect(fs.existsSync(r.report.markdown)).toBe(true);
    expect((await handle.query(pipelineStatusQuery)).stage).toBe('done');
    const mine = events.filter((e) => e.run === 'pipeline');
    expect(mine[0].kind).toBe('run.started');
    expect(mine.at(-1)).toMatchObject({ kind: 'run.finished', status: 'completed' });
  });

  it('a teacher that cannot be prepared fails the run, and the failure is published', async () => {
    scripts.set('noteacher', { teacherError: 'no finished checkpoint there, and teacher training is off' });
    const err = await (await start(pipeline, 'noteacher', input('noteacher'))).result().then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(String(((err as WorkflowFailedError).cause?.cause as Error | undefined)?.message)).toMatch(
      /teacher training is off/,
    );
    expect(events.filter((e) => e.run === 'noteacher').at(-1)).toMatchObject({
      kind: 'run.finished',
      status: 'failed',
    });
  });
});
