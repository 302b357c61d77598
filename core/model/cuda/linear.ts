/**
 * The linear operation on the cuda backend: x · wᵀ + b (then exact GELU), and the logits product
 * x · wᵀ, with their gradients. The products run in cuBLASLt (bias in its epilogue); in mixed
 * precision their inputs are bf16 (the f32 master weight is converted each forward, as autocast
 * does) and activations are stored in bf16, while weight and bias gradients are f32. The GELU's
 * backward is fused with the bias gradient (kernels/linear.cu).
 */
import type * as tf from '../tfjs.js';

import { activationStorage, asStorage, bf16Weight, customOp, releaseCopies, toTensor } from './custom-op.js';
import { BLOCK256, ST, grid1d, unary } from './elementwise.js';
import type { Gemm } from './blas.js';
import { blas } from './matmul.js';
import type { Storage } from './storage.js';
import type { CudaBackend } from './tfjs-backend.js';

/** Column sums over N rows go by chunks of rows (a partial row each, then sumPartials): at most 64. */
export function rowChunks(N: number): { rowsPerChunk: number; chunks: number } {
  const rowsPerChunk = Math.max(32, Math.ceil(N / 64));
  return { rowsPerChunk, chunks: Math.ceil(N / rowsPerChunk) };
}

/** db[C] = Σ_rows g [N, C]; with `z`, g = da · gelu'(z) is also written to a new dz (returned). */
export function columnSums(
  b: CudaBackend,
  g: tf.TensorInfo,
  N: number,
  C: number,
  z?: tf.TensorInfo,
  dzStorage: Storage = 'f32',
): { sum: tf.TensorInfo; dz?: tf.TensorInfo } {
  const d = b.device;
  const { rowsPerChunk, chunks } = rowChunks(N);
  const partial = b.allocate([chunks, C], 'float32');
  const dz = z ? b.allocate([N, C], 'float32', dzStorage) : undefined;
  const go = b.operand(g);
  const zo = z ? b.operand(z) : go;
  const dzo = dz ? b.operand(dz) : go;
  d.launch(
    d.kernel('linear', 'colsum_partial'),
    [Math.ceil(C / 128), chunks, 1],
    [32, 8, 1],
    [
      ['p', b.operand(partial).ptr],
      ['p', dzo.ptr],
      ['i', ST[dzo.storage]],
      ['p', go.ptr],
      ['i', ST[go.storage]],
      ['p', zo.ptr],
      ['i', ST[zo.storage]],
      ['i', N],
      ['i', C],
      ['i', rowsPerChunk],
      ['i', z ? 1 : 0],
    ],
  );
  const [sum] = sumPartials(b, partial, chunks, C);
  b.release(partial);
  return { sum, dz };
}

/** Σ over the rows of partial [G, C] → [C] (f32), in order; with `partialB`, its sums too, in the same launch. */
export function sumPartials(
  b: CudaBackend,
  partial: tf.TensorInfo,
  G: number,
  C: number,
  partialB?: tf.TensorInfo,
): tf.TensorInfo[] {
  const out = b.allocate([C], 'float32');
  const outB = partialB ? b.allocate([C], 'float32') : undefined;
  const d = b.device;
  d.launch(d.kernel('linear', 'sum_partials'), grid1d((partialB ? 2 : 1) * C, d), BLOCK256, [
    ['p', b.operand(out).ptr],
    ['p', b.operand(partial).ptr],
    ['p', outB ? b.operand(outB).ptr : 0],
    ['p', partialB ? b.operand(partialB).ptr : 0],
    ['i', G],
    ['i', C],
  ]);
  return outB ? [out, outB] : [out];
}

/**
 * c = a · op(b) + bias. cuBLASLt's epilogue takes the bias only in the output's type (a bf16 output
 * with an f32 bias is CUBLAS_STATUS_INVALID_VALUE, as cublasLt.h says), so mixed precision converts
 * the f32 bias to bf16 first, as PyTorch's autocast does; a bias of one row costs one small launch.
 */
function biasedProduct(
  b: CudaBackend,
  g: Gemm,
  a: tf.TensorInfo,
  w: tf.TensorInfo,
  c: tf.TensorInfo,
  bias: tf.TensorInfo,
): void {
  const ptr = (t: tf.TensorInfo) => b.operand(t).ptr;
  const converted = asStorage(b, bias, g.cType);
  blas(b.device).matmul(g, ptr(a), ptr(w), ptr(c), ptr(converted));
  releaseCopies(b, [[bias, converted]]);
}

/** x [N, in] · weightᵀ ([out, in]) + bias, then GELU when asked; gradients for all three. */
export function cudaLinear(
  x: tf.Tensor2D,
  weight: tf.Tensor2D,
  bias: tf.Tensor1D,
  activation: 'none' | 'gelu' = 'none',
): tf.Tensor2D {
  const [N, inF] = x.shape;
  const outF = weight.shape[0];
  const op = customOp(([xt, wt, bt], save, b) => {
    const act = activationStorage();
    const gemm = blas(b.device);
    const xa = asStorage(b, xt, act);
    const wa = act === 'bf16' ? bf16Weight(b, wt) : wt;
    const z = b.allocate([N, outF], 'float32', act);
    biasedProduct(
      b,
      { M: N, N: outF, K: inF, transB: true, aType: act, bType: act, cType: act, bias: true },
      xa,
      wa,
      z,
      bt,
    );
    let value = z;
    if (activation === 'gelu') value = unary(b, 'Gelu', z, act);
    // Saved: the product's inputs as the backward's products read them (their copies become tensors).
    const xs = xa === xt ? xt : toTensor(xa);
    const ws = wa;
    save(activation === 'gelu' ? [xs, ws, toTensor(z)] : [xs, ws]);
    return {
      value: toTensor(value),
      gradFunc: (dy, saved) => {
        const [xsv, wsv, zs] = saved;
        const { sum: db, dz } = columnSums(b, dy, N, outF, zs, act);
        const g = dz ?? dy;
        const ga = asStorage(b, g, act);
        const dx = b.allocate([N, inF], 'float32');
        gemm.matmul(
          { M: N, N: inF, K: outF, aType: act, bType: act, cType: 'f32' },
          b.operand(ga).ptr,
          b.operand(wsv).ptr,
          b.operand(dx).ptr,
        );
        const dw = b.allocate([outF, inF], 'float32');
        gemm.matmul(
          { M: outF, N: inF, K: N, transA: true, aType: act, bType: act, cType: 'f32' },
          b.operand(ga).ptr,
          b.operand(xsv).ptr,
          b.operand(dw).ptr,
        );
        releaseCopies(b, [[g, ga]]);
        if (dz) b.release(dz);
        return [toTensor(dx), toTensor(dw), toTensor(db)];
      },
    };
  });
  return op(x, weight, bias) as tf.Tensor2D;
}

/** a [M, K] · bᵀ (b [N, K]) with gradients for both: the logits product h · embed_outᵀ. */
export function cudaMatMulNT(a: tf.Tensor2D, bMat: tf.Tensor2D): tf.Tensor2D {
  const [M, K] = a.shape;
  const N = bMat.shape[0];
  const op = customOp(([at, bt], save, b) => {
    const act = activationStorage();
    const gemm = blas(b.device);
    const aa = asStorage(b, at, act);
    const ba = act === 'bf16' ? bf16Weight(b, bt) : bt;
    const c = b.allocate([M, N], 'float32', act);
    gemm.matmul(
      { M, N, K, transB: true, aType: act, bType: act, cType: act },
      b.operand(aa).ptr,
      b.operand(ba).ptr,
      b.operand(c).ptr,
    );
    save([aa === at ? at : toTensor(aa), ba]);
    return {
      value: toTensor(c),
      gradFunc: (dy, [as, bs]) => {
        const g = asStorage(b, dy, act);
        const da = b.allocate([M, K], 'float32');
        gemm.matmul(
          { M, N: K, K: N, aType: act, bType: act, cType: 'f32' },
          b.operand(g).ptr,
          b.operand(bs).ptr,
          b.operand(da).ptr,
        );
        const db = b.allocate([N, K], 'float32');
        gemm.matmul(
          { M: N, N: K, K: M, transA: true, aType: act, bType: act, cType: 'f32' },
          b.operand(g).ptr,
          b.operand(as).ptr,
          b.operand(db).ptr,
        );
        releaseCopies(b, [[dy, g]]);
        return [toTensor(da), toTensor(db)];
      },
    };
  });
  return op(a, bMat) as tf.Tensor2D;
}
