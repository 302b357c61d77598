/**
 * Publishing progress events (docs/progress.md). Activities and workers publish; workflow code never does.
 *
 * NatsProgressPublisher keeps a FIFO of events and sends one at a time: publish to JetStream with the
 * event id as Nats-Msg-Id, wait for the acknowledgement, then fold the event into the run's KV status
 * (compare-and-set), then the next event. Any failure (server down or restarting, a timeout) is retried
 * with backoff and the same message id, so nothing is lost and nothing is stored twice, and events from
 * one publisher are stored in the order they were published. Publishing never blocks or fails the
 * caller's work: publish() returns at once with a promise of the event being stored.
 */
import * as os from 'node:os';

import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';

import { type ProgressEvent, type ProgressEventInput, eventSubject, makeEvent } from './events.js';
import { progressMetrics } from './metrics.js';
import { type ProgressStreamOptions, connectNats, ensureProgressStream, openStatusBucket } from './nats.js';
import { type RunStatus, applyStatus } from './state.js';

/** What activities and workers call. */
export interface ProgressPublisher {
  /**
   * Validates the event (throws ProgressEventError at once when it does not match the schema), fills in
   * v, id, time and source, and queues it. The promise resolves with the stored event once JetStream
   * has it; it rejects only when the publisher is closed before that. Callers need not await it.
   */
  publish(event: ProgressEventInput): Promise<ProgressEvent>;
  /** Resolves when every event published so far is stored (or the timeout passes: false). */
  flush(timeoutMs?: number): Promise<boolean>;
  /** Flushes (up to the timeout), then disconnects. Events still queued after that are dropped (and counted). */
  close(timeoutMs?: number): Promise<void>;
}

export interface PublisherOptions extends ProgressStreamOptions {
  /** NATS server(s); default env OFFSHOOT_NATS_URL, else nats://127.0.0.1:4222. */
  url?: string;
  /** Default source.worker of events (default hostname:pid). */
  worker?: string;
  /** Most events held while NATS is away; beyond it publish() rejects (default 100 000). */
  maxQueue?: number;
  /** Wait for one acknowledgement, ms (default 3000). */
  ackTimeoutMs?: number;
  /** Keep the KV status of each run (default true). */
  updateStatus?: boolean;
  /** Where to report trouble (reconnects, retries); default: nowhere. */
  log?: (line: string) => void;
}

interface Pending {
  event: ProgressEvent;
  resolve: (e: ProgressEvent) => void;
  reject: (err: Error) => void;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function defaultWorkerName(): string {
  return process.env.OFFSHOOT_WORKER_NAME || `${os.hostname()}:${process.pid}`;
}

function withSource(input: ProgressEventInput, worker: string): ProgressEventInput {
  return { ...input, source: { worker, ...input.source } } as ProgressEventInput;
}

export class NatsProgressPublisher implements ProgressPublisher {
  private readonly queue: Pending[] = [];
  private readonly worker: string;
  private readonly maxQueue: number;
  private readonly ackTimeoutMs: number;
  private readonly updateStatus: boolean;
  private readonly log: (line: string) => void;
  private nc: NatsConnection | undefined;
  private js: JetStreamClient | undefined;
  private jsm: JetStreamManager | undefined;
  private kv: KV | undefined;
  private ready = false;
  private closing = false;
  private closed = false;
  private wake: (() => void) | undefined;
  private readonly idleWaiters: (() => void)[] = [];
  private readonly loop: Promise<void>;
  private readonly stored = new WeakSet<ProgressEvent>();
  /** Stored events, and publishes that had to be repeated. */
  readonly stats = { stored: 0, duplicates: 0, retries: 0, dropped: 0 };

  constructor(private readonly options: PublisherOptions = {}) {
    this.worker = options.worker ?? defaultWorkerName();
    this.maxQueue = options.maxQueue ?? 100_000;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 3000;
    this.updateStatus = options.updateStatus ?? true;
    this.log = options.log ?? (() => undefined);
    this.loop = this.run();
  }

  publish(input: ProgressEventInput): Promise<ProgressEvent> {
    const event = makeEvent(withSource(input, this.worker));
    if (this.closing) return Promise.reject(new Error('progress publisher is closed'));
    if (this.queue.length >= this.maxQueue) {
      this.stats.dropped += 1;
      progressMetrics.dropped.inc();
      const p = Promise.reject(
        new Error(
          `progress publisher: ${this.queue.length} events waiting for NATS; dropped ${event.kind} ${event.id}`,
        ),
      );
      p.catch(() => undefined);
      return p;
    }
    const p = new Promise<ProgressEvent>((resolve, reject) => this.queue.push({ event, resolve, reject }));
    // Callers may ignore the promise; a rejection at close must not become an unhandled one.
    p.catch(() => undefined);
    progressMetrics.backlog.set(this.queue.length);
    this.wake?.();
    return p;
  }

  async flush(timeoutMs = 30_000): Promise<boolean> {
    if (this.queue.length === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<boolean>((resolve) => this.idleWaiters.push(() => resolve(true)));
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    const ok = await Promise.race([idle, timeout]);
    clearTimeout(timer);
    return ok;
  }

  async close(timeoutMs = 10_000): Promise<void> {
    if (this.closed) return;
    await this.flush(timeoutMs);
    this.closing = true;
    this.closed = true;
    this.wake?.();
    for (const p of this.queue.splice(0)) {
      this.stats.dropped += 1;
      progressMetrics.dropped.inc();
      p.reject(new Error(`progress publisher closed before ${p.event.kind} ${p.event.id} was stored`));
    }
    if (this.stats.dropped) this.log(`progress: closed with ${this.stats.dropped} events not stored`);
    // The loop ends at its next check (after a publish timeout or a connection attempt at most).
    await this.loop.catch(() => undefined);
    await this.nc?.close().catch(() => undefined);
  }

  /** One connection attempt (the run loop retries with backoff, and stops at close(): no attempt outlives the publisher). */
  private async connect(): Promise<void> {
    if (!this.nc) {
      const nc = await connectNats(this.options.url, {
        name: `offshoot progress ${this.worker}`,
        waitForServer: false,
        timeoutMs: 3000,
      });
      try {
        this.jsm = await jetstreamManager(nc, { timeout: this.ackTimeoutMs });
      } catch (err) {
        await nc.close().catch(() => undefined);
        throw err;
      }
      if (this.closed) {
        await nc.close().catch(() => undefined);
        return;
      }
      this.nc = nc;
      this.js = jetstream(nc, { timeout: this.ackTimeoutMs });
      void (async () => {
        for await (const st of nc.status()) {
          if (st.type === 'disconnect' || st.type === 'reconnect')
            this.log(`progress: NATS ${st.type} (${'server' in st ? st.server : ''})`);
        }
      })().catch(() => undefined);
    }
    await ensureProgressStream(this.jsm!, this.options);
    if (this.updateStatus) this.kv = await openStatusBucket(this.nc, { timeoutMs: this.ackTimeoutMs });
    this.ready = true;
  }

  private async run(): Promise<void> {
    let backoff = 50;
    while (!this.closed) {
      const head = this.queue[0];
      if (!head) {
        for (const w of this.idleWaiters.splice(0)) w();
        await new Promise<void>((r) => (this.wake = r));
        this.wake = undefined;
        continue;
      }
      try {
        if (!this.ready) await this.connect();
        if (this.closed) break;
        await this.send(head.event);
        this.queue.shift();
        progressMetrics.backlog.set(this.queue.length);
        head.resolve(head.event);
        backoff = 50;
      } catch (err) {
        if (this.closed) break;
        this.stats.retries += 1;
        progressMetrics.retries.inc();
        if (this.stats.retries <= 3 || this.stats.retries % 50 === 0)
          this.log(`progress: retrying ${head.event.kind} ${head.event.id}: ${(err as Error).message}`);
        // The stream may have been lost with the server's store: make sure it exists before the next try.
        if (/no responders|not found|503/i.test((err as Error).message)) this.ready = false;
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 2000);
      }
    }
    for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Stores one event (idempotent under retries), then folds it into the run's KV status. */
  private async send(event: ProgressEvent): Promise<void> {
    if (!this.stored.has(event)) {
      const ack = await this.js!.publish(eventSubject(event.run, event.kind), JSON.stringify(event), {
        msgID: event.id,
        timeout: this.ackTimeoutMs,
      });
      if (ack.duplicate) this.stats.duplicates += 1;
      else this.stats.stored += 1;
      progressMetrics.published.inc({ kind: event.kind, result: ack.duplicate ? 'duplicate' : 'stored' });
      // A retry after this point (the KV update failed) need not publish again.
      this.stored.add(event);
    }
    if (this.kv) await updateRunStatus(this.kv, event);
  }
}

/** Folds an event into the run's KV status with compare-and-set (concurrent publishers retry). */
export async function updateRunStatus(kv: KV, event: ProgressEvent): Promise<RunStatus> {
  for (;;) {
    const entry = await kv.get(event.run);
    const prev =
      entry && entry.operation === 'PUT' && entry.length > 0 ? (JSON.parse(entry.string()) as RunStatus) : undefined;
    const next = applyStatus(prev, event);
    if (next === prev) return next;
    try {
      if (entry) await kv.update(event.run, JSON.stringify(next), entry.revision);
      else await kv.create(event.run, JSON.stringify(next));
      return next;
    } catch (err) {
      // Someone else updated it first: read again and re-apply.
      if (/wrong last sequence|key exists/i.test((err as Error).message)) continue;
      throw err;
    }
  }
}

/** Publishes nothing (no NATS configured). */
export class NoopProgressPublisher implements ProgressPublisher {
  publish(input: ProgressEventInput): Promise<ProgressEvent> {
    return Promise.resolve(makeEvent(input));
  }

  async flush(): Promise<boolean> {
    return true;
  }

  async close(): Promise<void> {}
}

/** Keeps events in memory: for tests of code that publishes. */
export class MemoryProgressPublisher implements ProgressPublisher {
  readonly events: ProgressEvent[] = [];

  constructor(private readonly worker = 'memory') {}

  publish(input: ProgressEventInput): Promise<ProgressEvent> {
    const e = makeEvent(withSource(input, this.worker));
    this.events.push(e);
    return Promise.resolve(e);
  }

  async flush(): Promise<boolean> {
    return true;
  }

  async close(): Promise<void> {}
}

/**
 * The publisher a worker should use: NATS when `url` or env OFFSHOOT_NATS_URL names a server, else
 * one that publishes nothing (progress is optional; the work goes on without it).
 */
export function createProgressPublisher(options: PublisherOptions = {}): ProgressPublisher {
  if (!options.url && !process.env.OFFSHOOT_NATS_URL) return new NoopProgressPublisher();
  return new NatsProgressPublisher(options);
}
