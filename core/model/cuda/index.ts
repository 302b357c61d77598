/**
 * The `cuda` backend (docs/cuda-backend.md): NVIDIA's libraries from the CUDA 13 wheels, called
 * through koffi; tensors on the GPU; tfjs's kernels on the GPU where written (elementwise, layout,
 * matmul, top-k), through the host otherwise. The operations' kernels (register.ts) are fused, with
 * bf16 tensor cores in mixed precision, and training steps replay as CUDA graphs.
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

/** Registers the cuda tfjs backend and its kernels (the GPU opens when tfjs initialises it). */
export function registerCuda(): void {
  registerCudaKernels();
  registerCudaBackend();
}
