/**
 * The harness of the kernel checks, the same for every backend: a case's inputs as seeded host values,
 * a function's value and input gradients (for a fixed upstream gradient) on the active backend, and
 * the relative error between two results. Each backend's checks (webgpu/check.ts, cuda/check.ts) run
 * their kernels and the reference through it.
 */
import * as tf from './tfjs.js';

/** A tensor's values on the host: a case's inputs, made the same on every backend. */
export interface Host {
  shape: number[];
  data: Float32Array | Int32Array;
  dtype?: 'float32' | 'int32';
}

/** Seeded uniform values in [-scale, scale). */
export function randHost(shape: number[], seed: number, scale = 1): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  let s = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    data[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return { shape, data };
}

/** Seeded integers in [0, max): token ids, targets. */
export function intHost(shape: number[], max: number, seed: number): Host {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Int32Array(n);
  for (let i = 0; i < n; i++) data[i] = (i * 7919 + seed * 104729 + ((i * i) % 13)) % max;
  return { shape, data, dtype: 'int32' };
}

/** The tensor of a host value, on the active backend. */
const hostTensor = (h: Host): tf.Tensor => tf.tensor(h.data, h.shape, h.dtype ?? 'float32');

/** Value and gradients w.r.t. the inputs listed in `diff` of `f`, for a fixed random upstream gradient. */
export async function valueAndGrads(
  inputs: Host[],
  diff: number[],
  f: (ts: tf.Tensor[]) => tf.Tensor,
): Promise<{ value: Float32Array; grads: Float32Array[] }> {
  const ts = inputs.map(hostTensor);
  const value = tf.tidy(() => f(ts));
  if (diff.length === 0) {
    const out = { value: (await value.data()) as Float32Array, grads: [] };
    tf.dispose([...ts, value]);
    return out;
  }
  const dy = tf.tensor(randHost(value.shape, 99).data, value.shape);
  const g = tf.grads((...xs: tf.Tensor[]) => {
    const all = ts.slice();
    diff.forEach((d, i) => (all[d] = xs[i]));
    return f(all);
  });
  const grads = g(
    diff.map((d) => ts[d]),
    dy,
  );
  const out = {
    value: (await value.data()) as Float32Array,
    grads: await Promise.all(grads.map(async (x) => (await x.data()) as Float32Array)),
  };
  tf.dispose([...ts, value, dy, ...grads]);
  return out;
}

/** max |a − b| / max |b| (Infinity for a length mismatch or a non-finite value). */
export function relErr(a: Float32Array, b: Float32Array, floor = 1e-6): number {
  if (a.length !== b.length) return Infinity;
  let e = 0;
  let m = floor;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    const d = Math.abs(a[i] - b[i]);
    if (d > e) e = d;
    const v = Math.abs(b[i]);
    if (v > m) m = v;
  }
  return e / m;
}

/** cos/sin [T, rd] with equal halves (as the model's are) and the additive causal mask [T, T]. */
export function ropeTables(T: number, rd: number): { cos: Host; sin: Host; mask: Host } {
  const half = rd / 2;
  const cos = new Float32Array(T * rd);
  const sin = new Float32Array(T * rd);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < half; i++) {
      const a = t / 10000 ** ((2 * i) / rd);
      cos[t * rd + i] = cos[t * rd + i + half] = Math.cos(a);
      sin[t * rd + i] = sin[t * rd + i + half] = Math.sin(a);
    }
  }
  const mask = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) mask[i * T + j] = -1e9;
  return {
    cos: { shape: [T, rd], data: cos },
    sin: { shape: [T, rd], data: sin },
    mask: { shape: [T, T], data: mask },
  };
}
