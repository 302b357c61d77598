/**
 * `offshoot pretrain`: the pretraining actor's training as one process, without Temporal — a student
 * checkpoint trained on a corpus with cross-entropy or distillation (the teacher-logit service's top-k
 * logits, or a teacher held in this process), with what the pretrain workflow's trainSegment activity
 * trains with (the Trainer, the service's stream, the seeded batches), checkpointed into its folder and
 * resumed from there when run again (also after kill -9: the last checkpoint is whole, being written
 * atomically). The batch of a step is a function of (seed, step), so a resumed run sees the batches of
 * an uninterrupted one.
 *
 * Stdout: one JSON line per event (start, step, eval, checkpoint, done); the folder keeps losses.jsonl
 * and evals.jsonl across restarts (each line says which process wrote it). SIGTERM or SIGINT stops at
 * the next step with a checkpoint.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type Command, InvalidArgumentError, Option } from 'commander';

import {
  DEFAULT_TRAIN_CORPUS,
  DEFAULT_VALIDATION_CORPUS,
  TOKENIZER_FILE,
  defaultTokenStore,
  describeData,
  evalBatches,
  loadTokenizer,
  openData,
  sampleBatch,
} from '../../core/data/index.js';
import {
  DEFAULT_DISTILL,
  type DistillOptions,
  GPTNeoX,
  KL_DIRECTIONS,
  type KLDirection,
  type Teacher,
  Trainer,
  evaluateLoss,
  inProcessTeacher,
  loadCheckpoint,
  parameterCount,
  trainingHyperparameters,
} from '../../core/model/index.js';
import * as tf from '../../core/model/tfjs.js';
import { DEFAULT_TEACHER_WINDOW, StreamingTeacher, TeacherClient } from '../teacher/index.js';
import { activeBackend, withBackend } from './backend-option.js';
import { nonNegativeInt, positiveInt, positiveNumber, probability } from './options.js';

interface PretrainCliOptions {
  init: string;
  out: string;
  data: string;
  val: string;
  tokenizer?: string;
  steps: number;
  batchSize: number;
  seqLen: number;
  lr: number;
  warmup: number;
  seed: number;
  teacherService?: string;
  teacher?: string;
  topK: number;
  teacherWindow: number;
  alpha: number;
  temperature: number;
  direction: KLDirection;
  checkpointEvery: number;
  evalEvery?: number;
  evalTokens: number;
  reportEvery: number;
  stopAt?: number;
  randomInit?: boolean;
}

/** The folder's resumable checkpoint (model, optimiser, trainer_state.json). */
const PRETRAIN_CHECKPOINT = 'checkpoint';

function emit(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

async function pretrainAction(o: PretrainCliOptions): Promise<void> {
  if (o.teacherService && o.teacher) throw new InvalidArgumentError('give --teacher-service or --teacher, not both');
  if (o.stopAt !== undefined && o.stopAt > o.steps)
    throw new InvalidArgumentError(`--stop-at ${o.stopAt} is beyond --steps ${o.steps}`);
  if (o.warmup > o.steps) throw new InvalidArgumentError(`--warmup ${o.warmup} exceeds --steps ${o.steps}`);
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const out = path.resolve(o.out);
  const checkpointDir = path.join(out, PRETRAIN_CHECKPOINT);
  fs.mkdirSync(out, { recursive: true });
  const writer = { pid: process.pid, started: new Date().toISOString() };

  const tokenizerPath = o.tokenizer ?? o.init;
  const tokenizer = await loadTokenizer(tokenizerPath);
  const train = await openData(o.data, tokenizer, { cacheDir: defaultTokenStore(), log });
  const val = await openData(o.val, tokenizer, { cacheDir: defaultTokenStore(), log });
  log(`data: training ${describeData(train)}; validation ${describeData(val)}`);
  const batches = (step: number) =>
    sampleBatch(train, { batchSize: o.batchSize, seqLen: o.seqLen, seed: o.seed, step });
  const distill: DistillOptions | undefined =
    o.teacherService || o.teacher ? { alpha: o.alpha, temperature: o.temperature, direction: o.direction } : undefined;

  let client: TeacherClient | undefined;
  let teacherModel: GPTNeoX | undefined;
  let teacher: Teacher | undefined;
  if (o.teacherService) {
    client = new TeacherClient({ targets: o.teacherService, log });
    teacher = new StreamingTeacher(client, {
      topK: o.topK,
      temperature: o.temperature,
      batches,
      window: o.teacherWindow,
    });
  } else if (o.teacher) {
    const t = loadCheckpoint(o.teacher);
    teacherModel = GPTNeoX.fromTensors(t.config, t.tensors, o.teacher);
    teacher = inProcessTeacher(teacherModel);
  }

  const tokenizerFile = fs.statSync(tokenizerPath).isDirectory()
    ? path.join(tokenizerPath, TOKENIZER_FILE)
    : tokenizerPath;
  const stop = new AbortController();
  const onSignal = (signal: string) => {
    log(`pretrain: ${signal}: stopping at the next step (checkpointed)`);
    stop.abort();
  };
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  process.once('SIGINT', () => onSignal('SIGINT'));
  const lossLog = path.join(out, 'losses.jsonl');
  const evalLog = path.join(out, 'evals.jsonl');
  const validate = async (model: GPTNeoX, step: number) => {
    const r = await evaluateLoss(
      model,
      evalBatches(val, { seqLen: o.seqLen, batchSize: o.batchSize, maxTokens: o.evalTokens }),
    );
    const line = { step, valLoss: r.loss, valPpl: r.ppl, tokens: r.tokens, ...writer };
    fs.appendFileSync(evalLog, `${JSON.stringify(line)}\n`);
    emit({ event: 'eval', ...line });
  };
  const init = loadCheckpoint(o.init);
  const initial = () =>
    o.randomInit ? GPTNeoX.random(init.config, o.seed) : GPTNeoX.fromTensors(init.config, init.tensors, o.init);
  const trainer = Trainer.createOrResume(init.config, initial, {
    hyper: trainingHyperparameters(
      { steps: o.steps, lr: o.lr, warmup: o.warmup },
      { batchSize: o.batchSize, seqLen: o.seqLen, seed: o.seed },
    ),
    batches,
    teacher,
    distill,
    checkpointDir,
    checkpointEvery: o.checkpointEvery,
    extraFiles: { [TOKENIZER_FILE]: fs.readFileSync(tokenizerFile) },
    reportEvery: o.reportEvery,
    onStep: (r) => {
      const line = {
        step: r.step,
        loss: r.loss,
        lr: r.lr,
        gradNorm: r.gradNorm,
        tokensPerSecond: r.tokensPerSecond,
        rss: process.memoryUsage().rss,
        tensorBytes: tf.memory().numBytes,
        ...writer,
      };
      fs.appendFileSync(lossLog, `${JSON.stringify(line)}\n`);
      emit({ event: 'step', ...line });
    },
    onCheckpoint: (c) => emit({ event: 'checkpoint', step: c.step, hash: c.hash }),
    evaluate: o.evalEvery ? { every: o.evalEvery, run: validate } : undefined,
    signal: stop.signal,
  });
  const resumedFrom = trainer.step;
  try {
    emit({
      event: 'start',
      step: resumedFrom,
      resumed: resumedFrom > 0,
      parameters: parameterCount(trainer.model.config),
      steps: o.steps,
      tokensPerStep: o.batchSize * o.seqLen,
      init: o.randomInit ? 'random' : o.init,
      distill: o.teacherService ? 'service' : o.teacher ? 'in-process' : 'none',
      backend: activeBackend()?.name ?? tf.getBackend(),
      ...writer,
    });
    if (resumedFrom > 0) log(`pretrain: resuming from step ${resumedFrom} (${checkpointDir})`);
    else if (o.evalEvery) await validate(trainer.model, 0);
    const started = performance.now();
    const result = await trainer.run(o.stopAt ?? o.steps);
    const seconds = (performance.now() - started) / 1000;
    emit({
      event: 'done',
      step: result.step,
      resumedFrom,
      stopped: result.stopped ? 'signal' : result.step < o.steps ? 'stop-at' : null,
      lastLoss: result.lastLoss,
      checkpoint: checkpointDir,
      hash: result.checkpointHash,
      seconds,
      tokensPerSecond: ((result.step - resumedFrom) * o.batchSize * o.seqLen) / Math.max(seconds, 1e-9),
      ...writer,
    });
  } finally {
    trainer.dispose();
    teacherModel?.dispose();
    client?.close();
    train.close();
    val.close();
  }
}

export function registerPretrainCommand(program: Command): void {
  program
    .command('pretrain')
    .description(
      "pretrain a student checkpoint (the pretraining actor's loop, no Temporal): distillation from the teacher service or a teacher checkpoint, or cross-entropy; resumes from its folder",
    )
    .requiredOption('--init <dir>', "the student's starting checkpoint (e.g. from `offshoot subnet extract`)")
    .option('--random-init', "start from random weights of --init's shape instead (seeded by --seed)")
    .requiredOption('--out <dir>', 'folder of the run: checkpoint/, losses.jsonl, evals.jsonl; running again resumes')
    .option('--data <spec>', 'training data spec (docs/data.md)', DEFAULT_TRAIN_CORPUS)
    .option('--val <spec>', 'validation data spec', DEFAULT_VALIDATION_CORPUS)
    .option('--tokenizer <path>', "tokenizer.json or a folder holding one (default: --init's)")
    .requiredOption('--steps <n>', 'optimisation steps (the schedule ends there)', positiveInt('--steps'))
    .option('--batch-size <n>', 'sequences per step', positiveInt('--batch-size'), 8)
    .option('--seq-len <n>', 'tokens per sequence', positiveInt('--seq-len'), 64)
    .option('--lr <x>', 'peak learning rate (warmup, cosine to a tenth)', positiveNumber('--lr'), 3e-3)
    .option('--warmup <n>', 'warmup steps', nonNegativeInt('--warmup'), 20)
    .option('--seed <n>', 'seed of the data order', nonNegativeInt('--seed'), 1)
    .option(
      '--teacher-service <targets>',
      'distil from the teacher-logit service (host:port, comma-separated replicas)',
    )
    .option('--teacher <dir>', 'distil from a teacher checkpoint held in this process (full logits)')
    .option('--top-k <n>', 'logits per position asked of the service', positiveInt('--top-k'), 64)
    .option(
      '--teacher-window <n>',
      'batches asked of the service ahead of the step being trained',
      nonNegativeInt('--teacher-window'),
      DEFAULT_TEACHER_WINDOW,
    )
    .option(
      '--alpha <x>',
      'weight of cross-entropy; 1 − alpha weighs the KL term',
      probability('--alpha'),
      DEFAULT_DISTILL.alpha,
    )
    .option(
      '--temperature <x>',
      'distillation temperature',
      positiveNumber('--temperature'),
      DEFAULT_DISTILL.temperature,
    )
    .addOption(new Option('--direction <d>', 'KL direction').choices(KL_DIRECTIONS).default(DEFAULT_DISTILL.direction))
    .option(
      '--checkpoint-every <n>',
      'steps between checkpoints (what a kill loses at most)',
      positiveInt('--checkpoint-every'),
      100,
    )
    .option(
      '--eval-every <n>',
      'steps between validation passes (and one before the first step)',
      positiveInt('--eval-every'),
    )
    .option('--eval-tokens <n>', 'validation tokens per pass', positiveInt('--eval-tokens'), 16384)
    .option(
      '--report-every <n>',
      'steps between loss read-backs (each syncs the device)',
      positiveInt('--report-every'),
      10,
    )
    .option(
      '--stop-at <n>',
      'stop after this step, checkpointed (the schedule still ends at --steps)',
      positiveInt('--stop-at'),
    )
    .action(withBackend(pretrainAction));
}
