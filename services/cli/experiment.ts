/**
 * `offshoot experiment paper-table [--config FILE]`: the paper's comparison (six arms × seeds) as one
 * Temporal workflow (workflows/paper-table.ts), on the embedded stack — the Temporal dev server (state
 * in <run>/temporal.db, so a rerun resumes), an orchestrate worker and compute workers serving the
 * evaluate and pretrain queues, and the teacher-logit service when the configuration asks for one —
 * or, with a Temporal address configured, submitted there and followed. The table, the plots and the
 * data are written to `experiment.out` (default docs/results/) with the command and configuration.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { Client, WorkflowHandle } from '@temporalio/client';
import type { Command } from 'commander';

import { runDir, teacherDir } from '../config/index.js';
import {
  type ExperimentConfig,
  checkExperimentTasks,
  loadExperimentConfig,
  paperTableInput,
  writePaperTableFiles,
} from '../experiment/index.js';
import { type ManagedProcess, startTeacherService, startTemporal, startWorker } from '../stack/index.js';
import { connectClient } from '../worker/index.js';
import {
  type PaperTableResult,
  type TeacherServiceRef,
  evolutionStatusQuery,
  paperTable,
  paperTableStatusQuery,
  paperTableWorkflowId,
  pretrainStatusQuery,
  workflowIds,
} from '../../workflows/index.js';
import { activeBackend, withBackend } from './backend-option.js';
import { formatDuration } from './progress.js';
import { ensureTeacher } from './run.js';

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface PaperTableCliOptions {
  config?: string;
  out?: string;
  name?: string;
  teacher?: string;
  temporal?: string;
  json?: boolean;
  quiet?: boolean;
}

/** The command line as a user would retype it. */
function commandLine(): string {
  const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  return `npx offshoot ${process.argv.slice(2).map(quote).join(' ')}`;
}

function resolve(opts: PaperTableCliOptions): ExperimentConfig {
  const overrides: Record<string, unknown> = {};
  if (opts.name) overrides.run = { name: opts.name };
  if (opts.teacher) overrides.teacher = { dir: opts.teacher, train: { enabled: false } };
  if (opts.temporal) overrides.services = { temporal: { address: opts.temporal } };
  if (opts.out) overrides.experiment = { out: opts.out };
  return loadExperimentConfig(opts.config, overrides);
}

async function safeQuery<T>(fn: () => Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch {
    return undefined;
  }
}

async function describeProgress(client: Client, runId: string): Promise<string | undefined> {
  const s = await safeQuery(() => client.workflow.getHandle(paperTableWorkflowId(runId)).query(paperTableStatusQuery));
  if (!s) return undefined;
  if (s.stage === 'teacher') return 'teacher: preparing (training it when missing)';
  if (s.stage === 'search') {
    const e = await safeQuery(() =>
      client.workflow.getHandle(workflowIds(runId).evolution).query(evolutionStatusQuery),
    );
    return e
      ? `search: ${e.evaluated + e.failed}/${e.budget} evaluations, best val loss ${e.bestFitness?.toFixed(4) ?? '-'}`
      : 'search: starting';
  }
  if (s.stage === 'pretrain') {
    const parts: string[] = [];
    for (const name of s.running) {
      const p = await safeQuery(() =>
        client.workflow.getHandle(workflowIds(runId).pretrain(name)).query(pretrainStatusQuery),
      );
      const ev = p?.progress?.evals.at(-1);
      parts.push(`${name} ${p?.progress?.step ?? 0}/${p?.steps ?? '?'}${ev ? ` ppl ${ev.valPpl.toFixed(1)}` : ''}`);
    }
    return `pretrain: ${s.done.length}/${s.total} done${parts.length ? `; running ${parts.join(', ')}` : ''}`;
  }
  return s.stage;
}

async function follow(
  client: Client,
  handle: WorkflowHandle<typeof paperTable>,
  runId: string,
  quiet: boolean,
): Promise<PaperTableResult> {
  const started = Date.now();
  let done = false;
  let last = '';
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
    return await handle.result();
  } finally {
    done = true;
    await progress;
  }
}

async function submit(
  client: Client,
  x: ExperimentConfig,
  teacherService: TeacherServiceRef | undefined,
  backend: string | undefined,
): Promise<WorkflowHandle<typeof paperTable>> {
  const id = paperTableWorkflowId(x.config.run.name);
  try {
    const existing = client.workflow.getHandle<typeof paperTable>(id);
    const d = await existing.describe();
    if (d.status.name === 'RUNNING' || d.status.name === 'COMPLETED') {
      log(
        `experiment ${x.config.run.name}: ${d.status.name === 'RUNNING' ? 'following the experiment already running' : 'already completed; its result:'} (${id})`,
      );
      return existing;
    }
    log(`experiment ${x.config.run.name}: the last attempt ${d.status.name.toLowerCase()}; starting it again`);
  } catch (err) {
    if ((err as Error).name !== 'WorkflowNotFoundError') throw err;
  }
  const input = paperTableInput(x, { command: commandLine(), backend, teacherService });
  log(
    `experiment ${x.config.run.name}: starting the paper-table workflow (${id}): ${input.arms.length} arms × ${input.seeds.length} seeds; files in ${input.run.dir}`,
  );
  return client.workflow.start(paperTable, {
    workflowId: id,
    taskQueue: 'orchestrate',
    args: [input],
    workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    workflowIdConflictPolicy: 'USE_EXISTING',
  });
}

function finish(x: ExperimentConfig, result: PaperTableResult, opts: PaperTableCliOptions): void {
  const out = path.resolve(x.experiment.out);
  const written = writePaperTableFiles(out, result, x.experiment.prefix);
  if (opts.json) {
    console.log(JSON.stringify({ files: written.files, result }));
    return;
  }
  console.log(written.markdown.split('\n## Students')[0]);
  console.log(`files: ${written.files.map((f) => path.relative(process.cwd(), f)).join(', ')}`);
}

async function paperTableAction(opts: PaperTableCliOptions): Promise<void> {
  const t0 = Date.now();
  const x = resolve(opts);
  const tasks = checkExperimentTasks(x);
  if (tasks.length)
    log(`experiment ${x.config.run.name}: zero-shot tasks ${tasks.join(', ')} on the teacher and every final student`);
  const config = x.config;
  const dir = runDir(config);
  fs.mkdirSync(dir, { recursive: true });
  const backend = config.workers.backend === 'auto' ? activeBackend()?.name : config.workers.backend;
  if (config.services.temporal.address) {
    const client = await connectClient({
      address: config.services.temporal.address,
      namespace: config.services.temporal.namespace,
    });
    try {
      const handle = await submit(client, x, undefined, backend);
      finish(x, await follow(client, handle, config.run.name, Boolean(opts.quiet)), opts);
    } finally {
      await client.connection.close();
    }
    return;
  }

  const logs = path.join(dir, 'logs');
  fs.mkdirSync(logs, { recursive: true });
  log(
    `experiment ${config.run.name}: embedded stack (Temporal dev server, ${x.experiment.workers} compute workers) in ${dir}; backend ${backend ?? 'auto'}; ${os.cpus().length} CPUs`,
  );
  const started: ManagedProcess[] = [];
  let stopping = false;
  const stopAll = async () => {
    // Workers first (a running segment checkpoints), then the teacher service, then Temporal.
    const rank = (p: ManagedProcess) => (p.name === 'temporal' ? 2 : p.name === 'teacher' ? 1 : 0);
    for (const r of [0, 1, 2])
      await Promise.all(
        started.filter((p) => rank(p) === r).map((p) => p.stop(config.workers.gracePeriodSeconds * 1000)),
      );
  };
  const onSignal = (signal: string) => {
    if (stopping) process.exit(130);
    stopping = true;
    log(`experiment ${config.run.name}: ${signal}: stopping the embedded stack; rerun the command to resume`);
    void stopAll().then(() => process.exit(130));
  };
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  try {
    const temporalReady = startTemporal({
      dbFile: path.join(dir, 'temporal.db'),
      logFile: path.join(logs, 'temporal.log'),
    }).then((t) => {
      started.push(t);
      return t;
    });
    temporalReady.catch(() => undefined);
    let teacherService: TeacherServiceRef | undefined;
    if (config.teacher.service.enabled) {
      // The service loads the teacher, so it must exist first (trained here, as `offshoot run` does).
      await ensureTeacher(x.config);
      const t = await startTeacherService({
        model: teacherDir(config),
        backend,
        extra: [
          '--max-batch-tokens',
          String(config.teacher.service.maxBatchTokens),
          '--top-k',
          String(config.teacher.service.topK),
        ],
        logFile: path.join(logs, 'teacher-service.log'),
      });
      started.push(t);
      teacherService = { targets: [t.target], topK: config.teacher.service.topK };
    }
    const temporal = await temporalReady;
    const common = {
      temporal: temporal.address,
      namespace: config.services.temporal.namespace,
      backend,
      env: { ...process.env, ...(backend ? { OFFSHOOT_BACKEND: backend } : {}) },
    };
    const workers = await Promise.allSettled([
      startWorker({
        ...common,
        queues: ['orchestrate'],
        name: 'orchestrate',
        logFile: path.join(logs, 'worker-orchestrate.log'),
      }),
      ...Array.from({ length: x.experiment.workers }, (_, i) =>
        startWorker({
          ...common,
          queues: ['evaluate', 'pretrain'],
          name: `compute-${i}`,
          logFile: path.join(logs, `worker-compute-${i}.log`),
        }),
      ),
    ]);
    for (const w of workers) if (w.status === 'fulfilled') started.push(w.value);
    const failed = workers.find((w) => w.status === 'rejected') as PromiseRejectedResult | undefined;
    if (failed) throw failed.reason;
    log(
      `experiment ${config.run.name}: stack up in ${formatDuration((Date.now() - t0) / 1000)} (Temporal ${temporal.address})`,
    );
    const client = await connectClient({ address: temporal.address, namespace: config.services.temporal.namespace });
    try {
      const handle = await submit(client, x, teacherService, backend);
      const result = await follow(client, handle, config.run.name, Boolean(opts.quiet));
      finish(x, result, opts);
    } finally {
      await client.connection.close();
    }
    log(`experiment ${config.run.name}: done in ${formatDuration((Date.now() - t0) / 1000)}`);
  } catch (err) {
    for (const p of started) {
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

export function registerExperimentCommands(program: Command): void {
  const experiment = program
    .command('experiment')
    .description("experiments that reproduce the paper's claims on offshoot's own runs (docs/experiments.md)");
  experiment
    .command('paper-table')
    .description(
      'six arms (random init, first-k and searched sub-networks, each with CE and with KD) over several seeds with the same data order and budget; ' +
        'writes the table (final perplexity and bits per byte in and out of domain, tokens and FLOPs to reach random init, zero-shot task accuracy with experiment.tasks) and curves to docs/results/',
    )
    .option(
      '--config <file>',
      'configuration (YAML or JSON): the run configuration plus an `experiment:` section (docs/experiments.md)',
    )
    .option('--out <dir>', 'output folder (overrides experiment.out; default docs/results)')
    .option('--name <run>', 'run name (overrides run.name; default paper-table)')
    .option('--teacher <dir>', 'a teacher checkpoint (e.g. a Hugging Face Pythia directory) instead of training one')
    .option('--temporal <host:port>', 'submit to this Temporal and follow (workers run elsewhere)')
    .option('--quiet', 'no progress lines')
    .option('--json', 'print the files and the raw result as JSON')
    .action(withBackend(async (opts: PaperTableCliOptions) => paperTableAction(opts)));
}
