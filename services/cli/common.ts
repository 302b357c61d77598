/** Pieces the CLI commands share: loading a model with its tokenizer, number parsing (options.ts). */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type Tokenizer, TOKENIZER_FILE, loadTokenizer } from '../../core/data/index.js';
import { GPTNeoX, type TrainerState, loadCheckpoint, readTrainerState } from '../../core/model/index.js';

// The option parsers live in options.ts (no model code), so light commands need not load tfjs.
export { nonNegativeInt, positiveInt, positiveNumber, probability } from './options.js';

export interface LoadedModel {
  model: GPTNeoX;
  tokenizer?: Tokenizer;
  hash: string;
  /** The training state saved with the checkpoint, when it was trained by offshoot. */
  trainerState?: TrainerState;
}

/** Loads a checkpoint directory and, when it carries one, its tokenizer. */
export async function loadModel(dir: string, options: { tokenizer?: string } = {}): Promise<LoadedModel> {
  const ckpt = loadCheckpoint(dir);
  const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, dir);
  const tokPath = options.tokenizer ?? (fs.existsSync(path.join(dir, TOKENIZER_FILE)) ? dir : undefined);
  const tokenizer = tokPath ? await loadTokenizer(tokPath) : undefined;
  if (tokenizer && tokenizer.vocabSize > ckpt.config.vocabSize) {
    throw new Error(
      `tokenizer ${tokPath}: vocabulary ${tokenizer.vocabSize} is larger than the model's ${ckpt.config.vocabSize}`,
    );
  }
  return { model, tokenizer, hash: ckpt.hash, trainerState: readTrainerState(dir) };
}
