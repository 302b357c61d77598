/**
 * A ring of data-parallel ranks over TCP on one host (127.0.0.1): each rank listens on its own port,
 * sends to the next rank and receives from the previous one. It carries the gradient all-reduce of the
 * backends that compute through host memory (cpu, wasm, tensorflow, webgpu) and the small collectives
 * of every backend (the NCCL communicator's id goes from rank 0 to the others over it).
 *
 * The all-reduce is the bandwidth-optimal ring: a reduce-scatter (after N−1 exchanges of 1/N of the
 * values, each rank holds the complete sum of one chunk) and an all-gather (N−1 more exchanges hand
 * those sums round). Every chunk is summed once, by one rank, and copied to the others, so every rank
 * ends with bit-identical values — the ranks' weights stay identical without ever being compared.
 *
 * Failure is loud: a connection that closes, a message out of sequence or of the wrong size, or a peer
 * silent for longer than the timeout rejects the operation under way and every later one, naming the
 * peer rank and the collective.
 */
import { randomBytes } from 'node:crypto';
import * as net from 'node:net';

const MAGIC = 0x4f52_4e47; // "ORNG"
const HELLO_BYTES = 32;
const HEADER_BYTES = 16;

export interface TcpRingOptions {
  rank: number;
  worldSize: number;
  /** The loopback port each rank listens on, by rank. */
  ports: number[];
  /** Shared by the ranks of one job: a rank from another job (a stale process on a reused port) is refused. */
  jobId: string;
  /** How long to wait for the neighbours to come up. Default 120 s. */
  connectTimeoutMs?: number;
  /** How long one collective may wait for a peer. Default 10 minutes. */
  timeoutMs?: number;
  host?: string;
}

/** A broken ring: a peer died, stopped or sent something unexpected. */
export class RingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RingError';
  }
}

/** A new job id for the ranks of one run (hex). */
export function newJobId(): string {
  return randomBytes(8).toString('hex');
}

/** Bytes received from a socket, read back in exact amounts. */
class Inbox {
  private chunks: Buffer[] = [];
  private bytes = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;

  push(data: Buffer): void {
    this.chunks.push(data);
    this.bytes += data.length;
    this.serve();
  }

  fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    if (this.waiter) {
      this.waiter.reject(err);
      this.waiter = null;
    }
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('tcp ring: a read is already waiting'));
    return new Promise<Buffer>((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.serve();
      if (this.waiter && this.failure) {
        this.waiter = null;
        reject(this.failure);
      }
    });
  }

  private serve(): void {
    const w = this.waiter;
    if (!w || this.bytes < w.n) return;
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.bytes);
    const out = all.subarray(0, w.n);
    const rest = all.subarray(w.n);
    this.chunks = rest.length ? [rest] : [];
    this.bytes = rest.length;
    this.waiter = null;
    w.resolve(out);
  }
}

export class TcpRing {
  readonly rank: number;
  readonly worldSize: number;
  /** Collectives started so far (they are numbered in the messages, and in errors). */
  private seq = 0;
  private broken: RingError | null = null;
  private closing = false;
  private readonly next: number;
  private readonly prev: number;

  private constructor(
    private readonly options: TcpRingOptions,
    private readonly server: net.Server | null,
    private readonly toNext: net.Socket | null,
    private readonly fromPrev: net.Socket | null,
    private readonly inbox: Inbox,
  ) {
    this.rank = options.rank;
    this.worldSize = options.worldSize;
    this.next = (this.rank + 1) % this.worldSize;
    this.prev = (this.rank - 1 + this.worldSize) % this.worldSize;
    const lost = (who: number, how: string) => (err?: Error) => {
      if (this.closing) return;
      this.breakRing(
        new RingError(
          `rank ${this.rank}: the connection ${how} rank ${who} ${err ? `failed (${err.message})` : 'closed'}: rank ${who} died or stopped`,
        ),
      );
    };
    toNext?.on('error', lost(this.next, 'to')).on('close', () => lost(this.next, 'to')());
    fromPrev?.on('error', lost(this.prev, 'from')).on('close', () => lost(this.prev, 'from')());
  }

  /**
   * Joins the ring: listens on this rank's port, connects to the next rank (retrying until it is up)
   * and accepts the previous one. Resolves once both neighbours are connected.
   */
  static async join(options: TcpRingOptions): Promise<TcpRing> {
    const { rank, worldSize, ports } = options;
    if (!Number.isInteger(worldSize) || worldSize < 1)
      throw new Error(`tcp ring: worldSize must be a positive integer, got ${worldSize}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize)
      throw new Error(`tcp ring: rank must be in [0, ${worldSize - 1}], got ${rank}`);
    if (ports.length !== worldSize) throw new Error(`tcp ring: ${ports.length} ports for ${worldSize} ranks`);
    if (worldSize === 1) return new TcpRing(options, null, null, null, new Inbox());
    const host = options.host ?? '127.0.0.1';
    const deadline = Date.now() + (options.connectTimeoutMs ?? 120_000);
    const prev = (rank - 1 + worldSize) % worldSize;
    const next = (rank + 1) % worldSize;
    const inbox = new Inbox();

    // The previous rank connects to us: accept it (and only it) once it has said who it is.
    const server = net.createServer();
    const accepted = new Promise<net.Socket>((resolve, reject) => {
      server.on('connection', (socket) => {
        socket.setNoDelay(true);
        const chunks: Buffer[] = [];
        let got = 0;
        const onData = (d: Buffer) => {
          chunks.push(d);
          got += d.length;
          if (got < HELLO_BYTES) return;
          socket.off('data', onData);
          const all = Buffer.concat(chunks);
          const problem = checkHello(all.subarray(0, HELLO_BYTES), options, prev);
          if (problem) {
            socket.destroy();
            // A stranger (another job's rank, a port scanner) is turned away; the right peer may still come.
            if (problem.fatal) reject(new RingError(problem.message));
            return;
          }
          if (all.length > HELLO_BYTES) inbox.push(all.subarray(HELLO_BYTES));
          socket.on('data', (b: Buffer) => inbox.push(b));
          resolve(socket);
        };
        socket.on('data', onData);
        socket.on('error', () => undefined);
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new RingError(`rank ${rank}: cannot listen on ${host}:${ports[rank]}: ${err.message}`)),
      );
      server.listen(ports[rank], host, () => resolve());
    });

    let toNext: net.Socket;
    try {
      toNext = await connectWithRetry(
        host,
        ports[next],
        deadline,
        `rank ${rank}: rank ${next} (${host}:${ports[next]})`,
      );
      toNext.write(hello(options));
      const fromPrev = await withDeadline(
        accepted,
        deadline,
        () =>
          new RingError(`rank ${rank}: rank ${prev} did not connect within ${options.connectTimeoutMs ?? 120_000} ms`),
      );
      return new TcpRing(options, server, toNext, fromPrev, inbox);
    } catch (err) {
      server.close();
      throw err;
    }
  }

  /** Replaces `values` on every rank by their element-wise mean over the ranks (identical on every rank). */
  async allReduceMean(values: Float32Array): Promise<void> {
    await this.allReduceSum(values);
    if (this.worldSize > 1) for (let i = 0; i < values.length; i++) values[i] /= this.worldSize;
  }

  /** Replaces `values` on every rank by their element-wise sum over the ranks (identical on every rank). */
  async allReduceSum(values: Float32Array): Promise<void> {
    const op = this.begin('all-reduce');
    const n = this.worldSize;
    if (n === 1) return;
    const bounds = Array.from({ length: n + 1 }, (_, c) => Math.floor((c * values.length) / n));
    const chunk = (c: number) => values.subarray(bounds[mod(c, n)], bounds[mod(c, n) + 1]);
    // Reduce-scatter: after step s, chunk (rank − s − 1) holds the sum over s + 2 ranks.
    for (let s = 0; s < n - 1; s++) {
      const [, incoming] = await Promise.all([
        this.send(op, chunk(this.rank - s)),
        this.receive(op, chunk(this.rank - s - 1).byteLength),
      ]);
      const into = chunk(this.rank - s - 1);
      const add = floats(incoming);
      for (let i = 0; i < into.length; i++) into[i] += add[i];
    }
    // All-gather: the complete chunk (rank + 1) goes round.
    for (let s = 0; s < n - 1; s++) {
      const [, incoming] = await Promise.all([
        this.send(op, chunk(this.rank + 1 - s)),
        this.receive(op, chunk(this.rank - s).byteLength),
      ]);
      const into = chunk(this.rank - s);
      into.set(floats(incoming));
    }
  }

  /** Rank `root`'s bytes on every rank (the others pass nothing). */
  async broadcast(bytes: Uint8Array | undefined, root = 0): Promise<Uint8Array> {
    const op = this.begin('broadcast');
    if (this.rank === root && !bytes) throw new Error(`tcp ring: rank ${root} broadcasts, but has nothing to send`);
    if (this.worldSize === 1) return bytes!;
    let data = bytes;
    if (this.rank !== root) {
      const length = (await this.receive(op, 4, 'length')).readUInt32LE(0);
      data = new Uint8Array(await this.receive(op, length, 'payload'));
    }
    // Pass it on, unless the next rank is where it started.
    if (this.next !== root) {
      await this.sendBytes(op, new Uint8Array(Uint32Array.of(data!.length).buffer));
      await this.sendBytes(op, data!);
    }
    return data!;
  }

  /** Waits until every rank has reached this point. */
  async barrier(): Promise<void> {
    await this.allReduceSum(new Float32Array(1));
  }

  close(): void {
    this.closing = true;
    this.toNext?.end();
    this.fromPrev?.destroy();
    this.server?.close();
    this.inbox.fail(new RingError(`rank ${this.rank}: the ring is closed`));
  }

  private begin(what: string): { seq: number; what: string } {
    if (this.broken) throw this.broken;
    if (this.closing) throw new RingError(`rank ${this.rank}: the ring is closed`);
    this.seq += 1;
    return { seq: this.seq, what };
  }

  private breakRing(err: RingError): void {
    if (this.broken) return;
    this.broken = err;
    this.inbox.fail(err);
    this.toNext?.destroy();
    this.fromPrev?.destroy();
  }

  private send(op: { seq: number; what: string }, values: Float32Array): Promise<void> {
    return this.sendBytes(op, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  }

  private sendBytes(op: { seq: number; what: string }, bytes: Uint8Array): Promise<void> {
    const header = Buffer.alloc(HEADER_BYTES);
    header.writeUInt32LE(MAGIC, 0);
    header.writeUInt32LE(op.seq, 4);
    header.writeDoubleLE(bytes.byteLength, 8);
    const socket = this.toNext!;
    // Resolves once the socket has taken the bytes, so the caller may change them afterwards.
    return new Promise<void>((resolve, reject) => {
      socket.write(header);
      socket.write(bytes, (err) => {
        if (!err) return resolve();
        this.breakRing(
          new RingError(
            `rank ${this.rank}: the connection to rank ${this.next} failed (${err.message}) during ${op.what} #${op.seq}: rank ${this.next} died or stopped`,
          ),
        );
        reject(this.broken);
      });
    });
  }

  /** The next message from the previous rank, `bytes` long, of collective `op`. */
  private async receive(op: { seq: number; what: string }, bytes: number, part = 'values'): Promise<Buffer> {
    const timeoutMs = this.options.timeoutMs ?? 600_000;
    const waiting = `rank ${this.rank}: ${op.what} #${op.seq}: waiting for rank ${this.prev}`;
    const fail = (why: string) => {
      const err = new RingError(`${waiting}: ${why}`);
      this.breakRing(err);
      return err;
    };
    // A peer silent past the timeout breaks the ring: what it might still send can no longer be matched.
    const read = (n: number, silent: string) =>
      withDeadline(this.inbox.read(n), Date.now() + timeoutMs, () => fail(`${silent} for ${timeoutMs / 1000} s`));
    const header = await read(HEADER_BYTES, 'nothing came');
    const magic = header.readUInt32LE(0);
    const seq = header.readUInt32LE(4);
    const size = header.readDoubleLE(8);
    if (magic !== MAGIC) throw fail('the stream is corrupt (bad magic)');
    if (seq !== op.seq)
      throw fail(`it sent collective #${seq}: the ranks run different collectives (different code or models?)`);
    if (size !== bytes)
      throw fail(`it sent ${size} bytes of ${part}, this rank expects ${bytes}: the ranks' models or batches differ`);
    return read(bytes, `its ${part} stopped coming`);
  }
}

/** The float32 values in `b` (copied when the socket's buffer does not start on a 4-byte boundary). */
function floats(b: Buffer): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.length / 4);
  return new Float32Array(Uint8Array.from(b).buffer);
}

function mod(a: number, n: number): number {
  return ((a % n) + n) % n;
}

function hello(o: TcpRingOptions): Buffer {
  const b = Buffer.alloc(HELLO_BYTES);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt32LE(o.rank, 4);
  b.writeUInt32LE(o.worldSize, 8);
  Buffer.from(o.jobId.padEnd(16, ' ').slice(0, 16), 'latin1').copy(b, 12);
  return b;
}

function checkHello(b: Buffer, o: TcpRingOptions, expectRank: number): { message: string; fatal: boolean } | null {
  if (b.readUInt32LE(0) !== MAGIC) return { message: 'not a rank', fatal: false };
  if (b.toString('latin1', 12, 28) !== o.jobId.padEnd(16, ' ').slice(0, 16))
    return { message: 'another job', fatal: false };
  const rank = b.readUInt32LE(4);
  const world = b.readUInt32LE(8);
  if (world !== o.worldSize)
    return {
      message: `rank ${o.rank}: rank ${rank} of the same job has ${world} ranks, this one ${o.worldSize}`,
      fatal: true,
    };
  if (rank !== expectRank)
    return { message: `rank ${o.rank}: rank ${rank} connected where rank ${expectRank} should`, fatal: true };
  return null;
}

async function connectWithRetry(host: string, port: number, deadline: number, who: string): Promise<net.Socket> {
  let last = '';
  while (Date.now() < deadline) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect({ host, port });
        s.once('connect', () => {
          s.off('error', reject);
          s.setNoDelay(true);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (err) {
      last = (err as Error).message;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new RingError(`${who} did not come up in time (${last})`);
}

function withDeadline<T>(p: Promise<T>, deadline: number, onTimeout: () => Error): Promise<T> {
  const ms = Math.max(0, deadline - Date.now());
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(onTimeout()), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
