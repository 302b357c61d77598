/**
 * AdamW with global gradient-norm clipping on the cuda backend (kernels/adamw.cu): three launches for
 * every parameter together, weights and moments (and a weight's bf16 copy, custom-op.ts's
 * bf16Weight) updated in place, no read-back. The per-parameter
 * table (addresses, sizes, whether weight decay applies) stays on the device while it does not change;
 * the step's numbers are read from the device too — from the step's own buffer inside a graph step
 * (graphs.ts), else from one written here — so a captured step replays with the next step's numbers.
 */
import type { AdamWEntry, AdamWState, AdamWStep } from '../ops/index.js';
import * as tf from '../tfjs.js';

import { bf16Shadow, toTensor } from './custom-op.js';
import { BLOCK256, ST } from './elementwise.js';
import { stepScalars } from './graphs.js';
import { rowGrid } from './layout.js';
import { type CudaBackend, cudaBackendOrThrow } from './tfjs-backend.js';

/** Elements per block (kernels/adamw.cu's CHUNK). */
const CHUNK = 4096;
/** sizeof(AdamEntry). */
const ENTRY_BYTES = 64;

/** A step's numbers in the order the kernel reads them (adamw.cu's Hyper), bias corrections worked out. */
export function adamwStepVector(s: AdamWStep): Float32Array {
  return Float32Array.of(
    s.lr,
    s.beta1,
    s.beta2,
    s.eps,
    1 - s.beta1 ** s.step,
    1 - s.beta2 ** s.step,
    s.maxNorm,
    s.weightDecay,
  );
}
const STEP_FLOATS = 8;

/** The device copy of the entry table outside graph captures, reused while its bytes are the same. */
const tables = new WeakMap<CudaBackend, { bytes: Uint8Array; tensor: tf.Tensor }>();
/** Where the step's numbers live when no graph step provides them. */
const hypers = new WeakMap<CudaBackend, tf.Tensor>();

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Applies one clipped AdamW step to every entry (moments from `state`); returns the gradient norm before clipping. */
export function cudaClipAdamW(state: AdamWState, entries: AdamWEntry[], s: AdamWStep): tf.Scalar {
  const b = cudaBackendOrThrow();
  const d = b.device;
  const bytes = new Uint8Array(entries.length * ENTRY_BYTES);
  const v = new DataView(bytes.buffer);
  const put64 = (o: number, x: number) => {
    v.setUint32(o, x % 4294967296, true);
    v.setUint32(o + 4, Math.floor(x / 4294967296), true);
  };
  let blocks = 0;
  entries.forEach((e, i) => {
    const o = i * ENTRY_BYTES;
    const g = b.operand(e.grad);
    put64(o, b.operand(e.param).ptr);
    put64(o + 8, g.ptr);
    const { m, v: vv } = state.moments(e.name, e.param);
    put64(o + 16, b.operand(m).ptr);
    put64(o + 24, b.operand(vv).ptr);
    const shadow = bf16Shadow(e.param);
    put64(o + 32, shadow ? b.operand(shadow).ptr : 0);
    put64(o + 40, g.size);
    put64(o + 48, blocks);
    v.setInt32(o + 56, ST[g.storage], true);
    v.setInt32(o + 60, e.decays ? 1 : 0, true);
    blocks += Math.max(1, Math.ceil(g.size / CHUNK));
  });
  let tp: number;
  if (d.capturing) {
    // A constant of the graph: the replay copies it in, into memory of the graph's private pool.
    const t = b.allocate([bytes.length], 'bool');
    tp = b.operand(t).ptr;
    d.writeConstant(tp, bytes);
    // Tracked by the capture's tf.tidy, which frees it into that pool (only the graph uses it).
    toTensor(t);
  } else {
    let table = tables.get(b);
    if (!table || !sameBytes(table.bytes, bytes)) {
      table?.tensor.dispose();
      // Kept from step to step: the caller's tf.tidy must not free it while it is reused.
      const t = b.allocate([bytes.length], 'bool');
      d.write(b.operand(t).ptr, bytes);
      table = { bytes, tensor: tf.keep(toTensor(t)) };
      tables.set(b, table);
    }
    tp = b.operand(table.tensor).ptr;
  }
  let hyperPtr = stepScalars()?.ptr;
  if (hyperPtr === undefined) {
    let h = hypers.get(b);
    if (!h) hypers.set(b, (h = tf.keep(toTensor(b.allocate([STEP_FLOATS], 'float32')))));
    hyperPtr = b.operand(h).ptr;
    d.write(hyperPtr, adamwStepVector(s));
  }
  const partials = b.allocate([blocks], 'float32');
  const norm = b.allocate([], 'float32');
  d.launch(d.kernel('adamw', 'grad_sum_squares'), rowGrid(blocks), BLOCK256, [
    ['p', b.operand(partials).ptr],
    ['p', tp],
    ['i', entries.length],
    ['l', blocks],
  ]);
  d.launch(
    d.kernel('adamw', 'grad_norm'),
    [1, 1, 1],
    [1024, 1, 1],
    [
      ['p', b.operand(norm).ptr],
      ['p', b.operand(partials).ptr],
      ['l', blocks],
    ],
  );
  d.launch(d.kernel('adamw', 'adamw_update'), rowGrid(blocks), BLOCK256, [
    ['p', tp],
    ['i', entries.length],
    ['l', blocks],
    ['p', b.operand(norm).ptr],
    ['p', hyperPtr],
  ]);
  b.release(partials);
  return toTensor<tf.Scalar>(norm);
}
