/**
 * The wire encoding of top-k answers (proto/offshoot/teacher/v1/teacher.proto): indices packed as
 * uint16 (vocabularies up to 65536) or uint32, logits as float16 or float32, the log-normaliser as
 * float32, all little-endian and row-major. Pure host code: no tensors.
 */
import { IndexEncoding, type TopKResponse, ValueEncoding } from '../../proto/gen/offshoot/teacher/v1/teacher.js';

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // Typed arrays use the host's byte order; the wire format is little-endian.
  throw new Error(
    'offshoot teacher service: big-endian hosts are not supported (the wire format is little-endian typed arrays)',
  );
}

export type ValueEncodingName = 'f16' | 'f32';

/** The teacher's top-k answer for one request, on the host. */
export interface TopKResult {
  id: number;
  /** batch_size × seq_len of the request. */
  positions: number;
  k: number;
  temperature: number;
  /** [positions × k] token ids, per position in descending order of logit. */
  indices: Int32Array;
  /** [positions × k] raw logits of those tokens (decoded to float32 when sent as float16). */
  logits: Float32Array;
  /** [positions]: logsumexp over the vocabulary of logits / temperature. */
  logNormaliser: Float32Array;
}

export function valueEncodingOf(name: ValueEncodingName): ValueEncoding {
  return name === 'f32' ? ValueEncoding.VALUE_ENCODING_FLOAT32 : ValueEncoding.VALUE_ENCODING_FLOAT16;
}

export function indexEncodingFor(vocabSize: number): IndexEncoding {
  return vocabSize <= 65536 ? IndexEncoding.INDEX_ENCODING_UINT16 : IndexEncoding.INDEX_ENCODING_UINT32;
}

// ---------------------------------------------------------------------------------------------------
// IEEE 754 binary16.

/** float32 values to binary16 bit patterns, rounding to nearest even (overflow to ±Infinity). */
export function toFloat16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    const sign = (b >>> 16) & 0x8000;
    const exp = (b >>> 23) & 0xff;
    let mant = b & 0x7fffff;
    if (exp === 0xff) {
      out[i] = sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
      continue;
    }
    const e = exp - 112; // rebias 127 → 15
    if (e >= 0x1f) {
      out[i] = sign | 0x7c00;
      continue;
    }
    if (e <= 0) {
      // Subnormal half (or zero): value = m · 2^-24 with m = (1.mant) · 2^(exp − 103).
      if (e < -10) {
        out[i] = sign;
        continue;
      }
      mant |= 0x800000;
      const shift = 14 - e;
      let half = mant >>> shift;
      const rem = mant & ((1 << shift) - 1);
      const mid = 1 << (shift - 1);
      if (rem > mid || (rem === mid && (half & 1) === 1)) half++;
      out[i] = sign | half;
      continue;
    }
    let half = (e << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    // A carry out of the mantissa bumps the exponent, which is the correct rounding (up to Infinity).
    if (rem > 0x1000 || (rem === 0x1000 && (half & 1) === 1)) half++;
    out[i] = sign | half;
  }
  return out;
}

let halfTable: Float32Array | undefined;

function float16Table(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) t[h] = sign * m * 2 ** -24;
    else if (e === 0x1f) t[h] = m ? NaN : sign * Infinity;
    else t[h] = sign * (1 + m / 1024) * 2 ** (e - 15);
  }
  halfTable = t;
  return t;
}

/** binary16 bit patterns to float32 values. */
export function fromFloat16(bits: Uint16Array): Float32Array {
  const table = float16Table();
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

/** The largest absolute error binary16 rounding makes on x (half a unit in the last place). */
export function float16Tolerance(x: number): number {
  const a = Math.abs(x);
  if (a < 2 ** -14) return 2 ** -25;
  return 2 ** (Math.floor(Math.log2(a)) - 11);
}

// ---------------------------------------------------------------------------------------------------
// Byte views.

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** A typed array over `bytes`, copying only when the bytes are not aligned for it. */
function viewAs<T>(
  bytes: Uint8Array,
  width: number,
  make: (buffer: ArrayBufferLike, offset: number, length: number) => T,
  field: string,
): T {
  if (bytes.byteLength % width !== 0)
    throw new Error(`${field}: ${bytes.byteLength} bytes is not a whole number of ${width}-byte values`);
  if (bytes.byteOffset % width === 0) return make(bytes.buffer, bytes.byteOffset, bytes.byteLength / width);
  // A copy into a fresh buffer (Buffer#slice would be a view at the same offset).
  const copy = new Uint8Array(bytes);
  return make(copy.buffer, 0, copy.byteLength / width);
}

// ---------------------------------------------------------------------------------------------------
// Messages.

export interface EncodeInput {
  id: number;
  positions: number;
  k: number;
  temperature: number;
  vocabSize: number;
  encoding: ValueEncoding;
  /** [positions × k] (int32 from the backend's top-k). */
  indices: Int32Array;
  /** [positions × k] float32 logits. */
  values: Float32Array;
  /** [positions] float32. */
  logNormaliser: Float32Array;
}

/** The wire message of one answer. */
export function encodeTopK(input: EncodeInput): TopKResponse {
  const indexEncoding = indexEncodingFor(input.vocabSize);
  const indices =
    indexEncoding === IndexEncoding.INDEX_ENCODING_UINT16
      ? Uint16Array.from(input.indices)
      : new Uint32Array(input.indices);
  const logits = input.encoding === ValueEncoding.VALUE_ENCODING_FLOAT32 ? input.values : toFloat16(input.values);
  return {
    id: input.id,
    positions: input.positions,
    topK: input.k,
    temperature: input.temperature,
    indexEncoding,
    indices: bytesOf(indices),
    valueEncoding: input.encoding,
    logits: bytesOf(logits),
    logNormaliser: bytesOf(input.logNormaliser),
  };
}

/** Approximate encoded size of an answer (for buffer accounting). */
export function encodedBytes(message: TopKResponse): number {
  return message.indices.byteLength + message.logits.byteLength + message.logNormaliser.byteLength + 32;
}

/** Decodes an answer, checking that its byte fields have the sizes its header implies. */
export function decodeTopK(message: TopKResponse): TopKResult {
  const { positions, topK: k } = message;
  const n = positions * k;
  let indices: Int32Array;
  if (message.indexEncoding === IndexEncoding.INDEX_ENCODING_UINT16) {
    indices = Int32Array.from(viewAs(message.indices, 2, (b, o, l) => new Uint16Array(b, o, l), 'indices'));
  } else if (message.indexEncoding === IndexEncoding.INDEX_ENCODING_UINT32) {
    indices = new Int32Array(viewAs(message.indices, 4, (b, o, l) => new Uint32Array(b, o, l), 'indices'));
  } else {
    throw new Error(`answer ${message.id}: unknown index encoding ${message.indexEncoding}`);
  }
  let logits: Float32Array;
  if (message.valueEncoding === ValueEncoding.VALUE_ENCODING_FLOAT16) {
    logits = fromFloat16(viewAs(message.logits, 2, (b, o, l) => new Uint16Array(b, o, l), 'logits'));
  } else if (message.valueEncoding === ValueEncoding.VALUE_ENCODING_FLOAT32) {
    logits = viewAs(message.logits, 4, (b, o, l) => new Float32Array(b, o, l), 'logits');
  } else {
    throw new Error(`answer ${message.id}: unknown value encoding ${message.valueEncoding}`);
  }
  const logNormaliser = viewAs(message.logNormaliser, 4, (b, o, l) => new Float32Array(b, o, l), 'log_normaliser');
  if (indices.length !== n || logits.length !== n || logNormaliser.length !== positions) {
    throw new Error(
      `answer ${message.id}: ${indices.length} indices, ${logits.length} logits and ${logNormaliser.length} normalisers ` +
        `do not match ${positions} positions × top-k ${k}`,
    );
  }
  return { id: message.id, positions, k, temperature: message.temperature, indices, logits, logNormaliser };
}
