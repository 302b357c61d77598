/**
 * Causal self-attention with rotary embeddings on the cuda backend. The fused QKV projection is split
 * into heads with q and k rotated (kernels/attention.cu); the causal scores S = q·kᵀ/√hs [B·H, T, T]
 * (f32), the softmax P (activation precision) and the products around it run as cuBLASLt products
 * batched over B·H. The upper triangle is computed and discarded by the softmax: at Pythia's sizes and
 * T = 512 the scores cost less than a millisecond of a training step. P is not kept for the backward,
 * which computes it again (see `probabilities`).
 */
import type * as tf from '../tfjs.js';

import type { AttentionShape } from '../ops/index.js';
import { activationStorage, customOp, toTensor } from './custom-op.js';
import type { Dim3 } from './device.js';
import { BLOCK256, ST, grid1d } from './elementwise.js';
import { blas } from './matmul.js';
import type { CudaBackend } from './tfjs-backend.js';

/** Four rows (one warp each) per block of 128 threads. */
function softmaxGrid(rows: number): Dim3 {
  const blocks = Math.ceil(rows / 4);
  const x = Math.min(blocks, 65535);
  return [x, Math.ceil(blocks / x), 1];
}

function headsLayout(b: CudaBackend, x: tf.TensorInfo, s: AttentionShape, toHeads: boolean): tf.TensorInfo {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const st = activationStorage();
  const y = b.allocate(toHeads ? [B * H, T, hs] : [B * T, H * hs], 'float32', st);
  const xo = b.operand(x);
  const d = b.device;
  // Threads for a quarter of the elements: the layout kernels take four dims a thread where shapes allow.
  d.launch(d.kernel('attention', 'heads_layout'), grid1d(Math.ceil((B * T * H * hs) / 4), d), BLOCK256, [
    ['p', b.operand(y).ptr],
    ['i', ST[st]],
    ['p', xo.ptr],
    ['i', ST[xo.storage]],
    ['i', B],
    ['i', T],
    ['i', H],
    ['i', hs],
    ['i', toHeads ? 1 : 0],
  ]);
  return y;
}

/** x·yᵀ·alpha for each of the B·H heads: [B·H, T, hs] operands, an f32 [B·H, T, T] result. */
function scoresProduct(
  b: CudaBackend,
  x: tf.TensorInfo,
  y: tf.TensorInfo,
  s: AttentionShape,
  alpha: number,
): tf.TensorInfo {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const out = b.allocate([B * H, T, T], 'float32', 'f32');
  blas(b.device).matmul(
    {
      batch: B * H,
      M: T,
      N: T,
      K: hs,
      transB: true,
      strideA: T * hs,
      strideB: T * hs,
      strideC: T * T,
      aType: b.storageOf(x),
      bType: b.storageOf(y),
      cType: 'f32',
      alpha,
    },
    b.operand(x).ptr,
    b.operand(y).ptr,
    b.operand(out).ptr,
  );
  return out;
}

/**
 * The causal softmax P = softmax(q·kᵀ/√hs) [B·H, T, T] in activation precision, from scores in f32.
 * The backward computes P again from the saved q and k with the same products and kernel (so the
 * same values) rather than keeping every layer's P from the forward: one more small product per layer
 * instead of B·H·T² values per layer held through the whole step (PyTorch's fused attention keeps no
 * P either).
 */
function probabilities(b: CudaBackend, q: tf.TensorInfo, k: tf.TensorInfo, s: AttentionShape): tf.TensorInfo {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const BH = B * H;
  const d = b.device;
  const act = activationStorage();
  const scores = scoresProduct(b, q, k, s, 1 / Math.sqrt(hs));
  const p = b.allocate([BH, T, T], 'float32', act);
  const rows = BH * T;
  d.launch(
    d.kernel('attention', 'causal_softmax'),
    softmaxGrid(rows),
    [128, 1, 1],
    [
      ['p', b.operand(p).ptr],
      ['i', ST[act]],
      ['p', b.operand(scores).ptr],
      ['l', rows],
      ['i', T],
    ],
  );
  b.release(scores);
  return p;
}

/**
 * Causal self-attention of the fused QKV projection [B·T, H·3·hs] with rotary tables cos/sin [T, rd]:
 * the per-head context merged back to [B·T, H·hs].
 */
export function cudaAttention(qkv: tf.Tensor2D, cos: tf.Tensor2D, sin: tf.Tensor2D, s: AttentionShape): tf.Tensor2D {
  const { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd } = s;
  const BH = B * H;
  const scale = 1 / Math.sqrt(hs);
  const batched = { batch: BH } as const;
  const rows = BH * T;
  const op = customOp(([x], save, b) => {
    const d = b.device;
    const act = activationStorage();
    const gemm = blas(d);
    const q = b.allocate([BH, T, hs], 'float32', act);
    const k = b.allocate([BH, T, hs], 'float32', act);
    const v = b.allocate([BH, T, hs], 'float32', act);
    const xo = b.operand(x);
    const tables = (t: tf.TensorInfo) => (rd > 0 ? b.operand(t).ptr : 0);
    d.launch(d.kernel('attention', 'rotary_split'), grid1d(Math.ceil((BH * T * hs) / 4), d), BLOCK256, [
      ['p', b.operand(q).ptr],
      ['p', b.operand(k).ptr],
      ['p', b.operand(v).ptr],
      ['i', ST[act]],
      ['p', xo.ptr],
      ['i', ST[xo.storage]],
      ['p', tables(cos)],
      ['p', tables(sin)],
      ['i', B],
      ['i', T],
      ['i', H],
      ['i', hs],
      ['i', rd],
    ]);
    const p = probabilities(b, q, k, s);
    const oHeads = b.allocate([BH, T, hs], 'float32', act);
    gemm.matmul(
      {
        ...batched,
        M: T,
        N: hs,
        K: T,
        strideA: T * T,
        strideB: T * hs,
        strideC: T * hs,
        aType: act,
        bType: act,
        cType: act,
      },
      b.operand(p).ptr,
      b.operand(v).ptr,
      b.operand(oHeads).ptr,
    );
    b.release(p);
    const o = headsLayout(b, oHeads, s, false);
    b.release(oHeads);
    // The tables are saved with the forward's tensors (tfjs keeps saved tensors for the backward).
    save([toTensor(q), toTensor(k), toTensor(v), cos, sin]);
    return {
      value: toTensor(o),
      gradFunc: (dy, [qs, ks, vs, cs, ss]) => {
        const ps = probabilities(b, qs, ks, s);
        const dO = headsLayout(b, dy, s, true);
        const dP = scoresProduct(b, dO, vs, s, 1);
        const dS = b.allocate([BH, T, T], 'float32', act);
        d.launch(
          d.kernel('attention', 'causal_softmax_backward'),
          softmaxGrid(rows),
          [128, 1, 1],
          [
            ['p', b.operand(dS).ptr],
            ['i', ST[act]],
            ['p', b.operand(ps).ptr],
            ['i', ST[b.storageOf(ps)]],
            ['p', b.operand(dP).ptr],
            ['l', rows],
            ['i', T],
          ],
        );
        b.release(dP);
        const dq = b.allocate([BH, T, hs], 'float32', act);
        const dk = b.allocate([BH, T, hs], 'float32', act);
        const dv = b.allocate([BH, T, hs], 'float32', act);
        const prod = {
          ...batched,
          M: T,
          N: hs,
          K: T,
          strideA: T * T,
          strideB: T * hs,
          strideC: T * hs,
          aType: act,
          bType: act,
          cType: act,
        } as const;
        gemm.matmul({ ...prod, transA: true }, b.operand(ps).ptr, b.operand(dO).ptr, b.operand(dv).ptr);
        gemm.matmul({ ...prod, alpha: scale }, b.operand(dS).ptr, b.operand(ks).ptr, b.operand(dq).ptr);
        gemm.matmul({ ...prod, transA: true, alpha: scale }, b.operand(dS).ptr, b.operand(qs).ptr, b.operand(dk).ptr);
        for (const t of [dS, dO, ps]) b.release(t);
        const dx = b.allocate([B * T, H * 3 * hs], 'float32', act);
        d.launch(
          d.kernel('attention', 'rotary_merge_backward'),
          grid1d(Math.ceil((B * T * H * 3 * hs) / 4), d),
          BLOCK256,
          [
            ['p', b.operand(dx).ptr],
            ['i', ST[act]],
            ['p', b.operand(dq).ptr],
            ['p', b.operand(dk).ptr],
            ['p', b.operand(dv).ptr],
            ['i', ST[act]],
            ['p', tables(cs)],
            ['p', tables(ss)],
            ['i', B],
            ['i', T],
            ['i', H],
            ['i', hs],
            ['i', rd],
          ],
        );
        for (const t of [dq, dk, dv]) b.release(t);
        return toTensor(dx);
      },
    };
  });
  return op(qkv) as tf.Tensor2D;
}
