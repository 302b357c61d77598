/** `offshoot subnet extract|count|bins`: sub-networks of a teacher checkpoint (docs/subnetworks.md). */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type Command, InvalidArgumentError, Option } from 'commander';

import {
  DEFAULT_TRAIN_CORPUS,
  TOKENIZER_FILE,
  defaultTokenStore,
  loadTokenizer,
  openData,
  sampleBatch,
} from '../../core/data/index.js';
import { type SaveDtype, loadConfig } from '../../core/model/index.js';
import {
  CALIBRATION_SEED,
  DEFAULT_BIN_COUNT,
  HEAD_ORDERS,
  LAYER_ORDERS,
  type HeadOrder,
  type LayerOrder,
  SPACE_KINDS,
  type SpaceChoices,
  type SpaceKind,
  canonicalHash,
  canonicalize,
  checkStudentOutput,
  compactSpec,
  countSubnet,
  describeCanonical,
  extractCheckpoint,
  formatParams,
  needsImportance,
  parameterBins,
  spaceParamRange,
} from '../../core/subnet/index.js';
import { withBackend } from './backend-option.js';
import { positiveInt } from './common.js';

/**
 * A spec from a file, or inline JSON when the argument starts with "{". A subnet.json written by
 * `subnet extract` is accepted too (its `spec`).
 */
export function readSpecArgument(value: string): unknown {
  const inline = value.trim().startsWith('{');
  let text: string;
  if (inline) text = value;
  else {
    try {
      text = fs.readFileSync(value, 'utf8');
    } catch (err) {
      throw new Error(
        `--spec ${value}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
      );
    }
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`--spec ${inline ? '(inline)' : value}: invalid JSON (${(err as Error).message})`);
  }
  if (raw && typeof raw === 'object' && !Array.isArray(raw) && 'spec' in raw && 'hash' in raw)
    return (raw as { spec: unknown }).spec;
  return raw;
}

function readJsonArgument(name: string, value: string): unknown {
  const text = value.trim().startsWith('{') ? value : fs.readFileSync(value, 'utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(`${name}: invalid JSON (${(err as Error).message})`);
  }
}

interface ExtractCliOptions {
  teacher: string;
  spec: string;
  out: string;
  order: HeadOrder;
  layers: LayerOrder;
  calibration: string;
  calibrationBatch: number;
  calibrationSeqLen?: number;
  tokenizer?: string;
  exportTransformers?: boolean;
  dtype: SaveDtype;
  force?: boolean;
  json?: boolean;
}

async function extractAction(opts: ExtractCliOptions): Promise<void> {
  // Before any work: where the student goes must not hold anything offshoot would destroy.
  checkStudentOutput(opts.out, opts.teacher, opts.force);
  const spec = readSpecArgument(opts.spec);
  let calibration: { input: Int32Array; batchSize: number; seqLen: number } | undefined;
  if (needsImportance(opts)) {
    const tokPath =
      opts.tokenizer ?? (fs.existsSync(path.join(opts.teacher, TOKENIZER_FILE)) ? opts.teacher : undefined);
    if (!tokPath)
      throw new Error(
        `importance ordering tokenises --calibration ${opts.calibration}, but ${opts.teacher} has no tokenizer.json; pass --tokenizer`,
      );
    const tokenizer = await loadTokenizer(tokPath);
    const config = loadConfig(opts.teacher);
    const seqLen = opts.calibrationSeqLen ?? Math.min(config.maxPositions, 64);
    if (seqLen > config.maxPositions)
      throw new Error(`--calibration-seq-len ${seqLen} exceeds the teacher's context of ${config.maxPositions}`);
    const corpus = await openData(opts.calibration, tokenizer, { cacheDir: defaultTokenStore() });
    calibration = sampleBatch(corpus, { batchSize: opts.calibrationBatch, seqLen, seed: CALIBRATION_SEED, step: 0 });
    corpus.close();
    process.stderr.write(`calibration: ${opts.calibrationBatch}×${seqLen} tokens of ${corpus.spec}\n`);
  }
  const result = await extractCheckpoint({
    teacher: opts.teacher,
    spec,
    out: opts.out,
    order: opts.order,
    layers: opts.layers,
    calibration,
    exportTransformers: opts.exportTransformers,
    dtype: opts.dtype,
    force: opts.force,
    tokenizer: opts.tokenizer,
  });
  if (!result.tokenizer) {
    process.stderr.write(
      `note: ${opts.teacher} has no ${TOKENIZER_FILE}, so the student has none either; training or evaluating it needs one (pass --tokenizer FILE to put one in it)\n`,
    );
  }
  const teacherParams = countSubnet(loadConfig(opts.teacher), {}).parameters;
  if (opts.json) {
    console.log(
      JSON.stringify({
        out: result.out,
        checkpointHash: result.checkpointHash,
        specHash: result.specHash,
        parameters: result.parameters,
        teacherParameters: teacherParams,
        spec: result.spec,
        tokenizer: result.tokenizer,
        transformersCompatible: result.transformersIncompatibility === null,
        transformersIncompatibility: result.transformersIncompatibility,
      }),
    );
  } else {
    console.log(
      `${describeCanonical(result.canonical)}: ${result.parameters.toLocaleString('en-US')} parameters ` +
        `(${((100 * result.parameters) / teacherParams).toFixed(1)}% of the teacher) -> ${result.out}`,
    );
    console.log(`spec sha256 ${result.specHash}; checkpoint sha256 ${result.checkpointHash}`);
    if (result.transformersIncompatibility)
      console.log(`note: offshoot config keys written (${result.transformersIncompatibility})`);
  }
}

interface CountCliOptions {
  teacher: string;
  spec: string;
  seqLen?: number;
  causal?: boolean;
  json?: boolean;
}

function countAction(opts: CountCliOptions): void {
  const teacher = loadConfig(opts.teacher);
  const spec = readSpecArgument(opts.spec);
  const canonical = canonicalize(spec, teacher);
  const count = countSubnet(teacher, spec, { seqLen: opts.seqLen, causal: opts.causal });
  if (opts.json) {
    console.log(JSON.stringify({ specHash: canonicalHash(canonical), spec: compactSpec(canonical), ...count }));
    return;
  }
  const f = count.flopsPerToken;
  const n = (x: number) => x.toLocaleString('en-US', { maximumFractionDigits: 0 });
  console.log(describeCanonical(canonical));
  console.log(
    `parameters          ${n(count.parameters)} (${(100 * count.fraction).toFixed(2)}% of the teacher's ${n(count.teacherParameters)})`,
  );
  console.log(`  embeddings        ${n(count.embeddingParameters)}; non-embedding ${n(count.nonEmbeddingParameters)}`);
  console.log(
    `FLOPs per token at sequence length ${count.seqLen}${count.causal ? ' (causal attention averaging)' : ''}:`,
  );
  console.log(`  forward           ${n(f.forward)} (2·${n(f.flopParameters)} + attention ${n(f.attentionForward)})`);
  console.log(`  training          ${n(f.training)}`);
  console.log(`  teacher forward   ${n(f.teacherForward)}`);
  console.log(`  training with KD  ${n(f.distillationTraining)}`);
}

interface BinsCliOptions {
  teacher: string;
  space: SpaceKind;
  bins: number;
  log?: boolean;
  choices?: SpaceChoices;
  json?: boolean;
}

function binsAction(opts: BinsCliOptions): void {
  const teacher = loadConfig(opts.teacher);
  const options = {
    space: opts.space,
    count: opts.bins,
    scale: opts.log ? ('log' as const) : ('linear' as const),
    choices: opts.choices,
  };
  const range = spaceParamRange(teacher, options);
  const bins = parameterBins(teacher, options);
  if (opts.json) {
    console.log(JSON.stringify({ space: opts.space, scale: options.scale, min: range.min, max: range.max, bins }));
    return;
  }
  console.log(
    `${opts.space} space: ${range.min.toLocaleString('en-US')} to ${range.max.toLocaleString('en-US')} parameters, ${bins.length} ${options.scale} bins`,
  );
  for (const b of bins) {
    console.log(
      `  bin ${String(b.index).padStart(2)}  ${formatParams(b.minParams).padStart(9)} .. ${formatParams(b.maxParams).padStart(9)}`,
    );
  }
}

export function registerSubnetCommands(program: Command): void {
  const subnet = program.command('subnet').description('sub-networks of a teacher checkpoint: extract, count, bins');

  subnet
    .command('extract')
    .description('cut a sub-network out of a teacher checkpoint into a dense student checkpoint')
    .requiredOption('--teacher <dir>', 'teacher checkpoint directory (Hugging Face layout)')
    .requiredOption('--spec <file>', 'sub-network spec: a JSON file, inline JSON ("{...}"), or a subnet.json')
    .requiredOption(
      '--out <dir>',
      'student checkpoint directory: a new or empty folder (or, with --force, a student checkpoint extracted before)',
    )
    .option(
      '--force',
      'replace --out when it holds a student checkpoint offshoot extracted (never anything else, never the teacher)',
    )
    .addOption(
      new Option('--order <order>', 'how counts of heads, neurons and channels pick them')
        .choices(HEAD_ORDERS)
        .default('first-k'),
    )
    .addOption(new Option('--layers <how>', 'how a layer count picks layers').choices(LAYER_ORDERS).default('first'))
    .option('--calibration <corpus>', 'calibration corpus for importance orderings', DEFAULT_TRAIN_CORPUS)
    .option('--calibration-batch <n>', 'calibration sequences', positiveInt('--calibration-batch'), 8)
    .option(
      '--calibration-seq-len <n>',
      'tokens per calibration sequence (default min(context, 64))',
      positiveInt('--calibration-seq-len'),
    )
    .option(
      '--tokenizer <path>',
      "tokenizer.json (or a folder holding one) for the calibration corpus and the student (default: the teacher's)",
    )
    .option('--export-transformers', 'refuse (saying why) unless plain transformers can load the student')
    .addOption(
      new Option('--dtype <dtype>', 'precision of the written weights')
        .choices(['float32', 'bfloat16'])
        .default('float32'),
    )
    .option('--json', 'print one JSON object')
    .action(async (opts: ExtractCliOptions, command: Command) => {
      // Only importance orderings compute with tensors; plain slicing needs no backend.
      if (needsImportance(opts))
        await withBackend(async (o: ExtractCliOptions, _c: Command) => extractAction(o))(opts, command);
      else await extractAction(opts);
    });

  subnet
    .command('count')
    .description("a sub-network's parameters and FLOPs per token, from the spec alone")
    .requiredOption('--teacher <dir>', 'teacher checkpoint directory (only config.json is read)')
    .requiredOption('--spec <file>', 'sub-network spec: a JSON file, inline JSON ("{...}"), or a subnet.json')
    .option(
      '--seq-len <n>',
      "sequence length for the attention FLOPs (default: the teacher's context)",
      positiveInt('--seq-len'),
    )
    .option('--causal', 'average attention over the causal triangle ((T+1)/2 keys) instead of T')
    .option('--json', 'print one JSON object')
    .action((opts: CountCliOptions) => countAction(opts));

  subnet
    .command('bins')
    .description("the parameter bins of a teacher's sub-network space")
    .requiredOption('--teacher <dir>', 'teacher checkpoint directory (only config.json is read)')
    .addOption(new Option('--space <kind>', 'search space').choices([...SPACE_KINDS]).default('uniform'))
    .option('--bins <n>', 'number of bins', positiveInt('--bins'), DEFAULT_BIN_COUNT)
    .option('--log', 'log-spaced bins')
    .option(
      '--choices <json>',
      'allowed values per dimension, JSON or a file (docs/subnetworks.md)',
      (v) => readJsonArgument('--choices', v) as SpaceChoices,
    )
    .option('--json', 'print one JSON object')
    .action((opts: BinsCliOptions) => binsAction(opts));
}
