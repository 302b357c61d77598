/** `offshoot teacher train`: train a GPT-NeoX on a corpus into a checkpoint directory (resumable). */
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Command } from 'commander';

import {
  DEFAULT_TRAIN_CORPUS,
  DEFAULT_VALIDATION_CORPUS,
  DEFAULT_VOCAB_SIZE,
  defaultTokenStore,
  TOKENIZER_FILE,
  type Tokenizer,
  loadTokenizer,
  describeData,
  openData,
  sampleBatch,
  trainCorpusTokenizer,
} from '../../core/data/index.js';
import {
  GPTNeoX,
  MODEL_PRESETS,
  TRAINER_STATE_FILE,
  type TrainHyperparameters,
  Trainer,
  parameterCount,
  presetConfig,
} from '../../core/model/index.js';
import { activeBackend, withBackend } from './backend-option.js';
import { nonNegativeInt, positiveInt, positiveNumber } from './common.js';
import { evaluateOnCorpus } from './eval.js';
import { ProgressBar } from './progress.js';

/** Defaults sized so the embedded teacher trains in a few minutes on two CPU cores. */
export const TEACHER_DEFAULTS = {
  preset: 'sotu-teacher',
  steps: 400,
  batchSize: 8,
  seqLen: 64,
  lr: 3e-3,
  warmup: 20,
  seed: 1,
  evalEvery: 100,
  evalTokens: 16384,
  checkpointEvery: 100,
};

export interface TeacherTrainOptions {
  data: string;
  val: string;
  out: string;
  preset: string;
  tokenizer?: string;
  vocab: number;
  steps: number;
  batchSize: number;
  seqLen: number;
  lr: number;
  warmup: number;
  seed: number;
  evalEvery: number;
  evalTokens: number;
  checkpointEvery: number;
  json?: boolean;
}

export interface TeacherTrainResult {
  out: string;
  hash: string;
  steps: number;
  parameters: number;
  initialValLoss: number;
  finalValLoss: number;
  finalValPpl: number;
  tokensSeen: number;
  backend: string;
}

async function teacherTokenizer(opts: TeacherTrainOptions, log: (s: string) => void): Promise<Tokenizer> {
  const saved = path.join(opts.out, TOKENIZER_FILE);
  if (fs.existsSync(path.join(opts.out, TRAINER_STATE_FILE)) && fs.existsSync(saved)) return loadTokenizer(saved);
  if (opts.tokenizer) return loadTokenizer(opts.tokenizer);
  log(`training a ${opts.vocab}-token byte-level BPE on ${opts.data}`);
  return trainCorpusTokenizer(opts.data, { vocabSize: opts.vocab });
}

export async function trainTeacher(opts: TeacherTrainOptions, log: (s: string) => void = (s) => process.stderr.write(`${s}\n`)): Promise<TeacherTrainResult> {
  const tokenizer = await teacherTokenizer(opts, log);
  const tokens = defaultTokenStore();
  const train = await openData(opts.data, tokenizer, { cacheDir: tokens, log });
  const val = await openData(opts.val, tokenizer, { cacheDir: tokens, log });
  log(`data: training ${describeData(train)}; validation ${describeData(val)} (tokenizer ${tokenizer.name}, vocab ${tokenizer.vocabSize})`);
  const config = presetConfig(opts.preset, tokenizer.vocabSize);
  if (opts.seqLen > config.maxPositions) throw new Error(`--seq-len ${opts.seqLen} exceeds the ${opts.preset} context of ${config.maxPositions}`);
  const hyper: TrainHyperparameters = {
    steps: opts.steps,
    batchSize: opts.batchSize,
    seqLen: opts.seqLen,
    schedule: { maxLr: opts.lr, minLr: opts.lr / 10, warmupSteps: Math.min(opts.warmup, opts.steps), totalSteps: opts.steps },
    adamw: { weightDecay: 0.1 },
    gradClip: 1,
    seed: opts.seed,
  };
  const evalOptions = { seqLen: opts.seqLen, batchSize: opts.batchSize, maxTokens: opts.evalTokens };
  const bar = new ProgressBar(opts.steps, 'train');
  let lastVal = NaN;
  const trainer = Trainer.createOrResume(config, () => GPTNeoX.random(config, opts.seed), {
    hyper,
    batches: (step) => sampleBatch(train, { batchSize: opts.batchSize, seqLen: opts.seqLen, seed: opts.seed, step }),
    checkpointDir: opts.out,
    checkpointEvery: opts.checkpointEvery,
    extraFiles: { [TOKENIZER_FILE]: JSON.stringify(tokenizer.toJSON()) },
    reportEvery: 5,
    onStep: (r) =>
      bar.update(r.step, `loss ${r.loss.toFixed(3)} val ${Number.isNaN(lastVal) ? '-' : lastVal.toFixed(3)} ${Math.round(r.tokensPerSecond)} tok/s`),
    evaluate: {
      every: opts.evalEvery,
      run: async (model) => {
        lastVal = (await evaluateOnCorpus(model, val, evalOptions)).loss;
      },
    },
  });
  log(
    `model: ${opts.preset}, ${parameterCount(config).toLocaleString('en-US')} parameters; ${opts.steps} steps of ${opts.batchSize}×${opts.seqLen} tokens; backend ${activeBackend()?.name ?? '?'}`,
  );
  if (trainer.step > 0) log(`resuming from step ${trainer.step} in ${opts.out}`);
  const initial = await evaluateOnCorpus(trainer.model, val, evalOptions);
  log(`validation loss before: ${initial.loss.toFixed(4)} (perplexity ${initial.ppl.toFixed(1)})`);
  const result = await trainer.run();
  bar.done();
  const final = await evaluateOnCorpus(trainer.model, val, evalOptions);
  log(`validation loss after:  ${final.loss.toFixed(4)} (perplexity ${final.ppl.toFixed(1)})`);
  log(`saved ${opts.out} (sha256 ${result.checkpointHash})`);
  const summary: TeacherTrainResult = {
    out: opts.out,
    hash: result.checkpointHash ?? '',
    steps: result.step,
    parameters: parameterCount(config),
    initialValLoss: initial.loss,
    finalValLoss: final.loss,
    finalValPpl: final.ppl,
    tokensSeen: trainer.tokensSeen,
    backend: activeBackend()?.name ?? 'unknown',
  };
  trainer.dispose();
  train.close();
  val.close();
  return summary;
}

export function registerTeacherCommands(program: Command): void {
  const teacher = program.command('teacher').description('the teacher model: train one, or serve its logits');
  const d = TEACHER_DEFAULTS;
  teacher
    .command('train')
    .description('train a GPT-NeoX on a corpus into a checkpoint directory; rerunning continues an unfinished run')
    .option('--data <spec>', 'training data spec: sotu:train, sotu:val, mobydick, a file, folder or glob, or a spec file (docs/data.md)', DEFAULT_TRAIN_CORPUS)
    .option('--val <spec>', 'validation corpus', DEFAULT_VALIDATION_CORPUS)
    .option('--out <dir>', 'checkpoint directory', 'runs/teacher')
    .option('--preset <name>', `model shape: ${Object.keys(MODEL_PRESETS).join(', ')}`, d.preset)
    .option('--tokenizer <path>', 'tokenizer.json (or a folder holding one); default: train a byte-level BPE on --data')
    .option('--vocab <n>', 'vocabulary of the trained BPE', positiveInt('--vocab'), DEFAULT_VOCAB_SIZE)
    .option('--steps <n>', 'optimisation steps', positiveInt('--steps'), d.steps)
    .option('--batch-size <n>', 'sequences per step', positiveInt('--batch-size'), d.batchSize)
    .option('--seq-len <n>', 'tokens per sequence', positiveInt('--seq-len'), d.seqLen)
    .option('--lr <x>', 'peak learning rate (cosine decay to a tenth)', positiveNumber('--lr'), d.lr)
    .option('--warmup <n>', 'warmup steps', nonNegativeInt('--warmup'), d.warmup)
    .option('--seed <n>', 'seed of initialisation and data order', nonNegativeInt('--seed'), d.seed)
    .option('--eval-every <n>', 'steps between validation passes', positiveInt('--eval-every'), d.evalEvery)
    .option('--eval-tokens <n>', 'validation tokens per pass', positiveInt('--eval-tokens'), d.evalTokens)
    .option('--checkpoint-every <n>', 'steps between checkpoints', positiveInt('--checkpoint-every'), d.checkpointEvery)
    .option('--json', 'print a JSON summary at the end')
    .action(
      withBackend(async (opts: TeacherTrainOptions) => {
        const summary = await trainTeacher(opts);
        if (opts.json) console.log(JSON.stringify(summary));
      }),
    );
}
