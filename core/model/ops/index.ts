/**
 * The operations the model and trainer are written against (docs/operations.md). Each module holds
 * one operation's reference implementation; backends register their kernels for them from their
 * own folders (core/model/webgpu, tensorflow, wasm), loaded by ../backend.ts.
 */
export { type Kernel, type Operation, defineOperation, listOperations } from './registry.js';
export { customOp } from './custom-grad.js';
export { type Activation, gelu, linear, matMul, matMulNT, mlp } from './linear.js';
export { type AttentionShape, PositionTables, causalSelfAttention } from './attention.js';
export { layerNorm } from './layer-norm.js';
export { gatherRows, takeAlongLastAxis } from './embedding.js';
export { crossEntropy, logitsCrossEntropy } from './cross-entropy.js';
export {
  type DistillOptions,
  KL_DIRECTIONS,
  type KLDirection,
  type TopKTeacher,
  directedKL,
  fullDistillation,
  fullLogitKL,
  topKDistillation,
  topKFromLogits,
  topKLogitKL,
  withCrossEntropy,
} from './distill.js';
export {
  type AdamWEntry,
  type AdamWStep,
  AdamWState,
  DEFAULT_LOSS_SCALE,
  type HeldMoments,
  LossScale,
  type LossScaleOptions,
  adamwUpdate,
  clipByGlobalNorm,
  clippedAdamW,
  lossScaleOptions,
  lossScaledAdamW,
} from './adamw.js';
export { addNResidual, parallelResidual } from './residual.js';
export {
  type RepeatedPass,
  type StepInput,
  type TrainingStep,
  afterFirstTrainingStep,
  endTrainingStep,
  lossScaling,
  releaseCachedMemory,
  runRepeatedPass,
  runTrainingStep,
} from './step.js';
