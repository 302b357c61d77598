/**
 * Mutation operators: named ways to change a genome in place, kept in a registry per kind of genome.
 * A search space's `mutate` applies one operator drawn uniformly from those that apply in the space,
 * then, with the second-mutation probability, another — so that a child sometimes moves along two
 * dimensions at once. Adding an operator is registering it; the draw is over the registry's order, so
 * a fixed registry and seed give the same mutations every time.
 */
import type { Rng } from './space.js';

export interface MutationOperator<G, C> {
  /** Unique within its registry; says what the operator changes. */
  readonly name: string;
  /** Whether the operator can change anything in this context (a space); default always. */
  applies?(context: C): boolean;
  /** Changes `genome` in place; all randomness from `rng`. */
  apply(genome: G, context: C, rng: Rng): void;
}

export class MutationRegistry<G, C> {
  private readonly operators: MutationOperator<G, C>[] = [];

  /** Adds an operator (after those already there); its name must be new. */
  register(operator: MutationOperator<G, C>): this {
    if (this.operators.some((o) => o.name === operator.name))
      throw new Error(`mutation operator "${operator.name}" is registered already`);
    this.operators.push(operator);
    return this;
  }

  /** The operators that apply in `context`, in registration order. */
  applicable(context: C): MutationOperator<G, C>[] {
    return this.operators.filter((o) => o.applies?.(context) ?? true);
  }

  /** Applies one applicable operator drawn uniformly, then with probability `secondProbability` another. */
  mutate(genome: G, context: C, rng: Rng, secondProbability: number): void {
    const operators = this.applicable(context);
    if (operators.length === 0) return;
    operators[rng.nextInt(operators.length)].apply(genome, context, rng);
    if (rng.nextFloat() < secondProbability) operators[rng.nextInt(operators.length)].apply(genome, context, rng);
  }
}
