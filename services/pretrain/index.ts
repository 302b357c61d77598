/**
 * services/pretrain: the pretraining worker's activities (task queue "pretrain").
 *
 * - prepareTeacher: the teacher checkpoint (trained here, with core/teacher, when missing), and a check
 *   that the teacher service serves the same weights.
 * - prepareStudent: a student's step-0 checkpoint — extracted from the teacher, or random.
 * - trainSegment: training from a checkpoint to a step. Checkpoints every `checkpointEvery` steps into
 *   a fresh folder (<run>/<name>/checkpoints/step-N, immutable, content-hashed) and heartbeats
 *   {step, checkpoint}; a retry resumes from the last heartbeat's checkpoint. A SIGTERM'd worker
 *   checkpoints at the next step boundary and returns what it reached. Every step's loss goes to
 *   <run>/<name>/losses.jsonl (with the attempt and worker), so the curve across retries can be read.
 *   The worker keeps what segments share (teacher, opened data, validation batches on the device,
 *   compiled kernels, tuned plans) from one to the next, and gives back a finished segment's pooled buffers.
 *   On a worker started with --gpus or --ranks the steps run data-parallel on rank processes
 *   (data-parallel.ts; their logs in <run>/<name>/ranks/attempt-N/), recorded here the same way.
 * - evaluateCheckpoint: validation loss, perplexity and bits per byte of a checkpoint.
 * - evaluateTasks: zero-shot scores of a checkpoint on lm-evaluation-harness task files (core/eval).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { setImmediate as yieldToLoop } from 'node:timers/promises';

import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';

import {
  CALIBRATION_SEED,
  canonicalize,
  countShape,
  extractCheckpoint,
  studentConfig,
} from '../../core/subnet/index.js';
import {
  type OpenedData,
  TOKENIZER_FILE,
  defaultTokenStore as tokenCache,
  evalBatches,
  loadTokenizer,
  openData,
  sampleBatch,
} from '../../core/data/index.js';
import { TaskError, evaluateTasks, evaluateText, loadTasks } from '../../core/eval/index.js';
import {
  CheckpointError,
  type DeviceBatch,
  GPTNeoX,
  MANIFEST_FILE,
  TRAINER_STATE_FILE,
  type NeoXConfig,
  type StepReport,
  type TrainOptions,
  Trainer,
  checkpointHash,
  evaluateLoss,
  inProcessTeacher,
  loadCheckpoint,
  loadConfig,
  parameterCount,
  rankLayout,
  readTrainerState,
  releaseCachedMemory,
  saveCheckpoint,
  trainingHyperparameters,
  uploadBatches,
  writeFileAtomicSync,
} from '../../core/model/index.js';
import * as tf from '../../core/model/tfjs.js';
import { type TeacherTrainSettings, teacherFinished, trainTeacher } from '../../core/teacher/index.js';
import { tokensPerSecond as tokensPerSecondGauge } from '../progress/index.js';
import { StreamingTeacher } from '../teacher/index.js';
import { runRanks, stepDir } from './data-parallel.js';
import {
  TeacherMismatchError,
  type WorkerEnv,
  emit,
  requireTeacherTokenizer,
  teacherClient,
  teacherModel,
  withActivityEvents,
} from '../orchestration/index.js';
import type {
  CheckpointEval,
  CheckpointRef,
  EvalPoint,
  EvaluateCheckpointInput,
  EvaluateTasksInput,
  PrepareStudentInput,
  PrepareTeacherInput,
  PretrainActivities,
  SegmentHeartbeat,
  StudentRef,
  TaskAccuracy,
  TeacherRef,
  TrainSegmentInput,
  TrainSegmentOutput,
} from '../../workflows/index.js';

function readLatest(file: string): { from: string; toStep: number; checkpoint: CheckpointRef } | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as { from: string; toStep: number; checkpoint: CheckpointRef };
  } catch {
    return undefined;
  }
}

function tokenizerSource(data: { tokenizer?: string }, teacherDir: string): string {
  return data.tokenizer ?? teacherDir;
}

/**
 * What the segments of a run share, kept by this worker from one segment to the next (and from one
 * arm of an experiment to the next): the opened training and validation data and the validation
 * batches on the device. The teacher model is kept by ../orchestration. One data set at a time;
 * another replaces it (and closes it).
 */
let kept: { key: string; train: OpenedData; val: OpenedData; validation: Map<string, DeviceBatch[]> } | undefined;

async function segmentData(
  env: WorkerEnv,
  input: TrainSegmentInput,
): Promise<{
  train: OpenedData;
  validation: (o: { seqLen: number; batchSize: number; maxTokens: number }) => DeviceBatch[];
}> {
  const source = tokenizerSource(input.data, input.teacher.dir);
  const key = JSON.stringify([path.resolve(source), input.data.train, input.data.val]);
  if (kept?.key !== key) {
    if (kept) {
      for (const list of kept.validation.values()) for (const b of list) tf.dispose([b.ids, b.targets]);
      kept.train.close();
      kept.val.close();
    }
    kept = undefined;
    const tokenizer = await loadTokenizer(source);
    // The store's manifests find the prepared shards without reading the corpus again.
    const train = await openData(input.data.train, tokenizer, { cacheDir: tokenCache(), log: env.log });
    const val = await openData(input.data.val, tokenizer, { cacheDir: tokenCache(), log: env.log });
    kept = { key, train, val, validation: new Map() };
  }
  const data = kept;
  return {
    train: data.train,
    validation: (o) => {
      const k = `${o.seqLen}x${o.batchSize}/${o.maxTokens}`;
      let list = data.validation.get(k);
      if (!list) data.validation.set(k, (list = uploadBatches(evalBatches(data.val, o))));
      return list;
    },
  };
}

/**
 * Trains the teacher here, in this worker (core/teacher), heartbeating. Cancellation, or the worker's
 * SIGTERM, stops it at the next step with a checkpoint in the teacher's directory, where a retry goes on.
 */
async function trainTeacherHere(
  env: WorkerEnv,
  input: PrepareTeacherInput & { train: TeacherTrainSettings },
): Promise<void> {
  const actx = Context.current();
  const t = input.train;
  env.log(`prepareTeacher: training the teacher into ${input.dir} (${t.preset}, ${t.steps} steps)`);
  const logs = path.join(input.run.dir, 'logs');
  fs.mkdirSync(logs, { recursive: true });
  const logFile = path.join(logs, 'teacher-train.log');
  const log = (line: string): void => {
    fs.appendFileSync(logFile, `${line}\n`);
    env.log(`  teacher: ${line}`);
  };
  let lastLine = 0;
  // Heartbeats also cover what happens before the first step (the tokenizer, tokenising the corpora).
  const beat = setInterval(() => actx.heartbeat({ phase: 'teacher train' }), 2000);
  try {
    const result = await trainTeacher(
      {
        ...t,
        data: input.data.train,
        val: input.data.val,
        tokenizer: input.data.tokenizer,
        out: input.dir,
        tokenCache: tokenCache(),
      },
      {
        log,
        signal: AbortSignal.any([actx.cancellationSignal, env.draining]),
        onStep: (r) => {
          actx.heartbeat({ phase: 'teacher train', step: r.step });
          if (performance.now() - lastLine >= 5000 || r.step === r.steps) {
            lastLine = performance.now();
            log(`train ${r.step}/${r.steps} loss ${r.loss.toFixed(3)} ${Math.round(r.tokensPerSecond)} tok/s`);
          }
        },
      },
    );
    if (actx.cancellationSignal.aborted)
      throw new CancelledFailure(`teacher training cancelled at step ${result.steps} (checkpointed)`);
    // A draining worker: the attempt fails and is retried elsewhere, resuming from the checkpoint.
    if (result.stopped)
      throw new Error(
        `teacher training stopped at step ${result.steps} by the worker's shutdown (checkpointed; a retry resumes)`,
      );
  } finally {
    clearInterval(beat);
  }
}

async function prepareTeacher(env: WorkerEnv, input: PrepareTeacherInput): Promise<TeacherRef> {
  const dir = path.resolve(input.dir);
  if (!teacherFinished(dir)) {
    if (!input.train)
      throw ApplicationFailure.nonRetryable(
        `teacher ${dir}: no finished checkpoint there, and teacher training is off (teacher.train.enabled)`,
        'CheckpointError',
      );
    await trainTeacherHere(env, { ...input, dir, train: input.train });
    if (!teacherFinished(dir)) throw new Error(`teacher ${dir}: training ended without a finished checkpoint`);
  }
  let config;
  try {
    config = loadConfig(dir);
  } catch (err) {
    throw ApplicationFailure.nonRetryable((err as Error).message, 'CheckpointError');
  }
  // Before the search starts: every evaluation and training segment tokenises with it.
  let tokenizerVocab: number;
  try {
    tokenizerVocab = (await loadTokenizer(requireTeacherTokenizer(dir, input.data.tokenizer))).vocabSize;
  } catch (err) {
    throw ApplicationFailure.nonRetryable((err as Error).message, 'TokenizerMissing');
  }
  if (tokenizerVocab > config.vocabSize) {
    throw ApplicationFailure.nonRetryable(
      `the run's tokenizer has ${tokenizerVocab} tokens, more than the teacher ${dir}'s vocabulary of ${config.vocabSize}`,
      'TokenizerMissing',
    );
  }
  const hash = checkpointHash(dir);
  if (input.service) {
    // The service must be up and serve these weights before evaluators rely on it.
    const client = teacherClient(env, input.service, hash);
    const deadline = Date.now() + 120_000;
    for (;;) {
      Context.current().heartbeat({ phase: 'teacher service' });
      try {
        const info = await client.info();
        if (info.contentHash !== hash) {
          throw ApplicationFailure.nonRetryable(
            `the teacher service ${input.service.targets.join(',')} serves weights ${info.contentHash.slice(0, 12)}…, the run's teacher ${dir} is ${hash.slice(0, 12)}…`,
            'TeacherMismatch',
          );
        }
        break;
      } catch (err) {
        if (err instanceof ApplicationFailure) throw err;
        if (Date.now() > deadline)
          throw new Error(
            `the teacher service ${input.service.targets.join(',')} did not answer: ${(err as Error).message}`,
          );
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
  return { dir, hash, config, parameters: parameterCount(config) };
}

// ---- students ----------------------------------------------------------------------------------------

async function prepareStudent(env: WorkerEnv, input: PrepareStudentInput): Promise<StudentRef> {
  const init = input.init;
  if (init.kind === 'checkpoint') {
    const config = loadConfig(init.checkpoint.dir);
    const hash = checkpointHash(init.checkpoint.dir);
    if (hash !== init.checkpoint.hash)
      throw ApplicationFailure.nonRetryable(
        `${init.checkpoint.dir}: content hash ${hash.slice(0, 12)}… differs from the reference's`,
        'CheckpointError',
      );
    return {
      checkpoint: {
        ...init.checkpoint,
        step: init.checkpoint.step ?? readTrainerState(init.checkpoint.dir)?.step ?? 0,
      },
      parameters: parameterCount(config),
      config,
    };
  }
  const dir = stepDir(path.join(input.run.dir, input.name, 'checkpoints'), 0);
  const describe = { format: 1, init, teacher: input.teacher.hash, seed: input.hyper.seed };
  const initFile = path.join(input.run.dir, input.name, 'init.json');
  // Idempotent: the same request finds the checkpoint it wrote before.
  if (
    fs.existsSync(path.join(dir, MANIFEST_FILE)) &&
    fs.existsSync(initFile) &&
    fs.readFileSync(initFile, 'utf8') === JSON.stringify(describe)
  ) {
    const config = loadConfig(dir);
    return { checkpoint: { dir, hash: checkpointHash(dir), step: 0 }, parameters: parameterCount(config), config };
  }
  let hash: string;
  let config;
  let specHash: string | undefined;
  try {
    if (init.kind === 'subnet') {
      let calibration;
      if (init.order === 'importance' || init.layers === 'importance') {
        const tokenizer = await loadTokenizer(tokenizerSource(input.data, input.teacher.dir));
        const corpus = await openData(input.data.train, tokenizer, { cacheDir: tokenCache() });
        calibration = sampleBatch(corpus, {
          batchSize: 8,
          seqLen: Math.min(input.hyper.seqLen, input.teacher.config.maxPositions),
          seed: CALIBRATION_SEED,
          step: 0,
        });
        corpus.close();
      }
      // force: an earlier attempt may have written this very student before it could record init.json.
      const r = await extractCheckpoint({
        teacher: input.teacher.dir,
        spec: init.spec,
        out: dir,
        order: init.order,
        layers: init.layers,
        calibration,
        force: true,
      });
      hash = r.checkpointHash;
      config = r.config;
      specHash = r.specHash;
    } else {
      const teacher = loadConfig(input.teacher.dir);
      config = studentConfig(teacher, canonicalize(init.spec, teacher));
      const model = GPTNeoX.random(config, input.hyper.seed);
      const extraFiles: Record<string, Buffer> = {};
      const tok = path.join(input.teacher.dir, TOKENIZER_FILE);
      if (fs.existsSync(tok)) extraFiles[TOKENIZER_FILE] = fs.readFileSync(tok);
      hash = await saveCheckpoint(dir, config, await model.toHost(), { extraFiles });
      model.dispose();
    }
  } catch (err) {
    const name = (err as Error).name;
    if (name === 'SpecError' || name === 'TargetError' || err instanceof CheckpointError)
      throw ApplicationFailure.nonRetryable((err as Error).message, name);
    throw err;
  }
  writeFileAtomicSync(initFile, JSON.stringify(describe));
  env.log(
    `prepareStudent: ${input.name} (${init.kind}) ${parameterCount(config).toLocaleString('en-US')} parameters -> ${dir}`,
  );
  return { checkpoint: { dir, hash, step: 0 }, parameters: parameterCount(config), config, specHash };
}

// ---- training segments -------------------------------------------------------------------------------

/** Removes checkpoints of this student older than `latest`, keeping `keep` (the segment's start). */
function pruneCheckpoints(folder: string, latest: number, keep: string[]): void {
  let entries: string[];
  try {
    entries = fs.readdirSync(folder);
  } catch {
    return;
  }
  const keepSet = new Set(keep.map((k) => path.resolve(k)));
  for (const e of entries) {
    const m = /^step-(\d+)$/.exec(e);
    if (!m) continue;
    const step = Number(m[1]);
    const full = path.resolve(folder, e);
    if (step === 0 || step >= latest || keepSet.has(full)) continue;
    fs.rmSync(full, { recursive: true, force: true });
  }
}

async function trainSegment(env: WorkerEnv, input: TrainSegmentInput): Promise<TrainSegmentOutput> {
  const started = performance.now();
  const actx = Context.current();
  const attempt = actx.info.attempt;
  const h = input.hyper;
  const series = input.name;
  const studentDir = path.join(input.run.dir, input.name);
  const checkpoints = path.join(studentDir, 'checkpoints');

  // Where to start: the last checkpoint an earlier attempt heartbeat, else the segment's input — or a
  // newer checkpoint of this same segment recorded on shared storage, when the worker died after
  // writing it but before its heartbeat reached the server (heartbeats are throttled).
  const fromStep = input.from.step ?? 0;
  const usable = (c: CheckpointRef | undefined, step: number | undefined): c is CheckpointRef =>
    Boolean(c && typeof step === 'number' && step > fromStep && step <= input.toStep && fs.existsSync(c.dir));
  const beat = actx.info.heartbeatDetails as SegmentHeartbeat | undefined;
  let start: CheckpointRef = input.from;
  if (usable(beat?.checkpoint, beat?.step)) start = beat!.checkpoint;
  const latestFile = path.join(studentDir, 'latest.json');
  const latest = readLatest(latestFile);
  if (
    attempt > 1 &&
    latest &&
    latest.from === input.from.hash &&
    usable(latest.checkpoint, latest.checkpoint.step) &&
    latest.checkpoint.step! > (start.step ?? 0)
  ) {
    if (checkpointHash(latest.checkpoint.dir) === latest.checkpoint.hash) start = latest.checkpoint;
  }
  const startStep = start.step ?? 0;
  if (!fs.existsSync(start.dir))
    throw ApplicationFailure.nonRetryable(
      `checkpoint ${start.dir} (step ${startStep}) is gone from shared storage`,
      'CheckpointError',
    );
  const onDisk = checkpointHash(start.dir);
  if (onDisk !== start.hash) {
    throw ApplicationFailure.nonRetryable(
      `checkpoint ${start.dir}: content hash ${onDisk.slice(0, 12)}… differs from the reference's ${start.hash.slice(0, 12)}…`,
      'CheckpointError',
    );
  }
  env.log(
    `trainSegment: ${series} steps ${startStep}->${input.toStep}${start !== input.from ? ` (attempt ${attempt}, resuming from the heartbeat's checkpoint at step ${startStep})` : ` (attempt ${attempt})`}`,
  );

  // Data and tokenizer: opened (prepared in the token store) here once, so that rank processes find them there.
  const { train, validation } = await segmentData(env, input);
  const tokSource = tokenizerSource(input.data, input.teacher.dir);
  const hyper = trainingHyperparameters({ steps: h.steps, lr: h.lr, warmup: h.warmup }, h);

  // What the segment records, wherever its steps run: every step's loss, validation passes, checkpoints.
  const evals: EvalPoint[] = [];
  const lossLog = path.join(studentDir, 'losses.jsonl');
  const evalLog = path.join(studentDir, 'evals.jsonl');
  fs.mkdirSync(studentDir, { recursive: true });
  let firstLoss = NaN;
  let lastLoss = NaN;
  let reachedTarget = false;
  const onStep = (r: StepReport): void => {
    if (Number.isNaN(firstLoss)) firstLoss = r.loss;
    lastLoss = r.loss;
    fs.appendFileSync(lossLog, `${JSON.stringify({ step: r.step, loss: r.loss, attempt, worker: env.identity })}\n`);
    tokensPerSecondGauge.set({ component: 'pretrain' }, r.tokensPerSecond);
    if (r.step % 10 === 0)
      emit(env, {
        kind: 'pretrain.step',
        run: input.run.runId,
        series,
        step: r.step,
        steps: h.steps,
        loss: r.loss,
        tokens: r.tokensSeen,
        tokensPerSecond: r.tokensPerSecond,
        lr: r.lr,
      });
  };
  const onEval = (step: number, r: { loss: number; ppl: number; tokens: number }): void => {
    evals.push({ step, valLoss: r.loss, valPpl: r.ppl });
    fs.appendFileSync(
      evalLog,
      `${JSON.stringify({ step, valLoss: r.loss, valPpl: r.ppl, attempt, worker: env.identity })}\n`,
    );
    emit(env, { kind: 'pretrain.eval', run: input.run.runId, series, step, valLoss: r.loss, tokens: r.tokens });
    if (input.targetPpl !== undefined && r.ppl <= input.targetPpl) reachedTarget = true;
  };
  let last: CheckpointRef = start;
  const recordCheckpoint = (ref: CheckpointRef): void => {
    last = ref;
    actx.heartbeat({ step: ref.step!, checkpoint: ref, loss: lastLoss } satisfies SegmentHeartbeat);
    writeFileAtomicSync(latestFile, JSON.stringify({ from: input.from.hash, toStep: input.toStep, checkpoint: ref }));
    emit(env, {
      kind: 'checkpoint.saved',
      run: input.run.runId,
      series,
      step: ref.step!,
      uri: ref.dir,
      hash: ref.hash,
    });
    pruneCheckpoints(checkpoints, ref.step!, [input.from.dir, ref.dir]);
  };

  let stopped: TrainSegmentOutput['stopped'];
  let modelConfig: NeoXConfig;
  if (env.dataParallel) {
    // One rank process per GPU; rank 0 writes the checkpoints, this activity records them.
    try {
      rankLayout(h.batchSize, 0, env.dataParallel.ranks, env.dataParallel.microBatchSize);
    } catch (err) {
      // The same on every retry, on this worker: the batch does not divide among its ranks.
      throw ApplicationFailure.nonRetryable(
        `${(err as Error).message} (this worker trains on ${env.dataParallel.ranks} ranks)`,
        'DataParallelConfigError',
      );
    }
    modelConfig = loadConfig(start.dir);
    const stop = new AbortController();
    const stopOn = AbortSignal.any([actx.cancellationSignal, env.draining]);
    stopOn.addEventListener('abort', () => stop.abort(), { once: true });
    if (stopOn.aborted) stop.abort();
    // Heartbeats between the ranks' reports (tokenising, loading, the first step).
    const beat = setInterval(
      () => actx.heartbeat({ step: last.step ?? 0, checkpoint: last, loss: lastLoss } satisfies SegmentHeartbeat),
      2000,
    );
    let ranks;
    try {
      ranks = await runRanks(
        {
          start,
          toStep: input.toStep,
          hyper,
          distill: h.distill,
          data: { train: input.data.train, val: input.data.val, tokenizer: tokSource },
          tokenCache: tokenCache(),
          teacher: { dir: input.teacher.dir, hash: input.teacher.hash },
          ...(input.teacherService ? { teacherService: input.teacherService } : {}),
          ...(env.teacherTargets?.length ? { teacherTargets: env.teacherTargets } : {}),
          checkpointEvery: input.checkpointEvery,
          checkpoints,
          evalEvery: input.evalEvery,
          evalTokens: input.evalTokens,
          ...(input.targetPpl !== undefined ? { targetPpl: input.targetPpl } : {}),
        },
        env.dataParallel,
        {
          onStep,
          onEval: (e) => onEval(e.step, { loss: e.valLoss, ppl: e.valPpl, tokens: e.tokens }),
          onCheckpoint: recordCheckpoint,
          log: (line) => env.log(`trainSegment: ${series}: ${line}`),
          signal: stop.signal,
          logDir: path.join(studentDir, 'ranks', `attempt-${attempt}`),
        },
      );
    } finally {
      clearInterval(beat);
    }
    if (actx.cancellationSignal.aborted)
      throw new CancelledFailure(`trainSegment cancelled at step ${ranks.step} (checkpointed)`);
    if (ranks.stopped === 'requested') stopped = 'worker-shutdown';
    else if (ranks.stopped === 'target-reached') stopped = 'target-reached';
    if (last.step !== ranks.step)
      throw new Error(
        `data-parallel segment: the ranks stopped at step ${ranks.step}, but the last checkpoint reported is step ${last.step}`,
      );
  } else {
    let teacher;
    if (h.distill) {
      const batches = (step: number) =>
        sampleBatch(train, { batchSize: h.batchSize, seqLen: h.seqLen, seed: h.seed, step });
      if (input.teacherService) {
        teacher = new StreamingTeacher(teacherClient(env, input.teacherService, input.teacher.hash), {
          topK: input.teacherService.topK,
          temperature: h.distill.temperature,
          batches,
        });
      } else {
        try {
          teacher = inProcessTeacher(teacherModel(input.teacher.dir, input.teacher.hash));
        } catch (err) {
          if (err instanceof TeacherMismatchError)
            throw ApplicationFailure.nonRetryable(err.message, 'TeacherMismatch');
          throw err;
        }
      }
    }
    const tokenizerJson = fs.readFileSync(
      fs.statSync(tokSource).isDirectory() ? path.join(tokSource, TOKENIZER_FILE) : tokSource,
    );
    const options: TrainOptions = {
      hyper,
      batches: (step: number) => sampleBatch(train, { batchSize: h.batchSize, seqLen: h.seqLen, seed: h.seed, step }),
      teacher,
      distill: h.distill ?? undefined,
      reportEvery: 1,
      extraFiles: { [TOKENIZER_FILE]: tokenizerJson },
      onStep,
      evaluate: {
        every: input.evalEvery,
        run: async (model, step) =>
          onEval(
            step,
            await evaluateLoss(
              model,
              validation({ seqLen: h.seqLen, batchSize: h.batchSize, maxTokens: input.evalTokens }),
            ),
          ),
      },
    };
    let trainer: Trainer;
    if (readTrainerState(start.dir)) {
      trainer = Trainer.resume(start.dir, options);
    } else {
      if (startStep !== 0)
        throw ApplicationFailure.nonRetryable(
          `${start.dir}: step ${startStep} but no ${TRAINER_STATE_FILE}`,
          'CheckpointError',
        );
      const ckpt = loadCheckpoint(start.dir);
      trainer = new Trainer(GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, start.dir), options);
    }
    if (trainer.step !== startStep)
      throw ApplicationFailure.nonRetryable(
        `${start.dir}: holds step ${trainer.step}, the reference says ${startStep}`,
        'CheckpointError',
      );
    modelConfig = trainer.model.config;

    const save = async (): Promise<void> => {
      const dir = stepDir(checkpoints, trainer.step);
      recordCheckpoint({ dir, hash: await trainer.saveCheckpoint(dir), step: trainer.step });
    };
    try {
      while (trainer.step < input.toStep) {
        if (actx.cancellationSignal.aborted) {
          if (trainer.step > (last.step ?? 0)) await save();
          throw new CancelledFailure(`trainSegment cancelled at step ${trainer.step} (checkpointed)`);
        }
        if (env.draining.aborted) {
          stopped = 'worker-shutdown';
          break;
        }
        await trainer.run(trainer.step + 1);
        if (trainer.step % input.checkpointEvery === 0) await save();
        else actx.heartbeat({ step: last.step ?? 0, checkpoint: last, loss: lastLoss } satisfies SegmentHeartbeat);
        if (reachedTarget) {
          stopped = 'target-reached';
          break;
        }
        // Let heartbeats, cancellation and the worker's polls through between steps.
        await yieldToLoop();
      }
      if (trainer.step !== (last.step ?? 0)) await save();
    } finally {
      trainer.dispose();
      await releaseCachedMemory();
    }
  }
  const tconf = input.teacher.config;
  const counts = countShape(modelConfig, tconf, { seqLen: h.seqLen });
  const tokens = (last.step! - (input.from.step ?? 0)) * h.batchSize * h.seqLen;
  env.log(
    `trainSegment: ${series} reached step ${last.step}${stopped ? ` (${stopped})` : ''}, loss ${lastLoss.toFixed(4)}`,
  );
  return {
    checkpoint: last,
    step: last.step!,
    resumedFrom: startStep,
    attempt,
    worker: env.identity,
    tokens,
    flops: {
      training: tokens * counts.flopsPerToken.training,
      teacher: h.distill ? tokens * counts.flopsPerToken.teacherForward : 0,
    },
    firstLoss,
    lastLoss,
    evals,
    seconds: (performance.now() - started) / 1000,
    ...(stopped ? { stopped } : {}),
  };
}

// ---- final evaluation --------------------------------------------------------------------------------

async function evaluateCheckpoint(input: EvaluateCheckpointInput): Promise<CheckpointEval> {
  const ckpt = loadCheckpoint(input.checkpoint.dir);
  if (ckpt.hash !== input.checkpoint.hash) {
    throw ApplicationFailure.nonRetryable(
      `${input.checkpoint.dir}: content hash ${ckpt.hash.slice(0, 12)}… differs from the reference's`,
      'CheckpointError',
    );
  }
  const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, input.checkpoint.dir);
  try {
    const tokPath =
      input.data.tokenizer ??
      (fs.existsSync(path.join(input.checkpoint.dir, TOKENIZER_FILE)) ? input.checkpoint.dir : input.tokenizerDir);
    const tokenizer = await loadTokenizer(tokPath);
    const val = await openData(input.data.val, tokenizer, { cacheDir: tokenCache() });
    const r = await evaluateText(model, val, tokenizer, {
      seqLen: Math.min(input.seqLen, ckpt.config.maxPositions),
      batchSize: input.batchSize,
      maxTokens: input.evalTokens,
    });
    val.close();
    return { valLoss: r.loss, valPpl: r.ppl, valBpb: r.bpb, tokens: r.tokens, bytes: r.bytes };
  } finally {
    model.dispose();
  }
}

async function evaluateTaskFiles(input: EvaluateTasksInput): Promise<TaskAccuracy[]> {
  const actx = Context.current();
  const ckpt = loadCheckpoint(input.checkpoint.dir);
  if (ckpt.hash !== input.checkpoint.hash) {
    throw ApplicationFailure.nonRetryable(
      `${input.checkpoint.dir}: content hash ${ckpt.hash.slice(0, 12)}… differs from the reference's`,
      'CheckpointError',
    );
  }
  let tasks;
  try {
    tasks = loadTasks(input.files, { cwd: input.cwd, limit: input.limit });
  } catch (err) {
    if (err instanceof TaskError) throw ApplicationFailure.nonRetryable(err.message, 'TaskError');
    throw err;
  }
  const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, input.checkpoint.dir);
  try {
    const tokenizer = await loadTokenizer(
      fs.existsSync(path.join(input.checkpoint.dir, TOKENIZER_FILE)) ? input.checkpoint.dir : input.tokenizerDir,
    );
    const { scores } = await evaluateTasks(model, tokenizer, tasks, {
      batchSize: input.batchSize,
      onProgress: (done, total) => actx.heartbeat({ done, total }),
    });
    return scores.map((s) => ({ task: s.task, docs: s.docs, metrics: s.metrics as TaskAccuracy['metrics'] }));
  } finally {
    model.dispose();
  }
}

/** The pretrain queue's activities, bound to a worker environment. */
export function createPretrainActivities(env: WorkerEnv): PretrainActivities {
  return {
    prepareTeacher: withActivityEvents(
      env,
      (i: PrepareTeacherInput) => i.run.runId,
      (i) => `teacher ${i.dir}`,
      (i) => prepareTeacher(env, i),
    ),
    prepareStudent: withActivityEvents(
      env,
      (i: PrepareStudentInput) => i.run.runId,
      (i) => `student ${i.name}`,
      (i) => prepareStudent(env, i),
    ),
    trainSegment: withActivityEvents(
      env,
      (i: TrainSegmentInput) => i.run.runId,
      (i) => `${i.name} steps ${i.from.step ?? 0}-${i.toStep}`,
      (i) => trainSegment(env, i),
    ),
    evaluateCheckpoint: async (i: EvaluateCheckpointInput) => evaluateCheckpoint(i),
    evaluateTasks: async (i: EvaluateTasksInput) => evaluateTaskFiles(i),
  };
}
