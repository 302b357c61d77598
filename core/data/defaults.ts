/**
 * Defaults tying corpora and tokenizers together.
 */
import type { Corpus } from './corpus.js';
import { loadCorpus } from './sources.js';
import { type BpeTokenizer, type TrainBpeOptions, trainBpe } from './tokenizer.js';

/** Vocabulary of the BPE trained on the embedded corpus when no tokenizer is given. */
export const DEFAULT_VOCAB_SIZE = 1024;
/** Training text for that BPE: at most this many bytes, sampled across the corpus. */
export const DEFAULT_TOKENIZER_TRAIN_BYTES = 1 << 20;
/** The embedded default corpora. */
export const DEFAULT_TRAIN_CORPUS = 'sotu:train';
export const DEFAULT_VALIDATION_CORPUS = 'sotu:val';
export const DEFAULT_TEST_CORPUS = 'mobydick';

/**
 * Trains a byte-level BPE on a corpus (default: sotu:train, vocab 1024, 1 MiB of text sampled across
 * the corpus; a large corpus is sampled without being loaded whole). Deterministic.
 */
export async function trainCorpusTokenizer(
  corpus: string | Corpus = DEFAULT_TRAIN_CORPUS,
  options: Partial<TrainBpeOptions> = {},
): Promise<BpeTokenizer> {
  const maxBytes = options.maxBytes ?? DEFAULT_TOKENIZER_TRAIN_BYTES;
  const c: Corpus = typeof corpus === 'object' ? corpus : await loadCorpus(corpus, { maxBytes });
  return trainBpe(c.documents, {
    vocabSize: options.vocabSize ?? DEFAULT_VOCAB_SIZE,
    maxBytes,
    minFrequency: options.minFrequency,
    name: options.name,
  });
}
