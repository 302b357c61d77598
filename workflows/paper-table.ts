/**
 * The paper-table experiment (`offshoot experiment paper-table`): the comparison at the heart of
 * Krishnakumar et al. (arXiv 2510.07227), run on offshoot's own pipeline. Six arms, each over several
 * seeds, with the same data order (per seed), the same token budget and the same hyperparameters:
 *
 *   random-ce   random initialisation, cross-entropy          (the baseline every ratio is against)
 *   random-kd   random initialisation, knowledge distillation
 *   firstk-ce   first-k sub-network of the teacher (no search), cross-entropy
 *   firstk-kd   first-k sub-network, distillation
 *   evo-ce      the evolutionary search's sub-network, cross-entropy
 *   evo-kd      the evolutionary search's sub-network, distillation   (the paper's method)
 *
 * Reuses the pipeline's pieces: the teacher step (`prepareTeacher`), the evolution actor (child
 * workflow), and the pretraining actor (one child workflow per arm and seed); every student gets a
 * validation point before training (step 0), the pretraining actor's validation points every
 * `evalEvery` steps, and a final evaluation on the validation corpus and on an out-of-domain one
 * (perplexity and bits per byte), and on zero-shot tasks when the experiment names task files.
 * Deterministic workflow code: it holds references and numbers; the analysis and the files are made
 * by the `writePaperTable` activity (services/experiment).
 */
import { ApplicationFailure, defineQuery, executeChild, proxyActivities, setHandler } from '@temporalio/workflow';

import type { NeoXConfig } from '../core/model/index.js';
import { type SubnetSpec, countShape, firstKSpec } from '../core/subnet/pure.js';
import type { PretrainActivities } from './activities.js';
import { evolution } from './evolution.js';
import { pretrain } from './pretrain.js';
import {
  type ActivityPolicy,
  type BestCandidate,
  type CheckpointEval,
  type CheckpointRef,
  type DataRef,
  type EvalPoint,
  type EvolutionInput,
  type PrepareTeacherInput,
  type PretrainInput,
  type RunRef,
  type StudentInit,
  type TaskAccuracy,
  type TeacherRef,
  type TeacherServiceRef,
  TASK_QUEUES,
  activityOptions,
  workflowIds,
} from './types.js';

/** The six arms of the paper's comparison, in table order. */
export const PAPER_ARMS = ['random-ce', 'random-kd', 'firstk-ce', 'firstk-kd', 'evo-ce', 'evo-kd'] as const;
export type PaperArm = (typeof PAPER_ARMS)[number];

export const ARM_INFO: Record<PaperArm, { init: 'random' | 'first-k' | 'search'; distill: boolean; label: string }> = {
  'random-ce': { init: 'random', distill: false, label: 'random init (CE)' },
  'random-kd': { init: 'random', distill: true, label: 'random init + KD' },
  'firstk-ce': { init: 'first-k', distill: false, label: 'first-k sub-network (CE)' },
  'firstk-kd': { init: 'first-k', distill: true, label: 'first-k sub-network + KD' },
  'evo-ce': { init: 'search', distill: false, label: 'evolutionary-search sub-network (CE)' },
  'evo-kd': { init: 'search', distill: true, label: 'evolutionary-search sub-network + KD' },
};

export interface PaperTableInput {
  run: RunRef;
  teacher: PrepareTeacherInput;
  /** Training and validation corpora (the validation corpus gives the curves and the main column). */
  data: DataRef;
  /** Distil through the teacher-logit service; absent: workers hold the teacher (full logits). */
  teacherService?: TeacherServiceRef;
  /** The out-of-domain corpus of the second column (Moby Dick by default). */
  ood: { data: string; evalTokens: number };
  /** Zero-shot tasks (lm-evaluation-harness task files, absolute paths) scored on the teacher and every final student. */
  tasks?: { files: string[]; cwd: string; limit?: number };
  evolution: Omit<EvolutionInput, 'run' | 'teacher' | 'data' | 'teacherService' | 'carry'>;
  /** The pretraining of every arm; `hyper.seed` and `hyper.distill` are set per arm and seed. */
  pretrain: Omit<PretrainInput, 'run' | 'name' | 'init' | 'teacher' | 'data' | 'teacherService' | 'carry'>;
  /** Distillation settings of the KD arms. */
  distill: NonNullable<PretrainInput['hyper']['distill']>;
  arms: PaperArm[];
  seeds: number[];
  /** The shape of the random-init arms: the searched winner's (default) or the first-k one's. */
  randomShape: 'search' | 'first-k';
  /** Orderings of the sub-network arms' extraction. */
  order: 'first-k' | 'importance';
  layers: 'first' | 'even' | 'importance';
  /** Pretraining runs at once (one per pretrain worker is what helps). */
  concurrency: number;
  finalEvalTokens: number;
  /** Policy of the small activities (student preparation, evaluations, the report). */
  activity: ActivityPolicy;
  /** Written into the report: how the experiment was started, and its configuration. */
  meta: { command: string; config: unknown; backend?: string };
}

/** One student: an arm trained with one seed. */
export interface PaperRun {
  arm: PaperArm;
  seed: number;
  name: string;
  parameters: number;
  /** Training FLOPs per token (6N + attention) and the teacher's forward per token (KD arms), core/subnet's counting. */
  flopsPerToken: { training: number; teacher: number; total: number };
  steps: number;
  tokens: number;
  /** Pretraining FLOPs as the pretraining actor counted them (training + teacher forward passes). */
  flops: number;
  /** Validation curve: step 0 (before training), then every `evalEvery` steps, on `evalTokens` tokens. */
  curve: EvalPoint[];
  final: { val: CheckpointEval; ood: CheckpointEval; tasks?: TaskAccuracy[] };
  checkpoint: CheckpointRef;
  seconds: number;
}

export interface PaperTableResult {
  runId: string;
  teacher: {
    dir: string;
    hash: string;
    parameters: number;
    config: NeoXConfig;
    val: CheckpointEval;
    ood: CheckpointEval;
    tasks?: TaskAccuracy[];
  };
  search: {
    best: BestCandidate;
    evaluations: number;
    seed: number;
    flops: number;
    target: { minParams: number; maxParams: number; label: string };
  };
  specs: {
    search: SubnetSpec;
    firstK: SubnetSpec;
    random: SubnetSpec;
    descriptions: { search: string; firstK: string; random: string };
  };
  settings: {
    batchSize: number;
    seqLen: number;
    steps: number;
    tokensPerStep: number;
    evalEvery: number;
    evalTokens: number;
    finalEvalTokens: number;
    oodEvalTokens: number;
    valData: string;
    oodData: string;
    trainData: string;
    /** The task files scored (empty: none). */
    taskFiles: string[];
    distill: PaperTableInput['distill'];
    randomShape: PaperTableInput['randomShape'];
    arms: PaperArm[];
    seeds: number[];
  };
  runs: PaperRun[];
  /** Seconds of each stage, by workflow time (teacher includes training it when missing). */
  timings: { teacher: number; search: number; pretrain: number; total: number };
  meta: PaperTableInput['meta'];
}

/** What the experiment's report activity (orchestrate queue; services/experiment) offers. */
export interface ExperimentActivities {
  /** Analyses a finished experiment and writes its table, plots and data into `outDir`. */
  writePaperTable(input: { outDir: string; result: PaperTableResult }): Promise<{ files: string[]; markdown: string }>;
}

export interface PaperTableStatus {
  runId: string;
  stage: 'teacher' | 'search' | 'pretrain' | 'report' | 'done';
  total: number;
  done: string[];
  running: string[];
  best?: BestCandidate;
}

export const paperTableStatusQuery = defineQuery<PaperTableStatus>('status');

/** The workflow id of a run's paper-table experiment. */
export function paperTableWorkflowId(runId: string): string {
  return `offshoot/${runId}/paper-table`;
}

export async function paperTable(input: PaperTableInput): Promise<PaperTableResult> {
  if (!input.seeds.length || !input.arms.length)
    throw ApplicationFailure.nonRetryable('paper-table: no arms or no seeds');
  const ids = workflowIds(input.run.runId);
  const p = input.activity;
  const small = proxyActivities<PretrainActivities>(
    activityOptions(TASK_QUEUES.pretrain, p, ['SpecError', 'CheckpointError', 'TeacherMismatch']),
  );
  const report = proxyActivities<ExperimentActivities>({
    taskQueue: TASK_QUEUES.orchestrate,
    startToCloseTimeout: '5m',
    retry: { maximumAttempts: 3 },
  });

  let stage: PaperTableStatus['stage'] = 'teacher';
  const done: string[] = [];
  const running = new Set<string>();
  let best: BestCandidate | undefined;
  const total = input.arms.length * input.seeds.length;
  setHandler(paperTableStatusQuery, () => ({
    runId: input.run.runId,
    stage,
    total,
    done: [...done],
    running: [...running].sort(),
    best,
  }));

  // 1. The teacher (trained by the pipeline's teacher step when missing), measured on both corpora.
  const t0 = Date.now();
  const teacher: TeacherRef = await small.prepareTeacher(input.teacher);
  const h = input.pretrain.hyper;
  const evalOn = (checkpoint: CheckpointRef, data: DataRef, evalTokens: number) =>
    small.evaluateCheckpoint({
      checkpoint,
      data,
      tokenizerDir: teacher.dir,
      seqLen: h.seqLen,
      batchSize: h.batchSize,
      evalTokens,
    });
  const oodData: DataRef = { ...input.data, val: input.ood.data };
  const teacherRef = { dir: teacher.dir, hash: teacher.hash };
  const tasksOf = async (checkpoint: { dir: string; hash: string }): Promise<TaskAccuracy[] | undefined> =>
    input.tasks?.files.length
      ? small.evaluateTasks({ checkpoint, tokenizerDir: teacher.dir, ...input.tasks, batchSize: h.batchSize })
      : undefined;
  const [teacherVal, teacherOod, teacherTasks] = await Promise.all([
    evalOn(teacherRef, input.data, input.finalEvalTokens),
    evalOn(teacherRef, oodData, input.ood.evalTokens),
    tasksOf(teacherRef),
  ]);

  // 2. The search (the evolution actor), which also fixes the parameter bin every arm lives in.
  stage = 'search';
  const t1 = Date.now();
  const evo = await executeChild(evolution, {
    workflowId: ids.evolution,
    taskQueue: TASK_QUEUES.orchestrate,
    args: [{ ...input.evolution, run: input.run, teacher, data: input.data, teacherService: input.teacherService }],
  });
  best = evo.best;
  const fk = firstKSpec(teacher.config, evo.status.target);
  const randomSpec = input.randomShape === 'first-k' ? fk.spec : evo.best.spec;
  const initOf = (arm: PaperArm): StudentInit => {
    const kind = ARM_INFO[arm].init;
    if (kind === 'random') return { kind: 'random', spec: randomSpec };
    return {
      kind: 'subnet',
      spec: kind === 'search' ? evo.best.spec : fk.spec,
      order: kind === 'search' ? input.order : 'first-k',
      layers: kind === 'search' ? input.layers : 'first',
    };
  };

  // 3. Pretraining: seed-major, so partial results cover whole seeds; `concurrency` runs at once.
  stage = 'pretrain';
  const t2 = Date.now();
  const plans = input.seeds.flatMap((seed) => input.arms.map((arm) => ({ arm, seed, name: `${arm}-s${seed}` })));
  const runs: PaperRun[] = new Array(plans.length);
  const { hyper: _h, ...pretrainSettings } = input.pretrain;
  const one = async (i: number): Promise<void> => {
    const { arm, seed, name } = plans[i];
    running.add(name);
    const hyper = { ...h, seed, distill: ARM_INFO[arm].distill ? input.distill : null };
    const init = initOf(arm);
    // The step-0 checkpoint (the pretraining actor finds it again: preparation is idempotent) and its
    // validation point, on the same tokens as the actor's validation passes.
    const student = await small.prepareStudent({ run: input.run, name, init, teacher, hyper, data: input.data });
    const zero = await evalOn(student.checkpoint, input.data, input.pretrain.evalTokens);
    const args: PretrainInput = {
      ...pretrainSettings,
      run: input.run,
      name,
      init,
      teacher,
      data: input.data,
      teacherService: input.teacherService,
      hyper,
    };
    const r = await executeChild(pretrain, {
      workflowId: ids.pretrain(name),
      taskQueue: TASK_QUEUES.orchestrate,
      args: [args],
    });
    const [val, ood, tasks] = await Promise.all([
      evalOn(r.checkpoint, input.data, input.finalEvalTokens),
      evalOn(r.checkpoint, oodData, input.ood.evalTokens),
      tasksOf(r.checkpoint),
    ]);
    const counts = countShape(student.config, teacher.config, { seqLen: h.seqLen });
    const teacherPerToken = hyper.distill ? counts.flopsPerToken.teacherForward : 0;
    runs[i] = {
      arm,
      seed,
      name,
      parameters: r.parameters,
      flopsPerToken: {
        training: counts.flopsPerToken.training,
        teacher: teacherPerToken,
        total: counts.flopsPerToken.training + teacherPerToken,
      },
      steps: r.steps,
      tokens: r.tokens,
      flops: r.flops.total,
      curve: [{ step: 0, valLoss: zero.valLoss, valPpl: zero.valPpl }, ...r.evals.filter((e) => e.step > 0)],
      final: { val, ood, ...(tasks ? { tasks } : {}) },
      checkpoint: r.checkpoint,
      seconds: r.segments.reduce((s, seg) => s + seg.seconds, 0),
    };
    running.delete(name);
    done.push(name);
  };
  let next = 0;
  const lanes = Array.from({ length: Math.max(1, Math.min(input.concurrency, plans.length)) }, async () => {
    while (next < plans.length) await one(next++);
  });
  await Promise.all(lanes);

  // 4. The report: analysis, table and plots, written by an activity.
  stage = 'report';
  const t3 = Date.now();
  const result: PaperTableResult = {
    runId: input.run.runId,
    teacher: {
      dir: teacher.dir,
      hash: teacher.hash,
      parameters: teacher.parameters,
      config: teacher.config,
      val: teacherVal,
      ood: teacherOod,
      ...(teacherTasks ? { tasks: teacherTasks } : {}),
    },
    search: {
      best: evo.best,
      evaluations: evo.status.asked,
      seed: evo.seed,
      flops: evo.searchFlops,
      target: evo.status.target,
    },
    specs: {
      search: evo.best.spec,
      firstK: fk.spec,
      random: randomSpec,
      descriptions: {
        search: evo.best.description ?? '',
        firstK: fk.description,
        random: input.randomShape === 'first-k' ? fk.description : (evo.best.description ?? ''),
      },
    },
    settings: {
      batchSize: h.batchSize,
      seqLen: h.seqLen,
      steps: h.steps,
      tokensPerStep: h.batchSize * h.seqLen,
      evalEvery: input.pretrain.evalEvery,
      evalTokens: input.pretrain.evalTokens,
      finalEvalTokens: input.finalEvalTokens,
      oodEvalTokens: input.ood.evalTokens,
      valData: input.data.val,
      oodData: input.ood.data,
      trainData: input.data.train,
      taskFiles: input.tasks?.files ?? [],
      distill: input.distill,
      randomShape: input.randomShape,
      arms: input.arms,
      seeds: input.seeds,
    },
    runs,
    timings: {
      teacher: (t1 - t0) / 1000,
      search: (t2 - t1) / 1000,
      pretrain: (t3 - t2) / 1000,
      total: (t3 - t0) / 1000,
    },
    meta: input.meta,
  };
  await report.writePaperTable({ outDir: `${input.run.dir}/paper-table`, result });
  stage = 'done';
  return result;
}
