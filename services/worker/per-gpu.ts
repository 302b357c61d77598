/**
 * One evaluator per GPU (`offshoot worker --queues evaluate --gpus …`): this process starts one
 * `offshoot worker` child per GPU, each pinned to its device (data-parallel.ts deviceEnv), and keeps
 * them running. Temporal spreads the evaluate queue's candidates over them as over any set of
 * workers: each child polls with one slot, so a GPU takes the next candidate as soon as it is free.
 *
 * A child that dies is restarted on the same GPU after a backoff (1 s, doubling to 30 s); its running
 * evaluation is retried by Temporal after its heartbeat timeout. A child that keeps dying (five
 * restarts in a row that do not stay up for a minute) stops the group with an error naming the GPU
 * and its last lines. SIGTERM (or SIGINT) is passed on: every child drains (finishes its evaluation
 * within its grace period) and the group exits once they are gone; a second signal kills them.
 */
import { type WorkerProcess, startWorker } from '../stack/index.js';
import { deviceEnv } from '../pretrain/data-parallel.js';

export interface GpuWorkerGroupOptions {
  gpus: number[];
  /** What every child is started with (startWorker's options), less the name and environment per GPU. */
  worker: Omit<Parameters<typeof startWorker>[0], 'name' | 'env' | 'echo'> & { name: string };
  /** A child's own arguments besides the common ones (e.g. its metrics port). */
  extraFor?: (gpu: number, position: number) => string[];
  env?: NodeJS.ProcessEnv;
  log?: (line: string) => void;
  /** Restarts in a row that do not stay up before the group gives up. Default 5. */
  maxRestarts?: number;
  /** A restarted child up this long counts as healthy again. Default 60 s. */
  stableMs?: number;
  /** Delay before a restart: initialMs · 2^(failures in a row), at most maxMs. */
  backoff?: { initialMs: number; maxMs: number };
}

export interface GpuWorkerGroup {
  /** The children's identities, by GPU. */
  identities(): Map<number, string>;
  /** Resolves when every child has exited after stop(); rejects when the group gave up on a child. */
  done: Promise<void>;
  /** SIGTERM to every child (they drain); a second call kills them. */
  stop(): void;
  /** Current pid of each GPU's child. */
  pids(): Map<number, number>;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function lastLines(output: string, n = 10): string {
  const lines = output.trim().split('\n').slice(-n);
  return lines.length && lines[0] ? lines.map((l) => `    ${l}`).join('\n') : '    (no output)';
}

/** Starts one worker per GPU and resolves once every one polls (a child that cannot start stops the rest). */
export async function startGpuWorkerGroup(options: GpuWorkerGroupOptions): Promise<GpuWorkerGroup> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const maxRestarts = options.maxRestarts ?? 5;
  const stableMs = options.stableMs ?? 60_000;
  const backoff = options.backoff ?? { initialMs: 1000, maxMs: 30_000 };
  const current = new Map<number, WorkerProcess>();
  let stopping = false;
  let killing = false;
  let giveUp!: (err: Error) => void;
  const gaveUp = new Promise<never>((_, reject) => (giveUp = reject));
  gaveUp.catch(() => undefined);

  const start = (gpu: number, position: number) =>
    startWorker({
      ...options.worker,
      name: `${options.worker.name}-gpu${gpu}`,
      env: { ...(options.env ?? process.env), ...deviceEnv(gpu) },
      extra: [...(options.worker.extra ?? []), ...(options.extraFor?.(gpu, position) ?? [])],
      // The group says when all are ready; each child's own ready line would only repeat it.
      echo: (line) => {
        if (!line.startsWith('{"event":"worker-ready"')) log(`[gpu ${gpu}] ${line}`);
      },
    });

  /** Keeps GPU `gpu`'s child running until the group stops. */
  const keep = async (gpu: number, position: number, first: WorkerProcess): Promise<void> => {
    let proc = first;
    let upSince = Date.now();
    let failuresInRow = 0;
    const delay = () => Math.min(backoff.maxMs, backoff.initialMs * 2 ** failuresInRow);
    for (;;) {
      const exit = await proc.exited;
      if (stopping) return;
      // A child that did not stay up for stableMs counts as failing again; one that did starts afresh.
      failuresInRow = Date.now() - upSince < stableMs ? failuresInRow + 1 : 0;
      const how = exit.signal ? `was killed by ${exit.signal}` : `exited with code ${exit.code}`;
      if (failuresInRow > maxRestarts) {
        giveUp(
          new Error(
            `the evaluator on GPU ${gpu} ${how} again; gave up after ${maxRestarts} restarts in a row that did not stay up ${stableMs / 1000} s. Its last lines:\n${lastLines(proc.output())}`,
          ),
        );
        return;
      }
      log(
        `worker: the evaluator on GPU ${gpu} (pid ${proc.pid}) ${how}; restarting it in ${(delay() / 1000).toFixed(1)} s`,
      );
      for (;;) {
        await sleep(delay());
        if (stopping) return;
        try {
          proc = await start(gpu, position);
          break;
        } catch (err) {
          if (stopping) return;
          failuresInRow += 1;
          if (failuresInRow > maxRestarts) {
            giveUp(
              new Error(
                `the evaluator on GPU ${gpu} could not be restarted (${maxRestarts} attempts in a row): ${(err as Error).message.split('\n')[0]}`,
              ),
            );
            return;
          }
          log(`worker: restarting the evaluator on GPU ${gpu} failed: ${(err as Error).message.split('\n')[0]}`);
        }
      }
      upSince = Date.now();
      current.set(gpu, proc);
      if (stopping) {
        // Stopped while it came up: it drains like the others.
        proc.child.kill('SIGTERM');
        await proc.exited;
        return;
      }
      log(`worker: the evaluator on GPU ${gpu} is back (pid ${proc.pid}, ${proc.identity})`);
    }
  };

  const started = await Promise.allSettled(options.gpus.map((gpu, i) => start(gpu, i)));
  const failed = started.findIndex((r) => r.status === 'rejected');
  if (failed >= 0) {
    await Promise.all(started.map((r) => (r.status === 'fulfilled' ? r.value.stop(10_000) : undefined)));
    throw new Error(
      `the evaluator on GPU ${options.gpus[failed]} did not start: ${((started[failed] as PromiseRejectedResult).reason as Error).message}`,
    );
  }
  started.forEach((r, i) => current.set(options.gpus[i], (r as PromiseFulfilledResult<WorkerProcess>).value));
  const kept = Promise.all(options.gpus.map((gpu, i) => keep(gpu, i, current.get(gpu)!)));

  const stop = () => {
    if (stopping) {
      if (!killing) {
        killing = true;
        log('worker: stopping again; killing the evaluators');
        for (const p of current.values()) if (p.alive()) p.child.kill('SIGKILL');
      }
      return;
    }
    stopping = true;
    for (const p of current.values()) if (p.alive()) p.child.kill('SIGTERM');
  };
  const done = (async () => {
    try {
      await Promise.race([kept, gaveUp]);
    } catch (err) {
      // Gave up on one: the others drain and go too.
      stopping = true;
      for (const p of current.values()) if (p.alive()) p.child.kill('SIGTERM');
      await Promise.all([...current.values()].map((p) => p.exited));
      throw err;
    }
    await Promise.all([...current.values()].map((p) => p.exited));
  })();
  return {
    identities: () => new Map([...current].map(([gpu, p]) => [gpu, p.identity])),
    pids: () => new Map([...current].map(([gpu, p]) => [gpu, p.pid])),
    done,
    stop,
  };
}
