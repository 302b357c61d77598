/**
 * Data-parallel pretraining: the same training (same model, data order, global batch and steps) on 1,
 * 2, … ranks, through the pretrain worker's rank processes (services/pretrain/data-parallel.ts);
 * prints one JSON line with training tokens/s at each count, the scaling efficiency against one rank
 * measured in the same run (tokens/s over the count times one rank's), the efficiency of each rank
 * added, and how far each count's loss curve is from one rank's.
 *
 *   npx tsx bench/data-parallel.ts [--preset tiny|10m|pythia-70m|pythia-160m|…] [--steps 20] [--warmup 5]
 *        [--batch-size 16] [--seq-len 64] [--micro-batch ROWS] [--counts 1,2] [--gpus] [--backend NAME]
 *        [--all-reduce auto|nccl|tcp] [--tokenizer DIR]
 *
 * With --gpus rank r runs on GPU r (one GPU per rank, `--counts 1,2,4` on a 4-GPU host; NCCL on the
 * cuda backend); without, the ranks share the machine's CPU (the TCP ring). Tokens/s is the median of
 * rank 0's per-step figures after the first `--warmup` steps (graph capture, kernel loading). The
 * student is a random model of the preset; the corpus is the embedded one, tokenised with the cached
 * tiny teacher's tokenizer unless --tokenizer names another.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { defaultTokenStore, loadTokenizer, openData } from '../core/data/index.js';
import {
  ALL_REDUCE_CHOICES,
  type AllReduceChoice,
  GPTNeoX,
  parameterCount,
  presetConfig,
  saveCheckpoint,
  trainingHyperparameters,
} from '../core/model/index.js';
import { runRanks } from '../services/pretrain/data-parallel.js';
import { listGpus, selectGpus } from '../services/worker/gpus.js';
import { benchTeacher } from './tiny-teacher.js';

const { values: args } = parseArgs({
  options: {
    preset: { type: 'string', default: 'tiny' },
    steps: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '5' },
    'batch-size': { type: 'string', default: '16' },
    'seq-len': { type: 'string', default: '64' },
    'micro-batch': { type: 'string' },
    counts: { type: 'string', default: '1,2' },
    gpus: { type: 'boolean', default: false },
    backend: { type: 'string', default: 'cpu' },
    'all-reduce': { type: 'string', default: 'auto' },
    tokenizer: { type: 'string' },
  },
});
const log = (s: string) => process.stderr.write(`${s}\n`);
const num = (k: keyof typeof args) => Number(args[k]);
const counts = String(args.counts)
  .split(',')
  .map((c) => Number(c.trim()));
if (counts[0] !== 1 || counts.some((c, i) => !Number.isInteger(c) || (i > 0 && c <= counts[i - 1])))
  throw new Error(`--counts: expected increasing rank counts starting at 1 (1,2,4), got ${args.counts}`);
if (!(ALL_REDUCE_CHOICES as readonly string[]).includes(String(args['all-reduce'])))
  throw new Error(`--all-reduce: expected ${ALL_REDUCE_CHOICES.join(', ')}`);
const gpus = args.gpus ? selectGpus(String(counts.at(-1)), listGpus()) : undefined;

const tokenizerSource = args.tokenizer ?? (await benchTeacher(undefined, log)).dir;
const tokenizer = await loadTokenizer(tokenizerSource);
const tokenCache = defaultTokenStore();
// Prepared in the token store once here, so that the ranks find it there.
for (const spec of ['sotu:train', 'sotu:val']) (await openData(spec, tokenizer, { cacheDir: tokenCache })).close();

const preset = String(args.preset);
const config = presetConfig(preset, preset.startsWith('pythia') ? 50304 : Math.max(tokenizer.vocabSize, 256));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-dp-bench-'));
const start = path.join(tmp, 'student', 'step-0000000');
const model = GPTNeoX.random(config, 1);
const hash = await saveCheckpoint(start, config, await model.toHost());
model.dispose();
const steps = num('steps');
const hyper = trainingHyperparameters(
  { steps, lr: 1e-3, warmup: 2 },
  { batchSize: num('batch-size'), seqLen: num('seq-len'), seed: 1 },
);

interface Run {
  ranks: number;
  tokensPerSecond: number;
  seconds: number;
  losses: number[];
}

async function measure(ranks: number): Promise<Run> {
  const losses: number[] = [];
  const rates: number[] = [];
  const started = performance.now();
  await runRanks(
    {
      start: { dir: start, hash, step: 0 },
      toStep: steps,
      hyper,
      distill: null,
      data: { train: 'sotu:train', val: 'sotu:val', tokenizer: tokenizerSource },
      tokenCache,
      teacher: { dir: start, hash },
      checkpointEvery: steps,
      checkpoints: path.join(tmp, `checkpoints-${ranks}`),
      evalEvery: steps + 1,
      evalTokens: 256,
    },
    {
      ranks,
      ...(gpus ? { gpus: gpus.slice(0, ranks) } : {}),
      backend: String(args.backend),
      allReduce: String(args['all-reduce']) as AllReduceChoice,
      ...(args['micro-batch'] ? { microBatchSize: num('micro-batch') } : {}),
    },
    {
      onStep: (e) => {
        losses.push(Number(e.loss.toFixed(6)));
        if (e.step > num('warmup')) rates.push(e.tokensPerSecond);
      },
      onEval: () => undefined,
      onCheckpoint: () => undefined,
      log,
      signal: new AbortController().signal,
      logDir: path.join(tmp, `ranks-${ranks}`),
    },
  );
  rates.sort((a, b) => a - b);
  const tokensPerSecond = rates.length ? rates[Math.floor(rates.length / 2)] : NaN;
  const seconds = (performance.now() - started) / 1000;
  log(
    `${ranks} rank(s): ${Math.round(tokensPerSecond)} tokens/s (median of steps ${num('warmup') + 1}-${steps}), ${seconds.toFixed(1)} s in all`,
  );
  return { ranks, tokensPerSecond: Math.round(tokensPerSecond), seconds: Number(seconds.toFixed(2)), losses };
}

try {
  const runs: Run[] = [];
  for (const c of counts) runs.push(await measure(c));
  const one = runs[0];
  const round = (x: number) => Number(x.toPrecision(4));
  console.log(
    JSON.stringify({
      bench: 'data-parallel',
      backend: args.backend,
      devices: gpus ? `GPUs ${gpus.join(',')}` : `${os.cpus().length} CPUs shared`,
      preset,
      parameters: parameterCount(config),
      batchSize: hyper.batchSize,
      seqLen: hyper.seqLen,
      microBatch: args['micro-batch'] ? num('micro-batch') : null,
      steps,
      tokensPerSecond: Object.fromEntries(runs.map((r) => [String(r.ranks), r.tokensPerSecond])),
      // Against one rank, measured in the same run.
      efficiency: Object.fromEntries(
        runs.map((r) => [String(r.ranks), round(r.tokensPerSecond / (r.ranks * one.tokensPerSecond))]),
      ),
      efficiencyPerAdded: Object.fromEntries(
        runs
          .slice(1)
          .map((r, i) => [
            String(r.ranks),
            round((r.tokensPerSecond - runs[i].tokensPerSecond) / ((r.ranks - runs[i].ranks) * one.tokensPerSecond)),
          ]),
      ),
      maxLossDifference: Object.fromEntries(
        runs
          .slice(1)
          .map((r) => [String(r.ranks), round(Math.max(...r.losses.map((l, i) => Math.abs(l - one.losses[i]))))]),
      ),
      runs,
    }),
  );
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
