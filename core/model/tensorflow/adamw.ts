/**
 * AdamW with global-norm clipping on the `tensorflow` backend. Each parameter and its two moments
 * live in TensorFlow resource variables, and one ResourceApplyAdam updates all three in a single
 * fused pass, where optim.ts's AdamW.apply runs 15 element-wise ops per parameter. The global norm
 * is one L2Loss per gradient and one AddN. Same arithmetic as clipByGlobalNorm + AdamW.apply up to
 * float rounding:
 *   - TensorFlow's Adam computes var −= lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε̂); with ε̂ = ε·√(1−β₂ᵗ)
 *     that is lr · m̂ / (√v̂ + ε), AdamW.apply's update;
 *   - decoupled weight decay var −= lr·λ·var is ResourceApplyGradientDescent with the parameter as
 *     its own gradient, before the Adam step (both read the same var, as AdamW.apply's do).
 * The model's tf.Variables hold what ReadVariableOp returns after each step; a parameter assigned
 * from elsewhere (a checkpoint, model.assign) is copied back into its resource before the next step.
 */
import * as tf from '../tfjs.js';

import { add, boolAttr, intAttr, mul, op, opN, scalar, shapeAttr, stringAttr, typeAttr, unary } from './native.js';

/** TensorFlow's ResourceHandle::ANONYMOUS_NAME: a variable no one else can look up, freed with its last handle. */
const ANONYMOUS = 'cd2c89b7-88b7-44c8-ad83-06c2a9158347';

function newVariable(shape: number[]): tf.Tensor {
  return tf.keep(op('VarHandleOp', [stringAttr('container', ''), stringAttr('shared_name', ANONYMOUS), typeAttr('dtype'), shapeAttr('shape', shape)], []));
}

function assign(handle: tf.Tensor, value: tf.Tensor): void {
  opN('AssignVariableOp', [typeAttr('dtype')], [handle, value], 0);
}

function read(handle: tf.Tensor): tf.Tensor {
  return op('ReadVariableOp', [typeAttr('dtype')], [handle]);
}

interface Slot {
  param: tf.Tensor;
  m: tf.Tensor;
  v: tf.Tensor;
  /** The data the model's variable held when the resource last matched it. */
  synced: tf.DataId | null;
}

export interface ResourceAdamEntry {
  name: string;
  param: tf.Variable;
  grad: tf.Tensor;
  /** Whether weight decay applies (optim.ts's decays()). */
  decays: boolean;
  /** Moments to start from when this parameter has no slot yet (loaded optimiser state), zeros if absent; the slot disposes them. */
  initial?: () => { m?: tf.Tensor; v?: tf.Tensor };
}

export interface ResourceAdamOptions {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** The step being taken, 1-based. */
  step: number;
  maxNorm: number;
}

export class ResourceAdam {
  private readonly slots = new Map<string, Slot>();

  private slot(e: ResourceAdamEntry): Slot {
    let s = this.slots.get(e.name);
    if (!s) {
      const shape = e.param.shape;
      s = { param: newVariable(shape), m: newVariable(shape), v: newVariable(shape), synced: null };
      const init = e.initial?.() ?? {};
      tf.tidy(() => {
        assign(s!.m, init.m ?? tf.zeros(shape));
        assign(s!.v, init.v ?? tf.zeros(shape));
      });
      tf.dispose([init.m, init.v].filter((t) => t !== undefined));
      this.slots.set(e.name, s);
    }
    return s;
  }

  /** Clips the gradients to a global L2 norm of at most maxNorm and applies one AdamW step; returns the norm before clipping. */
  applyClipped(entries: ResourceAdamEntry[], o: ResourceAdamOptions): tf.Scalar {
    return tf.tidy(() => {
      const halfSquares = entries.map((e) => unary('L2Loss', e.grad));
      const sum = op('AddN', [typeAttr('T'), intAttr('N', halfSquares.length)], halfSquares);
      const norm = unary('Sqrt', mul(sum, scalar(2))) as tf.Scalar;
      const scale = op('Minimum', [typeAttr('T')], [scalar(1), op('RealDiv', [typeAttr('T')], [scalar(o.maxNorm), add(norm, scalar(1e-6))])]);
      // Eager TensorFlow has finished by now, so reading one number costs nothing; a scale of
      // exactly 1 leaves the gradients as they are (multiplying by 1 would too).
      const clip = scale.dataSync()[0] !== 1;
      const bc2 = 1 - o.beta2 ** o.step;
      // Values that change every step are fresh tensors (the tidy frees them), not cached constants.
      const step = [tf.scalar(o.beta1 ** o.step), tf.scalar(o.beta2 ** o.step), tf.scalar(o.lr), scalar(o.beta1), scalar(o.beta2), tf.scalar(o.eps * Math.sqrt(bc2))];
      const decayRate = tf.scalar(o.lr * o.weightDecay);
      const adamAttrs = [typeAttr('T'), boolAttr('use_locking', false), boolAttr('use_nesterov', false)];
      const gdAttrs = [typeAttr('T'), boolAttr('use_locking', false)];
      for (const e of entries) {
        const s = this.slot(e);
        if (s.synced !== e.param.dataId) assign(s.param, e.param);
        if (e.decays && o.weightDecay > 0) opN('ResourceApplyGradientDescent', gdAttrs, [s.param, decayRate, e.param], 0);
        const g = clip ? mul(e.grad, scale) : e.grad;
        opN('ResourceApplyAdam', adamAttrs, [s.param, s.m, s.v, ...step, g], 0);
        e.param.assign(read(s.param));
        s.synced = e.param.dataId;
      }
      return norm;
    });
  }

  /** Both moments of every parameter with a slot, read out (the caller disposes them). */
  moments(): Map<string, { m: tf.Tensor; v: tf.Tensor }> {
    const out = new Map<string, { m: tf.Tensor; v: tf.Tensor }>();
    for (const [name, s] of this.slots) out.set(name, { m: read(s.m), v: read(s.v) });
    return out;
  }

  dispose(): void {
    for (const s of this.slots.values()) tf.dispose([s.param, s.m, s.v]);
    this.slots.clear();
  }
}
