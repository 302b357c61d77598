/**
 * core/search: evolutionary search and its baselines over any `SearchSpace`. Pure and deterministic
 * (no I/O, no clock, no Math.random), state serialisable to JSON, so it runs inside a Temporal workflow.
 */
export { type Rng, type SearchSpace } from './space.js';
export { type RngState, SeededRng } from './rng.js';
