/**
 * Temporal workflows (deterministic code only; bundled on their own by the worker): the pipeline, the
 * evolution actor and the pretraining actor, with their activity interfaces and payload types. This
 * file is the bundle's entry (the worker's workflowsPath); clients use the names and types.
 * Imports are limited to pure modules (core/search, core/subnet/pure.js) and type-only imports.
 */
export { pipeline, pipelineStatusQuery } from './pipeline.js';
export {
  evolution,
  evolutionStatusQuery,
  evolutionBestQuery,
  evolutionParetoQuery,
  stopSignal,
  setBudgetUpdate,
  evaluationSeed,
} from './evolution.js';
export { pretrain, pretrainStatusQuery, stopPretrainSignal, type PretrainStatus } from './pretrain.js';
export { firstKSpec } from './baselines.js';
export {
  paperTable,
  paperTableStatusQuery,
  paperTableWorkflowId,
  PAPER_ARMS,
  ARM_INFO,
  type PaperArm,
  type PaperTableInput,
  type PaperTableResult,
  type PaperRun,
  type PaperTableStatus,
  type ExperimentActivities,
} from './paper-table.js';
export * from './types.js';
export type { EvaluateActivities, PretrainActivities, OrchestrateActivities } from './activities.js';
