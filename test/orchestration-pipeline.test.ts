/**
 * The pipeline end to end, as users run it: `offshoot run` with the embedded stack (the Temporal dev
 * server, nats-server, the teacher-logit service and workers, all real child processes) on a tiny
 * configuration; `offshoot status` while it runs; a rerun that finds the finished run; a run killed with
 * kill -9 whose rerun stops what it left running and finishes it; and `offshoot run` against an external
 * Temporal with workers started separately, cancelled with `offshoot cancel`.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { offshoot, startOffshoot, waitUntil } from './helpers/orchestration.js';
import { type Stack, type WorkerProcess, startStack, startWorker, temporalAnswers } from '../services/stack/index.js';
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

const tinyConfig = (name: string, o: { pretrainSteps?: number; teacherService?: boolean; extra?: string } = {}) => `
run: { name: ${name}, seed: 1 }
storage: { root: ${JSON.stringify(path.join(tmp, 'runs'))} }
teacher:
  train: { preset: tiny, vocab: 300, steps: 80, batchSize: 8, seqLen: 32, evalTokens: 2048 }
  service: { enabled: ${o.teacherService ?? true} }
search:
  target: { bin: 8 }
  budget: 8
  population: 4
  fitness: { steps: 10, seqLen: 32, evalTokens: 2048 }
pretrain: { steps: ${o.pretrainSteps ?? 100}, seqLen: 32, segmentSteps: 50, checkpointEvery: 25, evalEvery: 50, evalTokens: 2048, warmup: 5, finalEvalTokens: 8192 }
${o.extra ?? ''}
`;

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

describe('offshoot run (embedded stack)', () => {
  const configFile = path.join(tmp, 'tiny.yaml');
  let first: PipelineResult;

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

describe('offshoot run killed with kill -9', () => {
  it('a rerun stops what the killed run left running, serves the teacher on the same port, resumes and finishes the run', async () => {
    const configFile = path.join(tmp, 'orphans.yaml');
    fs.writeFileSync(configFile, tinyConfig('orphans'));
    const run = start(['run', '--config', configFile, '--json']);
    const stackFile = path.join(tmp, 'runs', 'orphans', 'stack.json');
    // The whole stack is up once stack.json lists the workers.
    const record = await waitUntil(
      'the whole embedded stack',
      () => {
        if (!fs.existsSync(stackFile)) return undefined;
        const r = JSON.parse(fs.readFileSync(stackFile, 'utf8')) as { pid: number; processes?: Record<string, number> };
        return r.processes?.orchestrate ? r : undefined;
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

    const r = await start(['run', '--config', configFile, '--json']).done;
    expect(r.code, r.stderr.slice(-3000)).toBe(0);
    expect(r.stderr).toMatch(new RegExp(`left running: .*temporal \\(${record.processes!.temporal}\\)`));
    expect(left.filter(([, pid]) => alive(pid))).toEqual([]);
    expect(r.stderr).toContain(`teacher service 127.0.0.1:${port}`);
    const result = lastJson<PipelineResult>(r.stdout);
    expect(result.rows.map((row) => row.name).sort()).toEqual(['first-k', 'random-init', 'student']);
    expect(fs.existsSync(stackFile)).toBe(false);
  }, 900_000);
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
