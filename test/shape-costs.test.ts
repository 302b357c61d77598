/**
 * Per-shape costs (core/model/shape-costs.ts) on the CPU: the matrix-product plan files (read, merge,
 * bad files), tuning by shape class on the webgpu backend (lavapipe) — a class is tuned once, and a
 * new process finds it on disk instead of tuning it again —, the LayerNorm kernels by width class, and
 * a whole sub-network search whose candidates and fitness the caches leave unchanged (webgpu and cpu).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';

import { setShapeClasses, shapeCostTotals } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { randHost, relErr } from '../core/model/kernel-check.js';
import { runCase } from '../core/model/webgpu/check.js';
import { layerNormCase, layerNormShape } from '../core/model/webgpu/layer-norm.js';
import {
  type GpuIdentity,
  type PlanRecord,
  planFileName,
  readPlanFile,
  savePlans,
} from '../core/model/webgpu/matmul-plans.js';
import {
  autotuneBudgetSeconds,
  AUTOTUNE_MIN_STEPS,
  autotuneMatMuls,
  autotuneWanted,
  clearMatMulTuning,
  matmul,
  matmulKernelsVersion,
  matmulPlanCounts,
  shapeClass,
} from '../core/model/webgpu/matmul.js';
import { toTensor } from '../core/model/webgpu/runtime.js';
import {
  type SubnetSpec,
  createFitnessContext,
  disposeFitnessContext,
  searchSubnetworks,
  warmUpFitness,
} from '../core/subnet/index.js';
import { testBackends, useBackend } from './helpers/backends.js';

const ROOT = path.join(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-shape-costs-'));
const backends = await testBackends();
const hasWebGPU = backends.includes('webgpu');

const savedEnv = {
  cache: process.env.OFFSHOOT_CACHE,
  plans: process.env.OFFSHOOT_MATMUL_PLANS,
  autotune: process.env.OFFSHOOT_MATMUL_AUTOTUNE,
};
afterAll(async () => {
  for (const [k, v] of [
    ['OFFSHOOT_CACHE', savedEnv.cache],
    ['OFFSHOOT_MATMUL_PLANS', savedEnv.plans],
    ['OFFSHOOT_MATMUL_AUTOTUNE', savedEnv.autotune],
  ] as const) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  setShapeClasses(null);
  clearMatMulTuning();
  await useBackend('cpu');
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A fresh plan cache (OFFSHOOT_CACHE) and no read-only plan directories; nothing tuned in memory. */
function freshPlans(name: string): string {
  const cache = path.join(tmp, name);
  process.env.OFFSHOOT_CACHE = cache;
  delete process.env.OFFSHOOT_MATMUL_PLANS;
  clearMatMulTuning();
  return path.join(cache, 'matmul-plans');
}

describe('matrix-product plan files', () => {
  const gpu: GpuIdentity = { vendor: 'acme', architecture: 'rocket', device: 'Model 9', description: 'driver 1.2' };
  const dir = path.join(tmp, 'files');
  const file = path.join(dir, planFileName(gpu, 'v1'));
  const plans = (entries: Record<string, PlanRecord>) => new Map(Object.entries(entries));

  it('are named after the GPU and the kernel version, and merge what they hold with what is added', () => {
    expect(planFileName(gpu, 'v1')).toBe('acme-rocket-model-9.v1.json');
    expect(readPlanFile(file, gpu, 'v1')).toEqual({ plans: new Map(), warnings: [], replaceable: true });
    savePlans(dir, gpu, 'v1', plans({ '4096x512x512NT': { tile: '128x128x16x8x8', slices: 1 } }));
    savePlans(
      dir,
      gpu,
      'v1',
      plans({ '4096x2048x512NT': { tile: '128x64x16x8x4', slices: 1, shape: '4096x1500x384NT', ms: 1.5 } }),
    );
    const read = readPlanFile(file, gpu, 'v1');
    expect(read.warnings).toEqual([]);
    expect([...read.plans.keys()]).toEqual(['4096x2048x512NT', '4096x512x512NT']);
    expect(read.plans.get('4096x2048x512NT')).toEqual({
      tile: '128x64x16x8x4',
      slices: 1,
      shape: '4096x1500x384NT',
      ms: 1.5,
    });
    // Written atomically: no temporary file is left behind.
    expect(fs.readdirSync(dir)).toEqual([path.basename(file)]);
  });

  it('say what is wrong with a bad file or entry, and are never fatal', () => {
    const bad = path.join(dir, 'bad.json');
    const read = (text: string) => {
      fs.writeFileSync(bad, text);
      return readPlanFile(bad, gpu, 'v1');
    };
    const notJson = read('{"format": 1, "plans": {');
    expect(notJson.plans.size).toBe(0);
    expect(notJson.replaceable).toBe(true);
    expect(notJson.warnings[0]).toMatch(/bad\.json: not valid JSON .*; ignored/);
    expect(read('[1, 2]').warnings[0]).toMatch(/expected a JSON object/);
    const format = read(JSON.stringify({ format: 2, gpu, kernels: 'v1', plans: {} }));
    expect(format.warnings[0]).toMatch(/format 2, expected 1; ignored/);
    expect(format.replaceable).toBe(false);
    expect(
      read(JSON.stringify({ format: 1, gpu: { ...gpu, device: 'Model 10' }, kernels: 'v1', plans: {} })).warnings[0],
    ).toMatch(/gpu .* is not this one \(acme, rocket, Model 9\)/);
    expect(read(JSON.stringify({ format: 1, gpu, kernels: 'v0', plans: {} })).warnings[0]).toMatch(
      /kernels "v0", expected "v1"/,
    );
    expect(read(JSON.stringify({ format: 1, gpu, kernels: 'v1', plans: [] })).warnings[0]).toMatch(
      /"plans" must be an object/,
    );
    const entries = read(
      JSON.stringify({
        format: 1,
        gpu,
        kernels: 'v1',
        plans: { a: { tile: '64x64x16x4x4', slices: 0 }, b: 'x', c: { tile: '64x64x16x4x4', slices: 2 } },
      }),
    );
    expect([...entries.plans.keys()]).toEqual(['c']);
    expect(entries.warnings).toHaveLength(2);
    expect(entries.warnings[0]).toMatch(
      /plans\["a"\] = \{"tile":"64x64x16x4x4","slices":0\}: expected .*; entry ignored/,
    );
  });

  it('are not written over a file of another format: it is left as it was', () => {
    const foreign = JSON.stringify({ format: 2, something: 'newer' });
    fs.writeFileSync(file, foreign);
    const r = savePlans(dir, gpu, 'v1', plans({ x: { tile: '64x64x16x4x4', slices: 1 } }));
    expect(r.skipped).toMatch(/format 2/);
    expect(fs.readFileSync(file, 'utf8')).toBe(foreign);
    // A file that is not JSON at all holds nothing to keep: it is replaced.
    fs.writeFileSync(file, 'garbage');
    expect(savePlans(dir, gpu, 'v1', plans({ x: { tile: '64x64x16x4x4', slices: 1 } })).skipped).toBeUndefined();
    expect(readPlanFile(file, gpu, 'v1').plans.get('x')).toEqual({ tile: '64x64x16x4x4', slices: 1 });
  });

  it('shape classes round every dimension up to a power of two', () => {
    expect(shapeClass({ M: 4096, N: 347, K: 1391, transA: false, transB: true })).toBe('4096x512x2048NT');
    expect(shapeClass({ M: 4097, N: 512, K: 513, transA: true, transB: false })).toBe('8192x512x1024TN');
    expect(shapeClass({ M: 512, N: 64, K: 512, transA: false, transB: true, batch: 40, triangle: 'lowerC' })).toBe(
      '64@512x64x512NT/lowerC',
    );
  });
});

/** C = A·B on the webgpu backend, read back. */
async function product(M: number, N: number, K: number, seed: number): Promise<Float32Array> {
  const a = tf.tensor(randHost([M, K], seed).data, [M, K]);
  const b = tf.tensor(randHost([K, N], seed + 1).data, [K, N]);
  const c = toTensor(matmul({ a, b, M, N, K }).c);
  const out = (await c.data()) as Float32Array;
  tf.dispose([a, b, c]);
  return out;
}

/** The same product on the cpu backend. */
async function reference(M: number, N: number, K: number, seed: number): Promise<Float32Array> {
  await useBackend('cpu');
  const c = tf.matMul(
    tf.tensor(randHost([M, K], seed).data, [M, K]),
    tf.tensor(randHost([K, N], seed + 1).data, [K, N]),
  );
  const out = (await c.data()) as Float32Array;
  c.dispose();
  await useBackend('webgpu');
  return out;
}

describe.skipIf(!hasWebGPU)('matrix products tuned by shape class', () => {
  // Three shapes, two classes: 40x24x36 and 50x30x60 are both 64x32x64NN; 100x24x36 is 128x32x64NN.
  // None is a multiple of a tile, so every plan runs the same bounds-checked variants.
  const A = [40, 24, 36] as const;
  const B = [50, 30, 60] as const;
  const C = [100, 24, 36] as const;
  const D = [60, 20, 40] as const;

  it('a class is tuned once; its other shapes take its plan; a new process reads it from disk instead of tuning', async () => {
    const dir = freshPlans('by-class');
    await useBackend('webgpu');
    for (const [i, [M, N, K]] of [A, B, C].entries()) await product(M, N, K, i);
    const tuned = await autotuneMatMuls({ targetMs: 1 });
    expect(tuned.map((t) => [t.class, t.shape]).sort()).toEqual([
      ['128x32x64NN', '100x24x36NN'],
      ['64x32x64NN', '40x24x36NN'],
    ]);
    const files = fs.readdirSync(dir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(new RegExp(`\\.${matmulKernelsVersion()}\\.json$`));
    const saved = JSON.parse(fs.readFileSync(path.join(dir, files[0]), 'utf8')) as {
      plans: Record<string, PlanRecord>;
    };
    expect(Object.keys(saved.plans).sort()).toEqual(['128x32x64NN', '64x32x64NN']);
    // Shapes of tuned classes, seen before or not, wait for no tuning, and compute correctly.
    expect(relErr(await product(...B, 7), await reference(...B, 7))).toBeLessThan(2e-6);
    expect(relErr(await product(...D, 8), await reference(...D, 8))).toBeLessThan(2e-6);
    expect(await autotuneMatMuls({ targetMs: 1 })).toEqual([]);
    // A new process: nothing in memory, the plan file on disk.
    clearMatMulTuning();
    const autotunes = shapeCostTotals().autotune.count;
    expect(matmulPlanCounts().classes).toBe(2);
    expect(relErr(await product(...D, 9), await reference(...D, 9))).toBeLessThan(2e-6);
    expect(await autotuneMatMuls({ targetMs: 1 })).toEqual([]);
    expect(shapeCostTotals().autotune.count).toBe(autotunes);
  }, 900_000);

  it('past its time budget the autotuner stops compiling: nothing partial is saved, and a later process tunes it', async () => {
    const dir = freshPlans('budget');
    await useBackend('webgpu');
    for (const [i, [M, N, K]] of [A, C].entries()) await product(M, N, K, i);
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    let tuned: Awaited<ReturnType<typeof autotuneMatMuls>>;
    try {
      tuned = await autotuneMatMuls({ targetMs: 1, budgetSeconds: 1e-9 });
      expect(stderr.mock.calls.map((c) => String(c[0])).join('')).toMatch(
        /matmul plans: autotuning stopped at its budget of 1e-9 s .*: 0 of 2 shape classes tuned fully, 1 among the candidates compiled by then, 1 keep their untuned plans/,
      );
    } finally {
      stderr.mockRestore();
    }
    // The larger class goes first: it had only its untuned plan compiled; the other was not reached.
    expect(tuned).toHaveLength(1);
    expect(tuned[0].shape).toMatch(/^100x/);
    expect(tuned[0].untried).toBeGreaterThan(0);
    expect(fs.existsSync(dir) ? fs.readdirSync(dir) : []).toEqual([]);
    expect(relErr(await product(...B, 3), await reference(...B, 3))).toBeLessThan(2e-6);
    expect(relErr(await product(...C, 4), await reference(...C, 4))).toBeLessThan(2e-6);
    expect(() => autotuneBudgetSeconds('0')).toThrow(
      /OFFSHOOT_MATMUL_AUTOTUNE_SECONDS must be a positive number of seconds, got "0"/,
    );
    expect(autotuneBudgetSeconds(undefined)).toBe(300);
    // A new process with time to spare tunes both classes and saves them.
    clearMatMulTuning();
    for (const [i, [M, N, K]] of [A, C].entries()) await product(M, N, K, i);
    expect((await autotuneMatMuls({ targetMs: 1 })).filter((t) => !t.untried)).toHaveLength(2);
    expect(fs.readdirSync(dir)).toHaveLength(1);
  }, 900_000);

  it('a run autotunes only on a hardware adapter with enough steps ahead to pay it back (a brief-fitness candidate has not)', () => {
    expect(autotuneWanted(false, AUTOTUNE_MIN_STEPS)).toBe(true);
    expect(autotuneWanted(false, 40)).toBe(false);
    expect(autotuneWanted(true, 1e9)).toBe(false);
    // OFFSHOOT_MATMUL_AUTOTUNE: 1 tunes any run on any adapter, 0 none.
    expect(autotuneWanted(true, 1, '1')).toBe(true);
    expect(autotuneWanted(false, 1e9, '0')).toBe(false);
    // Shape classes off (the behaviour before them): every run on a hardware adapter tunes.
    expect(autotuneWanted(false, 40, undefined, false)).toBe(true);
  });

  it('a plan file that does not parse is reported and replaced; classes it lacks are tuned', async () => {
    const dir = freshPlans('bad-file');
    await useBackend('webgpu');
    await product(...A, 1);
    await autotuneMatMuls({ targetMs: 1 });
    const file = path.join(dir, fs.readdirSync(dir)[0]);
    fs.writeFileSync(file, '{"format": 1, "plans": {"64x32x64NN": ');
    clearMatMulTuning();
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(relErr(await product(...A, 2), await reference(...A, 2))).toBeLessThan(2e-6);
      const tuned = await autotuneMatMuls({ targetMs: 1 });
      expect(tuned.map((t) => t.class)).toEqual(['64x32x64NN']);
      expect(stderr.mock.calls.map((c) => String(c[0])).join('')).toMatch(
        /matmul plans: .*: not valid JSON .*; ignored/,
      );
    } finally {
      stderr.mockRestore();
    }
    expect(Object.keys((JSON.parse(fs.readFileSync(file, 'utf8')) as { plans: object }).plans)).toEqual(['64x32x64NN']);
  }, 900_000);

  it('plan entries a class cannot use are skipped with a warning; read-only plan directories are read and never written', async () => {
    const dir = freshPlans('cache-empty');
    await useBackend('webgpu');
    await product(...A, 1);
    const gpu = JSON.parse(
      JSON.stringify((tf.backend() as unknown as { device: { adapterInfo: GpuIdentity } }).device.adapterInfo, [
        'vendor',
        'architecture',
        'device',
        'description',
      ]),
    ) as GpuIdentity;
    const shipped = path.join(tmp, 'shipped');
    const version = matmulKernelsVersion();
    savePlans(
      shipped,
      gpu,
      version,
      new Map([
        ['64x32x64NN', { tile: '64x64x16x4x4', slices: 1 }],
        ['128x32x64NN', { tile: '1x2x3x4x5', slices: 1 }],
      ]),
    );
    const before = fs.readFileSync(path.join(shipped, planFileName(gpu, version)), 'utf8');
    process.env.OFFSHOOT_MATMUL_PLANS = shipped;
    clearMatMulTuning();
    const stderr = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await product(...B, 3);
      await product(...C, 4);
      expect(stderr.mock.calls.map((c) => String(c[0])).join('')).toMatch(
        /plans\["128x32x64NN"\]: tile 1x2x3x4x5 with 1 slices is not a plan this class can use; entry ignored/,
      );
    } finally {
      stderr.mockRestore();
    }
    // Only the class the shipped file could not serve is tuned, and it goes to the cache, not the shipped file.
    const tuned = await autotuneMatMuls({ targetMs: 1 });
    expect(tuned.map((t) => t.class)).toEqual(['128x32x64NN']);
    expect(fs.readFileSync(path.join(shipped, planFileName(gpu, version)), 'utf8')).toBe(before);
    expect(fs.readdirSync(dir)).toHaveLength(1);
    delete process.env.OFFSHOOT_MATMUL_PLANS;
  }, 900_000);
});

describe.skipIf(!hasWebGPU)('LayerNorm kernels by width class', () => {
  it('the width is a uniform: widths of a class share one pipeline and match the reference', async () => {
    expect(layerNormShape(300)).toEqual({ WG: 128, E: 4, D: null, minD: 257 });
    expect(layerNormShape(512)).toEqual(layerNormShape(257));
    expect(layerNormShape(1100)).toEqual({ WG: 256, E: 5, D: null, minD: 1025 });
    expect(layerNormShape(300, false)).toEqual({ WG: 128, E: 3, D: 300, minD: 300 });
    const check = async (N: number, D: number) => {
      const before = shapeCostTotals().compile.count;
      const r = await runCase(layerNormCase(N, D), 'cpu');
      expect(r.valueErr, `value, width ${D}`).toBeLessThan(r.tol);
      r.gradErrs.forEach((e, i) => expect(e, `gradient ${i}, width ${D}`).toBeLessThan(r.tol));
      return shapeCostTotals().compile.count - before;
    };
    // Both ends of a class and one inside it; the smallest class's ragged widths; one past 1024.
    expect(await check(9, 257)).toBeGreaterThan(0);
    expect(await check(7, 300)).toBe(0);
    expect(await check(5, 512)).toBe(0);
    await check(6, 1);
    expect(await check(6, 77)).toBe(0);
    await check(3, 1100);
    // Compiled in per width (shape classes off), every new width compiles its own kernels.
    setShapeClasses(false);
    try {
      expect(await check(4, 301)).toBeGreaterThan(0);
    } finally {
      setShapeClasses(null);
    }
  }, 900_000);
});

describe('a sub-network search is unchanged by the shape caches', () => {
  const teacher = path.join(tmp, 'teacher');
  const tokenCache = path.join(tmp, 'tokens');
  beforeAll(() => {
    const r = spawnSync(
      process.execPath,
      [
        '--import',
        import.meta.resolve('tsx'),
        path.join(ROOT, 'services', 'cli', 'main.ts'),
        'teacher',
        'train',
        '--preset',
        'tiny',
        '--out',
        teacher,
        '--vocab',
        '300',
        '--steps',
        '30',
        '--batch-size',
        '8',
        '--seq-len',
        '32',
        '--eval-every',
        '1000',
        '--eval-tokens',
        '1024',
      ],
      { env: { ...process.env, OFFSHOOT_CACHE: tmp, OFFSHOOT_BACKEND: 'cpu' }, encoding: 'utf8', timeout: 600_000 },
    );
    if (r.status !== 0) throw new Error(`teacher train failed: ${r.stderr}`);
  }, 600_000);

  const search = async (context?: Awaited<ReturnType<typeof createFitnessContext>>) => {
    const r = await searchSubnetworks({
      teacher,
      target: { bin: 8 },
      space: 'layer-wise',
      algorithm: 'evolution',
      generations: 2,
      population: 3,
      budget: { kind: 'brief', steps: 3, seqLen: 32, batchSize: 4, evalTokens: 512 },
      data: { tokenCache },
      seed: 5,
      context,
    });
    return r.history.map((h) => ({ spec: h.genome as SubnetSpec, fitness: h.fitness! }));
  };

  /**
   * On webgpu: a plan file in the cache for every plain product class this teacher can produce (dimensions up
   * to 512), alternating two tiles, with and without split-K — plans unlike the defaults, so the
   * search runs on plans read from disk (the autotuner itself is too slow on lavapipe for a search).
   */
  const seedPlans = (dir: string): number => {
    const gpu = JSON.parse(
      JSON.stringify((tf.backend() as unknown as { device: { adapterInfo: GpuIdentity } }).device.adapterInfo, [
        'vendor',
        'architecture',
        'device',
        'description',
      ]),
    ) as GpuIdentity;
    const plans = new Map<string, PlanRecord>();
    const pow2 = Array.from({ length: 10 }, (_, i) => 2 ** i);
    for (const M of pow2)
      for (const N of pow2)
        for (const K of pow2) {
          for (const [transA, transB] of [
            [false, false],
            [false, true],
            [true, false],
            [true, true],
          ]) {
            const i = Math.log2(M * N * K);
            plans.set(shapeClass({ M, N, K, transA, transB }), {
              tile: i % 2 ? '64x64x16x4x4' : '128x64x16x8x4',
              slices: K >= 64 && i % 3 === 0 ? 2 : 1,
            });
          }
        }
    savePlans(dir, gpu, matmulKernelsVersion(), plans);
    return plans.size;
  };

  it.each(backends.filter((b) => b === 'cpu' || b === 'webgpu'))(
    '%s: the same candidates and fitness with and without shape classes, warm-up, plans from disk and a kept context',
    async (backend) => {
      await useBackend(backend as 'cpu' | 'webgpu');
      const dir = freshPlans(`search-${backend}`);
      // Before: every shape compiled on its own, a context per search, no plan file.
      setShapeClasses(false);
      const before = await search();
      setShapeClasses(null);
      // After: one context kept across two searches and warmed up, plans read from the cache.
      const seeded = backend === 'webgpu' ? seedPlans(dir) : 0;
      clearMatMulTuning();
      const context = await createFitnessContext(teacher, { tokenCache });
      try {
        await warmUpFitness(context, { kind: 'brief', steps: 3, seqLen: 32, batchSize: 4, evalTokens: 512 }, 5);
        const first = await search(context);
        clearMatMulTuning();
        const second = await search(context);
        if (backend === 'webgpu') expect(matmulPlanCounts().classes).toBe(seeded);
        for (const after of [first, second]) {
          expect(after.map((h) => h.spec)).toEqual(before.map((h) => h.spec));
          after.forEach((h, i) =>
            expect(Math.abs(h.fitness - before[i].fitness), `candidate ${i}`).toBeLessThan(
              1e-4 * Math.abs(before[i].fitness),
            ),
          );
        }
      } finally {
        disposeFitnessContext(context);
      }
    },
    1_800_000,
  );
});
