/**
 * NCCL for the cuda backend's data-parallel training (docs/multi-gpu.md): libnccl.so.2 from PyPI's
 * nvidia-nccl-cu13 wheel (scripts/setup-cuda.sh --nccl puts it under the CUDA folder, nccl/lib),
 * called through koffi like the driver (driver.ts). One communicator per rank, made from an id that
 * rank 0 creates and broadcasts over the ranks' TCP ring; the gradient all-reduce is one group of
 * ncclAllReduce calls (ncclAvg) on the backend's stream, so it runs in stream order with the step's
 * kernels and a CUDA graph captures it with them (graphs.ts).
 *
 * NVLink multicast (NVLS) is turned off (NCCL_NVLS_ENABLE=0) unless the environment says otherwise:
 * the GPU machines this runs on are shared, and multicast objects are a machine-wide resource.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import type * as tf from '../tfjs.js';
import type { TcpRing } from '../parallel/tcp-ring.js';
import { toTensor } from './custom-op.js';
import { koffi } from './driver.js';
import { cudaHome } from './libraries.js';
import { cudaBackendOrThrow } from './tfjs-backend.js';

type Fn = (...args: unknown[]) => unknown;

/** The pinned wheel (scripts/setup-cuda.sh): NCCL 2.28.9 reports 22809. */
export const NCCL_VERSION = 22809;
const UNIQUE_ID_BYTES = 128;

/** nccl.h's values of the enums passed. */
export const NCCL_ENUMS = { ncclSuccess: 0, ncclInProgress: 7, ncclAvg: 4, ncclFloat32: 7, ncclBfloat16: 9 } as const;

/** Every binding, as the C prototype koffi parses (ncclComm_t and cudaStream_t are void*, buffers uint64_t device addresses). */
export const NCCL_BINDINGS = [
  'int ncclGetVersion(_Out_ int* version)',
  'int ncclGetUniqueId(_Out_ ncclUniqueId* uniqueId)',
  'int ncclCommInitRank(_Out_ void** comm, int nranks, ncclUniqueId commId, int rank)',
  'int ncclAllReduce(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int op, void* comm, void* stream)',
  'int ncclGroupStart()',
  'int ncclGroupEnd()',
  'int ncclCommGetAsyncError(void* comm, _Out_ int* asyncError)',
  'int ncclCommDestroy(void* comm)',
  'int ncclCommAbort(void* comm)',
  'const char* ncclGetErrorString(int result)',
  'const char* ncclGetLastError(void* comm)',
] as const;

/** Where libnccl.so.2 is expected: <CUDA folder>/nccl/lib (env OFFSHOOT_NCCL_HOME names another folder with lib/). */
export function ncclLibraryPath(): string {
  const home = process.env.OFFSHOOT_NCCL_HOME?.trim() || path.join(cudaHome(), 'nccl');
  return path.join(home, 'lib', 'libnccl.so.2');
}

/** The bound functions, by library file. */
const bound = new Map<string, Record<string, Fn>>();
let idTypeDeclared = false;

/** Loads libnccl.so.2 (ncclLibraryPath) and binds every function; throws naming the file and the setup step. */
export function loadNccl(): Record<string, Fn> {
  const file = ncclLibraryPath();
  const known = bound.get(file);
  if (known) return known;
  if (!fs.existsSync(file))
    throw new Error(
      `NCCL not found: no ${file}; run scripts/setup-cuda.sh --nccl (or set OFFSHOOT_NCCL_HOME to a folder with lib/libnccl.so.2)`,
    );
  const k = koffi();
  if (!idTypeDeclared) {
    k.struct('ncclUniqueId', { internal: k.array('uint8_t', UNIQUE_ID_BYTES, 'Typed') });
    idTypeDeclared = true;
  }
  let lib;
  try {
    lib = k.load(file);
  } catch (e) {
    throw new Error(`${file}: ${(e as Error).message}`);
  }
  const fns: Record<string, Fn> = {};
  for (const proto of NCCL_BINDINGS) fns[/(\w+)\(/.exec(proto)![1]] = lib.func(proto) as Fn;
  bound.set(file, fns);
  return fns;
}

/** The version libnccl reports, e.g. 22809 for 2.28.9. */
export function ncclVersion(): number {
  const v: [number] = [0];
  check('ncclGetVersion', loadNccl().ncclGetVersion(v));
  return v[0];
}

function check(name: string, status: unknown, comm?: unknown): void {
  if (status === NCCL_ENUMS.ncclSuccess) return;
  const fn = loadNccl();
  const detail = comm ? String(fn.ncclGetLastError(comm) ?? '') : '';
  throw new Error(
    `${name} failed: ${String(fn.ncclGetErrorString(status))} (${String(status)})${detail ? `: ${detail}` : ''}`,
  );
}

/** The cuda backend's gradient all-reduce over NCCL (a DeviceAllReduce, core/model/parallel). */
export interface NcclAllReduce {
  readonly kind: 'device';
  readonly rank: number;
  readonly worldSize: number;
  allReduceMean(tensors: tf.Tensor[]): tf.Tensor[];
  destroy(): void;
}

/**
 * Creates this rank's NCCL communicator: rank 0 makes the id, the TCP ring hands it to the others,
 * every rank joins (ncclCommInitRank returns once all have). The cuda backend must be active.
 */
export async function ncclAllReduce(ring: TcpRing): Promise<NcclAllReduce> {
  process.env.NCCL_NVLS_ENABLE ??= '0';
  const fn = loadNccl();
  const b = cudaBackendOrThrow();
  let id: Uint8Array | undefined;
  if (ring.rank === 0) {
    const out: { internal?: Uint8Array } = {};
    check('ncclGetUniqueId', fn.ncclGetUniqueId(out));
    id = Uint8Array.from(out.internal!);
  }
  id = await ring.broadcast(id);
  if (id.length !== UNIQUE_ID_BYTES)
    throw new Error(`NCCL: rank ${ring.rank} got an id of ${id.length} bytes, expected ${UNIQUE_ID_BYTES}`);
  const comm: [unknown] = [null];
  check('ncclCommInitRank', fn.ncclCommInitRank(comm, ring.worldSize, { internal: id }, ring.rank));
  let alive = true;
  return {
    kind: 'device',
    rank: ring.rank,
    worldSize: ring.worldSize,
    allReduceMean(tensors) {
      if (!alive) throw new Error('NCCL: the communicator is destroyed');
      const stream = b.device.stream;
      const outs = tensors.map((t) => {
        const src = b.operand(t);
        if (src.storage !== 'f32' && src.storage !== 'bf16')
          throw new Error(`NCCL all-reduce: ${src.storage} tensors are not averaged (f32 or bf16 only)`);
        const out = b.allocate(t.shape, t.dtype, src.storage);
        return { src, out };
      });
      check('ncclGroupStart', fn.ncclGroupStart());
      for (const { src, out } of outs) {
        if (src.size === 0) continue;
        const type = src.storage === 'bf16' ? NCCL_ENUMS.ncclBfloat16 : NCCL_ENUMS.ncclFloat32;
        check(
          'ncclAllReduce',
          fn.ncclAllReduce(src.ptr, b.operand(out).ptr, src.size, type, NCCL_ENUMS.ncclAvg, comm[0], stream),
          comm[0],
        );
      }
      check('ncclGroupEnd', fn.ncclGroupEnd(), comm[0]);
      return outs.map(({ out }) => toTensor(out));
    },
    destroy() {
      if (!alive) return;
      alive = false;
      // Abort, not destroy: a peer may be gone, and destroy would wait for it.
      fn.ncclCommAbort(comm[0]);
    },
  };
}
