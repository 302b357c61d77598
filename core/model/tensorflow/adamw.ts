/**
 * AdamW with global-norm clipping on the `tensorflow` backend. Each parameter (or a stack of
 * small same-shaped ones) and its two moments live in TensorFlow resource variables, and one
 * ResourceApplyAdam updates all three in a single fused pass, where the reference runs 15
 * element-wise ops per parameter. The global norm is one L2Loss per variable and one AddN. Same
 * arithmetic as the reference (../ops/adamw.ts) up to float rounding:
 *   - TensorFlow's Adam computes var −= lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε̂); with ε̂ = ε·√(1−β₂ᵗ)
 *     that is lr · m̂ / (√v̂ + ε), the reference's update;
 *   - decoupled weight decay var −= lr·λ·var is ResourceApplyGradientDescent with the parameter as
 *     its own gradient, before the Adam step (both read the same var, as the reference's do).
 * The model's tf.Variables hold what ReadVariableOp returns after each step (unstacked for a
 * group); a parameter assigned from elsewhere (a checkpoint, model.assign) is copied back into its
 * resource before the next step. The resources hold the optimiser's moments between steps
 * (AdamWState.hold); a step on another path, or a checkpoint, reads them back.
 */
import * as tf from '../tfjs.js';

import type { AdamWEntry, AdamWState, AdamWStep, HeldMoments } from '../ops/index.js';
import { add, boolAttr, intAttr, mul, op, opN, scalar, shapeAttr, stringAttr, typeAttr, unary } from './native.js';

/** TensorFlow's ResourceHandle::ANONYMOUS_NAME: a variable no one else can look up, freed with its last handle. */
const ANONYMOUS = 'cd2c89b7-88b7-44c8-ad83-06c2a9158347';

function newVariable(shape: number[]): tf.Tensor {
  return tf.keep(
    op(
      'VarHandleOp',
      [stringAttr('container', ''), stringAttr('shared_name', ANONYMOUS), typeAttr('dtype'), shapeAttr('shape', shape)],
      [],
    ),
  );
}

function assign(handle: tf.Tensor, value: tf.Tensor): void {
  opN('AssignVariableOp', [typeAttr('dtype')], [handle, value], 0);
}

function read(handle: tf.Tensor): tf.Tensor {
  return op('ReadVariableOp', [typeAttr('dtype')], [handle]);
}

/**
 * Parameters of one shape, decay and size up to this many elements share one set of variables
 * (stacked on a new first axis): one Pack of their gradients and one Unpack of their values stand
 * in for about four ops per parameter (~20 µs each), which pays while the parameter is small (a
 * copy of 64K floats takes about as long).
 */
const GROUP_MAX_ELEMENTS = 65536;

/** Resource variables of one parameter, or of a group of same-shaped small parameters stacked. */
interface Slot {
  names: string[];
  param: tf.Tensor;
  m: tf.Tensor;
  v: tf.Tensor;
  /** Per member, the data its tf.Variable held when the resource last matched it. */
  synced: Array<tf.DataId | null>;
}

interface ResourceAdamEntry extends AdamWEntry {
  /** Moments to start from when this parameter has no slot yet (loaded optimiser state), zeros if absent; the slot disposes them. */
  initial?: () => { m?: tf.Tensor; v?: tf.Tensor };
}

/**
 * The clipped AdamW operation on resource variables. The resources are made for one set of
 * parameters; a step with another set hands them back and starts new ones.
 */
export function resourceClipAdamW(state: AdamWState, entries: AdamWEntry[], s: AdamWStep): tf.Scalar {
  const names = entries
    .map((e) => e.name)
    .sort()
    .join('\n');
  const resources = state.hold(`tensorflow\n${names}`, () => new ResourceAdam());
  // Loaded (or earlier) moments seed the resources once; from then on the resources hold them.
  return resources.applyClipped(
    entries.map((e) => ({ ...e, initial: () => state.take(e.name) })),
    s,
  );
}

class ResourceAdam implements HeldMoments {
  private slots: Slot[] | null = null;

  /** Groups the parameters (first step) and makes their variables, seeded from loaded moments or zeros. */
  private makeSlots(entries: ResourceAdamEntry[]): Slot[] {
    const groups = new Map<string, ResourceAdamEntry[]>();
    entries.forEach((e, i) => {
      const size = e.param.size;
      const key = size <= GROUP_MAX_ELEMENTS ? `${e.param.shape.join('x')}:${e.decays}` : `#${i}`;
      groups.set(key, [...(groups.get(key) ?? []), e]);
    });
    return [...groups.values()].map((members) => {
      const shape = members.length === 1 ? members[0].param.shape : [members.length, ...members[0].param.shape];
      const slot: Slot = {
        names: members.map((e) => e.name),
        param: newVariable(shape),
        m: newVariable(shape),
        v: newVariable(shape),
        synced: members.map(() => null),
      };
      const inits = members.map((e) => e.initial?.() ?? {});
      tf.tidy(() => {
        for (const which of ['m', 'v'] as const) {
          const values = members.map((e, i) => inits[i][which] ?? tf.zeros(e.param.shape));
          assign(slot[which], stack(values));
        }
      });
      tf.dispose(inits.flatMap((t) => [t.m, t.v]).filter((t) => t !== undefined));
      return slot;
    });
  }

  /**
   * Clips the gradients to a global L2 norm of at most maxNorm and applies one AdamW step; returns
   * the norm before clipping. Every step must bring the parameters of the first.
   */
  applyClipped(entries: ResourceAdamEntry[], o: AdamWStep): tf.Scalar {
    const slots = (this.slots ??= this.makeSlots(entries));
    const byName = new Map(entries.map((e) => [e.name, e]));
    return tf.tidy(() => {
      const grads = slots.map((s) => stack(s.names.map((n) => byName.get(n)!.grad)));
      const halfSquares = grads.map((g) => unary('L2Loss', g));
      const sum = op('AddN', [typeAttr('T'), intAttr('N', halfSquares.length)], halfSquares);
      const norm = unary('Sqrt', mul(sum, scalar(2))) as tf.Scalar;
      const scale = op(
        'Minimum',
        [typeAttr('T')],
        [scalar(1), op('RealDiv', [typeAttr('T')], [scalar(o.maxNorm), add(norm, scalar(1e-6))])],
      );
      // Eager TensorFlow has finished by now, so reading one number costs nothing; a scale of
      // exactly 1 leaves the gradients as they are (multiplying by 1 would too).
      const clip = scale.dataSync()[0] !== 1;
      const bc2 = 1 - o.beta2 ** o.step;
      // Values that change every step are fresh tensors (the tidy frees them), not cached constants.
      const step = [
        tf.scalar(o.beta1 ** o.step),
        tf.scalar(o.beta2 ** o.step),
        tf.scalar(o.lr),
        scalar(o.beta1),
        scalar(o.beta2),
        tf.scalar(o.eps * Math.sqrt(bc2)),
      ];
      const decayRate = tf.scalar(o.lr * o.weightDecay);
      const adamAttrs = [typeAttr('T'), boolAttr('use_locking', false), boolAttr('use_nesterov', false)];
      const gdAttrs = [typeAttr('T'), boolAttr('use_locking', false)];
      slots.forEach((s, i) => {
        const members = s.names.map((n) => byName.get(n)!);
        const params = members.map((e) => e.param);
        if (params.some((p, j) => s.synced[j] !== p.dataId)) assign(s.param, stack(params));
        if (members[0].decays && o.weightDecay > 0)
          opN('ResourceApplyGradientDescent', gdAttrs, [s.param, decayRate, read(s.param)], 0);
        opN('ResourceApplyAdam', adamAttrs, [s.param, s.m, s.v, ...step, clip ? mul(grads[i], scale) : grads[i]], 0);
        const values = unstack(read(s.param), params.length);
        params.forEach((p, j) => {
          p.assign(values[j]);
          s.synced[j] = p.dataId;
        });
      });
      return norm;
    });
  }

  /** Both moments of every parameter with a slot, read out (the caller disposes them). */
  moments(): Map<string, { m: tf.Tensor; v: tf.Tensor }> {
    const out = new Map<string, { m: tf.Tensor; v: tf.Tensor }>();
    for (const s of this.slots ?? []) {
      const [m, v] = [s.m, s.v].map((h) => tf.tidy(() => unstack(read(h), s.names.length)));
      s.names.forEach((name, j) => out.set(name, { m: m[j], v: v[j] }));
    }
    return out;
  }

  dispose(): void {
    for (const s of this.slots ?? []) tf.dispose([s.param, s.m, s.v]);
    this.slots = null;
  }
}

/** Members stacked on a new first axis (one member: itself). */
function stack(xs: tf.Tensor[]): tf.Tensor {
  return xs.length === 1 ? xs[0] : op('Pack', [typeAttr('T'), intAttr('N', xs.length), intAttr('axis', 0)], xs);
}

/** The inverse of stack for `n` members. */
function unstack(x: tf.Tensor, n: number): tf.Tensor[] {
  return n === 1 ? [x] : opN('Unpack', [typeAttr('T'), intAttr('num', n), intAttr('axis', 0)], [x], n);
}
