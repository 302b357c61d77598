/**
 * WGSL source for the f32 matrix products (pure string generation, no tfjs): C[M, N] = op(A) · op(B)
 * with op a transpose or not, register-tiled (each invocation TM × TN elements of C: TM/4 × TN/4
 * blocks of 4 × 4, interleaved with the other invocations' so that neighbouring invocations read
 * neighbouring vec4s of the slabs without bank conflicts and store neighbouring vec4s), staged through
 * workgroup memory BK columns of K at a time, with the next slab's global loads in flight while the
 * current one is multiplied. The loops over a slab and a thread's block are unrolled here, in
 * TypeScript, so the accumulators are plain variables (registers), not an indexed array.
 *
 * Epilogues: + bias[n]; GELU (exact, erf) writing the pre-activation too; split-K (z picks a K
 * range, partial products go to [S, M, N] and a reduction sums them).
 *
 * A and B may be f16 in storage (mixed precision's operands, ./half.ts): converted to f32 as they are
 * loaded, so the arithmetic is f32 and only the memory traffic halves.
 */

export interface MatMulTile {
  /** Rows and columns of C per workgroup. */
  BM: number;
  BN: number;
  /** Depth of the K slab staged in workgroup memory. */
  BK: number;
  /** Rows and columns of C per invocation (multiples of 4 for TN). */
  TM: number;
  TN: number;
  /** Two slabs in workgroup memory: the next one is stored while the current one is read, one barrier per slab instead of two. */
  double?: boolean;
}

export interface MatMulVariant extends MatMulTile {
  transA: boolean;
  transB: boolean;
  /** Load A / B four floats at a time along their contiguous axis (that axis must be a multiple of 4). */
  vecA: boolean;
  vecB: boolean;
  /** C's width is a multiple of 4: store four at a time. */
  vecC: boolean;
  /** M, N, K are multiples of BM, BN, BK: no bounds checks. */
  exact: boolean;
  epilogue: 'none' | 'bias' | 'bias-gelu';
  /** z selects a K range; C is [S, M, N] partial products (epilogue must be 'none'). */
  splitK: boolean;
  /** z selects a product of a batch: A, B and C are [batch, …] with the shapes above (no split-K). */
  batched?: boolean;
  /**
   * Causal-attention shortcuts for square products over positions:
   * 'lowerC': only C's lower triangle (n ≤ m) is wanted, tiles wholly above the diagonal are skipped
   * (left unwritten); 'lowerA': A is zero above its diagonal (A[m, k] = 0 for k > m), K stops at the
   * tile's last row; 'upperA': A is zero below it (A[m, k] = 0 for k < m), K starts at the tile's first row.
   */
  triangle?: 'none' | 'lowerC' | 'lowerA' | 'upperA';
  /** Element type of A and B in storage (default f32). */
  aType?: OperandType;
  bType?: OperandType;
}

/** How a product's operand is stored: f32, or f16 (half.ts's layout). */
export type OperandType = 'f32' | 'f16';

/** A tile from `BMxBNxBKxTMxTN`, with a trailing `d` for two slabs (`128x128x8x8x8d`). */
export function parseTile(s: string): MatMulTile {
  const nums = s.trim().replace(/d$/, '').split('x').map(Number);
  if (nums.length !== 5 || nums.some((n) => !Number.isInteger(n) || n <= 0))
    throw new Error(`matmul tile '${s}': expected BMxBNxBKxTMxTN, optionally ending in d (e.g. 128x128x8x8x8d)`);
  const [BM, BN, BK, TM, TN] = nums;
  return { BM, BN, BK, TM, TN, ...(s.trim().endsWith('d') ? { double: true } : {}) };
}

/** A tile as `parseTile` reads it. */
export function tileName(t: MatMulTile): string {
  return `${t.BM}x${t.BN}x${t.BK}x${t.TM}x${t.TN}${t.double ? 'd' : ''}`;
}

export function variantKey(v: MatMulVariant): string {
  return [
    'mm',
    v.BM,
    v.BN,
    v.BK,
    v.TM,
    v.TN,
    +(v.double ?? false),
    +v.transA,
    +v.transB,
    +v.vecA,
    +v.vecB,
    +v.vecC,
    +v.exact,
    v.epilogue,
    +v.splitK,
    +(v.batched ?? false),
    v.triangle ?? 'none',
    v.aType ?? 'f32',
    v.bType ?? 'f32',
  ].join('_');
}

/** Exact GELU's erf, Abramowitz & Stegun 7.1.26 (the formula tfjs's own erf kernels use). */
export const ERF_WGSL = /* wgsl */ `
fn erf_as(x: f32) -> f32 {
  let p = 0.3275911;
  let a1 = 0.254829592;
  let a2 = -0.284496736;
  let a3 = 1.421413741;
  let a4 = -1.453152027;
  let a5 = 1.061405429;
  let s = sign(x);
  let ax = abs(x);
  let t = 1.0 / (1.0 + p * ax);
  return s * (1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * exp(-ax * ax));
}
fn gelu_f(x: f32) -> f32 { return 0.5 * x * (1.0 + erf_as(x * 0.7071067811865476)); }
fn gelu4(x: vec4<f32>) -> vec4<f32> { return vec4<f32>(gelu_f(x.x), gelu_f(x.y), gelu_f(x.z), gelu_f(x.w)); }
`;

function check(v: MatMulVariant): void {
  const threadsX = v.BN / v.TN;
  const threadsY = v.BM / v.TM;
  if (!Number.isInteger(threadsX) || !Number.isInteger(threadsY))
    throw new Error(`matmul tile ${variantKey(v)}: BM/TM, BN/TN must be integers`);
  if (v.TN % 4 !== 0 || v.TM % 4 !== 0)
    throw new Error(`matmul tile ${variantKey(v)}: TM and TN must be multiples of 4`);
  const threads = threadsX * threadsY;
  for (const [what, n, vec] of [
    ['A', v.BM * v.BK, v.vecA],
    ['B', v.BN * v.BK, v.vecB],
  ] as const) {
    if ((vec ? n / 4 : n) % threads !== 0)
      throw new Error(`matmul tile ${variantKey(v)}: ${what} slab does not split over ${threads} threads`);
  }
  if (v.BK % 4 !== 0) throw new Error(`matmul tile ${variantKey(v)}: BK must be a multiple of 4`);
  if (v.splitK && v.epilogue !== 'none') throw new Error('split-K products take no epilogue');
  if (v.splitK && v.batched) throw new Error('batched products take no split-K');
  if ((v.triangle ?? 'none') !== 'none' && (v.splitK || v.BM % v.BK !== 0))
    throw new Error(`matmul tile ${variantKey(v)}: triangular products need BM a multiple of BK and no split-K`);
}

/**
 * Bindings: 0 A (read), 1 B (read), [2 bias (read)], then C (read_write) [and, for bias-gelu, the
 * pre-activation Z (read_write) after C], then the uniforms {M, N, K, kChunk}.
 */
export function matmulSource(v: MatMulVariant): string {
  check(v);
  const { BM, BN, BK, TM, TN } = v;
  const threadsX = BN / TN;
  const threadsY = BM / TM;
  const threads = threadsX * threadsY;
  const hasBias = v.epilogue !== 'none';
  const gelu = v.epilogue === 'bias-gelu';
  const triangle = v.triangle ?? 'none';
  let b = 0;
  const decl: string[] = [];
  const elem = (t: OperandType | undefined, vec: boolean) => (vec ? `vec4<${t ?? 'f32'}>` : (t ?? 'f32'));
  const cType = v.vecC ? 'vec4<f32>' : 'f32';
  decl.push(`@group(0) @binding(${b++}) var<storage, read> A: array<${elem(v.aType, v.vecA)}>;`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read> B: array<${elem(v.bType, v.vecB)}>;`);
  if (hasBias) decl.push(`@group(0) @binding(${b++}) var<storage, read> bias: array<${cType}>;`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read_write> C: array<${cType}>;`);
  if (gelu) decl.push(`@group(0) @binding(${b++}) var<storage, read_write> Z: array<${cType}>;`);
  decl.push(`struct U { M: u32, N: u32, K: u32, kChunk: u32 };`);
  decl.push(`@group(0) @binding(${b++}) var<uniform> u: U;`);

  // Workgroup slabs, k-major: As[k][m], Bs[k][n], as vec4 along m / n.
  const slabsA = (BK * BM) / 4;
  const slabsB = (BK * BN) / 4;
  const stages = v.double ? 2 : 1;
  decl.push(`var<workgroup> As: array<vec4<f32>, ${stages * slabsA}>;`);
  decl.push(`var<workgroup> Bs: array<vec4<f32>, ${stages * slabsB}>;`);
  // With two slabs, stores go to the slab at `stA`/`stB` and the multiply reads the one at `rdA`/`rdB`.
  const st = (which: 'A' | 'B') => (v.double ? `st${which} + ` : '');
  const rd = (which: 'A' | 'B') => (v.double ? `rd${which} + ` : '');

  // --- global → register loads of one slab, and register → workgroup stores -----------------
  // A(m, k): !transA: A[m*K + k] (contiguous in k); transA: A[k*M + m] (contiguous in m).
  // B(k, n): !transB: B[k*N + n] (contiguous in n); transB: B[n*K + k] (contiguous in k).
  const loadA: string[] = [];
  const storeA: string[] = [];
  const loadB: string[] = [];
  const storeB: string[] = [];
  const regDecl: string[] = [];
  const slab = (
    which: 'A' | 'B',
    rows: number, // BM or BN: the non-K extent
    trans: boolean, // contiguous along the non-K axis?
    vec: boolean,
    loads: string[],
    stores: string[],
  ): void => {
    // "contiguous along the non-K axis": A transposed, B not transposed.
    const alongRows = which === 'A' ? trans : !trans;
    const extent = which === 'A' ? 'u.M' : 'u.N';
    const base = which === 'A' ? 'rowA0' : 'colB0';
    const off = which === 'A' ? 'offA' : 'offB';
    const shared = which === 'A' ? 'As' : 'Bs';
    // An f16 operand is converted as it is read.
    const half = (which === 'A' ? v.aType : v.bType) === 'f16';
    const read = (addr: string) => (half ? `${vec ? 'vec4<f32>' : 'f32'}(${which}[${addr}])` : `${which}[${addr}]`);
    const rowsV = rows / 4;
    const total = rows * BK;
    if (vec) {
      const per = total / 4 / threads;
      for (let i = 0; i < per; i++) {
        const reg = `${which.toLowerCase()}r${i}`;
        regDecl.push(`var ${reg}: vec4<f32>;`);
        if (alongRows) {
          // slab element (k, r..r+3): k = idx / rowsV, rq = idx % rowsV
          loads.push(`{ let idx = lidx + ${i * threads}u; let kk = idx / ${rowsV}u; let rq = idx % ${rowsV}u;
            let gk = k0 + kk; let gr = ${base} + rq * 4u;
            ${v.exact ? `${reg} = ${read(`(${off} + gk * ${extent} + gr) / 4u`)};` : `if (gk < kEnd && gr < ${extent}) { ${reg} = ${read(`(${off} + gk * ${extent} + gr) / 4u`)}; } else { ${reg} = vec4<f32>(0.0); }`} }`);
          stores.push(`{ let idx = lidx + ${i * threads}u; ${shared}[${st(which)}idx] = ${reg}; }`);
        } else {
          // slab element (r, k..k+3): r = idx / (BK/4), kq = idx % (BK/4)
          loads.push(`{ let idx = lidx + ${i * threads}u; let r = idx / ${BK / 4}u; let kq = idx % ${BK / 4}u;
            let gk = k0 + kq * 4u; let gr = ${base} + r;
            ${v.exact ? `${reg} = ${read(`(${off} + gr * u.K + gk) / 4u`)};` : `if (gk < kEnd && gr < ${extent}) { ${reg} = ${read(`(${off} + gr * u.K + gk) / 4u`)}; } else { ${reg} = vec4<f32>(0.0); }`} }`);
          stores.push(`{ let idx = lidx + ${i * threads}u; let r = idx / ${BK / 4}u; let kq = idx % ${BK / 4}u;
            let rv = r / 4u; let rc = r % 4u;
            ${shared}[${st(which)}(kq * 4u + 0u) * ${rowsV}u + rv][rc] = ${reg}.x;
            ${shared}[${st(which)}(kq * 4u + 1u) * ${rowsV}u + rv][rc] = ${reg}.y;
            ${shared}[${st(which)}(kq * 4u + 2u) * ${rowsV}u + rv][rc] = ${reg}.z;
            ${shared}[${st(which)}(kq * 4u + 3u) * ${rowsV}u + rv][rc] = ${reg}.w; }`);
        }
      }
    } else {
      const per = total / threads;
      for (let i = 0; i < per; i++) {
        const reg = `${which.toLowerCase()}s${i}`;
        regDecl.push(`var ${reg}: f32;`);
        // Element (k, r): consecutive invocations take consecutive addresses along the contiguous axis.
        const coords = alongRows
          ? `let kk = idx / ${rows}u; let r = idx % ${rows}u;`
          : `let r = idx / ${BK}u; let kk = idx % ${BK}u;`;
        const addr = alongRows
          ? `${off} + (k0 + kk) * ${extent} + ${base} + r`
          : `${off} + (${base} + r) * u.K + k0 + kk`;
        loads.push(`{ let idx = lidx + ${i * threads}u; ${coords}
          ${v.exact ? `${reg} = ${read(addr)};` : `if (k0 + kk < kEnd && ${base} + r < ${extent}) { ${reg} = ${read(addr)}; } else { ${reg} = 0.0; }`} }`);
        stores.push(
          `{ let idx = lidx + ${i * threads}u; ${coords} ${shared}[${st(which)}kk * ${rowsV}u + r / 4u][r % 4u] = ${reg}; }`,
        );
      }
    }
  };
  slab('A', BM, v.transA, v.vecA, loadA, storeA);
  slab('B', BN, v.transB, v.vecB, loadB, storeB);

  // --- the multiply over one slab, unrolled -----------------------------------------------------
  const accDecl: string[] = [];
  for (let i = 0; i < TM; i++) for (let j = 0; j < TN / 4; j++) accDecl.push(`var acc${i}_${j} = vec4<f32>(0.0);`);
  const inner: string[] = [];
  for (let kk = 0; kk < BK; kk++) {
    for (let i = 0; i < TM / 4; i++)
      inner.push(`let a${kk}_${i} = As[${rd('A')}${kk * (BM / 4) + i * threadsY}u + ty];`);
    for (let j = 0; j < TN / 4; j++)
      inner.push(`let b${kk}_${j} = Bs[${rd('B')}${kk * (BN / 4) + j * threadsX}u + tx];`);
    for (let i = 0; i < TM; i++) {
      const a = `a${kk}_${Math.floor(i / 4)}.${'xyzw'[i % 4]}`;
      for (let j = 0; j < TN / 4; j++) inner.push(`acc${i}_${j} = fma(vec4<f32>(${a}), b${kk}_${j}, acc${i}_${j});`);
    }
  }

  // --- epilogue --------------------------------------------------------------------------------
  const out: string[] = [];
  const cBase = v.splitK || v.batched ? 'wid.z * u.M * u.N' : '0u';
  for (let i = 0; i < TM; i++) {
    for (let j = 0; j < TN / 4; j++) {
      const m = `(rowC0 + ${Math.floor(i / 4) * threadsY * 4 + (i % 4)}u)`;
      const n = `(colC0 + ${j * threadsX * 4}u)`;
      const acc = `acc${i}_${j}`;
      const lines: string[] = [];
      if (v.vecC) {
        lines.push(`var c = ${acc};`);
        if (hasBias) lines.push(`c = c + bias[${n} / 4u];`);
        if (gelu) lines.push(`Z[(${m} * u.N + ${n}) / 4u] = c; c = gelu4(c);`);
        lines.push(`C[(${cBase} + ${m} * u.N + ${n}) / 4u] = c;`);
        const body = lines.join(' ');
        out.push(v.exact ? `{ ${body} }` : `if (${m} < u.M && ${n} < u.N) { ${body} }`);
      } else {
        for (let c = 0; c < 4; c++) {
          const nc = `(${n} + ${c}u)`;
          const l: string[] = [`var c = ${acc}.${'xyzw'[c]};`];
          if (hasBias) l.push(`c = c + bias[${nc}];`);
          if (gelu) l.push(`Z[${m} * u.N + ${nc}] = c; c = gelu_f(c);`);
          l.push(`C[${cBase} + ${m} * u.N + ${nc}] = c;`);
          out.push(v.exact ? `{ ${l.join(' ')} }` : `if (${m} < u.M && ${nc} < u.N) { ${l.join(' ')} }`);
        }
      }
    }
  }

  return /* wgsl */ `${v.aType === 'f16' || v.bType === 'f16' ? 'enable f16;' : ''}
${decl.join('\n')}
${gelu ? ERF_WGSL : ''}
@compute @workgroup_size(${threadsX}, ${threadsY}, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(local_invocation_index) lidx: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
  let tx = lid.x;
  let ty = lid.y;
  let rowA0 = wid.y * ${BM}u;
  let colB0 = wid.x * ${BN}u;
  let rowC0 = rowA0 + ty * 4u;
  let colC0 = colB0 + tx * 4u;
  ${triangle === 'lowerC' ? `if (colB0 > rowA0 + ${BM - 1}u) { return; }` : ''}
  let offA = ${v.batched ? 'wid.z * u.M * u.K' : '0u'};
  let offB = ${v.batched ? 'wid.z * u.K * u.N' : '0u'};
  let kStart = ${v.splitK ? 'wid.z * u.kChunk' : triangle === 'upperA' ? 'min(rowA0, u.K)' : '0u'};
  let kEnd = ${v.splitK ? 'max(kStart, min(u.K, kStart + u.kChunk))' : triangle === 'lowerA' ? `min(u.K, rowA0 + ${BM}u)` : 'u.K'};
  let nSlabs = (kEnd - kStart + ${BK - 1}u) / ${BK}u;
  ${regDecl.join('\n  ')}
  ${accDecl.join('\n  ')}
  var k0 = kStart;
  ${v.double ? 'var stA = 0u; var stB = 0u;' : ''}
  ${loadA.join('\n  ')}
  ${loadB.join('\n  ')}
  ${storeA.join('\n  ')}
  ${storeB.join('\n  ')}
  workgroupBarrier();
  for (var s = 0u; s < nSlabs; s++) {
    k0 = kStart + (s + 1u) * ${BK}u;
    let more = s + 1u < nSlabs;
    if (more) {
      ${loadA.join('\n      ')}
      ${loadB.join('\n      ')}
    }
    ${v.double ? `let rdA = (s & 1u) * ${slabsA}u; let rdB = (s & 1u) * ${slabsB}u; stA = ${slabsA}u - rdA; stB = ${slabsB}u - rdB;` : ''}
    ${inner.join('\n    ')}
    ${v.double ? '' : 'workgroupBarrier();'}
    if (more) {
      ${storeA.join('\n      ')}
      ${storeB.join('\n      ')}
    }
    workgroupBarrier();
  }
  ${out.join('\n  ')}
}
`;
}

/** Workgroup grid for a product of M × N (× S split-K slices or batch entries). */
export function matmulGrid(v: Pick<MatMulTile, 'BM' | 'BN'>, M: number, N: number, S = 1): [number, number, number] {
  return [Math.ceil(N / v.BN), Math.ceil(M / v.BM), S];
}

/**
 * Sums S slices: X [S, L] → Y [L] (+ bias over the last axis of width `width`, optional GELU with
 * the pre-activation written too). Bindings: 0 X, [1 bias], then Y, [Z], then uniforms {S, L, width}.
 */
export function sumSlicesSource(opts: { epilogue: 'none' | 'bias' | 'bias-gelu' }): string {
  const hasBias = opts.epilogue !== 'none';
  const gelu = opts.epilogue === 'bias-gelu';
  let b = 0;
  const decl = [`@group(0) @binding(${b++}) var<storage, read> X: array<f32>;`];
  if (hasBias) decl.push(`@group(0) @binding(${b++}) var<storage, read> bias: array<f32>;`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read_write> Y: array<f32>;`);
  if (gelu) decl.push(`@group(0) @binding(${b++}) var<storage, read_write> Z: array<f32>;`);
  decl.push(`struct U { S: u32, L: u32, width: u32, pad: u32 };`);
  decl.push(`@group(0) @binding(${b++}) var<uniform> u: U;`);
  return /* wgsl */ `
${decl.join('\n')}
${gelu ? ERF_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= u.L) { return; }
  var c = 0.0;
  for (var s = 0u; s < u.S; s++) { c = c + X[s * u.L + i]; }
  ${hasBias ? 'c = c + bias[i % u.width];' : ''}
  ${gelu ? 'Z[i] = c; c = gelu_f(c);' : ''}
  Y[i] = c;
}
`;
}

/**
 * Sums many slices cooperatively: X [S, L] → Y [L], 16 columns × 16 lanes per workgroup, each lane
 * striding over S, then a tree over the lanes (for S in the hundreds: LayerNorm and bias gradients).
 * Bindings: 0 X, 1 Y, uniforms {S, L}. Grid: ceil(L / 16) workgroups (folded into y). With `pair`,
 * the columns from `p0` on go to a second output Z (binding 2, uniforms binding 3): two sums over
 * the same slices in one dispatch (LayerNorm's weight and bias gradients).
 */
export function sumSlicesWideSource(pair = false): string {
  const store = pair
    ? 'if (col < u.p0) { Y[col] = part[lid.x]; } else { Z[col - u.p0] = part[lid.x]; }'
    : 'Y[col] = part[lid.x];';
  return /* wgsl */ `
@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read_write> Y: array<f32>;${pair ? '\n@group(0) @binding(2) var<storage, read_write> Z: array<f32>;' : ''}
struct U { S: u32, L: u32, p0: u32, p1: u32 };
@group(0) @binding(${pair ? 3 : 2}) var<uniform> u: U;
var<workgroup> part: array<f32, 256>;
@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let col = (wid.x + wid.y * nwg.x) * 16u + lid.x;
  // Eight loads in flight per lane: the sum is short and bound by their latency, not by bandwidth.
  var lo = vec4<f32>(0.0);
  var hi = vec4<f32>(0.0);
  if (col < u.L) {
    var s = lid.y;
    for (; s + 112u < u.S; s += 128u) {
      lo = lo + vec4<f32>(X[s * u.L + col], X[(s + 16u) * u.L + col], X[(s + 32u) * u.L + col], X[(s + 48u) * u.L + col]);
      hi = hi + vec4<f32>(X[(s + 64u) * u.L + col], X[(s + 80u) * u.L + col], X[(s + 96u) * u.L + col], X[(s + 112u) * u.L + col]);
    }
    for (; s < u.S; s += 16u) { lo.x = lo.x + X[s * u.L + col]; }
  }
  let acc = lo + hi;
  part[lid.y * 16u + lid.x] = acc.x + acc.y + acc.z + acc.w;
  workgroupBarrier();
  for (var st = 8u; st > 0u; st = st >> 1u) {
    if (lid.y < st) { part[lid.y * 16u + lid.x] = part[lid.y * 16u + lid.x] + part[(lid.y + st) * 16u + lid.x]; }
    workgroupBarrier();
  }
  if (lid.y == 0u && col < u.L) { ${store} }
}
`;
}
