/**
 * Whole training steps as CUDA graphs, and the teacher service's forward passes (ops/step.ts
 * RepeatedPass: a step without numbers or updates). A step is a body (the forward, backward and
 * optimiser update, written in tfjs as on every backend) with its per-step inputs (tokens, targets, a
 * teacher's view) and per-step numbers (the optimiser's learning rate and bias corrections) passed in
 * explicitly.
 * For each distinct shape the first steps run eagerly (every kernel loaded, every product planned,
 * the allocator settled); then one step is captured from the stream into a graph, and from there on
 * a step is: copy the inputs and numbers into the graph's fixed buffers, launch the graph, copy its
 * outputs out. The host's cost of a step drops from recording hundreds of launches to a few calls.
 *
 * What makes a replay exact: every buffer the body reads or writes is at the same address each step
 * (the weights and optimiser state are updated in place; the body's intermediates come from memory
 * private to the graph, laid out from a trace of the eager step before the capture: allocator.ts),
 * and nothing the body depends on is baked into the graph except constants. The body must not read
 * tensors back or upload anything but constants that are one 32-bit value, or one repeated (a scalar,
 * a gradient's ones: captured as memsets), while it is captured; if it does, the capture is abandoned
 * for that shape (logged once) and its steps run eagerly. A step whose weights or optimiser state
 * moved (another model, a reassigned variable) gets a graph of its own.
 */
import * as tf from '../tfjs.js';

import { type RepeatedPass, ReplayShapes } from '../ops/step.js';
import type { AllocationPlan, Pool } from './allocator.js';
import type { PinnedBuffer } from './device.js';
import { bytesPer } from './storage.js';
import { toTensor } from './custom-op.js';
import { check } from './driver.js';
import type { CudaBackend } from './tfjs-backend.js';

/**
 * A step or pass to run from a graph: a replay shares its key and its inputs' shapes (a tensor input,
 * f32 or i32 storage, is copied on the device), and the state's addresses are part of the key.
 */
export interface GraphStep extends RepeatedPass {
  /** Per-step numbers the body's kernels read from the device (see `stepScalars`), if any. */
  scalars?: Float32Array;
}

/** Eager steps of a shape before its graph is captured. */
const WARMUP_STEPS = 2;
/**
 * Shapes kept at once (each graph holds its scratch memory); the least recently run goes first. A
 * trainer runs one shape, the teacher service one per batch size it is sent.
 */
const MAX_SHAPES = 8;
const CAPTURE_MODE_RELAXED = 2;
/** Pinned memory for a graph's constants (the optimiser's table: 64 bytes a parameter). */
const CONSTANT_BYTES = 1 << 20;

interface Graph {
  exec: unknown;
  graph: unknown;
  pool: Pool;
  /** Pinned memory holding the constants the graph copies in (device.ts writeConstant). */
  constants: PinnedBuffer;
  outputs: tf.Tensor[];
}

interface Shape {
  calls: number;
  inputs: tf.Tensor[];
  scalars?: tf.Tensor;
  stateKey: string;
  graph?: Graph;
  /** The traced step's memory layout, for the capture (allocator.ts). */
  plan?: AllocationPlan;
  /** Why this shape runs eagerly for good. */
  eager?: string;
}

/** The scalars of the step being run (their device address and values), for kernels that read them. */
let current: { ptr: number; values: Float32Array } | null = null;

/** The per-step numbers of the step under way on the cuda backend, or null outside one. */
export function stepScalars(): { ptr: number; values: Float32Array } | null {
  return current;
}

export class GraphRunner {
  private readonly shapes = new ReplayShapes<Shape>(MAX_SHAPES, (shape) => this.drop(shape));
  /** Steps replayed from a graph, and graphs captured, since the runner was made. */
  replays = 0;
  captures = 0;

  constructor(
    private readonly b: CudaBackend,
    private readonly log: (msg: string) => void = (m) => process.stderr.write(`${m}\n`),
  ) {}

  run(step: GraphStep): tf.Tensor[] {
    const d = this.b.device;
    const scalarCount = step.scalars?.length ?? 0;
    const key = `${step.key}|${step.inputs.map((i) => `${i.dtype}${i.shape.join('x')}`).join(',')}|${scalarCount}`;
    const stateKey = step.state.map((t) => this.b.operand(t).ptr).join(',');
    // Kept: a caller's tf.tidy must not take the graph's buffers.
    const shape = this.shapes.get(key, stateKey, () => ({
      calls: 0,
      inputs: step.inputs.map((i) =>
        tf.keep(
          toTensor(
            this.b.allocate(i.shape, i.dtype, i.data instanceof tf.Tensor ? this.b.storageOf(i.data) : undefined),
          ),
        ),
      ),
      scalars: step.scalars ? tf.keep(toTensor(this.b.allocate([scalarCount], 'float32'))) : undefined,
      stateKey,
    }));
    step.inputs.forEach((input, i) => {
      const dst = this.b.operand(shape.inputs[i]);
      if (input.data instanceof Float32Array || input.data instanceof Int32Array) d.write(dst.ptr, input.data);
      else {
        const src = this.b.operand(input.data);
        if (src.storage !== dst.storage)
          throw new Error(`a training step's input ${i} changed storage (${dst.storage} to ${src.storage})`);
        d.copy(dst.ptr, src.ptr, dst.size * bytesPer(dst.storage));
      }
    });
    if (shape.scalars && step.scalars) {
      const scalars = this.b.operand(shape.scalars);
      d.write(scalars.ptr, step.scalars);
      current = { ptr: scalars.ptr, values: step.scalars };
    }
    try {
      if (!shape.graph && !shape.eager && shape.calls >= WARMUP_STEPS) this.capture(shape, step);
      shape.calls++;
      if (!shape.graph && !shape.eager && shape.calls === WARMUP_STEPS) {
        // The step before the capture: its blocks' sizes and lifetimes lay out the graph's memory.
        d.allocator.beginTrace();
        try {
          return this.eager(step, shape.inputs);
        } finally {
          shape.plan = d.allocator.endTrace();
        }
      }
      if (!shape.graph) return this.eager(step, shape.inputs);
      check(d.libs, 'cuGraphLaunch', d.libs.fn.cuGraphLaunch(shape.graph.exec, d.stream));
      this.replays++;
      return shape.graph.outputs.map((o) => {
        const src = this.b.operand(o);
        const out = this.b.allocate(o.shape, o.dtype, src.storage);
        d.copy(this.b.operand(out).ptr, src.ptr, src.size * bytesPer(src.storage));
        return toTensor(out);
      });
    } finally {
      current = null;
    }
  }

  private eager(step: GraphStep, inputs: tf.Tensor[]): tf.Tensor[] {
    return tf.tidy(() => step.body(inputs));
  }

  /** Captures one step of `shape` into a graph; on failure the shape stays eager (and says why). */
  private capture(shape: Shape, step: GraphStep): void {
    const d = this.b.device;
    // The graph's scratch comes from a pool of its own: start from what the driver has free.
    d.synchronize();
    d.allocator.emptyCache();
    const pool = d.allocator.beginCapture(shape.plan);
    shape.plan = undefined;
    const constants = d.pinned(CONSTANT_BYTES);
    d.constantArena = { buffer: constants, used: 0 };
    check(d.libs, 'cuStreamBeginCapture_v2', d.libs.fn.cuStreamBeginCapture_v2(d.stream, CAPTURE_MODE_RELAXED));
    d.capturing = true;
    let outputs: tf.Tensor[] | undefined;
    let failure: unknown;
    try {
      outputs = tf.tidy(() => step.body(shape.inputs));
    } catch (e) {
      failure = e;
    }
    d.capturing = false;
    d.constantArena = null;
    const graph: [unknown] = [null];
    const ended = d.libs.fn.cuStreamEndCapture(d.stream, graph);
    d.allocator.endCapture();
    if (failure || ended !== 0) {
      if (outputs) for (const o of outputs) o.dispose();
      if (graph[0]) d.libs.fn.cuGraphDestroy(graph[0]);
      d.allocator.dissolve(pool);
      constants.free();
      const why = failure
        ? (failure as Error).message.split('\n')[0]
        : `cuStreamEndCapture: ${d.libs.statusName('cuStreamEndCapture', Number(ended))}`;
      shape.eager = why;
      this.log(`cuda: steps of this shape run without a CUDA graph: ${why}`);
      return;
    }
    const exec: [unknown] = [null];
    check(d.libs, 'cuGraphInstantiateWithFlags', d.libs.fn.cuGraphInstantiateWithFlags(exec, graph[0], 0));
    shape.graph = { exec: exec[0], graph: graph[0], pool, constants, outputs: outputs!.map((o) => tf.keep(o)) };
    this.captures++;
  }

  private drop(shape: Shape): void {
    const d = this.b.device;
    if (shape.graph) {
      d.synchronize();
      check(d.libs, 'cuGraphExecDestroy', d.libs.fn.cuGraphExecDestroy(shape.graph.exec));
      check(d.libs, 'cuGraphDestroy', d.libs.fn.cuGraphDestroy(shape.graph.graph));
      for (const o of shape.graph.outputs) o.dispose();
      d.allocator.dissolve(shape.graph.pool);
      shape.graph.constants.free();
    }
    for (const t of shape.inputs) t.dispose();
    shape.scalars?.dispose();
  }

  /** Destroys every graph and its buffers. */
  dispose(): void {
    this.shapes.clear();
  }
}
