/**
 * One rank of a data-parallel training segment (`offshoot pretrain-rank --job FILE --rank R`, started
 * by data-parallel.ts): joins the ranks' group, loads the segment's start checkpoint, and trains its
 * share of every step's global batch until the segment's last step, or until a rank asks to stop.
 * Every rank holds the same weights after every step; rank 0 alone writes checkpoints, runs the
 * validation passes and reports (JSON lines on stdout, RANK_EVENT_PREFIX). SIGTERM: the ranks stop
 * together after the step under way and rank 0 checkpoints.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { TOKENIZER_FILE, evalBatches, loadTokenizer, openData, sampleBatch } from '../../core/data/index.js';
import {
  GPTNeoX,
  type Teacher,
  type TrainOptions,
  Trainer,
  evaluateLoss,
  inProcessTeacher,
  joinDataParallel,
  loadCheckpoint,
  rankBatches,
  readTrainerState,
} from '../../core/model/index.js';
import { teacherTls } from '../credentials/index.js';
import { StreamingTeacher, TeacherClient } from '../teacher/index.js';
import { RANK_EVENT_PREFIX, type RankEvent, type RankJob, stepDir } from './data-parallel.js';

function report(e: RankEvent): void {
  process.stdout.write(`${RANK_EVENT_PREFIX}${JSON.stringify(e)}\n`);
}

/** Reads and checks a job file (written by runRanks). */
export function readRankJob(file: string): RankJob {
  let job: RankJob;
  try {
    job = JSON.parse(fs.readFileSync(file, 'utf8')) as RankJob;
  } catch (err) {
    throw new Error(`${file}: not a readable rank job (${(err as Error).message})`);
  }
  if (job.format !== 1) throw new Error(`${file}: rank job format ${JSON.stringify(job.format)}, expected 1`);
  return job;
}

export async function runRank(job: RankJob, rank: number, backend: string, device?: string): Promise<void> {
  const log = (line: string) => process.stderr.write(`rank ${rank}: ${line}\n`);
  const stopping = new AbortController();
  const onTerm = () => {
    log('SIGTERM: stopping with the other ranks after this step');
    stopping.abort();
  };
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onTerm);

  const group = await joinDataParallel({
    rank,
    worldSize: job.worldSize,
    ports: job.ports,
    jobId: job.jobId,
    backend,
    allReduce: job.allReduce,
  });
  // One rank trains like one process (its steps stay whole, CUDA graphs included): nothing to average.
  const parallel = job.worldSize > 1 ? group.allReduce : undefined;
  report({ event: 'rank-ready', rank, backend, device, allReduce: parallel?.kind ?? 'none' });
  try {
    const tokenizer = await loadTokenizer(job.data.tokenizer);
    const train = await openData(job.data.train, tokenizer, { cacheDir: job.tokenCache });
    const h = job.hyper;
    const batches = (step: number) =>
      sampleBatch(train, { batchSize: h.batchSize, seqLen: h.seqLen, seed: h.seed, step });
    let teacher: Teacher | undefined;
    let teacherClient: TeacherClient | undefined;
    let teacherModel: GPTNeoX | undefined;
    if (job.distill && job.teacherService) {
      // The teacher service, asked for this rank's rows of each step ahead of time.
      const targets = job.teacherTargets?.length ? job.teacherTargets : job.teacherService.targets;
      teacherClient = new TeacherClient({ targets, expectedHash: job.teacher.hash, log, tls: teacherTls() });
      teacher = new StreamingTeacher(teacherClient, {
        topK: job.teacherService.topK,
        temperature: job.distill.temperature,
        batches: rankBatches(batches, rank, job.worldSize),
      });
    } else if (job.distill) {
      const ckpt = loadCheckpoint(job.teacher.dir);
      if (ckpt.hash !== job.teacher.hash)
        throw new Error(
          `teacher ${job.teacher.dir} holds weights ${ckpt.hash.slice(0, 12)}…, the run expects ${job.teacher.hash.slice(0, 12)}…`,
        );
      teacherModel = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, job.teacher.dir);
      teacher = inProcessTeacher(teacherModel);
    }
    const lead = rank === 0;
    const val = lead ? await openData(job.data.val, tokenizer, { cacheDir: job.tokenCache }) : undefined;
    const tokSource = job.data.tokenizer;
    const tokenizerJson = fs.readFileSync(
      fs.statSync(tokSource).isDirectory() ? path.join(tokSource, TOKENIZER_FILE) : tokSource,
    );
    let reachedTarget = false;
    let lastLoss = NaN;
    const options: TrainOptions = {
      hyper: h,
      batches,
      teacher,
      distill: job.distill ?? undefined,
      parallel,
      microBatchSize: job.microBatchSize,
      signal: stopping.signal,
      reportEvery: 1,
      extraFiles: { [TOKENIZER_FILE]: tokenizerJson },
      onStep: (r) => {
        lastLoss = r.loss;
        if (lead)
          report({
            event: 'rank-step',
            step: r.step,
            loss: r.loss,
            lr: r.lr,
            gradNorm: r.gradNorm,
            tokensPerSecond: r.tokensPerSecond,
            tokensSeen: r.tokensSeen,
          });
      },
      // Rank 0 evaluates; the others wait for its verdict on the target, so all stop at the same step.
      evaluate: {
        every: job.evalEvery,
        run: async (model, step) => {
          let reached = 0;
          if (lead) {
            const r = await evaluateLoss(
              model,
              evalBatches(val!, { seqLen: h.seqLen, batchSize: h.batchSize, maxTokens: job.evalTokens }),
            );
            report({ event: 'rank-eval', step, valLoss: r.loss, valPpl: r.ppl, tokens: r.tokens });
            reached = job.targetPpl !== undefined && r.ppl <= job.targetPpl ? 1 : 0;
          }
          const verdict = await group.ring.broadcast(lead ? Uint8Array.of(reached) : undefined);
          reachedTarget = verdict[0] === 1;
        },
      },
    };
    const startStep = job.start.step ?? 0;
    let trainer: Trainer;
    if (readTrainerState(job.start.dir)) trainer = Trainer.resume(job.start.dir, options);
    else {
      if (startStep !== 0) throw new Error(`${job.start.dir}: step ${startStep} but no trainer state`);
      const ckpt = loadCheckpoint(job.start.dir);
      trainer = new Trainer(GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, job.start.dir), options);
    }
    if (trainer.step !== startStep)
      throw new Error(`${job.start.dir}: holds step ${trainer.step}, the job says ${startStep}`);

    let saved = startStep;
    const save = async () => {
      if (!lead || trainer.step === saved) return;
      const dir = stepDir(job.checkpoints, trainer.step);
      const hash = await trainer.saveCheckpoint(dir);
      saved = trainer.step;
      report({ event: 'rank-checkpoint', checkpoint: { dir, hash, step: trainer.step } });
    };
    let stopped: 'requested' | 'target-reached' | undefined;
    try {
      while (trainer.step < job.toStep) {
        const r = await trainer.run(trainer.step + 1);
        if (r.stopped) {
          stopped = 'requested';
          break;
        }
        if (trainer.step % job.checkpointEvery === 0) await save();
        if (reachedTarget) {
          stopped = 'target-reached';
          break;
        }
      }
      await save();
    } finally {
      trainer.dispose();
      teacherModel?.dispose();
      teacherClient?.close();
      train.close();
      val?.close();
    }
    report({ event: 'rank-done', rank, step: trainer.step, lastLoss, ...(stopped ? { stopped } : {}) });
  } finally {
    group.close();
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onTerm);
  }
}
