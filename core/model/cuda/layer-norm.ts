/**
 * LayerNorm over the last axis on the cuda backend (kernels/layer-norm.cu). The output is stored in
 * the activation precision (it feeds a matrix product); statistics, dx and the parameter gradients
 * are f32.
 */
import type * as tf from '../tfjs.js';

import { activationStorage, customOp, toTensor } from './custom-op.js';
import { BLOCK256, ST } from './elementwise.js';
import { rowGrid } from './layout.js';
import { rowChunks, sumPartials } from './linear.js';

/** Rows per block of 256 threads: a warp each (kernels/layer-norm.cu). */
const ROWS_PER_BLOCK = 8;

export function cudaLayerNorm(x: tf.Tensor2D, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): tf.Tensor2D {
  const [N, D] = x.shape;
  const op = customOp(([xt, wt, bt], save, b) => {
    const d = b.device;
    const y = b.allocate([N, D], 'float32', activationStorage());
    const mean = b.allocate([N], 'float32');
    const rstd = b.allocate([N], 'float32');
    const xo = b.operand(xt);
    d.launch(d.kernel('layer-norm', 'layer_norm_forward'), rowGrid(Math.ceil(N / ROWS_PER_BLOCK)), BLOCK256, [
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
    ]);
    save([xt, wt, toTensor(mean), toTensor(rstd)]);
    return {
      value: toTensor(y),
      gradFunc: (dy, [xs, ws, ms, rs]) => {
        const dx = b.allocate([N, D], 'float32');
        const dyo = b.operand(dy);
        const xso = b.operand(xs);
        d.launch(d.kernel('layer-norm', 'layer_norm_backward'), rowGrid(Math.ceil(N / ROWS_PER_BLOCK)), BLOCK256, [
          ['p', b.operand(dx).ptr],
          ['p', dyo.ptr],
          ['i', ST[dyo.storage]],
          ['p', xso.ptr],
          ['i', ST[xso.storage]],
          ['p', b.operand(ms).ptr],
          ['p', b.operand(rs).ptr],
          ['p', b.operand(ws).ptr],
          ['i', N],
          ['i', D],
        ]);
        const { rowsPerChunk, chunks } = rowChunks(N);
        const pdw = b.allocate([chunks, D], 'float32');
        const pdb = b.allocate([chunks, D], 'float32');
        d.launch(
          d.kernel('layer-norm', 'layer_norm_param_partials'),
          [Math.ceil(D / 128), chunks, 1],
          [32, 8, 1],
          [
            ['p', b.operand(pdw).ptr],
            ['p', b.operand(pdb).ptr],
            ['p', dyo.ptr],
            ['i', ST[dyo.storage]],
            ['p', xso.ptr],
            ['i', ST[xso.storage]],
            ['p', b.operand(ms).ptr],
            ['p', b.operand(rs).ptr],
            ['i', N],
            ['i', D],
            ['i', rowsPerChunk],
          ],
        );
        const [dw, db] = sumPartials(b, pdw, chunks, D, pdb);
        b.release(pdw);
        b.release(pdb);
        return [toTensor(dx), toTensor(dw), toTensor(db)];
      },
    };
  });
  return op(x, weight, bias) as tf.Tensor2D;
}
