/**
 * `offshoot eval` and `offshoot logits`: a checkpoint's loss, perplexity and bits per byte on a
 * corpus, or its zero-shot task scores (core/eval), and its raw logits.
 */
import * as fs from 'node:fs';

import type { Command } from 'commander';

import {
  DEFAULT_VALIDATION_CORPUS,
  type TokenSource,
  defaultTokenStore,
  evalBatches,
  openData,
} from '../../core/data/index.js';
import { type MetricValue, type TaskScore, evaluateTasks, evaluateText, loadTasks } from '../../core/eval/index.js';
import { type GPTNeoX, checkTokenIds, evaluateLoss, writeFileAtomicSync } from '../../core/model/index.js';
import * as tf from '../../core/model/tfjs.js';
import { loadModel, positiveInt } from './common.js';
import { withBackend } from './backend-option.js';

export interface CorpusEvalOptions {
  seqLen: number;
  batchSize: number;
  maxTokens?: number;
}

/** Validation loss and perplexity of a model over a tokenised corpus. */
export async function evaluateOnCorpus(
  model: GPTNeoX,
  tokens: TokenSource,
  options: CorpusEvalOptions,
): Promise<{ loss: number; ppl: number; tokens: number }> {
  return evaluateLoss(model, evalBatches(tokens, options));
}

/** Comma-separated and repeated --tasks values, in order. */
function collectFiles(value: string, previous: string[] = []): string[] {
  return [
    ...previous,
    ...value
      .split(',')
      .map((v) => v.trim())
      .filter((v) => v !== ''),
  ];
}

function formatMetric(name: string, m: MetricValue): string {
  return `${name} ${m.value.toFixed(4)}${m.stderr !== null ? ` ± ${m.stderr.toFixed(4)}` : ''}`;
}

/** The task scores as text: one line per task. */
export function describeTaskScores(scores: TaskScore[]): string[] {
  return scores.map((s) => {
    const metrics = Object.entries(s.metrics).map(([name, m]) => formatMetric(name, m!));
    const invalid = s.invalidGold ? ` (${s.invalidGold} with a target that names no choice, scored wrong)` : '';
    return `${s.task} (${s.outputType}, ${s.split}, ${s.docs} documents): ${metrics.join(', ')}${invalid}`;
  });
}

interface EvalCliOptions {
  model: string;
  data: string;
  tokenizer?: string;
  seqLen?: number;
  batchSize: number;
  maxTokens?: number;
  tasks?: string[];
  limit?: number;
  logSamples?: string;
  json?: boolean;
}

async function evalAction(opts: EvalCliOptions): Promise<void> {
  const { model, tokenizer, trainerState } = await loadModel(opts.model, { tokenizer: opts.tokenizer });
  try {
    if (!tokenizer) throw new Error(`${opts.model} has no tokenizer.json; pass --tokenizer`);
    if (opts.tasks?.length) {
      const tasks = loadTasks(opts.tasks, { limit: opts.limit });
      const requests = tasks.reduce((n, t) => n + t.docs.reduce((m, d) => m + d.requests.length, 0), 0);
      if (!opts.json)
        process.stderr.write(`scoring ${tasks.length} task${tasks.length === 1 ? '' : 's'}: ${requests} requests\n`);
      const started = performance.now();
      let lastReport = started;
      const result = await evaluateTasks(model, tokenizer, tasks, {
        batchSize: opts.batchSize,
        onProgress: (done, total) => {
          const now = performance.now();
          if (!opts.json && (now - lastReport > 5000 || done === total)) {
            lastReport = now;
            process.stderr.write(`  ${done}/${total} requests (${((now - started) / 1000).toFixed(0)} s)\n`);
          }
        },
      });
      if (opts.logSamples)
        writeFileAtomicSync(opts.logSamples, `${result.samples.map((s) => JSON.stringify(s)).join('\n')}\n`);
      if (opts.json) console.log(JSON.stringify({ tasks: result.scores }));
      else console.log(describeTaskScores(result.scores).join('\n'));
      return;
    }
    const seqLen = opts.seqLen ?? trainerState?.hyper.seqLen ?? Math.min(model.config.maxPositions, 256);
    const corpus = await openData(opts.data, tokenizer, { cacheDir: defaultTokenStore() });
    const result = await evaluateText(model, corpus, tokenizer, {
      seqLen,
      batchSize: opts.batchSize,
      maxTokens: opts.maxTokens,
    });
    corpus.close();
    if (opts.json) console.log(JSON.stringify(result));
    else {
      console.log(
        `${corpus.spec}: loss ${result.loss.toFixed(4)}, perplexity ${result.ppl.toFixed(2)}, ${result.bpb.toFixed(4)} bits per byte over ${result.tokens} tokens (${result.bytes} bytes)`,
      );
    }
  } finally {
    model.dispose();
  }
}

export function registerEvalCommands(program: Command): void {
  program
    .command('eval')
    .description(
      "a checkpoint's cross-entropy, perplexity and bits per byte on a corpus, or its zero-shot accuracy on tasks (--tasks)",
    )
    .requiredOption('--model <dir>', 'checkpoint directory (Hugging Face layout)')
    .option(
      '--data <spec>',
      'data spec: sotu:train, sotu:val, mobydick, a file, folder or glob, or a spec file (docs/data.md)',
      DEFAULT_VALIDATION_CORPUS,
    )
    .option('--tokenizer <path>', "tokenizer.json or a folder holding one (default: the checkpoint's)")
    .option(
      '--seq-len <n>',
      'tokens per sequence (default: the length it was trained with, else min(context, 256))',
      positiveInt('--seq-len'),
    )
    .option('--batch-size <n>', 'sequences per batch', positiveInt('--batch-size'), 8)
    .option('--max-tokens <n>', 'evaluate at most this many tokens', positiveInt('--max-tokens'))
    .option(
      '--tasks <files>',
      'lm-evaluation-harness task YAML files or folders of them (comma-separated, repeatable): score these instead of a corpus',
      collectFiles,
    )
    .option('--limit <n>', 'with --tasks: score only the first n documents of each task', positiveInt('--limit'))
    .option('--log-samples <file>', "with --tasks: write each document's log-likelihoods and metrics as JSON lines")
    .option('--json', 'print one JSON object: {"loss","ppl","bpb","tokens","bytes"}, or {"tasks": [...]} with --tasks')
    .action(withBackend(evalAction));

  program
    .command('logits')
    .description('logits of a checkpoint for a JSON array of token ids')
    .requiredOption('--model <dir>', 'checkpoint directory (Hugging Face layout)')
    .requiredOption('--ids <file>', 'JSON file holding an array of token ids')
    .option('--json', 'print {"logits": [[...], ...]} (one row per position); the default output')
    .action(
      withBackend(async (opts: { model: string; ids: string }) => {
        let ids: unknown;
        try {
          ids = JSON.parse(fs.readFileSync(opts.ids, 'utf8'));
        } catch (err) {
          throw new Error(`${opts.ids}: cannot read a JSON array of token ids (${(err as Error).message})`);
        }
        if (!Array.isArray(ids) || ids.length === 0)
          throw new Error(`${opts.ids}: expected a non-empty JSON array of token ids`);
        const { model } = await loadModel(opts.model);
        checkTokenIds(ids as number[], model.config.vocabSize, opts.ids);
        if (ids.length > model.config.maxPositions) {
          throw new Error(
            `${opts.ids}: ${ids.length} tokens exceed the model's context of ${model.config.maxPositions}`,
          );
        }
        const logits = tf.tidy(() => model.logits2d(tf.tensor2d(ids as number[], [1, ids.length], 'int32')));
        const rows = (await logits.array()) as number[][];
        logits.dispose();
        model.dispose();
        console.log(JSON.stringify({ logits: rows }));
      }),
    );
}
