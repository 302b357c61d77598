/**
 * The sub-network search space and parameter bins: property tests (thousands of samples, mutations and
 * crossovers stay valid and inside the bin), determinism, bins, targets, and unreachable ranges.
 * Pure code: no tensors.
 */
import { describe, expect, it } from 'vitest';

import { type NeoXConfig, uniformConfig } from '../core/model/index.js';
import { SeededRng, createSearch, runSearchSync } from '../core/search/index.js';
import {
  type SpaceKind,
  type SubnetSpec,
  SpecError,
  TargetError,
  canonicalize,
  countSubnet,
  createSubnetSpace,
  findInRange,
  parameterBins,
  parseParamRange,
  resolveDims,
  resolveTarget,
  spaceParamRange,
  specHash,
} from '../core/subnet/pure.js';

const SPACES: SpaceKind[] = ['uniform', 'layer-wise', 'granular'];

/** sotu-teacher's shape: 4 layers, width 128, 8 heads of 16, MLP 512, vocab 1024. */
const small = uniformConfig({ vocabSize: 1024, hiddenSize: 128, numLayers: 4, numHeads: 8, maxPositions: 256 });
/** A teacher whose layers differ (an offshoot student used as a teacher). */
const mixed: NeoXConfig = {
  ...uniformConfig({ vocabSize: 300, hiddenSize: 48, numLayers: 3, numHeads: 4, maxPositions: 64 }),
  headSize: 10,
  layers: [
    { numHeads: 4, intermediateSize: 96 },
    { numHeads: 2, intermediateSize: 192 },
    { numHeads: 5, intermediateSize: 40 },
  ],
};
/** Pythia-410M's shape. */
const pythia410m = uniformConfig({
  vocabSize: 50304,
  hiddenSize: 1024,
  numLayers: 24,
  numHeads: 16,
  maxPositions: 2048,
});

/** Everything a genome of the space must satisfy, checked independently of the space's own code. */
function checkGenome(
  space: ReturnType<typeof createSubnetSpace>,
  teacher: NeoXConfig,
  g: SubnetSpec,
  kind: SpaceKind,
): void {
  expect(JSON.parse(JSON.stringify(g))).toEqual(g);
  const c = canonicalize(g, teacher); // throws on an invalid spec
  const params = countSubnet(teacher, g).parameters;
  expect(params).toBeGreaterThanOrEqual(space.target.minParams);
  expect(params).toBeLessThanOrEqual(space.target.maxParams);
  expect(space.cost(g)).toBe(params);
  const d = space.dims;
  expect(d.layers).toContain(c.layers.length);
  expect(d.embedding).toContain(c.embedding.length);
  expect(d.headSize).toContain(c.headSize.length);
  for (const l of c.perLayer) {
    expect(d.heads).toContain(l.heads.length);
    expect(d.mlp).toContain(l.mlp.length);
  }
  if (kind === 'uniform') {
    expect(typeof g.layers).toBe('number');
    expect(typeof g.heads).toBe('number');
    expect(typeof g.mlp).toBe('number');
  } else if (kind === 'layer-wise') {
    expect(typeof g.layers).toBe('number');
    expect(g.perLayer).toHaveLength(g.layers as number);
    for (const l of g.perLayer!) expect(typeof l.heads).toBe('number');
  } else {
    expect(Array.isArray(g.layers)).toBe(true);
    expect(Array.isArray(g.embedding)).toBe(true);
    for (const l of g.perLayer!) expect(Array.isArray(l.mlp)).toBe(true);
  }
  expect(space.isValid(g)).toBe(true);
  expect(space.key(g)).toBe(specHash(g, teacher));
}

describe('property tests: every genome valid and inside the bin', () => {
  const teachers: [string, NeoXConfig][] = [
    ['sotu-teacher shape', small],
    ['mixed layers', mixed],
  ];
  for (const [name, teacher] of teachers) {
    for (const kind of SPACES) {
      it(`${name}, ${kind}: samples, mutations and crossovers over several bins`, () => {
        const bins = parameterBins(teacher, { space: kind });
        let checked = 0;
        for (const bin of [0, 2, 7, 13, 19]) {
          const target = resolveTarget(teacher, { bin }, { space: kind });
          const space = createSubnetSpace(teacher, { space: kind, target });
          expect(space.costRange()).toEqual({ min: bins[bin].minParams, max: bins[bin].maxParams });
          const rng = new SeededRng(1000 + bin);
          const pool = Array.from({ length: 8 }, () => space.sample(rng));
          for (let i = 0; i < 600; i++) {
            const a = pool[rng.nextInt(pool.length)];
            const b = pool[rng.nextInt(pool.length)];
            const child = rng.nextFloat() < 0.5 ? space.mutate(a, rng) : space.crossover(a, b, rng);
            checkGenome(space, teacher, child, kind);
            pool[rng.nextInt(pool.length)] = child;
            checked++;
          }
          for (const g of pool) checkGenome(space, teacher, g, kind);
        }
        expect(checked).toBe(3000);
      });
    }
  }

  it('Pythia-410M teacher, target Pythia-70M ± 5%: every space', () => {
    for (const kind of SPACES) {
      const target = resolveTarget(pythia410m, { params: '70.4M ± 5%' }, { space: kind });
      expect(target).toMatchObject({ minParams: 66_880_000, maxParams: 73_920_000 });
      const space = createSubnetSpace(pythia410m, { space: kind, target });
      const rng = new SeededRng(3);
      let g = space.sample(rng);
      const n = kind === 'granular' ? 20 : 100;
      for (let i = 0; i < n; i++) {
        g = i % 2 ? space.mutate(g, rng) : space.crossover(g, space.sample(rng), rng);
        checkGenome(space, pythia410m, g, kind);
      }
    }
  });

  it('searched head sizes and coarse choices', () => {
    const choices = { embedding: { step: 16 }, heads: [2, 4, 8], mlp: { min: 64, step: 64 }, headSize: [8, 12, 16] };
    for (const kind of SPACES) {
      const bins = parameterBins(small, { space: kind, choices, count: 10 });
      const target = resolveTarget(small, { bin: 4 }, { space: kind, choices, count: 10 });
      expect(target.minParams).toBe(bins[4].minParams);
      const space = createSubnetSpace(small, { space: kind, target, choices });
      const rng = new SeededRng(11);
      const pool = Array.from({ length: 6 }, () => space.sample(rng));
      const headSizes = new Set<number>();
      for (let i = 0; i < 500; i++) {
        const child = i % 2 ? space.mutate(pool[i % 6], rng) : space.crossover(pool[i % 6], pool[(i + 1) % 6], rng);
        checkGenome(space, small, child, kind);
        headSizes.add(canonicalize(child, small).headSize.length);
        pool[rng.nextInt(6)] = child;
      }
      expect(headSizes.size).toBeGreaterThan(1);
    }
  });
});

describe('determinism', () => {
  it('the same seed gives the same genomes; genomes survive a JSON round trip', () => {
    for (const kind of SPACES) {
      const target = resolveTarget(small, { bin: 5 }, { space: kind });
      const run = () => {
        const space = createSubnetSpace(small, { space: kind, target });
        const rng = new SeededRng(42);
        const out: SubnetSpec[] = [space.sample(rng), space.sample(rng)];
        for (let i = 0; i < 50; i++) {
          const a = JSON.parse(JSON.stringify(out[out.length - 1]));
          const b = JSON.parse(JSON.stringify(out[out.length - 2]));
          out.push(i % 2 ? space.mutate(a, rng) : space.crossover(a, b, rng));
        }
        return out;
      };
      expect(run()).toEqual(run());
    }
  });

  it('key: equal sub-networks, equal keys; describe names the shape', () => {
    const space = createSubnetSpace(small, { space: 'uniform', target: { minParams: 0, maxParams: 1e9 } });
    const a: SubnetSpec = { layers: 2, embedding: 64, headSize: 16, heads: 4, mlp: 128 };
    const b: SubnetSpec = {
      layers: [0, 1],
      embedding: 64,
      perLayer: [
        { heads: [0, 1, 2, 3], mlp: 128 },
        { heads: 4, mlp: 128 },
      ],
    };
    expect(space.key(a)).toBe(space.key(b));
    expect(space.key(a)).not.toBe(space.key({ ...a, mlp: 129 }));
    expect(space.describe!(a)).toMatch(
      /^2 layers \[0-1\], width 64, head size 16, heads 4, MLP 128: [\d.]+k parameters$/,
    );
    // A genome of another space is not a valid uniform genome (unless it describes a uniform network).
    expect(space.isValid({ layers: 2, perLayer: [{ heads: 4 }, { heads: 3 }] })).toBe(false);
    expect(space.isValid({ layers: 2, heads: 4 })).toBe(true);
  });

  it('drives core/search: an evolutionary search over the space only ever asks valid, in-bin candidates', () => {
    for (const kind of SPACES) {
      const target = resolveTarget(small, { bin: 6 }, { space: kind });
      const space = createSubnetSpace(small, { space: kind, target });
      const asked: SubnetSpec[] = [];
      // Synthetic fitness: prefer wide embeddings and few layers (a known optimum the search should approach).
      const fitness = (g: SubnetSpec) => {
        const c = canonicalize(g, small);
        return c.layers.length - c.embedding.length / 16;
      };
      const search = runSearchSync(createSearch({ budget: 120, population: 12, seed: 5 }, space), (c) => {
        asked.push(c.genome);
        return fitness(c.genome);
      });
      expect(asked.length).toBe(120);
      for (const g of asked) checkGenome(space, small, g, kind);
      expect(new Set(asked.map((g) => space.key(g))).size).toBe(asked.length);
      expect(search.best()!.fitness).toBeLessThanOrEqual(Math.min(...asked.slice(0, 12).map(fitness)));
    }
  });
});

describe('parameter bins', () => {
  it('20 linear bins from the smallest to the largest sub-network, contiguous', () => {
    const { min, max } = spaceParamRange(small);
    expect(max).toBe(countSubnet(small, {}).parameters);
    expect(min).toBe(countSubnet(small, { layers: 1, embedding: 1, heads: 1, mlp: 1 }).parameters);
    const bins = parameterBins(small);
    expect(bins).toHaveLength(20);
    expect(bins[0].minParams).toBe(min);
    expect(bins[19].maxParams).toBe(max);
    for (let i = 1; i < 20; i++) expect(bins[i].minParams).toBe(bins[i - 1].maxParams + 1);
    const widths = bins.map((b) => b.maxParams - b.minParams);
    expect(Math.max(...widths) - Math.min(...widths)).toBeLessThanOrEqual(1);
  });

  it('log-spaced bins', () => {
    const bins = parameterBins(small, { scale: 'log', count: 8 });
    const ratios = bins.map((b) => (b.maxParams + 1) / b.minParams);
    for (const r of ratios) expect(r).toBeCloseTo(ratios[0], 2);
  });

  it('targets as text', () => {
    expect(parseParamRange('70.4M ± 5%')).toEqual({ minParams: 66_880_000, maxParams: 73_920_000 });
    expect(parseParamRange('70.4M+-5%')).toEqual({ minParams: 66_880_000, maxParams: 73_920_000 });
    expect(parseParamRange('1.5M ± 100k')).toEqual({ minParams: 1_400_000, maxParams: 1_600_000 });
    expect(parseParamRange('60M-80M')).toEqual({ minParams: 60_000_000, maxParams: 80_000_000 });
    expect(parseParamRange('1e6..2e6')).toEqual({ minParams: 1_000_000, maxParams: 2_000_000 });
    expect(parseParamRange('123456')).toEqual({ minParams: 123_456, maxParams: 123_456 });
    expect(() => parseParamRange('about seventy million')).toThrow(/^target: cannot read "about seventy million"/);
    expect(() => parseParamRange('80M-60M')).toThrow(/lower end exceeds the upper/);
  });

  it('every bin of the default space is reachable', () => {
    for (const kind of SPACES) {
      for (const b of parameterBins(small, { space: kind })) {
        expect(findInRange(small, { space: kind, target: b }).spec, `${kind} bin ${b.index}`).not.toBeNull();
      }
    }
  });
});

describe('bad targets and choices: clear errors naming them', () => {
  const coarse = { layers: [1, 4], embedding: [128], heads: [8], mlp: [512] };

  it('a bin no sub-network can reach (exhaustively checked)', () => {
    for (const kind of SPACES) {
      const bins = parameterBins(small, { space: kind, choices: coarse });
      // Only two sub-networks exist: 1 layer (bin 0) and 4 layers (bin 19).
      expect(() => resolveTarget(small, { bin: 0 }, { space: kind, choices: coarse })).not.toThrow();
      expect(() => resolveTarget(small, { bin: 19 }, { space: kind, choices: coarse })).not.toThrow();
      let err: unknown;
      try {
        resolveTarget(small, { bin: 7 }, { space: kind, choices: coarse });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TargetError);
      expect((err as TargetError).field).toBe('target');
      expect((err as Error).message).toMatch(
        new RegExp(
          `^target: bin 7 of 20 \\(linear\\): .* parameters: no sub-network of the ${kind} space has a parameter count in it`,
        ),
      );
      expect(() => createSubnetSpace(small, { space: kind, choices: coarse, target: bins[7] })).toThrow(
        /no sub-network of the .* space has a parameter count in it/,
      );
    }
  });

  it('bin index out of range, a range outside the space, an inverted range', () => {
    expect(() => resolveTarget(small, { bin: 20 })).toThrow(/^target: bin 20 out of range \[0, 20\)$/);
    expect(() => resolveTarget(small, { params: '5B ± 1%' })).toThrow(
      /^target: 4.95B to 5.05B parameters: no sub-network of the uniform space has a parameter count in it \(the uniform space spans/,
    );
    expect(() => createSubnetSpace(small, { space: 'uniform', target: { minParams: 10, maxParams: 5 } })).toThrow(
      /^target: minParams 10 exceeds maxParams 5$/,
    );
    expect(() => createSubnetSpace(small, { space: 'uniform', target: { minParams: -1, maxParams: 5 } })).toThrow(
      /^target: minParams must be a non-negative number/,
    );
  });

  it('bad choices and space names', () => {
    expect(() => resolveDims(small, 'uniform', { heads: [4, 9] })).toThrow(
      /^choices\.heads: 9 exceeds the teacher's 8$/,
    );
    expect(() => resolveDims(small, 'uniform', { mlp: { step: 0 } })).toThrow(
      /^choices\.mlp\.step: must be a positive integer/,
    );
    expect(() => resolveDims(small, 'uniform', { embedding: [] })).toThrow(
      /^choices\.embedding: needs at least one value$/,
    );
    expect(() =>
      createSubnetSpace(small, { space: 'per-head' as SpaceKind, target: { minParams: 0, maxParams: 1 } }),
    ).toThrow(SpecError);
    expect(() =>
      createSubnetSpace(small, { space: 'per-head' as SpaceKind, target: { minParams: 0, maxParams: 1 } }),
    ).toThrow(/^space: must be one of uniform, layer-wise, granular/);
  });
});
