/**
 * Analysis of a paper-table experiment (pure: no files, no clock).
 *
 * - Final perplexity and bits per byte of each arm: mean ± sample standard deviation over seeds, on the
 *   validation corpus and on the out-of-domain corpus (the final evaluations, `finalEvalTokens` /
 *   `oodEvalTokens`), and each zero-shot task's accuracy (acc_norm where scored) when tasks were run.
 * - Efficiency, per seed, paired with the random-init (CE) run of the same seed (same data order): the
 *   target is that run's perplexity at the end of its budget, read from its validation curve; an arm's
 *   tokens (FLOPs) to reach it are where its curve first gets there, interpolated linearly in log
 *   perplexity between validation points. The ratio is the baseline's tokens (FLOPs) to its own final
 *   perplexity over the arm's. Curves and target use the same validation tokens (`evalTokens`).
 * - The paper's claims as checks on the means: evolutionary search + KD best, sub-network
 *   initialisations better than random, KD helping, search better than first-k.
 */
import { ARM_INFO, type PaperArm, type PaperRun, type PaperTableResult } from '../../workflows/paper-table.js';
import type { TaskAccuracy } from '../../workflows/index.js';

export const BASELINE_ARM: PaperArm = 'random-ce';
export const METHOD_ARM: PaperArm = 'evo-kd';
/** The paper's headline efficiency figures (arXiv 2510.07227): v1's tokens, v2's FLOPs at 10B tokens. */
export const PAPER_GOALS = { tokenRatio: 9.2, flopRatio: 5.16 } as const;

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

/** Sample standard deviation (n − 1); 0 for a single value. */
export function std(xs: readonly number[]): number {
  if (xs.length < 2) return xs.length ? 0 : NaN;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1));
}

export interface Stats {
  mean: number;
  std: number;
  min: number;
  max: number;
  n: number;
  values: number[];
}

/** Summary of values; with an infinite value the mean is Infinity and the std NaN. */
export function stats(xs: readonly number[]): Stats {
  const finite = xs.every(Number.isFinite);
  return {
    mean: mean(xs),
    std: finite ? std(xs) : NaN,
    min: xs.length ? Math.min(...xs) : NaN,
    max: xs.length ? Math.max(...xs) : NaN,
    n: xs.length,
    values: [...xs],
  };
}

/** "4.20x ± 0.30 (min 3.90x, max 4.50x)"; infinite values (reached at initialisation) shown as ∞. */
export function ratioText(s: Stats): string {
  const x = (v: number) => (Number.isFinite(v) ? `${v.toFixed(2)}x` : '∞');
  if (!Number.isFinite(s.mean))
    return `∞ in ${s.values.filter((v) => !Number.isFinite(v)).length} of ${s.n} seeds (min ${x(s.min)}, max ${x(s.max)})`;
  return `${s.mean.toFixed(2)}x ± ${s.std.toFixed(2)} (min ${x(s.min)}, max ${x(s.max)})`;
}

export interface CurvePoint {
  x: number;
  ppl: number;
}

/**
 * Where a curve first reaches `target` (perplexity at or below it): the x of the first such point,
 * interpolated linearly in log perplexity from the point before; null when it never does.
 */
export function reachAt(curve: readonly CurvePoint[], target: number): number | null {
  for (let i = 0; i < curve.length; i++) {
    if (curve[i].ppl > target) continue;
    if (i === 0) return curve[0].x;
    const a = curve[i - 1];
    const b = curve[i];
    const la = Math.log(a.ppl);
    const lb = Math.log(b.ppl);
    const f = la === lb ? 1 : (la - Math.log(target)) / (la - lb);
    return a.x + Math.min(1, Math.max(0, f)) * (b.x - a.x);
  }
  return null;
}

/** A run's validation curve with tokens or FLOPs (training + teacher forward) on the x axis. */
export function runCurve(run: PaperRun, tokensPerStep: number, axis: 'tokens' | 'flops'): CurvePoint[] {
  return run.curve.map((e) => {
    const tokens = e.step * tokensPerStep;
    return { x: axis === 'tokens' ? tokens : tokens * run.flopsPerToken.total, ppl: e.valPpl };
  });
}

export interface SeedEfficiency {
  seed: number;
  /** The random-init (CE) run's perplexity at the end of its budget (its last validation point). */
  target: number;
  baselineTokens: number;
  baselineFlops: number;
  /** null: not reached within the budget. */
  tokens: number | null;
  flops: number | null;
  tokenRatio: number | null;
  flopRatio: number | null;
}

export interface ArmSummary {
  arm: PaperArm;
  label: string;
  distill: boolean;
  init: 'random' | 'first-k' | 'search';
  parameters: number;
  seeds: number[];
  budgetTokens: number;
  budgetFlops: number;
  flopsPerToken: PaperRun['flopsPerToken'];
  val: Stats;
  ood: Stats;
  /** Bits per byte of the final evaluations (comparable across tokenizers). */
  valBpb: Stats;
  oodBpb: Stats;
  valLoss: Stats;
  /** Zero-shot task scores over seeds: each task's headline metric (taskHeadline). */
  tasks: TaskSummary[];
  /** Validation perplexity before any training (step 0), mean over seeds. */
  initialPpl: Stats;
  /** Per seed, paired with the random-init (CE) run of the same seed. Ratios: Infinity when reached at step 0, null when not reached. */
  efficiency: SeedEfficiency[];
  /** Over the seeds that reached the target. */
  tokens: Stats;
  flops: Stats;
  tokenRatio: Stats;
  flopRatio: Stats;
  reached: number;
}

export interface TaskSummary {
  task: string;
  metric: string;
  docs: number;
  stats: Stats;
}

/** The metric a task is summarised by: acc_norm (length-normalised, the paper tables' usual choice) when scored, else acc, else the first. */
export function taskHeadline(metrics: Record<string, unknown>): string {
  return 'acc_norm' in metrics ? 'acc_norm' : 'acc' in metrics ? 'acc' : Object.keys(metrics)[0];
}

/** Each task's headline metric over runs (tasks in the order of the first run). */
export function summariseTasks(runs: readonly { tasks?: TaskAccuracy[] }[]): TaskSummary[] {
  const first = runs[0]?.tasks ?? [];
  return first.map((t) => {
    const metric = taskHeadline(t.metrics);
    const values = runs
      .map((r) => r.tasks?.find((x) => x.task === t.task)?.metrics[metric]?.value)
      .filter((v): v is number => v !== undefined);
    return { task: t.task, metric, docs: t.docs, stats: stats(values) };
  });
}

export interface Claim {
  claim: string;
  holds: boolean;
  detail: string;
}

/** Efficiency against shorter budgets of the baseline, read off the same curves. */
export interface BudgetPoint {
  /** Fraction of the budget, and the baseline's tokens there. */
  fraction: number;
  step: number;
  tokens: number;
  /** Per arm: token and FLOP ratios over seeds (seeds that reached the baseline's perplexity at that budget). */
  arms: Record<string, { tokenRatio: Stats; flopRatio: Stats; reached: number; seeds: number }>;
}

export interface PaperTableAnalysis {
  arms: ArmSummary[];
  /** The ratios had the baseline stopped at 1/4, 1/2, 3/4 of its budget (and the whole of it). */
  budgets: BudgetPoint[];
  claims: Claim[];
  method?: ArmSummary;
  baseline?: ArmSummary;
  /** The mean curve of each arm (mean validation loss over seeds at each step, as perplexity), with min/max. */
  curves: Record<string, { step: number; tokens: number; flops: number; ppl: number; min: number; max: number }[]>;
}

export function analysePaperTable(result: PaperTableResult): PaperTableAnalysis {
  const tps = result.settings.tokensPerStep;
  const byArm = new Map<PaperArm, PaperRun[]>();
  for (const r of result.runs) {
    if (!r) continue;
    byArm.set(r.arm, [...(byArm.get(r.arm) ?? []), r]);
  }
  for (const runs of byArm.values()) runs.sort((a, b) => a.seed - b.seed);
  const baselineRuns = new Map((byArm.get(BASELINE_ARM) ?? []).map((r) => [r.seed, r]));

  const arms: ArmSummary[] = [];
  const curves: PaperTableAnalysis['curves'] = {};
  for (const arm of result.settings.arms) {
    const runs = byArm.get(arm) ?? [];
    if (!runs.length) continue;
    const efficiency: SeedEfficiency[] = [];
    for (const r of runs) {
      const base = baselineRuns.get(r.seed);
      if (!base?.curve.length) continue;
      const target = base.curve[base.curve.length - 1].valPpl;
      const baselineTokens = reachAt(runCurve(base, tps, 'tokens'), target)!;
      const baselineFlops = reachAt(runCurve(base, tps, 'flops'), target)!;
      const tokens = reachAt(runCurve(r, tps, 'tokens'), target);
      const flops = reachAt(runCurve(r, tps, 'flops'), target);
      efficiency.push({
        seed: r.seed,
        target,
        baselineTokens,
        baselineFlops,
        tokens,
        flops,
        // Reached before any training (the initialisation alone beats the baseline's end): unbounded.
        tokenRatio: tokens === null ? null : tokens > 0 ? baselineTokens / tokens : Infinity,
        flopRatio: flops === null ? null : flops > 0 ? baselineFlops / flops : Infinity,
      });
    }
    const reachedRows = efficiency.filter((e) => e.tokens !== null);
    const info = ARM_INFO[arm];
    arms.push({
      arm,
      label: info.label,
      distill: info.distill,
      init: info.init,
      parameters: runs[0].parameters,
      seeds: runs.map((r) => r.seed),
      budgetTokens: runs[0].tokens,
      budgetFlops: runs[0].flops,
      flopsPerToken: runs[0].flopsPerToken,
      val: stats(runs.map((r) => r.final.val.valPpl)),
      ood: stats(runs.map((r) => r.final.ood.valPpl)),
      valBpb: stats(runs.map((r) => r.final.val.valBpb)),
      oodBpb: stats(runs.map((r) => r.final.ood.valBpb)),
      tasks: summariseTasks(runs.map((r) => r.final)),
      valLoss: stats(runs.map((r) => r.final.val.valLoss)),
      initialPpl: stats(runs.map((r) => r.curve[0].valPpl)),
      efficiency,
      reached: reachedRows.length,
      tokens: stats(reachedRows.map((e) => e.tokens!)),
      flops: stats(reachedRows.map((e) => e.flops!)),
      tokenRatio: stats(reachedRows.filter((e) => e.tokenRatio !== null).map((e) => e.tokenRatio!)),
      flopRatio: stats(reachedRows.filter((e) => e.flopRatio !== null).map((e) => e.flopRatio!)),
    });
    // Mean curve: steps common to every seed.
    const steps = runs[0].curve.map((e) => e.step).filter((s) => runs.every((r) => r.curve.some((e) => e.step === s)));
    curves[arm] = steps.map((step) => {
      const losses = runs.map((r) => r.curve.find((e) => e.step === step)!.valLoss);
      const ppls = losses.map(Math.exp);
      const tokens = step * tps;
      return {
        step,
        tokens,
        flops: tokens * runs[0].flopsPerToken.total,
        ppl: Math.exp(mean(losses)),
        min: Math.min(...ppls),
        max: Math.max(...ppls),
      };
    });
  }

  const get = (a: PaperArm) => arms.find((s) => s.arm === a);
  const claims: Claim[] = [];
  const fmt = (s: ArmSummary) => `${s.val.mean.toFixed(2)} ± ${s.val.std.toFixed(2)}`;
  const better = (a: PaperArm, b: PaperArm, claim: string) => {
    const x = get(a);
    const y = get(b);
    if (!x || !y) return;
    const paired = x.seeds.filter((s) => y.seeds.includes(s));
    const wins = paired.filter((s) => {
      const rx = result.runs.find((r) => r && r.arm === a && r.seed === s)!;
      const ry = result.runs.find((r) => r && r.arm === b && r.seed === s)!;
      return rx.final.val.valPpl < ry.final.val.valPpl;
    }).length;
    claims.push({
      claim,
      holds: x.val.mean < y.val.mean,
      detail: `${x.label} ${fmt(x)} vs ${y.label} ${fmt(y)}; lower in ${wins} of ${paired.length} seeds`,
    });
  };
  const method = get(METHOD_ARM);
  if (method) {
    const others = arms.filter((s) => s !== method);
    const bestOther = others.reduce<ArmSummary | undefined>(
      (b, s) => (!b || s.val.mean < b.val.mean ? s : b),
      undefined,
    );
    if (bestOther) {
      claims.push({
        claim: 'evolutionary-search sub-network + KD is the best arm (lowest validation perplexity)',
        holds: method.val.mean < bestOther.val.mean,
        detail: `${method.label} ${fmt(method)}; next best: ${bestOther.label} ${fmt(bestOther)}`,
      });
    }
  }
  better(
    'firstk-ce',
    'random-ce',
    'sub-network initialisation beats random initialisation: first-k (CE) < random (CE)',
  );
  better('evo-ce', 'random-ce', 'sub-network initialisation beats random initialisation: search (CE) < random (CE)');
  better(
    'firstk-kd',
    'random-kd',
    'sub-network initialisation beats random initialisation: first-k + KD < random + KD',
  );
  better('evo-kd', 'random-kd', 'sub-network initialisation beats random initialisation: search + KD < random + KD');
  better('random-kd', 'random-ce', 'KD helps: random + KD < random (CE)');
  better('firstk-kd', 'firstk-ce', 'KD helps: first-k + KD < first-k (CE)');
  better('evo-kd', 'evo-ce', 'KD helps: search + KD < search (CE)');
  better('evo-ce', 'firstk-ce', 'search beats first-k: search (CE) < first-k (CE)');
  better('evo-kd', 'firstk-kd', 'search beats first-k: search + KD < first-k + KD');
  if (method && get(BASELINE_ARM)) {
    const t = method.tokenRatio;
    const f = method.flopRatio;
    const seeds = method.efficiency.length;
    claims.push({
      claim: `token efficiency of search + KD over random init (CE) ≥ ${PAPER_GOALS.tokenRatio}x (paper v1)`,
      holds: method.reached === seeds && t.n > 0 && t.mean >= PAPER_GOALS.tokenRatio,
      detail: t.n
        ? `${ratioText(t)}; reached in ${method.reached} of ${seeds} seeds`
        : `target not reached in any of ${seeds} seeds`,
    });
    claims.push({
      claim: `FLOP efficiency of search + KD over random init (CE), teacher forward passes included, ≥ 5x (paper v2: ${PAPER_GOALS.flopRatio}x at 10B tokens)`,
      holds: method.reached === seeds && f.n > 0 && f.mean >= 5,
      detail: f.n ? ratioText(f) : `target not reached in any of ${seeds} seeds`,
    });
  }
  // The same ratios against shorter baseline budgets: does the advantage shrink as the budget grows?
  const budgets: BudgetPoint[] = [];
  const every = result.settings.evalEvery;
  for (const fraction of [0.25, 0.5, 0.75, 1]) {
    const step = Math.max(every, Math.round((fraction * result.settings.steps) / every) * every);
    const point: BudgetPoint = { fraction, step, tokens: step * tps, arms: {} };
    for (const a of arms) {
      const tokenRatios: number[] = [];
      const flopRatios: number[] = [];
      let seeds = 0;
      for (const r of byArm.get(a.arm) ?? []) {
        const base = baselineRuns.get(r.seed);
        const at = base?.curve.find((e) => e.step === step);
        if (!base || !at) continue;
        seeds++;
        const upTo = (run: PaperRun, axis: 'tokens' | 'flops') =>
          runCurve({ ...run, curve: run.curve.filter((e) => e.step <= step) }, tps, axis);
        const bt = reachAt(upTo(base, 'tokens'), at.valPpl)!;
        const bf = reachAt(upTo(base, 'flops'), at.valPpl)!;
        const t = reachAt(runCurve(r, tps, 'tokens'), at.valPpl);
        const f = reachAt(runCurve(r, tps, 'flops'), at.valPpl);
        if (t === null || f === null) continue;
        tokenRatios.push(t > 0 ? bt / t : Infinity);
        flopRatios.push(f > 0 ? bf / f : Infinity);
      }
      point.arms[a.arm] = {
        tokenRatio: stats(tokenRatios),
        flopRatio: stats(flopRatios),
        reached: tokenRatios.length,
        seeds,
      };
    }
    budgets.push(point);
  }
  return { arms, budgets, claims, method, baseline: get(BASELINE_ARM), curves };
}
