/**
 * stack.json: what an embedded stack records about itself in its run folder while it runs — the
 * `offshoot run` process that owns it, the addresses of its services once they answer, and the pid of
 * every child as last (re)started. It is written before the first child starts and rewritten at every
 * spawn, so whoever comes after an owner that was killed (kill -9, a lost node) can stop what it left
 * running, and `offshoot status` / `offshoot watch` can find the services of a run in progress.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const STACK_FILE = 'stack.json';

export interface StackRecord {
  /** The process that owns the stack (`offshoot run`). */
  pid: number;
  /** host:port of the Temporal frontend, once it answers. */
  temporal?: string;
  /** NATS URL, once it answers. */
  nats?: string;
  /** host:port of the teacher-logit service, once it listens. */
  teacher?: string;
  /** Every child by component (temporal, nats, teacher, orchestrate, ...): its current pid. */
  processes: Record<string, number>;
}

export function stackFile(runDir: string): string {
  return path.join(runDir, STACK_FILE);
}

/** The record in a run folder, or undefined when there is none (or it is unreadable: a torn write by a tool other than offshoot). */
export function readStackRecord(runDir: string): StackRecord | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(stackFile(runDir), 'utf8'));
  } catch {
    return undefined;
  }
  const r = raw as Partial<StackRecord>;
  if (!r || typeof r !== 'object' || !Number.isSafeInteger(r.pid)) return undefined;
  return { ...r, pid: r.pid!, processes: r.processes && typeof r.processes === 'object' ? r.processes : {} };
}

/** Written through a rename, so a reader (or an owner killed mid-write) never sees half of it. */
export function writeStackRecord(runDir: string, record: StackRecord): void {
  const file = stackFile(runDir);
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(record)}\n`);
  fs.renameSync(tmp, file);
}

export function removeStackRecord(runDir: string): void {
  fs.rmSync(stackFile(runDir), { force: true });
}

/** Whether a process is alive; a killed orphan nobody reaps stays a zombie, which counts as gone. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** The command line of a live process where /proc shows it, else '' (other systems, or it is gone). */
function commandOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

/**
 * A live process that is one of ours: pids are reused, so where /proc shows command lines, only an
 * offshoot, Temporal or nats-server command line counts.
 */
export function ownProcessAlive(pid: number): boolean {
  return (
    pidAlive(pid) &&
    (!fs.existsSync('/proc') || /services\/cli\/main|offshoot|temporal|nats-server/.test(commandOf(pid)))
  );
}

/** The owner of the stack recorded in a run folder when it is alive (then its services may be asked). */
export function liveStack(runDir: string): StackRecord | undefined {
  const record = readStackRecord(runDir);
  return record && ownProcessAlive(record.pid) ? record : undefined;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Before an embedded stack starts in `runDir`: refuses when another live process owns it, and stops
 * what an owner that was killed left running — a second Temporal on the same database, workers still
 * taking tasks. Children get SIGTERM (workers drain: a running segment checkpoints) and SIGKILL after
 * `graceMs`. Resolves to the names and pids it stopped.
 */
export async function reapOrphans(
  runDir: string,
  options: { run: string; graceMs: number; log?: (line: string) => void },
): Promise<[string, number][]> {
  const record = readStackRecord(runDir);
  if (!record) {
    removeStackRecord(runDir);
    return [];
  }
  if (record.pid !== process.pid && ownProcessAlive(record.pid)) {
    throw new Error(
      `run ${options.run}: another \`offshoot run\` (pid ${record.pid}) is running it; follow it with \`offshoot watch ${options.run}\` or stop it (Ctrl-C, or kill ${record.pid}) first`,
    );
  }
  const left = Object.entries(record.processes).filter(([, pid]) => pid !== process.pid && ownProcessAlive(pid));
  if (left.length > 0) {
    options.log?.(
      `run ${options.run}: stopping what an \`offshoot run\` that was killed (pid ${record.pid}) left running: ${left.map(([n, pid]) => `${n} (${pid})`).join(', ')}`,
    );
    const signal = (sig: NodeJS.Signals) => {
      for (const [, pid] of left) {
        try {
          process.kill(pid, sig);
        } catch {
          // already gone
        }
      }
    };
    signal('SIGTERM');
    const deadline = Date.now() + options.graceMs;
    while (Date.now() < deadline && left.some(([, pid]) => pidAlive(pid))) await sleep(200);
    signal('SIGKILL');
    const killDeadline = Date.now() + 10_000;
    while (Date.now() < killDeadline && left.some(([, pid]) => pidAlive(pid))) await sleep(100);
  }
  removeStackRecord(runDir);
  return left;
}
