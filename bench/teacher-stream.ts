/**
 * Teacher-service throughput: tokens/s of top-k logits a student receives through gRPC (a real
 * `offshoot teacher serve` child process on loopback, the client's prefetch window, decoding and the
 * tensors the training loop gets) against the same teacher forward and top-k in this process, and
 * their ratio. One JSON line. Goal: the stream costs at most 10% over in-process (ratio ≥ 0.9).
 *
 *   npx tsx bench/teacher-stream.ts [--config sotu-teacher] [--vocab 1024] [--batch-size 8] [--seq-len 128]
 *        [--top-k 64] [--encoding f16|f32] [--window 4] [--requests 40] [--warmup 4] [--backend wasm]
 *
 * The teacher has random weights (throughput does not depend on them). Both sides use the same backend.
 * The two are measured in alternating rounds (the server idle during in-process rounds, this process
 * only decoding during stream rounds), and the medians reported, so that load from other processes on
 * the machine hits both alike.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import { type BackendName, initBackend, parseBackendChoice } from '../core/model/backend.js';
import {
  type Batch,
  GPTNeoX,
  MODEL_PRESETS,
  inProcessTeacher,
  parameterCount,
  presetConfig,
  saveCheckpoint,
} from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { StreamingTeacher, TeacherClient } from '../services/teacher/index.js';

interface Args {
  config: string;
  vocab: number;
  batchSize: number;
  seqLen: number;
  topK: number;
  encoding: 'f16' | 'f32';
  window: number;
  rounds: number;
  requests: number;
  warmup: number;
  backend: BackendName;
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    config: 'sotu-teacher',
    vocab: 1024,
    batchSize: 8,
    seqLen: 128,
    topK: 64,
    encoding: 'f16',
    window: 4,
    rounds: 5,
    requests: 12,
    warmup: 4,
    backend: 'wasm',
  };
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
        if (!(value in MODEL_PRESETS))
          throw new Error(`--config must be one of ${Object.keys(MODEL_PRESETS).join(', ')}`);
        args.config = value;
        break;
      case '--vocab':
        args.vocab = int();
        break;
      case '--batch-size':
        args.batchSize = int();
        break;
      case '--seq-len':
        args.seqLen = int();
        break;
      case '--top-k':
        args.topK = int();
        break;
      case '--encoding':
        if (value !== 'f16' && value !== 'f32') throw new Error('--encoding must be f16 or f32');
        args.encoding = value;
        break;
      case '--window': {
        const n = Number(value);
        if (!Number.isSafeInteger(n) || n < 0) throw new Error(`--window must be a non-negative integer, got ${value}`);
        args.window = n;
        break;
      }
      case '--rounds':
        args.rounds = int();
        break;
      case '--requests':
        args.requests = int();
        break;
      case '--warmup':
        args.warmup = int();
        break;
      case '--backend': {
        const b = parseBackendChoice(value);
        if (b === 'auto') throw new Error('--backend must name one backend, so both sides use the same');
        args.backend = b;
        break;
      }
      default:
        throw new Error(`unknown argument ${key}`);
    }
  }
  return args;
}

function batchSource(args: Args): (step: number) => Batch {
  const n = args.batchSize * args.seqLen;
  return (step) => {
    const input = new Int32Array(n);
    for (let i = 0; i < n; i++) input[i] = (i * 7919 + step * 104729) % args.vocab;
    return { batchSize: args.batchSize, seqLen: args.seqLen, input, target: input };
  };
}

/** Tokens/s of `get(step)` over `requests` consecutive steps from `first`. */
async function time(args: Args, first: number, get: (step: number) => Promise<void>): Promise<number> {
  const t0 = performance.now();
  for (let s = first; s < first + args.requests; s++) await get(s);
  const seconds = (performance.now() - t0) / 1000;
  return (args.requests * args.batchSize * args.seqLen) / seconds;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function startServer(
  model: string,
  backend: BackendName,
  maxBatchTokens: number,
): Promise<{ child: ChildProcess; port: number }> {
  // The CLI of the same tree as this file: the TypeScript through tsx from the sources, else the build.
  const self = fileURLToPath(import.meta.url);
  const here = path.dirname(self);
  const cli = self.endsWith('.ts')
    ? ['--import', import.meta.resolve('tsx'), path.join(here, '..', 'services', 'cli', 'main.ts')]
    : [path.join(here, '..', 'services', 'cli', 'main.js')];
  const child = spawn(
    process.execPath,
    [...cli, 'teacher', 'serve', '--model', model, '--port', '0', '--max-batch-tokens', String(maxBatchTokens)],
    {
      env: { ...process.env, OFFSHOOT_BACKEND: backend },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const line = out.split('\n').find((l) => l.includes('"listening"'));
      if (line) resolve({ child, port: (JSON.parse(line) as { port: number }).port });
    });
    child.once('exit', (code) => reject(new Error(`teacher server exited (${code}) before listening:\n${err}`)));
  });
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  await initBackend(args.backend, () => {});
  const config = presetConfig(args.config, args.vocab);
  const model = GPTNeoX.random(config, 1);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-bench-teacher-'));
  const tokens = args.batchSize * args.seqLen;
  let child: ChildProcess | undefined;
  try {
    await saveCheckpoint(dir, config, await model.toHost());
    const batches = batchSource(args);

    // In process: forward, top-k and log-normaliser on the backend, read back (the sync a consumer pays).
    const local = inProcessTeacher(model, { topK: args.topK });
    const inProcessStep = async (step: number): Promise<void> => {
      const view = (await local.forBatch(batches(step), step)) as Exclude<
        Awaited<ReturnType<typeof local.forBatch>>,
        tf.Tensor
      >;
      await Promise.all([view.indices.data(), view.logits.data(), view.logNormaliser.data()]);
      tf.dispose([view.indices, view.logits, view.logNormaliser]);
    };

    // Through gRPC: what the training loop gets from StreamingTeacher (prefetching `window` steps ahead).
    const server = await startServer(dir, args.backend, Math.max(8192, tokens));
    child = server.child;
    const client = new TeacherClient({ targets: `127.0.0.1:${server.port}` });
    await client.ready();
    let bytes = 0;
    let received = 0;
    const streamRound = async (first: number): Promise<number> => {
      const teacher = new StreamingTeacher(client, {
        topK: args.topK,
        encoding: args.encoding,
        batches,
        window: args.window,
      });
      const rate = await time(args, first, async (step) => {
        const view = await teacher.forBatch(batches(step), step);
        bytes +=
          view.indices.size * (args.vocab <= 65536 ? 2 : 4) +
          view.logits.size * (args.encoding === 'f16' ? 2 : 4) +
          view.logNormaliser.size * 4;
        received += tokens;
        tf.dispose([view.indices, view.logits, view.logNormaliser]);
      });
      // Let the requests made ahead finish, so the server is idle during the next in-process round.
      for (;;) {
        const m = await client.metrics();
        if (m.queueDepth === 0 && m.streams.every((x) => x.unanswered === 0)) break;
        await new Promise((r) => setTimeout(r, 20));
      }
      return rate;
    };

    for (let s = 0; s < args.warmup; s++) await inProcessStep(s);
    await streamRound(0);
    const inProcessRates: number[] = [];
    const streamRates: number[] = [];
    for (let round = 0; round < args.rounds; round++) {
      const first = 1000 * (round + 1);
      inProcessRates.push(await time(args, first, inProcessStep));
      streamRates.push(await streamRound(first));
    }
    model.dispose();
    const inProcess = median(inProcessRates);
    const stream = median(streamRates);
    const ratios = inProcessRates.map((r, i) => streamRates[i] / r);
    const m = await client.metrics();
    client.close();
    const ratio = stream / inProcess;
    console.log(
      JSON.stringify({
        bench: 'teacher-stream',
        config: args.config,
        parameters: parameterCount(config),
        vocab: args.vocab,
        backend: args.backend,
        batchSize: args.batchSize,
        seqLen: args.seqLen,
        topK: args.topK,
        encoding: args.encoding,
        window: args.window,
        rounds: args.rounds,
        requestsPerRound: args.requests,
        inProcessTokensPerSecond: Math.round(inProcess),
        streamTokensPerSecond: Math.round(stream),
        ratio: Number(ratio.toFixed(3)),
        ratioPerRound: ratios.map((r) => Number(r.toFixed(3))),
        streamOverheadPct: Number(((1 / ratio - 1) * 100).toFixed(1)),
        goalMet: ratio >= 1 / 1.1,
        serverComputeTokensPerSecond: Math.round(m.tokensServed / m.busySeconds),
        bytesPerToken: Math.round(bytes / received),
        cpus: os.cpus().length,
      }),
    );
  } finally {
    child?.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

try {
  await main();
} catch (err) {
  process.stderr.write(`teacher-stream: ${(err as Error).message}\n`);
  process.exit(1);
}
