/** Sub-network specs: schema, checks against a teacher (errors name the field), canonical form, hash. */
import { createHash } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { type NeoXConfig, uniformConfig } from '../core/model/index.js';
import {
  SpecError,
  canonicalHash,
  canonicalText,
  canonicalize,
  compactSpec,
  evenlySpaced,
  fullSpec,
  indexRuns,
  parseSpec,
  sha256Hex,
  specHash,
  studentConfig,
  teacherShape,
  topK,
} from '../core/subnet/index.js';

/** 6 layers, width 64, 8 heads of 8, MLP 256, vocab 100. */
const teacher: NeoXConfig = uniformConfig({
  vocabSize: 100,
  hiddenSize: 64,
  numLayers: 6,
  numHeads: 8,
  maxPositions: 64,
});

function specError(spec: unknown, t: NeoXConfig = teacher, options = {}): SpecError {
  try {
    canonicalize(spec, t, options);
  } catch (err) {
    expect(err).toBeInstanceOf(SpecError);
    return err as SpecError;
  }
  throw new Error(`expected a SpecError for ${JSON.stringify(spec)}`);
}

describe('sha256 (pure JS)', () => {
  it('matches node:crypto', () => {
    for (const s of ['', 'abc', 'a'.repeat(55), 'a'.repeat(56), 'a'.repeat(64), 'x'.repeat(1000), 'héllo wörld ✓ 𝄞']) {
      expect(sha256Hex(s)).toBe(createHash('sha256').update(s, 'utf8').digest('hex'));
    }
  });
});

describe('canonical form', () => {
  it('the empty spec and the full spec keep the whole teacher', () => {
    for (const spec of [{}, fullSpec(teacher)]) {
      const c = canonicalize(spec, teacher);
      expect(c.layers).toEqual([0, 1, 2, 3, 4, 5]);
      expect(c.embedding).toHaveLength(64);
      expect(c.headSize).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      expect(c.perLayer.every((l) => l.heads.length === 8 && l.mlp.length === 256)).toBe(true);
      expect(studentConfig(teacher, c)).toEqual(teacher);
    }
  });

  it('counts resolve first-k, and equal sub-networks hash equal', () => {
    const counts = { layers: 3, embedding: 32, heads: 4, mlp: 100 };
    const explicit = {
      layers: [0, 1, 2],
      embedding: Array.from({ length: 32 }, (_, i) => 31 - i), // order of channels is irrelevant
      perLayer: [0, 1, 2].map(() => ({ heads: [3, 2, 1, 0], mlp: Array.from({ length: 100 }, (_, i) => i) })),
    };
    const c = canonicalize(counts, teacher);
    expect(c.layers).toEqual([0, 1, 2]);
    expect(c.embedding).toEqual(Array.from({ length: 32 }, (_, i) => i));
    expect(specHash(counts, teacher)).toBe(specHash(explicit, teacher));
    expect(specHash(counts, teacher)).not.toBe(specHash({ ...counts, mlp: 101 }, teacher));
    expect(specHash(counts, teacher)).toMatch(/^[0-9a-f]{64}$/);
  });

  it('the hash is stable (a change of format is a deliberate change of this value)', () => {
    const c = canonicalize({ layers: [1, 3], embedding: 16, heads: 2, perLayer: [{ mlp: [5, 6, 7, 9] }, {}] }, teacher);
    expect(canonicalText(c)).toBe(
      '{"format":1,"teacher":{"vocabSize":100,"hiddenSize":64,"numLayers":6,"headSize":8,"numHeads":[8],"intermediateSize":[256]},' +
        '"layers":"1,3","embedding":"0-15","headSize":"0-7","perLayer":[{"heads":"0-1","mlp":"5-7,9"},{"heads":"0-1","mlp":"0-255"}]}',
    );
    expect(canonicalHash(c)).toBe(sha256Hex(canonicalText(c)));
    expect(canonicalHash(c)).toBe('9d9347e385b7c6ac73c495142657f3116e79e77d97160036aa2dd3c496218962');
  });

  it('compactSpec gives back an equal sub-network, as counts where it can', () => {
    const specs = [
      {},
      { layers: 2, embedding: 48, heads: 3, mlp: 64, headSize: 6 },
      {
        layers: [0, 2, 5],
        embedding: [1, 5, 9, 11],
        perLayer: [{ heads: [7] }, { heads: 2, mlp: [3, 4] }, { mlp: 9 }],
      },
    ];
    for (const spec of specs) {
      const c = canonicalize(spec, teacher);
      const compact = compactSpec(c);
      expect(canonicalize(compact, teacher)).toEqual(c);
      expect(JSON.parse(JSON.stringify(compact))).toEqual(compact);
    }
    expect(compactSpec(canonicalize({ layers: 2, heads: 3 }, teacher))).toEqual({
      format: 1,
      teacher: teacherShape(teacher),
      layers: 2,
      heads: 3,
    });
  });

  it('orderings: evenly spaced layers, importance-ranked counts', () => {
    expect(evenlySpaced(3, 6)).toEqual([0, 3, 5]);
    expect(evenlySpaced(1, 6)).toEqual([0]);
    expect(evenlySpaced(6, 6)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(topK([0.1, 0.9, 0.5, 0.9], 2)).toEqual([1, 3]);
    expect(canonicalize({ layers: 3 }, teacher, { layers: 'even' }).layers).toEqual([0, 3, 5]);
    const importance = {
      heads: Array.from({ length: 6 }, (_, l) => Array.from({ length: 8 }, (_, h) => (h === l ? 10 : h))),
      mlp: Array.from({ length: 6 }, () => Array.from({ length: 256 }, (_, j) => -j)),
      embedding: Array.from({ length: 64 }, (_, c) => c),
      layers: [0.1, 0.5, 0.2, 0.9, 0.3, 0.4],
    };
    const c = canonicalize({ layers: 2, heads: 2, mlp: 3, embedding: 4 }, teacher, {
      order: 'importance',
      layers: 'importance',
      importance,
    });
    expect(c.layers).toEqual([1, 3]);
    expect(c.perLayer[0].heads).toEqual([1, 7]);
    expect(c.perLayer[1].heads).toEqual([3, 7]);
    expect(c.perLayer[0].mlp).toEqual([0, 1, 2]);
    expect(c.embedding).toEqual([60, 61, 62, 63]);
    // Explicit indices ignore the ordering.
    expect(canonicalize({ layers: [0, 5] }, teacher, { layers: 'importance', importance }).layers).toEqual([0, 5]);
    expect(specError({ layers: 2 }, teacher, { layers: 'importance' }).message).toMatch(/importance scores/);
  });

  it('"width/heads" derives the head size', () => {
    const c = canonicalize({ embedding: 32, heads: 8, headSize: 'width/heads' }, teacher);
    expect(c.headSize).toEqual([0, 1, 2, 3]);
  });
});

describe('bad specs: clear errors naming the field', () => {
  const cases: [string, unknown, string, RegExp][] = [
    ['not an object', 5, 'spec', /must be a JSON object/],
    ['unknown key', { layer: 3 }, 'spec', /Unrecognized key: "layer"/],
    ['negative count', { embedding: -3 }, 'embedding', /positive integer/],
    ['fractional count', { heads: 2.5 }, 'heads', /positive integer/],
    ['negative index', { layers: [0, -1] }, 'layers[1]', /non-negative integer/],
    ['empty index list', { mlp: [] }, 'mlp', /must not be empty|count or a non-empty array/],
    ['wrong format', { format: 2 }, 'format', /must be 1/],
    ['bad head size', { headSize: 'auto' }, 'headSize', /width\/heads/],
    [
      'head index out of range',
      { layers: 3, perLayer: [{}, {}, { heads: [0, 9] }] },
      'perLayer[2].heads',
      /^perLayer\[2\]\.heads: index 9 out of range \[0, 8\)$/,
    ],
    ['repeated head', { heads: [1, 2, 1] }, 'heads', /index 1 repeated/],
    ['layer out of range', { layers: [0, 6] }, 'layers', /index 6 out of range \[0, 6\)/],
    ['repeated layer', { layers: [1, 1] }, 'layers', /index 1 repeated/],
    ['descending layers', { layers: [3, 1] }, 'layers', /ascending \(1 after 3\)/],
    ['too many layers', { layers: 7 }, 'layers', /7 layers exceed the teacher's 6/],
    ['too wide', { embedding: 65 }, 'embedding', /width 65 exceeds the teacher's 64/],
    ['channel out of range', { embedding: [0, 64] }, 'embedding', /index 64 out of range \[0, 64\)/],
    ['too many heads', { heads: 9 }, 'heads', /9 heads exceed the 8 of teacher layer 0/],
    [
      'too many neurons',
      { perLayer: [{}, {}, {}, {}, {}, { mlp: 300 }] },
      'perLayer[5].mlp',
      /300 MLP neurons exceed the 256 of teacher layer 5/,
    ],
    ['perLayer length', { layers: 2, perLayer: [{}] }, 'perLayer', /1 entries for 2 kept layers/],
    ['head size too big', { headSize: 9 }, 'headSize', /9 exceeds the teacher's head size 8/],
    ['head dim repeated', { headSize: [0, 0] }, 'headSize', /index 0 repeated/],
    [
      'heads not dividing the width',
      { embedding: 30, heads: 4, headSize: 'width/heads' },
      'heads',
      /4 heads do not divide the embedding width 30/,
    ],
    [
      'derived head size with mixed heads',
      { layers: 2, headSize: 'width/heads', perLayer: [{ heads: 4 }, { heads: 2 }] },
      'headSize',
      /same number of heads/,
    ],
    [
      'derived head size too big',
      { embedding: 64, heads: 4, headSize: 'width/heads' },
      'headSize',
      /64 \/ 4 heads = 16 exceeds the teacher's head size 8/,
    ],
  ];
  it.each(cases)('%s', (_name, spec, field, message) => {
    const err = specError(spec);
    expect(err.field).toBe(field);
    expect(err.message).toMatch(message);
    expect(err.message.startsWith(`${field}: `)).toBe(true);
  });

  it('a spec for another teacher shape', () => {
    const other = uniformConfig({ vocabSize: 100, hiddenSize: 64, numLayers: 4, numHeads: 8, maxPositions: 64 });
    const spec = { ...fullSpec(other), layers: 2 };
    const err = specError(spec);
    expect(err.field).toBe('teacher');
    expect(err.message).toMatch(
      /^teacher: spec for another teacher shape: it was made for 4 layers, width 64.*this teacher has 6 layers/,
    );
    // Same spec without the recorded shape: still checked by the ranges.
    expect(() => canonicalize({ layers: 2 }, teacher)).not.toThrow();
  });

  it('odd head size under full rotary (transformers would rotate past the head)', () => {
    const rot = uniformConfig({
      vocabSize: 50,
      hiddenSize: 32,
      numLayers: 1,
      numHeads: 2,
      rotaryPct: 1,
      maxPositions: 16,
    });
    const err = specError({ headSize: 7 }, rot);
    expect(err.field).toBe('headSize');
    expect(err.message).toMatch(/rotate 8 dims, more than the head size/);
  });

  it('parseSpec rejects the structure before any teacher is involved', () => {
    expect(() => parseSpec({ perLayer: [{ heads: 'x' }] })).toThrow(
      /^perLayer\[0\]\.heads: must be a positive integer count or a non-empty array of indices, got "x"$/,
    );
  });

  it('indexRuns', () => {
    expect(indexRuns([0, 1, 2, 5, 7, 8])).toBe('0-2,5,7-8');
    expect(indexRuns([])).toBe('');
  });
});

describe('the pure part runs in a workflow sandbox', () => {
  it('core/subnet/pure.ts reaches no tfjs, no node: module, no clock and no Math.random', async () => {
    const fs = await import('node:fs');
    const path = await import('node:path');
    const seen = new Set<string>();
    const external = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = fs.readFileSync(file, 'utf8');
      // Value imports and re-exports only: `import type` is erased by the compiler.
      for (const m of text.matchAll(/^(?:import|export)\s+(?!type\b)[^;]*?from\s+'([^']+)'/gms)) {
        const spec = m[1];
        if (spec.startsWith('.')) visit(path.resolve(path.dirname(file), spec.replace(/\.js$/, '.ts')));
        else external.add(spec);
      }
      const code = text.replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
      expect(code, file).not.toMatch(/Math\.random|Date\.now|new Date\(|performance\.now|process\./);
    };
    visit(path.join(import.meta.dirname, '..', 'core', 'subnet', 'pure.ts'));
    expect([...external].sort()).toEqual(['zod']);
    const files = [...seen].map((f) => path.relative(path.join(import.meta.dirname, '..'), f)).sort();
    expect(files).toContain('core/search/index.ts');
    for (const f of files) expect(f, 'a pure module').not.toMatch(/core\/model|importance|checkpoint|fitness/);
  });
});
