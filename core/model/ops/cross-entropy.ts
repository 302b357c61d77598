/** Mean softmax cross-entropy of logits against integer targets. */
import * as tf from '../tfjs.js';

import { customOp } from './custom-grad.js';
import { takeAlongLastAxis } from './embedding.js';
import { matMulNT } from './linear.js';
import { defineOperation } from './registry.js';

/**
 * Mean cross-entropy of logits [N, V] against integer targets [N]. The gradient is written out
 * (softmax minus one-hot) so no log-softmax graph is kept for the backward pass.
 */
export const crossEntropy = defineOperation('crossEntropy', (logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar => {
  const [n, v] = logits.shape;
  const f = customOp(([x], save) => {
    const x2 = x as tf.Tensor2D;
    const lse = tf.logSumExp(x2, 1);
    const picked = tf.reshape(takeAlongLastAxis(x2, tf.reshape(targets, [n, 1]) as tf.Tensor2D), [n]);
    const value = tf.mean(tf.sub(lse, picked));
    save([x2, lse, targets]);
    return {
      value,
      gradFunc: (dy, saved) => {
        const [xs, l, t] = saved;
        const probs = tf.exp(tf.sub(xs, tf.reshape(l, [n, 1])));
        // oneHot straight to float32 writes integer bits on the wasm backend; cast instead.
        const hot = tf.cast(tf.oneHot(t as tf.Tensor1D, v), 'float32');
        return tf.mul(tf.sub(probs, hot), tf.div(dy, n));
      },
    };
  });
  return f(logits) as tf.Scalar;
});

/**
 * Mean cross-entropy of the logits h [N, D] · wᵀ (w [V, D], the output embedding) against targets:
 * the logits product and the loss as one operation, so a backend can hand the logits' gradient to
 * the products' gradients in the form they take (webgpu in mixed precision: f16, written once).
 */
export const logitsCrossEntropy = defineOperation(
  'logitsCrossEntropy',
  (h: tf.Tensor2D, w: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar => crossEntropy(matMulNT(h, w), targets),
);
