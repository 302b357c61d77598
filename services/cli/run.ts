/**
 * `offshoot run` (the main job), `offshoot status RUN`, `offshoot cancel RUN`.
 *
 * With no Temporal address configured, `run` starts the embedded stack as child processes — the
 * Temporal dev server (state in <run>/temporal.db, so a rerun resumes), nats-server, the teacher-logit
 * service and the workers — after training the embedded default teacher (unless --teacher DIR), runs
 * the pipeline, prints the results table and stops what it started. With an address configured it only
 * submits the pipeline (or finds it running) and follows it.
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
  loadConfigFile,
  mergeRaw,
  parseConfig,
  pipelineInput,
  runDir,
  teacherDir,
} from '../config/index.js';
import { resultsTable } from '../orchestration/index.js';
import {
  type ManagedProcess,
  type NatsServer,
  type TemporalServer,
  startNats,
  startTeacherService,
  startTemporal,
  startWorker,
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
import { formatDuration } from './progress.js';

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
  if (opts.name) overrides.run = { name: opts.name };
  if (opts.teacher) overrides.teacher = { dir: opts.teacher, train: { enabled: false } };
  if (opts.temporal) overrides.services = { temporal: { address: opts.temporal } };
  return Object.keys(overrides).length ? parseConfig(mergeRaw(base, overrides), opts.config ?? 'command line') : base;
}

/** Where the embedded stack of a run records its endpoints while it runs. */
function stackFile(config: OffshootConfig): string {
  return path.join(runDir(config), 'stack.json');
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A killed orphan nobody reaps stays a zombie: it is gone for our purposes.
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** What stack.json records: endpoints, the `offshoot run` process and every process it started. */
interface StackRecord {
  temporal: string;
  nats?: string;
  pid: number;
  processes?: Record<string, number>;
}

/** The command line of a live process where /proc shows it, else '' (other systems, or it is gone). */
function commandOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

/**
 * Before an embedded stack starts: refuses when another `offshoot run` of this run is alive, and stops
 * what an `offshoot run` that was killed (kill -9, a lost node) left running — a second Temporal on
 * the same database, workers still taking tasks. A pid is only signalled while its command line (where
 * /proc shows it) is one of ours, since pids are reused.
 */
async function reapOrphans(config: OffshootConfig): Promise<void> {
  const file = stackFile(config);
  if (!fs.existsSync(file)) return;
  let record: StackRecord;
  try {
    record = JSON.parse(fs.readFileSync(file, 'utf8')) as StackRecord;
  } catch {
    fs.rmSync(file, { force: true });
    return;
  }
  const ours = (pid: number) =>
    pidAlive(pid) &&
    (!fs.existsSync('/proc') || /services\/cli\/main|offshoot|temporal|nats-server/.test(commandOf(pid)));
  if (record.pid !== process.pid && ours(record.pid)) {
    throw new Error(
      `run ${config.run.name}: another \`offshoot run\` (pid ${record.pid}) is running it; follow it with \`offshoot watch ${config.run.name}\` or stop it (Ctrl-C, or kill ${record.pid}) first`,
    );
  }
  const left = Object.entries(record.processes ?? {}).filter(([, pid]) => ours(pid));
  if (left.length > 0) {
    log(
      `run ${config.run.name}: stopping what an \`offshoot run\` that was killed (pid ${record.pid}) left running: ${left.map(([n, pid]) => `${n} (${pid})`).join(', ')}`,
    );
    const signal = (sig: NodeJS.Signals) => {
      for (const [, pid] of left) {
        try {
          process.kill(pid, sig);
        } catch {
          // already gone
        }
      }
    };
    // As stopAll does: workers drain (a running segment checkpoints) within the grace period.
    signal('SIGTERM');
    const deadline = Date.now() + config.workers.gracePeriodSeconds * 1000;
    while (Date.now() < deadline && left.some(([, pid]) => pidAlive(pid))) await sleep(200);
    signal('SIGKILL');
    const killDeadline = Date.now() + 10_000;
    while (Date.now() < killDeadline && left.some(([, pid]) => pidAlive(pid))) await sleep(100);
  }
  fs.rmSync(file, { force: true });
}

/** The Temporal address for status/cancel: the flag, the config, or a running embedded stack. */
function temporalAddressFor(config: OffshootConfig): string {
  if (config.services.temporal.address) return config.services.temporal.address;
  const file = stackFile(config);
  if (fs.existsSync(file)) {
    const s = JSON.parse(fs.readFileSync(file, 'utf8')) as StackRecord;
    if (pidAlive(s.pid)) return s.temporal;
  }
  throw new Error(
    `run ${config.run.name}: no Temporal to ask — the embedded stack of \`offshoot run\` is not running (rerun \`offshoot run\` to resume the run), and no address is configured (--temporal or services.temporal.address)`,
  );
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

interface Embedded {
  temporal: TemporalServer;
  nats: NatsServer;
  processes: ManagedProcess[];
  teacherService?: TeacherServiceRef;
}

/** Starts the embedded stack for a run; the teacher must exist (the teacher service loads it). */
async function startEmbedded(
  config: OffshootConfig,
  backend: string,
  temporalReady: Promise<[TemporalServer, NatsServer]>,
): Promise<Embedded> {
  const dir = runDir(config);
  const logs = path.join(dir, 'logs');
  fs.mkdirSync(logs, { recursive: true });
  const [temporal, nats] = await temporalReady;
  const processes: ManagedProcess[] = [];
  const env = { ...process.env, OFFSHOOT_NATS_URL: nats.url, OFFSHOOT_BACKEND: backend };
  let teacherService: TeacherServiceRef | undefined;
  const common = { temporal: temporal.address, namespace: config.services.temporal.namespace, env, backend };
  const starts: Promise<unknown>[] = [];
  if (config.teacher.service.enabled) {
    // A run's workflows carry the teacher service's address, so a rerun that resumes them serves
    // the teacher on the port the run used before (a new one, with a warning, if that is taken).
    const portFile = path.join(dir, 'teacher-service.port');
    const previous = fs.existsSync(portFile) ? Number(fs.readFileSync(portFile, 'utf8')) : undefined;
    const serve = (port?: number) =>
      startTeacherService({
        model: teacherDir(config),
        port,
        backend,
        env,
        extra: [
          '--max-batch-tokens',
          String(config.teacher.service.maxBatchTokens),
          '--top-k',
          String(config.teacher.service.topK),
        ],
        logFile: path.join(logs, 'teacher-service.log'),
      });
    starts.push(
      serve(previous)
        .catch((err: unknown) => {
          if (previous === undefined) throw err;
          log(
            `run ${config.run.name}: the teacher service could not listen on its earlier port ${previous} (${(err as Error).message.split('\n')[0]}); a resumed search or pretraining that still uses it will retry until its attempts run out`,
          );
          return serve();
        })
        .then((t) => {
          processes.push(t);
          fs.writeFileSync(portFile, `${t.port}\n`);
          teacherService = { targets: [t.target], topK: config.teacher.service.topK };
        }),
    );
  }
  starts.push(
    startWorker({
      ...common,
      queues: ['orchestrate'],
      name: 'orchestrate',
      logFile: path.join(logs, 'worker-orchestrate.log'),
    }).then((w) => processes.push(w)),
  );
  starts.push(
    startWorker({
      ...common,
      queues: ['pretrain'],
      name: 'pretrain',
      logFile: path.join(logs, 'worker-pretrain.log'),
    }).then((w) => processes.push(w)),
  );
  for (let i = 0; i < config.workers.evaluators; i++) {
    starts.push(
      startWorker({
        ...common,
        queues: ['evaluate'],
        slots: config.workers.evaluateSlots,
        name: `evaluate-${i}`,
        logFile: path.join(logs, `worker-evaluate-${i}.log`),
      }).then((w) => processes.push(w)),
    );
  }
  const results = await Promise.allSettled(starts);
  const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult | undefined;
  if (failed) {
    await Promise.all(processes.map((p) => p.stop(5000)));
    throw failed.reason;
  }
  return { temporal, nats, processes, teacherService };
}

async function runAction(opts: RunCliOptions): Promise<void> {
  const t0 = Date.now();
  const config = resolveConfig(opts);
  const dir = runDir(config);
  fs.mkdirSync(dir, { recursive: true });
  if (config.services.temporal.address) {
    // Submit and follow only: the workers, the teacher service and NATS run elsewhere.
    const client = await connectClient({
      address: config.services.temporal.address,
      namespace: config.services.temporal.namespace,
    });
    const handle = await submit(client, config, undefined);
    printResult(await follow(client, handle, config.run.name, Boolean(opts.quiet)), opts.json);
    await client.connection.close();
    return;
  }

  await reapOrphans(config);
  const backend = config.workers.backend === 'auto' ? (activeBackend()?.name ?? 'auto') : config.workers.backend;
  log(
    `run ${config.run.name}: embedded stack (Temporal dev server, nats-server, teacher service, workers) in ${dir}; backend ${backend}`,
  );
  const started: ManagedProcess[] = [];
  const pendingStarts: Promise<unknown>[] = [];
  let stopping = false;
  const stopAll = async () => {
    await Promise.allSettled(pendingStarts);
    // Workers first (they drain: a running segment checkpoints), then the services.
    const order = [...started].sort((a, b) => rank(a) - rank(b));
    for (const group of [
      order.filter((p) => rank(p) === 0),
      order.filter((p) => rank(p) === 1),
      order.filter((p) => rank(p) === 2),
    ]) {
      await Promise.all(group.map((p) => p.stop(config.workers.gracePeriodSeconds * 1000)));
    }
    fs.rmSync(stackFile(config), { force: true });
  };
  const rank = (p: ManagedProcess) =>
    p.name.startsWith('worker') || ['orchestrate', 'pretrain'].includes(p.name) || p.name.startsWith('evaluate')
      ? 0
      : p.name === 'teacher'
        ? 1
        : 2;
  const onSignal = (signal: string) => {
    if (stopping) process.exit(130);
    stopping = true;
    log(`run ${config.run.name}: ${signal}: stopping the embedded stack; rerun \`offshoot run\` to resume this run`);
    void stopAll().then(() => process.exit(130));
  };
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGTERM', () => onSignal('SIGTERM'));

  try {
    // Temporal and NATS start while the teacher trains.
    const logs = path.join(dir, 'logs');
    fs.mkdirSync(logs, { recursive: true });
    // Each process is tracked as soon as it is up, so whatever fails, what did start is stopped.
    const track = <P extends ManagedProcess>(p: Promise<P>): Promise<P> => p.then((x) => (started.push(x), x));
    const starting = [
      track(startTemporal({ dbFile: path.join(dir, 'temporal.db'), logFile: path.join(logs, 'temporal.log') })),
      track(startNats({ storeDir: path.join(dir, 'jetstream'), logFile: path.join(logs, 'nats.log') })),
    ] as const;
    pendingStarts.push(...starting);
    const services = Promise.all(starting).then((s) => {
      const record: StackRecord = {
        temporal: s[0].address,
        nats: s[1].url,
        pid: process.pid,
        processes: { temporal: s[0].pid, nats: s[1].pid },
      };
      fs.writeFileSync(stackFile(config), JSON.stringify(record) + '\n');
      return s;
    });
    services.catch(() => undefined);
    await ensureTeacher(config);
    const stack = await startEmbedded(config, backend, services);
    started.push(...stack.processes);
    // For whoever must clean up after an `offshoot run` that was killed -9: every process it started.
    fs.writeFileSync(
      stackFile(config),
      JSON.stringify({
        temporal: stack.temporal.address,
        nats: stack.nats.url,
        pid: process.pid,
        processes: Object.fromEntries(started.map((p) => [p.name, p.pid])),
      } satisfies StackRecord) + '\n',
    );
    log(
      `run ${config.run.name}: stack up in ${formatDuration((Date.now() - t0) / 1000)} (Temporal ${stack.temporal.address}, NATS ${stack.nats.url}${stack.teacherService ? `, teacher service ${stack.teacherService.targets[0]}` : ''})`,
    );
    const client = await connectClient({
      address: stack.temporal.address,
      namespace: config.services.temporal.namespace,
    });
    const handle = await submit(client, config, stack.teacherService);
    const result = await follow(client, handle, config.run.name, Boolean(opts.quiet));
    await client.connection.close();
    printResult(result, opts.json);
    log(`run ${config.run.name}: done in ${formatDuration((Date.now() - t0) / 1000)}`);
  } catch (err) {
    for (const p of started) {
      if (!p.alive()) continue;
      const tail = p.output().trim().split('\n').slice(-5).join('\n    ');
      if (tail) log(`  ${p.name} (last lines):\n    ${tail}`);
    }
    throw err;
  } finally {
    if (!stopping) {
      stopping = true;
      await stopAll();
    }
  }
}

/** The embedded teacher: trained here (core/teacher, resumable) unless it exists or --teacher names one. */
export async function ensureTeacher(config: OffshootConfig): Promise<void> {
  const dir = teacherDir(config);
  if (teacherFinished(dir)) {
    log(`teacher: ${dir}`);
    return;
  }
  const { enabled, ...settings } = config.teacher.train;
  if (!enabled) throw new Error(`teacher ${dir}: no finished checkpoint there and teacher.train.enabled is false`);
  log(`teacher: training ${settings.preset} on ${config.data.train} into ${dir} (${settings.steps} steps)`);
  await trainTeacher(
    {
      ...settings,
      data: config.data.train,
      val: config.data.val,
      out: dir,
      tokenizer: config.data.tokenizer ?? undefined,
      tokenCache: defaultTokenStore(),
    },
    { log },
  );
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
