/**
 * Fused training ops for the WebGPU backend, each a tf.customGrad whose forward and backward passes
 * run offshoot's own kernels (runtime.ts): linear layers (bias, bias + GELU), the logits product,
 * LayerNorm, causal attention with rotary embeddings (flash style), softmax cross-entropy and
 * top-k distillation without a one-hot, and the embedding gradient without a one-hot. The model
 * calls these only when `fusedKernelsActive()`; elsewhere it uses the reference ops in ../ops.ts,
 * and test/fused-kernels.test.ts checks values and gradients of each against those.
 */
import * as tf from '../tfjs.js';

import type { AttentionShape } from '../gptneox.js';
import { matmul, sumSlices } from './matmul.js';
import { type Kernel, type UniformValue, allocate, capabilities, dispatch, grid1d, kernelFor, release, toTensor, webgpuBackend, zeroFill } from './runtime.js';
import {
  ATTN_ROWS,
  TOPK_MAX,
  attnDeltaSource,
  causalSoftmaxBackwardSource,
  causalSoftmaxSource,
  columnSumSource,
  crossEntropyBackwardSource,
  crossEntropyForwardSource,
  flashBackwardKVSource,
  flashBackwardQSource,
  flashForwardSource,
  headsLayoutSource,
  layerNormBackwardSource,
  layerNormForwardSource,
  rotaryMergeBackwardSource,
  rotarySplitSource,
  scatterAddRowsSource,
  topKDistillBackwardSource,
  topKDistillForwardSource,
} from './wgsl-kernels.js';

// ---------------------------------------------------------------------------------------------
// On/off

let enabledOverride: boolean | null = null;

/** Turns the fused path on or off for this process (null: back to the default, env OFFSHOOT_FUSED_KERNELS). */
export function setFusedKernels(on: boolean | null): void {
  enabledOverride = on;
}

/** True when the active backend is webgpu and fused kernels are on (default on; OFFSHOOT_FUSED_KERNELS=0 turns them off). */
export function fusedKernelsActive(): boolean {
  if (webgpuBackend() === null) return false;
  if (enabledOverride !== null) return enabledOverride;
  return process.env.OFFSHOOT_FUSED_KERNELS !== '0';
}

// ---------------------------------------------------------------------------------------------
// Helpers

function kernel(name: string, key: string, source: () => string): Kernel {
  return kernelFor(`${name}:${key}`, name, source);
}

/** One workgroup per row, folded into y past 32768. */
function rowGrid(rows: number): [number, number, number] {
  const x = Math.max(1, Math.min(rows, 32768));
  return [x, Math.ceil(rows / x), 1];
}

type Grad = (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[];
type Forward = (...args: tf.Tensor[]) => { value: tf.Tensor; gradFunc: Grad };

/** tf.customGrad with variadic tensor inputs and the save function last. */
function customOp(f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => { value: tf.Tensor; gradFunc: Grad }): (...inputs: tf.Tensor[]) => tf.Tensor {
  const g = tf.customGrad(((...args: unknown[]) => {
    const save = args.pop() as tf.GradSaveFunc;
    return f(args as tf.Tensor[], save);
  }) as Forward as unknown as Parameters<typeof tf.customGrad>[0]);
  return (...inputs) => g(...inputs);
}

function columnSums(dy: tf.TensorInfo, N: number, C: number, geluZ?: tf.TensorInfo): { sum: tf.TensorInfo; dz?: tf.TensorInfo } {
  const R = Math.max(8, Math.ceil(N / 256));
  const G = Math.ceil(N / R);
  const partial = allocate([G, C]);
  const u: UniformValue[] = [['u', N], ['u', C], ['u', R], ['u', 0]];
  let dz: tf.TensorInfo | undefined;
  if (geluZ) {
    dz = allocate([N, C]);
    dispatch(kernel('gelu_backward_colsum', '', () => columnSumSource(true)), [dy, geluZ], [dz, partial], u, [Math.ceil(C / 256), G, 1]);
  } else {
    dispatch(kernel('colsum', '', () => columnSumSource(false)), [dy], [partial], u, [Math.ceil(C / 256), G, 1]);
  }
  const sum = sumSlices(partial, G, C);
  release(partial);
  return { sum, dz };
}

// ---------------------------------------------------------------------------------------------
// Linear layers and the logits product

/** x [N, in] · weightᵀ ([out, in], torch layout) + bias, then GELU when asked; gradients for all three. */
export function fusedLinear(x: tf.Tensor2D, weight: tf.Tensor2D, bias: tf.Tensor1D, activation: 'none' | 'gelu' = 'none'): tf.Tensor2D {
  const [N, inF] = x.shape;
  const outF = weight.shape[0];
  const op = customOp(([xt, wt, bt], save) => {
    const { c, z } = matmul({ a: xt, b: wt, M: N, N: outF, K: inF, transB: true, bias: bt, gelu: activation === 'gelu' });
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
// LayerNorm

export function fusedLayerNorm(x: tf.Tensor2D, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): tf.Tensor2D {
  const [N, D] = x.shape;
  const op = customOp(([xt, wt, bt], save) => {
    const y = allocate([N, D]);
    const mean = allocate([N]);
    const rstd = allocate([N]);
    dispatch(kernel('layernorm', String(D), () => layerNormForwardSource(D)), [xt, wt, bt], [y, mean, rstd], [['u', N], ['f', eps], ['u', 0], ['u', 0]], rowGrid(N));
    save([xt, wt, toTensor(mean), toTensor(rstd)]);
    return {
      value: toTensor(y),
      gradFunc: (dy, [xs, ws, ms, rs]) => {
        const R = Math.max(1, Math.ceil(N / 512));
        const G = Math.ceil(N / R);
        const dx = allocate([N, D]);
        const pdw = allocate([G, D]);
        const pdb = allocate([G, D]);
        dispatch(kernel('layernorm_backward', String(D), () => layerNormBackwardSource(D)), [dy, xs, ms, rs, ws], [dx, pdw, pdb], [['u', N], ['u', R], ['u', 0], ['u', 0]], rowGrid(G));
        const dw = sumSlices(pdw, G, D);
        const db = sumSlices(pdb, G, D);
        release(pdw);
        release(pdb);
        return [toTensor(dx), toTensor(dw), toTensor(db)];
      },
    };
  });
  return op(x, weight, bias) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------
// Attention

/** Whether the fused attention handles this shape (else use the reference ops). */
export function fusedAttentionSupports(s: AttentionShape): boolean {
  return s.headSize % 4 === 0 && s.headSize <= 128 && s.rotated <= s.headSize && s.rotated % 2 === 0 && s.batch * s.heads <= 65535;
}

/**
 * How attention runs: 'scores' materialises the causal scores [B·H, T, T] and runs the products
 * around the softmax (two forward, four backward) as batched register-tiled products with the tiles
 * above the diagonal skipped, keeping P for the backward; 'flash' never writes the scores (one
 * invocation pair per row, K/V tiles in workgroup memory) and recomputes them in the backward. The
 * scores pay while they are small: for pythia-70m's batch ([B·H, T, T] is 64 MiB a layer) attention
 * took 3.5 ms of an H200's time per step this way against 6.4 ms with the flash kernels.
 */
export type AttentionKernels = 'scores' | 'flash';
/** Largest scores tensor (bytes, per layer) that the default materialises; P of every layer stays alive until the backward. */
const SCORES_MAX_BYTES = 256 * 2 ** 20;
let attentionOverride: AttentionKernels | null = null;

/** Forces one attention path for this process (null: the default, env OFFSHOOT_ATTENTION=scores|flash, else by size). */
export function setAttentionKernels(k: AttentionKernels | null): void {
  attentionOverride = k;
}

function attentionKernelsFor(BH: number, T: number): AttentionKernels {
  const forced = attentionOverride ?? process.env.OFFSHOOT_ATTENTION;
  if (forced === 'scores' || forced === 'flash') return forced;
  if (forced) throw new Error(`OFFSHOOT_ATTENTION must be 'scores' or 'flash', not '${forced}'`);
  const bytes = BH * T * T * 4;
  return bytes <= Math.min(SCORES_MAX_BYTES, capabilities().maxStorageBinding) ? 'scores' : 'flash';
}

/**
 * Causal self-attention of the fused QKV projection [B·T, H·3·hs] (rows interleaved per head: q,
 * k, v), with rotary embeddings on q and k: the per-head context merged back to [B·T, H·hs].
 */
export function fusedAttention(qkv: tf.Tensor2D, cos: tf.Tensor2D, sin: tf.Tensor2D, s: AttentionShape): tf.Tensor2D {
  const { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd } = s;
  if (rd === 0) {
    // Empty [T, 0] tables have no GPU buffer to bind; the kernels do not read them.
    cos = sin = tf.zeros([1, 1]) as tf.Tensor2D;
  }
  const BH = B * H;
  const total = BH * T * hs;
  const split = (x: tf.TensorInfo) => {
    const q = allocate([BH, T, hs]);
    const k = allocate([BH, T, hs]);
    const v = allocate([BH, T, hs]);
    dispatch(kernel('rotary_split', `${hs}_${rd}`, () => rotarySplitSource(hs, rd)), [x, cos, sin], [q, k, v], [['u', total], ['u', T], ['u', H], ['u', 0]], grid1d(total));
    return { q, k, v };
  };
  // The tables are saved with the forward's tensors (tfjs keeps saved tensors for the backward).
  const tables = [cos, sin];
  const merge = (dq: tf.TensorInfo, dk: tf.TensorInfo, dv: tf.TensorInfo, [c, sn]: tf.Tensor[]) => {
    const dx = allocate([B * T, H * 3 * hs]);
    const n = B * T * H * 3 * hs;
    dispatch(kernel('rotary_merge_backward', `${hs}_${rd}`, () => rotaryMergeBackwardSource(hs, rd)), [dq, dk, dv, c, sn], [dx], [['u', n], ['u', T], ['u', H], ['u', 0]], grid1d(n));
    for (const t of [dq, dk, dv]) release(t);
    return toTensor(dx);
  };
  const op = attentionKernelsFor(BH, T) === 'scores' ? scoresAttention(s, split, merge, tables) : flashAttention(s, split, merge, tables);
  return op(qkv) as tf.Tensor2D;
}

type SplitHeads = (x: tf.TensorInfo) => { q: tf.TensorInfo; k: tf.TensorInfo; v: tf.TensorInfo };
type MergeGrads = (dq: tf.TensorInfo, dk: tf.TensorInfo, dv: tf.TensorInfo, tables: tf.Tensor[]) => tf.Tensor;

function flashAttention(s: AttentionShape, split: SplitHeads, merge: MergeGrads, tables: tf.Tensor[]): (...inputs: tf.Tensor[]) => tf.Tensor {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const BH = B * H;
  const au: UniformValue[] = [['u', T], ['u', H], ['f', 1 / Math.sqrt(hs)], ['u', 0]];
  const agrid: [number, number, number] = [Math.ceil(T / ATTN_ROWS), BH, 1];
  return customOp(([x], save) => {
    const { q, k, v } = split(x);
    const o = allocate([B * T, H * hs]);
    const lse = allocate([BH * T]);
    dispatch(kernel('flash_forward', String(hs), () => flashForwardSource(hs)), [q, k, v], [o, lse], au, agrid);
    const oT = toTensor(o);
    save([toTensor(q), toTensor(k), toTensor(v), oT, toTensor(lse), ...tables]);
    return {
      value: oT,
      gradFunc: (dy, [qs, ks, vs, os, ls, ...tb]) => {
        const delta = allocate([BH * T]);
        dispatch(kernel('attn_delta', String(hs), () => attnDeltaSource(hs)), [dy, os], [delta], [['u', BH * T], ['u', T], ['u', H], ['u', 0]], grid1d(BH * T));
        const dq = allocate([BH, T, hs]);
        const dk = allocate([BH, T, hs]);
        const dv = allocate([BH, T, hs]);
        const ins = [qs, ks, vs, dy, ls, delta];
        dispatch(kernel('flash_backward_q', String(hs), () => flashBackwardQSource(hs)), ins, [dq], au, agrid);
        dispatch(kernel('flash_backward_k', String(hs), () => flashBackwardKVSource(hs, 'k')), ins, [dk], au, agrid);
        dispatch(kernel('flash_backward_v', String(hs), () => flashBackwardKVSource(hs, 'v')), ins, [dv], au, agrid);
        release(delta);
        return merge(dq, dk, dv, tb);
      },
    };
  });
}

function scoresAttention(s: AttentionShape, split: SplitHeads, merge: MergeGrads, tables: tf.Tensor[]): (...inputs: tf.Tensor[]) => tf.Tensor {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const BH = B * H;
  const rows = BH * T;
  const su: UniformValue[] = [['u', rows], ['u', T], ['f', 1 / Math.sqrt(hs)], ['u', 0]];
  const lu: UniformValue[] = [['u', (BH * T * hs) / 4], ['u', T], ['u', H], ['u', 0]];
  const lgrid = grid1d((BH * T * hs) / 4);
  const batched = { batch: BH, M: T } as const;
  return customOp(([x], save) => {
    const { q, k, v } = split(x);
    const scores = matmul({ ...batched, a: q, b: k, N: T, K: hs, transB: true, triangle: 'lowerC' }).c;
    const p = allocate([BH, T, T]);
    dispatch(kernel('causal_softmax', '', causalSoftmaxSource), [scores], [p], su, rowGrid(rows));
    release(scores);
    const oHeads = matmul({ ...batched, a: p, b: v, N: hs, K: T, triangle: 'lowerA' }).c;
    const o = allocate([B * T, H * hs]);
    dispatch(kernel('heads_merge', String(hs), () => headsLayoutSource(hs, false)), [oHeads], [o], lu, lgrid);
    release(oHeads);
    save([toTensor(q), toTensor(k), toTensor(v), toTensor(p), ...tables]);
    return {
      value: toTensor(o),
      gradFunc: (dy, [qs, ks, vs, ps, ...tb]) => {
        const dO = allocate([BH, T, hs]);
        dispatch(kernel('heads_split', String(hs), () => headsLayoutSource(hs, true)), [dy], [dO], lu, lgrid);
        const dP = matmul({ ...batched, a: dO, b: vs, N: T, K: hs, transB: true, triangle: 'lowerC' }).c;
        const dS = allocate([BH, T, T]);
        dispatch(kernel('causal_softmax_backward', '', causalSoftmaxBackwardSource), [ps, dP], [dS], su, rowGrid(rows));
        release(dP);
        const dv = matmul({ ...batched, a: ps, b: dO, N: hs, K: T, transA: true, triangle: 'upperA' }).c;
        const dq = matmul({ ...batched, a: dS, b: ks, N: hs, K: T, triangle: 'lowerA' }).c;
        const dk = matmul({ ...batched, a: dS, b: qs, N: hs, K: T, transA: true, triangle: 'upperA' }).c;
        release(dS);
        release(dO);
        return merge(dq, dk, dv, tb);
      },
    };
  });
}

// ---------------------------------------------------------------------------------------------
// Losses

/** Mean softmax cross-entropy of logits [N, V] against int32 targets [N]. */
export function fusedCrossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
  const [N, V] = logits.shape;
  const vec4 = V % 4 === 0;
  const op = customOp(([x], save) => {
    const rowLoss = allocate([N]);
    const lse = allocate([N]);
    dispatch(kernel('cross_entropy', String(vec4), () => crossEntropyForwardSource(vec4)), [x, targets], [rowLoss, lse], [['u', N], ['u', V], ['u', 0], ['u', 0]], rowGrid(N));
    const rl = toTensor(rowLoss);
    const value = tf.mean(rl);
    save([x, toTensor(lse), targets]);
    return {
      value,
      gradFunc: (dy, [xs, ls, ts]) => {
        const dx = allocate([N, V]);
        dispatch(kernel('cross_entropy_backward', String(vec4), () => crossEntropyBackwardSource(vec4)), [xs, ls, ts, dy], [dx], [['u', N], ['u', V], ['f', 1 / N], ['u', 0]], rowGrid(N));
        return toTensor(dx);
      },
    };
  });
  return op(logits) as tf.Scalar;
}

export interface TopKView {
  indices: tf.Tensor2D;
  logits: tf.Tensor2D;
  logNormaliser: tf.Tensor1D;
}

export function fusedTopKSupports(k: number): boolean {
  return k >= 1 && k <= TOPK_MAX;
}

/**
 * α·CE + (1 − α)·T²·KL over the teacher's top-k plus a remainder bucket (losses.ts's topKLogitKL
 * and distillationLoss), mean over positions, in two kernels: no log-softmax of the full logits
 * is kept, and the gradient is written directly.
 */
export function fusedTopKDistill(
  logits: tf.Tensor2D,
  targets: tf.Tensor1D,
  teacher: TopKView,
  alpha: number,
  temperature: number,
  direction: 'forward' | 'reverse' | 'symmetric',
): tf.Scalar {
  const [N, V] = logits.shape;
  const k = teacher.indices.shape[1];
  let kMax = 32;
  while (kMax < k) kMax *= 2;
  const u: UniformValue[] = [
    ['u', N],
    ['u', V],
    ['u', k],
    ['u', direction === 'forward' ? 0 : direction === 'reverse' ? 1 : 2],
    ['f', alpha],
    ['f', temperature],
    ['f', (1 - alpha) * temperature * temperature],
    ['f', 1 / N],
  ];
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
// Embedding

/** table[ids] with the gradient scattered back into the table by row (no one-hot, no dense product). */
export function fusedGatherRows(table: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D {
  const [rows, width] = table.shape;
  const n = ids.shape[0];
  const op = customOp(([t], save) => {
    const i32 = ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32');
    save([i32]);
    return {
      value: tf.gather(t, i32),
      gradFunc: (dy, [idx]) => {
        const out = allocate([rows, width]);
        zeroFill(out);
        dispatch(kernel('scatter_add_rows', '', scatterAddRowsSource), [dy, idx], [out], [['u', n * width], ['u', width], ['u', 0], ['u', 0]], grid1d(n * width));
        return toTensor(out);
      },
    };
  });
  return op(table) as tf.Tensor2D;
}
