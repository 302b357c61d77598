/**
 * Data specs and input files: what a corpus is made of, and reading it as a stream.
 *
 * A data spec names one source or a mixture of sources (docs/data.md):
 *
 *   sotu:train | sotu:val | mobydick                  embedded corpora
 *   PATH | FOLDER | GLOB [;key=value]...              files (a folder: recursively, sorted)
 *   FILE.yaml | FILE.json [;split=train|val]          a spec file: weighted sources, validation
 *
 * Options after `;`: `field` (JSONL key or parquet column holding the text, default `text`), `format`
 * (text, jsonl, parquet, bin, npy: overrides the file extension), `dtype` (uint16 or uint32, for .bin),
 * `invalid` (error or skip: what an invalid document does), `holdout` (fraction of the tokens held out
 * for validation) and `split` (train or val: which side of the holdout, or of a spec file, to use).
 *
 * Input files are cut into parts, the unit of tokenisation, caching and resumption: a JSONL file or a
 * pre-tokenised file in pieces of about PART_BYTES (JSONL cut after a newline), a parquet file by row
 * group, anything compressed or a text file whole. Reading a part streams it: compressed files are
 * decompressed as they are read (.gz with node:zlib, .zst with fzstd), and no more than a chunk and
 * one document are held at once.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import { isUtf8 } from 'node:buffer';
import * as path from 'node:path';
import { createGunzip } from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { parquetMetadataAsync, parquetRead, type FileMetaData } from 'hyparquet';
import { compressors as parquetCompressors } from 'hyparquet-compressors';
import { parse as parseYaml } from 'yaml';
import { canonicalJson } from './fsutil.js';
import { type Corpus, mobyDickChapters, sotuSplit } from './corpus.js';

export type InputFormat = 'text' | 'jsonl' | 'parquet' | 'bin' | 'npy';
export type Compression = 'gzip' | 'zstd';
export type TokenDtype = 'uint16' | 'uint32';
export type EmbeddedCorpus = 'sotu:train' | 'sotu:val' | 'mobydick';

/** One source of documents (or of token ids, for pre-tokenised files). */
export interface SourceSpec {
  /** An embedded corpus name, or an absolute path, folder or glob. */
  path: string;
  /** Forced format; otherwise from each file's extension. */
  format?: InputFormat;
  /** JSONL key or parquet column holding the text. */
  field: string;
  /** Ids of a .bin file. */
  dtype: TokenDtype;
  /** What an invalid document does: stop with an error naming it, or be skipped and counted. */
  invalid: 'error' | 'skip';
  /** Mixture weight (relative). */
  weight: number;
  /** Fraction of the tokens held out for validation (0: none). */
  holdout: number;
}

export interface DataSpec {
  /** The spec as given, trimmed. */
  text: string;
  sources: SourceSpec[];
  /** Which side of the holdouts (or of a spec file) this spec reads. */
  split: 'train' | 'val';
}

export const EMBEDDED: readonly EmbeddedCorpus[] = ['sotu:train', 'sotu:val', 'mobydick'];
/** Target size of one part of an uncompressed JSONL or pre-tokenised file. */
export const PART_BYTES = 64 * 1024 * 1024;
/** Largest text document (a whole text file): V8's string limit is about 512 MiB of UTF-16. */
export const MAX_DOCUMENT_BYTES = 256 * 1024 * 1024;

const FORMATS: readonly InputFormat[] = ['text', 'jsonl', 'parquet', 'bin', 'npy'];
const EXTENSIONS: Record<string, InputFormat> = {
  '.txt': 'text',
  '.md': 'text',
  '.text': 'text',
  '.jsonl': 'jsonl',
  '.ndjson': 'jsonl',
  '.parquet': 'parquet',
  '.bin': 'bin',
  '.npy': 'npy',
};
const _COMPRESSED: Record<string, Compression> = { '.gz': 'gzip', '.zst': 'zstd', '.zstd': 'zstd' };
const OPTION_KEYS = ['field', 'format', 'dtype', 'invalid', 'holdout', 'split'] as const;

/** An error in the data: the message names the file and where in it. */
export class DataError extends Error {
  override name = 'DataError';
}

// ---------------------------------------------------------------------------------------------------
// Specs

function defaults(p: string): SourceSpec {
  return { path: p, field: 'text', dtype: 'uint16', invalid: 'error', weight: 1, holdout: 0 };
}

function applyOption(src: SourceSpec, key: string, value: string, where: string): 'train' | 'val' | undefined {
  switch (key) {
    case 'field':
      if (value.length === 0) throw new DataError(`${where}: field is empty`);
      src.field = value;
      return undefined;
    case 'format':
      if (!FORMATS.includes(value as InputFormat))
        throw new DataError(`${where}: format ${JSON.stringify(value)} is not one of ${FORMATS.join(', ')}`);
      src.format = value as InputFormat;
      return undefined;
    case 'dtype':
      if (value !== 'uint16' && value !== 'uint32')
        throw new DataError(`${where}: dtype ${JSON.stringify(value)} is not uint16 or uint32`);
      src.dtype = value;
      return undefined;
    case 'invalid':
      if (value !== 'error' && value !== 'skip')
        throw new DataError(`${where}: invalid ${JSON.stringify(value)} is not error or skip`);
      src.invalid = value;
      return undefined;
    case 'holdout': {
      const f = Number(value);
      if (!(f >= 0 && f <= 0.5))
        throw new DataError(`${where}: holdout ${JSON.stringify(value)} is not a fraction in [0, 0.5]`);
      src.holdout = f;
      return undefined;
    }
    case 'split':
      if (value !== 'train' && value !== 'val')
        throw new DataError(`${where}: split ${JSON.stringify(value)} is not train or val`);
      return value;
    default:
      throw new DataError(`${where}: unknown option ${JSON.stringify(key)} (options: ${OPTION_KEYS.join(', ')})`);
  }
}

/**
 * Parses a data spec (see the module comment). Paths resolve against cwd; paths inside a spec file
 * against the spec file's folder. A `file:` prefix forces a path.
 */
export function parseDataSpec(spec: string, cwd: string = process.cwd()): DataSpec {
  const text = spec.trim();
  if (text.length === 0)
    throw new DataError(`data spec is empty; use one of ${EMBEDDED.join(', ')}, a path or a spec file`);
  const [head, ...opts] = text.split(';');
  let target = head.trim();
  let forcedPath = false;
  if (target.startsWith('file:')) {
    target = target.slice('file:'.length);
    forcedPath = true;
    if (target.length === 0) throw new DataError(`data spec ${JSON.stringify(spec)} names no path`);
  }
  if (
    !forcedPath &&
    target.startsWith('sotu:') &&
    !EMBEDDED.includes(target as EmbeddedCorpus) &&
    target !== 'sotu:validation'
  ) {
    throw new DataError(`data spec ${JSON.stringify(spec)}: unknown sotu split; use sotu:train or sotu:val`);
  }
  const embedded = forcedPath
    ? undefined
    : target === 'sotu:validation'
      ? 'sotu:val'
      : target === 'moby-dick'
        ? 'mobydick'
        : EMBEDDED.find((e) => e === target);
  const src = defaults(embedded ?? path.resolve(cwd, target));
  let split: 'train' | 'val' = 'train';
  const fileSpec = embedded === undefined && /\.(ya?ml|json)$/i.test(target);
  const options: [string, string][] = [];
  for (const o of opts) {
    if (o.trim().length === 0) continue;
    const eq = o.indexOf('=');
    if (eq < 0)
      throw new DataError(`data spec ${JSON.stringify(spec)}: option ${JSON.stringify(o.trim())} is not key=value`);
    options.push([o.slice(0, eq).trim(), o.slice(eq + 1).trim()]);
  }
  if (fileSpec) {
    for (const [k, v] of options) {
      if (k !== 'split')
        throw new DataError(
          `data spec ${JSON.stringify(spec)}: a spec file takes only the split option, not ${JSON.stringify(k)}`,
        );
      split = applyOption(src, k, v, `data spec ${JSON.stringify(spec)}`) ?? split;
    }
    return { text, sources: readSpecFile(src.path, split), split };
  }
  for (const [k, v] of options) split = applyOption(src, k, v, `data spec ${JSON.stringify(spec)}`) ?? split;
  if (split === 'val' && src.holdout === 0)
    throw new DataError(`data spec ${JSON.stringify(spec)}: split=val needs a holdout fraction (holdout=…)`);
  return { text, sources: [src], split };
}

interface SpecFileSource {
  path?: unknown;
  weight?: unknown;
  [k: string]: unknown;
}

/** A spec file: `sources` (each with `path`, optional `weight` and options) and `validation`. */
function readSpecFile(file: string, split: 'train' | 'val'): SourceSpec[] {
  let doc: unknown;
  try {
    const raw = fs.readFileSync(file, 'utf8');
    doc = file.toLowerCase().endsWith('.json') ? JSON.parse(raw) : parseYaml(raw);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new DataError(
      `data spec ${file}: ${code === 'ENOENT' ? 'no such file' : `cannot read it (${(err as Error).message})`}`,
    );
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc))
    throw new DataError(`data spec ${file}: expected a mapping with "sources"`);
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d))
    if (k !== 'sources' && k !== 'validation')
      throw new DataError(`data spec ${file}: unknown key ${JSON.stringify(k)} (keys: sources, validation)`);
  const dir = path.dirname(file);
  const sources = parseSources(d.sources, dir, `data spec ${file}: sources`);
  const val = d.validation;
  if (val === undefined) {
    if (split === 'val') throw new DataError(`data spec ${file}: split=val, but the file has no "validation"`);
    return sources;
  }
  if (val === null || typeof val !== 'object' || Array.isArray(val))
    throw new DataError(`data spec ${file}: validation must be a mapping with "holdout" or "sources"`);
  const v = val as Record<string, unknown>;
  for (const k of Object.keys(v))
    if (k !== 'holdout' && k !== 'sources')
      throw new DataError(`data spec ${file}: validation: unknown key ${JSON.stringify(k)} (keys: holdout, sources)`);
  if ((v.holdout === undefined) === (v.sources === undefined))
    throw new DataError(`data spec ${file}: validation needs exactly one of "holdout" and "sources"`);
  if (v.holdout !== undefined) {
    const f = v.holdout;
    if (typeof f !== 'number' || !(f > 0 && f <= 0.5))
      throw new DataError(`data spec ${file}: validation.holdout ${JSON.stringify(f)} is not a fraction in (0, 0.5]`);
    for (const s of sources) s.holdout = f;
    return sources;
  }
  return split === 'val' ? parseSources(v.sources, dir, `data spec ${file}: validation.sources`) : sources;
}

function parseSources(value: unknown, dir: string, where: string): SourceSpec[] {
  if (!Array.isArray(value) || value.length === 0)
    throw new DataError(`${where}: expected a non-empty list of sources`);
  return value.map((entry, i) => {
    const at = `${where}[${i}]`;
    if (typeof entry === 'string') entry = { path: entry };
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry))
      throw new DataError(`${at}: expected a path or a mapping with "path"`);
    const e = entry as SpecFileSource;
    if (typeof e.path !== 'string' || e.path.length === 0)
      throw new DataError(`${at}: "path" must be a non-empty string`);
    const embedded = EMBEDDED.find((x) => x === e.path);
    const src = defaults(embedded ?? path.resolve(dir, e.path));
    for (const [k, v] of Object.entries(e)) {
      if (k === 'path') continue;
      if (k === 'weight') {
        if (typeof v !== 'number' || !(v > 0) || !Number.isFinite(v))
          throw new DataError(`${at}: weight ${JSON.stringify(v)} must be a positive number`);
        src.weight = v;
        continue;
      }
      if (k === 'split') throw new DataError(`${at}: "split" belongs after the spec file's name (FILE;split=val)`);
      if (typeof v !== 'string' && typeof v !== 'number')
        throw new DataError(`${at}: ${k} must be a string or a number`);
      applyOption(src, k, String(v), at);
    }
    return src;
  });
}

/** A source's identity in the token store: what decides its tokens (not its weight, holdout or split). */
export function sourceKey(src: SourceSpec): string {
  return canonicalJson({
    path: src.path,
    format: src.format ?? null,
    field: src.field,
    dtype: src.dtype,
    invalid: src.invalid,
  });
}

// ---------------------------------------------------------------------------------------------------
// Input files

export interface InputFile {
  /** Absolute path, or the embedded corpus's name. */
  path: string;
  format: InputFormat | 'embedded';
  compression: Compression | null;
  size: number;
  mtimeMs: number;
}

export interface ListedInputs {
  files: InputFile[];
  /** Files in a listed folder that have no known format (relative paths). */
  ignored: string[];
}

const GLOB_CHARS = /[*?[]/;

/** The files a source names: one file, a folder (recursive, sorted, hidden entries skipped) or a glob. */
export async function listInputs(src: SourceSpec): Promise<ListedInputs> {
  if (EMBEDDED.includes(src.path as EmbeddedCorpus))
    return { files: [{ path: src.path, format: 'embedded', compression: null, size: 0, mtimeMs: 0 }], ignored: [] };
  const ignored: string[] = [];
  let names: string[];
  let root: string;
  if (GLOB_CHARS.test(src.path)) {
    root = globRoot(src.path);
    const re = globRegExp(src.path);
    const all = await walk(root).catch(() => {
      throw new DataError(`${src.path}: the folder ${root} does not exist`);
    });
    names = all.filter((f) => re.test(f));
    if (names.length === 0) throw new DataError(`${src.path}: no file matches`);
  } else {
    let st: fs.Stats;
    try {
      st = await fsp.stat(src.path);
    } catch {
      throw new DataError(`${src.path}: no such file or directory (embedded corpora: ${EMBEDDED.join(', ')})`);
    }
    root = src.path;
    if (st.isDirectory()) {
      names = [];
      for (const f of await walk(src.path)) {
        if (src.format !== undefined || formatOf(f) !== null) names.push(f);
        else ignored.push(path.relative(src.path, f));
      }
      if (names.length === 0)
        throw new DataError(
          `${src.path} is empty: the folder has no ${Object.keys(EXTENSIONS).join(', ')} files (compressed or not)`,
        );
    } else {
      names = [src.path];
    }
  }
  const files: InputFile[] = [];
  for (const f of names) {
    const st = await fsp.stat(f);
    const compression = await sniffCompression(f, st.size);
    const format = src.format ?? formatOf(f);
    if (format === null) {
      throw new DataError(
        `${f}: unknown format (extension ${JSON.stringify(path.extname(f.replace(/\.(gz|zst|zstd)$/i, '')))}); known: ${Object.keys(EXTENSIONS).join(', ')}, each optionally .gz or .zst, or set format=…`,
      );
    }
    if (compression !== null && (format === 'parquet' || format === 'npy' || format === 'bin')) {
      throw new DataError(`${f}: a ${format} file must not be ${compression}-compressed; decompress it first`);
    }
    files.push({ path: f, format, compression, size: st.size, mtimeMs: st.mtimeMs });
  }
  return { files, ignored };
}

function formatOf(file: string): InputFormat | null {
  const base = file.replace(/\.(gz|zst|zstd)$/i, '');
  return EXTENSIONS[path.extname(base).toLowerCase()] ?? null;
}

/** Compression from the file's first bytes (its magic number), whatever its name says. */
async function sniffCompression(file: string, size: number): Promise<Compression | null> {
  if (size < 4) return null;
  const fh = await fsp.open(file, 'r');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 0);
    if (b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
    if (b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return null;
  } finally {
    await fh.close();
  }
}

/** Files under dir, recursively, hidden entries skipped, sorted by relative path (code units). */
async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (d: string, rel: string): Promise<void> => {
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
      if (isDir) await visit(full, r);
      else if (isFile) out.push(r);
    }
  };
  await visit(dir, '');
  out.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return out.map((r) => path.join(dir, ...r.split('/')));
}

/** The folder a glob's matches are under: its longest leading part without wildcards. */
function globRoot(glob: string): string {
  const parts = glob.split(path.sep);
  const fixed: string[] = [];
  for (const p of parts) {
    if (GLOB_CHARS.test(p)) break;
    fixed.push(p);
  }
  return fixed.join(path.sep) || path.sep;
}

/** `*` and `?` within a path segment, `**` across segments, `[...]` classes. */
function globRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      const slash = glob[i + 2] === '/';
      re += slash ? '(?:.*/)?' : '.*';
      i += slash ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 1);
      if (end < 0) re += '\\[';
      else {
        re += `[${glob
          .slice(i + 1, end)
          .replace(/^!/, '^')
          .replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

// ---------------------------------------------------------------------------------------------------
// Parts

/** A unit of tokenisation: a byte range of a file, row groups of a parquet file, or an embedded corpus. */
export interface Part {
  file: string;
  format: InputFormat | 'embedded';
  compression: Compression | null;
  /**
   * Byte range [start, end) of the (compressed) file: the whole file for compressed and text files, the
   * text column's chunk for a parquet row group.
   */
  start: number;
  end: number;
  /** Parquet: row groups [first, last). */
  rowGroups?: [number, number];
  /** Rows before this part's first row group (parquet), for error messages. */
  firstRow?: number;
  field: string;
  dtype: TokenDtype;
  invalid: 'error' | 'skip';
}

/** Cuts an input file into parts (reads a little of it: newline positions, parquet metadata, .npy header). */
export async function planParts(file: InputFile, src: SourceSpec, partBytes: number = PART_BYTES): Promise<Part[]> {
  const base = {
    file: file.path,
    format: file.format,
    compression: file.compression,
    field: src.field,
    dtype: src.dtype,
    invalid: src.invalid,
  };
  if (file.format === 'embedded') return [{ ...base, start: 0, end: 0 }];
  if (file.format === 'parquet') {
    const meta = await parquetMeta(file.path);
    const column = meta.schema.find((s) => s.name === src.field);
    if (column === undefined) {
      const names = meta.schema.slice(1).map((s) => s.name);
      throw new DataError(
        `${file.path}: no column ${JSON.stringify(src.field)} (columns: ${names.join(', ')}); set field=…`,
      );
    }
    const parts: Part[] = [];
    let row = 0;
    meta.row_groups.forEach((g, i) => {
      // The part's bytes: the row group's chunk of the text column (what its key hashes).
      const chunk = g.columns.find((c) => c.meta_data?.path_in_schema.join('.') === src.field)?.meta_data;
      if (chunk === undefined)
        throw new DataError(`${file.path}: row group ${i} has no column ${JSON.stringify(src.field)}`);
      const start = Number(chunk.dictionary_page_offset ?? chunk.data_page_offset);
      parts.push({
        ...base,
        start,
        end: start + Number(chunk.total_compressed_size),
        rowGroups: [i, i + 1],
        firstRow: row,
      });
      row += Number(g.num_rows);
    });
    return parts;
  }
  if (file.compression !== null || file.format === 'text') return [{ ...base, start: 0, end: file.size }];
  if (file.format === 'bin' || file.format === 'npy') {
    const { offset, bytesPerToken } =
      file.format === 'npy'
        ? await npyLayout(file.path, file.size)
        : { offset: 0, bytesPerToken: src.dtype === 'uint16' ? 2 : 4 };
    const payload = file.size - offset;
    if (payload % bytesPerToken !== 0) {
      throw new DataError(
        `${file.path}: ${payload} bytes of ids is not a whole number of ${bytesPerToken}-byte ids (dtype ${file.format === 'npy' ? 'from the header' : src.dtype})`,
      );
    }
    const step = Math.max(bytesPerToken, partBytes - (partBytes % bytesPerToken));
    const parts: Part[] = [];
    for (let s = offset; s < file.size; s += step)
      parts.push({ ...base, start: s, end: Math.min(file.size, s + step) });
    return parts.length > 0 ? parts : [{ ...base, start: offset, end: offset }];
  }
  // Uncompressed JSONL: cut after the first newline at or past every partBytes.
  const cuts = [0];
  const fh = await fsp.open(file.path, 'r');
  try {
    const buf = Buffer.alloc(64 * 1024);
    let at = partBytes;
    while (at < file.size) {
      let found = -1;
      let pos = at;
      while (found < 0 && pos < file.size) {
        const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) break;
        const nl = buf.subarray(0, bytesRead).indexOf(10);
        if (nl >= 0) found = pos + nl + 1;
        else pos += bytesRead;
      }
      if (found < 0 || found >= file.size) break;
      cuts.push(found);
      at = found + partBytes;
    }
  } finally {
    await fh.close();
  }
  cuts.push(file.size);
  const parts: Part[] = [];
  for (let i = 0; i + 1 < cuts.length; i++) parts.push({ ...base, start: cuts[i], end: cuts[i + 1] });
  return parts;
}

/**
 * Content key of a part: sha256 of how it is read (format, field, dtype, range within its kind) and
 * of its bytes, so equal content gives equal keys wherever the file lives. Parquet parts hash the row
 * group's column chunk; embedded corpora their documents.
 */
export async function partKey(part: Part): Promise<string> {
  const h = createHash('sha256');
  h.update(
    `offshoot-part-v1\n${canonicalJson({ format: part.format, compression: part.compression, field: part.format === 'jsonl' || part.format === 'parquet' ? part.field : null, dtype: part.format === 'bin' ? part.dtype : null, invalid: part.invalid })}\n`,
  );
  if (part.format === 'embedded') {
    for (const d of embeddedDocuments(part.file)) {
      h.update(`${Buffer.byteLength(d, 'utf8')}\n`);
      h.update(d, 'utf8');
    }
    return h.digest('hex');
  }
  if (part.format === 'npy') h.update(`npy ${(await npyLayout(part.file, (await fsp.stat(part.file)).size)).descr}\n`);
  for await (const chunk of fileBytes(part.file, part.start, part.end)) h.update(chunk);
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------------------
// Reading parts

/**
 * What reading a part yields: documents (text formats) or ids (pre-tokenised formats), with the part's
 * bytes consumed so far (0: no news), for progress.
 */
export type PartChunk =
  | { documents: string[]; bytesRead: number }
  | { ids: Uint32Array; bytesRead: number; firstElement: number };

export interface PartCounters {
  /** Documents skipped as invalid (option invalid=skip), and the first reasons. */
  skipped: number;
  reasons: string[];
}

const READ_CHUNK = 1 << 20;

/** Raw bytes of a file range, in chunks. */
async function* fileBytes(file: string, start: number, end: number): AsyncGenerator<Buffer> {
  const fh = await fsp.open(file, 'r');
  try {
    let pos = start;
    while (pos < end) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, end - pos));
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0)
        throw new DataError(`${file}: the file ended at byte ${pos}, before ${end} (was it truncated while reading?)`);
      pos += bytesRead;
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
    }
  } finally {
    await fh.close();
  }
}

/**
 * The part's bytes after decompression, with the compressed bytes consumed so far (for progress).
 * Corrupt compressed data is a DataError naming the file.
 */
async function* partBytes(part: Part): AsyncGenerator<{ data: Buffer; consumed: number }> {
  if (part.compression === null) {
    let consumed = 0;
    for await (const b of fileBytes(part.file, part.start, part.end)) {
      consumed += b.length;
      yield { data: b, consumed };
    }
    return;
  }
  const kind = part.compression === 'gzip' ? 'gzip' : 'zstd';
  try {
    if (part.compression === 'gzip') {
      const stream = fs.createReadStream(part.file, { highWaterMark: READ_CHUNK });
      const gunzip = createGunzip({ chunkSize: READ_CHUNK });
      stream.on('error', (err) => gunzip.destroy(err));
      stream.pipe(gunzip);
      for await (const data of gunzip as AsyncIterable<Buffer>) yield { data, consumed: stream.bytesRead };
      return;
    }
    let out: Buffer[] = [];
    const z = new ZstdDecompress((data) => {
      out.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    });
    let consumed = 0;
    const size = part.end;
    for await (const b of fileBytes(part.file, 0, size)) {
      consumed += b.length;
      z.push(b, consumed === size);
      if (out.length > 0) {
        const ready = out;
        out = [];
        for (const data of ready) yield { data, consumed };
      }
    }
  } catch (err) {
    if (err instanceof DataError) throw err;
    throw new DataError(`${part.file}: corrupt ${kind} data (${(err as Error).message})`);
  }
}

/** Reads a part as documents or ids, streaming. Invalid content throws a DataError naming file and offset. */
export async function* readPart(part: Part, counters: PartCounters): AsyncGenerator<PartChunk> {
  switch (part.format) {
    case 'embedded':
      yield { documents: embeddedDocuments(part.file).filter((d) => d.length > 0), bytesRead: 0 };
      return;
    case 'text':
      yield* readText(part, counters);
      return;
    case 'jsonl':
      yield* readJsonl(part, counters);
      return;
    case 'parquet':
      yield* readParquet(part, counters);
      return;
    case 'bin':
    case 'npy':
      yield* readIds(part);
      return;
  }
}

function embeddedDocuments(name: string): readonly string[] {
  if (name === 'sotu:train') return sotuSplit('train').map((r) => r.text);
  if (name === 'sotu:val') return sotuSplit('val').map((r) => r.text);
  return mobyDickChapters();
}

function skipOrThrow(part: Part, counters: PartCounters, message: string): void {
  if (part.invalid === 'error') throw new DataError(message);
  counters.skipped += 1;
  if (counters.reasons.length < 5) counters.reasons.push(message);
}

/** Byte offset of the first invalid UTF-8 sequence in b (b is known to be invalid). */
export function firstInvalidUtf8(b: Uint8Array): number {
  let i = 0;
  while (i < b.length) {
    const c = b[i];
    let n: number;
    let min: number;
    if (c < 0x80) {
      i++;
      continue;
    } else if (c >= 0xc2 && c <= 0xdf) [n, min] = [1, 0x80];
    else if (c >= 0xe0 && c <= 0xef) [n, min] = [2, 0x800];
    else if (c >= 0xf0 && c <= 0xf4) [n, min] = [3, 0x10000];
    else return i;
    if (i + n >= b.length) return i;
    let cp = c & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const d = b[i + k];
      if (d === undefined || (d & 0xc0) !== 0x80) return i;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += n + 1;
  }
  return b.length;
}

const decompressedNote = (part: Part): string =>
  part.compression ? ` of the decompressed ${part.compression} stream` : '';

/**
 * Checks that bytes are text: UTF-8 without NUL bytes. Returns the problem, naming the offset
 * (base + position), or null.
 */
function textProblem(part: Part, bytes: Uint8Array, base: number): string | null {
  const nul = bytes.indexOf(0);
  if (!isUtf8(bytes)) {
    const at = firstInvalidUtf8(bytes);
    if (nul < 0 || at < nul)
      return `${part.file}: invalid UTF-8 at byte offset ${base + at}${decompressedNote(part)} (byte 0x${bytes[at].toString(16).padStart(2, '0')}); is it Latin-1 or binary?`;
  }
  if (nul >= 0)
    return `${part.file}: binary content (a NUL byte) at byte offset ${base + nul}${decompressedNote(part)}; not a text file`;
  return null;
}

async function* readText(part: Part, counters: PartCounters): AsyncGenerator<PartChunk> {
  const chunks: Buffer[] = [];
  let size = 0;
  let consumed = 0;
  for await (const { data, consumed: c } of partBytes(part)) {
    size += data.length;
    consumed = c;
    if (size > MAX_DOCUMENT_BYTES) {
      throw new DataError(
        `${part.file}: a text file is one document, and this one is over ${MAX_DOCUMENT_BYTES} bytes; split it into several files or use JSONL`,
      );
    }
    chunks.push(data);
  }
  const bytes = Buffer.concat(chunks, size);
  const problem = textProblem(part, bytes, 0);
  if (problem !== null) {
    skipOrThrow(part, counters, problem);
    yield { documents: [], bytesRead: consumed };
    return;
  }
  let text = bytes.toString('utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  yield { documents: text.length > 0 ? [text] : [], bytesRead: consumed };
}

/** Lines before byte `offset` of an uncompressed file (to name the line of an error in a later part). */
async function linesBefore(file: string, offset: number): Promise<number> {
  let n = 0;
  for await (const b of fileBytes(file, 0, offset)) {
    for (let i = b.indexOf(10); i >= 0; i = b.indexOf(10, i + 1)) n++;
  }
  return n;
}

async function* readJsonl(part: Part, counters: PartCounters): AsyncGenerator<PartChunk> {
  let pending: Buffer | null = null;
  let lineNo = 0; // lines of this part before the current one
  let offset = part.compression ? 0 : part.start; // byte offset (decompressed) of pending's first byte
  let firstLine: number | undefined;
  const where = async (n: number): Promise<string> => {
    firstLine ??= part.compression || part.start === 0 ? 0 : await linesBefore(part.file, part.start);
    return `${part.file}:${firstLine + n + 1}`;
  };
  const parseLine = async (line: Buffer, at: number, docs: string[]): Promise<void> => {
    let end = line.length;
    if (end > 0 && line[end - 1] === 13) end--;
    const bytes = line.subarray(0, end);
    const problem = textProblem(part, bytes, at);
    if (problem !== null) {
      skipOrThrow(part, counters, `${await where(lineNo)}: ${problem.slice(part.file.length + 2)}`);
      return;
    }
    let s = bytes.toString('utf8');
    if (at === 0 && s.charCodeAt(0) === 0xfeff) s = s.slice(1);
    if (s.trim().length === 0) return;
    let obj: unknown;
    try {
      obj = JSON.parse(s);
    } catch (err) {
      skipOrThrow(
        part,
        counters,
        `${await where(lineNo)} (byte offset ${at}${decompressedNote(part)}): invalid JSON (${(err as Error).message})`,
      );
      return;
    }
    if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
      skipOrThrow(
        part,
        counters,
        `${await where(lineNo)} (byte offset ${at}${decompressedNote(part)}): expected a JSON object with a ${JSON.stringify(part.field)} field`,
      );
      return;
    }
    const t = (obj as Record<string, unknown>)[part.field];
    if (t === undefined) {
      skipOrThrow(
        part,
        counters,
        `${await where(lineNo)} (byte offset ${at}${decompressedNote(part)}): missing ${JSON.stringify(part.field)} field (set field=… for another key)`,
      );
      return;
    }
    if (typeof t !== 'string') {
      skipOrThrow(
        part,
        counters,
        `${await where(lineNo)} (byte offset ${at}${decompressedNote(part)}): ${JSON.stringify(part.field)} is ${t === null ? 'null' : Array.isArray(t) ? 'an array' : typeof t}, not a string`,
      );
      return;
    }
    if (t.length > 0) docs.push(t);
  };
  for await (const { data, consumed } of partBytes(part)) {
    const buf: Buffer = pending === null ? data : Buffer.concat([pending, data]);
    const docs: string[] = [];
    let from = 0;
    for (let nl = buf.indexOf(10); nl >= 0; nl = buf.indexOf(10, from)) {
      await parseLine(buf.subarray(from, nl), offset + from, docs);
      lineNo++;
      from = nl + 1;
    }
    offset += from;
    pending = from < buf.length ? Buffer.from(buf.subarray(from)) : null;
    if (pending !== null && pending.length > MAX_DOCUMENT_BYTES) {
      throw new DataError(
        `${await where(lineNo)} (byte offset ${offset}${decompressedNote(part)}): a line longer than ${MAX_DOCUMENT_BYTES} bytes`,
      );
    }
    yield { documents: docs, bytesRead: consumed };
  }
  if (pending !== null) {
    const docs: string[] = [];
    await parseLine(pending, offset, docs);
    yield { documents: docs, bytesRead: 0 };
  }
}

const parquetMetaCache = new Map<string, { mtimeMs: number; size: number; meta: FileMetaData }>();

async function parquetFile(
  file: string,
): Promise<{ byteLength: number; slice(start: number, end?: number): Promise<ArrayBuffer> }> {
  const size = (await fsp.stat(file)).size;
  return {
    byteLength: size,
    async slice(start: number, end: number = size): Promise<ArrayBuffer> {
      const buf = Buffer.alloc(end - start);
      const fh = await fsp.open(file, 'r');
      try {
        let off = 0;
        while (off < buf.length) {
          const { bytesRead } = await fh.read(buf, off, buf.length - off, start + off);
          if (bytesRead === 0) throw new DataError(`${file}: the file ended at byte ${start + off}`);
          off += bytesRead;
        }
      } finally {
        await fh.close();
      }
      return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
    },
  };
}

async function parquetMeta(file: string): Promise<FileMetaData> {
  const st = await fsp.stat(file);
  const hit = parquetMetaCache.get(file);
  if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.meta;
  const head = Buffer.alloc(4);
  const fh = await fsp.open(file, 'r');
  try {
    await fh.read(head, 0, 4, 0);
  } finally {
    await fh.close();
  }
  if (st.size < 12 || head.toString('latin1') !== 'PAR1')
    throw new DataError(`${file}: not a parquet file (no PAR1 magic at byte offset 0)`);
  let meta: FileMetaData;
  try {
    meta = await parquetMetadataAsync(await parquetFile(file));
  } catch (err) {
    throw new DataError(`${file}: corrupt parquet metadata (${(err as Error).message})`);
  }
  parquetMetaCache.set(file, { mtimeMs: st.mtimeMs, size: st.size, meta });
  return meta;
}

async function* readParquet(part: Part, counters: PartCounters): AsyncGenerator<PartChunk> {
  const meta = await parquetMeta(part.file);
  const [g0, g1] = part.rowGroups!;
  let rowStart = part.firstRow ?? 0;
  for (let g = g0; g < g1; g++) {
    const rows = Number(meta.row_groups[g].num_rows);
    let values: unknown[] = [];
    try {
      await parquetRead({
        file: await parquetFile(part.file),
        metadata: meta,
        columns: [part.field],
        rowStart,
        rowEnd: rowStart + rows,
        compressors: parquetCompressors,
        onComplete: (r: unknown[][]) => {
          values = r.map((row) => row[0]);
        },
      });
    } catch (err) {
      throw new DataError(`${part.file}: cannot read row group ${g} (${(err as Error).message})`);
    }
    const docs: string[] = [];
    values.forEach((v, i) => {
      if (typeof v === 'string') {
        if (v.length > 0) docs.push(v);
      } else {
        skipOrThrow(
          part,
          counters,
          `${part.file}: row ${rowStart + i}: column ${JSON.stringify(part.field)} is ${v === null ? 'null' : typeof v}, not a string`,
        );
      }
    });
    rowStart += rows;
    yield { documents: docs, bytesRead: g === g1 - 1 ? part.end - part.start : 0 };
  }
}

interface NpyLayout {
  offset: number;
  bytesPerToken: number;
  descr: string;
  signed: boolean;
}

/** The header of a .npy file: where the data starts and its element type (unsigned or signed ints). */
async function npyLayout(file: string, size: number): Promise<NpyLayout> {
  const head = Buffer.alloc(Math.min(size, 4096));
  const fh = await fsp.open(file, 'r');
  try {
    await fh.read(head, 0, head.length, 0);
  } finally {
    await fh.close();
  }
  if (head.length < 10 || head[0] !== 0x93 || head.subarray(1, 6).toString('latin1') !== 'NUMPY')
    throw new DataError(`${file}: not a .npy file (no \\x93NUMPY magic at byte offset 0)`);
  const major = head[6];
  const headerLen = major === 1 ? head.readUInt16LE(8) : head.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  if (start + headerLen > head.length)
    throw new DataError(`${file}: .npy header of ${headerLen} bytes is longer than the file or than 4 KiB`);
  const header = head.subarray(start, start + headerLen).toString('latin1');
  const descr = /'descr':\s*'([^']*)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*(True|False)/.exec(header)?.[1];
  const types: Record<string, [number, boolean]> = {
    '<u2': [2, false],
    '<u4': [4, false],
    '<i4': [4, true],
    '<i8': [8, true],
    '<u8': [8, false],
    '|u1': [1, false],
  };
  if (descr === undefined || types[descr] === undefined) {
    throw new DataError(
      `${file}: .npy dtype ${JSON.stringify(descr)} is not a little-endian integer type (expected one of ${Object.keys(types).join(', ')})`,
    );
  }
  if (fortran === 'True')
    throw new DataError(`${file}: .npy array is in Fortran order; save it C-contiguous (np.ascontiguousarray)`);
  const [bytesPerToken, signed] = types[descr];
  return { offset: start + headerLen, bytesPerToken, descr, signed };
}

async function* readIds(part: Part): AsyncGenerator<PartChunk> {
  const { bytesPerToken, signed, offset } =
    part.format === 'npy'
      ? await npyLayout(part.file, (await fsp.stat(part.file)).size)
      : { bytesPerToken: part.dtype === 'uint16' ? 2 : 4, signed: false, offset: 0 };
  let pos = part.start;
  let carry: Buffer | null = null;
  let consumed = 0;
  for await (const b of fileBytes(part.file, part.start, part.end)) {
    consumed += b.length;
    const buf: Buffer = carry === null ? b : Buffer.concat([carry, b]);
    const whole = buf.length - (buf.length % bytesPerToken);
    const n = whole / bytesPerToken;
    const ids = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      const o = i * bytesPerToken;
      let v: number;
      if (bytesPerToken === 2) v = buf.readUInt16LE(o);
      else if (bytesPerToken === 4) v = signed ? buf.readInt32LE(o) : buf.readUInt32LE(o);
      else if (bytesPerToken === 1) v = buf[o];
      else {
        const big = signed ? buf.readBigInt64LE(o) : buf.readBigUInt64LE(o);
        v = big < 0n || big > 0xffffffffn ? -1 : Number(big);
      }
      if (v < 0)
        throw new DataError(
          `${part.file}: id ${v} at byte offset ${pos + o} (element ${(pos + o - offset) / bytesPerToken}) is negative or too large`,
        );
      ids[i] = v;
    }
    carry = whole < buf.length ? Buffer.from(buf.subarray(whole)) : null;
    yield { ids, bytesRead: consumed, firstElement: (pos - offset) / bytesPerToken };
    pos += whole;
  }
}

// ---------------------------------------------------------------------------------------------------
// Documents in memory

/**
 * A data spec's documents in memory (its sources', in order; holdouts, cut in tokens, do not apply),
 * for what needs text rather than tokens: training a tokenizer, tests. With maxBytes, only parts spread
 * evenly over the corpus and adding up to about twice that are read, so a large corpus is sampled.
 * Pre-tokenised sources have no text and are an error. An empty corpus is an error naming it.
 */
export async function loadCorpus(spec: string, options: { maxBytes?: number; cwd?: string } = {}): Promise<Corpus> {
  const parsed = parseDataSpec(spec, options.cwd);
  const parts: Part[] = [];
  for (const src of parsed.sources) {
    for (const f of (await listInputs(src)).files) {
      if (f.format === 'bin' || f.format === 'npy')
        throw new DataError(`${f.path}: pre-tokenised ids have no text (a tokenizer cannot be trained on them)`);
      parts.push(...(await planParts(f, src)));
    }
  }
  let chosen = parts;
  const total = parts.reduce((a, p) => a + (p.end - p.start), 0);
  if (options.maxBytes !== undefined && total > 4 * options.maxBytes) {
    const want = 2 * options.maxBytes;
    const stride = Math.max(1, Math.round(total / want));
    chosen = [];
    let sum = 0;
    for (let i = 0; i < parts.length && sum < want; i += stride) {
      chosen.push(parts[i]);
      sum += parts[i].end - parts[i].start;
    }
  }
  const documents: string[] = [];
  const counters: PartCounters = { skipped: 0, reasons: [] };
  for (const p of chosen) {
    for await (const chunk of readPart(p, counters)) if ('documents' in chunk) documents.push(...chunk.documents);
  }
  if (documents.length === 0) throw new DataError(`corpus ${parsed.text} is empty`);
  return { spec: parsed.text, documents };
}
