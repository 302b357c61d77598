/**
 * The activity interfaces workflows call, by task queue. Implementations live in services/evaluator
 * (evaluate), services/pretrain (pretrain) and services/worker (orchestrate); workflows see only these
 * signatures (through proxyActivities), so they never import code that touches tensors or files.
 */
import type {
  BlobRef,
  CheckpointEval,
  EvaluateCheckpointInput,
  EvaluateInput,
  EvaluateTasksInput,
  EvaluateOutput,
  PrepareStudentInput,
  PrepareTeacherInput,
  PipelineResult,
  StudentRef,
  TaskAccuracy,
  TeacherRef,
  TrainSegmentInput,
  TrainSegmentOutput,
} from './types.js';

/** Task queue "evaluate": stateless fitness evaluators. */
export interface EvaluateActivities {
  /** Extracts the candidate from the teacher, trains it briefly (KD), measures validation loss. Heartbeats. */
  evaluateCandidate(input: EvaluateInput): Promise<EvaluateOutput>;
}

/** Task queue "pretrain": the pretraining worker. */
export interface PretrainActivities {
  /** The teacher checkpoint, trained first when asked and missing; checks the teacher service serves it. */
  prepareTeacher(input: PrepareTeacherInput): Promise<TeacherRef>;
  /** The student's step-0 checkpoint: extracted from the teacher, randomly initialised, or given. */
  prepareStudent(input: PrepareStudentInput): Promise<StudentRef>;
  /**
   * Trains from `from` to `toStep`, checkpointing every `checkpointEvery` steps and heartbeating
   * {step, checkpoint}; a retry resumes from the last heartbeat's checkpoint.
   */
  trainSegment(input: TrainSegmentInput): Promise<TrainSegmentOutput>;
  /** Validation loss, perplexity and bits per byte of a checkpoint. */
  evaluateCheckpoint(input: EvaluateCheckpointInput): Promise<CheckpointEval>;
  /** Zero-shot scores of a checkpoint on lm-evaluation-harness task files. Heartbeats. */
  evaluateTasks(input: EvaluateTasksInput): Promise<TaskAccuracy[]>;
}

/** Task queue "orchestrate": small bookkeeping next to the workflows. */
export interface OrchestrateActivities {
  /** Stores a JSON value on shared storage by content hash (state too large to carry inline). */
  putBlob(input: { runDir: string; value: unknown }): Promise<BlobRef>;
  getBlob(ref: BlobRef): Promise<unknown>;
  /** Writes the run's report (JSON and Markdown) and returns their paths. */
  writeReport(input: {
    runDir: string;
    result: Omit<PipelineResult, 'report'>;
  }): Promise<{ json: string; markdown: string }>;
  /**
   * Publishes a progress event (services/progress's schema) for the workflow, which may not publish
   * itself; best effort, never fails.
   */
  publishProgress(event: { kind: string; run: string } & Record<string, unknown>): Promise<void>;
}
