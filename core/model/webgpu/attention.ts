/**
 * Causal self-attention with rotary embeddings on the fused WebGPU path: the QKV split with rotary
 * into per-head q, k, v, then one of three paths (attentionKernelsFor): `scores` materialises the
 * causal scores and runs the products around the softmax as batched matrix products (matmul.ts)
 * with the tiles above the diagonal skipped; `flash` never writes the scores (K/V tiles in
 * workgroup memory, online softmax) and recomputes them in the backward; `flash-matrix` does the
 * same with f16 operands on subgroup matrices (mixed precision). Heads are merged back, and the
 * backward's rotary merge writes the gradient of the fused projection.
 */
import * as tf from '../tfjs.js';

import { type AttentionShape, PositionTables, causalSelfAttention, customOp } from '../ops/index.js';
import { randHost, ropeTables } from '../kernel-check.js';
import type { KernelCase } from './check.js';
import { kernel, rowGrid } from './fused.js';
import { f16MatrixConfigs, halfProducts, halfStorageShape, matrixUnavailable } from './half.js';
import { matmul } from './matmul.js';
import type { OperandType } from './wgsl-matmul.js';
import { matrixEnables, matrixOps, unitArray } from './wgsl-sgmatrix.js';
import {
  type UniformValue,
  allocate,
  capabilities,
  dispatch,
  fixedSubgroupSize,
  grid1d,
  release,
  toTensor,
} from './runtime.js';
import { FLAT, NEG_BIG, ONLINE_LSE, TO_F16_WGSL, lseReduce, reduceFns } from './wgsl-common.js';

// --------------------------------------------------------------------------------------------
// Rotary embedding with the head split / merge of the fused QKV projection

/** WGSL header and store of a kernel that writes some outputs in f32 or (mixed precision's products) f16. */
function outputs(f16: boolean): { enable: string; type: string; put: (x: string) => string; helpers: string } {
  return f16
    ? { enable: 'enable f16;', type: 'f16', put: (x) => `to_f16(${x})`, helpers: TO_F16_WGSL }
    : { enable: '', type: 'f32', put: (x) => x, helpers: '' };
}

/**
 * Whether the rotary split and merge take four elements an invocation: every four consecutive
 * head dims then sit on one side of the rotation (the rotated half a multiple of four). Their index
 * arithmetic (divisions by the sequence length and head count) is most of their work, so four
 * elements an invocation run them up to several times faster.
 */
export const rotaryVec4 = (hs: number, rd: number): boolean => hs % 4 === 0 && rd % 8 === 0;

/** The rotation's tables at head dims d..d+w-1 of position t (w 1 or 4). */
const tableAt = (table: string, w: number, at: string) =>
  w === 1 ? `${table}[${at}]` : `vec4<f32>(${[0, 1, 2, 3].map((i) => `${table}[${at} + ${i}u]`).join(', ')})`;

/**
 * in: fused [B·T, H·3·hs], cos [T, rd], sin [T, rd]; out: q, k, v [B·H, T, hs] (f16 with `f16`,
 * for the products of the scores path under mixed precision); u: {total, T, H}; one invocation per
 * element, or per four (rotaryVec4; grid over total / 4).
 * Rotary (rotate_half) on the first rd dims of q and k.
 */
export function rotarySplitSource(hs: number, rd: number, f16 = false): string {
  const half = rd / 2;
  const o = outputs(f16);
  const w = rotaryVec4(hs, rd) ? 4 : 1;
  const f = w === 4 ? 'vec4<f32>' : 'f32';
  const put = (x: string) => (f16 ? (w === 4 ? `to_f16x4(${x})` : `to_f16(${x})`) : x);
  return /* wgsl */ `${o.enable}
@group(0) @binding(0) var<storage, read> fused: array<${f}>;
@group(0) @binding(1) var<storage, read> cosT: array<f32>;
@group(0) @binding(2) var<storage, read> sinT: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<${w === 4 ? `vec4<${o.type}>` : o.type}>;
@group(0) @binding(4) var<storage, read_write> k: array<${w === 4 ? `vec4<${o.type}>` : o.type}>;
@group(0) @binding(5) var<storage, read_write> v: array<${w === 4 ? `vec4<${o.type}>` : o.type}>;
struct U { total: u32, T: u32, H: u32, p0: u32 };
@group(0) @binding(6) var<uniform> u: U;
${FLAT}
${o.helpers}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let at = flat_index(gid, nwg);
  let idx = at * ${w}u;
  if (idx >= u.total) { return; }
  let d = idx % ${hs}u;
  let t = (idx / ${hs}u) % u.T;
  let bh = idx / (${hs}u * u.T);
  let h = bh % u.H;
  let b = bh / u.H;
  // In the arrays' elements (${w} values each).
  let src = ((b * u.T + t) * u.H * ${3 * hs}u + h * ${3 * hs}u + d) / ${w}u;
  var qv = fused[src];
  var kv = fused[src + ${hs / w}u];
  if (d < ${rd}u) {
    let c = ${tableAt('cosT', w, `t * ${rd}u + d`)};
    let s = ${tableAt('sinT', w, `t * ${rd}u + d`)};
    if (d < ${half}u) {
      qv = qv * c - fused[src + ${half / w}u] * s;
      kv = kv * c - fused[src + ${(hs + half) / w}u] * s;
    } else {
      qv = qv * c + fused[src - ${half / w}u] * s;
      kv = kv * c + fused[src + ${(hs - half) / w}u] * s;
    }
  }
  q[at] = ${put('qv')};
  k[at] = ${put('kv')};
  v[at] = ${put(`fused[src + ${(2 * hs) / w}u]`)};
}
`;
}

/**
 * in: dq, dk, dv [B·H, T, hs], cos, sin; out: dfused [B·T, H·3·hs]; u: {total, T, H}; one
 * invocation per element, or per four (rotaryVec4; grid over total / 4).
 */
export function rotaryMergeBackwardSource(hs: number, rd: number): string {
  const half = rd / 2;
  const w = rotaryVec4(hs, rd) ? 4 : 1;
  const f = w === 4 ? 'vec4<f32>' : 'f32';
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dq: array<${f}>;
@group(0) @binding(1) var<storage, read> dk: array<${f}>;
@group(0) @binding(2) var<storage, read> dv: array<${f}>;
@group(0) @binding(3) var<storage, read> cosT: array<f32>;
@group(0) @binding(4) var<storage, read> sinT: array<f32>;
@group(0) @binding(5) var<storage, read_write> dfused: array<${f}>;
struct U { total: u32, T: u32, H: u32, p0: u32 };
@group(0) @binding(6) var<uniform> u: U;
${FLAT}
fn grad_of(which: u32, i: u32) -> ${f} {
  if (which == 0u) { return dq[i]; }
  if (which == 1u) { return dk[i]; }
  return dv[i];
}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let at = flat_index(gid, nwg);
  let idx = at * ${w}u;
  if (idx >= u.total) { return; }
  let width = u.H * ${3 * hs}u;
  let row = idx / width;
  let col = idx % width;
  let h = col / ${3 * hs}u;
  let j = col % ${3 * hs}u;
  let which = j / ${hs}u;
  let d = j % ${hs}u;
  let b = row / u.T;
  let t = row % u.T;
  // In the arrays' elements (${w} values each).
  let src = (((b * u.H + h) * u.T + t) * ${hs}u + d) / ${w}u;
  var g = grad_of(which, src);
  if (which < 2u && d < ${rd}u) {
    if (d < ${half}u) {
      g = g * ${tableAt('cosT', w, `t * ${rd}u + d`)} + grad_of(which, src + ${half / w}u) * ${tableAt('sinT', w, `t * ${rd}u + d + ${half}u`)};
    } else {
      g = g * ${tableAt('cosT', w, `t * ${rd}u + d`)} - grad_of(which, src - ${half / w}u) * ${tableAt('sinT', w, `t * ${rd}u + d - ${half}u`)};
    }
  }
  dfused[at] = g;
}
`;
}

// --------------------------------------------------------------------------------------------
// Causal attention, flash style: one invocation per query (or key) row, K/V (or Q/dO) tiles
// staged in workgroup memory, scores never written to global memory.

export const ATTN_ROWS = 64;

export function attnBlock(hs: number): number {
  return hs <= 64 ? 32 : 16;
}

/**
 * Invocations per row: two (each taking half of every key or query tile, merged at the end through
 * the tiles' workgroup memory) when the head is small enough for the merge to fit, else one.
 */
export function attnParts(hs: number): number {
  return hs <= 64 ? 2 : 1;
}

function vecDecl(prefix: string, n: number, init = 'vec4<f32>(0.0)'): string {
  return Array.from({ length: n }, (_, i) => `var ${prefix}${i} = ${init};`).join(' ');
}
/**
 * Σ_i dot(prefix_i, tile[row·stride + i]) as a balanced tree: the dots are independent and the sum
 * is log-deep, not a chain of n dependent adds (which left the attention kernels latency-bound).
 */
function dotWith(prefix: string, n: number, tile: string, rowExpr: string, rowStride: number): string {
  const terms = Array.from({ length: n }, (_, i) => `dot(${prefix}${i}, ${tile}[${rowExpr} * ${rowStride}u + ${i}u])`);
  const tree = (xs: string[]): string =>
    xs.length === 1
      ? xs[0]
      : `(${tree(xs.slice(0, Math.ceil(xs.length / 2)))} + ${tree(xs.slice(Math.ceil(xs.length / 2)))})`;
  return tree(terms);
}
const each = (n: number, f: (i: number) => string, sep = ' ') => Array.from({ length: n }, (_, i) => f(i)).join(sep);

/**
 * A row's partial vector (V4 vec4s) parked in the two tiles A and B (each of `half` rows × V4) for
 * the merge: rows below `half` in A, the rest in B.
 */
function park(prefix: string, V4: number, half: number, A: string, B: string): string {
  return `if (row < ${half}u) { ${each(V4, (i) => `${A}[row * ${V4}u + ${i}u] = ${prefix}${i};`)} } else { ${each(V4, (i) => `${B}[(row - ${half}u) * ${V4}u + ${i}u] = ${prefix}${i};`)} }`;
}
/** Declares pk0.. with the parked partial of `row` (no out-of-range index is ever formed). */
function unpark(V4: number, half: number, A: string, B: string): string {
  return `${vecDecl('pk', V4)} if (row < ${half}u) { ${each(V4, (i) => `pk${i} = ${A}[row * ${V4}u + ${i}u];`)} } else { ${each(V4, (i) => `pk${i} = ${B}[(row - ${half}u) * ${V4}u + ${i}u];`)} }`;
}

/**
 * in: q, k, v [BH, T, hs]; out: o [B·T, H·hs] (heads merged), lse [BH·T]; u: {T, H, scale}.
 * Grid: (ceil(T / 64), BH). Requires hs % 4 == 0. Each of the `parts` invocations of a row takes
 * its share of every key tile; online softmax per part, merged at the end.
 */
export function flashForwardSource(hs: number): string {
  const V4 = hs / 4;
  const BK = attnBlock(hs);
  const R = ATTN_ROWS;
  const P = attnParts(hs);
  const KP = BK / P;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> V: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> O: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> LSE: array<f32>;
struct U { T: u32, H: u32, scale: f32, p0: u32 };
@group(0) @binding(5) var<uniform> u: U;
var<workgroup> Ks: array<vec4<f32>, ${BK * V4}>;
var<workgroup> Vs: array<vec4<f32>, ${BK * V4}>;
var<workgroup> Ss: array<f32, ${R * P * (KP + 1)}>;
@compute @workgroup_size(${R * P})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let bh = wid.y;
  let q0 = wid.x * ${R}u;
  let row = lid % ${R}u;
  let part = lid / ${R}u;
  let r = q0 + row;
  let valid = r < u.T;
  let rowBase = bh * u.T;
  ${vecDecl('rq_', V4)}
  if (valid) {
    ${each(V4, (i) => `rq_${i} = Q[(rowBase + r) * ${V4}u + ${i}u];`)}
  }
  ${vecDecl('ro_', V4)}
  var m = ${NEG_BIG};
  var l = 0.0;
  let kvEnd = min(u.T, q0 + ${R}u);
  let c0 = part * ${KP}u;
  for (var kb = 0u; kb < kvEnd; kb += ${BK}u) {
    for (var e = lid; e < ${BK * V4}u; e += ${R * P}u) {
      let kr = kb + e / ${V4}u;
      var kv = vec4<f32>(0.0);
      var vv = vec4<f32>(0.0);
      if (kr < u.T) { kv = K[(rowBase + kr) * ${V4}u + e % ${V4}u]; vv = V[(rowBase + kr) * ${V4}u + e % ${V4}u]; }
      Ks[e] = kv;
      Vs[e] = vv;
    }
    workgroupBarrier();
    var mb = ${NEG_BIG};
    for (var j = 0u; j < ${KP}u; j++) {
      let c = c0 + j;
      var s = ${NEG_BIG};
      if (kb + c <= r && kb + c < u.T) {
        s = (${dotWith('rq_', V4, 'Ks', 'c', V4)}) * u.scale;
        mb = max(mb, s);
      }
      Ss[lid * ${KP + 1}u + j] = s;
    }
    let mNew = max(m, mb);
    let alpha = exp(m - mNew);
    l = l * alpha;
    ${each(V4, (i) => `ro_${i} = ro_${i} * alpha;`)}
    for (var j = 0u; j < ${KP}u; j++) {
      let c = c0 + j;
      if (kb + c <= r && kb + c < u.T) {
        let p = exp(Ss[lid * ${KP + 1}u + j] - mNew);
        l = l + p;
        ${each(V4, (i) => `ro_${i} = fma(vec4<f32>(p), Vs[c * ${V4}u + ${i}u], ro_${i});`)}
      }
    }
    m = mNew;
    workgroupBarrier();
  }
  ${
    P === 2
      ? `// Merge the two parts: part 1 parks (m, l, o) in the free tiles, part 0 combines.
  if (part == 1u) {
    ${park('ro_', V4, R / 2, 'Ks', 'Vs')}
    Ss[row * 2u] = m;
    Ss[row * 2u + 1u] = l;
  }
  workgroupBarrier();
  if (part == 0u && valid) {
    let m1 = Ss[row * 2u];
    let l1 = Ss[row * 2u + 1u];
    let mm = max(m, m1);
    let a0 = exp(m - mm);
    let a1 = exp(m1 - mm);
    let inv = 1.0 / (l * a0 + l1 * a1);
    let b = bh / u.H;
    let h = bh % u.H;
    let ob = ((b * u.T + r) * u.H + h) * ${V4}u;
    ${unpark(V4, R / 2, 'Ks', 'Vs')}
    ${each(V4, (i) => `O[ob + ${i}u] = (ro_${i} * a0 + pk${i} * a1) * inv;`, '\n    ')}
    LSE[rowBase + r] = mm + log(l * a0 + l1 * a1);
  }`
      : `if (valid) {
    let inv = 1.0 / l;
    let b = bh / u.H;
    let h = bh % u.H;
    let ob = ((b * u.T + r) * u.H + h) * ${V4}u;
    ${each(V4, (i) => `O[ob + ${i}u] = ro_${i} * inv;`)}
    LSE[rowBase + r] = m + log(l);
  }`
  }
}
`;
}

/** in: dO, O [B·T, H·hs]; out: D [BH·T] = rowsum(dO ∘ O); u: {total, T, H}. */
export function attnDeltaSource(hs: number): string {
  const V4 = hs / 4;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dO: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> O: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> D: array<f32>;
struct U { total: u32, T: u32, H: u32, p0: u32 };
@group(0) @binding(3) var<uniform> u: U;
${FLAT}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = flat_index(gid, nwg);
  if (idx >= u.total) { return; }
  let bh = idx / u.T;
  let t = idx % u.T;
  let b = bh / u.H;
  let h = bh % u.H;
  let base = ((b * u.T + t) * u.H + h) * ${V4}u;
  var acc = 0.0;
  for (var i = 0u; i < ${V4}u; i++) { acc = acc + dot(dO[base + i], O[base + i]); }
  D[idx] = acc;
}
`;
}

/**
 * dQ: in: q, k, v [BH, T, hs], dO [B·T, H·hs], lse [BH·T], D [BH·T]; out: dq [BH, T, hs];
 * u: {T, H, scale}. Grid (ceil(T / 64), BH).
 */
export function flashBackwardQSource(hs: number): string {
  const V4 = hs / 4;
  const BK = attnBlock(hs);
  const R = ATTN_ROWS;
  const P = attnParts(hs);
  const KP = BK / P;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> V: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dO: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> LSE: array<f32>;
@group(0) @binding(5) var<storage, read> Dl: array<f32>;
@group(0) @binding(6) var<storage, read_write> dQ: array<vec4<f32>>;
struct U { T: u32, H: u32, scale: f32, p0: u32 };
@group(0) @binding(7) var<uniform> u: U;
var<workgroup> Ks: array<vec4<f32>, ${BK * V4}>;
var<workgroup> Vs: array<vec4<f32>, ${BK * V4}>;
@compute @workgroup_size(${R * P})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let bh = wid.y;
  let q0 = wid.x * ${R}u;
  let row = lid % ${R}u;
  let part = lid / ${R}u;
  let r = q0 + row;
  let valid = r < u.T;
  let rowBase = bh * u.T;
  let b = bh / u.H;
  let h = bh % u.H;
  ${vecDecl('rq_', V4)}
  ${vecDecl('rg_', V4)}
  ${vecDecl('ra_', V4)}
  var lse = 0.0;
  var dl = 0.0;
  if (valid) {
    let ob = ((b * u.T + r) * u.H + h) * ${V4}u;
    ${each(V4, (i) => `rq_${i} = Q[(rowBase + r) * ${V4}u + ${i}u]; rg_${i} = dO[ob + ${i}u];`)}
    lse = LSE[rowBase + r];
    dl = Dl[rowBase + r];
  }
  let kvEnd = min(u.T, q0 + ${R}u);
  let c0 = part * ${KP}u;
  for (var kb = 0u; kb < kvEnd; kb += ${BK}u) {
    for (var e = lid; e < ${BK * V4}u; e += ${R * P}u) {
      let kr = kb + e / ${V4}u;
      var kv = vec4<f32>(0.0);
      var vv = vec4<f32>(0.0);
      if (kr < u.T) { kv = K[(rowBase + kr) * ${V4}u + e % ${V4}u]; vv = V[(rowBase + kr) * ${V4}u + e % ${V4}u]; }
      Ks[e] = kv;
      Vs[e] = vv;
    }
    workgroupBarrier();
    for (var j = 0u; j < ${KP}u; j++) {
      let c = c0 + j;
      if (kb + c <= r && kb + c < u.T) {
        let s = (${dotWith('rq_', V4, 'Ks', 'c', V4)}) * u.scale;
        let p = exp(s - lse);
        let dp = ${dotWith('rg_', V4, 'Vs', 'c', V4)};
        let ds = p * (dp - dl);
        ${each(V4, (i) => `ra_${i} = fma(vec4<f32>(ds), Ks[c * ${V4}u + ${i}u], ra_${i});`)}
      }
    }
    workgroupBarrier();
  }
  ${
    P === 2
      ? `if (part == 1u) { ${park('ra_', V4, R / 2, 'Ks', 'Vs')} }
  workgroupBarrier();
  if (part == 0u && valid) {
    ${unpark(V4, R / 2, 'Ks', 'Vs')}
    ${each(V4, (i) => `dQ[(rowBase + r) * ${V4}u + ${i}u] = (ra_${i} + pk${i}) * u.scale;`, '\n    ')}
  }`
      : `if (valid) {
    ${each(V4, (i) => `dQ[(rowBase + r) * ${V4}u + ${i}u] = ra_${i} * u.scale;`)}
  }`
  }
}
`;
}

/**
 * dK (which 'k') or dV (which 'v'): one invocation per key row (and part), looping over the query
 * rows at or after it. in: q, k, v [BH, T, hs], dO [B·T, H·hs], lse, D; out: dk or dv
 * [BH, T, hs]; u: {T, H, scale}. Grid (ceil(T / 64), BH).
 */
export function flashBackwardKVSource(hs: number, which: 'k' | 'v'): string {
  const V4 = hs / 4;
  const BQ = attnBlock(hs);
  const R = ATTN_ROWS;
  const P = attnParts(hs);
  const QP = BQ / P;
  const isK = which === 'k';
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> K: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> V: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dO: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> LSE: array<f32>;
@group(0) @binding(5) var<storage, read> Dl: array<f32>;
@group(0) @binding(6) var<storage, read_write> Out: array<vec4<f32>>;
struct U { T: u32, H: u32, scale: f32, p0: u32 };
@group(0) @binding(7) var<uniform> u: U;
var<workgroup> Qs: array<vec4<f32>, ${BQ * V4}>;
var<workgroup> Gs: array<vec4<f32>, ${BQ * V4}>;
var<workgroup> Ls: array<f32, ${BQ}>;
var<workgroup> Ds: array<f32, ${BQ}>;
@compute @workgroup_size(${R * P})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let bh = wid.y;
  let k0 = wid.x * ${R}u;
  let row = lid % ${R}u;
  let part = lid / ${R}u;
  let c = k0 + row;
  let valid = c < u.T;
  let rowBase = bh * u.T;
  let b = bh / u.H;
  let h = bh % u.H;
  ${vecDecl('rk_', V4)}
  ${isK ? vecDecl('rv_', V4) : ''}
  ${vecDecl('ra_', V4)}
  if (valid) {
    ${each(V4, (i) => `rk_${i} = K[(rowBase + c) * ${V4}u + ${i}u];${isK ? ` rv_${i} = V[(rowBase + c) * ${V4}u + ${i}u];` : ''}`)}
  }
  let j0 = part * ${QP}u;
  for (var qb = k0; qb < u.T; qb += ${BQ}u) {
    for (var e = lid; e < ${BQ * V4}u; e += ${R * P}u) {
      let qr = qb + e / ${V4}u;
      var qv = vec4<f32>(0.0);
      var gv = vec4<f32>(0.0);
      if (qr < u.T) {
        qv = Q[(rowBase + qr) * ${V4}u + e % ${V4}u];
        gv = dO[((b * u.T + qr) * u.H + h) * ${V4}u + e % ${V4}u];
      }
      Qs[e] = qv;
      Gs[e] = gv;
    }
    for (var e = lid; e < ${BQ}u; e += ${R * P}u) {
      let qr = qb + e;
      var lv = 0.0;
      var dv = 0.0;
      if (qr < u.T) { lv = LSE[rowBase + qr]; dv = Dl[rowBase + qr]; }
      Ls[e] = lv;
      Ds[e] = dv;
    }
    workgroupBarrier();
    for (var j = 0u; j < ${QP}u; j++) {
      let rr = j0 + j;
      let r = qb + rr;
      if (r >= c && r < u.T) {
        let s = (${dotWith('rk_', V4, 'Qs', 'rr', V4)}) * u.scale;
        let p = exp(s - Ls[rr]);
        ${
          isK
            ? `let dp = ${dotWith('rv_', V4, 'Gs', 'rr', V4)};
        let ds = p * (dp - Ds[rr]);
        ${each(V4, (i) => `ra_${i} = fma(vec4<f32>(ds), Qs[rr * ${V4}u + ${i}u], ra_${i});`)}`
            : each(V4, (i) => `ra_${i} = fma(vec4<f32>(p), Gs[rr * ${V4}u + ${i}u], ra_${i});`)
        }
      }
    }
    workgroupBarrier();
  }
  ${
    P === 2
      ? `if (part == 1u) { ${park('ra_', V4, R / 2, 'Qs', 'Gs')} }
  workgroupBarrier();
  if (part == 0u && valid) {
    ${unpark(V4, R / 2, 'Qs', 'Gs')}
    ${each(V4, (i) => `Out[(rowBase + c) * ${V4}u + ${i}u] = (ra_${i} + pk${i})${isK ? ' * u.scale' : ''};`, '\n    ')}
  }`
      : `if (valid) {
    ${each(V4, (i) => `Out[(rowBase + c) * ${V4}u + ${i}u] = ra_${i}${isK ? ' * u.scale' : ''};`)}
  }`
  }
}
`;
}

// --------------------------------------------------------------------------------------------
// Causal attention, flash style on subgroup matrices (mixed precision): f16 q, k, v and dO, the
// products on the adapter's f16 → f32 matrices, the scores and their softmax in f32 in workgroup
// memory and never in global memory. Each subgroup owns E rows (queries; keys in dK and dV) and
// streams the other side in blocks of W through its matrices.

/** Subgroups of a flash-matrix workgroup: a workgroup owns 4E rows. */
const FM_SUBGROUPS = 4;
/** How far a row's running maximum may fall behind before the forward rescales its partial output (e⁸: P stays well inside f16). */
const FM_RESCALE_MARGIN = 8;

/** One flash-matrix kernel's layout. */
export interface FlashMatrixKernel {
  /** The edge of the adapter's square f16 → f32 configuration (E × E × E). */
  E: number;
  /** The adapter's subgroup size. */
  SG: number;
  hs: number;
  /** Width of the streamed blocks (keys; queries for dK and dV): a multiple of E and SG that divides 4E. */
  W: number;
  /** The builtins emulated (wgsl-sgmatrix.ts's matrixOps): checks on adapters without subgroup matrices. */
  emulate: boolean;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** The sizes a flash-matrix kernel's code is written from (f32 rows padded by 16 bytes, f16 rows by 16 bytes). */
function fmLayout(k: FlashMatrixKernel) {
  const { E, SG, hs, W } = k;
  const threads = FM_SUBGROUPS * SG;
  const KS = hs + 8;
  // The matrices' offsets in a staged block are multiples of E (4 with the emulated E of 4).
  const unit = E % 8 === 0 ? 8 : 4;
  const ops = matrixOps({ M: E, N: E, K: E, emulate: k.emulate });
  return {
    ops,
    own: FM_SUBGROUPS * E,
    /** Matrices across the head (D) and across a streamed block (NB); each lane's elements of a row (IPR). */
    D: hs / E,
    NB: W / E,
    IPR: W / SG,
    SW: W + 4,
    PW: W + 8,
    /** Row stride of a staged block (hs f16 wide). */
    KS,
    /** A staged block's workgroup array: f16 pairs, `unit` f16 to an element, so a 16-byte load is stored in one or two. */
    staged: unitArray(unit, W * KS),
    threads,
    /**
     * A kernel loop's streamed blocks, [workgroup copy, storage] each (W rows of hs f16, storage read
     * as vec4<u32>): a block's 16-byte loads go to registers (`fetch`, rows row0..) while the block
     * before is multiplied, and are stored into its workgroup copy, rows KS apart (`store`), once
     * that block's matrix loads are done; the workgroup's four subgroups load their matrices from it.
     */
    streams: (pairs: Array<[string, string]>) => {
      const loads = (W * hs) / 8;
      const each = (f: (reg: number) => string) =>
        range(Math.ceil(loads / threads))
          .map((i) => `{ let j = lidx + ${i * threads}u; ${loads % threads ? `if (j < ${loads}u) ` : ''}{ ${f(i)} } }`)
          .join(' ');
      const slot = `(j / ${hs / 8}u) * ${KS / unit}u + (j % ${hs / 8}u) * ${8 / unit}u`;
      return {
        /** The workgroup copies, in the order given. */
        copies: pairs.map(([dst]) => dst),
        decl: pairs
          .flatMap(([dst]) => range(Math.ceil(loads / threads)).map((i) => `var ${dst}r${i}: vec4<u32>;`))
          .join(' '),
        fetch: (row0: string) =>
          pairs.map(([dst, src]) => each((i) => `${dst}r${i} = ${src}[(${row0}) * ${hs / 8}u + j];`)).join('\n    '),
        store: pairs
          .map(([dst]) =>
            each((i) =>
              unit === 8
                ? `${dst}[${slot}] = ${dst}r${i};`
                : `let at = ${slot}; ${dst}[at] = ${dst}r${i}.xy; ${dst}[at + 1u] = ${dst}r${i}.zw;`,
            ),
          )
          .join('\n    '),
      };
    },
    /** A matrix load from a staged block at f16 offset `at` (a multiple of the unit). */
    loadStaged: (name: string, use: 'left' | 'right', src: string, at: number, colMajor: boolean) =>
      ops.load(name, use, src, `${at / unit}u`, colMajor, `${KS / unit}u`, unit),
    header: ['enable f16;', 'enable subgroups;', ...matrixEnables({ M: E, N: E, K: E, emulate: k.emulate })].join('\n'),
  };
}

/** Why the flash-matrix kernels cannot take this shape with this layout, or null. */
export function flashMatrixProblem(k: FlashMatrixKernel, T: number): string | null {
  const own = FM_SUBGROUPS * k.E;
  if (k.hs % k.E !== 0 || k.hs % 8 !== 0) return `head size ${k.hs} is not a multiple of the matrices' ${k.E} and of 8`;
  if (T % own !== 0) return `sequence length ${T} is not a multiple of ${own}`;
  if (k.SG % k.E !== 0 || k.hs % (k.SG / k.E) !== 0)
    return `the subgroup size ${k.SG} must be a multiple of the matrices' ${k.E}, with head size ${k.hs} a multiple of their ratio`;
  if (k.W % k.E !== 0 || k.W % k.SG !== 0 || own % k.W !== 0)
    return `block width ${k.W} must be a multiple of ${k.E} and of the subgroup size ${k.SG}, and divide ${own}`;
  return null;
}

/** Bytes of workgroup memory a flash-matrix kernel takes (each stages two blocks). */
export function flashMatrixBytes(k: FlashMatrixKernel, which: 'forward' | 'dq' | 'dkv'): number {
  const rows = FM_SUBGROUPS * k.E;
  const f32Rows = (w: number) => 4 * rows * (w + 4);
  const f16Rows = 2 * rows * (k.W + 8);
  const staged = 2 * 2 * k.W * (k.hs + 8);
  if (which === 'forward') return f32Rows(Math.max(k.W, k.hs)) + f16Rows + staged + 4;
  return 2 * f32Rows(k.W) + (which === 'dq' ? 1 : 2) * f16Rows + staged;
}

/**
 * Declarations of the NB accumulators `acc`c that productsWithRows fills, made before the loop over
 * blocks and zeroed in it: a loop body's own declarations were not always fresh each iteration (a
 * declared-only array in lavapipe's emulated kernels kept the last iteration's values).
 */
function blockAccumulators(l: ReturnType<typeof fmLayout>, acc: string): string {
  return range(l.NB)
    .map((c) => l.ops.accumulator(`${acc}${c}`))
    .join(' ');
}

/**
 * Σ_d L_d · srcᵀ over the streamed block's NB matrices into accumulators `acc`c (declared by
 * blockAccumulators; src the staged block, read as the right operand column-major), each stored to
 * `dst` at `base` + c·E.
 */
function productsWithRows(
  l: ReturnType<typeof fmLayout>,
  E: number,
  o: { acc: string; left: string; src: string; dst: string; base: string; stride: number },
): string {
  const { ops } = l;
  return range(l.NB)
    .map((c) =>
      [
        ops.zero(`${o.acc}${c}`),
        ...range(l.D).flatMap((d) => [
          l.loadStaged(`${o.acc}r${c}_${d}`, 'right', o.src, c * E * l.KS + d * E, true),
          ops.mma(`${o.acc}${c}`, `${o.left}${d}`, `${o.acc}r${c}_${d}`),
        ]),
        ops.store(o.dst, `${o.base} + ${c * E}u`, `${o.acc}${c}`, `${o.stride}u`),
      ].join('\n    '),
    )
    .join('\n    ');
}

/** acc_j += Σ_c L_c · src[c·E.., j·E..] for the D accumulators: L_c from workgroup `tile` (rows `stride` apart), src the staged block. */
function accumulateRows(
  l: ReturnType<typeof fmLayout>,
  E: number,
  o: { acc: string; left: string; tile: string; base: string; stride: number; src: string },
): string {
  const { ops } = l;
  const lefts = range(l.NB).map((c) =>
    ops.load(`${o.left}${c}`, 'left', o.tile, `${o.base} + ${c * E}u`, false, `${o.stride}u`),
  );
  const products = range(l.D).flatMap((j) =>
    range(l.NB).flatMap((c) => [
      l.loadStaged(`${o.left}${c}r${j}`, 'right', o.src, c * E * l.KS + j * E, false),
      ops.mma(`${o.acc}${j}`, `${o.left}${c}`, `${o.left}${c}r${j}`),
    ]),
  );
  return [...lefts, ...products].join('\n    ');
}

/** The lane's elements of the subgroup's E × W block: `f(r, t, col)` for row r and its t-th column `col` (a WGSL expression). */
function laneElements(
  l: ReturnType<typeof fmLayout>,
  E: number,
  SG: number,
  f: (r: number, t: number, col: string) => string,
) {
  return range(E)
    .map((r) =>
      range(l.IPR)
        .map((t) => f(r, t, `(lane + ${t * SG}u)`))
        .join(' '),
    )
    .join('\n    ');
}

/**
 * The lane's share of its row in a subgroup's E × W block: SG / E lanes per row (`lanes`), lane h
 * of them taking the row's columns h, h + lanes, ... (`cols` of them), so a row's maximum or sum
 * takes log₂(lanes) shuffles and each lane keeps one row's softmax state.
 */
function rowShare(k: FlashMatrixKernel) {
  const lanes = k.SG / k.E;
  return {
    lanes,
    cols: k.W / lanes,
    /** The lane's row r and its first column h. */
    decl: `let r = lane / ${lanes}u; let h = lane % ${lanes}u;`,
    /** `v` (a var) combined over its row's lanes: max or sum. */
    reduce: (v: string, op: 'max' | 'sum') =>
      range(Math.log2(lanes))
        .map((i) => {
          const other = `subgroupShuffleXor(${v}, ${1 << i}u)`;
          return op === 'max' ? `${v} = max(${v}, ${other});` : `${v} = ${v} + ${other};`;
        })
        .join(' '),
  };
}

/**
 * in: q, k, v [BH, T, hs] f16; out: o [B·T, H·hs] f32 (heads merged), lse [BH·T] (of the scaled
 * scores); u: {T, H, scale}. Grid (T / 4E, BH), the longest rows first. The online softmax keeps a
 * running maximum per row (rowShare: a few lanes per row), and rescales the partial output (through
 * workgroup memory: a matrix's rows cannot be scaled in place) only in blocks where some row's
 * maximum grew by more than e⁸.
 */
export function flashMatrixForwardSource(k: FlashMatrixKernel): string {
  const { E, SG, hs, W } = k;
  const l = fmLayout(k);
  const { ops, own, D } = l;
  const share = rowShare(k);
  const blocks = l.streams([
    ['Ks', 'K'],
    ['Vs', 'V'],
  ]);
  const OW = Math.max(W, hs) + 4;
  const perLane = `for (var e = lane; e < ${hs}u; e += ${SG}u)`;
  const storeO = range(D)
    .map((j) => ops.store('Ss', `sBase + ${j * E}u`, `o${j}`, `${OW}u`))
    .join('\n    ');
  const cols = range(share.cols);
  return /* wgsl */ `${l.header}
diagnostic(off, subgroup_uniformity);
@group(0) @binding(0) var<storage, read> Q: array<f16>;
@group(0) @binding(1) var<storage, read> K: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> V: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<storage, read_write> LSE: array<f32>;
struct U { T: u32, H: u32, scale: f32, p0: u32 };
@group(0) @binding(5) var<uniform> u: U;
var<workgroup> Ss: array<f32, ${FM_SUBGROUPS * E * OW}>;
var<workgroup> Ps: array<f16, ${FM_SUBGROUPS * E * l.PW}>;
var<workgroup> Ks: ${l.staged};
var<workgroup> Vs: ${l.staged};
// A vector, not a scalar: NVIDIA's driver placed a lone u32 ahead of the arrays, and the matrix loads
// from them then read 4 bytes early (they want 16-byte-aligned arrays; plain loads did not mind).
var<workgroup> rescaleAt: vec4<u32>;
@compute @workgroup_size(${l.threads})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let sg = lidx / ${SG}u;
  let lane = lidx % ${SG}u;
  ${share.decl}
  let own0 = (nwg.x - 1u - wid.x) * ${own}u;
  let q0 = own0 + sg * ${E}u;
  let bh = wid.y;
  let rows = bh * u.T;
  let sBase = sg * ${E * OW}u;
  let pBase = sg * ${E * l.PW}u;
  let sRow = sBase + r * ${OW}u + h;
  let pRow = pBase + r * ${l.PW}u + h;
  // Every invocation writes (the same value): a branch on one lane would leave its subgroup diverged at the matrix loads below.
  rescaleAt.x = 0u;
  ${range(D)
    .map((d) => ops.load(`qm${d}`, 'left', 'Q', `(rows + q0) * ${hs}u + ${d * E}u`, false, `${hs}u`))
    .join('\n  ')}
  ${range(D)
    .map((j) => ops.accumulator(`o${j}`))
    .join('\n  ')}
  var m = ${NEG_BIG};
  var partSum = 0.0;
  ${blockAccumulators(l, 's')}
  ${blocks.decl}
  ${blocks.fetch('rows')}
  let nBlocks = (own0 + ${own}u) / ${W}u;
  for (var kb = 0u; kb < nBlocks; kb++) {
    let k0 = kb * ${W}u;
    // The last block's matrix loads are done before its staged K and V are overwritten.
    workgroupBarrier();
    ${blocks.store}
    workgroupBarrier();
    if (kb + 1u < nBlocks) {
      ${blocks.fetch(`rows + k0 + ${W}u`)}
    }
    ${productsWithRows(l, E, { acc: 's', left: 'qm', src: 'Ks', dst: 'Ss', base: 'sBase', stride: OW })}
    workgroupBarrier();
    ${cols
      .map(
        (t) =>
          `let x${t} = select(${NEG_BIG}, Ss[sRow + ${t * share.lanes}u] * u.scale, k0 + h + ${t * share.lanes}u <= q0 + r);`,
      )
      .join('\n    ')}
    var bm = ${cols.slice(1).reduce((acc, t) => `max(${acc}, x${t})`, 'x0')};
    ${share.reduce('bm', 'max')}
    // Selects, not a branch per row: the subgroup stays converged for the matrix operations.
    let grown = bm > m + ${FM_RESCALE_MARGIN}.0;
    let a = select(1.0, exp(m - bm), grown);
    m = select(m, bm, grown);
    partSum = partSum * a;
    // The partial output is zero in the first block; later, a grown maximum rescales it.
    if (subgroupAny(grown && kb > 0u)) { rescaleAt.x = kb + 1u; }
    ${cols
      .map((t) => `{ let p = exp(x${t} - m); partSum = partSum + p; Ps[pRow + ${t * share.lanes}u] = f16(p); }`)
      .join('\n    ')}
    if (workgroupUniformLoad(&rescaleAt).x == kb + 1u) {
      ${storeO}
      workgroupBarrier();
      for (var e = 0u; e < ${hs / share.lanes}u; e++) { Ss[sRow + e * ${share.lanes}u] = Ss[sRow + e * ${share.lanes}u] * a; }
      workgroupBarrier();
      ${range(D)
        .map((j) => `${ops.loadResult(`rs${j}`, 'Ss', `sBase + ${j * E}u`, `${OW}u`)} o${j} = rs${j};`)
        .join('\n      ')}
      workgroupBarrier();
    }
    ${accumulateRows(l, E, { acc: 'o', left: 'pm', tile: 'Ps', base: 'pBase', stride: l.PW, src: 'Vs' })}
  }
  ${storeO}
  workgroupBarrier();
  var total = partSum;
  ${share.reduce('total', 'sum')}
  LSE[rows + q0 + r] = m + log(total);
  let inv = 1.0 / total;
  let b = bh / u.H;
  let head = bh % u.H;
  // A row at a time, its inverse sum from its first lane: each row's elements written by consecutive lanes.
  ${range(E)
    .map(
      (row) => `{
    let invRow = subgroupBroadcast(inv, ${row * share.lanes}u);
    let dst = ((b * u.T + q0 + ${row}u) * u.H + head) * ${hs}u;
    ${perLane} { O[dst + e] = Ss[sBase + ${row * OW}u + e] * invRow; }
  }`,
    )
    .join('\n  ')}
}
`;
}

/**
 * A backward kernel's block start: once the last block's matrix loads are done, the block's two
 * streamed inputs (`blocks`, workgroup copies a and b) stored, the next block's loads issued where
 * there is one (`more`, from rows `next`), then the scores S = L_a · aᵀ into Ss and dP = L_b · bᵀ
 * into Gs, for the subgroup's rows, and a barrier before its lanes read them.
 */
function backwardScores(
  l: ReturnType<typeof fmLayout>,
  E: number,
  o: {
    leftS: string;
    leftDp: string;
    blocks: ReturnType<ReturnType<typeof fmLayout>['streams']>;
    more: string;
    next: string;
  },
): string {
  const [a, b] = o.blocks.copies;
  return `workgroupBarrier();
    ${o.blocks.store}
    workgroupBarrier();
    if (${o.more}) {
      ${o.blocks.fetch(o.next)}
    }
    ${productsWithRows(l, E, { acc: 's', left: o.leftS, src: a, dst: 'Ss', base: 'sBase', stride: l.SW })}
    ${productsWithRows(l, E, { acc: 'dp', left: o.leftDp, src: b, dst: 'Gs', base: 'sBase', stride: l.SW })}
    workgroupBarrier();`;
}

/**
 * dQ = scale · Σ_keys P∘(dP − D) · K: in: q, k, v, dO [BH, T, hs] f16, lse [BH·T], D [BH·T]
 * (rowsum(dO∘O)); out: dq [BH, T, hs] f32; u: {T, H, scale}. Grid (T / 4E, BH).
 */
export function flashMatrixBackwardQSource(k: FlashMatrixKernel): string {
  const { E, SG, hs, W } = k;
  const l = fmLayout(k);
  const { ops, own, D } = l;
  const share = rowShare(k);
  const blocks = l.streams([
    ['Ks', 'K'],
    ['Vs', 'V'],
  ]);
  return /* wgsl */ `${l.header}
diagnostic(off, subgroup_uniformity);
@group(0) @binding(0) var<storage, read> Q: array<f16>;
@group(0) @binding(1) var<storage, read> K: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> V: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> dO: array<f16>;
@group(0) @binding(4) var<storage, read> LSE: array<f32>;
@group(0) @binding(5) var<storage, read> Dl: array<f32>;
@group(0) @binding(6) var<storage, read_write> dQ: array<f32>;
struct U { T: u32, H: u32, scale: f32, p0: u32 };
@group(0) @binding(7) var<uniform> u: U;
var<workgroup> Ss: array<f32, ${FM_SUBGROUPS * E * l.SW}>;
var<workgroup> Gs: array<f32, ${FM_SUBGROUPS * E * l.SW}>;
var<workgroup> Ps: array<f16, ${FM_SUBGROUPS * E * l.PW}>;
var<workgroup> Ks: ${l.staged};
var<workgroup> Vs: ${l.staged};
@compute @workgroup_size(${l.threads})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let sg = lidx / ${SG}u;
  let lane = lidx % ${SG}u;
  let own0 = (nwg.x - 1u - wid.x) * ${own}u;
  let q0 = own0 + sg * ${E}u;
  let rows = wid.y * u.T;
  let sBase = sg * ${E * l.SW}u;
  let pBase = sg * ${E * l.PW}u;
  ${range(D)
    .map(
      (d) =>
        `${ops.load(`qm${d}`, 'left', 'Q', `(rows + q0) * ${hs}u + ${d * E}u`, false, `${hs}u`)} ${ops.load(`gm${d}`, 'left', 'dO', `(rows + q0) * ${hs}u + ${d * E}u`, false, `${hs}u`)} ${ops.accumulator(`dq${d}`)}`,
    )
    .join('\n  ')}
  ${share.decl}
  let lse = LSE[rows + q0 + r];
  let dl = Dl[rows + q0 + r];
  let sRow = sBase + r * ${l.SW}u + h;
  let pRow = pBase + r * ${l.PW}u + h;
  ${blockAccumulators(l, 's')} ${blockAccumulators(l, 'dp')}
  ${blocks.decl}
  ${blocks.fetch('rows')}
  let nBlocks = (own0 + ${own}u) / ${W}u;
  for (var kb = 0u; kb < nBlocks; kb++) {
    let k0 = kb * ${W}u;
    ${backwardScores(l, E, { leftS: 'qm', leftDp: 'gm', blocks, more: 'kb + 1u < nBlocks', next: `rows + k0 + ${W}u` })}
    ${range(share.cols)
      .map((t) => {
        const c = t * share.lanes;
        return `{ let p = select(0.0, exp(Ss[sRow + ${c}u] * u.scale - lse), k0 + h + ${c}u <= q0 + r); Ps[pRow + ${c}u] = f16(u.scale * p * (Gs[sRow + ${c}u] - dl)); }`;
      })
      .join('\n    ')}
    workgroupBarrier();
    ${accumulateRows(l, E, { acc: 'dq', left: 'ds', tile: 'Ps', base: 'pBase', stride: l.PW, src: 'Ks' })}
  }
  ${range(D)
    .map((j) => ops.store('dQ', `(rows + q0) * ${hs}u + ${j * E}u`, `dq${j}`, `${hs}u`))
    .join('\n  ')}
}
`;
}

/**
 * dK = scale · Σ_queries (P∘(dP − D))ᵀ · Q and dV = Σ_queries Pᵀ · dO, a subgroup per E keys: in: q,
 * k, v, dO [BH, T, hs] f16, lse, D [BH·T]; out: dk, dv [BH, T, hs] f32; u: {T, H, scale}. Grid
 * (T / 4E, BH), the longest columns first.
 */
export function flashMatrixBackwardKVSource(k: FlashMatrixKernel): string {
  const { E, SG, hs, W } = k;
  const l = fmLayout(k);
  const { ops, own, D } = l;
  const blocks = l.streams([
    ['Qs', 'Q'],
    ['dOs', 'dO'],
  ]);
  return /* wgsl */ `${l.header}
diagnostic(off, subgroup_uniformity);
@group(0) @binding(0) var<storage, read> Q: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> K: array<f16>;
@group(0) @binding(2) var<storage, read> V: array<f16>;
@group(0) @binding(3) var<storage, read> dO: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> LSE: array<f32>;
@group(0) @binding(5) var<storage, read> Dl: array<f32>;
@group(0) @binding(6) var<storage, read_write> dK: array<f32>;
@group(0) @binding(7) var<storage, read_write> dV: array<f32>;
struct U { T: u32, H: u32, scale: f32, p0: u32 };
@group(0) @binding(8) var<uniform> u: U;
var<workgroup> Ss: array<f32, ${FM_SUBGROUPS * E * l.SW}>;
var<workgroup> Gs: array<f32, ${FM_SUBGROUPS * E * l.SW}>;
var<workgroup> Ps: array<f16, ${FM_SUBGROUPS * E * l.PW}>;
var<workgroup> Ds: array<f16, ${FM_SUBGROUPS * E * l.PW}>;
var<workgroup> Qs: ${l.staged};
var<workgroup> dOs: ${l.staged};
@compute @workgroup_size(${l.threads})
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let sg = lidx / ${SG}u;
  let lane = lidx % ${SG}u;
  let own0 = wid.x * ${own}u;
  let kr0 = own0 + sg * ${E}u;
  let rows = wid.y * u.T;
  let sBase = sg * ${E * l.SW}u;
  let pBase = sg * ${E * l.PW}u;
  ${range(D)
    .map(
      (d) =>
        `${ops.load(`kk${d}`, 'left', 'K', `(rows + kr0) * ${hs}u + ${d * E}u`, false, `${hs}u`)} ${ops.load(`vv${d}`, 'left', 'V', `(rows + kr0) * ${hs}u + ${d * E}u`, false, `${hs}u`)} ${ops.accumulator(`dk${d}`)} ${ops.accumulator(`dv${d}`)}`,
    )
    .join('\n  ')}
  ${blockAccumulators(l, 's')} ${blockAccumulators(l, 'dp')}
  ${blocks.decl}
  ${blocks.fetch('rows + own0')}
  for (var qb = own0 / ${W}u; qb < u.T / ${W}u; qb++) {
    let c0 = qb * ${W}u;
    ${backwardScores(l, E, { leftS: 'kk', leftDp: 'vv', blocks, more: `qb + 1u < u.T / ${W}u`, next: `rows + c0 + ${W}u` })}
    ${range(l.IPR)
      .map((t) => `let lse${t} = LSE[rows + c0 + lane + ${t * SG}u]; let dl${t} = Dl[rows + c0 + lane + ${t * SG}u];`)
      .join('\n    ')}
    ${laneElements(l, E, SG, (r, t, col) => {
      const at = `sBase + ${r * l.SW}u + ${col}`;
      const to = `pBase + ${r * l.PW}u + ${col}`;
      return `{ let p = select(0.0, exp(Ss[${at}] * u.scale - lse${t}), kr0 + ${r}u <= c0 + ${col}); Ps[${to}] = f16(p); Ds[${to}] = f16(u.scale * p * (Gs[${at}] - dl${t})); }`;
    })}
    workgroupBarrier();
    ${accumulateRows(l, E, { acc: 'dv', left: 'pt', tile: 'Ps', base: 'pBase', stride: l.PW, src: 'dOs' })}
    ${accumulateRows(l, E, { acc: 'dk', left: 'dst', tile: 'Ds', base: 'pBase', stride: l.PW, src: 'Qs' })}
  }
  ${range(D)
    .map(
      (j) =>
        `${ops.store('dK', `(rows + kr0) * ${hs}u + ${j * E}u`, `dk${j}`, `${hs}u`)}\n  ${ops.store('dV', `(rows + kr0) * ${hs}u + ${j * E}u`, `dv${j}`, `${hs}u`)}`,
    )
    .join('\n  ')}
}
`;
}

// --------------------------------------------------------------------------------------------
// Causal attention through materialised scores: S = Q·Kᵀ and the products with P are batched
// matrix products (matmul.ts); these are the row kernels between them and the head layout moves.

const SCORES_WG = 128;

/**
 * in: S [BH·T, T] (only n ≤ row position read); out: P = softmax(scale·S) over each row's causal
 * prefix, zeros above the diagonal (f16 with `f16`); u: {rows, T, scale}. One workgroup per row.
 */
export function causalSoftmaxSource(f16 = false): string {
  const o = outputs(f16);
  return /* wgsl */ `${o.enable}
@group(0) @binding(0) var<storage, read> S: array<f32>;
@group(0) @binding(1) var<storage, read_write> P: array<${o.type}>;
struct U { rows: u32, T: u32, scale: f32, p0: u32 };
@group(0) @binding(2) var<uniform> u: U;
${ONLINE_LSE}
${lseReduce(SCORES_WG, 's')}
@compute @workgroup_size(${SCORES_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.rows) { return; }
  let last = row % u.T;
  let base = row * u.T;
  var m = ${NEG_BIG};
  var s = 0.0;
  for (var c = lid; c <= last; c += ${SCORES_WG}u) {
    let x = S[base + c] * u.scale;
    if (x > m) { s = s * exp(m - x) + 1.0; m = x; } else { s = s + exp(x - m); }
  }
  let lse = wg_lse_s(m, s, lid);
  for (var c = lid; c < u.T; c += ${SCORES_WG}u) {
    var p = 0.0;
    if (c <= last) { p = exp(S[base + c] * u.scale - lse); }
    P[base + c] = ${f16 ? 'f16(p)' : 'p'};
  }
}
`;
}

/**
 * in: P [BH·T, T], dP [BH·T, T] (only n ≤ row position read); out: dS = scale·P∘(dP − Σₙ P∘dP),
 * zeros above the diagonal (the gradient with respect to the unscaled scores); u: {rows, T, scale}.
 * With `f16`, P and dS are f16.
 */
export function causalSoftmaxBackwardSource(f16 = false): string {
  const o = outputs(f16);
  return /* wgsl */ `${o.enable}
@group(0) @binding(0) var<storage, read> P: array<${o.type}>;
@group(0) @binding(1) var<storage, read> dP: array<f32>;
@group(0) @binding(2) var<storage, read_write> dS: array<${o.type}>;
struct U { rows: u32, T: u32, scale: f32, p0: u32 };
@group(0) @binding(3) var<uniform> u: U;
${reduceFns(SCORES_WG, ['sum'])}
${o.helpers}
@compute @workgroup_size(${SCORES_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.rows) { return; }
  let last = row % u.T;
  let base = row * u.T;
  var acc = 0.0;
  for (var c = lid; c <= last; c += ${SCORES_WG}u) { acc = acc + f32(P[base + c]) * dP[base + c]; }
  let d = wg_sum(acc, lid);
  for (var c = lid; c < u.T; c += ${SCORES_WG}u) {
    var g = 0.0;
    if (c <= last) { g = u.scale * f32(P[base + c]) * (dP[base + c] - d); }
    dS[base + c] = ${o.put('g')};
  }
}
`;
}

/** Invocations of a subgroup-per-row softmax workgroup (rows per workgroup: this over the subgroup size). */
const SUBGROUP_ROWS_WG = 128;

/**
 * The softmax kernels with one subgroup per row instead of a workgroup: each invocation keeps E of
 * the row's elements (every SG-th) in registers, and the max and sums are subgroup operations, so
 * the scores are read once and nothing waits at a workgroup barrier. For adapters with one subgroup
 * size SG (the subgroups are numbered local_invocation_index / SG, as the matrix kernels do) and rows
 * of at most SG·E elements. `backward` computes dS from P and dP as causalSoftmaxBackwardSource does;
 * else P from S as causalSoftmaxSource does. f16 makes P (and dS) f16.
 */
export function causalSoftmaxSubgroupSource(o: { SG: number; E: number; f16: boolean; backward: boolean }): string {
  const { SG, E, f16, backward } = o;
  const out = outputs(f16);
  const bindings = backward
    ? [
        `@group(0) @binding(0) var<storage, read> P: array<${out.type}>;`,
        '@group(0) @binding(1) var<storage, read> dP: array<f32>;',
        `@group(0) @binding(2) var<storage, read_write> dS: array<${out.type}>;`,
        '@group(0) @binding(3) var<uniform> u: U;',
      ]
    : [
        '@group(0) @binding(0) var<storage, read> S: array<f32>;',
        `@group(0) @binding(1) var<storage, read_write> P: array<${out.type}>;`,
        '@group(0) @binding(2) var<uniform> u: U;',
      ];
  const each = (body: string) => `for (var i = 0u; i < ${E}u; i++) { let c = lane + i * ${SG}u; ${body} }`;
  const body = backward
    ? `var p: array<f32, ${E}>;
  var g: array<f32, ${E}>;
  var acc = 0.0;
  ${each('p[i] = 0.0; g[i] = 0.0; if (c <= last) { p[i] = f32(P[base + c]); g[i] = dP[base + c]; acc = acc + p[i] * g[i]; }')}
  let d = subgroupAdd(acc);
  ${each(`if (c < u.T) { dS[base + c] = ${out.put('u.scale * p[i] * (g[i] - d)')}; }`)}`
    : `var x: array<f32, ${E}>;
  var m = ${NEG_BIG};
  ${each(`x[i] = ${NEG_BIG}; if (c <= last) { x[i] = S[base + c] * u.scale; m = max(m, x[i]); }`)}
  m = subgroupMax(m);
  var sum = 0.0;
  ${each('var e = 0.0; if (c <= last) { e = exp(x[i] - m); } x[i] = e; sum = sum + e;')}
  let inv = 1.0 / subgroupAdd(sum);
  ${each(`if (c < u.T) { P[base + c] = ${f16 ? 'f16(x[i] * inv)' : 'x[i] * inv'}; }`)}`;
  return /* wgsl */ `enable subgroups;
${out.enable}
diagnostic(off, subgroup_uniformity);
struct U { rows: u32, T: u32, scale: f32, p0: u32 };
${bindings.join('\n')}
${out.helpers}
@compute @workgroup_size(${SUBGROUP_ROWS_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  // A whole subgroup takes one row (and leaves together past the last).
  let row = (wid.x + wid.y * nwg.x) * ${SUBGROUP_ROWS_WG / SG}u + lid / ${SG}u;
  let lane = lid % ${SG}u;
  if (row >= u.rows) { return; }
  let last = row % u.T;
  let base = row * u.T;
  ${body}
}
`;
}

/** Most elements a subgroup-per-row invocation keeps in registers (rows longer than SG times this take the workgroup kernels). */
const SUBGROUP_ROW_MAX_E = 64;

let subgroupSoftmaxOn = true;
/** Turns the subgroup-per-row softmax kernels off (true: on where they apply), so tests reach the workgroup ones. */
export function setSubgroupSoftmax(on: boolean): void {
  subgroupSoftmaxOn = on;
}

/**
 * The subgroup size and elements per invocation of the subgroup-per-row softmax kernels for rows of
 * T, or null where they do not apply (no subgroups, a subgroup size that varies, rows too long, or
 * turned off by setSubgroupSoftmax).
 */
function subgroupSoftmaxShape(T: number): { SG: number; E: number } | null {
  const SG = fixedSubgroupSize();
  if (!subgroupSoftmaxOn || SG === null || SUBGROUP_ROWS_WG % SG !== 0) return null;
  let E = 1;
  while (E * SG < T) E *= 2;
  return E <= SUBGROUP_ROW_MAX_E ? { SG, E } : null;
}

/**
 * Head layout moves: with \`toHeads\`, in: x [B·T, H·hs] → out: [BH, T, hs] (f16 with `f16`); else
 * the reverse. u: {total, T, H}. One invocation per four elements (hs % 4 == 0).
 */
export function headsLayoutSource(hs: number, toHeads: boolean, f16 = false): string {
  if (f16 && !toHeads) throw new Error('headsLayoutSource: f16 outputs are for the split to heads');
  const V4 = hs / 4;
  const o = outputs(f16);
  return /* wgsl */ `${o.enable}
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<vec4<${o.type}>>;
struct U { total: u32, T: u32, H: u32, p0: u32 };
@group(0) @binding(2) var<uniform> u: U;
${FLAT}
${o.helpers}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = flat_index(gid, nwg);
  if (idx >= u.total) { return; }
  let d = idx % ${V4}u;
  let t = (idx / ${V4}u) % u.T;
  let bh = idx / (${V4}u * u.T);
  let merged = ((bh / u.H * u.T + t) * u.H + bh % u.H) * ${V4}u + d;
  ${toHeads ? `y[idx] = ${f16 ? 'to_f16x4(x[merged])' : 'x[merged]'};` : 'y[merged] = x[idx];'}
}
`;
}

// ---------------------------------------------------------------------------------------------
// The operation

/** Whether the fused attention handles this shape (else use the reference ops). */
export function fusedAttentionSupports(s: AttentionShape): boolean {
  return (
    s.headSize % 4 === 0 &&
    s.headSize <= 128 &&
    s.rotated <= s.headSize &&
    s.rotated % 2 === 0 &&
    s.batch * s.heads <= 65535
  );
}

/**
 * How attention runs: 'scores' materialises the causal scores [B·H, T, T] and runs the products
 * around the softmax (two forward, four backward) as batched register-tiled products with the tiles
 * above the diagonal skipped, keeping P for the backward; 'flash' never writes the scores (one
 * invocation pair per row, K/V tiles in workgroup memory) and recomputes them in the backward. The
 * scores pay while they are small: for pythia-70m's batch ([B·H, T, T] is 64 MiB a layer) attention
 * took 3.5 ms of an H200's time per step this way against 6.4 ms with the flash kernels.
 * 'flash-matrix' is flash attention with f16 operands on subgroup matrices (f16MatrixConfigs; the
 * shape must fit flashMatrixKernels), which takes flash's place under mixed precision: on an H100 it
 * was slower than the scores path at pythia-160m (33.5 against 33.2 ms a step) and faster than
 * flash (44.8 ms; docs/gpu-kernels.md).
 */
export type AttentionKernels = 'scores' | 'flash' | 'flash-matrix';
const ATTENTION_KERNELS: readonly string[] = ['scores', 'flash', 'flash-matrix'];
/** Largest scores tensor (bytes, per layer) that the default materialises; P of every layer stays alive until the backward. */
const SCORES_MAX_BYTES = 256 * 2 ** 20;
let attentionOverride: AttentionKernels | null = null;

/** Forces one attention path for this process (null: the default, env OFFSHOOT_ATTENTION=scores|flash|flash-matrix, else by precision and size). */
export function setAttentionKernels(k: AttentionKernels | null): void {
  attentionOverride = k;
}

let flashMatrixEmulation: number | null = null;
/**
 * Emulates the flash-matrix kernels' builtins with E × E × E matrices (null: the adapter's own), so
 * their tiling and softmax are checked on adapters without subgroup matrices.
 */
export function setFlashMatrixEmulation(E: number | null): void {
  flashMatrixEmulation = E;
}

interface FlashMatrixKernels {
  forward: FlashMatrixKernel;
  dq: FlashMatrixKernel;
  dkv: FlashMatrixKernel;
}

/**
 * The flash-matrix kernels' layouts for head size hs and sequence length T (each the widest streamed
 * block whose workgroup memory fits the adapter), or why they cannot run here.
 */
export function flashMatrixKernels(hs: number, T: number): FlashMatrixKernels | string {
  const c = capabilities();
  if (!c.subgroups) return 'the adapter has no subgroups';
  if (!c.shaderF16) return 'the adapter has no shader-f16';
  const SG = fixedSubgroupSize();
  if (SG === null) return "the adapter's subgroup size varies";
  let E: number;
  if (flashMatrixEmulation !== null) E = flashMatrixEmulation;
  else {
    const why = matrixUnavailable(c);
    if (why) return why;
    const square = f16MatrixConfigs(c).find((m) => m.M === m.N && m.N === m.K);
    if (!square) return 'the adapter offers no square f16 → f32 subgroup-matrix configuration';
    E = square.M;
  }
  const emulate = flashMatrixEmulation !== null;
  const layout = (which: 'forward' | 'dq' | 'dkv'): FlashMatrixKernel | string => {
    let why = '';
    for (const W of [64, 32, 16, 8]) {
      const k = { E, SG, hs, W, emulate };
      why = flashMatrixProblem(k, T) ?? '';
      if (!why && flashMatrixBytes(k, which) <= c.maxWorkgroupStorage) return k;
    }
    return why || `no block width fits ${c.maxWorkgroupStorage} bytes of workgroup memory`;
  };
  const [forward, dq, dkv] = [layout('forward'), layout('dq'), layout('dkv')];
  for (const k of [forward, dq, dkv]) if (typeof k === 'string') return k;
  return { forward, dq, dkv } as FlashMatrixKernels;
}

function attentionKernelsFor(s: AttentionShape): AttentionKernels {
  const BH = s.batch * s.heads;
  const T = s.seqLen;
  const forced = attentionOverride ?? process.env.OFFSHOOT_ATTENTION;
  if (forced && !ATTENTION_KERNELS.includes(forced))
    throw new Error(`OFFSHOOT_ATTENTION must be one of ${ATTENTION_KERNELS.join(', ')}, not '${forced}'`);
  if (forced) return forced as AttentionKernels;
  const bytes = BH * T * T * 4;
  if (bytes <= Math.min(SCORES_MAX_BYTES, capabilities().maxStorageBinding)) return 'scores';
  // Too long to keep the scores: flash attention, on subgroup matrices under mixed precision where they take the shape.
  return halfProducts() === 'matrix' && typeof flashMatrixKernels(s.headSize, T) !== 'string'
    ? 'flash-matrix'
    : 'flash';
}

/**
 * Causal self-attention of the fused QKV projection [B·T, H·3·hs] (rows interleaved per head: q,
 * k, v), with rotary embeddings on q and k: the per-head context merged back to [B·T, H·hs].
 * The causal mask is built into the kernels.
 */
export function fusedAttention(qkv: tf.Tensor2D, positions: PositionTables, s: AttentionShape): tf.Tensor2D {
  const { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd } = s;
  let { cos, sin } = positions;
  if (rd === 0) {
    // Empty [T, 0] tables have no GPU buffer to bind; the kernels do not read them.
    cos = sin = tf.zeros([1, 1]) as tf.Tensor2D;
  }
  const BH = B * H;
  const total = BH * T * hs;
  const split = (x: tf.TensorInfo, f16: boolean) => {
    const shape = f16 ? halfStorageShape(total) : [BH, T, hs];
    const q = allocate(shape);
    const k = allocate(shape);
    const v = allocate(shape);
    dispatch(
      kernel('rotary_split', `${hs}_${rd}_${f16}`, () => rotarySplitSource(hs, rd, f16)),
      [x, cos, sin],
      [q, k, v],
      [
        ['u', total],
        ['u', T],
        ['u', H],
        ['u', 0],
      ],
      grid1d(rotaryVec4(hs, rd) ? total / 4 : total),
    );
    return { q, k, v };
  };
  // The tables are saved with the forward's tensors (tfjs keeps saved tensors for the backward).
  const tables = [cos, sin];
  const merge = (dq: tf.TensorInfo, dk: tf.TensorInfo, dv: tf.TensorInfo, [c, sn]: tf.Tensor[]) => {
    const dx = allocate([B * T, H * 3 * hs]);
    const n = B * T * H * 3 * hs;
    dispatch(
      kernel('rotary_merge_backward', `${hs}_${rd}`, () => rotaryMergeBackwardSource(hs, rd)),
      [dq, dk, dv, c, sn],
      [dx],
      [
        ['u', n],
        ['u', T],
        ['u', H],
        ['u', 0],
      ],
      grid1d(rotaryVec4(hs, rd) ? n / 4 : n),
    );
    for (const t of [dq, dk, dv]) release(t);
    return toTensor(dx);
  };
  const path = attentionKernelsFor(s);
  const op =
    path === 'scores'
      ? scoresAttention(s, split, merge, tables)
      : path === 'flash'
        ? flashAttention(s, split, merge, tables)
        : flashMatrixAttention(s, split, merge, tables);
  return op(qkv) as tf.Tensor2D;
}

/** The flash kernels' uniforms: {T, H, scale}. */
function flashUniforms(s: AttentionShape): UniformValue[] {
  return [
    ['u', s.seqLen],
    ['u', s.heads],
    ['f', 1 / Math.sqrt(s.headSize)],
    ['u', 0],
  ];
}

/** D = rowsum(dO∘O) per head and position [B·H·T], for the flash backwards (dy and o heads merged, f32). */
function rowDeltas(dy: tf.TensorInfo, o: tf.TensorInfo, s: AttentionShape): tf.TensorInfo {
  const { seqLen: T, heads: H, headSize: hs } = s;
  const n = s.batch * H * T;
  const delta = allocate([n]);
  dispatch(
    kernel('attn_delta', String(hs), () => attnDeltaSource(hs)),
    [dy, o],
    [delta],
    [
      ['u', n],
      ['u', T],
      ['u', H],
      ['u', 0],
    ],
    grid1d(n),
  );
  return delta;
}

/**
 * x moved between the heads-merged [B·T, H·hs] and per-head [B·H, T, hs] layouts (to heads with
 * `toHeads`, then in f16 with `f16`).
 */
function headsLayout(x: tf.TensorInfo, s: AttentionShape, toHeads: boolean, f16 = false): tf.TensorInfo {
  const { seqLen: T, heads: H, headSize: hs } = s;
  const n = s.batch * H * T * hs;
  const y = allocate(f16 ? halfStorageShape(n) : toHeads ? [s.batch * H, T, hs] : [s.batch * T, H * hs]);
  dispatch(
    toHeads
      ? kernel('heads_split', `${hs}_${f16}`, () => headsLayoutSource(hs, true, f16))
      : kernel('heads_merge', String(hs), () => headsLayoutSource(hs, false)),
    [x],
    [y],
    [
      ['u', n / 4],
      ['u', T],
      ['u', H],
      ['u', 0],
    ],
    grid1d(n / 4),
  );
  return y;
}

/** q, k and v per head, in f16 (half.ts's layout) when `f16`. */
type SplitHeads = (x: tf.TensorInfo, f16: boolean) => { q: tf.TensorInfo; k: tf.TensorInfo; v: tf.TensorInfo };
type MergeGrads = (dq: tf.TensorInfo, dk: tf.TensorInfo, dv: tf.TensorInfo, tables: tf.Tensor[]) => tf.Tensor;

function flashAttention(
  s: AttentionShape,
  split: SplitHeads,
  merge: MergeGrads,
  tables: tf.Tensor[],
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const BH = B * H;
  const au = flashUniforms(s);
  const agrid: [number, number, number] = [Math.ceil(T / ATTN_ROWS), BH, 1];
  return customOp(([x], save) => {
    const { q, k, v } = split(x, false);
    const o = allocate([B * T, H * hs]);
    const lse = allocate([BH * T]);
    dispatch(
      kernel('flash_forward', String(hs), () => flashForwardSource(hs)),
      [q, k, v],
      [o, lse],
      au,
      agrid,
    );
    const oT = toTensor(o);
    save([toTensor(q), toTensor(k), toTensor(v), oT, toTensor(lse), ...tables]);
    return {
      value: oT,
      gradFunc: (dy, [qs, ks, vs, os, ls, ...tb]) => {
        const delta = rowDeltas(dy, os, s);
        const dq = allocate([BH, T, hs]);
        const dk = allocate([BH, T, hs]);
        const dv = allocate([BH, T, hs]);
        const ins = [qs, ks, vs, dy, ls, delta];
        dispatch(
          kernel('flash_backward_q', String(hs), () => flashBackwardQSource(hs)),
          ins,
          [dq],
          au,
          agrid,
        );
        dispatch(
          kernel('flash_backward_k', String(hs), () => flashBackwardKVSource(hs, 'k')),
          ins,
          [dk],
          au,
          agrid,
        );
        dispatch(
          kernel('flash_backward_v', String(hs), () => flashBackwardKVSource(hs, 'v')),
          ins,
          [dv],
          au,
          agrid,
        );
        release(delta);
        return merge(dq, dk, dv, tb);
      },
    };
  });
}

function flashMatrixAttention(
  s: AttentionShape,
  split: SplitHeads,
  merge: MergeGrads,
  tables: tf.Tensor[],
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const BH = B * H;
  const kernels = flashMatrixKernels(hs, T);
  if (typeof kernels === 'string') throw new Error(`flash-matrix attention (T ${T}, head size ${hs}): ${kernels}`);
  const key = (k: FlashMatrixKernel) => `${k.E}_${k.SG}_${hs}_${k.W}_${k.emulate}`;
  const au = flashUniforms(s);
  const grid: [number, number, number] = [T / (FM_SUBGROUPS * kernels.forward.E), BH, 1];
  return customOp(([x], save) => {
    const { q, k, v } = split(x, true);
    const o = allocate([B * T, H * hs]);
    const lse = allocate([BH * T]);
    dispatch(
      kernel('flash_matrix_forward', key(kernels.forward), () => flashMatrixForwardSource(kernels.forward)),
      [q, k, v],
      [o, lse],
      au,
      grid,
    );
    const oT = toTensor(o);
    save([toTensor(q), toTensor(k), toTensor(v), oT, toTensor(lse), ...tables]);
    return {
      value: oT,
      gradFunc: (dy, [qs, ks, vs, os, ls, ...tb]) => {
        const delta = rowDeltas(dy, os, s);
        const dO = headsLayout(dy, s, true, true);
        const [dq, dk, dv] = [0, 1, 2].map(() => allocate([BH, T, hs]));
        const ins = [qs, ks, vs, dO, ls, delta];
        dispatch(
          kernel('flash_matrix_backward_q', key(kernels.dq), () => flashMatrixBackwardQSource(kernels.dq)),
          ins,
          [dq],
          au,
          grid,
        );
        dispatch(
          kernel('flash_matrix_backward_kv', key(kernels.dkv), () => flashMatrixBackwardKVSource(kernels.dkv)),
          ins,
          [dk, dv],
          au,
          grid,
        );
        release(delta);
        release(dO);
        return merge(dq, dk, dv, tb);
      },
    };
  });
}

function scoresAttention(
  s: AttentionShape,
  split: SplitHeads,
  merge: MergeGrads,
  tables: tf.Tensor[],
): (...inputs: tf.Tensor[]) => tf.Tensor {
  const { batch: B, seqLen: T, heads: H, headSize: hs } = s;
  const BH = B * H;
  const rows = BH * T;
  const su: UniformValue[] = [
    ['u', rows],
    ['u', T],
    ['f', 1 / Math.sqrt(hs)],
    ['u', 0],
  ];
  // Mixed precision: the five products take f16 operands (subgroup matrices where they run), which
  // the kernels before them write: q, k, v, P, dO and dS are f16, the scores and dP f32.
  const f16 = halfProducts() !== 'off';
  const operand: OperandType = f16 ? 'f16' : 'f32';
  const batched = { batch: BH, M: T, half: f16, aType: operand, bType: operand };
  const square = (): tf.TensorInfo => allocate(f16 ? halfStorageShape(BH * T * T) : [BH, T, T]);
  const bySubgroup = subgroupSoftmaxShape(T);
  const softmax = (backward: boolean) => {
    const name = backward ? 'causal_softmax_backward' : 'causal_softmax';
    if (!bySubgroup)
      return kernel(name, String(f16), () => (backward ? causalSoftmaxBackwardSource : causalSoftmaxSource)(f16));
    const { SG, E } = bySubgroup;
    return kernel(`${name}_subgroup`, `${SG}_${E}_${f16}`, () => causalSoftmaxSubgroupSource({ SG, E, f16, backward }));
  };
  const softmaxGrid = bySubgroup ? rowGrid(Math.ceil(rows / (SUBGROUP_ROWS_WG / bySubgroup.SG))) : rowGrid(rows);
  return customOp(([x], save) => {
    const { q, k, v } = split(x, f16);
    const scores = matmul({ ...batched, a: q, b: k, N: T, K: hs, transB: true, triangle: 'lowerC' }).c;
    const p = square();
    dispatch(softmax(false), [scores], [p], su, softmaxGrid);
    release(scores);
    const oHeads = matmul({ ...batched, a: p, b: v, N: hs, K: T, triangle: 'lowerA' }).c;
    const o = headsLayout(oHeads, s, false);
    release(oHeads);
    save([toTensor(q), toTensor(k), toTensor(v), toTensor(p), ...tables]);
    return {
      value: toTensor(o),
      gradFunc: (dy, [qs, ks, vs, ps, ...tb]) => {
        const dO = headsLayout(dy, s, true, f16);
        const dP = matmul({ ...batched, a: dO, b: vs, N: T, K: hs, transB: true, triangle: 'lowerC' }).c;
        const dS = square();
        dispatch(softmax(true), [ps, dP], [dS], su, softmaxGrid);
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
// Check against the reference (check.ts)

export function attentionCase(
  kernels: AttentionKernels,
  B: number,
  T: number,
  H: number,
  hs: number,
  rd: number,
  tol = 5e-5,
  amplitude = 1.5,
): KernelCase {
  const shape = { batch: B, seqLen: T, heads: H, headSize: hs, rotated: rd };
  const inputs = amplitude === 1.5 ? '' : `, inputs ±${amplitude}`;
  return {
    name: `causal attention with rotary, ${kernels} kernels (B ${B}, T ${T}, H ${H}, hs ${hs}, rotated ${rd}${inputs})`,
    inputs: () => {
      const r = ropeTables(T, rd);
      return [randHost([B * T, H * 3 * hs], 14, amplitude), r.cos, r.sin, r.mask];
    },
    diff: [0],
    reference: ([x, c, s, m]) =>
      causalSelfAttention.reference(
        x as tf.Tensor2D,
        new PositionTables(c as tf.Tensor2D, s as tf.Tensor2D, m as tf.Tensor2D),
        shape,
      ),
    fused: ([x, c, s, m]) => {
      // The path is chosen in the forward; its gradient follows it.
      setAttentionKernels(kernels);
      try {
        return fusedAttention(
          x as tf.Tensor2D,
          new PositionTables(c as tf.Tensor2D, s as tf.Tensor2D, m as tf.Tensor2D),
          shape,
        );
      } finally {
        setAttentionKernels(null);
      }
    },
    tol,
  };
}
