/**
 * AdamW with global gradient-norm clipping on the WebGPU backend, with no read-back: sums of
 * squares into one partials buffer, one kernel for the norm, then AdamW kernels that scale the
 * gradient by min(1, maxNorm / (norm + 1e-6)) on the device and update weights and both moments in
 * place (the reference's arithmetic, ../ops/adamw.ts), and a weight's f16 copy (half.ts) with it.
 * Each dispatch handles as many tensors as the device's storage bindings allow: a model has tens of
 * small parameters (biases, LayerNorms), and one dispatch each cost more than their memory traffic.
 *
 * With a loss scale (lossScaledAdamW) the sums of squares are of the unscaled gradients and count
 * non-finite elements by their bits; the norm kernel decides whether the step overflowed, tells the
 * AdamW kernels the scale to divide by (or to skip the step), and updates the scale.
 */
import type * as tf from '../tfjs.js';

import type { AdamWEntry, AdamWState, AdamWStep, LossScale } from '../ops/index.js';
import { halfShadow } from './half.js';
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
import { stepNumbers } from './replay.js';
import { TO_F16_WGSL, reduceFns } from './wgsl-common.js';

export const SUMSQ_CHUNK = 256 * 16;

/** The step's numbers the AdamW kernel reads, in its order (`adamwSource`). */
export function adamwStepNumbers(s: AdamWStep): Float32Array {
  return Float32Array.of(
    s.lr,
    s.beta1,
    s.beta2,
    1 - s.beta1,
    1 - s.beta2,
    1 - s.beta1 ** s.step,
    1 - s.beta2 ** s.step,
    s.eps,
    s.maxNorm,
    // The multiplier of a decayed weight.
    1 - s.lr * s.weightDecay,
  );
}
const STEP_NUMBERS = 10;

/** WGSL: whether a float is finite, by its bits (no fast-math assumption can remove the test). */
const FINITE_WGSL = 'fn finite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u; }';
/** WGSL: +inf, from a runtime value (a constant infinity does not compile). */
const INF_FROM = (runtime: string) => `bitcast<f32>(0x7f800000u | (bitcast<u32>(${runtime}) & 0u))`;

/**
 * Sums of squares of S gradients in one dispatch, one workgroup per chunk of SUMSQ_CHUNK elements.
 * in: g0..g(S−1) [, scale [1]]; out: partials [P] (this dispatch's chunks at offset..);
 * u: {slots: (n, first chunk) per gradient, chunks, offset}. With `scaled`, each gradient is divided
 * by the loss scale, and a chunk with a non-finite element writes +inf.
 */
export function sumSquaresSource(S: number, scaled = false): string {
  const square = (g: string) =>
    scaled
      ? `let v = ${g}[i] * inv; if (!finite(${g}[i])) { bad = bad + 1.0; } acc = acc + v * v;`
      : `let v = ${g}[i]; acc = acc + v * v;`;
  const branch = (i: number) => `{
    let start = (chunk - u.slots[${i}].y) * ${SUMSQ_CHUNK}u;
    for (var i = start + lid; i < min(u.slots[${i}].x, start + ${SUMSQ_CHUNK}u); i += 256u) { ${square(`g${i}`)} }
  }`;
  return /* wgsl */ `
${Array.from({ length: S }, (_, i) => `@group(0) @binding(${i}) var<storage, read> g${i}: array<f32>;`).join('\n')}
${scaled ? `@group(0) @binding(${S}) var<storage, read> scale: array<f32>;` : ''}
@group(0) @binding(${S + +scaled}) var<storage, read_write> partials: array<f32>;
struct U { slots: array<vec4<u32>, ${S}>, chunks: u32, offset: u32, p0: u32, p1: u32 };
@group(0) @binding(${S + +scaled + 1}) var<uniform> u: U;
${reduceFns(256, scaled ? ['sum', 'bad'] : ['sum'])}
${scaled ? FINITE_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let chunk = wid.x + wid.y * nwg.x;
  if (chunk >= u.chunks) { return; }
  var acc = 0.0;
  ${scaled ? 'var bad = 0.0;\n  let inv = 1.0 / scale[0];' : ''}
  ${Array.from({ length: S }, (_, i) => i)
    .reverse()
    .map((i) => (i === 0 ? branch(0) : `if (chunk >= u.slots[${i}].y) ${branch(i)}`))
    .join(' else ')}
  let total = wg_sum(acc, lid);
  ${scaled ? 'let bads = wg_bad(bad, lid);' : ''}
  if (lid == 0u) { partials[u.offset + chunk] = ${scaled ? `select(total, ${INF_FROM('total')}, bads > 0.0)` : 'total'}; }
}
`;
}

/**
 * in: partials [P]; out: norm [1] = sqrt(Σ partials); u: {P}. One workgroup. With `scaled` also out:
 * unscale [2] (1 / the scale this step used, and 1 when the step overflowed, else 0), and the loss
 * scale's state updated in place, scale [1] and counters [2] (clean steps, skipped steps);
 * u: {P, growth interval, growth factor, backoff factor}.
 */
export function normFinalizeSource(scaled = false): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> norm: array<f32>;
${
  scaled
    ? `@group(0) @binding(2) var<storage, read_write> unscale: array<f32>;
@group(0) @binding(3) var<storage, read_write> scale: array<f32>;
@group(0) @binding(4) var<storage, read_write> counters: array<f32>;`
    : ''
}
struct U { P: u32, interval: u32, growth: f32, backoff: f32 };
@group(0) @binding(${scaled ? 5 : 2}) var<uniform> u: U;
${reduceFns(256, scaled ? ['sum', 'bad'] : ['sum'])}
${scaled ? FINITE_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
  var acc = 0.0;
  ${scaled ? 'var bad = 0.0;' : ''}
  for (var i = lid; i < u.P; i += 256u) { ${scaled ? 'let p = partials[i]; if (finite(p)) { acc = acc + p; } else { bad = 1.0; }' : 'acc = acc + partials[i];'} }
  let total = wg_sum(acc, lid);
  ${
    scaled
      ? `let bads = wg_bad(bad, lid);
  if (lid == 0u) {
    let n = sqrt(total);
    let overflow = bads > 0.0 || !finite(n);
    norm[0] = select(n, ${INF_FROM('n')}, overflow);
    let s = scale[0];
    unscale[0] = 1.0 / s;
    unscale[1] = select(0.0, 1.0, overflow);
    if (overflow) {
      scale[0] = s * u.backoff;
      counters[0] = 0.0;
      counters[1] = counters[1] + 1.0;
    } else if (counters[0] + 1.0 >= f32(u.interval)) {
      scale[0] = s * u.growth;
      counters[0] = 0.0;
    } else {
      counters[0] = counters[0] + 1.0;
    }
  }`
      : 'if (lid == 0u) { norm[0] = sqrt(total); }'
  }
}
`;
}

/**
 * AdamW in place for S parameters in one dispatch, with the gradient scaled for global-norm
 * clipping on the device. in: g0..g(S−1), norm [1] [, unscale [2]], numbers [STEP_NUMBERS] (the
 * step's, `adamwStepNumbers`); out (in place): p, m, v [, h, the weight's f16 copy] of each
 * parameter; u: {clip, slots: (n, first workgroup, decays) per parameter}. One invocation per
 * element, or with `vec4` (every size a multiple of 4; n counts vec4s) per four elements. With
 * `scaled` the gradients are divided by the loss scale and nothing is written when the step
 * overflowed. The step's numbers come in a tensor, not the uniform block, so that the block is the
 * same every step and a replayed step (replay.ts) need only write the numbers anew.
 */
export function adamwSource(S: number, vec4 = false, opts: { shadows?: boolean; scaled?: boolean } = {}): string {
  const T = vec4 ? 'vec4<f32>' : 'f32';
  const per = opts.shadows ? 4 : 3;
  const numbers = S + 1 + (opts.scaled ? 1 : 0);
  const inputs = numbers + 1;
  const ins = Array.from({ length: S }, (_, i) => `@group(0) @binding(${i}) var<storage, read> g${i}: array<${T}>;`);
  const outs = Array.from({ length: S }, (_, i) => {
    const b = inputs + per * i;
    return `@group(0) @binding(${b}) var<storage, read_write> p${i}: array<${T}>;
@group(0) @binding(${b + 1}) var<storage, read_write> m${i}: array<${T}>;
@group(0) @binding(${b + 2}) var<storage, read_write> v${i}: array<${T}>;${
      opts.shadows
        ? `
@group(0) @binding(${b + 3}) var<storage, read_write> h${i}: array<${vec4 ? 'vec4<f16>' : 'f16'}>;`
        : ''
    }`;
  });
  const branch = (i: number) => `{
    let j = (w - u.slots[${i}].y) * 256u + lid;
    if (j < u.slots[${i}].x) {
      let gg = g${i}[j] * scale;
      let mNew = m${i}[j] * beta1 + gg * omb1;
      let vNew = v${i}[j] * beta2 + (gg * gg) * omb2;
      m${i}[j] = mNew;
      v${i}[j] = vNew;
      let pNew = p${i}[j] * select(1.0, decay, u.slots[${i}].z != 0u) - ((mNew / bc1) / (sqrt(vNew / bc2) + eps)) * lr;
      p${i}[j] = pNew;${
        opts.shadows
          ? `
      h${i}[j] = ${vec4 ? 'to_f16x4' : 'to_f16'}(pNew);`
          : ''
      }
    }
  }`;
  return /* wgsl */ `${opts.shadows ? 'enable f16;' : ''}
${ins.join('\n')}
@group(0) @binding(${S}) var<storage, read> norm: array<f32>;
${opts.scaled ? `@group(0) @binding(${S + 1}) var<storage, read> unscale: array<f32>;` : ''}
@group(0) @binding(${numbers}) var<storage, read> numbers: array<f32, ${STEP_NUMBERS}>;
${outs.join('\n')}
struct U { clip: u32, p0: u32, p1: u32, p2: u32, slots: array<vec4<u32>, ${S}> };
@group(0) @binding(${inputs + per * S}) var<uniform> u: U;
${opts.shadows ? TO_F16_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  ${opts.scaled ? 'if (unscale[1] != 0.0) { return; }' : ''}
  let w = wid.x + wid.y * nwg.x;
  let lr = numbers[0]; let beta1 = numbers[1]; let beta2 = numbers[2]; let omb1 = numbers[3]; let omb2 = numbers[4];
  let bc1 = numbers[5]; let bc2 = numbers[6]; let eps = numbers[7]; let maxNorm = numbers[8]; let decay = numbers[9];
  var scale = 1.0;
  if (u.clip != 0u) { scale = min(1.0, maxNorm / (norm[0] + 1e-6)); }
  ${opts.scaled ? 'scale = scale * unscale[0];' : ''}
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
const NORM: Kernel = { key: 'norm_finalize', name: 'grad_norm', source: () => normFinalizeSource(false) };
const SCALED_NORM: Kernel = {
  key: 'norm_finalize_scaled',
  name: 'grad_norm_loss_scale',
  source: () => normFinalizeSource(true),
};

interface FusedAdamWEntry {
  param: tf.Variable;
  grad: tf.Tensor;
  m: tf.Variable;
  v: tf.Variable;
  /** The weight's f16 copy, refreshed with it. */
  shadow?: tf.Tensor;
  /** Whether weight decay applies to it. */
  decays: boolean;
}

/** Consecutive runs of at most `size` items. */
function groups<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Applies one clipped AdamW step to every entry; returns the gradient norm before clipping (a scalar). */
export function fusedClipAdamW(state: AdamWState, params: AdamWEntry[], s: AdamWStep): tf.Scalar {
  return fusedAdamW(state, params, s, null);
}

/** fusedClipAdamW for the gradients of a scaled loss (ops/adamw.ts's lossScaledAdamW). */
export function fusedLossScaledAdamW(
  state: AdamWState,
  params: AdamWEntry[],
  s: AdamWStep,
  lossScale: LossScale,
): tf.Scalar {
  return fusedAdamW(state, params, s, lossScale);
}

function fusedAdamW(state: AdamWState, params: AdamWEntry[], s: AdamWStep, lossScale: LossScale | null): tf.Scalar {
  const entries: FusedAdamWEntry[] = params.map(({ name, param, grad, decays }) => ({
    param,
    grad,
    ...state.moments(name, param),
    shadow: halfShadow(param),
    decays: decays && s.weightDecay > 0,
  }));
  const scaled = lossScale !== null;
  const bindings = webgpuBackend()!.device.limits.maxStorageBuffersPerShaderStage;
  const chunksOf = (e: FusedAdamWEntry) => Math.max(1, Math.ceil(e.grad.size / SUMSQ_CHUNK));
  const P = entries.reduce((a, e) => a + chunksOf(e), 0);
  const partials = allocate([P]);
  // Sums of squares: each gradient one binding, the partials one (and the loss scale one). Every
  // dispatch binds a full group, the last padded with an empty slot on a placeholder buffer, so one
  // pipeline serves every model (a search's candidates differ in their number of tensors).
  const perGroup = bindings - 1 - +scaled;
  const placeholder = allocate([1]);
  let offset = 0;
  for (const group of groups(entries, perGroup)) {
    const slots: UniformValue[] = [];
    let chunks = 0;
    for (const e of group) {
      slots.push(['u', e.grad.size], ['u', chunks], ['u', 0], ['u', 0]);
      chunks += chunksOf(e);
    }
    const inputs = group.map((e) => e.grad as tf.TensorInfo);
    // An empty slot starts past the last chunk: no workgroup reads it.
    for (let i = group.length; i < perGroup; i++) {
      slots.push(['u', 0], ['u', chunks], ['u', 0], ['u', 0]);
      inputs.push(placeholder);
    }
    const k = kernel(scaled ? 'grad_sum_squares_unscaled' : 'grad_sum_squares', perGroup, (n) =>
      sumSquaresSource(n, scaled),
    );
    if (lossScale) inputs.push(lossScale.scale);
    dispatch(k, inputs, [partials], [...slots, ['u', chunks], ['u', offset], ['u', 0], ['u', 0]], grid1d(chunks * 256));
    offset += chunks;
  }
  const norm = allocate([]);
  const unscale = lossScale ? allocate([2]) : null;
  if (lossScale && unscale) {
    const { growthInterval, growthFactor, backoffFactor } = lossScale.options;
    dispatch(
      SCALED_NORM,
      [partials],
      [norm, unscale, lossScale.scale, lossScale.counters],
      [
        ['u', P],
        ['u', growthInterval],
        ['f', growthFactor],
        ['f', backoffFactor],
      ],
      [1, 1, 1],
    );
  } else {
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
  }
  // AdamW: each parameter four bindings (gradient, weight, two moments) or five (its f16 copy too),
  // the norm one (and the unscale one), the step's numbers one. Sizes that are multiples of 4 (nearly
  // all) go four floats per invocation.
  const numbers = stepNumbers(s, adamwStepNumbers);
  const kinds: Array<{ vec4: boolean; shadows: boolean; group: FusedAdamWEntry[] }> = [];
  for (const vec4 of [true, false]) {
    for (const shadows of [false, true]) {
      const of = entries.filter((e) => (e.grad.size % 4 === 0) === vec4 && (e.shadow !== undefined) === shadows);
      const perDispatch = Math.floor((bindings - 2 - +scaled) / (shadows ? 5 : 4));
      for (const group of groups(of, perDispatch)) kinds.push({ vec4, shadows, group });
    }
  }
  for (const { vec4, shadows, group } of kinds) {
    const slots: UniformValue[] = [];
    let blocks = 0;
    for (const e of group) {
      const n = vec4 ? e.grad.size / 4 : e.grad.size;
      slots.push(['u', n], ['u', blocks], ['u', e.decays ? 1 : 0], ['u', 0]);
      blocks += Math.ceil(n / 256);
    }
    const uniforms: UniformValue[] = [['u', 1], ['u', 0], ['u', 0], ['u', 0], ...slots];
    const name = `adamw${vec4 ? '_vec4' : ''}${shadows ? '_f16_copy' : ''}${scaled ? '_loss_scale' : ''}`;
    const k = kernelFor(`adamw:${group.length}:${vec4}:${shadows}:${scaled}`, name, () =>
      adamwSource(group.length, vec4, { shadows, scaled }),
    );
    const inputs: tf.TensorInfo[] = [...group.map((e) => e.grad), norm];
    if (unscale) inputs.push(unscale);
    inputs.push(numbers);
    const outputs = group.flatMap((e) => (e.shadow ? [e.param, e.m, e.v, e.shadow] : [e.param, e.m, e.v]));
    dispatch(k, inputs, outputs, uniforms, grid1d(blocks * 256));
  }
  release(numbers);
  release(partials);
  release(placeholder);
  if (unscale) release(unscale);
  return toTensor<tf.Scalar>(norm);
}
