/**
 * Row lookups with gradients that run on every backend. tfjs differentiates `gather` through
 * UnsortedSegmentSum, which the wasm backend lacks, so these use custom gradients built on
 * ScatterNd (which sums duplicate indices on every backend).
 */
import * as tf from '../tfjs.js';

import { customOp } from './custom-grad.js';
import { defineOperation } from './registry.js';

/** table[ids]: rows of a [rows, width] table; the gradient scatters back into the table. */
export const gatherRows = defineOperation('gatherRows', (table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D => {
  const [rows, width] = table.shape;
  const f = customOp(([t], save) => {
    save([tf.reshape(ids, [-1, 1])]);
    return {
      value: tf.gather(t, ids),
      gradFunc: (dy, [index]) => tf.scatterND(index, dy, [rows, width]),
    };
  });
  return f(table) as tf.Tensor2D;
});

/**
 * x[n, idx[n, j]] for x [N, V] and idx [N, k] (int32); differentiable in x. Through a flattened
 * [N·V] lookup (wasm's gather with batchDims reads out of bounds); webgpu registers a row-wise one.
 */
export const takeAlongLastAxis = defineOperation(
  'takeAlongLastAxis',
  (x: tf.Tensor2D, idx: tf.Tensor2D): tf.Tensor2D => {
    const [n, v] = x.shape;
    const k = idx.shape[1];
    const f = customOp(([t], save) => {
      const flatIdx = tf.reshape(tf.add(idx, tf.reshape(tf.range(0, n * v, v, 'int32'), [n, 1])), [n * k]);
      save([tf.reshape(flatIdx, [-1, 1])]);
      return {
        value: tf.reshape(tf.gather(tf.reshape(t, [n * v]), flatIdx), [n, k]),
        gradFunc: (dy, [index]) => tf.reshape(tf.scatterND(index, tf.reshape(dy, [n * k]), [n * v]), [n, v]),
      };
    });
    return f(x) as tf.Tensor2D;
  },
);
