/** Text for people: one line per event (`offshoot watch` in a pipe), numbers, durations. */
import type { ProgressEvent } from './events.js';

/** 68.4M, 1.21B, 812k, 950. */
export function humanCount(n: number): string {
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toPrecision(3)}B`;
  if (a >= 1e6) return `${(n / 1e6).toPrecision(3)}M`;
  if (a >= 1e3) return `${(n / 1e3).toPrecision(3)}k`;
  return String(Math.round(n));
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m${String(sec).padStart(2, '0')}s`;
  return `${sec}s`;
}

export function fmtLoss(x: number | null | undefined): string {
  return x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(4);
}

function oneLine(s: string, max = 200): string {
  const flat = s.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

function by(e: ProgressEvent): string {
  return e.source?.worker ? ` [${e.source.worker}]` : '';
}

/** The event as one line, without its time and run. */
export function describeEvent(e: ProgressEvent): string {
  switch (e.kind) {
    case 'run.started': {
      const parts: string[] = [e.mode];
      if (e.generations) parts.push(`${e.generations} generations${e.populationSize ? ` x ${e.populationSize}` : ''}`);
      else if (e.populationSize) parts.push(`population ${e.populationSize}`);
      if (e.budget) parts.push(`budget ${e.budget} evaluations`);
      if (e.pretrainSteps) parts.push(`pretrain ${e.pretrainSteps} steps`);
      if (e.bin) parts.push(`bin ${humanCount(e.bin.lo)}-${humanCount(e.bin.hi)} params`);
      if (e.baselines?.length) parts.push(`baselines ${e.baselines.join(', ')}`);
      return `run started: ${parts.join(', ')}${by(e)}`;
    }
    case 'generation.finished': {
      const of = e.generations ? `/${e.generations}` : '';
      const best = e.best
        ? `; best ${fmtLoss(e.best.fitness)} (#${e.best.candidate}, ${humanCount(e.best.params)} params)`
        : '';
      return `generation ${e.generation + 1}${of} finished: ${e.evaluated} evaluated, ${e.failed} failed${best}`;
    }
    case 'candidate.evaluated': {
      const took = e.durationMs !== undefined ? `, ${formatDuration(e.durationMs / 1000)}` : '';
      const result =
        e.fitness === null ? `FAILED${e.error ? `: ${oneLine(e.error)}` : ''}` : `fitness ${fmtLoss(e.fitness)}`;
      return `candidate #${e.candidate} (gen ${e.generation}): ${result}, ${humanCount(e.params)} params${took}${by(e)}`;
    }
    case 'pretrain.step': {
      const of = e.steps ? `/${e.steps}` : '';
      const rate = e.tokensPerSecond !== undefined ? `, ${humanCount(e.tokensPerSecond)} tok/s` : '';
      const tokens = e.tokens !== undefined ? `, ${humanCount(e.tokens)} tokens` : '';
      return `pretrain ${e.series} step ${e.step}${of}: loss ${fmtLoss(e.loss)}${tokens}${rate}${by(e)}`;
    }
    case 'pretrain.eval':
      return `pretrain ${e.series} eval at step ${e.step}: val loss ${fmtLoss(e.valLoss)} (ppl ${Math.exp(e.valLoss).toFixed(2)})${by(e)}`;
    case 'checkpoint.saved':
      return `checkpoint ${e.series} step ${e.step}: ${e.uri}${e.hash ? ` (${e.hash.slice(0, 12)})` : ''}${by(e)}`;
    case 'activity.started':
      return `activity ${e.activity} started (attempt ${e.attempt})${e.detail ? `: ${e.detail}` : ''}${by(e)}`;
    case 'activity.completed':
      return `activity ${e.activity} completed (attempt ${e.attempt}, ${formatDuration(e.durationMs / 1000)})${e.detail ? `: ${e.detail}` : ''}${by(e)}`;
    case 'activity.retried':
      return `activity ${e.activity} retried (attempt ${e.attempt})${e.detail ? `: ${e.detail}` : ''}${e.error ? `; previous attempt: ${oneLine(e.error)}` : ''}${by(e)}`;
    case 'activity.failed':
      return `activity ${e.activity} FAILED (attempt ${e.attempt}${e.willRetry === false ? ', final' : e.willRetry ? ', will retry' : ''})${e.detail ? ` ${e.detail}` : ''}: ${oneLine(e.error)}${by(e)}`;
    case 'service.exited':
      return `${e.service} (pid ${e.pid}) exited (${e.signal ? `signal ${e.signal}` : `code ${e.code}`})${e.willRestart ? '; restarting it' : `; not restarted${e.error ? `: ${oneLine(e.error)}` : ''}`}`;
    case 'service.restarted':
      return `${e.service} restarted (pid ${e.pid}, down ${formatDuration(e.downMs / 1000)}, restart ${e.restarts})`;
    case 'run.finished': {
      const best = e.best
        ? `; best ${fmtLoss(e.best.fitness)} (#${e.best.candidate}, ${humanCount(e.best.params)} params)`
        : '';
      return `run ${e.status}${e.error ? `: ${oneLine(e.error)}` : ''}${best}`;
    }
  }
}

/** `TIME RUN KIND: description`, the plain-pipe line of `offshoot watch`. */
export function formatEventLine(e: ProgressEvent): string {
  return `${e.time} ${e.run} ${describeEvent(e)}`;
}
