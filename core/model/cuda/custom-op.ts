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

/**
 * bf16 copies of f32 weights for the products of mixed precision, kept from step to step instead of
 * converting every weight in every forward: by the weight's data, so a reassigned variable (new data)
 * gets a new copy; AdamW (adamw.ts) refreshes a copy in place when it updates its weight, the only
 * in-place change a weight sees; the copy goes when the weight's data does.
 */
const shadows = new WeakMap<object, tf.Tensor>();

/** The weight's bf16 copy (made on first use). */
export function bf16Weight(b: CudaBackend, w: tf.Tensor): tf.Tensor {
  if (b.storageOf(w) === 'bf16') return w;
  let s = shadows.get(w.dataId);
  if (!s) {
    const copy = tf.keep(toTensor(cast(b, w, 'float32', 'bf16')));
    s = copy;
    shadows.set(w.dataId, copy);
    b.whenFreed(w.dataId, () => {
      shadows.delete(w.dataId);
      copy.dispose();
    });
  }
  return s;
}

/** The bf16 copy of a weight if it has one. */
export function bf16Shadow(w: tf.Tensor): tf.Tensor | undefined {
  return shadows.get(w.dataId);
}

/** x in `storage`: x itself when it already is, else a converted copy (the caller releases copies). */
export function asStorage(b: CudaBackend, x: tf.TensorInfo, storage: Storage): tf.TensorInfo {
  return b.storageOf(x) === storage ? x : cast(b, x, 'float32', storage);
}

/** Releases each copy made by asStorage (those that are not the original). */
export function releaseCopies(b: CudaBackend, pairs: Array<[tf.TensorInfo, tf.TensorInfo]>): void {
  for (const [orig, copy] of pairs) if (copy !== orig) b.release(copy);
}
