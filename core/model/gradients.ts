/**
 * Gradients of a loss with respect to variables, as `tf.variableGrads` computes them (the same tape,
 * the same gradient functions in the same order, so the same values), holding far less memory during
 * the backward pass. tfjs's own backward keeps every intermediate gradient and every tensor saved for
 * the backward until the whole pass is over, so at its end it holds all the forward's activations and
 * all their gradients at once. Here, as in PyTorch's autograd, a node's saved tensors and its outputs'
 * gradients are freed as soon as that node's backward has run: by the end, only the parameters'
 * gradients are left.
 *
 * It drives tfjs-core's tape (4.x) through the engine's members that its typings mark private
 * (`startTape`, `endTape`, `scopedRun`, `state.activeTape`); a test compares its gradients with
 * `tf.variableGrads` on every backend that runs in CI, so a tfjs upgrade that changes them fails there.
 */
import * as tf from './tfjs.js';

/** A node of tfjs-core's tape (tape.ts). */
interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  saved?: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
}

/** The engine members the backward needs (engine.ts). */
interface EngineInternals {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  startTape(): void;
  endTape(): void;
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  tidy<T extends tf.TensorContainer>(name: string, f: () => T): T;
}

/**
 * The tape's nodes on a path from one of `xs` to `y`, in tape order, each with only the inputs that
 * come from `xs` (tfjs-core's getFilteredNodesXToY, which the package does not export).
 */
function nodesFromXsToY(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromXs = new Set(xs.map((x) => x.id));
  const nodesFromXs = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((input) => fromXs.has(input.id))) {
      for (const output of node.outputs) fromXs.add(output.id);
      nodesFromXs.add(node.id);
    }
  }
  const leadsToY = new Set([y.id]);
  const nodesToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    if (!node.outputs.some((output) => leadsToY.has(output.id))) continue;
    const inputs = Object.values(node.inputs);
    for (const input of inputs) leadsToY.add(input.id);
    if (inputs.length > 0) nodesToY.add(node.id);
  }
  return tape
    .filter((node) => nodesFromXs.has(node.id) && nodesToY.has(node.id))
    .map((node) => ({
      ...node,
      inputs: Object.fromEntries(Object.entries(node.inputs).filter(([, input]) => fromXs.has(input.id))),
    }));
}

/**
 * Gradients still to be consumed, by the id of the tensor they are the gradient of. One tensor may be
 * the gradient of several (a gradient function may hand its dy on unchanged), so it is disposed when
 * the last of them lets go of it.
 */
class PendingGradients {
  private readonly byId = new Map<number, tf.Tensor>();
  private readonly holders = new Map<tf.Tensor, number>();

  get(id: number): tf.Tensor | undefined {
    return this.byId.get(id);
  }

  set(id: number, gradient: tf.Tensor): void {
    const previous = this.byId.get(id);
    this.byId.set(id, gradient);
    this.holders.set(gradient, (this.holders.get(gradient) ?? 0) + 1);
    if (previous) this.letGo(previous);
  }

  /** Forgets the gradient of `id`, disposing it if nothing else holds it. */
  drop(id: number): void {
    const gradient = this.byId.get(id);
    if (!gradient) return;
    this.byId.delete(id);
    this.letGo(gradient);
  }

  /** Disposes `t` unless some tensor's gradient is `t`. */
  disposeUnheld(t: tf.Tensor): void {
    if (!this.holders.has(t)) t.dispose();
  }

  private letGo(gradient: tf.Tensor): void {
    const n = this.holders.get(gradient)! - 1;
    if (n > 0) {
      this.holders.set(gradient, n);
      return;
    }
    this.holders.delete(gradient);
    gradient.dispose();
  }
}

/**
 * The loss `f()` and its gradients with respect to `vars` (by variable name, as `tf.variableGrads`
 * returns them; a variable the loss does not depend on gets none). Inside another gradient
 * computation (higher-order gradients) it is `tf.variableGrads` itself, which keeps what the outer
 * one may need.
 */
export function variableGradients(
  f: () => tf.Scalar,
  vars: tf.Variable[],
): { value: tf.Scalar; grads: Record<string, tf.Tensor> } {
  const engine = tf.engine() as unknown as EngineInternals;
  if (engine.state.gradientDepth > 0) return tf.variableGrads(f, vars);
  const xs = vars.filter((v) => v.trainable);
  if (xs.length === 0) throw new Error('variableGradients: none of the variables is trainable');
  const y = engine.scopedRun(
    () => engine.startTape(),
    () => engine.endTape(),
    () => engine.tidy('forward', f),
  );
  const tape = engine.state.activeTape!;
  const endTape = () => {
    for (const node of tape) for (const t of node.saved ?? []) t.dispose();
    engine.state.activeTape = null;
  };
  const isTensor = (y as unknown) instanceof tf.Tensor;
  const path = isTensor ? nodesFromXsToY(tape, xs, y) : [];
  const problem = !isTensor
    ? `the loss must be a scalar tensor, got ${typeof y}`
    : y.rank !== 0
      ? `the loss must be a scalar tensor, got shape [${y.shape}]`
      : path.length === 0
        ? 'the loss depends on none of the variables (or was computed outside f)'
        : null;
  if (problem) {
    endTape();
    tf.dispose(y);
    throw new Error(`variableGradients: ${problem}`);
  }
  try {
    return backward(engine, y, xs, path);
  } finally {
    endTape();
  }
}

/** Runs the tape's `path` backward from the loss `y`, returning `y` and the gradients of `xs` by name. */
function backward(
  engine: EngineInternals,
  y: tf.Scalar,
  xs: tf.Variable[],
  path: TapeNode[],
): { value: tf.Scalar; grads: Record<string, tf.Tensor> } {
  return engine.tidy('backward', () => {
    const pending = new PendingGradients();
    pending.set(y.id, tf.onesLike(y));
    for (let i = path.length - 1; i >= 0; i--) {
      const node = path[i];
      if (!node.gradient)
        throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
      const inputGradients = node.gradient(node.outputs.map((o) => pending.get(o.id) ?? null));
      for (const [name, x] of Object.entries(node.inputs)) {
        const gradientOf = inputGradients[name];
        if (!gradientOf) throw new Error(`Cannot backprop through input ${name} of ${node.kernelName}.`);
        const dx = tf.tidy(gradientOf);
        if (dx.dtype !== 'float32' || !tf.util.arraysEqual(dx.shape, x.shape))
          throw new Error(
            `the gradient of ${node.kernelName}'s input ${name} is ${dx.dtype} [${dx.shape}], expected float32 [${x.shape}]`,
          );
        const sum = pending.get(x.id);
        if (!sum) pending.set(x.id, dx);
        else {
          pending.set(x.id, tf.add(sum, dx));
          pending.disposeUnheld(dx);
        }
      }
      // Every consumer of this node's outputs came later on the tape and has run its backward.
      for (const output of node.outputs) pending.drop(output.id);
      for (const t of node.saved ?? []) pending.disposeUnheld(t);
    }
    const grads: Record<string, tf.Tensor> = {};
    for (const v of xs) {
      const g = pending.get(v.id);
      if (g) grads[v.name] = g;
    }
    return { value: y, grads };
  });
}
