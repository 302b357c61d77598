/**
 * WGSL source for matrix products on cooperative matrices (Dawn's chromium-experimental-subgroup-
 * matrix, VK_KHR_cooperative_matrix underneath: the tensor cores on NVIDIA). Pure string generation.
 *
 * Each workgroup holds SGY × SGX subgroups; each subgroup a RM × RN block of result matrices of the
 * adapter's configuration (cfg.M × cfg.N). A and B slabs (BK deep) are staged in workgroup memory in
 * the configuration's component type (f32, or f16 converted on the way in), row-major; transposes
 * are taken at the global load. Results go through workgroup memory to global memory, so tails of
 * M and N are handled there; K must be a multiple of BK (checked by the caller).
 */

export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

export interface SgMatMulVariant {
  cfg: SubgroupMatrixConfig;
  subgroupSize: number;
  SGX: number;
  SGY: number;
  RM: number;
  RN: number;
  BK: number;
  transA: boolean;
  transB: boolean;
  epilogue: 'none' | 'bias' | 'bias-gelu';
  splitK: boolean;
  /** Also write `enable subgroups;` (some Dawn versions want it). */
  enableSubgroups: boolean;
}

export function sgVariantKey(v: SgMatMulVariant): string {
  const c = v.cfg;
  return [
    'sgmm',
    c.componentType,
    c.resultComponentType,
    c.M,
    c.N,
    c.K,
    v.subgroupSize,
    v.SGX,
    v.SGY,
    v.RM,
    v.RN,
    v.BK,
    +v.transA,
    +v.transB,
    v.epilogue,
    +v.splitK,
    +v.enableSubgroups,
  ].join('_');
}

export function sgTile(v: SgMatMulVariant): { BM: number; BN: number; threads: number } {
  return { BM: v.SGY * v.RM * v.cfg.M, BN: v.SGX * v.RN * v.cfg.N, threads: v.SGX * v.SGY * v.subgroupSize };
}

/** Same bindings and uniforms as matmulSource (A, B, [bias], C, [Z], {M, N, K, kChunk}); needs K % BK == 0 and M, N, K % 4 == 0. */
export function sgMatmulSource(v: SgMatMulVariant, erfWgsl: string): string {
  const { cfg, BK, RM, RN } = v;
  const T = cfg.componentType;
  const R = cfg.resultComponentType;
  const { BM, BN, threads } = sgTile(v);
  if (BK % cfg.K !== 0 || BK % 4 !== 0) throw new Error(`sg matmul: BK ${BK} must be a multiple of ${cfg.K} and 4`);
  const hasBias = v.epilogue !== 'none';
  const gelu = v.epilogue === 'bias-gelu';
  let b = 0;
  const decl: string[] = [];
  decl.push(`@group(0) @binding(${b++}) var<storage, read> A: array<vec4<f32>>;`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read> B: array<vec4<f32>>;`);
  if (hasBias) decl.push(`@group(0) @binding(${b++}) var<storage, read> bias: array<f32>;`);
  decl.push(`@group(0) @binding(${b++}) var<storage, read_write> C: array<f32>;`);
  if (gelu) decl.push(`@group(0) @binding(${b++}) var<storage, read_write> Z: array<f32>;`);
  decl.push(`struct U { M: u32, N: u32, K: u32, kChunk: u32 };`);
  decl.push(`@group(0) @binding(${b++}) var<uniform> u: U;`);
  // Row-major slabs: As[m][k] (stride BK), Bs[k][n] (stride BN); the result staging Cs[m][n] (stride BN).
  decl.push(`var<workgroup> As: array<${T}, ${BM * BK}>;`);
  decl.push(`var<workgroup> Bs: array<${T}, ${BK * BN}>;`);
  decl.push(`var<workgroup> Cs: array<${R}, ${BM * BN}>;`);
  const cv = (x: string) => (T === 'f32' ? x : `${T}(${x})`);

  // Global loads, four floats along the contiguous axis.
  const slabLoads = (which: 'A' | 'B'): string[] => {
    const lines: string[] = [];
    const rows = which === 'A' ? BM : BN; // non-K extent
    const trans = which === 'A' ? v.transA : v.transB;
    const alongRows = which === 'A' ? trans : !trans; // contiguous along the non-K axis
    const extent = which === 'A' ? 'u.M' : 'u.N';
    const base = which === 'A' ? 'rowA0' : 'colB0';
    const total = (rows * BK) / 4;
    const per = Math.ceil(total / threads);
    for (let i = 0; i < per; i++) {
      const guard = total % threads === 0 || i < per - 1 ? '' : `if (idx < ${total}u)`;
      if (alongRows) {
        // element (k, r..r+3)
        const addr = `(gk * ${extent} + gr) / 4u`;
        const put =
          which === 'A'
            ? [0, 1, 2, 3].map((c) => `As[(r + ${c}u) * ${BK}u + kk] = ${cv(`x.${'xyzw'[c]}`)};`).join(' ')
            : `Bs[kk * ${BN}u + r] = ${cv('x.x')}; Bs[kk * ${BN}u + r + 1u] = ${cv('x.y')}; Bs[kk * ${BN}u + r + 2u] = ${cv('x.z')}; Bs[kk * ${BN}u + r + 3u] = ${cv('x.w')};`;
        lines.push(`{ let idx = lidx + ${i * threads}u; ${guard} { let kk = idx / ${rows / 4}u; let r = (idx % ${rows / 4}u) * 4u;
          let gk = k0 + kk; let gr = ${base} + r; var x = vec4<f32>(0.0);
          if (gr < ${extent}) { x = ${which}[${addr}]; }
          ${put} } }`);
      } else {
        // element (r, k..k+3)
        const addr = `(gr * u.K + gk) / 4u`;
        const put =
          which === 'A'
            ? `As[r * ${BK}u + kq] = ${cv('x.x')}; As[r * ${BK}u + kq + 1u] = ${cv('x.y')}; As[r * ${BK}u + kq + 2u] = ${cv('x.z')}; As[r * ${BK}u + kq + 3u] = ${cv('x.w')};`
            : [0, 1, 2, 3].map((c) => `Bs[(kq + ${c}u) * ${BN}u + r] = ${cv(`x.${'xyzw'[c]}`)};`).join(' ');
        lines.push(`{ let idx = lidx + ${i * threads}u; ${guard} { let r = idx / ${BK / 4}u; let kq = (idx % ${BK / 4}u) * 4u;
          let gk = k0 + kq; let gr = ${base} + r; var x = vec4<f32>(0.0);
          if (gr < ${extent}) { x = ${which}[${addr}]; }
          ${put} } }`);
      }
    }
    return lines;
  };

  const L = `subgroup_matrix_left<${T}, ${cfg.K}, ${cfg.M}>`;
  const Rt = `subgroup_matrix_right<${T}, ${cfg.N}, ${cfg.K}>`;
  const Res = `subgroup_matrix_result<${R}, ${cfg.N}, ${cfg.M}>`;
  const accDecl: string[] = [];
  for (let i = 0; i < RM; i++) for (let j = 0; j < RN; j++) accDecl.push(`var acc${i}_${j} = ${Res}();`);
  const inner: string[] = [];
  for (let i = 0; i < RM; i++)
    inner.push(`let a${i} = subgroupMatrixLoad<${L}>(&As, (sgRow + ${i * cfg.M}u) * ${BK}u + kk, false, ${BK}u);`);
  for (let j = 0; j < RN; j++)
    inner.push(`let b${j} = subgroupMatrixLoad<${Rt}>(&Bs, kk * ${BN}u + sgCol + ${j * cfg.N}u, false, ${BN}u);`);
  for (let i = 0; i < RM; i++)
    for (let j = 0; j < RN; j++)
      inner.push(`acc${i}_${j} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, acc${i}_${j});`);
  const stores: string[] = [];
  for (let i = 0; i < RM; i++)
    for (let j = 0; j < RN; j++) {
      stores.push(
        `subgroupMatrixStore(&Cs, (sgRow + ${i * cfg.M}u) * ${BN}u + sgCol + ${j * cfg.N}u, acc${i}_${j}, false, ${BN}u);`,
      );
    }
  const cBase = v.splitK ? 'wid.z * u.M * u.N + ' : '';
  const enables = [
    T === 'f16' || R === 'f16' ? 'enable f16;' : '',
    v.enableSubgroups ? 'enable subgroups;' : '',
    'enable chromium_experimental_subgroup_matrix;',
    'diagnostic(off, chromium.subgroup_matrix_uniformity);',
  ].filter(Boolean);
  return /* wgsl */ `${enables.join('\n')}
${decl.join('\n')}
${gelu ? erfWgsl : ''}
@compute @workgroup_size(${threads}, 1, 1)
fn main(@builtin(local_invocation_index) lidx: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let rowA0 = wid.y * ${BM}u;
  let colB0 = wid.x * ${BN}u;
  let sg = lidx / ${v.subgroupSize}u;
  let sgRow = (sg / ${v.SGX}u) * ${RM * cfg.M}u;
  let sgCol = (sg % ${v.SGX}u) * ${RN * cfg.N}u;
  let kStart = ${v.splitK ? 'wid.z * u.kChunk' : '0u'};
  let kEnd = ${v.splitK ? 'max(kStart, min(u.K, kStart + u.kChunk))' : 'u.K'};
  let nSlabs = (kEnd - kStart) / ${BK}u;
  ${accDecl.join('\n  ')}
  for (var s = 0u; s < nSlabs; s++) {
    let k0 = kStart + s * ${BK}u;
    ${slabLoads('A').join('\n    ')}
    ${slabLoads('B').join('\n    ')}
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk += ${cfg.K}u) {
      ${inner.join('\n      ')}
    }
    workgroupBarrier();
  }
  ${stores.join('\n  ')}
  workgroupBarrier();
  for (var e = lidx; e < ${BM * BN}u; e += ${threads}u) {
    let m = rowA0 + e / ${BN}u;
    let n = colB0 + e % ${BN}u;
    if (m < u.M && n < u.N) {
      var c = f32(Cs[e]);
      ${hasBias ? 'c = c + bias[n];' : ''}
      ${gelu ? 'Z[m * u.N + n] = c; c = gelu_f(c);' : ''}
      C[${cBase}m * u.N + n] = c;
    }
  }
}
`;
}
