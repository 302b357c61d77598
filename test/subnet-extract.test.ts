/**
 * Extraction: the whole teacher reproduces it exactly; first-k students match students sliced in
 * PyTorch (test/fixtures/slice_neox.py, transformers as the oracle); parameter counts equal the tensor
 * sizes and transformers' num_parameters(); students transformers cannot express are written with
 * offshoot's config keys and refused for --export-transformers; importance orderings pick the
 * top-scored parts.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { SeededRng } from '../core/search/index.js';
import {
  CheckpointError,
  GPTNeoX,
  type HostTensor,
  type LoadedCheckpoint,
  loadCheckpoint,
  parameterCount,
  readSafetensors,
} from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import {
  SUBNET_FILE,
  type SubnetRecord,
  canonicalize,
  countSubnet,
  createSubnetSpace,
  extractCheckpoint,
  extractFromTeacher,
  extractTensors,
  fullSpec,
  importanceScores,
  spaceParamRange,
  specHash,
  studentConfig,
  tensorElements,
} from '../core/subnet/index.js';
import { useBackend } from './helpers/backends.js';
import { hfPython, requireHfPython } from './helpers/python.js';

const FIXTURES = path.join(import.meta.dirname, 'fixtures', 'neox');
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'fixtures.json'), 'utf8')) as {
  fixtures: { name: string; num_parameters: number }[];
};
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-subnet-'));
const teachers = new Map<string, LoadedCheckpoint>(
  manifest.fixtures.map((f) => [f.name, loadCheckpoint(path.join(FIXTURES, f.name))]),
);

beforeAll(() => useBackend('cpu'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

async function logitsOf(
  config: GPTNeoX['config'],
  tensors: Map<string, HostTensor>,
  ids: number[][],
): Promise<Float32Array> {
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

function idsFor(vocab: number): number[][] {
  return [
    Array.from({ length: 12 }, (_, i) => (i * 7 + 3) % vocab),
    Array.from({ length: 12 }, (_, i) => (vocab - 1 - i * 5 + 5 * vocab) % vocab),
  ];
}

describe('the whole teacher', () => {
  it.each(manifest.fixtures.map((f) => f.name))('%s: same config, same tensors, same logits', async (name) => {
    const teacher = teachers.get(name)!;
    const c = canonicalize(fullSpec(teacher.config), teacher.config);
    const student = extractTensors(teacher.config, teacher.tensors, c);
    expect(student.config).toEqual(teacher.config);
    expect([...student.tensors.keys()].sort()).toEqual([...teacher.tensors.keys()].sort());
    for (const [k, t] of teacher.tensors) {
      expect(student.tensors.get(k)!.shape, k).toEqual(t.shape);
      expect(
        Buffer.from((student.tensors.get(k)!.data as Float32Array).buffer).equals(
          Buffer.from((t.data as Float32Array).buffer),
        ),
        k,
      ).toBe(true);
    }
    const ids = idsFor(teacher.config.vocabSize);
    const ours = await logitsOf(student.config, student.tensors, ids);
    const theirs = await logitsOf(teacher.config, teacher.tensors, ids);
    expect(Buffer.from(ours.buffer).equals(Buffer.from(theirs.buffer))).toBe(true);
    // Counting: the fixture's num_parameters() from transformers.
    const expected = manifest.fixtures.find((f) => f.name === name)!.num_parameters;
    expect(countSubnet(teacher.config, {}).parameters).toBe(expected);
    expect(tensorElements(student.tensors)).toBe(expected);
  });

  it('importance ordering with nothing dropped is still the whole teacher', async () => {
    const teacher = teachers.get('odd-h48-heads3')!;
    const ids = idsFor(teacher.config.vocabSize);
    const calibration = { input: Int32Array.from(ids.flat()), batchSize: 2, seqLen: 12 };
    const s = await extractFromTeacher(teacher, {}, { order: 'importance', layers: 'importance', calibration });
    expect(specHash(s.canonical, teacher.config)).toBe(specHash({}, teacher.config));
    for (const [k, t] of teacher.tensors) expect(s.tensors.get(k)!.data).toEqual(t.data);
  });
});

describe('parameter counts equal the extracted tensor sizes', () => {
  it.each(['pythia-style', 'odd-h48-heads3', 'sharded', 'odd-rotary-hs12'])(
    '%s, random specs of every space',
    (name) => {
      const teacher = teachers.get(name)!;
      const rng = new SeededRng(7);
      const { min, max } = spaceParamRange(teacher.config, { space: 'uniform' });
      for (const space of ['uniform', 'layer-wise', 'granular'] as const) {
        const s = createSubnetSpace(teacher.config, { space, target: { minParams: min, maxParams: max } });
        for (let i = 0; i < 15; i++) {
          const spec = s.sample(rng);
          const c = canonicalize(spec, teacher.config);
          const student = extractTensors(teacher.config, teacher.tensors, c);
          const n = tensorElements(student.tensors);
          expect(countSubnet(teacher.config, spec).parameters).toBe(n);
          expect(s.cost(spec)).toBe(n);
          expect(parameterCount(student.config)).toBe(n);
        }
      }
    },
  );
});

interface SliceCase {
  fixture: string;
  layers: number[];
  embedding: number;
  heads: number;
  mlp: number;
  headSize?: number;
}

const sliceCases: SliceCase[] = [
  { fixture: 'pythia-style', layers: [0], embedding: 32, heads: 2, mlp: 100 },
  { fixture: 'pythia-style', layers: [0, 1], embedding: 32, heads: 4, headSize: 8, mlp: 100 },
  { fixture: 'odd-h48-heads3', layers: [0, 1], embedding: 32, heads: 2, mlp: 37 },
  { fixture: 'rot100-sequential', layers: [0], embedding: 16, heads: 1, mlp: 40 },
  { fixture: 'rot100-parallel-heads4', layers: [0, 1], embedding: 24, heads: 3, mlp: 96 },
  { fixture: 'sharded', layers: [0, 1], embedding: 16, heads: 2, mlp: 64 },
  { fixture: 'odd-rotary-hs12', layers: [0], embedding: 16, heads: 2, headSize: 8, mlp: 20 },
  { fixture: 'heads1-sequential', layers: [0, 1], embedding: 12, heads: 1, headSize: 12, mlp: 64 },
  { fixture: 'bfloat16', layers: [0, 1], embedding: 16, heads: 2, headSize: 8, mlp: 50 },
];

describe('first-k students match the same students sliced in transformers', () => {
  // CI installs the oracle (scripts/setup-python.sh); elsewhere these need it set up first.
  const python = process.env.CI ? requireHfPython() : hfPython();

  it.skipIf(python === null)('logits, tensors and num_parameters()', async () => {
    const dir = path.join(tmp, 'slice');
    fs.mkdirSync(dir, { recursive: true });
    const cases = sliceCases.map((c, i) => {
      const ids = idsFor(teachers.get(c.fixture)!.config.vocabSize);
      fs.writeFileSync(path.join(dir, `ids${i}.json`), JSON.stringify(ids));
      return {
        teacher: path.join(FIXTURES, c.fixture),
        layers: c.layers,
        embedding: c.embedding,
        heads: c.heads,
        mlp: c.mlp,
        head_size: c.headSize,
        ids: path.join(dir, `ids${i}.json`),
        out: path.join(dir, `logits${i}.safetensors`),
        save: path.join(dir, `student${i}`),
      };
    });
    fs.writeFileSync(path.join(dir, 'cases.json'), JSON.stringify(cases));
    const run = spawnSync(
      python!,
      [path.join(import.meta.dirname, 'fixtures', 'slice_neox.py'), '--cases', path.join(dir, 'cases.json')],
      {
        encoding: 'utf8',
        timeout: 120_000,
      },
    );
    expect(run.status, run.stderr).toBe(0);
    const summaries = run.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { num_parameters: number });
    expect(summaries).toHaveLength(sliceCases.length);
    for (const [i, c] of sliceCases.entries()) {
      const teacher = teachers.get(c.fixture)!;
      const spec = { layers: c.layers, embedding: c.embedding, heads: c.heads, mlp: c.mlp, headSize: c.headSize };
      const student = await extractFromTeacher(teacher, spec);
      const what = `${c.fixture} ${JSON.stringify(spec)}`;
      expect(countSubnet(teacher.config, spec).parameters, what).toBe(summaries[i].num_parameters);
      expect(tensorElements(student.tensors), what).toBe(summaries[i].num_parameters);
      // The tensors transformers' student holds are exactly ours.
      const theirs = loadCheckpoint(cases[i].save);
      expect(theirs.config, what).toEqual({ ...student.config, initializerRange: theirs.config.initializerRange });
      for (const [k, t] of student.tensors) expect(theirs.tensors.get(k)!.data, `${what} ${k}`).toEqual(t.data);
      const expected = readSafetensors(cases[i].out).tensors.get('logits')!.data as Float32Array;
      const ours = await logitsOf(student.config, student.tensors, idsFor(teacher.config.vocabSize));
      expect(maxAbsDiff(ours, expected), what).toBeLessThan(1e-4);
    }
  });

  it.skipIf(python === null)('a student offshoot writes with --export-transformers loads in transformers', async () => {
    const out = path.join(tmp, 'export');
    const result = await extractCheckpoint({
      teacher: path.join(FIXTURES, 'odd-h48-heads3'),
      spec: { layers: [0, 2], embedding: 32, heads: 2, mlp: 50 },
      out,
      exportTransformers: true,
    });
    expect(result.transformersIncompatibility).toBeNull();
    const ids = idsFor(97);
    fs.writeFileSync(path.join(tmp, 'export-ids.json'), JSON.stringify(ids));
    const run = spawnSync(
      python!,
      [
        path.join(import.meta.dirname, 'fixtures', 'hf_logits.py'),
        '--model',
        out,
        '--ids',
        path.join(tmp, 'export-ids.json'),
        '--out',
        path.join(tmp, 'export.safetensors'),
      ],
      { encoding: 'utf8', timeout: 120_000 },
    );
    expect(run.status, run.stderr).toBe(0);
    expect(JSON.parse(run.stdout.trim().split('\n').pop()!).num_parameters).toBe(result.parameters);
    const reloaded = loadCheckpoint(out);
    const ours = await logitsOf(reloaded.config, reloaded.tensors, ids);
    const theirs = readSafetensors(path.join(tmp, 'export.safetensors')).tensors.get('logits')!.data as Float32Array;
    expect(maxAbsDiff(ours, theirs)).toBeLessThan(1e-4);
  });
});

describe('checkpoints', () => {
  it('a layer-wise student gets the offshoot config keys, reloads identically, and is refused for plain transformers', async () => {
    const teacherDir = path.join(FIXTURES, 'pythia-style');
    const spec = {
      layers: 2,
      embedding: 40,
      headSize: 12,
      perLayer: [
        { heads: 3, mlp: 64 },
        { heads: [0, 3], mlp: [5, 6, 200] },
      ],
    };
    const out = path.join(tmp, 'layerwise');
    const result = await extractCheckpoint({ teacher: teacherDir, spec, out });
    expect(result.transformersIncompatibility).toMatch(/layer 1 has 2 heads and MLP 3/);
    const raw = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(raw.offshoot).toEqual({
      head_size: 12,
      layers: [
        { num_heads: 3, intermediate_size: 64 },
        { num_heads: 2, intermediate_size: 3 },
      ],
    });
    const reloaded = loadCheckpoint(out);
    expect(reloaded.config).toEqual(result.config);
    expect(reloaded.hash).toBe(result.checkpointHash);
    const record = JSON.parse(fs.readFileSync(path.join(out, SUBNET_FILE), 'utf8')) as SubnetRecord;
    expect(record.hash).toBe(result.specHash);
    expect(record.teacher.hash).toBe(teachers.get('pythia-style')!.hash);
    expect(canonicalize(record.spec, teachers.get('pythia-style')!.config)).toEqual(result.canonical);
    expect(record.parameters).toBe(tensorElements(reloaded.tensors));
    const ids = idsFor(128);
    const inMemory = await extractFromTeacher(teachers.get('pythia-style')!, spec);
    expect(await logitsOf(reloaded.config, reloaded.tensors, ids)).toEqual(
      await logitsOf(inMemory.config, inMemory.tensors, ids),
    );

    const refused = path.join(tmp, 'refused');
    await expect(
      extractCheckpoint({ teacher: teacherDir, spec, out: refused, exportTransformers: true }),
    ).rejects.toThrow(/cannot export for plain transformers: layer 1 has 2 heads and MLP 3, layer 0 has 3 and 64/);
    expect(fs.existsSync(refused)).toBe(false);
    // Uniform, but heads × head size ≠ width.
    await expect(
      extractCheckpoint({
        teacher: teacherDir,
        spec: { embedding: 40, heads: 2 },
        out: refused,
        exportTransformers: true,
      }),
    ).rejects.toThrow(CheckpointError);
  });

  it('a spec for another teacher shape is refused before anything is written', async () => {
    const other = teachers.get('sharded')!.config;
    await expect(
      extractCheckpoint({
        teacher: path.join(FIXTURES, 'pythia-style'),
        spec: { ...fullSpec(other), layers: 1 },
        out: path.join(tmp, 'other'),
      }),
    ).rejects.toThrow(/^teacher: spec for another teacher shape/);
  });
});

describe('writing the student never destroys data', () => {
  const teacherSrc = path.join(FIXTURES, 'pythia-style');
  const spec = { layers: 1, embedding: 40, heads: 2, mlp: 64 };
  /** A copy of a fixture teacher, so a test that fails cannot damage the fixtures. */
  const copyTeacher = (name: string): string => {
    const dir = path.join(tmp, 'guard', name);
    fs.cpSync(teacherSrc, dir, { recursive: true });
    return dir;
  };
  const snapshot = (dir: string) =>
    Object.fromEntries(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f)).toString('base64')]));
  const leftovers = (dir: string) => fs.readdirSync(dir).filter((f) => f.endsWith('.tmp'));

  it('refuses the teacher itself and any folder holding it; the teacher is untouched', async () => {
    const teacher = copyTeacher('teacher');
    const before = snapshot(teacher);
    await expect(extractCheckpoint({ teacher, spec, out: teacher, force: true })).rejects.toThrow(
      /--out .*: that is the teacher .*; the student must go to a new folder/,
    );
    await expect(extractCheckpoint({ teacher, spec, out: path.dirname(teacher), force: true })).rejects.toThrow(
      /that is the teacher .*'s folder or one above it/,
    );
    expect(snapshot(teacher)).toEqual(before);
    expect(leftovers(path.dirname(teacher))).toEqual([]);
  });

  it('refuses a folder that holds anything but a student it extracted; that one only with force', async () => {
    const teacher = copyTeacher('teacher2');
    const foreign = path.join(tmp, 'guard', 'foreign');
    fs.mkdirSync(foreign, { recursive: true });
    fs.writeFileSync(path.join(foreign, 'notes.txt'), 'mine');
    await expect(extractCheckpoint({ teacher, spec, out: foreign, force: true })).rejects.toThrow(
      /--out .*foreign: exists and is not empty \(1 entry: notes.txt\) and is not a student checkpoint offshoot extracted/,
    );
    expect(fs.readdirSync(foreign)).toEqual(['notes.txt']);
    const file = path.join(tmp, 'guard', 'a-file');
    fs.writeFileSync(file, 'x');
    await expect(extractCheckpoint({ teacher, spec, out: file })).rejects.toThrow(/exists and is not a folder/);

    const empty = path.join(tmp, 'guard', 'empty');
    fs.mkdirSync(empty);
    const first = await extractCheckpoint({ teacher, spec, out: empty });
    expect(first.tokenizer).toBe(false);
    await expect(extractCheckpoint({ teacher, spec: { ...spec, mlp: 32 }, out: empty })).rejects.toThrow(
      /holds a student checkpoint offshoot extracted; pass --force to replace it/,
    );
    expect(loadCheckpoint(empty).hash).toBe(first.checkpointHash);
    const second = await extractCheckpoint({ teacher, spec: { ...spec, mlp: 32 }, out: empty, force: true });
    expect(loadCheckpoint(empty).hash).toBe(second.checkpointHash);
    expect(second.checkpointHash).not.toBe(first.checkpointHash);
    expect(leftovers(path.dirname(empty))).toEqual([]);
  });

  it('offshoot subnet extract: --out . is refused with nothing left behind; a student without a tokenizer is said so', () => {
    const teacher = copyTeacher('teacher3');
    const here = path.join(tmp, 'guard', 'here');
    fs.mkdirSync(here);
    const cli = (cwd: string, ...args: string[]) =>
      spawnSync(
        process.execPath,
        [
          '--import',
          import.meta.resolve('tsx'),
          path.join(import.meta.dirname, '..', 'services', 'cli', 'main.ts'),
          'subnet',
          'extract',
          '--teacher',
          teacher,
          '--spec',
          JSON.stringify(spec),
          ...args,
        ],
        {
          cwd,
          encoding: 'utf8',
          timeout: 120_000,
        },
      );
    const dot = cli(here, '--out', '.');
    expect(dot.status).toBe(1);
    expect(dot.stderr).toMatch(
      /--out \.: that is the current folder \(or one above it\); name a new folder for the student/,
    );
    expect(fs.readdirSync(here)).toEqual([]);
    const ok = cli(here, '--out', 'student', '--json');
    expect(ok.status, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout.trim().split('\n').pop()!).tokenizer).toBe(false);
    expect(ok.stderr).toMatch(/has no tokenizer.json, so the student has none either; .*pass --tokenizer FILE/);
    const again = cli(here, '--out', 'student');
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/holds a student checkpoint offshoot extracted; pass --force to replace it/);
  });
});

describe('importance orderings', () => {
  it('keep the top-scored heads, neurons, channels and layers', async () => {
    const teacher = teachers.get('sharded')!;
    const ids = idsFor(teacher.config.vocabSize);
    const calibration = { input: Int32Array.from(ids.flat()), batchSize: 2, seqLen: 12 };
    const model = GPTNeoX.fromTensors(teacher.config, teacher.tensors, 'sharded');
    const scores = await importanceScores(model, calibration);
    model.dispose();
    expect(scores.heads).toHaveLength(3);
    expect(scores.heads[0]).toHaveLength(4);
    expect(scores.mlp[2]).toHaveLength(128);
    expect(scores.embedding).toHaveLength(32);
    for (const v of [...scores.heads.flat(), ...scores.mlp.flat(), ...scores.embedding])
      expect(v).toBeGreaterThanOrEqual(0);
    for (const v of scores.layers) {
      expect(v).toBeGreaterThanOrEqual(0);
      expect(v).toBeLessThanOrEqual(2);
    }
    const spec = { layers: 2, embedding: 8, heads: 2, mlp: 10 };
    const s = await extractFromTeacher(teacher, spec, {
      order: 'importance',
      layers: 'importance',
      importance: scores,
    });
    const rank = (v: number[], k: number) =>
      v
        .map((x, i) => [x, i])
        .sort((a, b) => b[0] - a[0] || a[1] - b[1])
        .slice(0, k)
        .map((p) => p[1])
        .sort((a, b) => a - b);
    expect(s.canonical.layers).toEqual(rank(scores.layers, 2));
    expect(s.canonical.embedding).toEqual(rank(scores.embedding, 8));
    s.canonical.layers.forEach((t, i) => {
      expect(s.canonical.perLayer[i].heads).toEqual(rank(scores.heads[t], 2));
      expect(s.canonical.perLayer[i].mlp).toEqual(rank(scores.mlp[t], 10));
    });
    expect(s.config).toEqual(studentConfig(teacher.config, canonicalize(spec, teacher.config)));
    // The same through a calibration batch.
    const viaBatch = await extractFromTeacher(teacher, spec, {
      order: 'importance',
      layers: 'importance',
      calibration,
    });
    expect(viaBatch.canonical).toEqual(s.canonical);
    // Evenly spaced layers.
    const even = await extractFromTeacher(teacher, { layers: 2 }, { layers: 'even' });
    expect(even.canonical.layers).toEqual([0, 2]);
  });
});
