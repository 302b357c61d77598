/**
 * core/eval: measuring a model the ways users compare models — bits per byte next to perplexity on a
 * corpus, and zero-shot tasks in lm-evaluation-harness's shape (multiple-choice and cloze scoring),
 * computed as lm-eval computes them. See docs/evaluation.md.
 */
export { type TextEvaluation, bitsPerByte, evaluateText, scoredBytes, tokenByteLengths } from './bytes.js';
export {
  type LoadTaskOptions,
  type OutputType,
  type Task,
  type TaskDoc,
  type TaskMetric,
  type TaskRequest,
  TASK_METRICS,
  TaskError,
  loadTaskFile,
  loadTasks,
} from './tasks.js';
export {
  type DocScore,
  type EncodedRequest,
  type Loglikelihood,
  type MetricValue,
  type ScoreOptions,
  type TaskEvaluation,
  type TaskScore,
  encodeRequest,
  evaluateTasks,
  scoreEncoded,
} from './scoring.js';
export { TemplateError } from './template.js';
