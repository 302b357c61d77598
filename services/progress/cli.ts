/** `offshoot watch` and `offshoot dashboard` (docs/progress.md). */
import { type Command, InvalidArgumentError, Option } from 'commander';

import { DASHBOARD_DEFAULTS, startDashboard } from './dashboard.js';
import { DEFAULT_NATS_URL } from './nats.js';
import { type WatchMode, listRunsText, watchRun } from './watch.js';

interface WatchCliOptions {
  nats?: string;
  config?: string;
  follow: boolean;
  wait?: boolean;
  plain?: boolean;
  json?: boolean;
  tty?: boolean;
  list?: boolean;
}

interface DashboardCliOptions {
  nats?: string;
  host: string;
  port: number;
  allowHost: string[];
}

/** What the CLI knows that progress does not: where an embedded run's stack (its NATS) is. */
export interface ProgressCommandHooks {
  /** The NATS of a running embedded stack of `run` (default: the configuration's run), from its stack.json. */
  embeddedNats?: (run: string | undefined, configFile: string | undefined) => { run: string; url: string } | undefined;
}

function port(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0 || n > 65535)
    throw new InvalidArgumentError(`--port must be an integer in [0, 65535], got ${JSON.stringify(value)}`);
  return n;
}

function natsOption(): Option {
  return new Option('--nats <url>', `NATS server(s), comma-separated (default ${DEFAULT_NATS_URL})`).env(
    'OFFSHOOT_NATS_URL',
  );
}

/** Stops on the first SIGINT/SIGTERM (the command finishes cleanly), exits at once on the second. */
function onSignals(stop: () => void): () => void {
  let seen = false;
  const handler = (): void => {
    if (seen) process.exit(130);
    seen = true;
    stop();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}

/** `offshoot watch` once it knows its NATS. */
async function watchAction(run: string | undefined, opts: WatchCliOptions): Promise<void> {
  if (opts.list) {
    const lines = await listRunsText(opts.nats);
    process.stdout.write(lines.length ? `${lines.join('\n')}\n` : 'no runs yet\n');
    return;
  }
  const chosen = [opts.plain && 'plain', opts.json && 'json', opts.tty && 'tty'].filter(Boolean) as WatchMode[];
  if (chosen.length > 1)
    throw new Error(`choose one of --plain, --json, --tty (got ${chosen.map((c) => `--${c}`).join(', ')})`);
  const abort = new AbortController();
  let interrupted = false;
  const release = onSignals(() => {
    interrupted = true;
    abort.abort();
  });
  // `offshoot watch | head`: a closed pipe ends the watch quietly (also after watchRun returned).
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    abort.abort();
  });
  try {
    const result = await watchRun({
      url: opts.nats,
      run,
      follow: opts.follow,
      wait: opts.wait,
      mode: chosen[0] ?? 'auto',
      signal: abort.signal,
    });
    if (interrupted) process.exitCode = 130;
    else if (!result.finished && opts.follow && !abort.signal.aborted) process.exitCode = 1;
  } finally {
    release();
  }
}

export function registerProgressCommands(program: Command, hooks: ProgressCommandHooks = {}): void {
  program
    .command('watch')
    .description(
      "follow a run's progress: its history first, then live events, until it finishes (exit 0). On a terminal a live view " +
        '(progress bars with ETA, tokens/s, best so far, workers, last errors); in a pipe one line per event',
    )
    .argument('[run]', 'run id (default: the running embedded run, else the most recently updated run)')
    .addOption(natsOption())
    .option(
      '--config <file>',
      "configuration file: an embedded run's NATS is found from <storage.root>/<run>/stack.json when --nats is not given",
    )
    .option('--no-follow', 'print what has happened so far and exit, without waiting for the run to finish')
    .option('--wait', 'wait for a run that has published nothing yet instead of failing')
    .option('--plain', 'one line per event even on a terminal')
    .option('--json', 'the events themselves, one JSON object per line')
    .option('--tty', 'the live view even when stdout is not a terminal')
    .option('--list', 'list the known runs and their status, and exit')
    .action(async (run: string | undefined, opts: WatchCliOptions) => {
      // An embedded run (`offshoot run`) publishes to the NATS its stack started, recorded in stack.json.
      const guessed = !opts.nats;
      const embedded = guessed ? hooks.embeddedNats?.(run, opts.config) : undefined;
      if (embedded) {
        opts.nats = embedded.url;
        run ??= embedded.run;
        process.stderr.write(`watch: run ${embedded.run} on its embedded stack's NATS ${embedded.url}\n`);
      }
      try {
        await watchAction(run, opts);
      } catch (err) {
        if (guessed && !embedded && /^cannot connect to NATS/.test((err as Error).message)) {
          throw new Error(
            `${(err as Error).message}; and no embedded \`offshoot run\`${run ? ` of run ${run}` : ''} is running from here (its stack.json names its NATS): pass --nats URL, or --config FILE for its storage.root`,
          );
        }
        throw err;
      }
    });

  program
    .command('dashboard')
    .description(
      'serve a live web dashboard of runs (loss curves, population and Pareto front, candidates, workers) until SIGINT or SIGTERM',
    )
    .addOption(natsOption())
    .option('--host <addr>', 'address to listen on (the dashboard has no authentication)', DASHBOARD_DEFAULTS.host)
    .option('--port <n>', 'port to listen on (0: any free one)', port, DASHBOARD_DEFAULTS.port)
    .option(
      '--allow-host <name>',
      "serve requests whose Host header names this host too (repeatable; '*': any). Default: loopback names and the --host address",
      (v: string, all: string[]) => [...all, v],
      [] as string[],
    )
    .action(async (opts: DashboardCliOptions) => {
      const log = (line: string): void => void process.stderr.write(`${line}\n`);
      const dash = await startDashboard({
        url: opts.nats,
        host: opts.host,
        port: opts.port,
        log,
        allowedHosts: opts.allowHost,
      });
      log(`dashboard: ${dash.url} (NATS ${opts.nats ?? process.env.OFFSHOOT_NATS_URL ?? DEFAULT_NATS_URL})`);
      process.stdout.write(
        `${JSON.stringify({ event: 'listening', host: opts.host, port: dash.port, url: dash.url })}\n`,
      );
      await new Promise<void>((resolve) => {
        const release = onSignals(() => {
          release();
          void dash.close().then(resolve);
        });
      });
    });
}
