/** `offshoot eval` and `offshoot logits`: a checkpoint's loss on a corpus, and its raw logits. */
import * as fs from 'node:fs';

import type { Command } from 'commander';

import { DEFAULT_VALIDATION_CORPUS, type TokenSource, defaultTokenStore, evalBatches, openData } from '../../core/data/index.js';
import { type GPTNeoX, checkTokenIds, evaluateLoss } from '../../core/model/index.js';
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

export function registerEvalCommands(program: Command): void {
  program
    .command('eval')
    .description("a checkpoint's cross-entropy and perplexity on a corpus")
    .requiredOption('--model <dir>', 'checkpoint directory (Hugging Face layout)')
    .option('--data <spec>', 'data spec: sotu:train, sotu:val, mobydick, a file, folder or glob, or a spec file (docs/data.md)', DEFAULT_VALIDATION_CORPUS)
    .option('--tokenizer <path>', "tokenizer.json or a folder holding one (default: the checkpoint's)")
    .option('--seq-len <n>', 'tokens per sequence (default: the length it was trained with, else min(context, 256))', positiveInt('--seq-len'))
    .option('--batch-size <n>', 'sequences per batch', positiveInt('--batch-size'), 8)
    .option('--max-tokens <n>', 'evaluate at most this many tokens', positiveInt('--max-tokens'))
    .option('--json', 'print one JSON object')
    .action(
      withBackend(async (opts: { model: string; data: string; tokenizer?: string; seqLen?: number; batchSize: number; maxTokens?: number; json?: boolean }) => {
        const { model, tokenizer, trainerState } = await loadModel(opts.model, { tokenizer: opts.tokenizer });
        if (!tokenizer) throw new Error(`${opts.model} has no tokenizer.json; pass --tokenizer`);
        const seqLen = opts.seqLen ?? trainerState?.hyper.seqLen ?? Math.min(model.config.maxPositions, 256);
        const corpus = await openData(opts.data, tokenizer, { cacheDir: defaultTokenStore() });
        const result = await evaluateOnCorpus(model, corpus, { seqLen, batchSize: opts.batchSize, maxTokens: opts.maxTokens });
        corpus.close();
        model.dispose();
        if (opts.json) console.log(JSON.stringify(result));
        else console.log(`${corpus.spec}: loss ${result.loss.toFixed(4)}, perplexity ${result.ppl.toFixed(2)} over ${result.tokens} tokens`);
      }),
    );

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
        if (!Array.isArray(ids) || ids.length === 0) throw new Error(`${opts.ids}: expected a non-empty JSON array of token ids`);
        const { model } = await loadModel(opts.model);
        checkTokenIds(ids as number[], model.config.vocabSize, opts.ids);
        if (ids.length > model.config.maxPositions) {
          throw new Error(`${opts.ids}: ${ids.length} tokens exceed the model's context of ${model.config.maxPositions}`);
        }
        const logits = tf.tidy(() => model.logits2d(tf.tensor2d(ids as number[], [1, ids.length], 'int32')));
        const rows = (await logits.array()) as number[][];
        logits.dispose();
        model.dispose();
        console.log(JSON.stringify({ logits: rows }));
      }),
    );
}
