/**
 * `offshoot run` (the main job), `offshoot status RUN`, `offshoot cancel RUN`.
 *
 * With no Temporal address configured, `run` starts the embedded stack as supervised child processes —
 * the Temporal dev server (state in <run>/temporal.db, so a rerun resumes), nats-server, the
 * teacher-logit service and the workers — after training the embedded default teacher (unless --teacher
 * DIR), runs the pipeline, prints the results table and stops what it started. A child that dies is
 * restarted on the same port and data, and the terminal and the progress stream say so. With an
 * address configured it only submits the pipeline (or finds it running) and follows it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Client, WorkflowHandle } from '@temporalio/client';
import type { Command } from 'commander';

import { defaultTokenStore } from '../../core/data/index.js';
import { teacherFinished, trainTeacher } from '../../core/teacher/index.js';
import {
  type OffshootConfig,
  defaultConfig,
  ensureStorageRoot,
  loadConfigFile,
  mergeRaw,
  parseConfig,
  pipelineInput,
  runDir,
  teacherDir,
} from '../config/index.js';
import { requireTeacherTokenizer, resultsTable } from '../orchestration/index.js';
import { type ProgressPublisher, createProgressPublisher } from '../progress/index.js';
import {
  type NatsServer,
  type StackRecord,
  type SupervisorEvent,
  type TeacherService,
  type TemporalServer,
  Supervisor,
  liveStack,
  reapOrphans,
  removeStackRecord,
  startNats,
  startTeacherService,
  startTemporal,
  startWorker,
  writeStackRecord,
} from '../stack/index.js';
import { connectClient } from '../worker/index.js';
import {
  type EvolutionStatus,
  type PipelineResult,
  type PipelineStatus,
  type PretrainStatus,
  type TeacherServiceRef,
  evolutionStatusQuery,
  pipeline,
  pipelineStatusQuery,
  pretrainStatusQuery,
  workflowIds,
} from '../../workflows/index.js';
import { activeBackend, withBackend } from './backend-option.js';
import { ProgressBar, formatDuration } from './progress.js';

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface RunCliOptions {
  config?: string;
  name?: string;
  teacher?: string;
  temporal?: string;
  json?: boolean;
  quiet?: boolean;
}

/** The configuration: the file (if any), with command-line overrides. */
function resolveConfig(opts: { config?: string; name?: string; teacher?: string; temporal?: string }): OffshootConfig {
  const base = opts.config ? loadConfigFile(opts.config) : defaultConfig();
  const overrides: Record<string, unknown> = {};
  // An empty --name is an error (the schema says what a name may be), not the default run.
  if (opts.name !== undefined) overrides.run = { name: opts.name };
  if (opts.teacher) overrides.teacher = { dir: opts.teacher, train: { enabled: false } };
  if (opts.temporal) overrides.services = { temporal: { address: opts.temporal } };
  return Object.keys(overrides).length ? parseConfig(mergeRaw(base, overrides), opts.config ?? 'command line') : base;
}

/** The Temporal address for status/cancel: the flag, the config, or a running embedded stack. */
function temporalAddressFor(config: OffshootConfig): string {
  if (config.services.temporal.address) return config.services.temporal.address;
  const stack = liveStack(runDir(config));
  if (stack?.temporal) return stack.temporal;
  throw new Error(
    `run ${config.run.name}: no Temporal to ask — the embedded stack of \`offshoot run\` is not running (rerun \`offshoot run\` to resume the run), and no address is configured (--temporal or services.temporal.address)`,
  );
}

/**
 * The NATS of the embedded stack running `run` (default: the configuration's run), from its
 * stack.json: how `offshoot watch` finds an embedded run without --nats.
 */
export function embeddedNats(
  run: string | undefined,
  configFile: string | undefined,
): { run: string; url: string } | undefined {
  let config: OffshootConfig;
  try {
    config = resolveConfig({ config: configFile, name: run });
  } catch (err) {
    // A bad --config is the user's to hear about; a bad run name is watch's to report.
    if (configFile) throw err;
    return undefined;
  }
  const stack = liveStack(runDir(config));
  return stack?.nats ? { run: config.run.name, url: stack.nats } : undefined;
}

function isConnectionError(err: unknown): boolean {
  const e = err as { code?: number; name?: string; message?: string };
  return (
    e?.code === 14 ||
    e?.name === 'ServiceError' ||
    /UNAVAILABLE|ECONNREFUSED|connect|transport/i.test(String(e?.message ?? ''))
  );
}

/** "failed: <the causes, outermost first>" or "was cancelled". */
function describeFailure(err: unknown): string {
  const parts: string[] = [];
  let cancelled = false;
  let e = (err as { cause?: unknown }).cause as { message?: string; cause?: unknown; name?: string } | undefined;
  while (e && parts.length < 6) {
    if (e.name === 'CancelledFailure') cancelled = true;
    if (e.message && !parts.includes(e.message)) parts.push(e.message);
    e = e.cause as typeof e;
  }
  return cancelled
    ? `was cancelled${parts.length ? ` (${parts.join(': ')})` : ''}`
    : `failed: ${parts.join(': ') || String((err as Error).message)}`;
}

/** Starts the pipeline, or finds it: running (follow it), completed (its result), failed (start again). */
async function submit(
  client: Client,
  config: OffshootConfig,
  teacherService: TeacherServiceRef | undefined,
): Promise<WorkflowHandle<typeof pipeline>> {
  const id = workflowIds(config.run.name).pipeline;
  try {
    const existing = client.workflow.getHandle<typeof pipeline>(id);
    const d = await existing.describe();
    if (d.status.name === 'RUNNING' || d.status.name === 'COMPLETED') {
      log(
        `run ${config.run.name}: ${d.status.name === 'RUNNING' ? 'following the pipeline already running' : 'already completed; its result:'} (${id})`,
      );
      return existing;
    }
    log(`run ${config.run.name}: the last pipeline ${d.status.name.toLowerCase()}; starting it again`);
  } catch (err) {
    if ((err as Error).name !== 'WorkflowNotFoundError') throw err;
  }
  const input = pipelineInput(config, { teacherService });
  log(`run ${config.run.name}: starting the pipeline (${id}); files in ${input.run.dir}`);
  return client.workflow.start(pipeline, {
    workflowId: id,
    taskQueue: 'orchestrate',
    args: [input],
    workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    workflowIdConflictPolicy: 'USE_EXISTING',
  });
}

async function safeQuery<T>(fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch {
    return undefined;
  }
}

/** One line on what a run is doing, from its workflows' queries. */
async function describeProgress(client: Client, runId: string): Promise<string | undefined> {
  const ids = workflowIds(runId);
  const p = await safeQuery(() => client.workflow.getHandle(ids.pipeline).query(pipelineStatusQuery));
  if (!p) return undefined;
  if (p.stage === 'teacher') return 'teacher: preparing (training or checking the teacher service)';
  if (p.stage === 'search') {
    const e = await safeQuery(() => client.workflow.getHandle(ids.evolution).query(evolutionStatusQuery));
    if (!e) return 'search: starting';
    return `search: ${e.evaluated + e.failed}/${e.budget} evaluations (generation ${e.generation}, ${e.inFlight.length} running${e.failed ? `, ${e.failed} failed` : ''}), best val loss ${e.bestFitness?.toFixed(4) ?? '-'}`;
  }
  if (p.stage === 'pretrain') {
    const parts: string[] = [];
    for (const id of p.pretrainWorkflowIds) {
      const s = await safeQuery(() => client.workflow.getHandle(id).query(pretrainStatusQuery));
      if (!s) continue;
      const seg = s.progress?.segments.at(-1);
      parts.push(`${s.name} ${s.progress?.step ?? 0}/${s.steps}${seg ? ` loss ${seg.lastLoss.toFixed(3)}` : ''}`);
    }
    return `pretrain: ${parts.join(', ') || 'starting'}`;
  }
  return `${p.stage}`;
}

/** Waits for the pipeline's result, printing progress; survives the server going away for a while. */
async function follow(
  client: Client,
  handle: WorkflowHandle<typeof pipeline>,
  runId: string,
  quiet: boolean,
): Promise<PipelineResult> {
  const started = Date.now();
  let last = '';
  let done = false;
  const progress = (async () => {
    while (!done) {
      if (!quiet) {
        const line = await describeProgress(client, runId);
        if (line && line !== last && !done) {
          log(`[${formatDuration((Date.now() - started) / 1000)}] ${line}`);
          last = line;
        }
      }
      for (let i = 0; i < 20 && !done; i++) await sleep(250);
    }
  })();
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        return await handle.result();
      } catch (err) {
        if ((err as Error).name === 'WorkflowFailedError')
          throw new Error(`run ${runId}: the pipeline ${describeFailure(err)}`);
        if (!isConnectionError(err) || attempt > 120) throw err;
        await sleep(1000);
      }
    }
  } finally {
    done = true;
    await progress;
  }
}

function printResult(result: PipelineResult, json: boolean | undefined): void {
  if (json) {
    console.log(JSON.stringify(result));
    return;
  }
  const student = result.rows.find((r) => r.name === 'student');
  console.log('');
  const teacherPpl =
    result.teacher.valLoss !== undefined
      ? `, validation perplexity ${Math.exp(result.teacher.valLoss).toFixed(2)}${result.teacher.valBpb !== undefined ? ` (${result.teacher.valBpb.toFixed(4)} bits per byte)` : ''}`
      : '';
  console.log(
    `offshoot run ${result.runId}: teacher ${result.teacher.parameters.toLocaleString('en-US')} parameters${teacherPpl}`,
  );
  console.log(
    `search: ${result.search.evaluations} evaluations, best ${result.search.best.description ?? result.search.best.key}`,
  );
  console.log('');
  console.log(resultsTable(result));
  console.log('');
  if (student) {
    for (const r of result.rows) {
      if (r !== student) {
        console.log(
          `student vs ${r.name}: validation perplexity ${student.valPpl.toFixed(2)} vs ${r.valPpl.toFixed(2)}, ` +
            `${student.valBpb.toFixed(4)} vs ${r.valBpb.toFixed(4)} bits per byte, with the same pretraining budget`,
        );
      }
    }
  }
  console.log(`report: ${result.report.markdown}`);
}

/** Workers first (they drain: a running segment checkpoints), then the teacher service, then the servers. */
function stopOrder(config: OffshootConfig): string[][] {
  return [
    ['orchestrate', 'pretrain', ...Array.from({ length: config.workers.evaluators }, (_, i) => `evaluate-${i}`)],
    ['teacher'],
    ['temporal', 'nats'],
  ];
}

/**
 * The embedded stack of one run: its supervisor, stack.json (written before the first child starts and
 * at every spawn), and the progress publisher that reports the supervisor's events once NATS is up.
 */
class EmbeddedStack {
  readonly supervisor: Supervisor;
  readonly record: StackRecord = { pid: process.pid, processes: {} };
  private progress: ProgressPublisher | undefined;

  constructor(
    private readonly config: OffshootConfig,
    private readonly dir: string,
  ) {
    writeStackRecord(dir, this.record);
    this.supervisor = new Supervisor({
      maxRestarts: config.workers.maxRestarts,
      onSpawn: (name, pid) => this.note(name, pid),
      onEvent: (e) => this.report(e),
    });
  }

  /** Records a child's pid (and addresses) in stack.json. */
  note(name: string, pid: number, addresses: Partial<Pick<StackRecord, 'temporal' | 'nats' | 'teacher'>> = {}): void {
    this.record.processes[name] = pid;
    Object.assign(this.record, addresses);
    writeStackRecord(this.dir, this.record);
  }

  publishTo(natsUrl: string): void {
    // No log of its own: NATS going away is the supervisor's to report.
    this.progress = createProgressPublisher({ url: natsUrl, worker: `offshoot run ${this.config.run.name}` });
  }

  private report(e: SupervisorEvent): void {
    const run = this.config.run.name;
    switch (e.kind) {
      case 'exited':
        log(
          `run ${run}: ${e.service} (pid ${e.pid}) exited (${e.signal ? `signal ${e.signal}` : `code ${e.code}`})${e.willRestart ? `; restarting it${['temporal', 'nats', 'teacher'].includes(e.service) ? ' on the same port and data' : ''}` : ''}`,
        );
        this.publish({
          kind: 'service.exited',
          run,
          service: e.service,
          pid: e.pid,
          code: e.code,
          signal: e.signal,
          willRestart: e.willRestart,
          restarts: e.restarts,
        });
        break;
      case 'restart-failed':
        log(`run ${run}: restarting ${e.service} failed (attempt ${e.attempt}): ${e.error}`);
        break;
      case 'restarted':
        log(`run ${run}: ${e.service} restarted (pid ${e.pid}, down ${(e.downMs / 1000).toFixed(1)} s)`);
        this.publish({
          kind: 'service.restarted',
          run,
          service: e.service,
          pid: e.pid,
          previousPid: e.previousPid,
          downMs: e.downMs,
          restarts: e.restarts,
        });
        break;
      case 'gave-up': {
        log(`run ${run}: ${e.error}`);
        const pid = this.supervisor.current(e.service)?.pid ?? 0;
        if (pid > 0) {
          this.publish({
            id: `${run}.service.gave-up.${e.service}.${pid}`,
            kind: 'service.exited',
            run,
            service: e.service,
            pid,
            code: null,
            signal: null,
            willRestart: false,
            restarts: e.restarts,
            error: e.error.slice(0, 4000),
          });
        }
        break;
      }
    }
  }

  private publish(event: Parameters<ProgressPublisher['publish']>[0]): void {
    try {
      this.progress?.publish(event).catch(() => undefined);
    } catch (err) {
      log(`progress: event not published: ${(err as Error).message}`);
    }
  }

  /** Stops what it started (workers first), flushes the progress events, and removes stack.json. */
  async stop(): Promise<void> {
    const [workers, teacher, servers] = stopOrder(this.config);
    const grace = this.config.workers.gracePeriodSeconds * 1000;
    await this.supervisor.stop([workers, teacher], grace);
    await this.progress?.close(5000).catch(() => undefined);
    await this.supervisor.stop([servers], grace);
    removeStackRecord(this.dir);
  }
}

/** Starts Temporal and NATS under the supervisor, each restarted on its first port and data. */
async function startServers(stack: EmbeddedStack, dir: string, logs: string): Promise<[TemporalServer, NatsServer]> {
  let temporalPort: number | undefined;
  let natsPort: number | undefined;
  return Promise.all([
    stack.supervisor.start({
      name: 'temporal',
      start: async (onSpawn) => {
        const t = await startTemporal({
          dbFile: path.join(dir, 'temporal.db'),
          port: temporalPort,
          logFile: path.join(logs, 'temporal.log'),
          onSpawn,
          detached: true,
        });
        temporalPort = t.port;
        stack.note('temporal', t.pid, { temporal: t.address });
        return t;
      },
    }),
    stack.supervisor.start({
      name: 'nats',
      start: async (onSpawn) => {
        const n = await startNats({
          storeDir: path.join(dir, 'jetstream'),
          port: natsPort,
          logFile: path.join(logs, 'nats.log'),
          onSpawn,
          detached: true,
        });
        natsPort = n.port;
        stack.note('nats', n.pid, { nats: n.url });
        return n;
      },
    }),
  ]);
}

/** Starts the teacher service and the workers under the supervisor; the teacher must exist. */
async function startServices(
  stack: EmbeddedStack,
  config: OffshootConfig,
  backend: string,
  temporal: TemporalServer,
  nats: NatsServer,
  logs: string,
): Promise<TeacherServiceRef | undefined> {
  const dir = runDir(config);
  const env = {
    ...process.env,
    OFFSHOOT_NATS_URL: nats.url,
    OFFSHOOT_BACKEND: backend,
    ...(config.workers.precision ? { OFFSHOOT_PRECISION: config.workers.precision } : {}),
  };
  const common = {
    temporal: temporal.address,
    namespace: config.services.temporal.namespace,
    env,
    backend,
    detached: true,
  };
  const starts: Promise<unknown>[] = [];
  let teacherService: TeacherServiceRef | undefined;
  if (config.teacher.service.enabled) {
    // A run's workflows carry the teacher service's address, so a rerun that resumes them serves the
    // teacher on the port the run used before (a new one, with a warning, if that is taken); a restart
    // after a crash uses the same port.
    const portFile = path.join(dir, 'teacher-service.port');
    const previous = fs.existsSync(portFile) ? Number(fs.readFileSync(portFile, 'utf8')) : undefined;
    let port = previous;
    const teacher = {
      name: 'teacher',
      start: async (onSpawn: (pid: number) => void): Promise<TeacherService> => {
        const t = await startTeacherService({
          model: teacherDir(config),
          port,
          backend,
          env,
          extra: [
            '--max-batch-tokens',
            String(config.teacher.service.maxBatchTokens),
            '--top-k',
            String(config.teacher.service.topK),
            '--max-buffered-mib',
            String(config.teacher.service.maxBufferedMiB),
          ],
          logFile: path.join(logs, 'teacher-service.log'),
          onSpawn,
          detached: true,
        });
        port = t.port;
        fs.writeFileSync(portFile, `${t.port}\n`);
        stack.note('teacher', t.pid, { teacher: t.target });
        return t;
      },
    };
    starts.push(
      stack.supervisor
        .start(teacher)
        .catch((err: unknown) => {
          if (previous === undefined) throw err;
          log(
            `run ${config.run.name}: the teacher service could not listen on its earlier port ${previous} (${(err as Error).message.split('\n')[0]}); a resumed search or pretraining that still uses it will retry until its attempts run out`,
          );
          port = undefined;
          return stack.supervisor.start(teacher);
        })
        .then((t) => {
          teacherService = { targets: [t.target], topK: config.teacher.service.topK };
        }),
    );
  }
  const worker = (name: string, queues: string[], slots?: number) =>
    stack.supervisor.start({
      name,
      start: (onSpawn) =>
        startWorker({ ...common, queues, slots, name, logFile: path.join(logs, `worker-${name}.log`), onSpawn }),
    });
  starts.push(worker('orchestrate', ['orchestrate']), worker('pretrain', ['pretrain']));
  for (let i = 0; i < config.workers.evaluators; i++)
    starts.push(worker(`evaluate-${i}`, ['evaluate'], config.workers.evaluateSlots));
  const results = await Promise.allSettled(starts);
  const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
  if (failed) throw failed.reason;
  return teacherService;
}

/** Checks what the run needs before anything starts, so a missing piece is one error now, not failures later. */
function checkInputs(config: OffshootConfig): void {
  const teacher = teacherDir(config);
  if (fs.existsSync(path.join(teacher, 'config.json')))
    requireTeacherTokenizer(teacher, config.data.tokenizer ?? undefined);
  else if (!config.teacher.train.enabled)
    throw new Error(`teacher ${teacher}: no finished checkpoint there and teacher.train.enabled is false`);
  if (config.data.tokenizer && !fs.existsSync(path.resolve(config.data.tokenizer)))
    throw new Error(`data.tokenizer ${config.data.tokenizer}: no such file or folder`);
}

async function runEmbedded(config: OffshootConfig, opts: RunCliOptions, t0: number): Promise<void> {
  const dir = runDir(config);
  const run = config.run.name;
  await reapOrphans(dir, { run, graceMs: config.workers.gracePeriodSeconds * 1000, log });
  checkInputs(config);
  const backend = config.workers.backend === 'auto' ? (activeBackend()?.name ?? 'auto') : config.workers.backend;
  log(
    `run ${run}: embedded stack (Temporal dev server, nats-server, teacher service, workers) in ${dir}; backend ${backend}`,
  );
  const logs = path.join(dir, 'logs');
  fs.mkdirSync(logs, { recursive: true });
  const stack = new EmbeddedStack(config, dir);
  let stopping: Promise<void> | undefined;
  const stop = () => (stopping ??= stack.stop());
  // Teacher training runs in this process and yields to signals after every step.
  const training = new AbortController();
  // Handled in every phase: stop the teacher's training (checkpointed) and the stack in order, and
  // exit; a second signal exits at once.
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) process.exit(130);
    log(`run ${run}: ${signal}: stopping the embedded stack; rerun \`offshoot run\` to resume this run`);
    training.abort();
    void stop().then(() => process.exit(130));
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
  // Whatever the phase, a child the supervisor could not keep running ends the run (a rerun resumes it).
  const guarded = <T>(work: Promise<T>): Promise<T> => Promise.race([work, stack.supervisor.failure]);
  try {
    // Temporal and NATS start while the teacher trains.
    const servers = startServers(stack, dir, logs);
    servers.catch(() => undefined);
    await guarded(ensureTeacher(config, training.signal));
    const [temporal, nats] = await guarded(servers);
    stack.publishTo(nats.url);
    const teacherService = await guarded(startServices(stack, config, backend, temporal, nats, logs));
    log(
      `run ${run}: stack up in ${formatDuration((Date.now() - t0) / 1000)} (Temporal ${temporal.address}, NATS ${nats.url}${teacherService ? `, teacher service ${teacherService.targets[0]}` : ''})`,
    );
    const client = await connectClient({ address: temporal.address, namespace: config.services.temporal.namespace });
    try {
      const handle = await guarded(submit(client, config, teacherService));
      const result = await guarded(follow(client, handle, run, Boolean(opts.quiet)));
      printResult(result, opts.json);
    } finally {
      await client.connection.close().catch(() => undefined);
    }
    log(`run ${run}: done in ${formatDuration((Date.now() - t0) / 1000)}`);
  } catch (err) {
    if (stopping) await new Promise<never>(() => undefined); // the signal handler exits
    for (const [name, pid] of Object.entries(stack.supervisor.pids())) {
      const p = stack.supervisor.current(name);
      if (!p?.alive()) continue;
      const tail = p.output().trim().split('\n').slice(-5).join('\n    ');
      if (tail) log(`  ${name} (pid ${pid}, last lines):\n    ${tail}`);
    }
    throw err;
  } finally {
    if (!stopping) await stop();
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
  }
}

async function runAction(opts: RunCliOptions): Promise<void> {
  const t0 = Date.now();
  const config = resolveConfig(opts);
  ensureStorageRoot(config);
  fs.mkdirSync(runDir(config), { recursive: true });
  if (!config.services.temporal.address) return runEmbedded(config, opts, t0);
  // Submit and follow only: the workers, the teacher service and NATS run elsewhere.
  const client = await connectClient({
    address: config.services.temporal.address,
    namespace: config.services.temporal.namespace,
  });
  const handle = await submit(client, config, undefined);
  printResult(await follow(client, handle, config.run.name, Boolean(opts.quiet)), opts.json);
  await client.connection.close();
}

/**
 * The embedded teacher: trained here (core/teacher, resumable) unless it exists or --teacher names one.
 * An abort of `signal` (a stop of the run) ends the training at the next step, checkpointed, so a
 * rerun goes on from there.
 */
export async function ensureTeacher(config: OffshootConfig, signal?: AbortSignal): Promise<void> {
  const dir = teacherDir(config);
  if (teacherFinished(dir)) {
    log(`teacher: ${dir}`);
    return;
  }
  const { enabled, ...settings } = config.teacher.train;
  if (!enabled) throw new Error(`teacher ${dir}: no finished checkpoint there and teacher.train.enabled is false`);
  log(`teacher: training ${settings.preset} on ${config.data.train} into ${dir} (${settings.steps} steps)`);
  const bar = new ProgressBar(settings.steps, 'teacher: step');
  const result = await trainTeacher(
    {
      ...settings,
      data: config.data.train,
      val: config.data.val,
      out: dir,
      tokenizer: config.data.tokenizer ?? undefined,
      tokenCache: defaultTokenStore(),
    },
    {
      log,
      signal,
      onStep: (r) => bar.update(r.step, `loss ${r.loss.toFixed(3)} ${Math.round(r.tokensPerSecond)} tok/s`),
    },
  );
  bar.done();
  if (result.stopped)
    throw new Error(`teacher ${dir}: training stopped at step ${result.steps} (checkpointed; a rerun resumes it)`);
}

async function clientFor(
  opts: { config?: string; temporal?: string },
  run: string,
): Promise<{ client: Client; config: OffshootConfig }> {
  const config = resolveConfig({ ...opts, name: run });
  const address = temporalAddressFor(config);
  return { client: await connectClient({ address, namespace: config.services.temporal.namespace }), config };
}

async function statusAction(run: string, opts: { config?: string; temporal?: string; json?: boolean }): Promise<void> {
  const { client, config } = await clientFor(opts, run);
  const ids = workflowIds(config.run.name);
  const handle = client.workflow.getHandle<typeof pipeline>(ids.pipeline);
  let d;
  try {
    d = await handle.describe();
  } catch (err) {
    if ((err as Error).name === 'WorkflowNotFoundError')
      throw new Error(`run ${config.run.name}: no such run (no workflow ${ids.pipeline})`);
    throw err;
  }
  const out: {
    run: string;
    workflowId: string;
    status: string;
    pipeline?: PipelineStatus;
    evolution?: EvolutionStatus;
    pretrain: PretrainStatus[];
    result?: PipelineResult;
  } = {
    run: config.run.name,
    workflowId: ids.pipeline,
    status: d.status.name,
    pretrain: [],
  };
  out.pipeline = await safeQuery(() => handle.query(pipelineStatusQuery));
  out.evolution = await safeQuery(() => client.workflow.getHandle(ids.evolution).query(evolutionStatusQuery));
  for (const id of out.pipeline?.pretrainWorkflowIds ?? []) {
    const s = await safeQuery(() => client.workflow.getHandle(id).query(pretrainStatusQuery));
    if (s) out.pretrain.push(s);
  }
  if (d.status.name === 'COMPLETED') out.result = await handle.result();
  await client.connection.close();
  if (opts.json) {
    console.log(JSON.stringify(out));
    return;
  }
  console.log(
    `run ${out.run}: ${out.status.toLowerCase()}${out.pipeline ? `, stage ${out.pipeline.stage}` : ''} (${out.workflowId})`,
  );
  if (out.evolution) {
    const e = out.evolution;
    console.log(
      `  search: ${e.evaluated + e.failed}/${e.budget} evaluations, generation ${e.generation}, workflow run ${e.run}, ${e.inFlight.length} running, best val loss ${e.bestFitness?.toFixed(4) ?? '-'}${e.stopped ? ' (stopped)' : ''}`,
    );
  }
  if (out.pipeline?.best) console.log(`  best: ${out.pipeline.best.description ?? out.pipeline.best.key}`);
  for (const s of out.pretrain) {
    const seg = s.progress?.segments.at(-1);
    const ev = s.progress?.evals.at(-1);
    console.log(
      `  pretrain ${s.name}: step ${s.progress?.step ?? 0}/${s.steps}${seg ? `, loss ${seg.lastLoss.toFixed(4)}` : ''}${ev ? `, val perplexity ${ev.valPpl.toFixed(2)} at step ${ev.step}` : ''}`,
    );
  }
  if (out.result) {
    console.log('');
    console.log(resultsTable(out.result));
  }
}

async function cancelAction(run: string, opts: { config?: string; temporal?: string }): Promise<void> {
  const { client, config } = await clientFor(opts, run);
  const handle = client.workflow.getHandle(workflowIds(config.run.name).pipeline);
  await handle.cancel();
  console.log(`run ${config.run.name}: cancellation requested (running segments checkpoint, running evaluations stop)`);
  await client.connection.close();
}

export function registerRunCommands(program: Command): void {
  program
    .command('run')
    .description(
      'the main job: search a sub-network of the teacher, pretrain it with distillation, compare with baselines (embedded stack unless a Temporal address is configured)',
    )
    .option(
      '--config <file>',
      'configuration file (YAML or JSON; docs/configuration.md); default: the embedded defaults',
    )
    .option('--name <run>', 'run name (overrides run.name)')
    .option('--teacher <dir>', 'use this teacher checkpoint instead of training the embedded one')
    .option('--temporal <host:port>', 'submit to this Temporal and follow (overrides services.temporal.address)')
    .option('--quiet', 'no progress lines')
    .option('--json', 'print the result as JSON')
    .action(withBackend(async (opts: RunCliOptions) => runAction(opts)));

  program
    .command('status')
    .description("a run's state: its stage, the search's progress, each pretraining's step, the results when done")
    .argument('<run>', 'run name')
    .option('--config <file>', 'configuration file (for services.temporal and storage.root)')
    .option('--temporal <host:port>', 'Temporal to ask (default: the config, else the running embedded stack)')
    .option('--json', 'print one JSON object')
    .action(async (run: string, opts: { config?: string; temporal?: string; json?: boolean }) =>
      statusAction(run, opts),
    );

  program
    .command('cancel')
    .description('cancel a run: its search and pretraining stop (segments checkpoint first)')
    .argument('<run>', 'run name')
    .option('--config <file>', 'configuration file (for services.temporal and storage.root)')
    .option('--temporal <host:port>', 'Temporal to ask (default: the config, else the running embedded stack)')
    .action(async (run: string, opts: { config?: string; temporal?: string }) => cancelAction(run, opts));
}
