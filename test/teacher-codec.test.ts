/** The teacher service's wire encoding and request checks (no server). */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';

import {
  IndexEncoding,
  RequestError,
  TopKResponse,
  ValueEncoding,
  decodeTopK,
  encodeTopK,
  float16Tolerance,
  fromFloat16,
  toFloat16,
  validateRequest,
} from '../services/teacher/index.js';

const half = (x: number): number => toFloat16(Float32Array.of(x))[0];

describe('float16', () => {
  it('encodes known values exactly, rounding to nearest even', () => {
    expect(half(1)).toBe(0x3c00);
    expect(half(-2)).toBe(0xc000);
    expect(half(65504)).toBe(0x7bff); // largest finite
    expect(half(65520)).toBe(0x7c00); // rounds up to Infinity
    expect(half(Infinity)).toBe(0x7c00);
    expect(half(-Infinity)).toBe(0xfc00);
    expect(half(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(half(2 ** -26)).toBe(0x0000); // below half of it: zero
    expect(half(-0)).toBe(0x8000);
    expect(half(1 + 2 ** -11)).toBe(0x3c00); // tie: to even (down)
    expect(half(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie: to even (up)
    expect(half(2 ** -14)).toBe(0x0400); // smallest normal
    expect(half(2 ** -14 - 2 ** -25)).toBe(0x0400); // subnormal tie rounds up into the normals
    expect(Number.isNaN(fromFloat16(toFloat16(Float32Array.of(NaN)))[0])).toBe(true);
  });

  it('round-trips within half a unit in the last place', () => {
    const xs = new Float32Array(20000);
    let seed = 12345;
    for (let i = 0; i < xs.length; i++) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      const u = seed / 2 ** 32;
      xs[i] = (u - 0.5) * 2 ** ((i % 36) - 20); // up to ±16384, down into the subnormals
    }
    const back = fromFloat16(toFloat16(xs));
    for (let i = 0; i < xs.length; i++) {
      expect(Math.abs(back[i] - xs[i])).toBeLessThanOrEqual(float16Tolerance(xs[i]));
    }
    // Every binary16 value survives decode → encode.
    const all = new Uint16Array(65536).map((_, i) => i);
    const again = toFloat16(fromFloat16(all));
    for (let h = 0; h < 65536; h++) {
      const e = (h >>> 10) & 0x1f;
      if (e === 0x1f && (h & 0x3ff) !== 0) continue; // NaN payloads are not kept
      expect(again[h]).toBe(h);
    }
  });
});

describe('answer encoding', () => {
  const indices = Int32Array.from([5, 299, 0, 7, 1, 2]);
  const values = Float32Array.from([3.5, -1.25, 0.1, 7, 6, -2]);
  const logNormaliser = Float32Array.from([4.2, 8.01]);

  for (const [vocab, encoding] of [
    [300, ValueEncoding.VALUE_ENCODING_FLOAT16],
    [300, ValueEncoding.VALUE_ENCODING_FLOAT32],
    [70000, ValueEncoding.VALUE_ENCODING_FLOAT32],
  ] as const) {
    it(`round-trips through protobuf (vocab ${vocab}, ${ValueEncoding[encoding]}), also from unaligned bytes`, () => {
      const msg = encodeTopK({
        id: 9,
        positions: 2,
        k: 3,
        temperature: 2,
        vocabSize: vocab,
        encoding,
        indices,
        values,
        logNormaliser,
      });
      expect(msg.indexEncoding).toBe(
        vocab <= 65536 ? IndexEncoding.INDEX_ENCODING_UINT16 : IndexEncoding.INDEX_ENCODING_UINT32,
      );
      expect(msg.indices.byteLength).toBe(6 * (vocab <= 65536 ? 2 : 4));
      expect(msg.logits.byteLength).toBe(6 * (encoding === ValueEncoding.VALUE_ENCODING_FLOAT16 ? 2 : 4));
      const wire = TopKResponse.encode(msg).finish();
      for (const shift of [0, 1, 3]) {
        // Decoded byte fields are views into the received buffer, at any offset.
        const buf = new Uint8Array(wire.length + shift);
        buf.set(wire, shift);
        const r = decodeTopK(TopKResponse.decode(Buffer.from(buf.buffer, shift, wire.length)));
        expect(r).toMatchObject({ id: 9, positions: 2, k: 3, temperature: 2 });
        expect(Array.from(r.indices)).toEqual(Array.from(indices));
        expect(Array.from(r.logNormaliser)).toEqual(Array.from(logNormaliser));
        r.logits.forEach((v, i) => expect(Math.abs(v - values[i])).toBeLessThanOrEqual(float16Tolerance(values[i])));
      }
    });
  }

  it('refuses an answer whose byte fields do not match its header', () => {
    const msg = encodeTopK({
      id: 1,
      positions: 2,
      k: 3,
      temperature: 1,
      vocabSize: 300,
      encoding: ValueEncoding.VALUE_ENCODING_FLOAT32,
      indices,
      values,
      logNormaliser,
    });
    expect(() => decodeTopK({ ...msg, topK: 4 })).toThrow(/do not match 2 positions × top-k 4/);
    expect(() => decodeTopK({ ...msg, logits: msg.logits.subarray(1) })).toThrow(
      /logits: 23 bytes is not a whole number of 4-byte values/,
    );
  });
});

describe('request checks', () => {
  const limits = { vocabSize: 100, contextLength: 16, maxBatchTokens: 64, defaultTopK: 64 };
  const req = {
    id: 3,
    batchSize: 2,
    seqLen: 2,
    tokens: [1, 2, 3, 4],
    valueEncoding: ValueEncoding.VALUE_ENCODING_UNSPECIFIED,
  };

  it('fills in the defaults: k 64, temperature 1, float16', () => {
    expect(validateRequest(req, limits)).toMatchObject({
      id: 3,
      k: 64,
      temperature: 1,
      encoding: ValueEncoding.VALUE_ENCODING_FLOAT16,
    });
  });

  for (const [what, change, code, message] of [
    ['empty batch', { batchSize: 0, tokens: [] }, grpc.status.INVALID_ARGUMENT, /batch_size must be at least 1/],
    ['empty sequence', { seqLen: 0, tokens: [] }, grpc.status.INVALID_ARGUMENT, /seq_len must be at least 1/],
    [
      'too long',
      { batchSize: 1, seqLen: 17, tokens: new Array(17).fill(0) },
      grpc.status.INVALID_ARGUMENT,
      /seq_len 17 exceeds the model's context length of 16/,
    ],
    [
      'too big',
      { batchSize: 5, seqLen: 16, tokens: new Array(80).fill(0) },
      grpc.status.RESOURCE_EXHAUSTED,
      /5 × 16 = 80 tokens exceeds the server's limit of 64/,
    ],
    [
      'id',
      { tokens: [1, 2, 100, 4] },
      grpc.status.INVALID_ARGUMENT,
      /token id 100 at position 2 \(row 1, column 0\) is outside the vocabulary \[0, 100\)/,
    ],
    ['k 0', { topK: 0 }, grpc.status.INVALID_ARGUMENT, /top_k 0 is outside \[1, 100\]/],
    ['k > vocab', { topK: 101 }, grpc.status.INVALID_ARGUMENT, /top_k 101 is outside \[1, 100\]/],
    ['temperature', { temperature: -1 }, grpc.status.INVALID_ARGUMENT, /temperature must be from 0.01 to 100, got -1/],
    [
      'NaN temperature',
      { temperature: NaN },
      grpc.status.INVALID_ARGUMENT,
      /temperature must be from 0.01 to 100, got NaN/,
    ],
    [
      'tiny temperature',
      { temperature: 1e-300 },
      grpc.status.INVALID_ARGUMENT,
      /temperature must be from 0.01 to 100, got 1e-300/,
    ],
    [
      'huge temperature',
      { temperature: 1e6 },
      grpc.status.INVALID_ARGUMENT,
      /temperature must be from 0.01 to 100, got 1000000/,
    ],
    ['encoding', { valueEncoding: 7 }, grpc.status.INVALID_ARGUMENT, /value_encoding 7 is not one of/],
  ] as const) {
    it(`rejects: ${what}`, () => {
      let err: unknown;
      try {
        validateRequest({ ...req, ...change } as typeof req, limits);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RequestError);
      expect((err as RequestError).code).toBe(code);
      expect((err as RequestError).message).toMatch(/^request 3: /);
      expect((err as RequestError).message).toMatch(message);
    });
  }
});
