/**
 * Data path at scale: tokenisation and batch throughput, and the out-of-core corpus checks at full
 * size. Each part prints one JSON line.
 *
 *   npx tsx bench/data.ts [--only tokenize,batches,corpus,single] [--corpus-gb 5] [--shards 10]
 *        [--gzip-shards 3] [--single-mb 600] [--work DIR] [--keep]
 *
 * - tokenize: a Pythia-style 50k tokenizer (NFC, ByteLevel, GPT-NeoX's added space runs) trained by
 *   the Rust `tokenizers` library (test/fixtures/tokenizer/pythia50k.py, in the venv that
 *   scripts/setup-python.sh builds); offshoot's native BPE and the Rust library each encode the same
 *   documents on one thread; the ids must be identical. Figures per core are tokens per CPU second
 *   (so other load on the machine does not count against either), wall figures beside them.
 *   Goal: >= 2M tokens/s per core.
 * - batches: training batches (pythia-160m shape: 8 x 2048) read from the token store, tokens/s,
 *   against what pythia-160m training consumes on an H200 (47,633 tokens/s: PyTorch, batch 8 x 512,
 *   docs/benchmarks.md). Goal: > 1M tokens/s.
 * - corpus: a generated JSONL corpus of --corpus-gb GB (--shards files, --gzip-shards of them gzip)
 *   tokenised by `offshoot data prepare` in a child process: peak RSS (goal <= 1.5 GB), killed with
 *   SIGKILL once 40% of its parts are done, run again (finished parts must be found, not redone),
 *   then a tiny model trained on it for a few steps (`offshoot teacher train`).
 * - single: one generated JSONL file of --single-mb MB (V8's string limit is about 512M characters):
 *   prepared, with its time, parts and peak RSS.
 *
 * The documents are the embedded State of the Union addresses and Moby Dick chapters, each with a
 * numbered title line, repeated to size. Everything goes under --work (default a temporary folder,
 * removed at the end unless --keep).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGzip } from 'node:zlib';

import { loadCorpus, openData, sampleBatch, tokenizerFromJSON } from '../core/data/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(here, '..');
const H200_PYTHIA_160M_TOKENS_PER_S = 47_633;

interface Args {
  only: Set<string>;
  corpusGb: number;
  shards: number;
  gzipShards: number;
  singleMb: number;
  work: string;
  keep: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    only: new Set(['tokenize', 'batches', 'corpus', 'single']),
    corpusGb: 5,
    shards: 10,
    gzipShards: 3,
    singleMb: 600,
    work: '',
    keep: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--only':
        a.only = new Set(v.split(','));
        i++;
        break;
      case '--corpus-gb':
        a.corpusGb = Number(v);
        i++;
        break;
      case '--shards':
        a.shards = Number(v);
        i++;
        break;
      case '--gzip-shards':
        a.gzipShards = Number(v);
        i++;
        break;
      case '--single-mb':
        a.singleMb = Number(v);
        i++;
        break;
      case '--work':
        a.work = path.resolve(v);
        i++;
        break;
      case '--keep':
        a.keep = true;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!a.work) a.work = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-bench-data-'));
  return a;
}

function venvPython(): string {
  const py = path.join(
    process.env.OFFSHOOT_CACHE || path.join(os.homedir(), '.cache', 'offshoot'),
    'venv',
    'bin',
    'python',
  );
  if (!fs.existsSync(py))
    throw new Error(`no ${py}: run scripts/setup-python.sh (the Rust tokenizers library is the reference)`);
  return py;
}

function python(args: string[]): Record<string, number | string> {
  const r = spawnSync(venvPython(), [path.join(ROOT, 'test', 'fixtures', 'tokenizer', 'pythia50k.py'), ...args], {
    encoding: 'utf8',
    maxBuffer: 1 << 26,
  });
  if (r.status !== 0) throw new Error(`pythia50k.py ${args[0]} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number | string>;
}

async function documents(): Promise<string[]> {
  return [
    ...(await loadCorpus('sotu:train')).documents,
    ...(await loadCorpus('sotu:val')).documents,
    ...(await loadCorpus('mobydick')).documents,
  ];
}

/** The Pythia-style tokenizer (trained once per work folder). */
async function pythiaTokenizer(work: string, docs: readonly string[]): Promise<string> {
  const file = path.join(work, 'pythia50k', 'tokenizer.json');
  if (!fs.existsSync(file)) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const sample = path.join(work, 'pythia50k', 'sample.txt');
    fs.writeFileSync(sample, docs.join('\n\n'));
    python(['train', sample, file]);
  }
  return file;
}

function print(line: object): void {
  console.log(JSON.stringify(line));
}

// ---------------------------------------------------------------------------------------------------

async function benchTokenize(a: Args, docs: readonly string[], tokFile: string): Promise<void> {
  const jsonl = path.join(a.work, 'tokenize.jsonl');
  fs.writeFileSync(jsonl, `${docs.map((d) => JSON.stringify({ text: d })).join('\n')}\n`);
  const rust = python(['encode', tokFile, jsonl, path.join(a.work, 'rust.u32')]);
  const ref = new Uint32Array(fs.readFileSync(path.join(a.work, 'rust.u32')).buffer.slice(0));

  const tok = tokenizerFromJSON(JSON.parse(fs.readFileSync(tokFile, 'utf8')));
  const eot = tok.endOfTextId!;
  const ids = new Uint32Array(ref.length + 1024);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let n = 0;
  for (const d of docs) {
    const e = tok.encode(d);
    if (n + e.length + 1 > ids.length) throw new Error('offshoot produced more ids than the Rust library');
    ids.set(e, n);
    n += e.length;
    ids[n++] = eot;
  }
  const wall = (performance.now() - t0) / 1000;
  const cpuUsed = process.cpuUsage(cpu0);
  const cpu = (cpuUsed.user + cpuUsed.system) / 1e6;
  let mismatch = -1;
  if (n !== ref.length) mismatch = Math.min(n, ref.length);
  for (let i = 0; i < Math.min(n, ref.length) && mismatch < 0; i++) if (ids[i] !== ref[i]) mismatch = i;
  const ours = n / cpu;
  const theirs = (rust.tokens as number) / (rust.cpuSeconds as number);
  print({
    bench: 'data.tokenize',
    tokenizer: `pythia-style ${tok.vocabSize} (NFC, ByteLevel BPE, ${tok.kind} engine)`,
    documents: docs.length,
    textBytes: docs.reduce((s, d) => s + Buffer.byteLength(d), 0),
    tokens: n,
    idsIdentical: mismatch < 0,
    ...(mismatch >= 0 ? { firstMismatch: mismatch } : {}),
    tokensPerSecondPerCore: Math.round(ours),
    tokensPerSecondWall: Math.round(n / wall),
    rustTokenizers: rust.tokenizers,
    rustTokensPerSecondPerCore: Math.round(theirs),
    rustTokensPerSecondWall: Math.round((rust.tokens as number) / (rust.seconds as number)),
    ratio: Number((ours / theirs).toFixed(3)),
    goalPerCore: 2e6,
    loadAverage: Number(os.loadavg()[0].toFixed(2)),
    cores: os.availableParallelism(),
  });
}

async function benchBatches(a: Args, tokFile: string): Promise<void> {
  const tok = tokenizerFromJSON(JSON.parse(fs.readFileSync(tokFile, 'utf8')));
  const data = await openData(path.join(a.work, 'tokenize.jsonl'), tok, { cacheDir: path.join(a.work, 'cache') });
  const shape = { batchSize: 8, seqLen: 2048, seed: 1 };
  for (let s = 0; s < 20; s++) sampleBatch(data, { ...shape, step: s });
  const steps = 2000;
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) sampleBatch(data, { ...shape, step: 1000 + s });
  const secs = (performance.now() - t0) / 1000;
  const rate = (steps * shape.batchSize * shape.seqLen) / secs;
  print({
    bench: 'data.batches',
    shape: `${shape.batchSize}x${shape.seqLen}`,
    storeTokens: data.sources[0].stream.length,
    tokensPerSecond: Math.round(rate),
    h200Pythia160mTokensPerSecond: H200_PYTHIA_160M_TOKENS_PER_S,
    ratio: Number((rate / H200_PYTHIA_160M_TOKENS_PER_S).toFixed(1)),
    goal: 1e6,
  });
  data.close();
}

// ---------------------------------------------------------------------------------------------------

/** Writes JSONL documents up to `bytes` (uncompressed) into file, gzip-compressed when asked. */
async function writeJsonl(
  file: string,
  bytes: number,
  docs: readonly string[],
  seed: number,
  gzip: boolean,
): Promise<number> {
  const out = fs.createWriteStream(file);
  const gz = gzip ? createGzip({ level: 1 }) : null;
  if (gz) gz.pipe(out);
  const sink = gz ?? out;
  let written = 0;
  let i = 0;
  let x = seed >>> 0;
  while (written < bytes) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    const d = docs[x % docs.length];
    const line = `${JSON.stringify({ id: `${seed}-${i}`, text: `Document ${seed}-${i}\n\n${d}` })}\n`;
    i++;
    written += Buffer.byteLength(line);
    if (!sink.write(line)) await once(sink, 'drain');
  }
  sink.end();
  await once(out, 'close');
  return written;
}

/** The offshoot CLI of this tree as a child process (TypeScript through tsx). */
function offshoot(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(
    process.execPath,
    ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'services', 'cli', 'main.ts'), ...args],
    {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
}

interface Watched {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  peakRssBytes: number;
  seconds: number;
}

/** Runs a child, sampling its resident memory (all its threads) every 200 ms; `stop` may kill it early. */
async function watch(child: ChildProcess, stop?: () => boolean): Promise<Watched> {
  const started = performance.now();
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  let peak = 0;
  const timer = setInterval(() => {
    try {
      const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
      if (hwm) peak = Math.max(peak, Number(hwm[1]) * 1024);
    } catch {
      // exited
    }
    if (stop?.()) child.kill('SIGKILL');
  }, 200);
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  clearInterval(timer);
  return { code, signal, stdout, stderr, peakRssBytes: peak, seconds: (performance.now() - started) / 1000 };
}

/** Parts of a source's manifest(s) under the store whose shard is done. */
function partsDone(cache: string): { done: number; total: number; keys: string[] } {
  let done = 0;
  let total = 0;
  const keys: string[] = [];
  for (const tokDir of fs.existsSync(cache) ? fs.readdirSync(cache) : []) {
    const dir = path.join(cache, tokDir, 'sources');
    // Manifests only, not the temporary files of their atomic writes.
    for (const m of (fs.existsSync(dir) ? fs.readdirSync(dir) : []).filter(
      (n) => n.endsWith('.json') && !n.startsWith('.'),
    )) {
      try {
        const manifest = JSON.parse(fs.readFileSync(path.join(dir, m), 'utf8')) as {
          files: { parts: { key: string; tokens?: number }[] }[];
        };
        for (const f of manifest.files) {
          for (const p of f.parts) {
            total++;
            if (p.tokens !== undefined) {
              done++;
              keys.push(p.key);
            }
          }
        }
      } catch {
        // being rewritten
      }
    }
  }
  return { done, total, keys };
}

async function benchCorpus(a: Args, docs: readonly string[], tokFile: string): Promise<void> {
  const dir = path.join(a.work, 'corpus');
  fs.mkdirSync(dir, { recursive: true });
  const per = (a.corpusGb * 1e9) / a.shards;
  let textBytes = 0;
  const genStart = performance.now();
  for (let s = 0; s < a.shards; s++) {
    const gz = s >= a.shards - a.gzipShards;
    const file = path.join(dir, `shard-${String(s).padStart(3, '0')}.jsonl${gz ? '.gz' : ''}`);
    if (!fs.existsSync(file)) textBytes += await writeJsonl(file, per, docs, s + 1, gz);
    else textBytes += per;
  }
  const generateSeconds = (performance.now() - genStart) / 1000;
  const inputBytes = fs.readdirSync(dir).reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);
  // The store as `teacher train` finds it: <OFFSHOOT_CACHE>/tokens.
  const home = path.join(a.work, 'corpus-home');
  const cache = path.join(home, 'tokens');
  fs.rmSync(home, { recursive: true, force: true });
  const args = ['data', 'prepare', '--data', dir, '--tokenizer', tokFile, '--cache', cache, '--json'];

  // First run: killed once 40% of the parts are done.
  let killedAt: { done: number; total: number; keys: string[] } | undefined;
  const first = await watch(offshoot(args), () => {
    const p = partsDone(cache);
    if (p.total > 0 && p.done >= Math.ceil(0.4 * p.total) && killedAt === undefined) {
      killedAt = p;
      return true;
    }
    return false;
  });
  if (first.signal !== 'SIGKILL' || killedAt === undefined)
    throw new Error(`the first run was not killed midway (exit ${first.code}): ${first.stderr.slice(-2000)}`);
  const shardDir = (key: string): string => {
    for (const tokDir of fs.readdirSync(cache)) {
      const f = path.join(cache, tokDir, 'shards', `${key}.tok`);
      if (fs.existsSync(f)) return f;
    }
    throw new Error(`no shard for part ${key}`);
  };
  const mtimes = new Map(killedAt.keys.map((k) => [k, fs.statSync(shardDir(k)).mtimeMs]));

  // Second run: resumes.
  const second = await watch(offshoot(args));
  if (second.code !== 0) throw new Error(`the resumed run failed: ${second.stderr.slice(-2000)}`);
  const summary = JSON.parse(second.stdout.trim().split('\n').pop()!) as {
    tokens: number;
    sources: { reusedParts: number; tokenizedParts: number; documents: number; shards: number; storeBytes: number }[];
  };
  const src = summary.sources[0];
  const redone = [...mtimes].filter(([k, m]) => fs.statSync(shardDir(k)).mtimeMs !== m).length;

  // A tiny model trains on it: held-out validation from the same source.
  const model = path.join(a.work, 'model');
  fs.rmSync(model, { recursive: true, force: true });
  const train = await watch(
    offshoot(
      [
        'teacher',
        'train',
        '--data',
        `${dir};holdout=0.001`,
        '--val',
        `${dir};holdout=0.001;split=val`,
        '--tokenizer',
        tokFile,
        '--preset',
        'tiny',
        '--steps',
        '5',
        '--batch-size',
        '4',
        '--seq-len',
        '64',
        '--eval-every',
        '5',
        '--eval-tokens',
        '4096',
        '--out',
        model,
        '--json',
      ],
      { OFFSHOOT_CACHE: home },
    ),
  );
  if (train.code !== 0) throw new Error(`training on the corpus failed: ${train.stderr.slice(-2000)}`);
  const trained = JSON.parse(train.stdout.trim().split('\n').pop()!) as {
    steps: number;
    initialValLoss: number;
    finalValLoss: number;
  };

  print({
    bench: 'data.corpus',
    textBytes,
    inputBytes,
    files: a.shards,
    gzipFiles: a.gzipShards,
    generateSeconds: Math.round(generateSeconds),
    tokens: summary.tokens,
    documents: src.documents,
    shards: src.shards,
    storeBytes: src.storeBytes,
    killed: {
      afterSeconds: Math.round(first.seconds),
      partsDone: killedAt.done,
      partsTotal: killedAt.total,
      peakRssBytes: first.peakRssBytes,
    },
    resumed: {
      seconds: Math.round(second.seconds),
      reusedParts: src.reusedParts,
      tokenizedParts: src.tokenizedParts,
      finishedPartsRedone: redone,
      peakRssBytes: second.peakRssBytes,
    },
    tokensPerSecond: Math.round(summary.tokens / (first.seconds + second.seconds)),
    peakRssBytes: Math.max(first.peakRssBytes, second.peakRssBytes),
    goalPeakRssBytes: 1.5e9,
    train: {
      steps: trained.steps,
      initialValLoss: Number(trained.initialValLoss.toFixed(4)),
      finalValLoss: Number(trained.finalValLoss.toFixed(4)),
      seconds: Math.round(train.seconds),
      peakRssBytes: train.peakRssBytes,
    },
  });
}

async function benchSingle(a: Args, docs: readonly string[], tokFile: string): Promise<void> {
  const file = path.join(a.work, 'single.jsonl');
  const textBytes = fs.existsSync(file)
    ? fs.statSync(file).size
    : await writeJsonl(file, a.singleMb * 1e6, docs, 1000, false);
  const cache = path.join(a.work, 'single-cache');
  fs.rmSync(cache, { recursive: true, force: true });
  const run = await watch(
    offshoot(['data', 'prepare', '--data', file, '--tokenizer', tokFile, '--cache', cache, '--json']),
  );
  if (run.code !== 0) throw new Error(`preparing ${file} failed: ${run.stderr.slice(-2000)}`);
  const summary = JSON.parse(run.stdout.trim().split('\n').pop()!) as {
    tokens: number;
    sources: { shards: number; documents: number }[];
  };
  print({
    bench: 'data.single',
    textBytes,
    tokens: summary.tokens,
    documents: summary.sources[0].documents,
    parts: summary.sources[0].shards,
    seconds: Math.round(run.seconds),
    tokensPerSecond: Math.round(summary.tokens / run.seconds),
    peakRssBytes: run.peakRssBytes,
  });
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  fs.mkdirSync(a.work, { recursive: true });
  try {
    const docs = await documents();
    const tokFile = await pythiaTokenizer(a.work, docs);
    if (a.only.has('tokenize') || a.only.has('batches')) await benchTokenize(a, docs, tokFile);
    if (a.only.has('batches')) await benchBatches(a, tokFile);
    if (a.only.has('corpus')) await benchCorpus(a, docs, tokFile);
    if (a.only.has('single')) await benchSingle(a, docs, tokFile);
  } finally {
    if (!a.keep) fs.rmSync(a.work, { recursive: true, force: true });
  }
}

await main();
