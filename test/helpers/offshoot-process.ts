/**
 * `offshoot ...` as a child process (the TypeScript through tsx), with its stdout split into lines as
 * they come. Every process started here is killed when the test process exits, if still running.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';

const ROOT = path.join(import.meta.dirname, '..', '..');
const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export interface OffshootProcess {
  child: ChildProcess;
  /** Complete stdout lines so far. */
  lines: string[];
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves once `pred` holds for the lines (checked as lines arrive), rejects on exit or timeout. */
  waitFor(pred: (lines: string[]) => boolean, timeoutMs?: number): Promise<void>;
  /** SIGTERM (then SIGKILL after 10 s) and wait for the exit. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startOffshoot(args: string[], env: Record<string, string> = {}): OffshootProcess {
  const tsx = import.meta.resolve('tsx');
  const child = spawn(process.execPath, ['--import', tsx, path.join(ROOT, 'services', 'cli', 'main.ts'), ...args], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const lines: string[] = [];
  let partial = '';
  let err = '';
  const waiters = new Set<() => void>();
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters) w();
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('close', (code, signal) => {
      running.delete(child);
      if (partial) lines.push(partial);
      partial = '';
      for (const w of waiters) w();
      resolve({ code, signal });
    });
  });
  let done = false;
  void exited.then(() => (done = true));
  return {
    child,
    lines,
    stderr: () => err,
    exited,
    waitFor(pred, timeoutMs = 30_000) {
      return new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (pred(lines)) {
            cleanup();
            resolve();
          } else if (done) {
            cleanup();
            reject(
              new Error(
                `offshoot ${args.join(' ')} exited before the expected output (${lines.length} lines):\n${err}`,
              ),
            );
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(
            new Error(
              `offshoot ${args.join(' ')}: expected output not seen within ${timeoutMs} ms (${lines.length} lines):\n${err}`,
            ),
          );
        }, timeoutMs);
        const cleanup = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        const r = await exited;
        clearTimeout(t);
        return r;
      }
      return exited;
    },
  };
}
