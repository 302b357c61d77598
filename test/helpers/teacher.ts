/**
 * Teacher-service servers as child processes (`offshoot teacher serve`, on the wasm backend unless told) on loopback,
 * and tiny teacher checkpoints for them. Every process started here is killed by stopAllTeachers() and,
 * failing that, when the test process exits.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';

import { GPTNeoX, type NeoXConfig, saveCheckpoint } from '../../core/model/index.js';
import { freePort } from '../../services/stack/index.js';

export { freePort };

const ROOT = path.join(import.meta.dirname, '..', '..');
const running = new Set<ChildProcess>();

process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Saves a random tiny teacher; a large init range spreads its logits, so top-k has no near-ties. */
export async function saveTeacher(
  dir: string,
  config: NeoXConfig,
  seed: number,
): Promise<{ model: GPTNeoX; hash: string }> {
  const model = GPTNeoX.random({ ...config, initializerRange: 0.5 }, seed);
  const hash = await saveCheckpoint(dir, { ...config, initializerRange: 0.5 }, await model.toHost());
  return { model, hash };
}

export interface TeacherProcess {
  port: number;
  target: string;
  child: ChildProcess;
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  /** Resolves with the exit code (null when killed by a signal) once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (graceful drain) and wait for the exit. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** kill -9 and wait for the exit. */
  kill9(): Promise<void>;
}

/** Starts `offshoot teacher serve --model DIR --port P ...extra` and waits until it listens. */
export async function startTeacher(
  model: string,
  options: { port?: number; extra?: string[]; timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<TeacherProcess> {
  const tsx = import.meta.resolve('tsx');
  const args = [
    '--import',
    tsx,
    path.join(ROOT, 'services', 'cli', 'main.ts'),
    'teacher',
    'serve',
    '--model',
    model,
    '--port',
    String(options.port ?? 0),
    ...(options.extra ?? []),
  ];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, OFFSHOOT_BACKEND: 'wasm', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let err = '';
  let out = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    });
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`teacher server did not start within ${options.timeoutMs ?? 60_000} ms:\n${err}`));
    }, options.timeoutMs ?? 60_000);
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const line = out.split('\n').find((l) => l.includes('"listening"'));
      if (line) {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { port: number }).port);
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`teacher server exited (code ${code}, signal ${signal}) before listening:\n${err}`));
    });
  });
  return {
    port,
    target: `127.0.0.1:${port}`,
    child,
    stderr: () => err,
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill9: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Kills every teacher process still running (afterAll). */
export async function stopAllTeachers(): Promise<void> {
  const waits = [...running].map(
    (child) =>
      new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  );
  await Promise.all(waits);
}
