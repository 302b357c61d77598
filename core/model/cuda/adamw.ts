/**
 * AdamW with global gradient-norm clipping on the cuda backend (kernels/adamw.cu): three launches for
 * every parameter together, weights and moments updated in place, no read-back. The per-parameter
 * table (addresses, sizes, decay) goes to the device with each step.
 */
import type * as tf from '../tfjs.js';

import { toTensor } from './custom-op.js';
import { BLOCK256, ST } from './elementwise.js';
import { rowGrid } from './layout.js';
import { cudaBackendOrThrow } from './tfjs-backend.js';

/** Elements per block (kernels/adamw.cu's CHUNK). */
const CHUNK = 4096;
/** sizeof(AdamEntry). */
const ENTRY_BYTES = 56;

export interface AdamWEntry {
  param: tf.Variable;
  grad: tf.Tensor;
  m: tf.Variable;
  v: tf.Variable;
  /** 1 − lr·weightDecay for decayed parameters, else 1. */
  decay: number;
}

export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  bc1: number;
  bc2: number;
  /** Clip to this global norm. */
  maxNorm: number;
}

/** Applies one clipped AdamW step to every entry; returns the gradient norm before clipping. */
export function cudaClipAdamW(entries: AdamWEntry[], s: AdamWStep): tf.Scalar {
  const b = cudaBackendOrThrow();
  const d = b.device;
  const table = new Uint8Array(entries.length * ENTRY_BYTES);
  const v = new DataView(table.buffer);
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
    put64(o + 16, b.operand(e.m).ptr);
    put64(o + 24, b.operand(e.v).ptr);
    put64(o + 32, g.size);
    put64(o + 40, blocks);
    v.setInt32(o + 48, ST[g.storage], true);
    v.setFloat32(o + 52, e.decay, true);
    blocks += Math.max(1, Math.ceil(g.size / CHUNK));
  });
  const tableT = b.makeTensorInfo([table.length], 'bool', table);
  const partials = b.allocate([blocks], 'float32');
  const norm = b.allocate([], 'float32');
  const tp = b.operand(tableT).ptr;
  d.launch(d.kernel('adamw', 'grad_sum_squares'), rowGrid(blocks), BLOCK256, [['p', b.operand(partials).ptr], ['p', tp], ['i', entries.length], ['l', blocks]]);
  d.launch(d.kernel('adamw', 'grad_norm'), [1, 1, 1], [1024, 1, 1], [['p', b.operand(norm).ptr], ['p', b.operand(partials).ptr], ['l', blocks]]);
  d.launch(d.kernel('adamw', 'adamw_update'), rowGrid(blocks), BLOCK256, [
    ['p', tp],
    ['i', entries.length],
    ['l', blocks],
    ['p', b.operand(norm).ptr],
    ['f', s.maxNorm],
    ['f', s.lr],
    ['f', s.beta1],
    ['f', s.beta2],
    ['f', s.eps],
    ['f', s.bc1],
    ['f', s.bc2],
  ]);
  b.release(partials);
  b.release(tableT);
  return toTensor<tf.Scalar>(norm);
}
