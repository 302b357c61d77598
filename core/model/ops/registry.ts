/**
 * Operations and their kernels. An operation is a function of the model or trainer (linear,
 * attention, layer norm, ...) with one reference implementation in tfjs ops that runs on every
 * backend. A backend registers kernels for it from its own folder; a call runs the first
 * registered kernel of the active tfjs backend that is enabled and supports the arguments, else
 * the reference. So the model never asks which backend is active, and adding a backend is its
 * folder plus registrations.
 */
import * as tf from '../tfjs.js';

// `never[]` parameters: every function type is assignable to this, whatever it takes.
type AnyFunction = (...args: never[]) => unknown;

export interface Kernel<F extends AnyFunction> {
  /** The tfjs backend it runs on ('webgpu', 'tensorflow', 'wasm', ...). */
  backend: string;
  /** What it is, for listings and logs. */
  name?: string;
  /** Whether it is switched on now (e.g. OFFSHOOT_FUSED_KERNELS=0 turns webgpu's off); default on. */
  enabled?: () => boolean;
  /** Whether it handles these arguments (a kernel that covers only some shapes); default all. */
  supports?: (...args: Parameters<F>) => boolean;
  run: F;
}

export interface Operation<F extends AnyFunction> {
  /** Runs the kernel `kernelFor` picks, else the reference. */
  (...args: Parameters<F>): ReturnType<F>;
  readonly opName: string;
  /** The tfjs implementation every kernel is tested against; runs wherever no kernel applies. */
  readonly reference: F;
  /** Adds a kernel after those already registered; returns a function that removes it again. */
  register(kernel: Kernel<F>): () => void;
  /** The kernel a call with these arguments runs on the active backend, or null for the reference. */
  kernelFor(...args: Parameters<F>): Kernel<F> | null;
  /** Registered kernels, in the order they are tried. */
  kernels(): readonly Kernel<F>[];
}

const operations: Operation<AnyFunction>[] = [];

/** An operation named `opName` (unique) whose reference implementation is `reference`. */
export function defineOperation<F extends AnyFunction>(opName: string, reference: F): Operation<F> {
  if (operations.some((o) => o.opName === opName)) throw new Error(`operation "${opName}" is defined twice`);
  let kernels: Kernel<F>[] = [];
  const kernelFor = (...args: Parameters<F>): Kernel<F> | null => {
    const backend = tf.getBackend();
    for (const k of kernels) {
      if (k.backend !== backend) continue;
      if (k.enabled && !k.enabled()) continue;
      if (k.supports && !k.supports(...args)) continue;
      return k;
    }
    return null;
  };
  const run = (...args: Parameters<F>): ReturnType<F> => {
    const f = kernelFor(...args)?.run ?? reference;
    return f(...args) as ReturnType<F>;
  };
  const op = Object.assign(run, {
    opName,
    reference,
    kernelFor,
    kernels: () => kernels,
    register(kernel: Kernel<F>): () => void {
      if (typeof kernel.backend !== 'string' || kernel.backend === '')
        throw new Error(
          `operation "${opName}": a kernel needs the name of the tfjs backend it runs on, got ${JSON.stringify(kernel.backend)}`,
        );
      if (typeof kernel.run !== 'function')
        throw new Error(
          `operation "${opName}": the ${kernel.backend} kernel${kernel.name ? ` "${kernel.name}"` : ''} has no run function`,
        );
      kernels = [...kernels, kernel];
      return () => {
        kernels = kernels.filter((k) => k !== kernel);
      };
    },
  });
  operations.push(op as unknown as Operation<AnyFunction>);
  return op;
}

/** Every operation defined so far, in definition order, with the backends that have kernels for it. */
export function listOperations(): Array<{ opName: string; kernels: Array<{ backend: string; name?: string }> }> {
  return operations.map((o) => ({
    opName: o.opName,
    kernels: o.kernels().map((k) => ({ backend: k.backend, name: k.name })),
  }));
}
