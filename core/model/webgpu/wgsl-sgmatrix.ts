/**
 * WGSL source for matrix products on subgroup matrices (Dawn's chromium-experimental-subgroup-matrix,
 * VK_KHR_cooperative_matrix underneath: the tensor cores on NVIDIA): f16 inputs, f32 accumulation
 * and results. Pure string generation; the same bindings, uniforms and epilogues as the f32 kernels
 * of wgsl-matmul.ts, so the planner (matmul.ts) swaps one for the other.
 *
 * A workgroup holds SGY × SGX subgroups; each subgroup an RM × RN block of result matrices of the
 * adapter's configuration (M × N, K deep). Operands reach the matrices one of two ways:
 *
 * - `workgroup` staging: A and B slabs, BK deep, are copied into workgroup memory in their storage
 *   layout (a transposed operand is read column-major by the matrix loads, so nothing is transposed
 *   on the way), rows padded by 16 bytes against bank conflicts; 16-byte global loads (eight f16,
 *   or four f32 converted on the way in), each stored whole: the slabs are arrays of f16 pairs
 *   (`vec4<u32>`, or `vec2<u32>` for four), which the matrix loads read as f16 (unitArray); the next
 *   slab's loads in flight while the current one is multiplied, optionally two slabs (`double`: one
 *   barrier per slab);
 * - `direct`: each subgroup loads its matrices straight from storage (f16 operands whose shape is a
 *   multiple of the tile), relying on the caches.
 *
 * Results go to global memory straight from the matrices when the tile is whole and the epilogue
 * is at most a bias: the accumulators then start from the bias, loaded as result matrices from a
 * copy of it repeated in M rows (sgBiasRowsSource; a copy in workgroup memory, with its barrier, left
 * such products up to half again as slow). Otherwise they go through a per-subgroup
 * patch of workgroup memory, `patch` matrices side by side at a time (an M × patch·N strip, rows
 * padded against bank conflicts: fewer barrier rounds, longer rows to write), where the bias, GELU
 * and bounds are applied. Split-K, batches and the causal shortcuts of the attention products work as
 * in the f32 kernels.
 *
 * `emulate` replaces the subgroup-matrix builtins with plain arithmetic (every invocation computes
 * its subgroup's whole matrix): the tiling, staging and epilogues can then be checked on an adapter
 * without subgroup matrices (lavapipe in CI); the on-card checks test the real builtins.
 */
import { ERF_WGSL, type OperandType } from './wgsl-matmul.js';
import { FLAT, TO_F16_WGSL } from './wgsl-common.js';

export interface SgMatMulTile {
  kind: 'subgroup-matrix';
  /** The configuration: each multiply-accumulate adds an M × K by K × N product into an M × N result. */
  M: number;
  N: number;
  K: number;
  /** Subgroups per workgroup along N (SGX) and M (SGY); result matrices per subgroup along M and N. */
  SGX: number;
  SGY: number;
  RM: number;
  RN: number;
  /** Depth of a K slab (a multiple of K). */
  BK: number;
  /** The workgroup's block of C (SGY·RM·M × SGX·RN·N; sgTile fills them in). */
  BM: number;
  BN: number;
  staging: 'workgroup' | 'direct';
  /** Two slabs in workgroup memory (workgroup staging). */
  double?: boolean;
  /** Result matrices that go through the epilogue's patch side by side (a divisor of RN; 1 when absent). */
  patch?: number;
  /** Plain arithmetic instead of the subgroup-matrix builtins (checks on adapters without them; see above). */
  emulate?: boolean;
}

/** A tile from its configuration and layout, with BM and BN worked out. */
export function sgTile(t: Omit<SgMatMulTile, 'kind' | 'BM' | 'BN'>): SgMatMulTile {
  return { kind: 'subgroup-matrix', ...t, BM: t.SGY * t.RM * t.M, BN: t.SGX * t.RN * t.N };
}

/**
 * A tile's name in plan files: `sg16x16x16:128x128x32:2x2x4x4:workgroup[d][:p4]` (configuration, block,
 * subgroups × matrices, staging, matrices per epilogue round).
 */
export function sgTileKey(t: SgMatMulTile): string {
  const patch = (t.patch ?? 1) > 1 ? `:p${t.patch}` : '';
  return `sg${t.M}x${t.N}x${t.K}:${t.BM}x${t.BN}x${t.BK}:${t.SGY}x${t.SGX}x${t.RM}x${t.RN}:${t.staging}${t.double ? 'd' : ''}${patch}${t.emulate ? ':emulated' : ''}`;
}

/** A tile described for people: the tile checks' names and the autotuner's list. */
export function sgTileDescription(t: SgMatMulTile): string {
  const patch = (t.patch ?? 1) > 1 ? `, epilogue ${t.patch} at a time` : '';
  return `${t.M}×${t.N}×${t.K} matrices, ${t.BM}×${t.BN}×${t.BK}, ${t.SGY}×${t.SGX} subgroups of ${t.RM}×${t.RN}, ${t.staging}${t.double ? ' double' : ''}${patch}${t.emulate ? ' (emulated)' : ''}`;
}

export interface SgMatMulVariant extends SgMatMulTile {
  subgroupSize: number;
  transA: boolean;
  transB: boolean;
  aType: OperandType;
  bType: OperandType;
  /** Elements per global load along each operand's contiguous axis: 8 (f16 only), 4 or 1 (workgroup staging). */
  widthA: 1 | 4 | 8;
  widthB: 1 | 4 | 8;
  /** M, N, K (and each K range) are multiples of BM, BN, BK: no bounds checks, results stored straight from the matrices. */
  exact: boolean;
  epilogue: 'none' | 'bias' | 'bias-gelu';
  splitK: boolean;
  batched: boolean;
  triangle: 'none' | 'lowerC' | 'lowerA' | 'upperA';
  /**
   * The grid's x walks M blocks instead of N blocks (sgMatmulGrid): consecutive workgroups then share
   * B's block and walk A, which pays when B is too large to stay in L2 and A is not (the logits).
   */
  walkM: boolean;
}

/** The workgroup grid of a variant: blocks of N along x and of M along y, swapped when it walks M; z the split-K slices or the batch. */
export function sgMatmulGrid(
  v: Pick<SgMatMulVariant, 'BM' | 'BN' | 'walkM'>,
  M: number,
  N: number,
  S = 1,
): [number, number, number] {
  const [m, n] = [Math.ceil(M / v.BM), Math.ceil(N / v.BN)];
  return v.walkM ? [m, n, S] : [n, m, S];
}

/** Padding of a workgroup slab's rows, in f16 elements (16 bytes: keeps rows 16-byte aligned, as matrix loads want). */
const PAD = 8;
/**
 * The length of the epilogue patch's rows, in f32: P matrices side by side, padded by 32 bytes once
 * they span 128 (else a result matrix's rows would all start on the same banks).
 */
const patchRow = (P: number, N: number) => P * N + (P * N >= 32 ? 8 : 0);

/**
 * The WGSL type of a workgroup array of `length` f16 held `unit` to an element: `vec4<u32>` (8) or
 * `vec2<u32>` (4) pairs, so a global load of that many f16 (or of four f32, converted) is one store,
 * not one per f16; the matrix loads then count offsets and strides in those elements.
 */
export const unitArray = (unit: 1 | 4 | 8, length: number): string =>
  `array<${unit === 8 ? 'vec4<u32>' : unit === 4 ? 'vec2<u32>' : 'f16'}, ${length / unit}>`;

/** Results are stored straight from the matrices: a whole tile whose epilogue, if any, is the bias the accumulators start from (the bias binding then holds sgBiasRowsSource's rows). */
export function sgStoresDirect(v: Pick<SgMatMulVariant, 'exact' | 'epilogue'>): boolean {
  return v.exact && v.epilogue !== 'bias-gelu';
}

export function sgVariantKey(v: SgMatMulVariant): string {
  return [
    'sgmm',
    v.M,
    v.N,
    v.K,
    v.subgroupSize,
    v.SGX,
    v.SGY,
    v.RM,
    v.RN,
    v.BK,
    v.staging,
    +(v.double ?? false),
    +v.transA,
    +v.transB,
    v.aType,
    v.bType,
    v.widthA,
    v.widthB,
    +v.exact,
    v.epilogue,
    +v.splitK,
    +v.batched,
    v.triangle,
    +(v.emulate ?? false),
    +v.walkM,
    v.patch ?? 1,
  ].join('_');
}

/** Invocations per workgroup. */
export function sgThreads(v: Pick<SgMatMulVariant, 'SGX' | 'SGY' | 'subgroupSize'>): number {
  return v.SGX * v.SGY * v.subgroupSize;
}

/** Whether operand A (B) is contiguous along K in storage: its slab is then kept rows-first. */
const kContiguous = (v: Pick<SgMatMulVariant, 'transA' | 'transB'>, which: 'A' | 'B') =>
  which === 'A' ? !v.transA : v.transB;

/** Bytes of workgroup memory the variant uses. */
export function sgWorkgroupBytes(v: SgMatMulVariant): number {
  const slab = (which: 'A' | 'B') => {
    const rows = which === 'A' ? v.BM : v.BN;
    return kContiguous(v, which) ? rows * (v.BK + PAD) : v.BK * (rows + PAD);
  };
  const staged = v.staging === 'workgroup' ? 2 * (slab('A') + slab('B')) * (v.double ? 2 : 1) : 0;
  const direct = sgStoresDirect(v);
  const patches = direct ? 0 : 4 * v.SGX * v.SGY * v.M * patchRow(v.patch ?? 1, v.N);
  return staged + patches;
}

/** Why the variant cannot be generated, or null. */
export function sgVariantProblem(v: SgMatMulVariant): string | null {
  if (v.BK % v.K !== 0) return `BK ${v.BK} is not a multiple of the configuration's K ${v.K}`;
  if (v.RN % (v.patch ?? 1) !== 0) return `patch ${v.patch} does not divide RN ${v.RN}`;
  if (v.splitK && (v.epilogue !== 'none' || v.batched)) return 'split-K products take no epilogue and no batch';
  if (v.triangle !== 'none' && (v.splitK || v.BM % v.BK !== 0))
    return 'triangular products need BM a multiple of BK and no split-K';
  if (v.staging === 'direct' && (v.aType !== 'f16' || v.bType !== 'f16' || !v.exact))
    return 'direct loads need f16 operands and an exact shape';
  for (const [which, t, w] of [
    ['A', v.aType, v.widthA],
    ['B', v.bType, v.widthB],
  ] as const) {
    if (w === 8 && t !== 'f16') return `operand ${which}: 8-wide loads are for f16 operands`;
    const along = kContiguous(v, which) ? v.BK : which === 'A' ? v.BM : v.BN;
    if (along % w !== 0)
      return `operand ${which}: load width ${w} does not divide the slab's contiguous extent ${along}`;
  }
  return null;
}

/** The WGSL of the subgroup-matrix operations, real or emulated (the attention kernels use them too). */
export interface MatrixOps {
  accumulator(name: string): string;
  /** Sets a declared accumulator back to zero (an assignment: a loop's accumulators are declared outside it). */
  zero(name: string): string;
  /**
   * A left or right matrix from `src`; `unit` f16 to an element of src (unitArray: offset and stride
   * count those elements).
   */
  load(
    name: string,
    use: 'left' | 'right',
    src: string,
    offset: string,
    colMajor: boolean,
    stride: string,
    unit?: 1 | 4 | 8,
  ): string;
  /** Row-major load of a result (f32) matrix. */
  loadResult(name: string, src: string, offset: string, stride: string): string;
  mma(acc: string, a: string, b: string): string;
  /** Row-major store of an accumulator. */
  store(dst: string, offset: string, acc: string, stride: string): string;
}

/** A configuration's shape, and whether its builtins are emulated. */
export type MatrixShape = Pick<SgMatMulTile, 'M' | 'N' | 'K' | 'emulate'>;

/** The subgroup-matrix operations of configuration `v`, emulated where `v.emulate` says. */
export function matrixOps(v: MatrixShape): MatrixOps {
  return v.emulate ? emulatedOps(v) : realOps(v);
}

/** The directives a kernel using the builtins needs (none when they are emulated). */
export function matrixEnables(v: MatrixShape): string[] {
  return v.emulate
    ? []
    : ['enable chromium_experimental_subgroup_matrix;', 'diagnostic(off, chromium.subgroup_matrix_uniformity);'];
}

function realOps(v: MatrixShape): MatrixOps {
  const type = {
    left: `subgroup_matrix_left<f16, ${v.K}, ${v.M}>`,
    right: `subgroup_matrix_right<f16, ${v.N}, ${v.K}>`,
  };
  return {
    accumulator: (name) => `var ${name} = subgroup_matrix_result<f32, ${v.N}, ${v.M}>();`,
    zero: (name) => `${name} = subgroup_matrix_result<f32, ${v.N}, ${v.M}>();`,
    load: (name, use, src, offset, colMajor, stride) =>
      `let ${name} = subgroupMatrixLoad<${type[use]}, ${colMajor ? 'col_major' : 'row_major'}>(&${src}, ${offset}, ${stride});`,
    loadResult: (name, src, offset, stride) =>
      `let ${name} = subgroupMatrixLoad<subgroup_matrix_result<f32, ${v.N}, ${v.M}>, row_major>(&${src}, ${offset}, ${stride});`,
    mma: (acc, a, b) => `${acc} = subgroupMatrixMultiplyAccumulate(${a}, ${b}, ${acc});`,
    store: (dst, offset, acc, stride) => `subgroupMatrixStore<row_major>(&${dst}, ${offset}, ${acc}, ${stride});`,
  };
}

/**
 * Every invocation holds its subgroup's whole matrices in private memory; the first of the subgroup
 * (the kernel's `lane` 0) stores them.
 */
function emulatedOps(v: MatrixShape): MatrixOps {
  const dims = { left: [v.M, v.K], right: [v.K, v.N] } as const;
  return {
    accumulator: (name) => `var ${name} = array<f32, ${v.M * v.N}>();`,
    zero: (name) => `${name} = array<f32, ${v.M * v.N}>();`,
    load: (name, use, src, offset, colMajor, stride, unit = 1) => {
      const [R, C] = dims[use];
      // The element's f16 index i; where src holds f16 pairs, its pair's word and half.
      const [base, step] = unit === 1 ? [offset, `(${stride})`] : [`(${offset}) * ${unit}u`, `(${stride}) * ${unit}u`];
      const at = colMajor ? `(e % ${C}u) * ${step} + e / ${C}u` : `(e / ${C}u) * ${step} + e % ${C}u`;
      const read = unit === 1 ? `${src}[i]` : `bitcast<vec2<f16>>(${src}[i / ${unit}u][(i % ${unit}u) / 2u])[i % 2u]`;
      return `var ${name}: array<f16, ${R * C}>; for (var e = 0u; e < ${R * C}u; e++) { let i = ${base} + ${at}; ${name}[e] = ${read}; }`;
    },
    loadResult: (name, src, offset, stride) =>
      `var ${name}: array<f32, ${v.M * v.N}>; for (var e = 0u; e < ${v.M * v.N}u; e++) { ${name}[e] = ${src}[${offset} + (e / ${v.N}u) * (${stride}) + e % ${v.N}u]; }`,
    mma: (acc, a, b) =>
      `for (var e = 0u; e < ${v.M * v.N}u; e++) { let r = e / ${v.N}u; let c = e % ${v.N}u; var s = ${acc}[e]; ` +
      `for (var k = 0u; k < ${v.K}u; k++) { s = s + f32(${a}[r * ${v.K}u + k]) * f32(${b}[k * ${v.N}u + c]); } ${acc}[e] = s; }`,
    store: (dst, offset, acc, stride) =>
      `if (lane == 0u) { for (var e = 0u; e < ${v.M * v.N}u; e++) { ${dst}[${offset} + (e / ${v.N}u) * (${stride}) + e % ${v.N}u] = ${acc}[e]; } }`,
  };
}

/**
 * in: bias [N]; out: rows [R, N], the bias in each row; u: {R·N, N}; one invocation per element
 * (grid1d).
 * The bias of a product whose results are stored straight from the matrices (sgStoresDirect), R
 * the configuration's M: every result matrix of a block column loads its start from it.
 */
export function sgBiasRowsSource(): string {
  return /* wgsl */ `@group(0) @binding(0) var<storage, read> bias: array<f32>;
@group(0) @binding(1) var<storage, read_write> rows: array<f32>;
struct U { total: u32, N: u32, p0: u32, p1: u32 };
@group(0) @binding(2) var<uniform> u: U;
${FLAT}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = flat_index(gid, nwg);
  if (i < u.total) { rows[i] = bias[i % u.N]; }
}
`;
}

/**
 * Bindings: 0 A, 1 B, [2 bias: [N], or sgBiasRowsSource's rows when stored straight], then C [and, for bias-gelu, the pre-activation Z], then the
 * uniforms {M, N, K, kChunk}; sgMatmulGrid's workgroup grid.
 */
export function sgMatmulSource(v: SgMatMulVariant): string {
  const problem = sgVariantProblem(v);
  if (problem) throw new Error(`subgroup-matrix product ${sgVariantKey(v)}: ${problem}`);
  const { M, N, K, RM, RN, BK, BM, BN } = v;
  const P = v.patch ?? 1;
  const SG = v.subgroupSize;
  const threads = sgThreads(v);
  const ops = matrixOps(v);
  const staged = v.staging === 'workgroup';
  const hasBias = v.epilogue !== 'none';
  const gelu = v.epilogue === 'bias-gelu';
  const direct = sgStoresDirect(v);
  const biasInit = direct && hasBias;

  // --- bindings -----------------------------------------------------------------------------
  const storageElem = (t: OperandType, w: number) =>
    t === 'f32' ? (w === 4 ? 'vec4<f32>' : 'f32') : w === 8 ? 'vec4<u32>' : w === 4 ? 'vec2<u32>' : 'f16';
  let bi = 0;
  const decl: string[] = [];
  decl.push(
    `@group(0) @binding(${bi++}) var<storage, read> A: array<${staged ? storageElem(v.aType, v.widthA) : 'f16'}>;`,
  );
  decl.push(
    `@group(0) @binding(${bi++}) var<storage, read> B: array<${staged ? storageElem(v.bType, v.widthB) : 'f16'}>;`,
  );
  if (hasBias) decl.push(`@group(0) @binding(${bi++}) var<storage, read> bias: array<f32>;`);
  decl.push(`@group(0) @binding(${bi++}) var<storage, read_write> C: array<f32>;`);
  if (gelu) decl.push(`@group(0) @binding(${bi++}) var<storage, read_write> Z: array<f32>;`);
  decl.push('struct U { M: u32, N: u32, K: u32, kChunk: u32 };');
  decl.push(`@group(0) @binding(${bi++}) var<uniform> u: U;`);

  // --- slabs in workgroup memory ------------------------------------------------------------
  // Rows-first [rows][BK + PAD] when the operand is contiguous along K, else [BK][rows + PAD].
  // Sizes and strides in f16; a global load of w f16 (or f32) is stored as one element of the
  // array, which holds w f16 to an element (unitArray).
  const slab = (which: 'A' | 'B') => {
    const rows = which === 'A' ? BM : BN;
    const rowsFirst = kContiguous(v, which);
    const stride = rowsFirst ? BK + PAD : rows + PAD;
    const unit = which === 'A' ? v.widthA : v.widthB;
    return { rows, rowsFirst, stride, unit, size: rowsFirst ? rows * stride : BK * stride };
  };
  const sA = slab('A');
  const sB = slab('B');
  const stages = v.double ? 2 : 1;
  if (staged) {
    decl.push(`var<workgroup> As: ${unitArray(sA.unit, stages * sA.size)};`);
    decl.push(`var<workgroup> Bs: ${unitArray(sB.unit, stages * sB.size)};`);
  }
  // The patch's rows: P matrices side by side, padded.
  const W = patchRow(P, N);
  if (!direct) decl.push(`var<workgroup> Cs: array<f32, ${v.SGX * v.SGY * M * W}>;`);

  // Global → register loads of one slab (`loads`), registers → workgroup stores (`stores`).
  const regDecl: string[] = [];
  const slabCopy = (which: 'A' | 'B'): { loads: string[]; stores: string[] } => {
    const s = which === 'A' ? sA : sB;
    const type = which === 'A' ? v.aType : v.bType;
    const w = which === 'A' ? v.widthA : v.widthB;
    const extent = which === 'A' ? 'u.M' : 'u.N';
    const base = which === 'A' ? 'rowA0' : 'colB0';
    const off = which === 'A' ? 'offA' : 'offB';
    // Leading dimension in storage: the length of the contiguous axis.
    const ld = s.rowsFirst ? 'u.K' : extent;
    const shared = which === 'A' ? 'As' : 'Bs';
    const total = (s.rows * BK) / w;
    const per = Math.ceil(total / threads);
    const perRow = (s.rowsFirst ? BK : s.rows) / w;
    const loads: string[] = [];
    const stores: string[] = [];
    for (let i = 0; i < per; i++) {
      const reg = `${which.toLowerCase()}r${i}`;
      const regType = storageElem(type, w);
      regDecl.push(`var ${reg}: ${regType};`);
      const guard = total % threads === 0 || i < per - 1 ? '' : `if (idx < ${total}u)`;
      // (r, kc): the chunk's row and its first K index (rows-first), or (kk, rc) (K-first).
      const coords = s.rowsFirst
        ? `let r = idx / ${perRow}u; let c = (idx % ${perRow}u) * ${w}u; let gr = ${base} + r; let gk = k0 + c;`
        : `let kk = idx / ${perRow}u; let c = (idx % ${perRow}u) * ${w}u; let gk = k0 + kk; let gr = ${base} + c;`;
      const addr = s.rowsFirst ? `(${off} + gr * ${ld} + gk) / ${w}u` : `(${off} + gk * ${ld} + gr) / ${w}u`;
      const zero =
        type === 'f32'
          ? w === 4
            ? 'vec4<f32>(0.0)'
            : '0.0'
          : w === 8
            ? 'vec4<u32>(0u)'
            : w === 4
              ? 'vec2<u32>(0u)'
              : 'f16(0.0)';
      const read = v.exact
        ? `${reg} = ${which}[${addr}];`
        : `if (gr < ${extent} && gk < kEnd) { ${reg} = ${which}[${addr}]; } else { ${reg} = ${zero}; }`;
      loads.push(`{ let idx = lidx + ${i * threads}u; ${guard} { ${coords} ${read} } }`);
      // The load's slot in the slab, in its elements (w f16 each where w > 1: c counts loads, not f16).
      const at = `${s.rowsFirst ? 'r' : 'kk'} * ${s.stride / s.unit}u + c`;
      const dst = `${shared}[${v.double ? `st${which} + ` : ''}${at}]`;
      const halves = (x: string, y: string) => `bitcast<u32>(vec2<f16>(to_f16(${reg}.${x}), to_f16(${reg}.${y})))`;
      const put =
        type === 'f32'
          ? w === 4
            ? `${dst} = vec2<u32>(${halves('x', 'y')}, ${halves('z', 'w')});`
            : `${dst} = to_f16(${reg});`
          : `${dst} = ${reg};`;
      const storeCoords = `let ${s.rowsFirst ? 'r' : 'kk'} = idx / ${perRow}u; let c = idx % ${perRow}u;`;
      stores.push(`{ let idx = lidx + ${i * threads}u; ${guard} { ${storeCoords} ${put} } }`);
    }
    return { loads, stores };
  };

  // --- one K step (K deep) of the subgroup's matrices -----------------------------------------
  // A matrix of slab s at row (its subgroup's first row or column, and the matrix's offset from it)
  // and K offset kk, in the slab's rows-first or K-first layout; offsets count the slab's elements
  // (every row, column and K offset here is a multiple of its unit).
  const slabLoad = (
    name: string,
    use: 'left' | 'right',
    s: typeof sA,
    rd: string,
    row: [string, number],
    kk: number,
  ): string => {
    const { unit, stride } = s;
    const rowAt = `${row[0]} / ${unit}u + ${row[1] / unit}u`;
    const offset = s.rowsFirst
      ? `${rd}(${row[0]} + ${row[1]}u) * ${stride / unit}u + ${kk / unit}u`
      : `${rd}${(kk * stride) / unit}u + ${unit === 1 ? `${row[0]} + ${row[1]}u` : rowAt}`;
    // A's rows-first slab is read row-major; B's, and A's K-first one, column-major (B's K-first row-major).
    const colMajor = use === 'left' ? !s.rowsFirst : s.rowsFirst;
    return ops.load(name, use, use === 'left' ? 'As' : 'Bs', offset, colMajor, `${stride / unit}u`, unit);
  };
  const step = (kk: number, kOff: string): string[] => {
    const lines: string[] = [];
    for (let i = 0; i < RM; i++) {
      const row = `sgRow + ${i * M}u`;
      if (staged) {
        lines.push(slabLoad(`a${i}`, 'left', sA, v.double ? 'rdA + ' : '', ['sgRow', i * M], kk));
      } else {
        lines.push(
          v.transA
            ? ops.load(`a${i}`, 'left', 'A', `offA + (${kOff}) * u.M + rowA0 + ${row}`, true, 'u.M')
            : ops.load(`a${i}`, 'left', 'A', `offA + (rowA0 + ${row}) * u.K + ${kOff}`, false, 'u.K'),
        );
      }
    }
    for (let j = 0; j < RN; j++) {
      const col = `sgCol + ${j * N}u`;
      if (staged) {
        lines.push(slabLoad(`b${j}`, 'right', sB, v.double ? 'rdB + ' : '', ['sgCol', j * N], kk));
      } else {
        lines.push(
          v.transB
            ? ops.load(`b${j}`, 'right', 'B', `offB + (colB0 + ${col}) * u.K + ${kOff}`, true, 'u.K')
            : ops.load(`b${j}`, 'right', 'B', `offB + (${kOff}) * u.N + colB0 + ${col}`, false, 'u.N'),
        );
      }
    }
    for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) lines.push(ops.mma(`acc${i}_${j}`, `a${i}`, `b${j}`));
    return lines;
  };
  const slabSteps = (kBase: (kk: number) => string): string =>
    Array.from({ length: BK / K }, (_, q) => `{\n      ${step(q * K, kBase(q * K)).join('\n      ')}\n    }`).join(
      '\n    ',
    );

  // --- results --------------------------------------------------------------------------------
  const cBase = v.splitK || v.batched ? 'wid.z * u.M * u.N + ' : '';
  const results: string[] = [];
  for (let i = 0; i < RM; i++) {
    const row = `rowA0 + sgRow + ${i * M}u`;
    if (direct) {
      for (let j = 0; j < RN; j++)
        results.push(ops.store('C', `${cBase}(${row}) * u.N + colB0 + sgCol + ${j * N}u`, `acc${i}_${j}`, 'u.N'));
      continue;
    }
    // P matrices side by side in the subgroup's patch, an M × P·N strip (rows W apart), then its rows to C.
    const cols = P * N;
    for (let j0 = 0; j0 < RN; j0 += P) {
      const stores = Array.from({ length: P }, (_, p) =>
        ops.store('Cs', `sg * ${M * W}u + ${p * N}u`, `acc${i}_${j0 + p}`, `${W}u`),
      );
      results.push(`${stores.join('\n  ')}
  workgroupBarrier();
  for (var e = lane; e < ${M * cols}u; e += ${SG}u) {
    let r = e / ${cols}u;
    let m = ${row} + r;
    let n = colB0 + sgCol + ${j0 * N}u + e % ${cols}u;
    if (m < u.M && n < u.N) {
      var c = Cs[sg * ${M * W}u + r * ${W}u + e % ${cols}u];
      ${hasBias ? 'c = c + bias[n];' : ''}
      ${gelu ? 'Z[m * u.N + n] = c; c = gelu_f(c);' : ''}
      C[${cBase}m * u.N + n] = c;
    }
  }
  workgroupBarrier();`);
    }
  }

  const accDecl: string[] = [];
  if (biasInit) {
    // The bias repeated in M rows (sgBiasRowsSource): the accumulators start from them.
    for (let j = 0; j < RN; j++) accDecl.push(ops.loadResult(`bias${j}`, 'bias', `colB0 + sgCol + ${j * N}u`, 'u.N'));
  }
  for (let i = 0; i < RM; i++)
    for (let j = 0; j < RN; j++)
      accDecl.push(biasInit ? `var acc${i}_${j} = bias${j};` : ops.accumulator(`acc${i}_${j}`));
  const kStart = v.splitK ? 'wid.z * u.kChunk' : v.triangle === 'upperA' ? 'min(rowA0, u.K)' : '0u';
  const kEnd = v.splitK
    ? 'max(kStart, min(u.K, kStart + u.kChunk))'
    : v.triangle === 'lowerA'
      ? `min(u.K, rowA0 + ${BM}u)`
      : 'u.K';
  const enables = ['enable f16;', ...matrixEnables(v)];

  let body: string;
  if (staged) {
    const a = slabCopy('A');
    const b = slabCopy('B');
    const sizes = v.double
      ? `let rdA = (s & 1u) * ${sA.size / sA.unit}u; let rdB = (s & 1u) * ${sB.size / sB.unit}u; stA = ${sA.size / sA.unit}u - rdA; stB = ${sB.size / sB.unit}u - rdB;`
      : '';
    body = `${regDecl.join('\n  ')}
  var k0 = kStart;
  ${v.double ? 'var stA = 0u; var stB = 0u;' : ''}
  ${a.loads.join('\n  ')}
  ${b.loads.join('\n  ')}
  ${a.stores.join('\n  ')}
  ${b.stores.join('\n  ')}
  workgroupBarrier();
  for (var s = 0u; s < nSlabs; s++) {
    k0 = kStart + (s + 1u) * ${BK}u;
    let more = s + 1u < nSlabs;
    if (more) {
      ${a.loads.join('\n      ')}
      ${b.loads.join('\n      ')}
    }
    ${sizes}
    ${slabSteps((kk) => `${kk}u`)}
    ${v.double ? '' : 'workgroupBarrier();'}
    if (more) {
      ${a.stores.join('\n      ')}
      ${b.stores.join('\n      ')}
    }
    workgroupBarrier();
  }`;
  } else {
    body = `for (var s = 0u; s < nSlabs; s++) {
    let k0 = kStart + s * ${BK}u;
    ${slabSteps((kk) => `k0 + ${kk}u`)}
  }`;
  }

  return /* wgsl */ `${enables.join('\n')}
${decl.join('\n')}
${gelu ? ERF_WGSL : ''}
${staged && (v.aType === 'f32' || v.bType === 'f32') ? TO_F16_WGSL : ''}
@compute @workgroup_size(${threads}, 1, 1)
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let rowA0 = wid.${v.walkM ? 'x' : 'y'} * ${BM}u;
  let colB0 = wid.${v.walkM ? 'y' : 'x'} * ${BN}u;
  ${v.triangle === 'lowerC' ? `if (colB0 > rowA0 + ${BM - 1}u) { return; }` : ''}
  let sg = lidx / ${SG}u;
  let lane = lidx % ${SG}u;
  let sgRow = (sg / ${v.SGX}u) * ${RM * M}u;
  let sgCol = (sg % ${v.SGX}u) * ${RN * N}u;
  let offA = ${v.batched ? 'wid.z * u.M * u.K' : '0u'};
  let offB = ${v.batched ? 'wid.z * u.K * u.N' : '0u'};
  let kStart = ${kStart};
  let kEnd = ${kEnd};
  let nSlabs = (kEnd - kStart + ${BK - 1}u) / ${BK}u;
  ${accDecl.join('\n  ')}
  ${body}
  ${results.join('\n  ')}
}
`;
}
