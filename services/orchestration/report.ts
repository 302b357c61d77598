/** The results table of a pipeline run: JSON and Markdown files, and the text the CLI prints. */
import * as path from 'node:path';

import { writeFileAtomicSync } from '../../core/model/index.js';
import type { PipelineResult } from '../../workflows/index.js';

function sci(x: number): string {
  if (!Number.isFinite(x)) return '-';
  if (x === 0) return '0';
  const e = Math.floor(Math.log10(Math.abs(x)));
  return `${(x / 10 ** e).toFixed(2)}e${e}`;
}

function commas(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** The results table: one row per student (the searched one first), as Markdown. */
export function resultsTable(result: Omit<PipelineResult, 'report'>): string {
  const lines = [
    '| model | initialisation | parameters | val perplexity | val bits per byte | val loss | pretraining tokens | pretraining FLOPs |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of result.rows) {
    lines.push(
      `| ${r.name} | ${r.init} | ${commas(r.parameters)} | ${r.valPpl.toFixed(2)} | ${r.valBpb.toFixed(4)} | ${r.valLoss.toFixed(4)} | ${commas(r.tokens)} | ${sci(r.flops)} |`,
    );
  }
  return lines.join('\n');
}

export function reportMarkdown(result: Omit<PipelineResult, 'report'>): string {
  const student = result.rows.find((r) => r.name === 'student');
  const lines = [
    `# offshoot run ${result.runId}`,
    '',
    `Teacher: ${result.teacher.dir} (${commas(result.teacher.parameters)} parameters, sha256 ${result.teacher.hash.slice(0, 12)}…${result.teacher.valLoss !== undefined ? `, val perplexity ${Math.exp(result.teacher.valLoss).toFixed(2)}` : ''}${result.teacher.valBpb !== undefined ? `, ${result.teacher.valBpb.toFixed(4)} bits per byte` : ''}).`,
    '',
    `Search: ${result.search.evaluations} evaluations (seed ${result.search.seed}, ${result.search.runs} workflow run${result.search.runs === 1 ? '' : 's'}, ${sci(result.search.flops)} FLOPs); ` +
      `best: ${result.search.best.description ?? result.search.best.key} (fitness ${result.search.best.fitness?.toFixed(4)}).`,
    '',
    resultsTable(result),
    '',
  ];
  if (student) {
    for (const r of result.rows) {
      if (r === student) continue;
      lines.push(
        `- student vs ${r.name}: perplexity ${student.valPpl.toFixed(2)} vs ${r.valPpl.toFixed(2)}, ${student.valBpb.toFixed(4)} vs ${r.valBpb.toFixed(4)} bits per byte ` +
          `(${student.valPpl < r.valPpl ? 'better' : 'not better'}) at the same ${commas(r.tokens)} pretraining tokens.`,
      );
    }
    lines.push(
      '- Bits per byte: the validation loss per UTF-8 byte of the scored text (docs/evaluation.md), comparable across tokenizers.',
    );
    lines.push(
      `- FLOPs count the student's training (6N per token plus attention) and the teacher's forward passes for distillation; the search spent ${sci(student.searchFlops ?? 0)} more.`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Writes <runDir>/report.json and report.md. */
export function writeReportFiles(
  runDir: string,
  result: Omit<PipelineResult, 'report'>,
): { json: string; markdown: string } {
  const json = path.join(runDir, 'report.json');
  const markdown = path.join(runDir, 'report.md');
  writeFileAtomicSync(json, `${JSON.stringify(result, null, 2)}\n`);
  writeFileAtomicSync(markdown, reportMarkdown(result));
  return { json, markdown };
}
