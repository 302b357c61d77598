/** Softmax cross-entropy on the tensorflow backend: TensorFlow's fused SparseSoftmaxCrossEntropyWithLogits. */
import type * as tf from '../tfjs.js';

import { customOp } from '../ops/index.js';
import { mul, opN, reduce, scalar, typeAttr } from './native.js';

/** Mean softmax cross-entropy of logits [N, V] against int32 targets [N]: one TensorFlow op gives the losses and their gradient. */
export function tfCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const n = logits.shape[0];
  const f = customOp(([x], save) => {
    const [losses, backprop] = opN(
      'SparseSoftmaxCrossEntropyWithLogits',
      [typeAttr('T'), typeAttr('Tlabels', 'int32')],
      [x, targets],
      2,
    );
    save([backprop]);
    return {
      value: reduce('Mean', losses, [0], false),
      gradFunc: (dy, [bp]) => mul(bp, mul(dy, scalar(1 / n))),
    };
  });
  return f(logits) as tf.Scalar;
}
