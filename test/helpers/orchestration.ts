/**
 * Helpers for the orchestration tests: a tiny teacher trained by the CLI, workflow inputs over it, and
 * waiting for conditions. Servers and workers come from services/stack (real processes).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { computeCheckpointHash, loadConfig, parameterCount } from '../../core/model/index.js';
import { offshootCommand } from '../../services/stack/index.js';
import type { ActivityPolicy, EvolutionInput, PretrainInput, RunRef, TeacherRef } from '../../workflows/index.js';

export const ROOT = path.join(import.meta.dirname, '..', '..');

/** Runs the offshoot CLI (the TypeScript sources) and returns its output. */
export function offshoot(
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): { status: number | null; stdout: string; stderr: string } {
  const cli = offshootCommand();
  const r = spawnSync(cli.command, [...cli.args, ...args], {
    cwd: options.cwd ?? ROOT,
    env: options.env ?? process.env,
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 300_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

export interface CliExit {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts the offshoot CLI without waiting; `done` resolves at its exit with its output. */
export function startOffshoot(args: string[], cwd: string): { child: ChildProcess; done: Promise<CliExit> } {
  const cli = offshootCommand();
  const child = spawn(cli.command, [...cli.args, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<CliExit>((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
  return { child, done };
}

/** The tiny teacher the orchestration tests search and distil from (2 layers, width 32; ~45k parameters). */
export function trainTinyTeacher(dir: string): TeacherRef {
  if (!fs.existsSync(path.join(dir, 'offshoot-checkpoint.json'))) {
    const r = offshoot([
      'teacher',
      'train',
      '--out',
      dir,
      '--preset',
      'tiny',
      '--vocab',
      '300',
      '--steps',
      '80',
      '--batch-size',
      '8',
      '--seq-len',
      '32',
      '--eval-every',
      '80',
      '--eval-tokens',
      '2048',
      '--json',
    ]);
    if (r.status !== 0) throw new Error(`teacher train failed:\n${r.stderr}`);
  }
  return teacherRef(dir);
}

export function teacherRef(dir: string): TeacherRef {
  const config = loadConfig(dir);
  return { dir, hash: computeCheckpointHash(dir), config, parameters: parameterCount(config) };
}

export function policy(heartbeatSeconds = 4, maxAttempts = 5): ActivityPolicy {
  return { timeoutSeconds: 600, heartbeatSeconds, maxAttempts };
}

export function evolutionInput(
  run: RunRef,
  teacher: TeacherRef,
  overrides: Partial<EvolutionInput> = {},
): EvolutionInput {
  return {
    run,
    teacher,
    data: { train: 'sotu:train', val: 'sotu:val' },
    space: { kind: 'uniform', target: { bin: 8 }, bins: 20, scale: 'linear' },
    search: { budget: 8, population: 4, seed: 5 },
    fitness: {
      budget: { kind: 'zero-shot', batchSize: 8, seqLen: 32, evalTokens: 4096 },
      order: 'first-k',
      layers: 'first',
    },
    parallelism: 2,
    continueAsNewEvery: 100,
    activity: policy(),
    ...overrides,
  };
}

export function pretrainInput(
  run: RunRef,
  teacher: TeacherRef,
  name: string,
  overrides: Partial<PretrainInput> = {},
): PretrainInput {
  return {
    run,
    name,
    init: { kind: 'subnet', spec: { layers: 1, embedding: 24, heads: 3, mlp: 64 }, order: 'first-k', layers: 'first' },
    teacher,
    data: { train: 'sotu:train', val: 'sotu:val' },
    hyper: {
      steps: 400,
      batchSize: 8,
      seqLen: 32,
      lr: 3e-3,
      warmup: 10,
      seed: 1,
      distill: { alpha: 0.5, temperature: 1, direction: 'forward' },
    },
    segmentSteps: 400,
    checkpointEvery: 50,
    evalEvery: 200,
    evalTokens: 2048,
    activity: policy(),
    ...overrides,
  };
}

export interface LossLine {
  step: number;
  loss: number;
  attempt: number;
  worker: string;
}

export function readLosses(file: string): LossLine[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as LossLine);
}

/** Polls `check` until it returns a truthy value. */
export async function waitUntil<T>(
  what: string,
  check: () => T | Promise<T>,
  timeoutMs = 60_000,
  everyMs = 50,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await check();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      lastError = err;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`,
  );
}

/** Retries a client call through a server outage. */
export async function retrying<T>(fn: () => Promise<T>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      const e = err as { code?: number; name?: string; message?: string };
      if (
        !(
          e.code === 14 ||
          e.name === 'ServiceError' ||
          /UNAVAILABLE|ECONNREFUSED|connect|Connection/i.test(String(e.message))
        )
      )
        throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
