/**
 * The training loop shared by `offshoot teacher train`, fitness evaluators and the pretraining actor:
 * cross-entropy or distillation, AdamW, warmup + cosine, gradient clipping, periodic checkpoints with
 * optimiser state. Batches come from a function of the step alone, so a run resumed from a checkpoint
 * sees exactly the data, and (on the cpu backend) computes exactly the weights, of an uninterrupted run.
 *
 * Gradient accumulation (`microBatchSize`) and data parallelism (`parallel`, core/model/parallel): a
 * step's gradients are the mean over its micro-batches and, with several ranks, over the ranks' rows
 * of the global batch, so the update is the one a single pass over the whole batch would make.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import * as tf from './tfjs.js';

import {
  CheckpointWriter,
  type LoadedCheckpoint,
  type SaveDtype,
  type SaveOptions,
  loadCheckpoint,
  saveCheckpoint,
} from './checkpoint.js';
import type { NeoXConfig } from './config.js';
import { GPTNeoX, checkTokenIds } from './gptneox.js';
import { variableGradients } from './gradients.js';
import { distillationLoss, topKFromLogits } from './losses.js';
import {
  type AdamWStep,
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
import type { HostTensor } from './safetensors.js';
import {
  type GradientAllReduce,
  type HostAllReduce,
  type RankLayout,
  rankLayout,
  sliceRows,
} from './parallel/index.js';
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
  /**
   * The teacher's view of a batch: full logits [N, V] or top-k. The caller disposes the tensors.
   * `steps`: how many steps the run trains in all (a teacher that asks ahead asks for none past them).
   */
  forBatch(batch: Batch, step: number, steps?: number): Promise<tf.Tensor2D | TopKTeacher>;
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
   * Data-parallel ranks stop together: a rank whose signal is aborted says so in the next step's
   * all-reduce, and every rank stops after that step.
   */
  signal?: AbortSignal;
  /**
   * Data-parallel training: this rank's all-reduce. `batches` still gives each step's global batch;
   * this rank trains on its rows of it (parallel/index.ts rankLayout), and only rank 0 writes
   * checkpoints. Every rank must be given the same options.
   */
  parallel?: GradientAllReduce;
  /** Rows per forward/backward pass (gradient accumulation); default: all of this rank's rows in one pass. */
  microBatchSize?: number;
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

/**
 * Backends whose read-backs are fresh arrays, which may move to the checkpoint writer's thread instead
 * of being copied; the cpu backend returns its tensors' own arrays, and webgpu its cached copies.
 */
const READ_BACKS_ARE_COPIES = new Set(['cuda', 'tensorflow', 'wasm']);

export class Trainer {
  readonly model: GPTNeoX;
  readonly optimizer: AdamW;
  readonly options: TrainOptions;
  /** Steps completed. */
  step = 0;
  tokensSeen = 0;
  private readonly nameOf = new Map<string, string>();
  /** The thread that writes run()'s periodic checkpoints, started with the first. */
  private writer?: CheckpointWriter;

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

  /** Whether this trainer writes checkpoints: always, except on data-parallel ranks other than 0. */
  get writesCheckpoints(): boolean {
    return (this.options.parallel?.rank ?? 0) === 0;
  }

  /**
   * One optimisation step; returns the loss and gradient norm tensors (the caller reads or disposes
   * them), and whether any data-parallel rank asked to stop after this step (`stopVote` is this
   * rank's say; always false without ranks).
   */
  async trainStep(
    stopVote = false,
  ): Promise<{ loss: tf.Scalar; gradNorm: tf.Scalar; lr: number; stop: Promise<boolean> }> {
    const { hyper, batches, teacher, parallel } = this.options;
    const global = batches(this.step);
    if (global.input.length !== hyper.batchSize * hyper.seqLen) {
      throw new Error(
        `batch for step ${this.step} has ${global.input.length} tokens, expected ${hyper.batchSize}×${hyper.seqLen}`,
      );
    }
    // An id past the vocabulary would make the embedding's gather and gradient read and write outside
    // their tables on a GPU (silently), and the loss pick a logit that is not there.
    const vocab = this.model.config.vocabSize;
    checkTokenIds(global.input, vocab, `batch for step ${this.step}, input`);
    checkTokenIds(global.target, vocab, `batch for step ${this.step}, target`);
    const layout = rankLayout(
      hyper.batchSize,
      parallel?.rank ?? 0,
      parallel?.worldSize ?? 1,
      this.options.microBatchSize,
    );
    const batch = layout.rows === global.batchSize ? global : sliceRows(global, layout.first, layout.rows);
    const teacherView = teacher ? await teacher.forBatch(batch, this.step, hyper.steps) : undefined;
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
    let result: { loss: tf.Scalar; gradNorm: tf.Scalar; stop: Promise<boolean> };
    try {
      if (parallel?.kind === 'host') result = await this.hostReducedStep(parallel, inputs, optimizer, layout, stopVote);
      else {
        // The stop vote travels with the gradients through a device all-reduce.
        if (parallel) inputs.push({ shape: [1], dtype: 'float32', data: Float32Array.of(stopVote ? 1 : 0) });
        const [loss, gradNorm, votes] = runTrainingStep({
          key: teacherView === undefined ? 'ce' : teacherView instanceof tf.Tensor ? 'kd-full' : 'kd-top-k',
          inputs,
          optimizer,
          state: [...this.model.variables(), ...this.optimizer.stateTensors()],
          body: (tensors) => {
            const [ids, targets, ...view] = tensors;
            const vote = parallel ? view.pop()! : undefined;
            const { value, grads } = this.gradients(ids, targets, view, layout);
            if (!parallel) return [value, this.optimizer.applyStep(this.model.params, grads, optimizer)];
            const names = Object.keys(grads);
            const reduced = parallel.allReduceMean([
              ...names.map((n) => grads[n]),
              tf.concat([tf.reshape(value, [1]), vote!]),
            ]);
            const [lossAndVote] = reduced.splice(names.length, 1);
            const mean = Object.fromEntries(names.map((n, i) => [n, reduced[i]]));
            return [
              tf.reshape(tf.slice(lossAndVote, [0], [1]), []),
              this.optimizer.applyStep(this.model.params, mean, optimizer),
              tf.slice(lossAndVote, [1], [1]),
            ];
          },
        });
        const stop = votes
          ? votes
              .data()
              .then((v) => v[0] > 0)
              .finally(() => votes.dispose())
          : Promise.resolve(false);
        result = { loss: loss as tf.Scalar, gradNorm: gradNorm as tf.Scalar, stop };
      }
    } finally {
      if (teacherView) {
        tf.dispose(
          teacherView instanceof tf.Tensor
            ? teacherView
            : [teacherView.indices, teacherView.logits, teacherView.logNormaliser],
        );
      }
    }
    endTrainingStep();
    this.step += 1;
    this.tokensSeen += global.input.length;
    return { ...result, lr };
  }

  /**
   * The loss and the parameters' gradients (by parameter name) of this rank's rows: the mean over its
   * micro-batches when there are several.
   */
  private gradients(
    ids: tf.Tensor,
    targets: tf.Tensor,
    view: tf.Tensor[],
    layout: RankLayout,
  ): { value: tf.Scalar; grads: Record<string, tf.Tensor> } {
    const lossOf = (i: tf.Tensor, t: tf.Tensor, v: tf.Tensor[]) => () => {
      if (v.length === 0) return this.model.crossEntropy(i as tf.Tensor2D, t as tf.Tensor1D);
      const logits = this.model.logits2d(i as tf.Tensor2D);
      const teacher =
        v.length === 1
          ? (v[0] as tf.Tensor2D)
          : { indices: v[0] as tf.Tensor2D, logits: v[1] as tf.Tensor2D, logNormaliser: v[2] as tf.Tensor1D };
      return distillationLoss(logits, t as tf.Tensor1D, teacher, this.options.distill);
    };
    const passOver = (i: tf.Tensor, t: tf.Tensor, v: tf.Tensor[]) => {
      // With a loss scale the gradients are those of the scaled loss; the value is the loss itself.
      const scale = this.optimizer.lossScale;
      let kept: tf.Scalar | undefined;
      const { value, grads } = variableGradients(() => {
        const loss = lossOf(i, t, v)();
        if (!scale) return loss;
        kept = tf.keep(loss);
        return scale.scaleLoss(loss);
      }, this.model.variables());
      const byName: Record<string, tf.Tensor> = {};
      for (const [varName, g] of Object.entries(grads)) byName[this.nameOf.get(varName)!] = g;
      if (!kept) return { value, grads: byName };
      // A tensor of the caller's scope, as `value` is.
      const loss = kept.clone();
      tf.dispose([kept, value]);
      return { value: loss, grads: byName };
    };
    const k = layout.microBatches;
    if (k === 1) return passOver(ids, targets, view);
    const rows = layout.microBatchSize;
    const seqLen = ids.shape[1]!;
    const positions = rows * seqLen;
    let sum: { value: tf.Scalar; grads: Record<string, tf.Tensor> } | undefined;
    for (let m = 0; m < k; m++) {
      // A micro-batch's rows, and the teacher's view of their positions (rows of [positions, …] tensors).
      const part = [
        tf.slice(ids, [m * rows, 0], [rows, seqLen]),
        tf.slice(targets, [m * positions], [positions]),
        ...view.map((x) =>
          tf.slice(x, [m * positions, ...x.shape.slice(1).map(() => 0)], [positions, ...x.shape.slice(1)]),
        ),
      ];
      const pass = passOver(part[0], part[1], part.slice(2));
      tf.dispose(part);
      if (!sum) {
        sum = pass;
        continue;
      }
      const added: Record<string, tf.Tensor> = {};
      for (const [name, g] of Object.entries(pass.grads)) added[name] = tf.add(sum.grads[name], g);
      const value = tf.add(sum.value, pass.value) as tf.Scalar;
      tf.dispose([sum.value, pass.value, ...Object.values(sum.grads), ...Object.values(pass.grads)]);
      sum = { value, grads: added };
    }
    const mean: Record<string, tf.Tensor> = {};
    for (const [name, g] of Object.entries(sum!.grads)) mean[name] = tf.div(g, k);
    const value = tf.div(sum!.value, k) as tf.Scalar;
    tf.dispose([sum!.value, ...Object.values(sum!.grads)]);
    return { value, grads: mean };
  }

  /**
   * A step whose all-reduce goes through host memory: the gradients (and the loss and this rank's
   * stop vote) are read back as one array, averaged over the ranks, and the update applied from the
   * means. It runs outside `runTrainingStep`, since a captured step cannot wait for the host.
   */
  private async hostReducedStep(
    reduce: HostAllReduce,
    inputs: StepInput[],
    optimizer: AdamWStep,
    layout: RankLayout,
    stopVote: boolean,
  ): Promise<{ loss: tf.Scalar; gradNorm: tf.Scalar; stop: Promise<boolean> }> {
    const made: tf.Tensor[] = [];
    const tensors = inputs.map((i) => {
      if (i.data instanceof tf.Tensor) return i.data;
      const t = tf.tensor(i.data, i.shape, i.dtype);
      made.push(t);
      return t;
    });
    const params = [...this.model.params];
    let flat: tf.Tensor;
    try {
      flat = tf.tidy(() => {
        const [ids, targets, ...view] = tensors;
        const { value, grads } = this.gradients(ids, targets, view, layout);
        return tf.concat([...params.map(([name]) => tf.reshape(grads[name], [-1])), tf.reshape(value, [1])]);
      });
    } finally {
      tf.dispose(made);
    }
    // [gradients…, loss, stop vote], averaged in place.
    const values = new Float32Array(flat.size + 1);
    values.set((await flat.data()) as Float32Array);
    flat.dispose();
    values[flat.size] = stopVote ? 1 : 0;
    await reduce.allReduceMean(values);
    const loss = tf.scalar(values[flat.size - 1]);
    const gradNorm = tf.tidy(() => {
      const grads: Record<string, tf.Tensor> = {};
      let offset = 0;
      for (const [name, v] of params) {
        grads[name] = tf.tensor(values.slice(offset, offset + v.size), v.shape, 'float32');
        offset += v.size;
      }
      return this.optimizer.applyStep(this.model.params, grads, optimizer);
    });
    return { loss, gradNorm, stop: Promise.resolve(values[flat.size] > 0) };
  }

  /** Saves a resumable checkpoint of the current state into `dir`; returns its content hash. */
  async saveCheckpoint(dir: string): Promise<string> {
    const { tensors, options } = await this.snapshot();
    return saveCheckpoint(dir, this.model.config, tensors, options);
  }

  /**
   * Takes the current state to the host and has the checkpoint writer's thread save it into `dir`
   * while training goes on; resolves to its content hash once the directory is in place.
   */
  private async saveCheckpointInBackground(dir: string): Promise<string> {
    const { tensors, options } = await this.snapshot();
    this.writer ??= new CheckpointWriter();
    return this.writer.save(dir, this.model.config, tensors, options, READ_BACKS_ARE_COPIES.has(tf.getBackend()));
  }

  /** The weights, optimiser state and trainer state of this step, on the host. */
  private async snapshot(): Promise<{ tensors: Map<string, HostTensor>; options: SaveOptions }> {
    const state: TrainerState = { format: 1, step: this.step, hyper: this.options.hyper, tokensSeen: this.tokensSeen };
    // Both read-backs start now, before training goes on (host.ts).
    const [tensors, optimizerState] = await Promise.all([this.model.toHost(), this.optimizer.stateToHost()]);
    return {
      tensors,
      options: {
        dtype: this.options.checkpointDtype ?? 'float32',
        extraTensors: { [OPTIMIZER_FILE]: optimizerState },
        extraFiles: { ...this.options.extraFiles, [TRAINER_STATE_FILE]: `${JSON.stringify(state, null, 2)}\n` },
      },
    };
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
    const parallel = this.options.parallel !== undefined;
    // The periodic checkpoint being written (one at a time); it reports itself once in place.
    let writing: Promise<void> | undefined;
    try {
      while (this.step < untilStep) {
        if (signal?.aborted && !parallel) {
          stopped = true;
          break;
        }
        const first = this.step;
        const { loss, gradNorm, lr, stop } = await this.trainStep(signal?.aborted ?? false);
        // After the first step every shape has been seen (webgpu picks the fastest matrix-product plans).
        if (first === startStep) {
          const t = performance.now();
          await afterFirstTrainingStep(untilStep - this.step);
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
        // Every rank reads the same votes, so every rank stops after the same step.
        const stopNow = await stop;
        if (evaluate && this.step % evaluate.every === 0) await evaluate.run(this.model, this.step);
        if (stopNow) {
          stopped = true;
          break;
        }
        if (
          checkpointDir &&
          this.writesCheckpoints &&
          checkpointEvery > 0 &&
          this.step % checkpointEvery === 0 &&
          this.step < untilStep
        ) {
          await writing;
          const step = this.step;
          writing = this.saveCheckpointInBackground(checkpointDir).then(
            (h) => {
              hash = h;
              onCheckpoint?.({ step, dir: checkpointDir, hash: h });
            },
            (err: Error) => {
              throw new Error(
                `the checkpoint of step ${step} could not be written to ${checkpointDir}: ${err.message}`,
              );
            },
          );
          // Its failure surfaces where it is awaited (the next checkpoint, or the end of the run).
          writing.catch(() => {});
        }
        // A step may never leave the event loop (the tensorflow and cpu backends compute synchronously):
        // with a signal to watch, let timers and I/O run so that an abort (a SIGTERM handler, a cancelled
        // activity) and heartbeats get through.
        if (signal) await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } catch (err) {
      // A checkpoint on its way lands (or fails) before the error goes up.
      await writing?.catch(() => {});
      throw err;
    }
    await writing;
    if (checkpointDir && this.writesCheckpoints) {
      hash = await this.saveCheckpoint(checkpointDir);
      onCheckpoint?.({ step: this.step, dir: checkpointDir, hash });
    }
    return { step: this.step, stopped, lastLoss, checkpointHash: hash };
  }

  dispose(): void {
    void this.writer?.close();
    this.optimizer.dispose();
    this.model.dispose();
  }
}

/** A batch already on the device: a validation set kept there across evaluations. The owner disposes it. */
export interface DeviceBatch {
  ids: tf.Tensor2D;
  targets: tf.Tensor1D;
}

/** Copies batches to the device once (for evaluating many models on the same batches). */
export function uploadBatches(batches: Iterable<Batch>): DeviceBatch[] {
  return [...batches].map((b) => ({
    ids: tf.tensor2d(b.input, [b.batchSize, b.seqLen], 'int32'),
    targets: tf.tensor1d(b.target, 'int32'),
  }));
}

/** Mean cross-entropy (per token) of a model over evaluation batches, from the host or already on the device. */
export async function evaluateLoss(
  model: GPTNeoX,
  batches: Iterable<Batch | DeviceBatch>,
): Promise<{ loss: number; ppl: number; tokens: number }> {
  let total = 0;
  let tokens = 0;
  for (const batch of batches) {
    const onDevice = 'ids' in batch;
    const loss = tf.tidy(() => {
      const ids = onDevice ? batch.ids : tf.tensor2d(batch.input, [batch.batchSize, batch.seqLen], 'int32');
      const targets = onDevice ? batch.targets : tf.tensor1d(batch.target, 'int32');
      return crossEntropy(model.logits2d(ids), targets);
    });
    const n = onDevice ? batch.targets.size : batch.input.length;
    total += (await loss.data())[0] * n;
    tokens += n;
    loss.dispose();
  }
  if (tokens === 0) throw new Error('evaluation set is empty: not a single full sequence');
  const mean = total / tokens;
  return { loss: mean, ppl: Math.exp(mean), tokens };
}
