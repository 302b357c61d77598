/**
 * LayerNorm on the fused WebGPU path: one workgroup per row with the mean and variance in registers
 * (mean and 1/σ saved for the backward); the backward writes dx and per-block partial sums of the
 * weight and bias gradients side by side, summed cooperatively in one dispatch. The width is a
 * uniform: one pipeline per class of widths (layerNormShape). The row sums are subgroup operations
 * where the adapter's subgroups have one size (a tree through workgroup memory elsewhere): the
 * barriers were most of their time.
 */
import type * as tf from '../tfjs.js';

import { shapeClassesEnabled } from '../shape-costs.js';

import { customOp, layerNorm } from '../ops/index.js';
import { randHost } from '../kernel-check.js';
import type { KernelCase } from './check.js';
import { kernel, rowGrid } from './fused.js';
import { sumSlicePair } from './matmul.js';
import { allocate, dispatch, fixedSubgroupSize, release, toTensor } from './runtime.js';
import { reduceEnables, reduceFns } from './wgsl-common.js';

function pow2AtLeast(n: number, min: number, max: number): number {
  let p = min;
  while (p < n && p < max) p *= 2;
  return p;
}

export function layerNormWG(D: number): number {
  return pow2AtLeast(Math.ceil(D / 4), 32, 256);
}

/**
 * What the LayerNorm kernels compile in for width D: a workgroup of WG invocations per row (a power of
 * two, 32..256, about D/4), each holding E elements of the row in registers; `D` itself when compiled
 * in, else null (a uniform). By shape class (the default) one pipeline serves every width of a class:
 * E is 4 up to D 1024 (classes D ≤ 128, ≤ 256, ≤ 512, ≤ 1024), then one class per 256 columns.
 */
export interface LayerNormShape {
  WG: number;
  E: number;
  D: number | null;
  /** The smallest width the kernel runs: element e of every invocation lies inside it when (e + 1)·WG ≤ minD. */
  minD: number;
}

export function layerNormShape(D: number, byClass = shapeClassesEnabled()): LayerNormShape {
  const WG = layerNormWG(D);
  if (!byClass) return { WG, E: Math.ceil(D / WG), D, minD: D };
  const E = Math.max(4, Math.ceil(D / WG));
  const minD = E > 4 ? WG * (E - 1) + 1 : WG === 32 ? 1 : 2 * WG + 1;
  return { WG, E, D: null, minD };
}

const shapeKey = (s: LayerNormShape) => (s.D === null ? `${s.WG}x${s.E}` : `d${s.D}`);

/**
 * A row over one LayerNorm workgroup: element e of invocation `lid` is column col(e); ok(e) is its
 * bounds check (the constant true where every width the kernel runs has it); `width` is D in WGSL.
 */
function rowElements(s: LayerNormShape): {
  WG: number;
  el: number[];
  col: (e: number) => string;
  ok: (e: number) => string;
  width: string;
  widthF: string;
} {
  const { WG } = s;
  const el = Array.from({ length: s.E }, (_, e) => e);
  const col = (e: number) => `(lid + ${e * WG}u)`;
  const width = s.D === null ? 'u.D' : `${s.D}u`;
  const ok = (e: number) => ((e + 1) * WG <= s.minD ? 'true' : `${col(e)} < ${width}`);
  return { WG, el, col, ok, width, widthF: s.D === null ? 'f32(u.D)' : `${s.D}.0` };
}

/**
 * in: x [N, D], w [D], b [D]; out: y [N, D], mean [N], rstd [N]; u: {N, eps, D}. SG: the adapter's
 * fixed subgroup size for the row sums (reduceFns), or null.
 */
export function layerNormForwardSource(shape: LayerNormShape, SG: number | null = null): string {
  const { WG, el, col, ok, width, widthF } = rowElements(shape);
  return /* wgsl */ `${reduceEnables(SG)}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> meanOut: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstdOut: array<f32>;
struct U { N: u32, eps: f32, D: u32, p1: u32 };
@group(0) @binding(6) var<uniform> u: U;
${reduceFns(WG, ['sum'], SG)}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  let base = row * ${width};
  ${el.map((e) => `var x${e} = 0.0; if (${ok(e)}) { x${e} = x[base + ${col(e)}]; }`).join('\n  ')}
  let mean = wg_sum(${el.map((e) => `x${e}`).join(' + ')}, lid) / ${widthF};
  ${el.map((e) => `var d${e} = 0.0; if (${ok(e)}) { d${e} = x${e} - mean; }`).join('\n  ')}
  let variance = wg_sum(${el.map((e) => `d${e} * d${e}`).join(' + ')}, lid) / ${widthF};
  let rstd = inverseSqrt(variance + u.eps);
  ${el.map((e) => `if (${ok(e)}) { let c = ${col(e)}; y[base + c] = d${e} * rstd * w[c] + b[c]; }`).join('\n  ')}
  if (lid == 0u) { meanOut[row] = mean; rstdOut[row] = rstd; }
}
`;
}

/**
 * in: dy [N, D], x [N, D], mean [N], rstd [N], w [D]; out: dx [N, D], partial sums pd [G, 2D] (each
 * block's weight gradient, then its bias gradient); u: {N, R, D}; SG as above.
 */
export function layerNormBackwardSource(shape: LayerNormShape, SG: number | null = null): string {
  const { WG, el, col, ok, width, widthF } = rowElements(shape);
  return /* wgsl */ `${reduceEnables(SG)}
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> meanIn: array<f32>;
@group(0) @binding(3) var<storage, read> rstdIn: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> pd: array<f32>;
struct U { N: u32, R: u32, D: u32, p1: u32 };
@group(0) @binding(7) var<uniform> u: U;
${reduceFns(WG, ['sum'], SG)}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x;
  let r0 = g * u.R;
  if (r0 >= u.N) { return; }
  let rEnd = min(u.N, r0 + u.R);
  ${el.map((e) => `var aw${e} = 0.0; var ab${e} = 0.0; var w${e} = 0.0; if (${ok(e)}) { w${e} = w[${col(e)}]; }`).join('\n  ')}
  for (var row = r0; row < rEnd; row++) {
    let base = row * ${width};
    let mean = meanIn[row];
    let rstd = rstdIn[row];
    ${el
      .map(
        (
          e,
        ) => `var dy${e} = 0.0; var xh${e} = 0.0; if (${ok(e)}) { dy${e} = dy[base + ${col(e)}]; xh${e} = (x[base + ${col(e)}] - mean) * rstd; }
    let g${e} = dy${e} * w${e};`,
      )
      .join('\n    ')}
    let s1 = wg_sum(${el.map((e) => `g${e}`).join(' + ')}, lid) / ${widthF};
    let s2 = wg_sum(${el.map((e) => `g${e} * xh${e}`).join(' + ')}, lid) / ${widthF};
    ${el
      .map(
        (e) => `if (${ok(e)}) { dx[base + ${col(e)}] = rstd * (g${e} - s1 - xh${e} * s2); }
    aw${e} = aw${e} + dy${e} * xh${e}; ab${e} = ab${e} + dy${e};`,
      )
      .join('\n    ')}
  }
  ${el.map((e) => `if (${ok(e)}) { pd[2u * g * ${width} + ${col(e)}] = aw${e}; pd[(2u * g + 1u) * ${width} + ${col(e)}] = ab${e}; }`).join('\n  ')}
}
`;
}

/** LayerNorm over the last axis of x [N, D]. */
export function fusedLayerNorm(x: tf.Tensor2D, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): tf.Tensor2D {
  const [N, D] = x.shape;
  const shape = layerNormShape(D);
  const SG = fixedSubgroupSize();
  const key = `${shapeKey(shape)}_${SG ?? 'tree'}`;
  const op = customOp(([xt, wt, bt], save) => {
    const y = allocate([N, D]);
    const mean = allocate([N]);
    const rstd = allocate([N]);
    dispatch(
      kernel('layernorm', key, () => layerNormForwardSource(shape, SG)),
      [xt, wt, bt],
      [y, mean, rstd],
      [
        ['u', N],
        ['f', eps],
        ['u', D],
        ['u', 0],
      ],
      rowGrid(N),
    );
    save([xt, wt, toTensor(mean), toTensor(rstd)]);
    return {
      value: toTensor(y),
      gradFunc: (dy, [xs, ws, ms, rs]) => {
        const R = Math.max(1, Math.ceil(N / 512));
        const G = Math.ceil(N / R);
        const dx = allocate([N, D]);
        const pd = allocate([G, 2 * D]);
        dispatch(
          kernel('layernorm_backward', key, () => layerNormBackwardSource(shape, SG)),
          [dy, xs, ms, rs, ws],
          [dx, pd],
          [
            ['u', N],
            ['u', R],
            ['u', D],
            ['u', 0],
          ],
          rowGrid(G),
        );
        const [dw, db] = sumSlicePair(pd, G, D);
        release(pd);
        return [toTensor(dx), toTensor(dw), toTensor(db)];
      },
    };
  });
  return op(x, weight, bias) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Check against the reference (check.ts)

export function layerNormCase(N: number, D: number, tol = 2e-5): KernelCase {
  return {
    name: `LayerNorm (N ${N}, D ${D})`,
    inputs: () => [randHost([N, D], 11, 2), randHost([D], 12), randHost([D], 13)],
    diff: [0, 1, 2],
    reference: ([x, w, b]) => layerNorm.reference(x, w, b, 1e-5),
    fused: ([x, w, b]) => fusedLayerNorm(x as tf.Tensor2D, w as tf.Tensor1D, b as tf.Tensor1D, 1e-5),
    tol,
  };
}
