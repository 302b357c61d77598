/**
 * The contract between the search (core/search) and a search space (for sub-networks: core/subnet's
 * adapter). The search knows nothing about genomes beyond this interface.
 *
 * Rules a space must follow so the search stays deterministic and resumable:
 * - Every method is a pure function of its arguments and the draws it takes from `rng`: no clock, no
 *   Math.random, no I/O, no hidden mutable state. The search passes copies, so a method may not rely
 *   on object identity, but it must not keep references to its inputs either.
 * - Genomes are plain JSON data (objects, arrays, finite numbers, strings, booleans, null): the search
 *   stores them in its JSON state and, to make an uninterrupted search and a restored one see identical
 *   values, normalises every genome through a JSON round trip before it uses it.
 * - `key` is canonical: two genomes that describe the same network have the same key. The search never
 *   asks for the same key twice.
 */

/** A source of uniform randomness; the search injects a seeded one (see `SeededRng`). */
export interface Rng {
  /** Uniform float in [0, 1). */
  nextFloat(): number;
  /** Uniform integer in [0, n), for a positive integer n. */
  nextInt(n: number): number;
}

export interface SearchSpace<G> {
  sample(rng: Rng): G; // a valid genome inside the target range
  mutate(g: G, rng: Rng): G; // valid and in range (repair inside)
  crossover(a: G, b: G, rng: Rng): G; // valid and in range
  key(g: G): string; // canonical hash, for deduplication
  cost(g: G): number; // e.g. parameter count: objective in multi-objective mode, stratum for stratified random search
  describe?(g: G): string;
  /**
   * Optional check, run by the search on every genome before it is emitted: a genome for which it
   * returns false (or throws) is discarded and counted (`status().rejected.invalid`), never asked.
   * Implementing it turns a bug in the space's repair into a visible counter instead of a bad candidate.
   */
  isValid?(g: G): boolean;
  /**
   * Optional: the smallest and largest cost a genome of this space can have (for sub-networks, the
   * target bin's parameter range). Stratified random search cuts this range into strata; without it
   * (and without the `costRange` option) the range is estimated from `strataWarmup` samples.
   */
  costRange?(): { min: number; max: number };
}
