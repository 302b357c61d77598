/**
 * Training losses: cross-entropy and knowledge distillation,
 *   loss = α·CE + (1 − α)·T²·KL,
 * with the KL forward (teacher ‖ student, the default), reverse, or symmetric; over full teacher
 * logits (teacher in process) or over the teacher's top-k logits plus its log-normaliser (teacher
 * service; both operations in ops/distill.ts). With top-k, the distributions compared are the k kept
 * tokens plus one bucket for the remaining mass, so k = vocabulary gives exactly the full-logit loss.
 */
import * as tf from './tfjs.js';

import { type DistillOptions, type TopKTeacher, fullDistillation, topKDistillation } from './ops/index.js';

export { topKFromLogits } from './ops/index.js';

export const DEFAULT_DISTILL: DistillOptions = { alpha: 0.5, temperature: 1, direction: 'forward' };

/** α·CE + (1 − α)·T²·KL. `teacher` is full logits [N, V] or a top-k view. */
export function distillationLoss(
  student: tf.Tensor2D,
  targets: tf.Tensor1D,
  teacher: tf.Tensor2D | TopKTeacher,
  options: DistillOptions = DEFAULT_DISTILL,
): tf.Scalar {
  if (!(teacher instanceof tf.Tensor)) return topKDistillation(student, targets, teacher, options);
  return fullDistillation(student, targets, teacher as tf.Tensor2D, options);
}
