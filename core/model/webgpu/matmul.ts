/**
 * Matrix products on the WebGPU backend with offshoot's register-tiled f32 kernel
 * (wgsl-matmul.ts): tile size by output size, split-K when the output has too few tiles to fill
 * the GPU and K is long, bias and bias + GELU epilogues.
 */
import type * as tf from '../tfjs.js';

import { type Kernel, allocate, dispatch, grid1d, release } from './runtime.js';
import { type MatMulTile, type MatMulVariant, matmulGrid, matmulSource, sumSlicesSource, variantKey } from './wgsl-matmul.js';

const LARGE: MatMulTile = { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 };
const MEDIUM: MatMulTile = { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4 };
const SMALL: MatMulTile = { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 };
/** Workgroups that fill a large GPU about twice (an H100/H200 has 132 multiprocessors). */
const TARGET_WORKGROUPS = 264;

function parseTile(s: string): MatMulTile {
  const [BM, BN, BK, TM, TN] = s.split('x').map(Number);
  return { BM, BN, BK, TM, TN };
}

/** OFFSHOOT_MATMUL_TILE=BMxBNxBKxTMxTN forces one tile (for tuning); OFFSHOOT_MATMUL_SPLITK=0 turns split-K off. */
const forcedTile = process.env.OFFSHOOT_MATMUL_TILE ? parseTile(process.env.OFFSHOOT_MATMUL_TILE) : null;
const splitKEnabled = process.env.OFFSHOOT_MATMUL_SPLITK !== '0';

export interface MatMulPlan {
  tile: MatMulTile;
  /** K slices (1: no split). */
  S: number;
  kChunk: number;
}

export function planMatMul(M: number, N: number, K: number): MatMulPlan {
  const tiles = (t: MatMulTile) => Math.ceil(M / t.BM) * Math.ceil(N / t.BN);
  const tile = forcedTile ?? (tiles(LARGE) >= TARGET_WORKGROUPS ? LARGE : tiles(MEDIUM) >= TARGET_WORKGROUPS ? MEDIUM : SMALL);
  let S = 1;
  if (splitKEnabled && tiles(tile) < TARGET_WORKGROUPS && K >= 1024) {
    S = Math.min(Math.ceil(TARGET_WORKGROUPS / tiles(tile)), Math.floor(K / 512), 32);
  }
  if (S < 1) S = 1;
  const kChunk = S > 1 ? Math.ceil(K / S / tile.BK) * tile.BK : K;
  if (S > 1) S = Math.ceil(K / kChunk);
  return { tile, S: Math.max(1, S), kChunk };
}

const kernels = new Map<string, Kernel>();

function mmKernel(v: MatMulVariant): Kernel {
  const key = variantKey(v);
  let k = kernels.get(key);
  if (!k) {
    k = { key, name: `matmul_${v.transA ? 'T' : 'N'}${v.transB ? 'T' : 'N'}_${v.BM}x${v.BN}${v.splitK ? '_splitk' : ''}${v.epilogue === 'none' ? '' : `_${v.epilogue}`}`, source: () => matmulSource(v) };
    kernels.set(key, k);
  }
  return k;
}

function sumKernel(epilogue: 'none' | 'bias' | 'bias-gelu'): Kernel {
  const key = `sumslices_${epilogue}`;
  let k = kernels.get(key);
  if (!k) {
    k = { key, name: `sum_slices${epilogue === 'none' ? '' : `_${epilogue}`}`, source: () => sumSlicesSource({ epilogue }) };
    kernels.set(key, k);
  }
  return k;
}

export interface MatMulArgs {
  /** A is [M, K], or [K, M] when transA. */
  a: tf.TensorInfo;
  /** B is [K, N], or [N, K] when transB. */
  b: tf.TensorInfo;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  /** [N], added to every row. */
  bias?: tf.TensorInfo;
  /** Apply exact GELU after the bias; the pre-activation comes back as `z`. */
  gelu?: boolean;
}

/** C [M, N] = op(A) · op(B) (+ bias) (→ GELU). Returns tensor data (wrap with toTensor). */
export function matmul(args: MatMulArgs): { c: tf.TensorInfo; z?: tf.TensorInfo } {
  const { a, b, M, N, K, transA = false, transB = false, bias, gelu = false } = args;
  if (gelu && !bias) throw new Error('matmul: GELU epilogue needs a bias');
  const epilogue = gelu ? 'bias-gelu' : bias ? 'bias' : 'none';
  const plan = planMatMul(M, N, K);
  const c = allocate([M, N]);
  const z = gelu ? allocate([M, N]) : undefined;
  const uniforms: Array<['u', number]> = [['u', M], ['u', N], ['u', K], ['u', plan.kChunk]];
  if (K === 0) throw new Error('matmul: K is 0');
  const base = {
    ...plan.tile,
    transA,
    transB,
    vecA: (transA ? M : K) % 4 === 0,
    vecB: (transB ? K : N) % 4 === 0,
    vecC: N % 4 === 0,
  };
  if (plan.S === 1) {
    const v: MatMulVariant = {
      ...base,
      exact: M % plan.tile.BM === 0 && N % plan.tile.BN === 0 && K % plan.tile.BK === 0,
      epilogue,
      splitK: false,
    };
    const ins = bias ? [a, b, bias] : [a, b];
    dispatch(mmKernel(v), ins, z ? [c, z] : [c], uniforms, matmulGrid(v, M, N));
    return { c, z };
  }
  const v: MatMulVariant = {
    ...base,
    exact: M % plan.tile.BM === 0 && N % plan.tile.BN === 0 && plan.kChunk % plan.tile.BK === 0 && K % plan.kChunk === 0,
    epilogue: 'none',
    splitK: true,
  };
  const partial = allocate([plan.S, M, N]);
  dispatch(mmKernel(v), [a, b], [partial], uniforms, matmulGrid(v, M, N, plan.S));
  const ins = bias ? [partial, bias] : [partial];
  dispatch(sumKernel(epilogue), ins, z ? [c, z] : [c], [['u', plan.S], ['u', M * N], ['u', N], ['u', 0]], grid1d(M * N));
  release(partial);
  return { c, z };
}

/** Sums the S slices of x [S, L] into [L]. */
export function sumSlices(x: tf.TensorInfo, S: number, L: number): tf.TensorInfo {
  const y = allocate([L]);
  dispatch(sumKernel('none'), [x], [y], [['u', S], ['u', L], ['u', L], ['u', 0]], grid1d(L));
  return y;
}
