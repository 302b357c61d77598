/**
 * The teacher-logit gRPC server (docs/teacher-service.md): one process holds the teacher; students
 * stream token batches in and get the teacher's top-k logits back.
 *
 * - Requests from all streams go into one queue; a single compute loop takes as many as fit the token
 *   budget (same sequence length, so they stack into one forward pass), runs the model, selects top-k
 *   and the log-normaliser on the backend, and hands each stream its answers, which it writes in order.
 * - Flow control: each stream may have at most `maxStreamQueue` requests read and not yet flushed to
 *   the transport; at that bound the server stops reading it (the student's sends block in HTTP/2 flow
 *   control). `write()` returning false stops writes to that stream until 'drain'.
 * - Memory: a request's answer size is known when it is read (positions × k × bytes per entry), and
 *   it is computed only once the byte budget has room for it — `maxBufferedBytes` for all streams,
 *   `maxStreamBytes` for one — which it holds until the transport has taken the answer. A request whose
 *   answer alone exceeds the per-stream budget is refused (RESOURCE_EXHAUSTED). A stream whose answers
 *   the transport has not taken for `stallMs` (the student stopped reading) is reset and its memory
 *   freed, so stalled students cannot hold the budget from the others.
 * - A cancelled stream (the student went away, or its deadline passed) has its queued work dropped.
 * - Bad input ends only the offending stream, after answering the requests before it.
 * - shutdown() drains: it stops reading, answers every request already read, ends each stream with
 *   UNAVAILABLE (the client re-sends the rest elsewhere or after a restart) and then stops.
 */
import * as http2 from 'node:http2';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';

import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';

import { gpuBackendActive } from '../../core/model/backend.js';
import { type GPTNeoX, parameterCount, runRepeatedPass, topKFromLogits } from '../../core/model/index.js';
import * as tf from '../../core/model/tfjs.js';
import {
  IndexEncoding,
  type InfoResponse,
  type Metrics,
  type StreamMetrics,
  TeacherLogitsService,
  type TopKRequest,
  type TopKResponse,
  ValueEncoding,
} from '../../proto/gen/offshoot/teacher/v1/teacher.js';
import { encodeTopK, encodedBytes, indexEncodingFor } from './codec.js';
import { RequestError, type ValidRequest, defaultTopK, validateRequest } from './validate.js';

export const SERVICE_NAME = 'offshoot.teacher.v1.TeacherLogits';

export const SERVER_DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  maxBatchTokens: 8192,
  maxStreamQueue: 8,
  topK: 64,
  graceMs: 30_000,
  maxBufferedBytes: 256 * 2 ** 20,
  maxStreamBytes: 64 * 2 ** 20,
  stallMs: 60_000,
};

export interface ServerTlsOptions {
  /** PEM certificate chain of the server. */
  cert: Buffer;
  /** PEM private key of the server. */
  key: Buffer;
  /** PEM CA bundle: when given, clients must present a certificate it signed (mutual TLS). */
  ca?: Buffer;
}

export interface TeacherServerOptions {
  /** The teacher. The server owns it from now on and disposes it at shutdown. */
  model: GPTNeoX;
  modelName: string;
  contentHash: string;
  /** The compute backend in use (reported by Info). */
  backend?: string;
  host?: string;
  /** 0: any free port. */
  port?: number;
  /** Largest request and largest forward pass, in tokens. */
  maxBatchTokens?: number;
  /** Requests a stream may have read and unanswered before the server stops reading it. */
  maxStreamQueue?: number;
  /** k when a request does not say (capped at the vocabulary). */
  topK?: number;
  /** Bytes of answers computed and not yet taken by the transport, all streams together. */
  maxBufferedBytes?: number;
  /** The same for one stream (at most maxBufferedBytes); a larger single answer is refused. */
  maxStreamBytes?: number;
  /** A stream whose answers the transport has not taken for this long is reset. */
  stallMs?: number;
  tls?: ServerTlsOptions;
  /** Where to log events (stream errors, shutdown). Default: nowhere. */
  log?: (line: string) => void;
}

type Call = grpc.ServerDuplexStream<TopKRequest, TopKResponse>;

interface Slot {
  id: number;
  response?: TopKResponse;
  /** Encoded bytes of the answer, once computed. */
  bytes: number;
  /** Budget this request holds: its answer's size from when it is taken for a forward pass until the transport took it. */
  reserved: number;
  error?: RequestError;
  written: boolean;
}

interface WorkItem {
  stream: StreamState;
  slot: Slot;
  req: ValidRequest;
}

/** Requests of one forward pass with the same k and temperature: one top-k over their rows. */
interface PassGroup {
  k: number;
  temperature: number;
  /** First position (row × sequence length) of the group in the pass. */
  start: number;
  positions: number;
  items: WorkItem[];
}

/** A forward pass queued on the device: per group its top-k logits, indices and log-normalisers. */
interface Pass {
  groups: PassGroup[];
  outputs: tf.Tensor[];
}

interface StreamState {
  n: number;
  call: Call;
  peer: string;
  /** Requests read and not yet flushed to the transport, in arrival order. */
  slots: Slot[];
  accepting: boolean;
  paused: boolean;
  awaitingDrain: boolean;
  halfClosed: boolean;
  done: boolean;
  bytesBuffered: number;
  /** Sum of its slots' reservations. */
  reserved: number;
  answered: number;
  /** When the transport last took one of its answers (or it started waiting for it to). */
  lastProgress: number;
}

const RATE_WINDOW_MS = 10_000;

/** The encoded size of a request's answer, known before it is computed. */
export function answerBytes(req: Pick<ValidRequest, 'tokens' | 'k' | 'encoding'>, vocabSize: number): number {
  const index = indexEncodingFor(vocabSize) === IndexEncoding.INDEX_ENCODING_UINT16 ? 2 : 4;
  const value = req.encoding === ValueEncoding.VALUE_ENCODING_FLOAT32 ? 4 : 2;
  return req.tokens.length * (req.k * (index + value) + 4) + 64;
}

const MiB = 2 ** 20;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(bytes < 10 * MiB ? 1 : 0)} MiB`;

/** Answers of this many bytes freed since the last collection make an idle server collect its garbage. */
const COLLECT_AFTER_BYTES = 64 * MiB;

let gc: (() => void) | undefined;

/**
 * A full garbage collection. An idle server allocates nothing, so V8 would not collect the answers it
 * just dropped (their buffers live outside its heap) and the memory would stay taken until the next
 * work; after holding many megabytes, the server collects them itself.
 */
function collectGarbage(): void {
  if (!gc) {
    v8.setFlagsFromString('--expose-gc');
    gc = vm.runInNewContext('gc') as () => void;
  }
  gc();
}

export class TeacherServer {
  readonly options: Required<Omit<TeacherServerOptions, 'tls' | 'log' | 'backend'>> &
    Pick<TeacherServerOptions, 'tls' | 'log' | 'backend'>;
  private readonly server: grpc.Server;
  private readonly health: HealthImplementation;
  private readonly streams = new Map<number, StreamState>();
  private queue: WorkItem[] = [];
  private nextStream = 1;
  private wake: (() => void) | undefined;
  private loopDone: Promise<void> | undefined;
  private draining = false;
  private stopped = false;
  private boundPort = 0;
  /** Budget held by all streams. */
  private reserved = 0;
  /** Bytes released since the last garbage collection. */
  private releasedSinceCollection = 0;
  private collectTimer: NodeJS.Timeout | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  private readonly started = performance.now();
  private readonly recent: { t: number; tokens: number }[] = [];
  private readonly counters = {
    tokensServed: 0,
    requestsServed: 0,
    forwardPasses: 0,
    requestsRejected: 0,
    requestsCancelled: 0,
    peakBytesBuffered: 0,
    peakBytesReserved: 0,
    streamsReset: 0,
    busyMs: 0,
    computeMs: 0,
  };

  constructor(options: TeacherServerOptions) {
    this.options = {
      host: SERVER_DEFAULTS.host,
      port: SERVER_DEFAULTS.port,
      maxBatchTokens: SERVER_DEFAULTS.maxBatchTokens,
      maxStreamQueue: SERVER_DEFAULTS.maxStreamQueue,
      topK: SERVER_DEFAULTS.topK,
      maxBufferedBytes: SERVER_DEFAULTS.maxBufferedBytes,
      stallMs: SERVER_DEFAULTS.stallMs,
      ...options,
      maxStreamBytes:
        options.maxStreamBytes ??
        Math.min(SERVER_DEFAULTS.maxStreamBytes, options.maxBufferedBytes ?? SERVER_DEFAULTS.maxBufferedBytes),
    };
    const { maxBatchTokens, maxStreamQueue, topK, maxBufferedBytes, maxStreamBytes, stallMs } = this.options;
    for (const [name, v] of Object.entries({
      maxBatchTokens,
      maxStreamQueue,
      topK,
      maxBufferedBytes,
      maxStreamBytes,
      stallMs,
    })) {
      if (!Number.isSafeInteger(v) || v < 1)
        throw new Error(`teacher server: ${name} must be a positive integer, got ${v}`);
    }
    if (maxStreamBytes > maxBufferedBytes)
      throw new Error(
        `teacher server: maxStreamBytes (${maxStreamBytes}) must be at most maxBufferedBytes (${maxBufferedBytes})`,
      );
    this.server = new grpc.Server({
      // Token ids are varints of at most 5 bytes; larger messages fail in grpc-js with RESOURCE_EXHAUSTED.
      'grpc.max_receive_message_length': maxBatchTokens * 5 + 65536,
      'grpc.max_send_message_length': -1,
      // Find students that vanished without closing their connection.
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
    });
    this.server.addService(TeacherLogitsService, {
      info: (_call: grpc.ServerUnaryCall<unknown, InfoResponse>, cb: grpc.sendUnaryData<InfoResponse>) =>
        cb(null, this.info()),
      getMetrics: (_call: grpc.ServerUnaryCall<unknown, Metrics>, cb: grpc.sendUnaryData<Metrics>) =>
        cb(null, this.metrics()),
      streamTopK: (call: Call) => this.onStream(call),
    });
    this.health = new HealthImplementation({ '': 'NOT_SERVING', [SERVICE_NAME]: 'NOT_SERVING' });
    this.health.addToServer(this.server);
  }

  private get config() {
    return this.options.model.config;
  }

  /** Binds and starts serving; resolves to the port (the chosen one when `port` was 0). */
  async start(): Promise<number> {
    const { host, port, tls } = this.options;
    const credentials = tls
      ? grpc.ServerCredentials.createSsl(
          tls.ca ?? null,
          [{ cert_chain: tls.cert, private_key: tls.key }],
          Boolean(tls.ca),
        )
      : grpc.ServerCredentials.createInsecure();
    const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    this.boundPort = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(address, credentials, (err, p) =>
        err ? reject(new Error(`teacher server: cannot listen on ${address}: ${err.message}`)) : resolve(p),
      );
    });
    this.loopDone = this.computeLoop();
    this.stallTimer = setInterval(() => this.resetStalled(), Math.min(1000, this.options.stallMs));
    this.stallTimer.unref();
    this.health.setStatus('', 'SERVING');
    this.health.setStatus(SERVICE_NAME, 'SERVING');
    return this.boundPort;
  }

  get port(): number {
    return this.boundPort;
  }

  info(): InfoResponse {
    const c = this.config;
    return {
      modelName: this.options.modelName,
      vocabSize: c.vocabSize,
      contextLength: c.maxPositions,
      contentHash: this.options.contentHash,
      parameters: parameterCount(c),
      defaultTopK: defaultTopK(c.vocabSize, this.options.topK),
      maxBatchTokens: this.options.maxBatchTokens,
      maxStreamQueue: this.options.maxStreamQueue,
      indexEncoding: indexEncodingFor(c.vocabSize),
      backend: this.options.backend ?? tf.getBackend(),
      metrics: this.metrics(),
      maxBufferedBytes: this.options.maxBufferedBytes,
      maxStreamBytes: this.options.maxStreamBytes,
      stallSeconds: this.options.stallMs / 1000,
    };
  }

  metrics(): Metrics {
    const now = performance.now();
    this.pruneRecent(now);
    const windowMs = Math.min(RATE_WINDOW_MS, now - this.started);
    const recentTokens = this.recent.reduce((a, r) => a + r.tokens, 0);
    const streams: StreamMetrics[] = [...this.streams.values()].map((s) => ({
      stream: s.n,
      peer: s.peer,
      unanswered: s.slots.length,
      bytesBuffered: s.bytesBuffered,
      readingPaused: s.paused,
      awaitingDrain: s.awaitingDrain,
      requestsAnswered: s.answered,
      bytesReserved: s.reserved,
    }));
    return {
      uptimeSeconds: (now - this.started) / 1000,
      tokensPerSecond: windowMs > 0 ? (recentTokens * 1000) / windowMs : 0,
      tokensServed: this.counters.tokensServed,
      requestsServed: this.counters.requestsServed,
      forwardPasses: this.counters.forwardPasses,
      requestsRejected: this.counters.requestsRejected,
      requestsCancelled: this.counters.requestsCancelled,
      activeStreams: this.streams.size,
      queueDepth: this.queue.length,
      queuedTokens: this.queue.reduce((a, w) => a + w.req.tokens.length, 0),
      bytesBuffered: this.bytesBuffered(),
      peakBytesBuffered: this.counters.peakBytesBuffered,
      busySeconds: this.counters.busyMs / 1000,
      computeSeconds: this.counters.computeMs / 1000,
      rssBytes: process.memoryUsage.rss(),
      streams,
      bytesReserved: this.reserved,
      peakBytesReserved: this.counters.peakBytesReserved,
      streamsReset: this.counters.streamsReset,
    };
  }

  private bytesBuffered(): number {
    let total = 0;
    for (const s of this.streams.values()) total += s.bytesBuffered;
    return total;
  }

  private pruneRecent(now: number): void {
    while (this.recent.length > 0 && now - this.recent[0].t > RATE_WINDOW_MS) this.recent.shift();
  }

  private log(line: string): void {
    this.options.log?.(line);
  }

  // -------------------------------------------------------------------------------------------------
  // Streams.

  private onStream(call: Call): void {
    if (this.draining) {
      call.emit('error', {
        code: grpc.status.UNAVAILABLE,
        details: 'teacher is shutting down; connect to another replica',
      });
      return;
    }
    const s: StreamState = {
      n: this.nextStream++,
      call,
      peer: call.getPeer(),
      slots: [],
      accepting: true,
      paused: false,
      awaitingDrain: false,
      halfClosed: false,
      done: false,
      bytesBuffered: 0,
      reserved: 0,
      answered: 0,
      lastProgress: performance.now(),
    };
    this.streams.set(s.n, s);
    call.on('data', (req: TopKRequest) => this.onRequest(s, req));
    call.on('end', () => {
      s.halfClosed = true;
      this.maybeEnd(s);
    });
    call.on('cancelled', () => this.onCancelled(s));
    call.on('error', (err: Error) => {
      // Emitted by grpc-js when the transport fails; the stream is over either way.
      if (!s.done) this.log(`teacher: stream ${s.n} (${s.peer}) failed: ${err.message}`);
      this.onCancelled(s);
    });
    call.on('close', () => this.forget(s));
  }

  private onRequest(s: StreamState, raw: TopKRequest): void {
    if (!s.accepting || s.done) return;
    const slot: Slot = { id: raw.id, bytes: 0, reserved: 0, written: false };
    let req: ValidRequest;
    try {
      req = validateRequest(raw, {
        vocabSize: this.config.vocabSize,
        contextLength: this.config.maxPositions,
        maxBatchTokens: this.options.maxBatchTokens,
        defaultTopK: defaultTopK(this.config.vocabSize, this.options.topK),
      });
      const bytes = answerBytes(req, this.config.vocabSize);
      if (bytes > this.options.maxStreamBytes) {
        throw new RequestError(
          grpc.status.RESOURCE_EXHAUSTED,
          `request ${raw.id}: its answer would take ${mib(bytes)} (${req.tokens.length} positions × top_k ${req.k}), above the server's budget of ${mib(this.options.maxStreamBytes)} per stream (--max-stream-mib); ask for fewer positions, a smaller top_k or float16 values`,
        );
      }
    } catch (err) {
      if (!(err instanceof RequestError)) throw err;
      this.counters.requestsRejected++;
      this.log(`teacher: stream ${s.n} (${s.peer}): ${grpc.status[err.code]}: ${err.message}`);
      slot.error = err;
      s.slots.push(slot);
      s.accepting = false;
      this.pause(s);
      this.flush(s);
      return;
    }
    s.slots.push(slot);
    this.queue.push({ stream: s, slot, req });
    if (s.slots.length >= this.options.maxStreamQueue) this.pause(s);
    this.wake?.();
  }

  private pause(s: StreamState): void {
    if (s.paused) return;
    s.paused = true;
    s.call.pause();
  }

  private maybeResume(s: StreamState): void {
    if (s.paused && s.accepting && !s.done && s.slots.length < this.options.maxStreamQueue) {
      s.paused = false;
      s.call.resume();
    }
  }

  /** Writes the answers at the head of the stream, in order, while the transport takes them. */
  private flush(s: StreamState): void {
    while (!s.done && !s.awaitingDrain) {
      const slot = s.slots.find((x) => !x.written);
      if (!slot) break;
      if (slot.error) {
        this.finish(s, { code: slot.error.code, details: slot.error.message });
        return;
      }
      if (!slot.response) break;
      // The stall clock runs from when the transport was first given something it has not taken.
      if (!s.slots.some((x) => x.written)) s.lastProgress = performance.now();
      slot.written = true;
      const response = slot.response;
      slot.response = undefined;
      const ok = s.call.write(response, () => this.onFlushed(s, slot));
      if (!ok) {
        s.awaitingDrain = true;
        s.call.once('drain', () => {
          s.awaitingDrain = false;
          this.flush(s);
        });
      }
    }
    this.maybeEnd(s);
  }

  /** The transport took an answer: it no longer counts against the stream's bounds. */
  private onFlushed(s: StreamState, slot: Slot): void {
    const i = s.slots.indexOf(slot);
    if (i >= 0) s.slots.splice(i, 1);
    s.bytesBuffered -= slot.bytes;
    slot.bytes = 0;
    this.release(s, slot);
    s.answered++;
    s.lastProgress = performance.now();
    this.maybeResume(s);
    this.maybeEnd(s);
  }

  /** Gives a slot's share of the byte budget back, and lets the compute loop look at the queue again. */
  private release(s: StreamState, slot: Slot): void {
    if (slot.reserved === 0) return;
    s.reserved -= slot.reserved;
    this.reserved -= slot.reserved;
    this.releasedSinceCollection += slot.reserved;
    slot.reserved = 0;
    this.wake?.();
    if (this.reserved === 0 && this.releasedSinceCollection >= COLLECT_AFTER_BYTES && !this.collectTimer) {
      // Once idle for a moment (the transport drops cancelled streams' buffers asynchronously).
      this.collectTimer = setTimeout(() => {
        this.collectTimer = undefined;
        if (this.reserved > 0) return;
        this.releasedSinceCollection = 0;
        collectGarbage();
      }, 1000);
      this.collectTimer.unref();
    }
  }

  /** Resets streams whose answers the transport has not taken for stallMs: their student stopped reading. */
  private resetStalled(): void {
    const now = performance.now();
    for (const s of this.streams.values()) {
      if (s.done || !s.slots.some((x) => x.written) || now - s.lastProgress < this.options.stallMs) continue;
      const details = `stream ${s.n} (${s.peer}) took none of its answers for ${Math.round(this.options.stallMs / 1000)} s while holding ${mib(s.reserved)} of the server's memory; reset`;
      this.log(`teacher: ${details}`);
      this.counters.streamsReset++;
      this.counters.requestsCancelled += s.slots.filter((x) => !x.written && !x.error).length;
      // RST_STREAM frees what the transport still buffers for it (a status would wait behind that
      // data); grpc-js reports ENHANCE_YOUR_CALM to the student as RESOURCE_EXHAUSTED.
      const h2 = (s.call as unknown as { call?: { stream?: http2.ServerHttp2Stream } }).call?.stream;
      s.done = true;
      s.accepting = false;
      this.dropQueued(s);
      if (h2 && !h2.destroyed) h2.close(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM);
      else s.call.emit('error', { code: grpc.status.RESOURCE_EXHAUSTED, details });
      this.forget(s);
    }
  }

  private maybeEnd(s: StreamState): void {
    if (s.done || s.slots.length > 0) return;
    if (s.halfClosed) this.finish(s, { code: grpc.status.OK, details: 'OK' });
    else if (this.draining) {
      this.finish(s, {
        code: grpc.status.UNAVAILABLE,
        details: 'teacher is shutting down; every request it read was answered, re-send the rest',
      });
    }
  }

  private finish(s: StreamState, st: { code: grpc.status; details: string }): void {
    if (s.done) return;
    s.done = true;
    s.accepting = false;
    this.dropQueued(s);
    if (st.code === grpc.status.OK) s.call.end();
    else s.call.emit('error', st);
    this.forget(s);
  }

  private onCancelled(s: StreamState): void {
    if (s.done) {
      this.forget(s);
      return;
    }
    s.done = true;
    s.accepting = false;
    const unanswered = s.slots.filter((x) => !x.written && !x.error).length;
    this.counters.requestsCancelled += unanswered;
    this.dropQueued(s);
    this.forget(s);
  }

  /** Drops the stream's work that has not reached the transport (what has keeps its accounting until flushed or forgotten). */
  private dropQueued(s: StreamState): void {
    this.queue = this.queue.filter((w) => w.stream !== s);
    for (const slot of s.slots) {
      if (slot.written) continue;
      s.bytesBuffered -= slot.bytes;
      slot.bytes = 0;
      slot.response = undefined;
      this.release(s, slot);
    }
    s.slots = s.slots.filter((x) => x.written);
  }

  /** A finished stream leaves the books: what the transport still holds for it is freed with it. */
  private forget(s: StreamState): void {
    if (!s.done) return;
    for (const slot of s.slots) this.release(s, slot);
    if (this.streams.delete(s.n)) this.checkDrained();
  }

  // -------------------------------------------------------------------------------------------------
  // Compute.

  /**
   * The oldest queued request the byte budget has room for, and every later one of the same sequence
   * length that fits the token budget and the byte budget; each reserves its answer's bytes.
   */
  private takeBatch(): WorkItem[] | undefined {
    const batch: WorkItem[] = [];
    const rest: WorkItem[] = [];
    let seqLen = -1;
    let tokens = 0;
    const vocab = this.config.vocabSize;
    for (const w of this.queue) {
      const n = w.req.tokens.length;
      const bytes = answerBytes(w.req, vocab);
      const s = w.stream;
      const fits =
        (seqLen === -1 || w.req.seqLen === seqLen) &&
        tokens + n <= this.options.maxBatchTokens &&
        (s.reserved === 0 || s.reserved + bytes <= this.options.maxStreamBytes) &&
        this.reserved + bytes <= this.options.maxBufferedBytes;
      if (!fits) {
        rest.push(w);
        continue;
      }
      seqLen = w.req.seqLen;
      batch.push(w);
      tokens += n;
      w.slot.reserved = bytes;
      s.reserved += bytes;
      this.reserved += bytes;
    }
    if (this.reserved > this.counters.peakBytesReserved) this.counters.peakBytesReserved = this.reserved;
    this.queue = rest;
    return batch.length ? batch : undefined;
  }

  /**
   * Forward passes one after the other. On a GPU backend each is queued on the device before the
   * previous one's answers are encoded and handed to the transport, so that the device computes while
   * the host encodes; elsewhere queuing a pass computes it, which would only hold those answers back.
   */
  private async computeLoop(): Promise<void> {
    const overlap = gpuBackendActive();
    let queued: Pass | undefined;
    while (!this.stopped) {
      const t0 = performance.now();
      queued ??= this.queueNext();
      if (!queued) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = undefined;
        continue;
      }
      const pass = queued;
      const host = await this.readBack(pass);
      queued = overlap ? this.queueNext() : undefined;
      if (host) this.answer(pass, host);
      this.counters.busyMs += performance.now() - t0;
      // Let the transport run (reads, writes, drains) between forward passes.
      await new Promise((resolve) => setImmediate(resolve));
    }
    // Stopped with a pass on the device: its streams are being cut off.
    if (queued) tf.dispose(queued.outputs);
  }

  /** The next batch's pass, queued on the device; a batch whose pass cannot be queued is answered with the error. */
  private queueNext(): Pass | undefined {
    for (let batch = this.takeBatch(); batch; batch = this.takeBatch()) {
      try {
        return this.queuePass(batch);
      } catch (err) {
        this.failBatch(batch, err);
      }
    }
    return undefined;
  }

  private failBatch(batch: WorkItem[], err: unknown): void {
    const message = `teacher: forward pass failed: ${(err as Error).message}`;
    this.log(message);
    for (const w of batch) this.finish(w.stream, { code: grpc.status.INTERNAL, details: message });
  }

  /**
   * Queues the teacher's forward pass over a batch and the top-k of each (k, temperature) group of its
   * requests. A repeated pass: the cuda backend replays a shape it has seen twice from a CUDA graph.
   */
  private queuePass(batch: WorkItem[]): Pass {
    const started = performance.now();
    // Requests of one (k, temperature) lie next to each other, so each group needs one top-k.
    batch.sort((a, b) => a.req.k - b.req.k || a.req.temperature - b.req.temperature);
    const seqLen = batch[0].req.seqLen;
    const rows = batch.reduce((a, w) => a + w.req.batchSize, 0);
    const ids = new Int32Array(rows * seqLen);
    let offset = 0;
    for (const w of batch) {
      ids.set(w.req.tokens, offset);
      offset += w.req.tokens.length;
    }
    const groups: PassGroup[] = [];
    let pos = 0;
    for (const w of batch) {
      const last = groups[groups.length - 1];
      const n = w.req.tokens.length;
      if (last && last.k === w.req.k && last.temperature === w.req.temperature) {
        last.positions += n;
        last.items.push(w);
      } else groups.push({ k: w.req.k, temperature: w.req.temperature, start: pos, positions: n, items: [w] });
      pos += n;
    }
    const vocab = this.config.vocabSize;
    const model = this.options.model;
    const outputs = runRepeatedPass({
      // The groups' layout is part of the pass (a replay repeats its slices, k and temperature).
      key: `teacher top-k ${groups.map((g) => `${g.positions}:${g.k}:${g.temperature}`).join(',')}`,
      inputs: [{ shape: [rows, seqLen], dtype: 'int32', data: ids }],
      state: model.variables(),
      body: ([tokens]) => {
        const logits = model.logits2d(tokens as tf.Tensor2D);
        return groups.flatMap((g) => {
          const sub = groups.length === 1 ? logits : tf.slice(logits, [g.start, 0], [g.positions, vocab]);
          const top = topKFromLogits(sub, g.k, g.temperature);
          return [top.logits, top.indices, top.logNormaliser];
        });
      },
    });
    this.counters.forwardPasses++;
    this.counters.computeMs += performance.now() - started;
    return { groups, outputs };
  }

  /** A queued pass's answers on the host (its tensors freed); on failure its requests are answered with the error. */
  private async readBack(pass: Pass): Promise<Array<Float32Array | Int32Array>[] | undefined> {
    const started = performance.now();
    try {
      const data = await Promise.all(pass.outputs.map((t) => t.data() as Promise<Float32Array | Int32Array>));
      this.counters.computeMs += performance.now() - started;
      return pass.groups.map((_, gi) => data.slice(3 * gi, 3 * gi + 3));
    } catch (err) {
      this.failBatch(
        pass.groups.flatMap((g) => g.items),
        err,
      );
      return undefined;
    } finally {
      tf.dispose(pass.outputs);
    }
  }

  /** Hands each request of a pass its share of the answers (or an error, for logits that are not finite). */
  private answer(pass: Pass, host: Array<Float32Array | Int32Array>[]): void {
    for (let gi = 0; gi < pass.groups.length; gi++) {
      const g = pass.groups[gi];
      const [values, indices, lse] = host[gi] as [Float32Array, Int32Array, Float32Array];
      let p = 0;
      for (const w of g.items) {
        const n = w.req.tokens.length;
        const bad = firstNonFinite(lse, p, p + n) ?? firstNonFinite(values, p * g.k, (p + n) * g.k);
        if (bad !== undefined) {
          // Never an OK status with NaN in it: the teacher's logits themselves are broken.
          this.fail(
            w,
            new RequestError(
              grpc.status.INTERNAL,
              `request ${w.req.id}: the teacher's logits at temperature ${w.req.temperature} are not finite (got ${bad}); is the checkpoint broken?`,
            ),
          );
        } else {
          this.deliver(w, {
            values: values.subarray(p * g.k, (p + n) * g.k),
            indices: indices.subarray(p * g.k, (p + n) * g.k),
            lse: lse.subarray(p, p + n),
          });
        }
        p += n;
      }
    }
  }

  private fail(w: WorkItem, err: RequestError): void {
    const s = w.stream;
    if (s.done) return;
    this.counters.requestsRejected++;
    this.log(`teacher: stream ${s.n} (${s.peer}): ${grpc.status[err.code]}: ${err.message}`);
    w.slot.error = err;
    this.release(s, w.slot);
    s.accepting = false;
    this.flush(s);
  }

  private deliver(w: WorkItem, out: { values: Float32Array; indices: Int32Array; lse: Float32Array }): void {
    const s = w.stream;
    if (s.done) return;
    const n = w.req.tokens.length;
    const response = encodeTopK({
      id: w.req.id,
      positions: n,
      k: w.req.k,
      temperature: w.req.temperature,
      vocabSize: this.config.vocabSize,
      encoding: w.req.encoding,
      indices: out.indices,
      // Copies: the views would otherwise keep the whole batch's read-back alive.
      values: out.values.slice(),
      logNormaliser: out.lse.slice(),
    });
    w.slot.response = response;
    w.slot.bytes = encodedBytes(response);
    s.bytesBuffered += w.slot.bytes;
    const total = this.bytesBuffered();
    if (total > this.counters.peakBytesBuffered) this.counters.peakBytesBuffered = total;
    this.counters.tokensServed += n;
    this.counters.requestsServed++;
    this.recent.push({ t: performance.now(), tokens: n });
    this.flush(s);
  }

  // -------------------------------------------------------------------------------------------------
  // Shutdown.

  private drainedWaiters: (() => void)[] = [];

  private checkDrained(): void {
    if (this.draining && this.streams.size === 0) {
      for (const f of this.drainedWaiters.splice(0)) f();
    }
  }

  /**
   * Graceful shutdown: reports NOT_SERVING, stops reading, answers every request already read, ends
   * each stream with UNAVAILABLE, then stops the server and frees the model. After `graceMs` whatever is
   * left is cut off.
   */
  async shutdown(graceMs = SERVER_DEFAULTS.graceMs): Promise<{ drained: boolean }> {
    if (this.stopped) return { drained: true };
    this.draining = true;
    clearInterval(this.stallTimer);
    clearTimeout(this.collectTimer);
    this.health.setStatus('', 'NOT_SERVING');
    this.health.setStatus(SERVICE_NAME, 'NOT_SERVING');
    for (const s of this.streams.values()) {
      s.accepting = false;
      this.pause(s);
      this.maybeEnd(s);
    }
    const drained = await new Promise<boolean>((resolve) => {
      if (this.streams.size === 0) return resolve(true);
      const timer = setTimeout(() => resolve(false), graceMs);
      this.drainedWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    this.stopped = true;
    this.wake?.();
    await this.loopDone;
    await new Promise<void>((resolve) => {
      const force = setTimeout(
        () => {
          this.server.forceShutdown();
          resolve();
        },
        drained ? 2000 : 0,
      );
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
    this.options.model.dispose();
    return { drained };
  }

  /** Stops at once, without draining (tests, errors). */
  forceShutdown(): void {
    clearInterval(this.stallTimer);
    clearTimeout(this.collectTimer);
    this.stopped = true;
    this.wake?.();
    this.server.forceShutdown();
  }
}

function firstNonFinite(a: Float32Array, from: number, to: number): number | undefined {
  for (let i = from; i < to; i++) if (!Number.isFinite(a[i])) return a[i];
  return undefined;
}
