/**
 * The GPU runbook's phases (docs/gpu-run.md). Each runs offshoot's own commands as child processes —
 * the teacher-logit service (`offshoot teacher serve`), the pretraining loop consuming its stream
 * (`offshoot pretrain`), the search's evaluators (`offshoot search --teacher-service`) — since Temporal
 * and NATS are not brought to the GPU machine. Every phase prints JSON lines and appends them to
 * <work>/results.jsonl, with the command that made each figure; `render` fills docs/gpu-run.md from it.
 *
 * Phases that train resume from their checkpoints when run again; `--max-seconds` stops them in time
 * (SIGTERM: they checkpoint at the next step) so each fits one 10-minute command; SIGTERM or SIGINT to
 * the runbook itself is the deadline arriving at once. `runNext` runs the phases not yet done, in
 * order, until that deadline: every command of a GPU session can be the same.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { defaultTokenStore, loadTokenizer, openData, sampleBatch } from '../../core/data/index.js';
import { initBackend, parseBackendChoice } from '../../core/model/backend.js';
import { GPTNeoX, loadCheckpoint, loadConfig, readTrainerState, runRepeatedPass } from '../../core/model/index.js';
import { setPrecision, parsePrecision } from '../../core/model/precision.js';
import * as tf from '../../core/model/tfjs.js';
import { countShape, firstKSpec, resolveTarget } from '../../core/subnet/index.js';
import { type OffshootConfig, loadConfigFile, runDir } from '../../services/config/index.js';
import { TeacherClient } from '../../services/teacher/index.js';
import { mfu as gpuMfu } from '../gpu-peak.js';
import { type CorpusManifest, unpackCarry } from './corpus.js';
import { type Result, renderDoc } from './render.js';

export const PHASES = ['unpack', 'teacher', 'throughput', 'search', 'runs', 'faults', 'render'] as const;
export type PhaseName = (typeof PHASES)[number];

/** The pretraining arms of the paper's comparison, in the order they run. */
export const ARMS = ['searched-kd', 'random-init', 'first-k'] as const;
export type Arm = (typeof ARMS)[number];

export interface PhaseOptions {
  config: string;
  work?: string;
  carry?: string[];
  maxSeconds?: number;
  /** teacher and runs: stop after this step of their schedules (checkpointed). */
  stopAt?: number;
  /** A folder that gets a copy of results.jsonl after every result (what a command brings back). */
  out?: string;
  /** render: the document it fills, and the results it fills it from (default the run's). */
  doc: string;
  results?: string;
}

interface Ctx {
  config: OffshootConfig;
  configFile: string;
  work: string;
  results: string;
  deadline: number;
  /** Aborted by SIGTERM or SIGINT, which make the deadline now; absent where a deadline does not cut. */
  stop?: AbortSignal;
  opts: PhaseOptions;
  log: (line: string) => void;
}

/** The context of a command that runs whole or not at all: neither the deadline nor a signal cuts it. */
const uncut = (ctx: Ctx): Ctx => ({ ...ctx, deadline: Infinity, stop: undefined });

const REPO = (() => {
  const up = path.resolve(import.meta.dirname, '..', '..');
  return fs.existsSync(path.join(up, 'package.json')) ? up : path.resolve(up, '..');
})();

/** How this process starts `offshoot`: the TypeScript sources through tsx when it runs from them, else dist/. */
function offshootCommand(): string[] {
  if (import.meta.url.endsWith('.ts'))
    return [process.execPath, '--import', import.meta.resolve('tsx'), path.join(REPO, 'services', 'cli', 'main.ts')];
  return [process.execPath, path.join(REPO, 'dist', 'services', 'cli', 'main.js')];
}

function globalFlags(c: OffshootConfig): string[] {
  return ['--backend', c.workers.backend, ...(c.workers.precision ? ['--precision', c.workers.precision] : [])];
}

/** The command line as a person types it (for the results and the document). */
function shown(args: string[]): string {
  // Paths inside the checkout as the README's commands give them: relative to its root.
  const inside = `${process.cwd()}${path.sep}`;
  return ['offshoot', ...args]
    .map((a) => (a.startsWith(inside) ? a.slice(inside.length) : a))
    .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`))
    .join(' ');
}

let machineInfo: { gpu: string | null; cpus: number; node: string } | undefined;

/** The GPU (nvidia-smi's name and driver), cores and Node.js of this machine, asked once a process. */
function machine(): { gpu: string | null; cpus: number; node: string } {
  if (machineInfo) return machineInfo;
  let gpu: string | null = null;
  try {
    gpu = execFileSync('nvidia-smi', ['--query-gpu=name,driver_version', '--format=csv,noheader'], { encoding: 'utf8' })
      .trim()
      .split('\n')[0];
  } catch {
    gpu = null;
  }
  machineInfo = { gpu, cpus: os.availableParallelism(), node: process.version };
  return machineInfo;
}

function record(ctx: Ctx, result: Result): void {
  const line = JSON.stringify({ ...result, at: new Date().toISOString() });
  fs.appendFileSync(ctx.results, `${line}\n`);
  console.log(line);
  // A command cut off later still brings back every figure made so far.
  if (ctx.opts.out) {
    fs.mkdirSync(ctx.opts.out, { recursive: true });
    fs.copyFileSync(ctx.results, path.join(ctx.opts.out, 'results.jsonl'));
  }
}

function readJsonl<T>(file: string): T[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as T);
}

// ---------------------------------------------------------------------------------------------------
// Child processes

/** A JSON line an `offshoot` command printed (start, step, done, listening, ...). */
// biome-ignore lint/suspicious/noExplicitAny: the commands' events, each read where its shape is known.
type Event = Record<string, any>;

interface Child {
  process: ChildProcess;
  events: Event[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first event matching `pred`, rejects when the process exits first. */
  waitFor(pred: (e: Event) => boolean): Promise<Event>;
}

/** Starts `offshoot ARGS`; its JSON stdout lines become events, its stderr goes to <work>/logs/NAME.log. */
function startOffshoot(ctx: Ctx, name: string, args: string[]): Child {
  const [cmd, ...pre] = offshootCommand();
  const logs = path.join(ctx.work, 'logs');
  fs.mkdirSync(logs, { recursive: true });
  const logFd = fs.openSync(path.join(logs, `${name}.log`), 'a');
  fs.writeSync(logFd, `\n$ ${shown(args)}\n`);
  const child = spawn(cmd, [...pre, ...args], { cwd: process.cwd(), stdio: ['ignore', 'pipe', logFd] });
  fs.closeSync(logFd);
  const events: Event[] = [];
  const waiters = new Set<() => void>();
  let partial = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    const lines = (partial + d).split('\n');
    partial = lines.pop()!;
    for (const l of lines) {
      if (!l.startsWith('{')) continue;
      try {
        events.push(JSON.parse(l) as Event);
      } catch {
        // not an event
      }
    }
    for (const w of waiters) w();
  });
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => {
      done = true;
      for (const w of waiters) w();
      resolve({ code, signal });
    }),
  );
  const waitFor = (pred: (e: Event) => boolean) =>
    new Promise<Event>((resolve, reject) => {
      const check = () => {
        const hit = events.find(pred);
        if (hit) {
          waiters.delete(check);
          resolve(hit);
        } else if (done) {
          waiters.delete(check);
          reject(new Error(`${name} exited before the awaited event; see ${path.join(logs, `${name}.log`)}`));
        }
      };
      waiters.add(check);
      check();
    });
  return { process: child, events, exited, waitFor };
}

/** Calls `fn` at the phase's deadline (--max-seconds) or on a stop signal; returns what cancels that. */
function atDeadline(ctx: Ctx, fn: () => void): () => void {
  const timer = Number.isFinite(ctx.deadline) ? setTimeout(fn, Math.max(0, ctx.deadline - Date.now())) : undefined;
  const stop = ctx.stop;
  stop?.addEventListener('abort', fn);
  return () => {
    clearTimeout(timer);
    stop?.removeEventListener('abort', fn);
  };
}

/** How long a command has after the deadline's SIGTERM to checkpoint and exit before SIGKILL. */
const DEADLINE_GRACE_MS = 60_000;

/**
 * Waits for a started `offshoot` command, sending it SIGTERM at the phase's deadline (the resumable
 * commands then checkpoint and exit 0), and SIGKILL if it has not exited DEADLINE_GRACE_MS later (a
 * GPU process has been seen to outlive SIGTERM). Fails on any other end but success — except our own
 * signals, as when SIGTERM arrives while the command still loads, before it listens for it: it dies
 * of it, and its last checkpoint is where it goes on next time.
 */
async function finish(ctx: Ctx, child: Child, name: string, args: string[]): Promise<{ interrupted: boolean }> {
  let interrupted = false;
  let kill: NodeJS.Timeout | undefined;
  const cancel = atDeadline(ctx, () => {
    if (interrupted) return;
    interrupted = true;
    child.process.kill('SIGTERM');
    kill = setTimeout(() => {
      ctx.log(
        `${name}: still running ${DEADLINE_GRACE_MS / 1000} s after SIGTERM; SIGKILL (its last checkpoint stands)`,
      );
      child.process.kill('SIGKILL');
    }, DEADLINE_GRACE_MS);
  });
  const { code, signal } = await child.exited;
  cancel();
  clearTimeout(kill);
  if (code !== 0 && !(interrupted && (signal === 'SIGTERM' || signal === 'SIGKILL')))
    throw new Error(
      `${shown(args)} failed (${signal ?? `exit ${code}`}); see ${path.join(ctx.work, 'logs', `${name}.log`)}`,
    );
  return { interrupted };
}

/** Runs `offshoot ARGS` to its end or the phase's deadline. */
async function runOffshoot(
  ctx: Ctx,
  name: string,
  args: string[],
): Promise<{ events: Event[]; seconds: number; interrupted: boolean }> {
  const started = performance.now();
  const child = startOffshoot(ctx, name, args);
  const { interrupted } = await finish(ctx, child, name, args);
  return { events: child.events, seconds: (performance.now() - started) / 1000, interrupted };
}

/** The teacher-logit service as a child process, on `port` (0: a free one). */
async function startService(ctx: Ctx, port = 0): Promise<{ child: Child; port: number; target: string }> {
  const s = ctx.config.teacher.service;
  const child = startOffshoot(ctx, 'teacher-service', [
    ...globalFlags(ctx.config),
    'teacher',
    'serve',
    '--model',
    teacherDir(ctx),
    '--port',
    String(port),
    '--top-k',
    String(s.topK),
    '--max-batch-tokens',
    String(s.maxBatchTokens),
    '--max-buffered-mib',
    String(s.maxBufferedMiB),
  ]);
  const listening = await child.waitFor((e) => e.event === 'listening');
  return { child, port: listening.port as number, target: `127.0.0.1:${listening.port}` };
}

async function stopChild(child: Child): Promise<void> {
  if (child.process.exitCode !== null || child.process.signalCode !== null) return;
  child.process.kill('SIGTERM');
  const timer = setTimeout(() => child.process.kill('SIGKILL'), 30_000);
  await child.exited;
  clearTimeout(timer);
}

// ---------------------------------------------------------------------------------------------------
// Shared pieces

const teacherDir = (ctx: Ctx) => path.join(ctx.work, 'teacher');
const corpusDir = (ctx: Ctx) => path.join(ctx.work, 'corpus');

function requireTeacher(ctx: Ctx): void {
  if (!fs.existsSync(path.join(teacherDir(ctx), 'config.json')))
    throw new Error(`no teacher in ${teacherDir(ctx)}: run the teacher phase first`);
}

function dataArgs(c: OffshootConfig): string[] {
  return ['--data', c.data.train, '--val', c.data.val, ...(c.data.tokenizer ? ['--tokenizer', c.data.tokenizer] : [])];
}

function target(ctx: Ctx): { minParams: number; maxParams: number; label: string } {
  const s = ctx.config.search;
  return resolveTarget(loadConfig(teacherDir(ctx)), s.target, {
    space: s.space,
    count: s.bins,
    scale: s.scale,
    choices: s.choices,
  });
}

/** The orderings the search's candidates and the searched student are cut with (the pipeline's: the search's). */
function searchOrderings(ctx: Ctx): string[] {
  const f = ctx.config.search.fitness;
  return ['--order', f.order, '--layers', f.layers];
}

/** `subnet extract`'s calibration data for importance orderings: the training data, as the search's. */
function calibration(ctx: Ctx): string[] {
  const f = ctx.config.search.fitness;
  if (f.order !== 'importance' && f.layers !== 'importance') return [];
  return [
    '--calibration',
    ctx.config.data.train,
    ...(ctx.config.data.tokenizer ? ['--tokenizer', ctx.config.data.tokenizer] : []),
  ];
}

/** A student's step-0 checkpoint cut out of the teacher (once). */
async function extractStudent(ctx: Ctx, name: string, spec: unknown, orderings: string[] = []): Promise<string> {
  const out = path.join(ctx.work, 'students', name);
  if (fs.existsSync(path.join(out, 'config.json'))) return out;
  const specFile = path.join(ctx.work, 'students', `${name}.spec.json`);
  fs.mkdirSync(path.dirname(specFile), { recursive: true });
  fs.writeFileSync(specFile, JSON.stringify(spec));
  const args = [
    ...globalFlags(ctx.config),
    'subnet',
    'extract',
    '--teacher',
    teacherDir(ctx),
    '--spec',
    specFile,
    '--out',
    out,
    ...orderings,
    '--json',
  ];
  await runOffshoot(uncut(ctx), `extract-${name}`, args);
  return out;
}

function firstKStudent(ctx: Ctx): Promise<string> {
  return extractStudent(ctx, 'first-k', firstKSpec(loadConfig(teacherDir(ctx)), target(ctx)).spec);
}

/** `offshoot pretrain` arguments of the configuration's pretraining, for a student and a folder. */
function pretrainArgs(
  ctx: Ctx,
  init: string,
  out: string,
  options: {
    random?: boolean;
    /** Distil from the teacher service at this target, or (`teacher`) from the teacher checkpoint in-process. */
    service?: string;
    teacher?: string;
    steps?: number;
    stopAt?: number;
    evalEvery?: boolean;
  } = {},
): string[] {
  const p = ctx.config.pretrain;
  const d = p.distill;
  return [
    ...globalFlags(ctx.config),
    'pretrain',
    '--init',
    init,
    '--out',
    out,
    ...dataArgs(ctx.config),
    '--steps',
    String(options.steps ?? p.steps),
    '--batch-size',
    String(p.batchSize),
    '--seq-len',
    String(p.seqLen),
    '--lr',
    String(p.lr),
    '--warmup',
    String(Math.min(p.warmup, options.steps ?? p.steps)),
    '--seed',
    String(ctx.config.run.seed),
    '--checkpoint-every',
    String(p.checkpointEvery),
    '--eval-tokens',
    String(p.evalTokens),
    '--report-every',
    String(Math.max(1, Math.min(10, Math.floor(p.checkpointEvery / 2)))),
    ...(options.evalEvery === false ? [] : ['--eval-every', String(p.evalEvery)]),
    ...(options.random ? ['--random-init'] : []),
    ...(options.service || options.teacher
      ? [
          ...(options.service ? ['--teacher-service', options.service] : ['--teacher', options.teacher as string]),
          '--top-k',
          String(ctx.config.teacher.service.topK),
          '--alpha',
          String(d.alpha),
          '--temperature',
          String(d.temperature),
          '--direction',
          d.direction,
        ]
      : []),
    ...(options.stopAt ? ['--stop-at', String(options.stopAt)] : []),
  ];
}

/** The median of the step reports' tokens/s after the first fifth of the steps (warm-up: compiles, graph capture). */
function steadyTokensPerSecond(events: Event[], firstStep: number, lastStep: number): number {
  const from = firstStep + Math.max(1, Math.floor((lastStep - firstStep) / 5));
  const rates = events
    .filter((e) => e.event === 'step' && e.step > from)
    .map((e) => e.tokensPerSecond as number)
    .sort((a, b) => a - b);
  if (rates.length === 0) return NaN;
  return rates[Math.floor(rates.length / 2)];
}

function flopsPerToken(ctx: Ctx, student: string): { training: number; teacherForward: number } {
  const f = countShape(loadConfig(student), loadConfig(teacherDir(ctx)), {
    seqLen: ctx.config.pretrain.seqLen,
  }).flopsPerToken;
  return { training: f.training, teacherForward: f.teacherForward };
}

/** Model FLOP utilisation against the GPU's bf16 peak (gpu-peak.ts); null off the cuda backend. */
function mfu(backend: string | undefined, flopsPerSecond: number): number | null {
  return backend === 'cuda' ? gpuMfu(flopsPerSecond / 1e12, machine().gpu) : null;
}

// ---------------------------------------------------------------------------------------------------
// Memory sampling: RSS of processes and, where nvidia-smi answers, their GPU memory.

interface MemorySample {
  t: number;
  step: number;
  rss: Record<string, number>;
  gpu: Record<string, number> | null;
}

function rssOf(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

function gpuMemoryByPid(): Map<number, number> | null {
  try {
    const out = execFileSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    const m = new Map<number, number>();
    for (const line of out.trim().split('\n').filter(Boolean)) {
      const [pid, mib] = line.split(',').map((x) => Number(x.trim()));
      m.set(pid, mib * 2 ** 20);
    }
    return m;
  } catch {
    return null;
  }
}

function sampleMemory(processes: Record<string, ChildProcess>, step: number): MemorySample {
  const gpu = gpuMemoryByPid();
  const sample: MemorySample = { t: Date.now(), step, rss: {}, gpu: gpu ? {} : null };
  for (const [name, p] of Object.entries(processes)) {
    if (p.pid === undefined) continue;
    const rss = rssOf(p.pid);
    if (rss !== undefined) sample.rss[name] = rss;
    const g = gpu?.get(p.pid);
    if (g !== undefined) sample.gpu![name] = g;
  }
  return sample;
}

export interface MemorySummary {
  /** The pretraining process summarised: the one that ran the most steps of the arm, and its steps. */
  pid: number;
  fromStep: number;
  toStep: number;
  /**
   * Per series (rss.pretrain, gpu.teacher-service, ...) after warm-up: the floor (lowest sample) of the
   * first third and of the last third of the samples, the growth from one to the other, and the peak.
   */
  series: Record<string, { floorAfterWarmup: number; floorAtEnd: number; growthPct: number; peak: number }>;
}

/**
 * Memory of an arm's longest-running pretraining process after its warm-up (the first fifth of its
 * steps: compiles, graph capture, the allocator's pools filling). A resumed arm has several
 * processes, each warming up again, so they are not mixed. Checkpoints and evaluations hold host
 * copies of the weights for a moment: the peak shows them, and floors compare the steady level in
 * between, which a leak lifts and a checkpoint does not.
 */
export function memorySummary(samples: (MemorySample & { pid?: number })[]): MemorySummary | null {
  const byPid = new Map<number, MemorySample[]>();
  for (const s of samples) if (s.pid !== undefined) byPid.set(s.pid, [...(byPid.get(s.pid) ?? []), s]);
  const span = (xs: MemorySample[]) => xs[xs.length - 1].step - xs[0].step;
  const longest = [...byPid.entries()].sort((a, b) => span(b[1]) - span(a[1]))[0];
  if (!longest) return null;
  const [pid, own] = longest;
  const fromStep = own[0].step;
  const toStep = own[own.length - 1].step;
  // A short process (a tiny run) may have fewer than two samples after its warm-up: then all of them.
  const afterWarmup = own.filter((s) => s.step >= fromStep + (toStep - fromStep) / 5);
  const warm = afterWarmup.length >= 2 ? afterWarmup : own;
  const series: MemorySummary['series'] = {};
  for (const kind of ['rss', 'gpu'] as const) {
    const names = new Set(warm.flatMap((s) => Object.keys(s[kind] ?? {})));
    for (const name of names) {
      const values = warm.map((s) => s[kind]?.[name]).filter((v): v is number => v !== undefined);
      if (values.length < 2) continue;
      const third = Math.max(1, Math.floor(values.length / 3));
      const floorAfterWarmup = Math.min(...values.slice(0, third));
      const floorAtEnd = Math.min(...values.slice(-third));
      series[`${kind}.${name}`] = {
        floorAfterWarmup,
        floorAtEnd,
        growthPct: (100 * (floorAtEnd - floorAfterWarmup)) / floorAfterWarmup,
        peak: Math.max(...values),
      };
    }
  }
  return { pid, fromStep, toStep, series };
}

// ---------------------------------------------------------------------------------------------------
// The phases

async function unpack(ctx: Ctx): Promise<void> {
  const started = performance.now();
  const carryRoot = path.join('runs', 'gpu-corpus', 'carry');
  const parts =
    ctx.opts.carry ??
    (fs.existsSync(carryRoot)
      ? fs
          .readdirSync(carryRoot)
          .filter((p) => p.startsWith('part-'))
          .map((p) => path.join(carryRoot, p))
      : []);
  const { manifest, present } = unpackCarry(parts, corpusDir(ctx), ctx.log);
  // Tokenised into the token store once here (uint16 ids: a copy), so later phases open it at once.
  const tokenizer = await loadTokenizer(ctx.config.data.tokenizer ?? path.join(corpusDir(ctx), 'tokenizer.json'));
  const tokens: Record<string, number> = {};
  for (const [split, spec] of [
    ['train', ctx.config.data.train],
    ['val', ctx.config.data.val],
  ] as const) {
    const data = await openData(spec, tokenizer, { cacheDir: defaultTokenStore(), log: ctx.log });
    tokens[split] = data.prepared.reduce((a, p) => a + p.tokens, 0);
    data.close();
  }
  record(ctx, {
    phase: 'unpack',
    command: `gpu-run unpack --config ${ctx.configFile}`,
    shards: `${present.length} of ${manifest.train.length}`,
    tokens,
    corpusTokens: manifest.tokens,
    tokenizerSha256: manifest.tokenizerSha256,
    seconds: (performance.now() - started) / 1000,
  });
}

async function teacher(ctx: Ctx): Promise<void> {
  const t = ctx.config.teacher.train;
  const dir = teacherDir(ctx);
  const before = readTrainerState(dir)?.step ?? 0;
  if (before >= Math.min(ctx.opts.stopAt ?? t.steps, t.steps)) {
    ctx.log(`teacher: at step ${before} of ${t.steps} in ${dir}; nothing to do`);
    return;
  }
  const args = [
    ...globalFlags(ctx.config),
    'teacher',
    'train',
    ...dataArgs(ctx.config),
    '--out',
    dir,
    '--preset',
    t.preset,
    // A BPE of this size is trained on the corpus only when it brings no tokenizer.
    ...(ctx.config.data.tokenizer ? [] : ['--vocab', String(t.vocab)]),
    '--steps',
    String(t.steps),
    '--batch-size',
    String(t.batchSize),
    '--seq-len',
    String(t.seqLen),
    '--lr',
    String(t.lr),
    '--warmup',
    String(t.warmup),
    '--seed',
    String(t.seed),
    '--eval-tokens',
    String(t.evalTokens),
    // Stopping at the deadline checkpoints anyway: these only bound what a crash loses (each costs
    // seconds at Pythia scale: the weights and the optimiser's two moments).
    '--checkpoint-every',
    String(Math.max(1, Math.floor(t.steps / 10))),
    ...(ctx.opts.stopAt ? ['--stop-at', String(Math.min(ctx.opts.stopAt, t.steps))] : []),
    '--json',
  ];
  const run = await runOffshoot(ctx, 'teacher-train', args);
  const summary = run.events.find((e) => 'hash' in e && 'steps' in e);
  if (!summary) {
    ctx.log('teacher: stopped at the deadline before it trained; it goes on from its last checkpoint next time');
    return;
  }
  const after = readTrainerState(dir)?.step ?? 0;
  const config = loadConfig(dir);
  const f = countShape(config, config, { seqLen: t.seqLen }).flopsPerToken.training;
  const tps = summary.tokensPerSecond as number | undefined;
  record(ctx, {
    phase: 'teacher',
    command: shown(args),
    preset: t.preset,
    parameters: summary.parameters,
    backend: summary.backend,
    stepsBefore: before,
    stepsAfter: after,
    steps: t.steps,
    finished: after >= t.steps,
    tokensPerSecond: tps,
    mfu: tps === undefined ? null : mfu(summary.backend, tps * f),
    finalValLoss: summary.finalValLoss,
    seconds: run.seconds,
    machine: machine(),
  });
}

/**
 * The acceptance figure: the student's KD training through the teacher service against its training
 * without KD plus the teacher's forward (1 / (1/CE + 1/forward)), one call; and the service's top-k
 * throughput with nothing else on the device.
 */
async function throughput(ctx: Ctx): Promise<void> {
  requireTeacher(ctx);
  const p = ctx.config.pretrain;
  const steps = Math.max(20, Math.min(300, Math.round(p.steps / 20)));
  const student = await firstKStudent(ctx);
  const dir = path.join(ctx.work, 'throughput');
  fs.rmSync(dir, { recursive: true, force: true });
  const service = await startService(ctx);
  let serviceTokensPerSecond: number;
  let serviceMetrics: Record<string, unknown>;
  try {
    // The service alone: requests of the students' batch shape, a window of 4 in flight.
    const client = new TeacherClient({ targets: service.target });
    const tokenizer = await loadTokenizer(ctx.config.data.tokenizer ?? teacherDir(ctx));
    const data = await openData(ctx.config.data.train, tokenizer, { cacheDir: defaultTokenStore() });
    const batch = (i: number) => sampleBatch(data, { batchSize: p.batchSize, seqLen: p.seqLen, seed: 7, step: i });
    const ask = (i: number) =>
      client.topK({
        tokens: batch(i).input,
        batchSize: p.batchSize,
        seqLen: p.seqLen,
        topK: ctx.config.teacher.service.topK,
      });
    for (let i = 0; i < 3; i++) await ask(i); // warm-up
    const t0 = performance.now();
    const inflight: Promise<unknown>[] = [];
    for (let i = 0; i < steps; i++) {
      inflight.push(ask(i));
      if (inflight.length >= 4) await inflight.shift();
    }
    await Promise.all(inflight);
    serviceTokensPerSecond = (steps * p.batchSize * p.seqLen * 1000) / (performance.now() - t0);
    serviceMetrics = (await client.metrics()) as unknown as Record<string, unknown>;
    client.close();
    data.close();

    // The teacher's forward in this process, same shape.
    const forwardTokensPerSecond = await teacherForward(ctx, steps);

    // The student without KD, then with KD through the service (the same steps, the same batches).
    // Whole runs or none: a deadline does not cut these short.
    const whole = uncut(ctx);
    const ce = await runOffshoot(
      whole,
      'throughput-ce',
      pretrainArgs(ctx, student, path.join(dir, 'ce'), { steps, evalEvery: false }),
    );
    const kdArgs = pretrainArgs(ctx, student, path.join(dir, 'kd'), {
      steps,
      evalEvery: false,
      service: service.target,
    });
    const kd = await runOffshoot(whole, 'throughput-kd', kdArgs);
    // The same with the student asking further ahead (--teacher-window; the default is 4), so that the
    // service has more to work on while the student trains: whether the default leaves throughput behind.
    const deeper = 8;
    const kdDeeper = await runOffshoot(whole, 'throughput-kd-window', [
      ...pretrainArgs(ctx, student, path.join(dir, 'kd-window'), { steps, evalEvery: false, service: service.target }),
      '--teacher-window',
      String(deeper),
    ]);
    // The same with the teacher in the student's own process (its forward inside the student's step):
    // what is left once the service's transport and its separate process are taken away.
    const kdInProcess = await runOffshoot(
      whole,
      'throughput-kd-in-process',
      pretrainArgs(ctx, student, path.join(dir, 'kd-in-process'), {
        steps,
        evalEvery: false,
        teacher: teacherDir(ctx),
      }),
    );
    const ceRate = steadyTokensPerSecond(ce.events, 0, steps);
    const kdRate = steadyTokensPerSecond(kd.events, 0, steps);
    const baseline = 1 / (1 / ceRate + 1 / forwardTokensPerSecond);
    const backend = kd.events.find((e) => e.event === 'start')?.backend as string | undefined;
    const f = flopsPerToken(ctx, student);
    record(ctx, {
      phase: 'throughput',
      command: shown(kdArgs),
      student: {
        parameters: kd.events.find((e) => e.event === 'start')?.parameters,
        tokensPerStep: p.batchSize * p.seqLen,
      },
      steps,
      backend,
      studentCeTokensPerSecond: ceRate,
      teacherForwardTokensPerSecond: forwardTokensPerSecond,
      baselineTokensPerSecond: baseline,
      kdTokensPerSecond: kdRate,
      kdDeeperWindow: { window: deeper, tokensPerSecond: steadyTokensPerSecond(kdDeeper.events, 0, steps) },
      kdInProcessTokensPerSecond: steadyTokensPerSecond(kdInProcess.events, 0, steps),
      ratio: kdRate / baseline,
      goal: 0.85,
      goalMet: kdRate / baseline >= 0.85,
      serviceTopKTokensPerSecond: serviceTokensPerSecond,
      serviceMetrics: {
        tokensServed: serviceMetrics.tokensServed,
        forwardPasses: serviceMetrics.forwardPasses,
        busySeconds: serviceMetrics.busySeconds,
        computeSeconds: serviceMetrics.computeSeconds,
      },
      flopsPerToken: f,
      kdMfu: mfu(backend, kdRate * (f.training + f.teacherForward)),
      ceMfu: mfu(backend, ceRate * f.training),
      machine: machine(),
    });
  } finally {
    await stopChild(service.child);
  }
}

/** Tokens/s of the teacher's forward pass (logits, synced) at the students' batch shape, in this process. */
async function teacherForward(ctx: Ctx, steps: number): Promise<number> {
  const c = ctx.config;
  await initBackend(parseBackendChoice(c.workers.backend));
  if (c.workers.precision) setPrecision(parsePrecision(c.workers.precision));
  const ckpt = loadCheckpoint(teacherDir(ctx));
  const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, teacherDir(ctx));
  const { batchSize, seqLen } = c.pretrain;
  const ids = Int32Array.from({ length: batchSize * seqLen }, (_, i) => (i * 7919) % ckpt.config.vocabSize);
  // As the teacher service runs it (a repeated pass: replayed from a CUDA graph on cuda), synced by
  // reading one logit back: the read waits for the whole forward, and moves 4 bytes.
  const pass = async () => {
    const [one] = runRepeatedPass({
      key: 'teacher forward',
      inputs: [{ shape: [batchSize, seqLen], dtype: 'int32', data: ids }],
      state: model.variables(),
      body: ([tokens]) => [tf.slice(model.logits2d(tokens as tf.Tensor2D), [0, 0], [1, 1])],
    });
    await one.data();
    one.dispose();
  };
  try {
    for (let i = 0; i < 3; i++) await pass();
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) await pass();
    return (steps * batchSize * seqLen * 1000) / (performance.now() - t0);
  } finally {
    model.dispose();
  }
}

async function search(ctx: Ctx): Promise<void> {
  requireTeacher(ctx);
  const s = ctx.config.search;
  const f = s.fitness;
  const out = path.join(ctx.work, 'search.json');
  if (fs.existsSync(out)) {
    ctx.log(`search: done (${out})`);
    return;
  }
  if (f.kind !== 'brief') throw new Error(`search.fitness.kind: the GPU run measures brief fitness, got ${f.kind}`);
  // What `offshoot search` has no option for, the runbook refuses rather than ignores.
  if (s.choices)
    throw new Error(
      "search.choices: the runbook's search (offshoot search) searches the whole space; remove search.choices",
    );
  if (s.multiObjective)
    throw new Error(
      "search.multiObjective: the runbook's search (offshoot search) is single-objective; remove search.multiObjective",
    );
  const t = target(ctx);
  const service = await startService(ctx);
  try {
    const args = [
      ...globalFlags(ctx.config),
      'search',
      '--teacher',
      teacherDir(ctx),
      '--target-params',
      `${t.minParams}-${t.maxParams}`,
      '--space',
      s.space,
      '--algorithm',
      s.algorithm,
      '--population',
      String(s.population),
      '--generations',
      String(Math.ceil(s.budget / s.population)),
      '--fitness',
      'brief',
      '--steps',
      String(f.steps),
      '--batch-size',
      String(f.batchSize),
      '--seq-len',
      String(f.seqLen),
      '--lr',
      String(f.lr),
      '--warmup',
      String(f.warmup),
      '--eval-tokens',
      String(f.evalTokens),
      '--train',
      ctx.config.data.train,
      '--val',
      ctx.config.data.val,
      '--seed',
      String(s.seed ?? ctx.config.run.seed),
      '--second-mutation-probability',
      String(s.secondMutationProbability),
      ...searchOrderings(ctx),
      '--loss',
      f.loss,
      // The pipeline's brief distillation uses the pretraining's settings.
      '--alpha',
      String(ctx.config.pretrain.distill.alpha),
      '--temperature',
      String(ctx.config.pretrain.distill.temperature),
      '--direction',
      ctx.config.pretrain.distill.direction,
      ...(s.tournamentSize === undefined ? [] : ['--tournament-size', String(s.tournamentSize)]),
      ...(s.elitism === undefined ? [] : ['--elitism', String(s.elitism)]),
      ...(s.crossoverProbability === undefined ? [] : ['--crossover-probability', String(s.crossoverProbability)]),
      ...(s.mutationProbability === undefined ? [] : ['--mutation-probability', String(s.mutationProbability)]),
      '--teacher-service',
      service.target,
      '--top-k',
      String(ctx.config.teacher.service.topK),
      '--json',
    ];
    const run = await runOffshoot(uncut(ctx), 'search', args);
    const summary = run.events.find((e) => 'history' in e);
    if (!summary?.best) throw new Error('search: no candidate was evaluated successfully; see the search log');
    fs.writeFileSync(out, JSON.stringify(summary, null, 2));
    record(ctx, {
      phase: 'search',
      command: shown(args),
      target: t.label,
      evaluations: summary.evaluations,
      failed: (summary.history as { status: string }[]).filter((h) => h.status !== 'ok').length,
      seconds: summary.seconds,
      evaluationsPerHour: summary.evaluationsPerHour,
      best: { parameters: summary.best.parameters, fitness: summary.best.fitness, spec: summary.best.spec },
      machine: machine(),
    });
  } finally {
    await stopChild(service.child);
  }
}

/** The students of the comparison: init checkpoint and whether its weights are random. */
async function armStudent(ctx: Ctx, arm: Arm): Promise<{ init: string; random: boolean }> {
  if (arm === 'first-k') return { init: await firstKStudent(ctx), random: false };
  const file = path.join(ctx.work, 'search.json');
  if (!fs.existsSync(file)) throw new Error(`no search result (${file}): run the search phase first`);
  const best = (JSON.parse(fs.readFileSync(file, 'utf8')) as { best: { spec: unknown } }).best;
  return {
    init: await extractStudent(ctx, 'searched', best.spec, [...searchOrderings(ctx), ...calibration(ctx)]),
    random: arm === 'random-init',
  };
}

/** Runs (or resumes) one arm to its end or the deadline, sampling memory, and records it. */
async function runArm(
  ctx: Ctx,
  arm: Arm,
  service: string | undefined,
  servicePid: ChildProcess | undefined,
): Promise<void> {
  const p = ctx.config.pretrain;
  const out = path.join(ctx.work, 'runs', arm);
  const { init, random } = await armStudent(ctx, arm);
  const args = pretrainArgs(ctx, init, out, {
    random,
    service: p.distill.enabled ? service : undefined,
    stopAt: ctx.opts.stopAt && Math.min(ctx.opts.stopAt, p.steps),
  });
  const started = performance.now();
  // Samples before the process's first step carry the step it resumes from, so its span is its own.
  const fromStep = armStep(ctx, arm);
  const child = startOffshoot(ctx, `pretrain-${arm}`, args);
  const memoryLog = path.join(out, 'memory.jsonl');
  const every = Math.max(250, Math.min(5000, Number(process.env.OFFSHOOT_MEMORY_SAMPLE_MS ?? 5000)));
  const lastStep = () => [...child.events].reverse().find((e) => e.event === 'step')?.step ?? fromStep;
  const sampler = setInterval(() => {
    const procs: Record<string, ChildProcess> = { pretrain: child.process };
    if (servicePid) procs['teacher-service'] = servicePid;
    fs.mkdirSync(out, { recursive: true });
    fs.appendFileSync(memoryLog, `${JSON.stringify({ ...sampleMemory(procs, lastStep()), pid: child.process.pid })}\n`);
  }, every);
  try {
    await finish(ctx, child, `pretrain-${arm}`, args);
  } finally {
    clearInterval(sampler);
  }
  const done = child.events.find((e) => e.event === 'done');
  const start = child.events.find((e) => e.event === 'start');
  if (!done || !start) {
    ctx.log(`runs: ${arm} stopped at the deadline before it trained; it goes on from its last checkpoint next time`);
    return;
  }
  const evals = new Map<number, number>();
  for (const e of readJsonl<{ step: number; valLoss: number }>(path.join(out, 'evals.jsonl')))
    evals.set(e.step, e.valLoss);
  const finished = (done.step as number) >= p.steps;
  const f = flopsPerToken(ctx, init);
  const rate = steadyTokensPerSecond(child.events, start.step ?? 0, done.step ?? 0);
  const kd = Boolean(service && p.distill.enabled);
  record(ctx, {
    phase: 'runs',
    arm,
    command: shown(args),
    parameters: start.parameters,
    init: random ? 'random' : arm === 'first-k' ? 'first-k sub-network' : 'searched sub-network',
    loss: kd ? 'distillation (teacher service, top-k)' : 'cross-entropy',
    backend: start.backend,
    stepsBefore: start.step,
    stepsAfter: done.step,
    steps: p.steps,
    finished,
    tokens: (done.step as number) * p.batchSize * p.seqLen,
    tokensPerSecond: rate,
    mfu: mfu(start.backend, rate * (f.training + (kd ? f.teacherForward : 0))),
    curve: [...evals.entries()].sort((a, b) => a[0] - b[0]).map(([step, valLoss]) => ({ step, valLoss })),
    finalValLoss: finished ? (evals.get(p.steps) ?? null) : null,
    memory: memorySummary(readJsonl<MemorySample & { pid: number }>(memoryLog)),
    memorySamples: readJsonl(memoryLog).length,
    seconds: (performance.now() - started) / 1000,
    machine: machine(),
  });
}

/** The step an arm's checkpoint holds (0 before its first). */
const armStep = (ctx: Ctx, arm: Arm) => readTrainerState(path.join(ctx.work, 'runs', arm, 'checkpoint'))?.step ?? 0;

async function runs(ctx: Ctx): Promise<void> {
  requireTeacher(ctx);
  const p = ctx.config.pretrain;
  const until = Math.min(ctx.opts.stopAt ?? p.steps, p.steps);
  const pending = ARMS.filter((arm) => armStep(ctx, arm) < until);
  const service = pending.length && p.distill.enabled ? await startService(ctx) : undefined;
  try {
    for (const arm of pending) {
      if (Date.now() >= ctx.deadline) break;
      await runArm(ctx, arm, service?.target, service?.child.process);
    }
  } finally {
    if (service) await stopChild(service.child);
  }
  if (ARMS.every((arm) => armStep(ctx, arm) >= p.steps)) {
    // The final evaluation, as the pipeline's results table has it: every arm on the same
    // finalEvalTokens validation tokens, with bits per byte.
    const finals: Record<string, { loss: number; ppl: number; bpb: number; tokens: number }> = {};
    let command = '';
    for (const arm of ARMS) {
      const args = [
        ...globalFlags(ctx.config),
        'eval',
        '--model',
        path.join(ctx.work, 'runs', arm, 'checkpoint'),
        '--data',
        ctx.config.data.val,
        '--seq-len',
        String(p.seqLen),
        '--batch-size',
        String(p.batchSize),
        '--max-tokens',
        String(p.finalEvalTokens),
        '--json',
      ];
      const r = await runOffshoot(uncut(ctx), `eval-${arm}`, args);
      const e = r.events.find((x) => 'loss' in x);
      if (!e)
        throw new Error(`${shown(args)} printed no result; see ${path.join(ctx.work, 'logs', `eval-${arm}.log`)}`);
      finals[arm] = { loss: e.loss, ppl: e.ppl, bpb: e.bpb, tokens: e.tokens };
      command = shown(args);
    }
    const ordered = [...ARMS].sort((a, b) => finals[a].loss - finals[b].loss);
    record(ctx, {
      phase: 'comparison',
      command,
      tokensPerArm: p.steps * p.batchSize * p.seqLen,
      final: finals,
      ordering: ordered,
      paperOrderingHolds: ordered[0] === 'searched-kd',
    });
  }
}

/** Reports of the resumed process compared with the killed one's at the same steps (`faults`). */
const RERUN_REPORTS = 5;

/**
 * kill -9 of the teacher service and of the pretraining process in one run of the searched student's
 * KD arm, stopped early: the service is restarted on its port (the client reconnects and re-sends),
 * the pretraining process is started again and resumes from its last checkpoint. Its first reports
 * must give the killed process's losses at the same steps; every loss is also set against the
 * uninterrupted arm's (runs/searched-kd).
 */
async function faults(ctx: Ctx): Promise<void> {
  requireTeacher(ctx);
  const p = ctx.config.pretrain;
  const every = p.checkpointEvery;
  const stopAt = Math.min(p.steps, 6 * every);
  const killServiceAt = Math.floor(2.5 * every);
  const killPretrainAt = Math.floor(3.5 * every);
  const reference = readJsonl<{ step: number; loss: number }>(
    path.join(ctx.work, 'runs', 'searched-kd', 'losses.jsonl'),
  );
  const refLoss = new Map(reference.map((r) => [r.step, r.loss]));
  if (!refLoss.has(stopAt))
    throw new Error(`the uninterrupted searched-kd run has not reached step ${stopAt}: run the runs phase first`);
  const { init } = await armStudent(ctx, 'searched-kd');
  const out = path.join(ctx.work, 'faults');
  fs.rmSync(out, { recursive: true, force: true });
  let service = await startService(ctx);
  const args = pretrainArgs(ctx, init, out, { service: service.target, stopAt, evalEvery: false });
  const started = performance.now();
  try {
    let pretrain = startOffshoot(ctx, 'faults-pretrain', args);
    // 1. kill -9 the teacher service mid-run, restart it on the same port.
    const atServiceKill = await pretrain.waitFor((e) => e.event === 'step' && e.step >= killServiceAt);
    service.child.process.kill('SIGKILL');
    await service.child.exited;
    const down = performance.now();
    service = await startService(ctx, service.port);
    const serviceDownSeconds = (performance.now() - down) / 1000;
    // 2. kill -9 the pretraining process after a later checkpoint, start it again.
    const atPretrainKill = await pretrain.waitFor((e) => e.event === 'step' && e.step >= killPretrainAt);
    if (pretrain.process.exitCode !== null)
      throw new Error(
        `the pretraining reached step ${stopAt} before it could be killed; raise pretrain.checkpointEvery`,
      );
    pretrain.process.kill('SIGKILL');
    await pretrain.exited;
    const lastCheckpoint = [...pretrain.events].reverse().find((e) => e.event === 'checkpoint')?.step as
      | number
      | undefined;
    pretrain = startOffshoot(ctx, 'faults-pretrain', args);
    const resumed = await pretrain.waitFor((e) => e.event === 'start');
    const { code } = await pretrain.exited;
    if (code !== 0)
      throw new Error(
        `the resumed pretraining failed (exit ${code}); see ${path.join(ctx.work, 'logs', 'faults-pretrain.log')}`,
      );
    // The curve: each step's loss from the process that computed it last, against the uninterrupted run.
    const rows = readJsonl<{ step: number; loss: number; pid: number }>(path.join(out, 'losses.jsonl'));
    if (rows.length === 0) throw new Error(`the pretraining wrote no losses to ${path.join(out, 'losses.jsonl')}`);
    const losses = new Map<number, number>();
    for (const l of rows) losses.set(l.step, l.loss);
    const diffOf = (step: number, loss: number) => ({ step, diff: Math.abs(loss - (refLoss.get(step) ?? NaN)) });
    const diffs = [...losses.entries()].map(([step, loss]) => diffOf(step, loss));
    const maxAbsDiff = Math.max(...diffs.map((d) => d.diff));
    // Before any fault both runs are uninterrupted: their difference is the device's own
    // nondeterminism (the embedding gradient's atomic adds, the service's batching of requests), which
    // grows from nothing over a few hundred steps (not at all on the cpu backend).
    const first = rows.filter((l) => l.pid === rows[0].pid);
    const beforeFaults = first.filter((l) => l.step <= atServiceKill.step).map((l) => diffOf(l.step, l.loss));
    const afterResume = diffs.filter((d) => d.step > resumed.step);
    // The sharp check: the resumed process computes again the steps the killed one did after the
    // checkpoint, from the same state and batches, so its first reports must give the killed
    // process's losses (a resume from the wrong weights, moments or data position shows at once).
    const firstLoss = new Map(first.map((l) => [l.step, l.loss]));
    const rerun = rows
      .filter((l) => l.pid !== rows[0].pid && firstLoss.has(l.step))
      .slice(0, RERUN_REPORTS)
      .map((l) => ({ step: l.step, diff: Math.abs(l.loss - firstLoss.get(l.step)!) }));
    const meanLoss = [...losses.values()].reduce((a, b) => a + b, 0) / losses.size;
    const tolerance = 0.01 * meanLoss;
    const maxRerun = Math.max(...rerun.map((d) => d.diff));
    record(ctx, {
      phase: 'faults',
      command: shown(args),
      stopAt,
      teacherServiceKilledAtStep: atServiceKill.step,
      serviceDownSeconds,
      pretrainKilledAtStep: atPretrainKill.step,
      lastCheckpointBeforeKill: lastCheckpoint ?? 0,
      resumedFromStep: resumed.step,
      stepsCompared: diffs.length,
      maxAbsLossDiff: maxAbsDiff,
      maxAbsLossDiffBeforeFaults: Math.max(...beforeFaults.map((d) => d.diff)),
      maxAbsLossDiffAfterResume: Math.max(...afterResume.map((d) => d.diff)),
      rerunSteps: rerun.map((d) => d.step),
      maxAbsLossDiffRerun: maxRerun,
      tolerance,
      curveJoins: Number.isFinite(maxAbsDiff) && rerun.length > 0 && maxRerun <= tolerance,
      seconds: (performance.now() - started) / 1000,
      machine: machine(),
    });
  } finally {
    await stopChild(service.child);
  }
}

/** Whether a phase has nothing left to do (`runNext` passes over it; run by name, it runs again). */
function isDone(ctx: Ctx, phase: PhaseName): boolean {
  const recorded = (name: string) => readJsonl<Result>(ctx.results).some((r) => r.phase === name);
  switch (phase) {
    case 'unpack': {
      const manifest = path.join(corpusDir(ctx), 'manifest.json');
      if (!recorded('unpack') || !fs.existsSync(manifest)) return false;
      const m = JSON.parse(fs.readFileSync(manifest, 'utf8')) as CorpusManifest;
      return m.train.every((s) => fs.existsSync(path.join(corpusDir(ctx), 'train', s.file)));
    }
    case 'teacher':
      return (readTrainerState(teacherDir(ctx))?.step ?? 0) >= ctx.config.teacher.train.steps;
    case 'throughput':
    case 'faults':
      return recorded(phase);
    case 'search':
      return fs.existsSync(path.join(ctx.work, 'search.json'));
    case 'runs':
      return recorded('comparison');
    case 'render':
      return false;
  }
}

/**
 * The phases not yet done, in order, until the deadline (--max-seconds). A training phase stops at the
 * deadline, checkpointed; any other phase starts only when the seconds `need` gives it are left, and
 * otherwise waits for the next call (later phases need the earlier ones). Ends with render. The last
 * line says what is done and which phase the next call starts with (null: all done).
 */
export async function runNext(opts: PhaseOptions & { need: Partial<Record<PhaseName, number>> }): Promise<void> {
  const ctx = context(opts);
  const done: PhaseName[] = [];
  let next: PhaseName | null = null;
  for (const phase of PHASES.filter((p) => p !== 'render')) {
    if (isDone(ctx, phase)) {
      done.push(phase);
      continue;
    }
    const left = (ctx.deadline - Date.now()) / 1000;
    if (left <= (opts.need[phase] ?? 0) || left <= 0) {
      next = phase;
      break;
    }
    await PHASE_RUNNERS[phase](ctx);
    if (!isDone(ctx, phase)) {
      next = phase;
      break;
    }
    done.push(phase);
  }
  if (fs.existsSync(ctx.results)) {
    await PHASE_RUNNERS.render(ctx);
    if (opts.out) {
      fs.mkdirSync(opts.out, { recursive: true });
      fs.copyFileSync(ctx.results, path.join(opts.out, 'results.jsonl'));
    }
  }
  console.log(
    JSON.stringify({ phase: 'next', done, next, secondsLeft: Math.round((ctx.deadline - Date.now()) / 1000) }),
  );
}

export async function runPhases(phases: PhaseName[], opts: PhaseOptions): Promise<void> {
  const ctx = context(opts);
  for (const phase of phases) await PHASE_RUNNERS[phase](ctx);
}

const PHASE_RUNNERS: Record<PhaseName, (c: Ctx) => Promise<void>> = {
  unpack,
  teacher,
  throughput,
  search,
  runs,
  faults,
  render: async (c) => {
    const from = c.opts.results ?? c.results;
    if (!fs.existsSync(from)) throw new Error(`render: no results in ${from}`);
    renderDoc(readJsonl<Result>(from), c.opts.doc);
    c.log(`render: filled ${c.opts.doc} from ${from}`);
  },
};

/**
 * The run's context. SIGTERM or SIGINT (a call's time limit, Ctrl-C) make the deadline now: training
 * checkpoints at its next step, what is done is recorded, and the command exits as at --max-seconds;
 * a second signal ends it at once.
 */
function context(opts: PhaseOptions): Ctx {
  const config = loadConfigFile(opts.config);
  const work = path.resolve(opts.work ?? runDir(config));
  fs.mkdirSync(work, { recursive: true });
  const stop = new AbortController();
  const ctx: Ctx = {
    config,
    configFile: opts.config,
    work,
    results: path.join(work, 'results.jsonl'),
    deadline: opts.maxSeconds ? Date.now() + opts.maxSeconds * 1000 : Infinity,
    stop: stop.signal,
    opts,
    log: (line) => process.stderr.write(`${line}\n`),
  };
  const onSignal = (signal: NodeJS.Signals) => {
    ctx.log(`${signal}: stopping as at the deadline (training checkpoints at its next step)`);
    ctx.deadline = Math.min(ctx.deadline, Date.now());
    stop.abort();
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  return ctx;
}
