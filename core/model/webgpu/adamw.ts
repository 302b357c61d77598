/**
 * AdamW with global gradient-norm clipping on the WebGPU backend, with no read-back: sums of
 * squares into one partials buffer, one kernel for the norm, then AdamW kernels that scale the
 * gradient by min(1, maxNorm / (norm + 1e-6)) on the device and update weights and both moments in
 * place (same arithmetic as optim.ts's AdamW.apply after clipByGlobalNorm). Each dispatch handles
 * as many tensors as the device's storage bindings allow: a model has tens of small parameters
 * (biases, LayerNorms), and one dispatch each cost more than their memory traffic.
 */
import type * as tf from '../tfjs.js';

import { type Kernel, type UniformValue, allocate, dispatch, grid1d, kernelFor, release, toTensor, webgpuBackend } from './runtime.js';
import { SUMSQ_CHUNK, adamwSource, normFinalizeSource, sumSquaresSource } from './wgsl-kernels.js';

/** The kernel of `name` for `slots` tensors per dispatch. */
function kernel(name: string, slots: number, source: (slots: number) => string): Kernel {
  return kernelFor(`${name}:${slots}`, name, () => source(slots));
}
const NORM: Kernel = { key: 'norm_finalize', name: 'grad_norm', source: normFinalizeSource };
export interface FusedAdamWEntry {
  param: tf.Variable;
  grad: tf.Tensor;
  m: tf.Variable;
  v: tf.Variable;
  /** 1 − lr·weightDecay for decayed parameters, else 1. */
  decay: number;
}

export interface FusedAdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  bc1: number;
  bc2: number;
  /** Clip to this global norm. */
  maxNorm: number;
}

/** Consecutive runs of at most `size` items. */
function groups<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** Applies one clipped AdamW step to every entry; returns the gradient norm before clipping (a scalar). */
export function fusedClipAdamW(entries: FusedAdamWEntry[], s: FusedAdamWStep): tf.Scalar {
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
    dispatch(k, group.map((e) => e.grad), [partials], [...slots, ['u', chunks], ['u', offset], ['u', 0], ['u', 0]], grid1d(chunks * 256));
    offset += chunks;
  }
  const norm = allocate([]);
  dispatch(NORM, [partials], [norm], [['u', P], ['u', 0], ['u', 0], ['u', 0]], [1, 1, 1]);
  // AdamW: each parameter four bindings (gradient, weight, two moments), the norm one. Sizes that
  // are multiples of 4 (nearly all) go four floats per invocation.
  const perDispatch = Math.floor((bindings - 1) / 4);
  const byFours = entries.filter((e) => e.grad.size % 4 === 0);
  const rest = entries.filter((e) => e.grad.size % 4 !== 0);
  for (const [vec4, group] of [...groups(byFours, perDispatch).map((g) => [true, g] as const), ...groups(rest, perDispatch).map((g) => [false, g] as const)]) {
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
      ['f', s.bc1],
      ['f', s.bc2],
      ['f', s.eps],
      ['f', s.maxNorm],
      ['u', 1],
      ['u', 0],
      ['u', 0],
      ...slots,
    ];
    const k = kernelFor(`adamw:${group.length}:${vec4}`, vec4 ? 'adamw_vec4' : 'adamw', () => adamwSource(group.length, vec4));
    dispatch(k, [...group.map((e) => e.grad), norm], group.flatMap((e) => [e.param, e.m, e.v]), uniforms, grid1d(blocks * 256), { uniformsVary: true });
  }
  release(partials);
  return toTensor<tf.Scalar>(norm);
}
