/**
 * GPU time per dispatch on the WebGPU backend, for every compute dispatch in a stretch of work: the
 * fused kernels (runtime.ts) and tfjs's own programs alike, forward, backward and optimiser (tfjs's
 * tf.profile only times kernels run as ops, so it misses what gradient functions dispatch), in eager
 * and replayed steps (replay.ts) alike. Each dispatch gets its own compute pass with timestamp
 * writes; the durations are read back at the end.
 * Needs the 'timestamp-query' feature. Slows the work it measures (one pass per dispatch).
 *
 * A pass's first timestamp is not where its dispatch starts (passDurations says why and what is
 * counted instead).
 */
/// <reference types="@webgpu/types" />
import { type WebGPUBackendInternals, setDispatchHook, webgpuBackend } from './runtime.js';

const SET_SIZE = 4096;

export interface GpuProfile {
  /** Sum of the dispatches' GPU times. */
  totalMs: number;
  dispatches: number;
  /** Per kernel name and grid (offshoot's kernels; tfjs's programs by name): total ms and count, largest first. */
  byName: Array<{ name: string; ms: number; count: number }>;
  /** GPU time from the first dispatch's start to the last one's end. */
  spanMs: number;
  /** Time in the span the GPU had no dispatch to run (waiting on the host), and the longest such waits. */
  idleMs: number;
  longestIdle: Array<{ ms: number; after: string; before: string }>;
}

/**
 * The GPU's waits between passes: pass i's first timestamp later than pass i-1's last means the GPU
 * had finished the work before it and nothing was queued yet (the host was still recording).
 */
export function passGaps(ts: BigUint64Array, n: number): number[] {
  return Array.from({ length: n }, (_, i) => {
    if (i === 0) return 0;
    const d = Number(ts[2 * i] - ts[2 * i - 1]) / 1e6;
    return Number.isFinite(d) && d > 0 && d < 1e4 ? d : 0;
  });
}

/**
 * Milliseconds of each of n passes from their timestamps (begin, end pairs in order). Dawn's Vulkan
 * backend writes a compute pass's first timestamp at the top of the pipe, before the barrier that
 * makes its dispatch wait for the work ahead of it (CommandBufferVk.cpp, RecordComputePass), so it
 * can be taken while that work still runs: each pass counts from the later of its first timestamp
 * and the previous pass's last, and the passes share the GPU's time out instead of counting a wait
 * in two of them. (Counted from the first timestamps, a pythia-160m step's logits product took
 * 2.46 ms in the profile of an H100 and 1.66 timed alone.) Missing or inconsistent stamps count 0.
 */
export function passDurations(ts: BigUint64Array, n: number): number[] {
  return Array.from({ length: n }, (_, i) => {
    const begin = i > 0 && ts[2 * i - 1] > ts[2 * i] ? ts[2 * i - 1] : ts[2 * i];
    const d = Number(ts[2 * i + 1] - begin) / 1e6;
    return Number.isFinite(d) && d >= 0 && d < 1e4 ? d : 0;
  });
}

export async function profileGpu(work: () => Promise<void>): Promise<GpuProfile | null> {
  const b = webgpuBackend();
  if (!b?.device.features.has('timestamp-query')) return null;
  const sets: GPUQuerySet[] = [];
  const names: string[] = [];
  const next = (name: string): GPUComputePassTimestampWrites => {
    const i = names.length;
    names.push(name);
    const s = Math.floor((2 * i) / SET_SIZE);
    while (sets.length <= s) sets.push(b.device.createQuerySet({ type: 'timestamp', count: SET_SIZE }));
    const j = (2 * i) % SET_SIZE;
    return { querySet: sets[s], beginningOfPassWriteIndex: j, endOfPassWriteIndex: j + 1 };
  };
  const begin = (name: string, grid?: [number, number, number]) => {
    b.ensureCommandEncoderReady();
    b.endComputePassEncoder();
    const label = grid ? `${name} ${grid.join('x')}` : name;
    b.computePassEncoder = b.commandEncoder!.beginComputePass({ timestampWrites: next(label) });
  };
  const end = () => b.endComputePassEncoder();

  // tfjs's programs: open a timed pass before each, close it after.
  const internals = b as unknown as {
    recordAndSubmit: (program: { constructor: { name: string } }, ...rest: unknown[]) => void;
  };
  const original = internals.recordAndSubmit;
  internals.recordAndSubmit = function (this: WebGPUBackendInternals, program, ...rest) {
    begin(program.constructor.name);
    const r = original.call(this, program, ...rest);
    end();
    return r;
  };
  setDispatchHook({
    begin,
    end,
    replayPass: (encoder, name, grid) =>
      encoder.beginComputePass({ timestampWrites: next(`${name} ${grid.join('x')}`) }),
  });
  try {
    await work();
  } finally {
    internals.recordAndSubmit = original;
    setDispatchHook(null);
  }
  b.endComputePassEncoder();
  b.ensureCommandEncoderReady();
  const bytes = sets.length * SET_SIZE * 8;
  const resolve = b.device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const read = b.device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  sets.forEach((s, i) => b.commandEncoder!.resolveQuerySet(s, 0, SET_SIZE, resolve, i * SET_SIZE * 8));
  b.commandEncoder!.copyBufferToBuffer(resolve, 0, read, 0, bytes);
  b.submitQueue();
  await read.mapAsync(GPUMapMode.READ);
  const ts = new BigUint64Array(read.getMappedRange().slice(0));
  read.unmap();
  for (const x of [resolve, read]) x.destroy();
  for (const s of sets) s.destroy();
  const agg = new Map<string, { ms: number; count: number }>();
  let total = 0;
  const durations = passDurations(ts, names.length);
  names.forEach((name, i) => {
    const ms = durations[i];
    total += ms;
    const a = agg.get(name) ?? { ms: 0, count: 0 };
    a.ms += ms;
    a.count += 1;
    agg.set(name, a);
  });
  const byName = [...agg.entries()]
    .map(([name, a]) => ({ name, ms: a.ms, count: a.count }))
    .sort((x, y) => y.ms - x.ms);
  const gaps = passGaps(ts, names.length);
  const longestIdle = gaps
    .map((ms, i) => ({ ms, after: names[i - 1], before: names[i] }))
    .filter((g) => g.ms > 0)
    .sort((x, y) => y.ms - x.ms)
    .slice(0, 10);
  const n = names.length;
  const spanMs = n > 0 ? Math.max(0, Number(ts[2 * n - 1] - ts[0]) / 1e6) : 0;
  return { totalMs: total, dispatches: n, byName, spanMs, idleMs: gaps.reduce((a, b) => a + b, 0), longestIdle };
}
