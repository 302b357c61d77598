/** Drivers that run a search to completion in one process (tests, the CLI); a workflow drives ask/tell itself. */
import type { Candidate, EvaluationResult, Metrics, Search } from './search.js';

/** What an evaluation function returns: the fitness alone, or fitness with metrics. */
export type Evaluated = number | null | { fitness: number | null; metrics?: Metrics; error?: string };

function toResult(id: number, v: Evaluated): EvaluationResult {
  if (v === null || typeof v === 'number') return { id, fitness: v };
  return { id, fitness: v.fitness, metrics: v.metrics, error: v.error };
}

function failure(id: number, e: unknown): EvaluationResult {
  return { id, fitness: null, error: e instanceof Error ? e.message : String(e) };
}

/**
 * Runs `search` until done, evaluating each batch with `evaluate` in order. A throwing evaluation is
 * told as a failure (fitness null, its message as the error). Returns the same search.
 */
export function runSearchSync<G>(search: Search<G>, evaluate: (c: Candidate<G>) => Evaluated): Search<G> {
  while (!search.done()) {
    const batch = search.ask();
    if (batch.length === 0) break;
    search.tell(
      batch.map((c) => {
        try {
          return toResult(c.id, evaluate(c));
        } catch (e) {
          return failure(c.id, e);
        }
      }),
    );
  }
  return search;
}

/** As `runSearchSync`, with the candidates of each batch evaluated concurrently. */
export async function runSearch<G>(
  search: Search<G>,
  evaluate: (c: Candidate<G>) => Promise<Evaluated>,
): Promise<Search<G>> {
  while (!search.done()) {
    const batch = search.ask();
    if (batch.length === 0) break;
    const results = await Promise.all(
      batch.map(async (c) => {
        try {
          return toResult(c.id, await evaluate(c));
        } catch (e) {
          return failure(c.id, e);
        }
      }),
    );
    search.tell(results);
  }
  return search;
}
