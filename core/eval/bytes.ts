/**
 * Bits per byte: the validation loss per UTF-8 byte of text instead of per token, comparable across
 * tokenizers (a tokenizer with longer tokens has a higher loss per token for the same model quality).
 *
 *   bits per byte = (Σ over scored tokens of −ln p(token)) / (ln 2 × bytes of the scored text)
 *
 * "Bytes of the scored text" is exact: every scored token (every target of every validation window)
 * contributes the UTF-8 bytes it stands for — for byte-level BPE tokenizers (offshoot's and Pythia's)
 * the bytes the token is made of, so a character split across tokens is counted once, in the
 * tokens that carry its bytes. The end-of-text separator between documents (and any other special
 * token) stands for no text: 0 bytes, while its loss still counts. When a whole corpus is
 * evaluated, the bytes are the corpus's UTF-8 size after the tokenizer's normalisation, less the
 * first token's.
 */
import { type EvalBatchOptions, type TokenSource, type Tokenizer, evalBatches } from '../data/index.js';
import { type GPTNeoX, evaluateLoss } from '../model/index.js';

interface TokenizerJson {
  added_tokens?: { id: number; content: string; special?: boolean }[];
  decoder?: { type?: string } | null;
  model?: { vocab?: Record<string, number> | [string, number][] };
}

const utf8 = new TextEncoder();

/**
 * UTF-8 bytes each token id stands for. Byte-level tokenizers (a ByteLevel decoder) spell every
 * vocabulary entry with one character per byte, so an entry's length is its byte count; added tokens
 * count their content's bytes, special ones 0. Other tokenizers fall back to the bytes of each token
 * decoded on its own.
 */
export function tokenByteLengths(tokenizer: Tokenizer): Uint32Array {
  const json = tokenizer.toJSON() as TokenizerJson;
  const lengths = new Uint32Array(tokenizer.vocabSize);
  const known = new Uint8Array(tokenizer.vocabSize);
  const vocab = json.model?.vocab;
  if (json.decoder?.type === 'ByteLevel' && vocab && !Array.isArray(vocab)) {
    for (const [token, id] of Object.entries(vocab)) {
      if (id >= 0 && id < lengths.length) {
        lengths[id] = token.length;
        known[id] = 1;
      }
    }
  }
  for (const t of json.added_tokens ?? []) {
    if (t.id >= 0 && t.id < lengths.length) {
      lengths[t.id] = t.special === false ? utf8.encode(t.content).length : 0;
      known[t.id] = 1;
    }
  }
  for (let id = 0; id < lengths.length; id++) {
    if (known[id]) continue;
    try {
      lengths[id] = utf8.encode(tokenizer.decode([id])).length;
    } catch {
      lengths[id] = 0; // an id the tokenizer never produces
    }
  }
  if (tokenizer.endOfTextId !== null) lengths[tokenizer.endOfTextId] = 0;
  return lengths;
}

/** Bytes of the tokens evalBatches scores (the targets of its windows). */
export function scoredBytes(tokens: TokenSource, options: EvalBatchOptions, byteLengths: Uint32Array): number {
  let bytes = 0;
  for (const batch of evalBatches(tokens, options)) {
    for (const id of batch.target) bytes += byteLengths[id] ?? 0;
  }
  return bytes;
}

export function bitsPerByte(meanLoss: number, tokens: number, bytes: number): number {
  return bytes > 0 ? (meanLoss * tokens) / (Math.LN2 * bytes) : NaN;
}

export interface TextEvaluation {
  /** Mean cross-entropy per token (nats). */
  loss: number;
  ppl: number;
  /** Bits per UTF-8 byte of the scored text. */
  bpb: number;
  /** Tokens scored. */
  tokens: number;
  /** UTF-8 bytes of the scored text. */
  bytes: number;
}

/** Loss, perplexity and bits per byte of a model over a token stream's validation windows. */
export async function evaluateText(
  model: GPTNeoX,
  tokens: TokenSource,
  tokenizer: Tokenizer | Uint32Array,
  options: EvalBatchOptions,
): Promise<TextEvaluation> {
  const r = await evaluateLoss(model, evalBatches(tokens, options));
  const lengths = tokenizer instanceof Uint32Array ? tokenizer : tokenByteLengths(tokenizer);
  const bytes = scoredBytes(tokens, options, lengths);
  return { loss: r.loss, ppl: r.ppl, bpb: bitsPerByte(r.loss, r.tokens, bytes), tokens: r.tokens, bytes };
}
