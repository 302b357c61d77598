/**
 * The safetensors format: an 8-byte little-endian header length, a JSON header naming each tensor's
 * dtype, shape and byte range, then the raw little-endian data. Reading validates every field so a
 * truncated or corrupt file is one clear error; writing is atomic.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';

import { writeFileAtomicSync } from '../atomic.js';

export type SafeDtype = 'F32' | 'F16' | 'BF16' | 'I32' | 'I64';

const DTYPE_BYTES: Record<SafeDtype, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8 };

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetensorsError';
  }
}

export interface TensorEntry {
  dtype: SafeDtype;
  shape: number[];
  /** Byte range within the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  file: string;
  tensors: Map<string, TensorEntry>;
  metadata: Record<string, string>;
  /** File offset where the data section starts. */
  dataStart: number;
}

/** A tensor read from disk, converted to the numeric type tfjs uses. */
export interface HostTensor {
  dtype: 'float32' | 'int32';
  shape: number[];
  data: Float32Array | Int32Array;
}

/** Reads and validates the header of a safetensors file. */
export function readHeader(file: string): SafetensorsHeader {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    throw new SafetensorsError(`${file}: cannot open (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size < 8) throw new SafetensorsError(`${file}: truncated: ${size} bytes, too short for a safetensors header`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(size - 8)) {
      throw new SafetensorsError(
        `${file}: header length ${headerLen} runs past the end of the file (${size} bytes); the file is truncated or not safetensors`,
      );
    }
    const n = Number(headerLen);
    const headerBuf = Buffer.alloc(n);
    fs.readSync(fd, headerBuf, 0, n, 8);
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(headerBuf.toString('utf8'));
    } catch (err) {
      throw new SafetensorsError(`${file}: header is not valid JSON (${(err as Error).message})`);
    }
    if (json === null || typeof json !== 'object' || Array.isArray(json)) {
      throw new SafetensorsError(`${file}: header is not a JSON object`);
    }
    const dataStart = 8 + n;
    const dataSize = size - dataStart;
    const tensors = new Map<string, TensorEntry>();
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(json)) {
      if (name === '__metadata__') {
        metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof e?.dtype !== 'string' || !(e.dtype in DTYPE_BYTES)) {
        throw new SafetensorsError(
          `${file}: tensor "${name}" has unsupported dtype ${JSON.stringify(e?.dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`,
        );
      }
      const dtype = e.dtype as SafeDtype;
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) {
        throw new SafetensorsError(`${file}: tensor "${name}" has an invalid shape ${JSON.stringify(e.shape)}`);
      }
      const offsets = e.data_offsets;
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isInteger(o) && o >= 0)) {
        throw new SafetensorsError(`${file}: tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}`);
      }
      const [begin, end] = offsets as number[];
      const shape = e.shape as number[];
      const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
      if (end - begin !== expected) {
        throw new SafetensorsError(
          `${file}: tensor "${name}" holds ${end - begin} bytes but shape ${JSON.stringify(shape)} of ${dtype} needs ${expected}`,
        );
      }
      if (end > dataSize) {
        throw new SafetensorsError(
          `${file}: tensor "${name}" ends at byte ${end} of the data section, which has only ${dataSize} bytes; the file is truncated`,
        );
      }
      tensors.set(name, { dtype, shape, begin, end });
    }
    return { file, tensors, metadata, dataStart };
  } finally {
    fs.closeSync(fd);
  }
}

function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++;
  return sign | half;
}

/** Decodes raw little-endian bytes of a tensor into f32 (floats) or i32 (integers). */
function decode(bytes: Buffer, entry: TensorEntry, name: string, file: string): HostTensor {
  const count = entry.shape.reduce((a, b) => a * b, 1);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (entry.dtype) {
    case 'F32': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getFloat32(4 * i, true);
      return { dtype: 'float32', shape: entry.shape, data: out };
    }
    case 'F16': {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
      return { dtype: 'float32', shape: entry.shape, data: out };
    }
    case 'BF16': {
      const out = new Float32Array(count);
      const u = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) u[i] = dv.getUint16(2 * i, true) << 16;
      return { dtype: 'float32', shape: entry.shape, data: out };
    }
    case 'I32': {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = dv.getInt32(4 * i, true);
      return { dtype: 'int32', shape: entry.shape, data: out };
    }
    case 'I64': {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) {
        const v = dv.getBigInt64(8 * i, true);
        if (v > 2147483647n || v < -2147483648n) {
          throw new SafetensorsError(`${file}: tensor "${name}" holds ${v}, outside the int32 range offshoot uses`);
        }
        out[i] = Number(v);
      }
      return { dtype: 'int32', shape: entry.shape, data: out };
    }
  }
}

/** Reads one tensor of an already-read header (only its bytes are read from disk). */
export function readTensor(header: SafetensorsHeader, name: string): HostTensor {
  const entry = header.tensors.get(name);
  if (!entry) throw new SafetensorsError(`${header.file}: no tensor named "${name}"`);
  const bytes = Buffer.alloc(entry.end - entry.begin);
  const fd = fs.openSync(header.file, 'r');
  try {
    const got = fs.readSync(fd, bytes, 0, bytes.length, header.dataStart + entry.begin);
    if (got !== bytes.length) {
      throw new SafetensorsError(
        `${header.file}: tensor "${name}" is truncated (read ${got} of ${bytes.length} bytes)`,
      );
    }
  } finally {
    fs.closeSync(fd);
  }
  return decode(bytes, entry, name, header.file);
}

/** Reads every tensor of a file. */
export function readSafetensors(file: string): { tensors: Map<string, HostTensor>; metadata: Record<string, string> } {
  const header = readHeader(file);
  const tensors = new Map<string, HostTensor>();
  for (const name of header.tensors.keys()) tensors.set(name, readTensor(header, name));
  return { tensors, metadata: header.metadata };
}

export type WriteDtype = 'F32' | 'BF16' | 'F16' | 'I32';

export interface TensorToWrite {
  shape: number[];
  data: Float32Array | Int32Array;
  dtype: WriteDtype;
}

function encode(t: TensorToWrite): Buffer {
  const n = t.data.length;
  switch (t.dtype) {
    case 'F32':
    case 'I32':
      // Node runs little-endian on every supported platform, as does the format. A view, not a copy:
      // a checkpoint's tensors are written before the caller gets them back.
      return Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    case 'BF16': {
      const src = new Uint32Array(Float32Array.from(t.data).buffer);
      const out = Buffer.alloc(2 * n);
      for (let i = 0; i < n; i++) {
        const x = src[i];
        // Round to nearest even, keeping NaN a NaN.
        const nan = (x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0;
        const bf = nan ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
        out.writeUInt16LE(bf & 0xffff, 2 * i);
      }
      return out;
    }
    case 'F16': {
      const out = Buffer.alloc(2 * n);
      for (let i = 0; i < n; i++) out.writeUInt16LE(f32ToF16(t.data[i]), 2 * i);
      return out;
    }
  }
}

/**
 * Writes tensors (in the given order) atomically. The sha256 of the data section goes into the
 * metadata as `offshoot_sha256` so a reader can detect corruption; returns that hash.
 */
export function writeSafetensors(
  file: string,
  tensors: Map<string, TensorToWrite>,
  metadata: Record<string, string> = {},
): string {
  const chunks: Buffer[] = [];
  const header: Record<string, unknown> = {};
  let offset = 0;
  const hash = createHash('sha256');
  for (const [name, t] of tensors) {
    const expected = t.shape.reduce((a, b) => a * b, 1);
    if (expected !== t.data.length) {
      throw new SafetensorsError(
        `${file}: tensor "${name}" has ${t.data.length} values for shape ${JSON.stringify(t.shape)}`,
      );
    }
    const bytes = encode(t);
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    chunks.push(bytes);
    hash.update(bytes);
  }
  const digest = hash.digest('hex');
  header.__metadata__ = { format: 'pt', ...metadata, offshoot_sha256: digest };
  let headerJson = Buffer.from(JSON.stringify(header), 'utf8');
  // Pad the header with spaces so the data section is 8-byte aligned, as the reference writer does.
  const pad = (8 - (headerJson.length % 8)) % 8;
  headerJson = Buffer.concat([headerJson, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(headerJson.length));
  writeFileAtomicSync(file, [len, headerJson, ...chunks]);
  return digest;
}

/** Verifies the `offshoot_sha256` a file carries (files written elsewhere carry none: true). */
export function verifyDataHash(header: SafetensorsHeader): boolean {
  const expected = header.metadata.offshoot_sha256;
  if (!expected) return true;
  const hash = createHash('sha256');
  const fd = fs.openSync(header.file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const buf = Buffer.alloc(1 << 20);
    let pos = header.dataStart;
    while (pos < size) {
      const got = fs.readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
      if (got <= 0) break;
      hash.update(buf.subarray(0, got));
      pos += got;
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex') === expected;
}
