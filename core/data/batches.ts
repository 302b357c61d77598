/**
 * Batches from a token stream.
 *
 * Training batches are sampled from (seed, step) alone: row r of step s starts at a position given by a
 * counter-based hash of (seed, s, r). There is no generator state to save, so a run resumed at step s sees
 * exactly the batches it would have seen had it not stopped. Validation batches are the stream's
 * non-overlapping windows in order.
 */

/** A token stream: a token file's ids, or any array of ids. */
export type TokenSource = ArrayLike<number>;

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

function checkPositiveInt(v: number, name: string): void {
  if (!Number.isSafeInteger(v) || v < 1) throw new Error(`${name} must be a positive integer, got ${v}`);
}

function checkLength(n: number, seqLen: number): void {
  if (n < seqLen + 1) {
    throw new Error(`corpus has ${n} tokens, too short for seqLen ${seqLen}: need at least seqLen + 1 = ${seqLen + 1}`);
  }
}

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

/** Start positions of the rows of the training batch for (seed, step): each in [0, numTokens - seqLen - 1]. */
export function sampleOffsets(numTokens: number, options: SampleBatchOptions): number[] {
  const { batchSize, seqLen, seed, step } = options;
  checkPositiveInt(batchSize, 'batchSize');
  checkPositiveInt(seqLen, 'seqLen');
  if (!Number.isSafeInteger(seed)) throw new Error(`seed must be a safe integer, got ${seed}`);
  if (!Number.isSafeInteger(step) || step < 0) throw new Error(`step must be a non-negative integer, got ${step}`);
  checkLength(numTokens, seqLen);
  const positions = numTokens - seqLen;
  const out = new Array<number>(batchSize);
  for (let r = 0; r < batchSize; r++) out[r] = counterHash53(seed, step, r) % positions;
  return out;
}

function copyWindow(tokens: TokenSource, start: number, len: number, dst: Int32Array, off: number): void {
  if (ArrayBuffer.isView(tokens) && typeof (tokens as Uint32Array).subarray === 'function') {
    dst.set((tokens as Uint32Array).subarray(start, start + len), off);
  } else {
    for (let i = 0; i < len; i++) dst[off + i] = tokens[start + i];
  }
}

/**
 * The training batch for (seed, step): batchSize windows of seqLen + 1 tokens at positions hashed from
 * (seed, step, row), split into input and target (input shifted by one).
 */
export function sampleBatch(tokens: TokenSource, options: SampleBatchOptions): Batch {
  const starts = sampleOffsets(tokens.length, options);
  const { batchSize, seqLen } = options;
  const input = new Int32Array(batchSize * seqLen);
  const target = new Int32Array(batchSize * seqLen);
  for (let r = 0; r < batchSize; r++) {
    copyWindow(tokens, starts[r], seqLen, input, r * seqLen);
    copyWindow(tokens, starts[r] + 1, seqLen, target, r * seqLen);
  }
  return { input, target, batchSize, seqLen };
}

/** Number of validation windows evalBatches yields (before grouping into batches). */
export function evalWindowCount(numTokens: number, options: EvalBatchOptions): number {
  checkPositiveInt(options.batchSize, 'batchSize');
  checkPositiveInt(options.seqLen, 'seqLen');
  checkLength(numTokens, options.seqLen);
  let windows = Math.floor((numTokens - 1) / options.seqLen);
  if (options.maxTokens !== undefined) {
    if (!Number.isFinite(options.maxTokens) || options.maxTokens < 0) throw new Error(`maxTokens must be non-negative, got ${options.maxTokens}`);
    windows = Math.min(windows, Math.max(1, Math.floor(options.maxTokens / options.seqLen)));
  }
  return windows;
}

/**
 * Validation batches: non-overlapping windows [k·seqLen, (k+1)·seqLen] in stream order, batchSize at a
 * time (the last batch may have fewer rows; its batchSize says how many). Deterministic.
 */
export function* evalBatches(tokens: TokenSource, options: EvalBatchOptions): Generator<Batch> {
  const windows = evalWindowCount(tokens.length, options);
  const { batchSize, seqLen } = options;
  for (let w0 = 0; w0 < windows; w0 += batchSize) {
    const rows = Math.min(batchSize, windows - w0);
    const input = new Int32Array(rows * seqLen);
    const target = new Int32Array(rows * seqLen);
    for (let r = 0; r < rows; r++) {
      const start = (w0 + r) * seqLen;
      copyWindow(tokens, start, seqLen, input, r * seqLen);
      copyWindow(tokens, start + 1, seqLen, target, r * seqLen);
    }
    yield { input, target, batchSize: rows, seqLen };
  }
}
