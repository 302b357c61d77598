/**
 * The webgpu backend's kernels for the operations (../ops); ../backend.ts imports this module when
 * it loads webgpu. The fused kernels follow their switch (fused.ts: OFFSHOOT_FUSED_KERNELS=0 or
 * setFusedKernels(false) leaves tfjs's stock kernels); the row-wise lookup, which works around a
 * tfjs webgpu bug, and the end-of-step submit apply either way.
 */
import {
  afterFirstTrainingStep,
  causalSelfAttention,
  clippedAdamW,
  crossEntropy,
  logitsCrossEntropy,
  endTrainingStep,
  fullDistillation,
  gatherRows,
  layerNorm,
  linear,
  lossScaledAdamW,
  lossScaling,
  matMulNT,
  mlp,
  parallelResidual,
  releaseCachedMemory,
  runRepeatedPass,
  runTrainingStep,
  takeAlongLastAxis,
  topKDistillation,
} from '../ops/index.js';
import type * as tf from '../tfjs.js';
import { fusedClipAdamW, fusedLossScaledAdamW } from './adamw.js';
import { fusedAttention, fusedAttentionSupports } from './attention.js';
import { fusedCrossEntropy, fusedLogitsCrossEntropy } from './cross-entropy.js';
import { fusedFullDistill, fusedTopKDistill, fusedTopKSupports } from './distill.js';
import { fusedGatherRows, rowWiseTakeAlongLastAxis } from './embedding.js';
import { fusedKernelsEnabled } from './fused.js';
import { halfProducts, sweepShadows } from './half.js';
import { fusedLayerNorm } from './layer-norm.js';
import { fusedLinear, fusedMLP, fusedMatMulNT } from './linear.js';
import { autotuneIfHardware } from './matmul.js';
import { dropRecordings, stepReplayer } from './replay.js';
import { fusedParallelResidual, fusedResidualSupports } from './residual.js';
import { releaseFreeBuffers, submitRecorded, webgpuBackend } from './runtime.js';

const backend = 'webgpu';
const fused = { backend, enabled: fusedKernelsEnabled };

linear.register({
  ...fused,
  name: 'register-tiled or subgroup-matrix product (f16 in mixed precision), bias (and GELU) in the epilogue',
  run: fusedLinear,
});
mlp.register({
  ...fused,
  // In f32 the reference's two linear operations are these kernels already.
  enabled: () => halfProducts() !== 'off',
  name: 'f16 products, the hidden activation written once in f16 by the conversion through GELU',
  run: fusedMLP,
});
matMulNT.register({
  ...fused,
  name: 'register-tiled or subgroup-matrix product (f16 in mixed precision)',
  run: fusedMatMulNT,
});
layerNorm.register({
  ...fused,
  name: 'one workgroup per row',
  supports: (x) => x.rank === 2,
  run: (x, weight, bias, eps) => fusedLayerNorm(x as tf.Tensor2D, weight as tf.Tensor1D, bias as tf.Tensor1D, eps),
});
causalSelfAttention.register({
  ...fused,
  name: 'rotary split, scores or flash kernels, heads merged',
  supports: (_qkv, _positions, shape) => fusedAttentionSupports(shape),
  run: fusedAttention,
});
gatherRows.register({ ...fused, name: 'gather, scatter-add of rows', run: fusedGatherRows });
takeAlongLastAxis.register({ backend, name: 'row-wise gather and scatter (tfjs ops)', run: rowWiseTakeAlongLastAxis });
crossEntropy.register({ ...fused, name: 'one workgroup per row, no one-hot', run: fusedCrossEntropy });
logitsCrossEntropy.register({
  backend,
  // In f32 the reference's two operations are these kernels already.
  enabled: () => halfProducts() !== 'off',
  name: 'f16 products, the logits gradient written in f16 by the loss backward',
  run: fusedLogitsCrossEntropy,
});
topKDistillation.register({
  ...fused,
  name: 'one workgroup per row, closed-form gradient',
  supports: (_logits, _targets, teacher) => fusedTopKSupports(teacher),
  run: fusedTopKDistill,
});
fullDistillation.register({
  ...fused,
  name: 'one workgroup per row, gradient written directly',
  run: fusedFullDistill,
});
clippedAdamW.register({ ...fused, name: 'norm and AdamW on the device, no read-back', run: fusedClipAdamW });
lossScaledAdamW.register({
  ...fused,
  name: 'unscale, overflow check, norm and AdamW on the device, no read-back',
  run: fusedLossScaledAdamW,
});
lossScaling.register({ ...fused, name: 'on when the products take f16 operands', run: () => halfProducts() !== 'off' });
parallelResidual.register({
  ...fused,
  name: 'one pass over the three',
  supports: (h) => fusedResidualSupports(h),
  run: fusedParallelResidual,
});
endTrainingStep.register({
  backend,
  name: 'submit the recorded commands, drop f16 weight copies of freed weights',
  run: () => {
    submitRecorded();
    sweepShadows();
  },
});
afterFirstTrainingStep.register({
  ...fused,
  name: 'autotune the matrix-product plans (hardware adapters)',
  run: autotuneIfHardware,
});
// OFFSHOOT_WEBGPU_REPLAY=0 runs every step and pass eagerly (to compare, or to rule replays out).
// tf.profile and tf.time time kernels as they run, so they see eager steps only; the profiler
// (profiler.ts) times replayed steps too.
const replayEnabled = () => process.env.OFFSHOOT_WEBGPU_REPLAY !== '0' && webgpuBackend()?.activeTimers == null;
runTrainingStep.register({
  backend,
  name: 'recorded per shape after two eager steps, then replayed',
  enabled: replayEnabled,
  run: (step) => stepReplayer().run(step, step.optimizer),
});
runRepeatedPass.register({
  backend,
  name: 'recorded per shape after two eager passes, then replayed',
  enabled: replayEnabled,
  run: (pass) => stepReplayer().run(pass),
});
releaseCachedMemory.register({
  backend,
  name: "drop the recorded steps, destroy the free buffers of tfjs's pool",
  run: async () => dropRecordings() + (await releaseFreeBuffers()),
});
