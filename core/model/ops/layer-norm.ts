/** LayerNorm over the last axis. */
import * as tf from '../tfjs.js';

import { defineOperation } from './registry.js';

export const layerNorm = defineOperation(
  'layerNorm',
  (x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor => {
    const { mean, variance } = tf.moments(x, -1, true);
    return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), weight), bias);
  },
);
