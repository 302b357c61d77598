/**
 * Training a teacher: a GPT-NeoX of a preset shape, from random weights, on a corpus, with the training
 * recipe (core/model/recipe.ts), into a checkpoint directory that carries its tokenizer. Resumable: the
 * directory holds the model, the optimiser and trainer_state.json every `checkpointEvery` steps, and
 * training the same directory again continues from there (or does nothing when it is finished).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import {
  DEFAULT_VOCAB_SIZE,
  TOKENIZER_FILE,
  type Tokenizer,
  evalBatches,
  loadTokenizer,
  describeData,
  openData,
  sampleBatch,
  trainCorpusTokenizer,
} from '../data/index.js';
import {
  GPTNeoX,
  type StepReport,
  TRAINER_STATE_FILE,
  Trainer,
  evaluateLoss,
  parameterCount,
  presetConfig,
  readTrainerState,
  trainingHyperparameters,
} from '../model/index.js';
import * as tf from '../model/tfjs.js';

/** What to train: the model's shape, its tokenizer's size and the recipe's budget. */
export interface TeacherTrainSettings {
  /** Model shape (core/model presets). */
  preset: string;
  /** Vocabulary of the byte-level BPE trained on the corpus (when no tokenizer is given). */
  vocab: number;
  steps: number;
  /** Sequences per step. */
  batchSize: number;
  /** Tokens per sequence. */
  seqLen: number;
  /** Peak learning rate. */
  lr: number;
  /** Warmup steps. */
  warmup: number;
  /** Seed of the initialisation and the data order. */
  seed: number;
  /** Validation tokens per validation pass. */
  evalTokens: number;
  /** Steps between validation passes. Default a quarter of `steps`. */
  evalEvery?: number;
  /** Steps between checkpoints. Default a quarter of `steps`. */
  checkpointEvery?: number;
}

/** Defaults sized so the embedded teacher trains in a few minutes on two CPU cores. */
export const TEACHER_TRAIN_DEFAULTS = {
  preset: 'sotu-teacher',
  vocab: DEFAULT_VOCAB_SIZE,
  steps: 400,
  batchSize: 8,
  seqLen: 64,
  lr: 3e-3,
  warmup: 20,
  seed: 1,
  evalTokens: 16384,
} as const satisfies TeacherTrainSettings;

export interface TeacherTrainOptions extends TeacherTrainSettings {
  /** Training corpus (sotu:train, sotu:val, mobydick, or a text file, folder or JSONL path). */
  data: string;
  /** Validation corpus. */
  val: string;
  /** The checkpoint directory. */
  out: string;
  /** tokenizer.json or a folder holding one; default: a byte-level BPE of `vocab` tokens trained on `data`. */
  tokenizer?: string;
  /** Where tokenised corpora are cached. */
  tokenCache: string;
}

export interface TeacherStepReport extends StepReport {
  steps: number;
  /** The last validation loss (NaN before the first validation pass). */
  valLoss: number;
}

export interface TeacherTrainHooks {
  /** Lines saying what happens (data, model, resumption, validation before and after). */
  log?: (line: string) => void;
  /** Every few steps (when the loss is read back): progress bars, heartbeats. */
  onStep?: (report: TeacherStepReport) => void;
  /** Stops training at the next step boundary, checkpointed; the result says `stopped`. */
  signal?: AbortSignal;
}

export interface TeacherTrainResult {
  out: string;
  /** Content hash of the checkpoint. */
  hash: string;
  /** Steps completed (less than the settings' steps when stopped). */
  steps: number;
  stopped: boolean;
  parameters: number;
  initialValLoss: number;
  /** NaN when stopped early (no validation pass then). */
  finalValLoss: number;
  finalValPpl: number;
  tokensSeen: number;
  /** The tfjs backend it ran on. */
  backend: string;
}

/** Whether `dir` holds a finished teacher: a checkpoint without unfinished training (a Pythia download counts). */
export function teacherFinished(dir: string): boolean {
  if (!fs.existsSync(path.join(dir, 'config.json'))) return false;
  const state = readTrainerState(dir);
  return !state || state.step >= state.hyper.steps;
}

const quarter = (steps: number) => Math.max(1, Math.floor(steps / 4));
const REPORT_EVERY = 5;

async function teacherTokenizer(opts: TeacherTrainOptions, log: (line: string) => void): Promise<Tokenizer> {
  // A resumed run keeps the tokenizer its checkpoint was trained with.
  const saved = path.join(opts.out, TOKENIZER_FILE);
  if (fs.existsSync(path.join(opts.out, TRAINER_STATE_FILE)) && fs.existsSync(saved)) return loadTokenizer(saved);
  if (opts.tokenizer) return loadTokenizer(opts.tokenizer);
  log(`training a ${opts.vocab}-token byte-level BPE on ${opts.data}`);
  return trainCorpusTokenizer(opts.data, { vocabSize: opts.vocab });
}

/** Trains (or resumes, or finds finished) the teacher in `opts.out`. */
export async function trainTeacher(
  opts: TeacherTrainOptions,
  hooks: TeacherTrainHooks = {},
): Promise<TeacherTrainResult> {
  const log = hooks.log ?? (() => undefined);
  const tokenizer = await teacherTokenizer(opts, log);
  const train = await openData(opts.data, tokenizer, { cacheDir: opts.tokenCache, log });
  const val = await openData(opts.val, tokenizer, { cacheDir: opts.tokenCache, log });
  log(
    `data: training ${describeData(train)}; validation ${describeData(val)} (tokenizer ${tokenizer.name}, vocab ${tokenizer.vocabSize})`,
  );
  const config = presetConfig(opts.preset, tokenizer.vocabSize);
  if (opts.seqLen > config.maxPositions)
    throw new Error(`seqLen ${opts.seqLen} exceeds the ${opts.preset} context of ${config.maxPositions}`);
  const hyper = trainingHyperparameters({ steps: opts.steps, lr: opts.lr, warmup: opts.warmup }, opts);
  const evalOptions = { seqLen: opts.seqLen, batchSize: opts.batchSize, maxTokens: opts.evalTokens };
  const validate = (model: GPTNeoX) => evaluateLoss(model, evalBatches(val, evalOptions));
  let lastEval: { step: number; loss: number; ppl: number } | undefined;
  const trainer = Trainer.createOrResume(config, () => GPTNeoX.random(config, opts.seed), {
    hyper,
    batches: (step) => sampleBatch(train, { batchSize: opts.batchSize, seqLen: opts.seqLen, seed: opts.seed, step }),
    checkpointDir: opts.out,
    checkpointEvery: opts.checkpointEvery ?? quarter(opts.steps),
    extraFiles: { [TOKENIZER_FILE]: JSON.stringify(tokenizer.toJSON()) },
    // Reading the loss back syncs the device: every few steps is enough for progress and heartbeats.
    reportEvery: REPORT_EVERY,
    onStep: (r) => hooks.onStep?.({ ...r, steps: opts.steps, valLoss: lastEval?.loss ?? NaN }),
    evaluate: {
      every: opts.evalEvery ?? quarter(opts.steps),
      run: async (model, step) => {
        lastEval = { step, ...(await validate(model)) };
      },
    },
    signal: hooks.signal,
  });
  try {
    const parameters = parameterCount(config);
    log(
      `model: ${opts.preset}, ${parameters.toLocaleString('en-US')} parameters; ${opts.steps} steps of ${opts.batchSize}×${opts.seqLen} tokens; backend ${tf.getBackend()}`,
    );
    if (trainer.step > 0) log(`resuming from step ${trainer.step} in ${opts.out}`);
    const initial = await validate(trainer.model);
    log(`validation loss before: ${initial.loss.toFixed(4)} (perplexity ${initial.ppl.toFixed(1)})`);
    const result = await trainer.run();
    let final = { loss: NaN, ppl: NaN };
    if (result.stopped) {
      // Stopping is urgent (a cancelled activity, a worker draining): no validation pass now.
      log(`stopped at step ${result.step}; saved ${opts.out} (sha256 ${result.checkpointHash})`);
    } else {
      final = lastEval?.step === trainer.step ? lastEval : await validate(trainer.model);
      log(`validation loss after:  ${final.loss.toFixed(4)} (perplexity ${final.ppl.toFixed(1)})`);
      log(`saved ${opts.out} (sha256 ${result.checkpointHash})`);
    }
    return {
      out: opts.out,
      hash: result.checkpointHash ?? '',
      steps: result.step,
      stopped: result.stopped,
      parameters,
      initialValLoss: initial.loss,
      finalValLoss: final.loss,
      finalValPpl: final.ppl,
      tokensSeen: trainer.tokensSeen,
      backend: tf.getBackend(),
    };
  } finally {
    trainer.dispose();
    train.close();
    val.close();
  }
}
