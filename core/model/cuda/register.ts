/**
 * The cuda backend's kernels for the operations (../ops); ../backend.ts imports this module when it
 * loads cuda. Training steps run through the GraphRunner (graphs.ts): eager for the first steps of a
 * shape, then replayed as one CUDA graph.
 */
import {
  addNResidual,
  causalSelfAttention,
  clippedAdamW,
  crossEntropy,
  fullDistillation,
  gatherRows,
  layerNorm,
  linear,
  matMulNT,
  parallelResidual,
  runRepeatedPass,
  runTrainingStep,
  topKDistillation,
  topKFromLogits,
} from '../ops/index.js';
import type * as tf from '../tfjs.js';
import { adamwStepVector, cudaClipAdamW } from './adamw.js';
import { cudaAttention } from './attention.js';
import { cudaCrossEntropy } from './cross-entropy.js';
import type { CudaDevice } from './device.js';
import { cudaFullDistill, cudaTopKDistill, topKSupported } from './distill.js';
import { cudaGatherRows } from './embedding.js';
import { GraphRunner } from './graphs.js';
import { cudaLayerNorm } from './layer-norm.js';
import { cudaLinear, cudaMatMulNT } from './linear.js';
import { type CudaBackend, cudaBackendOrThrow } from './tfjs-backend.js';
import { cudaTopKFromLogits, topKSupportedFor } from './topk.js';

const backend = 'cuda';

linear.register({ backend, name: 'cuBLASLt product, bias in its epilogue; exact GELU kernel', run: cudaLinear });
matMulNT.register({ backend, name: 'cuBLASLt product', run: cudaMatMulNT });
layerNorm.register({
  backend,
  name: 'one block per row; parameter gradients as block partial sums',
  supports: (x) => x.rank === 2,
  run: (x, weight, bias, eps) => cudaLayerNorm(x as tf.Tensor2D, weight as tf.Tensor1D, bias as tf.Tensor1D, eps),
});
causalSelfAttention.register({
  backend,
  name: 'rotary split, cuBLASLt products around a causal softmax kernel',
  run: (qkv, positions, shape) => cudaAttention(qkv, positions.cos, positions.sin, shape),
});
gatherRows.register({ backend, name: 'gather, atomic scatter-add of rows', run: cudaGatherRows });
crossEntropy.register({ backend, name: 'one block per row, no one-hot', run: cudaCrossEntropy });
topKDistillation.register({
  backend,
  name: 'one block per row, closed-form gradient',
  supports: (_logits, _targets, teacher) => topKSupported(teacher.indices.shape[1]),
  run: (logits, targets, teacher, o) => cudaTopKDistill(logits, targets, teacher, o.alpha, o.temperature, o.direction),
});
topKFromLogits.register({
  backend,
  name: 'radix top-k with the log-normaliser from its first pass, one block per row',
  supports: (teacher, k) =>
    topKSupportedFor(cudaBackendOrThrow().storageOf(teacher), k, teacher.shape[1]) && teacher.shape[0] > 0,
  run: cudaTopKFromLogits,
});
fullDistillation.register({
  backend,
  name: 'one block per row, closed-form gradient',
  run: (logits, targets, teacher, o) => cudaFullDistill(logits, targets, teacher, o.alpha, o.temperature, o.direction),
});
clippedAdamW.register({ backend, name: 'norm and AdamW on the device, no read-back', run: cudaClipAdamW });
parallelResidual.register({ backend, name: 'tf.addN (one kernel)', run: addNResidual });

const runners = new WeakMap<CudaBackend, GraphRunner>();

/** Steps and passes replayed from CUDA graphs, and graphs captured, on the cuda backend so far. */
export function graphStats(): { captures: number; replays: number } {
  const runner = runners.get(cudaBackendOrThrow());
  return { captures: runner?.captures ?? 0, replays: runner?.replays ?? 0 };
}
/** Set while profileEagerly runs: its steps go launch by launch. */
let profiling = false;

/**
 * GPU time per kernel and product of the work `run` queues, with training steps run eagerly (a
 * replayed graph would be one launch); each launch between two events, which add their own gaps.
 */
export async function profileEagerly(run: () => Promise<unknown>): ReturnType<CudaDevice['endProfile']> {
  const device = cudaBackendOrThrow().device;
  profiling = true;
  device.beginProfile();
  try {
    await run();
  } finally {
    profiling = false;
  }
  return device.endProfile();
}

function graphRunner(): GraphRunner {
  const b = cudaBackendOrThrow();
  let runner = runners.get(b);
  if (!runner) runners.set(b, (runner = new GraphRunner(b)));
  return runner;
}
// OFFSHOOT_CUDA_GRAPHS=0 runs every step and pass eagerly (to compare, or to rule graphs out).
const graphsEnabled = () => !profiling && process.env.OFFSHOOT_CUDA_GRAPHS !== '0';

runTrainingStep.register({
  backend,
  name: 'CUDA graph per shape after two eager steps',
  enabled: graphsEnabled,
  run: (step) =>
    graphRunner().run({
      key: step.key,
      inputs: step.inputs,
      scalars: adamwStepVector(step.optimizer),
      state: step.state,
      body: step.body,
    }),
});
runRepeatedPass.register({
  backend,
  name: 'CUDA graph per shape after two eager passes',
  enabled: graphsEnabled,
  run: (pass) => graphRunner().run(pass),
});
