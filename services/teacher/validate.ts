/**
 * Checks a student's request against the served model and the server's limits. A bad request gets
 * INVALID_ARGUMENT (malformed: ids, k, temperature, lengths) or RESOURCE_EXHAUSTED (above the size
 * limit), with a message that says what is wrong.
 */
import { status } from '@grpc/grpc-js';

import { type TopKRequest, ValueEncoding } from '../../proto/gen/offshoot/teacher/v1/teacher.js';

export class RequestError extends Error {
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
    this.name = 'RequestError';
  }
}

export interface ServedLimits {
  vocabSize: number;
  contextLength: number;
  maxBatchTokens: number;
  defaultTopK: number;
}

export interface ValidRequest {
  id: number;
  batchSize: number;
  seqLen: number;
  tokens: Int32Array;
  k: number;
  temperature: number;
  encoding: ValueEncoding;
}

/**
 * Temperatures the service accepts: far beyond any distillation setting, while logits / T and its
 * logsumexp stay finite in float32 for any teacher whose logits do.
 */
export const TEMPERATURE_RANGE = { min: 0.01, max: 100 } as const;

/** The server's default k: 64, or the whole vocabulary when it is smaller. */
export function defaultTopK(vocabSize: number, requested = 64): number {
  return Math.min(requested, vocabSize);
}

export function validateRequest(req: TopKRequest, limits: ServedLimits): ValidRequest {
  const bad = (message: string): RequestError =>
    new RequestError(status.INVALID_ARGUMENT, `request ${req.id}: ${message}`);
  const { batchSize, seqLen } = req;
  if (batchSize < 1) throw bad('batch_size must be at least 1, got 0');
  if (seqLen < 1) throw bad('seq_len must be at least 1, got 0');
  if (seqLen > limits.contextLength) {
    throw bad(`seq_len ${seqLen} exceeds the model's context length of ${limits.contextLength}`);
  }
  const positions = batchSize * seqLen;
  if (positions > limits.maxBatchTokens) {
    throw new RequestError(
      status.RESOURCE_EXHAUSTED,
      `request ${req.id}: ${batchSize} × ${seqLen} = ${positions} tokens exceeds the server's limit of ${limits.maxBatchTokens} tokens per request (--max-batch-tokens); send smaller batches`,
    );
  }
  if (req.tokens.length !== positions) {
    throw bad(
      `tokens holds ${req.tokens.length} ids, expected batch_size × seq_len = ${batchSize} × ${seqLen} = ${positions}`,
    );
  }
  const tokens = new Int32Array(positions);
  const v = limits.vocabSize;
  for (let i = 0; i < positions; i++) {
    const id = req.tokens[i];
    if (id >= v) {
      throw bad(
        `token id ${id} at position ${i} (row ${Math.floor(i / seqLen)}, column ${i % seqLen}) is outside the vocabulary [0, ${v})`,
      );
    }
    tokens[i] = id;
  }
  const k = req.topK ?? limits.defaultTopK;
  if (!Number.isInteger(k) || k < 1 || k > v) throw bad(`top_k ${k} is outside [1, ${v}] (1 to the vocabulary size)`);
  const temperature = req.temperature ?? 1;
  if (!(temperature >= TEMPERATURE_RANGE.min && temperature <= TEMPERATURE_RANGE.max)) {
    throw bad(`temperature must be from ${TEMPERATURE_RANGE.min} to ${TEMPERATURE_RANGE.max}, got ${temperature}`);
  }
  let encoding = req.valueEncoding;
  if (encoding === ValueEncoding.VALUE_ENCODING_UNSPECIFIED) encoding = ValueEncoding.VALUE_ENCODING_FLOAT16;
  if (encoding !== ValueEncoding.VALUE_ENCODING_FLOAT16 && encoding !== ValueEncoding.VALUE_ENCODING_FLOAT32) {
    throw bad(`value_encoding ${req.valueEncoding} is not one of VALUE_ENCODING_FLOAT16, VALUE_ENCODING_FLOAT32`);
  }
  return { id: req.id, batchSize, seqLen, tokens, k, temperature, encoding };
}
