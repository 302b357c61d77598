/**
 * Mixed precision on the webgpu backend (core/model/webgpu/half.ts) and dynamic loss scaling
 * (core/model/ops/adamw.ts's LossScale), on what this machine has: lavapipe offers shader-f16 but no
 * subgroup matrices, so the f16 products run here in `storage` mode (f16 operands, f32 arithmetic)
 * and the subgroup-matrix kernels' tiling is checked with their builtins emulated; their real WGSL
 * is validated by Dawn's compiler (null backend) for the H200's configurations. The loss scale is
 * backend-neutral: its overflow skip, growth and checkpoint round trip run on the cpu backend, and
 * the fused webgpu step is checked against that reference. On a GPU, bench/gpu-train --check runs the
 * same cases (core/model/webgpu/check.ts) on the real subgroup matrices.
 */
/// <reference types="@webgpu/types" />
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, afterEach, describe, expect, it } from 'vitest';

import { dawnToggles } from '../core/model/backend.js';
import { GPTNeoX, Trainer } from '../core/model/index.js';
import { AdamWState, LossScale, lossScaleOptions, lossScaledAdamW } from '../core/model/ops/index.js';
import { setPrecision } from '../core/model/precision.js';
import * as tf from '../core/model/tfjs.js';
import { randHost, relErr } from '../core/model/kernel-check.js';
import {
  F16_PRODUCT_TOL,
  type KernelCase,
  halfProductCase,
  mixedCurveCheck,
  modelGradientCheck,
  runCase,
  sgTileCases,
  sgTileShapes,
} from '../core/model/webgpu/check.js';
import { setFusedKernels } from '../core/model/webgpu/fused.js';
import {
  chooseHalfProducts,
  fromHalf,
  halfProducts,
  halfShadow,
  halfWeight,
  matrixUnavailable,
  toHalf,
} from '../core/model/webgpu/half.js';
import {
  attentionCase,
  flashMatrixBackwardKVSource,
  flashMatrixBackwardQSource,
  flashMatrixForwardSource,
  setFlashMatrixEmulation,
} from '../core/model/webgpu/attention.js';
import { linearCase, logitsCase, mlpCase } from '../core/model/webgpu/linear.js';
import { logitsCrossEntropyCase } from '../core/model/webgpu/cross-entropy.js';
import { autotuneMatMuls, clearMatMulTuning, makePlan, matmul, sgTilesFor } from '../core/model/webgpu/matmul.js';
import { release } from '../core/model/webgpu/runtime.js';
import { type SgMatMulVariant, sgMatmulSource, sgTile, sgTileKey } from '../core/model/webgpu/wgsl-sgmatrix.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { syntheticBatches, tinyConfig, tinyHyper } from './helpers/tiny.js';

// The autotuner's plan file goes to a cache of this run's own, so no earlier run's plans are found.
process.env.OFFSHOOT_CACHE = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-mixed-'));
const backends = await testBackends();
const hasWebGPU = backends.includes('webgpu');

const savedF16 = process.env.OFFSHOOT_WEBGPU_F16;
/** Runs the f16 products in storage mode (lavapipe has no subgroup matrices). */
function f16Storage(): void {
  process.env.OFFSHOOT_WEBGPU_F16 = 'storage';
}
afterEach(() => {
  if (savedF16 === undefined) delete process.env.OFFSHOOT_WEBGPU_F16;
  else process.env.OFFSHOOT_WEBGPU_F16 = savedF16;
  setPrecision(null);
  setFusedKernels(null);
});
afterAll(async () => {
  await useBackend('cpu');
});

/** The H200's f16 → f32 subgroup-matrix configurations through Dawn with vulkan_enable_f16_on_nvidia. */
const H200_CONFIGS = [
  [16, 16, 16],
  [16, 8, 16],
  [16, 8, 8],
].map(([M, N, K]) => ({ componentType: 'f16', resultComponentType: 'f32', M, N, K }));
const H200 = {
  shaderF16: true,
  subgroupMatrixConfigs: H200_CONFIGS,
  subgroupMinSize: 32,
  subgroupMaxSize: 32,
  maxWorkgroupStorage: 49152,
  maxWorkgroupInvocations: 1024,
};

describe('choosing the precision of the products', () => {
  const lavapipe = { shaderF16: true, subgroupMatrixConfigs: [], subgroupMinSize: 8, subgroupMaxSize: 8 };
  const intel = { ...H200, subgroupMinSize: 8, subgroupMaxSize: 32 };
  const noF16 = { ...H200, shaderF16: false };

  it('mixed takes f16 subgroup matrices where they run, f32 products elsewhere; f32 always f32', () => {
    expect(chooseHalfProducts('mixed', H200, undefined)).toBe('matrix');
    expect(chooseHalfProducts('f32', H200, undefined)).toBe('off');
    expect(chooseHalfProducts('mixed', lavapipe, undefined)).toBe('off');
    expect(chooseHalfProducts('mixed', intel, 'auto')).toBe('off');
    expect(chooseHalfProducts('mixed', noF16, '')).toBe('off');
    expect(chooseHalfProducts('mixed', H200, 'off')).toBe('off');
    expect(chooseHalfProducts('mixed', lavapipe, 'storage')).toBe('storage');
    expect(chooseHalfProducts('f32', lavapipe, 'storage')).toBe('off');
  });

  it('says why subgroup matrices cannot run, and refuses a setting the adapter cannot honour', () => {
    expect(matrixUnavailable(H200)).toBeNull();
    expect(matrixUnavailable(lavapipe)).toMatch(/no f16 → f32 subgroup-matrix configuration/);
    expect(matrixUnavailable(intel)).toMatch(/subgroup size varies \(8–32\)/);
    expect(matrixUnavailable(noF16)).toMatch(/no shader-f16/);
    expect(() => chooseHalfProducts('mixed', lavapipe, 'matrix')).toThrow(
      /OFFSHOOT_WEBGPU_F16=matrix: the adapter offers no f16 → f32/,
    );
    expect(() => chooseHalfProducts('mixed', noF16, 'storage')).toThrow(
      /OFFSHOOT_WEBGPU_F16=storage: the adapter has no shader-f16/,
    );
    expect(() => chooseHalfProducts('mixed', H200, 'bf16')).toThrow(
      /OFFSHOOT_WEBGPU_F16: invalid value "bf16"; expected one of auto, matrix, storage, off/,
    );
  });

  it("applies Dawn's f16 toggle on NVIDIA only, unless OFFSHOOT_DAWN_TOGGLES says otherwise", () => {
    const saved = process.env.OFFSHOOT_DAWN_TOGGLES;
    delete process.env.OFFSHOOT_DAWN_TOGGLES;
    try {
      expect(dawnToggles('nvidia')).toBe(
        'allow_unsafe_apis,disable_robustness,vulkan_enable_f16_on_nvidia,use_vulkan_memory_model',
      );
      expect(dawnToggles('mesa')).toBe('allow_unsafe_apis,disable_robustness');
      expect(dawnToggles(undefined)).toBe('allow_unsafe_apis,disable_robustness');
      process.env.OFFSHOOT_DAWN_TOGGLES = 'allow_unsafe_apis';
      expect(dawnToggles('nvidia')).toBe('allow_unsafe_apis');
    } finally {
      if (saved === undefined) delete process.env.OFFSHOOT_DAWN_TOGGLES;
      else process.env.OFFSHOOT_DAWN_TOGGLES = saved;
    }
  });

  it('the H200 gets subgroup-matrix tiles of its deepest configuration per result shape that fit its workgroup memory', () => {
    const tiles = sgTilesFor(H200);
    expect(new Set(tiles.map((t) => `${t.M}x${t.N}x${t.K}`))).toEqual(new Set(['16x16x16', '16x8x16']));
    expect(tiles.some((t) => t.staging === 'direct')).toBe(true);
    expect(tiles.some((t) => t.double)).toBe(true);
    expect(tiles.every((t) => t.BM * t.BN <= 256 * 128)).toBe(true);
    // The epilogue's patch takes what workgroup memory is left: all of a 128 × 128 tile's row of
    // matrices with one slab, one matrix at a time with two.
    const keys = tiles.map(sgTileKey);
    expect(keys).toContain('sg16x16x16:128x128x32:2x2x4x4:workgroup:p4');
    expect(keys).toContain('sg16x16x16:128x128x32:2x2x4x4:workgroupd');
    expect(tiles.every((t) => t.RN % (t.patch ?? 1) === 0)).toBe(true);
    // Less workgroup memory: the two-slab 128 × 128 × 64 tiles do not fit in 32 KiB.
    expect(sgTilesFor({ ...H200, maxWorkgroupStorage: 32768 }).length).toBeLessThan(tiles.length);
  });

  it("the card's tile checks give each direct-load tile only whole tiles (a ragged shape is refused at dispatch)", () => {
    for (const tile of sgTilesFor(H200).filter((t) => t.staging === 'direct')) {
      for (const { o, S } of sgTileShapes(tile)) {
        const { kChunk } = makePlan(tile, o.K, S);
        const where = `${tile.BM}x${tile.BN}x${tile.BK} on ${o.M}x${o.N}x${o.K}/${S}`;
        expect([o.M % tile.BM, o.N % tile.BN, kChunk % tile.BK, o.K % kChunk], where).toEqual([0, 0, 0, 0]);
      }
    }
  });
});

describe('loss scaling (reference, cpu backend)', () => {
  it('rejects bad options, naming the field', () => {
    expect(lossScaleOptions({})).toEqual({
      initScale: 65536,
      growthFactor: 2,
      backoffFactor: 0.5,
      growthInterval: 2000,
    });
    expect(() => lossScaleOptions({ initScale: 0 })).toThrow('loss scale: initScale must be a positive number, got 0');
    expect(() => lossScaleOptions({ growthFactor: 1 })).toThrow(
      'loss scale: growthFactor must be a number above 1, got 1',
    );
    expect(() => lossScaleOptions({ backoffFactor: 1.5 })).toThrow(
      'loss scale: backoffFactor must be between 0 and 1, got 1.5',
    );
    expect(() => lossScaleOptions({ growthInterval: 2.5 })).toThrow(
      'loss scale: growthInterval must be a whole number from 1 to 2^24, got 2.5',
    );
  });

  it('skips a step whose gradients overflowed (weights and moments untouched), backs off, then grows after clean steps', async () => {
    await useBackend('cpu');
    const config = tinyConfig();
    // A scale so large that the scaled loss overflows f32: the first steps must be skipped.
    const trainer = new Trainer(GPTNeoX.random(config, 3), {
      hyper: tinyHyper(12),
      batches: syntheticBatches(48, 2, 8, 1),
      lossScale: { initScale: 2 ** 127, growthInterval: 3 },
    });
    const before = await trainer.model.toHost();
    const moments0 = await trainer.optimizer.stateToHost();
    const reports: Array<{ scale: number; skipped: number; norm: number; loss: number }> = [];
    for (let i = 0; i < 12; i++) {
      const { loss, gradNorm } = await trainer.trainStep();
      const s = await trainer.optimizer.lossScale!.read();
      reports.push({
        scale: s.scale,
        skipped: s.skippedSteps,
        norm: (await gradNorm.data())[0],
        loss: (await loss.data())[0],
      });
      if (i === 0) {
        // Skipped: every weight exactly as before, the moments still zero.
        const after = await trainer.model.toHost();
        for (const [name, t] of before) expect(Array.from(after.get(name)!.data), name).toEqual(Array.from(t.data));
        const moments = await trainer.optimizer.stateToHost();
        for (const [key, t] of moments)
          if (key.startsWith('m.') || key.startsWith('v.'))
            expect(
              (t.data as Float32Array).every((x) => x === 0),
              key,
            ).toBe(true);
        expect(moments0.has('loss_scale')).toBe(true);
      }
      tf.dispose([loss, gradNorm]);
    }
    trainer.dispose();
    // The loss itself is reported (finite) even when the scaled loss overflowed.
    expect(reports.every((r) => Number.isFinite(r.loss))).toBe(true);
    expect(Number.isFinite(reports[0].norm)).toBe(false);
    expect(reports[0]).toMatchObject({ scale: 2 ** 126, skipped: 1 });
    const firstClean = reports.findIndex((r) => Number.isFinite(r.norm));
    expect(firstClean).toBeGreaterThan(0);
    // Halved once per skipped step, then doubled after every 3 clean steps in a row.
    expect(reports[firstClean - 1].scale).toBe(2 ** (127 - firstClean));
    expect(reports[firstClean + 2].scale).toBe(2 ** (128 - firstClean));
    expect(reports[reports.length - 1].skipped).toBeGreaterThanOrEqual(firstClean);
  });

  it('without overflow, loss scaling changes nothing but the scale (gradients unscaled exactly: powers of two)', async () => {
    await useBackend('cpu');
    const config = tinyConfig();
    const run = async (lossScale: boolean) => {
      const trainer = new Trainer(GPTNeoX.random(config, 3), {
        hyper: tinyHyper(6),
        batches: syntheticBatches(48, 2, 8, 1),
        lossScale,
      });
      await trainer.run();
      const w = await trainer.model.toHost();
      trainer.dispose();
      return w;
    };
    const plain = await run(false);
    const scaled = await run(true);
    for (const [name, t] of plain)
      expect(relErr(scaled.get(name)!.data as Float32Array, t.data as Float32Array), name).toBeLessThan(1e-6);
  });

  it('goes into the checkpoint with the optimiser state: a resumed run continues exactly', async () => {
    await useBackend('cpu');
    const config = tinyConfig();
    const hyper = tinyHyper(10);
    const batches = syntheticBatches(48, 2, 8, 2);
    // Backs off in the first steps and grows every 2 clean steps: the state changes all along.
    const lossScale = { initScale: 2 ** 127, growthInterval: 2 };
    const straight = new Trainer(GPTNeoX.random(config, 5), { hyper, batches, lossScale });
    await straight.run();
    const expected = await straight.model.toHost();
    const expectedScale = await straight.optimizer.lossScale!.toHost();
    straight.dispose();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-loss-scale-'));
    try {
      const first = Trainer.createOrResume(config, () => GPTNeoX.random(config, 5), {
        hyper,
        batches,
        lossScale,
        checkpointDir: dir,
      });
      await first.run(4);
      const saved = await first.optimizer.lossScale!.toHost();
      first.dispose();
      const second = Trainer.createOrResume(config, () => GPTNeoX.random(config, 99), {
        hyper,
        batches,
        lossScale,
        checkpointDir: dir,
      });
      expect(Array.from((await second.optimizer.lossScale!.toHost()).data)).toEqual(Array.from(saved.data));
      await second.run();
      const resumed = await second.model.toHost();
      expect(Array.from((await second.optimizer.lossScale!.toHost()).data)).toEqual(Array.from(expectedScale.data));
      second.dispose();
      for (const [name, t] of expected) expect(Array.from(resumed.get(name)!.data), name).toEqual(Array.from(t.data));
      // A run without loss scaling resumes from it too (the saved scale is ignored).
      const plain = Trainer.createOrResume(config, () => GPTNeoX.random(config, 99), {
        hyper,
        batches,
        lossScale: false,
        checkpointDir: dir,
      });
      expect(plain.optimizer.lossScale).toBeNull();
      plain.dispose();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is off by default where the products are not f16', async () => {
    await useBackend('cpu');
    const trainer = new Trainer(GPTNeoX.random(tinyConfig(), 3), {
      hyper: tinyHyper(2),
      batches: syntheticBatches(48, 2, 8, 1),
    });
    expect(trainer.optimizer.lossScale).toBeNull();
    trainer.dispose();
  });
});

describe.skipIf(!hasWebGPU)('f16 on the webgpu backend (lavapipe: shader-f16, no subgroup matrices)', () => {
  it('mixed precision keeps f32 products on lavapipe unless told otherwise', async () => {
    await useBackend('webgpu');
    delete process.env.OFFSHOOT_WEBGPU_F16;
    expect(halfProducts()).toBe('off');
    const trainer = new Trainer(GPTNeoX.random(tinyConfig(), 3), {
      hyper: tinyHyper(2),
      batches: syntheticBatches(48, 2, 8, 1),
    });
    expect(trainer.optimizer.lossScale).toBeNull();
    trainer.dispose();
    f16Storage();
    expect(halfProducts()).toBe('storage');
    setPrecision('f32');
    expect(halfProducts()).toBe('off');
  });

  it('converts f32 to f16 and back: exact where f16 can hold the value, +inf past its range (the overflow check relies on it)', async () => {
    await useBackend('webgpu');
    const values = Float32Array.of(
      0,
      1,
      -2.5,
      0.333251953125,
      65504,
      -65504,
      1e-3,
      65536,
      -1e6,
      NaN,
      Infinity,
      3.0517578125e-5,
    );
    for (const n of [values.length, 8]) {
      const x = tf.tensor1d(values.slice(0, n));
      const h = toHalf(x);
      const back = fromHalf(h, [n]);
      const got = (await back.data()) as Float32Array;
      expect(Array.from(got.slice(0, 7))).toEqual([0, 1, -2.5, 0.333251953125, 65504, -65504, 0.0010004043579101562]);
      if (n > 8) expect(Array.from(got.slice(7, 11))).toEqual([Infinity, Infinity, Infinity, Infinity]);
      tf.dispose([x, back]);
      tf.engine().makeTensorFromTensorInfo(h).dispose();
    }
  });

  const tol = F16_PRODUCT_TOL;
  const cases = [
    halfProductCase({ M: 37, N: 52, K: 20 }),
    halfProductCase({ M: 40, N: 36, K: 24, transA: true }),
    halfProductCase({ M: 40, N: 36, K: 24, transB: true, epilogue: 'bias-gelu' }),
    halfProductCase({ M: 19, N: 11, K: 9, transA: true, transB: true }),
    halfProductCase({ M: 16, N: 12, K: 2048 }),
    halfProductCase({ M: 70, N: 16, K: 70, batch: 2, triangle: 'lowerA' }),
    linearCase(37, 20, 52, 'none', 2 * tol),
    linearCase(64, 128, 256, 'gelu', 2 * tol),
    linearCase(21, 16, 9, 'gelu', 2 * tol),
    mlpCase(64, 32, 128, 2 * tol),
    mlpCase(21, 16, 36, 2 * tol),
    // 21 × 9 hidden values: the conversion through GELU one element an invocation.
    mlpCase(21, 16, 9, 2 * tol),
    logitsCase(24, 16, 1100, 2 * tol),
    logitsCrossEntropyCase(24, 16, 1100, 2 * tol),
    // The scores path's q, k, v, P, dO and dS are f16 (ragged T: no whole tiles).
    attentionCase('scores', 2, 70, 3, 16, 8, 2 * tol),
  ];
  it.each(cases.map((c) => [c.name, c] as const))(
    'f16 operands, f32 results (storage mode) within tolerance of f32: %s',
    async (_name, c) => {
      f16Storage();
      const r = await runCase(c, 'cpu');
      expect(r.valueErr, 'value').toBeLessThan(c.tol);
      // f16 rounding did happen: not the f32 result.
      expect(r.valueErr).toBeGreaterThan(1e-6);
      r.gradErrs.forEach((e, i) => expect(e, `gradient of input ${c.diff[i]}`).toBeLessThan(c.tol));
    },
    300_000,
  );

  // Flash attention on subgroup matrices with the builtins emulated (E × E × E matrices; lavapipe's
  // subgroups are 8 lanes, so E = 8 gives a lane per row and E = 4 two, whose row maxima and sums
  // take shuffles): streamed blocks, the diagonal's mask, both gradients' kernels; the larger inputs
  // make later blocks' scores outgrow the first's, so the forward rescales its partial output.
  const flashMatrixCases: Array<[number, KernelCase]> = [
    [8, attentionCase('flash-matrix', 1, 64, 2, 16, 8, 2 * tol)],
    [8, attentionCase('flash-matrix', 1, 96, 1, 32, 32, 2 * tol, 6)],
    [4, attentionCase('flash-matrix', 1, 64, 1, 8, 8, 2 * tol, 6)],
  ];
  it.each(flashMatrixCases.map(([E, c]) => [E, E, E, c.name, c] as const))(
    'flash attention on subgroup matrices, builtins emulated on %i × %i × %i matrices, within tolerance of f32: %s',
    async (E, _n, _k, _name, c) => {
      f16Storage();
      setFlashMatrixEmulation(E);
      try {
        const r = await runCase(c, 'cpu');
        expect(r.valueErr, 'value').toBeLessThan(c.tol);
        expect(r.valueErr).toBeGreaterThan(1e-6);
        r.gradErrs.forEach((e, i) => expect(e, `gradient of input ${c.diff[i]}`).toBeLessThan(c.tol));
      } finally {
        setFlashMatrixEmulation(null);
      }
    },
    600_000,
  );

  it('the autotuner times f16 products too, checking every candidate against the f32 kernel', async () => {
    f16Storage();
    await useBackend('webgpu');
    clearMatMulTuning();
    const [M, N, K] = [96, 40, 72];
    const a = tf.tensor(randHost([M, K], 3).data, [M, K]);
    const b = tf.tensor(randHost([N, K], 4).data, [N, K]);
    const [ah, bh] = [toHalf(a), toHalf(b)];
    const product = () =>
      tf
        .engine()
        .makeTensorFromTensorInfo(matmul({ a: ah, b: bh, M, N, K, transB: true, aType: 'f16', bType: 'f16' }).c);
    const first = product();
    const tuned = await autotuneMatMuls({ targetMs: 1 });
    const result = tuned.find((t) => t.shape === `${M}x${N}x${K}NT f16`);
    expect(result, JSON.stringify(tuned)).toBeDefined();
    expect(result!.rejected).toBeUndefined();
    const again = product();
    expect(relErr((await again.data()) as Float32Array, (await first.data()) as Float32Array)).toBeLessThan(1e-6);
    tf.dispose([a, b, first, again]);
    release(ah);
    release(bh);
    clearMatMulTuning();
  }, 600_000);

  it('a whole model in mixed precision: loss and every gradient near the f32 ones on the cpu backend', async () => {
    f16Storage();
    const config = tinyConfig({ vocabSize: 50, hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 128 });
    const r = await modelGradientCheck(config, 2, 70, 'cpu');
    expect(r.lossDiff).toBeLessThan(2e-3);
    expect(r.worstGradient.err, r.worstGradient.name).toBeLessThan(1e-2);
  }, 300_000);

  it('a large vocabulary: the logits gradient stays in f16 range because the check scales the loss as training does', async () => {
    // softmax / tokens ≈ 1 / (16384 · 1024) ≈ 6·10⁻⁸, f16's smallest subnormal: unscaled, the backward
    // loses the softmax part of the logits gradient (the final LayerNorm's gradient came out 32% off
    // here, 26% at Pythia-70M's shapes on an H100). Training multiplies the loss by its scale first.
    f16Storage();
    const config = tinyConfig({ vocabSize: 16384, hiddenSize: 64, numLayers: 1, numHeads: 4, maxPositions: 512 });
    const r = await modelGradientCheck(config, 2, 512, 'cpu');
    expect(r.lossDiff).toBeLessThan(2e-3);
    expect(r.worstGradient.err, r.worstGradient.name).toBeLessThan(1e-2);
  }, 300_000);

  // The tiling, staging and epilogues of the subgroup-matrix kernels with the builtins emulated
  // (core/model/webgpu/wgsl-sgmatrix.ts): one tile of each staging; the card checks every real one.
  const emulated = [
    sgTile({ M: 8, N: 8, K: 8, SGX: 2, SGY: 2, RM: 2, RN: 1, BK: 16, staging: 'workgroup', emulate: true }),
    sgTile({ M: 8, N: 8, K: 8, SGX: 2, SGY: 2, RM: 1, RN: 1, BK: 16, staging: 'direct', emulate: true }),
  ];
  const tileCases = [
    ...emulated.flatMap((t) => sgTileCases(t)),
    // Two slabs and both matrices of a row through the epilogue at once: a whole and a ragged shape.
    ...((t) => [sgTileCases(t)[0], sgTileCases(t)[9]])(
      sgTile({
        M: 8,
        N: 8,
        K: 8,
        SGX: 2,
        SGY: 1,
        RM: 2,
        RN: 2,
        BK: 16,
        staging: 'workgroup',
        double: true,
        patch: 2,
        emulate: true,
      }),
    ),
  ];
  it.each(tileCases.map((c) => [c.name, c] as const))(
    'subgroup-matrix tile, builtins emulated: %s',
    async (_name, c) => {
      const r = await runCase(c, 'cpu');
      expect(r.valueErr).toBeLessThan(c.tol);
      expect(r.valueErr).toBeGreaterThan(1e-6);
    },
    600_000,
  );

  it('the fused loss-scaled AdamW step matches the reference, overflow skip and f16 weight copies included', async () => {
    const shapes = [[33, 20], [20], [7, 5], [70, 90], [3], [257], [16, 16], [40, 9], [5000], [11, 3], [64], [128, 40]];
    const names = shapes.map((_, i) => (i === 1 ? 'layernorm.bias' : `w${i}`));
    const run = async (backend: 'cpu' | 'webgpu') => {
      await useBackend(backend);
      setFusedKernels(backend === 'webgpu');
      const params = new Map(shapes.map((s, i) => [names[i], tf.variable(tf.tensor(randHost(s, 20 + i).data, s))]));
      if (backend === 'webgpu') for (const [name, p] of params) if (p.rank === 2 && name !== 'w2') halfWeight(p);
      const state = new AdamWState();
      const scale = new LossScale({ initScale: 1024, growthInterval: 2 });
      const norms: number[] = [];
      for (let step = 1; step <= 4; step++) {
        const grads = names.map((_, i) => {
          const g = randHost(shapes[i], 30 + step * 7 + i, 1024 * (step === 2 ? 5 : 0.01));
          // Step 3 overflows: one inf and one NaN among the gradients.
          if (step === 3 && i === 3) g.data[17] = Infinity;
          if (step === 3 && i === 8) g.data[4000] = NaN;
          return tf.tensor(g.data, shapes[i]);
        });
        const entries = names.map((name, i) => ({ name, param: params.get(name)!, grad: grads[i], decays: i !== 1 }));
        const norm = lossScaledAdamW(
          state,
          entries,
          { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step, maxNorm: 1 },
          scale,
        );
        norms.push((await norm.data())[0]);
        tf.dispose([norm, ...grads]);
      }
      const weights = await Promise.all([...params.values()].map(async (p) => (await p.data()) as Float32Array));
      const copies: Array<Float32Array | null> = [];
      for (const p of params.values()) {
        const h = halfShadow(p);
        copies.push(h ? ((await fromHalf(h, [p.size]).data()) as Float32Array) : null);
      }
      const moments = await state.toHost();
      const scaleState = await scale.toHost();
      state.dispose();
      scale.dispose();
      for (const p of params.values()) p.dispose();
      return { weights, copies, norms, moments, scaleState };
    };
    const ref = await run('cpu');
    const got = await run('webgpu');
    got.weights.forEach((w, i) => expect(relErr(w, ref.weights[i]), names[i]).toBeLessThan(1e-5));
    expect(Number.isFinite(got.norms[2])).toBe(false);
    [0, 1, 3].forEach((i) => expect(Math.abs(got.norms[i] - ref.norms[i]) / ref.norms[i]).toBeLessThan(1e-5));
    for (const [key, t] of ref.moments)
      expect(relErr(got.moments.get(key)!.data as Float32Array, t.data as Float32Array), key).toBeLessThan(1e-5);
    // [scale, clean steps, skipped steps]: 1024 → 2048 after two clean steps → 1024 on the overflow.
    expect(Array.from(got.scaleState.data)).toEqual(Array.from(ref.scaleState.data));
    expect(Array.from(ref.scaleState.data)).toEqual([1024, 1, 1]);
    // The f16 copies were refreshed with their weights (to f16's precision).
    got.copies.forEach((c, i) => {
      if (c) expect(relErr(c, got.weights[i]), names[i]).toBeLessThan(1e-3);
    });
    expect(got.copies.filter(Boolean).length).toBe(6);
  }, 300_000);

  it('mixed (f16 storage, loss scaling) and f32 training curves agree over 200 steps from the same init', async () => {
    f16Storage();
    const config = tinyConfig({ vocabSize: 48, hiddenSize: 32, numLayers: 2, numHeads: 4 });
    const batches = Array.from({ length: 200 }, (_, step) => syntheticBatches(48, 2, 16)(step));
    const r = await mixedCurveCheck(() => GPTNeoX.random(config, 5), batches, { lr: 3e-3, warmup: 20 });
    expect(r.halfProducts).toBe('storage');
    expect(r.mixed.length).toBe(200);
    expect(r.skippedSteps).toBe(0);
    expect(r.lossScale).toBe(65536);
    // Measured on lavapipe: at most 1·10⁻⁴ apart at any step, 4·10⁻⁶ on average over the last 50.
    expect(r.maxAbsDiff).toBeLessThan(5e-3);
    expect(r.meanAbsDiffLast50).toBeLessThan(1e-3);
    // It learned.
    expect(r.mixed[r.mixed.length - 1]).toBeLessThan(r.mixed[0] / 2);
  }, 600_000);

  it('f16 gradients that overflow are skipped and the scale backs off until they fit; the state survives a checkpoint', async () => {
    f16Storage();
    await useBackend('webgpu');
    const config = tinyConfig();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-f16-'));
    try {
      // 2^30 × the logits' gradient (about 1/N) is far past f16's 65504: the first steps overflow.
      const lossScale = { initScale: 2 ** 30, growthInterval: 4 };
      const losses: number[] = [];
      const scales: number[] = [];
      const trainer = Trainer.createOrResume(config, () => GPTNeoX.random(config, 3), {
        hyper: tinyHyper(30, { batchSize: 2, seqLen: 16 }),
        batches: syntheticBatches(48, 2, 16, 5),
        lossScale,
        checkpointDir: dir,
        onStep: (r) => {
          losses.push(r.loss);
          scales.push(r.lossScale!);
        },
      });
      const before = await trainer.model.toHost();
      await trainer.trainStep().then(({ loss, gradNorm }) => tf.dispose([loss, gradNorm]));
      const after = await trainer.model.toHost();
      for (const [name, t] of before) expect(Array.from(after.get(name)!.data), name).toEqual(Array.from(t.data));
      await trainer.run(20);
      const { scale, skippedSteps } = await trainer.optimizer.lossScale!.read();
      const saved = await trainer.optimizer.lossScale!.toHost();
      trainer.dispose();
      expect(skippedSteps).toBeGreaterThanOrEqual(5);
      expect(scale).toBeLessThan(2 ** 25);
      // Backing off reached a scale that fits, and the model trained from there.
      expect(losses[losses.length - 1]).toBeLessThan(losses[0]);
      const resumed = Trainer.createOrResume(config, () => GPTNeoX.random(config, 9), {
        hyper: tinyHyper(30, { batchSize: 2, seqLen: 16 }),
        batches: syntheticBatches(48, 2, 16, 5),
        lossScale,
        checkpointDir: dir,
      });
      expect(resumed.step).toBe(20);
      expect(Array.from((await resumed.optimizer.lossScale!.toHost()).data)).toEqual(Array.from(saved.data));
      const result = await resumed.run();
      expect(Number.isFinite(result.lastLoss)).toBe(true);
      resumed.dispose();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 600_000);

  it('AdamW keeps the f16 weight copies of a model in step, and drops those of freed weights', async () => {
    f16Storage();
    await useBackend('webgpu');
    const trainer = new Trainer(GPTNeoX.random(tinyConfig(), 3), {
      hyper: tinyHyper(3),
      batches: syntheticBatches(48, 2, 8, 1),
    });
    await trainer.run();
    const w = trainer.model.params.get('embed_out.weight')!;
    const copy = halfShadow(w);
    expect(copy).toBeDefined();
    const [exact, half] = [(await w.data()) as Float32Array, (await fromHalf(copy!, [w.size]).data()) as Float32Array];
    expect(relErr(half, exact)).toBeLessThan(1e-3);
    trainer.dispose();
    const { endTrainingStep } = await import('../core/model/ops/index.js');
    endTrainingStep();
    expect(copy!.isDisposed).toBe(true);
  }, 300_000);
});

describe("the subgroup-matrix kernels' WGSL compiles for the H200's configurations (Dawn's null backend)", () => {
  /** Runs `f` with a device of Dawn's null backend that has the features the kernels enable. */
  async function onNullDevice(f: (device: GPUDevice) => Promise<void>): Promise<void> {
    const dawn = (await import('webgpu')) as unknown as { create(flags: string[]): GPU; globals: object };
    const keepAlive = setInterval(() => {}, 1000);
    try {
      const gpu = dawn.create(['enable-dawn-features=allow_unsafe_apis', 'backend=null']);
      const adapter = (await gpu.requestAdapter())!;
      const device = await adapter.requestDevice({
        requiredFeatures: ['shader-f16', 'subgroups', 'chromium-experimental-subgroup-matrix'] as GPUFeatureName[],
      });
      await f(device);
      device.destroy();
    } finally {
      clearInterval(keepAlive);
    }
  }
  /**
   * The compiler's warnings and errors for `code`, and any workgroup variable whose size is not a
   * multiple of 16 bytes: NVIDIA's driver put a lone u32 ahead of a kernel's arrays, and its matrix
   * loads from them then read 4 bytes early (plain loads did not mind; nothing short of the card shows it).
   */
  async function compileMessages(device: GPUDevice, code: string): Promise<string[]> {
    const info = await device.createShaderModule({ code }).getCompilationInfo();
    const bytes: Record<string, number> = { f16: 2, f32: 4, u32: 4, i32: 4 };
    // Scalars and vectors, and arrays of them (the staged slabs hold f16 pairs as vec2<u32> or vec4<u32>).
    const sizeOf = (type: string): number => {
      const v = /^vec([234])<(\w+)>$/.exec(type);
      return v ? Number(v[1]) * bytes[v[2]] : bytes[type];
    };
    const unaligned = [...code.matchAll(/var<workgroup> (\w+): ([^;]+);/g)]
      .filter(([, , type]) => {
        const m = /^array<(\w+|vec[234]<\w+>), (\d+)>$/.exec(type);
        const size = m ? sizeOf(m[1]) * Number(m[2]) : sizeOf(type);
        return !(size % 16 === 0);
      })
      .map(([, name, type]) => `workgroup variable ${name}: ${type} is not a multiple of 16 bytes`);
    return [
      ...info.messages.filter((m) => m.type !== 'info').map((m) => `${m.type} ${m.lineNum}:${m.linePos} ${m.message}`),
      ...unaligned,
    ];
  }

  it('every tile the H200 would try, every transpose, epilogue and staging', async () => {
    await onNullDevice(async (device) => {
      const failures: string[] = [];
      let compiled = 0;
      for (const tile of sgTilesFor(H200)) {
        for (const [transA, transB, epilogue, exact, aType] of [
          [false, true, 'bias-gelu', false, 'f16'],
          [false, false, 'none', true, 'f16'],
          [true, false, 'none', false, 'f16'],
          [true, true, 'bias', false, 'f32'],
          [false, true, 'bias', true, 'f16'],
        ] as const) {
          if (tile.staging === 'direct' && (!exact || aType !== 'f16')) continue;
          const v: SgMatMulVariant = {
            ...tile,
            subgroupSize: 32,
            transA,
            transB,
            aType,
            bType: 'f16',
            widthA: aType === 'f16' ? 8 : 4,
            widthB: 4,
            exact,
            epilogue,
            splitK: false,
            batched: !exact && epilogue === 'none',
            triangle: 'none',
            walkM: exact,
          };
          const messages = await compileMessages(device, sgMatmulSource(v));
          if (messages.length) failures.push(`${JSON.stringify(v)}: ${messages.join('; ')}`);
          compiled++;
        }
      }
      expect(failures).toEqual([]);
      expect(compiled).toBeGreaterThan(60);
    });
  }, 300_000);

  it("the flash-matrix attention kernels' real WGSL compiles, at the layouts an H200 takes and with head size 128", async () => {
    await onNullDevice(async (device) => {
      const failures: string[] = [];
      for (const [hs, W] of [
        [64, 64],
        [64, 32],
        [128, 32],
      ]) {
        const k = { E: 16, SG: 32, hs, W, emulate: false };
        for (const [name, source] of [
          ['forward', flashMatrixForwardSource(k)],
          ['dQ', flashMatrixBackwardQSource(k)],
          ['dK dV', flashMatrixBackwardKVSource(k)],
        ]) {
          const messages = await compileMessages(device, source);
          if (messages.length) failures.push(`${name} (hs ${hs}, W ${W}): ${messages.join('; ')}`);
        }
      }
      expect(failures).toEqual([]);
    });
  }, 300_000);
});
