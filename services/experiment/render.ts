/**
 * The paper-table report: a Markdown table (perplexity, bits per byte, efficiency, zero-shot task
 * accuracy when tasks were run) with the setup, the claims checked, per-seed numbers and the
 * configuration; validation-perplexity curves against tokens and against FLOPs as SVG; the raw result
 * and its analysis as JSON. Pure text generation (writing is in index.ts).
 */
import * as path from 'node:path';

import YAML from 'yaml';

import { ARM_INFO, type PaperArm, type PaperTableResult } from '../../workflows/paper-table.js';
import {
  type ArmSummary,
  type PaperTableAnalysis,
  type Stats,
  BASELINE_ARM,
  PAPER_GOALS,
  analysePaperTable,
  stats,
  summariseTasks,
} from './analysis.js';
import { type ChartSeries, lineChart, shortNumber } from './svg.js';

export interface RenderedPaperTable {
  /** File name -> content. */
  files: Record<string, string>;
  markdown: string;
  analysis: PaperTableAnalysis;
}

const STYLE: Record<PaperArm, { color: string; dash: string }> = {
  'random-ce': { color: '#7f7f7f', dash: '6 4' },
  'random-kd': { color: '#7f7f7f', dash: '' },
  'firstk-ce': { color: '#1f77b4', dash: '6 4' },
  'firstk-kd': { color: '#1f77b4', dash: '' },
  'evo-ce': { color: '#d62728', dash: '6 4' },
  'evo-kd': { color: '#d62728', dash: '' },
};

const commas = (n: number) => Math.round(n).toLocaleString('en-US');
const sci = (x: number) => {
  if (!Number.isFinite(x)) return '-';
  if (x === 0) return '0';
  const e = Math.floor(Math.log10(Math.abs(x)));
  return `${(x / 10 ** e).toFixed(2)}e${e}`;
};
const pm = (s: Stats, digits = 2) => (s.n ? `${s.mean.toFixed(digits)} ± ${s.std.toFixed(digits)}` : '-');

function reachCell(a: ArmSummary, which: 'tokens' | 'flops'): string {
  const seeds = a.efficiency.length;
  if (!seeds) return '-';
  const s = which === 'tokens' ? a.tokens : a.flops;
  const f = which === 'tokens' ? shortNumber : sci;
  if (!s.n) return `not reached (0/${seeds})`;
  return `${f(s.mean)} ± ${f(s.std)}${a.reached < seeds ? ` (${a.reached}/${seeds} seeds)` : ''}`;
}

function ratioCell(a: ArmSummary, which: 'tokens' | 'flops'): string {
  const seeds = a.efficiency.length;
  if (!seeds) return '-';
  const s = which === 'tokens' ? a.tokenRatio : a.flopRatio;
  if (!s.n)
    return `< ${(which === 'tokens' ? a.efficiency[0].baselineTokens / a.budgetTokens : a.efficiency[0].baselineFlops / a.budgetFlops).toFixed(2)}x (not reached)`;
  const infinite = s.values.filter((v) => !Number.isFinite(v)).length;
  const finite = s.values.filter(Number.isFinite);
  const part = a.reached < seeds ? `, ${a.reached}/${seeds} seeds` : '';
  if (infinite) {
    const f = finite.length ? `; the others ${finite.map((v) => `${v.toFixed(2)}x`).join(', ')}` : '';
    return `**∞** in ${infinite}/${seeds} seeds (better already at initialisation)${f}${part}`;
  }
  return `**${s.mean.toFixed(2)}x** ± ${s.std.toFixed(2)} (${s.min.toFixed(2)}–${s.max.toFixed(2)})${part}`;
}

function chart(result: PaperTableResult, analysis: PaperTableAnalysis, axis: 'tokens' | 'flops'): string {
  const series: ChartSeries[] = analysis.arms.map((a) => {
    const c = analysis.curves[a.arm] ?? [];
    const x = (p: (typeof c)[number]) => (axis === 'tokens' ? p.tokens : p.flops);
    return {
      label: `${ARM_INFO[a.arm].label} (${a.seeds.length} seeds)`,
      color: STYLE[a.arm].color,
      dash: STYLE[a.arm].dash,
      points: c.map((p) => ({ x: x(p), y: p.ppl })),
      band: c.map((p) => ({ x: x(p), lo: p.min, hi: p.max })),
    };
  });
  const base = analysis.baseline;
  const target = base
    ? Math.exp(base.efficiency.reduce((s, e) => s + Math.log(e.target), 0) / Math.max(1, base.efficiency.length))
    : undefined;
  const s = result.settings;
  return lineChart({
    title: `Validation perplexity (${s.valData}) vs ${axis === 'tokens' ? 'training tokens' : 'training FLOPs (teacher forward included for KD)'}`,
    xLabel:
      axis === 'tokens'
        ? 'training tokens'
        : 'training FLOPs: 6N + attention per token, + teacher forward 2N + attention for KD',
    yLabel: 'validation perplexity (log scale; line: mean over seeds, band: min–max)',
    series,
    logY: true,
    ...(target
      ? { hline: { y: target, label: `random init (CE) at the end of its budget: ${target.toFixed(1)}` } }
      : {}),
  });
}

/** A path as the JSON records it: relative to the working folder when it lies inside it, so a committed result names no machine's folders. */
function recordedPath(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return path.isAbsolute(p) && rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}

function describeSpec(d: string): string {
  return d || '(see JSON)';
}

export function renderPaperTable(result: PaperTableResult, options: { prefix?: string } = {}): RenderedPaperTable {
  const prefix = options.prefix ?? 'paper-table';
  const analysis = analysePaperTable(result);
  const s = result.settings;
  const t = result.teacher;
  const base = analysis.baseline;
  const method = analysis.method;
  const lines: string[] = [];
  const budgetTokens = s.steps * s.tokensPerStep;
  lines.push('# Paper table: sub-network initialisation and distillation at small scale');
  lines.push('');
  lines.push(
    'Reproduces the comparison of Krishnakumar et al., *Where to Begin: Efficient Pretraining via Subnetwork Selection and Distillation* ' +
      "(arXiv 2510.07227) on offshoot's own pipeline: six arms with the same data order (per seed), token budget and hyperparameters.",
  );
  lines.push('');
  lines.push('Produced by:');
  lines.push('');
  lines.push('```sh');
  lines.push(result.meta.command);
  lines.push('```');
  lines.push('');
  const tm = result.timings;
  lines.push(
    `Backend \`${result.meta.backend ?? '?'}\`; workflow time ${(tm.total / 60).toFixed(1)} min (teacher ${(tm.teacher / 60).toFixed(1)}, search ${(tm.search / 60).toFixed(1)}, pretraining ${(tm.pretrain / 60).toFixed(1)}). ` +
      `Temporal workflow \`paperTable\` (workflows/paper-table.ts), run \`${result.runId}\`.`,
  );
  lines.push('');
  lines.push('## Setup');
  lines.push('');
  lines.push(
    `- **Teacher**: ${commas(t.parameters)} parameters (${t.config.numLayers} layers, width ${t.config.hiddenSize}, ${t.config.layers[0]?.numHeads} heads, vocabulary ${t.config.vocabSize}), ` +
      `validation perplexity ${t.val.valPpl.toFixed(2)} (${t.val.valBpb.toFixed(3)} bits per byte) on ${s.valData}, ${t.ood.valPpl.toFixed(2)} (${t.ood.valBpb.toFixed(3)} bits per byte) on ${s.oodData}.`,
  );
  lines.push(
    `- **Parameter bin**: ${result.search.target.label} (${commas(result.search.target.minParams)}–${commas(result.search.target.maxParams)} parameters); ` +
      `the teacher is ${(t.parameters / (analysis.arms[0]?.parameters ?? t.parameters)).toFixed(1)}x the students' size.`,
  );
  lines.push(
    `- **Evolutionary search**: ${result.search.evaluations} fitness evaluations (seed ${result.search.seed}, ${sci(result.search.flops)} FLOPs, not counted in the arms' budgets); best: ${describeSpec(result.specs.descriptions.search)}.`,
  );
  lines.push(
    `- **First-k**: the teacher shrunk uniformly into the bin, first-k weights (no search): ${describeSpec(result.specs.descriptions.firstK)}.`,
  );
  lines.push(
    `- **Random init**: ${s.randomShape === 'first-k' ? "the first-k sub-network's shape" : "the searched sub-network's shape"} with random weights: ${describeSpec(result.specs.descriptions.random)}.`,
  );
  lines.push(
    `- **Budget**: ${commas(s.steps)} steps × ${s.batchSize} × ${s.seqLen} tokens = ${commas(budgetTokens)} training tokens of ${s.trainData} per run; seeds ${s.seeds.join(', ')} ` +
      '(a seed fixes the data order, identical for every arm, and the random initialisation).',
  );
  lines.push(
    `- **KD**: loss = α·CE + (1 − α)·T²·KL, α = ${s.distill.alpha}, T = ${s.distill.temperature}, ${s.distill.direction} KL, from the teacher's full logits.`,
  );
  lines.push(
    `- **Evaluation**: curves every ${s.evalEvery} steps (and before training) on the first ${commas(s.evalTokens)} tokens of ${s.valData}; final perplexities on ${commas(s.finalEvalTokens)} tokens of ${s.valData} ` +
      `and ${commas(s.oodEvalTokens)} tokens of ${s.oodData} (out of domain); bits per byte = the same loss per UTF-8 byte of the scored text (docs/evaluation.md).`,
  );
  if (s.taskFiles.length) {
    lines.push(
      `- **Zero-shot tasks**: ${(t.tasks ?? []).map((x) => `${x.task} (${x.docs} documents)`).join(', ')}, lm-evaluation-harness task files scored by \`offshoot eval --tasks\` ` +
        '(the same log-likelihoods as `lm_eval --model hf` on the exported checkpoint); accuracy is acc_norm (length-normalised) where the task scores it.',
    );
  }
  lines.push(
    "- **FLOPs** (core/subnet counting, as the paper's v2): training 6N + 3·attention per token, plus the teacher's forward 2N + attention per token for KD arms; " +
      'N excludes the input embedding; evaluation and the search are not counted.',
  );
  lines.push(
    `- **Efficiency**: per seed, the target is the random-init (CE) run's perplexity at the end of its budget (its last curve point); an arm's tokens (FLOPs) to reach it are where its curve first gets there, ` +
      "interpolated in log perplexity between validation points; the ratio is the baseline's tokens (FLOPs) over the arm's. Mean ± std (min–max) over seeds.",
  );
  lines.push('');
  lines.push('## Results');
  lines.push('');
  lines.push(
    `| arm | parameters | val perplexity (${s.valData}) | val bits per byte | ${s.oodData} perplexity | ${s.oodData} bits per byte | tokens to reach random-init (CE) perplexity | token ratio | FLOPs to reach | FLOP ratio |`,
  );
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const a of analysis.arms) {
    lines.push(
      `| ${a.label} | ${commas(a.parameters)} | ${pm(a.val)} | ${pm(a.valBpb, 3)} | ${pm(a.ood)} | ${pm(a.oodBpb, 3)} | ${reachCell(a, 'tokens')} | ${ratioCell(a, 'tokens')} | ${reachCell(a, 'flops')} | ${ratioCell(a, 'flops')} |`,
    );
  }
  lines.push('');
  const tasks = analysis.arms[0]?.tasks ?? [];
  if (tasks.length) {
    lines.push('### Zero-shot tasks');
    lines.push('');
    lines.push('Accuracy, mean ± std over seeds (the teacher: one model).');
    lines.push('');
    lines.push(`| model | ${tasks.map((x) => `${x.task} (${x.metric}, ${x.docs} docs)`).join(' | ')} |`);
    lines.push(`| --- | ${tasks.map(() => '---:').join(' | ')} |`);
    const teacherTasks = summariseTasks([t]);
    lines.push(
      `| teacher | ${tasks.map((x) => teacherTasks.find((y) => y.task === x.task)?.stats.mean.toFixed(3) ?? '-').join(' | ')} |`,
    );
    for (const a of analysis.arms)
      lines.push(
        `| ${a.label} | ${tasks.map((x) => pm(a.tasks.find((y) => y.task === x.task)?.stats ?? stats([]), 3)).join(' | ')} |`,
      );
    lines.push('');
  }
  if (base)
    lines.push(
      `Budget of every arm: ${shortNumber(budgetTokens)} tokens; random init (CE) spends ${sci(base.budgetFlops)} FLOPs on it.`,
    );
  lines.push('');
  lines.push(`![validation perplexity vs tokens](${prefix}-tokens.svg)`);
  lines.push('');
  lines.push(`![validation perplexity vs FLOPs](${prefix}-flops.svg)`);
  lines.push('');
  lines.push("## The paper's claims at this scale");
  lines.push('');
  for (const c of analysis.claims)
    lines.push(`- ${c.holds ? '✅ holds' : '❌ does not hold'}: ${c.claim} — ${c.detail}.`);
  lines.push('');
  if (method?.tokenRatio.n && Number.isFinite(method.tokenRatio.mean)) {
    lines.push(
      `Headline: the evolutionary-search sub-network trained with KD reaches random initialisation's final perplexity with ${method.tokenRatio.mean.toFixed(2)}x ± ${method.tokenRatio.std.toFixed(2)} fewer tokens ` +
        `(paper: ${PAPER_GOALS.tokenRatio}x) and ${method.flopRatio.mean.toFixed(2)}x ± ${method.flopRatio.std.toFixed(2)} fewer FLOPs, teacher included (paper: ${PAPER_GOALS.flopRatio}x at 10B tokens).`,
    );
    lines.push('');
  }
  if (base && analysis.budgets.length) {
    lines.push('### Against shorter budgets');
    lines.push('');
    lines.push(
      "The same ratios had random init (CE) stopped earlier: the target is its perplexity at that point of its curve, and each arm's tokens (FLOPs) to reach it are read off the same curves. " +
        'Token ratio, mean ± std over seeds (FLOP ratio in brackets).',
    );
    lines.push('');
    lines.push(`| arm | ${analysis.budgets.map((b) => `${shortNumber(b.tokens)} tokens`).join(' | ')} |`);
    lines.push(`| --- | ${analysis.budgets.map(() => '---:').join(' | ')} |`);
    for (const a of analysis.arms) {
      if (a.arm === BASELINE_ARM) continue;
      const cells = analysis.budgets.map((b) => {
        const x = b.arms[a.arm];
        if (!x?.tokenRatio.n) return `not reached`;
        const r = (st: Stats) =>
          Number.isFinite(st.mean)
            ? `${st.mean.toFixed(2)}x${x.tokenRatio.n > 1 ? ` ± ${st.std.toFixed(2)}` : ''}`
            : '∞';
        return `${r(x.tokenRatio)} (${r(x.flopRatio)})${x.reached < x.seeds ? `, ${x.reached}/${x.seeds} seeds` : ''}`;
      });
      lines.push(`| ${a.label} | ${cells.join(' | ')} |`);
    }
    lines.push('');
  }
  lines.push('## Students');
  lines.push('');
  lines.push('| arm | shape | parameters | FLOPs per token (training + teacher) | val perplexity before training |');
  lines.push('| --- | --- | ---: | ---: | ---: |');
  for (const a of analysis.arms) {
    const shape =
      a.init === 'random'
        ? result.specs.descriptions.random
        : a.init === 'first-k'
          ? result.specs.descriptions.firstK
          : result.specs.descriptions.search;
    lines.push(
      `| ${a.label} | ${shape} | ${commas(a.parameters)} | ${sci(a.flopsPerToken.training)} + ${sci(a.flopsPerToken.teacher)} | ${pm(a.initialPpl)} |`,
    );
  }
  lines.push('');
  lines.push('## Per seed');
  lines.push('');
  lines.push(
    `| seed | arm | val perplexity | val bits per byte | ${s.oodData} perplexity | target (random CE) | tokens to reach | token ratio | FLOP ratio |`,
  );
  lines.push('| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |');
  for (const seed of s.seeds) {
    for (const a of analysis.arms) {
      const r = result.runs.find((x) => x && x.arm === a.arm && x.seed === seed);
      if (!r) continue;
      const e = a.efficiency.find((x) => x.seed === seed);
      const ratio = (v: number | null | undefined) => (v == null ? '-' : Number.isFinite(v) ? `${v.toFixed(2)}x` : '∞');
      lines.push(
        `| ${seed} | ${a.label} | ${r.final.val.valPpl.toFixed(2)} | ${r.final.val.valBpb.toFixed(3)} | ${r.final.ood.valPpl.toFixed(2)} | ${e ? e.target.toFixed(2) : '-'} | ${e?.tokens != null ? shortNumber(e.tokens) : 'not reached'} | ` +
          `${ratio(e?.tokenRatio)} | ${ratio(e?.flopRatio)} |`,
      );
    }
  }
  lines.push('');
  lines.push('## Configuration');
  lines.push('');
  lines.push('The configuration the command resolved (every default filled in):');
  lines.push('');
  lines.push('```yaml');
  lines.push(YAML.stringify(result.meta.config).trimEnd());
  lines.push('```');
  lines.push('');
  lines.push(
    `Raw numbers (every curve point, final evaluations, specs, FLOP counts): [${prefix}.json](${prefix}.json).`,
  );
  const markdown = `${lines.join('\n')}\n`;
  const files: Record<string, string> = {
    [`${prefix}.md`]: markdown,
    [`${prefix}-tokens.svg`]: chart(result, analysis, 'tokens'),
    [`${prefix}-flops.svg`]: chart(result, analysis, 'flops'),
    [`${prefix}.json`]: `${JSON.stringify(
      {
        result: {
          ...result,
          teacher: { ...result.teacher, dir: recordedPath(result.teacher.dir) },
          settings: { ...result.settings, taskFiles: result.settings.taskFiles.map(recordedPath) },
          runs: result.runs.map(({ checkpoint: _c, ...r }) => r),
        },
        analysis: { arms: analysis.arms, claims: analysis.claims },
      },
      null,
      2,
    )}\n`,
  };
  return { files, markdown, analysis };
}

export { BASELINE_ARM };
