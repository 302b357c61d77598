/**
 * WGSL pieces the fused kernels share (pure string generation). Binding order everywhere: inputs,
 * then outputs, then one uniform block `u` (see runtime.ts).
 *
 * Row kernels take one workgroup per row, folded into y past 32768 rows:
 * `row = wid.x + wid.y * nwg.x`.
 */

export const FLAT = 'fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * 256u; }';
export const NEG_BIG = '-3.0e38';

/**
 * `wg_NAME(v, lid)`: the workgroup-wide sum (max for `max`) over `WG` invocations (a power of two).
 * With the adapter's fixed subgroup size `SG` (the shader then needs reduceEnables(SG)): a subgroup
 * operation, then the subgroups' results through workgroup memory, two barriers in all; else a tree
 * through workgroup memory, a barrier a level (nine for 256 invocations).
 */
export function reduceFns(WG: number, names: string[], SG: number | null = null): string {
  const bySubgroup = SG !== null && WG % SG === 0;
  const combine = (n: string, a: string, b: string) => (n === 'max' ? `max(${a}, ${b})` : `${a} + ${b}`);
  return names
    .map((n) =>
      bySubgroup
        ? `var<workgroup> red_${n}: array<f32, ${WG / SG}>;
fn wg_${n}(v: f32, lid: u32) -> f32 {
  let s = ${n === 'max' ? 'subgroupMax' : 'subgroupAdd'}(v);
  if (lid % ${SG}u == 0u) { red_${n}[lid / ${SG}u] = s; }
  workgroupBarrier();
  var r = red_${n}[0];
  for (var i = 1u; i < ${WG / SG}u; i++) { r = ${combine(n, 'r', `red_${n}[i]`)}; }
  workgroupBarrier();
  return r;
}`
        : `var<workgroup> red_${n}: array<f32, ${WG}>;
fn wg_${n}(v: f32, lid: u32) -> f32 {
  red_${n}[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s = s >> 1u) {
    if (lid < s) { red_${n}[lid] = ${combine(n, `red_${n}[lid]`, `red_${n}[lid + s]`)}; }
    workgroupBarrier();
  }
  let r = red_${n}[0];
  workgroupBarrier();
  return r;
}`,
    )
    .join('\n');
}

/** The directives reduceFns(…, SG) needs at the top of a shader (none without a subgroup size). */
export function reduceEnables(SG: number | null): string {
  return SG === null ? '' : 'enable subgroups;\ndiagnostic(off, subgroup_uniformity);';
}

/** Merges two online log-sum-exp states (max, sum of exp(x − max)). */
export const ONLINE_LSE = `
fn lse_merge(m1: f32, s1: f32, m2: f32, s2: f32) -> vec2<f32> {
  let m = max(m1, m2);
  if (m == ${NEG_BIG}) { return vec2<f32>(m, 0.0); }
  return vec2<f32>(m, s1 * exp(m1 - m) + s2 * exp(m2 - m));
}`;

/** `wg_lse_NAME(m, s, lid)`: the log-sum-exp of every invocation's online state over a workgroup of `WG`. */
export function lseReduce(WG: number, name: string): string {
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

/**
 * WGSL: `to_f16(x)`, f32 → f16 with every value beyond f16's range (and NaN) made +inf. WGSL leaves
 * an out-of-range conversion undefined, and the loss scale's overflow check must see it; the test is
 * on the bits, which no fast-math assumption removes.
 */
export const TO_F16_WGSL = /* wgsl */ `
fn to_f16(x: f32) -> f16 {
  let bits = bitcast<u32>(x);
  // +inf's bits, built from a runtime value (a constant infinity does not compile).
  if ((bits & 0x7f800000u) == 0x7f800000u || abs(x) > 65504.0) { return bitcast<vec2<f16>>(0x7c007c00u | (bits & 0u)).x; }
  return f16(x);
}
fn to_f16x4(x: vec4<f32>) -> vec4<f16> { return vec4<f16>(to_f16(x.x), to_f16(x.y), to_f16(x.z), to_f16(x.w)); }
`;
