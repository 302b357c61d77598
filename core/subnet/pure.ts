/**
 * The pure part of core/subnet: specs, canonical form and hash, counting, dimension choices, bins, the
 * search-space adapter and host-side tensor slicing. No tfjs, no file system, no clock: Temporal
 * workflows and core/search import this file (index.ts adds extraction from checkpoints, importance
 * scores and fitness functions, which need tensors and files).
 */
export * from './hash.js';
export * from './spec.js';
export * from './count.js';
export * from './choices.js';
export * from './space.js';
export * from './bins.js';
export * from './extract.js';
export * from './first-k.js';
