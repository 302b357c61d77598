/**
 * Softmax cross-entropy on the fused WebGPU path, without a one-hot: one workgroup per row with an
 * online max and sum (four floats per load when V is a multiple of 4) and the loss per row; the
 * backward writes (softmax − onehot)·dy/N directly. In mixed precision the logits product and the
 * loss are one operation (`logitsCrossEntropy`), whose backward writes that gradient in f16 for the
 * products' gradients.
 */
import * as tf from '../tfjs.js';

import { DEFAULT_LOSS_SCALE, crossEntropy, customOp, logitsCrossEntropy } from '../ops/index.js';
import { intHost, randHost } from '../kernel-check.js';
import type { KernelCase } from './check.js';
import { kernel, rowGrid } from './fused.js';
import { halfStorageShape } from './half.js';
import { productNT, productNTGradients } from './linear.js';
import { allocate, dispatch, release, toTensor } from './runtime.js';
import { NEG_BIG, ONLINE_LSE, TO_F16_WGSL, lseReduce } from './wgsl-common.js';

const CE_WG = 256;

/**
 * in: x [N, V], targets [N] i32; out: loss [N], lse [N]; u: {N, V}. One workgroup per row; with
 * `vec4` (V a multiple of 4) the row is read four floats at a time.
 */
export function crossEntropyForwardSource(vec4: boolean): string {
  const W = vec4 ? 4 : 1;
  const T = vec4 ? 'vec4<f32>' : 'f32';
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read_write> loss: array<f32>;
@group(0) @binding(3) var<storage, read_write> lseOut: array<f32>;
struct U { N: u32, V: u32, p0: u32, p1: u32 };
@group(0) @binding(4) var<uniform> u: U;
${ONLINE_LSE}
${lseReduce(CE_WG, 'a')}
@compute @workgroup_size(${CE_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  let cols = u.V / ${W}u;
  let base = row * cols;
  var m = ${NEG_BIG};
  var s = 0.0;
  for (var c = lid; c < cols; c += ${CE_WG}u) {
    let xv = x[base + c];
    ${
      vec4
        ? `let mx = max(max(xv.x, xv.y), max(xv.z, xv.w));
    if (mx > m) { s = s * exp(m - mx); m = mx; }
    s = s + dot(exp(xv - vec4<f32>(m)), vec4<f32>(1.0));`
        : `if (xv > m) { s = s * exp(m - xv) + 1.0; m = xv; } else { s = s + exp(xv - m); }`
    }
  }
  let lse = wg_lse_a(m, s, lid);
  if (lid == 0u) {
    let t = u32(targets[row]);
    lseOut[row] = lse;
    loss[row] = lse - x[base + t / ${W}u]${vec4 ? '[t % 4u]' : ''};
  }
}
`;
}

/**
 * in: x [N, V], lse [N], targets [N] i32, dy [1]; out: dx [N, V] = (softmax(x) − onehot)·dy/N, in
 * f16 with `half` (for the f16 products of the logits' gradients); u: {N, V, invN}. One workgroup
 * per row (no division per element); `vec4` as in the forward.
 */
export function crossEntropyBackwardSource(vec4: boolean, half = false): string {
  const W = vec4 ? 4 : 1;
  const T = vec4 ? 'vec4<f32>' : 'f32';
  const out = half ? (vec4 ? 'vec4<f16>' : 'f16') : T;
  const store = half ? (vec4 ? 'to_f16x4(g * scale)' : 'to_f16(g * scale)') : 'g * scale';
  return /* wgsl */ `${half ? 'enable f16;' : ''}
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read> lse: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<${out}>;
struct U { N: u32, V: u32, invN: f32, p0: u32 };
@group(0) @binding(5) var<uniform> u: U;
${half ? TO_F16_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  let cols = u.V / ${W}u;
  let base = row * cols;
  let l = lse[row];
  let scale = dy[0] * u.invN;
  let tc = u32(targets[row]) / ${W}u;
  for (var c = lid; c < cols; c += 256u) {
    var g = exp(x[base + c] - ${T}(l));
    if (c == tc) { g${vec4 ? `[u32(targets[row]) % 4u]` : ''} = g${vec4 ? `[u32(targets[row]) % 4u]` : ''} - 1.0; }
    dx[base + c] = ${store};
  }
}
`;
}

/** The loss of each row and its log-sum-exp, for logits x [N, V]. */
function crossEntropyForward(x: tf.TensorInfo, targets: tf.TensorInfo, N: number, V: number) {
  const vec4 = V % 4 === 0;
  const rowLoss = allocate([N]);
  const lse = allocate([N]);
  dispatch(
    kernel('cross_entropy', String(vec4), () => crossEntropyForwardSource(vec4)),
    [x, targets],
    [rowLoss, lse],
    [
      ['u', N],
      ['u', V],
      ['u', 0],
      ['u', 0],
    ],
    rowGrid(N),
  );
  return { rowLoss: toTensor(rowLoss), lse: toTensor(lse) };
}

/** The logits' gradient (softmax − onehot)·dy/N: [N, V] f32, or its N·V f16 (`halfStorageShape`) with `half`. */
function crossEntropyBackward(
  x: tf.TensorInfo,
  lse: tf.TensorInfo,
  targets: tf.TensorInfo,
  dy: tf.TensorInfo,
  N: number,
  V: number,
  half: boolean,
): tf.TensorInfo {
  const vec4 = V % 4 === 0;
  const dx = allocate(half ? halfStorageShape(N * V) : [N, V]);
  dispatch(
    kernel(`cross_entropy_backward${half ? '_f16' : ''}`, String(vec4), () => crossEntropyBackwardSource(vec4, half)),
    [x, lse, targets, dy],
    [dx],
    [
      ['u', N],
      ['u', V],
      ['f', 1 / N],
      ['u', 0],
    ],
    rowGrid(N),
  );
  return dx;
}

/** Mean softmax cross-entropy of logits [N, V] against int32 targets [N]. */
export function fusedCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const [N, V] = logits.shape;
  const op = customOp(([x], save) => {
    const { rowLoss, lse } = crossEntropyForward(x, targets, N, V);
    save([x, lse, targets]);
    return {
      value: tf.mean(rowLoss),
      gradFunc: (dy, [xs, ls, ts]) => toTensor(crossEntropyBackward(xs, ls, ts, dy, N, V, false)),
    };
  });
  return op(logits) as tf.Scalar;
}

/**
 * Mean cross-entropy of the logits h [N, D] · wᵀ (w [V, D]) in mixed precision: the products take
 * f16 operands, and the backward writes the logits' gradient in f16 for them directly (no f32
 * gradient of the logits, no separate conversion: both are N·V, the step's largest tensors).
 */
export function fusedLogitsCrossEntropy(h: tf.Tensor2D, w: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const [N, D] = h.shape;
  const V = w.shape[0];
  const op = customOp(([ht, wt], save) => {
    const { as: hs, bs: ws, c: logits } = productNT(ht, wt, N, V, D, true);
    const { rowLoss, lse } = crossEntropyForward(logits, targets, N, V);
    save([hs, ws, logits, lse, targets]);
    return {
      value: tf.mean(rowLoss),
      gradFunc: (dy, [hs, ws, xs, ls, ts]) => {
        const g = crossEntropyBackward(xs, ls, ts, dy, N, V, true);
        const grads = productNTGradients(g, hs, ws, N, V, D, true);
        release(g);
        return grads;
      },
    };
  });
  return op(h, w) as tf.Scalar;
}

// ---------------------------------------------------------------------------------------------
// Check against the reference (check.ts)

export function crossEntropyCase(N: number, V: number, tol = 2e-5): KernelCase {
  return {
    name: `softmax cross-entropy (N ${N}, V ${V})`,
    inputs: () => [randHost([N, V], 15, 4), intHost([N], V, 1)],
    diff: [0],
    reference: ([x, t]) => crossEntropy.reference(x as tf.Tensor2D, t as tf.Tensor1D),
    fused: ([x, t]) => fusedCrossEntropy(x as tf.Tensor2D, t as tf.Tensor1D),
    tol,
  };
}

/**
 * The logits product and the loss as one operation (mixed precision's f16 products), against the
 * reference's two. The loss is scaled as training scales it: the logits' gradient is about
 * 1 / (V · N) per element, below f16's range unscaled.
 */
export function logitsCrossEntropyCase(N: number, D: number, V: number, tol: number): KernelCase {
  const scale = DEFAULT_LOSS_SCALE.initScale;
  return {
    name: `logits product and cross-entropy, loss scaled by ${scale} (N ${N}, D ${D}, V ${V})`,
    inputs: () => [randHost([N, D], 21), randHost([V, D], 22, 0.2), intHost([N], V, 23)],
    diff: [0, 1],
    reference: ([h, w, t]) =>
      tf.mul(logitsCrossEntropy.reference(h as tf.Tensor2D, w as tf.Tensor2D, t as tf.Tensor1D), scale),
    fused: ([h, w, t]) => tf.mul(fusedLogitsCrossEntropy(h as tf.Tensor2D, w as tf.Tensor2D, t as tf.Tensor1D), scale),
    tol,
  };
}
