/**
 * The supervisor of an embedded stack: it starts each child (the Temporal dev server, nats-server, the
 * teacher service, workers) through a function that brings it up on the same port and data every
 * time, watches it, and when it dies restarts it with backoff. Each exit and restart is reported
 * (`onEvent`: the terminal and the progress stream). A child that keeps failing — restarts that do not
 * come up, or die again within `stableMs`, more than `maxRestarts` times in a row — makes the
 * supervisor give up: `failure` rejects with an error naming the child and its last output lines.
 */
import type { ManagedProcess } from './process.js';

export interface SupervisedChild<P extends ManagedProcess = ManagedProcess> {
  /** The component's name in logs, events and stack.json: temporal, nats, teacher, orchestrate, … */
  name: string;
  /** Starts it (on the same port and data each time) and resolves once it answers; `onSpawn` gets the pid at once. */
  start(onSpawn: (pid: number) => void): Promise<P>;
}

export type SupervisorEvent =
  | {
      kind: 'exited';
      service: string;
      pid: number;
      code: number | null;
      signal: NodeJS.Signals | null;
      willRestart: boolean;
      restarts: number;
      output: string;
    }
  | { kind: 'restart-failed'; service: string; attempt: number; error: string }
  | { kind: 'restarted'; service: string; pid: number; previousPid: number; downMs: number; restarts: number }
  | { kind: 'gave-up'; service: string; restarts: number; error: string };

export interface SupervisorOptions {
  /** Failed restarts in a row (not coming up, or dying again within `stableMs`) before giving up. Default 5. */
  maxRestarts?: number;
  /** Delay before a restart: initialMs · 2^(failures in a row), at most maxMs. Default 250 ms, 10 s. */
  backoff?: { initialMs: number; maxMs: number };
  /** A child up this long counts as healthy again. Default 20 s. */
  stableMs?: number;
  onEvent?: (event: SupervisorEvent) => void;
  /** A child's pid as soon as it is spawned (before it answers): for stack.json. */
  onSpawn?: (name: string, pid: number) => void;
}

export const SUPERVISOR_DEFAULTS = { maxRestarts: 5, backoff: { initialMs: 250, maxMs: 10_000 }, stableMs: 20_000 };

/** A child the supervisor gave up on. */
export class SupervisorError extends Error {
  constructor(
    readonly service: string,
    message: string,
  ) {
    super(message);
    this.name = 'SupervisorError';
  }
}

interface Entry {
  child: SupervisedChild;
  current: ManagedProcess;
  upSince: number;
  restarts: number;
  failuresInRow: number;
  restarting?: Promise<void>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The last `n` lines of a process's output, indented for an error message. */
export function lastLines(output: string, n = 10): string {
  const lines = output.trim().split('\n').slice(-n);
  return lines.length && lines[0] ? lines.map((l) => `    ${l}`).join('\n') : '    (no output)';
}

export class Supervisor {
  private readonly entries = new Map<string, Entry>();
  private readonly options: Required<Omit<SupervisorOptions, 'onEvent' | 'onSpawn'>> &
    Pick<SupervisorOptions, 'onEvent' | 'onSpawn'>;
  private stopping = false;
  /** Children spawned and not yet answering (first starts and restarts), by name: their pid and start. */
  private readonly starting = new Map<string, { pid?: number; done: Promise<unknown> }>();
  private rejectFailure!: (err: SupervisorError) => void;
  private wakeSleepers = new Set<() => void>();
  /** Rejects when a child could not be kept running; never resolves. */
  readonly failure: Promise<never>;

  constructor(options: SupervisorOptions = {}) {
    this.options = { ...SUPERVISOR_DEFAULTS, ...options };
    this.failure = new Promise<never>((_, reject) => {
      this.rejectFailure = reject;
    });
    // A caller that never races it must not see an unhandled rejection.
    this.failure.catch(() => undefined);
  }

  /** Starts a child and supervises it from then on. A first start that fails throws (it is not retried). */
  async start<P extends ManagedProcess>(child: SupervisedChild<P>): Promise<P> {
    if (this.entries.has(child.name)) throw new Error(`supervisor: ${child.name} is already supervised`);
    if (this.stopping) throw new Error(`supervisor: stopping; ${child.name} not started`);
    const proc = await this.launch(child);
    if (this.stopping) {
      await proc.stop(5000);
      throw new Error(`supervisor: stopped while ${child.name} started`);
    }
    const entry: Entry = {
      child: child as SupervisedChild,
      current: proc,
      upSince: Date.now(),
      restarts: 0,
      failuresInRow: 0,
    };
    this.entries.set(child.name, entry);
    this.watch(entry, proc);
    return proc;
  }

  /** The running process of a component (the latest after restarts). */
  current(name: string): ManagedProcess | undefined {
    return this.entries.get(name)?.current;
  }

  /** Current pid of every supervised component. */
  pids(): Record<string, number> {
    return Object.fromEntries([...this.entries].map(([name, e]) => [name, e.current.pid]));
  }

  /** How often each component was restarted. */
  restarts(): Record<string, number> {
    return Object.fromEntries([...this.entries].map(([name, e]) => [name, e.restarts]));
  }

  /**
   * Stops supervising and stops the children, group after group (e.g. workers first, so a running
   * segment checkpoints, then the services); each gets SIGTERM and SIGKILL after `graceMs`.
   */
  async stop(groups: string[][], graceMs: number): Promise<void> {
    this.stopping = true;
    for (const wake of this.wakeSleepers) wake();
    // What is still coming up is stopped too, without waiting for it to answer.
    for (const s of this.starting.values()) {
      if (s.pid === undefined) continue;
      try {
        process.kill(s.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
    await Promise.allSettled([...this.starting.values()].map((s) => s.done));
    await Promise.allSettled([...this.entries.values()].map((e) => e.restarting));
    const named = new Set(groups.flat());
    const rest = [...this.entries.keys()].filter((n) => !named.has(n));
    for (const group of [...groups, rest]) {
      await Promise.all(group.map((n) => this.entries.get(n)?.current.stop(graceMs)));
    }
  }

  /** Runs a child's start, knowing its pid while it comes up. */
  private launch<P extends ManagedProcess>(child: SupervisedChild<P>): Promise<P> {
    const state: { pid?: number; done: Promise<unknown> } = { done: Promise.resolve() };
    const done = child.start((pid) => {
      state.pid = pid;
      this.options.onSpawn?.(child.name, pid);
    });
    state.done = done.catch(() => undefined);
    this.starting.set(child.name, state);
    return done.finally(() => {
      if (this.starting.get(child.name) === state) this.starting.delete(child.name);
    });
  }

  private emit(event: SupervisorEvent): void {
    try {
      this.options.onEvent?.(event);
    } catch {
      // reporting never stops the supervision
    }
  }

  private watch(entry: Entry, proc: ManagedProcess): void {
    void proc.exited.then((r) => {
      if (this.stopping || entry.current !== proc) return;
      entry.restarting = this.restart(entry, proc, r).finally(() => {
        entry.restarting = undefined;
      });
    });
  }

  /** A backoff sleep that ends early when the supervisor stops. */
  private async pause(ms: number): Promise<void> {
    let wake!: () => void;
    const woken = new Promise<void>((r) => (wake = r));
    this.wakeSleepers.add(wake);
    await Promise.race([sleep(ms), woken]);
    this.wakeSleepers.delete(wake);
  }

  private async restart(
    entry: Entry,
    dead: ManagedProcess,
    r: { code: number | null; signal: NodeJS.Signals | null },
  ): Promise<void> {
    const name = entry.child.name;
    const downSince = Date.now();
    // A restart that died before it was up for stableMs did not hold: a crash loop counts as failing.
    if (entry.restarts > 0 && downSince - entry.upSince < this.options.stableMs) entry.failuresInRow++;
    else entry.failuresInRow = 0;
    const { maxRestarts, backoff } = this.options;
    const giveUp = (why: string) => {
      const error = `${name} ${why}; gave up after ${entry.failuresInRow} failed restart${entry.failuresInRow === 1 ? '' : 's'} in a row. Its last lines:\n${lastLines(entry.current.output())}`;
      this.emit({ kind: 'gave-up', service: name, restarts: entry.restarts, error });
      this.rejectFailure(new SupervisorError(name, error));
    };
    const exit = `exited (${r.signal ? `signal ${r.signal}` : `code ${r.code}`})`;
    const willRestart = entry.failuresInRow <= maxRestarts;
    this.emit({
      kind: 'exited',
      service: name,
      pid: dead.pid,
      code: r.code,
      signal: r.signal,
      willRestart,
      restarts: entry.restarts,
      output: dead.output(),
    });
    if (!willRestart)
      return giveUp(`${exit} again within ${Math.round(this.options.stableMs / 1000)} s of being restarted`);
    for (;;) {
      await this.pause(Math.min(backoff.maxMs, backoff.initialMs * 2 ** entry.failuresInRow));
      if (this.stopping) return;
      let proc: ManagedProcess;
      try {
        proc = await this.launch(entry.child);
      } catch (err) {
        entry.failuresInRow++;
        const message = (err as Error).message;
        this.emit({
          kind: 'restart-failed',
          service: name,
          attempt: entry.failuresInRow,
          error: message.split('\n')[0],
        });
        if (entry.failuresInRow > maxRestarts) {
          const error = `${name} ${exit} and could not be restarted (${entry.failuresInRow} attempts in a row): ${message.split('\n')[0]}. Its last lines:\n${lastLines(message.split('\n').slice(1).join('\n') || entry.current.output())}`;
          this.emit({ kind: 'gave-up', service: name, restarts: entry.restarts, error });
          this.rejectFailure(new SupervisorError(name, error));
          return;
        }
        continue;
      }
      if (this.stopping) {
        await proc.stop(5000);
        return;
      }
      entry.current = proc;
      entry.upSince = Date.now();
      entry.restarts++;
      this.emit({
        kind: 'restarted',
        service: name,
        pid: proc.pid,
        previousPid: dead.pid,
        downMs: entry.upSince - downSince,
        restarts: entry.restarts,
      });
      this.watch(entry, proc);
      return;
    }
  }
}
