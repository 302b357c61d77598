/**
 * The token store: tokenised corpora as shards on disk, shared by every process and run that uses the
 * same cache folder (the CLI's <cache>/tokens; on Kubernetes a folder of the shared volume).
 *
 *   <cacheDir>/<tokenizer hash, 16 hex>/
 *     shards/<part key>.tok      one part's ids (a token file, tokens.ts), named by the part's content
 *     shards/<part key>.lock     held while a process tokenises that part
 *     sources/<source hash>.json  a source's manifest: its files (size, mtime) and their parts' keys
 *
 * Preparing a source lists its files; a file whose size and mtime match the manifest keeps its parts
 * and keys without being read again, any other is cut into parts and each part hashed (sources.ts).
 * Parts whose shard exists are done (a shard first seen by this manifest has its payload hash checked
 * once, then the manifest records it as verified); the rest are tokenised by a pool of worker threads,
 * each part into its shard written atomically, and the manifest is rewritten after each. A killed
 * preparation therefore resumes without redoing finished parts. Several processes may prepare the same
 * source at once: a part's lock file keeps two from tokenising it twice (a lock whose process is gone,
 * or that nobody refreshed for LOCK_STALE_MS, is taken over).
 *
 * Opening a prepared source reads the manifest and each shard's header; reading windows then reads
 * only their bytes (ShardStream).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Worker } from 'node:worker_threads';

import { writeFileAtomic } from '../atomic.js';
import { startModuleWorker } from '../worker-thread.js';
import { type SourceView, type TokenData, type TokenStream, holdoutRanges } from './batches.js';
import {
  type EncodeResult,
  type EncodeTask,
  type TokenizerRecipe,
  encodePart,
  tokenizerRecipe,
} from './encode-part.js';
import { sha256Hex } from './fsutil.js';
import {
  DataError,
  type InputFile,
  type Part,
  PART_BYTES,
  type SourceSpec,
  listInputs,
  parseDataSpec,
  partKey,
  planParts,
  sourceKey,
} from './sources.js';
import { type Tokenizer, tokenizerHash } from './tokenizer.js';
import {
  TOKEN_FILE_HEADER_BYTES,
  type TokenFileHeader,
  readTokenFileHeader,
  tokenDtypeFor,
  tokenFilePayloadHash,
} from './tokens.js';

export const MANIFEST_VERSION = 1;

/**
 * The token store's folder: env OFFSHOOT_TOKENS, else <OFFSHOOT_CACHE or ~/.cache/offshoot>/tokens.
 * Every process that shares it shares the tokenised corpora (on Kubernetes: the shared volume).
 */
export function defaultTokenStore(): string {
  return (
    process.env.OFFSHOOT_TOKENS ||
    path.join(process.env.OFFSHOOT_CACHE || path.join(os.homedir(), '.cache', 'offshoot'), 'tokens')
  );
}
/** A lock nobody has refreshed for this long belongs to a process that is gone. */
export const LOCK_STALE_MS = 60_000;
const LOCK_REFRESH_MS = 10_000;
/** Below this much input, tokenise in the calling thread (starting workers costs more). */
const IN_PROCESS_BYTES = 8 * 1024 * 1024;

interface ManifestPart {
  start: number;
  end: number;
  rowGroups?: [number, number];
  firstRow?: number;
  key: string;
  /** Set once the part's shard exists and is checked. */
  tokens?: number;
  documents?: number;
  skipped?: number;
}

interface ManifestFile {
  path: string;
  size: number;
  mtimeMs: number;
  parts: ManifestPart[];
}

interface Manifest {
  version: number;
  source: string;
  tokenizer: string;
  vocabSize: number;
  files: ManifestFile[];
}

export interface PrepareProgress {
  phase: 'scan' | 'tokenize' | 'done';
  partsDone: number;
  partsTotal: number;
  /** Input bytes of the parts done or under way (compressed bytes for compressed files). */
  bytesDone: number;
  bytesTotal: number;
  /** Tokens written by this preparation. */
  tokens: number;
}

export interface PrepareOptions {
  /** The store's root folder (one per machine or shared volume). */
  cacheDir: string;
  /** Worker threads; default os.availableParallelism(); 0: tokenise in the calling thread. */
  workers?: number;
  /** Check every shard's payload hash again, even those the manifest already verified. */
  verify?: boolean;
  /** Size of a part of an uncompressed JSONL or pre-tokenised file (default 64 MiB). */
  partBytes?: number;
  onProgress?: (p: PrepareProgress) => void;
  /** Messages for people (skipped documents, ignored files, taken-over locks). */
  log?: (line: string) => void;
}

export interface ShardInfo {
  file: string;
  key: string;
  tokens: number;
  documents: number;
}

/** A source in the store, ready to read. */
export interface PreparedSource {
  spec: SourceSpec;
  manifest: string;
  shards: ShardInfo[];
  tokens: number;
  documents: number;
  /** Documents skipped as invalid (invalid=skip). */
  skipped: number;
  /** Parts found in the store, and parts tokenised by this call. */
  reused: number;
  tokenized: number;
  /** Input bytes (compressed size for compressed files). */
  inputBytes: number;
  bytesPerToken: 2 | 4;
  stream: ShardStream;
}

function storeDir(cacheDir: string, tokHash: string): string {
  return path.join(cacheDir, tokHash.slice(0, 16));
}

function manifestPath(cacheDir: string, tokHash: string, src: SourceSpec): string {
  return path.join(storeDir(cacheDir, tokHash), 'sources', `${sha256Hex(sourceKey(src)).slice(0, 32)}.json`);
}

function shardPath(cacheDir: string, tokHash: string, key: string): string {
  return path.join(storeDir(cacheDir, tokHash), 'shards', `${key}.tok`);
}

async function readManifest(file: string, source: string, tokHash: string): Promise<Manifest | undefined> {
  try {
    const m = JSON.parse(await fsp.readFile(file, 'utf8')) as Manifest;
    if (m.version === MANIFEST_VERSION && m.source === source && m.tokenizer === tokHash && Array.isArray(m.files))
      return m;
  } catch {
    // Absent or unreadable: plan from scratch (the shards themselves are still found by content).
  }
  return undefined;
}

/** Tokenises a source into the store (what is missing of it) and opens it. */
export async function prepareSource(
  src: SourceSpec,
  tokenizer: Tokenizer,
  options: PrepareOptions,
): Promise<PreparedSource> {
  const tokHash = tokenizerHash(tokenizer);
  const source = sourceKey(src);
  const mfile = manifestPath(options.cacheDir, tokHash, src);
  const log = options.log ?? (() => undefined);
  const old = await readManifest(mfile, source, tokHash);
  const oldFiles = new Map((old?.files ?? []).map((f) => [f.path, f]));
  const progress: PrepareProgress = {
    phase: 'scan',
    partsDone: 0,
    partsTotal: 0,
    bytesDone: 0,
    bytesTotal: 0,
    tokens: 0,
  };
  options.onProgress?.(progress);

  const listed = await listInputs(src);
  if (listed.ignored.length > 0)
    log(
      `${src.path}: ignored ${listed.ignored.length} file(s) of no known format, e.g. ${listed.ignored.slice(0, 3).join(', ')}`,
    );
  const files: ManifestFile[] = [];
  const partOf = new Map<ManifestPart, Part>();
  for (const f of listed.files) {
    const known = oldFiles.get(f.path);
    if (known && known.size === f.size && known.mtimeMs === f.mtimeMs) {
      files.push(known);
      continue;
    }
    const parts = await planParts(f, src, options.partBytes ?? PART_BYTES);
    const entries: ManifestPart[] = [];
    for (const p of parts) {
      const e: ManifestPart = {
        start: p.start,
        end: p.end,
        key: await partKey(p),
        ...(p.rowGroups ? { rowGroups: p.rowGroups, firstRow: p.firstRow } : {}),
      };
      partOf.set(e, p);
      entries.push(e);
    }
    files.push({ path: f.path, size: f.size, mtimeMs: f.mtimeMs, parts: entries });
  }
  const manifest: Manifest = {
    version: MANIFEST_VERSION,
    source,
    tokenizer: tokHash,
    vocabSize: tokenizer.vocabSize,
    files,
  };
  const fileOf = new Map<ManifestPart, InputFile>();
  for (const f of files) for (const p of f.parts) fileOf.set(p, listed.files.find((x) => x.path === f.path)!);
  const partFor = (e: ManifestPart): Part => {
    const p = partOf.get(e);
    if (p) return p;
    const f = fileOf.get(e)!;
    return {
      file: f.path,
      format: f.format,
      compression: f.compression,
      start: e.start,
      end: e.end,
      field: src.field,
      dtype: src.dtype,
      invalid: src.invalid,
      ...(e.rowGroups ? { rowGroups: e.rowGroups, firstRow: e.firstRow } : {}),
    };
  };

  // Which parts have their shard already.
  const all = files.flatMap((f) => f.parts);
  progress.partsTotal = all.length;
  progress.bytesTotal = all.reduce((a, p) => a + (p.end - p.start), 0);
  const todo: ManifestPart[] = [];
  let reused = 0;
  for (const p of all) {
    const header = await checkedShard(
      shardPath(options.cacheDir, tokHash, p.key),
      p,
      tokHash,
      tokenizer.vocabSize,
      options.verify === true,
    );
    if (header) {
      p.tokens = header.count;
      p.documents = header.documents;
      p.skipped ??= 0;
      reused++;
      progress.partsDone++;
      progress.bytesDone += p.end - p.start;
    } else {
      delete p.tokens;
      delete p.documents;
      todo.push(p);
    }
  }
  await writeFileAtomic(mfile, JSON.stringify(manifest));

  // Tokenise the rest.
  if (todo.length > 0) {
    progress.phase = 'tokenize';
    options.onProgress?.(progress);
    const recipe = tokenizerRecipe(tokenizer, tokHash);
    const todoBytes = todo.reduce((a, p) => a + (p.end - p.start), 0);
    const workers = Math.min(
      todo.length,
      options.workers ?? (todoBytes < IN_PROCESS_BYTES ? 0 : os.availableParallelism()),
    );
    const shardsDir = path.join(storeDir(options.cacheDir, tokHash), 'shards');
    await fsp.mkdir(shardsDir, { recursive: true });
    const locks = new LockSet(shardsDir, log);
    const pool = workers > 0 ? new WorkerPool(workers, recipe) : null;
    let manifestWrite = Promise.resolve();
    const onDone = (p: ManifestPart, r: EncodeResult): void => {
      p.tokens = r.tokens;
      p.documents = r.documents;
      p.skipped = r.skipped;
      if (r.skipped > 0) log(`${partFor(p).file}: skipped ${r.skipped} invalid document(s), e.g. ${r.reasons[0]}`);
      progress.partsDone++;
      options.onProgress?.(progress);
      manifestWrite = manifestWrite.then(() => writeFileAtomic(mfile, JSON.stringify(manifest)));
    };
    try {
      const encode = async (p: ManifestPart): Promise<void> => {
        const task: EncodeTask = { part: partFor(p), key: p.key, shard: shardPath(options.cacheDir, tokHash, p.key) };
        const onProgress = (d: { bytes: number; tokens: number }): void => {
          progress.bytesDone += d.bytes;
          progress.tokens += d.tokens;
          options.onProgress?.(progress);
        };
        const r = pool ? await pool.run(task, onProgress) : await encodePart(task, tokenizer, recipe, onProgress);
        onDone(p, r);
      };
      // A part another process holds waits until the end, then is taken over if that process died.
      let queue = todo;
      while (queue.length > 0) {
        const waiting: ManifestPart[] = [];
        await runLimited(queue, Math.max(1, workers), async (p) => {
          if (!(await locks.acquire(p.key))) {
            waiting.push(p);
            return;
          }
          try {
            const header = await checkedShard(
              shardPath(options.cacheDir, tokHash, p.key),
              p,
              tokHash,
              tokenizer.vocabSize,
              false,
            );
            if (header) {
              onDone(p, {
                key: p.key,
                tokens: header.count,
                documents: header.documents,
                skipped: 0,
                reasons: [],
                payloadHash: header.payloadHash,
              });
            } else {
              await encode(p);
            }
          } finally {
            await locks.release(p.key);
          }
        });
        queue = [];
        for (const p of waiting) {
          const header = await waitForShard(
            shardPath(options.cacheDir, tokHash, p.key),
            p,
            tokHash,
            tokenizer.vocabSize,
            locks,
          );
          if (header) {
            onDone(p, {
              key: p.key,
              tokens: header.count,
              documents: header.documents,
              skipped: 0,
              reasons: [],
              payloadHash: header.payloadHash,
            });
          } else queue.push(p);
        }
      }
    } finally {
      await pool?.close();
      await locks.releaseAll();
      await manifestWrite;
    }
    await writeFileAtomic(mfile, JSON.stringify(manifest));
  }
  progress.phase = 'done';
  options.onProgress?.(progress);
  return openPrepared(src, tokenizer, options.cacheDir, manifest, mfile, reused, todo.length);
}

function openPrepared(
  src: SourceSpec,
  tokenizer: Tokenizer,
  cacheDir: string,
  manifest: Manifest,
  mfile: string,
  reused: number,
  tokenized: number,
): PreparedSource {
  const tokHash = tokenizerHash(tokenizer);
  const shards: ShardInfo[] = [];
  let documents = 0;
  let skipped = 0;
  let inputBytes = 0;
  for (const f of manifest.files) {
    for (const p of f.parts) {
      shards.push({
        file: shardPath(cacheDir, tokHash, p.key),
        key: p.key,
        tokens: p.tokens!,
        documents: p.documents ?? 0,
      });
      documents += p.documents ?? 0;
      skipped += p.skipped ?? 0;
      inputBytes += p.end - p.start;
    }
  }
  const bytesPerToken = tokenDtypeFor(tokenizer.vocabSize) === 'uint16' ? 2 : 4;
  const stream = new ShardStream(shards, bytesPerToken);
  return {
    spec: src,
    manifest: mfile,
    shards,
    tokens: stream.length,
    documents,
    skipped,
    reused,
    tokenized,
    inputBytes,
    bytesPerToken,
    stream,
  };
}

/**
 * The shard of a part when it is there and sound: header, size, tokenizer and (first time this manifest
 * sees it, or with verify) payload hash. A damaged shard is removed and reported absent.
 */
async function checkedShard(
  file: string,
  p: ManifestPart,
  tokHash: string,
  vocabSize: number,
  verify: boolean,
): Promise<TokenFileHeader | undefined> {
  let header: TokenFileHeader;
  try {
    header = await readTokenFileHeader(file);
  } catch (err) {
    if ((err as Error).message.includes('cannot open')) return undefined;
    await fsp.rm(file, { force: true });
    return undefined;
  }
  const fresh = p.tokens === undefined;
  const sound =
    header.tokenizerHash === tokHash &&
    header.corpusHash === p.key &&
    header.vocabSize === vocabSize &&
    (fresh || header.count === p.tokens) &&
    (!(fresh || verify) || (await tokenFilePayloadHash(file, header)) === header.payloadHash);
  if (!sound) {
    await fsp.rm(file, { force: true });
    return undefined;
  }
  return header;
}

async function waitForShard(
  file: string,
  p: ManifestPart,
  tokHash: string,
  vocabSize: number,
  locks: LockSet,
): Promise<TokenFileHeader | undefined> {
  for (;;) {
    const header = await checkedShard(file, p, tokHash, vocabSize, false);
    if (header) return header;
    if (await locks.holderGone(p.key)) return undefined;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function runLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const lane = async (): Promise<void> => {
    while (failed === undefined && next < items.length) {
      const item = items[next++];
      try {
        await fn(item);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (failed !== undefined) throw failed;
}

// ---------------------------------------------------------------------------------------------------
// Locks

interface LockBody {
  host: string;
  pid: number;
  token: string;
}

/** The part locks this process holds, refreshed while held. */
class LockSet {
  private readonly held = new Map<string, string>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly dir: string,
    private readonly log: (line: string) => void,
  ) {
    this.timer = setInterval(() => {
      const now = new Date();
      for (const key of this.held.keys()) fs.utimes(this.file(key), now, now, () => undefined);
    }, LOCK_REFRESH_MS);
    this.timer.unref();
  }

  private file(key: string): string {
    return path.join(this.dir, `${key}.lock`);
  }

  /** Takes the part's lock, taking over a stale one (and removing its half-written shard). */
  async acquire(key: string): Promise<boolean> {
    const token = randomBytes(8).toString('hex');
    const body: LockBody = { host: os.hostname(), pid: process.pid, token };
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await fsp.writeFile(this.file(key), JSON.stringify(body), { flag: 'wx' });
        this.held.set(key, token);
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      if (!(await this.holderGone(key))) return false;
      this.log(`taking over the tokenisation of part ${key.slice(0, 12)} from a process that is gone`);
      await fsp.rm(this.file(key), { force: true });
      for (const f of await fsp.readdir(this.dir)) {
        if (f.startsWith(`.${key}.tok.`) && f.endsWith('.tmp')) await fsp.rm(path.join(this.dir, f), { force: true });
      }
    }
    return false;
  }

  /** True when the lock is gone, or its process is dead (same host) or silent for LOCK_STALE_MS. */
  async holderGone(key: string): Promise<boolean> {
    let st: fs.Stats;
    let body: LockBody;
    try {
      st = await fsp.stat(this.file(key));
      body = JSON.parse(await fsp.readFile(this.file(key), 'utf8')) as LockBody;
    } catch {
      return true;
    }
    if (body.host === os.hostname() && !pidAlive(body.pid)) return true;
    return Date.now() - st.mtimeMs > LOCK_STALE_MS;
  }

  async release(key: string): Promise<void> {
    if (!this.held.delete(key)) return;
    await fsp.rm(this.file(key), { force: true });
  }

  async releaseAll(): Promise<void> {
    clearInterval(this.timer);
    for (const key of [...this.held.keys()]) await this.release(key);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------------------
// Worker pool

interface PoolWorker {
  worker: Worker;
  ready: Promise<void>;
  busy: boolean;
}

class WorkerPool {
  private readonly workers: PoolWorker[] = [];
  private readonly idle: PoolWorker[] = [];
  private readonly waiters: ((w: PoolWorker) => void)[] = [];

  constructor(n: number, recipe: TokenizerRecipe) {
    for (let i = 0; i < n; i++) {
      const worker = startModuleWorker(import.meta.url, 'tokenize-worker', { workerData: { recipe } });
      const ready = new Promise<void>((resolve, reject) => {
        const onMessage = (m: { ready?: boolean }): void => {
          if (m.ready) {
            worker.off('message', onMessage);
            worker.off('error', reject);
            resolve();
          }
        };
        worker.on('message', onMessage);
        worker.once('error', reject);
      });
      const w: PoolWorker = { worker, ready, busy: false };
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  private async take(): Promise<PoolWorker> {
    const w = this.idle.pop();
    if (w) return w;
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private give(w: PoolWorker): void {
    const next = this.waiters.shift();
    if (next) next(w);
    else this.idle.push(w);
  }

  async run(task: EncodeTask, onProgress: (d: { bytes: number; tokens: number }) => void): Promise<EncodeResult> {
    const w = await this.take();
    await w.ready;
    try {
      return await new Promise<EncodeResult>((resolve, reject) => {
        const onMessage = (m: {
          progress?: { bytes: number; tokens: number };
          result?: EncodeResult;
          error?: { message: string; name: string };
        }): void => {
          if (m.progress) onProgress(m.progress);
          if (m.result || m.error) {
            w.worker.off('message', onMessage);
            w.worker.off('error', onError);
            if (m.result) resolve(m.result);
            else {
              const err = m.error!.name === 'DataError' ? new DataError(m.error!.message) : new Error(m.error!.message);
              reject(err);
            }
          }
        };
        const onError = (err: Error): void => {
          w.worker.off('message', onMessage);
          reject(err);
        };
        w.worker.on('message', onMessage);
        w.worker.once('error', onError);
        w.worker.postMessage({ task });
      });
    } finally {
      this.give(w);
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }
}

// ---------------------------------------------------------------------------------------------------
// Reading

const MAX_OPEN_SHARDS = 64;

/**
 * A source's token stream across its shards, read by position with positioned reads (no shard is
 * loaded whole). At most MAX_OPEN_SHARDS files are open at once.
 */
export class ShardStream implements TokenStream {
  readonly length: number;
  private readonly starts: Float64Array;
  private readonly fds = new Map<number, number>();
  private scratch = Buffer.alloc(1 << 16);

  constructor(
    private readonly shards: readonly ShardInfo[],
    private readonly bytesPerToken: 2 | 4,
  ) {
    this.starts = new Float64Array(shards.length + 1);
    for (let i = 0; i < shards.length; i++) this.starts[i + 1] = this.starts[i] + shards[i].tokens;
    this.length = this.starts[shards.length];
  }

  private shardAt(pos: number): number {
    let lo = 0;
    let hi = this.shards.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid] <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private fd(i: number): number {
    let fd = this.fds.get(i);
    if (fd !== undefined) {
      this.fds.delete(i);
      this.fds.set(i, fd);
      return fd;
    }
    if (this.fds.size >= MAX_OPEN_SHARDS) {
      const [oldest, ofd] = this.fds.entries().next().value as [number, number];
      fs.closeSync(ofd);
      this.fds.delete(oldest);
    }
    try {
      fd = fs.openSync(this.shards[i].file, 'r');
    } catch (err) {
      throw new Error(
        `${this.shards[i].file}: cannot open shard (${(err as NodeJS.ErrnoException).code}); prepare the data again`,
      );
    }
    this.fds.set(i, fd);
    return fd;
  }

  read(start: number, count: number, out: Int32Array, outOffset: number): void {
    if (start < 0 || count < 0 || start + count > this.length)
      throw new RangeError(`tokens [${start}, ${start + count}) are outside the stream of ${this.length}`);
    let pos = start;
    let o = outOffset;
    let left = count;
    while (left > 0) {
      const i = this.shardAt(pos);
      const within = pos - this.starts[i];
      const n = Math.min(left, this.shards[i].tokens - within);
      const bytes = n * this.bytesPerToken;
      if (this.scratch.length < bytes) this.scratch = Buffer.alloc(bytes);
      const got = fs.readSync(
        this.fd(i),
        this.scratch,
        0,
        bytes,
        TOKEN_FILE_HEADER_BYTES + within * this.bytesPerToken,
      );
      if (got !== bytes)
        throw new Error(
          `${this.shards[i].file}: short read (${got} of ${bytes} bytes); the shard was truncated, prepare the data again`,
        );
      const ids =
        this.bytesPerToken === 2
          ? new Uint16Array(this.scratch.buffer, this.scratch.byteOffset, n)
          : new Uint32Array(this.scratch.buffer, this.scratch.byteOffset, n);
      out.set(ids, o);
      pos += n;
      o += n;
      left -= n;
    }
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }
}

// ---------------------------------------------------------------------------------------------------
// Data specs

export interface OpenedData extends TokenData {
  /** Each source as prepared in the store. */
  prepared: PreparedSource[];
  close(): void;
}

/**
 * Prepares (when needed) and opens the sources a data spec names, as the split it selects: the whole
 * source, or the training or held-out side of its holdout. The one entry point every consumer uses.
 */
export async function openData(spec: string, tokenizer: Tokenizer, options: PrepareOptions): Promise<OpenedData> {
  const parsed = parseDataSpec(spec);
  const prepared: PreparedSource[] = [];
  for (const src of parsed.sources) {
    const p = await prepareSource(src, tokenizer, options);
    if (p.tokens === 0) {
      p.stream.close();
      for (const q of prepared) q.stream.close();
      throw new DataError(
        `corpus ${src.path} is empty: no documents${p.skipped > 0 ? ` (${p.skipped} skipped as invalid)` : ''}`,
      );
    }
    prepared.push(p);
  }
  const sources: SourceView[] = prepared.map((p) => ({
    name: p.spec.path,
    weight: p.spec.weight,
    stream: p.stream,
    // A source without a holdout is used whole (a spec file's validation sources, or any training one).
    ranges: p.spec.holdout > 0 ? holdoutRanges(p.stream.length, p.spec.holdout, parsed.split) : [[0, p.stream.length]],
  }));
  const empty = sources.find((s) => s.ranges.length === 0);
  if (empty)
    throw new DataError(
      `${parsed.text}: ${empty.name} has no ${parsed.split === 'val' ? 'held-out' : 'training'} tokens (${empty.stream.length} tokens in all)`,
    );
  return {
    spec: parsed.text,
    sources,
    prepared,
    close: () => {
      for (const p of prepared) p.stream.close();
    },
  };
}

/** A short summary of a prepared data spec, for logs: tokens, documents, shards. */
export function describeData(data: OpenedData): string {
  const tokens = data.sources.reduce((a, s) => a + s.ranges.reduce((b, [x, y]) => b + (y - x), 0), 0);
  const shards = data.prepared.reduce((a, p) => a + p.shards.length, 0);
  const docs = data.prepared.reduce((a, p) => a + p.documents, 0);
  return `${data.spec}: ${tokens} tokens${data.sources.length > 1 ? ` from ${data.sources.length} sources` : ''} (${docs} documents, ${shards} shard${shards === 1 ? '' : 's'})`;
}
