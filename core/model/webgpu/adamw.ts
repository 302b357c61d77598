/**
 * AdamW with global gradient-norm clipping on the WebGPU backend, with no read-back: per-parameter
 * sums of squares into one partials buffer, one kernel for the norm, then one kernel per parameter
 * that scales the gradient by min(1, maxNorm / (norm + 1e-6)) on the device and updates the weight
 * and both moments in place (same arithmetic as optim.ts's AdamW.apply after clipByGlobalNorm).
 */
import type * as tf from '../tfjs.js';

import { type Kernel, allocate, dispatch, grid1d, release, toTensor } from './runtime.js';
import { SUMSQ_CHUNK, adamwSource, normFinalizeSource, sumSquaresSource } from './wgsl-kernels.js';

const K = {
  sumsq: { key: 'sumsq', name: 'grad_sum_squares', source: sumSquaresSource } as Kernel,
  norm: { key: 'norm_finalize', name: 'grad_norm', source: normFinalizeSource } as Kernel,
  adamw: { key: 'adamw', name: 'adamw', source: adamwSource } as Kernel,
};

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

/** Applies one clipped AdamW step to every entry; returns the gradient norm before clipping (a scalar). */
export function fusedClipAdamW(entries: FusedAdamWEntry[], s: FusedAdamWStep): tf.Scalar {
  const chunks = entries.map((e) => Math.max(1, Math.ceil(e.grad.size / SUMSQ_CHUNK)));
  const P = chunks.reduce((a, b) => a + b, 0);
  const partials = allocate([P]);
  let offset = 0;
  entries.forEach((e, i) => {
    dispatch(K.sumsq, [e.grad], [partials], [['u', e.grad.size], ['u', offset], ['u', chunks[i]], ['u', 0]], grid1d(chunks[i] * 256));
    offset += chunks[i];
  });
  const norm = allocate([]);
  dispatch(K.norm, [partials], [norm], [['u', P], ['u', 0], ['u', 0], ['u', 0]], [1, 1, 1]);
  for (const e of entries) {
    dispatch(
      K.adamw,
      [e.grad, norm],
      [e.param, e.m, e.v],
      [
        ['u', e.grad.size],
        ['f', s.lr],
        ['f', s.beta1],
        ['f', s.beta2],
        ['f', 1 - s.beta1],
        ['f', 1 - s.beta2],
        ['f', s.bc1],
        ['f', s.bc2],
        ['f', s.eps],
        ['f', e.decay],
        ['f', s.maxNorm],
        ['u', 1],
      ],
      grid1d(e.grad.size),
    );
  }
  release(partials);
  return toTensor<tf.Scalar>(norm);
}
