/**
 * Evaluator scaling: the same search (same seed, space, fitness budget) with 1, 2, … evaluators against
 * a real Temporal dev server; prints one JSON line with evaluations per hour at each count, the
 * scaling efficiency (evaluations per hour over the count times one evaluator's) and the efficiency of
 * each evaluator added (what it added over one evaluator's rate).
 *
 *   npx tsx bench/evaluator-scaling.ts [--teacher DIR] [--budget 16] [--population 8] [--steps 30]
 *                                      [--seq-len 64] [--eval-tokens 4096] [--counts 1,2] [--gpus]
 *                                      [--backend NAME]
 *
 * Without --gpus each evaluator is its own worker process sharing the machine (on a CPU machine the
 * workers share its cores, and tfjs's tensorflow backend already uses several per process, so this
 * measures what one more evaluator buys there). With --gpus each count K starts one
 * `offshoot worker --queues evaluate --gpus K`: one evaluator per GPU, pinned to it (docs/multi-gpu.md);
 * `--counts 1,2,4` on a 4-GPU host. Without --teacher it trains the `tiny` preset on the embedded
 * corpus once (cached); pass a real teacher (and more --steps) for GPU-sized evaluations. Each
 * measurement starts fresh evaluators, so each includes loading the teacher and data once per
 * evaluator. The workflow's parallelism equals the count.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { startStack, startWorker } from '../services/stack/index.js';
import { connectClient } from '../services/worker/index.js';
import { type EvolutionInput, evolution } from '../workflows/index.js';
import { benchTeacher } from './tiny-teacher.js';

const { values: args } = parseArgs({
  options: {
    teacher: { type: 'string' },
    budget: { type: 'string', default: '16' },
    population: { type: 'string', default: '8' },
    steps: { type: 'string', default: '30' },
    'seq-len': { type: 'string', default: '64' },
    'eval-tokens': { type: 'string', default: '4096' },
    counts: { type: 'string', default: '1,2' },
    gpus: { type: 'boolean', default: false },
    backend: { type: 'string' },
  },
});
const num = (k: keyof typeof args) => Number(args[k]);
const log = (s: string) => process.stderr.write(`${s}\n`);

const ref = await benchTeacher(args.teacher, log);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-scaling-'));
const stack = await startStack({ dir: path.join(tmp, 'stack'), nats: false });
const address = stack.temporal.address;
const client = await connectClient({ address });
const orchestrator = await startWorker({ queues: ['orchestrate'], temporal: address, name: 'orchestrate' });

interface Measurement {
  workers: number;
  evaluations: number;
  seconds: number;
  evaluationsPerHour: number;
  best: number;
}

async function measure(workers: number): Promise<Measurement> {
  // One worker per GPU from one `--gpus K` process, or K worker processes.
  const evaluators = args.gpus
    ? [
        await startWorker({
          queues: ['evaluate'],
          temporal: address,
          name: 'evaluate',
          backend: args.backend,
          extra: ['--gpus', String(workers)],
        }),
      ]
    : await Promise.all(
        Array.from({ length: workers }, (_, i) =>
          startWorker({ queues: ['evaluate'], temporal: address, name: `evaluate-${i}`, backend: args.backend }),
        ),
      );
  const input: EvolutionInput = {
    run: { runId: `scaling-${workers}`, dir: path.join(tmp, `run-${workers}`) },
    teacher: ref,
    data: { train: 'sotu:train', val: 'sotu:val' },
    space: { kind: 'uniform', target: { bin: 8 }, bins: 20, scale: 'linear' },
    search: { budget: num('budget'), population: num('population'), seed: 1 },
    fitness: {
      budget: {
        kind: 'brief',
        steps: num('steps'),
        batchSize: 8,
        seqLen: num('seq-len'),
        evalTokens: num('eval-tokens'),
        warmup: Math.min(5, num('steps')),
      },
      order: 'first-k',
      layers: 'first',
    },
    parallelism: workers,
    continueAsNewEvery: 100,
    activity: { timeoutSeconds: 600, heartbeatSeconds: 60, maxAttempts: 3 },
  };
  const started = performance.now();
  const result = await client.workflow.execute(evolution, {
    workflowId: `bench/scaling/${workers}/${Date.now()}`,
    taskQueue: 'orchestrate',
    args: [input],
  });
  const seconds = (performance.now() - started) / 1000;
  await Promise.all(evaluators.map((w) => w.stop()));
  const evaluations = result.status.evaluated + result.status.failed;
  log(
    `${workers} evaluator(s)${args.gpus ? ' (one per GPU)' : ''}: ${evaluations} evaluations in ${seconds.toFixed(1)} s`,
  );
  return {
    workers,
    evaluations,
    seconds: Number(seconds.toFixed(2)),
    evaluationsPerHour: Number(((3600 * evaluations) / seconds).toFixed(1)),
    best: result.best.fitness ?? NaN,
  };
}

const counts = String(args.counts)
  .split(',')
  .map((c) => Number(c.trim()));
if (
  counts.length === 0 ||
  counts.some((c) => !Number.isInteger(c) || c < 1) ||
  counts[0] !== 1 ||
  counts.some((c, i) => i > 0 && c <= counts[i - 1])
) {
  throw new Error(
    `--counts: expected increasing evaluator counts starting at 1 (1,2,4), got ${JSON.stringify(args.counts)}`,
  );
}
try {
  const runs: Measurement[] = [];
  for (const c of counts) runs.push(await measure(c));
  const one = runs[0].evaluationsPerHour;
  const round = (x: number) => Number(x.toFixed(3));
  console.log(
    JSON.stringify({
      bench: 'evaluator-scaling',
      mode: args.gpus ? 'one evaluator per GPU' : 'evaluator processes',
      teacher: path.basename(ref.dir),
      teacherParameters: ref.parameters,
      fitness: { kind: 'brief', steps: num('steps'), seqLen: num('seq-len'), evalTokens: num('eval-tokens') },
      budget: num('budget'),
      population: num('population'),
      runs,
      evaluationsPerHour: Object.fromEntries(runs.map((r) => [String(r.workers), r.evaluationsPerHour])),
      // Against the baseline of one evaluator, measured in the same run.
      efficiency: Object.fromEntries(
        runs.map((r) => [String(r.workers), round(r.evaluationsPerHour / (r.workers * one))]),
      ),
      efficiencyPerAdded: Object.fromEntries(
        runs
          .slice(1)
          .map((r, i) => [
            String(r.workers),
            round((r.evaluationsPerHour - runs[i].evaluationsPerHour) / ((r.workers - runs[i].workers) * one)),
          ]),
      ),
      speedup: round(runs.at(-1)!.evaluationsPerHour / one),
      sameResult: runs.every((r) => r.best === runs[0].best),
      cpus: os.cpus().length,
    }),
  );
} finally {
  await orchestrator.stop();
  await client.connection.close();
  await stack.stop();
}
