/**
 * WGSL sources of the fused kernels other than matrix products (pure string generation). Binding
 * order everywhere: inputs, then outputs, then one uniform block `u` (see runtime.ts).
 *
 * Row kernels take one workgroup per row, folded into y past 32768 rows:
 * `row = wid.x + wid.y * nwg.x`.
 */
import { ERF_WGSL } from './wgsl-matmul.js';

const FLAT = 'fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * 256u; }';
const NEG_BIG = '-3.0e38';

/** Workgroup-wide sum over `WG` invocations (a power of two) through workgroup memory. */
function reduceFns(WG: number, names: string[]): string {
  return names
    .map(
      (n) => `var<workgroup> red_${n}: array<f32, ${WG}>;
fn wg_${n}(v: f32, lid: u32) -> f32 {
  red_${n}[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red_${n}[lid] = ${n === 'max' ? `max(red_${n}[lid], red_${n}[lid + s])` : `red_${n}[lid] + red_${n}[lid + s]`}; }
    workgroupBarrier();
  }
  let r = red_${n}[0];
  workgroupBarrier();
  return r;
}`,
    )
    .join('\n');
}

function pow2AtLeast(n: number, min: number, max: number): number {
  let p = min;
  while (p < n && p < max) p *= 2;
  return p;
}

// --------------------------------------------------------------------------------------------
// LayerNorm

export function layerNormWG(D: number): number {
  return pow2AtLeast(Math.ceil(D / 4), 32, 256);
}

/**
 * A row of D elements over one LayerNorm workgroup: element e of invocation `lid` is column
 * col(e); ok(e) is its bounds check (the constant true where every invocation has one).
 */
function rowElements(D: number): { WG: number; el: number[]; col: (e: number) => string; ok: (e: number) => string } {
  const WG = layerNormWG(D);
  const el = Array.from({ length: Math.ceil(D / WG) }, (_, e) => e);
  const col = (e: number) => `(lid + ${e * WG}u)`;
  const ok = (e: number) => ((e + 1) * WG <= D ? 'true' : `${col(e)} < ${D}u`);
  return { WG, el, col, ok };
}

/** in: x [N, D], w [D], b [D]; out: y [N, D], mean [N], rstd [N]; u: {N, eps}. */
export function layerNormForwardSource(D: number): string {
  const { WG, el, col, ok } = rowElements(D);
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> meanOut: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstdOut: array<f32>;
struct U { N: u32, eps: f32, p0: u32, p1: u32 };
@group(0) @binding(6) var<uniform> u: U;
${reduceFns(WG, ['sum'])}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.N) { return; }
  let base = row * ${D}u;
  ${el.map((e) => `var x${e} = 0.0; if (${ok(e)}) { x${e} = x[base + ${col(e)}]; }`).join('\n  ')}
  let mean = wg_sum(${el.map((e) => `x${e}`).join(' + ')}, lid) / ${D}.0;
  ${el.map((e) => `var d${e} = 0.0; if (${ok(e)}) { d${e} = x${e} - mean; }`).join('\n  ')}
  let variance = wg_sum(${el.map((e) => `d${e} * d${e}`).join(' + ')}, lid) / ${D}.0;
  let rstd = inverseSqrt(variance + u.eps);
  ${el.map((e) => `if (${ok(e)}) { let c = ${col(e)}; y[base + c] = d${e} * rstd * w[c] + b[c]; }`).join('\n  ')}
  if (lid == 0u) { meanOut[row] = mean; rstdOut[row] = rstd; }
}
`;
}

/** in: dy [N, D], x [N, D], mean [N], rstd [N], w [D]; out: dx [N, D], pdw [G, D], pdb [G, D]; u: {N, R}. */
export function layerNormBackwardSource(D: number): string {
  const { WG, el, col, ok } = rowElements(D);
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> meanIn: array<f32>;
@group(0) @binding(3) var<storage, read> rstdIn: array<f32>;
@group(0) @binding(4) var<storage, read> w: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> pdw: array<f32>;
@group(0) @binding(7) var<storage, read_write> pdb: array<f32>;
struct U { N: u32, R: u32, p0: u32, p1: u32 };
@group(0) @binding(8) var<uniform> u: U;
${reduceFns(WG, ['sum'])}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x;
  let r0 = g * u.R;
  if (r0 >= u.N) { return; }
  let rEnd = min(u.N, r0 + u.R);
  ${el.map((e) => `var aw${e} = 0.0; var ab${e} = 0.0; var w${e} = 0.0; if (${ok(e)}) { w${e} = w[${col(e)}]; }`).join('\n  ')}
  for (var row = r0; row < rEnd; row++) {
    let base = row * ${D}u;
    let mean = meanIn[row];
    let rstd = rstdIn[row];
    ${el.map((e) => `var dy${e} = 0.0; var xh${e} = 0.0; if (${ok(e)}) { dy${e} = dy[base + ${col(e)}]; xh${e} = (x[base + ${col(e)}] - mean) * rstd; }
    let g${e} = dy${e} * w${e};`).join('\n    ')}
    let s1 = wg_sum(${el.map((e) => `g${e}`).join(' + ')}, lid) / ${D}.0;
    let s2 = wg_sum(${el.map((e) => `g${e} * xh${e}`).join(' + ')}, lid) / ${D}.0;
    ${el.map((e) => `if (${ok(e)}) { dx[base + ${col(e)}] = rstd * (g${e} - s1 - xh${e} * s2); }
    aw${e} = aw${e} + dy${e} * xh${e}; ab${e} = ab${e} + dy${e};`).join('\n    ')}
  }
  ${el.map((e) => `if (${ok(e)}) { pdw[g * ${D}u + ${col(e)}] = aw${e}; pdb[g * ${D}u + ${col(e)}] = ab${e}; }`).join('\n  ')}
}
`;
}

// --------------------------------------------------------------------------------------------
// Column sums (bias gradients), optionally through GELU's derivative

/**
 * in: dy [N, C] (+ z [N, C] when gelu); out: (dz [N, C] when gelu), partial [G, C]; u: {N, C, R}.
 * Grid: (ceil(C / 256), G). With gelu, dz = dy · GELU'(z).
 */
export function columnSumSource(gelu: boolean): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
${gelu ? '@group(0) @binding(1) var<storage, read> z: array<f32>;' : ''}
${gelu ? '@group(0) @binding(2) var<storage, read_write> dz: array<f32>;' : ''}
@group(0) @binding(${gelu ? 3 : 1}) var<storage, read_write> partial: array<f32>;
struct U { N: u32, C: u32, R: u32, p0: u32 };
@group(0) @binding(${gelu ? 4 : 2}) var<uniform> u: U;
${gelu ? ERF_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = gid.x;
  if (c >= u.C) { return; }
  let r0 = wid.y * u.R;
  let rEnd = min(u.N, r0 + u.R);
  var acc = 0.0;
  for (var r = r0; r < rEnd; r++) {
    let i = r * u.C + c;
    ${
      gelu
        ? `let zv = z[i];
    let d = 0.5 * (1.0 + erf_as(zv * 0.7071067811865476)) + zv * exp(-0.5 * zv * zv) * 0.3989422804014327;
    let g = dy[i] * d;
    dz[i] = g;
    acc = acc + g;`
        : 'acc = acc + dy[i];'
    }
  }
  partial[wid.y * u.C + c] = acc;
}
`;
}

// --------------------------------------------------------------------------------------------
// Rotary embedding with the head split / merge of the fused QKV projection

/**
 * in: fused [B·T, H·3·hs], cos [T, rd], sin [T, rd]; out: q, k, v [B·H, T, hs]; u: {total, T, H}.
 * Rotary (rotate_half) on the first rd dims of q and k.
 */
export function rotarySplitSource(hs: number, rd: number): string {
  const half = rd / 2;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> fused: array<f32>;
@group(0) @binding(1) var<storage, read> cosT: array<f32>;
@group(0) @binding(2) var<storage, read> sinT: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;
struct U { total: u32, T: u32, H: u32, p0: u32 };
@group(0) @binding(6) var<uniform> u: U;
${FLAT}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = flat_index(gid, nwg);
  if (idx >= u.total) { return; }
  let d = idx % ${hs}u;
  let t = (idx / ${hs}u) % u.T;
  let bh = idx / (${hs}u * u.T);
  let h = bh % u.H;
  let b = bh / u.H;
  let src = (b * u.T + t) * u.H * ${3 * hs}u + h * ${3 * hs}u;
  var qv = fused[src + d];
  var kv = fused[src + ${hs}u + d];
  if (d < ${rd}u) {
    let c = cosT[t * ${rd}u + d];
    let s = sinT[t * ${rd}u + d];
    var partner = d + ${half}u;
    var sgn = -1.0;
    if (d >= ${half}u) { partner = d - ${half}u; sgn = 1.0; }
    qv = qv * c + (sgn * fused[src + partner]) * s;
    kv = kv * c + (sgn * fused[src + ${hs}u + partner]) * s;
  }
  q[idx] = qv;
  k[idx] = kv;
  v[idx] = fused[src + ${2 * hs}u + d];
}
`;
}

/** in: dq, dk, dv [B·H, T, hs], cos, sin; out: dfused [B·T, H·3·hs]; u: {total, T, H}. */
export function rotaryMergeBackwardSource(hs: number, rd: number): string {
  const half = rd / 2;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dq: array<f32>;
@group(0) @binding(1) var<storage, read> dk: array<f32>;
@group(0) @binding(2) var<storage, read> dv: array<f32>;
@group(0) @binding(3) var<storage, read> cosT: array<f32>;
@group(0) @binding(4) var<storage, read> sinT: array<f32>;
@group(0) @binding(5) var<storage, read_write> dfused: array<f32>;
struct U { total: u32, T: u32, H: u32, p0: u32 };
@group(0) @binding(6) var<uniform> u: U;
${FLAT}
fn grad_of(which: u32, i: u32) -> f32 {
  if (which == 0u) { return dq[i]; }
  if (which == 1u) { return dk[i]; }
  return dv[i];
}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = flat_index(gid, nwg);
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
  let src = ((b * u.H + h) * u.T + t) * ${hs}u;
  var g = grad_of(which, src + d);
  if (which < 2u && d < ${rd}u) {
    if (d < ${half}u) {
      g = g * cosT[t * ${rd}u + d] + grad_of(which, src + d + ${half}u) * sinT[t * ${rd}u + d + ${half}u];
    } else {
      g = g * cosT[t * ${rd}u + d] - grad_of(which, src + d - ${half}u) * sinT[t * ${rd}u + d - ${half}u];
    }
  }
  dfused[idx] = g;
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
  const tree = (xs: string[]): string => (xs.length === 1 ? xs[0] : `(${tree(xs.slice(0, Math.ceil(xs.length / 2)))} + ${tree(xs.slice(Math.ceil(xs.length / 2)))})`);
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
// Softmax cross-entropy over the vocabulary, without a one-hot

const ONLINE_LSE = `
fn lse_merge(m1: f32, s1: f32, m2: f32, s2: f32) -> vec2<f32> {
  let m = max(m1, m2);
  if (m == ${NEG_BIG}) { return vec2<f32>(m, 0.0); }
  return vec2<f32>(m, s1 * exp(m1 - m) + s2 * exp(m2 - m));
}`;

function lseReduce(WG: number, name: string): string {
  return `var<workgroup> rm_${name}: array<f32, ${WG}>;
var<workgroup> rs_${name}: array<f32, ${WG}>;
fn wg_lse_${name}(m: f32, s: f32, lid: u32) -> f32 {
  rm_${name}[lid] = m;
  rs_${name}[lid] = s;
  workgroupBarrier();
  for (var st = ${WG / 2}u; st > 0u; st = st >> 1u) {
    if (lid < st) {
      let r = lse_merge(rm_${name}[lid], rs_${name}[lid], rm_${name}[lid + st], rs_${name}[lid + st]);
      rm_${name}[lid] = r.x;
      rs_${name}[lid] = r.y;
    }
    workgroupBarrier();
  }
  let out = rm_${name}[0] + log(rs_${name}[0]);
  workgroupBarrier();
  return out;
}`;
}

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

// --------------------------------------------------------------------------------------------
// Causal attention through materialised scores: S = Q·Kᵀ and the products with P are batched
// matrix products (matmul.ts); these are the row kernels between them and the head layout moves.

const SCORES_WG = 128;

/**
 * in: S [BH·T, T] (only n ≤ row position read); out: P = softmax(scale·S) over each row's causal
 * prefix, zeros above the diagonal; u: {rows, T, scale}. One workgroup per row.
 */
export function causalSoftmaxSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> S: array<f32>;
@group(0) @binding(1) var<storage, read_write> P: array<f32>;
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
    P[base + c] = p;
  }
}
`;
}

/**
 * in: P [BH·T, T], dP [BH·T, T] (only n ≤ row position read); out: dS = scale·P∘(dP − Σₙ P∘dP),
 * zeros above the diagonal (the gradient with respect to the unscaled scores); u: {rows, T, scale}.
 */
export function causalSoftmaxBackwardSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> P: array<f32>;
@group(0) @binding(1) var<storage, read> dP: array<f32>;
@group(0) @binding(2) var<storage, read_write> dS: array<f32>;
struct U { rows: u32, T: u32, scale: f32, p0: u32 };
@group(0) @binding(3) var<uniform> u: U;
${reduceFns(SCORES_WG, ['sum'])}
@compute @workgroup_size(${SCORES_WG})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= u.rows) { return; }
  let last = row % u.T;
  let base = row * u.T;
  var acc = 0.0;
  for (var c = lid; c <= last; c += ${SCORES_WG}u) { acc = acc + P[base + c] * dP[base + c]; }
  let d = wg_sum(acc, lid);
  for (var c = lid; c < u.T; c += ${SCORES_WG}u) {
    var g = 0.0;
    if (c <= last) { g = u.scale * P[base + c] * (dP[base + c] - d); }
    dS[base + c] = g;
  }
}
`;
}

/**
 * Head layout moves: with \`toHeads\`, in: x [B·T, H·hs] → out: [BH, T, hs]; else the reverse.
 * u: {total, T, H}. One invocation per four elements (hs % 4 == 0).
 */
export function headsLayoutSource(hs: number, toHeads: boolean): string {
  const V4 = hs / 4;
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<vec4<f32>>;
struct U { total: u32, T: u32, H: u32, p0: u32 };
@group(0) @binding(2) var<uniform> u: U;
${FLAT}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = flat_index(gid, nwg);
  if (idx >= u.total) { return; }
  let d = idx % ${V4}u;
  let t = (idx / ${V4}u) % u.T;
  let bh = idx / (${V4}u * u.T);
  let merged = ((bh / u.H * u.T + t) * u.H + bh % u.H) * ${V4}u + d;
  ${toHeads ? 'y[idx] = x[merged];' : 'y[merged] = x[idx];'}
}
`;
}

// --------------------------------------------------------------------------------------------
// Distillation against the teacher's top-k (+ one remainder bucket), with cross-entropy

export const TOPK_MAX = 1024;
const KD_WG = 256;

function kdCommon(kMax: number): string {
  return `
struct U { N: u32, V: u32, k: u32, direction: u32, alpha: f32, T: f32, wKL: f32, invN: f32 };
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
    var kl = fwSum;
    if (u.direction == 1u) { kl = rvSum; }
    if (u.direction == 2u) { kl = 0.5 * (fwSum + rvSum); }
    var ce = 0.0;
    if (u.alpha != 0.0) { ce = lse1 - x[base + u32(targets[row])]; }
    loss[row] = u.alpha * ce + u.wKL * kl;
    lse1Out[row] = lse1;
    lseTOut[row] = lseT;
  }
}
`;
}

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
fn g_of(ls: f32, lt: f32) -> f32 {
  let fw = -exp(lt);
  let rv = exp(ls) * (ls - lt + 1.0);
  if (u.direction == 1u) { return rv; }
  if (u.direction == 2u) { return 0.5 * (fw + rv); }
  return fw;
}
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

// --------------------------------------------------------------------------------------------
// Embedding gradient: scatter-add of rows, float adds through a compare-exchange loop

/** in: dy [N, D], ids [N] i32; out: table [V, D] (zeroed first, as atomic u32); u: {total, D}. */
export function scatterAddRowsSource(): string {
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<i32>;
@group(0) @binding(2) var<storage, read_write> table: array<atomic<u32>>;
struct U { total: u32, D: u32, p0: u32, p1: u32 };
@group(0) @binding(3) var<uniform> u: U;
${FLAT}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let idx = flat_index(gid, nwg);
  if (idx >= u.total) { return; }
  let n = idx / u.D;
  let d = idx % u.D;
  let add = dy[idx];
  let i = u32(ids[n]) * u.D + d;
  var old = atomicLoad(&table[i]);
  loop {
    let r = atomicCompareExchangeWeak(&table[i], old, bitcast<u32>(bitcast<f32>(old) + add));
    if (r.exchanged) { break; }
    old = r.old_value;
  }
}
`;
}

// --------------------------------------------------------------------------------------------
// Global gradient norm and AdamW

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
