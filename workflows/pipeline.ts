/**
 * The main job: teacher ready -> evolution (search) -> pretraining of the winner and its baselines
 * -> final evaluation and report. The search and each pretraining run are child workflows (their
 * own histories, queries and failure handling); this workflow holds only their results.
 */
import {
  ApplicationFailure,
  CancellationScope,
  defineQuery,
  executeChild,
  isCancellation,
  log,
  proxyActivities,
  setHandler,
} from '@temporalio/workflow';

import { firstKSpec } from '../core/subnet/pure.js';
import type { OrchestrateActivities, PretrainActivities } from './activities.js';
import { evolution } from './evolution.js';
import { pretrain } from './pretrain.js';
import {
  type BestCandidate,
  type PipelineInput,
  type PipelineResult,
  type PipelineStage,
  type PipelineStatus,
  type PretrainInput,
  type ResultRow,
  type StudentInit,
  type TeacherRef,
  TASK_QUEUES,
  activityOptions,
  errorMessage,
  workflowIds,
} from './types.js';

export const pipelineStatusQuery = defineQuery<PipelineStatus>('status');

interface StudentPlan {
  name: string;
  init: StudentInit;
  description: string;
}

/**
 * The pipeline, between its run.started and run.finished progress events (docs/progress.md), which an
 * orchestrate activity publishes: workflow code never publishes itself. Progress is best effort.
 */
export async function pipeline(input: PipelineInput): Promise<PipelineResult> {
  const orchestrate = proxyActivities<OrchestrateActivities>({
    taskQueue: TASK_QUEUES.orchestrate,
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 5 },
  });
  const run = input.run.runId;
  const publish = async (event: Parameters<OrchestrateActivities['publishProgress']>[0]): Promise<void> => {
    try {
      await orchestrate.publishProgress(event);
    } catch (err) {
      if (isCancellation(err)) throw err;
      log.warn('pipeline: progress event not published', { kind: event.kind, error: errorMessage(err) });
    }
  };
  const baselines = [
    ...(input.baselines.randomInit ? ['random-init'] : []),
    ...(input.baselines.firstK ? ['first-k'] : []),
  ];
  await publish({
    kind: 'run.started',
    run,
    mode: 'pipeline',
    ...(input.evolution.search.budget ? { budget: input.evolution.search.budget } : {}),
    ...(input.evolution.search.population ? { populationSize: input.evolution.search.population } : {}),
    pretrainSteps: input.pretrain.hyper.steps,
    teacher: input.teacher.dir,
    baselines,
  });
  try {
    const result = await runPipeline(input);
    const best = result.search.best;
    await publish({
      kind: 'run.finished',
      run,
      status: 'completed',
      ...(best.fitness !== null
        ? { best: { candidate: best.id, params: best.parameters, fitness: best.fitness } }
        : {}),
      results: { rows: result.rows.map(({ checkpoint: _c, ...row }) => row), report: result.report.markdown },
    });
    return result;
  } catch (err) {
    const status = isCancellation(err) ? 'cancelled' : 'failed';
    await CancellationScope.nonCancellable(() =>
      publish({ kind: 'run.finished', run, status, error: errorMessage(err).slice(0, 2000) }),
    );
    throw err;
  }
}

async function runPipeline(input: PipelineInput): Promise<PipelineResult> {
  const ids = workflowIds(input.run.runId);
  const p = input.activity;
  const pretrainQueue = proxyActivities<PretrainActivities>(
    activityOptions(TASK_QUEUES.pretrain, p, ['CheckpointError', 'TeacherMismatch']),
  );
  const orchestrate = proxyActivities<OrchestrateActivities>({
    taskQueue: TASK_QUEUES.orchestrate,
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 5 },
  });

  let stage: PipelineStage = 'teacher';
  let teacher: TeacherRef | undefined;
  let best: BestCandidate | undefined;
  const rows: ResultRow[] = [];
  const pretrainIds: string[] = [];
  setHandler(pipelineStatusQuery, () => ({
    runId: input.run.runId,
    stage,
    teacher: teacher && { dir: teacher.dir, hash: teacher.hash, parameters: teacher.parameters },
    evolutionWorkflowId: ids.evolution,
    pretrainWorkflowIds: pretrainIds,
    best,
    rows,
  }));

  // 1. The teacher: trained when asked and missing, checked against the teacher service.
  teacher = await pretrainQueue.prepareTeacher(input.teacher);

  // 2. The search.
  stage = 'search';
  const evo = await executeChild(evolution, {
    workflowId: ids.evolution,
    taskQueue: TASK_QUEUES.orchestrate,
    args: [{ ...input.evolution, run: input.run, teacher, data: input.data, teacherService: input.teacherService }],
  });
  best = evo.best;

  // 3. Pretraining: the winner, and baselines of the same budget.
  stage = 'pretrain';
  const plans: StudentPlan[] = [
    {
      name: 'student',
      init: { kind: 'subnet', spec: evo.best.spec, order: input.pretrain.order, layers: input.pretrain.layers },
      description: evo.best.description ?? '',
    },
  ];
  if (input.baselines.randomInit) {
    plans.push({
      name: 'random-init',
      init: { kind: 'random', spec: evo.best.spec },
      description: `${evo.best.description ?? ''} (random weights)`,
    });
  }
  if (input.baselines.firstK) {
    const fk = firstKSpec(teacher.config, evo.status.target);
    plans.push({
      name: 'first-k',
      init: { kind: 'subnet', spec: fk.spec, order: 'first-k', layers: 'first' },
      description: `${fk.description}${fk.inRange ? '' : ' (nearest to the bin)'}`,
    });
  }
  const { order: _o, layers: _l, ...pretrainSettings } = input.pretrain;
  const results = await Promise.all(
    plans.map((plan) => {
      const id = ids.pretrain(plan.name);
      pretrainIds.push(id);
      const args: PretrainInput = {
        ...pretrainSettings,
        run: input.run,
        name: plan.name,
        init: plan.init,
        teacher: teacher!,
        data: input.data,
        teacherService: input.teacherService,
      };
      return executeChild(pretrain, { workflowId: id, taskQueue: TASK_QUEUES.orchestrate, args: [args] });
    }),
  );

  // 4. Final evaluation on the same validation tokens for every student, and the report.
  stage = 'report';
  const finalEval = (checkpoint: { dir: string; hash: string }) =>
    pretrainQueue.evaluateCheckpoint({
      checkpoint,
      data: input.data,
      tokenizerDir: teacher!.dir,
      seqLen: input.pretrain.hyper.seqLen,
      batchSize: input.pretrain.hyper.batchSize,
      evalTokens: input.finalEvalTokens,
    });
  const [teacherEval, ...evals] = await Promise.all([
    finalEval({ dir: teacher.dir, hash: teacher.hash }),
    ...results.map((r) => finalEval(r.checkpoint)),
  ]);
  results.forEach((r, i) => {
    const plan = plans[i];
    rows.push({
      name: plan.name,
      init:
        plan.init.kind === 'random'
          ? 'random'
          : plan.name === 'student'
            ? 'searched sub-network'
            : 'first-k sub-network (no search)',
      description: plan.description,
      parameters: r.parameters,
      valLoss: evals[i].valLoss,
      valPpl: evals[i].valPpl,
      valBpb: evals[i].valBpb,
      tokens: r.tokens,
      flops: r.flops.total,
      ...(plan.name === 'student' ? { searchFlops: evo.searchFlops } : {}),
      checkpoint: r.checkpoint,
    });
  });
  if (!rows.length) throw ApplicationFailure.nonRetryable('pipeline: nothing was pretrained');
  const result: Omit<PipelineResult, 'report'> = {
    runId: input.run.runId,
    teacher: {
      dir: teacher.dir,
      hash: teacher.hash,
      parameters: teacher.parameters,
      valLoss: teacherEval.valLoss,
      valBpb: teacherEval.valBpb,
    },
    search: {
      best: evo.best,
      evaluations: evo.status.asked,
      runs: evo.status.run,
      seed: evo.seed,
      flops: evo.searchFlops,
    },
    rows,
  };
  const report = await orchestrate.writeReport({ runDir: input.run.dir, result });
  stage = 'done';
  return { ...result, report };
}
