/** `offshoot worker`: Temporal workers for the evaluate, pretrain and orchestrate task queues. */
import type { Command } from 'commander';

import { loadConfigFile } from '../config/index.js';
import { startMetricsServer } from '../progress/index.js';
import { parseQueues, runWorker } from '../worker/index.js';
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
}

async function workerAction(opts: WorkerCliOptions): Promise<void> {
  const queues = parseQueues(opts.queues);
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
      onReady: ({ identity, queues: q }) => {
        process.stderr.write(
          `worker: ${identity} polling ${q.join(', ')} on ${address}${backend ? ` (backend ${backend.name})` : ''}\n`,
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

export function registerWorkerCommand(program: Command): void {
  program
    .command('worker')
    .description(
      'run Temporal workers for offshoot task queues until SIGTERM (which drains: segments checkpoint, evaluations finish)',
    )
    .requiredOption('--queues <list>', 'comma-separated task queues: evaluate, pretrain, orchestrate')
    .option('--slots <n>', 'evaluations at once on the evaluate queue (one per device)', positiveInt('--slots'))
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
      'serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port; default: off)',
      nonNegativeInt('--metrics-port'),
    )
    .option(
      '--metrics-host <addr>',
      'address of the metrics endpoint (0.0.0.0 where Prometheus scrapes from elsewhere)',
      '127.0.0.1',
    )
    .action(async (opts: WorkerCliOptions, command: Command) => {
      const computes = parseQueues(opts.queues).some((q) => q !== 'orchestrate');
      // Only the evaluate and pretrain queues compute; an orchestrate-only worker needs no backend.
      if (computes) await withBackend(async (o: WorkerCliOptions, _c: Command) => workerAction(o))(opts, command);
      else await workerAction(opts);
    });
}
