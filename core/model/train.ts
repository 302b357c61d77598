/**
 * The training loop shared by `offshoot teacher train`, fitness evaluators and the pretraining actor:
 * cross-entropy or distillation, AdamW, warmup + cosine, gradient clipping, periodic checkpoints with
 * optimiser state. Batches come from a function of the step alone, so a run resumed from a checkpoint
 * sees exactly the data, and (on the cpu backend) computes exactly the weights, of an uninterrupted run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import * as tf from './tfjs.js';

import { type LoadedCheckpoint, loadCheckpoint, saveCheckpoint, type SaveDtype } from './checkpoint.js';
import type { NeoXConfig } from './config.js';
import { GPTNeoX } from './gptneox.js';
import { distillationLoss, topKFromLogits } from './losses.js';
import {
  type DistillOptions,
  type LossScaleOptions,
  type StepInput,
  type TopKTeacher,
  afterFirstTrainingStep,
  crossEntropy,
  endTrainingStep,
  lossScaling,
  runTrainingStep,
} from './ops/index.js';
import { AdamW, type AdamWOptions, type ScheduleOptions, learningRate } from './optim.js';
import { readSafetensors } from './safetensors.js';

export interface Batch {
  batchSize: number;
  seqLen: number;
  /** Token ids, batchSize × seqLen, row-major. */
  input: Int32Array;
  /** Next-token targets, same layout. */
  target: Int32Array;
}

/** Deterministic data: the batch for a step depends on the step alone. */
export type BatchSource = (step: number) => Batch;

/** Where distillation targets come from: a teacher in this process, or the teacher service. */
export interface Teacher {
  /** The teacher's view of a batch: full logits [N, V] or top-k. The caller disposes the tensors. */
  forBatch(batch: Batch, step: number): Promise<tf.Tensor2D | TopKTeacher>;
}

/** A teacher model held in this process; with topK set, it hands out only its top-k logits. */
export function inProcessTeacher(model: GPTNeoX, options: { topK?: number; temperature?: number } = {}): Teacher {
  return {
    async forBatch(batch) {
      const ids = tf.tensor2d(batch.input, [batch.batchSize, batch.seqLen], 'int32');
      try {
        if (!options.topK) return tf.tidy(() => model.logits2d(ids));
        const view = tf.tidy(() => {
          const top = topKFromLogits(model.logits2d(ids), options.topK!, options.temperature ?? 1);
          return { indices: top.indices, logits: top.logits, logNormaliser: top.logNormaliser };
        });
        return view as TopKTeacher;
      } finally {
        ids.dispose();
      }
    },
  };
}

export interface TrainHyperparameters {
  steps: number;
  batchSize: number;
  seqLen: number;
  schedule: ScheduleOptions;
  adamw: Partial<AdamWOptions>;
  gradClip: number;
  /** Seed of the data order (the BatchSource uses it) and of the student's initialisation. */
  seed: number;
}

export interface StepReport {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokensPerSecond: number;
  tokensSeen: number;
  /** With loss scaling: the scale now, and the steps skipped so far because their gradients overflowed. */
  lossScale?: number;
  skippedSteps?: number;
}

export interface TrainOptions {
  hyper: TrainHyperparameters;
  batches: BatchSource;
  teacher?: Teacher;
  distill?: DistillOptions;
  /** Where to keep the latest training checkpoint (model + optimiser + trainer_state.json). */
  checkpointDir?: string;
  /** Save every this many steps (and at the end). 0: only at the end. */
  checkpointEvery?: number;
  /** Precision of the saved weights. Resumable checkpoints need float32 (the default). */
  checkpointDtype?: SaveDtype;
  /** Extra files every checkpoint carries (e.g. tokenizer.json). */
  extraFiles?: Record<string, string | Buffer>;
  /** Read the loss back every this many steps (reading forces a device sync). Default 1. */
  reportEvery?: number;
  onStep?: (report: StepReport) => void;
  onCheckpoint?: (info: { step: number; dir: string; hash: string }) => void;
  /** Evaluate every `every` steps. */
  evaluate?: { every: number; run: (model: GPTNeoX, step: number) => Promise<void> };
  /**
   * Dynamic loss scaling (ops/adamw.ts's LossScale): by default on when the backend's mixed
   * precision needs it (f16 products on webgpu); true or options turn it on, false off.
   */
  lossScale?: boolean | Partial<LossScaleOptions>;
  /**
   * When aborted, the loop stops at the next step boundary (checkpointing into `checkpointDir`, when
   * set) and returns with `stopped`. With a signal the loop lets the event loop run after every step.
   */
  signal?: AbortSignal;
}

export interface TrainerState {
  format: 1;
  /** Steps completed. */
  step: number;
  hyper: TrainHyperparameters;
  tokensSeen: number;
}

export interface TrainResult {
  step: number;
  stopped: boolean;
  lastLoss: number;
  checkpointHash?: string;
}

export const TRAINER_STATE_FILE = 'trainer_state.json';
export const OPTIMIZER_FILE = 'optimizer.safetensors';

/** The training state a checkpoint directory carries, when offshoot trained it (else undefined). */
export function readTrainerState(dir: string): TrainerState | undefined {
  const stateFile = path.join(dir, TRAINER_STATE_FILE);
  if (!fs.existsSync(stateFile)) return undefined;
  try {
    return JSON.parse(fs.readFileSync(stateFile, 'utf8')) as TrainerState;
  } catch (err) {
    throw new Error(`${stateFile}: not valid JSON (${(err as Error).message})`);
  }
}

/** Reads a resumable training checkpoint: weights, optimiser state and trainer state. */
export function loadTrainingCheckpoint(dir: string): {
  checkpoint: LoadedCheckpoint;
  state: TrainerState;
  optimizer: ReturnType<typeof readSafetensors>['tensors'];
} {
  const checkpoint = loadCheckpoint(dir);
  const state = readTrainerState(dir);
  if (!state) throw new Error(`${dir}: not a resumable training checkpoint (no ${TRAINER_STATE_FILE})`);
  const optimizer = readSafetensors(path.join(dir, OPTIMIZER_FILE)).tensors;
  return { checkpoint, state, optimizer };
}

function sameHyper(a: TrainHyperparameters, b: TrainHyperparameters): string | null {
  for (const key of ['steps', 'batchSize', 'seqLen', 'gradClip', 'seed'] as const) {
    if (a[key] !== b[key]) return `${key} ${a[key]} vs ${b[key]}`;
  }
  if (JSON.stringify(a.schedule) !== JSON.stringify(b.schedule)) return 'learning-rate schedule differs';
  if (JSON.stringify(a.adamw) !== JSON.stringify(b.adamw)) return 'AdamW settings differ';
  return null;
}

export class Trainer {
  readonly model: GPTNeoX;
  readonly optimizer: AdamW;
  readonly options: TrainOptions;
  /** Steps completed. */
  step = 0;
  tokensSeen = 0;
  private readonly nameOf = new Map<string, string>();

  constructor(model: GPTNeoX, options: TrainOptions) {
    this.model = model;
    this.options = options;
    this.optimizer = new AdamW(options.hyper.adamw);
    const scaling = options.lossScale ?? lossScaling();
    if (scaling !== false) this.optimizer.useLossScale(scaling === true ? {} : scaling);
    for (const [name, v] of model.params) this.nameOf.set(v.name, name);
  }

  /** A trainer for a fresh student or, when `checkpointDir` holds a training checkpoint, resumed from it. */
  static createOrResume(config: NeoXConfig, initial: () => GPTNeoX, options: TrainOptions): Trainer {
    const dir = options.checkpointDir;
    if (dir && fs.existsSync(path.join(dir, TRAINER_STATE_FILE))) return Trainer.resume(dir, options);
    const model = initial();
    if (JSON.stringify(model.config) !== JSON.stringify(config))
      throw new Error('initial model does not match the config');
    return new Trainer(model, options);
  }

  static resume(dir: string, options: TrainOptions): Trainer {
    const { checkpoint, state, optimizer } = loadTrainingCheckpoint(dir);
    const mismatch = sameHyper(state.hyper, options.hyper);
    if (mismatch) {
      throw new Error(
        `${dir}: cannot resume with different hyperparameters (${mismatch}); use a new checkpoint folder`,
      );
    }
    const model = GPTNeoX.fromTensors(checkpoint.config, checkpoint.tensors, dir);
    const trainer = new Trainer(model, options);
    trainer.optimizer.loadState(optimizer);
    trainer.step = state.step;
    trainer.tokensSeen = state.tokensSeen;
    return trainer;
  }

  /** One optimisation step; returns the loss and gradient norm tensors (the caller reads or disposes them). */
  async trainStep(): Promise<{ loss: tf.Scalar; gradNorm: tf.Scalar; lr: number }> {
    const { hyper, batches, teacher } = this.options;
    const batch = batches(this.step);
    if (batch.input.length !== hyper.batchSize * hyper.seqLen) {
      throw new Error(
        `batch for step ${this.step} has ${batch.input.length} tokens, expected ${hyper.batchSize}×${hyper.seqLen}`,
      );
    }
    const teacherView = teacher ? await teacher.forBatch(batch, this.step) : undefined;
    const lr = learningRate(this.step, hyper.schedule);
    const inputs: StepInput[] = [
      { shape: [batch.batchSize, batch.seqLen], dtype: 'int32', data: batch.input },
      { shape: [batch.input.length], dtype: 'int32', data: batch.target },
    ];
    if (teacherView instanceof tf.Tensor)
      inputs.push({ shape: teacherView.shape, dtype: 'float32', data: teacherView });
    else if (teacherView) {
      inputs.push(
        { shape: teacherView.indices.shape, dtype: 'int32', data: teacherView.indices },
        { shape: teacherView.logits.shape, dtype: 'float32', data: teacherView.logits },
        { shape: teacherView.logNormaliser.shape, dtype: 'float32', data: teacherView.logNormaliser },
      );
    }
    const optimizer = this.optimizer.nextStep(lr, hyper.gradClip);
    const [loss, gradNorm] = runTrainingStep({
      key: teacherView === undefined ? 'ce' : teacherView instanceof tf.Tensor ? 'kd-full' : 'kd-top-k',
      inputs,
      optimizer,
      state: [...this.model.variables(), ...this.optimizer.stateTensors()],
      body: ([ids, targets, ...view]) => {
        const scale = this.optimizer.lossScale;
        // With a loss scale the gradients are of the scaled loss; the loss reported is the loss itself.
        let unscaled: tf.Scalar | undefined;
        const { value, grads } = tf.variableGrads(() => {
          const logits = this.model.logits2d(ids as tf.Tensor2D);
          let loss: tf.Scalar;
          if (view.length === 0) loss = crossEntropy(logits, targets as tf.Tensor1D);
          else {
            const t =
              view.length === 1
                ? (view[0] as tf.Tensor2D)
                : {
                    indices: view[0] as tf.Tensor2D,
                    logits: view[1] as tf.Tensor2D,
                    logNormaliser: view[2] as tf.Tensor1D,
                  };
            loss = distillationLoss(logits, targets as tf.Tensor1D, t, this.options.distill);
          }
          if (!scale) return loss;
          unscaled = tf.keep(loss);
          return scale.scaleLoss(loss);
        }, this.model.variables());
        const byName: Record<string, tf.Tensor> = {};
        for (const [varName, g] of Object.entries(grads)) byName[this.nameOf.get(varName)!] = g;
        return [unscaled ?? value, this.optimizer.applyStep(this.model.params, byName, optimizer)];
      },
    });
    const result = { loss: loss as tf.Scalar, gradNorm: gradNorm as tf.Scalar };
    endTrainingStep();
    if (teacherView) {
      tf.dispose(
        teacherView instanceof tf.Tensor
          ? teacherView
          : [teacherView.indices, teacherView.logits, teacherView.logNormaliser],
      );
    }
    this.step += 1;
    this.tokensSeen += batch.input.length;
    return { ...result, lr };
  }

  /** Saves a resumable checkpoint of the current state into `dir`; returns its content hash. */
  async saveCheckpoint(dir: string): Promise<string> {
    const state: TrainerState = { format: 1, step: this.step, hyper: this.options.hyper, tokensSeen: this.tokensSeen };
    return saveCheckpoint(dir, this.model.config, await this.model.toHost(), {
      dtype: this.options.checkpointDtype ?? 'float32',
      extraTensors: { [OPTIMIZER_FILE]: await this.optimizer.stateToHost() },
      extraFiles: { ...this.options.extraFiles, [TRAINER_STATE_FILE]: JSON.stringify(state, null, 2) + '\n' },
    });
  }

  /** Trains until `hyper.steps` (or `untilStep`) steps are done, or the signal aborts. */
  async run(untilStep = this.options.hyper.steps): Promise<TrainResult> {
    const {
      checkpointDir,
      checkpointEvery = 0,
      reportEvery = 1,
      onStep,
      onCheckpoint,
      evaluate,
      signal,
    } = this.options;
    let lastLoss = NaN;
    let hash: string | undefined;
    let windowStart = performance.now();
    let windowTokens = 0;
    let stopped = false;
    const startStep = this.step;
    while (this.step < untilStep) {
      if (signal?.aborted) {
        stopped = true;
        break;
      }
      const first = this.step;
      const { loss, gradNorm, lr } = await this.trainStep();
      // After the first step every shape has been seen (webgpu picks the fastest matrix-product plans).
      if (first === startStep) {
        const t = performance.now();
        await afterFirstTrainingStep();
        windowStart += performance.now() - t;
      }
      windowTokens += this.options.hyper.batchSize * this.options.hyper.seqLen;
      if (this.step % reportEvery === 0 || this.step === untilStep) {
        const [l, g, scaling] = await Promise.all([loss.data(), gradNorm.data(), this.optimizer.lossScale?.read()]);
        lastLoss = l[0];
        if (!Number.isFinite(lastLoss)) {
          tf.dispose([loss, gradNorm]);
          throw new Error(`training diverged at step ${this.step}: loss ${lastLoss}`);
        }
        const now = performance.now();
        onStep?.({
          step: this.step,
          loss: lastLoss,
          lr,
          gradNorm: g[0],
          tokensPerSecond: (windowTokens * 1000) / Math.max(1e-3, now - windowStart),
          tokensSeen: this.tokensSeen,
          ...(scaling ? { lossScale: scaling.scale, skippedSteps: scaling.skippedSteps } : {}),
        });
        windowStart = now;
        windowTokens = 0;
      }
      tf.dispose([loss, gradNorm]);
      if (evaluate && this.step % evaluate.every === 0) await evaluate.run(this.model, this.step);
      if (checkpointDir && checkpointEvery > 0 && this.step % checkpointEvery === 0 && this.step < untilStep) {
        hash = await this.saveCheckpoint(checkpointDir);
        onCheckpoint?.({ step: this.step, dir: checkpointDir, hash });
      }
      // A step may never leave the event loop (the tensorflow and cpu backends compute synchronously):
      // with a signal to watch, let timers and I/O run so that an abort (a SIGTERM handler, a cancelled
      // activity) and heartbeats get through.
      if (signal) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    if (checkpointDir) {
      hash = await this.saveCheckpoint(checkpointDir);
      onCheckpoint?.({ step: this.step, dir: checkpointDir, hash });
    }
    return { step: this.step, stopped, lastLoss, checkpointHash: hash };
  }

  dispose(): void {
    this.optimizer.dispose();
    this.model.dispose();
  }
}

/** Mean cross-entropy (per token) of a model over evaluation batches. */
export async function evaluateLoss(
  model: GPTNeoX,
  batches: Iterable<Batch>,
): Promise<{ loss: number; ppl: number; tokens: number }> {
  let total = 0;
  let tokens = 0;
  for (const batch of batches) {
    const loss = tf.tidy(() => {
      const ids = tf.tensor2d(batch.input, [batch.batchSize, batch.seqLen], 'int32');
      return crossEntropy(model.logits2d(ids), tf.tensor1d(batch.target, 'int32'));
    });
    const n = batch.input.length;
    total += (await loss.data())[0] * n;
    tokens += n;
    loss.dispose();
  }
  if (tokens === 0) throw new Error('evaluation set is empty: not a single full sequence');
  const mean = total / tokens;
  return { loss: mean, ppl: Math.exp(mean), tokens };
}
