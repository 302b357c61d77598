/** Hooks of the training loop that some backends need: after each step, once after the first, and after a model is done with. */
import { defineOperation } from './registry.js';

/**
 * The end of a training step, after the optimiser's update. A backend that records commands
 * submits them here (webgpu: every step then starts on an empty command buffer and frees its
 * buffers at the same points, so it gets the same buffers, and bind groups, step after step).
 */
export const endTrainingStep = defineOperation('endTrainingStep', (): void => {});

/**
 * Runs once after the first training step, when every shape of the step has been seen (webgpu:
 * times the candidate matrix-product plans and keeps the fastest). Resolves to what it chose, for
 * logs and benchmarks (empty when there was nothing to do).
 */
export const afterFirstTrainingStep = defineOperation('afterFirstTrainingStep', async (): Promise<readonly object[]> => []);

/**
 * Gives back the device memory a backend keeps for reuse once the tensors using it are gone, so that a
 * process training one shape after another (a fitness evaluator, a pretraining worker) does not keep
 * every earlier shape's buffers (webgpu's pool keeps freed buffers by exact size, for good). Costs the
 * next shape fresh allocations. Resolves to the bytes released.
 */
export const releaseCachedMemory = defineOperation('releaseCachedMemory', async (): Promise<number> => 0);
