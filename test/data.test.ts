import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  truncateSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ByteTokenizer,
  TokenFileWriter,
  arrayStream,
  batchRows,
  corpusHash,
  corpusStats,
  evalBatches,
  evalWindowCount,
  holdoutRanges,
  loadCorpus,
  openData,
  parseDataSpec,
  permuteIndex,
  readTokenFile,
  readTokenFileHeader,
  sampleBatch,
  SOTU_VALIDATION_FROM,
  sotuSplit,
  TOKEN_FILE_HEADER_BYTES,
  tokenizerHash,
  trainBpe,
  windowCount,
  writeTokenFile,
} from '../core/data/index.js';

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'offshoot-data-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe('embedded corpora', () => {
  it('splits SOTU by year: train before 2001, validation from 2001', async () => {
    const train = sotuSplit('train');
    const val = sotuSplit('val');
    expect(train.length).toBeGreaterThan(200);
    expect(val.length).toBeGreaterThan(15);
    expect(train.every((r) => r.year < SOTU_VALIDATION_FROM)).toBe(true);
    expect(val.every((r) => r.year >= SOTU_VALIDATION_FROM)).toBe(true);
    expect(train[0].year).toBe(1790);
    expect(val[0].year).toBe(2001);
    // sorted by (year, name)
    for (let i = 1; i < train.length; i++) expect(train[i].year).toBeGreaterThanOrEqual(train[i - 1].year);

    const trainCorpus = await loadCorpus('sotu:train');
    const valCorpus = await loadCorpus('sotu:val');
    expect(trainCorpus.spec).toBe('sotu:train');
    expect(trainCorpus.documents.length).toBe(train.length);
    expect(valCorpus.documents.length).toBe(val.length);
    expect(trainCorpus.documents[0].startsWith('Fellow-Citizens of the Senate')).toBe(true);
    expect(corpusStats(trainCorpus).characters).toBeGreaterThan(5_000_000);
    expect(corpusStats(valCorpus).characters).toBeGreaterThan(300_000);
    expect(corpusHash(trainCorpus)).toBe(corpusHash(await loadCorpus('sotu:train')));
    expect(corpusHash(trainCorpus)).not.toBe(corpusHash(valCorpus));
  });

  it('loads Moby Dick as the out-of-domain test set', async () => {
    const moby = await loadCorpus('mobydick');
    expect(moby.documents.length).toBeGreaterThan(100);
    expect(moby.documents.join('\n')).toContain('Call me Ishmael');
    expect(corpusStats(moby).characters).toBeGreaterThan(1_000_000);
  });

  it('parses specs', () => {
    const one = (spec: string, cwd?: string) => parseDataSpec(spec, cwd).sources[0];
    expect(one('sotu:train').path).toBe('sotu:train');
    expect(one('sotu:validation').path).toBe('sotu:val');
    expect(one('mobydick').path).toBe('mobydick');
    expect(one('data/x.jsonl', '/base')).toMatchObject({
      path: path.resolve('/base', 'data/x.jsonl'),
      field: 'text',
      invalid: 'error',
      weight: 1,
      holdout: 0,
    });
    expect(one('file:mobydick', '/base').path).toBe(path.resolve('/base', 'mobydick'));
    expect(one('/d/*.jsonl.gz;field=content;invalid=skip;holdout=0.01')).toMatchObject({
      path: '/d/*.jsonl.gz',
      field: 'content',
      invalid: 'skip',
      holdout: 0.01,
    });
    expect(parseDataSpec('/d/x.jsonl;holdout=0.1;split=val').split).toBe('val');
    expect(() => parseDataSpec('sotu:test')).toThrow(/sotu:train or sotu:val/);
    expect(() => parseDataSpec('  ')).toThrow(/empty/);
  });
});

describe('user corpora', () => {
  it('reads a text file as one document', async () => {
    const f = path.join(tmp, 'one.txt');
    writeFileSync(f, '\ufeffhello\nworld\n');
    const c = await loadCorpus(f);
    expect(c.documents).toEqual(['hello\nworld\n']);
    expect(c.spec).toBe(f);
  });

  it('reads a folder of .txt/.md files recursively in sorted order', async () => {
    const d = path.join(tmp, 'folder');
    mkdirSync(path.join(d, 'sub'), { recursive: true });
    mkdirSync(path.join(d, '.hidden'), { recursive: true });
    writeFileSync(path.join(d, 'b.txt'), 'B');
    writeFileSync(path.join(d, 'a.md'), 'A');
    writeFileSync(path.join(d, 'sub', 'c.txt'), 'C');
    writeFileSync(path.join(d, 'Z.TXT'), 'Z');
    writeFileSync(path.join(d, 'skip.json'), 'nope');
    writeFileSync(path.join(d, '.hidden', 'x.txt'), 'hidden');
    writeFileSync(path.join(d, 'empty.txt'), '');
    const c = await loadCorpus(d);
    expect(c.documents).toEqual(['Z', 'A', 'B', 'C']);
  });

  it('reads JSONL with a text field', async () => {
    const f = path.join(tmp, 'good.jsonl');
    writeFileSync(f, '{"text": "first"}\r\n\n{"text": "second", "meta": 1}\n');
    expect((await loadCorpus(f)).documents).toEqual(['first', 'second']);
  });

  it('names file and line for bad JSONL', async () => {
    const cases: [string, RegExp][] = [
      ['{"text": "ok"}\n{"text": oops}\n', /bad\.jsonl:2 \(byte offset 15\): invalid JSON/],
      ['{"text": "ok"}\n\n{"body": "x"}\n', /bad\.jsonl:3 \(byte offset 16\): missing "text" field/],
      ['{"text": 5}\n', /bad\.jsonl:1 \(byte offset 0\): "text" is number, not a string/],
      ['{"text": null}\n', /bad\.jsonl:1 \(byte offset 0\): "text" is null/],
      ['["text"]\n', /bad\.jsonl:1 \(byte offset 0\): expected a JSON object/],
    ];
    const f = path.join(tmp, 'bad.jsonl');
    for (const [content, re] of cases) {
      writeFileSync(f, content);
      await expect(loadCorpus(f)).rejects.toThrow(re);
    }
  });

  it('rejects Latin-1, UTF-16 and binary files, naming the file and the byte offset', async () => {
    const cases: [string, Buffer, RegExp][] = [
      [
        'latin1.txt',
        Buffer.from('Caf\xe9 au lait\n', 'latin1'),
        /latin1\.txt: invalid UTF-8 at byte offset 3 \(byte 0xe9\); is it Latin-1/,
      ],
      [
        'latin1-end.txt',
        Buffer.from('na\xefve', 'latin1'),
        /latin1-end\.txt: invalid UTF-8 at byte offset 2 \(byte 0xef\)/,
      ],
      ['cp1252.md', Buffer.from([0x68, 0x69, 0x93, 0x21]), /cp1252\.md: invalid UTF-8 at byte offset 2 \(byte 0x93\)/],
      ['utf16.txt', Buffer.from('\ufeffhello', 'utf16le'), /utf16\.txt: invalid UTF-8 at byte offset 0 \(byte 0xff\)/],
      [
        'binary.txt',
        Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00]),
        /binary\.txt: binary content \(a NUL byte\) at byte offset 7/,
      ],
      ['cut.txt', Buffer.from([0x61, 0xe2, 0x82]), /cut\.txt: invalid UTF-8 at byte offset 1/],
      ['overlong.txt', Buffer.from([0x61, 0xc0, 0xaf]), /overlong\.txt: invalid UTF-8 at byte offset 1 \(byte 0xc0\)/],
    ];
    for (const [name, bytes, re] of cases) {
      const f = path.join(tmp, name);
      writeFileSync(f, bytes);
      await expect(loadCorpus(f), name).rejects.toThrow(re);
    }
    // In a folder and in JSONL alike.
    const d = path.join(tmp, 'mixed');
    mkdirSync(d, { recursive: true });
    writeFileSync(path.join(d, 'a.txt'), 'fine');
    writeFileSync(path.join(d, 'b.txt'), Buffer.from('r\xe9sum\xe9', 'latin1'));
    await expect(loadCorpus(d)).rejects.toThrow(/mixed\/b\.txt: invalid UTF-8 at byte offset 1/);
    const j = path.join(tmp, 'latin1.jsonl');
    writeFileSync(
      j,
      Buffer.concat([
        Buffer.from('{"text": "ok"}\n{"text": "'),
        Buffer.from('\xe9t\xe9', 'latin1'),
        Buffer.from('"}\n'),
      ]),
    );
    await expect(loadCorpus(j)).rejects.toThrow(/latin1\.jsonl:2: invalid UTF-8 at byte offset 25/);
    // Valid UTF-8 of every length passes, a byte order mark dropped.
    const ok = path.join(tmp, 'utf8.txt');
    writeFileSync(ok, '\ufeffcafé 漢字 😀\ttab\r\n');
    expect((await loadCorpus(ok)).documents).toEqual(['café 漢字 😀\ttab\r\n']);
  });

  it('rejects empty corpora and missing paths, naming the source', async () => {
    const emptyFile = path.join(tmp, 'empty.txt');
    writeFileSync(emptyFile, '');
    await expect(loadCorpus(emptyFile)).rejects.toThrow(`corpus ${emptyFile} is empty`);
    const emptyJsonl = path.join(tmp, 'empty.jsonl');
    writeFileSync(emptyJsonl, '\n\n{"text": ""}\n');
    await expect(loadCorpus(emptyJsonl)).rejects.toThrow(`corpus ${emptyJsonl} is empty`);
    const emptyDir = path.join(tmp, 'emptydir');
    mkdirSync(emptyDir);
    await expect(loadCorpus(emptyDir)).rejects.toThrow(`${emptyDir} is empty: the folder has no .txt`);
    await expect(loadCorpus(path.join(tmp, 'missing.txt'))).rejects.toThrow(/missing\.txt: no such file/);
  });
});

describe('token files', () => {
  const H = 'ab'.repeat(32);

  it('round-trips uint16 and uint32 files with their header', async () => {
    const f16 = path.join(tmp, 'small.tokens');
    const ids = [0, 1, 2, 65535, 300, 7];
    const h = await writeTokenFile(f16, ids, { vocabSize: 65536, tokenizerHash: H, documents: 2 });
    expect(h.bytesPerToken).toBe(2);
    expect(readFileSync(f16).length).toBe(TOKEN_FILE_HEADER_BYTES + 2 * ids.length);
    const r = await readTokenFile(f16);
    expect(r.tokens).toBeInstanceOf(Uint16Array);
    expect(Array.from(r.tokens)).toEqual(ids);
    expect(r).toMatchObject({ count: 6, vocabSize: 65536, documents: 2, tokenizerHash: H, corpusHash: '0'.repeat(64) });
    expect(await readTokenFileHeader(f16)).toMatchObject({ count: 6, bytesPerToken: 2 });

    const f32 = path.join(tmp, 'big.tokens');
    const big = [0, 65536, 69999];
    await writeTokenFile(f32, big, { vocabSize: 70000, tokenizerHash: H });
    const r32 = await readTokenFile(f32);
    expect(r32.tokens).toBeInstanceOf(Uint32Array);
    expect(Array.from(r32.tokens)).toEqual(big);

    const empty = path.join(tmp, 'empty.tokens');
    await writeTokenFile(empty, [], { vocabSize: 257, tokenizerHash: H });
    expect((await readTokenFile(empty)).count).toBe(0);
    expect(readdirSync(tmp).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  });

  it('rejects ids outside the vocabulary', async () => {
    const f = path.join(tmp, 'oov.tokens');
    await expect(writeTokenFile(f, [1, 257], { vocabSize: 257, tokenizerHash: H })).rejects.toThrow(
      /token id 257 at position 1 is outside/,
    );
    await expect(writeTokenFile(f, [1, -1], { vocabSize: 257, tokenizerHash: H })).rejects.toThrow(/outside/);
  });

  it('names the file for bad magic, truncation, trailing data and corruption', async () => {
    const good = path.join(tmp, 'good.tokens');
    await writeTokenFile(good, [1, 2, 3, 4, 5], { vocabSize: 257, tokenizerHash: H });
    const bytes = readFileSync(good);

    const magic = path.join(tmp, 'magic.tokens');
    const m = Buffer.from(bytes);
    m[0] = 0x58;
    writeFileSync(magic, m);
    await expect(readTokenFile(magic)).rejects.toThrow(`${magic}: not a token file (bad magic`);
    writeFileSync(magic, 'hello');
    await expect(readTokenFile(magic)).rejects.toThrow(`${magic}: not a token file`);

    const trunc = path.join(tmp, 'trunc.tokens');
    writeFileSync(trunc, bytes);
    truncateSync(trunc, bytes.length - 3);
    await expect(readTokenFile(trunc)).rejects.toThrow(`${trunc}: truncated token file`);
    truncateSync(trunc, 40);
    await expect(readTokenFile(trunc)).rejects.toThrow(`${trunc}: truncated token file`);

    const trailing = path.join(tmp, 'trailing.tokens');
    writeFileSync(trailing, Buffer.concat([bytes, Buffer.from([0, 0])]));
    await expect(readTokenFile(trailing)).rejects.toThrow(`${trailing}: corrupt token file`);

    const flipped = path.join(tmp, 'flipped.tokens');
    const fl = Buffer.from(bytes);
    fl[TOKEN_FILE_HEADER_BYTES] ^= 1;
    writeFileSync(flipped, fl);
    await expect(readTokenFile(flipped)).rejects.toThrow(`${flipped}: corrupt token file (payload hash mismatch)`);

    const version = path.join(tmp, 'version.tokens');
    const v = Buffer.from(bytes);
    v.writeUInt32LE(99, 8);
    writeFileSync(version, v);
    await expect(readTokenFile(version)).rejects.toThrow(`${version}: unsupported token file version 99`);

    await expect(readTokenFile(path.join(tmp, 'absent.tokens'))).rejects.toThrow(/absent\.tokens: cannot open/);
  });

  it('checks the tokenizer a file was written with', async () => {
    const bytes = new ByteTokenizer();
    const f = path.join(tmp, 'tok.tokens');
    await writeTokenFile(f, bytes.encode('hi'), { vocabSize: bytes.vocabSize, tokenizerHash: tokenizerHash(bytes) });
    await expect(readTokenFile(f, { tokenizer: bytes })).resolves.toMatchObject({ count: 2 });
    const other = trainBpe(['hello hello hello'], { vocabSize: 260 });
    await expect(readTokenFile(f, { tokenizer: other })).rejects.toThrow(/written with another tokenizer/);
  });
});

describe('token store', () => {
  it('tokenises once, then reuses the shards while the files and the tokenizer match', async () => {
    const cache = path.join(tmp, 'cache');
    const f = path.join(tmp, 'cache-corpus.jsonl');
    writeFileSync(f, '{"text": "alpha beta"}\n{"text": "gamma"}\n');
    const bytes = new ByteTokenizer();
    const ids = (d: {
      sources: readonly {
        stream: { length: number; read: (a: number, b: number, c: Int32Array, d: number) => void };
      }[];
    }): number[] => {
      const s = d.sources[0].stream;
      const out = new Int32Array(s.length);
      s.read(0, s.length, out, 0);
      return Array.from(out);
    };

    const first = await openData(f, bytes, { cacheDir: cache });
    expect(first.prepared[0]).toMatchObject({ documents: 2, reused: 0, tokenized: 1 });
    expect(ids(first)).toEqual([...bytes.encode('alpha beta'), 256, ...bytes.encode('gamma'), 256]);
    expect(bytes.decode(ids(first))).toBe('alpha beta<|endoftext|>gamma<|endoftext|>');
    first.close();

    const second = await openData(f, bytes, { cacheDir: cache });
    expect(second.prepared[0]).toMatchObject({ reused: 1, tokenized: 0 });
    expect(second.prepared[0].shards[0].file).toBe(first.prepared[0].shards[0].file);
    expect(ids(second)).toEqual(ids(first));
    second.close();

    // Changed content: a new part key, a new shard.
    writeFileSync(f, '{"text": "alpha beta"}\n{"text": "delta"}\n');
    const third = await openData(f, bytes, { cacheDir: cache });
    expect(third.prepared[0]).toMatchObject({ reused: 0, tokenized: 1 });
    expect(third.prepared[0].shards[0].file).not.toBe(first.prepared[0].shards[0].file);
    third.close();

    // Another tokenizer: another store.
    const bpe = trainBpe(['alpha beta alpha beta delta'], { vocabSize: 270 });
    const fourth = await openData(f, bpe, { cacheDir: cache });
    expect(fourth.prepared[0].tokenized).toBe(1);
    expect((await readTokenFileHeader(fourth.prepared[0].shards[0].file)).tokenizerHash).toBe(tokenizerHash(bpe));
    expect(bpe.decode(ids(fourth))).toBe('alpha beta<|endoftext|>delta<|endoftext|>');
    fourth.close();

    // A damaged shard is rebuilt.
    truncateSync(third.prepared[0].shards[0].file, TOKEN_FILE_HEADER_BYTES + 1);
    const fifth = await openData(f, bytes, { cacheDir: cache });
    expect(fifth.prepared[0]).toMatchObject({ reused: 0, tokenized: 1 });
    expect(ids(fifth)).toEqual(ids(third));
    fifth.close();
    expect((await openData(f, bytes, { cacheDir: cache })).prepared[0].reused).toBe(1);
  });

  it('opens a prepared source from its manifest and shard headers; payloads are checked once, or on --verify', async () => {
    const cache = path.join(tmp, 'cache-manifest');
    const f = path.join(tmp, 'manifest-corpus.jsonl');
    writeFileSync(f, '{"text": "alpha beta"}\n{"text": "gamma"}\n');
    utimesSync(f, 1_000_000_000, 1_000_000_000);
    const bytes = new ByteTokenizer();
    const first = await openData(f, bytes, { cacheDir: cache });
    const shard = first.prepared[0].shards[0].file;
    first.close();
    // Same size and mtime, other bytes: the manifest is trusted, the file is not read again.
    writeFileSync(f, '{"text": "ALPHA BETA"}\n{"text": "GAMMA"}\n');
    utimesSync(f, 1_000_000_000, 1_000_000_000);
    const again = await openData(f, bytes, { cacheDir: cache });
    expect(again.prepared[0]).toMatchObject({ reused: 1, tokenized: 0 });
    expect(
      bytes.decode(
        Array.from({ length: again.sources[0].stream.length }, (_, i) => {
          const one = new Int32Array(1);
          again.sources[0].stream.read(i, 1, one, 0);
          return one[0];
        }),
      ),
    ).toBe('alpha beta<|endoftext|>gamma<|endoftext|>');
    again.close();
    // A flipped payload byte goes unnoticed by a plain open (headers only), and is caught by verify.
    const buf = readFileSync(shard);
    buf[TOKEN_FILE_HEADER_BYTES] ^= 1;
    writeFileSync(shard, buf);
    expect((await openData(f, bytes, { cacheDir: cache })).prepared[0].reused).toBe(1);
    const verified = await openData(f, bytes, { cacheDir: cache, verify: true });
    expect(verified.prepared[0]).toMatchObject({ reused: 0, tokenized: 1 });
    verified.close();
  });

  it('tokenises the embedded validation split', async () => {
    const bpe = trainBpe((await loadCorpus('sotu:train')).documents, { vocabSize: 512, maxBytes: 128 * 1024 });
    const val = await openData('sotu:val', bpe, { cacheDir: path.join(tmp, 'cache2') });
    expect(val.spec).toBe('sotu:val');
    const shard = await readTokenFile(val.prepared[0].shards[0].file, { tokenizer: bpe });
    expect(shard.tokens).toBeInstanceOf(Uint16Array);
    expect(shard.count).toBeGreaterThan(100_000);
    expect(Array.from(shard.tokens).filter((t) => t === 256).length).toBe(shard.documents);
    val.close();
  });

  it('a streamed token file checks ids against the vocabulary', async () => {
    const w = await TokenFileWriter.create(path.join(tmp, 'range.tok'), {
      vocabSize: 100,
      tokenizerHash: 'ab'.repeat(32),
    });
    await w.append([1, 2]);
    await expect(w.append([150])).rejects.toThrow(
      /range\.tok: token id 150 at position 2 is outside the vocabulary \(size 100\)/,
    );
    await w.abort();
    expect(readdirSync(tmp).filter((n) => n.includes('range.tok'))).toEqual([]);
  });
});

describe('batches', () => {
  const tokens = Uint16Array.from({ length: 10_000 }, (_, i) => (i * 7919) % 50_000);
  const opts = { batchSize: 8, seqLen: 32, seed: 1234 };

  it('shifts targets by one', () => {
    const b = sampleBatch(tokens, { ...opts, step: 0 });
    expect(b.input.length).toBe(8 * 32);
    expect(b.target.length).toBe(8 * 32);
    const rows = batchRows(tokens, { ...opts, step: 0 });
    for (let r = 0; r < 8; r++) {
      expect(rows[r].start).toBe(rows[r].window * 32);
      for (let t = 0; t < 32; t++) {
        expect(b.input[r * 32 + t]).toBe(tokens[rows[r].start + t]);
        expect(b.target[r * 32 + t]).toBe(tokens[rows[r].start + t + 1]);
      }
    }
  });

  it('is a pure function of (seed, step)', () => {
    const a = sampleBatch(tokens, { ...opts, step: 5 });
    sampleBatch(tokens, { ...opts, step: 6 }); // no hidden state
    const b = sampleBatch(tokens, { ...opts, step: 5 });
    expect(Array.from(b.input)).toEqual(Array.from(a.input));
    expect(Array.from(b.target)).toEqual(Array.from(a.target));
    const c = sampleBatch(tokens, { ...opts, step: 6 });
    expect(Array.from(c.input)).not.toEqual(Array.from(a.input));
    const d = sampleBatch(tokens, { ...opts, seed: 4321, step: 5 });
    expect(Array.from(d.input)).not.toEqual(Array.from(a.input));
    // Same batch from any array type or stream holding the same ids.
    const e = sampleBatch(Array.from(tokens), { ...opts, step: 5 });
    expect(Array.from(e.input)).toEqual(Array.from(a.input));
    expect(Array.from(sampleBatch(arrayStream(tokens), { ...opts, step: 5 }).input)).toEqual(Array.from(a.input));
  });

  it('gives a resumed run exactly the batches of an uninterrupted one, mid-epoch', () => {
    // 312 windows of 32: an epoch is 39 steps of 8, so the resumption at step 50 is mid-epoch.
    expect(windowCount(tokens, 32)).toBe(312);
    const run = (from: number, to: number): number[][] => {
      const out: number[][] = [];
      for (let step = from; step < to; step++) out.push(Array.from(sampleBatch(tokens, { ...opts, step }).input));
      return out;
    };
    const straight = run(0, 100);
    const resumed = [...run(0, 50), ...run(50, 100)];
    expect(resumed).toEqual(straight);
  });

  it('sees every window exactly once per epoch, in a different order each epoch', () => {
    for (const [n, seqLen, batchSize] of [
      [10_000, 32, 8],
      [4_097, 16, 7],
      [1_000, 1, 3],
    ] as const) {
      const data = Uint16Array.from({ length: n }, (_, i) => i % 65536);
      const w = windowCount(data, seqLen);
      expect(w).toBe(Math.floor((n - 1) / seqLen));
      const seen = [new Map<number, number>(), new Map<number, number>(), new Map<number, number>()];
      const orders: number[][] = [[], [], []];
      for (let i = 0; i < 3 * w; i += batchSize) {
        const rows = batchRows(data, { batchSize, seqLen, seed: 99, step: i / batchSize });
        rows.forEach((row, r) => {
          if (i + r >= 3 * w) return;
          expect(row.epoch).toBe(Math.floor((i + r) / w));
          seen[row.epoch].set(row.window, (seen[row.epoch].get(row.window) ?? 0) + 1);
          orders[row.epoch].push(row.window);
        });
      }
      for (const m of seen) {
        expect(m.size).toBe(w);
        expect([...m.values()].every((c) => c === 1)).toBe(true);
      }
      expect(orders[0]).not.toEqual(orders[1]);
    }
    // The permutation is a bijection for sizes that are not powers of two, large ones included.
    for (const n of [1, 2, 3, 5, 1000, 65_537]) {
      const hit = new Uint8Array(n);
      for (let i = 0; i < n; i++) hit[permuteIndex(i, n, 7, 0, 0)]++;
      expect(hit.every((c) => c === 1)).toBe(true);
    }
    const big = 2 ** 40 + 12345;
    const p = permuteIndex(big - 1, big, -(2 ** 52), 2 ** 40, 3);
    expect(p >= 0 && p < big && Number.isInteger(p)).toBe(true);
    expect(() => sampleBatch(tokens, { ...opts, step: -1 })).toThrow(/step/);
    expect(() => sampleBatch(tokens, { ...opts, batchSize: 0, step: 0 })).toThrow(/batchSize/);
  });

  it('honours mixture weights and holdouts', () => {
    const a = {
      name: 'a',
      weight: 3,
      stream: arrayStream(Uint16Array.from({ length: 5000 }, () => 1)),
      ranges: [[0, 5000]] as [number, number][],
    };
    const b = {
      name: 'b',
      weight: 1,
      stream: arrayStream(Uint16Array.from({ length: 800 }, () => 2)),
      ranges: [[0, 800]] as [number, number][],
    };
    const data = { spec: 'mix', sources: [a, b] };
    let fromA = 0;
    let fromB = 0;
    const seenB = new Map<number, number>();
    const wB = windowCount(data, 8, 1);
    for (let step = 0; step < 1024; step++) {
      const batch = sampleBatch(data, { batchSize: 4, seqLen: 8, seed: 5, step });
      for (let r = 0; r < 4; r++) batch.input[r * 8] === 1 ? fromA++ : fromB++;
      for (const row of batchRows(data, { batchSize: 4, seqLen: 8, seed: 5, step })) {
        if (row.source === 1 && row.epoch === 0) seenB.set(row.window, (seenB.get(row.window) ?? 0) + 1);
      }
    }
    expect(fromA + fromB).toBe(4096);
    expect(fromA).toBe(3072);
    // Source b went through whole epochs of its own: every window of its first epoch once.
    expect(seenB.size).toBe(wB);
    expect([...seenB.values()].every((c) => c === 1)).toBe(true);

    // A holdout: train and val are disjoint and cover the stream.
    const n = 123_457;
    const train = holdoutRanges(n, 0.05, 'train');
    const val = holdoutRanges(n, 0.05, 'val');
    const covered = new Uint8Array(n);
    for (const [x, y] of [...train, ...val]) for (let i = x; i < y; i++) covered[i]++;
    expect(covered.every((c) => c === 1)).toBe(true);
    const held = val.reduce((acc, [x, y]) => acc + y - x, 0);
    expect(Math.abs(held / n - 0.05)).toBeLessThan(0.002);
    expect(val.length).toBe(50);
  });

  it('errors clearly when the corpus is shorter than seqLen + 1', () => {
    expect(() => sampleBatch(new Uint16Array(32), { ...opts, step: 0 })).toThrow(
      /32 tokens, too short for seqLen 32: need at least seqLen \+ 1 = 33/,
    );
    expect(() => evalBatches(new Uint16Array(10), { batchSize: 2, seqLen: 10 }).next()).toThrow(/too short/);
    expect(sampleBatch(new Uint16Array(33), { ...opts, step: 0 }).input.length).toBe(8 * 32);
  });

  it('iterates non-overlapping contiguous validation windows deterministically', () => {
    const stream = Array.from({ length: 101 }, (_, i) => i);
    const batches = [...evalBatches(stream, { batchSize: 3, seqLen: 10 })];
    expect(evalWindowCount(stream, { batchSize: 3, seqLen: 10 })).toBe(10);
    expect(batches.map((b) => b.batchSize)).toEqual([3, 3, 3, 1]);
    const inputs = batches.flatMap((b) => Array.from(b.input));
    const targets = batches.flatMap((b) => Array.from(b.target));
    expect(inputs).toEqual(stream.slice(0, 100));
    expect(targets).toEqual(stream.slice(1, 101));
    expect([...evalBatches(stream, { batchSize: 3, seqLen: 10 })].map((b) => Array.from(b.input))).toEqual(
      batches.map((b) => Array.from(b.input)),
    );

    const capped = [...evalBatches(stream, { batchSize: 4, seqLen: 10, maxTokens: 35 })];
    expect(capped.map((b) => b.batchSize)).toEqual([3]);
    expect([...evalBatches(stream, { batchSize: 4, seqLen: 10, maxTokens: 1 })].map((b) => b.batchSize)).toEqual([1]);
    // 100 tokens hold only 9 full windows with targets.
    expect(evalWindowCount(stream.slice(0, 100), { batchSize: 1, seqLen: 10 })).toBe(9);
  });
});
