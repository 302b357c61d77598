/**
 * Linear layers on the fused WebGPU path: x·Wᵀ + b with the bias (and GELU) in the product's
 * epilogue, the MLP block in mixed precision (its hidden activation written once, in f16), the
 * logits product h·W_outᵀ, and their gradients. The products themselves are matmul.ts's; this file
 * holds the bias-gradient column sums (through GELU's derivative for the MLP's up projection). In
 * mixed precision (half.ts) the products read f16: the weight's f16 copy, the input converted once
 * (and saved for the weight gradient in f16), and the output gradient converted by the column-sum
 * kernel as it reads it.
 */
import type * as tf from '../tfjs.js';

import { type Activation, customOp, linear, matMulNT, mlp } from '../ops/index.js';
import { randHost } from '../kernel-check.js';
import type { KernelCase } from './check.js';
import { kernel } from './fused.js';
import { halfProducts, halfStorageShape, halfWeight, toHalf } from './half.js';
import { matmul, sumSlices } from './matmul.js';
import { type UniformValue, allocate, dispatch, release, toTensor } from './runtime.js';
import { TO_F16_WGSL } from './wgsl-common.js';
import { ERF_WGSL } from './wgsl-matmul.js';

/**
 * in: dy [N, C] (+ z [N, C] when gelu); out: (g [N, C] when gelu or half), partial [G, C];
 * u: {N, C, R}. Grid: (ceil(C / 256), G). g is the gradient the products take: with gelu
 * dy · GELU'(z), else dy itself, in f16 when `half` (f32 only with gelu).
 */
export function columnSumSource(gelu: boolean, half = false): string {
  const writesG = gelu || half;
  return /* wgsl */ `${half ? 'enable f16;' : ''}
@group(0) @binding(0) var<storage, read> dy: array<f32>;
${gelu ? '@group(0) @binding(1) var<storage, read> z: array<f32>;' : ''}
${writesG ? `@group(0) @binding(${gelu ? 2 : 1}) var<storage, read_write> g: array<${half ? 'f16' : 'f32'}>;` : ''}
@group(0) @binding(${(gelu ? 2 : 1) + +writesG}) var<storage, read_write> partial: array<f32>;
struct U { N: u32, C: u32, R: u32, p0: u32 };
@group(0) @binding(${(gelu ? 3 : 2) + +writesG}) var<uniform> u: U;
${gelu ? ERF_WGSL : ''}
${half ? TO_F16_WGSL : ''}
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
    let gv = dy[i] * d;`
        : 'let gv = dy[i];'
    }
    ${writesG ? `g[i] = ${half ? 'to_f16(gv)' : 'gv'};` : ''}
    acc = acc + gv;
  }
  partial[wid.y * u.C + c] = acc;
}
`;
}

/** Σ over the rows of dy [N, C]; with `geluZ` through GELU's derivative; `g` the gradient the products take when it is not dy itself (f16 with `half`). */
function columnSums(
  dy: tf.TensorInfo,
  N: number,
  C: number,
  geluZ: tf.TensorInfo | undefined,
  half: boolean,
): { sum: tf.TensorInfo; g?: tf.TensorInfo } {
  const R = Math.max(8, Math.ceil(N / 256));
  const G = Math.ceil(N / R);
  const partial = allocate([G, C]);
  const u: UniformValue[] = [
    ['u', N],
    ['u', C],
    ['u', R],
    ['u', 0],
  ];
  const grid: [number, number, number] = [Math.ceil(C / 256), G, 1];
  let g: tf.TensorInfo | undefined;
  if (geluZ || half) {
    g = allocate(half ? halfStorageShape(N * C) : [N, C]);
    const name = `${geluZ ? 'gelu_backward_colsum' : 'colsum'}${half ? '_f16' : ''}`;
    dispatch(
      kernel(name, '', () => columnSumSource(geluZ !== undefined, half)),
      geluZ ? [dy, geluZ] : [dy],
      [g, partial],
      u,
      grid,
    );
  } else {
    dispatch(
      kernel('colsum', '', () => columnSumSource(false)),
      [dy],
      [partial],
      u,
      grid,
    );
  }
  const sum = sumSlices(partial, G, C);
  release(partial);
  return { sum, g };
}

/** The operand types of the products: f16 in mixed precision (`half`), else the f32 defaults. */
const productTypes = (half: boolean) => (half ? ({ aType: 'f16', bType: 'f16' } as const) : {});

/**
 * A linear layer's gradients [dx, dW, db] from dy [N, out]: xs and ws are the operands its forward
 * product took (f16 with `half`), zs its pre-activation when GELU followed it.
 */
function linearGradients(
  dy: tf.TensorInfo,
  xs: tf.TensorInfo,
  ws: tf.TensorInfo,
  zs: tf.TensorInfo | undefined,
  N: number,
  inF: number,
  outF: number,
  half: boolean,
): [tf.TensorInfo, tf.TensorInfo, tf.TensorInfo] {
  const types = productTypes(half);
  // g: the gradient through GELU, or dy in f16; absent when the products take dy as it is.
  const { sum: db, g } = columnSums(dy, N, outF, zs, half);
  const gp = g ?? dy;
  const dx = matmul({ a: gp, b: ws, M: N, N: inF, K: outF, ...types }).c;
  const dw = matmul({ a: gp, b: xs, M: outF, N: inF, K: N, transA: true, ...types }).c;
  if (g) release(g);
  return [dx, dw, db];
}

/**
 * x [N, in] · weightᵀ ([out, in], torch layout) + bias, then GELU when asked; gradients for all
 * three. In mixed precision the products take f16 operands: the weight's f16 copy, x and the output
 * gradient converted once; results are f32.
 */
export function fusedLinear(
  x: tf.Tensor2D,
  weight: tf.Tensor2D,
  bias: tf.Tensor1D,
  activation: Activation = 'none',
): tf.Tensor2D {
  const [N, inF] = x.shape;
  const outF = weight.shape[0];
  const gelu = activation === 'gelu';
  const half = halfProducts() !== 'off';
  const types = productTypes(half);
  const op = customOp(([xt, wt, bt], save) => {
    const xa = half ? toTensor(toHalf(xt)) : xt;
    const wa = half ? halfWeight(wt) : wt;
    const { c, z } = matmul({ a: xa, b: wa, M: N, N: outF, K: inF, transB: true, bias: bt, gelu, ...types });
    save(z ? [xa, wa, toTensor(z)] : [xa, wa]);
    return {
      value: toTensor(c),
      gradFunc: (dy, [xs, ws, zs]) => linearGradients(dy, xs, ws, zs, N, inF, outF, half).map((t) => toTensor(t)),
    };
  });
  return op(x, weight, bias) as tf.Tensor2D;
}

/**
 * The MLP block in mixed precision: GELU(x·W_upᵀ + b_up)·W_downᵀ + b_down with f16 products. The up
 * product writes the pre-activation z (its bias stored with the results, no GELU epilogue), the f16
 * conversion (toHalf) writes GELU(z) in f16 for the down product and its weight gradient, and no
 * f32 hidden activation is written at all; the backward is the two linear layers' (linearGradients).
 */
export function fusedMLP(
  x: tf.Tensor2D,
  upWeight: tf.Tensor2D,
  upBias: tf.Tensor1D,
  downWeight: tf.Tensor2D,
  downBias: tf.Tensor1D,
): tf.Tensor2D {
  const [N, D] = x.shape;
  const F = upWeight.shape[0];
  const types = productTypes(true);
  const op = customOp(([xt, w1, b1, w2, b2], save) => {
    const xa = toTensor(toHalf(xt));
    const [w1a, w2a] = [halfWeight(w1), halfWeight(w2)];
    const z = matmul({ a: xa, b: w1a, M: N, N: F, K: D, transB: true, bias: b1, ...types }).c;
    const h = toHalf(z, N * F, true);
    const y = matmul({ a: h, b: w2a, M: N, N: D, K: F, transB: true, bias: b2, ...types }).c;
    save([xa, w1a, toTensor(z), toTensor(h), w2a]);
    return {
      value: toTensor(y),
      gradFunc: (dy, [xs, w1s, zs, hs, w2s]) => {
        const [dh, dw2, db2] = linearGradients(dy, hs, w2s, undefined, N, F, D, true);
        const [dx, dw1, db1] = linearGradients(dh, xs, w1s, zs, N, D, F, true);
        release(dh);
        return [dx, dw1, db1, dw2, db2].map((t) => toTensor(t));
      },
    };
  });
  return op(x, upWeight, upBias, downWeight, downBias) as tf.Tensor2D;
}

/**
 * The forward of a [M, K] · bᵀ (b [N, K]): the operands the products take (with `half`, a converted
 * once and b's f16 copy; the backward keeps them) and the f32 product.
 */
export function productNT(
  a: tf.Tensor,
  b: tf.Tensor,
  M: number,
  N: number,
  K: number,
  half: boolean,
): { as: tf.Tensor; bs: tf.Tensor; c: tf.Tensor } {
  const as = half ? toTensor(toHalf(a)) : a;
  const bs = half ? halfWeight(b) : b;
  return { as, bs, c: toTensor(matmul({ a: as, b: bs, M, N, K, transB: true, ...productTypes(half) }).c) };
}

/** Both gradients of productNT from g, the gradient of the product (f16 with `half`): [da, db]. */
export function productNTGradients(
  g: tf.TensorInfo,
  as: tf.TensorInfo,
  bs: tf.TensorInfo,
  M: number,
  N: number,
  K: number,
  half: boolean,
): [tf.Tensor, tf.Tensor] {
  const types = productTypes(half);
  const da = matmul({ a: g, b: bs, M, N: K, K: N, ...types }).c;
  const db = matmul({ a: g, b: as, M: N, N: K, K: M, transA: true, ...types }).c;
  return [toTensor(da), toTensor(db)];
}

/** a [M, K] · bᵀ (b [N, K]), gradients for both (the logits product h · embed_outᵀ); f16 operands in mixed precision. */
export function fusedMatMulNT(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  const [M, K] = a.shape;
  const N = b.shape[0];
  const half = halfProducts() !== 'off';
  const op = customOp(([at, bt], save) => {
    const { as, bs, c } = productNT(at, bt, M, N, K, half);
    save([as, bs]);
    return {
      value: c,
      gradFunc: (dy, [as, bs]) => {
        const g = half ? toHalf(dy) : dy;
        const grads = productNTGradients(g, as, bs, M, N, K, half);
        if (half) release(g);
        return grads;
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

export function mlpCase(N: number, D: number, F: number, tol = 2e-5): KernelCase {
  return {
    name: `MLP block (N ${N}, D ${D}, hidden ${F})`,
    inputs: () => [
      randHost([N, D], 11),
      randHost([F, D], 12, 0.5),
      randHost([F], 13),
      randHost([D, F], 14, 0.3),
      randHost([D], 15),
    ],
    diff: [0, 1, 2, 3, 4],
    reference: ([x, w1, b1, w2, b2]) =>
      mlp.reference(x as tf.Tensor2D, w1 as tf.Tensor2D, b1 as tf.Tensor1D, w2 as tf.Tensor2D, b2 as tf.Tensor1D),
    fused: ([x, w1, b1, w2, b2]) =>
      fusedMLP(x as tf.Tensor2D, w1 as tf.Tensor2D, b1 as tf.Tensor1D, w2 as tf.Tensor2D, b2 as tf.Tensor1D),
    tol,
  };
}
