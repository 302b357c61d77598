/**
 * Training losses: cross-entropy and knowledge distillation,
 *   loss = α·CE + (1 − α)·T²·KL,
 * with the KL forward (teacher ‖ student, the default), reverse, or symmetric; over full teacher
 * logits (teacher in process) or over the teacher's top-k logits plus its log-normaliser (teacher
 * service). With top-k, the distributions compared are the k kept tokens plus one bucket for the
 * remaining mass, so k = vocabulary gives exactly the full-logit loss.
 */
import * as tf from './tfjs.js';

import { crossEntropy, takeAlongLastAxis } from './ops.js';
import { fusedKernelsActive, fusedTopKDistill, fusedTopKSupports } from './webgpu/fused.js';

export type KLDirection = 'forward' | 'reverse' | 'symmetric';

export interface DistillOptions {
  /** Weight of cross-entropy against the data; 1 − alpha weighs the KL term. */
  alpha: number;
  temperature: number;
  direction: KLDirection;
}

export const DEFAULT_DISTILL: DistillOptions = { alpha: 0.5, temperature: 1, direction: 'forward' };

/** The teacher's top-k view of each position: indices [N, k], raw logits [N, k], log-normaliser [N]. */
export interface TopKTeacher {
  indices: tf.Tensor2D;
  logits: tf.Tensor2D;
  /** logsumexp over the full vocabulary of teacher logits / temperature, per position. */
  logNormaliser: tf.Tensor1D;
}

const TINY = 1e-30;

function klTerms(logP: tf.Tensor, logQ: tf.Tensor): tf.Tensor {
  // Σ p (log p − log q) per row; rows whose p is exactly 0 contribute 0.
  return tf.sum(tf.mul(tf.exp(logP), tf.sub(logP, logQ)), -1);
}

function directedKL(logTeacher: tf.Tensor, logStudent: tf.Tensor, direction: KLDirection): tf.Tensor {
  switch (direction) {
    case 'forward':
      return klTerms(logTeacher, logStudent);
    case 'reverse':
      return klTerms(logStudent, logTeacher);
    case 'symmetric':
      return tf.mul(tf.add(klTerms(logTeacher, logStudent), klTerms(logStudent, logTeacher)), 0.5);
  }
}

/** Mean KL over positions between full-vocabulary distributions at a temperature. */
export function fullLogitKL(student: tf.Tensor2D, teacher: tf.Tensor2D, temperature: number, direction: KLDirection): tf.Scalar {
  const ls = tf.logSoftmax(tf.div(student, temperature));
  const lt = tf.logSoftmax(tf.div(teacher, temperature));
  return tf.mean(directedKL(lt, ls, direction));
}

/** Log of 1 − Σ exp(logp) over the last axis (the mass outside the kept tokens), clamped away from 0. */
function logRemainder(logp: tf.Tensor): tf.Tensor {
  return tf.log(tf.maximum(tf.sub(1, tf.sum(tf.exp(logp), -1)), TINY));
}

/** Mean KL over positions between (top-k + remainder bucket) distributions at a temperature. */
export function topKLogitKL(student: tf.Tensor2D, teacher: TopKTeacher, temperature: number, direction: KLDirection): tf.Scalar {
  const ls = tf.logSoftmax(tf.div(student, temperature)) as tf.Tensor2D;
  const lsK = takeAlongLastAxis(ls, teacher.indices);
  const ltK = tf.sub(tf.div(teacher.logits, temperature), tf.reshape(teacher.logNormaliser, [-1, 1]));
  const lt = tf.concat([ltK, tf.reshape(logRemainder(ltK), [-1, 1])], 1);
  const lsAll = tf.concat([lsK, tf.reshape(logRemainder(lsK), [-1, 1])], 1);
  return tf.mean(directedKL(lt, lsAll, direction));
}

/** α·CE + (1 − α)·T²·KL. `teacher` is full logits [N, V] or a top-k view. */
export function distillationLoss(
  student: tf.Tensor2D,
  targets: tf.Tensor1D,
  teacher: tf.Tensor2D | TopKTeacher,
  options: DistillOptions = DEFAULT_DISTILL,
): tf.Scalar {
  const { alpha, temperature, direction } = options;
  if (!(teacher instanceof tf.Tensor) && fusedKernelsActive() && fusedTopKSupports(teacher.indices.shape[1])) {
    return fusedTopKDistill(student, targets, teacher, alpha, temperature, direction);
  }
  const kl =
    teacher instanceof tf.Tensor
      ? fullLogitKL(student, teacher as tf.Tensor2D, temperature, direction)
      : topKLogitKL(student, teacher, temperature, direction);
  const klWeighted = tf.mul(kl, (1 - alpha) * temperature * temperature);
  if (alpha === 0) return klWeighted as tf.Scalar;
  return tf.add(tf.mul(crossEntropy(student, targets), alpha), klWeighted) as tf.Scalar;
}

/** The top-k view of full teacher logits (what the teacher service computes). */
export function topKFromLogits(teacher: tf.Tensor2D, k: number, temperature = 1): TopKTeacher {
  const { values, indices } = tf.topk(teacher, k, true);
  return {
    indices: indices as tf.Tensor2D,
    logits: values as tf.Tensor2D,
    logNormaliser: tf.logSumExp(tf.div(teacher, temperature), 1) as tf.Tensor1D,
  };
}
