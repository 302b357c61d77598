/**
 * The evolution actor: drives core/search's ask/tell state machine over core/subnet's search space.
 * Deterministic workflow code — the search's seeded generator lives in workflow state — so Temporal can
 * replay it after a worker or server restart. Fitness evaluations run as `evaluateCandidate`
 * activities on the "evaluate" queue, at most `parallelism` at a time; each result is told to the
 * search once (Temporal records each activity's completion once). Every `continueAsNewEvery`
 * generations the workflow continues as new carrying the search state (by reference when large), so
 * its history stays bounded however long the search runs.
 */
import {
  ApplicationFailure,
  allHandlersFinished,
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  defineUpdate,
  isCancellation,
  log,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';

import {
  type Candidate,
  type EvaluationRecord,
  type Search,
  type SearchState,
  createSearch,
  restoreSearch,
} from '../core/search/index.js';
import {
  type ResolvedTarget,
  type SubnetSearchSpace,
  type SubnetSpec,
  createSubnetSpace,
  resolveTarget,
} from '../core/subnet/pure.js';
import type { EvaluateActivities, OrchestrateActivities } from './activities.js';
import {
  type BestCandidate,
  type BlobRef,
  type CandidateSummary,
  type EvolutionInput,
  type EvolutionResult,
  type EvolutionStatus,
  INLINE_STATE_BYTES,
  TASK_QUEUES,
  activityOptions,
  checkPayloadSize,
  errorMessage,
  jsonBytes,
} from './types.js';

export const evolutionStatusQuery = defineQuery<EvolutionStatus>('status');
export const evolutionBestQuery = defineQuery<BestCandidate | null>('best');
export const evolutionParetoQuery = defineQuery<BestCandidate[]>('paretoFront');
/** Stop early: no new evaluations start; those running finish and are recorded. */
export const stopSignal = defineSignal<[reason?: string]>('stop');
/** Change the total evaluation budget; returns the status after the change. */
export const setBudgetUpdate = defineUpdate<EvolutionStatus, [budget: number]>('setBudget');

/** The seed of candidate `id`'s evaluation: a pure function of the search seed and the id. */
export function evaluationSeed(searchSeed: number, id: number): number {
  let h = (searchSeed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (id + 0x7f4a7c15), 0x85ebca6b) >>> 0;
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35) >>> 0;
  return (h ^ (h >>> 16)) & 0x7fffffff;
}

function summary(r: EvaluationRecord<SubnetSpec>): CandidateSummary {
  const m = r.metrics as Record<string, unknown> | undefined;
  return {
    id: r.id,
    key: r.key,
    generation: r.generation,
    origin: r.origin,
    status: r.status,
    fitness: r.fitness,
    parameters: r.cost,
    ...(r.error ? { error: r.error } : {}),
    ...(m ? { metrics: m } : {}),
  };
}

function withSpec(r: EvaluationRecord<SubnetSpec>, space: SubnetSearchSpace): BestCandidate {
  let description: string | undefined;
  try {
    description = space.describe?.(r.genome);
  } catch {
    description = undefined;
  }
  return { ...summary(r), spec: r.genome, description };
}

export async function evolution(input: EvolutionInput): Promise<EvolutionResult> {
  const policy = input.activity;
  const evaluate = proxyActivities<EvaluateActivities>(
    activityOptions(TASK_QUEUES.evaluate, policy, ['SpecError', 'TargetError', 'PayloadTooLargeError']),
  );
  const orchestrate = proxyActivities<OrchestrateActivities>({
    taskQueue: TASK_QUEUES.orchestrate,
    startToCloseTimeout: '2m',
    retry: { maximumAttempts: 5 },
  });

  // The space and the search. A target or space no sub-network fits fails the workflow, not the task.
  let target: ResolvedTarget;
  let space: SubnetSearchSpace;
  try {
    const binOptions = {
      space: input.space.kind,
      count: input.space.bins,
      scale: input.space.scale,
      choices: input.space.choices,
    };
    target = resolveTarget(input.teacher.config, input.space.target, binOptions);
    space = createSubnetSpace(input.teacher.config, {
      space: input.space.kind,
      target,
      choices: input.space.choices,
      secondMutationProbability: input.space.secondMutationProbability,
    });
  } catch (err) {
    throw ApplicationFailure.nonRetryable(`search space: ${errorMessage(err)}`, (err as Error).name ?? 'TargetError');
  }

  const carry = input.carry;
  let search: Search<SubnetSpec>;
  try {
    if (carry) {
      const raw = carry.state as { ref?: BlobRef };
      const state = (
        raw && typeof raw === 'object' && raw.ref ? await orchestrate.getBlob(raw.ref) : carry.state
      ) as SearchState<SubnetSpec>;
      search = restoreSearch(state, space);
    } else {
      // No seed configured: draw one from the workflow's deterministic randomness (recorded by replay).
      const seed = input.search.seed ?? Math.floor(Math.random() * 0x7fffffff);
      search = createSearch({ ...input.search, seed }, space);
    }
  } catch (err) {
    throw ApplicationFailure.nonRetryable(`search: ${errorMessage(err)}`, (err as Error).name ?? 'SearchError');
  }
  const seed = search.options.seed;
  const run = carry ? carry.runs : 1;
  const historyLengths = carry ? [...carry.historyLengths] : [];
  const startedAt = carry ? carry.startedAt : Date.now();
  const generationAtStart = search.status().generation;
  const inFlight = new Set<number>();
  let stopRequested = false;

  const status = (): EvolutionStatus => {
    const s = search.status();
    return {
      runId: input.run.runId,
      generation: s.generation,
      budget: s.budget,
      asked: s.asked,
      evaluated: s.evaluated,
      failed: s.failed,
      pending: s.pending,
      inFlight: [...inFlight].sort((a, b) => a - b),
      stopped: s.stopped,
      done: s.done,
      bestFitness: s.bestFitness,
      run,
      historyLengths,
      target: { minParams: target.minParams, maxParams: target.maxParams, label: target.label },
    };
  };

  setHandler(evolutionStatusQuery, status);
  setHandler(evolutionBestQuery, () => {
    const b = search.best();
    return b ? withSpec(b, space) : null;
  });
  setHandler(evolutionParetoQuery, () => search.paretoFront().map((r) => withSpec(r, space)));
  setHandler(stopSignal, (reason?: string) => {
    log.info('evolution: stop requested', { reason });
    stopRequested = true;
    search.stop();
  });
  setHandler(
    setBudgetUpdate,
    (budget: number) => {
      search.setBudget(budget);
      return status();
    },
    {
      validator: (budget: number) => {
        if (!Number.isSafeInteger(budget) || budget < 0)
          throw new Error(`budget must be a non-negative integer, got ${JSON.stringify(budget)}`);
        if (budget < search.status().asked)
          log.info('evolution: budget below evaluations asked; finishing the running ones');
      },
    },
  );

  const evaluateOne = async (c: Candidate<SubnetSpec>): Promise<void> => {
    inFlight.add(c.id);
    try {
      const out = await evaluate.evaluateCandidate({
        run: input.run,
        candidateId: c.id,
        generation: c.generation,
        key: c.key,
        spec: c.genome,
        teacher: { dir: input.teacher.dir, hash: input.teacher.hash },
        data: input.data,
        fitness: input.fitness,
        seed: evaluationSeed(seed, c.id),
        teacherService: input.teacherService,
      });
      search.tell([{ id: c.id, fitness: out.fitness, metrics: out.metrics }]);
    } catch (err) {
      if (isCancellation(err)) throw err;
      log.warn('evolution: evaluation failed', { id: c.id, error: errorMessage(err) });
      search.tell([{ id: c.id, fitness: null, error: errorMessage(err) }]);
    } finally {
      inFlight.delete(c.id);
    }
  };

  /** Evaluates a batch, `parallelism` at a time; after a stop, what has not started is told as not evaluated. */
  const runBatch = async (batch: Candidate<SubnetSpec>[]): Promise<void> => {
    let next = 0;
    const lanes = Array.from({ length: Math.max(1, Math.min(input.parallelism, batch.length)) }, async () => {
      while (next < batch.length) {
        const c = batch[next++];
        if (stopRequested) {
          search.tell([{ id: c.id, fitness: null, error: 'not evaluated: the search was stopped' }]);
          continue;
        }
        await evaluateOne(c);
      }
    });
    await Promise.all(lanes);
  };

  /** Progress (docs/progress.md): published by an orchestrate activity, since workflow code never publishes. */
  const reportGeneration = async (batch: Candidate<SubnetSpec>[], failed: number): Promise<void> => {
    const o = search.options;
    const budget = search.status().budget;
    const perBatch = Math.max(1, o.batchSize);
    const generations =
      o.algorithm === 'evolution'
        ? 1 + Math.max(0, Math.ceil((budget - o.population) / perBatch))
        : Math.max(1, Math.ceil(budget / perBatch));
    const b = search.best();
    try {
      await orchestrate.publishProgress({
        kind: 'generation.finished',
        run: input.run.runId,
        generation: batch[0].generation,
        generations,
        evaluated: batch.length,
        failed,
        ...(b && b.fitness !== null ? { best: { candidate: b.id, params: b.cost, fitness: b.fitness } } : {}),
      });
    } catch (err) {
      // Progress is best effort: it never fails the search.
      if (isCancellation(err)) throw err;
      log.warn('evolution: progress event not published', { error: errorMessage(err) });
    }
  };

  for (;;) {
    // Candidates asked but not told (a state restored mid-batch) go first; then the next batch.
    let batch = search.pending();
    if (batch.length === 0) {
      if (search.done()) break;
      if (
        search.status().generation - generationAtStart >= input.continueAsNewEvery ||
        workflowInfo().continueAsNewSuggested
      ) {
        await condition(allHandlersFinished);
        const state = search.toJSON();
        const inline = jsonBytes(state) <= (input.inlineStateBytes ?? INLINE_STATE_BYTES);
        const next: EvolutionInput = {
          ...input,
          search: { ...input.search, seed },
          carry: {
            state: inline ? state : { ref: await orchestrate.putBlob({ runDir: input.run.dir, value: state }) },
            runs: run + 1,
            historyLengths: [...historyLengths, workflowInfo().historyLength],
            startedAt,
          },
        };
        try {
          checkPayloadSize("the evolution workflow's continue-as-new input", next);
        } catch (err) {
          throw ApplicationFailure.nonRetryable(errorMessage(err), 'PayloadTooLargeError');
        }
        log.info('evolution: continuing as new', { run, generation: search.status().generation, inline });
        await continueAsNew<typeof evolution>(next);
      }
      batch = search.ask();
      if (batch.length === 0) {
        // ask() gives nothing only when the search is done (budget spent, stopped, space exhausted).
        if (!search.done())
          log.warn('evolution: the search asked nothing but is not done; ending it', { status: search.status() });
        break;
      }
    }
    const failedBefore = search.status().failed;
    await runBatch(batch);
    await reportGeneration(batch, search.status().failed - failedBefore);
  }

  await condition(allHandlersFinished);
  const best = search.best();
  if (!best) {
    const failures = search
      .history()
      .filter((r) => r.status === 'failed')
      .slice(0, 3)
      .map((r) => `#${r.id}: ${r.error}`);
    throw ApplicationFailure.nonRetryable(
      `evolution: no candidate was evaluated successfully${failures.length ? ` (${failures.join('; ')})` : ''}`,
      'SearchFailed',
    );
  }
  const history = search.history().map(summary);
  const searchFlops = history.reduce(
    (sum, h) => sum + (typeof h.metrics?.flops === 'number' ? (h.metrics.flops as number) : 0),
    0,
  );
  const result: EvolutionResult = {
    best: withSpec(best, space),
    paretoFront: search.paretoFront().map((r) => withSpec(r, space)),
    history,
    status: { ...status(), historyLengths: [...historyLengths, workflowInfo().historyLength] },
    searchFlops,
    seed,
  };
  if (jsonBytes(result) > (input.inlineStateBytes ?? INLINE_STATE_BYTES)) {
    result.historyRef = await orchestrate.putBlob({ runDir: input.run.dir, value: history });
    result.history = [];
  }
  return result;
}
