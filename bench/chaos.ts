/**
 * Chaos: `offshoot run` on the embedded default while a random child of its stack — the teacher
 * service, the pretrain or the evaluate worker, the Temporal dev server, nats-server — is killed with
 * SIGKILL every 20–40 s, 10 kills per run, with no manual step. For each run it checks that the run
 * completes, that its results equal the undisturbed run's (the same perplexities), that no process is
 * left behind, and that each kill and restart is in the run's progress stream; it prints one JSON line
 * with the kills survived and the time against the undisturbed run measured first.
 *
 *   npx tsx bench/chaos.ts [--runs 3] [--kills 10] [--min-seconds 20] [--max-seconds 40] [--seed 1]
 *                          [--targets teacher,pretrain,evaluate-0,temporal,nats] [--dir DIR] [--teacher DIR]
 *                          [--pretrain-steps 1000 | --config FILE]
 *
 * The configuration is the embedded default with `pretrain.steps` raised to 1000 (default 200): on an
 * idle machine the default pipeline is over in about two minutes, before ten kills 20–40 s apart could
 * happen. `--pretrain-steps 200` runs the plain default; `--config FILE` any configuration. The first,
 * undisturbed run trains the teacher (unless --teacher names one) and then runs the pipeline on it
 * again, timed; the chaos runs use that teacher, so all results are comparable. Everything lives under
 * --dir (default a fresh temporary folder); the stacks' logs are in <storage.root>/<run>/logs.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { SeededRandom } from '../core/model/index.js';
import { loadConfigFile } from '../services/config/index.js';
import { type ProgressEvent, connectNats, openRunEvents } from '../services/progress/index.js';
import { ROOT, freePort, pidAlive, readStackRecord, startNats } from '../services/stack/index.js';
import type { PipelineResult } from '../workflows/index.js';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    kills: { type: 'string', default: '10' },
    'min-seconds': { type: 'string', default: '20' },
    'max-seconds': { type: 'string', default: '40' },
    seed: { type: 'string', default: '1' },
    targets: { type: 'string', default: 'teacher,pretrain,evaluate-0,temporal,nats' },
    dir: { type: 'string' },
    teacher: { type: 'string' },
    'pretrain-steps': { type: 'string', default: '1000' },
    config: { type: 'string' },
  },
});
const RUNS = Number(args.runs);
const KILLS = Number(args.kills);
const MIN_MS = Number(args['min-seconds']) * 1000;
const MAX_MS = Number(args['max-seconds']) * 1000;
const TARGETS = args
  .targets!.split(',')
  .map((t) => t.trim())
  .filter(Boolean);
for (const [name, v] of Object.entries({ runs: RUNS, kills: KILLS, 'min-seconds': MIN_MS, 'max-seconds': MAX_MS })) {
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} must be a non-negative number, got ${v}`);
}
if (MAX_MS < MIN_MS) throw new Error(`--max-seconds must be at least --min-seconds`);
if (!Number.isSafeInteger(Number(args['pretrain-steps'])) || Number(args['pretrain-steps']) < 1)
  throw new Error(`--pretrain-steps must be a positive integer, got ${args['pretrain-steps']}`);
const dir = path.resolve(args.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-chaos-')));
fs.mkdirSync(dir, { recursive: true });
const rng = new SeededRandom(Number(args.seed));
// Every run of the bench (undisturbed and chaos) uses this configuration.
const configFile = args.config ? path.resolve(args.config) : path.join(dir, 'chaos.yaml');
if (!args.config) fs.writeFileSync(configFile, `pretrain: { steps: ${Number(args['pretrain-steps'])} }\n`);
// Run folders are <storage.root>/<run>, the root relative to the bench folder (where the runs start).
const storageRoot = path.resolve(dir, loadConfigFile(configFile).storage.root);
const log = (s: string) => process.stderr.write(`[chaos ${new Date().toISOString().slice(11, 19)}] ${s}\n`);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

interface Started {
  child: ChildProcess;
  done: Promise<{ code: number | null; stdout: string; seconds: number }>;
}

/** `offshoot run --name NAME --json ...` in the bench folder; its stderr goes to <dir>/NAME.log. */
function offshootRun(name: string, extra: string[]): Started {
  const stderr = fs.openSync(path.join(dir, `${name}.log`), 'w');
  const started = performance.now();
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'bin', 'offshoot.js'), 'run', '--config', configFile, '--name', name, '--json', ...extra],
    {
      cwd: dir,
      stdio: ['ignore', 'pipe', stderr],
    },
  );
  let stdout = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  const done = new Promise<{ code: number | null; stdout: string; seconds: number }>((resolve) =>
    child.once('close', (code) => {
      fs.closeSync(stderr);
      resolve({ code, stdout, seconds: (performance.now() - started) / 1000 });
    }),
  );
  return { child, done };
}

function resultOf(stdout: string): PipelineResult | undefined {
  const line = stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .at(-1);
  return line ? (JSON.parse(line) as PipelineResult) : undefined;
}

function perplexities(r: PipelineResult | undefined): Record<string, number> {
  return Object.fromEntries((r?.rows ?? []).map((row) => [row.name, row.valPpl]));
}

/** Largest relative difference of the rows' validation perplexities (Infinity when the rows differ). */
function pplDifference(a: Record<string, number>, b: Record<string, number>): number {
  const names = Object.keys(a);
  if (names.length === 0 || names.sort().join() !== Object.keys(b).sort().join()) return Infinity;
  return Math.max(...names.map((n) => Math.abs(a[n] - b[n]) / Math.abs(a[n])));
}

/** Processes whose command line mentions `needle` (the run's folder: its Temporal database, JetStream, logs). */
function processesMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').replace(/\0/g, ' ').includes(needle) && pidAlive(Number(e)))
        out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** The run's progress events, read from its JetStream folder with a nats-server of our own. */
async function storedEvents(run: string): Promise<ProgressEvent[]> {
  const nats = await startNats({ storeDir: path.join(storageRoot, run, 'jetstream'), port: await freePort() });
  const nc = await connectNats(nats.url);
  try {
    const reader = await openRunEvents(nc, run);
    const events: ProgressEvent[] = [];
    if (reader.initialPending > 0) {
      for await (const s of reader.events) {
        if (s.event) events.push(s.event);
        if (s.pending === 0) break;
      }
    }
    reader.stop();
    return events;
  } finally {
    await nc.close();
    await nats.stop();
  }
}

interface Kill {
  atSeconds: number;
  target: string;
  pid: number;
  /** Its exit and its restart are in the progress stream. */
  exitEvent: boolean;
  restartEvent: boolean;
}

async function chaosRun(index: number, teacher: string, baseline: Record<string, number>) {
  const name = `chaos-${index}`;
  log(`${name}: starting`);
  const run = offshootRun(name, ['--teacher', teacher]);
  const runDir = path.join(storageRoot, name);
  let finished = false;
  void run.done.then(() => (finished = true));
  const seen = new Set<number>();
  const kills: Kill[] = [];
  const t0 = performance.now();
  // Every pid stack.json ever lists, to check afterwards that none outlived the run.
  const watcher = setInterval(() => {
    for (const pid of Object.values(readStackRecord(runDir)?.processes ?? {})) seen.add(pid);
  }, 200);
  // Kills start once the whole stack is up.
  while (!finished && !TARGETS.every((t) => readStackRecord(runDir)?.processes[t])) await sleep(500);
  while (!finished && kills.length < KILLS) {
    const wait = MIN_MS + rng.nextFloat() * (MAX_MS - MIN_MS);
    const until = performance.now() + wait;
    while (!finished && performance.now() < until) await sleep(200);
    if (finished) break;
    const record = readStackRecord(runDir);
    // A target not yet back from an earlier kill is skipped this time.
    const candidates = TARGETS.filter((t) => {
      const pid = record?.processes[t];
      return pid !== undefined && pidAlive(pid) && !kills.some((k) => k.pid === pid);
    });
    if (candidates.length === 0) continue;
    const target = candidates[Math.floor(rng.nextFloat() * candidates.length)];
    const pid = record!.processes[target];
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      continue;
    }
    kills.push({
      atSeconds: Number(((performance.now() - t0) / 1000).toFixed(1)),
      target,
      pid,
      exitEvent: false,
      restartEvent: false,
    });
    log(`${name}: kill ${kills.length}/${KILLS}: ${target} (pid ${pid})`);
  }
  const r = await run.done;
  clearInterval(watcher);
  for (const pid of Object.values(readStackRecord(runDir)?.processes ?? {})) seen.add(pid);
  await sleep(2000);
  const leftBehind = [...new Set([...[...seen].filter((pid) => pidAlive(pid)), ...processesMentioning(runDir)])];
  const result = resultOf(r.stdout);
  const ppl = perplexities(result);
  const difference = pplDifference(baseline, ppl);
  let events: ProgressEvent[] = [];
  try {
    events = await storedEvents(name);
  } catch (err) {
    log(`${name}: cannot read its progress events: ${(err as Error).message}`);
  }
  for (const k of kills) {
    k.exitEvent = events.some((e) => e.kind === 'service.exited' && e.service === k.target && e.pid === k.pid);
    k.restartEvent = events.some(
      (e) => e.kind === 'service.restarted' && e.service === k.target && e.previousPid === k.pid,
    );
  }
  const completed = r.code === 0 && result !== undefined;
  const samePerplexities = difference === 0;
  const survived =
    completed && samePerplexities && leftBehind.length === 0
      ? kills.filter((k) => k.exitEvent && k.restartEvent).length
      : 0;
  log(
    `${name}: ${completed ? 'completed' : `FAILED (exit ${r.code})`} in ${r.seconds.toFixed(0)} s after ${kills.length} kills; perplexities ${JSON.stringify(ppl)}` +
      `${samePerplexities ? ' (as undisturbed)' : ` differ by ${difference}`}; left behind: ${leftBehind.length ? leftBehind.join(', ') : 'nothing'}; ${survived} kills survived`,
  );
  return {
    run: name,
    completed,
    exitCode: r.code,
    seconds: Number(r.seconds.toFixed(1)),
    kills: kills.length,
    killsSurvived: survived,
    samePerplexities,
    maxRelativePplDifference: difference,
    perplexities: ppl,
    leftBehind,
    serviceEvents: {
      exited: events.filter((e) => e.kind === 'service.exited').length,
      restarted: events.filter((e) => e.kind === 'service.restarted').length,
    },
    killed: kills,
  };
}

// The undisturbed run: the embedded default, teacher trained unless given, then timed again on that teacher.
let teacher = args.teacher ? path.resolve(args.teacher) : path.join(storageRoot, 'undisturbed', 'teacher');
if (!args.teacher) {
  log(`undisturbed: training the teacher and running the pipeline (${dir})`);
  const first = await offshootRun('undisturbed', []).done;
  if (first.code !== 0)
    throw new Error(`the undisturbed run failed (exit ${first.code}); see ${path.join(dir, 'undisturbed.log')}`);
  teacher = path.join(storageRoot, 'undisturbed', 'teacher');
}
log('undisturbed: the pipeline on that teacher, timed');
const undisturbed = await offshootRun('undisturbed-timed', ['--teacher', teacher]).done;
const baselineResult = resultOf(undisturbed.stdout);
if (undisturbed.code !== 0 || !baselineResult)
  throw new Error(
    `the undisturbed run failed (exit ${undisturbed.code}); see ${path.join(dir, 'undisturbed-timed.log')}`,
  );
const baseline = perplexities(baselineResult);
log(`undisturbed: ${undisturbed.seconds.toFixed(0)} s, perplexities ${JSON.stringify(baseline)}`);

const runs = [];
for (let i = 1; i <= RUNS; i++) runs.push(await chaosRun(i, teacher, baseline));
const meanSeconds = runs.reduce((a, r) => a + r.seconds, 0) / Math.max(1, runs.length);
console.log(
  JSON.stringify({
    bench: 'chaos',
    config: args.config ?? `the embedded default, pretrain.steps ${Number(args['pretrain-steps'])}`,
    runs: RUNS,
    killsPerRun: KILLS,
    intervalSeconds: [MIN_MS / 1000, MAX_MS / 1000],
    targets: TARGETS,
    kills: runs.reduce((a, r) => a + r.kills, 0),
    killsSurvived: runs.reduce((a, r) => a + r.killsSurvived, 0),
    allCompleted: runs.every((r) => r.completed),
    samePerplexities: runs.every((r) => r.samePerplexities),
    nothingLeftBehind: runs.every((r) => r.leftBehind.length === 0),
    undisturbed: { seconds: Number(undisturbed.seconds.toFixed(1)), perplexities: baseline },
    meanChaosSeconds: Number(meanSeconds.toFixed(1)),
    ratio: Number((meanSeconds / undisturbed.seconds).toFixed(3)),
    results: runs,
    dir,
    cpus: os.cpus().length,
  }),
);
