/**
 * One AdamW update (decoupled weight decay, Loshchilov & Hutter) with global gradient-norm
 * clipping, and the optimiser state it updates. optim.ts's AdamW holds the hyperparameters, the
 * step count and the schedule's learning rate; this is the arithmetic.
 */
import * as tf from '../tfjs.js';

import { readAllToHost } from '../host.js';
import type { HostTensor } from '../safetensors.js';
import { defineOperation } from './registry.js';

/** One parameter's part in an update. */
export interface AdamWEntry {
  name: string;
  param: tf.Variable;
  grad: tf.Tensor;
  /** Whether weight decay applies (optim.ts's decays()). */
  decays: boolean;
}

export interface AdamWStep {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** The step being taken, 1-based (for the bias corrections). */
  step: number;
  /** Clip the gradients to this global L2 norm. */
  maxNorm: number;
}

/**
 * Moments a kernel keeps in storage of its own (the tensorflow backend's resource variables)
 * instead of the state's variables.
 */
export interface HeldMoments {
  /** Both moments of every parameter held, read out (the caller disposes them). */
  moments(): Map<string, { m: tf.Tensor; v: tf.Tensor }>;
  dispose(): void;
}

/**
 * AdamW's first and second moments per parameter, as tf.Variables by parameter name. A kernel may
 * move them into storage of its own (`hold`); whoever next asks for the variables (`moments`),
 * a checkpoint (`toHost`) included, gets them back first, so every path continues from the same
 * state.
 */
export class AdamWState {
  private readonly m = new Map<string, tf.Variable>();
  private readonly v = new Map<string, tf.Variable>();
  private held: { key: string; moments: HeldMoments } | null = null;

  /** The moments of `name` as variables (zeros shaped like `like` at first), taking back any a kernel holds. */
  moments(name: string, like: tf.Tensor): { m: tf.Variable; v: tf.Variable } {
    this.release();
    return { m: slot(this.m, name, like), v: slot(this.v, name, like) };
  }

  /**
   * The moments a kernel keeps under `key`, made by `make` if it holds none under that key (any
   * held under another key are taken back first). The kernel seeds them with `take`.
   */
  hold<T extends HeldMoments>(key: string, make: () => T): T {
    if (this.held?.key === key) return this.held.moments as T;
    this.release();
    const moments = make();
    this.held = { key, moments };
    return moments;
  }

  /** Removes the moments of `name` from the variables and hands them to a kernel that holds its own (it disposes them). */
  take(name: string): { m?: tf.Tensor; v?: tf.Tensor } {
    const m = this.m.get(name);
    const v = this.v.get(name);
    this.m.delete(name);
    this.v.delete(name);
    return { m, v };
  }

  /** Moves moments a kernel holds back into the variables. */
  release(): void {
    if (!this.held) return;
    for (const [name, { m, v }] of this.held.moments.moments()) {
      this.m.set(name, tf.variable(m, false));
      this.v.set(name, tf.variable(v, false));
      tf.dispose([m, v]);
    }
    this.held.moments.dispose();
    this.held = null;
  }

  /** The moments held as variables, m then v of each parameter in the order they were made. */
  variables(): tf.Variable[] {
    return [...this.m.values(), ...this.v.values()];
  }

  /** Every moment as host tensors: `m.NAME` and `v.NAME`. */
  async toHost(): Promise<Map<string, HostTensor>> {
    const resident = this.held?.moments.moments() ?? new Map<string, { m: tf.Tensor; v: tf.Tensor }>();
    const all: Array<[string, tf.Tensor]> = [];
    for (const [prefix, map] of [
      ['m', this.m],
      ['v', this.v],
    ] as const) {
      for (const [name, t] of map) all.push([`${prefix}.${name}`, t]);
      for (const [name, mv] of resident) all.push([`${prefix}.${name}`, mv[prefix]]);
    }
    try {
      return await readAllToHost(all);
    } finally {
      for (const { m, v } of resident.values()) tf.dispose([m, v]);
    }
  }

  /** Sets one moment (`which` m or v) of parameter `name` from a checkpoint. */
  load(which: 'm' | 'v', name: string, t: HostTensor): void {
    const map = which === 'm' ? this.m : this.v;
    map.get(name)?.dispose();
    map.set(
      name,
      tf.tidy(() => tf.variable(tf.tensor(t.data, t.shape, 'float32'), false)),
    );
  }

  dispose(): void {
    this.held?.moments.dispose();
    this.held = null;
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
    this.m.clear();
    this.v.clear();
  }
}

function slot(map: Map<string, tf.Variable>, name: string, like: tf.Tensor): tf.Variable {
  let s = map.get(name);
  if (!s) {
    s = tf.tidy(() => tf.variable(tf.zerosLike(like), false));
    map.set(name, s);
  }
  return s;
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

/** AdamW's new moments and weight for one entry with its moments `m`, `v` (the caller assigns them). */
function adamwValues(
  { m, v }: { m: tf.Tensor; v: tf.Tensor },
  { param: p, grad: g, decays }: AdamWEntry,
  s: Omit<AdamWStep, 'maxNorm'>,
): { p: tf.Tensor; m: tf.Tensor; v: tf.Tensor } {
  const { lr, beta1, beta2, eps, weightDecay, step } = s;
  const mNew = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
  const vNew = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
  const update = tf.div(tf.div(mNew, 1 - beta1 ** step), tf.add(tf.sqrt(tf.div(vNew, 1 - beta2 ** step)), eps));
  const decayed = decays && weightDecay > 0 ? tf.mul(p, 1 - lr * weightDecay) : p;
  return { p: tf.sub(decayed, tf.mul(update, lr)), m: mNew, v: vNew };
}

/** One AdamW update of each entry with its gradient as given (no clipping). */
export function adamwUpdate(state: AdamWState, entries: AdamWEntry[], s: Omit<AdamWStep, 'maxNorm'>): void {
  for (const e of entries) {
    tf.tidy(() => {
      const { m, v } = state.moments(e.name, e.param);
      const next = adamwValues({ m, v }, e, s);
      m.assign(next.m);
      v.assign(next.v);
      e.param.assign(next.p);
    });
  }
}

/** Clips the entries' gradients to a global L2 norm of at most maxNorm and applies one AdamW update; returns the norm before clipping. */
export const clippedAdamW = defineOperation(
  'clippedAdamW',
  (state: AdamWState, entries: AdamWEntry[], s: AdamWStep): tf.Scalar =>
    tf.tidy(() => {
      const { grads, norm } = clipByGlobalNorm(Object.fromEntries(entries.map((e) => [e.name, e.grad])), s.maxNorm);
      adamwUpdate(
        state,
        entries.map((e) => ({ ...e, grad: grads[e.name] })),
        s,
      );
      return norm;
    }),
);

// ---------------------------------------------------------------------------------------------
// Dynamic loss scaling

export interface LossScaleOptions {
  /** The first scale (2^16, as PyTorch's GradScaler). */
  initScale: number;
  /** The scale is multiplied by this after `growthInterval` steps in a row without an overflow. */
  growthFactor: number;
  /** ... and by this on an overflow, whose step is skipped. */
  backoffFactor: number;
  growthInterval: number;
}

export const DEFAULT_LOSS_SCALE: LossScaleOptions = {
  initScale: 2 ** 16,
  growthFactor: 2,
  backoffFactor: 0.5,
  growthInterval: 2000,
};

/** The options with defaults filled in; an error names the field and value that are wrong. */
export function lossScaleOptions(o: Partial<LossScaleOptions> = {}): LossScaleOptions {
  const r = { ...DEFAULT_LOSS_SCALE, ...o };
  const bad = (field: keyof LossScaleOptions, want: string) =>
    new Error(`loss scale: ${field} must be ${want}, got ${JSON.stringify(r[field])}`);
  if (!(Number.isFinite(r.initScale) && r.initScale > 0)) throw bad('initScale', 'a positive number');
  if (!(Number.isFinite(r.growthFactor) && r.growthFactor > 1)) throw bad('growthFactor', 'a number above 1');
  if (!(r.backoffFactor > 0 && r.backoffFactor < 1)) throw bad('backoffFactor', 'between 0 and 1');
  // The device counts clean steps in an f32, exact to 2^24.
  if (!(Number.isInteger(r.growthInterval) && r.growthInterval >= 1 && r.growthInterval <= 2 ** 24))
    throw bad('growthInterval', 'a whole number from 1 to 2^24');
  return r;
}

/**
 * Dynamic loss scaling, as in mixed-precision training with f16 gradients (and PyTorch's
 * GradScaler): the loss is multiplied by the scale before the backward pass, so small gradients
 * survive f16; the optimiser divides the gradients by it again. A step whose gradients overflowed
 * (an inf or NaN anywhere, which makes their norm non-finite) is skipped — weights and moments stay
 * as they were — and the scale is multiplied by backoffFactor; after growthInterval clean steps in a
 * row it grows by growthFactor. Everything stays on the device (no read-back per step); the state
 * goes into checkpoints with the optimiser's, so a resumed run continues exactly.
 *
 * A skipped step still counts for the learning-rate schedule and AdamW's bias correction (the step
 * numbers are stated before the step runs).
 */
export class LossScale {
  readonly options: LossScaleOptions;
  /** The scale, a scalar. */
  readonly scale: tf.Variable;
  /** [clean steps since the scale last changed, steps skipped so far]. */
  readonly counters: tf.Variable;

  constructor(options: Partial<LossScaleOptions> = {}) {
    this.options = lossScaleOptions(options);
    this.scale = tf.variable(tf.scalar(this.options.initScale), false);
    this.counters = tf.variable(tf.tensor1d([0, 0]), false);
  }

  /** The loss to differentiate: loss × scale. */
  scaleLoss(loss: tf.Scalar): tf.Scalar {
    return tf.mul(loss, this.scale);
  }

  /** The scale and counters after a step whose gradients were finite (`finite`, a bool scalar) or not, in tfjs ops. */
  update(finite: tf.Scalar): void {
    tf.tidy(() => {
      const { growthFactor, backoffFactor, growthInterval } = this.options;
      const [clean, skipped] = tf.unstack(this.counters) as [tf.Scalar, tf.Scalar];
      const nextClean = tf.where(finite, tf.add(clean, 1), tf.scalar(0));
      const grow = tf.greaterEqual(nextClean, growthInterval);
      const scale = tf.where(
        finite,
        tf.where(grow, tf.mul(this.scale, growthFactor), this.scale),
        tf.mul(this.scale, backoffFactor),
      );
      this.scale.assign(scale as tf.Scalar);
      this.counters.assign(
        tf.stack([tf.where(grow, tf.scalar(0), nextClean), tf.add(skipped, tf.sub(1, tf.cast(finite, 'float32')))]),
      );
    });
  }

  /** The state for a checkpoint: [scale, clean steps, skipped steps]. */
  async toHost(): Promise<HostTensor> {
    const [scale, counters] = await Promise.all([this.scale.data(), this.counters.data()]);
    return { dtype: 'float32', shape: [3], data: Float32Array.of(scale[0], counters[0], counters[1]) };
  }

  /** Restores the state toHost saved. */
  load(t: HostTensor): void {
    if (t.shape.length !== 1 || t.shape[0] !== 3)
      throw new Error(`loss scale state: expected shape [3], got [${t.shape.join(', ')}]`);
    const [scale, clean, skipped] = t.data;
    if (!(scale > 0 && Number.isFinite(scale)))
      throw new Error(`loss scale state: the scale must be a positive number, got ${scale}`);
    this.scale.assign(tf.scalar(scale));
    this.counters.assign(tf.tensor1d([clean, skipped]));
  }

  /** The scale and the skipped-step count, read back (reports). */
  async read(): Promise<{ scale: number; skippedSteps: number }> {
    const [scale, counters] = await Promise.all([this.scale.data(), this.counters.data()]);
    return { scale: scale[0], skippedSteps: counters[1] };
  }

  dispose(): void {
    this.scale.dispose();
    this.counters.dispose();
  }
}

/**
 * clippedAdamW for gradients of a scaled loss: the gradients are divided by the scale, their norm
 * taken, and the update applied only when it is finite; then the scale is updated (LossScale).
 * Returns the norm of the unscaled gradients before clipping (not finite on a skipped step).
 */
export const lossScaledAdamW = defineOperation(
  'lossScaledAdamW',
  (state: AdamWState, entries: AdamWEntry[], s: AdamWStep, lossScale: LossScale): tf.Scalar =>
    tf.tidy(() => {
      const inverse = tf.div(1, lossScale.scale);
      const { grads, norm } = clipByGlobalNorm(
        Object.fromEntries(entries.map((e) => [e.name, tf.mul(e.grad, inverse)])),
        s.maxNorm,
      );
      const finite = tf.isFinite(norm) as tf.Scalar;
      for (const e of entries) {
        tf.tidy(() => {
          const { m, v } = state.moments(e.name, e.param);
          const next = adamwValues({ m, v }, { ...e, grad: grads[e.name] }, s);
          // On an overflow the values stay exactly as they were.
          m.assign(tf.where(finite, next.m, m));
          v.assign(tf.where(finite, next.v, v));
          e.param.assign(tf.where(finite, next.p, e.param));
        });
      }
      lossScale.update(finite);
      return norm;
    }),
);
