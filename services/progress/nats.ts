/**
 * The NATS side of progress: connecting, the JetStream stream that keeps every event, the KV bucket of
 * run statuses, and reading a run's events (history first, then live) with an ordered consumer.
 */
import * as os from 'node:os';

import {
  type Consumer,
  DeliverPolicy,
  type JetStreamManager,
  type StreamConfig,
  StorageType,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import { type NatsConnection, connect, credsAuthenticator } from '@nats-io/transport-node';

import { natsAuth } from '../credentials/index.js';

import { type ProgressEvent, SUBJECT_PREFIX, checkRunId, parseEvent, runSubjects } from './events.js';
import type { RunStatus } from './state.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';
export const STREAM_NAME = 'OFFSHOOT_PROGRESS';
export const STATUS_BUCKET = 'offshoot_runs';

/** The NATS server(s): the given value, else env OFFSHOOT_NATS_URL, else nats://127.0.0.1:4222. Comma-separated for several. */
export function natsServers(url?: string): string[] {
  const value = url || process.env.OFFSHOOT_NATS_URL || DEFAULT_NATS_URL;
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

export interface ProgressStreamOptions {
  /** How long the stream keeps events, in seconds (default 30 days; 0: forever). */
  maxAgeSeconds?: number;
  /** Size cap of the stream in bytes; the oldest events go first (default 1 GiB; -1: none). */
  maxBytes?: number;
  /** Window in which a repeated message id is stored once, in seconds (default 1 hour). */
  duplicateWindowSeconds?: number;
}

export const STREAM_DEFAULTS: Required<ProgressStreamOptions> = {
  maxAgeSeconds: 30 * 24 * 3600,
  maxBytes: 1024 ** 3,
  duplicateWindowSeconds: 3600,
};

const NS = 1e9;

export interface ConnectOptions {
  /** Connection name the server shows (monitoring). */
  name?: string;
  /**
   * Keep trying to connect when the server is not up yet (publishers: yes, so a worker starts before
   * NATS does; readers: no, so a wrong address fails fast). Reconnects after a loss are always unbounded.
   */
  waitForServer?: boolean;
  /** Per-attempt connect timeout, ms. */
  timeoutMs?: number;
}

export async function connectNats(url?: string, options: ConnectOptions = {}): Promise<NatsConnection> {
  const servers = natsServers(url);
  try {
    return await connect({
      servers,
      // Credentials and TLS from OFFSHOOT_NATS_* (services/credentials; deploy/k8s mounts the Secret).
      ...(natsAuth(credsAuthenticator) as object),
      name: options.name ?? `offshoot ${os.hostname()}:${process.pid}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 100,
      waitOnFirstConnect: options.waitForServer ?? false,
      timeout: options.timeoutMs ?? 5000,
      pingInterval: 10_000,
    });
  } catch (err) {
    throw new Error(`cannot connect to NATS at ${servers.join(',')}: ${(err as Error).message}`);
  }
}

function streamConfig(options: ProgressStreamOptions): Partial<StreamConfig> & { name: string } {
  const o = { ...STREAM_DEFAULTS, ...options };
  return {
    name: STREAM_NAME,
    subjects: [`${SUBJECT_PREFIX}.>`],
    storage: StorageType.File,
    max_age: o.maxAgeSeconds * NS,
    max_bytes: o.maxBytes,
    duplicate_window: o.duplicateWindowSeconds * NS,
    // Each event is small; refuse anything suspiciously large instead of storing it.
    max_msg_size: 1024 * 1024,
  };
}

/** Creates the progress stream when it does not exist (idempotent; an existing one is left as it is). */
export async function ensureProgressStream(jsm: JetStreamManager, options: ProgressStreamOptions = {}): Promise<void> {
  try {
    await jsm.streams.info(STREAM_NAME);
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  try {
    await jsm.streams.add(streamConfig(options));
  } catch (err) {
    // Another process created it in between.
    if (!/already in use/i.test((err as Error).message)) throw err;
  }
}

export function isNotFound(err: unknown): boolean {
  const e = err as { message?: string; code?: unknown; api_error?: { err_code?: number } };
  return /not found/i.test(e?.message ?? '') || e?.api_error?.err_code === 10059;
}

/** The status bucket (created when missing). */
export async function openStatusBucket(nc: NatsConnection, options: { timeoutMs?: number } = {}): Promise<KV> {
  const kvm = new Kvm(nc);
  return kvm.create(STATUS_BUCKET, {
    history: 1,
    storage: StorageType.File,
    timeout: options.timeoutMs ?? 5000,
  } as never);
}

/** Every run's status from the KV bucket, most recently updated first. */
export async function listRuns(nc: NatsConnection): Promise<RunStatus[]> {
  const kv = await openStatusBucket(nc);
  const out: RunStatus[] = [];
  const keys = await kv.keys();
  const names: string[] = [];
  for await (const k of keys) names.push(k);
  for (const k of names) {
    const e = await kv.get(k);
    if (e && e.operation === 'PUT' && e.length > 0) {
      try {
        out.push(JSON.parse(e.string()) as RunStatus);
      } catch {
        // a foreign value: skip it
      }
    }
  }
  return out.sort((a, b) => (a.updatedAt < b.updatedAt ? 1 : a.updatedAt > b.updatedAt ? -1 : 0));
}

export async function getRunStatus(nc: NatsConnection, run: string): Promise<RunStatus | undefined> {
  const kv = await openStatusBucket(nc);
  const e = await kv.get(checkRunId(run));
  if (e?.operation !== 'PUT' || e.length === 0) return undefined;
  return JSON.parse(e.string()) as RunStatus;
}

export interface StoredEvent {
  /** Stream sequence (global, increasing). */
  seq: number;
  /** Events of this run after this one that the server had when it was delivered (0: caught up). */
  pending: number;
  event?: ProgressEvent;
  /** Why the message is not a v1 event (a foreign or newer one). */
  error?: string;
  subject: string;
}

export interface ReadOptions {
  /** Start after this stream sequence (a reconnecting reader); default: from the first event. */
  afterSeq?: number;
}

export interface RunEventReader {
  /** Events of the run the stream held (after afterSeq) when the reader opened: 0 means caught up already. */
  initialPending: number;
  /**
   * The events in stream order: the history first, then live ones as they are stored, until stop().
   * Survives server restarts (the ordered consumer is recreated from the last sequence it delivered, so
   * nothing is skipped or repeated).
   */
  events: AsyncIterable<StoredEvent>;
  stop(): void;
}

/** Opens a run's events with an ordered (ephemeral, flow-controlled) consumer. */
export async function openRunEvents(
  nc: NatsConnection,
  run: string,
  options: ReadOptions = {},
): Promise<RunEventReader> {
  checkRunId(run);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  await ensureProgressStream(jsm);
  const start =
    options.afterSeq && options.afterSeq > 0
      ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: options.afterSeq + 1 }
      : { deliver_policy: DeliverPolicy.All };
  const consumer: Consumer = await js.consumers.get(STREAM_NAME, { filter_subjects: runSubjects(run), ...start });
  const info = await consumer.info(true);
  // Short pull expiry: after a server restart the consumer is noticed gone (missed heartbeats) and
  // recreated within seconds rather than the default 30.
  const messages = await consumer.consume({ max_messages: 256, expires: 5000 });
  async function* events(): AsyncGenerator<StoredEvent> {
    try {
      for await (const m of messages) {
        const parsed = parseEvent(m.data);
        yield {
          seq: m.seq,
          pending: m.info.pending,
          subject: m.subject,
          ...(parsed.ok ? { event: parsed.event } : { error: parsed.error }),
        };
      }
    } finally {
      messages.stop();
    }
  }
  return {
    initialPending: info.num_pending,
    events: events(),
    stop: () => messages.stop(),
  };
}
