/**
 * Tokenizers: byte-level (vocab 257), byte-level BPE trained here, and any Hugging Face `tokenizer.json`
 * (Pythia's included) through `@huggingface/tokenizers`.
 *
 * File format: every tokenizer saves as a Hugging Face `tokenizer.json` (model BPE, ByteLevel
 * pre-tokenizer, post-processor and decoder), so checkpoints carry it and transformers,
 * the Rust/Python `tokenizers` library and tokenizers.js all read it. The byte tokenizer is the
 * zero-merge case: vocab ids 0..255 are the bytes, 256 is `<|endoftext|>`. A trained BPE keeps that
 * layout and numbers merged tokens from 257 on.
 *
 * Special tokens: like Hugging Face tokenizers, `encode` turns a literal added token in the text
 * (`<|endoftext|>`) into its id, and `decode` turns the id back into that literal, so round trips stay
 * exact. Round trips are exact for any well-formed string (lone UTF-16 surrogates are not UTF-8 and come
 * back as U+FFFD).
 */
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { writeFileAtomic } from '../atomic.js';
import { canonicalJson, sha256Hex } from './fsutil.js';

export const END_OF_TEXT = '<|endoftext|>';
export const TOKENIZER_FILE = 'tokenizer.json';

/** What every tokenizer offers. `toJSON` is a Hugging Face `tokenizer.json` object. */
export interface Tokenizer {
  readonly vocabSize: number;
  readonly name: string;
  /** 'bytes' | 'bpe' (native TypeScript engine) | 'hf' (@huggingface/tokenizers engine). */
  readonly kind: TokenizerKind;
  /** Id of `<|endoftext|>` (documents are separated by it in token files), or null if there is none. */
  readonly endOfTextId: number | null;
  encode(text: string): number[];
  decode(ids: number[]): string;
  toJSON(): object;
}

export type TokenizerKind = 'bytes' | 'bpe' | 'hf';

// ---------------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode mapping and pre-tokenisation

/** GPT-2's bytes_to_unicode: printable stand-ins for the 256 byte values. */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const out = new Array<string>(256);
  for (let i = 0; i < bs.length; i++) out[bs[i]] = String.fromCharCode(cs[i]);
  return out;
})();

const CHAR_TO_BYTE: ReadonlyMap<string, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c, b]));

/** Byte string in GPT-2's printable form (the form vocab and merges are written in). */
export function bytesToTokenString(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += BYTE_TO_CHAR[bytes[i]];
  return s;
}

function tokenStringToBytes(s: string): Uint8Array | null {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const b = CHAR_TO_BYTE.get(s[i]);
    if (b === undefined) return null;
    out[i] = b;
  }
  return out;
}

/**
 * GPT-2 / GPT-NeoX pre-tokenisation pattern. `\s` is spelled `\p{White_Space}` so that it matches what
 * the Rust library (Oniguruma) means by `\s`: U+0085 is whitespace, U+FEFF is not (JavaScript's `\s`
 * differs on both, and so does tokenizers.js on text that contains them).
 */
const PRETOKEN_PATTERN =
  /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;

/** Splits text into pre-tokens the way the ByteLevel pre-tokenizer (add_prefix_space false) does. */
export function preTokenize(text: string): string[] {
  return text.match(PRETOKEN_PATTERN) ?? [];
}

// Character classes of PRETOKEN_PATTERN, for the scanner below: letter, number, white space, other.
const C_LETTER = 1;
const C_NUMBER = 2;
const C_SPACE = 3;
const C_OTHER = 4;
/** Class of every code point, filled in on first sight (0: not yet known). */
const charClass = new Uint8Array(0x110000);
const IS_LETTER = /^\p{L}$/u;
const IS_NUMBER = /^\p{N}$/u;
const IS_SPACE = /^\p{White_Space}$/u;

function classOf(cp: number): number {
  let c = charClass[cp];
  if (c === 0) {
    const ch = String.fromCodePoint(cp);
    c = IS_LETTER.test(ch) ? C_LETTER : IS_NUMBER.test(ch) ? C_NUMBER : IS_SPACE.test(ch) ? C_SPACE : C_OTHER;
    charClass[cp] = c;
  }
  return c;
}

/** Code point at i of s (a lone surrogate stands for itself) and the index after it. */
function codePointAt(s: string, i: number): number {
  const c = s.charCodeAt(i);
  if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
    const d = s.charCodeAt(i + 1);
    if (d >= 0xdc00 && d <= 0xdfff) return ((c - 0xd800) << 10) + (d - 0xdc00) + 0x10000;
  }
  return c;
}

/**
 * Calls onWord for each pre-token of text, in order: the same pieces as preTokenize, found by a
 * hand-written scanner of PRETOKEN_PATTERN's alternatives (about twice as fast as the regex, which
 * dominates encoding once most words hit the cache).
 */
export function forEachPreToken(text: string, onWord: (word: string) => void): void {
  const n = text.length;
  let i = 0;
  while (i < n) {
    const start = i;
    const c = text.charCodeAt(i);
    // 's 't 're 've 'm 'll 'd
    if (c === 0x27 && i + 1 < n) {
      const d = text.charCodeAt(i + 1);
      if (d === 0x73 || d === 0x74 || d === 0x6d || d === 0x64) {
        onWord(text.slice(i, i + 2));
        i += 2;
        continue;
      }
      if (i + 2 < n) {
        const e = text.charCodeAt(i + 2);
        if ((d === 0x72 && e === 0x65) || (d === 0x76 && e === 0x65) || (d === 0x6c && e === 0x6c)) {
          onWord(text.slice(i, i + 3));
          i += 3;
          continue;
        }
      }
    }
    // An optional space, then a run of letters, of numbers or of other characters.
    let j = c === 0x20 && i + 1 < n ? i + 1 : i;
    let cp = codePointAt(text, j);
    const cls = classOf(cp);
    if (cls !== C_SPACE) {
      j += cp > 0xffff ? 2 : 1;
      while (j < n) {
        const q = codePointAt(text, j);
        if (classOf(q) !== cls) break;
        j += q > 0xffff ? 2 : 1;
      }
      onWord(text.slice(start, j));
      i = j;
      continue;
    }
    // White space: the run, less its last character when something other than white space follows
    // (that character then leads the next word), unless the run is that one character.
    j = i;
    while (j < n) {
      cp = codePointAt(text, j);
      if (classOf(cp) !== C_SPACE) break;
      j += cp > 0xffff ? 2 : 1;
    }
    if (j < n && j - i > 1) {
      // White space is in the BMP: the last character is one code unit.
      j -= 1;
    }
    onWord(text.slice(start, j));
    i = j;
  }
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

// ---------------------------------------------------------------------------------------------------
// Added (special) tokens

interface AddedTokenJson {
  id: number;
  content: string;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  special?: boolean;
}

function addedTokenJson(id: number, content: string): AddedTokenJson {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}

/** Splits text around literal added tokens (longest match first), as Hugging Face tokenizers do. */
class AddedTokenSplitter {
  private readonly pattern: RegExp | null;
  private readonly ids: ReadonlyMap<string, number>;

  constructor(tokens: readonly { id: number; content: string }[]) {
    this.ids = new Map(tokens.map((t) => [t.content, t.id]));
    const contents = tokens.map((t) => t.content).filter((c) => c.length > 0);
    contents.sort((a, b) => b.length - a.length || (a < b ? -1 : a > b ? 1 : 0));
    this.pattern =
      contents.length === 0
        ? null
        : new RegExp(contents.map((c) => c.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|'), 'gu');
  }

  /** Calls onText for each stretch of plain text and onToken for each added token, in order. */
  split(text: string, onText: (s: string) => void, onToken: (id: number) => void): void {
    if (this.pattern === null) {
      if (text.length > 0) onText(text);
      return;
    }
    this.pattern.lastIndex = 0;
    let last = 0;
    for (const m of text.matchAll(this.pattern)) {
      const at = m.index ?? 0;
      if (at > last) onText(text.slice(last, at));
      onToken(this.ids.get(m[0]) as number);
      last = at + m[0].length;
    }
    if (last < text.length) onText(text.slice(last));
  }
}

// ---------------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json shape (the parts this module reads or writes)

interface BpeModelJson {
  type: 'BPE';
  dropout?: number | null;
  unk_token?: string | null;
  continuing_subword_prefix?: string | null;
  end_of_word_suffix?: string | null;
  fuse_unk?: boolean;
  byte_fallback?: boolean;
  ignore_merges?: boolean;
  vocab: Record<string, number>;
  merges: (string | [string, string])[];
}

interface TokenizerJson {
  version?: string;
  added_tokens?: AddedTokenJson[];
  normalizer?: unknown;
  pre_tokenizer?: { type?: string; add_prefix_space?: boolean; use_regex?: boolean } | null;
  post_processor?: { type?: string } | null;
  decoder?: { type?: string } | null;
  model?: { type?: string } & Partial<BpeModelJson>;
  [k: string]: unknown;
}

const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };

/** Builds a byte-level BPE tokenizer.json (the format this module saves). */
function byteLevelBpeJson(
  vocab: readonly string[],
  merges: readonly (readonly [string, string])[],
  added: readonly AddedTokenJson[],
): TokenizerJson {
  const vocabObj: Record<string, number> = {};
  for (let id = 0; id < vocab.length; id++) {
    // defineProperty, not assignment: a token spelled "__proto__" must stay an ordinary key.
    if (vocab[id] !== undefined)
      Object.defineProperty(vocabObj, vocab[id], { value: id, enumerable: true, writable: true, configurable: true });
  }
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added.map((t) => ({ ...t })),
    normalizer: null,
    pre_tokenizer: { ...BYTE_LEVEL },
    post_processor: { ...BYTE_LEVEL },
    decoder: { ...BYTE_LEVEL },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      vocab: vocabObj,
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
}

function findEndOfText(added: readonly AddedTokenJson[] | undefined): number | null {
  const t = (added ?? []).find((a) => a.content === END_OF_TEXT);
  return t ? t.id : null;
}

// ---------------------------------------------------------------------------------------------------
// Byte-level tokenizer

const BYTE_VOCAB_SIZE = 257;

/** 256 byte ids (id = byte value) plus `<|endoftext|>` = 256. */
export class ByteTokenizer implements Tokenizer {
  readonly kind = 'bytes' as const;
  readonly vocabSize = BYTE_VOCAB_SIZE;
  readonly endOfTextId = 256;
  readonly name: string;
  private readonly splitter = new AddedTokenSplitter([{ id: 256, content: END_OF_TEXT }]);

  constructor(name = 'bytes') {
    this.name = name;
  }

  encode(text: string): number[] {
    const out: number[] = [];
    this.splitter.split(
      text,
      (s) => {
        const bytes = utf8Encoder.encode(s);
        for (let i = 0; i < bytes.length; i++) out.push(bytes[i]);
      },
      (id) => out.push(id),
    );
    return out;
  }

  decode(ids: number[]): string {
    let text = '';
    let run: number[] = [];
    for (const id of ids) {
      if (id === 256) {
        text += utf8Decoder.decode(Uint8Array.from(run)) + END_OF_TEXT;
        run = [];
      } else if (Number.isInteger(id) && id >= 0 && id < 256) {
        run.push(id);
      } else {
        throw new Error(`token id ${id} is outside the ${this.name} tokenizer's vocabulary (size ${this.vocabSize})`);
      }
    }
    return text + utf8Decoder.decode(Uint8Array.from(run));
  }

  toJSON(): object {
    return byteLevelBpeJson(BYTE_TO_CHAR.concat([END_OF_TEXT]), [], [addedTokenJson(256, END_OF_TEXT)]);
  }
}

// ---------------------------------------------------------------------------------------------------
// Native byte-level BPE

const PAIR_SHIFT = 2 ** 21; // ids below 2^21; pair key = a * 2^21 + b stays an exact double
const CACHE_LIMIT = 200_000;
const CACHE_MAX_WORD = 256;

/** Thrown by BpeTokenizer.fromJSON for a tokenizer.json outside what the native engine handles. */
class NotNative extends Error {}

/**
 * Byte-level BPE encoded by this module: no normaliser or NFC (Pythia's), ByteLevel pre-tokenizer
 * without prefix space. Produces the same ids as the Rust `tokenizers` library on such a
 * tokenizer.json. As that library does, it splits the text on added tokens in two rounds: those with
 * `normalized: false` (the special tokens) on the raw text, then, after normalisation, those with
 * `normalized: true` (GPT-NeoX's runs of spaces).
 */
export class BpeTokenizer implements Tokenizer {
  readonly kind = 'bpe' as const;
  readonly vocabSize: number;
  readonly name: string;
  readonly endOfTextId: number | null;
  /** Number of merges. */
  readonly mergeCount: number;
  private readonly byteIds: Int32Array;
  private readonly ranks: PairRanks;
  private readonly results: Int32Array;
  private readonly idBytes: (Uint8Array | undefined)[];
  private readonly addedById: Map<number, string>;
  /** Added tokens matched on the raw text, and those matched on the normalised text. */
  private readonly rawSplitter: AddedTokenSplitter;
  private readonly normalizedSplitter: AddedTokenSplitter | null;
  private readonly nfc: boolean;
  private readonly json: TokenizerJson;
  /** Word -> its ids; a word of one token (most of them, with a large vocabulary) maps to the id itself. */
  private cache = new Map<string, number | number[]>();

  private constructor(json: TokenizerJson, name: string | undefined) {
    const model = json.model as BpeModelJson;
    this.json = json;
    const vocab = new Map<string, number>(Object.entries(model.vocab));
    let maxId = -1;
    this.idBytes = [];
    for (const [tok, id] of vocab) {
      if (!Number.isInteger(id) || id < 0 || id >= PAIR_SHIFT)
        throw new Error(`vocab id ${id} for ${JSON.stringify(tok)} is invalid`);
      maxId = Math.max(maxId, id);
      const bytes = tokenStringToBytes(tok);
      if (bytes !== null && this.idBytes[id] === undefined) this.idBytes[id] = bytes;
    }
    const added = json.added_tokens ?? [];
    this.addedById = new Map();
    for (const t of added) {
      if (!Number.isInteger(t.id) || t.id < 0 || t.id >= PAIR_SHIFT)
        throw new Error(`added token id ${t.id} is invalid`);
      maxId = Math.max(maxId, t.id);
      this.addedById.set(t.id, t.content);
    }
    this.vocabSize = maxId + 1;
    this.byteIds = new Int32Array(256);
    for (let b = 0; b < 256; b++) {
      const id = vocab.get(BYTE_TO_CHAR[b]);
      if (id === undefined) throw new NotNative(`byte ${b} has no vocab entry`);
      this.byteIds[b] = id;
    }
    const merges = model.merges.map((m) => (Array.isArray(m) ? m : (m.split(' ', 2) as [string, string])));
    this.ranks = new PairRanks(merges.length);
    this.results = new Int32Array(merges.length);
    for (let r = 0; r < merges.length; r++) {
      const [a, b] = merges[r];
      const ia = vocab.get(a);
      const ib = vocab.get(b);
      const ic = vocab.get(a + b);
      if (ia === undefined || ib === undefined || ic === undefined)
        throw new NotNative(`merge ${r} (${a} ${b}) refers to a token outside the vocab`);
      if (this.ranks.get(ia, ib) < 0) this.ranks.set(ia, ib, r);
      this.results[r] = ic;
    }
    this.mergeCount = merges.length;
    // The Rust library's default for an added token without the field: normalized unless special.
    const normalized = (t: AddedTokenJson): boolean => t.normalized ?? !t.special;
    this.rawSplitter = new AddedTokenSplitter(added.filter((t) => !normalized(t)));
    const late = added.filter(normalized);
    this.normalizedSplitter = late.length > 0 ? new AddedTokenSplitter(late) : null;
    this.nfc = normalizerOf(json) === 'nfc';
    this.endOfTextId = findEndOfText(added);
    this.name = name ?? `bpe-${this.vocabSize}`;
  }

  /** Builds the native engine from a tokenizer.json object; throws if the file needs features it lacks. */
  static fromJSON(json: object, name?: string): BpeTokenizer {
    const why = nativeIncompatibility(json as TokenizerJson);
    if (why !== null)
      throw new Error(`tokenizer.json is not a plain byte-level BPE (${why}); load it with engine 'hf'`);
    try {
      return new BpeTokenizer(json as TokenizerJson, name);
    } catch (err) {
      if (err instanceof NotNative)
        throw new Error(`tokenizer.json is not a plain byte-level BPE (${err.message}); load it with engine 'hf'`);
      throw err;
    }
  }

  /** @internal used by tokenizerFromJSON to fall back quietly. */
  static tryFromJSON(json: object, name?: string): BpeTokenizer | null {
    if (nativeIncompatibility(json as TokenizerJson) !== null) return null;
    try {
      return new BpeTokenizer(json as TokenizerJson, name);
    } catch (err) {
      if (err instanceof NotNative) return null;
      throw err;
    }
  }

  encode(text: string): number[] {
    const out: number[] = [];
    const pushId = (id: number): void => {
      out.push(id);
    };
    const onWord = (word: string): void => {
      const ids = this.cache.get(word) ?? this.encodeWord(word);
      if (typeof ids === 'number') out.push(ids);
      else for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    };
    const onPlain = (s: string): void => forEachPreToken(s, onWord);
    const onNormalized =
      this.normalizedSplitter === null
        ? onPlain
        : (s: string): void => (this.normalizedSplitter as AddedTokenSplitter).split(s, onPlain, pushId);
    this.rawSplitter.split(text, this.nfc ? (s) => onNormalized(s.normalize('NFC')) : onNormalized, pushId);
    return out;
  }

  decode(ids: number[]): string {
    let text = '';
    const run: Uint8Array[] = [];
    let runLen = 0;
    const flush = (): void => {
      if (runLen === 0) return;
      const buf = new Uint8Array(runLen);
      let off = 0;
      for (const b of run) {
        buf.set(b, off);
        off += b.length;
      }
      text += utf8Decoder.decode(buf);
      run.length = 0;
      runLen = 0;
    };
    for (const id of ids) {
      const added = this.addedById.get(id);
      if (added !== undefined) {
        flush();
        text += added;
        continue;
      }
      const bytes = Number.isInteger(id) ? this.idBytes[id] : undefined;
      if (bytes === undefined) {
        throw new Error(`token id ${id} is outside the ${this.name} tokenizer's vocabulary (size ${this.vocabSize})`);
      }
      run.push(bytes);
      runLen += bytes.length;
    }
    flush();
    return text;
  }

  toJSON(): object {
    return this.json;
  }

  /** A word's ids by merging (the caller looked in the cache first); cached for next time. */
  private encodeWord(word: string): number | number[] {
    const bytes = utf8Encoder.encode(word);
    const syms = new Array<number>(bytes.length);
    for (let i = 0; i < bytes.length; i++) syms[i] = this.byteIds[bytes[i]];
    const merged = syms.length <= 48 ? this.mergeSmall(syms) : this.mergeLarge(syms);
    const ids = merged.length === 1 ? merged[0] : merged;
    if (word.length < CACHE_MAX_WORD) {
      if (this.cache.size >= CACHE_LIMIT) this.cache = new Map();
      this.cache.set(word, ids);
    }
    return ids;
  }

  /** Repeatedly merges the lowest-rank adjacent pair (leftmost on ties). O(n^2), for short words. */
  private mergeSmall(syms: number[]): number[] {
    const ranks = this.ranks;
    while (syms.length > 1) {
      let best = Infinity;
      let at = -1;
      for (let i = 0; i < syms.length - 1; i++) {
        const r = ranks.get(syms[i], syms[i + 1]);
        if (r >= 0 && r < best) {
          best = r;
          at = i;
        }
      }
      if (at < 0) break;
      syms[at] = this.results[best];
      syms.splice(at + 1, 1);
    }
    return syms;
  }

  /** Same merge order as mergeSmall, with a heap over (rank, position) and a linked list. */
  private mergeLarge(syms: number[]): number[] {
    const n = syms.length;
    const sym = Int32Array.from(syms);
    const next = new Int32Array(n);
    const prev = new Int32Array(n);
    const alive = new Uint8Array(n).fill(1);
    for (let i = 0; i < n; i++) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    const POS = 2 ** 32;
    const heap = new MinHeap();
    const pushPair = (i: number): void => {
      const j = next[i];
      if (j < 0) return;
      const r = this.ranks.get(sym[i], sym[j]);
      if (r >= 0) heap.push(r * POS + i);
    };
    for (let i = 0; i < n - 1; i++) pushPair(i);
    while (heap.size > 0) {
      const e = heap.pop();
      const r = Math.floor(e / POS);
      const i = e - r * POS;
      const j = next[i];
      if (!alive[i] || j < 0 || this.ranks.get(sym[i], sym[j]) !== r) continue;
      sym[i] = this.results[r];
      alive[j] = 0;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      if (prev[i] >= 0) pushPair(prev[i]);
      pushPair(i);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(sym[i]);
    return out;
  }
}

/**
 * Merge ranks by pair of ids: an open-addressing hash table in typed arrays. (A Map keyed by
 * a·2^21 + b hashes heap-allocated doubles, several times slower on the merge loop.)
 */
class PairRanks {
  private readonly left: Int32Array;
  private readonly right: Int32Array;
  private readonly rank: Int32Array;
  private readonly mask: number;

  constructor(pairs: number) {
    let size = 16;
    while (size < pairs * 2) size *= 2;
    this.mask = size - 1;
    this.left = new Int32Array(size).fill(-1);
    this.right = new Int32Array(size);
    this.rank = new Int32Array(size).fill(-1);
  }

  private slot(a: number, b: number): number {
    let i = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca6b)) & this.mask;
    while (this.left[i] !== -1 && (this.left[i] !== a || this.right[i] !== b)) i = (i + 1) & this.mask;
    return i;
  }

  /** The rank of merging (a, b), or -1. */
  get(a: number, b: number): number {
    return this.rank[this.slot(a, b)];
  }

  set(a: number, b: number, r: number): void {
    const i = this.slot(a, b);
    this.left[i] = a;
    this.right[i] = b;
    this.rank[i] = r;
  }
}

class MinHeap {
  private a: number[] = [];
  get size(): number {
    return this.a.length;
  }
  push(v: number): void {
    const a = this.a;
    let i = a.length;
    a.push(v);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p] <= v) break;
      a[i] = a[p];
      i = p;
    }
    a[i] = v;
  }
  pop(): number {
    const a = this.a;
    const top = a[0];
    const last = a.pop() as number;
    if (a.length > 0) {
      let i = 0;
      const n = a.length;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const c = l + 1 < n && a[l + 1] < a[l] ? l + 1 : l;
        if (a[c] >= last) break;
        a[i] = a[c];
        i = c;
      }
      a[i] = last;
    }
    return top;
  }
}

/** The normaliser of a tokenizer.json when the native engine has it ('none' or 'nfc'), else null. */
function normalizerOf(json: TokenizerJson): 'none' | 'nfc' | null {
  const n = json.normalizer as { type?: string; normalizers?: { type?: string }[] } | null | undefined;
  if (n == null) return 'none';
  if (n.type === 'NFC') return 'nfc';
  if (n.type === 'Sequence' && Array.isArray(n.normalizers)) {
    const kinds = n.normalizers.map((x) => x?.type);
    if (kinds.length === 0) return 'none';
    if (kinds.length === 1 && kinds[0] === 'NFC') return 'nfc';
  }
  return null;
}

/** Why the native engine cannot run this tokenizer.json, or null if it can. */
function nativeIncompatibility(json: TokenizerJson): string | null {
  const m = json.model;
  if (m?.type !== 'BPE') return `model type ${m?.type ?? 'missing'}`;
  if (!m.vocab || typeof m.vocab !== 'object' || !Array.isArray(m.merges)) return 'model lacks vocab or merges';
  if (m.dropout != null) return 'dropout';
  if (m.continuing_subword_prefix) return 'continuing_subword_prefix';
  if (m.end_of_word_suffix) return 'end_of_word_suffix';
  if (m.byte_fallback) return 'byte_fallback';
  if (m.ignore_merges) return 'ignore_merges';
  if (normalizerOf(json) === null) return `normalizer ${JSON.stringify(json.normalizer)}`;
  const pt = json.pre_tokenizer;
  if (pt?.type !== 'ByteLevel' || pt.add_prefix_space || pt.use_regex === false)
    return 'pre_tokenizer is not ByteLevel without prefix space';
  if (json.decoder?.type !== 'ByteLevel') return 'decoder is not ByteLevel';
  if (json.post_processor != null && json.post_processor.type !== 'ByteLevel')
    return `post_processor ${json.post_processor.type}`;
  for (const t of json.added_tokens ?? []) {
    if (t.lstrip || t.rstrip || t.single_word)
      return `added token ${JSON.stringify(t.content)} strips or is single-word`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------
// Hugging Face engine

/** Any tokenizer.json, through `@huggingface/tokenizers` (pure JS, offline). */
export class HfTokenizer implements Tokenizer {
  readonly kind = 'hf' as const;
  readonly vocabSize: number;
  readonly name: string;
  readonly endOfTextId: number | null;
  private readonly impl: HfTokenizerImpl;
  private readonly json: TokenizerJson;
  private readonly cleanUp: boolean;

  /**
   * @param json tokenizer.json contents
   * @param config tokenizer_config.json contents, if any. `clean_up_tokenization_spaces` defaults to
   *   false here (exact decoding), unlike tokenizers.js's default of true.
   */
  constructor(json: object, config: Record<string, unknown> = {}, name?: string) {
    this.json = json as TokenizerJson;
    this.cleanUp = config.clean_up_tokenization_spaces === true;
    this.impl = new HfTokenizerImpl(json, { ...config, clean_up_tokenization_spaces: this.cleanUp });
    let maxId = -1;
    for (const id of this.impl.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    let eot = findEndOfText(this.json.added_tokens);
    if (eot === null && typeof config.eos_token === 'string') eot = this.impl.token_to_id(config.eos_token) ?? null;
    this.endOfTextId = eot;
    this.name = name ?? `hf-${String(this.json.model?.type ?? 'model').toLowerCase()}-${this.vocabSize}`;
  }

  encode(text: string): number[] {
    if (text.length === 0) return [];
    return this.impl.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: number[]): string {
    if (ids.length === 0) return '';
    for (const id of ids) {
      if (!Number.isInteger(id) || this.impl.id_to_token(id) === undefined) {
        throw new Error(`token id ${id} is outside the ${this.name} tokenizer's vocabulary (size ${this.vocabSize})`);
      }
    }
    return this.impl.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: this.cleanUp });
  }

  toJSON(): object {
    return this.json;
  }
}

// ---------------------------------------------------------------------------------------------------
// Choosing, loading, saving, hashing

export type TokenizerEngine = 'auto' | 'native' | 'hf';

export interface LoadTokenizerOptions {
  /**
   * 'auto' (default): the byte tokenizer for a zero-merge 257-entry byte vocab, the native BPE engine for
   * other byte-level BPE files without a normaliser or with NFC (Pythia's), and @huggingface/tokenizers
   * for everything else. 'native' insists on the native engine; 'hf' always uses @huggingface/tokenizers.
   */
  engine?: TokenizerEngine;
  /** tokenizer_config.json contents, used by the 'hf' engine. */
  config?: Record<string, unknown>;
  name?: string;
}

function isByteTokenizerJson(json: TokenizerJson): boolean {
  const m = json.model;
  if (m?.type !== 'BPE' || !m.vocab || !Array.isArray(m.merges) || m.merges.length !== 0) return false;
  const vocab = new Map<string, number>(Object.entries(m.vocab));
  const added = json.added_tokens ?? [];
  if (added.length !== 1 || added[0].id !== 256 || added[0].content !== END_OF_TEXT) return false;
  const entries = [...vocab];
  const extra = entries.filter(([, id]) => id >= 256);
  if (entries.length - extra.length !== 256 || extra.some(([tok, id]) => id !== 256 || tok !== END_OF_TEXT))
    return false;
  for (let b = 0; b < 256; b++) if (vocab.get(BYTE_TO_CHAR[b]) !== b) return false;
  return nativeIncompatibility(json) === null;
}

/** Builds a tokenizer from a parsed tokenizer.json, choosing the engine by content (see LoadTokenizerOptions). */
export function tokenizerFromJSON(json: object, options: LoadTokenizerOptions = {}): Tokenizer {
  if (
    json === null ||
    typeof json !== 'object' ||
    Array.isArray(json) ||
    typeof (json as TokenizerJson).model !== 'object'
  ) {
    throw new Error('tokenizer.json has no "model" object');
  }
  const engine = options.engine ?? 'auto';
  const tj = json as TokenizerJson;
  if (engine === 'hf') return new HfTokenizer(json, options.config ?? {}, options.name);
  if (isByteTokenizerJson(tj)) return new ByteTokenizer(options.name);
  if (engine === 'native') return BpeTokenizer.fromJSON(json, options.name);
  return BpeTokenizer.tryFromJSON(json, options.name) ?? new HfTokenizer(json, options.config ?? {}, options.name);
}

/**
 * Loads a tokenizer from a tokenizer.json file or a folder holding one (a Hugging Face checkpoint). A
 * tokenizer_config.json beside it is passed to the 'hf' engine.
 */
export async function loadTokenizer(fileOrDir: string, options: LoadTokenizerOptions = {}): Promise<Tokenizer> {
  let file = fileOrDir;
  let st;
  try {
    st = await fsp.stat(fileOrDir);
  } catch {
    throw new Error(`tokenizer ${fileOrDir}: no such file or directory`);
  }
  if (st.isDirectory()) file = path.join(fileOrDir, TOKENIZER_FILE);
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    throw new Error(`tokenizer ${fileOrDir}: cannot read ${file}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`tokenizer ${file}: invalid JSON (${(err as Error).message})`);
  }
  let config = options.config;
  if (config === undefined) {
    const cfgFile = path.join(path.dirname(file), 'tokenizer_config.json');
    try {
      config = JSON.parse(await fsp.readFile(cfgFile, 'utf8')) as Record<string, unknown>;
    } catch {
      config = undefined;
    }
  }
  try {
    return tokenizerFromJSON(json as object, { ...options, config });
  } catch (err) {
    throw new Error(`tokenizer ${file}: ${(err as Error).message}`);
  }
}

/** Writes `dir/tokenizer.json` atomically (temp file, fsync, rename) and returns its path. */
export async function saveTokenizer(tok: Tokenizer, dir: string): Promise<string> {
  const file = path.join(dir, TOKENIZER_FILE);
  await writeFileAtomic(file, JSON.stringify(tok.toJSON()));
  return file;
}

const hashes = new WeakMap<Tokenizer, string>();

/** sha256 (hex) of the tokenizer's canonical JSON: equal for equal tokenizer.json content. */
export function tokenizerHash(tok: Tokenizer): string {
  let h = hashes.get(tok);
  if (h === undefined) {
    h = sha256Hex(canonicalJson(tok.toJSON()));
    hashes.set(tok, h);
  }
  return h;
}

// ---------------------------------------------------------------------------------------------------
// Training

export interface TrainBpeOptions {
  /** Target vocabulary size including the 256 bytes and `<|endoftext|>` (so at least 257). */
  vocabSize: number;
  /** At most this many UTF-8 bytes of text are used (default 1 MiB), sampled evenly across documents. */
  maxBytes?: number;
  /** Stop early when the best pair occurs fewer times (default 2). */
  minFrequency?: number;
  name?: string;
}

/**
 * Picks at most maxBytes of training text from documents, deterministically: every k-th document
 * (k chosen so the sample covers the whole corpus), the last one cut at a character boundary.
 */
export function sampleTrainingText(documents: readonly string[], maxBytes: number): string[] {
  const sizes = documents.map((d) => Buffer.byteLength(d, 'utf8'));
  const total = sizes.reduce((a, b) => a + b, 0);
  const stride = Math.max(1, Math.ceil(total / maxBytes));
  const out: string[] = [];
  let used = 0;
  for (let i = 0; i < documents.length && used < maxBytes; i += stride) {
    if (used + sizes[i] <= maxBytes) {
      out.push(documents[i]);
      used += sizes[i];
    } else {
      const bytes = utf8Encoder.encode(documents[i]).subarray(0, maxBytes - used);
      const cut = utf8Decoder.decode(bytes).replace(/\uFFFD$/u, '');
      if (cut.length > 0) out.push(cut);
      used = maxBytes;
    }
  }
  return out;
}

/**
 * Trains a byte-level BPE on documents (deterministic). Ids 0..255 are bytes, 256 is `<|endoftext|>`,
 * merged tokens follow. Pre-tokenisation is GPT-2's, so merges never cross word boundaries; literal
 * `<|endoftext|>` in the text is skipped. Ties between equally frequent pairs go to the smaller
 * (left id, right id).
 */
export function trainBpe(documents: readonly string[], options: TrainBpeOptions): BpeTokenizer {
  const { vocabSize } = options;
  if (!Number.isInteger(vocabSize) || vocabSize < BYTE_VOCAB_SIZE || vocabSize > 65536) {
    throw new Error(`vocabSize ${vocabSize} must be an integer in [${BYTE_VOCAB_SIZE}, 65536]`);
  }
  const maxBytes = options.maxBytes ?? 1 << 20;
  const minFrequency = Math.max(1, options.minFrequency ?? 2);
  const texts = sampleTrainingText(documents, maxBytes);

  // Word frequencies.
  const splitter = new AddedTokenSplitter([{ id: 256, content: END_OF_TEXT }]);
  const wordCounts = new Map<string, number>();
  for (const text of texts) {
    splitter.split(
      text,
      (s) => {
        for (const w of preTokenize(s)) wordCounts.set(w, (wordCounts.get(w) ?? 0) + 1);
      },
      () => undefined,
    );
  }
  const words: number[][] = [];
  const freqs: number[] = [];
  for (const [w, c] of wordCounts) {
    words.push(Array.from(utf8Encoder.encode(w)));
    freqs.push(c);
  }

  // Vocabulary: bytes, <|endoftext|>, merges.
  const vocab: string[] = BYTE_TO_CHAR.concat([END_OF_TEXT]);
  const idOf = new Map<string, number>(vocab.map((t, i) => [t, i]));
  const merges: [string, string][] = [];

  const pairCount = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const addPairs = (w: number, sign: number): void => {
    const s = words[w];
    const f = freqs[w] * sign;
    for (let i = 0; i < s.length - 1; i++) {
      const k = s[i] * PAIR_SHIFT + s[i + 1];
      const c = (pairCount.get(k) ?? 0) + f;
      if (c === 0) pairCount.delete(k);
      else pairCount.set(k, c);
      if (sign > 0) {
        let set = pairWords.get(k);
        if (set === undefined) pairWords.set(k, (set = new Set()));
        set.add(w);
      }
    }
  };
  for (let w = 0; w < words.length; w++) addPairs(w, 1);

  while (vocab.length < vocabSize) {
    let bestKey = -1;
    let bestCount = 0;
    for (const [k, c] of pairCount) {
      if (c > bestCount || (c === bestCount && k < bestKey)) {
        bestKey = k;
        bestCount = c;
      }
    }
    if (bestKey < 0 || bestCount < minFrequency) break;
    const a = Math.floor(bestKey / PAIR_SHIFT);
    const b = bestKey - a * PAIR_SHIFT;
    const merged = vocab[a] + vocab[b];
    let c = idOf.get(merged);
    if (c === undefined) {
      c = vocab.length;
      vocab.push(merged);
      idOf.set(merged, c);
    }
    merges.push([vocab[a], vocab[b]]);
    for (const w of pairWords.get(bestKey) ?? []) {
      const s = words[w];
      let has = false;
      for (let i = 0; i < s.length - 1; i++) {
        if (s[i] === a && s[i + 1] === b) {
          has = true;
          break;
        }
      }
      if (!has) continue;
      addPairs(w, -1);
      const t: number[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i < s.length - 1 && s[i] === a && s[i + 1] === b) {
          t.push(c);
          i++;
        } else {
          t.push(s[i]);
        }
      }
      words[w] = t;
      addPairs(w, 1);
    }
    pairWords.delete(bestKey);
    pairCount.delete(bestKey);
  }

  const json = byteLevelBpeJson(vocab, merges, [addedTokenJson(256, END_OF_TEXT)]);
  return BpeTokenizer.fromJSON(json, options.name);
}
