/**
 * What the fused WebGPU kernels share: the switch that turns them on or off, and the helpers their
 * wrappers use. Each operation's kernels live in one file of this folder (its WGSL sources, the
 * tf.customGrad wrapper that dispatches them, and its check against the reference operation):
 * linear.ts, layer-norm.ts, attention.ts, cross-entropy.ts, distill.ts, embedding.ts, adamw.ts.
 * register.ts registers them with the operations (../ops); test/fused-kernels.test.ts checks
 * values and gradients of each against the reference.
 */
import { type Kernel, kernelFor } from './runtime.js';

let enabledOverride: boolean | null = null;

/** Turns the fused kernels on or off for this process (null: back to the default, env OFFSHOOT_FUSED_KERNELS). */
export function setFusedKernels(on: boolean | null): void {
  enabledOverride = on;
}

/** Whether the fused kernels run when webgpu is the backend (default on; OFFSHOOT_FUSED_KERNELS=0 turns them off). */
export function fusedKernelsEnabled(): boolean {
  if (enabledOverride !== null) return enabledOverride;
  return process.env.OFFSHOOT_FUSED_KERNELS !== '0';
}

/** The pipeline of kernel `name` for one variant `key` (a shape or option the source depends on). */
export function kernel(name: string, key: string, source: () => string): Kernel {
  return kernelFor(`${name}:${key}`, name, source);
}

/** One workgroup per row, folded into y past 32768. */
export function rowGrid(rows: number): [number, number, number] {
  const x = Math.max(1, Math.min(rows, 32768));
  return [x, Math.ceil(rows / x), 1];
}
