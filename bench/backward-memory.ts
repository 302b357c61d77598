/**
 * Memory of the backward pass: the peak bytes of tensors alive while a model's loss and gradients are
 * computed by tfjs's own `tf.variableGrads` (every saved tensor and intermediate gradient kept to the
 * end) and by offshoot's `variableGradients` (each freed once the backward has passed it), on the same
 * model, batch and backend in one run. One JSON line per config, with the ratio (goal: well under 1;
 * it falls as the model deepens, since only one layer's intermediates are alive at a time).
 *
 *   npx tsx bench/backward-memory.ts [--config 10m,pythia-70m] [--backend wasm] [--batch-size 1] [--seq-len 512]
 *
 * Bytes are tfjs's count (4 a float32 value whatever the backend stores), so the figure is the same on
 * every backend; bench/gpu-train's peakGpuMiB is what a GPU's allocator holds.
 */
import { type BackendName, initBackend } from '../core/model/backend.js';
import { variableGradients } from '../core/model/gradients.js';
import { parameterCount } from '../core/model/config.js';
import { GPTNeoX, MODEL_PRESETS, crossEntropy, presetConfig } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';

const EMBEDDED_VOCAB = 1024;

interface Args {
  configs: string[];
  backend: BackendName;
  batchSize: number;
  seqLen: number;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { configs: ['10m', 'pythia-70m'], backend: 'wasm', batchSize: 1, seqLen: 512 };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key} needs a value`);
    const positive = (): number => {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${key} must be a positive integer, got ${value}`);
      return n;
    };
    if (key === '--config') {
      args.configs = value.split(',');
      for (const c of args.configs)
        if (!(c in MODEL_PRESETS))
          throw new Error(`--config must be among ${Object.keys(MODEL_PRESETS).join(', ')}, got ${c}`);
    } else if (key === '--backend') args.backend = value as BackendName;
    else if (key === '--batch-size') args.batchSize = positive();
    else if (key === '--seq-len') args.seqLen = positive();
    else throw new Error(`unknown option ${key} (--config, --backend, --batch-size, --seq-len)`);
  }
  return args;
}

type Differentiate = typeof variableGradients;

async function peakBytes(model: GPTNeoX, ids: tf.Tensor2D, targets: tf.Tensor1D, differentiate: Differentiate) {
  let out: ReturnType<Differentiate> | undefined;
  const t0 = performance.now();
  const info = await tf.profile(() => {
    out = differentiate(() => crossEntropy(model.logits2d(ids), targets), model.variables());
  });
  await out!.value.data();
  const ms = performance.now() - t0;
  tf.dispose([out!.value, ...Object.values(out!.grads)]);
  return { peak: info.peakBytes, ms };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  await initBackend(args.backend, () => {});
  const mib = (b: number) => Math.round(b / 2 ** 20);
  for (const name of args.configs) {
    // Pythia's presets fix their vocabulary; the others take the embedded tokenizer's size.
    const config = presetConfig(name, EMBEDDED_VOCAB);
    const [B, T] = [args.batchSize, Math.min(args.seqLen, config.maxPositions)];
    const model = GPTNeoX.random(config, 1);
    const ids = tf.tensor2d(
      Int32Array.from({ length: B * T }, (_, i) => (i * 7919) % config.vocabSize),
      [B, T],
      'int32',
    );
    const targets = tf.tensor1d(
      Int32Array.from({ length: B * T }, (_, i) => (i * 104_729 + 1) % config.vocabSize),
      'int32',
    );
    const tfjs = await peakBytes(model, ids, targets, tf.variableGrads as Differentiate);
    const lean = await peakBytes(model, ids, targets, variableGradients);
    const weights = parameterCount(config) * 4;
    process.stdout.write(
      `${JSON.stringify({
        bench: 'backward-memory',
        config: name,
        backend: args.backend,
        batch: B,
        seqLen: T,
        weightsMiB: mib(weights),
        peakMiB: mib(lean.peak),
        tfjsPeakMiB: mib(tfjs.peak),
        ratio: Number((lean.peak / tfjs.peak).toFixed(3)),
        /** Above the weights: activations, saved tensors and gradients. */
        workingRatio: Number(((lean.peak - weights) / (tfjs.peak - weights)).toFixed(3)),
        ms: Math.round(lean.ms),
        tfjsMs: Math.round(tfjs.ms),
      })}\n`,
    );
    tf.dispose([ids, targets]);
    model.dispose();
  }
}

await main();
