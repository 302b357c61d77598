/**
 * tfjs's data-movement and reduction kernels on the GPU (kernels/layout.cu): Transpose, Slice,
 * Concat, BroadcastTo, GatherV2 on the first axis, Sum/Mean/Max/Min/Prod and ArgMax/ArgMin.
 */
import * as tf from '../tfjs.js';

import { type Dim3, struct32 } from './device.js';
import { BLOCK256, ST, grid1d } from './elementwise.js';
import { gpuKernel } from './kernels.js';
import { bytesPer } from './storage.js';
import type { CudaBackend } from './tfjs-backend.js';

const MAX_RANK = 6;

function contiguous(shape: number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

/**
 * Copies a block of `dim` elements from x (strides inStride, from inOffset) into y (strides
 * outStride, from outOffset). Element size follows x's storage.
 */
function stridedCopy(
  b: CudaBackend,
  y: tf.TensorInfo,
  x: tf.TensorInfo,
  dim: number[],
  inStride: number[],
  outStride: number[],
  inOffset = 0,
  outOffset = 0,
): void {
  const xo = b.operand(x);
  const yo = b.operand(y);
  const n = dim.reduce((a, c) => a * c, 1);
  if (n === 0) return;
  const rank = Math.max(1, dim.length);
  const pad = (v: number[], f: number) => [
    ...(v.length ? v : [f]),
    ...new Array(MAX_RANK - Math.max(1, v.length)).fill(f),
  ];
  const layout = struct32([rank, ...pad(dim, 1), ...pad(inStride, 1), ...pad(outStride, 1)]);
  const d = b.device;
  d.launch(d.kernel('layout', `copy_strided_${bytesPer(xo.storage)}`), grid1d(n, d), BLOCK256, [
    ['p', yo.ptr],
    ['p', xo.ptr],
    ['l', n],
    layout,
    ['l', inOffset],
    ['l', outOffset],
  ]);
}

export function transpose(b: CudaBackend, x: tf.TensorInfo, perm: number[]): tf.TensorInfo | null {
  if (x.shape.length > MAX_RANK) return null;
  const shape = perm.map((p) => x.shape[p]);
  const y = b.allocate(shape, x.dtype, b.storageOf(x));
  const inStrides = contiguous(x.shape);
  stridedCopy(
    b,
    y,
    x,
    shape,
    perm.map((p) => inStrides[p]),
    contiguous(shape),
  );
  return y;
}

export function slice(b: CudaBackend, x: tf.TensorInfo, begin: number[], size: number[]): tf.TensorInfo | null {
  if (x.shape.length > MAX_RANK) return null;
  const y = b.allocate(size.slice(), x.dtype, b.storageOf(x));
  const inStrides = contiguous(x.shape);
  const offset = begin.reduce((a, v, d) => a + v * inStrides[d], 0);
  stridedCopy(b, y, x, size, inStrides, contiguous(size), offset);
  return y;
}

export function concat(b: CudaBackend, xs: tf.TensorInfo[], axis: number): tf.TensorInfo | null {
  const storage = b.storageOf(xs[0]);
  if (xs.some((x) => b.storageOf(x) !== storage) || xs[0].shape.length > MAX_RANK) return null;
  const shape = xs[0].shape.slice();
  shape[axis] = xs.reduce((a, x) => a + x.shape[axis], 0);
  const y = b.allocate(shape, xs[0].dtype, storage);
  const outStrides = contiguous(shape);
  let at = 0;
  for (const x of xs) {
    stridedCopy(b, y, x, x.shape, contiguous(x.shape), outStrides, 0, at * outStrides[axis]);
    at += x.shape[axis];
  }
  return y;
}

function broadcastTo(b: CudaBackend, x: tf.TensorInfo, shape: number[]): tf.TensorInfo | null {
  if (shape.length > MAX_RANK) return null;
  const padded = [...new Array(shape.length - x.shape.length).fill(1), ...x.shape];
  const inContig = contiguous(padded);
  const inStrides = padded.map((s, d) => (s === 1 && shape[d] !== 1 ? 0 : inContig[d]));
  const y = b.allocate(shape.slice(), x.dtype, b.storageOf(x));
  stridedCopy(b, y, x, shape, inStrides, contiguous(shape));
  return y;
}

/** Rows of a [rows, width] table (4-byte elements) at int32 indices. */
export function gatherRows(b: CudaBackend, table: tf.TensorInfo, idx: tf.TensorInfo): tf.TensorInfo {
  const [tableRows, width] = [table.shape[0], tf.util.sizeFromShape(table.shape.slice(1))];
  const n = tf.util.sizeFromShape(idx.shape);
  const y = b.allocate([...idx.shape, ...table.shape.slice(1)], table.dtype, b.storageOf(table));
  const d = b.device;
  d.launch(d.kernel('layout', 'gather_rows_4'), grid1d(n * width, d), BLOCK256, [
    ['p', b.operand(y).ptr],
    ['p', b.operand(table).ptr],
    ['p', b.operand(idx).ptr],
    ['i', n],
    ['i', width],
    ['i', tableRows],
  ]);
  return y;
}

/** One block a row, folded into y past 65535. */
export function rowGrid(rows: number): Dim3 {
  const x = Math.max(1, Math.min(rows, 65535));
  return [x, Math.ceil(rows / x), 1];
}

const REDUCE: Record<string, number> = { Sum: 0, Mean: 1, Max: 2, Min: 3, Prod: 4 };
/** Columns a block reduces at least when a row is cut into chunks. */
const MIN_SPAN = 8192;

/** Launches reduce_rows over [rows, cols] of `src` into [rows, chunks] of `out` (see layout.cu). */
function reduceRows(
  b: CudaBackend,
  out: tf.TensorInfo,
  src: tf.TensorInfo,
  rows: number,
  cols: number,
  op: number,
  chunks: number,
  divisor: number,
): void {
  const d = b.device;
  d.launch(d.kernel('layout', 'reduce_rows'), rowGrid(rows * chunks), BLOCK256, [
    ['p', b.operand(out).ptr],
    ['p', b.operand(src).ptr],
    ['i', ST[b.storageOf(src)]],
    ['i', rows],
    ['l', cols],
    ['i', op],
    ['i', chunks],
    ['l', Math.ceil(cols / chunks)],
    ['f', divisor],
  ]);
}

/** x reduced over `axis` (tfjs's reduction attrs); f32 inputs or bf16, f32 output. */
function reduce(
  b: CudaBackend,
  op: string,
  x: tf.TensorInfo,
  axis: number | number[],
  keepDims: boolean,
  arg = false,
): tf.TensorInfo | null {
  const st = b.storageOf(x);
  if (st !== 'f32' && st !== 'bf16') return null;
  const rank = x.shape.length;
  let axes = tf.util.parseAxisParam(axis, x.shape);
  let src = x;
  const perm = tf.backend_util.getAxesPermutation(axes, rank);
  if (perm != null) {
    const t = transpose(b, x, perm);
    if (!t) return null;
    src = t;
    axes = tf.backend_util.getInnerMostAxes(axes.length, rank);
  }
  const [outShape, reduceShape] = tf.backend_util.computeOutAndReduceShapes(src.shape, axes);
  const rows = tf.util.sizeFromShape(outShape);
  const cols = tf.util.sizeFromShape(reduceShape);
  const shape = keepDims
    ? tf.backend_util.expandShapeToKeepDim(outShape, tf.util.parseAxisParam(axis, x.shape))
    : outShape;
  const y = b.allocate(shape, arg ? 'int32' : 'float32');
  const d = b.device;
  if (arg) {
    d.launch(d.kernel('layout', 'arg_reduce_rows'), rowGrid(rows), BLOCK256, [
      ['p', b.operand(y).ptr],
      ['p', b.operand(src).ptr],
      ['i', ST[b.storageOf(src)]],
      ['i', rows],
      ['i', cols],
      ['i', op === 'ArgMax' ? 0 : 1],
    ]);
  } else {
    // Too few rows to give every multiprocessor blocks (a whole tensor's sum is one row): each row is
    // cut into chunks reduced side by side, then their partials reduced.
    const blocks = 4 * d.info.multiprocessors;
    const chunks = rows >= blocks ? 1 : Math.max(1, Math.min(Math.ceil(cols / MIN_SPAN), Math.ceil(blocks / rows)));
    if (chunks === 1) reduceRows(b, y, src, rows, cols, REDUCE[op], 1, cols);
    else {
      const partials = b.allocate([rows, chunks], 'float32');
      reduceRows(b, partials, src, rows, cols, op === 'Mean' ? REDUCE.Sum : REDUCE[op], chunks, 1);
      reduceRows(b, y, partials, rows, chunks, REDUCE[op], 1, cols);
      b.release(partials);
    }
  }
  if (src !== x) b.release(src);
  return y;
}

// -- registrations --------------------------------------------------------------------------------

const input = (inputs: unknown, name = 'x') => (inputs as Record<string, tf.TensorInfo>)[name];

gpuKernel(tf.Transpose, (inputs, attrs, b) => transpose(b, input(inputs), attrs.perm as number[]));

gpuKernel(tf.Slice, (inputs, attrs, b) => {
  const x = input(inputs);
  const [begin, size] = tf.slice_util.parseSliceParams(x as tf.Tensor, attrs.begin as number[], attrs.size as number[]);
  return slice(b, x, begin, size);
});

gpuKernel(tf.Concat, (inputs, attrs, b) => {
  const xs = (Array.isArray(inputs) ? inputs : Object.values(inputs as Record<string, tf.TensorInfo>)).filter(
    (t) => tf.util.sizeFromShape(t.shape) > 0,
  );
  if (xs.length === 0) return null;
  const axis = tf.util.parseAxisParam(attrs.axis as number, xs[0].shape)[0];
  return concat(b, xs, axis);
});

gpuKernel(tf.BroadcastTo, (inputs, attrs, b) => broadcastTo(b, input(inputs), attrs.shape as number[]));

gpuKernel(tf.GatherV2, (inputs, attrs, b) => {
  const x = input(inputs);
  const idx = input(inputs, 'indices');
  const axis = tf.util.parseAxisParam(attrs.axis as number, x.shape)[0];
  if (
    axis !== 0 ||
    (attrs.batchDims as number) !== 0 ||
    idx.dtype !== 'int32' ||
    b.storageOf(x) === 'bf16' ||
    b.storageOf(x) === 'u8'
  )
    return null;
  return gatherRows(b, x, idx);
});

for (const op of Object.keys(REDUCE)) {
  // Max names its axes reductionIndices; the others, axis.
  gpuKernel(op, (inputs, attrs, b) =>
    reduce(
      b,
      op,
      input(inputs),
      (attrs.axis ?? attrs.reductionIndices) as number | number[],
      attrs.keepDims as boolean,
    ),
  );
}
for (const op of ['ArgMax', 'ArgMin']) {
  gpuKernel(op, (inputs, attrs, b) => reduce(b, op, input(inputs), attrs.axis as number, false, true));
}
