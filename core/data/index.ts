/**
 * core/data: data specs and input formats, tokenizers, the token store (sharded, streaming,
 * resumable, parallel tokenisation) and batch sampling. Tensor-free (plain typed arrays), so any layer
 * may use it; only the file functions touch the file system. docs/data.md tells the whole story.
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
  forEachPreToken,
  trainBpe,
  sampleTrainingText,
  tokenizerFromJSON,
  loadTokenizer,
  saveTokenizer,
  tokenizerHash,
} from './tokenizer.js';

export {
  type Corpus,
  type CorpusStats,
  SOTU_VALIDATION_FROM,
  corpusHash,
  corpusStats,
  sotuAddresses,
  sotuSplit,
  mobyDickChapters,
} from './corpus.js';

export { type DataSpec, type SourceSpec, type InputFormat, DataError, parseDataSpec, loadCorpus } from './sources.js';

export {
  type TokenArray,
  type TokenFile,
  type TokenFileHeader,
  type WriteTokenFileOptions,
  type ReadTokenFileOptions,
  TOKEN_FILE_MAGIC,
  TOKEN_FILE_VERSION,
  TOKEN_FILE_HEADER_BYTES,
  TokenFileWriter,
  tokenDtypeFor,
  writeTokenFile,
  readTokenFile,
  readTokenFileHeader,
  tokenizeDocuments,
} from './tokens.js';

export {
  type PrepareOptions,
  type PrepareProgress,
  type PreparedSource,
  type ShardInfo,
  type OpenedData,
  defaultTokenStore,
  prepareSource,
  openData,
  describeData,
} from './store.js';

export {
  type Batch,
  type BatchRow,
  type TokenStream,
  type TokenData,
  type TokenSource,
  type SourceView,
  type SampleBatchOptions,
  type EvalBatchOptions,
  arrayStream,
  holdoutRanges,
  permuteIndex,
  batchRows,
  sampleBatch,
  windowCount,
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

export { writeFileAtomic } from '../atomic.js';
export { canonicalJson, sha256Hex } from './fsutil.js';
