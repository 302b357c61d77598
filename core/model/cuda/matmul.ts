/**
 * Matrix products on the cuda backend: the cuBLASLt handle of the device (blas.ts) and tfjs's
 * BatchMatMul kernel (f32: tfjs-level products keep f32, as PyTorch does outside autocast; the
 * model's products run in the linear and attention operations, which follow the precision setting).
 */
import * as tf from '../tfjs.js';

import { Blas } from './blas.js';
import type { CudaDevice } from './device.js';
import { cast } from './elementwise.js';
import { gpuKernel } from './kernels.js';
import type { CudaBackend } from './tfjs-backend.js';

const handles = new WeakMap<CudaDevice, Blas>();

/** The device's cuBLASLt handle. */
export function blas(device: CudaDevice): Blas {
  let h = handles.get(device);
  if (!h) handles.set(device, (h = new Blas(device)));
  return h;
}

/** op(a) · op(b) over broadcast batch dims, [..., M, K] × [..., K, N] → [..., M, N] in f32. */
export function batchMatMul(
  b: CudaBackend,
  a: tf.TensorInfo,
  bt: tf.TensorInfo,
  transA: boolean,
  transB: boolean,
): tf.TensorInfo | null {
  const ra = a.shape.length;
  const rb = bt.shape.length;
  if (ra < 2 || rb < 2) return null;
  const M = transA ? a.shape[ra - 1] : a.shape[ra - 2];
  const K = transA ? a.shape[ra - 2] : a.shape[ra - 1];
  const N = transB ? bt.shape[rb - 2] : bt.shape[rb - 1];
  const batchA = tf.util.sizeFromShape(a.shape.slice(0, -2));
  const batchB = tf.util.sizeFromShape(bt.shape.slice(0, -2));
  if (batchA !== batchB && batchA !== 1 && batchB !== 1) return null;
  const outBatch = tf.backend_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), bt.shape.slice(0, -2));
  const batch = Math.max(batchA, batchB);
  const f32 = (t: tf.TensorInfo) => (b.storageOf(t) === 'f32' ? t : cast(b, t, 'float32', 'f32'));
  const [af, bf] = [f32(a), f32(bt)];
  const y = b.allocate([...outBatch, M, N], 'float32');
  if (M * N > 0) {
    if (K === 0) b.device.zero(b.operand(y).ptr, M * N * batch * 4);
    else {
      blas(b.device).matmul(
        {
          M,
          N,
          K,
          transA,
          transB,
          batch,
          strideA: batchA === 1 ? 0 : M * K,
          strideB: batchB === 1 ? 0 : K * N,
          strideC: M * N,
          aType: 'f32',
          bType: 'f32',
          cType: 'f32',
        },
        b.operand(af).ptr,
        b.operand(bf).ptr,
        b.operand(y).ptr,
      );
    }
  }
  if (af !== a) b.release(af);
  if (bf !== bt) b.release(bf);
  return y;
}

gpuKernel(tf.BatchMatMul, (inputs, attrs, b) => {
  const { a, b: bt } = inputs as Record<string, tf.TensorInfo>;
  if (a.dtype !== 'float32' || bt.dtype !== 'float32') return null;
  return batchMatMul(b, a, bt, attrs.transposeA as boolean, attrs.transposeB as boolean);
});
