/**
 * Causal self-attention with rotary embeddings on the tensorflow backend: rotary applied to whole
 * head rows with two multiplies by per-position tables, the softmax gradient written out.
 */
import * as tf from '../tfjs.js';

import { type AttentionShape, type PositionTables, customOp } from '../ops/index.js';
import {
  add,
  batchMatMul,
  int32Const,
  intAttr,
  mul,
  op,
  opN,
  reduce,
  reshape,
  sub,
  transpose,
  typeAttr,
} from './native.js';

function splitV(x: tf.Tensor, sizes: number[], axis: number): tf.Tensor[] {
  return opN(
    'SplitV',
    [typeAttr('T'), typeAttr('Tlen', 'int32'), intAttr('num_split', sizes.length)],
    [x, int32Const(sizes), int32Const(axis)],
    sizes.length,
  );
}

function concat(xs: tf.Tensor[], axis: number): tf.Tensor {
  return op('ConcatV2', [typeAttr('T'), typeAttr('Tidx', 'int32'), intAttr('N', xs.length)], [...xs, int32Const(axis)]);
}

/**
 * Per-position tables that apply rotary embeddings to a whole head row (q, k, v) with two
 * multiplies: row·cos + rotateHalves(row)·sin, where rotateHalves swaps the halves of the rotated
 * dims of q and k (the sign is in `sin`). Pass-through dims and v get cos 1, sin 0; q's entries
 * also carry the attention scale head_size^-0.5, so the scores need no separate multiply.
 */
type RotaryTables = {
  /** [T, 1, 3·hs] */
  cos: tf.Tensor;
  /** [T, 1, 3·hs] */
  sin: tf.Tensor;
};

/** Tables from cos/sin [T, rotated] (host values), as kept tensors. */
function rotaryTables(
  cosHost: Float32Array,
  sinHost: Float32Array,
  seqLen: number,
  headSize: number,
  rotated: number,
): RotaryTables {
  const w = 3 * headSize;
  const half = rotated / 2;
  const scale = 1 / Math.sqrt(headSize);
  const cos = new Float32Array(seqLen * w);
  const sin = new Float32Array(seqLen * w);
  for (let t = 0; t < seqLen; t++) {
    for (let part = 0; part < 3; part++) {
      const s = part === 0 ? scale : 1;
      for (let d = 0; d < headSize; d++) {
        const j = t * w + part * headSize + d;
        const rot = part < 2 && d < rotated;
        cos[j] = (rot ? cosHost[t * rotated + d] : 1) * s;
        sin[j] = rot ? (d < half ? -sinHost[t * rotated + d] : sinHost[t * rotated + d]) * s : 0;
      }
    }
  }
  return { cos: tf.keep(tf.tensor3d(cos, [seqLen, 1, w])), sin: tf.keep(tf.tensor3d(sin, [seqLen, 1, w])) };
}

/** Swaps the halves of the rotated dims of q and k along the last axis (3·hs) of x: two copies, where a gather is 6× slower. */
function rotateHalves(x: tf.Tensor, hs: number, rd: number): tf.Tensor {
  const h = rd / 2;
  const [q1, q2, qp, k1, k2, kp, v] = splitV(x, [h, h, hs - rd, h, h, hs - rd, hs], 3);
  return concat([q2, q1, qp, k2, k1, kp, v], 3);
}

/**
 * Causal self-attention of a fused QKV projection [B·T, H·3·hs] (rows interleaved per head: q, k,
 * v), rotary on q and k, heads merged: [B·T, H·hs]. Same arithmetic as the reference
 * (../ops/attention.ts), with the softmax gradient written out.
 */
export function tfAttention(qkv: tf.Tensor2D, positions: PositionTables, s: AttentionShape): tf.Tensor2D {
  const { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd } = s;
  const rotary = (x: tf.Tensor, c: tf.Tensor, sn: tf.Tensor) =>
    rd === 0 ? mul(x, c) : add(mul(x, c), mul(rotateHalves(x, hs, rd), sn));
  // Made once per length and head size, kept with the positions (as is the mask), so the
  // gradient may close over them.
  const { cos, sin } = positions.derived(`tensorflow:${hs}`, () =>
    rotaryTables(positions.cos.dataSync() as Float32Array, positions.sin.dataSync() as Float32Array, T, hs, rd),
  );
  const mask = positions.mask;
  const f = customOp(([x], save) => {
    const rows = rotary(reshape(x, [B, T, H, 3 * hs]), cos, sin);
    const [q, k, v] = splitV(transpose(rows, [0, 2, 1, 3]), [hs, hs, hs], 3); // [B, H, T, hs]
    const p = op('Softmax', [typeAttr('T')], [add(batchMatMul(q, k, false, true), mask)]);
    const o = batchMatMul(p, v, false, false); // [B, H, T, hs]
    save([q, k, v, p, o]);
    return {
      value: reshape(transpose(o, [0, 2, 1, 3]), [B * T, H * hs]),
      gradFunc: (dy, [qs, ks, vs, ps, os]) => {
        const dc = transpose(reshape(dy, [B, T, H, hs]), [0, 2, 1, 3]);
        const dp = batchMatMul(dc, vs, false, true);
        const dv = batchMatMul(ps, dc, true, false);
        // softmax: ds = p · (dp − Σⱼ dpⱼ·pⱼ), and Σⱼ dpⱼ·pⱼ = dc · o (over hs, not T: flash attention's trick).
        const ds = mul(ps, sub(dp, reduce('Sum', mul(dc, os), [3], true)));
        const dq = batchMatMul(ds, ks, false, false);
        const dk = batchMatMul(ds, qs, true, false);
        const drows = transpose(concat([dq, dk, dv], 3), [0, 2, 1, 3]); // [B, T, H, 3hs]
        // The transpose of rows·cos + rotateHalves(rows)·sin; rotateHalves is its own inverse.
        const dx = rd === 0 ? mul(drows, cos) : add(mul(drows, cos), rotateHalves(mul(drows, sin), hs, rd));
        return reshape(dx, [B * T, H * 3 * hs]);
      },
    };
  });
  return f(qkv) as tf.Tensor2D;
}
