/**
 * One AdamW update (decoupled weight decay, Loshchilov & Hutter) with global gradient-norm
 * clipping, and the optimiser state it updates. optim.ts's AdamW holds the hyperparameters, the
 * step count and the schedule's learning rate; this is the arithmetic.
 */
import * as tf from '../tfjs.js';

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
    const out = new Map<string, HostTensor>();
    const resident = this.held?.moments.moments() ?? new Map<string, { m: tf.Tensor; v: tf.Tensor }>();
    for (const [prefix, map] of [
      ['m', this.m],
      ['v', this.v],
    ] as const) {
      const all: Array<[string, tf.Tensor]> = [
        ...map,
        ...[...resident].map(([name, mv]) => [name, mv[prefix]] as [string, tf.Tensor]),
      ];
      for (const [name, t] of all) {
        out.set(`${prefix}.${name}`, {
          dtype: 'float32',
          shape: t.shape.slice(),
          data: (await t.data()) as Float32Array,
        });
      }
    }
    for (const { m, v } of resident.values()) tf.dispose([m, v]);
    return out;
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

/** One AdamW update of each entry with its gradient as given (no clipping). */
export function adamwUpdate(state: AdamWState, entries: AdamWEntry[], s: Omit<AdamWStep, 'maxNorm'>): void {
  const { lr, beta1, beta2, eps, weightDecay, step } = s;
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  for (const { name, param: p, grad: g, decays } of entries) {
    const { m, v } = state.moments(name, p);
    tf.tidy(() => {
      const mNew = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
      const vNew = tf.add(tf.mul(v, beta2), tf.mul(tf.square(g), 1 - beta2));
      m.assign(mNew);
      v.assign(vNew);
      const update = tf.div(tf.div(mNew, bc1), tf.add(tf.sqrt(tf.div(vNew, bc2)), eps));
      const decayed = decays && weightDecay > 0 ? tf.mul(p, 1 - lr * weightDecay) : p;
      p.assign(tf.sub(decayed, tf.mul(update, lr)));
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
