/**
 * Tokenising one part into one shard: read the part as a stream (sources.ts), encode each document,
 * append its ids and the end-of-text id to a token file being written (tokens.ts). Runs in a worker
 * thread (tokenize-worker.ts) or, for small jobs, in the calling thread.
 */
import { DataError, type Part, type PartCounters, readPart } from './sources.js';
import { type Tokenizer, tokenizerFromJSON, type TokenizerEngine } from './tokenizer.js';
import { TokenFileWriter } from './tokens.js';

/** What a worker needs to build the same tokenizer as the caller. */
export interface TokenizerRecipe {
  json: object;
  engine: TokenizerEngine;
  name: string;
  vocabSize: number;
  hash: string;
  endOfTextId: number | null;
}

export function tokenizerRecipe(tok: Tokenizer, hash: string): TokenizerRecipe {
  return {
    json: tok.toJSON(),
    engine: tok.kind === 'hf' ? 'hf' : 'auto',
    name: tok.name,
    vocabSize: tok.vocabSize,
    hash,
    endOfTextId: tok.endOfTextId,
  };
}

export function tokenizerFromRecipe(r: TokenizerRecipe): Tokenizer {
  const tok = tokenizerFromJSON(r.json, { engine: r.engine, name: r.name });
  if (tok.vocabSize !== r.vocabSize)
    throw new Error(`tokenizer ${r.name}: rebuilt with vocabulary ${tok.vocabSize}, expected ${r.vocabSize}`);
  return tok;
}

export interface EncodeTask {
  part: Part;
  /** The part's content key (the shard's name). */
  key: string;
  /** Where the shard goes. */
  shard: string;
}

export interface EncodeResult {
  key: string;
  tokens: number;
  documents: number;
  skipped: number;
  reasons: string[];
  payloadHash: string;
}

/** Progress every so many input bytes or documents (the caller sums them). */
export type EncodeProgress = (delta: { bytes: number; tokens: number }) => void;

export async function encodePart(
  task: EncodeTask,
  tok: Tokenizer,
  recipe: TokenizerRecipe,
  onProgress: EncodeProgress,
): Promise<EncodeResult> {
  const writer = await TokenFileWriter.create(task.shard, {
    vocabSize: recipe.vocabSize,
    tokenizerHash: recipe.hash,
    corpusHash: task.key,
  });
  const counters: PartCounters = { skipped: 0, reasons: [] };
  const eot = recipe.endOfTextId;
  let documents = 0;
  let lastBytes = 0;
  try {
    for await (const chunk of readPart(task.part, counters)) {
      const before = writer.count;
      if ('ids' in chunk) {
        const v = recipe.vocabSize;
        const bad = chunk.ids.findIndex((id) => id >= v);
        if (bad >= 0) {
          throw new DataError(
            `${task.part.file}: id ${chunk.ids[bad]} at element ${chunk.firstElement + bad} is outside the vocabulary of tokenizer ${recipe.name} (size ${v})`,
          );
        }
        await writer.append(chunk.ids);
      } else {
        for (const doc of chunk.documents) {
          await writer.append(tok.encode(doc));
          if (eot !== null) await writer.append([eot]);
          documents++;
        }
      }
      const bytes = chunk.bytesRead > 0 ? chunk.bytesRead - lastBytes : 0;
      if (chunk.bytesRead > 0) lastBytes = chunk.bytesRead;
      onProgress({ bytes: Math.max(0, bytes), tokens: writer.count - before });
    }
    const header = await writer.finish(documents);
    return {
      key: task.key,
      tokens: header.count,
      documents,
      skipped: counters.skipped,
      reasons: counters.reasons,
      payloadHash: header.payloadHash,
    };
  } catch (err) {
    await writer.abort();
    throw err;
  }
}
