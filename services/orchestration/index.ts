/**
 * services/orchestration: what offshoot's activities share at run time — the worker environment they
 * run in (identity, the drain signal of a SIGTERM'd worker, the progress publisher), progress events
 * that never fail the work, the teacher-service clients and the teacher models a worker caches, and
 * helpers for the shared storage folder.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Context } from '@temporalio/activity';

import { TOKENIZER_FILE } from '../../core/data/index.js';
import { GPTNeoX, loadCheckpoint, writeFileAtomicSync } from '../../core/model/index.js';
import {
  NoopProgressPublisher,
  type ProgressEventInput,
  type ProgressPublisher,
  timeActivity,
} from '../progress/index.js';
import { teacherTls } from '../credentials/index.js';
import { TeacherClient } from '../teacher/index.js';
import type { BlobRef, TeacherServiceRef } from '../../workflows/index.js';
import type { DataParallelSettings } from '../pretrain/data-parallel.js';

export interface WorkerEnv {
  /** Who runs the activities (hostname:pid plus the worker's name); reported in results and events. */
  identity: string;
  /** Aborted when the worker is asked to stop (SIGTERM): long activities checkpoint and return early. */
  draining: AbortSignal;
  /** Progress events (NATS when configured; services/progress); a no-op by default. */
  progress: ProgressPublisher;
  /** Teacher-service replicas that override what workflows ask for (a worker's own nearby replica). */
  teacherTargets?: string[];
  /** Training segments run on several rank processes of this host (`offshoot worker --gpus/--ranks`). */
  dataParallel?: DataParallelSettings;
  log: (line: string) => void;
}

export function defaultIdentity(name?: string): string {
  return `${os.hostname()}:${process.pid}${name ? `:${name}` : ''}`;
}

/** A worker environment for tests and single-process use: never draining, publishing nothing. */
export function localEnv(overrides: Partial<WorkerEnv> = {}): WorkerEnv {
  return {
    identity: defaultIdentity('local'),
    draining: new AbortController().signal,
    progress: new NoopProgressPublisher(),
    log: (line) => process.stderr.write(`${line}\n`),
    ...overrides,
  };
}

/** Publishes a progress event; a bad event or an unreachable NATS never fails the activity. */
export function emit(env: WorkerEnv, event: ProgressEventInput): void {
  try {
    env.progress.publish(event).catch(() => undefined);
  } catch (err) {
    env.log(`progress: event not published: ${(err as Error).message}`);
  }
}

/** The activity's identity fields for events (Temporal's activity type, id and attempt). */
export function activitySource(): { activity: string; activityId: string; attempt: number; taskQueue: string } {
  const info = Context.current().info;
  return { activity: info.activityType, activityId: info.activityId, attempt: info.attempt, taskQueue: info.taskQueue };
}

/** Publishes activity.started / .retried / .completed / .failed around an activity, and times it for Prometheus. */
export function withActivityEvents<A extends unknown[], R>(
  env: WorkerEnv,
  runOf: (...args: A) => string,
  detail: (...args: A) => string,
  fn: (...args: A) => Promise<R>,
): (...args: A) => Promise<R> {
  return async (...args: A) => {
    const src = activitySource();
    const run = runOf(...args);
    const started = Date.now();
    const common = {
      run,
      activity: src.activity,
      activityId: src.activityId,
      attempt: src.attempt,
      taskQueue: src.taskQueue,
      detail: detail(...args).slice(0, 500),
    };
    emit(env, { kind: src.attempt > 1 ? 'activity.retried' : 'activity.started', ...common });
    try {
      // timeActivity: the Prometheus duration histogram and in-flight gauge (services/progress/metrics.ts).
      const result = await timeActivity(src.activity, () => fn(...args));
      emit(env, { kind: 'activity.completed', ...common, durationMs: Date.now() - started });
      return result;
    } catch (err) {
      emit(env, {
        kind: 'activity.failed',
        ...common,
        error: String((err as Error).message ?? err).slice(0, 2000),
        durationMs: Date.now() - started,
      });
      throw err;
    }
  };
}

// ---- teachers ----------------------------------------------------------------------------------------

const clients = new Map<string, TeacherClient>();

/**
 * How long an activity's requests wait for an unreachable teacher service before they fail. Short, so
 * the activity fails and Temporal retries it (with backoff, on any worker) instead of a long blind wait;
 * long enough for a supervised service to be restarted in between.
 */
export const TEACHER_UNREACHABLE_MS = 30_000;

/** One client per (replicas, weights) in this worker, shared by its activities. */
export function teacherClient(env: WorkerEnv, service: TeacherServiceRef, expectedHash: string): TeacherClient {
  const targets = env.teacherTargets?.length ? env.teacherTargets : service.targets;
  const key = `${targets.join(',')}|${expectedHash}`;
  let client = clients.get(key);
  if (!client) {
    // TLS from OFFSHOOT_TEACHER_TLS_* (services/credentials; deploy/k8s mounts the Secret).
    client = new TeacherClient({
      targets,
      expectedHash,
      log: env.log,
      tls: teacherTls(),
      unavailableTimeoutMs: TEACHER_UNREACHABLE_MS,
    });
    clients.set(key, client);
  }
  return client;
}

export function closeTeacherClients(): void {
  for (const c of clients.values()) c.close();
  clients.clear();
}

const teacherModels = new Map<string, GPTNeoX>();

/** The teacher as a model in this process (distillation without the service), one per weights. */
export function teacherModel(dir: string, hash: string): GPTNeoX {
  const key = `${path.resolve(dir)}|${hash}`;
  let model = teacherModels.get(key);
  if (!model) {
    const ckpt = loadCheckpoint(dir);
    if (ckpt.hash !== hash)
      throw new TeacherMismatchError(
        `teacher ${dir} holds weights ${ckpt.hash.slice(0, 12)}…, the run expects ${hash.slice(0, 12)}…`,
      );
    for (const m of teacherModels.values()) m.dispose();
    teacherModels.clear();
    model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, dir);
    teacherModels.set(key, model);
  }
  return model;
}

/**
 * The tokenizer a run tokenises its corpora with: data.tokenizer when set, else the teacher's
 * tokenizer.json. Checked before the search starts, so a teacher without one is one error at once
 * instead of every evaluation failing.
 */
export function requireTeacherTokenizer(teacherDir: string, tokenizer?: string): string {
  if (tokenizer) {
    if (!fs.existsSync(tokenizer))
      throw new TokenizerMissingError(`data.tokenizer ${tokenizer}: no such file or folder`);
    return tokenizer;
  }
  const file = path.join(teacherDir, TOKENIZER_FILE);
  if (!fs.existsSync(file)) {
    throw new TokenizerMissingError(
      `teacher ${teacherDir} has no ${TOKENIZER_FILE} and data.tokenizer is not set: the search and the pretraining tokenise the corpora with the teacher's tokenizer; put one in the teacher's folder or set data.tokenizer`,
    );
  }
  return file;
}

export class TokenizerMissingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenizerMissing';
  }
}

export class TeacherMismatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TeacherMismatch';
  }
}

// ---- storage -----------------------------------------------------------------------------------------

/** Stores a JSON value under <runDir>/blobs/<sha256>.json (idempotent). */
export function putBlob(runDir: string, value: unknown): BlobRef {
  const text = JSON.stringify(value);
  const sha256 = createHash('sha256').update(text).digest('hex');
  const file = path.join(runDir, 'blobs', `${sha256}.json`);
  if (!fs.existsSync(file)) writeFileAtomicSync(file, text);
  return { blob: file, sha256, bytes: Buffer.byteLength(text) };
}

export function getBlob(ref: BlobRef): unknown {
  const text = fs.readFileSync(ref.blob, 'utf8');
  const sha = createHash('sha256').update(text).digest('hex');
  if (sha !== ref.sha256)
    throw new Error(
      `blob ${ref.blob}: content hash ${sha.slice(0, 12)}… differs from the reference's ${ref.sha256.slice(0, 12)}…`,
    );
  return JSON.parse(text);
}

export { resultsTable, reportMarkdown, writeReportFiles } from './report.js';
