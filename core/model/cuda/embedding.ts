/**
 * The embedding lookup on the cuda backend: rows of the table gathered by token id; the gradient
 * added back into a zeroed table at those ids (kernels/embedding.cu), with no one-hot.
 */
import * as tf from '../tfjs.js';

import { customOp, toTensor } from './custom-op.js';
import { BLOCK256, ST, grid1d } from './elementwise.js';
import { gatherRows } from './layout.js';

export function cudaGatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const [rows, width] = table.shape;
  const n = ids.shape[0];
  const op = customOp(([t], save, b) => {
    const i32 = ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32');
    save([i32]);
    return {
      value: toTensor(gatherRows(b, t, i32)),
      gradFunc: (dy, [idx]) => {
        const d = b.device;
        const out = b.allocate([rows, width], 'float32');
        d.zero(b.operand(out).ptr, rows * width * 4);
        const dyo = b.operand(dy);
        d.launch(d.kernel('embedding', 'scatter_add_rows'), grid1d(n * width, d), BLOCK256, [
          ['p', b.operand(out).ptr],
          ['p', dyo.ptr],
          ['i', ST[dyo.storage]],
          ['p', b.operand(idx).ptr],
          ['i', n],
          ['i', width],
        ]);
        return toTensor(out);
      },
    };
  });
  return op(table) as tf.Tensor2D;
}
