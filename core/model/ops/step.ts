/**
 * A training step as one unit of device work, and hooks of the training loop that some backends need:
 * after each step, once after the first, and after a model is done with.
 */
import * as tf from '../tfjs.js';

import type { AdamWStep } from './adamw.js';
import { defineOperation } from './registry.js';

/** One per-step input of a training step: host values, or a tensor already on the device. */
export interface StepInput {
  shape: number[];
  dtype: 'int32' | 'float32';
  data: Int32Array | Float32Array | tf.Tensor;
}

/**
 * Device work that repeats with the same shapes, stated so that a backend may replay it (the cuda
 * backend captures it as a CUDA graph per shape and replays it): everything that changes from one run
 * to the next comes in through `inputs`; `state` lists the tensors the body reads besides them (or
 * updates in place), and `body` computes the outputs from the inputs' tensors. As such: a teacher's
 * forward pass and top-k in the teacher service, over weights it only reads.
 */
export interface RepeatedPass {
  /** Distinguishes work of different kinds with the same input shapes (e.g. with or without distillation). */
  key: string;
  inputs: StepInput[];
  state: tf.Tensor[];
  body: (inputs: tf.Tensor[]) => tf.Tensor[];
}

/**
 * A training step as a repeated pass: its inputs are the tokens, targets and a teacher's view, its
 * state the weights and optimiser moments it updates in place, its outputs the loss and gradient norm;
 * `optimizer` brings the update's numbers, which change every step.
 */
export interface TrainingStep extends RepeatedPass {
  optimizer: AdamWStep;
}

/** The inputs as tensors, then the body; what every backend does that does not replay. */
function runEagerly(given: StepInput[], body: (inputs: tf.Tensor[]) => tf.Tensor[]): tf.Tensor[] {
  const made: tf.Tensor[] = [];
  const inputs = given.map((i) => {
    if (i.data instanceof tf.Tensor) return i.data;
    const t = tf.tensor(i.data, i.shape, i.dtype);
    made.push(t);
    return t;
  });
  try {
    return tf.tidy(() => body(inputs));
  } finally {
    tf.dispose(made);
  }
}

/** Runs a training step: the inputs as tensors, the body, its outputs (the caller disposes them). */
export const runTrainingStep = defineOperation('runTrainingStep', (step: TrainingStep): tf.Tensor[] =>
  runEagerly(step.inputs, step.body),
);

/** Runs a repeated pass: the inputs as tensors, the body, its outputs (the caller disposes them). */
export const runRepeatedPass = defineOperation('runRepeatedPass', (pass: RepeatedPass): tf.Tensor[] =>
  runEagerly(pass.inputs, pass.body),
);

/**
 * The end of a training step, after the optimiser's update. A backend that records commands
 * submits them here (webgpu: every step then starts on an empty command buffer and frees its
 * buffers at the same points, so it gets the same buffers, and bind groups, step after step).
 */
export const endTrainingStep = defineOperation('endTrainingStep', (): void => {});

/**
 * Runs once after the first training step, when every shape of the step has been seen (webgpu:
 * times the candidate matrix-product plans and keeps the fastest, in a run long enough to pay that
 * back). `stepsAhead`: the steps the run has left. Resolves to what it chose, for logs and benchmarks
 * (empty when there was nothing to do).
 */
export const afterFirstTrainingStep = defineOperation(
  'afterFirstTrainingStep',
  async (_stepsAhead: number): Promise<readonly object[]> => [],
);

/**
 * Whether the active backend's mixed precision needs a loss scale (f16 gradients do; bf16 and f32
 * ones do not): the trainer then keeps a LossScale with its optimiser (ops/adamw.ts).
 */
export const lossScaling = defineOperation('lossScaling', (): boolean => false);

/**
 * Gives back the device memory a backend keeps for reuse once the tensors using it are gone, so that a
 * process training one shape after another (a fitness evaluator, a pretraining worker) does not keep
 * every earlier shape's buffers (webgpu's pool keeps freed buffers by exact size, for good). Costs the
 * next shape fresh allocations. Resolves to the bytes released.
 */
export const releaseCachedMemory = defineOperation('releaseCachedMemory', async (): Promise<number> => 0);

/**
 * What a backend keeps per shape of repeated work in order to replay it (cuda/graphs.ts,
 * webgpu/replay.ts): at most `max` shapes, the least recently run dropped first, and a shape whose
 * state moved (another model, a reassigned variable) dropped and made anew.
 */
export class ReplayShapes<S extends { stateKey: string }> {
  private readonly shapes = new Map<string, S>();

  constructor(
    private readonly max: number,
    private readonly drop: (shape: S) => void,
  ) {}

  /** The shape of `key` with this state, made by `make` when there is none. */
  get(key: string, stateKey: string, make: () => S): S {
    const kept = this.shapes.get(key);
    if (kept) {
      // Most recently run last, for the bound on shapes.
      this.shapes.delete(key);
      if (kept.stateKey === stateKey) {
        this.shapes.set(key, kept);
        return kept;
      }
      this.drop(kept);
    }
    if (this.shapes.size >= this.max) {
      const [oldest, shape] = this.shapes.entries().next().value!;
      this.drop(shape);
      this.shapes.delete(oldest);
    }
    const shape = make();
    this.shapes.set(key, shape);
    return shape;
  }

  /** Drops every shape. */
  clear(): void {
    for (const shape of this.shapes.values()) this.drop(shape);
    this.shapes.clear();
  }
}
