/**
 * The training recipe: how offshoot trains every model — the teacher, a fitness evaluation's brief
 * training and a student's pretraining. The paper's comparison rests on "same recipe, same budget", so
 * the recipe's numbers live here once and every trainer builds its optimiser and schedule through
 * `trainingHyperparameters`:
 *
 *   AdamW with decoupled weight decay 0.1 on matrices (betas and epsilon: optim.ts DEFAULT_ADAMW),
 *   gradients clipped to a global L2 norm of 1, linear warmup to the peak learning rate, then cosine
 *   decay to a tenth of it at the last step.
 *
 * What differs between callers is only the budget (steps, batch, sequence length), the peak learning
 * rate and the warmup, which each caller's configuration sets.
 */
import type { AdamWOptions, ScheduleOptions } from './optim.js';
import type { TrainHyperparameters } from './train.js';

export interface TrainingRecipe {
  /** Optimisation steps; the cosine decay ends at the last one. */
  steps: number;
  /** Peak learning rate. */
  lr: number;
  /** Linear warmup steps (capped at `steps`). */
  warmup: number;
  /** The final learning rate is the peak divided by this. Default 10. */
  minLrDivisor?: number;
  /** AdamW's decoupled weight decay (matrices only, not biases or LayerNorm). Default 0.1. */
  weightDecay?: number;
  /** Largest global L2 norm of the gradients; larger ones are scaled down. Default 1. */
  gradClip?: number;
}

/** The recipe's defaults. */
export const RECIPE_DEFAULTS = { minLrDivisor: 10, weightDecay: 0.1, gradClip: 1 } as const;

/** What one training run feeds the recipe: the shape of its batches and its seed. */
export interface TrainingShape {
  batchSize: number;
  seqLen: number;
  /** Seed of the data order (and of a random initialisation). */
  seed: number;
}

function check(field: string, value: unknown, ok: (v: number) => boolean, expectation: string): void {
  if (typeof value !== 'number' || !ok(value))
    throw new Error(`training recipe: ${field} must be ${expectation}, got ${JSON.stringify(value)}`);
}

const positiveInt = (v: number) => Number.isSafeInteger(v) && v > 0;

/** The optimiser settings and learning-rate schedule of a recipe; throws naming a bad field. */
export function recipeOptimizer(recipe: TrainingRecipe): {
  schedule: ScheduleOptions;
  adamw: Partial<AdamWOptions>;
  gradClip: number;
} {
  const d = RECIPE_DEFAULTS;
  const r = {
    ...recipe,
    minLrDivisor: recipe.minLrDivisor ?? d.minLrDivisor,
    weightDecay: recipe.weightDecay ?? d.weightDecay,
    gradClip: recipe.gradClip ?? d.gradClip,
  };
  check('steps', r.steps, positiveInt, 'a positive integer');
  check('lr', r.lr, (v) => Number.isFinite(v) && v > 0, 'a positive number');
  check('warmup', r.warmup, (v) => Number.isSafeInteger(v) && v >= 0, 'a non-negative integer');
  check('minLrDivisor', r.minLrDivisor, (v) => Number.isFinite(v) && v >= 1, 'a number ≥ 1');
  check('weightDecay', r.weightDecay, (v) => Number.isFinite(v) && v >= 0, 'a non-negative number');
  check('gradClip', r.gradClip, (v) => Number.isFinite(v) && v > 0, 'a positive number');
  return {
    schedule: {
      maxLr: r.lr,
      minLr: r.lr / r.minLrDivisor,
      warmupSteps: Math.min(r.warmup, r.steps),
      totalSteps: r.steps,
    },
    adamw: { weightDecay: r.weightDecay },
    gradClip: r.gradClip,
  };
}

/** A trainer's hyperparameters: the recipe's optimiser and schedule for this run's budget and batches. */
export function trainingHyperparameters(recipe: TrainingRecipe, shape: TrainingShape): TrainHyperparameters {
  check('batchSize', shape.batchSize, positiveInt, 'a positive integer');
  check('seqLen', shape.seqLen, positiveInt, 'a positive integer');
  check('seed', shape.seed, (v) => Number.isSafeInteger(v) && v >= 0, 'a non-negative integer');
  return {
    steps: recipe.steps,
    batchSize: shape.batchSize,
    seqLen: shape.seqLen,
    ...recipeOptimizer(recipe),
    seed: shape.seed,
  };
}
