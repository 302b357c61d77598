/**
 * The `cuda` tfjs backend: tensor storage on the GPU (device.ts's allocator), reads and writes, and
 * every tfjs kernel. Kernels written for the GPU are registered by the files beside this one;
 * every other kernel that tfjs's cpu backend has runs through it (the inputs are copied to the host,
 * the cpu kernel runs, the outputs are copied back), so any tfjs program runs correctly here, and
 * `fallbackCounts()` tells which kernels a workload still sends through the host.
 */
import * as tf from '../tfjs.js';

import { type CudaDevice, cudaDevice } from './device.js';
import { type Storage, bf16ToF32, bytesPer, storageOf } from './storage.js';

export const CUDA_BACKEND = 'cuda';

interface CudaData {
  /** Device address; 0 for an empty tensor and for strings. */
  ptr: number;
  storage: Storage;
  /** Elements. */
  size: number;
  refCount: number;
  /** String tensors stay on the host. */
  strings?: Uint8Array[];
}

/** What a kernel needs of an input: its address, storage and element count. */
export interface Operand {
  ptr: number;
  storage: Storage;
  size: number;
}

export class CudaBackend extends tf.KernelBackend {
  readonly device: CudaDevice;
  private readonly data = new WeakMap<object, CudaData>();
  private count = 0;
  private nextId = 0;

  constructor(device: CudaDevice) {
    super();
    this.device = device;
  }

  // -- storage -------------------------------------------------------------------------------

  /** A new tensor's data with uninitialised device memory. */
  allocate(shape: number[], dtype: tf.DataType = 'float32', storage: Storage = storageOf(dtype)): tf.TensorInfo {
    const size = shape.reduce((a, b) => a * b, 1);
    const dataId = { id: this.nextId++ };
    const ptr = size > 0 ? this.device.alloc(size * bytesPer(storage)) : 0;
    this.data.set(dataId, { ptr, storage, size, refCount: 1 });
    this.count++;
    return { dataId, shape, dtype };
  }

  /** Address, storage and size of a tensor's data. */
  operand(t: tf.TensorInfo): Operand {
    const d = this.data.get(t.dataId);
    if (!d) throw new Error(`cuda backend: tensor data ${JSON.stringify(t.dataId)} is not on this backend (disposed?)`);
    if (d.strings) throw new Error('cuda backend: string tensors cannot be used in GPU kernels');
    return d;
  }

  storageOf(t: tf.TensorInfo): Storage {
    return this.operand(t).storage;
  }

  override write(values: tf.backend_util.BackendValues, shape: number[], dtype: tf.DataType): object {
    if (dtype === 'string') {
      const dataId = { id: this.nextId++ };
      this.data.set(dataId, {
        ptr: 0,
        storage: 'u8',
        size: values.length,
        refCount: 1,
        strings: values as Uint8Array[],
      });
      this.count++;
      return dataId;
    }
    if (dtype === 'complex64') throw new Error('cuda backend: complex64 tensors are not supported');
    const info = this.allocate(shape, dtype);
    const d = this.data.get(info.dataId)!;
    if (d.size > 0 && values != null) this.device.write(d.ptr, values as ArrayBufferView);
    return info.dataId;
  }

  makeTensorInfo(shape: number[], dtype: tf.DataType, values?: tf.backend_util.BackendValues): tf.TensorInfo {
    if (values === undefined) return this.allocate(shape, dtype);
    return { dataId: this.write(values, shape, dtype), shape, dtype };
  }

  override move(
    dataId: object,
    values: tf.backend_util.BackendValues,
    shape: number[],
    dtype: tf.DataType,
    refCount: number,
  ): void {
    const id = this.write(values, shape, dtype);
    const d = this.data.get(id)!;
    this.data.delete(id);
    this.count--;
    d.refCount = refCount;
    this.data.set(dataId, d);
    this.count++;
  }

  override refCount(dataId: object): number {
    return this.data.get(dataId)?.refCount ?? 0;
  }

  override incRef(dataId: object): void {
    const d = this.data.get(dataId);
    if (d) d.refCount++;
  }

  override disposeData(dataId: object, force = false): boolean {
    const d = this.data.get(dataId);
    if (!d) return true;
    if (force) d.refCount = 0;
    else d.refCount--;
    if (d.refCount > 0) return false;
    if (d.ptr) this.device.free(d.ptr);
    this.data.delete(dataId);
    this.count--;
    const after = this.onFree.get(dataId);
    if (after) {
      this.onFree.delete(dataId);
      after();
    }
    return true;
  }

  private readonly onFree = new WeakMap<object, () => void>();

  /** Runs `f` once the data is freed (what was derived from it goes with it). */
  whenFreed(dataId: object, f: () => void): void {
    this.onFree.set(dataId, f);
  }

  /** Frees data made by `allocate` that never became a tfjs tensor. */
  release(t: tf.TensorInfo): void {
    this.disposeData(t.dataId, true);
  }

  override numDataIds(): number {
    return this.count;
  }

  override readSync(dataId: object): tf.backend_util.BackendValues {
    const d = this.data.get(dataId);
    if (!d) throw new Error('cuda backend: reading tensor data that is not on this backend');
    if (d.strings) return d.strings;
    return decode(d, this.device.read(d.ptr, d.size * bytesPer(d.storage)));
  }

  /** The value as of this call (device.readAsync), without blocking the thread. */
  override async read(dataId: object): Promise<tf.backend_util.BackendValues> {
    const d = this.data.get(dataId);
    if (!d) throw new Error('cuda backend: reading tensor data that is not on this backend');
    if (d.strings) return d.strings;
    return decode(d, await this.device.readAsync(d.ptr, d.size * bytesPer(d.storage)));
  }

  override memory(): { unreliable: boolean; reasons?: string[] } & Record<string, unknown> {
    const s = this.device.allocator.stats();
    return {
      unreliable: false,
      numBytesInGPU: s.inUse,
      numBytesInGPUAllocated: s.reserved,
      peakBytesInGPU: s.peakInUse,
    };
  }

  override timerAvailable(): boolean {
    return true;
  }

  override async time(f: () => void): Promise<tf.BackendTimingInfo> {
    const start = this.device.event();
    const end = this.device.event();
    this.device.record(start);
    f();
    this.device.record(end);
    await this.device.idle();
    const kernelMs = this.device.elapsed(start, end);
    this.device.releaseEvent(start);
    this.device.releaseEvent(end);
    return { kernelMs };
  }

  override floatPrecision(): 32 {
    return 32;
  }

  override epsilon(): number {
    return 1e-7;
  }

  override dispose(): void {
    this.device.synchronize();
  }
}

function decode(d: CudaData, bytes: Uint8Array): tf.backend_util.BackendValues {
  const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  switch (d.storage) {
    case 'f32':
      return new Float32Array(buf);
    case 'bf16':
      return bf16ToF32(new Uint16Array(buf));
    case 'i32':
      return new Int32Array(buf);
    case 'u8':
      return new Uint8Array(buf);
  }
}

/** The active backend when it is cuda, else null. */
export function cudaBackend(): CudaBackend | null {
  return tf.getBackend() === CUDA_BACKEND ? (tf.backend() as CudaBackend) : null;
}

export function cudaBackendOrThrow(): CudaBackend {
  const b = cudaBackend();
  if (!b) throw new Error('cuda kernels: the active tfjs backend is not cuda');
  return b;
}

/** Registers the backend with tfjs (the device opens when tfjs first initialises it). */
export function registerCudaBackend(priority = 4): void {
  if (tf.findBackendFactory(CUDA_BACKEND) != null) return;
  tf.registerBackend(CUDA_BACKEND, () => new CudaBackend(cudaDevice()), priority);
}
