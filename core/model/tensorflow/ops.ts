/**
 * Training ops for the `tensorflow` backend, each a tf.customGrad whose forward and backward passes
 * are a handful of TensorFlow ops (native.ts) instead of what tfjs's autodiff records: linear layers
 * (bias, bias + GELU), the logits product, LayerNorm, causal attention with rotary embeddings,
 * softmax cross-entropy (TensorFlow's fused SparseSoftmaxCrossEntropyWithLogits) and the embedding
 * lookup. The model calls these only when `tensorflowKernelsActive()`; elsewhere it uses the
 * reference ops in ../ops.ts, and test/tensorflow-kernels.test.ts checks values and gradients of
 * each against those on the cpu backend.
 */
import * as tf from '../tfjs.js';

import type { AttentionShape } from '../gptneox.js';
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
  scalar,
  sub,
  transpose,
  typeAttr,
  unary,
} from './native.js';

type Grad = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

/** tf.customGrad with variadic tensor inputs and the save function last. */
function customOp(f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: Grad }): (...inputs: tf.Tensor[]) => tf.Tensor {
  const g = tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    return f(args as tf.Tensor[], save);
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return (...inputs) => g(...inputs);
}

const biasAdd = (x: tf.Tensor, b: tf.Tensor): tf.Tensor => op('BiasAdd', [typeAttr('T')], [x, b]);
/** Column sums of a [N, C] gradient: the bias gradient. */
const biasGrad = (dy: tf.Tensor): tf.Tensor => op('BiasAddGrad', [typeAttr('T')], [dy]);

function splitV(x: tf.Tensor, sizes: number[], axis: number): tf.Tensor[] {
  return opN('SplitV', [typeAttr('T'), typeAttr('Tlen', 'int32'), intAttr('num_split', sizes.length)], [x, int32Const(sizes), int32Const(axis)], sizes.length);
}

function concat(xs: tf.Tensor[], axis: number): tf.Tensor {
  return op('ConcatV2', [typeAttr('T'), typeAttr('Tidx', 'int32'), intAttr('N', xs.length)], [...xs, int32Const(axis)]);
}

// ---------------------------------------------------------------------------------------------
// Linear layers and the logits product

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** x [N, in] · weightᵀ ([out, in], torch layout) + bias, then exact GELU when asked. */
export function tfLinear(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D, activation: 'none' | 'gelu' = 'none'): tf.Tensor2D {
  const f = customOp(([xt, wt, bt], save) => {
    const z = biasAdd(batchMatMul(xt, wt, false, true), bt);
    if (activation === 'none') {
      save([xt, wt]);
      return {
        value: z,
        gradFunc: (dy, [xs, ws]) => [batchMatMul(dy, ws, false, false), batchMatMul(dy, xs, true, false), biasGrad(dy)],
      };
    }
    // gelu(z) = z·Φ(z), Φ(z) = (1 + erf(z/√2))/2; gelu'(z) = Φ(z) + z·φ(z), φ(z) = exp(−z²/2)/√(2π).
    const cdf = mul(add(unary('Erf', mul(z, scalar(SQRT1_2))), scalar(1)), scalar(0.5));
    save([xt, wt, z, cdf]);
    return {
      value: mul(z, cdf),
      gradFunc: (dy, [xs, ws, zs, cs]) => {
        const pdf = unary('Exp', mul(unary('Square', zs), scalar(-0.5)));
        const slope = add(mul(mul(zs, pdf), scalar(INV_SQRT_2PI)), cs);
        const dz = mul(dy, slope);
        return [batchMatMul(dz, ws, false, false), batchMatMul(dz, xs, true, false), biasGrad(dz)];
      },
    };
  });
  return f(x, weight, bias) as tf.Tensor2D;
}

/** a [M, K] · bᵀ (b [N, K]): the logits product h · embed_outᵀ. */
export function tfMatMulNT(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  const f = customOp(([at, bt], save) => {
    save([at, bt]);
    return {
      value: batchMatMul(at, bt, false, true),
      gradFunc: (dy, [as, bs]) => [batchMatMul(dy, bs, false, false), batchMatMul(dy, as, true, false)],
    };
  });
  return f(a, b) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/** LayerNorm over the last axis of x [N, D], with the gradient written out (11 ops where autodiff records about 30). */
export function tfLayerNorm(x: tf.Tensor2D, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): tf.Tensor2D {
  const f = customOp(([xt, wt, bt], save) => {
    const xc = sub(xt, reduce('Mean', xt, [1], true));
    const rstd = unary('Rsqrt', add(reduce('Mean', unary('Square', xc), [1], true), scalar(eps)));
    const xhat = mul(xc, rstd);
    save([xhat, rstd, wt]);
    return {
      value: add(mul(xhat, wt), bt),
      gradFunc: (dy, [xh, rs, ws]) => {
        // dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · w
        const g = mul(dy, ws);
        const proj = mul(xh, reduce('Mean', mul(g, xh), [1], true));
        const dx = mul(sub(sub(g, reduce('Mean', g, [1], true)), proj), rs);
        return [dx, reduce('Sum', mul(dy, xh), [0], false), reduce('Sum', dy, [0], false)];
      },
    };
  });
  return f(x, weight, bias) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Attention

/**
 * Per-position tables that apply rotary embeddings to a whole head row (q, k, v) with two
 * multiplies: row·cos + rotateHalves(row)·sin, where rotateHalves swaps the halves of the rotated
 * dims of q and k (the sign is in `sin`). Pass-through dims and v get cos 1, sin 0; q's entries
 * also carry the attention scale head_size^-0.5, so the scores need no separate multiply.
 */
export interface RotaryTables {
  /** [T, 1, 3·hs] */
  cos: tf.Tensor;
  /** [T, 1, 3·hs] */
  sin: tf.Tensor;
}

/** Tables from the model's cos/sin [T, rotated] (host values; GPTNeoX caches the result). */
export function rotaryTables(cosHost: Float32Array, sinHost: Float32Array, seqLen: number, headSize: number, rotated: number): RotaryTables {
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
 * v), rotary on q and k, additive mask [T, T], heads merged: [B·T, H·hs]. Same arithmetic as
 * gptneox.ts's causalSelfAttention, with the softmax gradient written out.
 */
export function tfAttention(qkv: tf.Tensor2D, tables: RotaryTables, mask: tf.Tensor2D, s: AttentionShape): tf.Tensor2D {
  const { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd } = s;
  const rotary = (x: tf.Tensor, c: tf.Tensor, sn: tf.Tensor) => (rd === 0 ? mul(x, c) : add(mul(x, c), mul(rotateHalves(x, hs, rd), sn)));
  // The tables and the mask are kept tensors (the model caches them), so the gradient may close over them.
  const { cos, sin } = tables;
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

// ---------------------------------------------------------------------------------------------
// Loss and embedding

/** Mean softmax cross-entropy of logits [N, V] against int32 targets [N]: one TensorFlow op gives the losses and their gradient. */
export function tfCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const n = logits.shape[0];
  const f = customOp(([x], save) => {
    const [losses, backprop] = opN('SparseSoftmaxCrossEntropyWithLogits', [typeAttr('T'), typeAttr('Tlabels', 'int32')], [x, targets], 2);
    save([backprop]);
    return {
      value: reduce('Mean', losses, [0], false),
      gradFunc: (dy, [bp]) => mul(bp, mul(dy, scalar(1 / n))),
    };
  });
  return f(logits) as tf.Scalar;
}

/** table[ids] ([rows, width] table, int32 ids [n]); the gradient sums rows back with UnsortedSegmentSum. */
export function tfGatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const rows = table.shape[0];
  const f = customOp(([t], save) => {
    // ids may be made inside the differentiated function, which tfjs disposes before the backward pass: save it.
    save([ids]);
    return {
      value: op('GatherV2', [typeAttr('Tparams'), typeAttr('Tindices', 'int32'), typeAttr('Taxis', 'int32'), intAttr('batch_dims', 0)], [t, ids, int32Const(0)]),
      gradFunc: (dy, [is]) => op('UnsortedSegmentSum', [typeAttr('T'), typeAttr('Tindices', 'int32'), typeAttr('Tnumsegments', 'int32')], [dy, is, int32Const(rows)]),
    };
  });
  return f(table) as tf.Tensor2D;
}
