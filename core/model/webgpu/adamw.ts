/**
 * AdamW with global gradient-norm clipping on the WebGPU backend, with no read-back: sums of
 * squares into one partials buffer, one kernel for the norm, then AdamW kernels that scale the
 * gradient by min(1, maxNorm / (norm + 1e-6)) on the device and update weights and both moments in
 * place (the reference's arithmetic, ../ops/adamw.ts). Each dispatch handles as many tensors as
 * the device's storage bindings allow: a model has tens of small parameters (biases, LayerNorms),
 * and one dispatch each cost more than their memory traffic.
 */
import type * as tf from '../tfjs.js';

import type { AdamWEntry, AdamWState, AdamWStep } from '../ops/index.js';
import {
  type Kernel,
  type UniformValue,
  allocate,
  dispatch,
  grid1d,
  kernelFor,
  release,
  toTensor,
  webgpuBackend,
} from './runtime.js';
import { reduceFns } from './wgsl-common.js';

export const SUMSQ_CHUNK = 256 * 16;

/**
 * Sums of squares of S gradients in one dispatch, one workgroup per chunk of SUMSQ_CHUNK elements.
 * in: g0..g(S−1); out: partials [P] (this dispatch's chunks at offset..);
 * u: {slots: (n, first chunk) per gradient, chunks, offset}.
 */
export function sumSquaresSource(S: number): string {
  const branch = (i: number) => `{
    let start = (chunk - u.slots[${i}].y) * ${SUMSQ_CHUNK}u;
    for (var i = start + lid; i < min(u.slots[${i}].x, start + ${SUMSQ_CHUNK}u); i += 256u) { let v = g${i}[i]; acc = acc + v * v; }
  }`;
  return /* wgsl */ `
${Array.from({ length: S }, (_, i) => `@group(0) @binding(${i}) var<storage, read> g${i}: array<f32>;`).join('\n')}
@group(0) @binding(${S}) var<storage, read_write> partials: array<f32>;
struct U { slots: array<vec4<u32>, ${S}>, chunks: u32, offset: u32, p0: u32, p1: u32 };
@group(0) @binding(${S + 1}) var<uniform> u: U;
${reduceFns(256, ['sum'])}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let chunk = wid.x + wid.y * nwg.x;
  if (chunk >= u.chunks) { return; }
  var acc = 0.0;
  ${Array.from({ length: S }, (_, i) => i)
    .reverse()
    .map((i) => (i === 0 ? branch(0) : `if (chunk >= u.slots[${i}].y) ${branch(i)}`))
    .join(' else ')}
  let total = wg_sum(acc, lid);
  if (lid == 0u) { partials[u.offset + chunk] = total; }
}
`;
}

/** in: partials [P]; out: norm [1] = sqrt(Σ partials); u: {P}. One workgroup. */
export function normFinalizeSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> norm: array<f32>;
struct U { P: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(2) var<uniform> u: U;
${reduceFns(256, ['sum'])}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  for (var i = lid; i < u.P; i += 256u) { acc = acc + partials[i]; }
  let total = wg_sum(acc, lid);
  if (lid == 0u) { norm[0] = sqrt(total); }
}
`;
}

/**
 * AdamW in place for S parameters in one dispatch, with the gradient scaled for global-norm
 * clipping on the device. in: g0..g(S−1), norm [1]; out (in place): p, m, v of each parameter;
 * u: {lr, beta1, beta2, oneMinusBeta1, oneMinusBeta2, bc1, bc2, eps, maxNorm, clip,
 * slots: (n, first workgroup, decay bits) per parameter}. One invocation per element, or with
 * `vec4` (every size a multiple of 4; n counts vec4s) per four elements.
 */
export function adamwSource(S: number, vec4 = false): string {
  const T = vec4 ? 'vec4<f32>' : 'f32';
  const ins = Array.from({ length: S }, (_, i) => `@group(0) @binding(${i}) var<storage, read> g${i}: array<${T}>;`);
  const outs = Array.from(
    { length: S },
    (_, i) => `@group(0) @binding(${S + 1 + 3 * i}) var<storage, read_write> p${i}: array<${T}>;
@group(0) @binding(${S + 2 + 3 * i}) var<storage, read_write> m${i}: array<${T}>;
@group(0) @binding(${S + 3 + 3 * i}) var<storage, read_write> v${i}: array<${T}>;`,
  );
  const branch = (i: number) => `{
    let j = (w - u.slots[${i}].y) * 256u + lid;
    if (j < u.slots[${i}].x) {
      let gg = g${i}[j] * scale;
      let mNew = m${i}[j] * u.beta1 + gg * u.omb1;
      let vNew = v${i}[j] * u.beta2 + (gg * gg) * u.omb2;
      m${i}[j] = mNew;
      v${i}[j] = vNew;
      p${i}[j] = p${i}[j] * bitcast<f32>(u.slots[${i}].z) - ((mNew / u.bc1) / (sqrt(vNew / u.bc2) + u.eps)) * u.lr;
    }
  }`;
  return /* wgsl */ `
${ins.join('\n')}
@group(0) @binding(${S}) var<storage, read> norm: array<f32>;
${outs.join('\n')}
struct U { lr: f32, beta1: f32, beta2: f32, omb1: f32, omb2: f32, bc1: f32, bc2: f32, eps: f32, maxNorm: f32, clip: u32, p0: u32, p1: u32, slots: array<vec4<u32>, ${S}> };
@group(0) @binding(${4 * S + 1}) var<uniform> u: U;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let w = wid.x + wid.y * nwg.x;
  var scale = 1.0;
  if (u.clip != 0u) { scale = min(1.0, u.maxNorm / (norm[0] + 1e-6)); }
  ${Array.from({ length: S }, (_, i) => i)
    .reverse()
    .map((i) => (i === 0 ? branch(0) : `if (w >= u.slots[${i}].y) ${branch(i)}`))
    .join(' else ')}
}
`;
}

// ---------------------------------------------------------------------------------------------
// The operation

/** The kernel of `name` for `slots` tensors per dispatch. */
function kernel(name: string, slots: number, source: (slots: number) => string): Kernel {
  return kernelFor(`${name}:${slots}`, name, () => source(slots));
}
const NORM: Kernel = { key: 'norm_finalize', name: 'grad_norm', source: normFinalizeSource };

interface FusedAdamWEntry {
  param: tf.Variable;
  grad: tf.Tensor;
  m: tf.Variable;
  v: tf.Variable;
  /** 1 − lr·weightDecay for decayed parameters, else 1. */
  decay: number;
}

/** Consecutive runs of at most `size` items. */
function groups<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Applies one clipped AdamW step to every entry; returns the gradient norm before clipping (a scalar). */
export function fusedClipAdamW(state: AdamWState, params: AdamWEntry[], s: AdamWStep): tf.Scalar {
  const entries: FusedAdamWEntry[] = params.map(({ name, param, grad, decays }) => ({
    param,
    grad,
    ...state.moments(name, param),
    decay: decays && s.weightDecay > 0 ? 1 - s.lr * s.weightDecay : 1,
  }));
  const bc1 = 1 - s.beta1 ** s.step;
  const bc2 = 1 - s.beta2 ** s.step;
  const bindings = webgpuBackend()!.device.limits.maxStorageBuffersPerShaderStage;
  const chunksOf = (e: FusedAdamWEntry) => Math.max(1, Math.ceil(e.grad.size / SUMSQ_CHUNK));
  const P = entries.reduce((a, e) => a + chunksOf(e), 0);
  const partials = allocate([P]);
  // Sums of squares: each gradient one binding, the partials one.
  let offset = 0;
  for (const group of groups(entries, bindings - 1)) {
    const slots: UniformValue[] = [];
    let chunks = 0;
    for (const e of group) {
      slots.push(['u', e.grad.size], ['u', chunks], ['u', 0], ['u', 0]);
      chunks += chunksOf(e);
    }
    const k = kernel('grad_sum_squares', group.length, sumSquaresSource);
    dispatch(
      k,
      group.map((e) => e.grad),
      [partials],
      [...slots, ['u', chunks], ['u', offset], ['u', 0], ['u', 0]],
      grid1d(chunks * 256),
    );
    offset += chunks;
  }
  const norm = allocate([]);
  dispatch(
    NORM,
    [partials],
    [norm],
    [
      ['u', P],
      ['u', 0],
      ['u', 0],
      ['u', 0],
    ],
    [1, 1, 1],
  );
  // AdamW: each parameter four bindings (gradient, weight, two moments), the norm one. Sizes that
  // are multiples of 4 (nearly all) go four floats per invocation.
  const perDispatch = Math.floor((bindings - 1) / 4);
  const byFours = entries.filter((e) => e.grad.size % 4 === 0);
  const rest = entries.filter((e) => e.grad.size % 4 !== 0);
  for (const [vec4, group] of [
    ...groups(byFours, perDispatch).map((g) => [true, g] as const),
    ...groups(rest, perDispatch).map((g) => [false, g] as const),
  ]) {
    const slots: UniformValue[] = [];
    let blocks = 0;
    for (const e of group) {
      const n = vec4 ? e.grad.size / 4 : e.grad.size;
      slots.push(['u', n], ['u', blocks], ['f', e.decay], ['u', 0]);
      blocks += Math.ceil(n / 256);
    }
    const uniforms: UniformValue[] = [
      ['f', s.lr],
      ['f', s.beta1],
      ['f', s.beta2],
      ['f', 1 - s.beta1],
      ['f', 1 - s.beta2],
      ['f', bc1],
      ['f', bc2],
      ['f', s.eps],
      ['f', s.maxNorm],
      ['u', 1],
      ['u', 0],
      ['u', 0],
      ...slots,
    ];
    const k = kernelFor(`adamw:${group.length}:${vec4}`, vec4 ? 'adamw_vec4' : 'adamw', () =>
      adamwSource(group.length, vec4),
    );
    dispatch(
      k,
      [...group.map((e) => e.grad), norm],
      group.flatMap((e) => [e.param, e.m, e.v]),
      uniforms,
      grid1d(blocks * 256),
      { uniformsVary: true },
    );
  }
  release(partials);
  return toTensor<tf.Scalar>(norm);
}
