import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ByteTokenizer,
  corpusHash,
  corpusStats,
  evalBatches,
  evalWindowCount,
  loadCorpus,
  parseCorpusSpec,
  readTokenFile,
  readTokenFileHeader,
  sampleBatch,
  sampleOffsets,
  SOTU_VALIDATION_FROM,
  sotuSplit,
  TOKEN_FILE_HEADER_BYTES,
  tokenizedCorpus,
  textProblem,
  tokenizeDocuments,
  tokenizerHash,
  trainBpe,
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
    expect(parseCorpusSpec('sotu:train')).toEqual({ kind: 'sotu', split: 'train' });
    expect(parseCorpusSpec('sotu:val')).toEqual({ kind: 'sotu', split: 'val' });
    expect(parseCorpusSpec('mobydick')).toEqual({ kind: 'mobydick' });
    expect(parseCorpusSpec('data/x.jsonl', '/base')).toEqual({ kind: 'path', path: path.resolve('/base', 'data/x.jsonl') });
    expect(parseCorpusSpec('file:mobydick', '/base')).toEqual({ kind: 'path', path: path.resolve('/base', 'mobydick') });
    expect(() => parseCorpusSpec('sotu:test')).toThrow(/sotu:train or sotu:val/);
    expect(() => parseCorpusSpec('  ')).toThrow(/empty/);
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
      ['{"text": "ok"}\n{"text": oops}\n', /bad\.jsonl:2: invalid JSON/],
      ['{"text": "ok"}\n\n{"body": "x"}\n', /bad\.jsonl:3: missing "text"/],
      ['{"text": 5}\n', /bad\.jsonl:1: "text" is number, not a string/],
      ['{"text": null}\n', /bad\.jsonl:1: "text" is null/],
      ['["text"]\n', /bad\.jsonl:1: expected a JSON object/],
    ];
    const f = path.join(tmp, 'bad.jsonl');
    for (const [content, re] of cases) {
      writeFileSync(f, content);
      await expect(loadCorpus(f)).rejects.toThrow(re);
    }
  });

  it('rejects Latin-1, UTF-16 and binary files, naming the file and the byte offset', async () => {
    const cases: [string, Buffer, RegExp][] = [
      ['latin1.txt', Buffer.from('Caf\xe9 au lait\n', 'latin1'), /latin1\.txt: not UTF-8 text at byte offset 3: byte 0xE9 followed by 0x20 is not valid UTF-8 \(is the file Latin-1/],
      ['latin1-end.txt', Buffer.from('na\xefve', 'latin1'), /latin1-end\.txt: not UTF-8 text at byte offset 2: byte 0xEF followed by 0x76/],
      ['cp1252.md', Buffer.from([0x68, 0x69, 0x93, 0x21]), /cp1252\.md: not UTF-8 text at byte offset 2: byte 0x93 cannot start a UTF-8 character/],
      ['utf16.txt', Buffer.from('\ufeffhello', 'utf16le'), /utf16\.txt: not UTF-8 text at byte offset 0: starts with a UTF-16 byte order mark/],
      ['binary.txt', Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00]), /binary\.txt: not UTF-8 text at byte offset 7: a NUL byte: binary data/],
      ['controls.txt', Buffer.from('a\x01b\x02c\x03d\x04e\x05'), /controls\.txt: not UTF-8 text at byte offset 0: 5 of its 10 bytes are control characters/],
      ['cut.txt', Buffer.from([0x61, 0xe2, 0x82]), /cut\.txt: not UTF-8 text at byte offset 1: the file ends inside the UTF-8 character/],
      ['overlong.txt', Buffer.from([0x61, 0xc0, 0xaf]), /overlong\.txt: not UTF-8 text at byte offset 1: byte 0xC0 cannot start/],
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
    await expect(loadCorpus(d)).rejects.toThrow(/mixed\/b\.txt: not UTF-8 text at byte offset 1/);
    const j = path.join(tmp, 'latin1.jsonl');
    writeFileSync(j, Buffer.concat([Buffer.from('{"text": "ok"}\n{"text": "'), Buffer.from('\xe9t\xe9', 'latin1'), Buffer.from('"}\n')]));
    await expect(loadCorpus(j)).rejects.toThrow(/latin1\.jsonl: not UTF-8 text at byte offset 25/);
    // Valid UTF-8 of every length passes, a byte order mark dropped; a chunk may end mid-character.
    const ok = path.join(tmp, 'utf8.txt');
    writeFileSync(ok, '\ufeffcafé 漢字 😀\ttab\r\n');
    expect((await loadCorpus(ok)).documents).toEqual(['café 漢字 😀\ttab\r\n']);
    expect(textProblem(Buffer.from('漢字').subarray(0, 4), { final: false })).toBeUndefined();
    expect(textProblem(Buffer.from('ab\xff', 'latin1'), { offset: 1000 })?.offset).toBe(1002);
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
    await expect(loadCorpus(emptyDir)).rejects.toThrow(`corpus ${emptyDir} is empty`);
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
    await expect(writeTokenFile(f, [1, 257], { vocabSize: 257, tokenizerHash: H })).rejects.toThrow(/token id 257 at position 1 is outside/);
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

describe('tokenised-corpus cache', () => {
  it('tokenises once, then reuses the file while corpus and tokenizer match', async () => {
    const cache = path.join(tmp, 'cache');
    const f = path.join(tmp, 'cache-corpus.jsonl');
    writeFileSync(f, '{"text": "alpha beta"}\n{"text": "gamma"}\n');
    const bytes = new ByteTokenizer();

    const first = await tokenizedCorpus(f, bytes, cache);
    expect(first.cached).toBe(false);
    expect(first.documents).toBe(2);
    expect(Array.from(first.tokens)).toEqual([...bytes.encode('alpha beta'), 256, ...bytes.encode('gamma'), 256]);
    expect(bytes.decode(Array.from(first.tokens))).toBe('alpha beta<|endoftext|>gamma<|endoftext|>');

    const second = await tokenizedCorpus(f, bytes, cache);
    expect(second.cached).toBe(true);
    expect(second.path).toBe(first.path);
    expect(Array.from(second.tokens)).toEqual(Array.from(first.tokens));

    // Changed corpus content: a new file.
    writeFileSync(f, '{"text": "alpha beta"}\n{"text": "delta"}\n');
    const third = await tokenizedCorpus(f, bytes, cache);
    expect(third.cached).toBe(false);
    expect(third.path).not.toBe(first.path);

    // Another tokenizer: another file.
    const bpe = trainBpe(['alpha beta alpha beta delta'], { vocabSize: 270 });
    const fourth = await tokenizedCorpus(f, bpe, cache);
    expect(fourth.cached).toBe(false);
    expect(fourth.tokenizerHash).toBe(tokenizerHash(bpe));
    expect(bpe.decode(Array.from(fourth.tokens))).toBe('alpha beta<|endoftext|>delta<|endoftext|>');

    // A damaged cache file is rebuilt.
    truncateSync(third.path, TOKEN_FILE_HEADER_BYTES + 1);
    const fifth = await tokenizedCorpus(f, bytes, cache);
    expect(fifth.cached).toBe(false);
    expect(Array.from(fifth.tokens)).toEqual(Array.from(third.tokens));
    expect((await tokenizedCorpus(f, bytes, cache)).cached).toBe(true);
  });

  it('tokenises the embedded validation split', async () => {
    const bpe = trainBpe((await loadCorpus('sotu:train')).documents, { vocabSize: 512, maxBytes: 128 * 1024 });
    const val = await tokenizedCorpus('sotu:val', bpe, path.join(tmp, 'cache2'));
    expect(val.spec).toBe('sotu:val');
    expect(val.tokens).toBeInstanceOf(Uint16Array);
    expect(val.count).toBeGreaterThan(100_000);
    const eots = Array.from(val.tokens).filter((t) => t === 256).length;
    expect(eots).toBe(val.documents);
  });

  it('tokenizeDocuments checks ids against the vocabulary', () => {
    const broken = { ...new ByteTokenizer(), vocabSize: 100, name: 'broken', kind: 'bytes' as const, endOfTextId: null, encode: () => [150], decode: () => '', toJSON: () => ({}) };
    expect(() => tokenizeDocuments(['x'], broken)).toThrow(/token id 150 .* outside/);
  });
});

describe('batches', () => {
  const tokens = Uint16Array.from({ length: 10_000 }, (_, i) => (i * 7919) % 50_000);
  const opts = { batchSize: 8, seqLen: 32, seed: 1234 };

  it('shifts targets by one', () => {
    const b = sampleBatch(tokens, { ...opts, step: 0 });
    expect(b.input.length).toBe(8 * 32);
    expect(b.target.length).toBe(8 * 32);
    const starts = sampleOffsets(tokens.length, { ...opts, step: 0 });
    for (let r = 0; r < 8; r++) {
      for (let t = 0; t < 32; t++) {
        expect(b.input[r * 32 + t]).toBe(tokens[starts[r] + t]);
        expect(b.target[r * 32 + t]).toBe(tokens[starts[r] + t + 1]);
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
    // Same batch from any array type holding the same ids.
    const e = sampleBatch(Array.from(tokens), { ...opts, step: 5 });
    expect(Array.from(e.input)).toEqual(Array.from(a.input));
  });

  it('gives a resumed run exactly the batches of an uninterrupted one', () => {
    const run = (from: number, to: number): number[][] => {
      const out: number[][] = [];
      for (let step = from; step < to; step++) out.push(Array.from(sampleBatch(tokens, { ...opts, step }).input));
      return out;
    };
    const straight = run(0, 20);
    const resumed = [...run(0, 7), ...run(7, 20)];
    expect(resumed).toEqual(straight);
  });

  it('covers the stream roughly uniformly, large seeds and steps included', () => {
    const n = 1000;
    const counts = new Array<number>(10).fill(0);
    let total = 0;
    for (let step = 0; step < 500; step++) {
      for (const s of sampleOffsets(n + 16, { batchSize: 16, seqLen: 16, seed: 7, step })) {
        expect(s).toBeGreaterThanOrEqual(0);
        expect(s).toBeLessThan(n);
        counts[Math.floor(s / 100)]++;
        total++;
      }
    }
    for (const c of counts) expect(Math.abs(c - total / 10)).toBeLessThan(total / 10 / 5);
    const big = sampleOffsets(100, { batchSize: 4, seqLen: 8, seed: -(2 ** 52), step: 2 ** 53 - 1 });
    expect(big.every((s) => s >= 0 && s < 92)).toBe(true);
    expect(() => sampleOffsets(100, { batchSize: 4, seqLen: 8, seed: 1, step: -1 })).toThrow(/step/);
    expect(() => sampleOffsets(100, { batchSize: 0, seqLen: 8, seed: 1, step: 0 })).toThrow(/batchSize/);
  });

  it('errors clearly when the corpus is shorter than seqLen + 1', () => {
    expect(() => sampleBatch(new Uint16Array(32), { ...opts, step: 0 })).toThrow(/32 tokens, too short for seqLen 32: need at least seqLen \+ 1 = 33/);
    expect(() => evalBatches(new Uint16Array(10), { batchSize: 2, seqLen: 10 }).next()).toThrow(/too short/);
    expect(sampleBatch(new Uint16Array(33), { ...opts, step: 0 }).input.length).toBe(8 * 32);
  });

  it('iterates non-overlapping contiguous validation windows deterministically', () => {
    const stream = Array.from({ length: 101 }, (_, i) => i);
    const batches = [...evalBatches(stream, { batchSize: 3, seqLen: 10 })];
    expect(evalWindowCount(101, { batchSize: 3, seqLen: 10 })).toBe(10);
    expect(batches.map((b) => b.batchSize)).toEqual([3, 3, 3, 1]);
    const inputs = batches.flatMap((b) => Array.from(b.input));
    const targets = batches.flatMap((b) => Array.from(b.target));
    expect(inputs).toEqual(stream.slice(0, 100));
    expect(targets).toEqual(stream.slice(1, 101));
    expect([...evalBatches(stream, { batchSize: 3, seqLen: 10 })].map((b) => Array.from(b.input))).toEqual(batches.map((b) => Array.from(b.input)));

    const capped = [...evalBatches(stream, { batchSize: 4, seqLen: 10, maxTokens: 35 })];
    expect(capped.map((b) => b.batchSize)).toEqual([3]);
    expect([...evalBatches(stream, { batchSize: 4, seqLen: 10, maxTokens: 1 })].map((b) => b.batchSize)).toEqual([1]);
    // 100 tokens hold only 9 full windows with targets.
    expect(evalWindowCount(100, { batchSize: 1, seqLen: 10 })).toBe(9);
  });
});
