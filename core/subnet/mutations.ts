/**
 * The sub-network space's mutation operators, by name. A mutation draws one that applies in the space
 * (then, with the space's second-mutation probability, another), and repair brings the child back into
 * the parameter range afterwards (space.ts), so an operator need not keep the count in range.
 *
 * To add one, register it below with a new name and an `applies` saying in which spaces it can change
 * anything. The draw is over the applicable operators in registration order, so a new operator changes
 * the searches of the spaces it applies to (the same seed takes another path; the tests that pin search
 * results show it) and leaves the others as they were.
 */
import { MutationRegistry, type Rng } from '../search/index.js';
import { type Geno, type Machinery, lowerBound, nearest, pick, randomSubset, range, swapMembers } from './genome.js';

/** How many members an index-set swap exchanges: 1 to size/16 (at least 1). */
const swapCount = (size: number, rng: Rng) => 1 + rng.nextInt(Math.max(1, Math.ceil(size / 16)));

export const SUBNET_MUTATIONS = new MutationRegistry<Geno, Machinery>()
  .register({ name: 'embedding', apply: (g, m, rng) => m.vary(g, { k: 'e' }, rng) })
  .register({
    name: 'head-size',
    applies: (m) => m.dims.headSize.length > 1,
    apply: (g, m, rng) => m.vary(g, { k: 'hs' }, rng),
  })
  // The uniform space: one value for every layer.
  .register({ name: 'heads', applies: (m) => m.uniform, apply: (g, m, rng) => m.vary(g, { k: 'heads-all' }, rng) })
  .register({ name: 'mlp', applies: (m) => m.uniform, apply: (g, m, rng) => m.vary(g, { k: 'mlp-all' }, rng) })
  .register({ name: 'layers', applies: (m) => m.uniform, apply: (g, m, rng) => m.vary(g, { k: 'layers-all' }, rng) })
  // The layer-wise and granular spaces: one layer at a time, and the layer count one step.
  .register({
    name: 'layer-heads',
    applies: (m) => !m.uniform,
    apply: (g, m, rng) => m.vary(g, { k: 'heads', i: rng.nextInt(g.heads.length) }, rng),
  })
  .register({
    name: 'layer-mlp',
    applies: (m) => !m.uniform,
    apply: (g, m, rng) => m.vary(g, { k: 'mlp', i: rng.nextInt(g.mlp.length) }, rng),
  })
  .register({
    name: 'layer-count',
    applies: (m) => !m.uniform,
    apply: (g, m, rng) => {
      const counts = m.dims.layers;
      const i = lowerBound(counts, g.layers.length);
      const j = rng.nextFloat() < 0.5 ? i - 1 : i + 1;
      if (j >= 0 && j < counts.length) m.setLayerCount(g, counts[j], rng);
    },
  })
  // The granular space: which teacher layers, channels, heads and neurons are kept.
  .register({
    name: 'move-layer',
    applies: (m) => m.granular,
    apply: (g, m, rng) => {
      // One kept layer moves to an unused teacher layer, keeping its counts where the new layer allows.
      const used = new Set(g.layers);
      const free = range(m.L).filter((t) => !used.has(t));
      if (free.length === 0) return;
      const pos = rng.nextInt(g.layers.length);
      const t = pick(free, rng);
      const h = nearest(m.headChoices(t), g.heads[pos]);
      const n = nearest(m.mlpChoices(t), g.mlp[pos]);
      const keep = { h: randomSubset(m.dims.teacherHeads[t], h, rng), n: randomSubset(m.dims.teacherMlp[t], n, rng) };
      for (const arr of [g.layers, g.heads, g.mlp, g.headIdx!, g.mlpIdx!] as unknown[][]) arr.splice(pos, 1);
      const at = lowerBound(g.layers, t);
      g.layers.splice(at, 0, t);
      g.heads.splice(at, 0, h);
      g.mlp.splice(at, 0, n);
      g.headIdx!.splice(at, 0, keep.h);
      g.mlpIdx!.splice(at, 0, keep.n);
    },
  })
  .register({
    name: 'swap-channels',
    applies: (m) => m.granular,
    apply: (g, m, rng) => {
      g.eIdx = swapMembers(g.eIdx!, m.teacher.hiddenSize, swapCount(g.e, rng), rng);
    },
  })
  .register({
    name: 'swap-heads',
    applies: (m) => m.granular,
    apply: (g, m, rng) => {
      const i = rng.nextInt(g.layers.length);
      g.headIdx![i] = swapMembers(g.headIdx![i], m.dims.teacherHeads[g.layers[i]], 1, rng);
    },
  })
  .register({
    name: 'swap-neurons',
    applies: (m) => m.granular,
    apply: (g, m, rng) => {
      const i = rng.nextInt(g.layers.length);
      g.mlpIdx![i] = swapMembers(g.mlpIdx![i], m.dims.teacherMlp[g.layers[i]], swapCount(g.mlp[i], rng), rng);
    },
  });
