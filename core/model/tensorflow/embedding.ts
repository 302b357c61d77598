/** The embedding lookup on the tensorflow backend: GatherV2, its gradient one UnsortedSegmentSum. */
import type * as tf from '../tfjs.js';

import { customOp } from '../ops/index.js';
import { int32Const, intAttr, op, typeAttr } from './native.js';

/** table[ids] ([rows, width] table, int32 ids [n]); the gradient sums rows back with UnsortedSegmentSum. */
export function tfGatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const rows = table.shape[0];
  const f = customOp(([t], save) => {
    // ids may be made inside the differentiated function, which tfjs disposes before the backward pass: save it.
    save([ids]);
    return {
      value: op(
        'GatherV2',
        [typeAttr('Tparams'), typeAttr('Tindices', 'int32'), typeAttr('Taxis', 'int32'), intAttr('batch_dims', 0)],
        [t, ids, int32Const(0)],
      ),
      gradFunc: (dy, [is]) =>
        op(
          'UnsortedSegmentSum',
          [typeAttr('T'), typeAttr('Tindices', 'int32'), typeAttr('Tnumsegments', 'int32')],
          [dy, is, int32Const(rows)],
        ),
    };
  });
  return f(table) as tf.Tensor2D;
}
