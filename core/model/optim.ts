/**
 * AdamW (decoupled weight decay, Loshchilov & Hutter), linear warmup + cosine learning rate, and
 * global gradient-norm clipping. Optimiser state is plain tensors so a checkpoint can carry it and a
 * resumed run continues bit for bit.
 */
import * as tf from './tfjs.js';

import type { HostTensor } from './safetensors.js';
import { ResourceAdam } from './tensorflow/adamw.js';
import { tensorflowKernelsActive } from './tensorflow/native.js';
import { fusedKernelsActive } from './webgpu/fused.js';
import { fusedClipAdamW } from './webgpu/adamw.js';

export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
}

export const DEFAULT_ADAMW: AdamWOptions = { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };

export interface ScheduleOptions {
  maxLr: number;
  minLr: number;
  warmupSteps: number;
  totalSteps: number;
}

/** Learning rate at a step (0-based): linear warmup to maxLr, then cosine decay to minLr. */
export function learningRate(step: number, s: ScheduleOptions): number {
  if (s.warmupSteps > 0 && step < s.warmupSteps) return (s.maxLr * (step + 1)) / s.warmupSteps;
  const decaySteps = Math.max(1, s.totalSteps - s.warmupSteps);
  const progress = Math.min(1, (step - s.warmupSteps) / decaySteps);
  return s.minLr + 0.5 * (s.maxLr - s.minLr) * (1 + Math.cos(Math.PI * progress));
}

/** Scales gradients so their global L2 norm is at most maxNorm; returns the new gradients and the norm before. */
export function clipByGlobalNorm(
  grads: Record<string, tf.Tensor>,
  maxNorm: number,
): { grads: Record<string, tf.Tensor>; norm: tf.Scalar } {
  return tf.tidy(() => {
    const squares = Object.values(grads).map((g) => tf.sum(tf.square(g)));
    // Pairwise adds, not addN: one addN over every parameter exceeds WebGPU's storage-buffer limit.
    const norm = tf.sqrt(squares.reduce((acc, x) => tf.add(acc, x))) as tf.Scalar;
    const scale = tf.minimum(1, tf.div(maxNorm, tf.add(norm, 1e-6)));
    const clipped: Record<string, tf.Tensor> = {};
    for (const [name, g] of Object.entries(grads)) clipped[name] = tf.mul(g, scale);
    return { grads: clipped, norm };
  });
}

/** Weight decay applies to matrices (embeddings and projections), not to biases or LayerNorm. */
export function decays(name: string, shape: number[]): boolean {
  return shape.length >= 2 && !name.includes('layernorm') && !name.includes('layer_norm');
}

export class AdamW {
  readonly options: AdamWOptions;
  /** Number of updates applied so far. */
  step = 0;
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  /** On the tensorflow backend the moments live here instead of in m and v (tensorflow/adamw.ts). */
  private resources: ResourceAdam | null = null;
  /** The parameters `resources` was made for. */
  private resourceNames = '';

  constructor(options: Partial<AdamWOptions> = {}) {
    this.options = { ...DEFAULT_ADAMW, ...options };
  }

  private slot(map: Map<string, tf.Variable>, name: string, like: tf.Tensor): tf.Variable {
    let s = map.get(name);
    if (!s) {
      s = tf.tidy(() => tf.variable(tf.zerosLike(like), false));
      map.set(name, s);
    }
    return s;
  }

  /** Applies one update to `params` (name → variable) with `grads` (name → gradient) at learning rate lr. */
  apply(params: Map<string, tf.Variable>, grads: Record<string, tf.Tensor>, lr: number): void {
    this.takeBackMoments();
    this.step += 1;
    const { beta1, beta2, eps, weightDecay } = this.options;
    const bc1 = 1 - beta1 ** this.step;
    const bc2 = 1 - beta2 ** this.step;
    for (const [name, p] of params) {
      const g = grads[name];
      if (!g) continue;
      const m = this.slot(this.m, name, p);
      const v = this.slot(this.v, name, p);
      tf.tidy(() => {
        const mNew = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
        const vNew = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
        m.assign(mNew);
        v.assign(vNew);
        const update = tf.div(tf.div(mNew, bc1), tf.add(tf.sqrt(tf.div(vNew, bc2)), eps));
        const decayed = decays(name, p.shape) && weightDecay > 0 ? tf.mul(p, 1 - lr * weightDecay) : p;
        p.assign(tf.sub(decayed, tf.mul(update, lr)));
      });
    }
  }

  /**
   * Clips `grads` to a global L2 norm of at most maxNorm and applies one update; returns the norm
   * before clipping. On the WebGPU backend with fused kernels this is one kernel per parameter and
   * no read-back (webgpu/adamw.ts); on the tensorflow backend one ResourceApplyAdam per parameter
   * (tensorflow/adamw.ts); elsewhere clipByGlobalNorm then apply.
   */
  applyClipped(params: Map<string, tf.Variable>, grads: Record<string, tf.Tensor>, lr: number, maxNorm: number): tf.Scalar {
    if (tensorflowKernelsActive()) return this.applyResources(params, grads, lr, maxNorm);
    this.takeBackMoments();
    if (!fusedKernelsActive()) {
      return tf.tidy(() => {
        const { grads: clipped, norm } = clipByGlobalNorm(grads, maxNorm);
        this.apply(params, clipped, lr);
        return norm;
      });
    }
    this.step += 1;
    const { beta1, beta2, eps, weightDecay } = this.options;
    const entries = [];
    for (const [name, p] of params) {
      const g = grads[name];
      if (!g) continue;
      entries.push({
        param: p,
        grad: g,
        m: this.slot(this.m, name, p),
        v: this.slot(this.v, name, p),
        decay: decays(name, p.shape) && weightDecay > 0 ? 1 - lr * weightDecay : 1,
      });
    }
    return fusedClipAdamW(entries, { lr, beta1, beta2, eps, bc1: 1 - beta1 ** this.step, bc2: 1 - beta2 ** this.step, maxNorm });
  }

  private applyResources(params: Map<string, tf.Variable>, grads: Record<string, tf.Tensor>, lr: number, maxNorm: number): tf.Scalar {
    const names = Object.keys(grads).filter((n) => params.has(n)).sort().join('\n');
    if (names !== this.resourceNames) this.takeBackMoments();
    this.resourceNames = names;
    this.step += 1;
    this.resources ??= new ResourceAdam();
    const { beta1, beta2, eps, weightDecay } = this.options;
    const entries = [];
    for (const [name, p] of params) {
      const grad = grads[name];
      if (!grad) continue;
      // Loaded (or earlier) moments seed the resources once; from then on the resources hold them.
      const initial = () => {
        const m = this.m.get(name);
        const v = this.v.get(name);
        this.m.delete(name);
        this.v.delete(name);
        return { m, v };
      };
      entries.push({ name, param: p, grad, decays: decays(name, p.shape), initial });
    }
    return this.resources.applyClipped(entries, { lr, beta1, beta2, eps, weightDecay, step: this.step, maxNorm });
  }

  /** Moves the moments out of TensorFlow's resources into m and v (before a step elsewhere). */
  private takeBackMoments(): void {
    if (!this.resources) return;
    for (const [name, { m, v }] of this.resources.moments()) {
      this.m.set(name, tf.variable(m, false));
      this.v.set(name, tf.variable(v, false));
      tf.dispose([m, v]);
    }
    this.resources.dispose();
    this.resources = null;
  }

  /** State as host tensors (for a checkpoint): `m.NAME`, `v.NAME`, and `step`. */
  async stateToHost(): Promise<Map<string, HostTensor>> {
    const out = new Map<string, HostTensor>();
    const resident = this.resources?.moments() ?? new Map<string, { m: tf.Tensor; v: tf.Tensor }>();
    for (const [prefix, map] of [['m', this.m], ['v', this.v]] as const) {
      const all: Array<[string, tf.Tensor]> = [...map, ...[...resident].map(([name, mv]) => [name, mv[prefix]] as [string, tf.Tensor])];
      for (const [name, t] of all) {
        out.set(`${prefix}.${name}`, { dtype: 'float32', shape: t.shape.slice(), data: (await t.data()) as Float32Array });
      }
    }
    for (const { m, v } of resident.values()) tf.dispose([m, v]);
    out.set('step', { dtype: 'int32', shape: [1], data: Int32Array.of(this.step) });
    return out;
  }

  loadState(state: Map<string, HostTensor>): void {
    this.dispose();
    for (const [key, t] of state) {
      if (key === 'step') {
        this.step = t.data[0];
        continue;
      }
      const dot = key.indexOf('.');
      const prefix = key.slice(0, dot);
      const name = key.slice(dot + 1);
      const target = prefix === 'm' ? this.m : prefix === 'v' ? this.v : null;
      if (!target) throw new Error(`optimiser state has an unknown entry "${key}"`);
      target.set(name, tf.tidy(() => tf.variable(tf.tensor(t.data, t.shape, 'float32'), false)));
    }
  }

  dispose(): void {
    this.resources?.dispose();
    this.resources = null;
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
    this.m.clear();
    this.v.clear();
  }
}
