/**
 * Causal self-attention of GPT-NeoX: the fused QKV projection split per head, rotary embeddings
 * (rotate_half) on the first dims of q and k, causal softmax, heads merged.
 */
import * as tf from '../tfjs.js';

import { matMul } from './linear.js';
import { defineOperation } from './registry.js';

/** The shape of one attention call. */
export interface AttentionShape {
  batch: number;
  seqLen: number;
  heads: number;
  headSize: number;
  /** Dims rotated (rotate_half) at the start of each q and k head; the rotary tables are [T, rotated]. */
  rotated: number;
}

/**
 * What attention needs of the positions of one sequence length: the rotary tables cos and sin
 * [T, rotated] (each row's two halves equal, as transformers builds them), the additive causal
 * mask [T, T] (0 on and below the diagonal, −1e9 above), and whatever a kernel derives from these
 * once (kept here and freed with them). A model keeps one per length.
 */
export class PositionTables {
  private readonly derivedTables = new Map<string, tf.TensorContainer>();

  constructor(
    readonly cos: tf.Tensor2D,
    readonly sin: tf.Tensor2D,
    readonly mask: tf.Tensor2D,
  ) {}

  /**
   * GPT-NeoX's tables for `seqLen` positions: frequencies base^(−2i/rotaryDims) for the `rotated`
   * dims (transformers' arithmetic: inverse frequencies in f32, then t · inv_freq in f32). Kept
   * tensors: dispose() frees them.
   */
  static rotary(seqLen: number, rotaryDims: number, rotated: number, base: number): PositionTables {
    const half = rotated / 2;
    const cos = new Float32Array(seqLen * rotated);
    const sin = new Float32Array(seqLen * rotated);
    for (let t = 0; t < seqLen; t++) {
      for (let i = 0; i < half; i++) {
        const invFreq = Math.fround(1 / Math.fround(base ** Math.fround((2 * i) / rotaryDims)));
        const angle = Math.fround(t * invFreq);
        cos[t * rotated + i] = cos[t * rotated + i + half] = Math.cos(angle);
        sin[t * rotated + i] = sin[t * rotated + i + half] = Math.sin(angle);
      }
    }
    const mask = new Float32Array(seqLen * seqLen);
    for (let i = 0; i < seqLen; i++) for (let j = i + 1; j < seqLen; j++) mask[i * seqLen + j] = -1e9;
    return new PositionTables(
      tf.keep(tf.tensor2d(cos, [seqLen, rotated])),
      tf.keep(tf.tensor2d(sin, [seqLen, rotated])),
      tf.keep(tf.tensor2d(mask, [seqLen, seqLen])),
    );
  }

  /** The tables a kernel derives from these under `key`, made by `make` on first use (kept tensors). */
  derived<T extends tf.TensorContainer>(key: string, make: () => T): T {
    let t = this.derivedTables.get(key) as T | undefined;
    if (t === undefined) {
      t = make();
      this.derivedTables.set(key, t);
    }
    return t;
  }

  dispose(): void {
    tf.dispose([this.cos, this.sin, this.mask, ...this.derivedTables.values()]);
    this.derivedTables.clear();
  }
}

/** Rotary embedding on the first `rd` dims of x [B, H, T, hs], rotate_half style. */
function applyRotary(x: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D, rd: number): tf.Tensor4D {
  if (rd === 0) return x;
  const hs = x.shape[3];
  // split, not slice: its gradient is one concat, where each slice's would be a pad and an add.
  const [rot, pass] = rd === hs ? [x, null] : tf.split(x, [rd, hs - rd], 3);
  const [x1, x2] = tf.split(rot, 2, 3);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  const embedded = tf.add(tf.mul(rot, cos), tf.mul(rotated, sin));
  return (pass ? tf.concat([embedded, pass], 3) : embedded) as tf.Tensor4D;
}

/**
 * Causal self-attention of a fused QKV projection [B·T, H·3·hs] (rows interleaved per head: q, k,
 * v), rotary on q and k, heads merged: [B·T, H·hs].
 */
export const causalSelfAttention = defineOperation(
  'causalSelfAttention',
  (qkv: tf.Tensor2D, positions: PositionTables, s: AttentionShape): tf.Tensor2D => {
    const { batch, seqLen, heads, headSize: hs, rotated } = s;
    const { cos, sin, mask } = positions;
    // Rows are interleaved per head: (heads, 3·head_size) with q, k, v in that order.
    const split = tf.transpose(tf.reshape(qkv, [batch, seqLen, heads, 3 * hs]), [0, 2, 1, 3]) as tf.Tensor4D;
    const [qh, kh, v] = tf.split(split, 3, 3) as tf.Tensor4D[];
    const q = applyRotary(qh, cos, sin, rotated);
    const k = applyRotary(kh, cos, sin, rotated);
    const scores = tf.add(tf.mul(matMul(q, k, false, true), 1 / Math.sqrt(hs)), mask);
    const context = tf.transpose(matMul(tf.softmax(scores), v), [0, 2, 1, 3]); // [B, T, H, hs]
    return tf.reshape(context, [batch * seqLen, heads * hs]) as tf.Tensor2D;
  },
);
