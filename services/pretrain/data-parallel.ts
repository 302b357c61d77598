/**
 * A training segment on several ranks of one host (docs/multi-gpu.md): the pretrain worker's
 * trainSegment activity starts one rank process per GPU (`offshoot pretrain-rank`, rank.ts), each
 * pinned to its device, and follows them. Rank 0 reports every step, validation pass and checkpoint on
 * its stdout; the activity turns those into heartbeats, loss logs and progress events exactly as an
 * in-process segment does. One activity, not one per rank: the ranks of a collective must start,
 * run and fail together, on one host, and a retry must restart all of them from one checkpoint —
 * which is what one activity with one heartbeat gives.
 *
 * A rank that dies (kill -9, a crash, a lost device) breaks the others' all-reduce; the activity then
 * stops what is left and fails with the dead rank, how it died and its last lines, and Temporal's
 * retry resumes from the last checkpoint on however many ranks the retrying worker has. SIGTERM of
 * the worker, or a cancellation, asks the ranks to stop: they finish the step under way together,
 * rank 0 checkpoints, and the segment returns (or is cancelled) from there.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { AllReduceChoice, DistillOptions, TrainHyperparameters } from '../../core/model/index.js';
import { newJobId } from '../../core/model/index.js';
import { type ManagedProcess, freePort, offshootCommand, spawnManaged } from '../stack/index.js';
import type { CheckpointRef, TeacherServiceRef } from '../../workflows/index.js';

/** How a worker runs its training segments on several ranks (`offshoot worker --gpus/--ranks`). */
export interface DataParallelSettings {
  /** Rank processes per segment. */
  ranks: number;
  /** One device per rank (GPU indices as nvidia-smi numbers them), or none: ranks share the host's CPU backend. */
  gpus?: number[];
  /** Rows per forward/backward pass on each rank (gradient accumulation); default: a rank's whole share. */
  microBatchSize?: number;
  /** NCCL (cuda) or the TCP ring; default auto. */
  allReduce?: AllReduceChoice;
  /** The backend the ranks use (the worker's own). */
  backend?: string;
}

/** What every rank of a segment is told (job.json, read by `offshoot pretrain-rank`). */
export interface RankJob {
  format: 1;
  jobId: string;
  worldSize: number;
  /** Each rank's loopback port for the TCP ring. */
  ports: number[];
  allReduce: AllReduceChoice;
  microBatchSize?: number;
  /** The checkpoint the segment starts from. */
  start: CheckpointRef;
  toStep: number;
  hyper: TrainHyperparameters;
  distill: DistillOptions | null;
  data: { train: string; val: string; tokenizer: string };
  tokenCache: string;
  teacher: { dir: string; hash: string };
  teacherService?: TeacherServiceRef;
  /** Teacher-service replicas that override the workflow's (the worker's --teacher-service). */
  teacherTargets?: string[];
  checkpointEvery: number;
  /** Where rank 0 writes the checkpoint of step N: <checkpoints>/step-NNNNNNN. */
  checkpoints: string;
  evalEvery: number;
  evalTokens: number;
  targetPpl?: number;
}

/** One line rank 0 (or, for `done`, any rank) prints on stdout. */
export type RankEvent =
  | { event: 'rank-ready'; rank: number; backend: string; device?: string; allReduce: 'device' | 'host' | 'none' }
  | {
      event: 'rank-step';
      step: number;
      loss: number;
      lr: number;
      gradNorm: number;
      tokensPerSecond: number;
      tokensSeen: number;
    }
  | { event: 'rank-eval'; step: number; valLoss: number; valPpl: number; tokens: number }
  | { event: 'rank-checkpoint'; checkpoint: CheckpointRef }
  | { event: 'rank-done'; rank: number; step: number; stopped?: 'requested' | 'target-reached'; lastLoss: number };

export const RANK_EVENT_PREFIX = 'offshoot-rank ';

/** The checkpoint folder of a step. */
export function stepDir(checkpoints: string, step: number): string {
  return path.join(checkpoints, `step-${String(step).padStart(7, '0')}`);
}

export interface RankHooks {
  onStep(e: Extract<RankEvent, { event: 'rank-step' }>): void;
  onEval(e: Extract<RankEvent, { event: 'rank-eval' }>): void;
  onCheckpoint(c: CheckpointRef): void;
  log(line: string): void;
  /** Aborted: the ranks stop after the step under way (rank 0 checkpoints first). */
  signal: AbortSignal;
  /** Each rank's output is appended to <logDir>/rank-R.log. */
  logDir: string;
}

export interface RanksResult {
  step: number;
  lastLoss: number;
  stopped?: 'requested' | 'target-reached';
}

/** A data-parallel segment that failed: a rank died or another broke off. */
export class RankFailure extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RankFailure';
  }
}

/** Rank processes are told to stop with SIGTERM; those still there after this long get SIGKILL. */
const STOP_GRACE_MS = 120_000;
/** After a rank failed, the others get this long to notice before they are killed. */
const FAILURE_GRACE_MS = 5_000;

/** The environment of rank `rank`: its device, and NVLink multicast off. */
export function rankEnv(
  settings: DataParallelSettings,
  rank: number,
  base: NodeJS.ProcessEnv = process.env,
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base, NCCL_NVLS_ENABLE: base.NCCL_NVLS_ENABLE ?? '0' };
  const gpu = settings.gpus?.[rank];
  if (gpu !== undefined) Object.assign(env, deviceEnv(gpu));
  return env;
}

/**
 * The environment that pins a process to GPU `index` (nvidia-smi's numbering): the cuda backend opens
 * the first device CUDA shows it, the webgpu backend the adapter OFFSHOOT_WEBGPU_ADAPTER names. CUDA
 * numbers devices by PCI bus like nvidia-smi only with CUDA_DEVICE_ORDER=PCI_BUS_ID.
 */
export function deviceEnv(index: number): Record<string, string> {
  return {
    CUDA_DEVICE_ORDER: 'PCI_BUS_ID',
    CUDA_VISIBLE_DEVICES: String(index),
    OFFSHOOT_WEBGPU_ADAPTER: String(index),
  };
}

/**
 * Runs one segment on `settings.ranks` rank processes and resolves when they are all done; rejects
 * with a RankFailure when one dies or fails.
 */
export async function runRanks(
  job: Omit<RankJob, 'format' | 'jobId' | 'worldSize' | 'ports' | 'allReduce' | 'microBatchSize'>,
  settings: DataParallelSettings,
  hooks: RankHooks,
): Promise<RanksResult> {
  const worldSize = settings.ranks;
  fs.mkdirSync(hooks.logDir, { recursive: true });
  const full: RankJob = {
    format: 1,
    jobId: newJobId(),
    worldSize,
    ports: await distinctFreePorts(worldSize),
    allReduce: settings.allReduce ?? 'auto',
    ...(settings.microBatchSize ? { microBatchSize: settings.microBatchSize } : {}),
    ...job,
  };
  const jobFile = path.join(hooks.logDir, `job-${full.jobId}.json`);
  fs.writeFileSync(jobFile, `${JSON.stringify(full, null, 2)}\n`);
  const cli = offshootCommand();
  let result: RanksResult | undefined;
  let lastCheckpoint: CheckpointRef = job.start;
  const done = new Set<number>();
  const ranks: ManagedProcess[] = [];
  const handle = (rank: number, line: string) => {
    if (!line.startsWith(RANK_EVENT_PREFIX)) return;
    const e = JSON.parse(line.slice(RANK_EVENT_PREFIX.length)) as RankEvent;
    if (e.event === 'rank-done') {
      done.add(rank);
      if (rank === 0) result = { step: e.step, lastLoss: e.lastLoss, ...(e.stopped ? { stopped: e.stopped } : {}) };
    } else if (e.event === 'rank-ready') {
      const reduce = {
        device: 'NCCL all-reduce',
        host: 'TCP ring all-reduce',
        none: 'one rank, nothing to all-reduce',
      }[e.allReduce];
      hooks.log(`rank ${e.rank}: ${e.backend}${e.device ? ` on ${e.device}` : ''}, ${reduce}`);
    } else if (rank !== 0) return;
    else if (e.event === 'rank-step') hooks.onStep(e);
    else if (e.event === 'rank-eval') hooks.onEval(e);
    else if (e.event === 'rank-checkpoint') {
      lastCheckpoint = e.checkpoint;
      hooks.onCheckpoint(e.checkpoint);
    }
  };
  for (let rank = 0; rank < worldSize; rank++) {
    ranks.push(
      spawnManaged({
        name: `rank ${rank}`,
        command: cli.command,
        args: [
          ...cli.args,
          ...(settings.backend ? ['--backend', settings.backend] : []),
          'pretrain-rank',
          '--job',
          jobFile,
          '--rank',
          String(rank),
        ],
        env: rankEnv(settings, rank),
        logFile: path.join(hooks.logDir, `rank-${rank}.log`),
        onStdoutLine: (line) => {
          try {
            handle(rank, line);
          } catch (err) {
            hooks.log(
              `rank ${rank}: unreadable report ${JSON.stringify(line.slice(0, 200))}: ${(err as Error).message}`,
            );
          }
        },
      }),
    );
  }
  hooks.log(
    `data parallel: ${worldSize} rank${worldSize === 1 ? '' : 's'} (pids ${ranks.map((r) => r.pid).join(', ')})${settings.gpus ? ` on GPUs ${settings.gpus.join(', ')}` : ''}, steps ${job.start.step ?? 0}->${job.toStep}, logs in ${hooks.logDir}`,
  );

  // The first rank to exit without finishing is the failure; what the others say afterwards is its echo.
  let failure: { rank: number; how: string; output: string } | undefined;
  const stop = () => {
    for (const r of ranks) if (r.alive()) r.child.kill('SIGTERM');
  };
  if (hooks.signal.aborted) stop();
  hooks.signal.addEventListener('abort', stop, { once: true });
  try {
    await new Promise<void>((resolve) => {
      let exited = 0;
      ranks.forEach((proc, rank) => {
        void proc.exited.then(({ code, signal }) => {
          exited += 1;
          if (!(code === 0 && done.has(rank)) && !failure) {
            failure = {
              rank,
              how: signal
                ? `was killed by ${signal}`
                : `exited with code ${code}${done.has(rank) ? '' : ' before finishing'}`,
              output: proc.output(),
            };
            // The others cannot go on without it: they get a moment to notice and report, then are killed.
            setTimeout(() => {
              for (const r of ranks) if (r.alive()) r.child.kill('SIGKILL');
            }, FAILURE_GRACE_MS).unref();
          }
          if (exited === worldSize) resolve();
        });
      });
      // A stop that takes too long (a rank stuck in a collective) is cut short.
      hooks.signal.addEventListener(
        'abort',
        () =>
          setTimeout(() => {
            for (const r of ranks) if (r.alive()) r.child.kill('SIGKILL');
          }, STOP_GRACE_MS).unref(),
        { once: true },
      );
    });
  } finally {
    hooks.signal.removeEventListener('abort', stop);
    for (const r of ranks) if (r.alive()) await r.kill9();
  }
  if (failure) {
    const f = failure;
    throw new RankFailure(
      `data-parallel segment failed: rank ${f.rank} of ${worldSize} ${f.how}; the other ranks were stopped. ` +
        `The last checkpoint is step ${lastCheckpoint.step ?? 0} (${lastCheckpoint.dir}); a retry resumes there. ` +
        `Rank ${f.rank}'s last lines (all in ${path.join(hooks.logDir, `rank-${f.rank}.log`)}):\n${lastLines(f.output)}`,
    );
  }
  if (!result)
    throw new RankFailure(
      `data-parallel segment: rank 0 exited without reporting where it stopped (logs in ${hooks.logDir})`,
    );
  return result;
}

function lastLines(output: string, n = 12): string {
  const lines = output
    .trim()
    .split('\n')
    .filter((l) => !l.startsWith(RANK_EVENT_PREFIX))
    .slice(-n);
  return lines.length && lines[0] ? lines.map((l) => `    ${l}`).join('\n') : '    (no output)';
}

/** `n` free loopback ports, all different. */
async function distinctFreePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}
