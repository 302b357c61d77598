/**
 * `offshoot data prepare` and `offshoot data encode`: tokenise a corpus into the token store, and
 * show a tokenizer's ids for a text. Only core/data and the CLI's option parsers and progress bar are
 * imported: these commands start without the model code or the orchestration stack.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

import type { Command } from 'commander';

import {
  DEFAULT_TRAIN_CORPUS,
  DEFAULT_VOCAB_SIZE,
  defaultTokenStore,
  type PrepareProgress,
  type Tokenizer,
  loadTokenizer,
  openData,
  tokenizerHash,
  trainCorpusTokenizer,
} from '../../core/data/index.js';
import { nonNegativeInt, positiveInt } from './options.js';
import { ProgressBar, formatDuration } from './progress.js';

export interface DataPrepareOptions {
  data: string;
  tokenizer?: string;
  vocab: number;
  workers?: number;
  cache?: string;
  verify?: boolean;
  json?: boolean;
}

/** What `data prepare --json` prints: the spec's split and, per source, what the store holds. */
export interface DataSummary {
  spec: string;
  tokenizer: { name: string; vocabSize: number; hash: string };
  /** Tokens of the split the spec selects (training side of a holdout, or the held-out side). */
  tokens: number;
  sources: {
    path: string;
    weight: number;
    tokens: number;
    splitTokens: number;
    documents: number;
    skipped: number;
    shards: number;
    reusedParts: number;
    tokenizedParts: number;
    inputBytes: number;
    storeBytes: number;
    manifest: string;
  }[];
  seconds: number;
  /** Tokens written per second of this call (0 when everything was in the store). */
  tokensPerSecond: number;
}

async function prepareTokenizer(opts: DataPrepareOptions, log: (s: string) => void): Promise<Tokenizer> {
  if (opts.tokenizer) return loadTokenizer(opts.tokenizer);
  log(
    `no --tokenizer: training the ${opts.vocab}-token byte-level BPE that \`teacher train\` would train on ${opts.data}`,
  );
  return trainCorpusTokenizer(opts.data, { vocabSize: opts.vocab });
}

export async function prepareData(
  opts: DataPrepareOptions,
  log: (s: string) => void = (s) => process.stderr.write(`${s}\n`),
): Promise<DataSummary> {
  const started = performance.now();
  const tokenizer = await prepareTokenizer(opts, log);
  const store = opts.cache ?? defaultTokenStore();
  let bar: ProgressBar | undefined;
  let written = 0; // tokens written by this call, over all sources
  const onProgress = (p: PrepareProgress): void => {
    if (p.phase === 'tokenize') {
      bar ??= new ProgressBar(Math.max(1, p.bytesTotal), 'tokenise', process.stderr, 5, p.bytesDone);
      const secs = (performance.now() - started) / 1000;
      bar.update(
        p.bytesDone,
        `bytes, parts ${p.partsDone}/${p.partsTotal}, ${p.tokens} tokens (${Math.round((written + p.tokens) / Math.max(secs, 1e-3))}/s)`,
      );
    } else if (p.phase === 'done') {
      bar?.done();
      bar = undefined;
      written += p.tokens;
    }
  };
  const data = await openData(opts.data, tokenizer, {
    cacheDir: store,
    workers: opts.workers,
    verify: opts.verify,
    log,
    onProgress,
  }).finally(() => bar?.done());
  const seconds = (performance.now() - started) / 1000;
  const summary: DataSummary = {
    spec: data.spec,
    tokenizer: { name: tokenizer.name, vocabSize: tokenizer.vocabSize, hash: tokenizerHash(tokenizer) },
    tokens: data.sources.reduce((a, s) => a + s.ranges.reduce((b, [x, y]) => b + (y - x), 0), 0),
    sources: data.prepared.map((p, i) => ({
      path: p.spec.path,
      weight: p.spec.weight,
      tokens: p.tokens,
      splitTokens: data.sources[i].ranges.reduce((b, [x, y]) => b + (y - x), 0),
      documents: p.documents,
      skipped: p.skipped,
      shards: p.shards.length,
      reusedParts: p.reused,
      tokenizedParts: p.tokenized,
      inputBytes: p.inputBytes,
      storeBytes: p.shards.reduce((a, s) => a + fs.statSync(s.file).size, 0),
      manifest: p.manifest,
    })),
    seconds,
    tokensPerSecond: written / seconds,
  };
  data.close();
  return summary;
}

function printSummary(s: DataSummary): void {
  const lines = [
    `${s.spec}: ${s.tokens.toLocaleString('en-US')} tokens (tokenizer ${s.tokenizer.name}, vocab ${s.tokenizer.vocabSize}, ${s.tokenizer.hash.slice(0, 16)})`,
  ];
  for (const src of s.sources) {
    lines.push(
      `  ${src.path}${s.sources.length > 1 ? ` (weight ${src.weight})` : ''}: ${src.tokens.toLocaleString('en-US')} tokens` +
        `${src.splitTokens !== src.tokens ? `, ${src.splitTokens.toLocaleString('en-US')} in this split` : ''}, ${src.documents.toLocaleString('en-US')} documents` +
        `${src.skipped > 0 ? `, ${src.skipped} skipped as invalid` : ''}; ${src.shards} shard(s), ${src.reusedParts} found in the store, ${src.tokenizedParts} tokenised now;` +
        ` ${(src.inputBytes / 2 ** 20).toFixed(1)} MiB in, ${(src.storeBytes / 2 ** 20).toFixed(1)} MiB stored`,
    );
    lines.push(`  manifest ${src.manifest}`);
  }
  lines.push(
    `done in ${formatDuration(s.seconds)}${s.tokensPerSecond > 0 ? `, ${Math.round(s.tokensPerSecond).toLocaleString('en-US')} tokens/s` : ''}`,
  );
  console.log(lines.join('\n'));
}

export function registerDataCommands(program: Command): void {
  const data = program
    .command('data')
    .description('corpora: tokenise into the token store, inspect a tokenizer (docs/data.md)');
  data
    .command('prepare')
    .description('tokenise a data spec into the token store (parallel, resumable) and print what the store holds')
    .option(
      '--data <spec>',
      'data spec: sotu:train, a file, folder or glob, a spec file; options after ";" (docs/data.md)',
      DEFAULT_TRAIN_CORPUS,
    )
    .option(
      '--tokenizer <path>',
      'tokenizer.json or a folder holding one (a checkpoint); default: the BPE `teacher train` trains on --data',
    )
    .option('--vocab <n>', 'vocabulary of that BPE', positiveInt('--vocab'), DEFAULT_VOCAB_SIZE)
    .option(
      '--workers <n>',
      `tokenisation threads (default: ${os.availableParallelism()}, one per core; 0: this thread)`,
      nonNegativeInt('--workers'),
    )
    .option('--cache <dir>', 'the token store (default: env OFFSHOOT_TOKENS, else $OFFSHOOT_CACHE/tokens)')
    .option('--verify', "check every shard's payload hash again")
    .option('--json', 'print the summary as one JSON object')
    .action(async (opts: DataPrepareOptions) => {
      const summary = await prepareData(opts);
      if (opts.json) console.log(JSON.stringify(summary));
      else printSummary(summary);
    });

  data
    .command('encode')
    .description("a tokenizer's ids for a text")
    .requiredOption('--tokenizer <path>', 'tokenizer.json or a folder holding one')
    .option('--text <s>', 'the text')
    .option('--file <path>', 'read the text from a file (UTF-8)')
    .option('--json', 'print {"ids": [...]}')
    .action(async (opts: { tokenizer: string; text?: string; file?: string; json?: boolean }) => {
      if ((opts.text === undefined) === (opts.file === undefined))
        throw new Error('give exactly one of --text and --file');
      const text = opts.text ?? fs.readFileSync(opts.file!, 'utf8');
      const tokenizer = await loadTokenizer(opts.tokenizer);
      const ids = tokenizer.encode(text);
      if (opts.json) console.log(JSON.stringify({ ids }));
      else console.log(ids.join(' '));
    });
}
