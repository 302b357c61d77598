/**
 * Distillation, α·CE + (1 − α)·T²·KL, on the cuda backend (kernels/distill.cu), over the teacher's
 * top-k plus a remainder bucket (ops/distill.ts's topKDistillation) or over its full logits
 * (fullDistillation): two kernels each, one block per row, no log-softmax of the full logits kept,
 * the gradient written directly in the logits' storage.
 */
import * as tf from '../tfjs.js';

import type { KLDirection, TopKTeacher } from '../ops/index.js';
import { asStorage, customOp, toTensor } from './custom-op.js';
import type { KernelArg } from './device.js';
import { BLOCK256, ST } from './elementwise.js';
import { rowGrid } from './layout.js';

const DIRECTION: Record<KLDirection, number> = { forward: 0, reverse: 1, symmetric: 2 };

/** The KD struct of kernels/distill.cu: four ints, four floats. */
function kdArgs(
  N: number,
  V: number,
  k: number,
  direction: KLDirection,
  alpha: number,
  temperature: number,
): KernelArg {
  const bytes = new Uint8Array(32);
  const v = new DataView(bytes.buffer);
  [N, V, k, DIRECTION[direction]].forEach((x, i) => v.setInt32(i * 4, x, true));
  [alpha, temperature, (1 - alpha) * temperature * temperature, 1 / N].forEach((x, i) =>
    v.setFloat32(16 + i * 4, x, true),
  );
  return ['b', bytes];
}

/** The kernels keep 3·k floats per row in shared memory. */
export function topKSupported(k: number): boolean {
  return k >= 1 && k <= 16384;
}

export function cudaTopKDistill(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
  teacher: TopKTeacher,
  alpha: number,
  temperature: number,
  direction: KLDirection,
): tf.Scalar {
  const [N, V] = logits.shape;
  const k = teacher.indices.shape[1];
  const u = kdArgs(N, V, k, direction, alpha, temperature);
  const tIdx = teacher.indices.dtype === 'int32' ? teacher.indices : tf.cast(teacher.indices, 'int32');
  const op = customOp(([x], save, b) => {
    const d = b.device;
    const rowLoss = b.allocate([N], 'float32');
    const lse1 = b.allocate([N], 'float32');
    const lseT = b.allocate([N], 'float32');
    const xo = b.operand(x);
    const ptr = (t: tf.TensorInfo) => b.operand(t).ptr;
    // The kernels read the teacher's values as f32.
    const tLogits = asStorage(b, teacher.logits, 'f32');
    const tLogZ = asStorage(b, teacher.logNormaliser, 'f32');
    d.launch(
      d.kernel('distill', 'topk_distill_forward'),
      rowGrid(N),
      BLOCK256,
      [
        ['p', ptr(rowLoss)],
        ['p', ptr(lse1)],
        ['p', ptr(lseT)],
        ['p', xo.ptr],
        ['i', ST[xo.storage]],
        ['p', ptr(targets)],
        ['p', ptr(tIdx)],
        ['p', ptr(tLogits)],
        ['p', ptr(tLogZ)],
        u,
      ],
      2 * k * 4,
    );
    const value = tf.mean(toTensor(rowLoss));
    save([
      x,
      toTensor(lse1),
      toTensor(lseT),
      tLogits === teacher.logits ? teacher.logits : toTensor(tLogits),
      tLogZ === teacher.logNormaliser ? teacher.logNormaliser : toTensor(tLogZ),
    ]);
    return {
      value,
      gradFunc: (dy, [xs, l1, lt, tl, tz]) => {
        const xso = b.operand(xs);
        const dx = b.allocate([N, V], 'float32', xso.storage);
        d.launch(
          d.kernel('distill', 'topk_distill_backward'),
          rowGrid(N),
          BLOCK256,
          [
            ['p', ptr(dx)],
            ['i', ST[xso.storage]],
            ['p', xso.ptr],
            ['i', ST[xso.storage]],
            ['p', ptr(targets)],
            ['p', ptr(tIdx)],
            ['p', ptr(tl)],
            ['p', ptr(tz)],
            ['p', ptr(l1)],
            ['p', ptr(lt)],
            ['p', ptr(dy)],
            u,
          ],
          3 * k * 4,
        );
        return toTensor(dx);
      },
    };
  });
  return op(logits) as tf.Scalar;
}

/**
 * Full-logit distillation against the teacher's logits [N, V] (read in their storage, f32 or bf16):
 * about four passes over a row of each, where tfjs's operations made some thirty over [N, V] tensors.
 */
export function cudaFullDistill(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
  teacher: tf.Tensor2D,
  alpha: number,
  temperature: number,
  direction: KLDirection,
): tf.Scalar {
  const [N, V] = logits.shape;
  // k is the kernels' shared-memory size for top-k; the full-logit kernels keep no row in it.
  const u = kdArgs(N, V, 0, direction, alpha, temperature);
  const op = customOp(([x], save, b) => {
    const d = b.device;
    const ptr = (t: tf.TensorInfo) => b.operand(t).ptr;
    const rowLoss = b.allocate([N], 'float32');
    const lse1 = b.allocate([N], 'float32');
    const lseT = b.allocate([N], 'float32');
    const lseTeacher = b.allocate([N], 'float32');
    const xo = b.operand(x);
    const to = b.operand(teacher);
    d.launch(d.kernel('distill', 'full_distill_forward'), rowGrid(N), BLOCK256, [
      ['p', ptr(rowLoss)],
      ['p', ptr(lse1)],
      ['p', ptr(lseT)],
      ['p', ptr(lseTeacher)],
      ['p', xo.ptr],
      ['i', ST[xo.storage]],
      ['p', ptr(targets)],
      ['p', to.ptr],
      ['i', ST[to.storage]],
      u,
    ]);
    const value = tf.mean(toTensor(rowLoss));
    save([x, teacher, toTensor(lse1), toTensor(lseT), toTensor(lseTeacher)]);
    return {
      value,
      gradFunc: (dy, [xs, ts, l1, lt, lz]) => {
        const xso = b.operand(xs);
        const tso = b.operand(ts);
        const dx = b.allocate([N, V], 'float32', xso.storage);
        d.launch(d.kernel('distill', 'full_distill_backward'), rowGrid(N), BLOCK256, [
          ['p', ptr(dx)],
          ['i', ST[xso.storage]],
          ['p', xso.ptr],
          ['i', ST[xso.storage]],
          ['p', ptr(targets)],
          ['p', tso.ptr],
          ['i', ST[tso.storage]],
          ['p', ptr(l1)],
          ['p', ptr(lt)],
          ['p', ptr(lz)],
          ['p', ptr(dy)],
          u,
        ]);
        return toTensor(dx);
      },
    };
  });
  return op(logits) as tf.Scalar;
}
