/**
 * Registering tfjs kernels for the cuda backend. A GPU kernel may decline an input it does not
 * handle (returns null); then, as for every tfjs kernel without a GPU version, the cpu backend's
 * kernel runs on copies of the inputs and its outputs are copied to the GPU. The host path is
 * correct and slow; `fallbackCounts()` shows what a workload still sends through it.
 */
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';

import * as tf from '../tfjs.js';

import { CUDA_BACKEND, type CudaBackend } from './tfjs-backend.js';

type Inputs = tf.NamedTensorInfoMap | tf.TensorInfo[];
export type GpuKernel = (
  inputs: Inputs,
  attrs: tf.NamedAttrMap,
  backend: CudaBackend,
) => tf.TensorInfo | tf.TensorInfo[] | null;

const gpuKernels = new Map<string, GpuKernel>();
const fallbacks = new Map<string, number>();

/** Declares the GPU kernel for a tfjs kernel name (registered with tfjs by registerCudaKernels). */
export function gpuKernel(name: string, k: GpuKernel): void {
  gpuKernels.set(name, k);
}

/** How often each tfjs kernel ran through the host since the last reset. */
export function fallbackCounts(): Record<string, number> {
  return Object.fromEntries(fallbacks);
}

export function resetFallbackCounts(): void {
  fallbacks.clear();
}

let cpu: MathBackendCPU | undefined;
function cpuBackend(): MathBackendCPU {
  if (!cpu) {
    cpu = new MathBackendCPU();
    // Its first write prints advice meant for people who run tfjs on the CPU in Node.
    (cpu as unknown as { firstUse: boolean }).firstUse = false;
  }
  return cpu;
}

/** Runs the cpu backend's kernel on host copies of the inputs; the outputs land on the GPU. */
function viaHost(
  cpuKernel: tf.KernelConfig,
  inputs: Inputs,
  attrs: tf.NamedAttrMap | undefined,
  backend: CudaBackend,
): tf.TensorInfo | tf.TensorInfo[] {
  fallbacks.set(cpuKernel.kernelName, (fallbacks.get(cpuKernel.kernelName) ?? 0) + 1);
  const host = cpuBackend();
  const made: tf.TensorInfo[] = [];
  const toHost = (t: tf.TensorInfo | undefined) => {
    if (t == null) return t;
    const info = host.makeTensorInfo(t.shape, t.dtype, backend.readSync(t.dataId) as tf.backend_util.BackendValues);
    made.push(info);
    return info;
  };
  const hostInputs = Array.isArray(inputs)
    ? inputs.map(toHost)
    : Object.fromEntries(Object.entries(inputs).map(([k, t]) => [k, toHost(t)]));
  try {
    const out = cpuKernel.kernelFunc({ inputs: hostInputs as tf.NamedTensorInfoMap, backend: host, attrs });
    const outs = Array.isArray(out) ? out : [out];
    const moved = outs.map((o) => {
      const values = host.readSync(o.dataId) as tf.backend_util.BackendValues;
      if (!made.some((m) => m.dataId === o.dataId)) host.disposeData(o.dataId, true);
      return backend.makeTensorInfo(o.shape, o.dtype, values);
    });
    return Array.isArray(out) ? moved : moved[0];
  } finally {
    for (const m of made) host.disposeData(m.dataId, true);
  }
}

/**
 * Registers every tfjs kernel for the cuda backend: the GPU kernels declared with gpuKernel, and the
 * host path for each other kernel the cpu backend has.
 */
export function registerCudaKernels(): void {
  const cpuKernels = new Map(tf.getKernelsForBackend('cpu').map((k) => [k.kernelName, k]));
  const names = new Set([...cpuKernels.keys(), ...gpuKernels.keys()]);
  for (const name of names) {
    if (tf.getKernel(name, CUDA_BACKEND)) continue;
    const gpu = gpuKernels.get(name);
    const host = cpuKernels.get(name);
    tf.registerKernel({
      kernelName: name,
      backendName: CUDA_BACKEND,
      kernelFunc: ({ inputs, attrs, backend }) => {
        const b = backend as CudaBackend;
        const out = gpu ? gpu(inputs as Inputs, attrs ?? {}, b) : null;
        if (out) return out;
        if (!host) throw new Error(`cuda backend: no kernel for ${name} handles these inputs`);
        return viaHost(host, inputs as Inputs, attrs, b);
      },
    });
  }
}
