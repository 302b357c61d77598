/**
 * GPU training speed of the cuda and webgpu backends against PyTorch on the same card, the GPU
 * machine's entry to bench/train-throughput (the same code and JSON lines, `bench: "gpu-train"`):
 * per configuration and backend, offshoot's training step (webgpu also with tfjs's stock kernels
 * only, with --unfused), tokens/s, achieved TFLOP/s, peak GPU memory, and PyTorch
 * (bench/torch_reference.py: f32 eager, bf16 autocast, bf16 + torch.compile, fused AdamW) measured
 * in the same call, with the ratios.
 *
 *   node dist/bench/gpu-train.js --config tiny|pythia-70m|pythia-160m|pythia-410m[,...] [--backends cuda,webgpu]
 *        [--steps N] [--warmup N] [--torch python3 | --no-torch] [--torch-modes f32,bf16,bf16-compile]
 *        [--unfused] [--check | --check-only] [--check-scale small|pythia] [--profile 1]
 *
 * --check first runs the kernel correctness checks on the card, one JSON line each: for webgpu, each
 * operation's case from its file in core/model/webgpu, run by check.ts, at the shapes of a
 * Pythia-70M step (fused kernels against tfjs's stock webgpu kernels, plus a whole Pythia-70M-shaped
 * model's gradients); for cuda, core/model/cuda/check.ts (every operation and tfjs kernel against
 * the cpu backend, in f32 and in mixed precision; a Pythia-70M-shaped model's gradients and 300
 * training steps against webgpu in f32; transformers' logits of the committed fixtures).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { initBackend } from '../core/model/backend.js';
import { presetConfig } from '../core/model/index.js';
import { attentionCase } from '../core/model/webgpu/attention.js';
import { type KernelCase, matmulCase, modelGradientCheck, runCase } from '../core/model/webgpu/check.js';
import { crossEntropyCase } from '../core/model/webgpu/cross-entropy.js';
import { topKCase } from '../core/model/webgpu/distill.js';
import { embeddingCase } from '../core/model/webgpu/embedding.js';
import { layerNormCase } from '../core/model/webgpu/layer-norm.js';
import { linearCase, logitsCase } from '../core/model/webgpu/linear.js';
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
    embeddingCase(V, D, N, 1e-4),
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
  else pass.push(a);
}

if (check && backends.includes('cuda')) {
  const cuda = await import('../core/model/cuda/check.js');
  await initBackend('cuda', (m) => console.log(JSON.stringify({ bench: 'gpu-check', backend: m })));
  const log = (line: Record<string, unknown>) =>
    console.log(JSON.stringify({ bench: 'gpu-check', backend: 'cuda', ...line }));
  let failed = await cuda.runCudaChecks(checkScale, log);
  failed += await cuda.modelGradientChecks(2, 128, log);
  failed += await cuda.curveCheck(300, 8, 128, log);
  // The fixtures sit in the source tree: test/fixtures/neox beside bench/, two levels up from dist/bench.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const fixtures = [
    path.join(here, '..', 'test', 'fixtures', 'neox'),
    path.join(here, '..', '..', 'test', 'fixtures', 'neox'),
  ].find((d) => fs.existsSync(d));
  if (fixtures) failed += await cuda.parityChecks(fixtures, log);
  console.log(JSON.stringify({ bench: 'gpu-check', backend: 'cuda', failed }));
}

if (check && backends.includes('webgpu')) {
  await initBackend('webgpu', () => {});
  let failed = 0;
  for (const c of pythiaScaleCases(shrink)) {
    const t0 = performance.now();
    const r = await runCase(c, 'webgpu-unfused');
    if (!r.ok) failed++;
    console.log(
      JSON.stringify({
        bench: 'gpu-check',
        case: r.name,
        ok: r.ok,
        valueErr: r.valueErr,
        gradErrs: r.gradErrs,
        tol: r.tol,
        ms: Math.round(performance.now() - t0),
      }),
    );
  }
  const seq = Math.max(8, Math.round(512 / shrink));
  const t0 = performance.now();
  const m = await modelGradientCheck(presetConfig('pythia-70m', 50304), 2, seq, 'webgpu-unfused');
  const ok = m.lossDiff < 1e-4 && m.worstGradient.err < 1e-3;
  if (!ok) failed++;
  console.log(
    JSON.stringify({
      bench: 'gpu-check',
      case: `pythia-70m model, batch 2 × ${seq}: loss and all gradients vs unfused`,
      ok,
      ...m,
      ms: Math.round(performance.now() - t0),
    }),
  );
  console.log(JSON.stringify({ bench: 'gpu-check', failed }));
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
