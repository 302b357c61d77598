/**
 * Evaluator scaling: the same search (same seed, space, fitness budget) with 1 and then 2 evaluator
 * worker processes against a real Temporal dev server; prints one JSON line with evaluations per
 * minute of each and the speed-up.
 *
 *   npx tsx bench/evaluator-scaling.ts [--teacher DIR] [--budget 16] [--population 8] [--steps 30]
 *                                      [--seq-len 64] [--eval-tokens 4096] [--workers 2] [--backend NAME]
 *
 * Without --teacher it trains the `tiny` preset on the embedded corpus once (cached). Each measurement
 * starts fresh evaluator processes, so both include loading the teacher and data once per worker. The
 * workflow's parallelism equals the number of workers. On one machine the workers share its cores
 * (and tfjs's tensorflow backend already uses several per process), so the speed-up measures what one
 * more evaluator buys there; on a cluster each evaluator has its own device.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { computeCheckpointHash, loadConfig, parameterCount } from '../core/model/index.js';
import { offshootCache, offshootCommand, spawnManaged, startStack, startWorker } from '../services/stack/index.js';
import { connectClient } from '../services/worker/index.js';
import { type EvolutionInput, type TeacherRef, evolution } from '../workflows/index.js';

const { values: args } = parseArgs({
  options: {
    teacher: { type: 'string' },
    budget: { type: 'string', default: '16' },
    population: { type: 'string', default: '8' },
    steps: { type: 'string', default: '30' },
    'seq-len': { type: 'string', default: '64' },
    'eval-tokens': { type: 'string', default: '4096' },
    workers: { type: 'string', default: '2' },
    backend: { type: 'string' },
  },
});
const num = (k: keyof typeof args) => Number(args[k]);
const log = (s: string) => process.stderr.write(`${s}\n`);

async function teacher(): Promise<TeacherRef> {
  let dir = args.teacher;
  if (!dir) {
    dir = offshootCache('bench', 'teacher-tiny');
    if (!fs.existsSync(path.join(dir, 'offshoot-checkpoint.json'))) {
      log(`training the tiny teacher into ${dir}`);
      const cli = offshootCommand();
      const p = spawnManaged({
        name: 'teacher train',
        command: cli.command,
        args: [
          ...cli.args,
          'teacher',
          'train',
          '--out',
          dir,
          '--preset',
          'tiny',
          '--vocab',
          '300',
          '--steps',
          '120',
          '--seq-len',
          '64',
          '--eval-every',
          '120',
        ],
      });
      const r = await p.exited;
      if (r.code !== 0) throw new Error(`teacher train failed:\n${p.output()}`);
    }
  }
  const config = loadConfig(dir);
  return { dir: path.resolve(dir), hash: computeCheckpointHash(dir), config, parameters: parameterCount(config) };
}

const ref = await teacher();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-scaling-'));
const stack = await startStack({ dir: path.join(tmp, 'stack'), nats: false });
const address = stack.temporal.address;
const client = await connectClient({ address });
const orchestrator = await startWorker({ queues: ['orchestrate'], temporal: address, name: 'orchestrate' });

async function measure(
  workers: number,
): Promise<{ workers: number; evaluations: number; seconds: number; evaluationsPerMinute: number; best: number }> {
  const evaluators = await Promise.all(
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
  log(`${workers} evaluator(s): ${evaluations} evaluations in ${seconds.toFixed(1)} s`);
  return {
    workers,
    evaluations,
    seconds: Number(seconds.toFixed(2)),
    evaluationsPerMinute: Number(((60 * evaluations) / seconds).toFixed(2)),
    best: result.best.fitness ?? NaN,
  };
}

try {
  const one = await measure(1);
  const many = await measure(num('workers'));
  console.log(
    JSON.stringify({
      bench: 'evaluator-scaling',
      teacher: path.basename(ref.dir),
      teacherParameters: ref.parameters,
      fitness: { kind: 'brief', steps: num('steps'), seqLen: num('seq-len'), evalTokens: num('eval-tokens') },
      budget: num('budget'),
      population: num('population'),
      workers1: one,
      [`workers${many.workers}`]: many,
      evaluationsPerMinute: {
        [String(one.workers)]: one.evaluationsPerMinute,
        [String(many.workers)]: many.evaluationsPerMinute,
      },
      speedup: Number((many.evaluationsPerMinute / one.evaluationsPerMinute).toFixed(3)),
      sameResult: one.best === many.best,
      cpus: os.cpus().length,
    }),
  );
} finally {
  await orchestrator.stop();
  await client.connection.close();
  await stack.stop();
}
