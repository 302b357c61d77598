/**
 * GPT-NeoX's parallel residual on the WebGPU backend: h + attn + mlp in one pass over the three
 * (tfjs's addN of three tensors took twice the time its memory traffic needs). The gradient is dy
 * for each input.
 */
import type * as tf from '../tfjs.js';

import { customOp, parallelResidual } from '../ops/index.js';
import { randHost } from '../kernel-check.js';
import type { KernelCase } from './check.js';
import { kernel } from './fused.js';
import { allocate, dispatch, grid1d, toTensor } from './runtime.js';
import { FLAT } from './wgsl-common.js';

/** in: a, b, c [n]; out: (a + b) + c, the reference's order; u: {n}; four elements an invocation (n a multiple of 4: grid1d over n / 4). */
export function residualSumSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> c: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;
struct U { n: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(4) var<uniform> u: U;
${FLAT}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i < u.n / 4u) { y[i] = (a[i] + b[i]) + c[i]; }
}
`;
}

/** Whether fusedParallelResidual takes these tensors: four elements an invocation. */
export const fusedResidualSupports = (h: tf.Tensor2D): boolean => h.size % 4 === 0;

export function fusedParallelResidual(h: tf.Tensor2D, attn: tf.Tensor2D, mlp: tf.Tensor2D): tf.Tensor2D {
  const n = h.size;
  const op = customOp(([a, b, c]) => {
    const y = allocate(a.shape);
    dispatch(
      kernel('residual_sum', '', residualSumSource),
      [a, b, c],
      [y],
      [
        ['u', n],
        ['u', 0],
        ['u', 0],
        ['u', 0],
      ],
      grid1d(n / 4),
    );
    return { value: toTensor(y), gradFunc: (dy) => [dy.clone(), dy.clone(), dy.clone()] };
  });
  return op(h, attn, mlp) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Check against the reference (check.ts)

export function residualCase(N: number, D: number, tol = 2e-5): KernelCase {
  return {
    name: `parallel residual (N ${N}, D ${D})`,
    inputs: () => [randHost([N, D], 16), randHost([N, D], 17), randHost([N, D], 18)],
    diff: [0, 1, 2],
    reference: ([h, a, m]) => parallelResidual.reference(h as tf.Tensor2D, a as tf.Tensor2D, m as tf.Tensor2D),
    fused: ([h, a, m]) => fusedParallelResidual(h as tf.Tensor2D, a as tf.Tensor2D, m as tf.Tensor2D),
    tol,
  };
}
