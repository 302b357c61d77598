/**
 * The wasm backend's kernels for the operations (../ops); ../backend.ts imports this module when it
 * loads wasm. Its transposed matrix-product kernels are 10-50× slower than untransposed ones, so
 * products and their gradients transpose explicitly.
 */
import { customOp, matMul } from '../ops/index.js';
import * as tf from '../tfjs.js';

/** Swaps the last two axes. */
function swapLast(x: tf.Tensor): tf.Tensor {
  const perm = x.shape.map((_, i) => i);
  [perm[perm.length - 2], perm[perm.length - 1]] = [perm[perm.length - 1], perm[perm.length - 2]];
  return tf.transpose(x, perm);
}

/** A product of the two, transposing explicitly. */
function plainMatMul(a: tf.Tensor, b: tf.Tensor, transposeA: boolean, transposeB: boolean): tf.Tensor {
  return tf.matMul(transposeA ? swapLast(a) : a, transposeB ? swapLast(b) : b);
}

/** op(a) @ op(b), batched over leading axes, with the product and both gradients as untransposed products. */
function untransposedMatMul(a: tf.Tensor, b: tf.Tensor, transposeA = false, transposeB = false): tf.Tensor {
  const f = customOp(([x, y], save) => {
    save([x, y]);
    return {
      value: plainMatMul(x, y, transposeA, transposeB),
      gradFunc: (dy, [sx, sy]) => {
        const opY = transposeB ? swapLast(sy) : sy;
        const opX = transposeA ? swapLast(sx) : sx;
        const dx = transposeA ? plainMatMul(opY, dy, false, true) : plainMatMul(dy, opY, false, true);
        const dyy = transposeB ? plainMatMul(dy, opX, true, false) : plainMatMul(opX, dy, true, false);
        return [dx, dyy];
      },
    };
  });
  return f(a, b);
}

matMul.register({ backend: 'wasm', name: 'explicit transposes', run: untransposedMatMul });
