/**
 * `offshoot export`: layer-wise and granular students cut from a transformers-made teacher fixture,
 * exported as plain GPT-NeoX checkpoints, load in transformers with no custom code and give offshoot's
 * logits (transformers as the oracle, test/fixtures/hf_logits.py); the padding report; students no
 * padding can express are refused before anything is written; the export and eval commands import
 * neither Temporal nor NATS.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  EXPORT_RECORD_FILE,
  ExportError,
  GPTNeoX,
  type HostTensor,
  type NeoXConfig,
  exportCheckpoint,
  exportShape,
  loadCheckpoint,
  padForTransformers,
  parameterCount,
  readSafetensors,
  saveCheckpoint,
  transformersIncompatibility,
  uniformConfig,
} from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { extractCheckpoint } from '../core/subnet/index.js';
import { useBackend } from './helpers/backends.js';
import { hfPython, requireHfPython } from './helpers/python.js';

const ROOT = path.join(import.meta.dirname, '..');
const TEACHER = path.join(import.meta.dirname, 'fixtures', 'neox', 'pythia-style');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-export-'));

beforeAll(() => useBackend('cpu'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function logitsOf(config: NeoXConfig, tensors: Map<string, HostTensor>, ids: number[][]): Promise<Float32Array> {
  const model = GPTNeoX.fromTensors(config, tensors, 'test');
  const t = tf.tidy(() => model.logits(tf.tensor2d(ids, [ids.length, ids[0].length], 'int32')));
  const data = (await t.data()) as Float32Array;
  t.dispose();
  model.dispose();
  return data;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const IDS = [
  Array.from({ length: 20 }, (_, i) => (i * 37 + 5) % 128),
  Array.from({ length: 20 }, (_, i) => (127 - i * 11 + 1280) % 128),
];

// The pythia-style fixture: 2 layers, width 64, 4 heads of 16, MLP 256, rotary_pct 0.25, vocabulary 128.
const students = {
  // Heads and MLP width per layer.
  'layer-wise': {
    layers: 2,
    embedding: 48,
    perLayer: [
      { heads: 3, mlp: 200 },
      { heads: 1, mlp: 64 },
    ],
  },
  // Explicit index sets: teacher layer 1 only, scattered channels, heads and neurons.
  granular: {
    layers: [0, 1],
    embedding: [
      0, 2, 3, 5, 8, 13, 21, 22, 30, 31, 32, 40, 41, 47, 50, 51, 52, 55, 60, 61, 62, 63, 1, 9, 10, 11, 12, 14, 15, 16,
      17, 18,
    ],
    perLayer: [
      { heads: [1, 3], mlp: [2, 5, 7, 100, 200, 201, 255] },
      { heads: [0], mlp: [0, 1, 2, 3, 4, 250] },
    ],
  },
  // A head size that does not divide the width (20 channels, heads of 8): padded to heads of 10.
  'head size': { layers: [1], embedding: 20, headSize: 8, perLayer: [{ heads: [1, 3], mlp: [2, 5, 100, 200] }] },
} as const;

describe('exported students load in plain transformers and give the same logits', () => {
  // CI installs the oracle (scripts/setup-python.sh); elsewhere these need it set up first.
  const python = process.env.CI ? requireHfPython() : hfPython();

  it.skipIf(python === null)(
    'layer-wise and granular students (and a padded head size) match transformers within 1e-4',
    async () => {
      fs.writeFileSync(path.join(tmp, 'ids.json'), JSON.stringify(IDS));
      for (const [name, spec] of Object.entries(students)) {
        const student = path.join(tmp, `${name}-student`);
        const exported = path.join(tmp, `${name}-hf`);
        const extracted = await extractCheckpoint({ teacher: TEACHER, spec, out: student });
        expect(extracted.transformersIncompatibility, name).not.toBeNull();
        const result = await exportCheckpoint({ model: student, out: exported });
        expect(transformersIncompatibility(result.config), name).toBeNull();
        const raw = JSON.parse(fs.readFileSync(path.join(exported, 'config.json'), 'utf8'));
        expect(raw.offshoot, name).toBeUndefined();

        const run = spawnSync(
          python!,
          [
            path.join(import.meta.dirname, 'fixtures', 'hf_logits.py'),
            '--model',
            exported,
            '--ids',
            path.join(tmp, 'ids.json'),
            '--out',
            path.join(tmp, `${name}.safetensors`),
          ],
          { encoding: 'utf8', timeout: 120_000 },
        );
        expect(run.status, run.stderr).toBe(0);
        expect(JSON.parse(run.stdout.trim().split('\n').pop()!).num_parameters, name).toBe(
          result.padding.parameters.exported,
        );
        const theirs = readSafetensors(path.join(tmp, `${name}.safetensors`)).tensors.get('logits')!
          .data as Float32Array;
        // Against the student as offshoot holds it, unpadded.
        const ours = await logitsOf(extracted.config, loadCheckpoint(student).tensors, IDS);
        expect(maxAbsDiff(ours, theirs), name).toBeLessThan(1e-4);
        // offshoot reads the exported checkpoint too, and it computes the student's logits.
        const reloaded = loadCheckpoint(exported);
        expect(maxAbsDiff(await logitsOf(reloaded.config, reloaded.tensors, IDS), ours), name).toBeLessThan(1e-5);
      }
    },
    300_000,
  );
});

describe('padding', () => {
  const teacher = loadCheckpoint(TEACHER);

  it('pads every layer to the largest one and says what it cost', async () => {
    const out = path.join(tmp, 'report');
    await extractCheckpoint({ teacher: TEACHER, spec: students['layer-wise'], out: `${out}-student` });
    const r = await exportCheckpoint({ model: `${out}-student`, out });
    const p = r.padding;
    // Width 48 with heads of 16: 3 heads fill it; MLP up to the largest layer's 200.
    expect([p.numHeads, p.headSize, p.intermediateSize]).toEqual([3, 16, 200]);
    expect(p.layers).toEqual([
      { numHeads: 3, intermediateSize: 200, addedHeads: 0, addedNeurons: 0 },
      { numHeads: 1, intermediateSize: 64, addedHeads: 2, addedNeurons: 136 },
    ]);
    expect(p.exact).toBe(true);
    expect(p.queryScale).toBe(1);
    expect(p.parameters.model).toBe(parameterCount(loadCheckpoint(`${out}-student`).config));
    expect(p.parameters.exported).toBe(parameterCount(r.config));
    // Layer 1's 2 zero heads: 3·2·16 QKV rows of 48 + their biases + 48 rows × 32 output columns; 136 neurons: 48 + 1 + 48 each.
    expect(p.parameters.added).toBe(3 * 2 * 16 * 48 + 3 * 2 * 16 + 48 * 2 * 16 + 136 * (48 + 1 + 48));
    // What was added is zero; what was there is unchanged.
    const exported = loadCheckpoint(out);
    const qkv = exported.tensors.get('gpt_neox.layers.1.attention.query_key_value.weight')!.data;
    const kept = loadCheckpoint(`${out}-student`).tensors.get(
      'gpt_neox.layers.1.attention.query_key_value.weight',
    )!.data;
    expect(Array.from(qkv.subarray(0, kept.length))).toEqual(Array.from(kept));
    expect(qkv.subarray(kept.length).every((v) => v === 0)).toBe(true);
    const record = JSON.parse(fs.readFileSync(path.join(out, EXPORT_RECORD_FILE), 'utf8'));
    expect(record.source.hash).toBe(loadCheckpoint(`${out}-student`).hash);
    expect(record.padding).toEqual(p);
  });

  it('leaves a model transformers can load as it is', () => {
    const { config, tensors, padding } = padForTransformers(teacher.config, teacher.tensors);
    expect(config).toEqual(teacher.config);
    expect(padding.parameters.added).toBe(0);
    for (const [name, t] of teacher.tensors) expect(tensors.get(name)!.data, name).toEqual(t.data);
  });

  it('keeps the rotated dims and their frequencies when the head size grows', () => {
    const config: NeoXConfig = {
      ...uniformConfig({ vocabSize: 8, hiddenSize: 50, numLayers: 1, numHeads: 5 }),
      headSize: 7,
      rotaryPct: 0.6,
    };
    // 5 heads of 7 = 35 < 50, and 7 does not divide 50: heads of 10 (5 of them); int(7 × 0.6) = 4 dims rotate.
    expect(exportShape(config)).toEqual({ numHeads: 5, headSize: 10, intermediateSize: 200 });
    const padded = padForTransformers(config, randomTensors(config));
    expect(Math.floor(padded.config.headSize * padded.config.rotaryPct)).toBe(4);
    expect(padded.padding.exact).toBe(false);
    expect(padded.padding.queryScale).toBeCloseTo(Math.sqrt(10 / 7), 12);
  });

  it('refuses what no padding can express, naming the layer, and writes nothing', async () => {
    // Heads spanning more dims than the width: layer 0 keeps 4 heads of 16 in a width of 40.
    const wide = path.join(tmp, 'wide');
    await extractCheckpoint({
      teacher: TEACHER,
      spec: { embedding: 40, perLayer: [{ heads: 4 }, { heads: 2 }] },
      out: wide,
    });
    await expect(exportCheckpoint({ model: wide, out: path.join(tmp, 'wide-hf') })).rejects.toThrow(
      /cannot export for plain transformers: layer 0 has 4 heads of size 16 = 64 dims, more than the width 40/,
    );
    expect(fs.existsSync(path.join(tmp, 'wide-hf'))).toBe(false);
    // Width 40, heads of 12, 3 heads: no head size ≥ 12 divides 40 into 3 or more heads.
    const odd = path.join(tmp, 'odd');
    await extractCheckpoint({
      teacher: TEACHER,
      spec: {
        layers: 2,
        embedding: 40,
        headSize: 12,
        perLayer: [
          { heads: 3, mlp: 64 },
          { heads: [0, 3], mlp: [5, 6, 200] },
        ],
      },
      out: odd,
    });
    await expect(exportCheckpoint({ model: odd, out: path.join(tmp, 'odd-hf') })).rejects.toThrow(ExportError);
    await expect(exportCheckpoint({ model: odd, out: path.join(tmp, 'odd-hf') })).rejects.toThrow(
      /the width 40 is no multiple of the head size 12, and no larger head size that divides it leaves room for the 3 heads of layer 0/,
    );
    expect(fs.existsSync(path.join(tmp, 'odd-hf'))).toBe(false);
    await expect(exportCheckpoint({ model: odd, out: odd })).rejects.toThrow(/is the model's own directory/);
    await expect(exportCheckpoint({ model: path.join(tmp, 'missing'), out: path.join(tmp, 'x') })).rejects.toThrow(
      /checkpoint directory does not exist/,
    );
  });

  it('writes a tokenizer_config.json whose special tokens lie inside the vocabulary', async () => {
    const dir = path.join(tmp, 'with-tokenizer');
    const config = uniformConfig({ vocabSize: 512, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 32 });
    const model = GPTNeoX.random(config, 2);
    const tokenizer = fs.readFileSync(
      path.join(import.meta.dirname, 'fixtures', 'tokenizer', 'offshoot-bpe512', 'tokenizer.json'),
    );
    await saveCheckpoint(dir, config, await model.toHost(), { extraFiles: { 'tokenizer.json': tokenizer } });
    model.dispose();
    const r = await exportCheckpoint({ model: dir, out: `${dir}-hf` });
    expect(r.files).toEqual([EXPORT_RECORD_FILE, 'tokenizer.json', 'tokenizer_config.json']);
    const tc = JSON.parse(fs.readFileSync(path.join(`${dir}-hf`, 'tokenizer_config.json'), 'utf8'));
    expect([tc.bos_token, tc.eos_token, tc.pad_token, tc.add_bos_token]).toEqual([
      '<|endoftext|>',
      '<|endoftext|>',
      '<|endoftext|>',
      false,
    ]);
    expect(fs.readFileSync(path.join(`${dir}-hf`, 'tokenizer.json'))).toEqual(tokenizer);
  });
});

function randomTensors(config: NeoXConfig): Map<string, HostTensor> {
  const model = GPTNeoX.random(config, 3);
  const out = new Map<string, HostTensor>();
  for (const [name, v] of model.params)
    out.set(name, { dtype: 'float32', shape: v.shape.slice(), data: v.dataSync() as Float32Array });
  model.dispose();
  return out;
}

describe('offshoot export', () => {
  it('exports from the command line and prints the padding', async () => {
    const student = path.join(tmp, 'layer-wise-cli');
    await extractCheckpoint({ teacher: TEACHER, spec: students['layer-wise'], out: student });
    const wide = path.join(tmp, 'wide-cli-student');
    await extractCheckpoint({
      teacher: TEACHER,
      spec: { embedding: 40, perLayer: [{ heads: 4 }, { heads: 2 }] },
      out: wide,
    });
    const tsx = import.meta.resolve('tsx');
    const run = spawnSync(
      process.execPath,
      [
        '--import',
        tsx,
        path.join(ROOT, 'services', 'cli', 'main.ts'),
        'export',
        '--model',
        student,
        '--out',
        `${student}-hf`,
      ],
      {
        encoding: 'utf8',
        timeout: 120_000,
      },
    );
    expect(run.status, run.stderr).toBe(0);
    expect(run.stdout).toMatch(/padding: \+\d[\d,]* parameters \(\+\d+\.\d%\)/);
    expect(run.stdout).toContain('layer 1: +2 zero heads (1 -> 3), +136 zero MLP neurons (64 -> 200)');
    expect(run.stdout).toContain('exact: only zero rows and columns were added');
    const refused = spawnSync(
      process.execPath,
      [
        '--import',
        tsx,
        path.join(ROOT, 'services', 'cli', 'main.ts'),
        'export',
        '--model',
        wide,
        '--out',
        path.join(tmp, 'wide-cli'),
      ],
      {
        encoding: 'utf8',
        timeout: 120_000,
      },
    );
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/^offshoot: cannot export for plain transformers: layer 0 has 4 heads/);
  });

  it('the export and eval commands import neither Temporal nor NATS', () => {
    const seen = new Set<string>();
    const external = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = fs.readFileSync(file, 'utf8');
      // Value imports and re-exports only: `import type` is erased by the compiler.
      for (const m of text.matchAll(/^(?:import|export)\s+(?!type\b)[^;]*?from\s+'([^']+)'/gms)) {
        if (m[1].startsWith('.')) visit(path.resolve(path.dirname(file), m[1].replace(/\.js$/, '.ts')));
        else external.add(m[1]);
      }
    };
    visit(path.join(ROOT, 'services', 'cli', 'export.ts'));
    visit(path.join(ROOT, 'services', 'cli', 'eval.ts'));
    const offending = [...external].filter((m) => /^@temporalio\/|^@nats-io\//.test(m));
    expect(offending).toEqual([]);
    expect(external).toContain('@huggingface/jinja');
  });
});
