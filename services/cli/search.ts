/** `offshoot search`: a whole sub-network search in one process (no Temporal). */
import { type Command, InvalidArgumentError, Option } from 'commander';

import { DEFAULT_TRAIN_CORPUS, DEFAULT_VALIDATION_CORPUS } from '../../core/data/index.js';
import { ALGORITHMS, type Algorithm } from '../../core/search/index.js';
import {
  FITNESS_KINDS,
  FITNESS_PHASES,
  type FitnessKind,
  type FitnessMetrics,
  type FitnessPhases,
  SPACE_KINDS,
  SUBNET_SPACE_DEFAULTS,
  type SpaceKind,
  type TargetRequest,
  describePhases,
  formatParams,
  searchSubnetworks,
} from '../../core/subnet/index.js';
import { withBackend } from './backend-option.js';
import { nonNegativeInt, positiveInt, probability } from './common.js';
import { ProgressBar } from './progress.js';

interface SearchCliOptions {
  teacher: string;
  targetParams?: string;
  bin?: number;
  space: SpaceKind;
  algorithm: Algorithm;
  generations: number;
  population: number;
  fitness: FitnessKind;
  steps: number;
  evalTokens: number;
  seqLen?: number;
  train: string;
  val: string;
  seed: number;
  secondMutationProbability: number;
  json?: boolean;
}

export function registerSearchCommand(program: Command): void {
  program
    .command('search')
    .description('search the sub-networks of a teacher inside a parameter budget, in this process')
    .requiredOption('--teacher <dir>', 'teacher checkpoint directory')
    .option('--target-params <range>', 'parameter range: "70.4M ± 5%", "60M-80M", or a count (taken ± 5%)')
    .option(
      '--bin <i>',
      'a parameter bin (0-based, of 20 linear bins) instead of --target-params',
      nonNegativeInt('--bin'),
    )
    .addOption(new Option('--space <kind>', 'search space').choices([...SPACE_KINDS]).default('uniform'))
    .addOption(new Option('--algorithm <name>', 'search algorithm').choices([...ALGORITHMS]).default('evolution'))
    .option('--generations <n>', 'generations (budget = generations × population)', positiveInt('--generations'), 5)
    .option('--population <n>', 'population size', positiveInt('--population'), 10)
    .addOption(
      new Option(
        '--fitness <kind>',
        'zero-shot: validation loss of the inherited weights; brief: after brief KD training',
      )
        .choices(FITNESS_KINDS)
        .default('zero-shot'),
    )
    .option('--steps <n>', 'brief training steps per candidate', positiveInt('--steps'), 50)
    .option('--eval-tokens <n>', 'validation tokens per candidate', positiveInt('--eval-tokens'), 8192)
    .option('--seq-len <n>', 'tokens per sequence (default min(context, 64))', positiveInt('--seq-len'))
    .option('--train <spec>', 'training corpus for brief fitness', DEFAULT_TRAIN_CORPUS)
    .option('--val <spec>', 'validation corpus', DEFAULT_VALIDATION_CORPUS)
    .option('--seed <n>', 'seed of the search and of the data order', nonNegativeInt('--seed'), 0)
    .option(
      '--second-mutation-probability <p>',
      'chance that a mutation changes a second dimension of the sub-network',
      probability('--second-mutation-probability'),
      SUBNET_SPACE_DEFAULTS.secondMutationProbability,
    )
    .option('--json', 'print {"target","best","history"} as JSON')
    .action(
      withBackend(async (opts: SearchCliOptions) => {
        let target: TargetRequest;
        if (opts.bin !== undefined && opts.targetParams !== undefined)
          throw new InvalidArgumentError('give --target-params or --bin, not both');
        if (opts.bin !== undefined) target = { bin: opts.bin };
        else if (opts.targetParams !== undefined) {
          target = {
            params: /^[\d.]+\s*[kKmMbBgG]?$/.test(opts.targetParams.trim())
              ? `${opts.targetParams} ± 5%`
              : opts.targetParams,
          };
        } else throw new InvalidArgumentError('give a target: --target-params or --bin');
        const bar = new ProgressBar(opts.generations * opts.population, 'search');
        const result = await searchSubnetworks(
          {
            teacher: opts.teacher,
            target,
            space: opts.space,
            algorithm: opts.algorithm,
            generations: opts.generations,
            population: opts.population,
            budget: { kind: opts.fitness, steps: opts.steps, evalTokens: opts.evalTokens, seqLen: opts.seqLen },
            data: { train: opts.train, val: opts.val },
            seed: opts.seed,
            secondMutationProbability: opts.secondMutationProbability,
          },
          (p) => bar.update(p.done, `best ${p.best === null ? '-' : p.best.toFixed(4)}`),
        );
        bar.done();
        const best = result.best;
        const summary = {
          target: result.target,
          best: best && {
            spec: best.genome,
            fitness: best.fitness,
            parameters: best.cost,
            metrics: best.metrics,
          },
          history: result.history.map((r) => {
            const m = r.metrics as Partial<FitnessMetrics> | undefined;
            return {
              id: r.id,
              generation: r.generation,
              origin: r.origin,
              status: r.status,
              fitness: r.fitness,
              parameters: r.cost,
              spec: r.genome,
              error: r.error,
              seconds: m?.seconds,
              phases: m?.phases,
            };
          }),
        };
        if (opts.json) console.log(JSON.stringify(summary));
        else {
          const phases = result.history
            .map((r) => (r.metrics as Partial<FitnessMetrics> | undefined)?.phases)
            .filter((p): p is FitnessPhases => p !== undefined);
          if (phases.length > 0) {
            const total = Object.fromEntries(
              FITNESS_PHASES.map((p) => [p, phases.reduce((a, t) => a + t[p], 0)]),
            ) as FitnessPhases;
            console.log(`time of ${phases.length} evaluations: ${describePhases(total)}`);
          }
          console.log(`target: ${result.target.label}`);
          console.log(
            best
              ? `best: validation loss ${best.fitness!.toFixed(4)} with ${formatParams(best.cost)} parameters: ${JSON.stringify(summary.best!.spec)}`
              : 'no candidate was evaluated successfully',
          );
        }
      }),
    );
}
