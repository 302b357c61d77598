/**
 * Batches from token streams.
 *
 * A stream is cut into windows of seqLen + 1 tokens at stride seqLen (window k starts at k·seqLen of
 * its range; the last token of one window is the first of the next, as the target of its last input).
 * Windows never cross the ends of a source's ranges (its training or held-out side).
 *
 * Training batches go through the windows in epochs: sample i of a source belongs to epoch
 * floor(i / W) and is window π_e(i mod W), where π_e is a seeded pseudo-random permutation of the W
 * windows (a Feistel network with cycle walking, keyed by (seed, source, epoch)). Every window is seen
 * exactly once per epoch, and the batch of a step is a pure function of (seed, step): a run resumed at
 * step s sees exactly the batches it would have seen had it not stopped, with no loader state saved.
 *
 * A mixture of sources assigns the samples of every period of MIX_PERIOD to sources in proportion to
 * their weights (smooth weighted round-robin, so each source's share holds over short spans too); each
 * source goes through its own epochs. Validation batches take the windows in order, sources
 * interleaved by the same schedule.
 */

/** Token ids by position: an array in memory, or a store's shards (store.ts). */
export interface TokenStream {
  readonly length: number;
  /** Copies tokens [start, start + count) to out[outOffset...]. */
  read(start: number, count: number, out: Int32Array, outOffset: number): void;
}

/** One source of a data spec: its stream, the ranges of it this split uses, and its mixture weight. */
export interface SourceView {
  name: string;
  weight: number;
  stream: TokenStream;
  ranges: readonly (readonly [number, number])[];
}

/** What batches are drawn from: one source or a weighted mixture. */
export interface TokenData {
  spec: string;
  sources: readonly SourceView[];
}

/** Anything batches accept: opened data, a stream, or a plain array of ids (one source, all of it). */
export type TokenSource = TokenData | TokenStream | ArrayLike<number>;

export interface Batch {
  /** batchSize x seqLen ids, row-major. */
  input: Int32Array;
  /** input shifted by one: target[r, t] is the token after input[r, t]. */
  target: Int32Array;
  batchSize: number;
  seqLen: number;
}

export interface SampleBatchOptions {
  batchSize: number;
  seqLen: number;
  /** Any safe integer. */
  seed: number;
  /** Non-negative safe integer. */
  step: number;
}

export interface EvalBatchOptions {
  batchSize: number;
  seqLen: number;
  /** Use at most this many input tokens (whole windows; at least one window). */
  maxTokens?: number;
}

/** Samples per period of the mixture schedule: weights are honoured to 1/MIX_PERIOD. */
export const MIX_PERIOD = 4096;
/** A holdout cuts each source into this many blocks and holds out an evenly spread share of them. */
export const HOLDOUT_BLOCKS = 1000;

// ---------------------------------------------------------------------------------------------------
// Streams and data

/** A stream over ids in memory. */
export function arrayStream(ids: ArrayLike<number>): TokenStream {
  const typed =
    ArrayBuffer.isView(ids) && typeof (ids as Uint32Array).subarray === 'function' ? (ids as Uint32Array) : null;
  return {
    length: ids.length,
    read(start, count, out, outOffset) {
      if (start < 0 || start + count > ids.length)
        throw new RangeError(`tokens [${start}, ${start + count}) are outside the stream of ${ids.length}`);
      if (typed) out.set(typed.subarray(start, start + count), outOffset);
      else for (let i = 0; i < count; i++) out[outOffset + i] = ids[start + i];
    },
  };
}

function isTokenData(x: TokenSource): x is TokenData {
  return typeof (x as TokenData).sources === 'object' && Array.isArray((x as TokenData).sources);
}

function isStream(x: TokenSource): x is TokenStream {
  return typeof (x as TokenStream).read === 'function';
}

/** The data a TokenSource stands for (a stream or an array: one source, all of it). */
export function asTokenData(x: TokenSource): TokenData {
  if (isTokenData(x)) return x;
  const stream = isStream(x) ? x : arrayStream(x);
  return { spec: 'tokens', sources: [{ name: 'tokens', weight: 1, stream, ranges: [[0, stream.length]] }] };
}

/**
 * The ranges of a stream of `length` tokens that a split uses, for a holdout fraction f: the stream
 * cut into HOLDOUT_BLOCKS blocks, block b held out when floor((b+1)·f) > floor(b·f) (an even spread,
 * round(f·blocks) of them). f = 0: the whole stream is training data.
 */
export function holdoutRanges(length: number, fraction: number, split: 'train' | 'val'): [number, number][] {
  if (fraction <= 0) return split === 'train' && length > 0 ? [[0, length]] : [];
  const out: [number, number][] = [];
  const blocks = Math.min(HOLDOUT_BLOCKS, length);
  for (let b = 0; b < blocks; b++) {
    const held = Math.floor((b + 1) * fraction) > Math.floor(b * fraction);
    if (held !== (split === 'val')) continue;
    const start = Math.floor((b * length) / blocks);
    const end = Math.floor(((b + 1) * length) / blocks);
    const last = out[out.length - 1];
    if (last && last[1] === start) last[1] = end;
    else if (end > start) out.push([start, end]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Windows

function checkPositiveInt(v: number, name: string): void {
  if (!Number.isSafeInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, got ${v}`);
}

/** The windows of one source at one sequence length: count, and where window k starts. */
class Windows {
  readonly count: number;
  private readonly firstWindow: Float64Array;

  constructor(
    private readonly ranges: readonly (readonly [number, number])[],
    private readonly seqLen: number,
  ) {
    this.firstWindow = new Float64Array(ranges.length + 1);
    for (let i = 0; i < ranges.length; i++) {
      const [a, b] = ranges[i];
      this.firstWindow[i + 1] = this.firstWindow[i] + Math.max(0, Math.floor((b - a - 1) / seqLen));
    }
    this.count = this.firstWindow[ranges.length];
  }

  start(k: number): number {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.firstWindow[mid] <= k) lo = mid;
      else hi = mid - 1;
    }
    return this.ranges[lo][0] + (k - this.firstWindow[lo]) * this.seqLen;
  }
}

const windowCache = new WeakMap<SourceView, Map<number, Windows>>();

function windowsOf(src: SourceView, seqLen: number): Windows {
  let bySeq = windowCache.get(src);
  if (!bySeq) windowCache.set(src, (bySeq = new Map()));
  let w = bySeq.get(seqLen);
  if (!w) {
    w = new Windows(src.ranges, seqLen);
    if (w.count === 0) {
      const tokens = src.ranges.reduce((a, [x, y]) => a + (y - x), 0);
      throw new Error(
        `${src.name}: ${tokens} tokens${src.ranges.length > 1 ? ` in ${src.ranges.length} ranges` : ''}, too short for seqLen ${seqLen}: need at least seqLen + 1 = ${seqLen + 1} in one range`,
      );
    }
    bySeq.set(seqLen, w);
  }
  return w;
}

// ---------------------------------------------------------------------------------------------------
// Hashing and permutations

/** lowbias32 integer hash (Chris Wellons' hash-prospector). */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x7feb352d);
  x ^= x >>> 15;
  x = Math.imul(x, 0x846ca68b);
  x ^= x >>> 16;
  return x >>> 0;
}

function lo32(x: number): number {
  return ((x % 4294967296) + 4294967296) % 4294967296;
}

function hi32(x: number): number {
  return Math.floor(x / 4294967296) >>> 0;
}

/**
 * Counter-based hash of (seed, step, row) to a uniform integer in [0, 2^53). Pure: the same arguments
 * always give the same value.
 */
export function counterHash53(seed: number, step: number, row: number): number {
  const words = [lo32(seed), hi32(seed), lo32(step), hi32(step), lo32(row)];
  let a = 0x243f6a88;
  let b = 0x85a308d3;
  for (const w of words) {
    a = mix32((a ^ w) + 0x9e3779b9);
    b = mix32((b + Math.imul(w ^ 0x5bd1e995, 0x27d4eb2d)) >>> 0);
  }
  a = mix32(a ^ b);
  b = mix32((b ^ a) + 0x632be5ab);
  return (a & 0x1fffff) * 4294967296 + b;
}

const FEISTEL_ROUNDS = 6;

/**
 * A seeded bijection of [0, n) (n < 2^52): a balanced Feistel network on the smallest even number of
 * bits covering n, walked until it lands inside [0, n) (fewer than 4 steps on average).
 */
export function permuteIndex(i: number, n: number, seed: number, epoch: number, source: number): number {
  if (n <= 1) return 0;
  let bits = Math.ceil(Math.log2(n));
  if (bits % 2 === 1) bits++;
  const half = bits / 2;
  const size = 2 ** half;
  const keys = new Array<number>(FEISTEL_ROUNDS);
  for (let r = 0; r < FEISTEL_ROUNDS; r++) keys[r] = counterHash53(seed, epoch, source * 64 + r) % 4294967296;
  let x = i;
  do {
    let left = Math.floor(x / size);
    let right = x % size;
    for (let r = 0; r < FEISTEL_ROUNDS; r++) {
      const f = mix32((right ^ keys[r]) >>> 0) % size;
      const next = (left + f) % size;
      left = right;
      right = next;
    }
    x = left * size + right;
  } while (x >= n);
  return x;
}

// ---------------------------------------------------------------------------------------------------
// Mixture schedule

interface Schedule {
  /** Samples of each source per period. */
  perPeriod: Int32Array;
  /** Source of each slot of the period, and samples of that source in the period before the slot. */
  source: Uint16Array;
  before: Uint32Array;
}

const scheduleCache = new WeakMap<readonly SourceView[], Schedule>();

/** Slots of a period per source (largest remainder, at least one each) in smooth round-robin order. */
function scheduleOf(sources: readonly SourceView[]): Schedule {
  const hit = scheduleCache.get(sources);
  if (hit) return hit;
  const k = sources.length;
  for (const s of sources)
    if (!(s.weight > 0) || !Number.isFinite(s.weight))
      throw new Error(`${s.name}: mixture weight ${s.weight} must be a positive number`);
  const total = sources.reduce((a, s) => a + s.weight, 0);
  const exact = sources.map((s) => (s.weight / total) * MIX_PERIOD);
  const per = new Int32Array(k);
  for (let i = 0; i < k; i++) per[i] = Math.max(1, Math.floor(exact[i]));
  let left = MIX_PERIOD - per.reduce((a, b) => a + b, 0);
  const order = [...exact.keys()].sort(
    (a, b) => exact[b] - Math.floor(exact[b]) - (exact[a] - Math.floor(exact[a])) || a - b,
  );
  for (let j = 0; left > 0; j = (j + 1) % k, left--) per[order[j]]++;
  for (let j = 0; left < 0; j = (j + 1) % k) {
    const i = order[k - 1 - j];
    if (per[i] > 1) {
      per[i]--;
      left++;
    }
  }
  const source = new Uint16Array(MIX_PERIOD);
  const before = new Uint32Array(MIX_PERIOD);
  const credit = new Float64Array(k);
  const taken = new Uint32Array(k);
  for (let slot = 0; slot < MIX_PERIOD; slot++) {
    let best = 0;
    for (let i = 0; i < k; i++) {
      credit[i] += per[i];
      if (credit[i] > credit[best]) best = i;
    }
    credit[best] -= MIX_PERIOD;
    source[slot] = best;
    before[slot] = taken[best]++;
  }
  const schedule = { perPeriod: per, source, before };
  scheduleCache.set(sources, schedule);
  return schedule;
}

/** Which source sample i of a mixture draws from, and that source's own sample number. */
function mixtureSample(sources: readonly SourceView[], i: number): [number, number] {
  if (sources.length === 1) return [0, i];
  const s = scheduleOf(sources);
  const slot = i % MIX_PERIOD;
  const src = s.source[slot];
  return [src, Math.floor(i / MIX_PERIOD) * s.perPeriod[src] + s.before[slot]];
}

// ---------------------------------------------------------------------------------------------------
// Batches

function checkSampleOptions(options: SampleBatchOptions): void {
  const { batchSize, seqLen, seed, step } = options;
  checkPositiveInt(batchSize, 'batchSize');
  checkPositiveInt(seqLen, 'seqLen');
  if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a safe integer, got ${seed}`);
  if (!Number.isSafeInteger(step) || step < 0) throw new Error(`step must be a non-negative integer, got ${step}`);
}

/** Where each row of a training batch comes from: source, epoch, window index and start token. */
export interface BatchRow {
  source: number;
  epoch: number;
  window: number;
  start: number;
}

/** The rows of the training batch for (seed, step), without reading any tokens. */
export function batchRows(data: TokenSource, options: SampleBatchOptions): BatchRow[] {
  checkSampleOptions(options);
  const d = asTokenData(data);
  const { batchSize, seqLen, seed, step } = options;
  const rows: BatchRow[] = [];
  for (let r = 0; r < batchSize; r++) {
    const [source, n] = mixtureSample(d.sources, step * batchSize + r);
    const w = windowsOf(d.sources[source], seqLen);
    const epoch = Math.floor(n / w.count);
    const window = permuteIndex(n % w.count, w.count, seed, epoch, source);
    rows.push({ source, epoch, window, start: w.start(window) });
  }
  return rows;
}

function fill(d: TokenData, rows: readonly { source: number; start: number }[], seqLen: number): Batch {
  const n = rows.length;
  const input = new Int32Array(n * seqLen);
  const target = new Int32Array(n * seqLen);
  const window = new Int32Array(seqLen + 1);
  for (let r = 0; r < n; r++) {
    d.sources[rows[r].source].stream.read(rows[r].start, seqLen + 1, window, 0);
    input.set(window.subarray(0, seqLen), r * seqLen);
    target.set(window.subarray(1), r * seqLen);
  }
  return { input, target, batchSize: n, seqLen };
}

/**
 * The training batch for (seed, step): batchSize windows of seqLen + 1 tokens from the epoch
 * permutations (see the module comment), split into input and target (input shifted by one).
 */
export function sampleBatch(data: TokenSource, options: SampleBatchOptions): Batch {
  const d = asTokenData(data);
  return fill(d, batchRows(d, options), options.seqLen);
}

/** Windows of one source per epoch at seqLen (what "an epoch" means for a source). */
export function windowCount(data: TokenSource, seqLen: number, source = 0): number {
  checkPositiveInt(seqLen, 'seqLen');
  return windowsOf(asTokenData(data).sources[source], seqLen).count;
}

/** Number of validation windows evalBatches yields (before grouping into batches). */
export function evalWindowCount(data: TokenSource, options: EvalBatchOptions): number {
  checkPositiveInt(options.batchSize, 'batchSize');
  checkPositiveInt(options.seqLen, 'seqLen');
  const d = asTokenData(data);
  let windows = d.sources.reduce((a, s) => a + windowsOf(s, options.seqLen).count, 0);
  if (options.maxTokens !== undefined) {
    if (!Number.isFinite(options.maxTokens) || options.maxTokens < 0)
      throw new Error(`maxTokens must be non-negative, got ${options.maxTokens}`);
    windows = Math.min(windows, Math.max(1, Math.floor(options.maxTokens / options.seqLen)));
  }
  return windows;
}

/**
 * Validation batches: each source's windows in stream order (sources interleaved by the mixture
 * schedule, a source that runs out skipped), batchSize at a time (the last batch may have fewer rows;
 * its batchSize says how many). Deterministic.
 */
export function* evalBatches(data: TokenSource, options: EvalBatchOptions): Generator<Batch> {
  const d = asTokenData(data);
  const total = evalWindowCount(d, options);
  const { batchSize, seqLen } = options;
  const counts = d.sources.map((s) => windowsOf(s, seqLen).count);
  const taken = new Array<number>(d.sources.length).fill(0);
  let rows: { source: number; start: number }[] = [];
  let emitted = 0;
  for (let i = 0; emitted < total; i++) {
    const [source] = mixtureSample(d.sources, i);
    if (taken[source] >= counts[source]) continue;
    rows.push({ source, start: windowsOf(d.sources[source], seqLen).start(taken[source]++) });
    emitted++;
    if (rows.length === batchSize || emitted === total) {
      yield fill(d, rows, seqLen);
      rows = [];
    }
  }
}
