/**
 * tfjs's TopK on the GPU (kernels/topk.cu): the k largest values of each row of the last axis with
 * their indices, in tfjs's order (value descending, index ascending). The teacher service's top-k
 * logits come from here.
 */
import * as tf from '../tfjs.js';

import { ST } from './elementwise.js';
import { gpuKernel } from './kernels.js';
import { rowGrid } from './layout.js';
import type { CudaBackend } from './tfjs-backend.js';

/** Largest k sorted in one block's shared memory (two 4-byte words per candidate, 128 KiB). */
const MAX_K = 16384;

export function topK(b: CudaBackend, x: tf.TensorInfo, k: number): tf.TensorInfo[] | null {
  const st = b.storageOf(x);
  const V = x.shape[x.shape.length - 1];
  if ((st !== 'f32' && st !== 'bf16') || k > MAX_K || k > V || k < 1) return null;
  const rows = tf.util.sizeFromShape(x.shape.slice(0, -1));
  const shape = [...x.shape.slice(0, -1), k];
  const values = b.allocate(shape, 'float32');
  const indices = b.allocate(shape, 'int32');
  let kPow2 = 1;
  while (kPow2 < k) kPow2 *= 2;
  const d = b.device;
  d.launch(
    d.kernel('topk', 'top_k'),
    rowGrid(rows),
    [256, 1, 1],
    [
      ['p', b.operand(values).ptr],
      ['p', b.operand(indices).ptr],
      ['p', b.operand(x).ptr],
      ['i', ST[st]],
      ['i', rows],
      ['i', V],
      ['i', k],
      ['i', kPow2],
    ],
    2 * kPow2 * 4,
  );
  return [values, indices];
}

gpuKernel(tf.TopK, (inputs, attrs, b) => {
  const x = (inputs as Record<string, tf.TensorInfo>).x;
  // Unsorted results may come in any order: sorted ones are a valid answer.
  return x.dtype === 'float32' ? topK(b, x, attrs.k as number) : null;
});
