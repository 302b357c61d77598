/**
 * Tensors read back to the host as of one moment. A checkpoint is taken while training goes on
 * (train.ts writes it in the background), and the next steps update the weights and the optimiser's
 * moments in place; so every read-back starts before the caller awaits any of them, and each backend's
 * read holds the value of the moment it was asked for (the cuda backend copies on the device first).
 */
import type { HostTensor } from './safetensors.js';
import type * as tf from './tfjs.js';

/** The f32 tensors of `entries` on the host, read as of this call. */
export async function readAllToHost(entries: Iterable<[string, tf.Tensor]>): Promise<Map<string, HostTensor>> {
  const all = [...entries];
  const data = await Promise.all(all.map(([, t]) => t.data()));
  return new Map(
    all.map(([name, t], i) => [name, { dtype: 'float32', shape: t.shape.slice(), data: data[i] as Float32Array }]),
  );
}
