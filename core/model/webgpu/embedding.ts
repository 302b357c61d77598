/**
 * Row lookups on the WebGPU backend: the embedding's gradient as a scatter-add of rows (float adds
 * by compare-exchange; no one-hot, no dense product), and a row-wise takeAlongLastAxis.
 */
import * as tf from '../tfjs.js';

import { customOp, gatherRows } from '../ops/index.js';
import { randHost } from '../kernel-check.js';
import type { KernelCase } from './check.js';
import { kernel } from './fused.js';
import { allocate, dispatch, grid1d, toTensor, zeroFill } from './runtime.js';
import { FLAT } from './wgsl-common.js';

/** in: dy [N, D], ids [N] i32; out: table [V, D] (zeroed first, as atomic u32); u: {total, D}. */
export function scatterAddRowsSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read_write> table: array<atomic<u32>>;
struct U { total: u32, D: u32, p0: u32, p1: u32 };
@group(0) @binding(3) var<uniform> u: U;
${FLAT}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = flat_index(gid, nwg);
  if (idx >= u.total) { return; }
  let n = idx / u.D;
  let d = idx % u.D;
  let add = dy[idx];
  let i = u32(ids[n]) * u.D + d;
  var old = atomicLoad(&table[i]);
  loop {
    let r = atomicCompareExchangeWeak(&table[i], old, bitcast<u32>(bitcast<f32>(old) + add));
    if (r.exchanged) { break; }
    old = r.old_value;
  }
}
`;
}

/** table[ids] with the gradient scattered back into the table by row (no one-hot, no dense product). */
export function fusedGatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const [rows, width] = table.shape;
  const n = ids.shape[0];
  const op = customOp(([t], save) => {
    const i32 = ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32');
    save([i32]);
    return {
      value: tf.gather(t, i32),
      gradFunc: (dy, [idx]) => {
        const out = allocate([rows, width]);
        zeroFill(out);
        dispatch(
          kernel('scatter_add_rows', '', scatterAddRowsSource),
          [dy, idx],
          [out],
          [
            ['u', n * width],
            ['u', width],
            ['u', 0],
            ['u', 0],
          ],
          grid1d(n * width),
        );
        return toTensor(out);
      },
    };
  });
  return op(table) as tf.Tensor2D;
}

/**
 * x[n, idx[n, j]] for x [N, V] and idx [N, k] (int32), row-wise: gather with batchDims 1 and
 * scatter by (row, column). tfjs's webgpu gather and scatter get flat indices past 2^24 wrong,
 * which the reference's flattened [N·V] lookup reaches at Pythia's vocabulary. tfjs ops, so it
 * runs with the fused kernels off too.
 */
export function rowWiseTakeAlongLastAxis(x: tf.Tensor2D, idx: tf.Tensor2D): tf.Tensor2D {
  const [n, v] = x.shape;
  const k = idx.shape[1];
  const f = customOp(([t], save) => {
    const rows = tf.reshape(tf.tile(tf.reshape(tf.range(0, n, 1, 'int32'), [n, 1]), [1, k]), [n * k, 1]);
    save([tf.concat([rows, tf.reshape(idx, [n * k, 1])], 1)]);
    return {
      value: tf.gather(t, idx, 1, 1),
      gradFunc: (dy, [coords]) => tf.scatterND(coords, tf.reshape(dy, [n * k]), [n, v]),
    };
  });
  return f(x) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Check against the reference (check.ts)

export function embeddingCase(rows: number, width: number, n: number, tol = 2e-5): KernelCase {
  return {
    name: `embedding rows and gradient (table ${rows} × ${width}, ${n} ids)`,
    inputs: () => [
      randHost([rows, width], 18),
      { shape: [n], data: Int32Array.from({ length: n }, (_, i) => (i * i + 3 * i) % rows), dtype: 'int32' },
    ],
    diff: [0],
    reference: ([t, i]) => gatherRows.reference(t as tf.Tensor2D, i as tf.Tensor1D),
    fused: ([t, i]) => fusedGatherRows(t as tf.Tensor2D, i as tf.Tensor1D),
    tol,
  };
}
