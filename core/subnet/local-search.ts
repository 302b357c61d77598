/**
 * A whole sub-network search in one process: core/search's ask/tell loop over the sub-network space of
 * a teacher, each candidate's fitness evaluated here in turn. The distributed version (the evolution
 * workflow with fitness evaluators) runs the same search state machine.
 */
import { type Algorithm, type EvaluationRecord, createSearch } from '../search/index.js';
import {
  type FitnessBudget,
  type FitnessContext,
  type FitnessData,
  type FitnessMetrics,
  createFitnessContext,
  disposeFitnessContext,
  evaluateFitness,
} from './fitness.js';
import { type TargetRequest, resolveTarget } from './bins.js';
import type { SpaceKind } from './choices.js';
import { createSubnetSpace } from './space.js';
import type { SubnetSpec } from './spec.js';

export interface LocalSearchOptions {
  teacher: string;
  target: TargetRequest;
  space: SpaceKind;
  algorithm: Algorithm;
  /** Evolution: generations (the first is `population` random samples); budget = generations × population. */
  generations: number;
  population: number;
  budget: FitnessBudget;
  data?: FitnessData;
  seed: number;
  /** Chance that a mutation changes a second dimension; default the space's (0.3). */
  secondMutationProbability?: number;
  /** A fitness context of `teacher` to evaluate in (kept, not disposed); default one made for this search. */
  context?: FitnessContext;
}

/** What `searchSubnetworks` reports after each evaluation; it waits for the callback's promise, if any. */
export interface EvaluatedCandidate {
  done: number;
  total: number;
  fitness: number | null;
  best: number | null;
  spec: SubnetSpec;
  /** Undefined when the evaluation failed. */
  metrics?: FitnessMetrics;
}

export interface LocalSearchResult {
  target: { minParams: number; maxParams: number; label: string };
  best: EvaluationRecord<SubnetSpec> | undefined;
  history: EvaluationRecord<SubnetSpec>[];
  evaluations: number;
}

export async function searchSubnetworks(
  options: LocalSearchOptions,
  onEvaluated?: (record: EvaluatedCandidate) => void | Promise<void>,
): Promise<LocalSearchResult> {
  const ctx = options.context ?? (await createFitnessContext(options.teacher, options.data));
  try {
    const teacher = ctx.checkpoint.config;
    const target = resolveTarget(teacher, options.target, { space: options.space });
    const space = createSubnetSpace(teacher, {
      space: options.space,
      target,
      secondMutationProbability: options.secondMutationProbability,
    });
    const total = options.generations * options.population;
    const search = createSearch(
      { algorithm: options.algorithm, budget: total, population: options.population, seed: options.seed },
      space,
    );
    let done = 0;
    let bestSoFar: number | null = null;
    while (!search.done()) {
      const batch = search.ask();
      if (batch.length === 0) break;
      const results = [];
      for (const c of batch) {
        let metrics: FitnessMetrics | undefined;
        let error: string | undefined;
        try {
          metrics = await evaluateFitness(
            {
              teacher: options.teacher,
              spec: c.genome,
              budget: options.budget,
              seed: options.seed,
              data: options.data,
            },
            ctx,
          );
        } catch (err) {
          error = (err as Error).message;
        }
        results.push({
          id: c.id,
          fitness: metrics?.valLoss ?? null,
          metrics: metrics as unknown as Record<string, unknown>,
          error,
        });
        done += 1;
        const fitness = metrics?.valLoss ?? null;
        if (fitness !== null && (bestSoFar === null || fitness < bestSoFar)) bestSoFar = fitness;
        await onEvaluated?.({ done, total, fitness, best: bestSoFar, spec: c.genome, metrics });
      }
      search.tell(results);
    }
    return { target, best: search.best(), history: search.history(), evaluations: done };
  } finally {
    if (!options.context) disposeFitnessContext(ctx);
  }
}
