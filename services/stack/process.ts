/**
 * A child process offshoot manages: its output kept (the last 64 KiB) and optionally logged, stopped
 * with SIGTERM then SIGKILL after a grace period, and killed with this process whatever way it exits.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (or dist/'s parent when running compiled code): where children start by default. */
export const ROOT = path.resolve(
  HERE,
  '..',
  '..',
  ...(path.basename(path.resolve(HERE, '..', '..')) === 'dist' ? ['..'] : []),
);

const running = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  running.add(child);
  child.once('exit', () => running.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // Whatever this process started dies with it, even when it exits without stopping them.
    process.on('exit', () => {
      for (const c of running) c.kill('SIGKILL');
    });
  }
}

export interface ManagedProcess {
  name: string;
  child: ChildProcess;
  pid: number;
  /** The last 64 KiB the process wrote to stderr and stdout. */
  output(): string;
  /** Resolves once the process is gone. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  alive(): boolean;
  /** SIGTERM, then SIGKILL after `graceMs` (default 15 s); resolves when it is gone. */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** kill -9, and wait for it to be gone. */
  kill9(): Promise<void>;
}

/** How a child process is started, for whoever starts the stack. */
export interface ChildOptions {
  /** Called with the pid as soon as the process exists (before it answers). */
  onSpawn?: (pid: number) => void;
  /**
   * Its own process group: a Ctrl-C on the terminal then reaches only the parent, which must stop the
   * child itself (the embedded stack does: workers drain first). Default false: it dies with the group.
   */
  detached?: boolean;
}

export interface SpawnOptions extends ChildOptions {
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Append the process's output here as well (it is always kept in memory, last 64 KiB). */
  logFile?: string;
  /** Called with each line of stdout (e.g. to wait for a "listening" line). */
  onStdoutLine?: (line: string) => void;
  /** Mirror output lines to this function (e.g. the terminal, prefixed). */
  echo?: (line: string) => void;
}

const KEEP_OUTPUT = 64 * 1024;

/** Starts a child process that dies with this one and keeps its output. */
export function spawnManaged(options: SpawnOptions): ManagedProcess {
  const child = spawn(options.command, options.args, {
    cwd: options.cwd ?? ROOT,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: options.detached ?? false,
  });
  track(child);
  if (child.pid !== undefined) options.onSpawn?.(child.pid);
  let out = '';
  const log = options.logFile ? fs.createWriteStream(options.logFile, { flags: 'a' }) : undefined;
  let partial = '';
  const keep = (d: string) => {
    out += d;
    if (out.length > KEEP_OUTPUT) out = out.slice(out.length - KEEP_OUTPUT);
    log?.write(d);
  };
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    keep(d);
    partial += d;
    const lines = partial.split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) {
      options.onStdoutLine?.(line);
      options.echo?.(line);
    }
  });
  let errPartial = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    keep(d);
    if (!options.echo) return;
    errPartial += d;
    const lines = errPartial.split('\n');
    errPartial = lines.pop() ?? '';
    for (const line of lines) options.echo(line);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      log?.end();
      resolve({ code, signal });
    });
  });
  const alive = () => child.exitCode === null && child.signalCode === null;
  return {
    name: options.name,
    child,
    pid: child.pid ?? -1,
    output: () => out,
    exited,
    alive,
    async stop(graceMs = 15_000) {
      if (alive()) child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (alive()) child.kill('SIGKILL');
      }, graceMs);
      const r = await exited;
      clearTimeout(timer);
      return r;
    },
    async kill9() {
      if (alive()) child.kill('SIGKILL');
      await exited;
    },
  };
}
