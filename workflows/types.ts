/**
 * What workflows and activities exchange. Everything here is a reference or a small record: checkpoint
 * directories on shared storage with their content hashes, sub-network specs, hyperparameters and
 * metrics — never tensors. Type-only imports from core keep this file free of tfjs.
 */
import type { DistillOptions, NeoXConfig } from '../core/model/index.js';
import type { SearchOptions } from '../core/search/index.js';
import type { TeacherTrainSettings } from '../core/teacher/index.js';
import type {
  BinScale,
  FitnessBudget,
  HeadOrder,
  LayerOrder,
  SpaceChoices,
  SpaceKind,
  SubnetSpec,
  TargetRequest,
} from '../core/subnet/index.js';

/** The task queues; workers poll the ones they were started for (`offshoot worker --queues`). */
export const TASK_QUEUES = {
  /** Fitness evaluations: stateless evaluators, one activity per device. */
  evaluate: 'evaluate',
  /** Teacher preparation, student extraction, training segments and final evaluations. */
  pretrain: 'pretrain',
  /** Workflow tasks, plus small bookkeeping activities (blobs, reports). */
  orchestrate: 'orchestrate',
} as const;
export type QueueName = keyof typeof TASK_QUEUES;
export const QUEUE_NAMES = Object.keys(TASK_QUEUES) as QueueName[];

/** Temporal refuses payloads over 2 MB; offshoot errors on them first, naming what was too big. */
export const MAX_PAYLOAD_BYTES = 2 * 1024 * 1024;
/** Above this, workflows pass large state (the search's) by reference instead of inline. */
export const INLINE_STATE_BYTES = 512 * 1024;

/** A checkpoint directory on shared storage and the content hash of its weights. */
export interface CheckpointRef {
  /** Absolute path on the shared storage (every worker mounts the same folder). */
  dir: string;
  hash: string;
  /** Training steps done, for training checkpoints. */
  step?: number;
}

/** A blob stored on shared storage by content hash (large workflow state). */
export interface BlobRef {
  blob: string;
  sha256: string;
  bytes: number;
}

export interface TeacherRef {
  dir: string;
  hash: string;
  config: NeoXConfig;
  parameters: number;
  /** Validation loss of the teacher on the run's validation data, when it was measured. */
  valLoss?: number;
}

export interface DataRef {
  train: string;
  val: string;
  /** Tokenizer file or folder; default the teacher's tokenizer.json. */
  tokenizer?: string;
}

/** The teacher-logit service students distil from (docs/teacher-service.md); absent: in process. */
export interface TeacherServiceRef {
  targets: string[];
  topK: number;
}

export interface ActivityPolicy {
  /** start-to-close timeout of one attempt. */
  timeoutSeconds: number;
  /** A worker that stops heartbeating for this long is presumed dead; the attempt is retried elsewhere. */
  heartbeatSeconds: number;
  maxAttempts: number;
}

/**
 * Activity options under a policy: its timeouts and attempts, exponential backoff from 1 s to 30 s,
 * and no retry of the named error types (bad input that another attempt cannot fix).
 */
export function activityOptions(taskQueue: string, policy: ActivityPolicy, nonRetryableErrorTypes: string[]) {
  return {
    taskQueue,
    startToCloseTimeout: `${policy.timeoutSeconds}s`,
    heartbeatTimeout: `${policy.heartbeatSeconds}s`,
    retry: {
      maximumAttempts: policy.maxAttempts,
      initialInterval: '1s',
      backoffCoefficient: 2,
      maximumInterval: '30s',
      nonRetryableErrorTypes,
    },
  };
}

/** An error's message with up to three causes, for logs and failure messages. */
export function errorMessage(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  const parts: string[] = [];
  while (e && parts.length < 4) {
    if (e.message) parts.push(e.message);
    e = e.cause as typeof e;
  }
  return parts.join(': ') || String(err);
}

/** Where a run keeps its files, and its name. */
export interface RunRef {
  /** The run's name; workflow ids derive from it. */
  runId: string;
  /** The run's folder on shared storage (absolute). */
  dir: string;
}

// ---- teacher ----------------------------------------------------------------------------------------

/** How prepareTeacher trains a missing teacher (core/teacher's settings). */
export type { TeacherTrainSettings };

export interface PrepareTeacherInput {
  run: RunRef;
  /** The teacher checkpoint directory. */
  dir: string;
  /** Train it there when it holds no finished checkpoint; absent: it must exist. */
  train?: TeacherTrainSettings;
  data: DataRef;
  /** Check that the service serves this teacher (same content hash) before going on. */
  service?: TeacherServiceRef;
}

// ---- evaluation --------------------------------------------------------------------------------------

export interface FitnessSettings {
  budget: FitnessBudget;
  order: HeadOrder;
  layers: LayerOrder;
}

export interface EvaluateInput {
  run: RunRef;
  candidateId: number;
  /** The generation (batch) that asked it. */
  generation?: number;
  /** Canonical hash of the spec (the search's key). */
  key: string;
  spec: SubnetSpec;
  teacher: { dir: string; hash: string };
  data: DataRef;
  fitness: FitnessSettings;
  seed: number;
  teacherService?: TeacherServiceRef;
}

export interface EvaluateOutput {
  /** Validation loss after the fitness budget (minimised). */
  fitness: number;
  metrics: {
    valLoss: number;
    valPpl: number;
    parameters: number;
    trainTokens: number;
    evalTokens: number;
    flops: number;
    seconds: number;
    /** Where those seconds went: per-shape costs (pipelines, autotune) and steady compute (core/subnet FitnessPhases). */
    phases?: Record<string, number>;
    specHash: string;
    /** Which worker and attempt produced it. */
    worker: string;
    attempt: number;
  };
}

// ---- evolution ---------------------------------------------------------------------------------------

export interface SpaceSettings {
  kind: SpaceKind;
  target: TargetRequest;
  bins: number;
  scale: BinScale;
  choices?: SpaceChoices;
  /** Chance that a mutation changes a second dimension; default core/subnet's (0.3). */
  secondMutationProbability?: number;
}

export interface EvolutionInput {
  run: RunRef;
  teacher: TeacherRef;
  data: DataRef;
  space: SpaceSettings;
  search: SearchOptions;
  fitness: FitnessSettings;
  teacherService?: TeacherServiceRef;
  /** Evaluations in flight at once. */
  parallelism: number;
  /** Continue-as-new after this many generations (batches) in one run. */
  continueAsNewEvery: number;
  /** Search state (and result history) larger than this travels by reference. Default INLINE_STATE_BYTES. */
  inlineStateBytes?: number;
  activity: ActivityPolicy;
  /** Carried across continue-as-new. */
  carry?: EvolutionCarry;
}

export interface EvolutionCarry {
  /** The search's JSON state, inline or (when large) by reference. */
  state: unknown | { ref: BlobRef };
  /** Runs of this workflow so far (continue-as-new count + 1 for the current one). */
  runs: number;
  /** History length of each finished run. */
  historyLengths: number[];
  /** Seconds each evaluation took, summed, for the evaluations-per-minute figure. */
  startedAt: number;
}

export interface CandidateSummary {
  id: number;
  key: string;
  generation: number;
  origin: string;
  status: string;
  fitness: number | null;
  parameters: number;
  error?: string;
  metrics?: Record<string, unknown>;
}

export interface BestCandidate extends CandidateSummary {
  spec: SubnetSpec;
  description?: string;
}

export interface EvolutionStatus {
  runId: string;
  generation: number;
  budget: number;
  asked: number;
  evaluated: number;
  failed: number;
  pending: number;
  inFlight: number[];
  stopped: boolean;
  done: boolean;
  bestFitness: number | null;
  /** This workflow's run (1 + continue-as-new count). */
  run: number;
  historyLengths: number[];
  target: { minParams: number; maxParams: number; label: string };
}

export interface EvolutionResult {
  best: BestCandidate;
  paretoFront: BestCandidate[];
  /** Every evaluation, in id order (compact); empty when it was too large and went to `historyRef`. */
  history: CandidateSummary[];
  historyRef?: BlobRef;
  status: EvolutionStatus;
  /** Sum of FLOPs spent on fitness evaluations. */
  searchFlops: number;
  /** Search seed actually used. */
  seed: number;
}

// ---- pretraining -------------------------------------------------------------------------------------

export type StudentInit =
  | { kind: 'subnet'; spec: SubnetSpec; order: HeadOrder; layers: LayerOrder }
  | { kind: 'random'; spec: SubnetSpec }
  | { kind: 'checkpoint'; checkpoint: CheckpointRef };

export interface PretrainHyper {
  steps: number;
  batchSize: number;
  seqLen: number;
  lr: number;
  warmup: number;
  seed: number;
  /** Knowledge distillation from the teacher; null: plain cross-entropy. */
  distill: DistillOptions | null;
}

export interface PretrainInput {
  run: RunRef;
  /** Name of this student within the run (its folder): student, random-init, first-k. */
  name: string;
  init: StudentInit;
  teacher: TeacherRef;
  data: DataRef;
  teacherService?: TeacherServiceRef;
  hyper: PretrainHyper;
  /** Steps per trainSegment activity. */
  segmentSteps: number;
  /** Steps between checkpoints inside a segment (and heartbeats carrying them). */
  checkpointEvery: number;
  /** Steps between validation passes. */
  evalEvery: number;
  evalTokens: number;
  /** Stop once validation perplexity is at or below this. */
  targetPpl?: number;
  activity: ActivityPolicy;
  /** Segments per workflow run before it continues as new. Default 200. */
  continueAsNewEvery?: number;
  carry?: PretrainProgress;
}

export interface EvalPoint {
  step: number;
  valLoss: number;
  valPpl: number;
}

export interface SegmentSummary {
  fromStep: number;
  toStep: number;
  /** Step the segment (after retries) actually resumed from. */
  resumedFrom: number;
  attempt: number;
  worker: string;
  firstLoss: number;
  lastLoss: number;
  seconds: number;
  stopped?: 'worker-shutdown' | 'target-reached';
}

export interface PretrainProgress {
  checkpoint: CheckpointRef;
  step: number;
  tokens: number;
  flops: { training: number; teacher: number };
  segments: SegmentSummary[];
  evals: EvalPoint[];
  reachedTarget: boolean;
  runs: number;
  parameters: number;
}

export interface TrainSegmentInput {
  run: RunRef;
  name: string;
  from: CheckpointRef;
  toStep: number;
  teacher: TeacherRef;
  data: DataRef;
  teacherService?: TeacherServiceRef;
  hyper: PretrainHyper;
  checkpointEvery: number;
  evalEvery: number;
  evalTokens: number;
  targetPpl?: number;
}

/** What a trainSegment heartbeat carries; a retry resumes from `checkpoint`. */
export interface SegmentHeartbeat {
  step: number;
  checkpoint: CheckpointRef;
  loss?: number;
}

export interface TrainSegmentOutput {
  checkpoint: CheckpointRef;
  step: number;
  resumedFrom: number;
  attempt: number;
  worker: string;
  /** Training tokens and FLOPs of the steps this output covers (from `from.step` to `step`). */
  tokens: number;
  flops: { training: number; teacher: number };
  firstLoss: number;
  lastLoss: number;
  evals: EvalPoint[];
  seconds: number;
  stopped?: 'worker-shutdown' | 'target-reached';
}

export interface PretrainResult {
  name: string;
  checkpoint: CheckpointRef;
  steps: number;
  tokens: number;
  flops: { training: number; teacher: number; total: number };
  evals: EvalPoint[];
  segments: SegmentSummary[];
  reachedTarget: boolean;
  parameters: number;
}

export interface PrepareStudentInput {
  run: RunRef;
  name: string;
  init: StudentInit;
  teacher: TeacherRef;
  hyper: PretrainHyper;
  data: DataRef;
}

export interface StudentRef {
  checkpoint: CheckpointRef;
  parameters: number;
  config: NeoXConfig;
  specHash?: string;
}

export interface EvaluateCheckpointInput {
  checkpoint: CheckpointRef;
  data: DataRef;
  /** Tokenizer folder (the teacher's) when the checkpoint has none. */
  tokenizerDir: string;
  seqLen: number;
  batchSize: number;
  evalTokens: number;
}

export interface CheckpointEval {
  valLoss: number;
  valPpl: number;
  /** Bits per UTF-8 byte of the scored text (core/eval: comparable across tokenizers). */
  valBpb: number;
  tokens: number;
  /** UTF-8 bytes of the scored text. */
  bytes: number;
}

export interface EvaluateTasksInput {
  checkpoint: CheckpointRef;
  /** Tokenizer folder (the teacher's) when the checkpoint has none. */
  tokenizerDir: string;
  /** lm-evaluation-harness task YAML files (absolute paths, readable by the worker). */
  files: string[];
  /** Folder the tasks' relative data_files are resolved against: where the experiment was started. */
  cwd: string;
  /** Score only the first N documents of each task. */
  limit?: number;
  batchSize: number;
}

/** One task's zero-shot scores (core/eval's TaskScore, as plain data). */
export interface TaskAccuracy {
  task: string;
  docs: number;
  /** acc, acc_norm, ... with the standard error of the mean (null for perplexity). */
  metrics: Record<string, { value: number; stderr: number | null }>;
}

// ---- pipeline ----------------------------------------------------------------------------------------

export interface PipelineInput {
  run: RunRef;
  teacher: PrepareTeacherInput;
  data: DataRef;
  teacherService?: TeacherServiceRef;
  evolution: Omit<EvolutionInput, 'run' | 'teacher' | 'data' | 'teacherService' | 'carry'>;
  pretrain: Omit<PretrainInput, 'run' | 'name' | 'init' | 'teacher' | 'data' | 'teacherService' | 'carry'> & {
    order: HeadOrder;
    layers: LayerOrder;
  };
  baselines: { randomInit: boolean; firstK: boolean };
  finalEvalTokens: number;
  /** Policy of the small activities (teacher check, extraction, final evaluation, report). */
  activity: ActivityPolicy;
}

export interface ResultRow {
  name: string;
  init: string;
  description: string;
  parameters: number;
  valLoss: number;
  valPpl: number;
  /** Bits per UTF-8 byte on the validation corpus. */
  valBpb: number;
  /** Pretraining tokens. */
  tokens: number;
  /** Pretraining FLOPs (student training + teacher forward passes for distillation). */
  flops: number;
  /** FLOPs spent finding it (the search), for the searched student. */
  searchFlops?: number;
  checkpoint: CheckpointRef;
}

export interface PipelineResult {
  runId: string;
  teacher: { dir: string; hash: string; parameters: number; valLoss?: number; valBpb?: number };
  search: { best: BestCandidate; evaluations: number; runs: number; seed: number; flops: number };
  rows: ResultRow[];
  report: { json: string; markdown: string };
}

export type PipelineStage = 'teacher' | 'search' | 'pretrain' | 'report' | 'done';

export interface PipelineStatus {
  runId: string;
  stage: PipelineStage;
  teacher?: { dir: string; hash: string; parameters: number };
  evolutionWorkflowId: string;
  pretrainWorkflowIds: string[];
  best?: BestCandidate;
  rows: ResultRow[];
}

/** Workflow ids of a run's workflows. */
export function workflowIds(runId: string): {
  pipeline: string;
  evolution: string;
  pretrain: (name: string) => string;
} {
  return {
    pipeline: `offshoot/${runId}`,
    evolution: `offshoot/${runId}/evolution`,
    pretrain: (name) => `offshoot/${runId}/pretrain/${name}`,
  };
}

/** UTF-8 size of a value's JSON, without TextEncoder (not every sandbox has it). */
export function jsonBytes(value: unknown): number {
  const text = JSON.stringify(value) ?? '';
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** Throws when a payload is over Temporal's 2 MB, naming it. */
export function checkPayloadSize(what: string, value: unknown, limit = MAX_PAYLOAD_BYTES): number {
  const bytes = jsonBytes(value);
  if (bytes > limit) {
    throw new PayloadTooLargeError(
      `${what} is ${(bytes / 1048576).toFixed(2)} MB, over the ${(limit / 1048576).toFixed(0)} MB payload limit: ` +
        'workflows pass references (checkpoint paths with hashes, blobs on shared storage), never tensors or large state',
    );
  }
  return bytes;
}

export class PayloadTooLargeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PayloadTooLargeError';
  }
}
