/**
 * The paper-table experiment's pure parts: reaching a target on a curve, the per-seed efficiency
 * ratios and their spread, the claims, the rendered table and plots, and the configuration's checks.
 */
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { ConfigError } from '../services/config/index.js';
import {
  analysePaperTable,
  mean,
  parseExperimentConfig,
  reachAt,
  renderPaperTable,
  std,
} from '../services/experiment/index.js';
import { shortNumber } from '../services/experiment/svg.js';
import { PAPER_ARMS, type PaperArm, type PaperRun, type PaperTableResult } from '../workflows/index.js';

/** A run whose validation perplexity falls geometrically from `start` by `factor` per 10 steps. */
function run(
  arm: PaperArm,
  seed: number,
  start: number,
  factor: number,
  flopsPerToken: { training: number; teacher: number },
): PaperRun {
  const curve = [0, 10, 20, 30, 40].map((step) => {
    const valPpl = start * factor ** (step / 10);
    return { step, valLoss: Math.log(valPpl), valPpl };
  });
  const last = curve[curve.length - 1];
  const tokens = 40 * 256;
  return {
    arm,
    seed,
    name: `${arm}-s${seed}`,
    parameters: 1000,
    flopsPerToken: { ...flopsPerToken, total: flopsPerToken.training + flopsPerToken.teacher },
    steps: 40,
    tokens,
    flops: tokens * (flopsPerToken.training + flopsPerToken.teacher),
    curve,
    final: {
      // 2048 tokens of 4 bytes each: bits per byte = loss / (4 ln 2).
      val: {
        valLoss: last.valLoss,
        valPpl: last.valPpl,
        valBpb: last.valLoss / (4 * Math.LN2),
        tokens: 2048,
        bytes: 8192,
      },
      ood: {
        valLoss: last.valLoss + 1,
        valPpl: last.valPpl * Math.E,
        valBpb: (last.valLoss + 1) / (4 * Math.LN2),
        tokens: 2048,
        bytes: 8192,
      },
    },
    checkpoint: { dir: `/x/${arm}-${seed}`, hash: 'h', step: 40 },
    seconds: 1,
  };
}

function syntheticResult(): PaperTableResult {
  const ce = { training: 600, teacher: 0 };
  const kd = { training: 600, teacher: 1400 };
  // Starting perplexities and decay per 10 steps; evo-kd fastest, random-ce slowest.
  const shape: Record<PaperArm, [number, number, typeof ce]> = {
    'random-ce': [1000, 0.5, ce],
    'random-kd': [1000, 0.45, kd],
    'firstk-ce': [200, 0.7, ce],
    'firstk-kd': [200, 0.65, kd],
    'evo-ce': [150, 0.7, ce],
    'evo-kd': [150, 0.6, kd],
  };
  const runs: PaperRun[] = [];
  for (const seed of [1, 2, 3])
    for (const arm of PAPER_ARMS)
      runs.push(run(arm, seed, shape[arm][0] * (1 + 0.01 * seed), shape[arm][1], shape[arm][2]));
  const config = {
    vocabSize: 300,
    hiddenSize: 32,
    numLayers: 2,
    headSize: 8,
    maxPositions: 256,
    layers: [{ numHeads: 4, intermediateSize: 128 }],
  };
  const ev = { valLoss: 3, valPpl: Math.exp(3), valBpb: 3 / (4 * Math.LN2), tokens: 2048, bytes: 8192 };
  return {
    runId: 'synthetic',
    teacher: { dir: '/t', hash: 'h', parameters: 5000, config: config as never, val: ev, ood: ev },
    search: {
      best: { id: 1, key: 'k', generation: 0, origin: 'sample', status: 'ok', fitness: 3, parameters: 1000, spec: {} },
      evaluations: 8,
      seed: 1,
      flops: 1e9,
      target: { minParams: 900, maxParams: 1100, label: 'bin 4' },
    },
    specs: {
      search: {},
      firstK: {},
      random: {},
      descriptions: { search: 'evo shape', firstK: 'first-k shape', random: 'evo shape' },
    },
    settings: {
      batchSize: 8,
      seqLen: 32,
      steps: 40,
      tokensPerStep: 256,
      evalEvery: 10,
      evalTokens: 1024,
      finalEvalTokens: 2048,
      oodEvalTokens: 2048,
      valData: 'sotu:val',
      oodData: 'mobydick',
      trainData: 'sotu:train',
      taskFiles: [],
      distill: { alpha: 0.5, temperature: 1, direction: 'forward' },
      randomShape: 'search',
      arms: [...PAPER_ARMS],
      seeds: [1, 2, 3],
    },
    runs,
    timings: { teacher: 1, search: 2, pretrain: 3, total: 6 },
    meta: {
      command: 'npx offshoot experiment paper-table --config x.yaml',
      config: { experiment: { seeds: [1, 2, 3] } },
      backend: 'cpu',
    },
  };
}

describe('reachAt', () => {
  const curve = [
    { x: 0, ppl: 1000 },
    { x: 100, ppl: 100 },
    { x: 200, ppl: 10 },
  ];
  it('interpolates linearly in log perplexity between validation points', () => {
    expect(reachAt(curve, 100)).toBeCloseTo(100, 9);
    expect(reachAt(curve, Math.sqrt(1000 * 100))).toBeCloseTo(50, 9);
    expect(reachAt(curve, Math.sqrt(100 * 10))).toBeCloseTo(150, 9);
  });
  it('is the first point when the curve starts below the target, null when it never gets there', () => {
    expect(reachAt(curve, 5000)).toBe(0);
    expect(reachAt(curve, 5)).toBeNull();
  });
  it('takes the first crossing of a curve that goes back up', () => {
    expect(
      reachAt(
        [
          { x: 0, ppl: 50 },
          { x: 10, ppl: 20 },
          { x: 20, ppl: 40 },
          { x: 30, ppl: 10 },
        ],
        20,
      ),
    ).toBe(10);
  });
});

describe('analysePaperTable', () => {
  const result = syntheticResult();
  const a = analysePaperTable(result);
  const arm = (name: PaperArm) => a.arms.find((s) => s.arm === name)!;

  it('summarises final perplexities over seeds (mean ± sample std)', () => {
    const ppls = result.runs.filter((r) => r.arm === 'evo-kd').map((r) => r.final.val.valPpl);
    expect(arm('evo-kd').val.mean).toBeCloseTo(mean(ppls), 9);
    expect(arm('evo-kd').val.std).toBeCloseTo(std(ppls), 9);
    expect(arm('evo-kd').ood.mean).toBeCloseTo(mean(ppls) * Math.E, 9);
    expect(std([1, 2, 3])).toBeCloseTo(1, 12);
  });

  it('pairs each seed with the random-init (CE) run of the same seed; the baseline is 1x by construction', () => {
    const base = arm('random-ce');
    expect(base.efficiency.map((e) => e.tokenRatio)).toEqual([1, 1, 1]);
    expect(base.efficiency.map((e) => e.flopRatio)).toEqual([1, 1, 1]);
    for (const e of base.efficiency) expect(e.target).toBeCloseTo(1000 * (1 + 0.01 * e.seed) * 0.5 ** 4, 9);
  });

  it('computes token and FLOP ratios from the curves (teacher forward passes count for KD arms)', () => {
    const evo = arm('evo-kd');
    for (const e of evo.efficiency) {
      // evo-kd: 150·(1+0.01s)·0.6^(step/10) = 1000·(1+0.01s)·0.5^4  =>  step = 10·log(62.5/150)/log(0.6)
      const step = (10 * Math.log(62.5 / 150)) / Math.log(0.6);
      expect(e.tokens).toBeCloseTo(step * 256, 6);
      expect(e.tokenRatio).toBeCloseTo(40 / step, 6);
      // FLOPs: the baseline spends 600 per token, evo-kd 2000.
      expect(e.flopRatio).toBeCloseTo((40 * 600) / (step * 2000), 6);
    }
    expect(evo.tokenRatio.n).toBe(3);
    expect(evo.tokenRatio.std).toBeCloseTo(0, 9);
    // random-kd (0.45 per 10 steps) gets there before the baseline does.
    expect(arm('random-kd').tokenRatio.mean).toBeGreaterThan(1);
  });

  it('reads the ratios against shorter baseline budgets off the same curves; the whole budget gives the main ratio', () => {
    expect(a.budgets.map((b) => b.step)).toEqual([10, 20, 30, 40]);
    const whole = a.budgets.at(-1)!.arms['evo-kd'];
    expect(whole.tokenRatio.mean).toBeCloseTo(arm('evo-kd').tokenRatio.mean, 9);
    expect(whole.flopRatio.mean).toBeCloseTo(arm('evo-kd').flopRatio.mean, 9);
    // At step s the baseline is at 1000·0.5^(s/10); evo-kd gets there at 10·log(1000·0.5^(s/10)/150)/log(0.6) steps.
    for (const b of a.budgets) {
      const target = 1000 * 0.5 ** (b.step / 10);
      const s = target >= 150 ? 0 : (10 * Math.log(target / 150)) / Math.log(0.6);
      const x = b.arms['evo-kd'].tokenRatio;
      if (s === 0) expect(x.mean).toBe(Infinity);
      else expect(x.mean).toBeCloseTo(b.step / s, 6);
    }
    expect(a.budgets.every((b) => b.arms['random-ce'].tokenRatio.mean === 1)).toBe(true);
  });

  it("states the paper's claims; with these curves the ordering holds", () => {
    const byClaim = Object.fromEntries(a.claims.map((c) => [c.claim, c]));
    expect(a.claims.find((c) => c.claim.startsWith('evolutionary-search sub-network + KD is the best'))!.holds).toBe(
      true,
    );
    expect(a.claims.filter((c) => c.claim.startsWith('sub-network initialisation beats')).every((c) => c.holds)).toBe(
      true,
    );
    expect(a.claims.filter((c) => c.claim.startsWith('KD helps')).every((c) => c.holds)).toBe(true);
    expect(Object.keys(byClaim).length).toBe(a.claims.length);
  });

  it('marks an arm already better at initialisation as unbounded, and one that never gets there as not reached', () => {
    const r = syntheticResult();
    for (const x of r.runs) {
      if (x.arm === 'evo-kd') x.curve = x.curve.map((p) => ({ ...p, valPpl: 10, valLoss: Math.log(10) }));
      if (x.arm === 'firstk-ce') x.curve = x.curve.map((p) => ({ ...p, valPpl: 5000, valLoss: Math.log(5000) }));
    }
    const b = analysePaperTable(r);
    const evo = b.arms.find((s) => s.arm === 'evo-kd')!;
    expect(evo.efficiency.every((e) => e.tokens === 0 && e.tokenRatio === Infinity)).toBe(true);
    const fk = b.arms.find((s) => s.arm === 'firstk-ce')!;
    expect(fk.reached).toBe(0);
    expect(fk.efficiency.every((e) => e.tokens === null && e.tokenRatio === null)).toBe(true);
    const md = renderPaperTable(r).markdown;
    expect(md).toMatch(/\| evolutionary-search sub-network \+ KD \|[^\n]*∞\*\* in 3\/3 seeds/);
    expect(md).toMatch(/\| first-k sub-network \(CE\) \|[^\n]*not reached \(0\/3\)/);
  });
});

describe('renderPaperTable', () => {
  const r = renderPaperTable(syntheticResult(), { prefix: 'pt' });
  it('writes the table, two SVG plots and the data', () => {
    expect(Object.keys(r.files).sort()).toEqual(['pt-flops.svg', 'pt-tokens.svg', 'pt.json', 'pt.md']);
    expect(r.markdown).toContain('npx offshoot experiment paper-table --config x.yaml');
    expect(r.markdown).toContain('![validation perplexity vs tokens](pt-tokens.svg)');
    // Results, shorter budgets, students and per-seed tables.
    expect(r.markdown.split('\n').filter((l) => l.includes('| evolutionary-search sub-network + KD |')).length).toBe(
      1 + 1 + 1 + 3,
    );
    expect(r.markdown.split('\n').filter((l) => /^\| \d+ \| /.test(l)).length).toBe(18);
    for (const svg of [r.files['pt-tokens.svg'], r.files['pt-flops.svg']]) {
      expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
      expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
      expect(svg.match(/<polyline class="series"/g)?.length).toBe(6);
      expect(svg).not.toMatch(/NaN|Infinity/);
    }
    const data = JSON.parse(r.files['pt.json']) as { result: PaperTableResult; analysis: { claims: unknown[] } };
    expect(data.result.runs.length).toBe(18);
    expect(data.analysis.claims.length).toBeGreaterThan(5);
  });
  it('records the teacher and task files inside the working folder relative to it, others as they are', () => {
    const base = syntheticResult();
    const inside = path.join(process.cwd(), 'runs', 'paper-table', 'teacher');
    const task = path.join(process.cwd(), 'docs', 'results', 'tasks', 'next.yaml');
    const elsewhere = path.join(path.parse(process.cwd()).root, 'elsewhere', 'task.yaml');
    const withPaths: PaperTableResult = {
      ...base,
      teacher: { ...base.teacher, dir: inside },
      settings: { ...base.settings, taskFiles: [task, elsewhere] },
    };
    const data = JSON.parse(renderPaperTable(withPaths, { prefix: 'pt' }).files['pt.json']) as {
      result: PaperTableResult;
    };
    expect(data.result.teacher.dir).toBe(path.join('runs', 'paper-table', 'teacher'));
    expect(data.result.settings.taskFiles).toEqual([path.join('docs', 'results', 'tasks', 'next.yaml'), elsewhere]);
  });
});

describe('experiment configuration', () => {
  it('has defaults for everything: six arms, three seeds, the paper-table run', () => {
    const x = parseExperimentConfig({});
    expect(x.experiment.arms).toEqual([...PAPER_ARMS]);
    expect(x.experiment.seeds).toEqual([1, 2, 3]);
    expect(x.config.run.name).toBe('paper-table');
    expect(x.config.pretrain.steps % x.config.pretrain.evalEvery).toBe(0);
  });
  it('lists every problem, in the experiment section and the run configuration, in one error', () => {
    let err: unknown;
    try {
      parseExperimentConfig(
        {
          experiment: { arms: ['evo-kd', 'nope'], seeds: [1, 1], colour: 'red' },
          pretrain: { steps: 100, evalEvery: 30 },
          search: { population: 1 },
        },
        'bad.yaml',
      );
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const fields = (err as ConfigError).problems.map((p) => p.field);
    expect(fields).toEqual(expect.arrayContaining(['experiment.arms.1', 'experiment.colour', 'search.population']));
    const again = (() => {
      try {
        parseExperimentConfig({ experiment: { seeds: [1, 1] }, pretrain: { steps: 100, evalEvery: 30 } });
      } catch (e) {
        return e as ConfigError;
      }
    })()!;
    expect(again.problems.map((p) => p.field).sort()).toEqual(['experiment.seeds', 'pretrain.evalEvery']);
  });
});

describe('shortNumber', () => {
  it('keeps three significant digits and the zeros before the decimal point', () => {
    expect(shortNumber(120460)).toBe('120k');
    expect(shortNumber(12000)).toBe('12k');
    expect(shortNumber(9920)).toBe('9.92k');
    expect(shortNumber(1500000)).toBe('1.5M');
    expect(shortNumber(204800)).toBe('205k');
    expect(shortNumber(2.14e11)).toBe('2.14e11');
    expect(shortNumber(100)).toBe('100');
    expect(shortNumber(0.5)).toBe('0.5');
  });
});
