/**
 * Mixed precision on the webgpu backend: which matrix products take f16 operands, and the f16
 * tensors they read.
 *
 * Under `--precision mixed` the products of the linear layers and the logits (forward and both
 * gradients) read f16 operands and accumulate in f32 — on the adapter's f16 subgroup matrices (the
 * tensor cores on NVIDIA) where it offers them, else in f32. Weights keep an f16 copy (a shadow)
 * that the optimiser's step refreshes in place; activations and output gradients are converted once
 * and read by every product that needs them, so f16 halves the products' memory traffic, not only
 * their arithmetic. Products write f32; master weights, optimiser state, layer norms, softmax and
 * losses stay f32. f16 gradients need a loss scale (ops/adamw.ts's LossScale): the trainer turns
 * one on when `lossScaling` says so.
 *
 * An f16 tensor lives in tfjs tensor data of float32 dtype holding the f16 bits, half as many
 * elements rounded up to 16 bytes (`halfStorageShape`): opaque to tfjs, read only by these kernels.
 */
import { type Precision, precision } from '../precision.js';
import * as tf from '../tfjs.js';

import { fusedKernelsEnabled } from './fused.js';
import { TO_F16_WGSL } from './wgsl-common.js';
import { ERF_WGSL } from './wgsl-matmul.js';
import {
  type Capabilities,
  type Kernel,
  type SubgroupMatrixConfig,
  allocate,
  capabilities,
  dispatch,
  grid1d,
  kernelFor,
  toTensor,
  webgpuBackend,
} from './runtime.js';

/**
 * How the mixed-precision products run: 'matrix', f16 operands on subgroup matrices; 'storage', f16
 * operands in storage multiplied on the f32 cores (any adapter with shader-f16: halves the memory
 * of saved activations, and is how CI runs the f16 path on lavapipe); 'off', f32 products.
 */
export type HalfProducts = 'matrix' | 'storage' | 'off';
export const HALF_PRODUCT_SETTINGS = ['auto', 'matrix', 'storage', 'off'] as const;

/** The f16-input, f32-result subgroup-matrix configurations, largest first. */
export function f16MatrixConfigs(caps: Pick<Capabilities, 'subgroupMatrixConfigs'>): SubgroupMatrixConfig[] {
  return caps.subgroupMatrixConfigs
    .filter((c) => c.componentType === 'f16' && c.resultComponentType === 'f32')
    .sort((a, b) => b.M * b.N * b.K - a.M * a.N * a.K);
}

/**
 * Why the subgroup-matrix products cannot run on this adapter, or null when they can: they need
 * shader-f16, an f16 → f32 configuration, and one subgroup size (the kernels lay their tiles out per
 * subgroup, so the size must be known when they are written).
 */
export function matrixUnavailable(
  caps: Pick<Capabilities, 'shaderF16' | 'subgroupMatrixConfigs' | 'subgroupMinSize' | 'subgroupMaxSize'>,
): string | null {
  if (!caps.shaderF16) return 'the adapter has no shader-f16';
  if (f16MatrixConfigs(caps).length === 0) return 'the adapter offers no f16 → f32 subgroup-matrix configuration';
  if (caps.subgroupMinSize === null || caps.subgroupMinSize !== caps.subgroupMaxSize)
    return `the adapter's subgroup size varies (${caps.subgroupMinSize ?? '?'}–${caps.subgroupMaxSize ?? '?'})`;
  return null;
}

/**
 * The products' precision for precision `p` on an adapter with `caps`, from `setting` (env
 * OFFSHOOT_WEBGPU_F16: auto, the default, takes subgroup matrices where they can run and f32
 * otherwise; matrix and storage insist, and fail on an adapter without them; off keeps f32).
 */
export function chooseHalfProducts(
  p: Precision,
  caps: Pick<Capabilities, 'shaderF16' | 'subgroupMatrixConfigs' | 'subgroupMinSize' | 'subgroupMaxSize'>,
  setting = process.env.OFFSHOOT_WEBGPU_F16,
): HalfProducts {
  const s = (setting ?? '').trim().toLowerCase() || 'auto';
  if (!(HALF_PRODUCT_SETTINGS as readonly string[]).includes(s)) {
    throw new Error(
      `OFFSHOOT_WEBGPU_F16: invalid value ${JSON.stringify(setting)}; expected one of ${HALF_PRODUCT_SETTINGS.join(', ')}`,
    );
  }
  if (p === 'f32' || s === 'off') return 'off';
  const why = matrixUnavailable(caps);
  if (s === 'auto') return why === null ? 'matrix' : 'off';
  if (s === 'matrix' && why !== null) throw new Error(`OFFSHOOT_WEBGPU_F16=matrix: ${why}`);
  if (s === 'storage' && !caps.shaderF16) throw new Error('OFFSHOOT_WEBGPU_F16=storage: the adapter has no shader-f16');
  return s as HalfProducts;
}

/** The mixed-precision products in force now (off when webgpu is not active or its fused kernels are off). */
export function halfProducts(precisionNow = precision()): HalfProducts {
  if (webgpuBackend() === null || !fusedKernelsEnabled()) return 'off';
  return chooseHalfProducts(precisionNow, capabilities());
}

/** The tfjs shape of an f16 tensor of n elements: its bits as float32 elements, rounded up to 16 bytes. */
export function halfStorageShape(n: number): [number] {
  return [Math.max(4, Math.ceil(n / 8) * 4)];
}

/**
 * in: x [n] f32; out: h, n f16 (`halfStorageShape`), of GELU(x) with `gelu` (the MLP's hidden
 * activation, written once for the down product); u: {n}. Four elements per invocation when n is a
 * multiple of 4.
 */
export function toHalfSource(vec4: boolean, gelu = false): string {
  const value = (x: string) => (gelu ? `${vec4 ? 'gelu4' : 'gelu_f'}(${x})` : x);
  const body = vec4
    ? `if (i < u.n / 4u) { h[i] = to_f16x4(${value('x[i]')}); }`
    : `if (i < u.n) { h[i] = to_f16(${value('x[i]')}); }`;
  return /* wgsl */ `enable f16;
@group(0) @binding(0) var<storage, read> x: array<${vec4 ? 'vec4<f32>' : 'f32'}>;
@group(0) @binding(1) var<storage, read_write> h: array<${vec4 ? 'vec4<f16>' : 'f16'}>;
struct U { n: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(2) var<uniform> u: U;
${TO_F16_WGSL}
${gelu ? ERF_WGSL : ''}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  ${body}
}
`;
}

/** in: h, n f16; out: x [n] f32; u: {n}. */
export function fromHalfSource(): string {
  return /* wgsl */ `enable f16;
@group(0) @binding(0) var<storage, read> h: array<f16>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
struct U { n: u32, p0: u32, p1: u32, p2: u32 };
@group(0) @binding(2) var<uniform> u: U;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i < u.n) { x[i] = f32(h[i]); }
}
`;
}

const toHalfKernel = (vec4: boolean, gelu: boolean): Kernel =>
  kernelFor(`to_f16:${vec4}:${gelu}`, gelu ? 'gelu_f16' : 'to_f16', () => toHalfSource(vec4, gelu));
const fromHalfKernel: Kernel = { key: 'from_f16', name: 'from_f16', source: fromHalfSource };

/** An f16 copy of the n floats of x, or of their GELU with `gelu` (tensor data; the caller releases it or makes it a tensor). */
export function toHalf(x: tf.TensorInfo, n = sizeOf(x), gelu = false): tf.TensorInfo {
  const h = allocate(halfStorageShape(n));
  const vec4 = n % 4 === 0;
  dispatch(
    toHalfKernel(vec4, gelu),
    [x],
    [h],
    [
      ['u', n],
      ['u', 0],
      ['u', 0],
      ['u', 0],
    ],
    grid1d(vec4 ? n / 4 : n),
  );
  return h;
}

/** The n values of an f16 tensor as a float32 tensor of `shape` (checks and tests read f16 data through it). */
export function fromHalf(h: tf.TensorInfo, shape: number[]): tf.Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const x = allocate(shape);
  dispatch(
    fromHalfKernel,
    [h],
    [x],
    [
      ['u', n],
      ['u', 0],
      ['u', 0],
      ['u', 0],
    ],
    grid1d(n),
  );
  return toTensor(x);
}

function sizeOf(x: tf.TensorInfo): number {
  return x.shape.reduce((a, b) => a * b, 1);
}

// ---------------------------------------------------------------------------------------------
// Weight shadows

/**
 * f16 copies of weights, kept from step to step instead of converting every weight in every
 * product: by the weight's data, so a reassigned variable (new data) gets a new copy. The fused
 * AdamW step (adamw.ts) refreshes a copy in place when it updates its weight, the only in-place
 * change a weight sees. A copy goes once its weight's data is gone (`sweepShadows`, on each new
 * copy and at the end of every training step).
 */
const shadows = new Map<object, tf.Tensor>();

/** The weight's f16 copy (made on first use). */
export function halfWeight(w: tf.Tensor): tf.Tensor {
  let s = shadows.get(w.dataId);
  if (!s) {
    sweepShadows();
    s = tf.keep(toTensor(toHalf(w, w.size)));
    shadows.set(w.dataId, s);
  }
  return s;
}

/** The f16 copy of a weight, if it has one. */
export function halfShadow(w: tf.Tensor): tf.Tensor | undefined {
  return shadows.get(w.dataId);
}

/** Disposes the copies whose weights' data tfjs has freed. */
export function sweepShadows(): void {
  const b = webgpuBackend();
  if (!b) return;
  for (const [dataId, s] of shadows) {
    if (b.tensorMap.has(dataId)) continue;
    shadows.delete(dataId);
    s.dispose();
  }
}

/** Disposes every copy (tests; a new backend). */
export function clearShadows(): void {
  for (const s of shadows.values()) s.dispose();
  shadows.clear();
}
