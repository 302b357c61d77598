/**
 * LayerNorm over the last axis on the cuda backend (kernels/layer-norm.cu). The output is stored in
 * the activation precision (it feeds a matrix product); statistics, dx and the parameter gradients
 * are f32.
 */
import type * as tf from '../tfjs.js';

import { activationStorage, customOp, toTensor } from './custom-op.js';
import { BLOCK256, ST } from './elementwise.js';
import { rowGrid } from './layout.js';
import { sumPartials } from './linear.js';

export function cudaLayerNorm(x: tf.Tensor2D, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): tf.Tensor2D {
  const [N, D] = x.shape;
  const op = customOp(([xt, wt, bt], save, b) => {
    const d = b.device;
    const y = b.allocate([N, D], 'float32', activationStorage());
    const mean = b.allocate([N], 'float32');
    const rstd = b.allocate([N], 'float32');
    const xo = b.operand(xt);
    d.launch(
      d.kernel('layer-norm', 'layer_norm_forward'),
      rowGrid(N),
      [128, 1, 1],
      [
        ['p', b.operand(y).ptr],
        ['i', ST[b.storageOf(y)]],
        ['p', b.operand(mean).ptr],
        ['p', b.operand(rstd).ptr],
        ['p', xo.ptr],
        ['i', ST[xo.storage]],
        ['p', b.operand(wt).ptr],
        ['p', b.operand(bt).ptr],
        ['i', N],
        ['i', D],
        ['f', eps],
      ],
    );
    save([xt, wt, toTensor(mean), toTensor(rstd)]);
    return {
      value: toTensor(y),
      gradFunc: (dy, [xs, ws, ms, rs]) => {
        // A warp per row, 8 to a block; up to four blocks a multiprocessor, whose partials sumPartials adds.
        const G = Math.max(1, Math.min(Math.ceil(N / 8), 4 * d.info.multiprocessors));
        const dx = b.allocate([N, D], 'float32');
        const pdw = b.allocate([G, D], 'float32');
        const pdb = b.allocate([G, D], 'float32');
        const dyo = b.operand(dy);
        const xso = b.operand(xs);
        d.launch(
          d.kernel('layer-norm', 'layer_norm_backward'),
          [G, 1, 1],
          BLOCK256,
          [
            ['p', b.operand(dx).ptr],
            ['p', b.operand(pdw).ptr],
            ['p', b.operand(pdb).ptr],
            ['p', dyo.ptr],
            ['i', ST[dyo.storage]],
            ['p', xso.ptr],
            ['i', ST[xso.storage]],
            ['p', b.operand(ms).ptr],
            ['p', b.operand(rs).ptr],
            ['p', b.operand(ws).ptr],
            ['i', N],
            ['i', D],
          ],
          2 * D * 4,
        );
        const [dw, db] = sumPartials(b, pdw, G, D, pdb);
        b.release(pdw);
        b.release(pdb);
        return [toTensor(dx), toTensor(dw), toTensor(db)];
      },
    };
  });
  return op(x, weight, bias) as tf.Tensor2D;
}
