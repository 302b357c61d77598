/**
 * A small runtime for offshoot's own WGSL kernels on tfjs's WebGPU backend. tfjs's WebGPUProgram
 * interface gives a program one output, read-only inputs and a generated preamble (so no `enable`
 * directives); the fused kernels need several outputs, in-place updates and extensions. So they
 * are dispatched here, on the backend's own device, command encoder and compute pass, with the
 * backend's buffer pool, and their results are ordinary tfjs tensors:
 *
 * - outputs are allocated as tfjs tensor data (`makeTensorInfo` + `uploadToGPU`), so tfjs frees
 *   and reuses their buffers;
 * - every bound tensor is marked as owned by the pending command buffer, as tfjs does for its own
 *   programs, so a buffer released mid-step is not handed out again before the queue is submitted;
 * - dispatches join the backend's current compute pass and count towards its submit batching;
 * - under tf.profile / tf.time the dispatch gets timestamp queries like tfjs's own programs.
 *
 * Pipelines are cached per device and source key, bind groups per pipeline and bound buffers, uniform
 * blocks by content (see `orderPool` for why a step's bind groups repeat). Bind group layouts are
 * explicit (inputs read-only storage, outputs read-write storage, one uniform block last), so unused
 * bindings are harmless.
 */
/// <reference types="@webgpu/types" />
import * as tf from '../tfjs.js';

import { measureShapeCost, measureShapeCostAsync, notePipeline } from '../shape-costs.js';

interface TensorData {
  values: unknown;
  resource?: GPUBuffer | unknown;
}

/** tfjs-backend-webgpu's buffer pool: per size and usage, a stack of free buffers. */
interface BufferManagerInternals {
  acquireBuffer(size: number, usage: number): GPUBuffer;
  releaseBuffer(buffer: GPUBuffer, reuse?: boolean): void;
  freeBuffers: Map<string, GPUBuffer[]>;
  numBytesAllocated: number;
  numBytesUsed: number;
}

/** The parts of tfjs-backend-webgpu's WebGPUBackend this runtime uses (some are private in its typings). */
export interface WebGPUBackendInternals {
  device: GPUDevice;
  queue: GPUQueue;
  bufferManager: BufferManagerInternals;
  tensorMap: { get(dataId: object): TensorData | undefined; has(dataId: object): boolean };
  commandEncoder: GPUCommandEncoder | null;
  computePassEncoder: GPUComputePassEncoder | null;
  commandQueueOwnedIds: WeakSet<object>;
  tensorDataPendingDisposal: object[];
  dispatchCountInPass: number;
  activeTimers: Array<{ name: string; query: Promise<number> }> | null;
  supportTimestampQuery: boolean;
  querySet: GPUQuerySet | null;
  querySetCount: number;
  ensureCommandEncoderReady(): void;
  endComputePassEncoder(): void;
  submitQueue(): void;
  uploadToGPU(dataId: object): void;
  makeTensorInfo(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  getQueryTime(): Promise<number>;
}

/** The active backend's internals when it is webgpu, else null. */
export function webgpuBackend(): WebGPUBackendInternals | null {
  if (tf.getBackend() !== 'webgpu') return null;
  return adoptBackend(tf.backend() as unknown as WebGPUBackendInternals);
}

/**
 * A webgpu backend as this runtime wants it (the loader applies it when it makes the backend): its
 * buffer pool hands out its lowest-numbered free buffer (`orderPool`), and its device's shader and
 * pipeline creation, tfjs's programs' as well as these kernels', counts as per-shape compile time
 * (../shape-costs.ts). `adapterInfo` is the adapter's GPUAdapter.info, which `capabilities` reads.
 */
export function adoptBackend<B extends object>(backend: B, adapterInfo?: DeviceAdapterInfo): B {
  const b = backend as unknown as WebGPUBackendInternals;
  if (adapterInfo && !adapterInfos.has(b.device)) adapterInfos.set(b.device, adapterInfo);
  if (!orderedPools.has(b.bufferManager)) orderPool(b.bufferManager);
  if (!timedDevices.has(b.device)) timeCompiles(b.device);
  return backend;
}

const timedDevices = new WeakSet<GPUDevice>();

/** Counts the device's shader-module and pipeline creation (Dawn compiles the pipeline there, synchronously) as compile time. */
function timeCompiles(device: GPUDevice): void {
  const createShaderModule = device.createShaderModule.bind(device);
  const createComputePipeline = device.createComputePipeline.bind(device);
  const createComputePipelineAsync = device.createComputePipelineAsync.bind(device);
  device.createShaderModule = (d) => measureShapeCost('compile', () => createShaderModule(d));
  device.createComputePipeline = (d) => {
    notePipeline(d.label);
    return measureShapeCost('compile', () => createComputePipeline(d));
  };
  device.createComputePipelineAsync = (d) => {
    notePipeline(d.label);
    return measureShapeCostAsync('compile', () => createComputePipelineAsync(d));
  };
  timedDevices.add(device);
}

/** Bytes tfjs's WebGPU buffer pool has allocated (it keeps freed buffers, so this is its high-water mark); null off webgpu. */
export function gpuBytesAllocated(): number | null {
  return webgpuBackend()?.bufferManager.numBytesAllocated ?? null;
}

/**
 * Destroys the free buffers tfjs's pool keeps (it never returns them otherwise), after the work
 * recorded so far has run. tfjs pools buffers by exact size, so a process that trains one shape after
 * another (a fitness evaluator) would keep every earlier shape's buffers; the buffers in use stay.
 * Returns the bytes released (0 off webgpu).
 */
export async function releaseFreeBuffers(): Promise<number> {
  const b = webgpuBackend();
  if (!b) return 0;
  submitRecorded();
  await b.device.queue.onSubmittedWorkDone();
  let bytes = 0;
  for (const free of b.bufferManager.freeBuffers.values()) {
    for (const buffer of free) {
      bytes += buffer.size;
      buffer.destroy();
    }
    free.length = 0;
  }
  b.bufferManager.numBytesAllocated -= bytes;
  (b.bufferManager as unknown as { numFreeBuffers: number }).numFreeBuffers = 0;
  return bytes;
}

/** A buffer's number, in the order buffers are first bound or freed. */
const bufferIds = new WeakMap<GPUBuffer, number>();
let nextBufferId = 1;
export function bufferId(buf: GPUBuffer): number {
  let id = bufferIds.get(buf);
  if (id === undefined) bufferIds.set(buf, (id = nextBufferId++));
  return id;
}

/** The pool's stack of free buffers of this buffer's size and usage (tfjs keys them so), if it has one. */
export function freeList(pool: BufferManagerInternals, buffer: GPUBuffer): GPUBuffer[] | undefined {
  return pool.freeBuffers.get(`${buffer.size}_${buffer.usage}`);
}

const orderedPools = new WeakSet<BufferManagerInternals>();

/**
 * Makes the pool hand out its lowest-numbered free buffer of a size instead of the last one freed.
 * A training step then gets the same buffers every step whatever the order of earlier frees, so
 * its bind groups repeat and come from the cache in `dispatch` (creating one is most of a
 * dispatch's host cost).
 */
function orderPool(pool: BufferManagerInternals): void {
  const release = pool.releaseBuffer.bind(pool);
  pool.releaseBuffer = (buffer: GPUBuffer, reuse = true) => {
    release(buffer, reuse);
    const free = reuse ? freeList(pool, buffer) : undefined;
    if (!free || free[free.length - 1] !== buffer) return;
    // Kept in descending order, so the stack's pop gives the lowest number.
    const id = bufferId(buffer);
    let i = free.length - 1;
    while (i > 0 && bufferId(free[i - 1]) < id) {
      free[i] = free[i - 1];
      i--;
    }
    free[i] = buffer;
  };
  orderedPools.add(pool);
}

function backendOrThrow(): WebGPUBackendInternals {
  const b = webgpuBackend();
  if (!b) throw new Error('webgpu kernels: the active tfjs backend is not webgpu');
  return b;
}

export interface Kernel {
  /** Unique per distinct WGSL source. */
  key: string;
  /** The WGSL source; called once per device. */
  source: () => string;
  /** For profiles. */
  name: string;
}

const kernels = new Map<string, Kernel>();

/** The kernel of this key (made once, from `name` and `source`, on first use). */
export function kernelFor(key: string, name: string, source: () => string): Kernel {
  let k = kernels.get(key);
  if (!k) kernels.set(key, (k = { key, name, source }));
  return k;
}

interface Compiled {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  /** Bind groups made for this pipeline, by the numbers of their buffers. */
  bindGroups: Map<string, GPUBindGroup>;
}

const pipelineCache = new WeakMap<GPUDevice, Map<string, Compiled>>();
/** The last pipeline each kernel got, so a dispatch builds no cache key in the usual case. */
const lastCompiled = new WeakMap<Kernel, { device: GPUDevice; signature: number; compiled: Compiled }>();

/** The cache of a device's pipelines, by kernel and bindings. */
function deviceCache(device: GPUDevice): Map<string, Compiled> {
  let cache = pipelineCache.get(device);
  if (!cache) {
    cache = new Map();
    pipelineCache.set(device, cache);
  }
  return cache;
}

const compiledKey = (kernel: Kernel, nIn: number, nOut: number, hasUniforms: boolean) =>
  `${kernel.key}|${nIn}|${nOut}|${+hasUniforms}`;

/** A kernel's bind group layout (inputs read-only storage, outputs storage, uniforms last) and its pipeline's descriptor. */
function pipelineDescriptor(
  device: GPUDevice,
  kernel: Kernel,
  nIn: number,
  nOut: number,
  hasUniforms: boolean,
): { layout: GPUBindGroupLayout; descriptor: GPUComputePipelineDescriptor } {
  const entries: GPUBindGroupLayoutEntry[] = [];
  for (let i = 0; i < nIn; i++)
    entries.push({ binding: i, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'read-only-storage' } });
  for (let i = 0; i < nOut; i++)
    entries.push({ binding: nIn + i, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'storage' } });
  if (hasUniforms)
    entries.push({ binding: nIn + nOut, visibility: GPUShaderStage.COMPUTE, buffer: { type: 'uniform' } });
  const layout = device.createBindGroupLayout({ entries });
  const module = device.createShaderModule({ code: kernel.source(), label: kernel.name });
  return {
    layout,
    descriptor: {
      layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module, entryPoint: 'main' },
      label: kernel.name,
    },
  };
}

function compile(b: WebGPUBackendInternals, kernel: Kernel, nIn: number, nOut: number, hasUniforms: boolean): Compiled {
  const signature = (nIn * 256 + nOut) * 2 + +hasUniforms;
  const last = lastCompiled.get(kernel);
  if (last && last.device === b.device && last.signature === signature) return last.compiled;
  const cache = deviceCache(b.device);
  const key = compiledKey(kernel, nIn, nOut, hasUniforms);
  let c = cache.get(key);
  if (!c) {
    const { layout, descriptor } = pipelineDescriptor(b.device, kernel, nIn, nOut, hasUniforms);
    c = { pipeline: b.device.createComputePipeline(descriptor), layout, bindGroups: new Map() };
    cache.set(key, c);
  }
  lastCompiled.set(kernel, { device: b.device, signature, compiled: c });
  return c;
}

/**
 * Compiles these kernels' pipelines at once, on the device's own threads (asynchronous pipeline
 * creation: the driver's compiler is what takes the time, seconds a subgroup-matrix product on
 * NVIDIA, and it runs them side by side), and caches those that compile for their first dispatch.
 * One that does not compile is left out of the cache: compileError or its first dispatch says why.
 */
export async function precompile(
  wanted: Array<{ kernel: Kernel; nIn: number; nOut: number; hasUniforms: boolean }>,
): Promise<void> {
  const b = backendOrThrow();
  const cache = deviceCache(b.device);
  await Promise.all(
    wanted.map(async ({ kernel, nIn, nOut, hasUniforms }) => {
      const key = compiledKey(kernel, nIn, nOut, hasUniforms);
      if (cache.has(key)) return;
      b.device.pushErrorScope('validation');
      const { layout, descriptor } = pipelineDescriptor(b.device, kernel, nIn, nOut, hasUniforms);
      const invalid = b.device.popErrorScope();
      const [pipeline, error] = await Promise.all([
        b.device.createComputePipelineAsync(descriptor).catch(() => null),
        invalid,
      ]);
      if (pipeline && error === null) cache.set(key, { pipeline, layout, bindGroups: new Map() });
    }),
  );
}

/**
 * Runs `f` with the device's validation and internal errors captured (error scopes) rather than
 * reported as uncaptured, and returns their messages with f's result: a kernel check then says that
 * the driver refused a pipeline, or that a dispatch was invalid, instead of comparing whatever the
 * output buffer held before.
 */
export async function withDeviceErrors<T>(f: () => Promise<T>): Promise<{ result: T; errors: string[] }> {
  const { device } = backendOrThrow();
  device.pushErrorScope('validation');
  device.pushErrorScope('internal');
  const pop = async () =>
    [await device.popErrorScope(), await device.popErrorScope()].filter((e) => e !== null).map((e) => e.message);
  let result: T;
  try {
    result = await f();
  } catch (e) {
    await pop();
    throw e;
  }
  return { result, errors: await pop() };
}

/**
 * Compiles a kernel's pipeline now (for its bindings: nIn inputs, nOut outputs, uniforms or not) and
 * returns the device's error, or null. The autotuner leaves out a candidate its device cannot compile
 * before anything is recorded with it: a dispatch of an invalid pipeline would spoil its whole
 * command buffer.
 */
export async function compileError(
  kernel: Kernel,
  nIn: number,
  nOut: number,
  hasUniforms: boolean,
): Promise<string | null> {
  const b = backendOrThrow();
  const { errors } = await withDeviceErrors(async () => compile(b, kernel, nIn, nOut, hasUniforms));
  return errors.length ? errors.map((e) => e.split('\n')[0]).join('; ') : null;
}

/** Bind groups kept per pipeline; past this (shapes and buffers that keep changing) it starts again. */
const MAX_BIND_GROUPS = 4096;

/** Counts since the process started (the tests read them). */
const counts = { dispatches: 0, bindGroupsCreated: 0 };

/** Dispatches recorded and bind groups created by `dispatch` so far. */
export function dispatchCounts(): { dispatches: number; bindGroupsCreated: number } {
  return { ...counts };
}

/** The bind group of these buffers, made once per distinct set. */
function bindGroupFor(b: WebGPUBackendInternals, c: Compiled, buffers: GPUBuffer[]): GPUBindGroup {
  let key = '';
  for (const buf of buffers) key += `${bufferId(buf)},`;
  let group = c.bindGroups.get(key);
  if (!group) {
    counts.bindGroupsCreated++;
    if (c.bindGroups.size >= MAX_BIND_GROUPS) c.bindGroups.clear();
    group = b.device.createBindGroup({
      layout: c.layout,
      entries: buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
    });
    c.bindGroups.set(key, group);
  }
  return group;
}

/** Uniform block values, each 4 bytes: 'u' u32, 'i' i32, 'f' f32. */
export type UniformValue = ['u' | 'i' | 'f', number];

function packUniforms(values: UniformValue[]): ArrayBuffer {
  const size = Math.max(16, Math.ceil((values.length * 4) / 16) * 16);
  const buf = new ArrayBuffer(size);
  const view = new DataView(buf);
  values.forEach(([type, v], i) => {
    if (type === 'f') view.setFloat32(i * 4, v, true);
    else if (type === 'i') view.setInt32(i * 4, v, true);
    else view.setUint32(i * 4, v >>> 0, true);
  });
  return buf;
}

/** The GPU buffer of a tensor's data, uploaded first if it is still on the host. */
export function gpuBuffer(b: WebGPUBackendInternals, t: tf.TensorInfo): GPUBuffer {
  b.uploadToGPU(t.dataId);
  const res = b.tensorMap.get(t.dataId)?.resource;
  if (!(res instanceof GPUBuffer)) throw new Error('webgpu kernels: tensor data is not in a GPU buffer');
  return res;
}

/** A new float32 (or int32) tensor's data with its GPU buffer allocated; contents undefined. */
export function allocate(shape: number[], dtype: tf.DataType = 'float32'): tf.TensorInfo {
  const b = backendOrThrow();
  const info = b.makeTensorInfo(shape, dtype);
  b.uploadToGPU(info.dataId);
  return info;
}

/** Wraps tensor data made by `allocate` as a tracked tfjs tensor. */
export function toTensor<T extends tf.Tensor = tf.Tensor>(info: tf.TensorInfo): T {
  return tf.engine().makeTensorFromTensorInfo(info) as T;
}

/** Releases tensor data made by `allocate` that never became a tfjs tensor (after pending work). */
export function release(info: tf.TensorInfo): void {
  tf.backend().disposeData(info.dataId);
}

/** Zero-fills tensors' buffers (a clear on the command encoder, between compute passes). */
export function zeroFill(...ts: tf.TensorInfo[]): void {
  const b = backendOrThrow();
  b.ensureCommandEncoderReady();
  b.endComputePassEncoder();
  for (const t of ts) {
    const buf = gpuBuffer(b, t);
    b.commandEncoder!.clearBuffer(buf);
    b.commandQueueOwnedIds.add(t.dataId);
  }
}

/** A profiler's hook (profiler.ts): opens a timed pass before each dispatch and closes it after. */
interface DispatchHook {
  /** `grid` tells the shapes of one kernel apart (a product's tile count, a row kernel's rows). */
  begin(name: string, grid?: [number, number, number]): void;
  end(): void;
  /** A timed pass for one dispatch of a replayed step, on the replay's own encoder (replay.ts). */
  replayPass(encoder: GPUCommandEncoder, name: string, grid: [number, number, number]): GPUComputePassEncoder;
}
let hook: DispatchHook | null = null;

export function setDispatchHook(h: DispatchHook | null): void {
  hook = h;
}

export function dispatchHook(): DispatchHook | null {
  return hook;
}

/** Whether dispatches are being timed one by one (the profiler's hook, tf.profile or tf.time). */
export function timingDispatches(): boolean {
  return hook !== null || webgpuBackend()?.activeTimers != null;
}

/** Uniform blocks by content, written once: a training step repeats the same blocks every step. */
const uniformBlocks = new WeakMap<GPUDevice, Map<string, GPUBuffer>>();
/** Past this many distinct blocks (shapes that keep changing) the cache starts again. */
const MAX_UNIFORM_BLOCKS = 16384;

function uniformBuffer(b: WebGPUBackendInternals, values: UniformValue[]): GPUBuffer {
  const usage = GPUBufferUsage.COPY_DST | GPUBufferUsage.UNIFORM;
  let blocks = uniformBlocks.get(b.device);
  if (!blocks) uniformBlocks.set(b.device, (blocks = new Map()));
  let key = '';
  for (const [type, v] of values) key += `${type}${v}`;
  let ub = blocks.get(key);
  if (!ub) {
    // Dropped blocks stay alive while recorded commands or cached bind groups hold them.
    if (blocks.size >= MAX_UNIFORM_BLOCKS) blocks.clear();
    const data = packUniforms(values);
    ub = b.device.createBuffer({ size: data.byteLength, usage });
    b.queue.writeBuffer(ub, 0, data);
    blocks.set(key, ub);
  }
  return ub;
}

/**
 * Records one dispatch: bindings are inputs (read-only), then outputs (read-write), then the
 * uniform block if any. Outputs written in place keep their tfjs identity; cached host copies of
 * them are dropped, since they no longer match the buffer.
 */
export function dispatch(
  kernel: Kernel,
  inputs: tf.TensorInfo[],
  outputs: tf.TensorInfo[],
  uniforms: UniformValue[] | null,
  grid: [number, number, number],
): void {
  const b = backendOrThrow();
  const compiled = compile(b, kernel, inputs.length, outputs.length, uniforms !== null);
  const buffers: GPUBuffer[] = [];
  for (const t of inputs) buffers.push(gpuBuffer(b, t));
  for (const t of outputs) {
    buffers.push(gpuBuffer(b, t));
    b.tensorMap.get(t.dataId)!.values = null;
  }
  if (uniforms) buffers.push(uniformBuffer(b, uniforms));
  for (const t of inputs) b.commandQueueOwnedIds.add(t.dataId);
  for (const t of outputs) b.commandQueueOwnedIds.add(t.dataId);
  const bindGroup = bindGroupFor(b, compiled, buffers);
  counts.dispatches++;
  const { pipeline } = compiled;

  if (grid[0] === 0 || grid[1] === 0 || grid[2] === 0) return;
  const max = b.device.limits.maxComputeWorkgroupsPerDimension;
  if (grid.some((g) => g > max))
    throw new Error(`webgpu kernel ${kernel.name}: grid ${grid} exceeds ${max} per dimension`);

  if (hook) {
    hook.begin(kernel.name, grid);
    b.computePassEncoder!.setPipeline(pipeline);
    b.computePassEncoder!.setBindGroup(0, bindGroup);
    b.computePassEncoder!.dispatchWorkgroups(grid[0], grid[1], grid[2]);
    hook.end();
    return;
  }
  const timed = b.activeTimers != null && b.supportTimestampQuery;
  b.ensureCommandEncoderReady();
  if (timed) {
    b.endComputePassEncoder();
    if (b.querySet == null) b.querySet = b.device.createQuerySet({ type: 'timestamp', count: b.querySetCount });
    b.computePassEncoder = b.commandEncoder!.beginComputePass({
      timestampWrites: { querySet: b.querySet, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 },
    });
  } else if (!b.computePassEncoder) {
    b.computePassEncoder = b.commandEncoder!.beginComputePass({});
  }
  const pass = b.computePassEncoder!;
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(grid[0], grid[1], grid[2]);
  b.dispatchCountInPass++;
  if (timed) {
    b.endComputePassEncoder();
    b.activeTimers!.push({ name: kernel.name, query: b.getQueryTime() });
  } else if (
    (tf.env().get('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE') as number) <= b.dispatchCountInPass ||
    releasedBytes(b) >= SUBMIT_RELEASED_BYTES
  ) {
    b.endComputePassEncoder();
    b.submitQueue();
  }
}

/**
 * Bytes of freed tensors waiting for the next submit. tfjs hands a freed buffer out again only once
 * the commands using it are submitted, so long batches between submits would keep large freed
 * tensors (a logits-sized product, say) out of reuse: past this much, the batch is cut short.
 */
const SUBMIT_RELEASED_BYTES = 256 * 2 ** 20;
/** The pending list counted so far (tfjs starts a new list at each submit). */
let releasedCount: { list: object[]; counted: number; bytes: number } = { list: [], counted: 0, bytes: 0 };

function releasedBytes(b: WebGPUBackendInternals): number {
  const list = b.tensorDataPendingDisposal;
  if (list !== releasedCount.list) releasedCount = { list, counted: 0, bytes: 0 };
  for (; releasedCount.counted < list.length; releasedCount.counted++) {
    const res = b.tensorMap.get(list[releasedCount.counted])?.resource;
    if (res instanceof GPUBuffer) releasedCount.bytes += res.size;
  }
  return releasedCount.bytes;
}

/**
 * Submits the commands recorded so far (a no-op off webgpu). A training step ends with this, so
 * every step starts on an empty command buffer and frees its buffers at the same points: it then
 * gets the same buffers, and bind groups, step after step.
 */
export function submitRecorded(): void {
  const b = webgpuBackend();
  if (!b?.commandEncoder) return;
  b.endComputePassEncoder();
  b.submitQueue();
}

/** A grid of 1-D workgroups covering n invocations of `size` each, folded into y past 32768. */
export function grid1d(n: number, size = 256): [number, number, number] {
  const groups = Math.max(1, Math.ceil(n / size));
  const x = Math.min(groups, 32768);
  return [x, Math.ceil(groups / x), 1];
}

/** The WGSL index for grid1d: `let i = flatIndex(gid, nwg, size);`. */
export function flatIndexWgsl(size = 256): string {
  return `fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * ${size}u; }`;
}

/** A cooperative-matrix shape the adapter offers (Dawn's GPUSubgroupMatrixConfig): result M × N, depth K. */
export interface SubgroupMatrixConfig {
  componentType: string;
  resultComponentType: string;
  M: number;
  N: number;
  K: number;
}

/** What the device offers, read once per device. */
export interface Capabilities {
  subgroups: boolean;
  /** Subgroup sizes the adapter may use (Dawn's adapter info), or null when it does not say. */
  subgroupMinSize: number | null;
  subgroupMaxSize: number | null;
  shaderF16: boolean;
  subgroupMatrix: boolean;
  /** The adapter's subgroup-matrix configurations (empty without the feature). */
  subgroupMatrixConfigs: SubgroupMatrixConfig[];
  maxWorkgroupStorage: number;
  maxWorkgroupInvocations: number;
  maxStorageBinding: number;
  software: boolean;
}

const caps = new WeakMap<GPUDevice, Capabilities>();
/**
 * Each device's adapter info as its adapter reported it. Dawn's GPUDevice.adapterInfo is not that:
 * it is queried without the subgroup-matrix chain, so its configurations are always empty (which
 * turned mixed precision's f16 products off on an H200 that offers them).
 */
const adapterInfos = new WeakMap<GPUDevice, DeviceAdapterInfo>();

/** The adapter facts Dawn hands the device (`GPUDevice.adapterInfo`; tfjs keeps only the vendor and architecture). */
export interface DeviceAdapterInfo {
  vendor?: string;
  architecture?: string;
  subgroupMinSize?: number;
  subgroupMaxSize?: number;
  subgroupMatrixConfigs?: Iterable<SubgroupMatrixConfig>;
}

/**
 * The adapter's subgroup size where its subgroups have one size, else null (no subgroups, or a size
 * that varies). Kernels built on it number subgroups `local_invocation_index / size`.
 */
export function fixedSubgroupSize(): number | null {
  const c = capabilities();
  return c.subgroups && c.subgroupMinSize !== null && c.subgroupMinSize === c.subgroupMaxSize
    ? c.subgroupMinSize
    : null;
}

export function capabilities(): Capabilities {
  const b = backendOrThrow();
  let c = caps.get(b.device);
  if (!c) {
    const f = b.device.features;
    const info =
      adapterInfos.get(b.device) ??
      (b.device as unknown as { adapterInfo?: DeviceAdapterInfo }).adapterInfo ??
      (b as unknown as { adapterInfo?: DeviceAdapterInfo }).adapterInfo;
    const subgroupMatrix = f.has('chromium-experimental-subgroup-matrix' as GPUFeatureName);
    c = {
      subgroups: f.has('subgroups' as GPUFeatureName),
      subgroupMinSize: info?.subgroupMinSize ?? null,
      subgroupMaxSize: info?.subgroupMaxSize ?? null,
      shaderF16: f.has('shader-f16'),
      subgroupMatrix,
      subgroupMatrixConfigs: subgroupMatrix
        ? [...(info?.subgroupMatrixConfigs ?? [])].map(({ componentType, resultComponentType, M, N, K }) => ({
            componentType,
            resultComponentType,
            M,
            N,
            K,
          }))
        : [],
      maxWorkgroupStorage: b.device.limits.maxComputeWorkgroupStorageSize,
      maxWorkgroupInvocations: b.device.limits.maxComputeInvocationsPerWorkgroup,
      maxStorageBinding: b.device.limits.maxStorageBufferBindingSize,
      software: /mesa|swiftshader/i.test(info?.vendor ?? '') || info?.architecture === 'software',
    };
    caps.set(b.device, c);
  }
  return c;
}
