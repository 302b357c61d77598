/**
 * Mean softmax cross-entropy of logits [N, V] against int32 targets on the cuda backend
 * (kernels/cross-entropy.cu): per-row losses and log-sum-exps in one pass over the logits, and the
 * gradient written directly in the logits' storage (bf16 in mixed precision), with no one-hot.
 */
import * as tf from '../tfjs.js';

import { customOp, toTensor } from './custom-op.js';
import { BLOCK256, ST } from './elementwise.js';
import { rowGrid } from './layout.js';

export function cudaCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const [N, V] = logits.shape;
  const op = customOp(([x], save, b) => {
    const d = b.device;
    const rowLoss = b.allocate([N], 'float32');
    const lse = b.allocate([N], 'float32');
    const xo = b.operand(x);
    d.launch(d.kernel('cross-entropy', 'cross_entropy_forward'), rowGrid(N), BLOCK256, [
      ['p', b.operand(rowLoss).ptr],
      ['p', b.operand(lse).ptr],
      ['p', xo.ptr],
      ['i', ST[xo.storage]],
      ['p', b.operand(targets).ptr],
      ['i', N],
      ['i', V],
    ]);
    const value = tf.mean(toTensor(rowLoss));
    save([x, toTensor(lse), targets]);
    return {
      value,
      gradFunc: (dy, [xs, ls, ts]) => {
        const xso = b.operand(xs);
        const dx = b.allocate([N, V], 'float32', xso.storage);
        d.launch(d.kernel('cross-entropy', 'cross_entropy_backward'), rowGrid(N), BLOCK256, [
          ['p', b.operand(dx).ptr],
          ['i', ST[xso.storage]],
          ['p', xso.ptr],
          ['i', ST[xso.storage]],
          ['p', b.operand(ls).ptr],
          ['p', b.operand(ts).ptr],
          ['p', b.operand(dy).ptr],
          ['f', 1 / N],
          ['i', N],
          ['i', V],
        ]);
        return toTensor(dx);
      },
    };
  });
  return op(logits) as tf.Scalar;
}
