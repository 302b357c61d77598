/**
 * core/search: evolutionary search and its baselines (random, stratified random) over any
 * `SearchSpace`, as an ask/tell state machine. Pure and deterministic (no I/O, no clock, no
 * Math.random), state serialisable to JSON, so it runs inside a Temporal workflow and resumes after
 * continue-as-new. See docs/search.md.
 */
export type { Rng, SearchSpace } from './space.js';
export { type RngState, SeededRng } from './rng.js';
export { type MutationOperator, MutationRegistry } from './mutation.js';
export {
  type Algorithm,
  type SearchOptions,
  type ResolvedSearchOptions,
  ALGORITHMS,
  SEARCH_DEFAULTS,
  SearchError,
  resolveSearchOptions,
} from './options.js';
export {
  type Origin,
  type Candidate,
  type Metrics,
  type EvaluationResult,
  type EvaluationStatus,
  type EvaluationRecord,
  type StrataState,
  type SearchCounters,
  type SearchState,
  type SearchStatus,
  Search,
  createSearch,
  restoreSearch,
} from './search.js';
export { type Evaluated, runSearch, runSearchSync } from './run.js';
export { dominates, nonDominatedSort, crowdingDistance, paretoIndices, rankAndCrowding } from './pareto.js';
