/**
 * Data-parallel training (docs/multi-gpu.md) on the CPU: the TCP ring's collectives, how a global batch
 * is shared out, gradient accumulation, and the pretrain worker's trainSegment on 2 rank processes
 * (cpu backend, tiny model) against the same segment in one process — the loss curve, a rank killed
 * with SIGKILL mid-run, and the resume from the last checkpoint on 1 and on 2 ranks with the data
 * order unchanged.
 *
 * Tolerance: the ranks average their halves' gradients where one process takes the mean over the whole
 * batch, so the sums are rounded differently (float32). The per-step losses must agree within 1e-5
 * (absolute; the losses are about 6, and a step's loss on other data differs by 1e-2 or more); measured
 * here, the largest difference over 12 steps was 4.8e-7, one float32 rounding step at 6.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { MockActivityEnvironment } from '@temporalio/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { initBackend } from '../core/model/backend.js';
import {
  GPTNeoX,
  RingError,
  TcpRing,
  Trainer,
  hostAllReduce,
  loadCheckpoint,
  newJobId,
  rankBatches,
  rankLayout,
  sliceRows,
} from '../core/model/index.js';
import { trainTeacher } from '../core/teacher/index.js';
import { type WorkerEnv, localEnv } from '../services/orchestration/index.js';
import type { DataParallelSettings } from '../services/pretrain/data-parallel.js';
import { createPretrainActivities } from '../services/pretrain/index.js';
import { freePort, startTeacherService } from '../services/stack/index.js';
import type {
  CheckpointRef,
  PrepareStudentInput,
  PretrainHyper,
  SegmentHeartbeat,
  StudentRef,
  TeacherRef,
  TeacherServiceRef,
  TrainSegmentInput,
  TrainSegmentOutput,
} from '../workflows/index.js';
import { syntheticBatches, tinyConfig, tinyHyper } from './helpers/tiny.js';

const LOSS_TOLERANCE = 1e-5;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-dp-'));
const tokenizer = path.join(import.meta.dirname, 'fixtures', 'tokenizer', 'offshoot-bpe512', 'tokenizer.json');
const teacherDir = path.join(tmp, 'teacher');
let teacher: TeacherRef;

beforeAll(async () => {
  await initBackend('cpu', () => {});
  process.env.OFFSHOOT_CACHE = path.join(tmp, 'cache');
  await trainTeacher({
    preset: 'tiny',
    vocab: 512,
    tokenizer,
    data: 'sotu:train',
    val: 'sotu:val',
    out: teacherDir,
    tokenCache: path.join(tmp, 'cache', 'tokens'),
    steps: 4,
    lr: 1e-2,
    warmup: 1,
    batchSize: 4,
    seqLen: 16,
    seed: 3,
    evalTokens: 256,
  });
  const ckpt = loadCheckpoint(teacherDir);
  teacher = { dir: teacherDir, hash: ckpt.hash, config: ckpt.config, parameters: 0 };
}, 120_000);

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

async function ring(n: number): Promise<TcpRing[]> {
  const ports = await Promise.all(Array.from({ length: n }, () => freePort()));
  const jobId = newJobId();
  return Promise.all(
    Array.from({ length: n }, (_, rank) => TcpRing.join({ rank, worldSize: n, ports, jobId, timeoutMs: 5000 })),
  );
}

describe('the TCP ring', () => {
  it('averages over 3 ranks: the exact mean, bit-identical on every rank; broadcasts from rank 0', async () => {
    const rings = await ring(3);
    const values = rings.map((r) => Float32Array.from({ length: 1001 }, (_, i) => Math.sin(i + 10 * r.rank)));
    const mean = Float32Array.from({ length: 1001 }, (_, i) => (values[0][i] + values[1][i] + values[2][i]) / 3);
    await Promise.all(rings.map((r, i) => r.allReduceMean(values[i])));
    for (let i = 0; i < 1001; i++) expect(values[0][i]).toBeCloseTo(mean[i], 6);
    expect(Array.from(values[1])).toEqual(Array.from(values[0]));
    expect(Array.from(values[2])).toEqual(Array.from(values[0]));
    const got = await Promise.all(rings.map((r) => r.broadcast(r.rank === 0 ? Uint8Array.of(7, 8, 9) : undefined)));
    expect(got.map((b) => Array.from(b))).toEqual([
      [7, 8, 9],
      [7, 8, 9],
      [7, 8, 9],
    ]);
    for (const r of rings) r.close();
  });

  it('a rank that goes away fails the collective on the others, naming it', async () => {
    const [a, b] = await ring(2);
    b.close();
    await expect(a.allReduceMean(new Float32Array(8))).rejects.toThrow(
      /rank 0: the connection (to|from) rank 1 (closed|failed \(.*\) during all-reduce #1): rank 1 died or stopped/,
    );
    // And every later one.
    await expect(a.barrier()).rejects.toThrow(RingError);
    a.close();
  });

  it('ranks with different gradient sizes are stopped with both sizes named', async () => {
    const [a, b] = await ring(2);
    const results = await Promise.allSettled([
      a.allReduceMean(new Float32Array(10)),
      b.allReduceMean(new Float32Array(12)),
    ]);
    const messages = results.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'fulfilled'));
    expect(
      messages.some((m) =>
        /sent \d+ bytes of values, this rank expects \d+: the ranks' models or batches differ/.test(m),
      ),
    ).toBe(true);
    a.close();
    b.close();
  });

  it('a rank of another job on the port is turned away', async () => {
    const ports = [await freePort(), await freePort()];
    const [joining, stranger] = await Promise.allSettled([
      TcpRing.join({ rank: 0, worldSize: 2, ports, jobId: 'job-a', connectTimeoutMs: 1500 }),
      TcpRing.join({ rank: 1, worldSize: 2, ports, jobId: 'job-b', connectTimeoutMs: 1500 }),
    ]);
    expect(joining.status === 'rejected' && (joining.reason as Error).message).toMatch(
      /^rank 0: rank 1 did not connect within 1500 ms/,
    );
    expect(stranger.status === 'rejected' && (stranger.reason as Error).message).toMatch(
      /^rank 1: rank 0 did not connect within 1500 ms/,
    );
  });
});

describe("sharing out a step's global batch", () => {
  it('rank r takes rows [r·B/N, (r+1)·B/N), in micro-batches that divide them', () => {
    expect(rankLayout(8, 1, 2)).toEqual({ first: 4, rows: 4, microBatchSize: 4, microBatches: 1 });
    expect(rankLayout(8, 3, 4, 1)).toEqual({ first: 6, rows: 2, microBatchSize: 1, microBatches: 2 });
    expect(() => rankLayout(6, 0, 4)).toThrow(
      'data parallel: the batch size 6 does not divide into 4 ranks; use a batch size that is a multiple of 4',
    );
    expect(() => rankLayout(8, 0, 2, 3)).toThrow(
      'data parallel: each of the 2 ranks takes 4 rows of the batch of 8, which do not divide into micro-batches of 3 rows',
    );
    const batches = syntheticBatches(48, 4, 3);
    const global = batches(5);
    const half = rankBatches(batches, 1, 2)(5);
    expect(Array.from(half.input)).toEqual(Array.from(global.input.subarray(6, 12)));
    expect(sliceRows(global, 0, 4)).toEqual(global);
  });
});

describe('the trainer', () => {
  const config = tinyConfig();
  const hyper = tinyHyper(6, { batchSize: 4 });
  const batches = syntheticBatches(config.vocabSize, 4, hyper.seqLen);

  async function losses(trainer: Trainer): Promise<number[]> {
    const out: number[] = [];
    (trainer.options as { onStep?: (r: { loss: number }) => void }).onStep = (r) => out.push(r.loss);
    await trainer.run();
    return out;
  }

  it('gradient accumulation: micro-batches of 1 row give the update of the whole batch', async () => {
    const whole = new Trainer(GPTNeoX.random(config, 5), { hyper, batches });
    const micro = new Trainer(GPTNeoX.random(config, 5), { hyper, batches, microBatchSize: 1 });
    const [a, b] = [await losses(whole), await losses(micro)];
    for (let i = 0; i < a.length; i++) expect(Math.abs(a[i] - b[i])).toBeLessThan(LOSS_TOLERANCE);
    const [wa, wb] = [await whole.model.toHost(), await micro.model.toHost()];
    for (const [name, t] of wa)
      for (let i = 0; i < t.data.length; i += 7)
        expect(Math.abs(Number(t.data[i]) - Number(wb.get(name)!.data[i]))).toBeLessThan(1e-4);
    whole.dispose();
    micro.dispose();
  });

  it('two ranks over the TCP ring (one process) train like one trainer on the whole batch, and hold the same weights', async () => {
    const single = new Trainer(GPTNeoX.random(config, 5), { hyper, batches });
    const expected = await losses(single);
    const rings = await ring(2);
    const ranks = rings.map(
      (r) => new Trainer(GPTNeoX.random(config, 5), { hyper, batches, parallel: hostAllReduce(r) }),
    );
    const got = await Promise.all(ranks.map((t) => losses(t)));
    expect(got[0]).toEqual(got[1]);
    for (let i = 0; i < expected.length; i++) expect(Math.abs(got[0][i] - expected[i])).toBeLessThan(LOSS_TOLERANCE);
    const [w0, w1] = [await ranks[0].model.toHost(), await ranks[1].model.toHost()];
    for (const [name, t] of w0) expect(Array.from(t.data), name).toEqual(Array.from(w1.get(name)!.data));
    expect([ranks[0].writesCheckpoints, ranks[1].writesCheckpoints]).toEqual([true, false]);
    for (const t of [single, ...ranks]) t.dispose();
    for (const r of rings) r.close();
  });
});

// ---- trainSegment on rank processes ---------------------------------------------------------------

const STEPS = 12;
const HYPER: PretrainHyper = { steps: STEPS, lr: 1e-2, warmup: 2, batchSize: 4, seqLen: 16, seed: 7, distill: null };
const DATA = { train: 'sotu:train', val: 'sotu:val', tokenizer };

interface SegmentRun {
  out?: TrainSegmentOutput;
  error?: Error;
  /** Loss by step, as losses.jsonl recorded it. */
  losses: Map<number, number>;
  heartbeats: SegmentHeartbeat[];
  logs: string[];
}

async function prepare(runName: string): Promise<{ run: { runId: string; dir: string }; student: StudentRef }> {
  const run = { runId: runName, dir: path.join(tmp, runName) };
  const activities = createPretrainActivities(localEnv({ log: () => undefined }));
  const input: PrepareStudentInput = {
    run,
    name: 'student',
    init: { kind: 'subnet', spec: { layers: 2, embedding: 32, heads: 4, mlp: 128 }, order: 'first-k', layers: 'first' },
    teacher,
    hyper: HYPER,
    data: DATA,
  };
  const student = (await new MockActivityEnvironment().run(activities.prepareStudent, input)) as StudentRef;
  return { run, student };
}

/** trainSegment from `from` to `toStep`, in this process or on rank processes; `during` sees the logs as they come. */
async function segment(
  run: { runId: string; dir: string },
  from: CheckpointRef,
  toStep: number,
  dataParallel?: DataParallelSettings,
  options: {
    attempt?: number;
    heartbeatDetails?: SegmentHeartbeat;
    hyper?: PretrainHyper;
    teacherService?: TeacherServiceRef;
    draining?: AbortSignal;
    during?: (line: string) => void;
    onHeartbeat?: (h: SegmentHeartbeat) => void;
  } = {},
): Promise<SegmentRun> {
  const logs: string[] = [];
  const heartbeats: SegmentHeartbeat[] = [];
  const activityEnv = new MockActivityEnvironment({
    attempt: options.attempt ?? 1,
    heartbeatDetails: options.heartbeatDetails,
  });
  activityEnv.on('heartbeat', (d: SegmentHeartbeat) => {
    heartbeats.push(d);
    options.onHeartbeat?.(d);
  });
  const env: WorkerEnv = localEnv({
    log: (line) => {
      logs.push(line);
      options.during?.(line);
    },
    ...(dataParallel ? { dataParallel: { backend: 'cpu', ...dataParallel } } : {}),
    ...(options.draining ? { draining: options.draining } : {}),
  });
  const input: TrainSegmentInput = {
    run,
    name: 'student',
    from,
    toStep,
    teacher,
    data: DATA,
    hyper: options.hyper ?? HYPER,
    checkpointEvery: 4,
    evalEvery: 6,
    evalTokens: 256,
    ...(options.teacherService ? { teacherService: options.teacherService } : {}),
  };
  const lossFile = path.join(run.dir, 'student', 'losses.jsonl');
  const before = fs.existsSync(lossFile) ? fs.readFileSync(lossFile, 'utf8').length : 0;
  const result: SegmentRun = { losses: new Map(), heartbeats, logs };
  try {
    result.out = (await activityEnv.run(createPretrainActivities(env).trainSegment, input)) as TrainSegmentOutput;
  } catch (err) {
    result.error = err as Error;
  }
  if (fs.existsSync(lossFile)) {
    for (const line of fs.readFileSync(lossFile, 'utf8').slice(before).trim().split('\n').filter(Boolean)) {
      const r = JSON.parse(line) as { step: number; loss: number };
      result.losses.set(r.step, r.loss);
    }
  }
  return result;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function expectSameCurve(actual: Map<number, number>, expected: Map<number, number>, steps: number[]): void {
  for (const s of steps) {
    expect(actual.has(s), `step ${s} trained`).toBe(true);
    expect(
      Math.abs(actual.get(s)! - expected.get(s)!),
      `loss at step ${s}: ${actual.get(s)} vs ${expected.get(s)}`,
    ).toBeLessThan(LOSS_TOLERANCE);
  }
}

describe('trainSegment on 2 rank processes (cpu backend)', () => {
  let reference: SegmentRun;
  let student: StudentRef;

  beforeAll(async () => {
    const prepared = await prepare('reference');
    student = prepared.student;
    reference = await segment(prepared.run, student.checkpoint, STEPS);
    expect(reference.error).toBeUndefined();
  }, 120_000);

  it('the loss curve of 2 ranks matches one process on the same global batch; rank 0 checkpoints the same model', async () => {
    const { run, student: s } = await prepare('two-ranks');
    const two = await segment(run, s.checkpoint, STEPS, { ranks: 2 });
    expect(two.error).toBeUndefined();
    expect(two.out).toMatchObject({ step: STEPS, resumedFrom: 0 });
    expectSameCurve(
      two.losses,
      reference.losses,
      Array.from({ length: STEPS }, (_, i) => i + 1),
    );
    expect(two.out!.evals.map((e) => e.step)).toEqual([6, 12]);
    for (const [i, e] of two.out!.evals.entries())
      expect(Math.abs(e.valLoss - reference.out!.evals[i].valLoss)).toBeLessThan(LOSS_TOLERANCE);
    // Checkpoints every 4 steps, each heartbeat carrying the latest; the last is where the segment ends.
    expect(two.heartbeats.filter((h) => h.checkpoint.step !== 0).map((h) => h.checkpoint.step)).toEqual(
      expect.arrayContaining([4, 8, 12]),
    );
    expect(two.out!.checkpoint.step).toBe(STEPS);
    const ours = loadCheckpoint(two.out!.checkpoint.dir).tensors;
    const theirs = loadCheckpoint(reference.out!.checkpoint.dir).tensors;
    for (const [name, t] of theirs) {
      let worst = 0;
      for (let i = 0; i < t.data.length; i++)
        worst = Math.max(worst, Math.abs(Number(t.data[i]) - Number(ours.get(name)!.data[i])));
      expect(worst, name).toBeLessThan(1e-3);
    }
    // Each rank's output is kept.
    expect(fs.readdirSync(path.join(run.dir, 'student', 'ranks', 'attempt-1')).sort()).toEqual(
      expect.arrayContaining(['rank-0.log', 'rank-1.log']),
    );
  }, 240_000);

  it('kill -9 of a rank fails the segment naming it and the last checkpoint; a resume on 1 or 2 ranks goes on from there with the same data', async () => {
    const { run, student: s } = await prepare('killed');
    let pids: number[] = [];
    let killed = false;
    const failed = await segment(
      run,
      s.checkpoint,
      STEPS,
      { ranks: 2 },
      {
        during: (line) => {
          const m = /\(pids (\d+), (\d+)\)/.exec(line);
          if (m) pids = [Number(m[1]), Number(m[2])];
        },
        onHeartbeat: (h) => {
          // Once rank 0 has checkpointed step 4, rank 1 dies.
          if (!killed && h.checkpoint.step === 4) {
            killed = true;
            process.kill(pids[1], 'SIGKILL');
          }
        },
      },
    );
    expect(killed).toBe(true);
    expect(failed.error?.message).toMatch(
      /^data-parallel segment failed: rank 1 of 2 was killed by SIGKILL; the other ranks were stopped\. The last checkpoint is step \d+ \(.*step-\d+\); a retry resumes there\. Rank 1's last lines/,
    );
    const lastStep = Number(/The last checkpoint is step (\d+)/.exec(failed.error!.message)![1]);
    expect(lastStep).toBeGreaterThanOrEqual(4);
    expect(lastStep).toBeLessThan(STEPS);
    for (const pid of pids) expect(isAlive(pid), `rank pid ${pid} is gone`).toBe(false);
    const beat = failed.heartbeats.filter((h) => h.checkpoint.step === lastStep).at(-1)!;
    expect(beat).toBeDefined();
    expectSameCurve(
      failed.losses,
      reference.losses,
      Array.from({ length: lastStep }, (_, i) => i + 1),
    );

    // Temporal's retry: attempt 2, given the last heartbeat, on a worker with 1 rank and on one with 2
    // (each on its own copy of the run folder, as it was after the failure).
    for (const ranks of [1, 2]) {
      const copy = { runId: `killed-${ranks}`, dir: path.join(tmp, `killed-resumed-on-${ranks}`) };
      fs.cpSync(run.dir, copy.dir, { recursive: true });
      fs.rmSync(path.join(copy.dir, 'student', 'latest.json'), { force: true });
      const moved = (c: CheckpointRef): CheckpointRef => ({ ...c, dir: c.dir.replace(run.dir, copy.dir) });
      const resumed = await segment(
        copy,
        moved(s.checkpoint),
        STEPS,
        { ranks },
        { attempt: 2, heartbeatDetails: { ...beat, checkpoint: moved(beat.checkpoint) } },
      );
      expect(resumed.error, `resume on ${ranks} rank(s)`).toBeUndefined();
      expect(resumed.out).toMatchObject({ step: STEPS, resumedFrom: lastStep, attempt: 2 });
      expect([...resumed.losses.keys()]).toEqual(Array.from({ length: STEPS - lastStep }, (_, i) => lastStep + 1 + i));
      expectSameCurve(resumed.losses, reference.losses, [...resumed.losses.keys()]);
    }
  }, 360_000);

  it("the worker's SIGTERM: the ranks stop together after the step under way, rank 0 checkpoints it, the segment returns there", async () => {
    const { run, student: s } = await prepare('drained');
    const draining = new AbortController();
    const drained = await segment(
      run,
      s.checkpoint,
      STEPS,
      { ranks: 2 },
      {
        draining: draining.signal,
        onHeartbeat: (h) => {
          if (h.checkpoint.step === 4) draining.abort();
        },
      },
    );
    expect(drained.error).toBeUndefined();
    const step = drained.out!.step;
    expect(drained.out).toMatchObject({ stopped: 'worker-shutdown', checkpoint: { step } });
    expect(step).toBeGreaterThan(4);
    expect(step).toBeLessThan(STEPS);
    expect(loadCheckpoint(drained.out!.checkpoint.dir).hash).toBe(drained.out!.checkpoint.hash);
    // Rank 1 stopped at the same step as rank 0.
    expect(fs.readFileSync(path.join(run.dir, 'student', 'ranks', 'attempt-1', 'rank-1.log'), 'utf8')).toContain(
      `"event":"rank-done","rank":1,"step":${step},`,
    );
    expectSameCurve(
      drained.losses,
      reference.losses,
      Array.from({ length: step }, (_, i) => i + 1),
    );
  }, 240_000);

  it('with distillation (the teacher in each rank) and micro-batches of one row: the curve of one process', async () => {
    const hyper: PretrainHyper = { ...HYPER, steps: 6, distill: { alpha: 0.5, temperature: 2, direction: 'forward' } };
    const one = await prepare('kd-one');
    const single = await segment(one.run, one.student.checkpoint, 6, undefined, { hyper });
    const two = await prepare('kd-two');
    const ranks = await segment(two.run, two.student.checkpoint, 6, { ranks: 2, microBatchSize: 1 }, { hyper });
    expect([single.error, ranks.error]).toEqual([undefined, undefined]);
    expectSameCurve(ranks.losses, single.losses, [1, 2, 3, 4, 5, 6]);
    // Distillation changed the curve: it is not the cross-entropy run's.
    expect(Math.abs(single.losses.get(6)! - reference.losses.get(6)!)).toBeGreaterThan(1e-2);
  }, 240_000);

  it('distillation from the teacher service on 2 ranks: the curve of one process', async () => {
    const service = await startTeacherService({ model: teacherDir, backend: 'cpu', extra: ['--top-k', '16'] });
    try {
      const ref: TeacherServiceRef = { targets: [service.target], topK: 16 };
      const hyper: PretrainHyper = {
        ...HYPER,
        steps: 6,
        distill: { alpha: 0.5, temperature: 1, direction: 'forward' },
      };
      const one = await prepare('service-one');
      const single = await segment(one.run, one.student.checkpoint, 6, undefined, { hyper, teacherService: ref });
      const two = await prepare('service-two');
      const ranks = await segment(two.run, two.student.checkpoint, 6, { ranks: 2 }, { hyper, teacherService: ref });
      expect([single.error, ranks.error]).toEqual([undefined, undefined]);
      expectSameCurve(ranks.losses, single.losses, [1, 2, 3, 4, 5, 6]);
    } finally {
      await service.stop();
    }
  }, 240_000);
});
