/** `offshoot teacher serve`: the teacher-logit gRPC service (docs/teacher-service.md). */
import { type Command, InvalidArgumentError } from 'commander';

import type { MetricsServer } from '../progress/index.js';
import { SERVER_DEFAULTS, type ServerTlsOptions, readPem, serveCheckpoint } from '../teacher/index.js';
import { activeBackend, withBackend } from './backend-option.js';
import { positiveInt, positiveNumber } from './common.js';

interface ServeCliOptions {
  model: string;
  host: string;
  port: number;
  name?: string;
  maxBatchTokens: number;
  maxStreamQueue: number;
  topK: number;
  maxBufferedMib: number;
  maxStreamMib?: number;
  stallSeconds: number;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  gracePeriod: number;
  metricsPort?: number;
}

const MiB = 2 ** 20;

function port(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0 || n > 65535)
    throw new InvalidArgumentError(`--port must be an integer in [0, 65535], got ${JSON.stringify(value)}`);
  return n;
}

function tlsOptions(opts: ServeCliOptions): ServerTlsOptions | undefined {
  if (!opts.tlsCert && !opts.tlsKey && !opts.tlsCa) return undefined;
  if (!opts.tlsCert || !opts.tlsKey)
    throw new Error('TLS needs both --tls-cert and --tls-key (--tls-ca adds mutual TLS)');
  return {
    cert: readPem(opts.tlsCert, '--tls-cert'),
    key: readPem(opts.tlsKey, '--tls-key'),
    ca: opts.tlsCa ? readPem(opts.tlsCa, '--tls-ca') : undefined,
  };
}

/** Adds `serve` to the `teacher` command group (creating the group if no other command made it). */
export function registerTeacherServeCommand(program: Command): void {
  const teacher =
    program.commands.find((c) => c.name() === 'teacher') ??
    program.command('teacher').description('the teacher model: train one, or serve its logits');
  teacher
    .command('serve')
    .description("serve a checkpoint's top-k logits over gRPC to students (until SIGTERM or SIGINT, which drain first)")
    .requiredOption('--model <dir>', 'checkpoint directory (Hugging Face layout)')
    .option('--host <addr>', 'address to listen on', SERVER_DEFAULTS.host)
    .option('--port <n>', 'port to listen on (0: any free one)', port, SERVER_DEFAULTS.port)
    .option('--name <name>', 'model name reported by Info (default: the checkpoint folder)')
    .option(
      '--max-batch-tokens <n>',
      'largest request and forward pass, in tokens',
      positiveInt('--max-batch-tokens'),
      SERVER_DEFAULTS.maxBatchTokens,
    )
    .option(
      '--max-stream-queue <n>',
      'requests one stream may have unanswered before the server stops reading it',
      positiveInt('--max-stream-queue'),
      SERVER_DEFAULTS.maxStreamQueue,
    )
    .option('--top-k <n>', 'k when a request does not say', positiveInt('--top-k'), SERVER_DEFAULTS.topK)
    .option(
      '--max-buffered-mib <n>',
      'memory for answers computed and not yet taken by their students, all streams together (MiB)',
      positiveInt('--max-buffered-mib'),
      SERVER_DEFAULTS.maxBufferedBytes / MiB,
    )
    .option(
      '--max-stream-mib <n>',
      `the same for one stream; a request whose answer alone is larger is refused (MiB; default ${SERVER_DEFAULTS.maxStreamBytes / MiB}, at most --max-buffered-mib)`,
      positiveInt('--max-stream-mib'),
    )
    .option(
      '--stall-seconds <s>',
      'reset a stream whose answers its student has not taken for this long',
      positiveNumber('--stall-seconds'),
      SERVER_DEFAULTS.stallMs / 1000,
    )
    .option('--tls-cert <file>', 'PEM server certificate (enables TLS)')
    .option('--tls-key <file>', 'PEM server private key')
    .option('--tls-ca <file>', 'PEM CA bundle; clients must present a certificate it signed (mutual TLS)')
    .option(
      '--grace-period <s>',
      'seconds to drain in-flight batches at shutdown',
      positiveNumber('--grace-period'),
      SERVER_DEFAULTS.graceMs / 1000,
    )
    .option(
      '--metrics-port <n>',
      'serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port; default: off)',
      port,
    )
    .action(
      withBackend(async (opts: ServeCliOptions) => {
        const log = (line: string): void => {
          process.stderr.write(`${line}\n`);
        };
        const tls = tlsOptions(opts);
        if (opts.maxStreamMib !== undefined && opts.maxStreamMib > opts.maxBufferedMib) {
          throw new Error(
            `--max-stream-mib ${opts.maxStreamMib} must be at most --max-buffered-mib ${opts.maxBufferedMib}`,
          );
        }
        const server = await serveCheckpoint(opts.model, {
          host: opts.host,
          port: opts.port,
          modelName: opts.name,
          maxBatchTokens: opts.maxBatchTokens,
          maxStreamQueue: opts.maxStreamQueue,
          topK: opts.topK,
          maxBufferedBytes: opts.maxBufferedMib * MiB,
          maxStreamBytes:
            Math.min(opts.maxStreamMib ?? SERVER_DEFAULTS.maxStreamBytes / MiB, opts.maxBufferedMib) * MiB,
          stallMs: Math.round(opts.stallSeconds * 1000),
          tls,
          backend: activeBackend()?.name,
          log,
        });
        const info = server.info();
        let metrics: MetricsServer | undefined;
        if (opts.metricsPort !== undefined) {
          // Imported here: the progress module brings NATS, which only this option needs.
          const { registerTeacherMetrics, startMetricsServer } = await import('../progress/index.js');
          registerTeacherMetrics(() => server.metrics());
          metrics = await startMetricsServer(opts.metricsPort, { host: opts.host }).catch((err: Error) => {
            server.forceShutdown();
            throw err;
          });
          log(`teacher: metrics on ${metrics.url}`);
        }
        log(
          `teacher: serving ${info.modelName} (${info.parameters.toLocaleString('en-US')} parameters, vocab ${info.vocabSize}, context ${info.contextLength}, ` +
            `sha256 ${info.contentHash.slice(0, 12)}…) on ${opts.host}:${server.port}${tls ? (tls.ca ? ' with mutual TLS' : ' with TLS') : ''}`,
        );
        // One machine-readable line on stdout, for whatever started the server.
        process.stdout.write(
          `${JSON.stringify({ event: 'listening', host: opts.host, port: server.port, model: info.modelName, hash: info.contentHash, metricsPort: metrics?.port })}\n`,
        );
        await new Promise<void>((resolve) => {
          let stopping = false;
          const stop = (signal: string): void => {
            if (stopping) {
              log(`teacher: ${signal} again; stopping now`);
              server.forceShutdown();
              process.exit(1);
            }
            stopping = true;
            log(`teacher: ${signal}: draining (up to ${opts.gracePeriod} s)`);
            void server.shutdown(opts.gracePeriod * 1000).then(async ({ drained }) => {
              await metrics?.close();
              const m = server.metrics();
              log(
                `teacher: stopped${drained ? '' : ' (grace period over; cut off what was left)'}; served ${m.requestsServed} requests, ${m.tokensServed} tokens`,
              );
              resolve();
            });
          };
          process.once('SIGTERM', () => stop('SIGTERM'));
          process.once('SIGINT', () => stop('SIGINT'));
        });
      }),
    );
}
