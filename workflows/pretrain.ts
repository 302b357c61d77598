/**
 * The pretraining actor: a student's long (distillation) pretraining as a chain of `trainSegment`
 * activities on the "pretrain" queue. Each segment heartbeats {step, checkpoint}; when its worker dies
 * Temporal retries it (on any worker) and the retry resumes from the last heartbeat's checkpoint, so
 * at most one checkpoint interval is redone. A segment cut short by a worker's SIGTERM returns where
 * it checkpointed and the next segment goes on from there. The workflow carries only references
 * (checkpoint directories with content hashes) and small metrics.
 */
import {
  ApplicationFailure,
  allHandlersFinished,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  log,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';

import type { PretrainActivities } from './activities.js';
import {
  type PretrainInput,
  type PretrainProgress,
  type PretrainResult,
  type TrainSegmentOutput,
  TASK_QUEUES,
  activityOptions,
  checkPayloadSize,
} from './types.js';

export interface PretrainStatus {
  name: string;
  steps: number;
  progress: PretrainProgress | null;
  stopRequested: boolean;
}

export const pretrainStatusQuery = defineQuery<PretrainStatus>('status');
/** Stop after the running segment (its checkpoint is the result). */
export const stopPretrainSignal = defineSignal<[reason?: string]>('stop');

/** Continue-as-new after this many segments in one run, unless the input says (keeps the history bounded). */
const SEGMENTS_PER_RUN = 200;

export async function pretrain(input: PretrainInput): Promise<PretrainResult> {
  const p = input.activity;
  const train = proxyActivities<PretrainActivities>(
    activityOptions(TASK_QUEUES.pretrain, p, ['SpecError', 'CheckpointError', 'PayloadTooLargeError']),
  );
  const prepare = proxyActivities<PretrainActivities>({
    taskQueue: TASK_QUEUES.pretrain,
    startToCloseTimeout: '10m',
    heartbeatTimeout: `${p.heartbeatSeconds}s`,
    retry: { maximumAttempts: p.maxAttempts, nonRetryableErrorTypes: ['SpecError', 'CheckpointError'] },
  });

  let progress: PretrainProgress | null = input.carry ?? null;
  let stopRequested = false;
  setHandler(pretrainStatusQuery, () => ({ name: input.name, steps: input.hyper.steps, progress, stopRequested }));
  setHandler(stopPretrainSignal, (reason?: string) => {
    log.info('pretrain: stop requested', { name: input.name, reason });
    stopRequested = true;
  });

  if (!progress) {
    const student = await prepare.prepareStudent({
      run: input.run,
      name: input.name,
      init: input.init,
      teacher: input.teacher,
      hyper: input.hyper,
      data: input.data,
    });
    progress = {
      checkpoint: student.checkpoint,
      step: student.checkpoint.step ?? 0,
      tokens: 0,
      flops: { training: 0, teacher: 0 },
      segments: [],
      evals: [],
      reachedTarget: false,
      runs: 1,
      parameters: student.parameters,
    };
  }
  const segmentsAtStart = progress.segments.length;
  const steps = input.hyper.steps;

  while (progress.step < steps && !progress.reachedTarget && !stopRequested) {
    if (
      progress.segments.length - segmentsAtStart >= (input.continueAsNewEvery ?? SEGMENTS_PER_RUN) ||
      workflowInfo().continueAsNewSuggested
    ) {
      await condition(allHandlersFinished);
      const next: PretrainInput = { ...input, carry: { ...progress, runs: progress.runs + 1 } };
      try {
        checkPayloadSize("the pretrain workflow's continue-as-new input", next);
      } catch (err) {
        throw ApplicationFailure.nonRetryable((err as Error).message, 'PayloadTooLargeError');
      }
      await continueAsNew<typeof pretrain>(next);
    }
    const fromStep: number = progress.step;
    const toStep = Math.min(steps, fromStep + input.segmentSteps);
    const out: TrainSegmentOutput = await train.trainSegment({
      run: input.run,
      name: input.name,
      from: progress.checkpoint,
      toStep,
      teacher: input.teacher,
      data: input.data,
      teacherService: input.teacherService,
      hyper: input.hyper,
      checkpointEvery: input.checkpointEvery,
      evalEvery: input.evalEvery,
      evalTokens: input.evalTokens,
      targetPpl: input.targetPpl,
    });
    if (out.step < fromStep || out.step > toStep) {
      throw ApplicationFailure.nonRetryable(
        `trainSegment returned step ${out.step} outside [${fromStep}, ${toStep}]`,
        'SegmentError',
      );
    }
    progress = {
      ...progress,
      checkpoint: out.checkpoint,
      step: out.step,
      tokens: progress.tokens + out.tokens,
      flops: {
        training: progress.flops.training + out.flops.training,
        teacher: progress.flops.teacher + out.flops.teacher,
      },
      segments: [
        ...progress.segments,
        {
          fromStep,
          toStep: out.step,
          resumedFrom: out.resumedFrom,
          attempt: out.attempt,
          worker: out.worker,
          firstLoss: out.firstLoss,
          lastLoss: out.lastLoss,
          seconds: out.seconds,
          ...(out.stopped ? { stopped: out.stopped } : {}),
        },
      ],
      evals: [...progress.evals, ...out.evals],
      reachedTarget: out.stopped === 'target-reached',
    };
    log.info('pretrain: segment done', { name: input.name, step: out.step, loss: out.lastLoss, attempt: out.attempt });
  }

  await condition(allHandlersFinished);
  return {
    name: input.name,
    checkpoint: progress.checkpoint,
    steps: progress.step,
    tokens: progress.tokens,
    flops: { ...progress.flops, total: progress.flops.training + progress.flops.teacher },
    evals: progress.evals,
    segments: progress.segments,
    reachedTarget: progress.reachedTarget,
    parameters: progress.parameters,
  };
}
