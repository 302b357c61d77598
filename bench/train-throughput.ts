/**
 * Training throughput: tokens/s of offshoot's training step (forward, backward, clipping, AdamW)
 * per backend, one JSON line each, with achieved TFLOP/s (training FLOPs per token as core/subnet
 * counts them: 6·N + 3·attention, full T), MFU (that against the GPU's bf16 peak, gpu-peak.ts) and
 * peak memory, and the ratio to a baseline measured in the same run: PyTorch on the same shape when
 * `--torch PYTHON` is given (the GPU machine), else the best of the other backends.
 *
 *   node dist/bench/train-throughput.js --config sotu-teacher[,tiny,...] [--backends cpu,wasm,webgpu,webgpu-unfused,tensorflow,tensorflow-stock]
 *        [--steps 10] [--warmup 2] [--warmup-seconds 2] [--batch-size B] [--seq-len T] [--torch python3] [--torch-device cuda]
 *        [--teacher PRESET [--teacher-top-k K]]
 *
 * --teacher measures distillation steps instead: a teacher of that preset (random weights, the
 * student's vocabulary) in the same process runs its forward pass every step, and the student
 * distills from its full logits, or from their top K as the teacher service sends them. The FLOPs
 * then count the teacher's forward too; PyTorch has no counterpart, so --torch is refused.
 *
 * `webgpu-unfused` is the webgpu backend with offshoot's fused kernels turned off (tfjs's stock
 * kernels only); `tensorflow-stock` the tensorflow backend without offshoot's TensorFlow ops
 * (core/model/tensorflow). A variant is never the baseline of its own backend. Each backend runs in its own child process, so one backend's memory or crash does
 * not touch another. bench/gpu-train.ts is the GPU machine's entry to the same code.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { type BackendName, initBackend } from '../core/model/backend.js';
import { precision } from '../core/model/precision.js';
import {
  DEFAULT_DISTILL,
  GPTNeoX,
  MODEL_PRESETS,
  Trainer,
  afterFirstTrainingStep,
  inProcessTeacher,
  parameterCount,
  presetConfig,
  trainingHyperparameters,
} from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { setTensorflowKernels } from '../core/model/tensorflow/native.js';
import { setFusedKernels } from '../core/model/webgpu/fused.js';
import type { TuneResult } from '../core/model/webgpu/matmul.js';
import { profileGpu } from '../core/model/webgpu/profiler.js';
import { gpuBytesAllocated, withDeviceErrors } from '../core/model/webgpu/runtime.js';
import { forwardFlops } from '../core/subnet/count.js';
import { mfu } from './gpu-peak.js';

/** A backend to measure: a tfjs backend, webgpu with the fused kernels off, or tensorflow with its own ops off. */
export type BenchBackend = BackendName | 'webgpu-unfused' | 'tensorflow-stock';

/** The tfjs backend a measured variant runs on. */
function baseBackend(which: BenchBackend): BackendName {
  return which === 'webgpu-unfused' ? 'webgpu' : which === 'tensorflow-stock' ? 'tensorflow' : which;
}

/** Batch shape and vocabulary per preset (the pythia shapes use Pythia's own). */
const SHAPES: Record<string, { vocab: number; batchSize: number; seqLen: number }> = {
  tiny: { vocab: 256, batchSize: 8, seqLen: 64 },
  'sotu-teacher': { vocab: 1024, batchSize: 8, seqLen: 64 },
  '10m': { vocab: 1024, batchSize: 8, seqLen: 128 },
  'pythia-70m': { vocab: 50304, batchSize: 8, seqLen: 512 },
  'pythia-160m': { vocab: 50304, batchSize: 8, seqLen: 512 },
  'pythia-410m': { vocab: 50304, batchSize: 8, seqLen: 512 },
};

/** PyTorch's modes: f32 eager, bf16 autocast eager, bf16 autocast under torch.compile (bench/torch_reference.py). */
export type TorchMode = 'f32' | 'bf16' | 'bf16-compile';
const TORCH_MODES: readonly TorchMode[] = ['f32', 'bf16', 'bf16-compile'];

export interface Args {
  config: string;
  backends: BenchBackend[];
  steps: number;
  warmup: number;
  /**
   * Warm-up steps go on until this much time has passed too (both sides, PyTorch's as well): a GPU's
   * clocks and a JIT need more than a few steps of a small model, which then read slow.
   */
  warmupSeconds: number;
  batchSize?: number;
  seqLen?: number;
  torch?: string;
  torchDevice: string;
  /** PyTorch modes to measure (each its own line); the last is the ratio's baseline. */
  torchModes: TorchMode[];
  only?: BenchBackend;
  /** Profile one step after timing (per-kernel GPU time, webgpu) and print it. */
  profile?: boolean;
  /** Distillation steps from an in-process teacher of this preset. */
  teacher?: string;
  /** Distill from the teacher's top k logits instead of all of them. */
  teacherTopK?: number;
}

export function parseArgs(argv: string[]): Args {
  const args: Args = {
    config: 'sotu-teacher',
    backends: ['cpu', 'wasm', 'webgpu', 'tensorflow'],
    steps: 10,
    warmup: 2,
    warmupSeconds: 2,
    torchDevice: 'cuda',
    torchModes: ['f32'],
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[++i];
    if (value === undefined) throw new Error(`${key} needs a value`);
    const int = (): number => {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${key} must be a positive integer, got ${value}`);
      return n;
    };
    switch (key) {
      case '--config':
        for (const c of value.split(','))
          if (!(c in SHAPES))
            throw new Error(
              `--config must be one of ${Object.keys(SHAPES).join(', ')} (or a comma-separated list), got ${c}`,
            );
        args.config = value;
        break;
      case '--backends':
        args.backends = value.split(',') as BenchBackend[];
        break;
      case '--steps':
        args.steps = int();
        break;
      case '--warmup':
        args.warmup = int();
        break;
      case '--warmup-seconds': {
        const t = Number(value);
        if (!Number.isFinite(t) || t < 0)
          throw new Error(`${key} must be a number of seconds, 0 or more, got ${value}`);
        args.warmupSeconds = t;
        break;
      }
      case '--batch-size':
        args.batchSize = int();
        break;
      case '--seq-len':
        args.seqLen = int();
        break;
      case '--torch':
        args.torch = value;
        break;
      case '--torch-device':
        args.torchDevice = value;
        break;
      case '--torch-modes':
        for (const m of value.split(','))
          if (!(TORCH_MODES as readonly string[]).includes(m))
            throw new Error(`--torch-modes takes ${TORCH_MODES.join(', ')}, got ${m}`);
        args.torchModes = value.split(',') as TorchMode[];
        break;
      case '--only':
        args.only = value as BenchBackend;
        break;
      case '--profile':
        args.profile = value === '1' || value === 'true';
        break;
      case '--teacher':
        if (!(value in SHAPES))
          throw new Error(`--teacher must be one of ${Object.keys(SHAPES).join(', ')}, got ${value}`);
        args.teacher = value;
        break;
      case '--teacher-top-k':
        args.teacherTopK = int();
        break;
      default:
        throw new Error(`unknown argument ${key}`);
    }
  }
  if (args.teacherTopK && !args.teacher) throw new Error('--teacher-top-k needs --teacher');
  if (args.teacher && args.torch)
    throw new Error('--teacher measures distillation, which bench/torch_reference.py does not: leave out --torch');
  return args;
}

export interface Measurement {
  backend: string;
  tokensPerSecond?: number;
  stepMs?: number;
  /** Host time per step to record it (trainStep returning, before the GPU finishes): near stepMs means host-bound. */
  hostMs?: number;
  /** PyTorch's GPU busy time per step (its kernels' summed time, profiled): well below stepMs means its host held it back. */
  gpuMs?: number;
  error?: string;
  detail?: string;
  peakRssMiB?: number;
  /** GPU memory the backend allocated (tfjs's WebGPU buffer pool keeps freed buffers, so this is its high-water mark), or PyTorch's max_memory_allocated. */
  peakGpuMiB?: number;
  finalLoss?: number;
  /** Matrix-product plans the autotuner chose (webgpu with fused kernels). */
  autotune?: TuneResult[];
  /** Mixed precision's loss scale at the end and the steps it skipped (webgpu's f16 products). */
  lossScale?: { scale: number; skippedSteps: number };
  /** Kernel launches and library calls per training step (cuda). */
  launchesPerStep?: number;
  /** Timed steps replayed from a CUDA graph (cuda) or a recording (webgpu). */
  replayedSteps?: number;
  /** tfjs kernels that ran through the host during the timed steps, with counts (cuda). */
  viaHost?: Record<string, number>;
  /** GPU time per kernel (webgpu: per kernel and grid) over one profiled step (--profile 1). */
  profile?: {
    totalMs: number;
    dispatches: number;
    /** webgpu: first dispatch's start to the last one's end, and the GPU's idle time in it (waiting on the host). */
    spanMs?: number;
    idleMs?: number;
    longestIdle?: Array<[number, string, string]>;
    top: Array<[string, number, number]>;
  };
}

/** GPU time per kernel over one step (webgpu): every dispatch timed (core/model/webgpu/profiler.ts). */
async function profileStep(step: () => Promise<void>): Promise<Measurement['profile']> {
  const p = await profileGpu(step);
  if (!p) return undefined;
  return {
    totalMs: Number(p.totalMs.toFixed(2)),
    dispatches: p.dispatches,
    spanMs: Number(p.spanMs.toFixed(2)),
    idleMs: Number(p.idleMs.toFixed(2)),
    longestIdle: p.longestIdle.map((g) => [Number(g.ms.toFixed(3)), g.after, g.before] as [number, string, string]),
    top: p.byName.slice(0, 40).map((e) => [e.name, Number(e.ms.toFixed(3)), e.count] as [string, number, number]),
  };
}

/** Runs in the child: trains `warmup + steps` steps on synthetic tokens and times the last `steps`. */
async function measure(args: Args, which: BenchBackend): Promise<Measurement> {
  const info = await initBackend(baseBackend(which), () => {});
  if (which === 'webgpu-unfused') {
    setFusedKernels(false);
    info.detail = info.detail?.replace(/fused kernels on.*$/, 'fused kernels off (tfjs stock kernels, f32)');
  }
  if (which === 'cuda') info.detail = `${info.detail}, precision ${precision()}`;
  if (which === 'tensorflow-stock') {
    setTensorflowKernels(false);
    info.detail = `${info.detail}, TensorFlow ops off`;
  }
  const shape = SHAPES[args.config];
  const batchSize = args.batchSize ?? shape.batchSize;
  const seqLen = args.seqLen ?? shape.seqLen;
  const config = presetConfig(args.config, shape.vocab);
  const n = batchSize * seqLen;
  const batches = (step: number) => {
    const input = new Int32Array(n);
    const target = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      input[i] = (i * 7919 + step * 104729) % shape.vocab;
      target[i] = (i * 7919 + step * 104729 + 1) % shape.vocab;
    }
    return { batchSize, seqLen, input, target };
  };
  // The learning-rate schedule's length only: a time-based warm-up may take more steps (the schedule then stays at its end).
  const total = args.warmup + args.steps;
  const teacher = args.teacher ? GPTNeoX.random(presetConfig(args.teacher, shape.vocab), 2) : undefined;
  const trainer = new Trainer(GPTNeoX.random(config, 1), {
    hyper: trainingHyperparameters({ steps: total, lr: 1e-4, warmup: 1 }, { batchSize, seqLen, seed: 1 }),
    batches,
    ...(teacher ? { teacher: inProcessTeacher(teacher, { topK: args.teacherTopK }), distill: DEFAULT_DISTILL } : {}),
  });
  let finalLoss = NaN;
  let hostMs = 0;
  const step = async (read: boolean) => {
    const h0 = performance.now();
    const { loss, gradNorm } = await trainer.trainStep();
    hostMs += performance.now() - h0;
    if (read) finalLoss = (await loss.data())[0];
    tf.dispose([loss, gradNorm]);
  };
  let autotune: TuneResult[] | undefined;
  // The optimiser's state appears in the first step, which moves the step's state, so the step is
  // captured as a CUDA graph (core/model/cuda/graphs.ts) or recorded (core/model/webgpu/replay.ts) in
  // the fourth step; only replayed steps are timed.
  const graphs =
    (which === 'cuda' && process.env.OFFSHOOT_CUDA_GRAPHS !== '0') ||
    (which === 'webgpu' && process.env.OFFSHOOT_WEBGPU_REPLAY !== '0');
  const warmup = graphs ? Math.max(args.warmup, 4) : args.warmup;
  let warmStart = performance.now();
  for (let i = 0; i < warmup || performance.now() - warmStart < args.warmupSeconds * 1000; i++) {
    await step(true);
    // After the first step every shape has been seen: what the trainer does then in a long run (webgpu
    // times the candidate matrix-product plans), as the timed steps stand for one.
    if (i === 0) {
      const tuned = await afterFirstTrainingStep(Number.POSITIVE_INFINITY);
      if (tuned.length > 0) autotune = tuned as TuneResult[];
      warmStart = performance.now();
    }
  }
  const cuda = which === 'cuda' ? await import('../core/model/cuda/index.js') : undefined;
  cuda?.resetFallbackCounts();
  cuda?.openedCudaDevice()?.allocator.resetPeaks();
  const launches0 = cuda?.openedCudaDevice()?.launches ?? 0;
  const graphStats = cuda
    ? (await import('../core/model/cuda/register.js')).graphStats
    : which === 'webgpu'
      ? (await import('../core/model/webgpu/replay.js')).replayStats
      : undefined;
  const replays0 = graphStats?.().replays ?? 0;
  const t0 = performance.now();
  hostMs = 0;
  const timedSteps = async () => {
    for (let i = 0; i < args.steps; i++) await step(i === args.steps - 1);
  };
  // A kernel the device refused (its command buffer dropped) would leave a time that is not the model's.
  let deviceErrors: string[] = [];
  if (which === 'webgpu') deviceErrors = (await withDeviceErrors(timedSteps)).errors;
  else await timedSteps();
  const ms = (performance.now() - t0) / args.steps;
  if (deviceErrors.length > 0)
    throw new Error(`webgpu: the device reported errors during the timed steps: ${deviceErrors.join('; ')}`);
  // Read before the profiled step, which records with timestamp queries and adds to hostMs.
  const hostMsPerStep = hostMs / args.steps;
  const gpuBytes = gpuBytesAllocated();
  const cudaStats = cuda?.openedCudaDevice()?.allocator.stats();
  const peakGpuMiB =
    gpuBytes !== null
      ? Math.round(gpuBytes / 2 ** 20)
      : cudaStats
        ? Math.round(cudaStats.peakInUse / 2 ** 20)
        : undefined;
  const viaHost = cuda?.fallbackCounts();
  const launchesPerStep = cuda ? ((cuda.openedCudaDevice()?.launches ?? 0) - launches0) / args.steps : undefined;
  const replayedSteps = graphStats ? graphStats().replays - replays0 : undefined;
  let profile = args.profile && gpuBytes !== null ? await profileStep(() => step(true)) : undefined;
  if (args.profile && cuda) {
    const { profileEagerly } = await import('../core/model/cuda/register.js');
    const p = await profileEagerly(() => step(true));
    profile = {
      totalMs: Number(p.totalMs.toFixed(2)),
      dispatches: p.launches,
      top: p.byName.slice(0, 30).map((e) => [e.name, Number(e.ms.toFixed(3)), e.count] as [string, number, number]),
    };
  }
  const lossScale = await trainer.optimizer.lossScale?.read();
  trainer.dispose();
  teacher?.dispose();
  return {
    backend: which,
    lossScale,
    tokensPerSecond: (n * 1000) / ms,
    stepMs: ms,
    hostMs: hostMsPerStep,
    detail: info.detail,
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
    peakGpuMiB,
    finalLoss,
    autotune,
    profile,
    ...(viaHost && Object.keys(viaHost).length ? { viaHost } : {}),
    launchesPerStep,
    replayedSteps,
  };
}

function lastJsonLine(text: string): Record<string, unknown> | undefined {
  const lines = text
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'));
  return lines.length ? JSON.parse(lines[lines.length - 1]) : undefined;
}

/** Training FLOPs per token: 6·N_f + 3·attention (full T), as core/subnet/count.ts counts them. */
export function trainingFlopsPerToken(config: ReturnType<typeof presetConfig>, seqLen: number): number {
  return 3 * forwardFlops(config, { seqLen }).forward;
}

function runTorch(args: Args, mode: TorchMode): Measurement {
  const shape = SHAPES[args.config];
  const preset = MODEL_PRESETS[args.config];
  // Beside this file in the source tree; two levels up from dist/bench/ in a build.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const script = [
    path.join(here, 'torch_reference.py'),
    path.join(here, '..', '..', 'bench', 'torch_reference.py'),
  ].find((f) => fs.existsSync(f))!;
  const res = spawnSync(
    args.torch!,
    [
      script,
      '--vocab',
      String(shape.vocab),
      '--hidden',
      String(preset.hiddenSize),
      '--layers',
      String(preset.numLayers),
      '--heads',
      String(preset.numHeads),
      '--batch-size',
      String(args.batchSize ?? shape.batchSize),
      '--seq-len',
      String(args.seqLen ?? shape.seqLen),
      '--steps',
      String(args.steps),
      '--warmup',
      String(args.warmup),
      '--warmup-seconds',
      String(args.warmupSeconds),
      '--device',
      args.torchDevice,
      '--mode',
      mode,
    ],
    { encoding: 'utf8', env: { ...process.env, PYTHONUNBUFFERED: '1' } },
  );
  const parsed = lastJsonLine(res.stdout ?? '');
  if (res.status !== 0 || !parsed)
    return {
      backend: `pytorch ${mode}`,
      error: (res.stderr || res.stdout || 'failed').trim().split('\n').slice(-3).join(' | '),
    };
  return {
    backend: `pytorch ${mode}`,
    tokensPerSecond: parsed.tokensPerSecond as number,
    stepMs: parsed.stepMs as number,
    detail: parsed.detail as string,
    gpuMs: (parsed.gpuMs as number | null) ?? undefined,
    peakGpuMiB: (parsed.peakGpuMiB as number | null) ?? undefined,
    finalLoss: parsed.loss as number | undefined,
  };
}

/** Measures one configuration (args.config is a single preset): every backend in its own process, then PyTorch. */
export async function runConfig(args: Args): Promise<Record<string, unknown>[]> {
  const self = fileURLToPath(import.meta.url);
  const results: Measurement[] = [];
  // The JSON lines come once a configuration's measurements are all in (they carry ratios between
  // them); each measurement says so on stderr as it ends, so a run cut short still shows its figures.
  const timed = (run: () => Measurement): Measurement => {
    const t0 = performance.now();
    const m = run();
    const took = `${((performance.now() - t0) / 1000).toFixed(0)} s`;
    const what = m.error ? `failed: ${m.error}` : `${Math.round(m.tokensPerSecond!)} tokens/s`;
    process.stderr.write(`train-throughput: ${args.config} ${m.backend}: ${what} (${took})\n`);
    return m;
  };
  for (const backend of args.backends) {
    const childArgs = toArgv({ ...args, only: backend });
    results.push(
      timed(() => {
        const res = spawnSync(process.execPath, [...process.execArgv, self, ...childArgs], {
          encoding: 'utf8',
          maxBuffer: 64 * 2 ** 20,
        });
        return (
          (lastJsonLine(res.stdout ?? '') as Measurement | undefined) ?? {
            backend,
            error: `exited ${res.status}: ${(res.stderr ?? '').trim().split('\n').pop()}`,
          }
        );
      }),
    );
  }
  const torchRuns = args.torch ? args.torchModes.map((m) => timed(() => runTorch(args, m))) : [];
  // The ratio's baseline: the last mode measured (the strongest when modes are listed weakest first).
  const torch = torchRuns.length ? torchRuns[torchRuns.length - 1] : undefined;
  const shape = SHAPES[args.config];
  const config = presetConfig(args.config, shape.vocab);
  const seqLen = args.seqLen ?? shape.seqLen;
  // A distillation step also runs the teacher's forward pass on every token.
  const teacherFlopsPerToken = args.teacher
    ? forwardFlops(presetConfig(args.teacher, shape.vocab), { seqLen }).forward
    : 0;
  const studentFlopsPerToken = trainingFlopsPerToken(config, seqLen);
  const flopsPerToken = studentFlopsPerToken + teacherFlopsPerToken;
  const tflops = (tps: number) => Number(((tps * flopsPerToken) / 1e12).toFixed(2));
  const common = {
    bench: 'train-throughput',
    config: args.config,
    parameters: parameterCount(config),
    batchSize: args.batchSize ?? shape.batchSize,
    seqLen,
    steps: args.steps,
    trainingFlopsPerToken: studentFlopsPerToken,
    ...(args.teacher
      ? {
          teacher: args.teacher,
          distill: args.teacherTopK ? `top-${args.teacherTopK}` : 'full logits',
          teacherFlopsPerToken,
        }
      : {}),
  };
  const lines: Record<string, unknown>[] = [];
  for (const r of results) {
    if (r.error) {
      lines.push({ ...common, backend: r.backend, unavailable: r.error });
      continue;
    }
    let baseline: Measurement | undefined;
    if (torch?.tokensPerSecond) baseline = torch;
    else {
      for (const o of results) {
        const same = baseBackend(o.backend as BenchBackend) === baseBackend(r.backend as BenchBackend);
        if (!same && o.tokensPerSecond && (!baseline || o.tokensPerSecond > baseline.tokensPerSecond!)) baseline = o;
      }
    }
    lines.push({
      ...common,
      backend: r.backend,
      detail: r.detail,
      tokensPerSecond: Math.round(r.tokensPerSecond!),
      stepMs: Number(r.stepMs!.toFixed(1)),
      ...(r.hostMs !== undefined ? { hostMs: Number(r.hostMs.toFixed(1)) } : {}),
      tflops: tflops(r.tokensPerSecond!),
      mfu: mfu(tflops(r.tokensPerSecond!), r.detail),
      peakGpuMiB: r.peakGpuMiB,
      peakRssMiB: r.peakRssMiB,
      finalLoss: r.finalLoss,
      ...(r.lossScale ? { lossScale: r.lossScale } : {}),
      ...(r.autotune ? { autotune: r.autotune } : {}),
      ...(r.profile ? { profile: r.profile } : {}),
      ...(r.viaHost ? { viaHost: r.viaHost } : {}),
      ...(r.launchesPerStep !== undefined ? { launchesPerStep: r.launchesPerStep } : {}),
      ...(r.replayedSteps !== undefined ? { replayedSteps: r.replayedSteps } : {}),
      ...(torchRuns.length > 1
        ? {
            ratios: Object.fromEntries(
              torchRuns
                .filter((t) => t.tokensPerSecond)
                .map((t) => [t.backend, Number((r.tokensPerSecond! / t.tokensPerSecond!).toFixed(3))]),
            ),
          }
        : {}),
      baseline: baseline
        ? baseline === torch
          ? `pytorch ${torch.detail}`
          : `best other backend: ${baseline.backend}`
        : null,
      baselineTokensPerSecond: baseline ? Math.round(baseline.tokensPerSecond!) : null,
      ratio: baseline ? Number((r.tokensPerSecond! / baseline.tokensPerSecond!).toFixed(3)) : null,
    });
  }
  for (const torch of torchRuns) {
    lines.push({
      ...common,
      backend: torch.backend,
      ...(torch.error
        ? { unavailable: torch.error }
        : {
            tokensPerSecond: Math.round(torch.tokensPerSecond!),
            stepMs: Number(torch.stepMs!.toFixed(1)),
            ...(torch.gpuMs !== undefined ? { gpuMs: Number(torch.gpuMs.toFixed(1)) } : {}),
            tflops: tflops(torch.tokensPerSecond!),
            mfu: mfu(tflops(torch.tokensPerSecond!), torch.detail),
            peakGpuMiB: torch.peakGpuMiB,
            finalLoss: torch.finalLoss,
            detail: torch.detail,
          }),
    });
  }
  return lines;
}

/** Args back to a command line (for the child processes). */
function toArgv(a: Args): string[] {
  const out = [
    '--config',
    a.config,
    '--backends',
    a.backends.join(','),
    '--steps',
    String(a.steps),
    '--warmup',
    String(a.warmup),
    '--warmup-seconds',
    String(a.warmupSeconds),
    '--torch-device',
    a.torchDevice,
    '--torch-modes',
    a.torchModes.join(','),
  ];
  if (a.batchSize) out.push('--batch-size', String(a.batchSize));
  if (a.seqLen) out.push('--seq-len', String(a.seqLen));
  if (a.only) out.push('--only', a.only);
  if (a.profile) out.push('--profile', '1');
  if (a.teacher) out.push('--teacher', a.teacher);
  if (a.teacherTopK) out.push('--teacher-top-k', String(a.teacherTopK));
  return out;
}

/** Every configuration of a comma-separated --config, one JSON line per backend each. */
export async function main(
  argv: string[],
  print: (line: Record<string, unknown>) => void = (l) => console.log(JSON.stringify(l)),
): Promise<void> {
  const args = parseArgs(argv);
  if (args.only) {
    try {
      console.log(JSON.stringify(await measure(args, args.only)));
    } catch (err) {
      // Never an empty message: the parent tells a failure by it.
      const e = err as Error;
      console.log(
        JSON.stringify({ backend: args.only, error: e.message?.split('\n')[0] || e.name || String(err) || 'failed' }),
      );
    }
    return;
  }
  for (const config of args.config.split(',')) {
    for (const line of await runConfig({ ...args, config })) print(line);
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1]))
  await main(process.argv.slice(2));
