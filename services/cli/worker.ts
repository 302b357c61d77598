/**
 * `offshoot worker`: Temporal workers for the evaluate, pretrain and orchestrate task queues.
 *
 * With --gpus (docs/multi-gpu.md): on the evaluate queue, one evaluator process per GPU, each pinned to
 * its device and restarted when it dies (services/worker/per-gpu.ts); on the pretrain queue, every
 * training segment runs data-parallel on one rank process per GPU (services/pretrain/data-parallel.ts).
 * --ranks N does the latter without GPUs (rank processes on the CPU backends).
 */
import type { Command } from 'commander';

import { ALL_REDUCE_CHOICES, type AllReduceChoice } from '../../core/model/index.js';
import { loadConfigFile } from '../config/index.js';
import type { DataParallelSettings } from '../pretrain/data-parallel.js';
import { startMetricsServer } from '../progress/index.js';
import { defaultIdentity } from '../orchestration/index.js';
import type { QueueName } from '../../workflows/index.js';
import { parseQueues, runWorker } from '../worker/index.js';
import { listGpus, selectGpus } from '../worker/gpus.js';
import { startGpuWorkerGroup } from '../worker/per-gpu.js';
import { activeBackend, withBackend } from './backend-option.js';
import { nonNegativeInt, positiveInt, positiveNumber } from './common.js';

interface WorkerCliOptions {
  queues: string;
  slots?: number;
  config?: string;
  temporal?: string;
  namespace?: string;
  nats?: string;
  teacherService?: string;
  name?: string;
  gracePeriod?: number;
  metricsPort?: number;
  metricsHost: string;
  gpus?: string;
  ranks?: number;
  microBatch?: number;
  allReduce?: string;
}

function temporalAddress(opts: WorkerCliOptions): string {
  const config = opts.config ? loadConfigFile(opts.config) : undefined;
  const address =
    opts.temporal ??
    config?.services.temporal.address ??
    process.env.OFFSHOOT_TEMPORAL_ADDRESS ??
    process.env.TEMPORAL_ADDRESS;
  if (!address)
    throw new Error(
      'no Temporal to work for: pass --temporal host:port, set services.temporal.address in --config, or env OFFSHOOT_TEMPORAL_ADDRESS',
    );
  return address;
}

async function workerAction(
  opts: WorkerCliOptions,
  dataParallel?: Omit<DataParallelSettings, 'backend'>,
): Promise<void> {
  const queues = parseQueues(opts.queues);
  const config = opts.config ? loadConfigFile(opts.config) : undefined;
  const address = temporalAddress(opts);
  const backend = activeBackend();
  const teacherTargets = opts.teacherService
    ? opts.teacherService
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean)
    : undefined;
  // Prometheus: activity durations and in-flight attempts, tokens/s, progress publishing (docs/progress.md).
  const metrics =
    opts.metricsPort !== undefined ? await startMetricsServer(opts.metricsPort, { host: opts.metricsHost }) : undefined;
  if (metrics) process.stderr.write(`worker: metrics on ${metrics.url}\n`);
  try {
    await runWorker({
      queues,
      address,
      namespace: opts.namespace ?? config?.services.temporal.namespace,
      slots: opts.slots ?? config?.workers.evaluateSlots,
      name: opts.name,
      natsUrl: opts.nats ?? config?.services.nats.url ?? undefined,
      teacherTargets,
      gracePeriodSeconds: opts.gracePeriod ?? config?.workers.gracePeriodSeconds,
      dataParallel: dataParallel && { ...dataParallel, backend: backend?.name },
      onReady: ({ identity, queues: q }) => {
        const where = dataParallel
          ? `; segments on ${dataParallel.ranks} rank${dataParallel.ranks === 1 ? '' : 's'}${dataParallel.gpus ? ` (GPUs ${dataParallel.gpus.join(', ')})` : ''}`
          : '';
        process.stderr.write(
          `worker: ${identity} polling ${q.join(', ')} on ${address}${backend ? ` (backend ${backend.name})` : ''}${where}\n`,
        );
        process.stdout.write(
          `${JSON.stringify({ event: 'worker-ready', identity, queues: q, address, metricsPort: metrics?.port })}\n`,
        );
      },
    });
  } finally {
    await metrics?.close();
  }
}

/** `--queues evaluate --gpus …`: one evaluator process per GPU, kept running until SIGTERM. */
async function gpuEvaluatorsAction(opts: WorkerCliOptions, gpus: number[], root: Command): Promise<void> {
  const address = temporalAddress(opts);
  const name = opts.name ?? 'evaluate';
  const extra: string[] = [];
  if (opts.nats) extra.push('--nats', opts.nats);
  if (opts.teacherService) extra.push('--teacher-service', opts.teacherService);
  if (opts.gracePeriod !== undefined) extra.push('--grace-period', String(opts.gracePeriod));
  if (opts.metricsPort !== undefined) extra.push('--metrics-host', opts.metricsHost);
  const { backend, precision } = root.opts() as { backend?: string; precision?: string };
  const group = await startGpuWorkerGroup({
    gpus,
    worker: {
      queues: ['evaluate'],
      config: opts.config,
      temporal: address,
      namespace: opts.namespace,
      slots: opts.slots,
      backend,
      name,
      extra,
    },
    // Each child's metrics on its own port: --metrics-port P gives GPU i's child P + i (0: any free port each).
    extraFor: (_gpu, i) =>
      opts.metricsPort === undefined
        ? []
        : ['--metrics-port', String(opts.metricsPort === 0 ? 0 : opts.metricsPort + i)],
    env: { ...process.env, ...(precision ? { OFFSHOOT_PRECISION: precision } : {}) },
  });
  const stop = () => group.stop();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  try {
    const workers = [...group.identities()].map(([gpu, identity]) => ({ gpu, identity }));
    process.stderr.write(
      `worker: ${workers.length} evaluators polling evaluate on ${address}: ${workers.map((w) => `GPU ${w.gpu} ${w.identity}`).join('; ')}\n`,
    );
    process.stdout.write(
      `${JSON.stringify({ event: 'worker-ready', identity: defaultIdentity(`${name}-gpus`), queues: ['evaluate'], address, gpus, workers })}\n`,
    );
    await group.done;
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
  }
}

/** What --gpus, --ranks, --micro-batch and --all-reduce ask for, checked against the queues. */
function multiDevice(
  opts: WorkerCliOptions,
  queues: QueueName[],
): { evaluators?: number[]; dataParallel?: Omit<DataParallelSettings, 'backend'> } {
  const pretrainOnly = (flag: string) =>
    new Error(
      `${flag} applies to the pretrain queue (data-parallel training segments); this worker polls ${queues.join(', ')}`,
    );
  if (opts.ranks === undefined && opts.gpus === undefined) {
    if (opts.microBatch !== undefined)
      throw new Error(
        '--micro-batch: give --gpus or --ranks too (it is the rows of one forward/backward pass on each rank)',
      );
    if (opts.allReduce !== undefined) throw new Error('--all-reduce: give --gpus or --ranks too');
    return {};
  }
  let allReduce: AllReduceChoice | undefined;
  if (opts.allReduce !== undefined) {
    if (!(ALL_REDUCE_CHOICES as readonly string[]).includes(opts.allReduce))
      throw new Error(
        `--all-reduce: expected one of ${ALL_REDUCE_CHOICES.join(', ')}, got ${JSON.stringify(opts.allReduce)}`,
      );
    allReduce = opts.allReduce as AllReduceChoice;
  }
  let gpus: number[] | undefined;
  if (opts.gpus !== undefined) {
    if (queues.includes('orchestrate'))
      throw new Error('--gpus: run the orchestrate queue in a worker of its own (it needs no GPU)');
    if (queues.includes('evaluate') && queues.includes('pretrain'))
      throw new Error(
        '--gpus: the evaluate and pretrain queues would share these GPUs; start one worker for each, with the GPUs each should use',
      );
    // --gpus numbers GPUs as nvidia-smi does and pins each process itself.
    if (process.env.CUDA_VISIBLE_DEVICES?.trim())
      throw new Error(
        `--gpus: CUDA_VISIBLE_DEVICES is set (${process.env.CUDA_VISIBLE_DEVICES}); --gpus names GPUs as nvidia-smi -L numbers them and sets CUDA_VISIBLE_DEVICES for each process itself: unset it`,
      );
    gpus = selectGpus(opts.gpus, listGpus());
  }
  if (!queues.includes('pretrain')) {
    for (const [flag, v] of [
      ['--ranks', opts.ranks],
      ['--micro-batch', opts.microBatch],
      ['--all-reduce', opts.allReduce],
    ] as const)
      if (v !== undefined) throw pretrainOnly(flag);
    return { evaluators: gpus };
  }
  if (gpus && opts.ranks !== undefined && opts.ranks !== gpus.length)
    throw new Error(
      `--ranks ${opts.ranks} with --gpus ${opts.gpus}: one rank runs on each GPU, so ${gpus.length} ranks (leave --ranks out)`,
    );
  return {
    dataParallel: {
      ranks: gpus?.length ?? opts.ranks!,
      ...(gpus ? { gpus } : {}),
      ...(opts.microBatch !== undefined ? { microBatchSize: opts.microBatch } : {}),
      ...(allReduce ? { allReduce } : {}),
    },
  };
}

export function registerWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description(
      'run Temporal workers for offshoot task queues until SIGTERM (which drains: segments checkpoint, evaluations finish)',
    )
    .requiredOption('--queues <list>', 'comma-separated task queues: evaluate, pretrain, orchestrate')
    .option('--slots <n>', 'evaluations at once on the evaluate queue (one per device)', positiveInt('--slots'))
    .option(
      '--gpus <which>',
      "this host's GPUs, as nvidia-smi -L numbers them: N (the first N), all, or a list (0,2; one GPU: 3,). " +
        'evaluate: one evaluator process per GPU; pretrain: each training segment runs data-parallel, one rank per GPU',
    )
    .option(
      '--ranks <n>',
      'pretrain: each training segment runs data-parallel on N rank processes (CPU backends; --gpus pins one per GPU)',
      positiveInt('--ranks'),
    )
    .option(
      '--micro-batch <rows>',
      "pretrain with --gpus/--ranks: rows per forward/backward pass on each rank (gradient accumulation); default: a rank's whole share of the batch",
      positiveInt('--micro-batch'),
    )
    .option(
      '--all-reduce <how>',
      `pretrain with --gpus/--ranks: ${ALL_REDUCE_CHOICES.join(', ')} (auto: NCCL on the cuda backend, else the TCP ring)`,
    )
    .option('--config <file>', 'configuration file (YAML or JSON): services, worker settings')
    .option('--temporal <host:port>', 'Temporal frontend (default: the config, else env OFFSHOOT_TEMPORAL_ADDRESS)')
    .option('--namespace <ns>', 'Temporal namespace (default: the config, else default)')
    .option('--nats <url>', 'NATS for progress events (default: the config, else env OFFSHOOT_NATS_URL, else none)')
    .option(
      '--teacher-service <targets>',
      "teacher-logit service replicas (host:port,...) to use instead of the workflow's",
    )
    .option('--name <name>', 'name in the worker identity')
    .option(
      '--grace-period <s>',
      'SIGTERM: seconds to finish or checkpoint running activities (default 30)',
      positiveNumber('--grace-period'),
    )
    .option(
      '--metrics-port <n>',
      'serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port; default: off; with --gpus on evaluate, GPU i at PORT + i)',
      nonNegativeInt('--metrics-port'),
    )
    .option(
      '--metrics-host <addr>',
      'address of the metrics endpoint (0.0.0.0 where Prometheus scrapes from elsewhere)',
      '127.0.0.1',
    )
    .action(async (opts: WorkerCliOptions, command: Command) => {
      const queues = parseQueues(opts.queues);
      const { evaluators, dataParallel } = multiDevice(opts, queues);
      // The evaluators per GPU compute in their own processes; this one only keeps them running.
      if (evaluators) return gpuEvaluatorsAction(opts, evaluators, rootOf(command));
      const computes = queues.some((q) => q !== 'orchestrate');
      // Only the evaluate and pretrain queues compute; an orchestrate-only worker needs no backend.
      if (computes)
        await withBackend(async (o: WorkerCliOptions, _c: Command) => workerAction(o, dataParallel))(opts, command);
      else await workerAction(opts);
    });
}

function rootOf(command: Command): Command {
  let c = command;
  while (c.parent) c = c.parent;
  return c;
}
