/** `offshoot export`: any checkpoint as a plain GPT-NeoX checkpoint transformers loads (docs/evaluation.md#export). */
import { type Command, Option } from 'commander';

import { type ExportCheckpointResult, type SaveDtype, exportCheckpoint } from '../../core/model/index.js';

function commas(n: number): string {
  return n.toLocaleString('en-US');
}

/** The export's report as lines of text. */
export function describeExport(r: ExportCheckpointResult): string[] {
  const p = r.padding;
  const c = r.config;
  const lines = [
    `exported ${r.source.dir} to ${r.out} (GPTNeoXForCausalLM, sha256 ${r.hash.slice(0, 12)}…)`,
    `  shape: ${c.numLayers} layers, width ${c.hiddenSize}, ${p.numHeads} heads of ${p.headSize}, MLP ${p.intermediateSize}, in every layer`,
  ];
  if (p.parameters.added === 0) {
    lines.push(
      `  padding: none (${commas(p.parameters.model)} parameters; transformers could load the model as it was)`,
    );
    return lines;
  }
  const share = ((100 * p.parameters.added) / p.parameters.model).toFixed(1);
  lines.push(
    `  padding: +${commas(p.parameters.added)} parameters (+${share}%): ${commas(p.parameters.model)} -> ${commas(p.parameters.exported)}`,
  );
  p.layers.forEach((l, i) => {
    const parts = [];
    if (l.addedHeads)
      parts.push(`+${l.addedHeads} zero head${l.addedHeads === 1 ? '' : 's'} (${l.numHeads} -> ${p.numHeads})`);
    if (l.addedNeurons)
      parts.push(`+${l.addedNeurons} zero MLP neurons (${l.intermediateSize} -> ${p.intermediateSize})`);
    lines.push(`    layer ${i}: ${parts.length ? parts.join(', ') : 'nothing added'}`);
  });
  if (p.exact) lines.push('  exact: only zero rows and columns were added; transformers computes the same logits');
  else {
    lines.push(
      `  head size ${p.headSize - p.addedHeadDims} -> ${p.headSize} (zero dims; the width ${c.hiddenSize} is no multiple of ${p.headSize - p.addedHeadDims}): ` +
        `query weights × ${p.queryScale.toFixed(6)} keep the attention scale, so the logits equal the model's up to float32 rounding`,
    );
  }
  return lines;
}

export function registerExportCommand(program: Command): void {
  program
    .command('export')
    .description(
      'a checkpoint (any student: uniform, layer-wise, granular) as a plain GPT-NeoX checkpoint that transformers loads with no custom code',
    )
    .requiredOption('--model <dir>', 'checkpoint directory to export')
    .requiredOption('--out <dir>', 'directory to write (replaced atomically)')
    .addOption(
      new Option('--dtype <dtype>', 'precision of the written weights')
        .choices(['float32', 'bfloat16'])
        .default('float32'),
    )
    .option('--json', 'print the result as one JSON object')
    .action(async (opts: { model: string; out: string; dtype: SaveDtype; json?: boolean }) => {
      const result = await exportCheckpoint({ model: opts.model, out: opts.out, dtype: opts.dtype });
      if (opts.json) console.log(JSON.stringify(result));
      else console.log(describeExport(result).join('\n'));
    });
}
