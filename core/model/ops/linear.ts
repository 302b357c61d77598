/**
 * Matrix products: linear layers with their bias and GELU epilogues, the logits product, and the
 * batched product attention uses.
 */
import * as tf from '../tfjs.js';

import { defineOperation } from './registry.js';

/**
 * op(a) @ op(b), batched over leading axes: tf.matMul, whose gradient tfjs writes. The wasm backend
 * registers a variant that transposes explicitly (its transposed kernels are 10-50× slower).
 */
export const matMul = defineOperation(
  'matMul',
  (a: tf.Tensor, b: tf.Tensor, transposeA = false, transposeB = false): tf.Tensor =>
    tf.matMul(a, b, transposeA, transposeB),
);

/** Exact (erf) GELU, as transformers' "gelu". */
export function gelu(x: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
}

export type Activation = 'none' | 'gelu';

/** x @ weightᵀ + bias with a torch-layout weight [out, in], then GELU when asked (the MLP's up projection). */
export const linear = defineOperation(
  'linear',
  (x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D, activation: Activation = 'none'): tf.Tensor2D => {
    const z = tf.add(matMul(x, weight, false, true), bias);
    return (activation === 'gelu' ? gelu(z) : z) as tf.Tensor2D;
  },
);

/**
 * The MLP block, GELU(x·W_upᵀ + b_up)·W_downᵀ + b_down (torch-layout weights): one operation so a
 * backend can hold the hidden activation in its own form (webgpu's mixed precision writes it once,
 * in f16, for the down product).
 */
export const mlp = defineOperation(
  'mlp',
  (
    x: tf.Tensor2D,
    upWeight: tf.Tensor2D,
    upBias: tf.Tensor1D,
    downWeight: tf.Tensor2D,
    downBias: tf.Tensor1D,
  ): tf.Tensor2D => linear(linear(x, upWeight, upBias, 'gelu'), downWeight, downBias),
);

/** x [M, K] @ weightᵀ (weight [N, K]) with no bias: the logits product. */
export const matMulNT = defineOperation(
  'matMulNT',
  (x: tf.Tensor2D, weight: tf.Tensor2D): tf.Tensor2D => matMul(x, weight, false, true) as tf.Tensor2D,
);
