/**
 * TensorFlow ops by name on the `tensorflow` backend (tfjs-node). tfjs-node runs each tfjs kernel
 * as one or more eager TensorFlow ops; its backend also runs any other TensorFlow op given its
 * name, attributes and inputs. The training ops in this folder use that to reach fused TensorFlow
 * kernels (SparseSoftmaxCrossEntropyWithLogits, ResourceApplyAdam, L2Loss, BiasAddGrad) and to
 * write gradients by hand with fewer ops than tfjs's autodiff: on a CPU each eager op costs
 * 10–40 µs before it touches any data, and a small model's step is hundreds of them.
 *
 * Tensors made here are ordinary tfjs tensors (tracked by tf.tidy), but the ops are not recorded
 * on tfjs's gradient tape: every differentiable op in this folder is a tf.customGrad.
 */
import * as tf from '../tfjs.js';

/** An op attribute as tfjs-node's binding takes it (TFEOpAttr). */
export interface OpAttr {
  name: string;
  type: number;
  value: boolean | number | string | number[];
}

interface Binding {
  TF_FLOAT: number;
  TF_INT32: number;
  TF_ATTR_STRING: number;
  TF_ATTR_INT: number;
  TF_ATTR_BOOL: number;
  TF_ATTR_TYPE: number;
  TF_ATTR_SHAPE: number;
}

/** The parts of tfjs-node's NodeJSKernelBackend used here (nodejs_kernel_backend.d.ts). */
interface NodeBackend {
  binding: Binding;
  executeSingleOutput(name: string, attrs: OpAttr[], inputs: tf.TensorInfo[]): tf.Tensor;
  executeMultipleOutputs(name: string, attrs: OpAttr[], inputs: tf.TensorInfo[], numOutputs: number): tf.Tensor[];
}

let enabledOverride: boolean | null = null;

/** Turns the TensorFlow-specific ops on or off for this process (null: back to the default, env OFFSHOOT_TF_KERNELS). */
export function setTensorflowKernels(on: boolean | null): void {
  enabledOverride = on;
}

/** Whether offshoot's TensorFlow ops run when tensorflow is the backend (default on; OFFSHOOT_TF_KERNELS=0 turns them off). */
export function tensorflowKernelsEnabled(): boolean {
  if (enabledOverride !== null) return enabledOverride;
  return process.env.OFFSHOOT_TF_KERNELS !== '0';
}

function nodeBackend(): NodeBackend {
  return tf.backend() as unknown as NodeBackend;
}

/** Runs a TensorFlow op with one output. */
export function op(name: string, attrs: OpAttr[], inputs: tf.TensorInfo[]): tf.Tensor {
  return nodeBackend().executeSingleOutput(name, attrs, inputs);
}

/** Runs a TensorFlow op with `outputs` outputs (0 for ops that only update resources). */
export function opN(name: string, attrs: OpAttr[], inputs: tf.TensorInfo[], outputs: number): tf.Tensor[] {
  return nodeBackend().executeMultipleOutputs(name, attrs, inputs, outputs);
}

/** A type attribute (`T`, `dtype`, ...). */
export function typeAttr(name: string, dtype: 'float32' | 'int32' = 'float32'): OpAttr {
  const b = nodeBackend().binding;
  return { name, type: b.TF_ATTR_TYPE, value: dtype === 'float32' ? b.TF_FLOAT : b.TF_INT32 };
}

export function boolAttr(name: string, value: boolean): OpAttr {
  return { name, type: nodeBackend().binding.TF_ATTR_BOOL, value };
}

export function intAttr(name: string, value: number | number[]): OpAttr {
  return { name, type: nodeBackend().binding.TF_ATTR_INT, value };
}

export function stringAttr(name: string, value: string): OpAttr {
  return { name, type: nodeBackend().binding.TF_ATTR_STRING, value };
}

export function shapeAttr(name: string, value: number[]): OpAttr {
  return { name, type: nodeBackend().binding.TF_ATTR_SHAPE, value };
}

// Float32 element-wise ops with one type attribute `T`.

export const mul = (a: tf.TensorInfo, b: tf.TensorInfo): tf.Tensor => op('Mul', [typeAttr('T')], [a, b]);
export const add = (a: tf.TensorInfo, b: tf.TensorInfo): tf.Tensor => op('AddV2', [typeAttr('T')], [a, b]);
export const sub = (a: tf.TensorInfo, b: tf.TensorInfo): tf.Tensor => op('Sub', [typeAttr('T')], [a, b]);
export const unary = (name: string, x: tf.TensorInfo): tf.Tensor => op(name, [typeAttr('T')], [x]);

/** Mean or Sum over axes, keeping them or not. */
export function reduce(name: 'Mean' | 'Sum', x: tf.TensorInfo, axes: number[], keepDims: boolean): tf.Tensor {
  return op(name, [boolAttr('keep_dims', keepDims), typeAttr('T'), typeAttr('Tidx', 'int32')], [x, int32Const(axes)]);
}

/**
 * op(a) · op(b), batched over leading axes (rank 2 included). Not TensorFlow's MatMul, though it is
 * faster on small rank-2 shapes: with TensorFlow 2.21's CPU wheel, a signal landing during a
 * MatMul (the V8 CPU profiler's SIGPROF, every millisecond) corrupts the heap for shapes such as
 * 512×128·128×128, with oneDNN on or off; BatchMatMulV2, which tfjs-node itself uses, does not.
 */
export function batchMatMul(a: tf.TensorInfo, b: tf.TensorInfo, adjX: boolean, adjY: boolean): tf.Tensor {
  return op('BatchMatMulV2', [typeAttr('T'), boolAttr('adj_x', adjX), boolAttr('adj_y', adjY)], [a, b]);
}

export function transpose(x: tf.TensorInfo, perm: number[]): tf.Tensor {
  return op('Transpose', [typeAttr('T'), typeAttr('Tperm', 'int32')], [x, int32Const(perm)]);
}

export function reshape(x: tf.TensorInfo, shape: number[]): tf.Tensor {
  return op('Reshape', [typeAttr('T'), typeAttr('Tshape', 'int32')], [x, int32Const(shape)]);
}

// Constants: kept tensors, one per value, made once (creating a tensor per use costs as much as a small op).
const scalars = new Map<number, tf.Tensor>();
const int32s = new Map<string, tf.Tensor>();

/** A float32 scalar constant. */
export function scalar(value: number): tf.Tensor {
  let t = scalars.get(value);
  if (!t || t.isDisposed) {
    t = tf.keep(tf.scalar(value, 'float32'));
    scalars.set(value, t);
  }
  return t;
}

/** An int32 constant: a vector (axes, shapes, permutations) or a scalar (an axis). */
export function int32Const(values: number[] | number): tf.Tensor {
  const key = Array.isArray(values) ? `[${values.join(',')}]` : String(values);
  let t = int32s.get(key);
  if (!t || t.isDisposed) {
    t = tf.keep(Array.isArray(values) ? tf.tensor1d(values, 'int32') : tf.scalar(values, 'int32'));
    int32s.set(key, t);
  }
  return t;
}
