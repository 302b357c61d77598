/** GPT-NeoX's parallel residual: x + attn(ln1(x)) + mlp(ln2(x)). */
import * as tf from '../tfjs.js';

import { defineOperation } from './registry.js';

/**
 * h + attn + mlp, added left to right. Where each op is a TensorFlow call or a GPU dispatch,
 * backends register one addN (one pass instead of two, the same order of additions).
 */
export const parallelResidual = defineOperation(
  'parallelResidual',
  (h: tf.Tensor2D, attn: tf.Tensor2D, mlp: tf.Tensor2D): tf.Tensor2D => tf.add(tf.add(h, attn), mlp) as tf.Tensor2D,
);

/** The kernel backends that prefer one pass register for parallelResidual. */
export const addNResidual = (h: tf.Tensor2D, attn: tf.Tensor2D, mlp: tf.Tensor2D): tf.Tensor2D =>
  tf.addN([h, attn, mlp]) as tf.Tensor2D;
