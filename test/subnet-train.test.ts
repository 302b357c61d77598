/**
 * Sub-networks of a teacher trained by `offshoot teacher train` on the embedded corpus (wasm backend):
 * the subnet CLI end to end, and the acceptance check that every sub-network initialisation beats a
 * random initialisation of the same shape after the same brief training (and zero-shot).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { SeededRng } from '../core/search/index.js';
import { initBackend } from '../core/model/backend.js';
import { loadCheckpoint } from '../core/model/index.js';
import {
  type FitnessContext,
  type FitnessRequest,
  SUBNET_FILE,
  type SubnetSpec,
  countSubnet,
  createFitnessContext,
  createSubnetSpace,
  disposeFitnessContext,
  evaluateFitness,
  resolveTarget,
  specHash,
} from '../core/subnet/index.js';
import { useBackend } from './helpers/backends.js';

const ROOT = path.join(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-subnet-train-'));
const cache = path.join(tmp, 'cache');
const env = { ...process.env, OFFSHOOT_BACKEND: 'wasm', OFFSHOOT_CACHE: cache };
const teacher = path.join(tmp, 'teacher');

function offshoot(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const tsx = import.meta.resolve('tsx');
  const res = spawnSync(process.execPath, ['--import', tsx, path.join(ROOT, 'services', 'cli', 'main.ts'), ...args], {
    cwd: tmp,
    env,
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

let ctx: FitnessContext;

beforeAll(async () => {
  // The teacher: the tiny preset (2 layers, width 32, 4 heads of 8, MLP 128) on a 300-token BPE.
  const r = offshoot(
    'teacher',
    'train',
    '--out',
    teacher,
    '--preset',
    'tiny',
    '--vocab',
    '300',
    '--steps',
    '200',
    '--batch-size',
    '8',
    '--seq-len',
    '32',
    '--eval-every',
    '100',
    '--eval-tokens',
    '4096',
    '--json',
  );
  expect(r.status, r.stderr).toBe(0);
  await initBackend('wasm', () => {});
  ctx = await createFitnessContext(teacher, { tokenCache: path.join(cache, 'tokens') });
}, 300_000);

afterAll(async () => {
  disposeFitnessContext(ctx);
  await useBackend('cpu');
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('offshoot subnet CLI', () => {
  const spec = { layers: 1, embedding: 24, heads: 3, mlp: 64 };

  it('count: parameters and FLOPs from the spec alone', () => {
    const r = offshoot(
      'subnet',
      'count',
      '--teacher',
      teacher,
      '--spec',
      JSON.stringify(spec),
      '--seq-len',
      '32',
      '--json',
    );
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    const config = loadCheckpoint(teacher).config;
    expect(out.parameters).toBe(countSubnet(config, spec).parameters);
    expect(out.specHash).toBe(specHash(spec, config));
    // 2·N_f + 4·h·hs·T per layer: N_f = parameters − V·d.
    const nf = out.parameters - 300 * 24;
    expect(out.flopsPerToken.forward).toBe(2 * nf + 4 * 3 * 8 * 32);
    expect(out.flopsPerToken.training).toBe(3 * out.flopsPerToken.forward);
    const human = offshoot('subnet', 'count', '--teacher', teacher, '--spec', JSON.stringify(spec));
    expect(human.stdout).toMatch(/^1 layers \[0\], width 24, head size 8, heads 3, MLP 64\nparameters {10}[\d,]+ \(/);
  });

  it('extract with importance orderings writes a student that evaluates, with its tokenizer and subnet.json', () => {
    const out = path.join(tmp, 'student');
    const specFile = path.join(tmp, 'spec.json');
    fs.writeFileSync(specFile, JSON.stringify(spec));
    const r = offshoot(
      'subnet',
      'extract',
      '--teacher',
      teacher,
      '--spec',
      specFile,
      '--out',
      out,
      '--order',
      'importance',
      '--layers',
      'importance',
      '--calibration',
      'sotu:train',
      '--json',
    );
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/backend: wasm/);
    expect(r.stderr).toMatch(/calibration: 8×64 tokens of sotu:train/);
    const result = JSON.parse(r.stdout);
    expect(result.transformersCompatible).toBe(true);
    expect(result.parameters).toBe(countSubnet(loadCheckpoint(teacher).config, spec).parameters);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', SUBNET_FILE])
      expect(fs.existsSync(path.join(out, f)), f).toBe(true);
    const record = JSON.parse(fs.readFileSync(path.join(out, SUBNET_FILE), 'utf8'));
    expect(record).toMatchObject({
      order: 'importance',
      layers: 'importance',
      hash: result.specHash,
      parameters: result.parameters,
    });
    // The recorded spec reproduces the student exactly (first-k extraction of explicit indices).
    const again = offshoot(
      'subnet',
      'extract',
      '--teacher',
      teacher,
      '--spec',
      path.join(out, SUBNET_FILE),
      '--out',
      path.join(tmp, 'again'),
      '--json',
    );
    expect(again.status, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout).checkpointHash).toBe(result.checkpointHash);
    const e = offshoot(
      'eval',
      '--model',
      out,
      '--data',
      'sotu:val',
      '--max-tokens',
      '2048',
      '--seq-len',
      '32',
      '--json',
    );
    expect(e.status, e.stderr).toBe(0);
    expect(JSON.parse(e.stdout).loss).toBeLessThan(5);
  });

  it('bad input: clear errors, exit status 1', () => {
    const cases: [string[], RegExp][] = [
      [['--spec', '{"heads":[0,9]}'], /offshoot: heads: index 9 out of range \[0, 4\)/],
      [['--spec', '{"layers":[1,1]}'], /offshoot: layers: index 1 repeated/],
      [
        ['--spec', '{"embedding":30,"heads":4,"headSize":"width/heads"}'],
        /offshoot: heads: 4 heads do not divide the embedding width 30/,
      ],
      [
        ['--spec', '{"heads":3}', '--export-transformers'],
        /offshoot: cannot export for plain transformers: heads × head size = 3 × 8 = 24 differs from the width 32/,
      ],
      [['--spec', path.join(tmp, 'missing.json')], /offshoot: --spec .*missing\.json: cannot read \(ENOENT\)/],
      [['--spec', '{"layers":'], /offshoot: --spec \(inline\): invalid JSON/],
      [['--spec', '{}', '--order', 'random'], /argument 'random' is invalid\. Allowed choices are first-k, importance/],
    ];
    for (const [args, message] of cases) {
      const r = offshoot('subnet', 'extract', '--teacher', teacher, '--out', path.join(tmp, 'bad'), ...args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(message);
    }
    expect(fs.existsSync(path.join(tmp, 'bad'))).toBe(false);
    const other = offshoot(
      'subnet',
      'count',
      '--teacher',
      teacher,
      '--spec',
      JSON.stringify({
        teacher: { vocabSize: 300, hiddenSize: 64, numLayers: 2, headSize: 8, numHeads: 8, intermediateSize: 256 },
      }),
    );
    expect(other.status).toBe(1);
    expect(other.stderr).toMatch(/offshoot: teacher: spec for another teacher shape/);
    const bins = offshoot('subnet', 'bins', '--teacher', teacher, '--json');
    expect(bins.status, bins.stderr).toBe(0);
    expect(JSON.parse(bins.stdout).bins).toHaveLength(20);
  });
});

describe('fitness: sub-network initialisation vs random initialisation', () => {
  const budget = { kind: 'brief' as const, steps: 40, batchSize: 8, seqLen: 32, evalTokens: 4096, zeroShotEval: true };
  const rows: string[] = [];

  afterAll(() => {
    // The measured numbers (see the closing report); vitest shows console output of passing tests.
    console.log(['validation loss (sotu:val, 4096 tokens), 40 KD steps of 8×32 tokens, seed 3:', ...rows].join('\n'));
  });

  async function compare(name: string, spec: SubnetSpec, extra: Partial<FitnessRequest> = {}): Promise<void> {
    const request: FitnessRequest = { teacher, spec, budget, seed: 3, ...extra };
    const inherited = await evaluateFitness(request, ctx);
    const random = await evaluateFitness({ ...request, init: 'random' }, ctx);
    rows.push(
      `  ${name.padEnd(28)} ${String(inherited.parameters).padStart(6)} params  zero-shot ${inherited.zeroShotValLoss!.toFixed(3)} vs random ${random.zeroShotValLoss!.toFixed(3)}  ` +
        `brief ${inherited.valLoss.toFixed(3)} vs random ${random.valLoss.toFixed(3)}`,
    );
    expect(inherited.parameters).toBe(random.parameters);
    expect(inherited.specHash).toBe(random.specHash);
    expect(inherited.trainTokens).toBe(random.trainTokens);
    expect(inherited.zeroShotValLoss!).toBeLessThan(random.zeroShotValLoss!);
    expect(inherited.valLoss, name).toBeLessThan(random.valLoss);
  }

  it('the teacher itself (zero-shot), and the accounting', async () => {
    const z = await evaluateFitness(
      { teacher, spec: {}, budget: { kind: 'zero-shot', seqLen: 32, evalTokens: 4096 }, seed: 3 },
      ctx,
    );
    rows.push(
      `  ${'teacher (whole)'.padEnd(28)} ${String(z.parameters).padStart(6)} params  zero-shot ${z.valLoss.toFixed(3)}`,
    );
    expect(z.trainTokens).toBe(0);
    expect(z.flops.training).toBe(0);
    expect(z.flops.evaluation).toBe(
      z.evalTokens * countSubnet(ctx.checkpoint.config, {}, { seqLen: 32 }).flopsPerToken.forward,
    );
    // Stateless: the same request without a context gives the same loss.
    const fresh = await evaluateFitness({
      teacher,
      spec: {},
      budget: { kind: 'zero-shot', seqLen: 32, evalTokens: 4096 },
      seed: 3,
      data: { tokenCache: path.join(cache, 'tokens') },
    });
    expect(fresh.valLoss).toBe(z.valLoss);
    expect(fresh.teacherHash).toBe(z.teacherHash);
  });

  it('uniform, first-k', async () => {
    await compare('uniform {1L, 24, 3h, 64}', { layers: 1, embedding: 24, heads: 3, mlp: 64 });
  });

  it('uniform, two layers, narrow', async () => {
    await compare('uniform {2L, 16, 2h, 64}', { layers: 2, embedding: 16, heads: 2, mlp: 64 });
  });

  it('layer-wise', async () => {
    await compare('layer-wise {2L, 24}', {
      layers: 2,
      embedding: 24,
      perLayer: [
        { heads: 2, mlp: 96 },
        { heads: 3, mlp: 32 },
      ],
    });
  });

  it('granular (explicit index sets)', async () => {
    const even = (n: number) => Array.from({ length: n }, (_, i) => 2 * i);
    await compare('granular {L1, even channels}', {
      layers: [1],
      embedding: even(16),
      perLayer: [{ heads: [1, 3], mlp: even(64) }],
    });
  });

  it('importance-ranked heads, neurons, channels and layers', async () => {
    await compare(
      'importance {1L, 24, 3h, 64}',
      { layers: 1, embedding: 24, heads: 3, mlp: 64 },
      { order: 'importance', layers: 'importance' },
    );
  });

  it('cross-entropy instead of distillation; FLOPs reported', async () => {
    const spec = { layers: 2, embedding: 16, heads: 2, mlp: 64 };
    await compare('uniform {2L, 16, 2h, 64}, CE', spec, { budget: { ...budget, loss: 'ce' } });
    const kd = await evaluateFitness({ teacher, spec, budget, seed: 3 }, ctx);
    const ce = await evaluateFitness({ teacher, spec, budget: { ...budget, loss: 'ce' }, seed: 3 }, ctx);
    const f = countSubnet(ctx.checkpoint.config, spec, { seqLen: 32 }).flopsPerToken;
    expect(kd.trainTokens).toBe(40 * 8 * 32);
    expect(kd.flops.training).toBe(kd.trainTokens * f.training);
    expect(kd.flops.teacher).toBe(kd.trainTokens * f.teacherForward);
    expect(ce.flops.teacher).toBe(0);
    expect(kd.flops.total).toBe(kd.flops.training + kd.flops.teacher + kd.flops.evaluation);
  });

  it('sampled from each search space (bin 10 of 20)', async () => {
    const config = ctx.checkpoint.config;
    for (const [i, kind] of (['uniform', 'layer-wise', 'granular'] as const).entries()) {
      const target = resolveTarget(config, { bin: 10 }, { space: kind });
      const space = createSubnetSpace(config, { space: kind, target });
      const spec = space.sample(new SeededRng(17 + i));
      await compare(`${kind} sample`, spec);
      rows.push(`    (${space.describe!(spec)})`);
    }
  });
});
