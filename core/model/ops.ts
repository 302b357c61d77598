/**
 * Building blocks of the model with gradients that run on every backend. tfjs differentiates
 * `gather` through UnsortedSegmentSum, which the wasm backend lacks, so row lookups here use a
 * custom gradient built on ScatterNd (which sums duplicate indices on every backend).
 */
import * as tf from './tfjs.js';
import { tensorflowKernelsActive } from './tensorflow/native.js';
import { tfCrossEntropy, tfGatherRows, tfLayerNorm, tfLinear, tfMatMulNT } from './tensorflow/ops.js';
import { fusedCrossEntropy, fusedGatherRows, fusedKernelsActive, fusedLayerNorm, fusedLinear, fusedMatMulNT } from './webgpu/fused.js';

type UnaryGrad = (x: tf.Tensor, save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor };

/** tf.customGrad for a function of one tensor (its typing takes variadic inputs). */
function unaryCustomGrad(f: UnaryGrad): (x: tf.Tensor) => tf.Tensor {
  const g = tf.customGrad(((x: tf.Tensor, save: tf.GradSaveFunc) => f(x, save)) as unknown as Parameters<typeof tf.customGrad>[0]);
  return (x) => g(x);
}

/** table[ids]: rows of a [rows, width] table; the gradient scatters back into the table. */
export function gatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  if (fusedKernelsActive()) return fusedGatherRows(table, ids);
  if (tensorflowKernelsActive()) return tfGatherRows(table, ids);
  const [rows, width] = table.shape;
  // Tensors the gradient needs go through save(): tfjs disposes everything else made in the
  // forward scope before the backward pass runs.
  const f = unaryCustomGrad((t, save) => {
    save([tf.reshape(ids, [-1, 1])]);
    return {
      value: tf.gather(t, ids),
      gradFunc: (dy, [index]) => tf.scatterND(index, dy, [rows, width]),
    };
  });
  return f(table) as tf.Tensor2D;
}

/**
 * x[n, idx[n, j]] for x [N, V] and idx [N, k] (int32); differentiable in x. On webgpu row-wise
 * (gather with batchDims 1, scatter by (row, column)): tfjs's webgpu gather and scatter get flat
 * indices past 2^24 wrong, which a flattened [N·V] lookup reaches at Pythia's vocabulary. Elsewhere
 * flat (wasm's gather with batchDims reads out of bounds).
 */
export function takeAlongLastAxis(x: tf.Tensor2D, idx: tf.Tensor2D): tf.Tensor2D {
  const [n, v] = x.shape;
  const k = idx.shape[1];
  const rowWise = tf.getBackend() === 'webgpu';
  const f = unaryCustomGrad((t, save) => {
    if (rowWise) {
      const rows = tf.reshape(tf.tile(tf.reshape(tf.range(0, n, 1, 'int32'), [n, 1]), [1, k]), [n * k, 1]);
      save([tf.concat([rows, tf.reshape(idx, [n * k, 1])], 1)]);
      return {
        value: tf.gather(t, idx, 1, 1),
        gradFunc: (dy, [coords]) => tf.scatterND(coords, tf.reshape(dy, [n * k]), [n, v]),
      };
    }
    const flatIdx = tf.reshape(tf.add(idx, tf.reshape(tf.range(0, n * v, v, 'int32'), [n, 1])), [n * k]);
    save([tf.reshape(flatIdx, [-1, 1])]);
    return {
      value: tf.reshape(tf.gather(tf.reshape(t, [n * v]), flatIdx), [n, k]),
      gradFunc: (dy, [index]) => tf.reshape(tf.scatterND(index, tf.reshape(dy, [n * k]), [n * v]), [n, v]),
    };
  });
  return f(x) as tf.Tensor2D;
}

/**
 * Mean cross-entropy of logits [N, V] against integer targets [N]. The gradient is written out
 * (softmax minus one-hot) so no log-softmax graph is kept for the backward pass.
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  if (fusedKernelsActive()) return fusedCrossEntropy(logits, targets);
  if (tensorflowKernelsActive()) return tfCrossEntropy(logits, targets);
  const [n, v] = logits.shape;
  const f = unaryCustomGrad((x, save) => {
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
}

/** Exact (erf) GELU, as transformers' "gelu". */
export function gelu(x: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
}

/** LayerNorm over the last axis. */
export function layerNorm(x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  if (fusedKernelsActive() && x.rank === 2) return fusedLayerNorm(x as tf.Tensor2D, weight as tf.Tensor1D, bias as tf.Tensor1D, eps);
  if (tensorflowKernelsActive() && x.rank === 2) return tfLayerNorm(x as tf.Tensor2D, weight as tf.Tensor1D, bias as tf.Tensor1D, eps);
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps))), weight), bias);
}

/** Swaps the last two axes. */
function swapLast(x: tf.Tensor): tf.Tensor {
  const perm = x.shape.map((_, i) => i);
  [perm[perm.length - 2], perm[perm.length - 1]] = [perm[perm.length - 1], perm[perm.length - 2]];
  return tf.transpose(x, perm);
}

/** A product of the two, transposing explicitly: the wasm backend's transposed kernels are 10-50× slower. */
function plainMatMul(a: tf.Tensor, b: tf.Tensor, transposeA: boolean, transposeB: boolean): tf.Tensor {
  return tf.matMul(transposeA ? swapLast(a) : a, transposeB ? swapLast(b) : b);
}

/**
 * op(a) @ op(b), batched over leading axes. On wasm both the product and its gradients run as
 * untransposed products; elsewhere this is tf.matMul.
 */
export function matMul(a: tf.Tensor, b: tf.Tensor, transposeA = false, transposeB = false): tf.Tensor {
  if (tf.getBackend() !== 'wasm') return tf.matMul(a, b, transposeA, transposeB);
  const f = tf.customGrad(((x: tf.Tensor, y: tf.Tensor, save: tf.GradSaveFunc) => {
    save([x, y]);
    return {
      value: plainMatMul(x, y, transposeA, transposeB),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sy] = saved;
        const opY = transposeB ? swapLast(sy) : sy;
        const opX = transposeA ? swapLast(sx) : sx;
        const dx = transposeA ? plainMatMul(opY, dy, false, true) : plainMatMul(dy, opY, false, true);
        const dyy = transposeB ? plainMatMul(dy, opX, true, false) : plainMatMul(opX, dy, true, false);
        return [dx, dyy];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return f(a, b);
}

/** x @ weightᵀ + bias with a torch-layout weight [out, in]. */
export function linear(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D): tf.Tensor2D {
  if (fusedKernelsActive()) return fusedLinear(x, weight, bias);
  if (tensorflowKernelsActive()) return tfLinear(x, weight, bias);
  return tf.add(matMul(x, weight, false, true), bias) as tf.Tensor2D;
}

/** gelu(linear(x, weight, bias)); one kernel with the bias and GELU in its epilogue on the fused path. */
export function linearGelu(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D): tf.Tensor2D {
  if (fusedKernelsActive()) return fusedLinear(x, weight, bias, 'gelu');
  if (tensorflowKernelsActive()) return tfLinear(x, weight, bias, 'gelu');
  return gelu(tf.add(matMul(x, weight, false, true), bias)) as tf.Tensor2D;
}

/** x [M, K] @ weightᵀ (weight [N, K]) with no bias: the logits product. */
export function matMulNT(x: tf.Tensor2D, weight: tf.Tensor2D): tf.Tensor2D {
  if (fusedKernelsActive()) return fusedMatMulNT(x, weight);
  if (tensorflowKernelsActive()) return tfMatMulNT(x, weight);
  return matMul(x, weight, false, true) as tf.Tensor2D;
}
