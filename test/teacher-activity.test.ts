/**
 * The pretrain worker's prepareTeacher activity trains a missing teacher in its own process (core/teacher),
 * in Temporal's activity test environment: it heartbeats while training, a cancellation stops it at the
 * next step with a checkpoint, a worker's shutdown fails the attempt (checkpointed) so that a retry
 * resumes, and the retry finishes the teacher exactly as far as the settings ask.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { CancelledFailure } from '@temporalio/activity';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { initBackend } from '../core/model/backend.js';
import { readTrainerState } from '../core/model/index.js';
import { teacherFinished } from '../core/teacher/index.js';
import { localEnv } from '../services/orchestration/index.js';
import { createPretrainActivities } from '../services/pretrain/index.js';
import type { PrepareTeacherInput, TeacherRef } from '../workflows/index.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-teacher-activity-'));
const tokenizer = path.join(import.meta.dirname, 'fixtures', 'tokenizer', 'offshoot-bpe512', 'tokenizer.json');
const STEPS = 40;

function input(dir: string): PrepareTeacherInput {
  return {
    run: { runId: 'teacher', dir: tmp },
    dir,
    data: { train: 'sotu:train', val: 'sotu:val', tokenizer },
    train: {
      preset: 'tiny',
      vocab: 512,
      steps: STEPS,
      batchSize: 4,
      seqLen: 16,
      lr: 3e-3,
      warmup: 4,
      seed: 1,
      evalTokens: 256,
      checkpointEvery: 10,
    },
  };
}

/** Runs prepareTeacher; `onHeartbeat` sees each heartbeat's details with the environment (to cancel). */
async function prepareTeacher(
  dir: string,
  options: {
    draining?: AbortSignal;
    onHeartbeat?: (details: { step?: number }, env: MockActivityEnvironment) => void;
  } = {},
) {
  const lines: string[] = [];
  const activities = createPretrainActivities(
    localEnv({ log: (l) => lines.push(l), ...(options.draining ? { draining: options.draining } : {}) }),
  );
  const env = new MockActivityEnvironment(undefined, { logger: new DefaultLogger('ERROR', () => undefined) });
  const beats: { step?: number }[] = [];
  env.on('heartbeat', (d: { step?: number }) => {
    beats.push(d);
    options.onHeartbeat?.(d, env);
  });
  const result = env.run(activities.prepareTeacher, input(dir)) as Promise<TeacherRef>;
  return { result, beats, lines };
}

beforeAll(async () => {
  await initBackend('cpu', () => {});
  process.env.OFFSHOOT_CACHE = path.join(tmp, 'cache');
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('prepareTeacher trains the teacher in the worker', () => {
  const dir = path.join(tmp, 'cancelled');

  it('heartbeats its step, and a cancellation stops it at the next step with a checkpoint', async () => {
    const run = await prepareTeacher(dir, { onHeartbeat: (d, env) => (d.step ?? 0) >= 15 && env.cancel() });
    await expect(run.result).rejects.toBeInstanceOf(CancelledFailure);
    const stepsBeaten = run.beats.map((b) => b.step).filter((s): s is number => s !== undefined);
    expect(stepsBeaten.length).toBeGreaterThan(2);
    expect(stepsBeaten).toEqual([...stepsBeaten].sort((a, b) => a - b));
    const state = readTrainerState(dir)!;
    expect(state.step).toBeGreaterThanOrEqual(15);
    expect(state.step).toBeLessThan(STEPS);
    expect(teacherFinished(dir)).toBe(false);
    expect(run.lines.join('\n')).toMatch(/teacher: stopped at step \d+; saved/);
  });

  it('the retry resumes from that checkpoint and finishes the teacher', async () => {
    const stoppedAt = readTrainerState(dir)!.step;
    const run = await prepareTeacher(dir);
    const teacher = await run.result;
    expect(run.lines.join('\n')).toContain(`resuming from step ${stoppedAt}`);
    expect(readTrainerState(dir)!.step).toBe(STEPS);
    expect(teacherFinished(dir)).toBe(true);
    expect(teacher.config.hiddenSize).toBe(32);
    expect(teacher.hash).toMatch(/^[0-9a-f]{64}$/);
    // A finished teacher is not trained again.
    const again = await prepareTeacher(dir);
    expect((await again.result).hash).toBe(teacher.hash);
    expect(again.lines.join('\n')).not.toContain('training the teacher');
  });

  it("a worker's shutdown fails the attempt with the teacher checkpointed, for a retry elsewhere", async () => {
    const drained = path.join(tmp, 'drained');
    const draining = new AbortController();
    const run = await prepareTeacher(drained, {
      draining: draining.signal,
      onHeartbeat: (d) => (d.step ?? 0) >= 10 && draining.abort(),
    });
    await expect(run.result).rejects.toThrow(
      /teacher training stopped at step \d+ by the worker's shutdown \(checkpointed; a retry resumes\)/,
    );
    expect(readTrainerState(drained)!.step).toBeGreaterThanOrEqual(10);
    expect(teacherFinished(drained)).toBe(false);
  });
});
