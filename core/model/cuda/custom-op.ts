/**
 * What the cuda backend's operation kernels share: tf.customGrad with variadic inputs, turning
 * kernel outputs into tracked tensors, and the storage precision of activations.
 */
import { precision } from '../precision.js';
import * as tf from '../tfjs.js';

import { cast } from './elementwise.js';
import type { Storage } from './storage.js';
import { type CudaBackend, cudaBackendOrThrow } from './tfjs-backend.js';

type Grad = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

/** tf.customGrad with variadic tensor inputs and the save function last. */
export function customOp(
  f: (inputs: tf.Tensor[], save: tf.GradSaveFunc, b: CudaBackend) => { value: tf.Tensor; gradFunc: Grad },
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const g = tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    return f(args as tf.Tensor[], save, cudaBackendOrThrow());
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return (...inputs) => g(...inputs);
}

/** Wraps kernel output data as a tracked tfjs tensor. */
export function toTensor<T extends tf.Tensor = tf.Tensor>(info: tf.TensorInfo): T {
  return tf.engine().makeTensorFromTensorInfo(info) as T;
}

/** Storage of activations between matrix products: bf16 in mixed precision, else f32. */
export function activationStorage(): Storage {
  return precision() === 'mixed' ? 'bf16' : 'f32';
}

/** x in `storage`: x itself when it already is, else a converted copy (the caller releases copies). */
export function asStorage(b: CudaBackend, x: tf.TensorInfo, storage: Storage): tf.TensorInfo {
  return b.storageOf(x) === storage ? x : cast(b, x, 'float32', storage);
}

/** Releases each copy made by asStorage (those that are not the original). */
export function releaseCopies(b: CudaBackend, pairs: Array<[tf.TensorInfo, tf.TensorInfo]>): void {
  for (const [orig, copy] of pairs) if (copy !== orig) b.release(copy);
}
