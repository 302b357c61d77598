/**
 * tfjs's elementwise kernels on the GPU (kernels/elementwise.cu): unary and binary math with
 * broadcasting, casts, AddN, fills, and the kernels that only relabel data (Reshape, Identity).
 */
import * as tf from '../tfjs.js';

import { type Dim3, type KernelArg, struct32 } from './device.js';
import { gpuKernel } from './kernels.js';
import { type Storage, storageOf } from './storage.js';
import type { CudaBackend } from './tfjs-backend.js';

/** Storage codes of common.cuh. */
export const ST: Record<Storage, number> = { f32: 0, bf16: 1, i32: 2, u8: 3 };
const MAX_RANK = 6;

/** Blocks of 256 threads for a grid-stride loop over n elements. */
export function grid1d(n: number, device: { info: { multiprocessors: number } }): Dim3 {
  return [Math.max(1, Math.min(Math.ceil(n / 256), device.info.multiprocessors * 16)), 1, 1];
}
export const BLOCK256: Dim3 = [256, 1, 1];

const UNARY: Record<string, number> = {
  Neg: 0,
  Exp: 1,
  Log: 2,
  Sqrt: 3,
  Rsqrt: 4,
  Square: 5,
  Abs: 6,
  Erf: 7,
  Tanh: 8,
  Sigmoid: 9,
  Relu: 10,
  Reciprocal: 11,
  Log1p: 12,
  Expm1: 13,
  Sin: 14,
  Cos: 15,
  Floor: 16,
  Ceil: 17,
  Round: 18,
  Sign: 19,
  IsNan: 21,
  IsInf: 22,
  LogicalNot: 23,
  Elu: 24,
};
const BOOL_UNARY = new Set(['IsNan', 'IsInf', 'LogicalNot']);
/** Unary kernels of the operations (no tfjs kernel of that name). */
const OPERATION_UNARY: Record<string, number> = { Gelu: 20 };

const BINARY: Record<string, number> = {
  Add: 0,
  Sub: 1,
  Multiply: 2,
  RealDiv: 3,
  Maximum: 4,
  Minimum: 5,
  SquaredDifference: 6,
  Pow: 7,
  Equal: 8,
  NotEqual: 9,
  Less: 10,
  LessEqual: 11,
  Greater: 12,
  GreaterEqual: 13,
  LogicalAnd: 14,
  LogicalOr: 15,
  FloorDiv: 16,
  Atan2: 17,
  DivNoNan: 18,
};
const COMPARISONS = new Set([
  'Equal',
  'NotEqual',
  'Less',
  'LessEqual',
  'Greater',
  'GreaterEqual',
  'LogicalAnd',
  'LogicalOr',
]);
/** Binary ops the kernel computes exactly on int32 (the others go through the host for int32). */
const INT_EXACT = new Set([
  'Add',
  'Sub',
  'Multiply',
  'Maximum',
  'Minimum',
  'SquaredDifference',
  'Equal',
  'NotEqual',
  'Less',
  'LessEqual',
  'Greater',
  'GreaterEqual',
  'FloorDiv',
]);

const isFloat = (s: Storage) => s === 'f32' || s === 'bf16';

/** y = op(x) for float x; outputs f32 (or `out`). */
export function unary(b: CudaBackend, name: string, x: tf.TensorInfo, out: Storage = 'f32'): tf.TensorInfo {
  const code = UNARY[name] ?? OPERATION_UNARY[name];
  if (code === undefined) throw new Error(`cuda backend: no unary kernel ${name}`);
  const xo = b.operand(x);
  const dtype: tf.DataType = BOOL_UNARY.has(name) ? 'bool' : x.dtype;
  const y = b.allocate(x.shape.slice(), dtype, dtype === 'bool' ? 'u8' : out);
  const yo = b.operand(y);
  const d = b.device;
  d.launch(d.kernel('elementwise', 'unary'), grid1d(Math.ceil(xo.size / 4), d), BLOCK256, [
    ['p', yo.ptr],
    ['i', ST[yo.storage]],
    ['p', xo.ptr],
    ['i', ST[xo.storage]],
    ['l', xo.size],
    ['i', code],
  ]);
  return y;
}

/** Output shape, and the dims the kernel walks with per-input strides (0 where it broadcasts), MAX_RANK or fewer. */
export function broadcastStrides(
  aShape: number[],
  bShape: number[],
): { shape: number[]; dims: number[]; a: number[]; b: number[] } | null {
  const shape = tf.backend_util.assertAndGetBroadcastShape(aShape, bShape);
  const rank = shape.length;
  if (rank > MAX_RANK) return null;
  const strides = (s: number[]) => {
    const padded = [...new Array(rank - s.length).fill(1), ...s];
    const out = new Array<number>(rank);
    let acc = 1;
    for (let d = rank - 1; d >= 0; d--) {
      out[d] = padded[d] === 1 && shape[d] !== 1 ? 0 : acc;
      acc *= padded[d];
    }
    return out;
  };
  const dims = shape.slice();
  const a = strides(aShape);
  const b = strides(bShape);
  // Adjacent dims that both inputs walk as one (contiguous, or broadcast across both) merge: each dim
  // costs the kernel a division per element, and same-shape inputs come down to one dim, none. The
  // kernel's dims are 32-bit, so a merge stops short of 2^31.
  for (let d = dims.length - 2; d >= 0; d--) {
    const merged = dims[d] * dims[d + 1];
    if (merged < 2 ** 31 && a[d] === a[d + 1] * dims[d + 1] && b[d] === b[d + 1] * dims[d + 1]) {
      dims.splice(d, 2, merged);
      a.splice(d, 1);
      b.splice(d, 1);
    }
  }
  return { shape, dims, a, b };
}

function stridesArg(dims: number[], a: number[], b: number[]): KernelArg {
  const pad = (v: number[], fill: number) => [...v, ...new Array(MAX_RANK - v.length).fill(fill)];
  return struct32([...pad(dims, 1), ...pad(a, 0), ...pad(b, 0)]);
}

/** a ∘ b with broadcasting; null when the kernel does not cover the inputs (the host path runs). */
export function binary(
  bk: CudaBackend,
  name: string,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  out: Storage = 'f32',
): tf.TensorInfo | null {
  const ao = bk.operand(a);
  const bo = bk.operand(b);
  const ints = ao.storage === 'i32' && bo.storage === 'i32';
  if (ints && !INT_EXACT.has(name)) return null;
  if (!ints && !(isFloat(ao.storage) || ao.storage === 'u8')) return null;
  if (!ints && !(isFloat(bo.storage) || bo.storage === 'u8')) return null;
  const bs = broadcastStrides(a.shape, b.shape);
  if (!bs) return null;
  const dtype: tf.DataType = COMPARISONS.has(name) ? 'bool' : tf.upcastType(a.dtype, b.dtype);
  const y = bk.allocate(bs.shape, dtype, dtype === 'bool' ? 'u8' : dtype === 'int32' ? 'i32' : out);
  const yo = bk.operand(y);
  const d = bk.device;
  d.launch(d.kernel('elementwise', 'binary'), grid1d(yo.size, d), BLOCK256, [
    ['p', yo.ptr],
    ['i', ST[yo.storage]],
    ['p', ao.ptr],
    ['i', ST[ao.storage]],
    ['p', bo.ptr],
    ['i', ST[bo.storage]],
    ['l', yo.size],
    ['i', BINARY[name]],
    ['i', Math.max(1, bs.dims.length)],
    stridesArg(bs.dims.length ? bs.dims : [1], bs.dims.length ? bs.a : [1], bs.dims.length ? bs.b : [1]),
  ]);
  return y;
}

/** x converted to `dtype` (float storage `out` for float32). */
export function cast(b: CudaBackend, x: tf.TensorInfo, dtype: tf.DataType, out?: Storage): tf.TensorInfo {
  const xo = b.operand(x);
  const y = b.allocate(x.shape.slice(), dtype, out ?? storageOf(dtype));
  const yo = b.operand(y);
  const d = b.device;
  d.launch(d.kernel('elementwise', 'cast'), grid1d(Math.ceil(xo.size / 4), d), BLOCK256, [
    ['p', yo.ptr],
    ['i', ST[yo.storage]],
    ['p', xo.ptr],
    ['i', ST[xo.storage]],
    ['l', xo.size],
  ]);
  return y;
}

/** The sum of same-shape float tensors, in order (up to 8 per launch). */
export function addN(b: CudaBackend, xs: tf.TensorInfo[], out: Storage = 'f32'): tf.TensorInfo {
  const d = b.device;
  let acc: tf.TensorInfo | null = null;
  for (let i = 0; i < xs.length; ) {
    const group: tf.TensorInfo[] = acc ? [acc, ...xs.slice(i, i + 7)] : xs.slice(i, i + 8);
    i += acc ? 7 : 8;
    const y = b.allocate(xs[0].shape.slice(), 'float32', i >= xs.length ? out : 'f32');
    const yo = b.operand(y);
    const ops = group.map((t) => b.operand(t));
    const bytes = new Uint8Array(96);
    const view = new DataView(bytes.buffer);
    ops.forEach((o, j) => {
      view.setUint32(j * 8, o.ptr % 4294967296, true);
      view.setUint32(j * 8 + 4, Math.floor(o.ptr / 4294967296), true);
      view.setInt32(64 + j * 4, ST[o.storage], true);
    });
    d.launch(d.kernel('elementwise', 'add_n'), grid1d(Math.ceil(yo.size / 4), d), BLOCK256, [
      ['p', yo.ptr],
      ['i', ST[yo.storage]],
      ['b', bytes],
      ['i', ops.length],
      ['l', yo.size],
    ]);
    if (acc) b.release(acc);
    acc = y;
  }
  return acc!;
}

/** A tensor of `shape` filled with one value. */
export function fill(b: CudaBackend, shape: number[], value: number, dtype: tf.DataType): tf.TensorInfo {
  const y = b.allocate(shape, dtype);
  const yo = b.operand(y);
  if (yo.size === 0) return y;
  if (yo.storage === 'u8') {
    b.device.fill8(yo.ptr, value ? 1 : 0, yo.size);
    return y;
  }
  const bits = new DataView(new ArrayBuffer(4));
  if (yo.storage === 'i32') bits.setInt32(0, value, true);
  else bits.setFloat32(0, value, true);
  b.device.fill32(yo.ptr, bits.getUint32(0, true), yo.size);
  return y;
}

/** The same data under another shape (no copy). */
export function relabel(b: CudaBackend, x: tf.TensorInfo, shape: number[]): tf.TensorInfo {
  b.incRef(x.dataId);
  return { dataId: x.dataId, shape, dtype: x.dtype };
}

// -- registrations --------------------------------------------------------------------------------

type One = { x?: tf.TensorInfo };
const input = (inputs: unknown, name = 'x') => (inputs as Record<string, tf.TensorInfo>)[name];

for (const name of Object.keys(UNARY)) {
  gpuKernel(name, (inputs, _attrs, b) => {
    const x = (inputs as One).x!;
    return isFloat(b.storageOf(x)) ? unary(b, name, x) : null;
  });
}

for (const name of Object.keys(BINARY)) {
  gpuKernel(name, (inputs, _attrs, b) => binary(b, name, input(inputs, 'a'), input(inputs, 'b')));
}

gpuKernel(tf.Cast, (inputs, attrs, b) => {
  const x = input(inputs);
  const dtype = attrs.dtype as tf.DataType;
  if (dtype === 'string' || dtype === 'complex64' || x.dtype === 'string' || x.dtype === 'complex64') return null;
  return cast(b, x, dtype);
});

gpuKernel(tf.AddN, (inputs, _attrs, b) => {
  const xs = Array.isArray(inputs) ? inputs : Object.values(inputs as Record<string, tf.TensorInfo>);
  if (!xs.every((x) => isFloat(b.storageOf(x)))) return null;
  if (xs.length === 1) return cast(b, xs[0], 'float32', 'f32');
  return addN(b, xs);
});

gpuKernel(tf.Fill, (_inputs, attrs, b) => {
  const dtype = (attrs.dtype as tf.DataType) ?? 'float32';
  if (dtype === 'string') return null;
  return fill(b, attrs.shape as number[], attrs.value as number, dtype);
});

gpuKernel(tf.ZerosLike, (inputs, _attrs, b) => {
  const x = input(inputs);
  return x.dtype === 'string' || x.dtype === 'complex64' ? null : fill(b, x.shape.slice(), 0, x.dtype);
});

gpuKernel(tf.OnesLike, (inputs, _attrs, b) => {
  const x = input(inputs);
  return x.dtype === 'string' || x.dtype === 'complex64' ? null : fill(b, x.shape.slice(), 1, x.dtype);
});

gpuKernel(tf.Reshape, (inputs, attrs, b) => {
  const x = input(inputs);
  const size = tf.util.sizeFromShape(x.shape);
  const shape = tf.util.inferFromImplicitShape(attrs.shape as number[], size);
  return relabel(b, x, shape);
});

gpuKernel(tf.Identity, (inputs, _attrs, b) => {
  const x = input(inputs);
  return relabel(b, x, x.shape.slice());
});
