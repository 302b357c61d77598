/**
 * The `cuda` backend (docs/cuda-backend.md): NVIDIA's libraries from the CUDA 13 wheels, called
 * through koffi; tensors on the GPU; tfjs's kernels on the GPU where written (elementwise, layout,
 * matmul), through the host otherwise; and the model's operations as fused kernels with bf16 tensor
 * cores in mixed precision.
 */
import './elementwise.js';
import './layout.js';
import './matmul.js';
import './topk.js';

import { registerCudaKernels } from './kernels.js';
import { registerCudaBackend } from './tfjs-backend.js';

export { CudaUnavailable, cudaDevice, openedCudaDevice } from './device.js';
export { fallbackCounts, resetFallbackCounts } from './kernels.js';
export { CUDA_BACKEND, cudaBackend } from './tfjs-backend.js';
export { cudaAttention } from './attention.js';
export { cudaClipAdamW } from './adamw.js';
export { cudaCrossEntropy } from './cross-entropy.js';
export { cudaTopKDistill } from './distill.js';
export { cudaGatherRows } from './embedding.js';
export { cudaLayerNorm } from './layer-norm.js';
export { cudaLinear, cudaMatMulNT } from './linear.js';

/** Registers the cuda tfjs backend and its kernels (the GPU opens when tfjs initialises it). */
export function registerCuda(): void {
  registerCudaKernels();
  registerCudaBackend();
}
