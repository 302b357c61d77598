/**
 * `offshoot experiment paper-table` end to end on a tiny configuration (the smoke version of the
 * committed docs/results/paper-table run): the embedded stack (a real Temporal dev server and worker
 * processes) runs the paperTable workflow — teacher step, evolution child workflow, six arms × three
 * seeds of pretraining child workflows — and the command writes the table, the plots and the data.
 * The numbers must be consistent: the same budget for every arm, FLOPs from core/subnet's counting,
 * the table's figures equal to the raw results', bits per byte next to every perplexity, and a
 * zero-shot task (made from the corpus) scored on the teacher and every arm. The command stops what
 * it started.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, describe, expect, it } from 'vitest';

import { countShape } from '../core/subnet/index.js';
import { loadConfig } from '../core/model/index.js';
import { mean, std } from '../services/experiment/index.js';
import { PAPER_ARMS, type PaperTableResult } from '../workflows/index.js';
import { type CliExit, startOffshoot } from './helpers/orchestration.js';
import { writeNextSentenceTask } from './helpers/tasks.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-paper-table-'));
const children: ChildProcess[] = [];

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

const STEPS = 30;
const SEQ = 32;
const BATCH = 8;

const config = `
run: { name: smoke, seed: 1 }
storage: { root: ${JSON.stringify(path.join(tmp, 'runs'))} }
teacher:
  train: { preset: tiny, vocab: 300, steps: 60, batchSize: 8, seqLen: 32, evalTokens: 2048, warmup: 5 }
search:
  target: { bin: 8 }
  budget: 4
  population: 4
  fitness: { kind: zero-shot, seqLen: 32, evalTokens: 1024 }
pretrain: { steps: ${STEPS}, batchSize: ${BATCH}, seqLen: ${SEQ}, segmentSteps: ${STEPS}, checkpointEvery: ${STEPS}, evalEvery: 10, evalTokens: 1024, warmup: 5, finalEvalTokens: 2048 }
experiment:
  seeds: [1, 2, 3]
  oodEvalTokens: 2048
`;

function runCli(args: string[]): Promise<CliExit> {
  const run = startOffshoot(args, tmp);
  children.push(run.child);
  return run.done;
}

/** The pids of processes whose command line mentions `needle` (ours: the run's temporary folder). */
function processesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(needle)) pids.push(Number(e));
    } catch {
      // gone
    }
  }
  return pids;
}

describe('offshoot experiment paper-table (tiny configuration)', () => {
  it('runs six arms × three seeds as one workflow and writes a consistent table, plots and data', async () => {
    const configFile = path.join(tmp, 'paper-table.yaml');
    const taskFile = await writeNextSentenceTask(path.join(tmp, 'tasks'), { count: 12 });
    fs.writeFileSync(configFile, `${config}  tasks: [${JSON.stringify(taskFile)}]\n`);
    const out = path.join(tmp, 'results');
    const r = await runCli(['experiment', 'paper-table', '--config', configFile, '--out', out, '--json']);
    expect(r.code, r.stderr.slice(-4000)).toBe(0);
    const printed = JSON.parse(
      r.stdout
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .at(-1)!,
    ) as { files: string[]; result: PaperTableResult };
    const result = printed.result;

    // The files, in --out and in the run folder (written by the workflow's report activity).
    for (const name of ['paper-table.md', 'paper-table-tokens.svg', 'paper-table-flops.svg', 'paper-table.json']) {
      expect(fs.existsSync(path.join(out, name)), name).toBe(true);
      expect(fs.existsSync(path.join(tmp, 'runs', 'smoke', 'paper-table', name)), name).toBe(true);
    }
    const md = fs.readFileSync(path.join(out, 'paper-table.md'), 'utf8');
    expect(md).toContain(`npx offshoot experiment paper-table --config ${configFile} --out ${out} --json`);
    // The resolved configuration is recorded with the table.
    expect(md).toContain('```yaml\nexperiment:');
    expect(md).toContain('randomShape: search');
    for (const svgName of ['paper-table-tokens.svg', 'paper-table-flops.svg']) {
      const svg = fs.readFileSync(path.join(out, svgName), 'utf8');
      expect(svg.startsWith('<svg')).toBe(true);
      expect(svg.match(/<polyline class="series"/g)?.length).toBe(6);
      expect(svg).not.toMatch(/NaN|Infinity/);
    }

    // Six arms × three seeds, the same budget and evaluation points for every one.
    expect(result.runs.length).toBe(18);
    expect(new Set(result.runs.map((x) => `${x.arm}/${x.seed}`)).size).toBe(18);
    expect([...new Set(result.runs.map((x) => x.arm))].sort()).toEqual([...PAPER_ARMS].sort());
    const teacherConfig = loadConfig(result.teacher.dir);
    for (const x of result.runs) {
      expect(x.steps).toBe(STEPS);
      expect(x.tokens).toBe(STEPS * BATCH * SEQ);
      expect(x.curve.map((p) => p.step)).toEqual([0, 10, 20, 30]);
      // FLOPs: core/subnet's counting; KD arms add the teacher's forward pass per token.
      const student = loadConfig(x.checkpoint.dir);
      const counts = countShape(student, teacherConfig, { seqLen: SEQ });
      expect(x.flopsPerToken.training).toBe(counts.flopsPerToken.training);
      expect(x.flopsPerToken.teacher).toBe(x.arm.endsWith('-kd') ? counts.flopsPerToken.teacherForward : 0);
      expect(x.flops).toBeCloseTo(x.tokens * x.flopsPerToken.total, -2);
    }
    // Shapes: random init takes the searched winner's shape; sub-networks sit in the searched bin.
    const params = (arm: string) => result.runs.find((x) => x.arm === arm)!.parameters;
    expect(params('random-ce')).toBe(params('evo-kd'));
    expect(params('evo-ce')).toBe(result.search.best.parameters);
    for (const arm of ['evo-ce', 'firstk-ce']) {
      expect(params(arm)).toBeGreaterThanOrEqual(result.search.target.minParams);
      expect(params(arm)).toBeLessThanOrEqual(result.search.target.maxParams);
    }
    // Sub-networks start from the teacher's weights: the same step-0 point for every seed and for CE and KD.
    const zero = (arm: string) => result.runs.filter((x) => x.arm === arm).map((x) => x.curve[0].valPpl);
    expect(new Set([...zero('evo-ce'), ...zero('evo-kd')]).size).toBe(1);
    expect(Math.max(...zero('evo-ce'))).toBeLessThan(Math.min(...zero('random-ce')));

    // The table says what the raw numbers say.
    const data = JSON.parse(fs.readFileSync(path.join(out, 'paper-table.json'), 'utf8')) as {
      analysis: {
        arms: { arm: string; val: { mean: number; std: number }; efficiency: { tokenRatio: number | null }[] }[];
        claims: { claim: string; holds: boolean }[];
      };
    };
    for (const arm of PAPER_ARMS) {
      const ppls = result.runs.filter((x) => x.arm === arm).map((x) => x.final.val.valPpl);
      const a = data.analysis.arms.find((s) => s.arm === arm)!;
      expect(a.val.mean).toBeCloseTo(mean(ppls), 9);
      expect(a.val.std).toBeCloseTo(std(ppls), 9);
      const label = {
        'random-ce': 'random init (CE)',
        'random-kd': 'random init + KD',
        'firstk-ce': 'first-k sub-network (CE)',
        'firstk-kd': 'first-k sub-network + KD',
        'evo-ce': 'evolutionary-search sub-network (CE)',
        'evo-kd': 'evolutionary-search sub-network + KD',
      }[arm];
      expect(md).toContain(
        `| ${label} | ${a && result.runs.find((x) => x.arm === arm)!.parameters.toLocaleString('en-US')} | ${mean(ppls).toFixed(2)} ± ${std(ppls).toFixed(2)} |`,
      );
    }
    // Bits per byte next to every perplexity: the loss per byte of the same evaluation.
    for (const e of [
      ...result.runs.flatMap((x) => [x.final.val, x.final.ood]),
      result.teacher.val,
      result.teacher.ood,
    ]) {
      expect(e.bytes).toBeGreaterThan(e.tokens);
      expect(e.valBpb).toBeCloseTo((e.valLoss * e.tokens) / (Math.LN2 * e.bytes), 10);
    }
    expect(md).toMatch(
      /\| arm \| parameters \| val perplexity \(sotu:val\) \| val bits per byte \| mobydick perplexity \| mobydick bits per byte \|/,
    );
    // The task, on the teacher and on every run, and its table.
    expect(result.teacher.tasks?.map((t) => [t.task, t.docs])).toEqual([['sotu_next_sentence', 12]]);
    for (const x of result.runs) {
      const acc = x.final.tasks?.[0].metrics.acc_norm.value;
      expect(acc, x.name).toBeGreaterThanOrEqual(0);
      expect(acc, x.name).toBeLessThanOrEqual(1);
    }
    expect(md).toContain('### Zero-shot tasks');
    expect(md).toContain('| model | sotu_next_sentence (acc_norm, 12 docs) |');
    for (const arm of PAPER_ARMS) {
      const accs = result.runs.filter((x) => x.arm === arm).map((x) => x.final.tasks![0].metrics.acc_norm.value);
      const label = {
        'random-ce': 'random init (CE)',
        'random-kd': 'random init + KD',
        'firstk-ce': 'first-k sub-network (CE)',
        'firstk-kd': 'first-k sub-network + KD',
        'evo-ce': 'evolutionary-search sub-network (CE)',
        'evo-kd': 'evolutionary-search sub-network + KD',
      }[arm];
      expect(md).toContain(`| ${label} | ${mean(accs).toFixed(3)} ± ${std(accs).toFixed(3)} |`);
    }

    // The baseline's ratio is 1 by construction, in every seed.
    expect(data.analysis.arms.find((s) => s.arm === 'random-ce')!.efficiency.map((e) => e.tokenRatio)).toEqual([
      1, 1, 1,
    ]);
    expect(data.analysis.claims.length).toBeGreaterThanOrEqual(10);

    // What the command started is stopped: nothing runs on this test's folder any more (the Temporal dev
    // server and the teacher training name it on their command lines; the workers die with the command).
    expect(processesMentioning(tmp)).toEqual([]);
  }, 600_000);
});
