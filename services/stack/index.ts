/**
 * services/stack: the local stack as child processes on free loopback ports — the Temporal dev server
 * (state in a SQLite file), nats-server with JetStream, the teacher-logit service and offshoot workers.
 * Each start waits until the service answers; each handle stops it (SIGTERM, then SIGKILL after a
 * grace period) or kills it (-9). The supervisor (supervisor.ts) restarts children that die, and
 * stack.json (record.ts) records them for whoever must find or reap them. Used by `offshoot run` (the
 * embedded stack), by the integration tests and by the benchmarks. The binaries come from
 * scripts/setup-services.sh.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { type ChildOptions, type ManagedProcess, ROOT, spawnManaged } from './process.js';

/** True when this code runs from the TypeScript sources (tsx), false from dist/. */
export const FROM_SOURCES = import.meta.url.endsWith('.ts');

/** The per-machine cache: env OFFSHOOT_CACHE, else ~/.cache/offshoot. */
export function offshootCache(...sub: string[]): string {
  return path.join(process.env.OFFSHOOT_CACHE || path.join(os.homedir(), '.cache', 'offshoot'), ...sub);
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '')
    .split(path.delimiter)
    .concat(['/usr/sbin', '/usr/local/sbin', '/usr/local/bin'])) {
    if (!dir) continue;
    const f = path.join(dir, name);
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return f;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The Temporal CLI: env OFFSHOOT_TEMPORAL, the one scripts/setup-services.sh built, or `temporal` on PATH. */
export function temporalBinary(): string {
  const candidates = [process.env.OFFSHOOT_TEMPORAL, offshootCache('bin', 'temporal'), onPath('temporal')];
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  throw new Error('the Temporal CLI is not installed: run scripts/setup-services.sh (or set OFFSHOOT_TEMPORAL)');
}

/** nats-server: env OFFSHOOT_NATS_SERVER, else on PATH (Debian installs it in /usr/sbin). */
export function natsServerBinary(): string {
  const candidates = [process.env.OFFSHOOT_NATS_SERVER, onPath('nats-server')];
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  throw new Error('nats-server is not installed: run scripts/setup-services.sh (or set OFFSHOOT_NATS_SERVER)');
}

async function waitFor(
  what: string,
  proc: ManagedProcess,
  check: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  // Gives up only after a check that *started* past the deadline failed: a caller whose event loop was
  // busy meanwhile (training a teacher) must not give up on a service that came up in the meantime,
  // nor count a check that timed out only because the loop was blocked.
  for (;;) {
    if (!proc.alive()) {
      const r = await proc.exited;
      throw new Error(
        `${what} exited (code ${r.code}, signal ${r.signal}) before it answered:\n${proc.output().slice(-4000)}`,
      );
    }
    const started = Date.now();
    try {
      if (await check()) return;
    } catch (err) {
      lastError = (err as Error).message;
    }
    if (started >= deadline) break;
    await sleep(150);
  }
  await proc.kill9();
  throw new Error(
    `${what} did not answer within ${timeoutMs} ms${lastError ? ` (last error: ${lastError})` : ''}:\n${proc.output().slice(-4000)}`,
  );
}

// ---- Temporal ----------------------------------------------------------------------------------------

export interface TemporalServer extends ManagedProcess {
  /** host:port of the frontend gRPC service. */
  address: string;
  port: number;
  dbFile: string;
  namespace: string;
}

export interface TemporalOptions extends ChildOptions {
  /** SQLite file holding the server's state (kept across restarts). */
  dbFile: string;
  /** Frontend port (default: a free one). Restart on the same port to keep clients' address valid. */
  port?: number;
  namespace?: string;
  logFile?: string;
  timeoutMs?: number;
  /** Extra `--dynamic-config-value KEY=VALUE` settings. */
  dynamicConfig?: Record<string, unknown>;
}

/** Whether a Temporal frontend at `address` answers and has `namespace`. */
export async function temporalAnswers(address: string, namespace = 'default', timeoutMs = 2000): Promise<boolean> {
  const { Connection } = await import('@temporalio/client');
  const connection = await Connection.connect({ address, connectTimeout: timeoutMs });
  try {
    await connection.withDeadline(Date.now() + timeoutMs, () =>
      connection.workflowService.describeNamespace({ namespace }),
    );
    return true;
  } finally {
    await connection.close();
  }
}

/** `temporal server start-dev --headless --db-filename F --port P` on 127.0.0.1; resolves when it answers. */
export async function startTemporal(options: TemporalOptions): Promise<TemporalServer> {
  // A port that was free when picked can be taken before the server binds it (the dev server picks
  // free ports for its internal services too): then another one is picked, twice at most.
  for (let attempt = 1; ; attempt++) {
    const port = options.port ?? (await freePort());
    try {
      return await startTemporalOn(port, options);
    } catch (err) {
      if (options.port !== undefined || attempt >= 3 || !(err instanceof PortTakenError)) throw err;
    }
  }
}

class PortTakenError extends Error {}

async function startTemporalOn(port: number, options: TemporalOptions): Promise<TemporalServer> {
  const namespace = options.namespace ?? 'default';
  const db = path.resolve(options.dbFile);
  fs.mkdirSync(path.dirname(db), { recursive: true });
  // SQLite side files of a database that was deleted make the new one fail with "disk I/O error".
  if (!fs.existsSync(db)) for (const side of ['-wal', '-shm', '-journal']) fs.rmSync(db + side, { force: true });
  const args = [
    'server',
    'start-dev',
    '--headless',
    '--ip',
    '127.0.0.1',
    '--port',
    String(port),
    '--db-filename',
    path.resolve(options.dbFile),
    '--log-level',
    'error',
  ];
  if (namespace !== 'default') args.push('--namespace', namespace);
  for (const [k, v] of Object.entries(options.dynamicConfig ?? {}))
    args.push('--dynamic-config-value', `${k}=${JSON.stringify(v)}`);
  const proc = spawnManaged({
    name: 'temporal',
    command: temporalBinary(),
    args,
    logFile: options.logFile,
    onSpawn: options.onSpawn,
    detached: options.detached,
  });
  const address = `127.0.0.1:${port}`;
  try {
    await waitFor(
      `the Temporal dev server on ${address}`,
      proc,
      () => temporalAnswers(address, namespace),
      options.timeoutMs ?? 60_000,
    );
  } catch (err) {
    if (!proc.alive() && proc.output().includes(`listen tcp ${address}: bind: address already in use`))
      throw new PortTakenError((err as Error).message);
    throw err;
  }
  return { ...proc, address, port, dbFile: path.resolve(options.dbFile), namespace };
}

// ---- NATS --------------------------------------------------------------------------------------------

export interface NatsServer extends ManagedProcess {
  url: string;
  port: number;
  storeDir: string;
}

/** Whether something at host:port speaks the NATS protocol (it greets every connection with INFO). */
export function natsAnswers(port: number, host = '127.0.0.1', timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.once('data', (d) => done(d.toString('utf8').startsWith('INFO ')));
  });
}

/** nats-server with JetStream (`-js -sd DIR -a 127.0.0.1 -p PORT`); resolves when it answers. */
export async function startNats(
  options: { storeDir: string; port?: number; logFile?: string; timeoutMs?: number } & ChildOptions,
): Promise<NatsServer> {
  const port = options.port ?? (await freePort());
  fs.mkdirSync(options.storeDir, { recursive: true });
  const proc = spawnManaged({
    name: 'nats',
    command: natsServerBinary(),
    args: ['-js', '-sd', path.resolve(options.storeDir), '-a', '127.0.0.1', '-p', String(port)],
    logFile: options.logFile,
    onSpawn: options.onSpawn,
    detached: options.detached,
  });
  await waitFor(`nats-server on 127.0.0.1:${port}`, proc, () => natsAnswers(port), options.timeoutMs ?? 30_000);
  return { ...proc, url: `nats://127.0.0.1:${port}`, port, storeDir: path.resolve(options.storeDir) };
}

// ---- offshoot processes ------------------------------------------------------------------------------

/** How to run the offshoot CLI in a child process: the compiled one, or the sources through tsx. */
export function offshootCommand(): { command: string; args: string[] } {
  if (FROM_SOURCES) {
    return {
      command: process.execPath,
      args: ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'services', 'cli', 'main.ts')],
    };
  }
  return { command: process.execPath, args: [path.join(ROOT, 'dist', 'services', 'cli', 'main.js')] };
}

export interface TeacherService extends ManagedProcess {
  target: string;
  port: number;
}

/** `offshoot teacher serve --model DIR`; resolves when it listens. */
export async function startTeacherService(
  options: {
    model: string;
    port?: number;
    backend?: string;
    extra?: string[];
    logFile?: string;
    env?: NodeJS.ProcessEnv;
    timeoutMs?: number;
  } & ChildOptions,
): Promise<TeacherService> {
  const cli = offshootCommand();
  let port: number | undefined;
  const args = [
    ...cli.args,
    ...(options.backend ? ['--backend', options.backend] : []),
    'teacher',
    'serve',
    '--model',
    options.model,
    '--port',
    String(options.port ?? 0),
    ...(options.extra ?? []),
  ];
  const proc = spawnManaged({
    name: 'teacher',
    command: cli.command,
    args,
    env: options.env,
    logFile: options.logFile,
    onSpawn: options.onSpawn,
    detached: options.detached,
    onStdoutLine: (line) => {
      if (line.includes('"listening"')) port = (JSON.parse(line) as { port: number }).port;
    },
  });
  await waitFor('the teacher service', proc, async () => port !== undefined, options.timeoutMs ?? 120_000);
  return { ...proc, port: port!, target: `127.0.0.1:${port}` };
}

export interface WorkerProcess extends ManagedProcess {
  queues: string[];
  /** The worker's identity as Temporal reports it (hostname:pid plus a tag). */
  identity: string;
}

/** `offshoot worker --queues ...`; resolves when it polls. */
export async function startWorker(
  options: {
    queues: string[];
    config?: string;
    temporal?: string;
    namespace?: string;
    slots?: number;
    backend?: string;
    name?: string;
    extra?: string[];
    env?: NodeJS.ProcessEnv;
    logFile?: string;
    echo?: (line: string) => void;
    timeoutMs?: number;
  } & ChildOptions,
): Promise<WorkerProcess> {
  const cli = offshootCommand();
  const args = [
    ...cli.args,
    ...(options.backend ? ['--backend', options.backend] : []),
    'worker',
    '--queues',
    options.queues.join(','),
  ];
  if (options.config) args.push('--config', options.config);
  if (options.temporal) args.push('--temporal', options.temporal);
  if (options.namespace) args.push('--namespace', options.namespace);
  if (options.slots) args.push('--slots', String(options.slots));
  if (options.name) args.push('--name', options.name);
  args.push(...(options.extra ?? []));
  let identity: string | undefined;
  const proc = spawnManaged({
    name: options.name ?? `worker(${options.queues.join(',')})`,
    command: cli.command,
    args,
    env: options.env,
    logFile: options.logFile,
    echo: options.echo,
    onSpawn: options.onSpawn,
    detached: options.detached,
    onStdoutLine: (line) => {
      if (line.includes('"worker-ready"')) identity = (JSON.parse(line) as { identity: string }).identity;
    },
  });
  await waitFor(
    `worker ${options.queues.join(',')}`,
    proc,
    async () => identity !== undefined,
    options.timeoutMs ?? 180_000,
  );
  return { ...proc, queues: options.queues, identity: identity! };
}

// ---- the stack ---------------------------------------------------------------------------------------

export interface Stack {
  temporal: TemporalServer;
  nats?: NatsServer;
  /** Restarts the Temporal dev server on the same port and database file. */
  restartTemporal(options?: { kill9?: boolean; downMs?: number }): Promise<TemporalServer>;
  stop(): Promise<void>;
}

/** The Temporal dev server (and nats-server) with their state under `dir`. */
export async function startStack(options: {
  dir: string;
  nats?: boolean;
  logs?: boolean;
  dynamicConfig?: Record<string, unknown>;
}): Promise<Stack> {
  fs.mkdirSync(options.dir, { recursive: true });
  const logFile = (n: string) => (options.logs ? path.join(options.dir, `${n}.log`) : undefined);
  const [temporal, nats] = await Promise.all([
    startTemporal({
      dbFile: path.join(options.dir, 'temporal.db'),
      logFile: logFile('temporal'),
      dynamicConfig: options.dynamicConfig,
    }),
    options.nats === false
      ? Promise.resolve(undefined)
      : startNats({ storeDir: path.join(options.dir, 'jetstream'), logFile: logFile('nats') }),
  ]);
  const stack: Stack = {
    temporal,
    nats,
    async restartTemporal(o = {}) {
      if (o.kill9) await stack.temporal.kill9();
      else await stack.temporal.stop();
      if (o.downMs) await sleep(o.downMs);
      stack.temporal = await startTemporal({
        dbFile: stack.temporal.dbFile,
        port: stack.temporal.port,
        logFile: logFile('temporal'),
        dynamicConfig: options.dynamicConfig,
      });
      return stack.temporal;
    },
    async stop() {
      await Promise.all([stack.temporal.stop(), stack.nats?.stop()]);
    },
  };
  return stack;
}

export { type ChildOptions, type ManagedProcess, type SpawnOptions, ROOT, spawnManaged } from './process.js';
export {
  type StackRecord,
  STACK_FILE,
  liveStack,
  ownProcessAlive,
  pidAlive,
  readStackRecord,
  reapOrphans,
  removeStackRecord,
  stackFile,
  writeStackRecord,
} from './record.js';
export {
  type SupervisedChild,
  type SupervisorEvent,
  type SupervisorOptions,
  SUPERVISOR_DEFAULTS,
  Supervisor,
  SupervisorError,
  lastLines,
} from './supervisor.js';
