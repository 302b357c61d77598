/**
 * `offshoot watch` as a child process against a real nats-server: a finished run prints its whole
 * history and exits 0; a watcher that joins after 50 events sees them all, in order, then the live
 * ones, and exits when the run finishes; --json gives the events themselves; unknown runs fail.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { NatsProgressPublisher, type ProgressEvent, formatEventLine } from '../services/progress/index.js';
import { type NatsServer, startNats } from './helpers/nats.js';
import { startOffshoot } from './helpers/offshoot-process.js';
import { simulatedRun } from './helpers/progress-sim.js';

let nats: NatsServer;
let pub: NatsProgressPublisher;

beforeAll(async () => {
  nats = await startNats();
  pub = new NatsProgressPublisher({ url: nats.url });
});

afterAll(async () => {
  await pub?.close();
  await nats?.stop();
});

async function publishAll(events: Parameters<NatsProgressPublisher['publish']>[0][]): Promise<ProgressEvent[]> {
  const out = events.map((e) => pub.publish(e));
  return Promise.all(out);
}

describe('offshoot watch', () => {
  it('on a finished run prints its whole history, one line per event in a pipe, and exits 0', async () => {
    const run = 'finished-run';
    const sim = simulatedRun({ run, steps: 60 });
    const events = await publishAll([
      ...sim.events,
      { run, kind: 'run.finished', status: 'completed', best: { candidate: 3, params: 7e7, fitness: 3.01 } },
    ]);
    expect(events.length).toBeGreaterThan(200);

    const watch = startOffshoot(['watch', run, '--nats', nats.url]);
    const { code } = await watch.exited;
    expect(watch.stderr()).toBe('');
    expect(code).toBe(0);
    expect(watch.lines).toEqual(events.map(formatEventLine));
    expect(watch.lines[watch.lines.length - 1]).toMatch(
      /finished-run run completed; best 3\.0100 \(#3, 70\.0M params\)$/,
    );

    // --json: the stored events themselves, in order.
    const json = startOffshoot(['watch', run, '--json'], { OFFSHOOT_NATS_URL: nats.url });
    expect((await json.exited).code).toBe(0);
    expect(json.lines.map((l) => JSON.parse(l) as ProgressEvent)).toEqual(events);

    // The live view (forced without a terminal) ends with the final frame.
    const tty = startOffshoot(['watch', run, '--tty', '--nats', nats.url]);
    expect((await tty.exited).code).toBe(0);
    const text = tty.lines.join('\n');
    expect(text).toContain('offshoot run finished-run · pipeline · completed');
    expect(text).toMatch(/generations +█+ 100% 4\/4/);
    expect(text).toMatch(/evaluations +█+ 100% 32\/32 +1 failed/);
    expect(text).toMatch(/pretraining +█+ 100% 60\/60/);
    expect(text).toMatch(/random-init +█+ 100% 60\/60/);
    expect(text).toMatch(/tokens\/s/);
    expect(text).toMatch(/last errors .*teacher service unavailable/);
    expect(text).toContain('run completed');
  }, 60_000);

  it('a watcher joining after 50 events sees all of them in order, then the live ones, and exits 0 when the run finishes', async () => {
    const run = 'joins-late';
    const sim = simulatedRun({ run, steps: 20 });
    const first = await publishAll(sim.events.slice(0, 50));

    const watch = startOffshoot(['watch', run, '--nats', nats.url]);
    await watch.waitFor((lines) => lines.length >= 50);
    expect(watch.lines).toEqual(first.map(formatEventLine));
    // Still following: nothing more yet, and it has not exited.
    expect(watch.child.exitCode).toBeNull();

    const rest = [];
    for (const e of sim.events.slice(50, 80)) rest.push(await pub.publish(e));
    await watch.waitFor((lines) => lines.length >= 80);
    rest.push(await pub.publish({ run, kind: 'run.finished', status: 'failed', error: 'cancelled by test' }));
    const { code } = await watch.exited;
    expect(code).toBe(0);
    expect(watch.lines).toEqual([...first, ...rest].map(formatEventLine));
  }, 60_000);

  it('--no-follow prints a running run so far and exits 0; an unknown run exits 1 naming it; --list shows runs', async () => {
    const run = 'in-progress';
    const sim = simulatedRun({ run, steps: 10 });
    const some = await publishAll(sim.events.slice(0, 30));
    const now = startOffshoot(['watch', run, '--no-follow', '--nats', nats.url]);
    expect((await now.exited).code).toBe(0);
    expect(now.lines).toEqual(some.map(formatEventLine));

    const missing = startOffshoot(['watch', 'no-such-run', '--nats', nats.url]);
    expect((await missing.exited).code).toBe(1);
    expect(missing.stderr()).toContain('no run "no-such-run"');

    const list = startOffshoot(['watch', '--list', '--nats', nats.url]);
    expect((await list.exited).code).toBe(0);
    expect(list.lines.find((l) => l.startsWith('in-progress '))).toMatch(/running +pipeline/);

    const bad = startOffshoot(['watch', 'bad.run', '--nats', nats.url]);
    expect((await bad.exited).code).toBe(1);
    expect(bad.stderr()).toContain('run id "bad.run"');
  }, 60_000);

  it('--wait waits for a run that has not published yet', async () => {
    const run = 'not-yet';
    const watch = startOffshoot(['watch', run, '--wait', '--nats', nats.url]);
    await new Promise((r) => setTimeout(r, 2500));
    expect(watch.child.exitCode).toBeNull();
    const events = await publishAll([
      { run, kind: 'run.started', mode: 'search', generations: 1, populationSize: 1 },
      { run, kind: 'candidate.evaluated', generation: 0, candidate: 0, params: 10, fitness: 1.5 },
      { run, kind: 'run.finished', status: 'completed' },
    ]);
    expect((await watch.exited).code).toBe(0);
    expect(watch.lines).toEqual(events.map(formatEventLine));
  }, 60_000);
});
