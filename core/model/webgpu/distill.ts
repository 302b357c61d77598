/**
 * Distillation on the fused WebGPU path, α·CE + (1 − α)·T²·KL (forward, reverse or symmetric KL), in
 * two kernels each, one workgroup per row, no log-softmax of the full logits kept:
 * - over the teacher's top-k plus a remainder bucket: the forward computes both log-normalisers, the k
 *   kept log-probabilities, the remainders and the KL; the backward writes the closed-form gradient
 *   over the vocabulary, then fixes up the k kept tokens and the target;
 * - over the teacher's full logits (a teacher in the same process): the forward writes each row's loss
 *   and its three log-sum-exps, the backward the gradient directly (cuda/kernels/distill.cu's pair).
 */
import * as tf from '../tfjs.js';

import { topKFromLogits } from '../losses.js';
import {
  type DistillOptions,
  type KLDirection,
  type TopKTeacher,
  customOp,
  fullDistillation,
  topKDistillation,
} from '../ops/index.js';
import { type Host, intHost, randHost } from '../kernel-check.js';
import { type KernelCase, onBackend } from './check.js';
import { kernel, rowGrid } from './fused.js';
import { type UniformValue, allocate, dispatch, toTensor } from './runtime.js';
import { NEG_BIG, ONLINE_LSE, lseReduce, reduceFns } from './wgsl-common.js';

export const TOPK_MAX = 1024;
const KD_WG = 256;

/** The kernels' uniforms (distillUniforms fills them). */
const KD_UNIFORMS = `struct U { N: u32, V: u32, k: u32, direction: u32, alpha: f32, T: f32, wKL: f32, invN: f32 };`;

/**
 * A row's loss, α·CE + wKL·KL, from its two KL sums (KL by direction), the log-sum-exp of its logits and
 * the target's logit (cuda/kernels/distill.cu's row_loss).
 */
const ROW_LOSS = `
fn row_loss(fwSum: f32, rvSum: f32, lse1: f32, xTarget: f32) -> f32 {
  var kl = fwSum;
  if (u.direction == 1u) { kl = rvSum; }
  if (u.direction == 2u) { kl = 0.5 * (fwSum + rvSum); }
  var ce = 0.0;
  if (u.alpha != 0.0) { ce = lse1 - xTarget; }
  return u.alpha * ce + u.wKL * kl;
}`;

function kdCommon(kMax: number): string {
  return `
${KD_UNIFORMS}
${ONLINE_LSE}
${lseReduce(KD_WG, 'a')}
${lseReduce(KD_WG, 'b')}
${reduceFns(KD_WG, ['s1', 's2'])}
var<workgroup> LS: array<f32, ${kMax}>;
var<workgroup> LT: array<f32, ${kMax}>;
const TINY = 1e-30;
`;
}

/**
 * Row statistics of the top-k KL. Writes LS/LT (student and teacher log-probabilities of the kept
 * tokens) and returns (S = Σ exp(LS), P = Σ exp(LT)).
 */
function kdTopK(): string {
  return `
  for (var j = lid; j < u.k; j += ${KD_WG}u) {
    let i = u32(tIdx[row * u.k + j]);
    LS[j] = x[base + i] / u.T - lseT;
    LT[j] = tLogits[row * u.k + j] / u.T - tLogZ[row];
  }
  workgroupBarrier();
  var ps = 0.0;
  var pt = 0.0;
  for (var j = lid; j < u.k; j += ${KD_WG}u) { ps = ps + exp(LS[j]); pt = pt + exp(LT[j]); }
  let S = wg_s1(ps, lid);
  let P = wg_s2(pt, lid);
  let lsRem = log(max(1.0 - S, TINY));
  let ltRem = log(max(1.0 - P, TINY));`;
}

function kdRowStats(): string {
  return `
  let base = row * u.V;
  var m1 = ${NEG_BIG}; var s1 = 0.0;
  var mT = ${NEG_BIG}; var sT = 0.0;
  for (var v = lid; v < u.V; v += ${KD_WG}u) {
    let xv = x[base + v];
    if (xv > m1) { s1 = s1 * exp(m1 - xv) + 1.0; m1 = xv; } else { s1 = s1 + exp(xv - m1); }
    let xt = xv / u.T;
    if (xt > mT) { sT = sT * exp(mT - xt) + 1.0; mT = xt; } else { sT = sT + exp(xt - mT); }
  }
  let lse1 = wg_lse_a(m1, s1, lid);
  let lseT = wg_lse_b(mT, sT, lid);`;
}

/**
 * in: x [N, V], targets [N] i32, tIdx [N, k] i32, tLogits [N, k], tLogZ [N]; out: loss [N] (α·CE
 * + wKL·KL per row), lse1 [N], lseT [N]; u: U. direction: 0 forward, 1 reverse, 2 symmetric.
 */
export function topKDistillForwardSource(kMax: number): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read> tIdx: array<i32>;
@group(0) @binding(3) var<storage, read> tLogits: array<f32>;
@group(0) @binding(4) var<storage, read> tLogZ: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;
@group(0) @binding(6) var<storage, read_write> lse1Out: array<f32>;
@group(0) @binding(7) var<storage, read_write> lseTOut: array<f32>;
${kdCommon(kMax)}
@group(0) @binding(8) var<uniform> u: U;
${ROW_LOSS}
@compute @workgroup_size(${KD_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  ${kdRowStats()}
  ${kdTopK()}
  var fw = 0.0;
  var rv = 0.0;
  for (var j = lid; j < u.k; j += ${KD_WG}u) {
    fw = fw + exp(LT[j]) * (LT[j] - LS[j]);
    rv = rv + exp(LS[j]) * (LS[j] - LT[j]);
  }
  let fwSum = wg_s1(fw, lid) + exp(ltRem) * (ltRem - lsRem);
  let rvSum = wg_s2(rv, lid) + exp(lsRem) * (lsRem - ltRem);
  if (lid == 0u) {
    loss[row] = row_loss(fwSum, rvSum, lse1, x[base + u32(targets[row])]);
    lse1Out[row] = lse1;
    lseTOut[row] = lseT;
  }
}
`;
}

/** g = ∂KL/∂ls per token, from the student's and teacher's log-probabilities at the temperature. */
const G_OF = `
fn g_of(ls: f32, lt: f32) -> f32 {
  let fw = -exp(lt);
  let rv = exp(ls) * (ls - lt + 1.0);
  if (u.direction == 1u) { return rv; }
  if (u.direction == 2u) { return 0.5 * (fw + rv); }
  return fw;
}`;

/** in: x, targets, tIdx, tLogits, tLogZ, lse1, lseT, dy [1]; out: dx [N, V]; u: U. */
export function topKDistillBackwardSource(kMax: number): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read> tIdx: array<i32>;
@group(0) @binding(3) var<storage, read> tLogits: array<f32>;
@group(0) @binding(4) var<storage, read> tLogZ: array<f32>;
@group(0) @binding(5) var<storage, read> lse1In: array<f32>;
@group(0) @binding(6) var<storage, read> lseTIn: array<f32>;
@group(0) @binding(7) var<storage, read> dy: array<f32>;
@group(0) @binding(8) var<storage, read_write> dx: array<f32>;
${kdCommon(kMax)}
@group(0) @binding(9) var<uniform> u: U;
var<workgroup> GJ: array<f32, ${kMax}>;
${G_OF}
@compute @workgroup_size(${KD_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  let base = row * u.V;
  let lse1 = lse1In[row];
  let lseT = lseTIn[row];
  ${kdTopK()}
  var gsum = 0.0;
  for (var j = lid; j < u.k; j += ${KD_WG}u) { let g = g_of(LS[j], LT[j]); GJ[j] = g; gsum = gsum + g; }
  let G = wg_s1(gsum, lid);
  var R = 0.0;
  if (1.0 - S >= TINY) { R = g_of(lsRem, ltRem) / (1.0 - S); }
  let scale = dy[0] * u.invN;
  let cOut = u.wKL * (R * S - G) / u.T;
  for (var v = lid; v < u.V; v += ${KD_WG}u) {
    let xv = x[base + v];
    let sT = exp(xv / u.T - lseT);
    let s1 = exp(xv - lse1);
    dx[base + v] = scale * (cOut * sT + u.alpha * s1);
  }
  storageBarrier();
  workgroupBarrier();
  let cIn = G + R - R * S;
  for (var j = lid; j < u.k; j += ${KD_WG}u) {
    let i = u32(tIdx[row * u.k + j]);
    let xv = x[base + i];
    let sT = exp(xv / u.T - lseT);
    let s1 = exp(xv - lse1);
    dx[base + i] = scale * (u.wKL * (GJ[j] - sT * cIn) / u.T + u.alpha * s1);
  }
  storageBarrier();
  workgroupBarrier();
  if (lid == 0u && u.alpha != 0.0) {
    let t = base + u32(targets[row]);
    dx[t] = dx[t] - scale * u.alpha;
  }
}
`;
}

const FULL_COMMON = `
${KD_UNIFORMS}
${ONLINE_LSE}
${lseReduce(KD_WG, 'a')}
${lseReduce(KD_WG, 'b')}
${lseReduce(KD_WG, 'c')}
${reduceFns(KD_WG, ['s1', 's2'])}
`;

/**
 * in: x [N, V], targets [N] i32, t [N, V] (the teacher's logits); out: loss [N] (α·CE + wKL·KL per
 * row), lse1, lseT, lseTeacher [N] (student at 1 and T, teacher at T); u: U (k unused).
 */
export function fullDistillForwardSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse1Out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lseTOut: array<f32>;
@group(0) @binding(6) var<storage, read_write> lseTeacherOut: array<f32>;
${FULL_COMMON}
@group(0) @binding(7) var<uniform> u: U;
${ROW_LOSS}
@compute @workgroup_size(${KD_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  ${kdRowStats()}
  var mt = ${NEG_BIG}; var st = 0.0;
  for (var v = lid; v < u.V; v += ${KD_WG}u) {
    let tv = t[base + v] / u.T;
    if (tv > mt) { st = st * exp(mt - tv) + 1.0; mt = tv; } else { st = st + exp(tv - mt); }
  }
  let lseTeacher = wg_lse_c(mt, st, lid);
  var fw = 0.0;
  var rv = 0.0;
  for (var v = lid; v < u.V; v += ${KD_WG}u) {
    let ls = x[base + v] / u.T - lseT;
    let lt = t[base + v] / u.T - lseTeacher;
    // A probability of exactly 0 contributes 0 (not 0 · inf), as the reference's KL terms.
    let pt = exp(lt);
    let ps = exp(ls);
    if (pt > 0.0) { fw = fw + pt * (lt - ls); }
    if (ps > 0.0) { rv = rv + ps * (ls - lt); }
  }
  let fwSum = wg_s1(fw, lid);
  let rvSum = wg_s2(rv, lid);
  if (lid == 0u) {
    loss[row] = row_loss(fwSum, rvSum, lse1, x[base + u32(targets[row])]);
    lse1Out[row] = lse1;
    lseTOut[row] = lseT;
    lseTeacherOut[row] = lseTeacher;
  }
}
`;
}

/**
 * in: x, targets, t, lse1, lseT, lseTeacher, dy [1]; out: dx [N, V]; u: U. With ls and lt the
 * log-probabilities at T, KL's gradient in x is (g − softmax(x / T) · Σ g) / T, g = g_of(ls, lt).
 */
export function fullDistillBackwardSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;
@group(0) @binding(2) var<storage, read> t: array<f32>;
@group(0) @binding(3) var<storage, read> lse1In: array<f32>;
@group(0) @binding(4) var<storage, read> lseTIn: array<f32>;
@group(0) @binding(5) var<storage, read> lseTeacherIn: array<f32>;
@group(0) @binding(6) var<storage, read> dy: array<f32>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;
${KD_UNIFORMS}
${reduceFns(KD_WG, ['s1'])}
@group(0) @binding(8) var<uniform> u: U;
${G_OF}
@compute @workgroup_size(${KD_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  let base = row * u.V;
  let lse1 = lse1In[row];
  let lseT = lseTIn[row];
  let lseTeacher = lseTeacherIn[row];
  var gsum = 0.0;
  for (var v = lid; v < u.V; v += ${KD_WG}u) {
    gsum = gsum + g_of(x[base + v] / u.T - lseT, t[base + v] / u.T - lseTeacher);
  }
  let G = wg_s1(gsum, lid);
  let scale = dy[0] * u.invN;
  let label = u32(targets[row]);
  for (var v = lid; v < u.V; v += ${KD_WG}u) {
    let xv = x[base + v];
    let ls = xv / u.T - lseT;
    let g = g_of(ls, t[base + v] / u.T - lseTeacher);
    var s1 = exp(xv - lse1);
    if (v == label) { s1 = s1 - 1.0; }
    dx[base + v] = scale * (u.wKL * (g - exp(ls) * G) / u.T + u.alpha * s1);
  }
}
`;
}

function distillUniforms(N: number, V: number, k: number, options: DistillOptions): UniformValue[] {
  const { alpha, temperature, direction } = options;
  return [
    ['u', N],
    ['u', V],
    ['u', k],
    ['u', direction === 'forward' ? 0 : direction === 'reverse' ? 1 : 2],
    ['f', alpha],
    ['f', temperature],
    ['f', (1 - alpha) * temperature * temperature],
    ['f', 1 / N],
  ];
}

/**
 * α·CE + (1 − α)·T²·KL over the teacher's full logits [N, V] (the reference in ../ops/distill.ts),
 * mean over positions, in two kernels that read the logits twice each.
 */
export function fusedFullDistill(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
  teacher: tf.Tensor2D,
  options: DistillOptions,
): tf.Scalar {
  const [N, V] = logits.shape;
  if (teacher.shape[0] !== N || teacher.shape[1] !== V)
    throw new Error(`full-logit distillation: teacher logits [${teacher.shape}] against student logits [${N},${V}]`);
  const u = distillUniforms(N, V, 0, options);
  const op = customOp(([x], save) => {
    const rowLoss = allocate([N]);
    const lse1 = allocate([N]);
    const lseT = allocate([N]);
    const lseTeacher = allocate([N]);
    dispatch(
      kernel('full_distill_forward', '', fullDistillForwardSource),
      [x, targets, teacher],
      [rowLoss, lse1, lseT, lseTeacher],
      u,
      rowGrid(N),
    );
    const value = tf.mean(toTensor(rowLoss));
    save([x, toTensor(lse1), toTensor(lseT), toTensor(lseTeacher)]);
    return {
      value,
      gradFunc: (dy, [xs, l1, lt, lteacher]) => {
        const dx = allocate([N, V]);
        dispatch(
          kernel('full_distill_backward', '', fullDistillBackwardSource),
          [xs, targets, teacher, l1, lt, lteacher, dy],
          [dx],
          u,
          rowGrid(N),
        );
        return toTensor(dx);
      },
    };
  });
  return op(logits) as tf.Scalar;
}

/** Whether the kernels handle this teacher view (its k fits in workgroup memory). */
export function fusedTopKSupports(teacher: TopKTeacher): boolean {
  const k = teacher.indices.shape[1];
  return k >= 1 && k <= TOPK_MAX;
}

/**
 * α·CE + (1 − α)·T²·KL over the teacher's top-k plus a remainder bucket (the reference in
 * ../ops/distill.ts), mean over positions, in two kernels: no log-softmax of the full logits
 * is kept, and the gradient is written directly.
 */
export function fusedTopKDistill(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
  teacher: TopKTeacher,
  options: DistillOptions,
): tf.Scalar {
  const [N, V] = logits.shape;
  const k = teacher.indices.shape[1];
  let kMax = 32;
  while (kMax < k) kMax *= 2;
  const u = distillUniforms(N, V, k, options);
  const tIdx = teacher.indices.dtype === 'int32' ? teacher.indices : tf.cast(teacher.indices, 'int32');
  const op = customOp(([x], save) => {
    const rowLoss = allocate([N]);
    const lse1 = allocate([N]);
    const lseT = allocate([N]);
    dispatch(
      kernel('topk_distill', String(kMax), () => topKDistillForwardSource(kMax)),
      [x, targets, tIdx, teacher.logits, teacher.logNormaliser],
      [rowLoss, lse1, lseT],
      u,
      rowGrid(N),
    );
    const value = tf.mean(toTensor(rowLoss));
    save([x, toTensor(lse1), toTensor(lseT)]);
    return {
      value,
      gradFunc: (dy, [xs, l1, lt]) => {
        const dx = allocate([N, V]);
        dispatch(
          kernel('topk_distill_backward', String(kMax), () => topKDistillBackwardSource(kMax)),
          [xs, targets, tIdx, teacher.logits, teacher.logNormaliser, l1, lt, dy],
          [dx],
          u,
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

export function topKCase(
  N: number,
  V: number,
  k: number,
  direction: KLDirection,
  alpha: number,
  temperature: number,
  tol = 5e-5,
): KernelCase {
  const options = { alpha, temperature, direction };
  return {
    name: `top-k distillation (N ${N}, V ${V}, k ${k}, ${direction} KL, alpha ${alpha}, temperature ${temperature})`,
    inputs: async () => {
      // The teacher's top-k view, computed once on the cpu backend.
      await onBackend('cpu');
      const teacher = randHost([N, V], 17, 3);
      const tl = tf.tensor2d(teacher.data, [N, V]);
      const top = topKFromLogits(tl, k, temperature);
      const hosts: Host[] = [
        randHost([N, V], 16, 3),
        intHost([N], V, 2),
        { shape: [N, k], data: (await top.indices.data()) as Int32Array, dtype: 'int32' },
        { shape: [N, k], data: (await top.logits.data()) as Float32Array },
        { shape: [N], data: (await top.logNormaliser.data()) as Float32Array },
      ];
      tf.dispose([tl, top.indices, top.logits, top.logNormaliser]);
      return hosts;
    },
    diff: [0],
    reference: ([x, t, i, l, z]) =>
      topKDistillation.reference(
        x as tf.Tensor2D,
        t as tf.Tensor1D,
        { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D },
        options,
      ),
    fused: ([x, t, i, l, z]) =>
      fusedTopKDistill(
        x as tf.Tensor2D,
        t as tf.Tensor1D,
        { indices: i as tf.Tensor2D, logits: l as tf.Tensor2D, logNormaliser: z as tf.Tensor1D },
        options,
      ),
    tol,
  };
}

export function fullCase(
  N: number,
  V: number,
  direction: KLDirection,
  alpha: number,
  temperature: number,
  tol = 5e-5,
): KernelCase {
  const options = { alpha, temperature, direction };
  return {
    name: `full-logit distillation (N ${N}, V ${V}, ${direction} KL, alpha ${alpha}, temperature ${temperature})`,
    inputs: () => [randHost([N, V], 16, 3), intHost([N], V, 2), randHost([N, V], 17, 3)],
    diff: [0],
    reference: ([x, t, l]) => fullDistillation.reference(x as tf.Tensor2D, t as tf.Tensor1D, l as tf.Tensor2D, options),
    fused: ([x, t, l]) => fusedFullDistill(x as tf.Tensor2D, t as tf.Tensor1D, l as tf.Tensor2D, options),
    tol,
  };
}
