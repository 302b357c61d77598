/** `offshoot search`: a whole sub-network search in one process (no Temporal). */
import { type Command, InvalidArgumentError, Option } from 'commander';

import { DEFAULT_TRAIN_CORPUS, DEFAULT_VALIDATION_CORPUS } from '../../core/data/index.js';
import { DEFAULT_DISTILL, KL_DIRECTIONS, type KLDirection, checkpointHash } from '../../core/model/index.js';
import { ALGORITHMS, type Algorithm } from '../../core/search/index.js';
import {
  FITNESS_KINDS,
  FITNESS_LOSSES,
  type FitnessKind,
  type FitnessLoss,
  type FitnessMetrics,
  type FitnessPhases,
  HEAD_ORDERS,
  type HeadOrder,
  LAYER_ORDERS,
  type LayerOrder,
  SPACE_KINDS,
  SUBNET_SPACE_DEFAULTS,
  type SpaceKind,
  type TargetRequest,
  describePhases,
  formatParams,
  searchSubnetworks,
  sumPhases,
} from '../../core/subnet/index.js';
import { StreamingTeacher, TeacherClient } from '../teacher/index.js';
import { withBackend } from './backend-option.js';
import { nonNegativeInt, positiveInt, positiveNumber, probability } from './common.js';
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
  batchSize?: number;
  lr?: number;
  warmup?: number;
  teacherService?: string;
  topK: number;
  loss: FitnessLoss;
  alpha: number;
  temperature: number;
  direction: KLDirection;
  order: HeadOrder;
  layers: LayerOrder;
  tournamentSize?: number;
  elitism?: number;
  crossoverProbability?: number;
  mutationProbability?: number;
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
    .option('--batch-size <n>', 'sequences per step and per evaluation batch (default 8)', positiveInt('--batch-size'))
    .option('--lr <x>', 'brief training: peak learning rate (default 3e-3)', positiveNumber('--lr'))
    .option('--warmup <n>', 'brief training: warmup steps (default min(10, steps))', nonNegativeInt('--warmup'))
    .option(
      '--teacher-service <targets>',
      "brief fitness distils from the teacher-logit service's top-k logits (host:port, comma-separated), as the pipeline's evaluators do; default: the teacher in this process",
    )
    .option('--top-k <n>', 'logits per position asked of the teacher service', positiveInt('--top-k'), 64)
    .addOption(
      new Option('--loss <loss>', 'brief training: distillation or cross-entropy')
        .choices(FITNESS_LOSSES)
        .default('distill'),
    )
    .option(
      '--alpha <x>',
      'brief distillation: weight of cross-entropy (1 − alpha weighs the KL term)',
      probability('--alpha'),
      DEFAULT_DISTILL.alpha,
    )
    .option(
      '--temperature <x>',
      'brief distillation: temperature',
      positiveNumber('--temperature'),
      DEFAULT_DISTILL.temperature,
    )
    .addOption(
      new Option('--direction <d>', 'brief distillation: KL direction')
        .choices(KL_DIRECTIONS)
        .default(DEFAULT_DISTILL.direction),
    )
    .addOption(
      new Option('--order <order>', "which heads, neurons and channels a candidate's counts keep")
        .choices(HEAD_ORDERS)
        .default('first-k'),
    )
    .addOption(
      new Option('--layers <how>', "which layers a candidate's layer count keeps")
        .choices(LAYER_ORDERS)
        .default('first'),
    )
    .option(
      '--tournament-size <n>',
      'evolution: individuals per tournament (default 3)',
      positiveInt('--tournament-size'),
    )
    .option(
      '--elitism <n>',
      'evolution: best individuals carried into the next generation (default 2)',
      nonNegativeInt('--elitism'),
    )
    .option(
      '--crossover-probability <p>',
      'evolution: chance a child is a crossover (default 0.5)',
      probability('--crossover-probability'),
    )
    .option(
      '--mutation-probability <p>',
      'evolution: chance a crossover child is also mutated (default 0.8)',
      probability('--mutation-probability'),
    )
    .option('--train <spec>', 'training corpus for brief fitness', DEFAULT_TRAIN_CORPUS)
    .option('--val <spec>', 'validation corpus', DEFAULT_VALIDATION_CORPUS)
    .option('--seed <n>', 'seed of the search and of the data order', nonNegativeInt('--seed'), 0)
    .option(
      '--second-mutation-probability <p>',
      'chance that a mutation changes a second dimension of the sub-network',
      probability('--second-mutation-probability'),
      SUBNET_SPACE_DEFAULTS.secondMutationProbability,
    )
    .option('--json', 'print {"target","best","evaluations","seconds","evaluationsPerHour","history"} as JSON')
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
        // The service must serve --teacher's weights: the client refuses a replica with other ones.
        const client = opts.teacherService
          ? new TeacherClient({ targets: opts.teacherService, expectedHash: checkpointHash(opts.teacher) })
          : undefined;
        const started = performance.now();
        const result = await searchSubnetworks(
          {
            teacher: opts.teacher,
            target,
            space: opts.space,
            algorithm: opts.algorithm,
            generations: opts.generations,
            population: opts.population,
            budget: {
              kind: opts.fitness,
              steps: opts.steps,
              evalTokens: opts.evalTokens,
              seqLen: opts.seqLen,
              batchSize: opts.batchSize,
              lr: opts.lr,
              warmup: opts.warmup,
              loss: opts.loss,
              distill: { alpha: opts.alpha, temperature: opts.temperature, direction: opts.direction },
            },
            data: { train: opts.train, val: opts.val },
            seed: opts.seed,
            secondMutationProbability: opts.secondMutationProbability,
            evolution: {
              tournamentSize: opts.tournamentSize,
              elitism: opts.elitism,
              crossoverProbability: opts.crossoverProbability,
              mutationProbability: opts.mutationProbability,
            },
            order: opts.order,
            layers: opts.layers,
            distillTeacher:
              client &&
              ((batches, distill) =>
                new StreamingTeacher(client, {
                  topK: opts.topK,
                  temperature: distill.temperature,
                  batches,
                })),
          },
          (p) => bar.update(p.done, `best ${p.best === null ? '-' : p.best.toFixed(4)}`),
        ).finally(() => client?.close());
        const seconds = (performance.now() - started) / 1000;
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
          evaluations: result.evaluations,
          seconds,
          evaluationsPerHour: (result.evaluations * 3600) / seconds,
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
            console.log(`time of ${phases.length} evaluations: ${describePhases(sumPhases(phases))}`);
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
