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
 * --check first runs the kernel correctness checks on the card, one JSON line each: for webgpu,
 * core/model/webgpu/check.ts at the shapes of a Pythia-70M step (fused kernels against tfjs's stock
 * webgpu kernels, plus a whole Pythia-70M-shaped model's gradients); for cuda,
 * core/model/cuda/check.ts (every operation and tfjs kernel against the cpu backend, in f32 and in
 * mixed precision).
 */
import { initBackend } from '../core/model/backend.js';
import { presetConfig } from '../core/model/index.js';
import { modelGradientCheck, pythiaScaleCases, runCase } from '../core/model/webgpu/check.js';
import { main as throughput } from './train-throughput.js';

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
  const { runCudaChecks } = await import('../core/model/cuda/check.js');
  await initBackend('cuda', (m) => console.log(JSON.stringify({ bench: 'gpu-check', backend: m })));
  const failed = await runCudaChecks(checkScale, (line) => console.log(JSON.stringify({ bench: 'gpu-check', backend: 'cuda', ...line })));
  console.log(JSON.stringify({ bench: 'gpu-check', backend: 'cuda', failed }));
}

if (check && backends.includes('webgpu')) {
  await initBackend('webgpu', () => {});
  let failed = 0;
  for (const c of pythiaScaleCases(shrink)) {
    const t0 = performance.now();
    const r = await runCase(c, 'webgpu-unfused');
    if (!r.ok) failed++;
    console.log(JSON.stringify({ bench: 'gpu-check', case: r.name, ok: r.ok, valueErr: r.valueErr, gradErrs: r.gradErrs, tol: r.tol, ms: Math.round(performance.now() - t0) }));
  }
  const seq = Math.max(8, Math.round(512 / shrink));
  const t0 = performance.now();
  const m = await modelGradientCheck(presetConfig('pythia-70m', 50304), 2, seq, 'webgpu-unfused');
  const ok = m.lossDiff < 1e-4 && m.worstGradient.err < 1e-3;
  if (!ok) failed++;
  console.log(JSON.stringify({ bench: 'gpu-check', case: `pythia-70m model, batch 2 × ${seq}: loss and all gradients vs unfused`, ok, ...m, ms: Math.round(performance.now() - t0) }));
  console.log(JSON.stringify({ bench: 'gpu-check', failed }));
}

if (checkOnly) process.exit(0);
const measured = unfused ? backends.flatMap((b) => (b === 'webgpu' ? ['webgpu', 'webgpu-unfused'] : [b])) : backends;
await throughput(['--config', configs, '--backends', measured.join(','), ...(torch ? ['--torch', torch, '--torch-modes', torchModes] : []), ...pass], (line) =>
  console.log(JSON.stringify({ ...line, bench: 'gpu-train' })),
);
