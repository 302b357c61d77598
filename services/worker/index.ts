/**
 * services/worker: an offshoot worker process — Temporal workers for the queues it was started for:
 *
 *   orchestrate  workflow tasks (pipeline, evolution, pretrain) and small bookkeeping activities
 *   evaluate     fitness evaluations (stateless; `slots` at once, one per device)
 *   pretrain     teacher preparation, student extraction, training segments, final evaluation
 *
 * SIGTERM (or SIGINT) drains: the workers stop polling, a running training segment checkpoints at its
 * next step boundary and returns, evaluations finish; the process exits once they are done or the
 * grace period is over. The workflow code is bundled once per source version and cached.
 *
 * Several GPUs of a host: gpus.ts lists them, per-gpu.ts runs one evaluator process per GPU, and the
 * pretrain queue's segments run data-parallel (services/pretrain/data-parallel.ts); docs/multi-gpu.md.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { DefaultLogger, NativeConnection, Runtime, Worker, bundleWorkflowCode } from '@temporalio/worker';

import { writeFileAtomicSync } from '../../core/model/index.js';
import { temporalTls } from '../credentials/index.js';
import { createEvaluateActivities } from '../evaluator/index.js';
import { createExperimentActivities } from '../experiment/index.js';
import {
  type WorkerEnv,
  closeTeacherClients,
  defaultIdentity,
  emit,
  getBlob,
  putBlob,
  writeReportFiles,
} from '../orchestration/index.js';
import { createPretrainActivities } from '../pretrain/index.js';
import type { DataParallelSettings } from '../pretrain/data-parallel.js';
import { createProgressPublisher, type ProgressEventInput } from '../progress/index.js';
import { FROM_SOURCES, ROOT, offshootCache } from '../stack/index.js';
import { type OrchestrateActivities, QUEUE_NAMES, type QueueName, TASK_QUEUES } from '../../workflows/index.js';

/** The payload converter module (size-checked JSON), for the client, the workers and the bundle. */
export function payloadConverterPath(): string {
  return FROM_SOURCES
    ? path.join(ROOT, 'workflows', 'payload-converter.ts')
    : path.join(ROOT, 'dist', 'workflows', 'payload-converter.js');
}

export function parseQueues(value: string): QueueName[] {
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (names.length === 0) throw new Error(`--queues: expected a comma-separated list of ${QUEUE_NAMES.join(', ')}`);
  for (const n of names)
    if (!(QUEUE_NAMES as string[]).includes(n))
      throw new Error(`--queues: unknown queue ${JSON.stringify(n)}; expected ${QUEUE_NAMES.join(', ')}`);
  return [...new Set(names)] as QueueName[];
}

function filesUnder(dir: string, exts: string[]): string[] {
  if (!fs.existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(full, exts));
    else if (exts.some((x) => e.name.endsWith(x)) && !e.name.endsWith('.d.ts')) out.push(full);
  }
  return out.sort();
}

/**
 * The workflow bundle: built by Temporal's bundler (webpack) from the TypeScript sources when running
 * under tsx, from dist/ when compiled; cached under <cache>/workflow-bundles by a hash of every source
 * the workflows may import and of the installed packages.
 */
export async function workflowBundle(log: (line: string) => void = () => undefined): Promise<{ code: string }> {
  const base = FROM_SOURCES ? ROOT : path.join(ROOT, 'dist');
  const ext = FROM_SOURCES ? ['.ts'] : ['.js'];
  const entry = path.join(base, 'workflows', FROM_SOURCES ? 'index.ts' : 'index.js');
  const h = createHash('sha256').update(`offshoot-workflow-bundle-1|${FROM_SOURCES}\n`);
  for (const f of [...filesUnder(path.join(base, 'workflows'), ext), ...filesUnder(path.join(base, 'core'), ext)]) {
    h.update(`${path.relative(base, f)}\n`).update(fs.readFileSync(f));
  }
  const lock = path.join(ROOT, 'package-lock.json');
  if (fs.existsSync(lock)) h.update(fs.readFileSync(lock));
  const file = offshootCache('workflow-bundles', `${h.digest('hex').slice(0, 32)}.js`);
  if (fs.existsSync(file)) return { code: fs.readFileSync(file, 'utf8') };
  const started = Date.now();
  log(`worker: bundling the workflows (${path.relative(ROOT, entry)})`);
  const { code } = await bundleWorkflowCode({
    workflowsPath: entry,
    payloadConverterPath: payloadConverterPath(),
    logger: new DefaultLogger('WARN'),
  });
  writeFileAtomicSync(file, code);
  log(
    `worker: workflow bundle ready in ${((Date.now() - started) / 1000).toFixed(1)} s (${(code.length / 1e6).toFixed(1)} MB, cached)`,
  );
  return { code };
}

export function createOrchestrateActivities(env: WorkerEnv): OrchestrateActivities {
  return {
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
      emit(env, event as ProgressEventInput);
    },
  };
}

export interface RunWorkerOptions {
  queues: QueueName[];
  /** Temporal frontend host:port. */
  address: string;
  namespace?: string;
  /** Evaluations at once (evaluate queue). Default 1: one per device. */
  slots?: number;
  /** A name for this worker, part of its identity. */
  name?: string;
  /** NATS for progress events; default env OFFSHOOT_NATS_URL, else none. */
  natsUrl?: string;
  /** Teacher-service replicas overriding what workflows name. */
  teacherTargets?: string[];
  /** SIGTERM: seconds to finish or checkpoint running activities. Default 30. */
  gracePeriodSeconds?: number;
  /** How long to retry reaching Temporal at start before giving up. Default 120. */
  connectTimeoutSeconds?: number;
  /** Training segments run data-parallel on rank processes of this host (pretrain queue). */
  dataParallel?: DataParallelSettings;
  log?: (line: string) => void;
  /** Called once every queue's worker polls. */
  onReady?: (info: { identity: string; queues: QueueName[] }) => void;
}

let runtimeInstalled = false;

/**
 * Connects to Temporal, retrying with backoff while it is unreachable for up to `timeoutSeconds` (a
 * worker restarted while the server restarts too must wait for it, not fail at once).
 */
async function connectTemporal(
  address: string,
  timeoutSeconds: number,
  log: (line: string) => void,
): Promise<NativeConnection> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      // TLS from OFFSHOOT_TEMPORAL_TLS_* (services/credentials; deploy/k8s mounts the Secret).
      return await NativeConnection.connect({ address, tls: temporalTls() });
    } catch (err) {
      if (Date.now() + delay > deadline)
        throw new Error(
          `worker: Temporal at ${address} unreachable for ${timeoutSeconds} s: ${(err as Error).message}`,
        );
      if (delay === 250)
        log(
          `worker: Temporal at ${address} unreachable (${(err as Error).message.split('\n')[0]}); retrying for up to ${timeoutSeconds} s`,
        );
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** Runs the workers until SIGTERM / SIGINT (or `stop()`), then drains and resolves. */
export async function runWorker(options: RunWorkerOptions): Promise<void> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const grace = options.gracePeriodSeconds ?? 30;
  if (!runtimeInstalled) {
    // Signals are ours: drain first (checkpoint), then shut the workers down.
    const quiet = new DefaultLogger('WARN', (entry) => {
      // Activity-only workers poll no workflow tasks by design.
      if (entry.message.startsWith('No workflows registered')) return;
      log(
        `temporal: [${entry.level}] ${entry.message}${entry.meta && Object.keys(entry.meta).length ? ` ${JSON.stringify(entry.meta)}` : ''}`,
      );
    });
    Runtime.install({ shutdownSignals: [], logger: quiet });
    runtimeInstalled = true;
  }
  const identity = defaultIdentity(options.name ?? options.queues.join('+'));
  const draining = new AbortController();
  const progress = createProgressPublisher({ url: options.natsUrl, worker: identity, log });
  const env: WorkerEnv = {
    identity,
    draining: draining.signal,
    progress,
    teacherTargets: options.teacherTargets,
    dataParallel: options.dataParallel,
    log,
  };
  const connection = await connectTemporal(options.address, options.connectTimeoutSeconds ?? 120, log);
  const namespace = options.namespace ?? 'default';
  const dataConverter = { payloadConverterPath: payloadConverterPath() };
  const common = {
    connection,
    namespace,
    identity,
    dataConverter,
    shutdownGraceTime: `${grace}s`,
    // Heartbeats carry checkpoint references: send them promptly.
    maxHeartbeatThrottleInterval: '2s',
    defaultHeartbeatThrottleInterval: '2s',
  } as const;
  const workers: Worker[] = [];
  for (const queue of options.queues) {
    if (queue === 'orchestrate') {
      workers.push(
        await Worker.create({
          ...common,
          taskQueue: TASK_QUEUES.orchestrate,
          workflowBundle: await workflowBundle(log),
          activities: { ...createOrchestrateActivities(env), ...createExperimentActivities(env) },
          maxConcurrentActivityTaskExecutions: 4,
        }),
      );
    } else if (queue === 'evaluate') {
      workers.push(
        await Worker.create({
          ...common,
          taskQueue: TASK_QUEUES.evaluate,
          activities: createEvaluateActivities(env),
          maxConcurrentActivityTaskExecutions: options.slots ?? 1,
        }),
      );
    } else {
      workers.push(
        await Worker.create({
          ...common,
          taskQueue: TASK_QUEUES.pretrain,
          activities: createPretrainActivities(env),
          maxConcurrentActivityTaskExecutions: 1,
        }),
      );
    }
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      log(`worker: ${signal} again; exiting now`);
      process.exit(1);
    }
    stopping = true;
    log(`worker: ${signal}: draining (up to ${grace} s): running segments checkpoint, evaluations finish`);
    draining.abort();
    for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
    // Whatever still runs after the grace period is cut off.
    setTimeout(
      () => {
        log('worker: grace period over; exiting');
        process.exit(1);
      },
      (grace + 5) * 1000,
    ).unref();
  };
  const onTerm = () => stop('SIGTERM');
  const onInt = () => stop('SIGINT');
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onInt);
  try {
    const running = workers.map((w) => w.run());
    options.onReady?.({ identity, queues: options.queues });
    await Promise.all(running);
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onInt);
    await progress.close(5000).catch(() => undefined);
    closeTeacherClients();
    await connection.close();
    log(`worker: ${identity} stopped`);
  }
}
export { connectClient } from './client.js';
