/** tf.customGrad with tensor inputs as an array, the way every hand-written gradient here uses it. */
import * as tf from '../tfjs.js';

export type GradFunc = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];

/**
 * A differentiable function of its tensor inputs: `f` returns the value and the gradient function;
 * tensors the gradient needs go through save() (tfjs disposes everything else made in the forward
 * scope before the backward pass runs).
 */
export function customOp(
  f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: GradFunc },
): (...inputs: tf.Tensor[]) => tf.Tensor {
  // tf.customGrad's typing takes variadic inputs with the save function last.
  const g = tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    return f(args as tf.Tensor[], save);
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  return (...inputs) => g(...inputs);
}
