/**
 * Whole training steps, and the teacher service's forward passes, recorded once per shape and
 * replayed (ops/step.ts RepeatedPass): the webgpu counterpart of the cuda backend's graphs
 * (../cuda/graphs.ts). Recording a step costs the host tfjs's autodiff bookkeeping and each kernel's
 * own (tens of µs a dispatch, several hundred dispatches a step); replaying it encodes the recorded
 * device commands again, a few µs each.
 *
 * For each distinct shape the first steps run eagerly (every pipeline made, every product planned,
 * the buffer pool settled). The next one runs eagerly too, with every device command it makes
 * recorded: compute passes with their pipelines, bind groups and grids, buffer clears and copies,
 * queue writes (uniform blocks, uploaded constants) with their bytes, and submits. From then on a
 * step writes its inputs into the shape's own input buffers and the optimiser step's numbers where
 * the recording wrote them (`stepNumbers`), encodes the recorded commands, and copies the outputs out.
 *
 * What makes a replay exact: every buffer the recorded commands touch is the same each step. The
 * inputs are the shape's own; the weights, the optimiser's moments and the loss scale (`state`) are
 * updated in place; the step's intermediates and uniform blocks came from tfjs's buffer pool during
 * the recording, and are taken out of it for good, so nothing else is handed them. The body must
 * not read tensors back, and whatever changes from step to step must come in through the inputs or
 * `stepNumbers`. A recording that reads back, times its dispatches, or leaves a tensor made during
 * the step alive besides its outputs is abandoned for that shape (logged once), whose steps then run
 * eagerly; OFFSHOOT_WEBGPU_REPLAY=0 runs every step eagerly.
 */
/// <reference types="@webgpu/types" />
import * as tf from '../tfjs.js';

import type { AdamWStep } from '../ops/adamw.js';
import { type RepeatedPass, ReplayShapes } from '../ops/step.js';
import {
  type WebGPUBackendInternals,
  allocate,
  bufferId,
  dispatchHook,
  freeList,
  gpuBuffer,
  submitRecorded,
  timingDispatches,
  toTensor,
  webgpuBackend,
} from './runtime.js';

/** Eager steps of a shape before the one that is recorded. */
const WARMUP_STEPS = 2;
/**
 * Shapes kept at once (each holds its step's intermediates); the least recently run goes first. A
 * trainer runs one shape, the teacher service one per batch size it is sent.
 */
const MAX_SHAPES = 8;

type Command =
  | { op: 'pass' }
  | { op: 'pipeline'; pipeline: GPUComputePipeline }
  | { op: 'bind'; index: number; group: GPUBindGroup | null }
  | { op: 'dispatch'; x: number; y: number; z: number }
  | { op: 'end' }
  | { op: 'clear'; buffer: GPUBuffer; offset?: number; size?: number }
  | { op: 'copy'; src: GPUBuffer; srcOffset: number; dst: GPUBuffer; dstOffset: number; size: number }
  | { op: 'write'; buffer: GPUBuffer; offset: number; bytes: Uint8Array }
  | { op: 'numbers'; buffer: GPUBuffer; of: (s: AdamWStep) => Float32Array }
  | { op: 'submit' };

interface Tape {
  commands: Command[];
  /** The recorded step's outputs, which every replay writes again and copies out. */
  outputs: tf.Tensor[];
  /** The intermediates and uniform blocks taken out of tfjs's pool. */
  owned: GPUBuffer[];
  /** Whether it writes an optimiser step's numbers (`stepNumbers`). */
  takesNumbers: boolean;
}

interface Shape {
  calls: number;
  /** The shape's own input tensors, which every step's inputs are written into. */
  inputs: tf.Tensor[];
  stateKey: string;
  tape?: Tape;
  /** Why this shape runs eagerly for good. */
  eager?: string;
}

/** What a recording has seen so far. */
interface Recording {
  commands: Command[];
  /** Buffers tfjs's pool handed out during the step. */
  acquired: Set<GPUBuffer>;
  /** The encoder the commands go to (tfjs keeps one at a time). */
  encoder: GPUCommandEncoder | null;
  /** Inside an upload of host values: its staging copy is recorded as a write of the values. */
  uploading: boolean;
  /** Inside `stepNumbers`: its write is recorded as the step's numbers. */
  quiet: boolean;
  failure: string | null;
}

let recording: Recording | null = null;

/**
 * The optimiser step's numbers (its learning rate and bias corrections: `of(s)`) as a tensor for a
 * kernel to read; a replayed step writes `of` of its own step there. The caller releases it.
 */
export function stepNumbers(s: AdamWStep, of: (s: AdamWStep) => Float32Array): tf.TensorInfo {
  const b = webgpuBackend()!;
  const values = of(s);
  const info = allocate([values.length]);
  const buffer = gpuBuffer(b, info);
  if (recording) {
    recording.commands.push({ op: 'numbers', buffer, of });
    recording.quiet = true;
  }
  try {
    b.queue.writeBuffer(buffer, 0, values);
  } finally {
    if (recording) recording.quiet = false;
  }
  return info;
}

/** The bytes a queue write takes from its data (offset and size count elements of a typed array). */
function bytesOf(data: ArrayBuffer | ArrayBufferView, dataOffset = 0, size?: number): Uint8Array {
  const view = ArrayBuffer.isView(data) ? data : new Uint8Array(data);
  const per = (view as Partial<Float32Array>).BYTES_PER_ELEMENT ?? 1;
  const start = view.byteOffset + dataOffset * per;
  const length = size !== undefined ? size * per : view.byteLength - dataOffset * per;
  return new Uint8Array(view.buffer.slice(start, start + length));
}

/**
 * Runs `body` with every device command it makes recorded (the prototypes of Dawn's encoder and
 * queue classes wrapped for as long as it runs, which is synchronous), and tfjs's uploads and
 * buffer pool watched.
 */
function recordWhile<T>(b: WebGPUBackendInternals, body: () => T): { result: T; rec: Recording } {
  const rec: Recording = {
    commands: [],
    acquired: new Set(),
    encoder: null,
    uploading: false,
    quiet: false,
    failure: null,
  };
  const fail = (why: string) => {
    rec.failure ??= why;
  };
  const onEncoder = (encoder: GPUCommandEncoder) => {
    if (rec.encoder && rec.encoder !== encoder) fail('it records on two command encoders at once');
    rec.encoder = encoder;
  };
  const restores: Array<() => void> = [];
  // biome-ignore lint/suspicious/noExplicitAny: wraps methods of any signature
  const wrap = (target: any, name: string, seen: (self: any, args: any[]) => void) => {
    const original = target[name];
    // biome-ignore lint/suspicious/noExplicitAny: as above
    target[name] = function (this: unknown, ...args: any[]) {
      const result = original.apply(this, args);
      seen(this, args);
      return result;
    };
    restores.push(() => {
      target[name] = original;
    });
  };
  const g = globalThis as unknown as Record<string, { prototype: object }>;
  const encoder = g.GPUCommandEncoder.prototype;
  const pass = g.GPUComputePassEncoder.prototype;
  wrap(encoder, 'beginComputePass', (self, [descriptor]) => {
    onEncoder(self);
    if (descriptor?.timestampWrites) fail('its dispatches are timed');
    rec.commands.push({ op: 'pass' });
  });
  wrap(encoder, 'clearBuffer', (self, [buffer, offset, size]) => {
    onEncoder(self);
    rec.commands.push({ op: 'clear', buffer, offset, size });
  });
  wrap(encoder, 'copyBufferToBuffer', (self, args) => {
    onEncoder(self);
    if (rec.uploading) return;
    const [src, srcOffset, dst, dstOffset, size] = args;
    if (args.length !== 5) fail('a buffer copy without offsets');
    else if (dst.usage & GPUBufferUsage.MAP_READ) fail('it reads a tensor back');
    else rec.commands.push({ op: 'copy', src, srcOffset, dst, dstOffset, size });
  });
  for (const name of ['resolveQuerySet', 'writeTimestamp', 'copyBufferToTexture', 'copyTextureToBuffer'])
    if (name in encoder) wrap(encoder, name, () => fail(`it calls ${name}`));
  wrap(pass, 'setPipeline', (_, [pipeline]) => rec.commands.push({ op: 'pipeline', pipeline }));
  wrap(pass, 'setBindGroup', (_, [index, group, offsets]) => {
    if (offsets?.length) fail('a bind group with dynamic offsets');
    rec.commands.push({ op: 'bind', index, group });
  });
  wrap(pass, 'dispatchWorkgroups', (_, [x, y = 1, z = 1]) => rec.commands.push({ op: 'dispatch', x, y, z }));
  wrap(pass, 'dispatchWorkgroupsIndirect', () => fail('an indirect dispatch'));
  wrap(pass, 'end', () => rec.commands.push({ op: 'end' }));
  wrap(g.GPUQueue.prototype, 'submit', (_, [buffers]) => {
    if (buffers.length !== 1) fail(`a submit of ${buffers.length} command buffers`);
    rec.encoder = null;
    rec.commands.push({ op: 'submit' });
  });
  wrap(g.GPUQueue.prototype, 'writeBuffer', (_, [buffer, offset, data, dataOffset, size]) => {
    if (!rec.quiet) rec.commands.push({ op: 'write', buffer, offset, bytes: bytesOf(data, dataOffset, size) });
  });
  wrap(g.GPUBuffer.prototype, 'mapAsync', () => fail('it reads a tensor back'));
  // Host values uploaded during the step (constants the body makes) replay as writes of the same bytes.
  const upload = b.uploadToGPU;
  b.uploadToGPU = (dataId: object) => {
    const data = b.tensorMap.get(dataId);
    const values = data && data.resource == null ? (data.values as Float32Array | Int32Array | null) : null;
    rec.uploading = values != null;
    try {
      upload.call(b, dataId);
    } finally {
      rec.uploading = false;
    }
    if (values)
      rec.commands.push({ op: 'write', buffer: data!.resource as GPUBuffer, offset: 0, bytes: bytesOf(values) });
  };
  restores.push(() => {
    b.uploadToGPU = upload;
  });
  const acquire = b.bufferManager.acquireBuffer;
  b.bufferManager.acquireBuffer = (...args: Parameters<typeof acquire>) => {
    const buffer = acquire.apply(b.bufferManager, args);
    rec.acquired.add(buffer);
    return buffer;
  };
  restores.push(() => {
    b.bufferManager.acquireBuffer = acquire;
  });
  recording = rec;
  try {
    const result = body();
    // The step's last commands, so that its intermediates are back in the pool.
    submitRecorded();
    return { result, rec };
  } finally {
    recording = null;
    for (const restore of restores.reverse()) restore();
  }
}

/** Replays recorded steps per shape; one per backend. */
export class StepReplayer {
  private readonly shapes = new ReplayShapes<Shape>(MAX_SHAPES, (shape) => this.drop(shape));
  /** Bytes of the pool's buffers the dropped recordings had taken, destroyed since `dispose` last said. */
  private droppedBytes = 0;
  /** Steps recorded and replayed since the replayer was made. */
  recordings = 0;
  replays = 0;

  constructor(
    private readonly b: WebGPUBackendInternals,
    private readonly log: (msg: string) => void = (m) => process.stderr.write(`${m}\n`),
  ) {}

  run(pass: RepeatedPass, optimizer?: AdamWStep): tf.Tensor[] {
    const key = `${pass.key}|${pass.inputs.map((i) => `${i.dtype}${i.shape.join('x')}`).join(',')}`;
    // Tensors and their buffers: a new model may get an old one's buffers from the pool, and an
    // assigned variable keeps its id but gets a new buffer.
    const stateKey = pass.state.map((t) => `${t.id}.${bufferId(gpuBuffer(this.b, t))}`).join(',');
    // Kept: a caller's tf.tidy must not take them.
    const shape = this.shapes.get(key, stateKey, () => ({
      calls: 0,
      inputs: pass.inputs.map((i) => tf.keep(toTensor(allocate(i.shape, i.dtype)))),
      stateKey,
    }));
    this.writeInputs(shape, pass);
    shape.calls++;
    if (shape.tape) return this.replay(shape.tape, pass, optimizer);
    // A step whose dispatches are timed cannot be recorded: it runs eagerly and the next one records.
    if (shape.eager || shape.calls <= WARMUP_STEPS || timingDispatches()) return tf.tidy(() => pass.body(shape.inputs));
    return this.record(shape, pass);
  }

  /** Writes a step's inputs into the shape's own (after the commands recorded so far, which may read them). */
  private writeInputs(shape: Shape, pass: RepeatedPass): void {
    const b = this.b;
    submitRecorded();
    pass.inputs.forEach((input, i) => {
      const dst = gpuBuffer(b, shape.inputs[i]);
      if (!(input.data instanceof tf.Tensor)) {
        b.queue.writeBuffer(dst, 0, input.data);
        return;
      }
      const src = gpuBuffer(b, input.data);
      b.ensureCommandEncoderReady();
      b.endComputePassEncoder();
      b.commandEncoder!.copyBufferToBuffer(src, 0, dst, 0, dst.size);
      b.commandQueueOwnedIds.add(input.data.dataId);
      b.commandQueueOwnedIds.add(shape.inputs[i].dataId);
    });
    // The copies go first: a replay encodes on encoders of its own.
    submitRecorded();
  }

  /** Runs the step eagerly with its commands recorded; keeps the recording unless it cannot be replayed. */
  private record(shape: Shape, pass: RepeatedPass): tf.Tensor[] {
    const b = this.b;
    const { result: outputs, rec } = recordWhile(b, () => tf.tidy(() => pass.body(shape.inputs)));
    const outputBuffers = new Set(outputs.map((o) => gpuBuffer(b, o)));
    // Each intermediate with the free list it went back to, taken out once the recording is sure.
    const taken: Array<[GPUBuffer, GPUBuffer[]]> = [];
    let failure = rec.failure;
    for (const buffer of failure ? [] : rec.acquired) {
      // Staging buffers of uploads: destroyed after the submit, and not in the recording.
      if (buffer.usage & GPUBufferUsage.MAP_WRITE) continue;
      const free = freeList(b.bufferManager, buffer);
      if (free?.includes(buffer)) taken.push([buffer, free]);
      else if (!outputBuffers.has(buffer)) failure = 'a tensor made during the step outlives it besides its outputs';
    }
    if (failure) {
      shape.eager = failure;
      this.log(`webgpu: steps of this shape run without replay: ${failure}`);
      return outputs;
    }
    for (const [buffer, free] of taken) free.splice(free.indexOf(buffer), 1);
    const pool = b.bufferManager as unknown as { numFreeBuffers: number };
    pool.numFreeBuffers -= taken.length;
    shape.tape = {
      commands: rec.commands,
      outputs: outputs.map((o) => tf.keep(o)),
      owned: taken.map(([buffer]) => buffer),
      takesNumbers: rec.commands.some((c) => c.op === 'numbers'),
    };
    this.recordings++;
    return this.copyOut(shape.tape);
  }

  private replay(tape: Tape, pass: RepeatedPass, optimizer: AdamWStep | undefined): tf.Tensor[] {
    const { device, queue } = this.b;
    // Checked before anything is encoded: a step cut short would leave its state half updated.
    if (!optimizer && tape.takesNumbers)
      throw new Error("webgpu replay: this recording writes an optimiser step's numbers, and none was given");
    let encoder = device.createCommandEncoder();
    let computePass: GPUComputePassEncoder | null = null;
    // The profiler's hook: each dispatch in a timed pass of its own, with the pass's pipeline and bind groups.
    const timer = dispatchHook();
    let pipeline: GPUComputePipeline | null = null;
    const groups: Array<GPUBindGroup | null> = [];
    for (const c of tape.commands) {
      switch (c.op) {
        case 'pass':
          if (timer) {
            pipeline = null;
            groups.length = 0;
          } else computePass = encoder.beginComputePass();
          break;
        case 'pipeline':
          if (timer) pipeline = c.pipeline;
          else computePass!.setPipeline(c.pipeline);
          break;
        case 'bind':
          if (timer) groups[c.index] = c.group;
          else computePass!.setBindGroup(c.index, c.group);
          break;
        case 'dispatch':
          if (timer) {
            const timed = timer.replayPass(encoder, pipeline!.label || 'unlabelled', [c.x, c.y, c.z]);
            timed.setPipeline(pipeline!);
            groups.forEach((g, i) => timed.setBindGroup(i, g));
            timed.dispatchWorkgroups(c.x, c.y, c.z);
            timed.end();
          } else computePass!.dispatchWorkgroups(c.x, c.y, c.z);
          break;
        case 'end':
          computePass?.end();
          computePass = null;
          break;
        case 'clear':
          encoder.clearBuffer(c.buffer, c.offset, c.size);
          break;
        case 'copy':
          encoder.copyBufferToBuffer(c.src, c.srcOffset, c.dst, c.dstOffset, c.size);
          break;
        case 'write':
          queue.writeBuffer(c.buffer, c.offset, c.bytes);
          break;
        case 'numbers':
          queue.writeBuffer(c.buffer, 0, c.of(optimizer!));
          break;
        case 'submit':
          queue.submit([encoder.finish()]);
          encoder = device.createCommandEncoder();
          break;
      }
    }
    // The state changed on the device: host copies tfjs cached of it are stale.
    for (const t of pass.state) {
      const data = this.b.tensorMap.get(t.dataId);
      if (data) data.values = null;
    }
    this.replays++;
    return this.copyOut(tape, encoder);
  }

  /** Copies of the tape's outputs, for the caller to keep or dispose. */
  private copyOut(tape: Tape, encoder = this.b.device.createCommandEncoder()): tf.Tensor[] {
    const copies = tape.outputs.map((o) => {
      const info = allocate(o.shape, o.dtype);
      const dst = gpuBuffer(this.b, info);
      encoder.copyBufferToBuffer(gpuBuffer(this.b, o), 0, dst, 0, dst.size);
      return toTensor(info);
    });
    this.b.queue.submit([encoder.finish()]);
    return copies;
  }

  /** Drops a shape and its recording, destroying the buffers it had taken from the pool. */
  private drop(shape: Shape): void {
    if (shape.tape) {
      for (const o of shape.tape.outputs) o.dispose();
      // Destroyed once the work submitted so far is done with them.
      for (const buffer of shape.tape.owned) {
        this.droppedBytes += buffer.size;
        this.b.bufferManager.numBytesAllocated -= buffer.size;
        buffer.destroy();
      }
    }
    for (const t of shape.inputs) t.dispose();
  }

  /** Drops every recording; returns the bytes destroyed, the bound's drops since the last call included. */
  dispose(): number {
    this.shapes.clear();
    const bytes = this.droppedBytes;
    this.droppedBytes = 0;
    return bytes;
  }
}

const replayers = new WeakMap<WebGPUBackendInternals, StepReplayer>();

/** The active webgpu backend's replayer. */
export function stepReplayer(): StepReplayer {
  const b = webgpuBackend();
  if (!b) throw new Error('webgpu replay: the active tfjs backend is not webgpu');
  let r = replayers.get(b);
  if (!r) replayers.set(b, (r = new StepReplayer(b)));
  return r;
}

/** Drops the active backend's recordings (a process moving to other shapes gives their memory back); returns the bytes freed. */
export function dropRecordings(): number {
  const b = webgpuBackend();
  return (b && replayers.get(b)?.dispose()) || 0;
}

/** Recordings made and steps replayed in this process on the active backend (benchmarks, tests). */
export function replayStats(): { recordings: number; replays: number } {
  const b = webgpuBackend();
  const r = b && replayers.get(b);
  return { recordings: r?.recordings ?? 0, replays: r?.replays ?? 0 };
}
