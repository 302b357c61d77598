/**
 * Fills docs/gpu-run.md's result tables from a run's results.jsonl: each table sits between
 * `<!-- gpu-run:NAME -->` and `<!-- /gpu-run:NAME -->`; a table without results keeps what it had (the
 * "not yet run on a GPU" placeholder). Every table lists the commands that made its figures.
 */
import * as fs from 'node:fs';

/** One JSON line of a run's results.jsonl: what a phase measured, with the command that made it. */
export type Result = Record<string, unknown> & { phase: string };

type Row = Record<string, unknown>;

const num = (v: unknown, digits = 0): string =>
  typeof v === 'number' && Number.isFinite(v)
    ? v.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })
    : '—';
const pct = (v: unknown): string => (typeof v === 'number' && Number.isFinite(v) ? `${(100 * v).toFixed(1)}%` : '—');
const mib = (v: unknown): string => (typeof v === 'number' ? num(v / 2 ** 20) : '—');
const yes = (v: unknown): string => (v === true ? 'yes' : v === false ? 'no' : '—');

function table(header: string[], rows: string[][], commands: string[]): string {
  const lines = [
    `| ${header.join(' | ')} |`,
    `| ${header.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ];
  const unique = [...new Set(commands.filter(Boolean))];
  if (unique.length) lines.push('', 'Commands:', '', ...unique.map((c) => `- \`${c}\``));
  return lines.join('\n');
}

const latest = (results: Result[], phase: string, key?: (r: Result) => string): Result[] => {
  const by = new Map<string, Result>();
  for (const r of results.filter((x) => x.phase === phase)) by.set(key ? key(r) : phase, r);
  return [...by.values()];
};

/** KD throughput with the student asking further ahead: "tokens/s (window N)". */
const deeperWindow = (w: Row | undefined): string =>
  w ? `${num(w.tokensPerSecond)} (window ${String(w.window)})` : '—';

/** Each section's markdown from the results, or undefined when it has none. */
export function renderSections(results: Result[]): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  const withMachine = results.filter((r) => r.machine);
  if (withMachine.length) {
    const m = withMachine[withMachine.length - 1].machine as Row;
    const backend = [...results].reverse().find((r) => typeof r.backend === 'string')?.backend;
    out.machine = `Measured on: GPU ${m.gpu ?? 'none (CPU)'}, ${m.cpus} CPU cores, Node.js ${m.node}, backend ${backend ?? '—'}; results from ${withMachine[0].at} to ${withMachine[withMachine.length - 1].at}.`;
  }
  const unpack = latest(results, 'unpack');
  if (unpack.length) {
    out.corpus = table(
      ['shards carried', 'training tokens', 'validation tokens', 'corpus (all shards)', 'tokenizer sha256'],
      unpack.map((r) => [
        String(r.shards),
        num((r.tokens as Row).train),
        num((r.tokens as Row).val),
        `${num((r.corpusTokens as Row).train)} + ${num((r.corpusTokens as Row).val)}`,
        `\`${String(r.tokenizerSha256).slice(0, 16)}…\``,
      ]),
      unpack.map((r) => String(r.command)),
    );
  }
  const teacher = results.filter((r) => r.phase === 'teacher');
  if (teacher.length) {
    out.teacher = table(
      ['call', 'steps', 'parameters', 'tokens/s', 'MFU', 'validation loss', 'seconds'],
      teacher.map((r, i) => [
        String(i + 1),
        `${r.stepsBefore} → ${r.stepsAfter} of ${r.steps}${r.finished ? '' : ' (stopped, checkpointed)'}`,
        num(r.parameters),
        num(r.tokensPerSecond),
        pct(r.mfu),
        num(r.finalValLoss, 3),
        num(r.seconds),
      ]),
      teacher.map((r) => String(r.command)),
    );
  }
  const tp = latest(results, 'throughput');
  if (tp.length) {
    out.throughput = table(
      [
        'student parameters',
        'without KD (tok/s)',
        "teacher's forward (tok/s)",
        'baseline 1/(1/CE + 1/forward)',
        'KD through the service (tok/s)',
        'ratio (goal ≥ 0.85)',
        'KD, more steps asked ahead (tok/s)',
        "KD, the teacher in the student's process (tok/s)",
        'service top-k alone (tok/s)',
        'service: forward and top-k / all its busy time (s)',
        'KD MFU',
      ],
      tp.map((r) => [
        num((r.student as Row).parameters),
        num(r.studentCeTokensPerSecond),
        num(r.teacherForwardTokensPerSecond),
        num(r.baselineTokensPerSecond),
        num(r.kdTokensPerSecond),
        `${num(r.ratio, 3)} (${r.goalMet ? 'met' : 'not met'})`,
        deeperWindow(r.kdDeeperWindow as Row | undefined),
        num(r.kdInProcessTokensPerSecond),
        num(r.serviceTopKTokensPerSecond),
        `${num((r.serviceMetrics as Row | undefined)?.computeSeconds, 2)} / ${num((r.serviceMetrics as Row | undefined)?.busySeconds, 2)}`,
        pct(r.kdMfu),
      ]),
      tp.map((r) => String(r.command)),
    );
  }
  const search = latest(results, 'search');
  if (search.length) {
    out.search = table(
      [
        'target',
        'evaluations',
        'failed',
        'seconds',
        'evaluations per hour',
        'best: parameters',
        'best: validation loss',
        'best: spec',
      ],
      search.map((r) => {
        const b = r.best as Row;
        return [
          String(r.target),
          num(r.evaluations),
          num(r.failed),
          num(r.seconds),
          num(r.evaluationsPerHour),
          num(b.parameters),
          num(b.fitness, 4),
          `\`${JSON.stringify(b.spec)}\``,
        ];
      }),
      search.map((r) => String(r.command)),
    );
  }
  const runs = latest(results, 'runs', (r) => String(r.arm));
  if (runs.length) {
    out.runs = table(
      ['arm', 'initialisation', 'loss', 'parameters', 'steps', 'tokens', 'tokens/s', 'MFU', 'last validation loss'],
      runs.map((r) => [
        String(r.arm),
        String(r.init),
        String(r.loss),
        num(r.parameters),
        `${r.stepsAfter} of ${r.steps}`,
        num(r.tokens),
        num(r.tokensPerSecond),
        pct(r.mfu),
        num(r.finalValLoss, 4),
      ]),
      runs.map((r) => String(r.command)),
    );
    const comparison = latest(results, 'comparison')[0];
    if (comparison) {
      const finals = comparison.final as Record<string, Row>;
      const ordering = comparison.ordering as string[];
      out.runs += `\n\nFinal evaluation, every arm on the same validation tokens after ${num(comparison.tokensPerArm)} training tokens:\n\n${table(
        ['arm', 'validation loss', 'perplexity', 'bits per byte', 'tokens'],
        ordering.map((arm) => [
          arm,
          num(finals[arm].loss, 4),
          num(finals[arm].ppl, 2),
          num(finals[arm].bpb, 4),
          num(finals[arm].tokens),
        ]),
        [String(comparison.command)],
      )}\n\nOrdering (best first): ${ordering.join(' < ')}; the paper's (the searched student with KD best) ${comparison.paperOrderingHolds ? 'holds' : 'does not hold'} here.`;
    }
    const steps = [...new Set(runs.flatMap((r) => (r.curve as { step: number }[]).map((c) => c.step)))].sort(
      (a, b) => a - b,
    );
    const at = (r: Result, step: number) =>
      (r.curve as { step: number; valLoss: number }[]).find((c) => c.step === step)?.valLoss;
    out.curves = table(
      ['step', ...runs.map((r) => String(r.arm))],
      steps.map((s) => [String(s), ...runs.map((r) => num(at(r, s), 4))]),
      [],
    );
    out.memory = table(
      [
        'arm',
        'process (steps)',
        'series',
        'floor after warm-up (MiB)',
        'floor at the end (MiB)',
        'growth',
        'peak (MiB)',
        'samples',
      ],
      runs.flatMap((r) => {
        const m = r.memory as { fromStep: number; toStep: number; series: Record<string, Row> } | null;
        if (!m) return [];
        return Object.entries(m.series).map(([series, v]) => [
          String(r.arm),
          `${m.fromStep} → ${m.toStep}`,
          series,
          mib(v.floorAfterWarmup),
          mib(v.floorAtEnd),
          `${num(v.growthPct, 1)}%`,
          mib(v.peak),
          num(r.memorySamples),
        ]);
      }),
      [],
    );
  }
  const faults = latest(results, 'faults');
  if (faults.length) {
    out.faults = table(
      [
        'teacher service killed at step',
        'down (s)',
        'pretraining killed at step',
        'last checkpoint',
        'resumed from step',
        'steps compared',
        'largest loss difference from the uninterrupted run: before the faults',
        'after the resume',
        'resumed against killed process, same steps',
        'tolerance',
        'curve joins',
      ],
      faults.map((r) => [
        num(r.teacherServiceKilledAtStep),
        num(r.serviceDownSeconds, 1),
        num(r.pretrainKilledAtStep),
        num(r.lastCheckpointBeforeKill),
        num(r.resumedFromStep),
        num(r.stepsCompared),
        num(r.maxAbsLossDiffBeforeFaults, 5),
        num(r.maxAbsLossDiffAfterResume, 5),
        r.rerunSteps === undefined
          ? '—'
          : `${num(r.maxAbsLossDiffRerun, 5)} (steps ${(r.rerunSteps as number[]).join(', ')})`,
        num(r.tolerance, 4),
        yes(r.curveJoins),
      ]),
      faults.map((r) => String(r.command)),
    );
  }
  return out;
}

/** Replaces each marked section of `docFile` that has results. */
export function renderDoc(results: Result[], docFile: string): void {
  let doc = fs.readFileSync(docFile, 'utf8');
  for (const [name, body] of Object.entries(renderSections(results))) {
    if (body === undefined) continue;
    const re = new RegExp(`(<!-- gpu-run:${name} -->\\n)[\\s\\S]*?(\\n<!-- /gpu-run:${name} -->)`);
    if (!re.test(doc)) throw new Error(`${docFile}: no section <!-- gpu-run:${name} --> … <!-- /gpu-run:${name} -->`);
    doc = doc.replace(re, (_m, open: string, close: string) => `${open}${body}${close}`);
  }
  fs.writeFileSync(docFile, doc);
}
