/**
 * Linear layers on the fused WebGPU path: x·Wᵀ + b with the bias (and GELU) in the product's
 * epilogue, the logits product h·W_outᵀ, and their gradients. The products themselves are
 * matmul.ts's; this file holds the bias-gradient column sums (through GELU's derivative for the
 * MLP's up projection).
 */
import type * as tf from '../tfjs.js';

import { type Activation, customOp, linear, matMulNT } from '../ops/index.js';
import { type KernelCase, randHost } from './check.js';
import { kernel } from './fused.js';
import { matmul, sumSlices } from './matmul.js';
import { type UniformValue, allocate, dispatch, release, toTensor } from './runtime.js';
import { ERF_WGSL } from './wgsl-matmul.js';

/**
 * in: dy [N, C] (+ z [N, C] when gelu); out: (dz [N, C] when gelu), partial [G, C]; u: {N, C, R}.
 * Grid: (ceil(C / 256), G). With gelu, dz = dy · GELU'(z).
 */
export function columnSumSource(gelu: boolean): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
${gelu ? '@group(0) @binding(1) var<storage, read> z: array<f32>;' : ''}
${gelu ? '@group(0) @binding(2) var<storage, read_write> dz: array<f32>;' : ''}
@group(0) @binding(${gelu ? 3 : 1}) var<storage, read_write> partial: array<f32>;
struct U { N: u32, C: u32, R: u32, p0: u32 };
@group(0) @binding(${gelu ? 4 : 2}) var<uniform> u: U;
${gelu ? ERF_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = gid.x;
  if (c >= u.C) { return; }
  let r0 = wid.y * u.R;
  let rEnd = min(u.N, r0 + u.R);
  var acc = 0.0;
  for (var r = r0; r < rEnd; r++) {
    let i = r * u.C + c;
    ${
      gelu
        ? `let zv = z[i];
    let d = 0.5 * (1.0 + erf_as(zv * 0.7071067811865476)) + zv * exp(-0.5 * zv * zv) * 0.3989422804014327;
    let g = dy[i] * d;
    dz[i] = g;
    acc = acc + g;`
        : 'acc = acc + dy[i];'
    }
  }
  partial[wid.y * u.C + c] = acc;
}
`;
}

function columnSums(
  dy: tf.TensorInfo,
  N: number,
  C: number,
  geluZ?: tf.TensorInfo,
): { sum: tf.TensorInfo; dz?: tf.TensorInfo } {
  const R = Math.max(8, Math.ceil(N / 256));
  const G = Math.ceil(N / R);
  const partial = allocate([G, C]);
  const u: UniformValue[] = [
    ['u', N],
    ['u', C],
    ['u', R],
    ['u', 0],
  ];
  let dz: tf.TensorInfo | undefined;
  if (geluZ) {
    dz = allocate([N, C]);
    dispatch(
      kernel('gelu_backward_colsum', '', () => columnSumSource(true)),
      [dy, geluZ],
      [dz, partial],
      u,
      [Math.ceil(C / 256), G, 1],
    );
  } else {
    dispatch(
      kernel('colsum', '', () => columnSumSource(false)),
      [dy],
      [partial],
      u,
      [Math.ceil(C / 256), G, 1],
    );
  }
  const sum = sumSlices(partial, G, C);
  release(partial);
  return { sum, dz };
}

/** x [N, in] · weightᵀ ([out, in], torch layout) + bias, then GELU when asked; gradients for all three. */
export function fusedLinear(
  x: tf.Tensor2D,
  weight: tf.Tensor2D,
  bias: tf.Tensor1D,
  activation: Activation = 'none',
): tf.Tensor2D {
  const [N, inF] = x.shape;
  const outF = weight.shape[0];
  const op = customOp(([xt, wt, bt], save) => {
    const { c, z } = matmul({
      a: xt,
      b: wt,
      M: N,
      N: outF,
      K: inF,
      transB: true,
      bias: bt,
      gelu: activation === 'gelu',
    });
    const zT = z ? toTensor(z) : undefined;
    save(zT ? [xt, wt, zT] : [xt, wt]);
    return {
      value: toTensor(c),
      gradFunc: (dy, saved) => {
        const [xs, ws, zs] = saved;
        const { sum: db, dz } = columnSums(dy, N, outF, zs);
        const g = dz ?? dy;
        const dx = matmul({ a: g, b: ws, M: N, N: inF, K: outF }).c;
        const dw = matmul({ a: g, b: xs, M: outF, N: inF, K: N, transA: true }).c;
        if (dz) release(dz);
        return [toTensor(dx), toTensor(dw), toTensor(db)];
      },
    };
  });
  return op(x, weight, bias) as tf.Tensor2D;
}

/** a [M, K] · bᵀ (b [N, K]), gradients for both (the logits product h · embed_outᵀ). */
export function fusedMatMulNT(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  const [M, K] = a.shape;
  const N = b.shape[0];
  const op = customOp(([at, bt], save) => {
    save([at, bt]);
    return {
      value: toTensor(matmul({ a: at, b: bt, M, N, K, transB: true }).c),
      gradFunc: (dy, [as, bs]) => {
        const da = matmul({ a: dy, b: bs, M, N: K, K: N }).c;
        const dbm = matmul({ a: dy, b: as, M: N, N: K, K: M, transA: true }).c;
        return [toTensor(da), toTensor(dbm)];
      },
    };
  });
  return op(a, b) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Checks against the reference (check.ts)

export function linearCase(N: number, inF: number, outF: number, activation: Activation, tol = 2e-5): KernelCase {
  return {
    name: `linear${activation === 'gelu' ? ' + GELU' : ''} (N ${N}, in ${inF}, out ${outF})`,
    inputs: () => [
      randHost([N, inF], 3),
      randHost([outF, inF], 4, activation === 'gelu' ? 0.5 : 0.3),
      randHost([outF], 5),
    ],
    diff: [0, 1, 2],
    reference: ([x, w, b]) => linear.reference(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, activation),
    fused: ([x, w, b]) => fusedLinear(x as tf.Tensor2D, w as tf.Tensor2D, b as tf.Tensor1D, activation),
    tol,
  };
}

export function logitsCase(N: number, D: number, V: number, tol = 2e-5): KernelCase {
  return {
    name: `logits product h · Wᵀ (N ${N}, D ${D}, V ${V})`,
    inputs: () => [randHost([N, D], 9), randHost([V, D], 10, 0.2)],
    diff: [0, 1],
    reference: ([h, w]) => matMulNT.reference(h as tf.Tensor2D, w as tf.Tensor2D),
    fused: ([h, w]) => fusedMatMulNT(h as tf.Tensor2D, w as tf.Tensor2D),
    tol,
  };
}
