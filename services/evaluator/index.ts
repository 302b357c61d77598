/**
 * services/evaluator: the fitness-evaluator activity (task queue "evaluate"). Stateless: (teacher ref,
 * candidate spec, data ref, budget, seed) -> metrics. It extracts the candidate from the teacher on
 * shared storage, trains it briefly with distillation (teacher through the gRPC service when the run
 * has one, else held in this process) and measures validation loss. Any evaluator can take any
 * candidate; what it caches only saves time: the loaded teacher (weights on the device, tokenizer,
 * tokenised data, validation batches on the device) across candidates, and the compiled kernels and
 * tuned matrix-product plans of the shapes it has met (core/model/shape-costs.ts). Each candidate's log
 * line says where its time went (extraction, teacher forward, pipelines, autotune, training, evaluation).
 */
import { ApplicationFailure, Context } from '@temporalio/activity';

import {
  type FitnessContext,
  createFitnessContext,
  describePhases,
  disposeFitnessContext,
  evaluateFitness,
  warmUpFitness,
} from '../../core/subnet/index.js';
import { tokensPerSecond as tokensPerSecondGauge } from '../progress/index.js';
import { StreamingTeacher } from '../teacher/index.js';
import {
  TeacherMismatchError,
  type WorkerEnv,
  emit,
  teacherClient,
  teacherModel,
  withActivityEvents,
} from '../orchestration/index.js';
import type { EvaluateActivities, EvaluateInput, EvaluateOutput } from '../../workflows/index.js';

let cached: { key: string; ctx: FitnessContext } | undefined;

async function fitnessContext(input: EvaluateInput): Promise<FitnessContext> {
  const key = JSON.stringify([input.teacher, input.data]);
  if (cached?.key === key) return cached.ctx;
  if (cached) disposeFitnessContext(cached.ctx);
  cached = undefined;
  const ctx = await createFitnessContext(input.teacher.dir, {
    train: input.data.train,
    val: input.data.val,
    tokenizer: input.data.tokenizer,
  });
  if (ctx.checkpoint.hash !== input.teacher.hash) {
    throw new TeacherMismatchError(
      `teacher ${input.teacher.dir} holds weights ${ctx.checkpoint.hash.slice(0, 12)}…, the search expects ${input.teacher.hash.slice(0, 12)}…`,
    );
  }
  cached = { key, ctx };
  return ctx;
}

/** The budgets (kind, loss, sequence length, batch) each shared context has been warmed up for. */
const warmedUp = new WeakMap<FitnessContext, Set<string>>();

/**
 * Before a context's first candidate of a budget: compiles what every candidate runs (warmUpFitness),
 * so that each candidate's time is its own. A failure only costs the first candidate that time.
 */
async function warmUp(
  env: WorkerEnv,
  shared: FitnessContext,
  ctx: FitnessContext,
  input: EvaluateInput,
): Promise<void> {
  const b = input.fitness.budget;
  const key = JSON.stringify([b.kind, b.loss ?? 'distill', b.seqLen, b.batchSize]);
  let done = warmedUp.get(shared);
  if (!done) warmedUp.set(shared, (done = new Set()));
  if (done.has(key)) return;
  done.add(key);
  try {
    const w = await warmUpFitness(ctx, b, input.seed);
    if (w)
      env.log(`evaluate: warmed up on ${input.teacher.dir} in ${w.seconds.toFixed(1)} s (${describePhases(w.phases)})`);
  } catch (err) {
    env.log(`evaluate: warm-up failed, going on without it: ${(err as Error).message.split('\n')[0]}`);
  }
}

/** The evaluate activity, bound to a worker environment. */
export function createEvaluateActivities(env: WorkerEnv): EvaluateActivities {
  const evaluateCandidate = async (input: EvaluateInput): Promise<EvaluateOutput> => {
    const actx = Context.current();
    const attempt = actx.info.attempt;
    env.log(
      `evaluate: candidate ${input.candidateId} (${input.key.slice(0, 12)}) attempt ${attempt} on ${env.identity}`,
    );
    let shared: FitnessContext;
    try {
      shared = await fitnessContext(input);
    } catch (err) {
      if (err instanceof TeacherMismatchError) throw ApplicationFailure.nonRetryable(err.message, 'TeacherMismatch');
      throw err;
    }
    // Per call: the shared caches, plus this call's heartbeat and distillation source.
    const ctx: FitnessContext = {
      ...shared,
      onStep: (r) => actx.heartbeat({ step: r.step }),
      distillTeacher: input.teacherService
        ? (batches, distill) =>
            new StreamingTeacher(teacherClient(env, input.teacherService!, input.teacher.hash), {
              topK: input.teacherService!.topK,
              temperature: distill.temperature,
              batches,
            })
        : undefined,
    };
    if (
      !input.teacherService &&
      input.fitness.budget.kind === 'brief' &&
      (input.fitness.budget.loss ?? 'distill') === 'distill'
    ) {
      ctx.teacherModel = teacherModel(input.teacher.dir, input.teacher.hash);
    }
    actx.heartbeat({ step: 0 });
    await warmUp(env, shared, ctx, input);
    let metrics;
    try {
      metrics = await evaluateFitness(
        {
          teacher: input.teacher.dir,
          spec: input.spec,
          data: { train: input.data.train, val: input.data.val, tokenizer: input.data.tokenizer },
          budget: input.fitness.budget,
          seed: input.seed,
          init: 'inherit',
          order: input.fitness.order,
          layers: input.fitness.layers,
        },
        ctx,
      );
    } catch (err) {
      const name = (err as Error).name;
      if (name === 'SpecError' || name === 'TargetError')
        throw ApplicationFailure.nonRetryable((err as Error).message, name);
      throw err;
    }
    if (metrics.specHash !== input.key) {
      throw ApplicationFailure.nonRetryable(
        `candidate ${input.candidateId}: spec hash ${metrics.specHash.slice(0, 12)}… differs from the search's key ${input.key.slice(0, 12)}…`,
        'SpecError',
      );
    }
    const output: EvaluateOutput = {
      fitness: metrics.valLoss,
      metrics: {
        valLoss: metrics.valLoss,
        valPpl: metrics.valPpl,
        parameters: metrics.parameters,
        trainTokens: metrics.trainTokens,
        evalTokens: metrics.evalTokens,
        flops: metrics.flops.total,
        seconds: metrics.seconds,
        phases: metrics.phases,
        specHash: metrics.specHash,
        worker: env.identity,
        attempt,
      },
    };
    env.log(
      `evaluate: candidate ${input.candidateId} val loss ${metrics.valLoss.toFixed(4)} in ${metrics.seconds.toFixed(1)} s (${describePhases(metrics.phases)})`,
    );
    if (metrics.seconds > 0) tokensPerSecondGauge.set({ component: 'evaluate' }, metrics.trainTokens / metrics.seconds);
    emit(env, {
      kind: 'candidate.evaluated',
      run: input.run.runId,
      generation: input.generation ?? 0,
      candidate: input.candidateId,
      params: metrics.parameters,
      fitness: Number.isFinite(metrics.valLoss) ? metrics.valLoss : null,
      specHash: metrics.specHash,
      durationMs: Math.round(metrics.seconds * 1000),
      metrics: { valPpl: metrics.valPpl, trainTokens: metrics.trainTokens, flops: metrics.flops.total },
      source: { worker: env.identity, attempt },
    });
    return output;
  };
  return {
    evaluateCandidate: withActivityEvents(
      env,
      (i: EvaluateInput) => i.run.runId,
      (i: EvaluateInput) => `candidate ${i.candidateId}`,
      evaluateCandidate,
    ),
  };
}
