/**
 * core/data: corpora, tokenizers, token files and batch sampling. Tensor-free (plain typed arrays), so
 * any layer may use it; only the file functions touch the file system.
 */
export {
  type Tokenizer,
  type TokenizerKind,
  type TokenizerEngine,
  type LoadTokenizerOptions,
  type TrainBpeOptions,
  END_OF_TEXT,
  TOKENIZER_FILE,
  ByteTokenizer,
  BpeTokenizer,
  HfTokenizer,
  preTokenize,
  trainBpe,
  sampleTrainingText,
  tokenizerFromJSON,
  loadTokenizer,
  saveTokenizer,
  tokenizerHash,
} from './tokenizer.js';

export {
  type Corpus,
  type CorpusSpec,
  type CorpusStats,
  SOTU_VALIDATION_FROM,
  parseCorpusSpec,
  formatCorpusSpec,
  loadCorpus,
  corpusHash,
  corpusStats,
  sotuAddresses,
  sotuSplit,
  mobyDickChapters,
} from './corpus.js';

export {
  type TokenArray,
  type TokenFile,
  type TokenFileHeader,
  type TokenizedCorpus,
  type WriteTokenFileOptions,
  type ReadTokenFileOptions,
  TOKEN_FILE_MAGIC,
  TOKEN_FILE_VERSION,
  TOKEN_FILE_HEADER_BYTES,
  tokenDtypeFor,
  writeTokenFile,
  readTokenFile,
  readTokenFileHeader,
  tokenizeDocuments,
  tokenizedCorpus,
  tokenCacheFileName,
} from './tokens.js';

export {
  type Batch,
  type TokenSource,
  type SampleBatchOptions,
  type EvalBatchOptions,
  sampleBatch,
  sampleOffsets,
  counterHash53,
  evalBatches,
  evalWindowCount,
} from './batches.js';

export {
  DEFAULT_VOCAB_SIZE,
  DEFAULT_TOKENIZER_TRAIN_BYTES,
  DEFAULT_TRAIN_CORPUS,
  DEFAULT_VALIDATION_CORPUS,
  DEFAULT_TEST_CORPUS,
  trainCorpusTokenizer,
} from './defaults.js';

export { writeFileAtomic, canonicalJson, sha256Hex } from './fsutil.js';

export { type TextProblem, decodeUtf8Text, textProblem } from './text.js';
