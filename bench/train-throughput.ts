/**
 * Training throughput: tokens/s of offshoot's training step (forward, backward, AdamW) per backend,
 * one JSON line each, with the ratio to a baseline measured in the same run: PyTorch on the same
 * shape when `--torch PYTHON` is given (the GPU machine), else the best of the other backends.
 *
 *   node dist/bench/train-throughput.js --config sotu-teacher [--backends cpu,wasm,webgpu,tensorflow]
 *        [--steps 10] [--warmup 2] [--batch-size B] [--seq-len T] [--torch python3] [--torch-device cuda]
 *
 * Each backend runs in its own child process, so one backend's memory or crash does not touch another.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { type BackendName, initBackend } from '../core/model/backend.js';
import { GPTNeoX, MODEL_PRESETS, Trainer, parameterCount, presetConfig } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';

/** Batch shape and vocabulary per preset (the pythia shapes use Pythia's own). */
const SHAPES: Record<string, { vocab: number; batchSize: number; seqLen: number }> = {
  tiny: { vocab: 256, batchSize: 8, seqLen: 64 },
  'sotu-teacher': { vocab: 1024, batchSize: 8, seqLen: 64 },
  '10m': { vocab: 1024, batchSize: 8, seqLen: 128 },
  'pythia-70m': { vocab: 50304, batchSize: 8, seqLen: 512 },
  'pythia-160m': { vocab: 50304, batchSize: 8, seqLen: 512 },
};

interface Args {
  config: string;
  backends: BackendName[];
  steps: number;
  warmup: number;
  batchSize?: number;
  seqLen?: number;
  torch?: string;
  torchDevice: string;
  only?: BackendName;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { config: 'sotu-teacher', backends: ['cpu', 'wasm', 'webgpu', 'tensorflow'], steps: 10, warmup: 2, torchDevice: 'cuda' };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[++i];
    if (value === undefined) throw new Error(`${key} needs a value`);
    const int = (): number => {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${key} must be a positive integer, got ${value}`);
      return n;
    };
    switch (key) {
      case '--config':
        if (!(value in SHAPES)) throw new Error(`--config must be one of ${Object.keys(SHAPES).join(', ')}`);
        args.config = value;
        break;
      case '--backends':
        args.backends = value.split(',') as BackendName[];
        break;
      case '--steps':
        args.steps = int();
        break;
      case '--warmup':
        args.warmup = int();
        break;
      case '--batch-size':
        args.batchSize = int();
        break;
      case '--seq-len':
        args.seqLen = int();
        break;
      case '--torch':
        args.torch = value;
        break;
      case '--torch-device':
        args.torchDevice = value;
        break;
      case '--only':
        args.only = value as BackendName;
        break;
      default:
        throw new Error(`unknown argument ${key}`);
    }
  }
  return args;
}

interface Measurement {
  backend: string;
  tokensPerSecond?: number;
  stepMs?: number;
  error?: string;
  detail?: string;
  peakRssMiB?: number;
}

/** Runs in the child: trains `warmup + steps` steps on synthetic tokens and times the last `steps`. */
async function measure(args: Args, backend: BackendName): Promise<Measurement> {
  const info = await initBackend(backend, () => {});
  const shape = SHAPES[args.config];
  const batchSize = args.batchSize ?? shape.batchSize;
  const seqLen = args.seqLen ?? shape.seqLen;
  const config = presetConfig(args.config, shape.vocab);
  const n = batchSize * seqLen;
  const batches = (step: number) => {
    const input = new Int32Array(n);
    const target = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      input[i] = (i * 7919 + step * 104729) % shape.vocab;
      target[i] = (i * 7919 + step * 104729 + 1) % shape.vocab;
    }
    return { batchSize, seqLen, input, target };
  };
  const total = args.warmup + args.steps;
  const trainer = new Trainer(GPTNeoX.random(config, 1), {
    hyper: { steps: total, batchSize, seqLen, schedule: { maxLr: 1e-4, minLr: 1e-5, warmupSteps: 1, totalSteps: total }, adamw: {}, gradClip: 1, seed: 1 },
    batches,
  });
  const step = async (read: boolean) => {
    const { loss, gradNorm } = await trainer.trainStep();
    if (read) await loss.data();
    tf.dispose([loss, gradNorm]);
  };
  for (let i = 0; i < args.warmup; i++) await step(true);
  const t0 = performance.now();
  for (let i = 0; i < args.steps; i++) await step(i === args.steps - 1);
  const ms = (performance.now() - t0) / args.steps;
  trainer.dispose();
  return {
    backend,
    tokensPerSecond: (n * 1000) / ms,
    stepMs: ms,
    detail: info.detail,
    peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024),
  };
}

function lastJsonLine(text: string): Record<string, unknown> | undefined {
  const lines = text.trim().split('\n').filter((l) => l.startsWith('{'));
  return lines.length ? JSON.parse(lines[lines.length - 1]) : undefined;
}

function runTorch(args: Args): Measurement {
  const shape = SHAPES[args.config];
  const preset = MODEL_PRESETS[args.config];
  // Beside this file in the source tree; two levels up from dist/bench/ in a build.
  const here = path.dirname(fileURLToPath(import.meta.url));
  const script = [path.join(here, 'torch_reference.py'), path.join(here, '..', '..', 'bench', 'torch_reference.py')].find((f) => fs.existsSync(f))!;
  const res = spawnSync(
    args.torch!,
    [
      script,
      '--vocab', String(shape.vocab),
      '--hidden', String(preset.hiddenSize),
      '--layers', String(preset.numLayers),
      '--heads', String(preset.numHeads),
      '--batch-size', String(args.batchSize ?? shape.batchSize),
      '--seq-len', String(args.seqLen ?? shape.seqLen),
      '--steps', String(args.steps),
      '--warmup', String(args.warmup),
      '--device', args.torchDevice,
    ],
    { encoding: 'utf8', env: { ...process.env, PYTHONUNBUFFERED: '1' } },
  );
  const parsed = lastJsonLine(res.stdout ?? '');
  if (res.status !== 0 || !parsed) return { backend: 'pytorch', error: (res.stderr || res.stdout || 'failed').trim().split('\n').slice(-3).join(' | ') };
  return { backend: 'pytorch', tokensPerSecond: parsed.tokensPerSecond as number, stepMs: parsed.stepMs as number, detail: parsed.detail as string };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.only) {
    try {
      console.log(JSON.stringify(await measure(args, args.only)));
    } catch (err) {
      console.log(JSON.stringify({ backend: args.only, error: (err as Error).message.split('\n')[0] }));
    }
    return;
  }
  const self = fileURLToPath(import.meta.url);
  const results: Measurement[] = [];
  for (const backend of args.backends) {
    const res = spawnSync(process.execPath, [...process.execArgv, self, ...process.argv.slice(2), '--only', backend], { encoding: 'utf8' });
    results.push((lastJsonLine(res.stdout ?? '') as Measurement | undefined) ?? { backend, error: `exited ${res.status}: ${(res.stderr ?? '').trim().split('\n').pop()}` });
  }
  const torch = args.torch ? runTorch(args) : undefined;
  const shape = SHAPES[args.config];
  const config = presetConfig(args.config, shape.vocab);
  const common = {
    bench: 'train-throughput',
    config: args.config,
    parameters: parameterCount(config),
    batchSize: args.batchSize ?? shape.batchSize,
    seqLen: args.seqLen ?? shape.seqLen,
    steps: args.steps,
  };
  for (const r of results) {
    if (r.error) {
      console.log(JSON.stringify({ ...common, backend: r.backend, unavailable: r.error }));
      continue;
    }
    let baseline: Measurement | undefined;
    if (torch?.tokensPerSecond) baseline = torch;
    else {
      for (const o of results) {
        if (o !== r && o.tokensPerSecond && (!baseline || o.tokensPerSecond > baseline.tokensPerSecond!)) baseline = o;
      }
    }
    console.log(
      JSON.stringify({
        ...common,
        backend: r.backend,
        detail: r.detail,
        tokensPerSecond: Math.round(r.tokensPerSecond!),
        stepMs: Number(r.stepMs!.toFixed(1)),
        peakRssMiB: r.peakRssMiB,
        baseline: baseline ? (baseline === torch ? `pytorch ${torch.detail}` : `best other backend: ${baseline.backend}`) : null,
        baselineTokensPerSecond: baseline ? Math.round(baseline.tokensPerSecond!) : null,
        ratio: baseline ? Number((r.tokensPerSecond! / baseline.tokensPerSecond!).toFixed(3)) : null,
      }),
    );
  }
  if (torch) console.log(JSON.stringify({ ...common, backend: 'pytorch', ...(torch.error ? { unavailable: torch.error } : { tokensPerSecond: Math.round(torch.tokensPerSecond!), stepMs: torch.stepMs, detail: torch.detail }) }));
}

await main();
