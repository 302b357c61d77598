/**
 * AdamW (decoupled weight decay, Loshchilov & Hutter), linear warmup + cosine learning rate, and
 * global gradient-norm clipping. Optimiser state is plain tensors so a checkpoint can carry it and a
 * resumed run continues bit for bit.
 */
import type * as tf from './tfjs.js';

import {
  type AdamWEntry,
  type AdamWStep,
  AdamWState,
  LossScale,
  type LossScaleOptions,
  adamwUpdate,
  clippedAdamW,
  lossScaledAdamW,
} from './ops/index.js';
import type { HostTensor } from './safetensors.js';

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

/** Weight decay applies to matrices (embeddings and projections), not to biases or LayerNorm. */
export function decays(name: string, shape: number[]): boolean {
  return shape.length >= 2 && !name.includes('layernorm') && !name.includes('layer_norm');
}

export class AdamW {
  readonly options: AdamWOptions;
  /** Number of updates applied so far. */
  step = 0;
  /** The moments (ops/adamw.ts: a kernel may keep them in storage of its own between steps). */
  private readonly state = new AdamWState();
  /** Dynamic loss scaling of the gradients it is given (useLossScale), or null. */
  lossScale: LossScale | null = null;

  constructor(options: Partial<AdamWOptions> = {}) {
    this.options = { ...DEFAULT_ADAMW, ...options };
  }

  /** The parameters that have a gradient, in the parameters' order. */
  private entries(params: Map<string, tf.Variable>, grads: Record<string, tf.Tensor>): AdamWEntry[] {
    const out: AdamWEntry[] = [];
    for (const [name, param] of params) {
      const grad = grads[name];
      if (grad) out.push({ name, param, grad, decays: decays(name, param.shape) });
    }
    return out;
  }

  /** Applies one update to `params` (name → variable) with `grads` (name → gradient) at learning rate lr. */
  apply(params: Map<string, tf.Variable>, grads: Record<string, tf.Tensor>, lr: number): void {
    this.step += 1;
    adamwUpdate(this.state, this.entries(params, grads), { ...this.options, lr, step: this.step });
  }

  /**
   * Clips `grads` to a global L2 norm of at most maxNorm and applies one update; returns the norm
   * before clipping. Backends run this as one operation (ops/adamw.ts): on webgpu a few kernels
   * with no read-back, on tensorflow one ResourceApplyAdam per parameter.
   */
  applyClipped(
    params: Map<string, tf.Variable>,
    grads: Record<string, tf.Tensor>,
    lr: number,
    maxNorm: number,
  ): tf.Scalar {
    return this.applyStep(params, grads, this.nextStep(lr, maxNorm));
  }

  /** Counts one more update and returns its numbers (for applyStep; a training step states them up front). */
  nextStep(lr: number, maxNorm: number): AdamWStep {
    this.step += 1;
    return { ...this.options, lr, step: this.step, maxNorm };
  }

  /**
   * Clips and applies the update whose numbers nextStep gave; returns the norm before clipping. With
   * a loss scale the gradients are those of the scaled loss: they are unscaled first, and a step
   * that overflowed is skipped (ops/adamw.ts's lossScaledAdamW).
   */
  applyStep(params: Map<string, tf.Variable>, grads: Record<string, tf.Tensor>, s: AdamWStep): tf.Scalar {
    const entries = this.entries(params, grads);
    return this.lossScale
      ? lossScaledAdamW(this.state, entries, s, this.lossScale)
      : clippedAdamW(this.state, entries, s);
  }

  /** Turns on dynamic loss scaling (the gradients applyStep gets are then those of lossScale.scaleLoss's loss). */
  useLossScale(options: Partial<LossScaleOptions> = {}): LossScale {
    this.lossScale?.dispose();
    this.lossScale = new LossScale(options);
    return this.lossScale;
  }

  /** The moments held as variables, and the loss scale's (a training step's state; moments appear with the first update). */
  stateTensors(): tf.Tensor[] {
    return [...this.state.variables(), ...(this.lossScale ? [this.lossScale.scale, this.lossScale.counters] : [])];
  }

  /** State as host tensors (for a checkpoint): `m.NAME`, `v.NAME`, `step`, and `loss_scale` with loss scaling. */
  async stateToHost(): Promise<Map<string, HostTensor>> {
    // Everything as of this call (host.ts): the step now, and every read-back started before the first await.
    const step = this.step;
    const [out, scale] = await Promise.all([this.state.toHost(), this.lossScale?.toHost()]);
    out.set('step', { dtype: 'int32', shape: [1], data: Int32Array.of(step) });
    if (scale) out.set(LOSS_SCALE_KEY, scale);
    return out;
  }

  /** Restores stateToHost's state. A saved loss scale is taken when loss scaling is on, else ignored (it only matters to f16 gradients). */
  loadState(state: Map<string, HostTensor>): void {
    this.state.dispose();
    for (const [key, t] of state) {
      if (key === 'step') {
        this.step = t.data[0];
        continue;
      }
      if (key === LOSS_SCALE_KEY) {
        this.lossScale?.load(t);
        continue;
      }
      const dot = key.indexOf('.');
      const prefix = key.slice(0, dot);
      if (prefix !== 'm' && prefix !== 'v') throw new Error(`optimiser state has an unknown entry "${key}"`);
      this.state.load(prefix, key.slice(dot + 1), t);
    }
  }

  dispose(): void {
    this.state.dispose();
    this.lossScale?.dispose();
    this.lossScale = null;
  }
}

/** The loss scale's entry in the optimiser state. */
const LOSS_SCALE_KEY = 'loss_scale';
