/**
 * `offshoot watch [RUN]`: follows a run's events. History first (a late watcher misses nothing), then
 * live events as they are stored.
 *
 * - On a terminal: a live view redrawn in place: progress bars with ETA for generations, evaluations
 *   and pretraining steps, tokens/s, best so far, workers and their activity, the last errors.
 * - In a pipe (or --plain): one line per event; --json: the events themselves, one JSON object a line.
 *
 * Ends when the run has finished and every stored event is printed (exit 0), at --no-follow once caught
 * up, or at SIGINT.
 */
import type { Writable } from 'node:stream';

import type { NatsConnection } from '@nats-io/transport-node';

import { checkRunId } from './events.js';
import { fmtLoss, formatDuration, formatEventLine, humanCount } from './format.js';
import { connectNats, getRunStatus, listRuns, openRunEvents } from './nats.js';
import { type RunState, type RunStatus, applyEvent, initialRunState } from './state.js';

export type WatchMode = 'auto' | 'tty' | 'plain' | 'json';

export interface WatchOptions {
  /** NATS server(s); default env OFFSHOOT_NATS_URL, else nats://127.0.0.1:4222. */
  url?: string;
  /** Default: the most recently updated run. */
  run?: string;
  /** Keep following live events until the run finishes (default true); false: stop once caught up. */
  follow?: boolean;
  /** Wait for a run that has no events yet instead of failing. */
  wait?: boolean;
  mode?: WatchMode;
  out?: Writable & { isTTY?: boolean; columns?: number };
  /** Messages for people (which run, waiting): default stderr. */
  info?: (line: string) => void;
  signal?: AbortSignal;
}

export interface WatchResult {
  run: string;
  /** The run finished (a run.finished event was seen). */
  finished: boolean;
  events: number;
  state: RunState;
}

export class WatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WatchError';
  }
}

// ---- the terminal view -----------------------------------------------------------------------------

function bar(done: number, total: number | undefined, width = 24): string {
  if (!total || total <= 0) return ' '.repeat(width);
  const frac = Math.max(0, Math.min(1, done / total));
  const full = Math.round(frac * width);
  return '█'.repeat(full) + '░'.repeat(width - full);
}

/** ETA from a rate measured between two times (ms) for `done` units out of `total`. */
function eta(
  done: number,
  total: number | undefined,
  fromMs: number | undefined,
  toMs: number | undefined,
  now: number,
): string {
  if (!total || done >= total || !fromMs || !toMs || done <= 0 || toMs <= fromMs) return '';
  const rate = done / (toMs - fromMs); // units per ms
  // Time since the last unit counts against the rate too (a stalled run's ETA grows).
  const remainingMs = (total - done) / rate - Math.max(0, now - toMs);
  return `ETA ${formatDuration(Math.max(remainingMs, 0) / 1000)}`;
}

function progressLine(label: string, done: number, total: number | undefined, extra: string): string {
  const pct = total ? `${String(Math.floor((100 * Math.min(done, total)) / total)).padStart(3)}%` : '    ';
  const count = total ? `${done}/${total}` : `${done}`;
  return `${label.padEnd(12)} ${bar(done, total)} ${pct} ${count.padEnd(11)} ${extra}`.trimEnd();
}

function evaluationsTotal(state: RunState): number | undefined {
  const s = state.status;
  if (s.budget) return s.budget;
  if (s.generations && state.populationSize) return s.generations * state.populationSize;
  return undefined;
}

function ago(iso: string, now: number): string {
  return formatDuration((now - Date.parse(iso)) / 1000);
}

function clock(iso: string): string {
  return iso.slice(11, 19);
}

/** The lines of the live view. */
export function renderView(state: RunState, now: number = Date.now()): string[] {
  const s: RunStatus = state.status;
  const lines: string[] = [];
  const live = s.state === 'running';
  const elapsedEnd = s.finishedAt ? Date.parse(s.finishedAt) : now;
  const elapsed = state.startedAt ? formatDuration((elapsedEnd - state.startedAt) / 1000) : '?';
  lines.push(`offshoot run ${state.run} · ${s.mode ?? '?'} · ${s.state} · ${elapsed} · ${s.events} events`);

  const searching = s.mode !== 'pretrain' && (s.generations || s.budget || s.evaluated > 0);
  if (searching) {
    const gensEnd = state.generationTimes.size ? Math.max(...state.generationTimes.values()) : undefined;
    lines.push(
      progressLine(
        'generations',
        s.generationsDone,
        s.generations,
        live ? eta(s.generationsDone, s.generations, state.startedAt, gensEnd, now) : '',
      ),
    );
    const total = evaluationsTotal(state);
    const times = state.evaluationTimes;
    const failed = s.failed ? `${s.failed} failed ` : '';
    lines.push(
      progressLine(
        'evaluations',
        s.evaluated,
        total,
        `${failed}${live ? eta(s.evaluated, total, state.startedAt, times[times.length - 1], now) : ''}`.trim(),
      ),
    );
    if (s.best)
      lines.push(
        `${'best so far'.padEnd(12)} ${fmtLoss(s.best.fitness)}  #${s.best.candidate}  ${humanCount(s.best.params)} params`,
      );
  }
  const series = [...state.series.values()].sort((a, b) =>
    a.name === 'student' ? -1 : b.name === 'student' ? 1 : a.name.localeCompare(b.name),
  );
  const studentPlan = s.pretrain?.steps;
  if (s.mode === 'pretrain' || s.mode === 'pipeline' || series.length) {
    if (!series.length) lines.push(progressLine('pretraining', 0, studentPlan, 'not started'));
    for (const ser of series) {
      const total = ser.steps ?? (ser.name === 'student' ? studentPlan : undefined);
      const first = ser.train[0];
      const last = ser.train[ser.train.length - 1];
      const rate = first && last && last.time > first.time ? (last.step - first.step) / (last.time - first.time) : 0;
      const etaText =
        live && total && rate > 0 && last
          ? `ETA ${formatDuration(Math.max(0, (total - ser.step) / rate - (now - last.time)) / 1000)}`
          : '';
      const label = ser.name === 'student' ? 'pretraining' : ser.name.slice(0, 12);
      lines.push(progressLine(label, ser.step, total, etaText));
      const lastVal = ser.val[ser.val.length - 1];
      const parts = [
        `loss ${fmtLoss(last?.value)}`,
        `val ${fmtLoss(lastVal?.value)}${lastVal ? ` (ppl ${Math.exp(lastVal.value).toFixed(2)})` : ''}`,
      ];
      if (ser.tokensPerSecond !== undefined) parts.push(`${humanCount(ser.tokensPerSecond)} tokens/s`);
      if (ser.tokens !== undefined) parts.push(`${humanCount(ser.tokens)} tokens`);
      if (ser.lastCheckpoint) parts.push(`checkpoint @${ser.lastCheckpoint.step}`);
      lines.push(`${''.padEnd(12)} ${parts.join(' · ')}`);
    }
  }

  const workers = [...state.workers.values()].sort((a, b) => a.worker.localeCompare(b.worker));
  workers.forEach((w, i) => {
    const what =
      w.state === 'busy'
        ? `${w.activity ?? '?'}${w.detail ? ` ${w.detail}` : ''}${w.attempt && w.attempt > 1 ? ` (attempt ${w.attempt})` : ''} for ${ago(w.since, now)}`
        : `${w.state}${w.activity ? ` after ${w.activity}` : ''}`;
    lines.push(`${(i === 0 ? 'workers' : '').padEnd(12)} ${w.worker}  ${what}`);
  });
  const errors = state.errors.slice(-5);
  errors.forEach((e, i) => {
    const where = [e.activity, e.attempt ? `attempt ${e.attempt}` : '', e.worker ? `on ${e.worker}` : '']
      .filter(Boolean)
      .join(' ');
    lines.push(
      `${(i === 0 ? 'last errors' : '').padEnd(12)} ${clock(e.time)} ${where ? `${where}: ` : ''}${e.error.replace(/\s+/g, ' ')}`,
    );
  });
  if (s.state !== 'running') lines.push(`run ${s.state}${s.error ? `: ${s.error}` : ''}`);
  return lines;
}

/** Redraws a block of lines in place on a terminal. */
class Screen {
  private shown = 0;

  constructor(private readonly out: Writable & { columns?: number }) {}

  draw(lines: string[]): void {
    const width = Math.max(20, (this.out.columns ?? 100) - 1);
    // Cut to the width so no line wraps (the cursor arithmetic counts lines).
    const cut = lines.map((l) => ([...l].length > width ? `${[...l].slice(0, width - 1).join('')}…` : l));
    const up = this.shown > 0 ? `\x1b[${this.shown}F` : '';
    this.out.write(`${up}\x1b[J${cut.join('\n')}\n`);
    this.shown = cut.length;
  }
}

// ---- the watch loop ---------------------------------------------------------------------------------

async function pickRun(nc: NatsConnection, info: (line: string) => void): Promise<string> {
  const runs = await listRuns(nc);
  if (!runs.length) throw new WatchError('no runs yet (the status bucket is empty); name one: offshoot watch RUN');
  const active = runs.filter((r) => r.state === 'running');
  const pick = active[0] ?? runs[0];
  info(
    `watching run ${pick.run} (${pick.state}; ${runs.length} run${runs.length === 1 ? '' : 's'} known, see offshoot watch --list)`,
  );
  return pick.run;
}

/** One line per known run (offshoot watch --list). */
export function formatRunList(runs: RunStatus[]): string[] {
  return runs.map((r) => {
    const parts = [r.run.padEnd(24), r.state.padEnd(9), (r.mode ?? '?').padEnd(8), `updated ${r.updatedAt}`];
    if (r.generations || r.evaluated)
      parts.push(`gen ${r.generationsDone}${r.generations ? `/${r.generations}` : ''}, ${r.evaluated} evaluated`);
    if (r.best) parts.push(`best ${fmtLoss(r.best.fitness)}`);
    if (r.pretrain) parts.push(`step ${r.pretrain.step}${r.pretrain.steps ? `/${r.pretrain.steps}` : ''}`);
    return parts.join('  ');
  });
}

export async function listRunsText(url?: string): Promise<string[]> {
  const nc = await connectNats(url);
  try {
    return formatRunList(await listRuns(nc));
  } finally {
    await nc.close();
  }
}

export async function watchRun(options: WatchOptions = {}): Promise<WatchResult> {
  const out = options.out ?? process.stdout;
  const info = options.info ?? ((line: string) => void process.stderr.write(`${line}\n`));
  const mode: Exclude<WatchMode, 'auto'> =
    !options.mode || options.mode === 'auto' ? (out.isTTY ? 'tty' : 'plain') : options.mode;
  const follow = options.follow ?? true;
  const nc = await connectNats(options.url);
  const screen = new Screen(out);
  let timer: NodeJS.Timeout | undefined;
  let reader: Awaited<ReturnType<typeof openRunEvents>> | undefined;
  const onAbort = (): void => reader?.stop();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  // A closed pipe (watch RUN | head) ends the watch quietly.
  let broken = false;
  const onOutError = (err: NodeJS.ErrnoException): void => {
    broken = true;
    reader?.stop();
    if (err.code !== 'EPIPE') info(`watch: output: ${err.message}`);
  };
  out.on('error', onOutError);
  try {
    const run = options.run ? checkRunId(options.run) : await pickRun(nc, info);
    const state = initialRunState(run);
    reader = await openRunEvents(nc, run);
    if (options.signal?.aborted) reader.stop();
    let caughtUp = reader.initialPending === 0;
    if (caughtUp) {
      const known = await getRunStatus(nc, run);
      if (!known && !options.wait)
        throw new WatchError(
          `no run ${JSON.stringify(run)}: it has no events (see offshoot watch --list; --wait to wait for it)`,
        );
      if (!follow) return { run, finished: known ? known.state !== 'running' : false, events: 0, state };
      if (!known) info(`waiting for run ${run} to publish events…`);
    }
    let finished = false;
    let events = 0;
    let dirty = true;
    const redraw = (): void => {
      if (mode === 'tty' && caughtUp && dirty && !broken) {
        screen.draw(renderView(state));
        dirty = false;
      }
    };
    if (mode === 'tty') {
      // Redraw at most 10 times a second, and every second so ETAs and ages tick.
      let ticks = 0;
      timer = setInterval(() => {
        if (++ticks % 10 === 0) dirty = true;
        redraw();
      }, 100);
      if (caughtUp) redraw();
    }
    for await (const stored of reader.events) {
      if (broken) break;
      events += 1;
      if (stored.event) {
        applyEvent(state, stored.event);
        if (stored.event.kind === 'run.finished') finished = true;
        if (mode === 'plain') out.write(`${formatEventLine(stored.event)}\n`);
        else if (mode === 'json') out.write(`${JSON.stringify(stored.event)}\n`);
      } else if (mode !== 'tty') {
        out.write(
          mode === 'json'
            ? `${JSON.stringify({ seq: stored.seq, subject: stored.subject, skipped: stored.error })}\n`
            : `(event ${stored.seq} on ${stored.subject} skipped: ${stored.error})\n`,
        );
      }
      dirty = true;
      if (stored.pending === 0) {
        caughtUp = true;
        redraw();
        if (finished || !follow) break;
      }
    }
    if (mode === 'tty' && !broken) {
      dirty = true;
      caughtUp = true;
      redraw();
    }
    return { run, finished, events, state };
  } finally {
    out.off('error', onOutError);
    if (timer) clearInterval(timer);
    options.signal?.removeEventListener('abort', onAbort);
    reader?.stop();
    await nc.close().catch(() => undefined);
  }
}
