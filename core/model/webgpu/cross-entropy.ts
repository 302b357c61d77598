/**
 * Softmax cross-entropy on the fused WebGPU path, without a one-hot: one workgroup per row with an
 * online max and sum (four floats per load when V is a multiple of 4) and the loss per row; the
 * backward writes (softmax − onehot)·dy/N directly.
 */
import * as tf from '../tfjs.js';

import { crossEntropy, customOp } from '../ops/index.js';
import { intHost, randHost } from '../kernel-check.js';
import type { KernelCase } from './check.js';
import { kernel, rowGrid } from './fused.js';
import { allocate, dispatch, toTensor } from './runtime.js';
import { NEG_BIG, ONLINE_LSE, lseReduce } from './wgsl-common.js';

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
 * in: x [N, V], lse [N], targets [N] i32, dy [1]; out: dx [N, V] = (softmax(x) − onehot)·dy/N;
 * u: {N, V, invN}. One workgroup per row (no division per element); `vec4` as in the forward.
 */
export function crossEntropyBackwardSource(vec4: boolean): string {
  const W = vec4 ? 4 : 1;
  const T = vec4 ? 'vec4<f32>' : 'f32';
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read> lse: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<${T}>;
struct U { N: u32, V: u32, invN: f32, p0: u32 };
@group(0) @binding(5) var<uniform> u: U;
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
    dx[base + c] = g * scale;
  }
}
`;
}

/** Mean softmax cross-entropy of logits [N, V] against int32 targets [N]. */
export function fusedCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const [N, V] = logits.shape;
  const vec4 = V % 4 === 0;
  const op = customOp(([x], save) => {
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
    const rl = toTensor(rowLoss);
    const value = tf.mean(rl);
    save([x, toTensor(lse), targets]);
    return {
      value,
      gradFunc: (dy, [xs, ls, ts]) => {
        const dx = allocate([N, V]);
        dispatch(
          kernel('cross_entropy_backward', String(vec4), () => crossEntropyBackwardSource(vec4)),
          [xs, ls, ts, dy],
          [dx],
          [
            ['u', N],
            ['u', V],
            ['f', 1 / N],
            ['u', 0],
          ],
          rowGrid(N),
        );
        return toTensor(dx);
      },
    };
  });
  return op(logits) as tf.Scalar;
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
