/**
 * tfjs's TopK on the GPU (kernels/topk.cu): the k largest values of each row of the last axis with
 * their indices, in tfjs's order (value descending, index ascending); and topKFromLogits, the teacher's
 * top-k view with its log-normaliser from the same kernel (what the teacher service sends).
 */
import * as tf from '../tfjs.js';

import type { TopKTeacher } from '../ops/index.js';
import { toTensor } from './custom-op.js';
import { ST } from './elementwise.js';
import { gpuKernel } from './kernels.js';
import { rowGrid } from './layout.js';
import { type CudaBackend, cudaBackendOrThrow } from './tfjs-backend.js';

/** Largest k sorted in one block's shared memory (two 4-byte words per candidate, 128 KiB). */
const MAX_K = 16384;

/** Whether the kernel takes rows of `storage` and this k (of a vocabulary V). */
export function topKSupportedFor(storage: string, k: number, V: number): boolean {
  return (storage === 'f32' || storage === 'bf16') && k >= 1 && k <= MAX_K && k <= V;
}

/**
 * The k largest of each row of x with their indices; with `invTemperature`, also each row's
 * logsumexp of x · invTemperature (f32), computed on the way.
 */
export function topK(b: CudaBackend, x: tf.TensorInfo, k: number, invTemperature?: number): tf.TensorInfo[] | null {
  const st = b.storageOf(x);
  const V = x.shape[x.shape.length - 1];
  if (!topKSupportedFor(st, k, V)) return null;
  const rows = tf.util.sizeFromShape(x.shape.slice(0, -1));
  const shape = [...x.shape.slice(0, -1), k];
  const values = b.allocate(shape, 'float32');
  const indices = b.allocate(shape, 'int32');
  const lse = invTemperature === undefined ? null : b.allocate(x.shape.slice(0, -1), 'float32');
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
      ['p', lse ? b.operand(lse).ptr : 0],
      ['p', b.operand(x).ptr],
      ['i', ST[st]],
      ['i', rows],
      ['i', V],
      ['i', k],
      ['i', kPow2],
      ['f', invTemperature ?? 1],
    ],
    2 * kPow2 * 4,
  );
  return lse ? [values, indices, lse] : [values, indices];
}

/** topKFromLogits in one kernel: the top k and the log-normaliser from one read of each row. */
export function cudaTopKFromLogits(teacher: tf.Tensor2D, k: number, temperature = 1): TopKTeacher {
  const out = topK(cudaBackendOrThrow(), teacher, k, 1 / temperature);
  if (!out) throw new Error(`cuda topKFromLogits: k = ${k} is not supported for logits of shape [${teacher.shape}]`);
  const [values, indices, lse] = out;
  return {
    logits: toTensor<tf.Tensor2D>(values),
    indices: toTensor<tf.Tensor2D>(indices),
    logNormaliser: toTensor<tf.Tensor1D>(lse),
  };
}

gpuKernel(tf.TopK, (inputs, attrs, b) => {
  const x = (inputs as Record<string, tf.TensorInfo>).x;
  // Unsorted results may come in any order: sorted ones are a valid answer.
  return x.dtype === 'float32' ? topK(b, x, attrs.k as number) : null;
});
