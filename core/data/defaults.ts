/**
 * Defaults tying corpora and tokenizers together.
 */
import { type Corpus, type CorpusSpec, formatCorpusSpec, loadCorpus } from './corpus.js';
import { type BpeTokenizer, type TrainBpeOptions, trainBpe } from './tokenizer.js';

/** Vocabulary of the BPE trained on the embedded corpus when no tokenizer is given. */
export const DEFAULT_VOCAB_SIZE = 1024;
/** Training text for that BPE: at most this many bytes, sampled across the corpus. */
export const DEFAULT_TOKENIZER_TRAIN_BYTES = 1 << 20;
/** The embedded default corpora. */
export const DEFAULT_TRAIN_CORPUS = 'sotu:train';
export const DEFAULT_VALIDATION_CORPUS = 'sotu:val';
export const DEFAULT_TEST_CORPUS = 'mobydick';

/** Trains a byte-level BPE on a corpus (default: sotu:train, vocab 1024, 1 MiB of text). Deterministic. */
export async function trainCorpusTokenizer(
  corpus: string | CorpusSpec | Corpus = DEFAULT_TRAIN_CORPUS,
  options: Partial<TrainBpeOptions> = {},
): Promise<BpeTokenizer> {
  const c: Corpus =
    typeof corpus === 'object' && 'documents' in corpus ? corpus : await loadCorpus(typeof corpus === 'string' ? corpus : formatCorpusSpec(corpus));
  return trainBpe(c.documents, {
    vocabSize: options.vocabSize ?? DEFAULT_VOCAB_SIZE,
    maxBytes: options.maxBytes ?? DEFAULT_TOKENIZER_TRAIN_BYTES,
    minFrequency: options.minFrequency,
    name: options.name,
  });
}
