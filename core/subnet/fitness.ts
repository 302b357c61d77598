/**
 * Fitness functions for the search, stateless: (teacher ref, spec, data ref, budget, seed) → metrics.
 *
 *   zero-shot: validation loss of the inherited weights, no training (whittle's proxy).
 *   brief:     N steps of training, with distillation from the teacher held in this process (default)
 *              or plain cross-entropy, then validation loss.
 * Tokens and FLOPs spent are reported (count.ts formulas at the training sequence length). `init:
 * 'random'` trains a freshly initialised model of the same shape instead, the baseline a sub-network
 * must beat.
 *
 * A FitnessContext caches what several evaluations of one teacher share (its tensors, the teacher
 * model for distillation, the tokenised data, the validation batches on the device, importance
 * scores), so that a long-lived evaluator pays for them once; evaluateFitness creates one per call
 * when none is passed, so results never depend on it. Each evaluation reports where its time went
 * (FitnessPhases): the one-off work of new shapes apart from its steady compute.
 */
import * as path from 'node:path';

import {
  DEFAULT_TRAIN_CORPUS,
  DEFAULT_VALIDATION_CORPUS,
  type TokenSource,
  defaultTokenStore,
  type Tokenizer,
  evalBatches,
  loadTokenizer,
  openData,
  sampleBatch,
} from '../data/index.js';
import {
  type BatchSource,
  DEFAULT_DISTILL,
  type DeviceBatch,
  type DistillOptions,
  GPTNeoX,
  type LoadedCheckpoint,
  type StepReport,
  type Teacher,
  Trainer,
  evaluateLoss,
  inProcessTeacher,
  loadCheckpoint,
  releaseCachedMemory,
  shapeCostTotals,
  trainingHyperparameters,
  uploadBatches,
} from '../model/index.js';
import { gpuBackendActive } from '../model/backend.js';
import * as tf from '../model/tfjs.js';
import { resolveOptions } from './checkpoint.js';
import { countShape } from './count.js';
import { extractTensors } from './extract.js';
import { type HeadOrder, type LayerOrder, type SubnetSpec, canonicalHash, canonicalize, teacherShape } from './spec.js';

export interface FitnessData {
  /** Training data spec (docs/data.md: sotu:train, a path, a glob, a spec file…). Default sotu:train. */
  train?: string;
  /** Validation data spec. Default sotu:val. */
  val?: string;
  /** Tokenizer file or folder; default the teacher checkpoint's tokenizer.json. */
  tokenizer?: string;
  /** Token store folder; default defaultTokenStore() (env OFFSHOOT_TOKENS, else <cache>/tokens). */
  tokenCache?: string;
}

/** zero-shot: validation loss of the inherited weights; brief: after a brief training. */
export const FITNESS_KINDS = ['zero-shot', 'brief'] as const;
export type FitnessKind = (typeof FITNESS_KINDS)[number];
/** A brief training's loss: distillation from the teacher, or plain cross-entropy. */
export const FITNESS_LOSSES = ['distill', 'ce'] as const;
export type FitnessLoss = (typeof FITNESS_LOSSES)[number];

export interface FitnessBudget {
  kind: FitnessKind;
  /** Training steps (brief). Default 100. */
  steps?: number;
  /** Sequences per step and per evaluation batch. Default 8. */
  batchSize?: number;
  /** Tokens per sequence, for training and evaluation. Default min(teacher context, 64). */
  seqLen?: number;
  /** Peak learning rate of the training recipe (core/model/recipe.ts). Default 3e-3. */
  lr?: number;
  /** Warmup steps. Default min(10, steps). */
  warmup?: number;
  /** 'distill' (default) or 'ce'. */
  loss?: FitnessLoss;
  distill?: DistillOptions;
  /** Validation tokens. Default 8192. */
  evalTokens?: number;
  /** Also measure the validation loss before training (brief). Default false. */
  zeroShotEval?: boolean;
}

export interface FitnessRequest {
  /** Teacher checkpoint directory. */
  teacher: string;
  spec: SubnetSpec;
  data?: FitnessData;
  budget: FitnessBudget;
  /** Seed of the data order and of a random initialisation. */
  seed: number;
  /** 'inherit' (default): the teacher's sliced weights; 'random': a fresh model of the same shape. */
  init?: 'inherit' | 'random';
  /** Orderings for counts in the spec. Default first-k / first. */
  order?: HeadOrder;
  layers?: LayerOrder;
  /** Calibration sequences for importance orderings. Default 8. */
  calibrationBatchSize?: number;
}

export interface FitnessMetrics {
  specHash: string;
  teacherHash: string;
  init: 'inherit' | 'random';
  kind: FitnessKind;
  parameters: number;
  /** The fitness: validation loss after the budget. */
  valLoss: number;
  valPpl: number;
  /** Validation loss before training (zero-shot, or brief with zeroShotEval). */
  zeroShotValLoss?: number;
  steps: number;
  lastTrainLoss?: number;
  trainTokens: number;
  evalTokens: number;
  flops: {
    /** Student training: trainTokens × (6·N + 3·attention). */
    training: number;
    /** Teacher forward passes for distillation: trainTokens × teacher forward. */
    teacher: number;
    /** Validation passes: evalTokens × forward, per pass. */
    evaluation: number;
    total: number;
  };
  seqLen: number;
  /** Wall time of the evaluation (informational; not part of the fitness). */
  seconds: number;
  /** Where that time went. */
  phases: FitnessPhases;
}

/** The phases of an evaluation. */
export const FITNESS_PHASES = [
  'extraction',
  'teacherForward',
  'pipelines',
  'autotune',
  'training',
  'evaluation',
] as const;
export type FitnessPhase = (typeof FITNESS_PHASES)[number];

/**
 * Seconds of an evaluation's wall time per phase, as the host sees them:
 *   extraction:     slicing the candidate out of the teacher and onto the device;
 *   teacherForward: the teacher's view of each training batch (in process, or from the teacher service);
 *   pipelines:      compiling GPU programs for shapes new to this process, wherever it happened;
 *   autotune:       timing matrix-product plans for shape classes new to this GPU;
 *   training:       the brief training's steps, less the above;
 *   evaluation:     validation passes, less compiling.
 * The first two and the last two are steady compute, pipelines and autotune the per-shape costs. On a
 * GPU the host records work ahead of the device, so GPU time recorded in one phase can be waited for in
 * a later one (the teacher's forward pass mostly lands in training); compiling and autotuning happen on
 * the host and are counted exactly.
 */
export type FitnessPhases = Record<FitnessPhase, number>;

const PHASE_LABELS: Record<FitnessPhase, string> = {
  extraction: 'extraction',
  teacherForward: 'teacher forward',
  pipelines: 'pipelines',
  autotune: 'autotune',
  training: 'training',
  evaluation: 'evaluation',
};

/** The phases of several evaluations added up. */
export function sumPhases(list: FitnessPhases[]): FitnessPhases {
  return Object.fromEntries(FITNESS_PHASES.map((p) => [p, list.reduce((a, x) => a + x[p], 0)])) as FitnessPhases;
}

/** "extraction 0.12 s, teacher forward 0.40 s, ...": where an evaluation's time went, for logs. */
export function describePhases(phases: FitnessPhases): string {
  return FITNESS_PHASES.map((p) => `${PHASE_LABELS[p]} ${phases[p].toFixed(2)} s`).join(', ');
}

type MeasuredPhase = Exclude<FitnessPhase, 'pipelines' | 'autotune'>;

/** Splits an evaluation's wall time into phases; `time` calls may nest (the teacher inside training). */
class PhaseClock {
  readonly ms: FitnessPhases = {
    extraction: 0,
    teacherForward: 0,
    pipelines: 0,
    autotune: 0,
    training: 0,
    evaluation: 0,
  };
  /** Per open `time` call: the wall time and per-shape costs of the calls nested in it. */
  private readonly open: Array<{ wall: number; compile: number; autotune: number }> = [];

  async time<T>(phase: MeasuredPhase, f: () => Promise<T> | T): Promise<T> {
    const c0 = shapeCostTotals();
    const t0 = performance.now();
    this.open.push({ wall: 0, compile: 0, autotune: 0 });
    try {
      return await f();
    } finally {
      const nested = this.open.pop()!;
      const c1 = shapeCostTotals();
      const wall = performance.now() - t0;
      const compile = c1.compile.ms - c0.compile.ms;
      const autotune = c1.autotune.ms - c0.autotune.ms;
      this.ms[phase] += wall - nested.wall - (compile - nested.compile) - (autotune - nested.autotune);
      this.ms.pipelines += compile - nested.compile;
      this.ms.autotune += autotune - nested.autotune;
      const outer = this.open.at(-1);
      if (outer) {
        outer.wall += wall;
        outer.compile += compile;
        outer.autotune += autotune;
      }
    }
  }

  seconds(): FitnessPhases {
    return Object.fromEntries(
      FITNESS_PHASES.map((p) => [p, Number((Math.max(0, this.ms[p]) / 1000).toFixed(4))]),
    ) as FitnessPhases;
  }
}

export interface FitnessContext {
  teacherDir: string;
  checkpoint: LoadedCheckpoint;
  tokenizer: Tokenizer;
  train: TokenSource;
  val: TokenSource;
  data: Required<Pick<FitnessData, 'train' | 'val'>>;
  /** The teacher as a model (distillation, importance), created on first use. */
  teacherModel?: GPTNeoX;
  /**
   * Importance orderings and validation batches on the device, made on first use. Maps, so that copies
   * of the context (an evaluator's per-call context) share them.
   */
  importance: Map<string, Awaited<ReturnType<typeof resolveOptions>>>;
  validation: Map<string, DeviceBatch[]>;
  /**
   * Where distillation targets come from, e.g. the teacher-logit service (a top-k `StreamingTeacher`);
   * default the teacher model held in this process (full logits). Top-k targets give slightly
   * different fitness values than full logits, so keep one source per search.
   */
  distillTeacher?: (batches: BatchSource, distill: DistillOptions) => Teacher;
  /** Called after every step of a brief training (e.g. to heartbeat); reads the loss back each step. */
  onStep?: (report: StepReport) => void;
}

/** Seed of the calibration batch for importance orderings. */
export const CALIBRATION_SEED = 0x1337;

export async function createFitnessContext(teacherDir: string, data: FitnessData = {}): Promise<FitnessContext> {
  const tokenCache = data.tokenCache ?? defaultTokenStore();
  const checkpoint = loadCheckpoint(teacherDir);
  const tokenizer = await loadTokenizer(data.tokenizer ?? teacherDir);
  if (tokenizer.vocabSize > checkpoint.config.vocabSize) {
    throw new Error(
      `tokenizer: vocabulary ${tokenizer.vocabSize} is larger than the teacher's ${checkpoint.config.vocabSize}`,
    );
  }
  const trainSpec = data.train ?? DEFAULT_TRAIN_CORPUS;
  const valSpec = data.val ?? DEFAULT_VALIDATION_CORPUS;
  const train = await openData(trainSpec, tokenizer, { cacheDir: tokenCache });
  const val = await openData(valSpec, tokenizer, { cacheDir: tokenCache });
  return {
    teacherDir,
    checkpoint,
    tokenizer,
    train,
    val,
    data: { train: trainSpec, val: valSpec },
    importance: new Map(),
    validation: new Map(),
  };
}

export function disposeFitnessContext(ctx: FitnessContext): void {
  ctx.teacherModel?.dispose();
  ctx.teacherModel = undefined;
  for (const batches of ctx.validation.values()) for (const b of batches) tf.dispose([b.ids, b.targets]);
  ctx.validation.clear();
  // Opened data holds its shards' files open.
  for (const d of [ctx.train, ctx.val]) (d as { close?: () => void }).close?.();
}

/** The validation batches of these options, uploaded once per context. */
function validationBatches(
  ctx: FitnessContext,
  options: { seqLen: number; batchSize: number; maxTokens: number },
): DeviceBatch[] {
  const key = `${options.seqLen}x${options.batchSize}/${options.maxTokens}`;
  let batches = ctx.validation.get(key);
  if (!batches) ctx.validation.set(key, (batches = uploadBatches(evalBatches(ctx.val, options))));
  return batches;
}

function teacherModel(ctx: FitnessContext): GPTNeoX {
  ctx.teacherModel ??= GPTNeoX.fromTensors(ctx.checkpoint.config, ctx.checkpoint.tensors, ctx.teacherDir);
  return ctx.teacherModel;
}

/** The student a request describes: the inherited weights or a random model of the same shape. */
export async function buildStudent(
  ctx: FitnessContext,
  request: FitnessRequest,
): Promise<{ model: GPTNeoX; specHash: string }> {
  const teacher = ctx.checkpoint;
  const order = request.order ?? 'first-k';
  const layers = request.layers ?? 'first';
  const seqLen = request.budget.seqLen ?? Math.min(teacher.config.maxPositions, 64);
  const calibrationRows = request.calibrationBatchSize ?? 8;
  const cacheKey = `${order}/${layers}/${calibrationRows}x${seqLen}`;
  let resolve = ctx.importance.get(cacheKey);
  if (!resolve) {
    // Calibration: a fixed batch of the training corpus (the same for every candidate and seed).
    const calibration = sampleBatch(ctx.train, { batchSize: calibrationRows, seqLen, seed: CALIBRATION_SEED, step: 0 });
    resolve = await resolveOptions(teacher, { order, layers, calibration }, ctx.teacherDir);
    ctx.importance.set(cacheKey, resolve);
  }
  const canonical = canonicalize(request.spec, teacher.config, resolve);
  const specHash = canonicalHash(canonical);
  const { config, tensors } = extractTensors(teacher.config, teacher.tensors, canonical);
  const model =
    request.init === 'random'
      ? GPTNeoX.random(config, request.seed)
      : GPTNeoX.fromTensors(config, tensors, `${ctx.teacherDir} ${specHash.slice(0, 12)}`);
  return { model, specHash };
}

/** Evaluates one candidate. Pass a context to reuse a loaded teacher and data across calls. */
export async function evaluateFitness(request: FitnessRequest, context?: FitnessContext): Promise<FitnessMetrics> {
  const started = performance.now();
  const clock = new PhaseClock();
  const ctx = context ?? (await createFitnessContext(request.teacher, request.data));
  if (context && path.resolve(context.teacherDir) !== path.resolve(request.teacher)) {
    throw new Error(`fitness context holds teacher ${context.teacherDir}, the request names ${request.teacher}`);
  }
  try {
    const b = request.budget;
    if (b.kind !== 'zero-shot' && b.kind !== 'brief')
      throw new Error(`budget.kind must be zero-shot or brief, got ${JSON.stringify(b.kind)}`);
    const tconf = ctx.checkpoint.config;
    const seqLen = b.seqLen ?? Math.min(tconf.maxPositions, 64);
    const batchSize = b.batchSize ?? 8;
    const evalTokens = b.evalTokens ?? 8192;
    const evalOptions = { seqLen, batchSize, maxTokens: evalTokens };
    const { model, specHash } = await clock.time('extraction', () => buildStudent(ctx, request));
    const counts = countShape(model.config, tconf, { seqLen });
    const fpt = counts.flopsPerToken;
    let evalPasses = 0;
    let tokensPerEval = 0;
    const evaluate = (m: GPTNeoX) =>
      clock.time('evaluation', async () => {
        const r = await evaluateLoss(m, validationBatches(ctx, evalOptions));
        evalPasses += 1;
        tokensPerEval = r.tokens;
        return r;
      });
    const timedTeacher = (t: Teacher): Teacher => ({
      forBatch: (batch, step, steps) => clock.time('teacherForward', () => t.forBatch(batch, step, steps)),
    });
    let zeroShot: number | undefined;
    let final: { loss: number; ppl: number };
    let steps = 0;
    let lastTrainLoss: number | undefined;
    let trainTokens = 0;
    const distill = (b.loss ?? 'distill') === 'distill';
    if (b.kind === 'zero-shot') {
      final = await evaluate(model);
      zeroShot = final.loss;
      model.dispose();
    } else {
      if (b.zeroShotEval) zeroShot = (await evaluate(model)).loss;
      steps = b.steps ?? 100;
      const lr = b.lr ?? 3e-3;
      const batches: BatchSource = (step) => sampleBatch(ctx.train, { batchSize, seqLen, seed: request.seed, step });
      const distillOptions = b.distill ?? DEFAULT_DISTILL;
      const trainer = new Trainer(model, {
        hyper: trainingHyperparameters(
          { steps, lr, warmup: b.warmup ?? 10 },
          { batchSize, seqLen, seed: request.seed },
        ),
        batches,
        teacher: distill
          ? timedTeacher(
              ctx.distillTeacher ? ctx.distillTeacher(batches, distillOptions) : inProcessTeacher(teacherModel(ctx)),
            )
          : undefined,
        distill: distill ? distillOptions : undefined,
        reportEvery: ctx.onStep ? 1 : steps,
        onStep: ctx.onStep,
      });
      const result = await clock.time('training', () => trainer.run());
      lastTrainLoss = result.lastLoss;
      trainTokens = trainer.tokensSeen;
      final = await evaluate(trainer.model);
      trainer.dispose();
    }
    const training = trainTokens * fpt.training;
    const teacherFlops = distill && b.kind === 'brief' ? trainTokens * fpt.teacherForward : 0;
    const evaluation = evalPasses * tokensPerEval * fpt.forward;
    return {
      specHash,
      teacherHash: ctx.checkpoint.hash,
      init: request.init ?? 'inherit',
      kind: b.kind,
      parameters: counts.parameters,
      valLoss: final.loss,
      valPpl: final.ppl,
      zeroShotValLoss: zeroShot,
      steps,
      lastTrainLoss,
      trainTokens,
      evalTokens: evalPasses * tokensPerEval,
      flops: { training, teacher: teacherFlops, evaluation, total: training + teacherFlops + evaluation },
      seqLen,
      seconds: (performance.now() - started) / 1000,
      phases: clock.seconds(),
    };
  } finally {
    if (!context) disposeFitnessContext(ctx);
    // The candidate's buffers would otherwise stay pooled for a shape no later candidate has.
    await releaseCachedMemory();
  }
}

/**
 * Readies a long-lived evaluator's context for candidates of this budget: short evaluations (two
 * training steps, one validation batch) of typical candidates compile what every candidate runs (the
 * teacher's forward pass, the student's kernels) and put the validation batches on the device. A
 * product's kernel is compiled per load width of its inputs (one, four or eight elements: its K's
 * residue mod 8) and of its output, and its tile and split-K depend on its size, so the warm-up shapes
 * take each: every pairing of embedding and MLP widths one, four and eight short of the teacher's (the
 * MLP's two products read one and write the other), one head fewer in one of them, and a third of the
 * teacher's widths and heads (a smaller student's smaller products). The first real candidate then
 * pays only for what is new about its own shape. Returns those evaluations' metrics with their seconds and phases summed
 * (the process's, not a candidate's), or undefined on a backend that compiles nothing (cpu, wasm,
 * tensorflow), where it does nothing.
 */
export async function warmUpFitness(
  ctx: FitnessContext,
  budget: FitnessBudget,
  seed = 0,
): Promise<FitnessMetrics | undefined> {
  if (!gpuBackendActive()) return undefined;
  const teacher = ctx.checkpoint.config;
  const narrowest = Math.min(...teacher.layers.map((l) => l.intermediateSize));
  const fewestHeads = Math.min(...teacher.layers.map((l) => l.numHeads));
  const specs = new Map<string, SubnetSpec>();
  const add = (embedding: number, mlp: number, heads?: number) => {
    const spec: SubnetSpec = {
      format: 1,
      teacher: teacherShape(teacher),
      embedding: Math.max(1, embedding),
      mlp: Math.max(1, mlp),
      ...(heads !== undefined && heads < fewestHeads ? { heads: Math.max(1, heads) } : {}),
    };
    specs.set(JSON.stringify(spec), spec);
  };
  for (const d of [1, 4, 8])
    for (const f of [1, 4, 8])
      add(teacher.hiddenSize - d, narrowest - f, d === 4 && f === 4 ? fewestHeads - 1 : undefined);
  add(Math.floor(teacher.hiddenSize / 3) - 1, Math.floor(narrowest / 3) - 1, Math.floor(fewestHeads / 3));
  const seqLen = budget.seqLen ?? Math.min(teacher.maxPositions, 64);
  const batchSize = budget.batchSize ?? 8;
  const brief = budget.kind === 'brief' ? { steps: Math.min(2, budget.steps ?? 2), warmup: 1 } : {};
  // Validation batches for the real budget too, so the first candidate finds them on the device.
  validationBatches(ctx, { seqLen, batchSize, maxTokens: budget.evalTokens ?? 8192 });
  const runs: FitnessMetrics[] = [];
  for (const spec of specs.values()) {
    runs.push(
      await evaluateFitness(
        { teacher: ctx.teacherDir, spec, budget: { ...budget, ...brief, evalTokens: seqLen * batchSize }, seed },
        ctx,
      ),
    );
  }
  return {
    ...runs[runs.length - 1],
    seconds: runs.reduce((a, m) => a + m.seconds, 0),
    phases: sumPhases(runs.map((m) => m.phases)),
  };
}
