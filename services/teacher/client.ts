/**
 * The student's side of the teacher-logit service (docs/teacher-service.md).
 *
 * `TeacherClient` keeps one bidirectional stream per teacher replica and spreads requests over the
 * replicas round-robin. Every request has an id; answers come back in order per stream and are matched
 * to their request, so each request is resolved exactly once. When a stream fails with UNAVAILABLE (the
 * teacher restarted, drained or the connection broke) its unanswered requests go back to the front of
 * the queue and are re-sent — to another replica, or to the same one once it is back (reconnecting
 * with exponential backoff). A bad request fails only its own promise.
 *
 * `StreamingTeacher` plugs the client into the training loop as a `Teacher`, asking for the next
 * batches' logits while the student trains on the current one.
 */
import * as grpc from '@grpc/grpc-js';

import type { Batch, BatchSource, Teacher, TopKTeacher } from '../../core/model/index.js';
import * as tf from '../../core/model/tfjs.js';
import {
  type InfoResponse,
  type Metrics,
  TeacherLogitsClient as GeneratedClient,
  type TopKRequest,
  type TopKResponse,
} from '../../proto/gen/offshoot/teacher/v1/teacher.js';
import { type TopKResult, type ValueEncodingName, decodeTopK, valueEncodingOf } from './codec.js';

export interface ClientTlsOptions {
  /** PEM CA bundle that signed the server's certificate (default: the system's roots). */
  ca?: Buffer;
  /** PEM client certificate and key, for servers that require mutual TLS. */
  cert?: Buffer;
  key?: Buffer;
  /** Name to check the server's certificate against, when it differs from the target's host. */
  serverName?: string;
}

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  multiplier: number;
  /** Random spread, as a fraction of the delay (0.2: ±20%). */
  jitter: number;
}

export interface TeacherClientOptions {
  /** host:port of each teacher replica; requests go to them round-robin. */
  targets: string | string[];
  tls?: ClientTlsOptions;
  /** Interval of HTTP/2 keepalive pings, and how long to wait for their answer. */
  keepaliveMs?: number;
  keepaliveTimeoutMs?: number;
  /** Reconnect backoff after a replica fails. */
  backoff?: Partial<BackoffOptions>;
  /** Deadline of the Info call that opens each connection. */
  connectTimeoutMs?: number;
  /** Fail every waiting request when no replica could be reached for this long. */
  unavailableTimeoutMs?: number;
  /** Fail a request that has been sent this many times without an answer. */
  maxAttempts?: number;
  /** Requests in flight on one replica's stream (keep it at or below the server's max_stream_queue). */
  maxInflightPerReplica?: number;
  /**
   * HTTP/2 receive window (per stream and per connection), in bytes. The server's event loop is busy
   * during each forward pass, so with HTTP/2's default 64 KiB an answer larger than that crawls out one
   * window per pass; the window should hold the answers in flight. Default 32 MiB.
   */
  flowControlWindowBytes?: number;
  /** The content hash every replica must serve; default: whatever the first replica reports. */
  expectedHash?: string;
  log?: (line: string) => void;
}

export const CLIENT_DEFAULTS = {
  keepaliveMs: 10_000,
  keepaliveTimeoutMs: 5_000,
  backoff: { initialMs: 100, maxMs: 5_000, multiplier: 2, jitter: 0.2 } satisfies BackoffOptions,
  connectTimeoutMs: 5_000,
  unavailableTimeoutMs: 300_000,
  maxAttempts: 20,
  maxInflightPerReplica: 8,
  flowControlWindowBytes: 32 * 2 ** 20,
};

/** One request: a batch of token ids and how to answer it. */
export interface TopKQuery {
  /** batchSize × seqLen ids, row-major. */
  tokens: ArrayLike<number>;
  batchSize: number;
  seqLen: number;
  /** Default: the server's (64, or the vocabulary when smaller). */
  topK?: number;
  /** Default 1. */
  temperature?: number;
  /** Default f16. */
  encoding?: ValueEncodingName;
}

/** A failure the service reported (or the client's own, with a gRPC status code). */
export class TeacherError extends Error {
  constructor(
    readonly code: grpc.status,
    readonly details: string,
  ) {
    super(`${grpc.status[code] ?? code}: ${details}`);
    this.name = 'TeacherError';
  }
}

/** Status codes that mean "this request is bad", as opposed to "this replica is unreachable now". */
const REQUEST_ERRORS = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.OUT_OF_RANGE,
]);

interface Pending {
  id: number;
  message: TopKRequest;
  resolve: (r: TopKResult) => void;
  reject: (e: Error) => void;
  attempts: number;
  settled: boolean;
}

type ReplicaState = 'idle' | 'connecting' | 'open' | 'backoff' | 'failed';

interface Replica {
  target: string;
  client: GeneratedClient;
  state: ReplicaState;
  call?: grpc.ClientDuplexStream<TopKRequest, TopKResponse>;
  inflight: Pending[];
  blocked: boolean;
  failures: number;
  timer?: NodeJS.Timeout;
  lastError?: string;
  info?: InfoResponse;
  connecting?: Promise<void>;
}

export interface ClientStats {
  /** Requests made. */
  requests: number;
  /** Requests answered (each exactly once). */
  answered: number;
  /** Sends of a request after its first (re-sent after a stream failed). */
  resent: number;
  /** Streams opened after the first per replica. */
  reconnects: number;
  /** Streams that failed. */
  streamFailures: number;
  /** Answers per replica target. */
  perReplica: Record<string, number>;
}

export class TeacherClient {
  private readonly replicas: Replica[];
  private readonly opts: Required<
    Omit<TeacherClientOptions, 'tls' | 'log' | 'expectedHash' | 'backoff' | 'targets'>
  > & {
    backoff: BackoffOptions;
  };
  private readonly log: (line: string) => void;
  private expectedHash: string | undefined;
  private unsent: Pending[] = [];
  private nextId = 1;
  private rr = -1;
  private closed = false;
  /** Since when no replica has been open while requests waited (undefined: fine). */
  private unreachableSince: number | undefined;
  private giveUpTimer: NodeJS.Timeout | undefined;
  private opened = new Set<string>();
  readonly stats: ClientStats = {
    requests: 0,
    answered: 0,
    resent: 0,
    reconnects: 0,
    streamFailures: 0,
    perReplica: {},
  };

  constructor(options: TeacherClientOptions) {
    const targets =
      typeof options.targets === 'string'
        ? options.targets
            .split(',')
            .map((t) => t.trim())
            .filter(Boolean)
        : options.targets;
    if (targets.length === 0) throw new Error('teacher client: no targets');
    this.opts = {
      keepaliveMs: options.keepaliveMs ?? CLIENT_DEFAULTS.keepaliveMs,
      keepaliveTimeoutMs: options.keepaliveTimeoutMs ?? CLIENT_DEFAULTS.keepaliveTimeoutMs,
      backoff: { ...CLIENT_DEFAULTS.backoff, ...options.backoff },
      connectTimeoutMs: options.connectTimeoutMs ?? CLIENT_DEFAULTS.connectTimeoutMs,
      unavailableTimeoutMs: options.unavailableTimeoutMs ?? CLIENT_DEFAULTS.unavailableTimeoutMs,
      maxAttempts: options.maxAttempts ?? CLIENT_DEFAULTS.maxAttempts,
      maxInflightPerReplica: options.maxInflightPerReplica ?? CLIENT_DEFAULTS.maxInflightPerReplica,
      flowControlWindowBytes: options.flowControlWindowBytes ?? CLIENT_DEFAULTS.flowControlWindowBytes,
    };
    this.log = options.log ?? (() => {});
    this.expectedHash = options.expectedHash;
    const credentials = clientCredentials(options.tls);
    const channelOptions: grpc.ChannelOptions = {
      'grpc.keepalive_time_ms': this.opts.keepaliveMs,
      'grpc.keepalive_timeout_ms': this.opts.keepaliveTimeoutMs,
      'grpc.keepalive_permit_without_calls': 1,
      // Reconnect as fast as our own backoff asks, not grpc-js's default (1 s growing to 120 s).
      'grpc.initial_reconnect_backoff_ms': this.opts.backoff.initialMs,
      'grpc.max_reconnect_backoff_ms': this.opts.backoff.maxMs,
      'grpc.max_receive_message_length': -1,
      'grpc-node.flow_control_window': this.opts.flowControlWindowBytes,
      'grpc.enable_retries': 0,
      // One connection per replica client, not shared with other clients in this process.
      'grpc.use_local_subchannel_pool': 1,
    };
    if (options.tls?.serverName) {
      channelOptions['grpc.ssl_target_name_override'] = options.tls.serverName;
      channelOptions['grpc.default_authority'] = options.tls.serverName;
    }
    this.replicas = targets.map((target) => ({
      target,
      client: new GeneratedClient(target, credentials, channelOptions),
      state: 'idle' as ReplicaState,
      inflight: [],
      blocked: false,
      failures: 0,
    }));
  }

  get targets(): string[] {
    return this.replicas.map((r) => r.target);
  }

  /**
   * Connects to every replica now (Info, hash check, stream), instead of at the first request; resolves
   * when each is open or has failed once, and rejects when none could be opened.
   */
  async ready(): Promise<void> {
    await Promise.all(this.replicas.map((r) => this.connect(r)));
    if (!this.replicas.some((r) => r.state === 'open')) {
      throw new TeacherError(grpc.status.UNAVAILABLE, `no teacher replica reachable: ${this.describeReplicas()}`);
    }
  }

  /** Info of one replica (the first by default). */
  info(target = this.replicas[0].target): Promise<InfoResponse> {
    const r = this.replica(target);
    return unary<InfoResponse>((cb) =>
      r.client.info({}, new grpc.Metadata(), { deadline: Date.now() + this.opts.connectTimeoutMs }, cb),
    );
  }

  /** Live metrics of one replica (the first by default). */
  metrics(target = this.replicas[0].target): Promise<Metrics> {
    const r = this.replica(target);
    return unary<Metrics>((cb) =>
      r.client.getMetrics({}, new grpc.Metadata(), { deadline: Date.now() + this.opts.connectTimeoutMs }, cb),
    );
  }

  private replica(target: string): Replica {
    const r = this.replicas.find((x) => x.target === target);
    if (!r) throw new Error(`teacher client: unknown target ${target}`);
    return r;
  }

  /** The teacher's top-k view of one batch. Resolves exactly once, however often it had to be re-sent. */
  topK(query: TopKQuery): Promise<TopKResult> {
    if (this.closed) return Promise.reject(new TeacherError(grpc.status.CANCELLED, 'teacher client is closed'));
    const id = this.nextId++;
    const message: TopKRequest = {
      id,
      batchSize: query.batchSize,
      seqLen: query.seqLen,
      tokens: Array.from(query.tokens),
      topK: query.topK,
      temperature: query.temperature,
      valueEncoding: valueEncodingOf(query.encoding ?? 'f16'),
    };
    this.stats.requests++;
    return new Promise<TopKResult>((resolve, reject) => {
      this.unsent.push({ id, message, resolve, reject, attempts: 0, settled: false });
      this.pump();
    });
  }

  /** Cancels every stream and fails what is still waiting. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.giveUpTimer);
    const error = new TeacherError(grpc.status.CANCELLED, 'teacher client closed');
    for (const r of this.replicas) {
      clearTimeout(r.timer);
      const call = r.call;
      r.call = undefined;
      call?.cancel();
      for (const p of r.inflight.splice(0)) this.settle(p, error);
      r.client.close();
    }
    for (const p of this.unsent.splice(0)) this.settle(p, error);
  }

  // -------------------------------------------------------------------------------------------------

  private settle(p: Pending, result: TopKResult | Error): void {
    if (p.settled) return;
    p.settled = true;
    if (result instanceof Error) p.reject(result);
    else p.resolve(result);
  }

  /** Sends what waits to open replicas, round-robin; connects idle replicas when there is work. */
  private pump(): void {
    if (this.closed) return;
    while (this.unsent.length > 0) {
      const r = this.nextOpenReplica();
      if (!r) break;
      const p = this.unsent.shift()!;
      if (p.settled) continue;
      p.attempts++;
      if (p.attempts > 1) this.stats.resent++;
      r.inflight.push(p);
      if (!r.call!.write(p.message)) {
        r.blocked = true;
        const call = r.call!;
        call.once('drain', () => {
          if (r.call === call) {
            r.blocked = false;
            this.pump();
          }
        });
      }
    }
    if (this.unsent.length > 0) {
      for (const r of this.replicas) if (r.state === 'idle') void this.connect(r);
    }
    this.watchReachability();
  }

  private nextOpenReplica(): Replica | undefined {
    const n = this.replicas.length;
    for (let i = 1; i <= n; i++) {
      const r = this.replicas[(this.rr + i) % n];
      if (r.state === 'open' && r.call && !r.blocked && r.inflight.length < this.opts.maxInflightPerReplica) {
        this.rr = (this.rr + i) % n;
        return r;
      }
    }
    return undefined;
  }

  /** Starts or stops the give-up clock: requests wait and no replica is open. */
  private watchReachability(): void {
    const waiting = this.unsent.length > 0 || this.replicas.some((r) => r.inflight.length > 0);
    const anyOpen = this.replicas.some((r) => r.state === 'open');
    if (!waiting || anyOpen) {
      this.unreachableSince = undefined;
      clearTimeout(this.giveUpTimer);
      this.giveUpTimer = undefined;
      return;
    }
    if (this.replicas.every((r) => r.state === 'failed')) {
      this.failAll(
        new TeacherError(grpc.status.FAILED_PRECONDITION, `no usable teacher replica: ${this.describeReplicas()}`),
      );
      return;
    }
    if (this.unreachableSince === undefined) {
      this.unreachableSince = Date.now();
      this.giveUpTimer = setTimeout(() => {
        this.giveUpTimer = undefined;
        if (this.replicas.some((r) => r.state === 'open')) return;
        this.failAll(
          new TeacherError(
            grpc.status.UNAVAILABLE,
            `no teacher replica reachable for ${Math.round(this.opts.unavailableTimeoutMs / 1000)} s: ${this.describeReplicas()}`,
          ),
        );
      }, this.opts.unavailableTimeoutMs);
      this.giveUpTimer.unref?.();
    }
  }

  private describeReplicas(): string {
    return this.replicas.map((r) => `${r.target} ${r.state}${r.lastError ? ` (${r.lastError})` : ''}`).join('; ');
  }

  private failAll(error: TeacherError): void {
    for (const p of this.unsent.splice(0)) this.settle(p, error);
    for (const r of this.replicas) for (const p of r.inflight.splice(0)) this.settle(p, error);
  }

  /** Connects an idle replica; while one connection attempt runs, callers share it. */
  private connect(r: Replica): Promise<void> {
    if (r.state === 'idle' && !this.closed) {
      r.connecting = this.openStream(r).finally(() => {
        r.connecting = undefined;
      });
    }
    return r.connecting ?? Promise.resolve();
  }

  /** Checks the replica (Info: reachable, serving the expected weights), then opens its stream. */
  private async openStream(r: Replica): Promise<void> {
    r.state = 'connecting';
    let info: InfoResponse;
    try {
      info = await this.info(r.target);
    } catch (err) {
      if (this.closed) return;
      this.retryLater(r, `cannot reach it: ${(err as Error).message}`);
      return;
    }
    if (this.closed) return;
    this.expectedHash ??= info.contentHash;
    if (info.contentHash !== this.expectedHash) {
      r.state = 'failed';
      r.lastError = `serves weights ${info.contentHash.slice(0, 12)}…, expected ${this.expectedHash.slice(0, 12)}…`;
      this.log(`teacher client: ${r.target} ${r.lastError}; not using it`);
      this.pump();
      return;
    }
    r.info = info;
    if (this.opened.has(r.target)) this.stats.reconnects++;
    this.opened.add(r.target);
    const call = r.client.streamTopK();
    r.call = call;
    r.blocked = false;
    r.state = 'open';
    call.on('data', (msg: TopKResponse) => this.onAnswer(r, call, msg));
    call.on('error', (err: grpc.ServiceError) => this.onStreamEnd(r, call, err.code, err.details || err.message));
    call.on('status', (st: grpc.StatusObject) => {
      // An OK status with requests unanswered (the server ended the stream): re-send them.
      if (st.code === grpc.status.OK) this.onStreamEnd(r, call, grpc.status.OK, 'stream ended');
    });
    this.pump();
  }

  private onAnswer(r: Replica, call: grpc.ClientDuplexStream<TopKRequest, TopKResponse>, msg: TopKResponse): void {
    if (r.call !== call) return;
    const head = r.inflight[0];
    if (!head || head.id !== msg.id) {
      this.log(
        `teacher client: ${r.target} answered id ${msg.id}, expected ${head?.id ?? 'none'}; reopening the stream`,
      );
      call.cancel();
      this.onStreamEnd(r, call, grpc.status.INTERNAL, `answer id ${msg.id} out of order`);
      return;
    }
    r.inflight.shift();
    r.failures = 0;
    let result: TopKResult | Error;
    try {
      result = decodeTopK(msg);
    } catch (err) {
      result = new TeacherError(grpc.status.DATA_LOSS, (err as Error).message);
    }
    if (!head.settled && !(result instanceof Error)) {
      this.stats.answered++;
      this.stats.perReplica[r.target] = (this.stats.perReplica[r.target] ?? 0) + 1;
    }
    this.settle(head, result);
    this.pump();
  }

  private onStreamEnd(
    r: Replica,
    call: grpc.ClientDuplexStream<TopKRequest, TopKResponse>,
    code: grpc.status,
    details: string,
  ): void {
    if (r.call !== call) return;
    r.call = undefined;
    r.blocked = false;
    const pending = r.inflight.splice(0);
    if (this.closed) return;
    if (code === grpc.status.OK && pending.length === 0) {
      r.state = 'idle';
      this.pump();
      return;
    }
    this.stats.streamFailures++;
    let requeue = pending;
    if (REQUEST_ERRORS.has(code) && pending.length > 0) {
      // The server answers everything before a bad request, so the bad one is the oldest unanswered.
      const [bad, ...rest] = pending;
      this.settle(bad, new TeacherError(code, details));
      requeue = rest;
      r.state = 'idle';
    } else {
      this.log(
        `teacher client: ${r.target} stream ended (${grpc.status[code]}: ${details}); ${pending.length} request(s) to re-send`,
      );
      this.retryLater(r, `${grpc.status[code]}: ${details}`);
    }
    const again: Pending[] = [];
    for (const p of requeue) {
      if (p.settled) continue;
      if (p.attempts >= this.opts.maxAttempts) {
        this.settle(
          p,
          new TeacherError(
            grpc.status.UNAVAILABLE,
            `request ${p.id} sent ${p.attempts} times without an answer; last: ${details}`,
          ),
        );
      } else again.push(p);
    }
    // Back to the front, oldest first, so batches are answered in roughly the order they were asked.
    this.unsent = [...again, ...this.unsent].sort((a, b) => a.id - b.id);
    this.pump();
  }

  private retryLater(r: Replica, why: string): void {
    r.state = 'backoff';
    r.lastError = why;
    const b = this.opts.backoff;
    const base = Math.min(b.maxMs, b.initialMs * b.multiplier ** r.failures);
    const delay = base * (1 + b.jitter * (2 * Math.random() - 1));
    r.failures++;
    clearTimeout(r.timer);
    r.timer = setTimeout(() => {
      r.timer = undefined;
      if (r.state === 'backoff') r.state = 'idle';
      this.pump();
    }, delay);
    this.watchReachability();
  }
}

function unary<T>(start: (cb: (err: grpc.ServiceError | null, value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    start((err, value) => (err ? reject(new TeacherError(err.code, err.details || err.message)) : resolve(value)));
  });
}

export function clientCredentials(tls?: ClientTlsOptions): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  if (Boolean(tls.cert) !== Boolean(tls.key))
    throw new Error('teacher client: a client certificate needs both cert and key');
  return grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null);
}

// ---------------------------------------------------------------------------------------------------
// The training loop's teacher.

export interface StreamingTeacherOptions {
  /** Tokens kept per position (default: the server's). */
  topK?: number;
  /** Must equal the distillation temperature: the log-normaliser is computed at it. Default 1. */
  temperature?: number;
  /** Default f16. */
  encoding?: ValueEncodingName;
  /**
   * The training loop's batches (the same deterministic function of the step it uses): with it the
   * teacher asks for steps step+1 … step+window itself. Without it, call prefetch(step, batch).
   */
  batches?: BatchSource;
  /** Batches asked for ahead of the one being trained on. Default DEFAULT_TEACHER_WINDOW. */
  window?: number;
  /** Called with each answer handed to the training loop. */
  onAnswer?: (step: number, result: TopKResult) => void;
}

/**
 * Batches a student asks the teacher service for ahead of the one it trains on. At Pythia-160M scale
 * on one H100 (docs/gpu-run.md), 4 gave 1.6–1.8% more distillation throughput than 2 in two runs;
 * nothing is asked past the run's last step, so a brief training wastes none.
 */
export const DEFAULT_TEACHER_WINDOW = 4;

interface Ahead {
  batch: Batch;
  answer: Promise<TopKResult>;
}

/**
 * A `Teacher` backed by the teacher service. forBatch(batch, step, steps) answers from a request made
 * ahead of time when there is one for that step and the same tokens, and asks for the next `window`
 * steps (short of `steps`) before it returns, so the service computes them while the student trains.
 */
export class StreamingTeacher implements Teacher {
  private readonly ahead = new Map<number, Ahead>();
  private readonly window: number;

  constructor(
    readonly client: TeacherClient,
    private readonly options: StreamingTeacherOptions = {},
  ) {
    this.window = options.window ?? DEFAULT_TEACHER_WINDOW;
    if (!Number.isInteger(this.window) || this.window < 0)
      throw new Error(`streaming teacher: window must be a non-negative integer, got ${options.window}`);
  }

  /** Asks for a step's batch ahead of time (a no-op when it is already asked for). */
  prefetch(step: number, batch: Batch): void {
    const have = this.ahead.get(step);
    if (have && sameTokens(have.batch, batch)) return;
    const answer = this.client.topK({
      tokens: batch.input,
      batchSize: batch.batchSize,
      seqLen: batch.seqLen,
      topK: this.options.topK,
      temperature: this.options.temperature,
      encoding: this.options.encoding,
    });
    // Handled when forBatch awaits it; until then a failure must not count as unhandled.
    answer.catch(() => {});
    this.ahead.set(step, { batch, answer });
  }

  async forBatch(batch: Batch, step: number, steps = Number.POSITIVE_INFINITY): Promise<TopKTeacher> {
    for (const s of this.ahead.keys()) if (s < step) this.ahead.delete(s);
    this.prefetch(step, batch);
    const mine = this.ahead.get(step)!;
    if (this.options.batches) {
      for (let s = step + 1; s <= step + this.window && s < steps; s++) {
        if (!this.ahead.has(s)) this.prefetch(s, this.options.batches(s));
      }
    }
    const result = await mine.answer;
    this.ahead.delete(step);
    if (result.positions !== batch.input.length) {
      throw new Error(
        `teacher answered ${result.positions} positions for step ${step}, whose batch has ${batch.input.length}`,
      );
    }
    this.options.onAnswer?.(step, result);
    return topKTensors(result);
  }

  /** Requests made ahead and not yet consumed. */
  get pending(): number {
    return this.ahead.size;
  }
}

function sameTokens(a: Batch, b: Batch): boolean {
  if (a === b) return true;
  if (a.batchSize !== b.batchSize || a.seqLen !== b.seqLen || a.input.length !== b.input.length) return false;
  for (let i = 0; i < a.input.length; i++) if (a.input[i] !== b.input[i]) return false;
  return true;
}

/** An answer as the tensors distillationLoss takes. The caller disposes them. */
export function topKTensors(result: TopKResult): TopKTeacher {
  return {
    indices: tf.tensor2d(result.indices, [result.positions, result.k], 'int32'),
    logits: tf.tensor2d(result.logits, [result.positions, result.k], 'float32'),
    logNormaliser: tf.tensor1d(result.logNormaliser, 'float32'),
  };
}
