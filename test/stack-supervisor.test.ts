/**
 * The embedded stack's supervisor (services/stack) against real servers: a nats-server and a Temporal
 * dev server killed with SIGKILL come back on the same port and data, with what they stored before;
 * each exit and restart is reported; a child that cannot be restarted makes the supervisor give up,
 * naming it and its last lines; stopping it while a child is still coming up stops that child too.
 * And stack.json: what a killed owner left running is stopped, a live owner is refused.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { NatsProgressPublisher, connectNats, openRunEvents } from '../services/progress/index.js';
import {
  type NatsServer,
  Supervisor,
  SupervisorError,
  type SupervisorEvent,
  type TemporalServer,
  pidAlive,
  readStackRecord,
  reapOrphans,
  startNats,
  startTemporal,
  writeStackRecord,
} from '../services/stack/index.js';
import { connectClient } from '../services/worker/index.js';
import { waitUntil } from './helpers/orchestration.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-supervisor-'));
const supervisors: Supervisor[] = [];

function supervisor(options: ConstructorParameters<typeof Supervisor>[0] = {}): {
  sup: Supervisor;
  events: SupervisorEvent[];
  spawned: [string, number][];
} {
  const events: SupervisorEvent[] = [];
  const spawned: [string, number][] = [];
  const sup = new Supervisor({
    ...options,
    onEvent: (e) => events.push(e),
    onSpawn: (name, pid) => spawned.push([name, pid]),
  });
  supervisors.push(sup);
  return { sup, events, spawned };
}

/** NATS under supervision: restarted on its first port and store. */
function natsChild(storeDir: string) {
  let port: number | undefined;
  return {
    name: 'nats',
    start: async (onSpawn: (pid: number) => void): Promise<NatsServer> => {
      const n = await startNats({ storeDir, port, onSpawn, timeoutMs: 15_000 });
      port = n.port;
      return n;
    },
  };
}

afterAll(async () => {
  await Promise.all(supervisors.map((s) => s.stop([], 2000)));
  fs.rmSync(tmp, { recursive: true, force: true });
}, 60_000);

describe('supervisor', () => {
  it('restarts a nats-server killed with SIGKILL on the same port and JetStream folder; what it stored is still there', async () => {
    const { sup, events, spawned } = supervisor();
    const first = await sup.start(natsChild(path.join(tmp, 'js')));
    const pub = new NatsProgressPublisher({ url: first.url });
    await pub.publish({ kind: 'run.started', run: 'sup', mode: 'pipeline' });
    expect(await pub.flush(10_000)).toBe(true);

    await first.kill9();
    await waitUntil('the restart', () => events.some((e) => e.kind === 'restarted'), 30_000);
    const exited = events.find((e) => e.kind === 'exited');
    expect(exited).toMatchObject({
      service: 'nats',
      pid: first.pid,
      signal: 'SIGKILL',
      willRestart: true,
      restarts: 0,
    });
    const again = sup.current('nats') as NatsServer;
    expect(again.pid).not.toBe(first.pid);
    expect(again.url).toBe(first.url);
    expect(events.find((e) => e.kind === 'restarted')).toMatchObject({
      service: 'nats',
      pid: again.pid,
      previousPid: first.pid,
      restarts: 1,
    });
    expect(spawned.map(([, pid]) => pid)).toEqual([first.pid, again.pid]);
    expect(sup.pids()).toEqual({ nats: again.pid });

    // The publisher reconnects; the event stored before the kill and the one after are both there.
    await pub.publish({ kind: 'run.finished', run: 'sup', status: 'completed' });
    expect(await pub.flush(20_000)).toBe(true);
    await pub.close();
    const nc = await connectNats(again.url);
    const reader = await openRunEvents(nc, 'sup');
    const kinds: string[] = [];
    for await (const s of reader.events) {
      kinds.push(s.event!.kind);
      if (s.pending === 0) break;
    }
    reader.stop();
    await nc.close();
    expect(kinds).toEqual(['run.started', 'run.finished']);

    await sup.stop([['nats']], 5000);
    expect(again.alive()).toBe(false);
  }, 90_000);

  it('restarts a Temporal dev server killed with SIGKILL on the same database and port; a workflow started before is still there', async () => {
    const { sup, events } = supervisor();
    let port: number | undefined;
    const first = await sup.start({
      name: 'temporal',
      start: async (onSpawn) => {
        const t = await startTemporal({ dbFile: path.join(tmp, 'temporal.db'), port, onSpawn });
        port = t.port;
        return t;
      },
    });
    const client = await connectClient({ address: first.address });
    // No worker polls this queue: the workflow just waits, as a search would while its workers restart.
    const handle = await client.workflow.start('waits', { taskQueue: 'nobody', workflowId: 'survives-a-kill' });
    await first.kill9();
    await waitUntil('the restart', () => events.some((e) => e.kind === 'restarted'), 60_000);
    const again = sup.current('temporal') as TemporalServer;
    expect(again.address).toBe(first.address);
    // The client reconnects on its own, to the same address.
    const d = await waitUntil(
      'the workflow, after the restart',
      () =>
        client.workflow
          .getHandle('survives-a-kill')
          .describe()
          .catch(() => undefined),
      30_000,
      250,
    );
    expect(d.runId).toBe(handle.firstExecutionRunId);
    expect(d.status.name).toBe('RUNNING');
    await client.connection.close();
    await sup.stop([['temporal']], 5000);
  }, 120_000);

  it('gives up on a child that cannot be restarted, naming it and its last lines', async () => {
    const { sup, events } = supervisor({ maxRestarts: 2, backoff: { initialMs: 500, maxMs: 1000 } });
    const first = await sup.start(natsChild(path.join(tmp, 'js-taken')));
    // Someone else takes its port while it is down: every restart fails to listen.
    await first.kill9();
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(first.port, '127.0.0.1', resolve));
    try {
      const err = await sup.failure.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(SupervisorError);
      expect((err as SupervisorError).service).toBe('nats');
      expect((err as Error).message).toMatch(
        /^nats exited \(signal SIGKILL\) and could not be restarted \(3 attempts in a row\): nats-server on 127\.0\.0\.1:\d+ exited/,
      );
      expect((err as Error).message).toMatch(/Its last lines:\n[\s\S]*address already in use/);
      expect(events.filter((e) => e.kind === 'restart-failed').map((e) => (e as { attempt: number }).attempt)).toEqual([
        1, 2, 3,
      ]);
      expect(events.at(-1)).toMatchObject({ kind: 'gave-up', service: 'nats' });
    } finally {
      squatter.close();
    }
  }, 90_000);

  it('stopping stops a child that is still coming up, without waiting for it to answer', async () => {
    const { sup, spawned } = supervisor();
    const starting = sup.start({
      name: 'temporal',
      start: (onSpawn) => startTemporal({ dbFile: path.join(tmp, 'slow.db'), onSpawn, timeoutMs: 60_000 }),
    });
    starting.catch(() => undefined);
    await waitUntil('the spawn', () => spawned.length === 1, 10_000, 10);
    const t = Date.now();
    await sup.stop([['temporal']], 5000);
    // Killed before it answered, or (when it answered meanwhile) stopped at once.
    await expect(starting).rejects.toThrow(/exited .* before it answered|supervisor: stopped while temporal started/);
    expect(Date.now() - t).toBeLessThan(10_000);
    expect(pidAlive(spawned[0][1])).toBe(false);
  }, 60_000);
});

describe('stack.json', () => {
  it('what an owner that was killed left running is stopped; a live owner is refused', async () => {
    const runDir = path.join(tmp, 'run');
    fs.mkdirSync(runDir, { recursive: true });
    const orphan = await startNats({ storeDir: path.join(tmp, 'orphan-js'), detached: true });
    // The owner is gone (an `offshoot run` killed with -9): its pid no longer exists.
    writeStackRecord(runDir, { pid: 2 ** 22 + 17, nats: orphan.url, processes: { nats: orphan.pid } });
    const lines: string[] = [];
    const reaped = await reapOrphans(runDir, { run: 'r', graceMs: 5000, log: (l) => lines.push(l) });
    expect(reaped).toEqual([['nats', orphan.pid]]);
    expect(lines.join('\n')).toMatch(new RegExp(`left running: nats \\(${orphan.pid}\\)`));
    expect(pidAlive(orphan.pid)).toBe(false);
    // Stopped with SIGTERM, which nats-server handles (it exits itself), not killed.
    expect((await orphan.exited).signal).toBeNull();
    expect(readStackRecord(runDir)).toBeUndefined();

    // A live owner (here a nats-server, a process of ours) still runs the stack: refused, nothing stopped.
    const owner = await startNats({ storeDir: path.join(tmp, 'owner-js') });
    writeStackRecord(runDir, { pid: owner.pid, processes: {} });
    await expect(reapOrphans(runDir, { run: 'r', graceMs: 1000 })).rejects.toThrow(
      new RegExp(`run r: another \`offshoot run\` \\(pid ${owner.pid}\\) is running it`),
    );
    expect(owner.alive()).toBe(true);
    await owner.stop();
  }, 60_000);
});
