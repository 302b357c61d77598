/**
 * Progress events against a real nats-server (JetStream, file storage): late watchers see the whole
 * history in order, retried publishes are stored once, a nats-server restart mid-run loses nothing,
 * the KV status follows the events.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  NatsProgressPublisher,
  type ProgressEvent,
  type ProgressEventInput,
  type StoredEvent,
  connectNats,
  getRunStatus,
  listRuns,
  openRunEvents,
} from '../services/progress/index.js';
import { type NatsServer, freePort, startNats } from './helpers/nats.js';

let nats: NatsServer;

beforeAll(async () => {
  nats = await startNats();
});

afterAll(async () => {
  await nats?.stop();
});

/** The i-th event of a synthetic search: candidates, and a generation summary after every 10th. */
function searchEvent(run: string, i: number): ProgressEventInput {
  const generation = Math.floor(i / 10);
  if (i % 10 === 9) return { run, kind: 'generation.finished', generation, evaluated: 9 };
  return { run, kind: 'candidate.evaluated', generation, candidate: i, params: 1000 + i, fitness: 5 - i / 100 };
}

/** Reads events of `run` until `until` says stop (or the timeout passes). */
async function collect(
  url: string,
  run: string,
  until: (events: StoredEvent[]) => boolean,
  timeoutMs = 30_000,
): Promise<StoredEvent[]> {
  const nc = await connectNats(url);
  const reader = await openRunEvents(nc, run);
  const got: StoredEvent[] = [];
  const timer = setTimeout(() => reader.stop(), timeoutMs);
  try {
    for await (const e of reader.events) {
      got.push(e);
      if (until(got)) break;
    }
  } finally {
    clearTimeout(timer);
    reader.stop();
    await nc.close();
  }
  return got;
}

describe('progress over NATS', () => {
  it('a watcher that joins after 50 events sees all of them, in order, then the live ones', async () => {
    const run = 'late-joiner';
    const pub = new NatsProgressPublisher({ url: nats.url, worker: 'w1' });
    const published: ProgressEvent[] = [];
    for (let i = 0; i < 50; i++) published.push(await pub.publish(searchEvent(run, i)));

    // Join late; then 20 more events arrive while watching.
    const watching = collect(nats.url, run, (got) => got.length >= 70);
    await new Promise((r) => setTimeout(r, 200));
    for (let i = 50; i < 70; i++) published.push(await pub.publish(searchEvent(run, i)));
    const seen = await watching;
    await pub.close();

    expect(seen.map((s) => s.event?.id)).toEqual(published.map((e) => e.id));
    expect(seen.map((s) => s.event)).toEqual(published);
    const seqs = seen.map((s) => s.seq);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
    expect(seen[49].event!.kind).toBe('generation.finished');
  });

  it('a repeated publish (same message id) is stored once; the KV status counts it once', async () => {
    const run = 'dedupe';
    const pub = new NatsProgressPublisher({ url: nats.url, worker: 'w1' });
    const e: ProgressEventInput = {
      run,
      kind: 'candidate.evaluated',
      generation: 0,
      candidate: 7,
      params: 123,
      fitness: 2.5,
    };
    await pub.publish(e);
    await pub.publish(e); // a retried activity reporting the same candidate again
    await pub.publish({ ...e, candidate: 8, fitness: 2.0 });
    await pub.close();
    expect(pub.stats).toMatchObject({ stored: 2, duplicates: 1, dropped: 0 });

    const seen = await collect(nats.url, run, (got) => got.length >= 2 && got[got.length - 1].pending === 0);
    expect(seen.map((s) => s.event!.id)).toEqual(['dedupe.cand.0.7', 'dedupe.cand.0.8']);

    const nc = await connectNats(nats.url);
    const status = await getRunStatus(nc, run);
    // The duplicate was acknowledged as such; the status applied each fact once.
    expect(status).toMatchObject({ run, evaluated: 2, failed: 0, best: { candidate: 8, fitness: 2.0, params: 123 } });
    const runs = await listRuns(nc);
    expect(runs.map((r) => r.run)).toContain(run);
    await nc.close();
  });

  it('restarting nats-server mid-run loses no event (publishers retry; JetStream keeps history on disk)', async () => {
    const run = 'restart';
    const total = 300;
    const log: string[] = [];
    const pub = new NatsProgressPublisher({ url: nats.url, worker: 'w1', ackTimeoutMs: 1000, log: (l) => log.push(l) });
    // A watcher connected the whole time.
    const live = collect(nats.url, run, (got) => got.filter((g) => g.event).length >= total + 1, 90_000);

    const published: Promise<ProgressEvent>[] = [];
    const restarts: Promise<void>[] = [];
    const t0 = Date.now();
    for (let i = 0; i < total; i++) {
      // Not awaited: the work goes on while NATS is away; the publisher queues and retries.
      published.push(pub.publish(searchEvent(run, i)));
      // Restart the server (graceful, then kill -9) while events keep coming.
      if (i === 100) restarts.push(nats.restart({ downMs: 1500 }));
      if (i === 200) {
        await restarts[0];
        restarts.push(nats.restart({ kill: true, downMs: 1000 }));
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    await Promise.all(restarts);
    published.push(pub.publish({ run, kind: 'run.finished', status: 'completed' }));
    const events = await Promise.all(published);
    expect(await pub.flush(60_000)).toBe(true);
    await pub.close();
    const elapsed = Date.now() - t0;

    const seenLive = (await live).filter((s) => s.event).map((s) => s.event!.id);
    const seenLate = (await collect(nats.url, run, (got) => got.length >= total + 1)).map((s) => s.event!.id);
    const ids = events.map((e) => e.id);
    expect(new Set(ids).size).toBe(total + 1);
    expect(seenLate).toEqual(ids);
    expect(seenLive).toEqual(ids);
    expect(pub.stats.retries).toBeGreaterThan(0);
    expect(nats.log().match(/Server is ready/g)).toHaveLength(3);
    expect(pub.stats.dropped).toBe(0);

    const nc = await connectNats(nats.url);
    const status = await getRunStatus(nc, run);
    await nc.close();
    expect(status).toMatchObject({ state: 'completed', evaluated: 270, generationsDone: 30 });
    console.log(
      `restart test: ${total + 1} events in ${elapsed} ms through 2 restarts; publisher stats ${JSON.stringify(pub.stats)}`,
    );
  }, 120_000);

  it('a publisher started before NATS stores its events once the server comes up; closing without NATS does not hang', async () => {
    const port = await freePort();
    const pub = new NatsProgressPublisher({ url: `nats://127.0.0.1:${port}`, worker: 'early' });
    const events = [0, 1, 2].map((i) =>
      pub.publish({ run: 'early', kind: 'pretrain.step', step: i, loss: 3 - i / 10 }),
    );
    await new Promise((r) => setTimeout(r, 1000));
    const late = await startNats({ port });
    try {
      expect(await pub.flush(20_000)).toBe(true);
      expect((await Promise.all(events)).map((e) => e.id)).toEqual([
        'early.step.student.0',
        'early.step.student.1',
        'early.step.student.2',
      ]);
      await pub.close();
      const seen = await collect(late.url, 'early', (got) => got.length >= 3);
      expect(seen.map((s) => (s.event as { step?: number }).step)).toEqual([0, 1, 2]);
    } finally {
      await late.stop();
    }

    // Nothing listens: close() gives up on the queued event within its timeout and rejects its promise.
    const orphan = new NatsProgressPublisher({ url: `nats://127.0.0.1:${await freePort()}` });
    const lost = orphan.publish({ run: 'orphan', kind: 'run.finished', status: 'completed' });
    const t0 = Date.now();
    await orphan.close(500);
    expect(Date.now() - t0).toBeLessThan(6000);
    await expect(lost).rejects.toThrow(/closed before run.finished orphan.run.finished was stored/);
    expect(orphan.stats.dropped).toBe(1);
  }, 60_000);
});
