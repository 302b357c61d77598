/**
 * The pipeline end to end, as users run it: `offshoot run` with the embedded stack (the Temporal dev
 * server, nats-server, the teacher-logit service and workers, all real child processes) on a tiny
 * configuration; `offshoot status` while it runs; a rerun that finds the finished run; a run killed with
 * kill -9 whose rerun stops what it left running and finishes it; and `offshoot run` against an external
 * Temporal with workers started separately, cancelled with `offshoot cancel`.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { offshoot, startOffshoot, waitUntil } from './helpers/orchestration.js';
import { connectNats, openRunEvents, type ProgressEvent } from '../services/progress/index.js';
import {
  type Stack,
  type WorkerProcess,
  offshootCommand,
  pidAlive,
  readStackRecord,
  startNats,
  startStack,
  startWorker,
  temporalAnswers,
} from '../services/stack/index.js';
import type { PipelineResult } from '../workflows/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-pipeline-'));
const children: ChildProcess[] = [];
let stack: Stack | undefined;
const workers: WorkerProcess[] = [];

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  await Promise.all(workers.map((w) => w.kill9()));
  await stack?.stop();
}, 60_000);

const tinyConfig = (
  name: string,
  o: {
    pretrainSteps?: number;
    teacherService?: boolean;
    teacherSteps?: number;
    heartbeatSeconds?: number;
    extra?: string;
  } = {},
) => {
  const activity = o.heartbeatSeconds ? `{ heartbeatSeconds: ${o.heartbeatSeconds} }` : '{}';
  return `
run: { name: ${name}, seed: 1 }
storage: { root: ${JSON.stringify(path.join(tmp, 'runs'))} }
teacher:
  train: { preset: tiny, vocab: 300, steps: ${o.teacherSteps ?? 80}, batchSize: 8, seqLen: 32, evalTokens: 2048 }
  service: { enabled: ${o.teacherService ?? true} }
search:
  target: { bin: 8 }
  budget: 8
  population: 4
  fitness: { steps: 10, seqLen: 32, evalTokens: 2048 }
  activity: ${activity}
pretrain: { steps: ${o.pretrainSteps ?? 100}, seqLen: 32, segmentSteps: 50, checkpointEvery: 25, evalEvery: 50, evalTokens: 2048, warmup: 5, finalEvalTokens: 8192, activity: ${activity} }
${o.extra ?? ''}
`;
};

/** stack.json of a run in the test folder, or undefined. */
const stackOf = (run: string) => readStackRecord(path.join(tmp, 'runs', run));

/** Starts `offshoot ...args` in the test folder without waiting (killed after the tests if still running). */
function start(args: string[]): ReturnType<typeof startOffshoot> {
  const run = startOffshoot(args, tmp);
  children.push(run.child);
  return run;
}

function lastJson<T>(stdout: string): T {
  const line = stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .at(-1);
  if (!line) throw new Error(`no JSON on stdout:\n${stdout}`);
  return JSON.parse(line) as T;
}

/** The result of the first run (the tiny configuration): what a run of it disturbed must equal. */
let first: PipelineResult;

describe('offshoot run (embedded stack)', () => {
  const configFile = path.join(tmp, 'tiny.yaml');

  it('runs the pipeline on a tiny configuration; the student beats a random-initialised one of the same shape and budget', async () => {
    fs.writeFileSync(configFile, tinyConfig('tiny'));
    const run = start(['run', '--config', configFile, '--json']);
    // While it runs, `offshoot status` finds the embedded stack through <run>/stack.json.
    const stackFile = path.join(tmp, 'runs', 'tiny', 'stack.json');
    await waitUntil('the embedded stack', () => fs.existsSync(stackFile), 180_000, 200);
    const status = await waitUntil(
      'a status with a stage',
      () => {
        const r = offshoot(['status', 'tiny', '--config', configFile, '--json'], { cwd: tmp });
        if (r.status !== 0) return undefined;
        const s = lastJson<{ status: string; pipeline?: { stage: string } }>(r.stdout);
        return s.pipeline ? s : undefined;
      },
      180_000,
      500,
    );
    expect(['RUNNING', 'COMPLETED']).toContain(status.status);
    const r = await run.done;
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    first = lastJson<PipelineResult>(r.stdout);

    const byName = Object.fromEntries(first.rows.map((row) => [row.name, row]));
    expect(Object.keys(byName).sort()).toEqual(['first-k', 'random-init', 'student']);
    const { student, 'random-init': random } = byName;
    // Same shape, same budget.
    expect(random.parameters).toBe(student.parameters);
    expect(random.tokens).toBe(student.tokens);
    expect(student.tokens).toBe(100 * 8 * 32);
    expect(student.flops).toBeCloseTo(random.flops, 0);
    expect(student.valPpl).toBeLessThan(random.valPpl);
    expect(first.search.evaluations).toBe(8);
    expect(first.search.best.parameters).toBe(student.parameters);
    expect(fs.existsSync(first.report.markdown)).toBe(true);
    expect(fs.readFileSync(first.report.markdown, 'utf8')).toContain('| student | searched sub-network |');
    // What it started is stopped.
    expect(fs.existsSync(stackFile)).toBe(false);
    expect(r.stderr).toMatch(/stack up in/);
  }, 600_000);

  it('a rerun finds the finished run in its Temporal database and prints the same result', async () => {
    const r = await start(['run', '--config', configFile, '--json']).done;
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toMatch(/already completed/);
    const again = lastJson<PipelineResult>(r.stdout);
    expect(again.rows).toEqual(first.rows);
  }, 300_000);
});

describe('offshoot run heals its stack', () => {
  it('kill -9 of the teacher service, Temporal, NATS and the pretrain worker mid-run: each is restarted, the run finishes with the undisturbed result, and the progress stream records it', async () => {
    expect(first, 'needs the first test of this file').toBeDefined();
    const configFile = path.join(tmp, 'heal.yaml');
    // Short heartbeats: a killed worker's activity is retried after 10 s instead of a minute.
    fs.writeFileSync(configFile, tinyConfig('heal', { heartbeatSeconds: 10 }));
    const run = start([
      'run',
      '--config',
      configFile,
      '--teacher',
      path.join(tmp, 'runs', 'tiny', 'teacher'),
      '--json',
    ]);
    const seen = new Set<number>();
    const killed: [string, number][] = [];
    const kill = async (name: string) => {
      const pid = stackOf('heal')!.processes[name];
      process.kill(pid, 'SIGKILL');
      killed.push([name, pid]);
      // Back, with a new pid, before the next one.
      await waitUntil(
        `${name} restarted`,
        () => {
          const now = stackOf('heal')?.processes[name];
          if (now) seen.add(now);
          return now !== undefined && now !== pid;
        },
        120_000,
        100,
      );
    };
    // Once the whole stack is up: the pipeline is checking the teacher service or searching.
    await waitUntil(
      'the whole stack',
      () =>
        ['teacher', 'orchestrate', 'pretrain', 'evaluate-0'].every((n) => stackOf('heal')?.processes[n]) &&
        stackOf('heal')?.teacher,
      300_000,
      200,
    );
    for (const pid of Object.values(stackOf('heal')!.processes)) seen.add(pid);
    await kill('teacher');
    await kill('temporal');
    await kill('nats');
    // `offshoot watch` finds the run's NATS through its stack.json, and shows the kills and restarts.
    const watched = await waitUntil(
      'the restarts in `offshoot watch`',
      () => {
        const w = offshoot(['watch', 'heal', '--config', configFile, '--no-follow', '--plain'], { cwd: tmp });
        return w.status === 0 && /nats restarted \(pid \d+/.test(w.stdout) ? w : undefined;
      },
      120_000,
      1000,
    );
    expect(watched.stderr).toMatch(/watch: run heal on its embedded stack's NATS nats:\/\/127\.0\.0\.1:\d+/);
    expect(watched.stdout).toMatch(/teacher \(pid \d+\) exited \(signal SIGKILL\); restarting it/);
    expect(watched.stdout).toMatch(/temporal restarted \(pid \d+, down /);
    // Mid-pretraining: a student has trained its first steps.
    const losses = ['student', 'random-init', 'first-k'].map((n) => path.join(tmp, 'runs', 'heal', n, 'losses.jsonl'));
    await waitUntil('pretraining', () => losses.some((f) => fs.existsSync(f)), 600_000, 200);
    await kill('pretrain');
    const r = await run.done;
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    const result = lastJson<PipelineResult>(r.stdout);
    expect(result.rows.map((row) => [row.name, row.valPpl])).toEqual(first.rows.map((row) => [row.name, row.valPpl]));
    for (const [name, pid] of killed) {
      expect(r.stderr).toContain(`run heal: ${name} (pid ${pid}) exited (signal SIGKILL); restarting it`);
      expect(r.stderr).toMatch(new RegExp(`run heal: ${name} restarted \\(pid \\d+, down [\\d.]+ s\\)`));
    }
    // Nothing outlives the run.
    expect([...seen].filter((pid) => pidAlive(pid))).toEqual([]);
    // Each kill and restart is in the run's progress stream (read from its JetStream folder).
    const nats = await startNats({ storeDir: path.join(tmp, 'runs', 'heal', 'jetstream') });
    const nc = await connectNats(nats.url);
    const events: ProgressEvent[] = [];
    try {
      const reader = await openRunEvents(nc, 'heal');
      for await (const s of reader.events) {
        if (s.event) events.push(s.event);
        if (s.pending === 0) break;
      }
      reader.stop();
    } finally {
      await nc.close();
      await nats.stop();
    }
    for (const [name, pid] of killed) {
      expect(
        events.find((e) => e.kind === 'service.exited' && e.pid === pid),
        name,
      ).toMatchObject({ service: name, signal: 'SIGKILL', willRestart: true });
      expect(
        events.find((e) => e.kind === 'service.restarted' && e.previousPid === pid),
        name,
      ).toMatchObject({ service: name });
    }
    expect(events.at(-1)).toMatchObject({ kind: 'run.finished', status: 'completed' });
  }, 900_000);
});

describe('offshoot run killed with kill -9', () => {
  it('a rerun stops what the killed run left running, serves the teacher on the same port, resumes and finishes the run', async () => {
    const configFile = path.join(tmp, 'orphans.yaml');
    fs.writeFileSync(configFile, tinyConfig('orphans'));
    const run = start(['run', '--config', configFile, '--json']);
    const stackFile = path.join(tmp, 'runs', 'orphans', 'stack.json');
    // The whole stack is up once stack.json lists the workers and the teacher service's address.
    const record = await waitUntil(
      'the whole embedded stack',
      () => {
        if (!fs.existsSync(stackFile)) return undefined;
        const r = JSON.parse(fs.readFileSync(stackFile, 'utf8')) as {
          pid: number;
          teacher?: string;
          processes?: Record<string, number>;
        };
        return r.processes?.orchestrate && r.processes['evaluate-0'] && r.teacher ? r : undefined;
      },
      300_000,
      200,
    );
    run.child.kill('SIGKILL');
    await run.done;
    // Alive and not a zombie (a killed orphan nobody reaps).
    const alive = (pid: number) => {
      try {
        return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
      } catch {
        return false;
      }
    };
    const portFile = path.join(tmp, 'runs', 'orphans', 'teacher-service.port');
    const port = fs.readFileSync(portFile, 'utf8').trim();
    const left = Object.entries(record.processes!);
    expect(left.map(([name]) => name)).toEqual(
      expect.arrayContaining(['temporal', 'nats', 'teacher', 'orchestrate', 'pretrain', 'evaluate-0']),
    );
    // The services outlive the killed run (workers may exit on their own once their parent is gone).
    expect(left.filter(([, pid]) => alive(pid)).map(([name]) => name)).toEqual(
      expect.arrayContaining(['temporal', 'nats', 'teacher']),
    );

    // An orphan may also die by itself meanwhile (writing to the pipe of its dead parent); what still
    // runs when the rerun starts, the rerun stops.
    const stillRunning = left.filter(([, pid]) => alive(pid));
    const r = await start(['run', '--config', configFile, '--json']).done;
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    if (stillRunning.length)
      expect(r.stderr).toMatch(
        new RegExp(`stopping what an \`offshoot run\` that was killed \\(pid ${record.pid}\\) left running: `),
      );
    expect(left.filter(([, pid]) => alive(pid))).toEqual([]);
    expect(r.stderr).toContain(`teacher service 127.0.0.1:${port}`);
    const result = lastJson<PipelineResult>(r.stdout);
    expect(result.rows.map((row) => row.name).sort()).toEqual(['first-k', 'random-init', 'student']);
    expect(fs.existsSync(stackFile)).toBe(false);
  }, 900_000);
});

describe('offshoot run stopped while its teacher trains', () => {
  /** Starts a run whose teacher trains (in the run's process) for a while, and waits until it trains and stack.json lists Temporal and NATS. */
  async function duringTraining(name: string, options: { detached?: boolean } = {}) {
    const configFile = path.join(tmp, `${name}.yaml`);
    fs.writeFileSync(configFile, tinyConfig(name, { teacherSteps: 20_000 }));
    const cli = offshootCommand();
    // detached: its own process group, as a command typed on a terminal (whose Ctrl-C signals the group).
    const child = spawn(cli.command, [...cli.args, 'run', '--config', configFile], {
      cwd: tmp,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: options.detached ?? false,
    });
    children.push(child);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdout!.resume();
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    const record = await waitUntil(
      'the teacher training, and stack.json with Temporal and NATS',
      () => {
        const r = stackOf(name);
        return /teacher: step \d+\/20000/.test(stderr) && r?.processes.temporal && r.processes.nats ? r : undefined;
      },
      180_000,
      100,
    );
    return { configFile, child, stderr: () => stderr, exited, record };
  }

  it('kill -9 of offshoot run while its teacher trains: stack.json already names Temporal and NATS, and a rerun stops them', async () => {
    const { configFile, child, exited, record } = await duringTraining('early');
    child.kill('SIGKILL');
    await exited;
    const left = Object.entries(record.processes);
    expect(left.map(([n]) => n).sort()).toEqual(['nats', 'temporal']);
    // Orphans, still running (until they next write to the pipe of their dead parent).
    const alive = left.filter(([, pid]) => pidAlive(pid));
    expect(alive.length).toBeGreaterThan(0);
    // The rerun stops them before it starts anything (here it then fails fast: the teacher it names is missing).
    const r = await start(['run', '--config', configFile, '--teacher', path.join(tmp, 'no-teacher-here')]).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(`run early: stopping what an \`offshoot run\` that was killed \\(pid ${record.pid}\\) left running: `),
    );
    expect(r.stderr).toMatch(/no-teacher-here: no finished checkpoint there/);
    expect(left.filter(([, pid]) => pidAlive(pid))).toEqual([]);
    expect(stackOf('early')).toBeUndefined();
  }, 300_000);

  it('Ctrl-C stops it at once: the training, Temporal and NATS are stopped, exit 130, no misleading error', async () => {
    const { child, stderr, exited, record } = await duringTraining('ctrlc', { detached: true });
    const t = Date.now();
    // What a terminal does on Ctrl-C: SIGINT to the foreground process group.
    process.kill(-child.pid!, 'SIGINT');
    const r = await exited;
    expect(Date.now() - t).toBeLessThan(30_000);
    expect(r.code).toBe(130);
    expect(stderr()).toContain(
      'run ctrlc: SIGINT: stopping the embedded stack; rerun `offshoot run` to resume this run',
    );
    expect(stderr()).not.toMatch(/exited .* before it answered/);
    expect(Object.values(record.processes).filter((pid) => pidAlive(pid))).toEqual([]);
    expect(stackOf('ctrlc')).toBeUndefined();
  }, 300_000);
});

describe('offshoot run that fails', () => {
  it('stops everything it started and exits with the reason', async () => {
    const configFile = path.join(tmp, 'broken.yaml');
    fs.writeFileSync(configFile, tinyConfig('broken'));
    const t = Date.now();
    const r = await start(['run', '--config', configFile, '--teacher', path.join(tmp, 'no-such-teacher')]).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no-such-teacher: no finished checkpoint there and teacher\.train\.enabled is false/);
    // It did not hang on the Temporal dev server and nats-server it had started meanwhile.
    expect(Date.now() - t).toBeLessThan(60_000);
    expect(fs.existsSync(path.join(tmp, 'runs', 'broken', 'stack.json'))).toBe(false);
  }, 120_000);
});

describe('offshoot run checks its inputs first', () => {
  it('a teacher without a tokenizer is one error before anything starts (not a search whose every evaluation fails)', async () => {
    const teacher = path.join(tmp, 'no-tokenizer-teacher');
    fs.cpSync(path.join(tmp, 'runs', 'tiny', 'teacher'), teacher, { recursive: true });
    fs.rmSync(path.join(teacher, 'tokenizer.json'));
    const configFile = path.join(tmp, 'notok.yaml');
    fs.writeFileSync(configFile, tinyConfig('notok'));
    const t = Date.now();
    const r = await start(['run', '--config', configFile, '--teacher', teacher]).done;
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`teacher ${teacher} has no tokenizer.json and data.tokenizer is not set`);
    expect(r.stderr).not.toMatch(/embedded stack \(/);
    expect(Date.now() - t).toBeLessThan(60_000);
    expect(stackOf('notok')).toBeUndefined();
  }, 120_000);
});

describe('offshoot run against an external Temporal', () => {
  it('submits and follows; offshoot status and offshoot cancel reach the run; the teacher is trained by the pretrain worker', async () => {
    stack = await startStack({ dir: path.join(tmp, 'external-stack') });
    const address = stack.temporal.address;
    workers.push(
      ...(await Promise.all([
        startWorker({ queues: ['orchestrate'], temporal: address, name: 'orchestrate' }),
        startWorker({ queues: ['evaluate', 'pretrain'], temporal: address, name: 'compute' }),
      ])),
    );
    const configFile = path.join(tmp, 'external.yaml');
    // No teacher service (distillation in the workers), long pretraining so there is time to cancel.
    fs.writeFileSync(
      configFile,
      tinyConfig('ext', {
        pretrainSteps: 5000,
        teacherService: false,
        extra: `services: { temporal: { address: "${address}" } }`,
      }),
    );
    const run = start(['run', '--config', configFile, '--json']);
    await waitUntil(
      'pretraining',
      () => {
        const r = offshoot(['status', 'ext', '--config', configFile, '--json'], { cwd: tmp });
        return r.status === 0 && lastJson<{ pipeline?: { stage: string } }>(r.stdout).pipeline?.stage === 'pretrain';
      },
      300_000,
      1000,
    );
    expect(fs.existsSync(path.join(tmp, 'runs', 'ext', 'teacher', 'offshoot-checkpoint.json'))).toBe(true);
    const c = offshoot(['cancel', 'ext', '--config', configFile], { cwd: tmp });
    expect(c.status, c.stderr).toBe(0);
    const r = await run.done;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/cancel/i);
    const s = offshoot(['status', 'ext', '--temporal', address, '--json'], { cwd: tmp });
    expect(s.status, s.stderr).toBe(0);
    expect(lastJson<{ status: string }>(s.stdout).status).toBe('CANCELLED');
    expect(await temporalAnswers(address)).toBe(true);
  }, 600_000);
});
