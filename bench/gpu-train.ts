/**
 * GPU training speed of the cuda and webgpu backends against PyTorch on the same card, the GPU
 * machine's entry to bench/train-throughput (the same code and JSON lines, `bench: "gpu-train"`):
 * per configuration and backend, offshoot's training step (webgpu also with tfjs's stock kernels
 * only, with --unfused), tokens/s, achieved TFLOP/s, peak GPU memory, the matrix-product plans the
 * autotuner chose with their TFLOP/s per shape, and PyTorch (bench/torch_reference.py: f32 eager,
 * bf16 autocast, bf16 + torch.compile, fused AdamW) measured in the same call, with the ratios.
 *
 *   node dist/bench/gpu-train.js --config tiny|pythia-70m|pythia-160m|pythia-410m[,...] [--backends cuda,webgpu]
 *        [--precision mixed|f32] [--steps N] [--warmup N] [--torch python3 | --no-torch] [--torch-modes f32,bf16,bf16-compile]
 *        [--unfused] [--check | --check-only] [--check-scale small|pythia] [--checks f32,mixed,tiles,curve]
 *        [--tiles-matching TEXT] [--profile 1]
 *        [--teacher PRESET [--teacher-top-k K] --no-torch]
 *
 * --teacher times distillation steps from an in-process teacher (train-throughput.ts says how).
 *
 * --precision sets OFFSHOOT_PRECISION for every measured process (default: the environment's, else
 * mixed): on webgpu, mixed runs the linear and logits products on f16 subgroup matrices where the
 * adapter offers them (core/model/webgpu/half.ts).
 *
 * --check first runs the kernel correctness checks on the card, one JSON line each: for webgpu, each
 * operation's case from its file in core/model/webgpu, run by check.ts, at the shapes of a
 * Pythia-70M step (fused kernels against tfjs's stock webgpu kernels, plus a whole Pythia-70M-shaped
 * model's gradients), in f32 (`f32`); then mixed precision's f16 products against f32 at those
 * shapes, the linear and logits operations and the model's gradients in mixed precision (`mixed`);
 * every subgroup-matrix tile the autotuner may pick on every product layout, ragged and whole shapes,
 * epilogues, split-K and the causal batched products (`tiles`); and 300 training steps of
 * Pythia-70M in mixed precision against f32 from the same init (`curve`). --checks picks sections
 * (default all), so a long check can be split over several calls; --tiles-matching keeps the tiles
 * whose plan-file name (e.g. `sg16x16x16:256x128x32:4x2x4x4:workgroup`) contains TEXT. For cuda, core/model/cuda/check.ts
 * (every operation and tfjs kernel against the cpu backend, in f32 and in mixed precision; a
 * Pythia-70M-shaped model's gradients; 300 training steps in f32 and in mixed precision against
 * webgpu in f32; transformers' logits of the committed fixtures).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { initBackend } from '../core/model/backend.js';
import {
  CURVE_RECIPE,
  CURVE_TOLERANCE,
  curveInit,
  sampleCurve,
  textBatches,
  withinCurveTolerance,
} from '../core/model/curve.js';
import { presetConfig } from '../core/model/index.js';
import { parsePrecision, setPrecision } from '../core/model/precision.js';
import { attentionCase, flashMatrixKernels } from '../core/model/webgpu/attention.js';
import {
  F16_PRODUCT_TOL,
  type KernelCase,
  halfProductCase,
  matmulCase,
  mixedCurveCheck,
  modelGradientCheck,
  runCase,
  sgTileCases,
} from '../core/model/webgpu/check.js';
import { crossEntropyCase, logitsCrossEntropyCase } from '../core/model/webgpu/cross-entropy.js';
import { fullCase, topKCase } from '../core/model/webgpu/distill.js';
import { embeddingCase } from '../core/model/webgpu/embedding.js';
import { layerNormCase } from '../core/model/webgpu/layer-norm.js';
import { halfProducts, matrixUnavailable } from '../core/model/webgpu/half.js';
import { linearCase, logitsCase, mlpCase } from '../core/model/webgpu/linear.js';
import { sgTiles } from '../core/model/webgpu/matmul.js';
import { sgTileKey } from '../core/model/webgpu/wgsl-sgmatrix.js';
import { capabilities } from '../core/model/webgpu/runtime.js';
import { main as throughput } from './train-throughput.js';

/**
 * The cases at the shapes of a Pythia-70M training step (batch 8 × 512, width 512, vocabulary
 * 50304, head size 64), checked on the card against tfjs's stock webgpu kernels. `shrink` divides
 * the token, width and vocabulary sizes (head size stays 64), to try the same path on a slow adapter.
 */
function pythiaScaleCases(shrink = 1): KernelCase[] {
  const d = (n: number) => Math.max(4, Math.round(n / shrink / 4) * 4);
  const [N, D, V, F, QKV] = [d(4096), d(512), d(50304), d(2048), d(1536)];
  const T = d(512);
  return [
    matmulCase('matrix product NT (logits shape)', N, D, V, false, true, 1e-5),
    matmulCase('matrix product NN, split-K (logits backward)', N, V, D, false, false, 5e-5),
    matmulCase('matrix product TN (embed_out gradient)', V, N, D, true, false, 1e-5),
    linearCase(N, D, QKV, 'none', 1e-4),
    linearCase(N, D, F, 'gelu', 1e-4),
    linearCase(N, F, D, 'none', 1e-4),
    logitsCase(d(1024), D, V, 1e-4),
    layerNormCase(N, D, 1e-4),
    attentionCase('scores', Math.max(1, Math.round(8 / shrink)), T, 8, 64, 16, 1e-4),
    attentionCase('flash', Math.max(1, Math.round(8 / shrink)), T, 8, 64, 16, 1e-4),
    crossEntropyCase(d(1024), V, 1e-4),
    topKCase(d(1024), V, 64, 'forward', 0.5, 2, 1e-4),
    fullCase(d(1024), V, 'forward', 0.5, 2, 1e-4),
    embeddingCase(V, D, N, 1e-4),
  ];
}

/**
 * Mixed precision's checks at the same shapes: the three products of a linear layer with f16 operands
 * (the planner's plans), and the linear, MLP-up, MLP block, logits, logits-with-loss and attention (scores path,
 * and flash on subgroup matrices where the adapter has them) operations with their gradients.
 */
function pythiaScaleHalfCases(shrink = 1): KernelCase[] {
  const d = (n: number) => Math.max(4, Math.round(n / shrink / 4) * 4);
  const [N, D, V, F] = [d(4096), d(512), d(50304), d(2048)];
  const grads = 2 * F16_PRODUCT_TOL;
  return [
    halfProductCase({ name: 'f16 product NT (logits shape)', M: N, N: V, K: D, transB: true }),
    halfProductCase({ name: 'f16 product NN (logits backward)', M: N, N: D, K: V }),
    halfProductCase({ name: 'f16 product TN (embed_out gradient)', M: V, N: D, K: N, transA: true }),
    halfProductCase({
      name: 'f16 product NT + bias + GELU (MLP up)',
      M: N,
      N: F,
      K: D,
      transB: true,
      epilogue: 'bias-gelu',
    }),
    linearCase(N, D, d(1536), 'none', grads),
    linearCase(N, D, F, 'gelu', grads),
    linearCase(N, F, D, 'none', grads),
    mlpCase(N, D, F, grads),
    logitsCase(d(1024), D, V, grads),
    logitsCrossEntropyCase(d(1024), D, V, grads),
    attentionCase('scores', Math.max(1, Math.round(8 / shrink)), d(512), 8, 64, 16, grads),
    // Flash attention on subgroup matrices, where the adapter has them.
    ...(typeof flashMatrixKernels(64, d(512)) === 'string'
      ? []
      : [attentionCase('flash-matrix', Math.max(1, Math.round(8 / shrink)), d(512), 8, 64, 16, grads)]),
  ];
}

const argv = process.argv.slice(2);
const pass: string[] = [];
let torch: string | null = 'python3';
let unfused = false;
let check = false;
let checkOnly = false;
let configs = 'pythia-70m';
let backends = ['webgpu'];
let checkScale: 'small' | 'pythia' = 'pythia';
let torchModes = 'f32,bf16,bf16-compile';
/** Divides the check shapes (to try --check on a slow adapter). */
let shrink = 1;
let tilesMatching = '';
const CHECK_SECTIONS = ['f32', 'mixed', 'tiles', 'curve'] as const;
let sections: string[] = [...CHECK_SECTIONS];
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--no-torch') torch = null;
  else if (a === '--unfused') unfused = true;
  else if (a === '--check') check = true;
  else if (a === '--check-only') check = checkOnly = true;
  else if (a === '--torch') torch = argv[++i];
  else if (a === '--config') configs = argv[++i];
  else if (a === '--backends') backends = argv[++i].split(',');
  else if (a === '--check-scale') checkScale = argv[++i] === 'small' ? 'small' : 'pythia';
  else if (a === '--torch-modes') torchModes = argv[++i];
  else if (a === '--check-shrink') shrink = Number(argv[++i]);
  else if (a === '--tiles-matching') tilesMatching = argv[++i];
  else if (a === '--checks') {
    sections = argv[++i].split(',');
    const bad = sections.find((x) => !(CHECK_SECTIONS as readonly string[]).includes(x));
    if (bad)
      throw new Error(
        `--checks: unknown section ${JSON.stringify(bad)}; expected some of ${CHECK_SECTIONS.join(', ')}`,
      );
  } else if (a === '--precision') process.env.OFFSHOOT_PRECISION = parsePrecision(argv[++i]);
  else pass.push(a);
}

/**
 * The names of the checks that failed, repeated in each backend's last line: a long check's output
 * may come back only as its tail.
 */
const failures: string[] = [];
const noteFailure = (line: Record<string, unknown>) => {
  if (line.ok === false) failures.push(String(line.name ?? line.case));
};

if (check && backends.includes('cuda')) {
  const cuda = await import('../core/model/cuda/check.js');
  await initBackend('cuda', (m) => console.log(JSON.stringify({ bench: 'gpu-check', backend: m })));
  const log = (line: Record<string, unknown>) => {
    noteFailure(line);
    console.log(JSON.stringify({ bench: 'gpu-check', backend: 'cuda', ...line }));
  };
  let failed = await cuda.runCudaChecks(checkScale, log);
  failed += await cuda.modelGradientChecks(2, 128, log);
  failed += await cuda.curveCheck(300, 8, 128, log, torch ?? undefined);
  // The fixtures sit in the source tree: test/fixtures/neox beside bench/, two levels up from dist/bench.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const fixtures = [
    path.join(here, '..', 'test', 'fixtures', 'neox'),
    path.join(here, '..', '..', 'test', 'fixtures', 'neox'),
  ].find((d) => fs.existsSync(d));
  if (fixtures) failed += await cuda.parityChecks(fixtures, log);
  console.log(JSON.stringify({ bench: 'gpu-check', backend: 'cuda', failed, failures: failures.splice(0) }));
}

if (check && backends.includes('webgpu')) {
  await initBackend('webgpu', () => {});
  const log = (line: Record<string, unknown>) => {
    noteFailure(line);
    console.log(JSON.stringify({ bench: 'gpu-check', backend: 'webgpu', ...line }));
  };
  let failed = 0;
  const run = async (c: KernelCase, precision: 'f32' | 'mixed') => {
    const t0 = performance.now();
    const r = await runCase(c, 'webgpu-unfused');
    if (!r.ok) failed++;
    log({
      precision,
      case: r.name,
      ok: r.ok,
      valueErr: r.valueErr,
      gradErrs: r.gradErrs,
      tol: r.tol,
      ...(r.deviceErrors.length ? { deviceErrors: r.deviceErrors } : {}),
      ms: Math.round(performance.now() - t0),
    });
  };
  const seq = Math.max(8, Math.round(512 / shrink));
  const model = async (precision: 'f32' | 'mixed', tol: { loss: number; gradient: number }) => {
    const t0 = performance.now();
    const m = await modelGradientCheck(presetConfig('pythia-70m', 50304), 2, seq, 'webgpu-unfused');
    const ok = m.lossDiff < tol.loss && m.worstGradient.err < tol.gradient;
    if (!ok) failed++;
    log({
      precision,
      case: `pythia-70m model, batch 2 × ${seq}: loss and all gradients vs unfused f32`,
      ok,
      ...m,
      tol,
      ms: Math.round(performance.now() - t0),
    });
  };
  if (sections.includes('f32')) {
    setPrecision('f32');
    for (const c of pythiaScaleCases(shrink)) await run(c, 'f32');
    await model('f32', { loss: 1e-4, gradient: 1e-3 });
    setPrecision(null);
  }
  setPrecision('mixed');
  const products = halfProducts();
  const caps = capabilities();
  log({
    case: 'mixed-precision products',
    products,
    why: products === 'matrix' ? null : matrixUnavailable(caps),
    shaderF16: caps.shaderF16,
    subgroupSize: caps.subgroupMinSize,
    subgroupMatrixConfigs: caps.subgroupMatrixConfigs,
    subgroupMatrixTiles: sgTiles().length,
  });
  if (products !== 'off') {
    if (sections.includes('mixed')) {
      for (const c of pythiaScaleHalfCases(shrink)) await run(c, 'mixed');
      // bf16's tolerances on the cuda backend (core/model/cuda/check.ts); f16 keeps three more bits.
      await model('mixed', { loss: 2e-2, gradient: 5e-2 });
    }
    if (sections.includes('tiles')) {
      const tiles = sgTiles().filter((t) => sgTileKey(t).includes(tilesMatching));
      if (tiles.length === 0)
        throw new Error(`--tiles-matching ${JSON.stringify(tilesMatching)}: no tile's name has it`);
      for (const tile of tiles) for (const c of sgTileCases(tile)) await run(c, 'mixed');
    }
    if (sections.includes('curve')) {
      const steps = Math.max(20, Math.round(300 / shrink));
      const seqLen = Math.max(8, Math.round(128 / shrink));
      const t0 = performance.now();
      // The cuda backend's curve check's init, data and tolerance (core/model/curve.ts).
      const r = await mixedCurveCheck(curveInit, await textBatches(steps, 8, seqLen), CURVE_RECIPE);
      const ok = withinCurveTolerance(r.mixed, r.f32, steps);
      if (!ok) failed++;
      log({
        precision: 'mixed',
        case: `${steps} steps, pythia-70m, batch 8 × ${seqLen}, text: mixed vs f32 from the same init and data`,
        ok,
        products: r.halfProducts,
        meanAbsDiffLast50: r.meanAbsDiffLast50,
        maxAbsDiff: r.maxAbsDiff,
        tol: CURVE_TOLERANCE,
        lossScale: r.lossScale,
        skippedSteps: r.skippedSteps,
        mixed: sampleCurve(r.mixed),
        f32: sampleCurve(r.f32),
        ms: Math.round(performance.now() - t0),
      });
    }
  }
  setPrecision(null);
  log({ failed, failures: failures.splice(0) });
}

if (checkOnly) process.exit(0);
const measured = unfused ? backends.flatMap((b) => (b === 'webgpu' ? ['webgpu', 'webgpu-unfused'] : [b])) : backends;
await throughput(
  [
    '--config',
    configs,
    '--backends',
    measured.join(','),
    ...(torch ? ['--torch', torch, '--torch-modes', torchModes] : []),
    ...pass,
  ],
  (line) => console.log(JSON.stringify({ ...line, bench: 'gpu-train' })),
);
