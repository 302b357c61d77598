// The token store on real files: every input format, compressed inputs, mixtures and holdouts, the
// exact error of each bad input, bounded memory while streaming, and a `data prepare` killed with
// SIGKILL midway that resumes without redoing finished parts. Scaled down (tens of MB); bench/data.ts
// runs the same checks at full size (a 5 GB corpus, a 600 MB file).
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type OpenedData,
  type Tokenizer,
  loadCorpus,
  loadTokenizer,
  openData,
  prepareSource,
  parseDataSpec,
  sampleBatch,
  batchRows,
  readTokenFileHeader,
} from '../core/data/index.js';
import { requireHfPython } from './helpers/python.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(here, '..');
const BPE512 = path.join(here, 'fixtures', 'tokenizer', 'offshoot-bpe512', 'tokenizer.json');

let tmp: string;
let tok: Tokenizer;
let docs: string[];
beforeAll(async () => {
  tmp = mkdtempSync(path.join(tmpdir(), 'offshoot-store-'));
  tok = await loadTokenizer(BPE512);
  docs = (await loadCorpus('sotu:val')).documents.slice();
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

/** All of a data spec's tokens (its first source's split ranges, concatenated). */
function tokensOf(d: OpenedData, source = 0): number[] {
  const s = d.sources[source];
  const out: number[] = [];
  for (const [a, b] of s.ranges) {
    const buf = new Int32Array(b - a);
    s.stream.read(a, b - a, buf, 0);
    for (const id of buf) out.push(id);
  }
  return out;
}

/** The stream the tokenizer gives documents: each document's ids, then end-of-text. */
function expected(texts: readonly string[]): number[] {
  return texts.flatMap((t) => [...tok.encode(t), tok.endOfTextId!]);
}

function jsonl(texts: readonly string[], field = 'text'): string {
  return `${texts.map((t, i) => JSON.stringify({ id: i, [field]: t })).join('\n')}\n`;
}

async function open(spec: string, cache = path.join(tmp, 'cache')): Promise<OpenedData> {
  return openData(spec, tok, { cacheDir: cache, workers: 0 });
}

describe('inputs', () => {
  it('reads text, JSONL (another field), gzip and zstd, a folder and a glob, in sorted order', async () => {
    const dir = path.join(tmp, 'formats');
    mkdirSync(path.join(dir, 'sub'), { recursive: true });
    writeFileSync(path.join(dir, 'a.txt'), docs[0]);
    writeFileSync(path.join(dir, 'b.jsonl'), jsonl(docs.slice(1, 3)));
    writeFileSync(path.join(dir, 'c.jsonl.gz'), gzipSync(jsonl(docs.slice(3, 5))));
    const plain = path.join(dir, 'sub', 'd.ndjson');
    writeFileSync(plain, jsonl(docs.slice(5, 7)));
    const z = spawnSync('zstd', ['-q', '-f', '-o', `${plain}.zst`, plain]);
    expect(z.status, `zstd: ${z.stderr}`).toBe(0);
    rmSync(plain);
    writeFileSync(path.join(dir, 'notes.csv'), 'ignored');
    const logs: string[] = [];
    const folder = await openData(dir, tok, {
      cacheDir: path.join(tmp, 'cache'),
      workers: 0,
      log: (l) => logs.push(l),
    });
    expect(tokensOf(folder)).toEqual(expected(docs.slice(0, 7)));
    expect(folder.prepared[0].documents).toBe(7);
    expect(logs.join('\n')).toContain('ignored 1 file(s) of no known format, e.g. notes.csv');
    folder.close();

    const glob = await open(`${dir}/**/*.jsonl*`);
    expect(tokensOf(glob)).toEqual(expected(docs.slice(1, 5)));
    glob.close();

    // A JSONL file that is gzip-compressed under a plain name is recognised by its magic bytes.
    const disguised = path.join(tmp, 'disguised.jsonl');
    writeFileSync(disguised, gzipSync(jsonl(['one', 'two'], 'content')));
    const d = await open(`${disguised};field=content`);
    expect(tokensOf(d)).toEqual(expected(['one', 'two']));
    d.close();
  });

  it('reads parquet (written by pyarrow) by column, one part per row group', async () => {
    const py = requireHfPython();
    const file = path.join(tmp, 'docs.parquet');
    const zfile = path.join(tmp, 'docs-zstd.parquet');
    const texts = docs.slice(0, 9);
    writeFileSync(path.join(tmp, 'texts.json'), JSON.stringify(texts));
    const script = `
import json, sys, pyarrow as pa, pyarrow.parquet as pq
texts = json.load(open(sys.argv[1]))
t = pa.table({"id": list(range(len(texts))), "content": texts})
pq.write_table(t, sys.argv[2], row_group_size=4)
pq.write_table(t, sys.argv[3], row_group_size=5, compression="zstd")
`;
    const r = spawnSync(py, ['-c', script, path.join(tmp, 'texts.json'), file, zfile], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const d = await open(`${file};field=content`);
    expect(d.prepared[0].shards.length).toBe(3);
    expect(tokensOf(d)).toEqual(expected(texts));
    d.close();
    const dz = await open(`${zfile};field=content`);
    expect(tokensOf(dz)).toEqual(expected(texts));
    dz.close();
    await expect(open(file)).rejects.toThrow(`${file}: no column "text" (columns: id, content); set field=…`);
    await expect(open(`${file};field=id`)).rejects.toThrow(`${file}: row 0: column "id" is bigint, not a string`);
  });

  it('reads pre-tokenised nanoGPT .bin (uint16, uint32) and .npy ids', async () => {
    const ids = Array.from({ length: 5000 }, (_, i) => (i * 37) % tok.vocabSize);
    const bin16 = path.join(tmp, 'ids.bin');
    writeFileSync(bin16, Buffer.from(Uint16Array.from(ids).buffer));
    const d16 = await open(bin16);
    expect(tokensOf(d16)).toEqual(ids);
    d16.close();
    const bin32 = path.join(tmp, 'ids32.bin');
    writeFileSync(bin32, Buffer.from(Uint32Array.from(ids).buffer));
    const d32 = await open(`${bin32};dtype=uint32`);
    expect(tokensOf(d32)).toEqual(ids);
    d32.close();
    // Parts of a few bytes: the ids come back in order across parts.
    const parts = await prepareSource(parseDataSpec(bin16).sources[0], tok, {
      cacheDir: path.join(tmp, 'cache-parts'),
      workers: 0,
      partBytes: 1000,
    });
    expect(parts.shards.length).toBe(10);
    const all = new Int32Array(parts.tokens);
    parts.stream.read(0, parts.tokens, all, 0);
    expect(Array.from(all)).toEqual(ids);
    parts.stream.close();

    const py = requireHfPython();
    const npy = path.join(tmp, 'ids.npy');
    const npyBig = path.join(tmp, 'ids-be.npy');
    const r = spawnSync(
      py,
      [
        '-c',
        'import sys, numpy as np; a = np.array([int(x) for x in sys.argv[3].split(",")], dtype=np.int32).reshape(2, -1); np.save(sys.argv[1], a); np.save(sys.argv[2], a.astype(">u2"))',
        npy,
        npyBig,
        ids.slice(0, 100).join(','),
      ],
      { encoding: 'utf8' },
    );
    expect(r.status, r.stderr).toBe(0);
    const dn = await open(npy);
    expect(tokensOf(dn)).toEqual(ids.slice(0, 100));
    dn.close();
    await expect(open(npyBig)).rejects.toThrow(`${npyBig}: .npy dtype ">u2" is not a little-endian integer type`);

    const odd = path.join(tmp, 'odd.bin');
    writeFileSync(odd, Buffer.alloc(7));
    await expect(open(odd)).rejects.toThrow(
      `${odd}: 7 bytes of ids is not a whole number of 2-byte ids (dtype uint16)`,
    );
    const big = path.join(tmp, 'big.bin');
    writeFileSync(big, Buffer.from(Uint16Array.from([1, 2, 3, 60000]).buffer));
    await expect(open(big)).rejects.toThrow(
      `${big}: id 60000 at element 3 is outside the vocabulary of tokenizer bpe-512 (size 512)`,
    );
  });

  it('gives each bad input an error naming the file and where', async () => {
    const latin1 = path.join(tmp, 'latin1.txt');
    writeFileSync(latin1, Buffer.from('caf\xe9 au lait', 'latin1'));
    await expect(open(latin1)).rejects.toThrow(
      `${latin1}: invalid UTF-8 at byte offset 3 (byte 0xe9); is it Latin-1 or binary?`,
    );
    const binary = path.join(tmp, 'binary.txt');
    writeFileSync(binary, Buffer.from([0x68, 0x69, 0x00, 0x01, 0x02]));
    await expect(open(binary)).rejects.toThrow(
      `${binary}: binary content (a NUL byte) at byte offset 2; not a text file`,
    );
    const csv = path.join(tmp, 'table.csv');
    writeFileSync(csv, 'a,b\n');
    await expect(open(csv)).rejects.toThrow(
      `${csv}: unknown format (extension ".csv"); known: .txt, .md, .text, .jsonl, .ndjson, .parquet, .bin, .npy, each optionally .gz or .zst, or set format=…`,
    );
    const truncated = path.join(tmp, 'truncated.jsonl.gz');
    const gz = gzipSync(jsonl(docs.slice(0, 3)));
    writeFileSync(truncated, gz.subarray(0, gz.length - 100));
    await expect(open(truncated)).rejects.toThrow(`${truncated}: corrupt gzip data (unexpected end of file)`);
    const badLine = path.join(tmp, 'bad-line.jsonl.gz');
    writeFileSync(
      badLine,
      gzipSync(`${'{"text": "ok"}\n{"text": "caf\xe9"}\n'.replace('\xe9', '\u00e9')}{"text" 1}\n`),
    );
    await expect(open(badLine)).rejects.toThrow(
      `${badLine}:3 (byte offset 33 of the decompressed gzip stream): invalid JSON`,
    );
    const latinLine = path.join(tmp, 'latin-line.jsonl');
    writeFileSync(
      latinLine,
      Buffer.concat([Buffer.from('{"text": "ok"}\n{"text": "caf'), Buffer.from([0xe9]), Buffer.from('"}\n')]),
    );
    await expect(open(latinLine)).rejects.toThrow(
      `${latinLine}:2: invalid UTF-8 at byte offset 28 (byte 0xe9); is it Latin-1 or binary?`,
    );
    await expect(open(path.join(tmp, 'nothing-here', '*.jsonl'))).rejects.toThrow(
      `${path.join(tmp, 'nothing-here', '*.jsonl')}: the folder ${path.join(tmp, 'nothing-here')} does not exist`,
    );
    await expect(open(`${latin1};colour=red`)).rejects.toThrow(
      `data spec "${latin1};colour=red": unknown option "colour" (options: field, format, dtype, invalid, holdout, split)`,
    );
    await expect(open(`${latin1};split=val`)).rejects.toThrow('split=val needs a holdout fraction');

    // With invalid=skip, bad documents are skipped and counted instead.
    const mixed = path.join(tmp, 'mixed.jsonl');
    writeFileSync(
      mixed,
      Buffer.concat([
        Buffer.from('{"text": "good one"}\n{"text": 5}\nnot json\n{"text": "bad '),
        Buffer.from([0xff]),
        Buffer.from('"}\n{"text": "good two"}\n'),
      ]),
    );
    const logs: string[] = [];
    const d = await openData(`${mixed};invalid=skip`, tok, {
      cacheDir: path.join(tmp, 'cache'),
      workers: 0,
      log: (l) => logs.push(l),
    });
    expect(tokensOf(d)).toEqual(expected(['good one', 'good two']));
    expect(d.prepared[0].skipped).toBe(3);
    expect(logs.join('\n')).toContain(
      `${mixed}: skipped 3 invalid document(s), e.g. ${mixed}:2 (byte offset 21): "text" is number, not a string`,
    );
    d.close();
  });

  it('names the right line of an error in a later part of a split JSONL file', async () => {
    const file = path.join(tmp, 'long.jsonl');
    const lines = Array.from({ length: 400 }, (_, i) => JSON.stringify({ text: `line ${i} ${'x'.repeat(i % 50)}` }));
    lines[333] = '{"text": broken}';
    writeFileSync(file, `${lines.join('\n')}\n`);
    const offset = Buffer.byteLength(lines.slice(0, 333).join('\n')) + 1;
    await expect(
      prepareSource(parseDataSpec(file).sources[0], tok, {
        cacheDir: path.join(tmp, 'cache-lines'),
        workers: 0,
        partBytes: 4096,
      }),
    ).rejects.toThrow(`${file}:334 (byte offset ${offset}): invalid JSON`);
  });
});

describe('mixtures and holdouts', () => {
  it('reads a spec file of weighted sources with held-out validation', async () => {
    const dir = path.join(tmp, 'mixture');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'web.jsonl'), jsonl(docs.slice(0, 10)));
    writeFileSync(path.join(dir, 'books.txt'), docs.slice(10, 14).join('\n\n'));
    writeFileSync(path.join(dir, 'val.jsonl'), jsonl(docs.slice(14, 16)));
    writeFileSync(
      path.join(dir, 'mix.yaml'),
      'sources:\n  - { path: web.jsonl, weight: 3 }\n  - { path: books.txt, weight: 1 }\nvalidation:\n  sources: [val.jsonl]\n',
    );
    const train = await open(path.join(dir, 'mix.yaml'));
    expect(train.sources.map((s) => [path.basename(s.name), s.weight])).toEqual([
      ['web.jsonl', 3],
      ['books.txt', 1],
    ]);
    const counts = [0, 0];
    for (let step = 0; step < 256; step++)
      for (const row of batchRows(train, { batchSize: 16, seqLen: 32, seed: 3, step })) counts[row.source]++;
    expect(counts).toEqual([3072, 1024]);
    const b = sampleBatch(train, { batchSize: 4, seqLen: 32, seed: 3, step: 0 });
    expect(b.input.length).toBe(128);
    train.close();
    const val = await open(`${path.join(dir, 'mix.yaml')};split=val`);
    expect(tokensOf(val)).toEqual(expected(docs.slice(14, 16)));
    val.close();

    // A holdout fraction: the two splits of one prepared source are disjoint and cover it.
    writeFileSync(path.join(dir, 'held.yaml'), 'sources: [web.jsonl]\nvalidation: { holdout: 0.1 }\n');
    const ht = await open(path.join(dir, 'held.yaml'));
    const hv = await open(`${path.join(dir, 'held.yaml')};split=val`);
    const total = ht.prepared[0].tokens;
    const trainTokens = tokensOf(ht).length;
    const valTokens = tokensOf(hv).length;
    expect(trainTokens + valTokens).toBe(total);
    expect(Math.abs(valTokens / total - 0.1)).toBeLessThan(0.01);
    expect(hv.prepared[0].reused).toBe(1);
    ht.close();
    hv.close();

    writeFileSync(path.join(dir, 'bad.yaml'), 'sources:\n  - { path: web.jsonl, weight: -1 }\n');
    await expect(open(path.join(dir, 'bad.yaml'))).rejects.toThrow(
      `data spec ${path.join(dir, 'bad.yaml')}: sources[0]: weight -1 must be a positive number`,
    );
  });
});

describe('streaming and resumption', () => {
  /** `count` JSONL files of about `mb` MB each (every third gzip), from the SOTU addresses. */
  function corpus(dir: string, count: number, mb: number): void {
    mkdirSync(dir, { recursive: true });
    for (let f = 0; f < count; f++) {
      const lines: string[] = [];
      let size = 0;
      for (let i = 0; size < mb * 1e6; i++) {
        const line = JSON.stringify({ text: `${f}-${i}\n${docs[(f * 7 + i) % docs.length]}` });
        lines.push(line);
        size += line.length + 1;
      }
      const body = `${lines.join('\n')}\n`;
      if (f % 3 === 2) writeFileSync(path.join(dir, `part-${f}.jsonl.gz`), gzipSync(body, { level: 1 }));
      else writeFileSync(path.join(dir, `part-${f}.jsonl`), body);
    }
  }

  it('tokenises a 32 MB corpus within a 96 MB JavaScript heap', () => {
    // As JS strings the corpus alone takes 64 MB, its ids in a JS array another 60; streaming holds a
    // chunk, a document and the word cache. One thread (--workers 0): the capped heap is the only one.
    const dir = path.join(tmp, 'stream');
    corpus(dir, 4, 8);
    const r = spawnSync(
      process.execPath,
      [
        '--max-old-space-size=96',
        '--import',
        import.meta.resolve('tsx'),
        path.join(ROOT, 'services', 'cli', 'main.ts'),
        'data',
        'prepare',
        '--data',
        dir,
        '--tokenizer',
        BPE512,
        '--workers',
        '0',
        '--cache',
        path.join(tmp, 'cache-stream'),
        '--json',
      ],
      { encoding: 'utf8', timeout: 300_000 },
    );
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
      sources: { inputBytes: number; tokens: number }[];
    };
    expect(summary.sources[0].inputBytes).toBeGreaterThan(25e6);
    expect(summary.sources[0].tokens).toBeGreaterThan(7e6);
  }, 300_000);

  it('survives SIGKILL midway: the next run keeps the finished parts and does the rest', async () => {
    const dir = path.join(tmp, 'killed');
    corpus(dir, 8, 3);
    const home = path.join(tmp, 'kill-home');
    const args = [
      '--import',
      import.meta.resolve('tsx'),
      path.join(ROOT, 'services', 'cli', 'main.ts'),
      'data',
      'prepare',
      '--data',
      dir,
      '--tokenizer',
      BPE512,
      '--workers',
      '2',
      '--json',
    ];
    const env = { ...process.env, OFFSHOOT_CACHE: home };
    const manifestDone = (): string[] => {
      const out: string[] = [];
      for (const t of readdirSync(path.join(home, 'tokens'), { withFileTypes: true }).filter((e) => e.isDirectory())) {
        const sdir = path.join(home, 'tokens', t.name, 'sources');
        // Manifests only: not the temporary files their atomic writes leave while (or when killed) writing.
        for (const m of readdirSync(sdir).filter((n) => n.endsWith('.json') && !n.startsWith('.'))) {
          try {
            const man = JSON.parse(readFileSync(path.join(sdir, m), 'utf8')) as {
              files: { parts: { key: string; tokens?: number }[] }[];
            };
            for (const f of man.files)
              for (const p of f.parts)
                if (p.tokens !== undefined) out.push(path.join(home, 'tokens', t.name, 'shards', `${p.key}.tok`));
          } catch {
            // being replaced
          }
        }
      }
      return [...new Set(out)];
    };
    const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let finished: string[] = [];
    const poll = setInterval(() => {
      try {
        finished = manifestDone();
      } catch {
        return;
      }
      if (finished.length >= 2) child.kill('SIGKILL');
    }, 25);
    const [, signal] = (await once(child, 'exit')) as [number | null, string | null];
    clearInterval(poll);
    expect(signal).toBe('SIGKILL');
    expect(finished.length).toBeGreaterThanOrEqual(2);
    expect(finished.length).toBeLessThan(8);
    const mtimes = finished.map((f) => statSync(f).mtimeMs);

    const again = spawnSync(process.execPath, args, { env, encoding: 'utf8', timeout: 300_000 });
    expect(again.status, again.stderr).toBe(0);
    const summary = JSON.parse(again.stdout.trim().split('\n').pop()!) as {
      tokens: number;
      sources: { reusedParts: number; tokenizedParts: number; shards: number }[];
    };
    expect(summary.sources[0].shards).toBe(8);
    expect(summary.sources[0].reusedParts).toBeGreaterThanOrEqual(finished.length);
    expect(summary.sources[0].reusedParts + summary.sources[0].tokenizedParts).toBe(8);
    expect(finished.map((f) => statSync(f).mtimeMs)).toEqual(mtimes);
    // No lock or temporary file is left behind, and the result is what one uninterrupted run gives.
    const shardsDir = path.dirname(finished[0]);
    expect(readdirSync(shardsDir).filter((f) => !f.endsWith('.tok'))).toEqual([]);
    const straight = await openData(dir, tok, { cacheDir: path.join(tmp, 'cache-straight') });
    expect(straight.prepared[0].tokens).toBe(summary.tokens);
    for (const s of straight.prepared[0].shards)
      expect((await readTokenFileHeader(s.file)).payloadHash).toBe(
        (await readTokenFileHeader(path.join(shardsDir, path.basename(s.file)))).payloadHash,
      );
    straight.close();
  }, 300_000);
});

describe('offshoot data', () => {
  it('encode prints the ids; prepare prints the summary', () => {
    const cli = (args: string[]) =>
      spawnSync(
        process.execPath,
        ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'services', 'cli', 'main.ts'), ...args],
        {
          encoding: 'utf8',
          env: { ...process.env, OFFSHOOT_CACHE: path.join(tmp, 'cli-home') },
          timeout: 120_000,
        },
      );
    const text = 'The state of the Union is strong.';
    const enc = cli(['data', 'encode', '--tokenizer', BPE512, '--text', text, '--json']);
    expect(enc.status, enc.stderr).toBe(0);
    expect(JSON.parse(enc.stdout)).toEqual({ ids: tok.encode(text) });

    const f = path.join(tmp, 'cli.jsonl');
    writeFileSync(f, jsonl(docs.slice(0, 3)));
    const prep = cli(['data', 'prepare', '--data', `${f};holdout=0.1`, '--tokenizer', BPE512]);
    expect(prep.status, prep.stderr).toBe(0);
    const total = expected(docs.slice(0, 3)).length;
    expect(prep.stdout).toContain(`${f};holdout=0.1: `);
    expect(prep.stdout).toContain(`${f}: ${total.toLocaleString('en-US')} tokens, `);
    expect(prep.stdout).toContain('3 documents; 1 shard(s), 0 found in the store, 1 tokenised now;');
    const json = cli(['data', 'prepare', '--data', f, '--tokenizer', BPE512, '--json']);
    const summary = JSON.parse(json.stdout);
    expect(summary).toMatchObject({
      tokens: total,
      sources: [{ tokens: total, documents: 3, reusedParts: 1, tokenizedParts: 0 }],
    });
    const bad = cli(['data', 'prepare', '--data', path.join(tmp, 'absent.jsonl'), '--tokenizer', BPE512]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain(`offshoot: ${path.join(tmp, 'absent.jsonl')}: no such file or directory`);
  }, 300_000);
});
