/**
 * Knowledge distillation, loss = α·CE + (1 − α)·T²·KL, two operations: against the teacher's full
 * logits (a teacher in the same process), and against its top-k logits (what the teacher service
 * sends), where the distributions compared are the k kept tokens plus one bucket for the remaining
 * mass, so k = vocabulary gives exactly the full-logit loss.
 */
import * as tf from '../tfjs.js';

import { crossEntropy } from './cross-entropy.js';
import { takeAlongLastAxis } from './embedding.js';
import { defineOperation } from './registry.js';

/** forward: KL(teacher ‖ student), the default; reverse: KL(student ‖ teacher); symmetric: their mean. */
export const KL_DIRECTIONS = ['forward', 'reverse', 'symmetric'] as const;
export type KLDirection = (typeof KL_DIRECTIONS)[number];

export interface DistillOptions {
  /** Weight of cross-entropy against the data; 1 − alpha weighs the KL term. */
  alpha: number;
  temperature: number;
  direction: KLDirection;
}

/** The teacher's top-k view of each position: indices [N, k], raw logits [N, k], log-normaliser [N]. */
export interface TopKTeacher {
  indices: tf.Tensor2D;
  logits: tf.Tensor2D;
  /** logsumexp over the full vocabulary of teacher logits / temperature, per position. */
  logNormaliser: tf.Tensor1D;
}

/**
 * The top-k view of full teacher logits [N, V] (what the teacher service sends, and an in-process
 * teacher's top-k): the k largest logits of each row with their token ids, by value descending, and
 * the log-normaliser of the logits / temperature over the whole vocabulary.
 */
export const topKFromLogits = defineOperation(
  'topKFromLogits',
  (teacher: tf.Tensor2D, k: number, temperature = 1): TopKTeacher =>
    tf.tidy(() => {
      const { values, indices } = tf.topk(teacher, k, true);
      return {
        indices: indices as tf.Tensor2D,
        logits: values as tf.Tensor2D,
        logNormaliser: tf.logSumExp(temperature === 1 ? teacher : tf.div(teacher, temperature), 1) as tf.Tensor1D,
      };
    }),
);

const TINY = 1e-30;

function klTerms(logP: tf.Tensor, logQ: tf.Tensor): tf.Tensor {
  // Σ p (log p − log q) per row; rows whose p is exactly 0 contribute 0.
  return tf.sum(tf.mul(tf.exp(logP), tf.sub(logP, logQ)), -1);
}

/** KL per row between two log-distributions over the last axis, in the given direction. */
export function directedKL(logTeacher: tf.Tensor, logStudent: tf.Tensor, direction: KLDirection): tf.Tensor {
  switch (direction) {
    case 'forward':
      return klTerms(logTeacher, logStudent);
    case 'reverse':
      return klTerms(logStudent, logTeacher);
    case 'symmetric':
      return tf.mul(tf.add(klTerms(logTeacher, logStudent), klTerms(logStudent, logTeacher)), 0.5);
  }
}

/** α·CE + (1 − α)·T²·KL from a mean KL. */
export function withCrossEntropy(
  kl: tf.Scalar,
  student: tf.Tensor2D,
  targets: tf.Tensor1D,
  options: DistillOptions,
): tf.Scalar {
  const { alpha, temperature } = options;
  const klWeighted = tf.mul(kl, (1 - alpha) * temperature * temperature);
  if (alpha === 0) return klWeighted as tf.Scalar;
  return tf.add(tf.mul(crossEntropy(student, targets), alpha), klWeighted) as tf.Scalar;
}

/** Log of 1 − Σ exp(logp) over the last axis (the mass outside the kept tokens), clamped away from 0. */
function logRemainder(logp: tf.Tensor): tf.Tensor {
  return tf.log(tf.maximum(tf.sub(1, tf.sum(tf.exp(logp), -1)), TINY));
}

/** Mean KL over positions between (top-k + remainder bucket) distributions at a temperature. */
export function topKLogitKL(
  student: tf.Tensor2D,
  teacher: TopKTeacher,
  temperature: number,
  direction: KLDirection,
): tf.Scalar {
  const ls = tf.logSoftmax(tf.div(student, temperature)) as tf.Tensor2D;
  const lsK = takeAlongLastAxis(ls, teacher.indices);
  const ltK = tf.sub(tf.div(teacher.logits, temperature), tf.reshape(teacher.logNormaliser, [-1, 1]));
  const lt = tf.concat([ltK, tf.reshape(logRemainder(ltK), [-1, 1])], 1);
  const lsAll = tf.concat([lsK, tf.reshape(logRemainder(lsK), [-1, 1])], 1);
  return tf.mean(directedKL(lt, lsAll, direction));
}

/** α·CE + (1 − α)·T²·KL over the teacher's top-k (+ remainder bucket), mean over positions. */
export const topKDistillation = defineOperation(
  'topKDistillation',
  (student: tf.Tensor2D, targets: tf.Tensor1D, teacher: TopKTeacher, options: DistillOptions): tf.Scalar =>
    withCrossEntropy(topKLogitKL(student, teacher, options.temperature, options.direction), student, targets, options),
);

/** Mean KL over positions between full-vocabulary distributions at a temperature. */
export function fullLogitKL(
  student: tf.Tensor2D,
  teacher: tf.Tensor2D,
  temperature: number,
  direction: KLDirection,
): tf.Scalar {
  const ls = tf.logSoftmax(tf.div(student, temperature));
  const lt = tf.logSoftmax(tf.div(teacher, temperature));
  return tf.mean(directedKL(lt, ls, direction));
}

/** α·CE + (1 − α)·T²·KL over the teacher's full logits [N, V], mean over positions. */
export const fullDistillation = defineOperation(
  'fullDistillation',
  (student: tf.Tensor2D, targets: tf.Tensor1D, teacher: tf.Tensor2D, options: DistillOptions): tf.Scalar =>
    withCrossEntropy(fullLogitKL(student, teacher, options.temperature, options.direction), student, targets, options),
);
