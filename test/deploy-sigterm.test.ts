/**
 * The deployed workers under SIGTERM, as Kubernetes sends it (scale-down, eviction, rollout, drain):
 * each worker runs with exactly its Deployment's arguments, environment and configuration file as the
 * cuda overlay renders them (only the addresses point at a real Temporal dev server and nats-server on
 * loopback, and the metrics port is a free one), and is stopped as the kubelet stops it: SIGTERM, then
 * SIGKILL after the Deployment's terminationGracePeriodSeconds.
 *
 * - the pretraining worker, mid-segment between checkpoints: it checkpoints where it is, exits 0 within
 *   its --grace-period, and a new pod (another worker) resumes the segment from that checkpoint;
 * - an evaluator, mid-evaluation: it finishes that evaluation, exits 0 within its --grace-period, and the
 *   search goes on on another evaluator, every evaluation recorded once.
 *
 * test/orchestration-faults.test.ts covers the same drain with its own flags, and kill -9 of both kinds
 * of worker (a lost node), which the deployment leaves to Temporal's heartbeat timeouts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { type Stack, type WorkerProcess, startStack, startWorker } from '../services/stack/index.js';
import { connectClient } from '../services/worker/index.js';
import { type RunRef, type TeacherRef, evolution, pretrain } from '../workflows/index.js';
import { type Any, find, flags, render } from './helpers/deploy.js';
import { evolutionInput, pretrainInput, readLosses, trainTinyTeacher, waitUntil } from './helpers/orchestration.js';

const EventType = temporal.api.enums.v1.EventType;
const OVERLAY = 'cuda';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-deploy-sigterm-'));
const objs = render(OVERLAY);
let stack: Stack;
let client: Client;
let teacher: TeacherRef;
const started: WorkerProcess[] = [];

/** A Deployment's container as the overlay renders it: args, grace periods, environment, config file. */
function deployed(name: string) {
  const d = find(objs, 'Deployment', name) as Any;
  const c = d.spec.template.spec.containers[0];
  const envCm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('offshoot-env')) as Any;
  const configCm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('offshoot-config')) as Any;
  const f = flags(c.args);
  return {
    args: c.args as string[],
    queue: String(f.queues),
    grace: Number(f['grace-period']),
    terminationGrace: Number(d.spec.template.spec.terminationGracePeriodSeconds),
    env: {
      ...(envCm.data as Record<string, string>),
      ...Object.fromEntries((c.env ?? []).map((e: Any) => [e.name, e.value])),
    },
    configFile: configCm.data['offshoot.yaml'] as string,
  };
}

/** Starts a worker with its Deployment's command line; only what points outside this machine is changed. */
async function launch(name: string): Promise<WorkerProcess & { spec: ReturnType<typeof deployed> }> {
  const spec = deployed(name);
  const configFile = path.join(tmp, 'etc-offshoot', 'offshoot.yaml');
  fs.mkdirSync(path.dirname(configFile), { recursive: true });
  fs.writeFileSync(configFile, spec.configFile);
  const env: Record<string, string> = {
    ...spec.env,
    OFFSHOOT_TEMPORAL_ADDRESS: stack.temporal.address,
    OFFSHOOT_NATS_URL: stack.nats!.url,
  };
  const args = spec.args.map((a) => {
    if (a.startsWith('--config=')) return `--config=${configFile}`;
    if (a.startsWith('--metrics-port=')) return '--metrics-port=0';
    if (a.startsWith('--metrics-host=')) return '--metrics-host=127.0.0.1';
    // The kubelet expands $(VAR) from the container's environment.
    return a.replace(/\$\((\w+)\)/g, (_, v: string) => env[v] ?? '');
  });
  expect(args.slice(0, 2)).toEqual(['worker', `--queues=${spec.queue}`]);
  const w = await startWorker({
    queues: [spec.queue],
    extra: args.slice(2),
    env: { ...process.env, ...env },
    logFile: path.join(tmp, `${name}-${started.length}.log`),
  });
  started.push(w);
  return Object.assign(w, { spec });
}

/** What the kubelet does: SIGTERM, then SIGKILL after terminationGracePeriodSeconds. Returns the exit and how long it took. */
async function terminate(
  w: WorkerProcess & { spec: ReturnType<typeof deployed> },
): Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number }> {
  const t = Date.now();
  const exit = await w.stop(w.spec.terminationGrace * 1000);
  return { ...exit, seconds: (Date.now() - t) / 1000 };
}

const run = (name: string): RunRef => ({ runId: name, dir: path.join(tmp, 'runs', name) });
let ids = 0;
const wid = (name: string) => `test/deploy/${name}/${Date.now()}-${ids++}`;

beforeAll(async () => {
  [stack, teacher] = await Promise.all([
    startStack({ dir: path.join(tmp, 'stack'), logs: true }),
    Promise.resolve(trainTinyTeacher(path.join(tmp, 'teacher'))),
  ]);
  client = await connectClient({
    address: stack.temporal.address,
    namespace: deployed('offshoot-orchestrator').env.OFFSHOOT_TEMPORAL_NAMESPACE,
  });
  await launch('offshoot-orchestrator');
}, 300_000);

afterEach(async () => {
  // Workers a test left running (the orchestrator stays).
  await Promise.all(started.slice(1).map((w) => w.kill9()));
  started.splice(1);
});

afterAll(async () => {
  await client?.connection.close();
  await Promise.all(started.map((w) => w.kill9()));
  await stack?.stop();
}, 60_000);

describe(`the ${OVERLAY} overlay's workers under SIGTERM`, () => {
  it('the pretraining worker checkpoints mid-segment, exits within its grace period, and a new pod resumes from the checkpoint', async () => {
    const p1 = await launch('offshoot-pretrain');
    expect(p1.spec.grace).toBeGreaterThan(0);
    const r = run('pretrain');
    const handle = await client.workflow.start(pretrain, {
      workflowId: wid('pretrain'),
      taskQueue: 'orchestrate',
      args: [
        pretrainInput(r, teacher, 'student', {
          hyper: { ...pretrainInput(r, teacher, 'student').hyper, steps: 240 },
          segmentSteps: 240,
          checkpointEvery: 100,
          evalEvery: 240,
        }),
      ],
    });
    const lossFile = path.join(r.dir, 'student', 'losses.jsonl');
    // Between the checkpoints at 100 and 200.
    await waitUntil('step 130', () => readLosses(lossFile).some((l) => l.step >= 130), 120_000, 20);
    const exit = await terminate(p1);
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.seconds).toBeLessThan(p1.spec.grace);
    expect(p1.output()).toMatch(/SIGTERM: draining/);

    // The replacement pod.
    const p2 = await launch('offshoot-pretrain');
    const result = await handle.result();
    expect(result.steps).toBe(240);
    const [a, b] = result.segments;
    expect(a).toMatchObject({ stopped: 'worker-shutdown', worker: p1.identity });
    // Checkpointed where SIGTERM found it, not at the last interval: nothing is redone.
    expect(a.toStep).toBeGreaterThanOrEqual(130);
    expect(a.toStep % 100).not.toBe(0);
    expect(b).toMatchObject({ fromStep: a.toStep, worker: p2.identity });
    expect(readLosses(lossFile).map((l) => l.step)).toEqual(Array.from({ length: 240 }, (_, i) => i + 1));
  }, 300_000);

  it('an evaluator finishes its running evaluation, exits within its grace period, and the search goes on elsewhere', async () => {
    const e1 = await launch('offshoot-evaluator');
    const input = evolutionInput(run('evaluate'), teacher, {
      search: { budget: 4, population: 4, seed: 11 },
      fitness: {
        budget: { kind: 'brief', steps: 60, batchSize: 8, seqLen: 32, evalTokens: 2048 },
        order: 'first-k',
        layers: 'first',
      },
      parallelism: 2,
    });
    const handle = await client.workflow.start(evolution, {
      workflowId: wid('evaluate'),
      taskQueue: 'orchestrate',
      args: [input],
    });
    // (A workflow that fails instead says why at once.)
    const m = await Promise.race([
      waitUntil(
        'an evaluation on the first evaluator',
        () => /evaluate: candidate (\d+) \(\w+\) attempt 1/.exec(e1.output()),
        120_000,
        10,
      ),
      handle.result().then((r) => Promise.reject(new Error(`the search ended first: ${JSON.stringify(r.status)}`))),
    ]);
    const running = Number(m[1]);
    const [exit, e2] = await Promise.all([terminate(e1), launch('offshoot-evaluator')]);
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.seconds).toBeLessThan(e1.spec.grace);

    // SIGTERM came while it ran: the drain began before the evaluation finished.
    const log = e1.output();
    const drained = log.indexOf('SIGTERM: draining');
    expect(drained).toBeGreaterThan(log.indexOf(m[0]));
    expect(log.indexOf(`evaluate: candidate ${running} val loss`)).toBeGreaterThan(drained);

    const result = await handle.result();
    expect(result.history.map((h) => h.id)).toEqual([0, 1, 2, 3]);
    expect(result.history.every((h) => h.status === 'ok')).toBe(true);
    // The evaluation SIGTERM interrupted was finished by the draining evaluator, once.
    expect(result.history.find((h) => h.id === running)?.metrics).toMatchObject({ worker: e1.identity, attempt: 1 });
    // The rest ran on the new one.
    expect(result.history.filter((h) => h.metrics?.worker === e2.identity).length).toBeGreaterThan(0);
    const events = (await handle.fetchHistory()).events ?? [];
    const scheduled = new Map(
      events
        .filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
        .map((e) => [String(e.eventId), e.activityTaskScheduledEventAttributes?.activityType?.name]),
    );
    const completed = events.filter(
      (e) =>
        e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED &&
        scheduled.get(String(e.activityTaskCompletedEventAttributes?.scheduledEventId)) === 'evaluateCandidate',
    );
    expect(completed).toHaveLength(4);
  }, 300_000);
});
