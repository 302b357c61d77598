/**
 * core/subnet: sub-networks of a GPT-NeoX teacher — specs (canonical form, hash), extraction,
 * parameter and FLOP counting, parameter bins, the search-space adapter for core/search, importance
 * orderings and fitness functions. See docs/subnetworks.md.
 *
 * Workflow code (Temporal's sandbox) must import './pure.js' instead: this index also exports the
 * parts that need tfjs and the file system (checkpoint.ts, importance.ts, fitness.ts).
 */
export * from './pure.js';
export * from './importance.js';
export * from './checkpoint.js';
export * from './fitness.js';
export * from './local-search.js';
