/**
 * The tensorflow backend's kernels for the operations (../ops); ../backend.ts imports this module
 * when it loads tensorflow. All follow one switch (native.ts: OFFSHOOT_TF_KERNELS=0 or
 * setTensorflowKernels(false) leaves tfjs-node's stock kernels).
 */
import {
  addNResidual,
  causalSelfAttention,
  clippedAdamW,
  crossEntropy,
  gatherRows,
  layerNorm,
  linear,
  matMulNT,
  parallelResidual,
} from '../ops/index.js';
import type * as tf from '../tfjs.js';
import { resourceClipAdamW } from './adamw.js';
import { tfAttention } from './attention.js';
import { tfCrossEntropy } from './cross-entropy.js';
import { tfGatherRows } from './embedding.js';
import { tfLayerNorm } from './layer-norm.js';
import { tfLinear, tfMatMulNT } from './linear.js';
import { tensorflowKernelsEnabled } from './native.js';

const tensorflow = { backend: 'tensorflow', enabled: tensorflowKernelsEnabled };

linear.register({ ...tensorflow, name: 'BatchMatMulV2 + BiasAdd (+ GELU)', run: tfLinear });
matMulNT.register({ ...tensorflow, name: 'BatchMatMulV2', run: tfMatMulNT });
layerNorm.register({
  ...tensorflow,
  name: 'gradient written out',
  supports: (x) => x.rank === 2,
  run: (x, weight, bias, eps) => tfLayerNorm(x as tf.Tensor2D, weight as tf.Tensor1D, bias as tf.Tensor1D, eps),
});
causalSelfAttention.register({
  ...tensorflow,
  name: 'rotary by per-position tables, softmax gradient written out',
  run: tfAttention,
});
gatherRows.register({ ...tensorflow, name: 'GatherV2, UnsortedSegmentSum', run: tfGatherRows });
crossEntropy.register({ ...tensorflow, name: 'SparseSoftmaxCrossEntropyWithLogits', run: tfCrossEntropy });
clippedAdamW.register({ ...tensorflow, name: 'ResourceApplyAdam on resource variables', run: resourceClipAdamW });
parallelResidual.register({ ...tensorflow, name: 'AddN', run: addNResidual });
