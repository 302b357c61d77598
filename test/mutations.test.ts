/**
 * Mutation operators: core/search's registry (named operators, one drawn per mutation, a second one
 * with the second-mutation probability), the sub-network space's operators by name, and the
 * second-mutation probability as an option of the space, the configuration and `offshoot search`.
 * Pure code: no tensors.
 */
import { describe, expect, it } from 'vitest';

import { uniformConfig } from '../core/model/index.js';
import { type MutationOperator, MutationRegistry, SeededRng } from '../core/search/index.js';
import { Machinery } from '../core/subnet/genome.js';
import { SUBNET_MUTATIONS } from '../core/subnet/mutations.js';
import {
  SUBNET_SPACE_DEFAULTS,
  type SpaceKind,
  SpecError,
  createSubnetSpace,
  resolveDims,
  resolveTarget,
} from '../core/subnet/pure.js';
import { ConfigError, defaultConfig, parseConfig, pipelineInput } from '../services/config/index.js';

const teacher = uniformConfig({ vocabSize: 1024, hiddenSize: 128, numLayers: 4, numHeads: 8, maxPositions: 256 });

/** A registry over a counter genome: each operator adds its weight to the genome's entry for it. */
function countingRegistry(): MutationRegistry<Record<string, number>, { odd: boolean }> {
  const op = (
    name: string,
    applies?: (c: { odd: boolean }) => boolean,
  ): MutationOperator<Record<string, number>, { odd: boolean }> => ({
    name,
    applies,
    apply: (g) => void (g[name] = (g[name] ?? 0) + 1),
  });
  return new MutationRegistry<Record<string, number>, { odd: boolean }>()
    .register(op('a'))
    .register(op('b'))
    .register(op('c', (c) => c.odd));
}

describe('the mutation registry', () => {
  it('applies one operator per mutation, and a second one with the second-mutation probability', () => {
    const registry = countingRegistry();
    const rng = new SeededRng(1);
    const total = (g: Record<string, number>) => Object.values(g).reduce((a, b) => a + b, 0);
    for (const [p, applied] of [
      [0, 1],
      [1, 2],
    ] as const) {
      for (let i = 0; i < 200; i++) {
        const g: Record<string, number> = {};
        registry.mutate(g, { odd: true }, rng, p);
        expect(total(g)).toBe(applied);
      }
    }
    // About 30 % of mutations apply two operators at 0.3.
    let twice = 0;
    for (let i = 0; i < 2000; i++) {
      const g: Record<string, number> = {};
      registry.mutate(g, { odd: true }, rng, 0.3);
      if (total(g) === 2) twice++;
    }
    expect(twice / 2000).toBeGreaterThan(0.25);
    expect(twice / 2000).toBeLessThan(0.35);
  });

  it('draws only operators that apply, uniformly', () => {
    const registry = countingRegistry();
    expect(registry.applicable({ odd: false }).map((o) => o.name)).toEqual(['a', 'b']);
    const g: Record<string, number> = {};
    const rng = new SeededRng(2);
    for (let i = 0; i < 3000; i++) registry.mutate(g, { odd: false }, rng, 0);
    expect(g.c).toBeUndefined();
    expect(Math.abs(g.a - g.b)).toBeLessThan(200);
  });

  it('refuses a second operator of the same name', () => {
    expect(() => countingRegistry().register({ name: 'b', apply: () => undefined })).toThrow(
      'mutation operator "b" is registered already',
    );
  });
});

describe("the sub-network space's operators", () => {
  const names = (kind: SpaceKind, choices = {}) => {
    const dims = resolveDims(teacher, kind, choices);
    return SUBNET_MUTATIONS.applicable(new Machinery(teacher, kind, dims, 0, 1e9, 1)).map((o) => o.name);
  };

  it('are named, and each space draws from those that can change it', () => {
    expect(names('uniform')).toEqual(['embedding', 'heads', 'mlp', 'layers']);
    expect(names('layer-wise')).toEqual(['embedding', 'layer-heads', 'layer-mlp', 'layer-count']);
    expect(names('granular')).toEqual([
      'embedding',
      'layer-heads',
      'layer-mlp',
      'layer-count',
      'move-layer',
      'swap-channels',
      'swap-heads',
      'swap-neurons',
    ]);
    expect(names('uniform', { headSize: [8, 16] })).toEqual(['embedding', 'head-size', 'heads', 'mlp', 'layers']);
  });

  it('the second-mutation probability is an option of the space: 0.3 by default, validated', () => {
    expect(SUBNET_SPACE_DEFAULTS.secondMutationProbability).toBe(0.3);
    const target = resolveTarget(teacher, { bin: 8 }, { space: 'layer-wise' });
    const walk = (secondMutationProbability?: number) => {
      const space = createSubnetSpace(teacher, { space: 'layer-wise', target, secondMutationProbability });
      const rng = new SeededRng(7);
      let g = space.sample(rng);
      const out = [];
      for (let i = 0; i < 50; i++) out.push((g = space.mutate(g, rng)));
      return out;
    };
    expect(walk(0.3)).toEqual(walk());
    expect(walk(0)).not.toEqual(walk());
    expect(walk(1)).not.toEqual(walk());
    for (const bad of [-0.1, 1.5, Number.NaN, '0.5' as unknown as number]) {
      expect(() => createSubnetSpace(teacher, { space: 'uniform', target, secondMutationProbability: bad })).toThrow(
        SpecError,
      );
    }
    expect(() => createSubnetSpace(teacher, { space: 'uniform', target, secondMutationProbability: 1.5 })).toThrow(
      'secondMutationProbability: must be a probability in [0, 1], got 1.5',
    );
  });

  it('the configuration sets it (search.secondMutationProbability) and the evolution gets it', () => {
    expect(defaultConfig().search.secondMutationProbability).toBe(0.3);
    expect(
      pipelineInput(parseConfig({ search: { secondMutationProbability: 0.5 } })).evolution.space
        .secondMutationProbability,
    ).toBe(0.5);
    let err: ConfigError | undefined;
    try {
      parseConfig({ search: { secondMutationProbability: 2 } });
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.problems).toEqual([{ field: 'search.secondMutationProbability', message: expect.stringMatching(/2/) }]);
  });
});
