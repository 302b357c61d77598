/**
 * The cuda backend's own code, unchanged, on the CPU: the CUDA emulator (helpers/cuda-emulator)
 * stands in for the driver, NVRTC and cuBLASLt, compiling the kernels' CUDA C++ for the CPU and
 * running a block's threads as fibers. So what the backend does around the kernels (launch arguments,
 * storage types, the allocator, bf16 weight copies, AdamW's tables, the recomputed attention, graph
 * capture and replay) and the kernels' logic (barriers, shuffles, the radix top-k) are checked in CI
 * against the cpu backend, and the allocator's memory at Pythia's shapes (the emulator without its
 * arithmetic). What only a GPU shows (speed, the hardware's own rounding order in products, races
 * between blocks) is checked on one: test/cuda-backend.test.ts and bench/gpu-train --check.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { initBackend } from '../core/model/backend.js';
import { textBatches, trainCurve } from '../core/model/curve.js';
import {
  GPTNeoX,
  Trainer,
  inProcessTeacher,
  loadCheckpoint,
  runRepeatedPass,
  topKFromLogits,
  trainingHyperparameters,
} from '../core/model/index.js';
import { setPrecision } from '../core/model/precision.js';
import * as tf from '../core/model/tfjs.js';
import { TeacherClient } from '../services/teacher/index.js';
import { useCudaEmulator } from './helpers/cuda-emulator.js';
import { startTeacher, stopAllTeachers } from './helpers/teacher.js';
import {
  straightAndResumed,
  syntheticBatches,
  alternatingTeacherPasses,
  tinyConfig,
  tinyHyper,
} from './helpers/tiny.js';

let compilerReason: string | null = null;
try {
  execFileSync(process.env.CXX || 'g++', ['--version'], { stdio: 'pipe' });
} catch {
  compilerReason = 'no C++ compiler (g++) to build the emulator';
}

describe.skipIf(!!compilerReason)(
  `cuda backend on the CPU emulator${compilerReason ? ` (skipped: ${compilerReason})` : ''}`,
  () => {
    let restore = () => {};
    const config = tinyConfig({ vocabSize: 256, hiddenSize: 64, numLayers: 2, numHeads: 4 });
    const steps = 8;
    let batches: Awaited<ReturnType<typeof textBatches>>;
    const curve = async (backend: 'cpu' | 'cuda', precision: 'f32' | 'mixed' = 'f32') => {
      await initBackend(backend, () => {});
      setPrecision(precision);
      try {
        return (await trainCurve(GPTNeoX.random(config, 7), batches, { lr: 3e-3, warmup: 2 })).losses;
      } finally {
        setPrecision(null);
      }
    };

    beforeAll(async () => {
      restore = useCudaEmulator();
      batches = await textBatches(steps, 2, 32);
      const message = { value: '' };
      await initBackend('cuda', (m) => (message.value = m));
      expect(message.value).toMatch(/offshoot CUDA emulator/);
    });
    afterAll(() => restore());

    it('every operation and tfjs kernel matches the cpu backend in f32 and mixed precision', async () => {
      const { runCudaChecks } = await import('../core/model/cuda/check.js');
      const lines: Array<Record<string, unknown>> = [];
      const failed = await runCudaChecks('small', (line) => lines.push(line));
      expect(lines.filter((l) => !l.ok)).toEqual([]);
      expect(failed).toBe(0);
      // Both precisions of every case ran, the attention with its recomputed softmax and the GPU top-k among them.
      const names = lines.map((l) => String(l.name));
      expect(names.filter((n) => n.startsWith('causal attention')).length).toBe(6);
      expect(names.filter((n) => n.startsWith('tfjs: topk')).length).toBe(2);
    }, 600_000);

    it("a model's loss and every parameter's gradient match the cpu backend's (f32) and stay close in mixed precision", async () => {
      const { modelGradientChecks } = await import('../core/model/cuda/check.js');
      const lines: Array<Record<string, unknown>> = [];
      const failed = await modelGradientChecks(2, 32, (l) => lines.push(l), { name: 'tiny', config, reference: 'cpu' });
      expect(lines.map((l) => [l.precision, l.ok])).toEqual([
        ['f32', true],
        ['mixed', true],
      ]);
      expect(failed).toBe(0);
    }, 300_000);

    it("transformers' logits of the committed fixtures, in f32 within 1e-4", async () => {
      const { parityChecks } = await import('../core/model/cuda/check.js');
      const lines: Array<Record<string, unknown>> = [];
      const failed = await parityChecks(path.join(import.meta.dirname, 'fixtures', 'neox'), (l) => lines.push(l));
      expect(lines.filter((l) => l.precision === 'f32').length).toBeGreaterThan(0);
      expect(lines.filter((l) => !l.ok)).toEqual([]);
      expect(failed).toBe(0);
    }, 300_000);

    it("training steps, eager and then replayed from a captured CUDA graph, give the cpu backend's losses (f32)", async () => {
      const { graphStats } = await import('../core/model/cuda/register.js');
      const cpu = await curve('cpu');
      const before = { ...(await cudaStats(graphStats)) };
      const cuda = await curve('cuda');
      const after = await cudaStats(graphStats);
      expect(after.captures - before.captures).toBe(1);
      expect(after.replays - before.replays).toBe(steps - 3);
      expect(cuda).toHaveLength(steps);
      for (let i = 0; i < steps; i++) expect(Math.abs(cuda[i] - cpu[i]), `step ${i}`).toBeLessThan(1e-4);
      expect(cpu[steps - 1]).toBeLessThan(cpu[0] - 0.5);
    }, 300_000);

    it("distillation steps (a teacher's top-k, or its full logits) are captured as graphs too, with the cpu backend's losses", async () => {
      const { graphStats } = await import('../core/model/cuda/register.js');
      const kd = async (backend: 'cpu' | 'cuda', topK?: number) => {
        await initBackend(backend, () => {});
        const teacher = GPTNeoX.random(config, 11);
        const losses: number[] = [];
        const trainer = new Trainer(GPTNeoX.random(config, 7), {
          hyper: trainingHyperparameters({ steps, lr: 3e-3, warmup: 2 }, { batchSize: 2, seqLen: 32, seed: 1 }),
          batches: (step) => batches[step],
          teacher: inProcessTeacher(teacher, topK ? { topK } : {}),
          distill: { alpha: 0.5, temperature: 2, direction: 'forward' },
          reportEvery: 1,
          onStep: (r) => losses.push(r.loss),
        });
        await trainer.run();
        trainer.dispose();
        teacher.dispose();
        return losses;
      };
      for (const topK of [8, undefined]) {
        const cpu = await kd('cpu', topK);
        const before = await cudaStats(graphStats);
        const cuda = await kd('cuda', topK);
        const after = await cudaStats(graphStats);
        expect(after.captures - before.captures, `top-k ${topK}`).toBe(1);
        expect(after.replays - before.replays, `top-k ${topK}`).toBe(steps - 3);
        // The fused distillation kernel sums in its own order (its operation check allows 5e-4): measured
        // 1e-4 apart at the first step and no more later.
        for (let i = 0; i < steps; i++)
          expect(Math.abs(cuda[i] - cpu[i]), `top-k ${topK}, step ${i}`).toBeLessThan(5e-4);
      }
    }, 300_000);

    it("a teacher's repeated forward pass and top-k are replayed from a CUDA graph, each with its own tokens' answer", async () => {
      const { graphStats } = await import('../core/model/cuda/register.js');
      await initBackend('cuda', () => {});
      const model = GPTNeoX.random(config, 11);
      try {
        const before = graphStats();
        // Two eager passes, then the third captured and launched, and replays; the two token sets alternate.
        const answers = await alternatingTeacherPasses(model, 2, 16, 8);
        const after = graphStats();
        expect(after.captures - before.captures).toBe(1);
        expect(after.replays - before.replays).toBe(4);
        expect(answers[0]).not.toEqual(answers[1]);
        for (let i = 2; i < 6; i++) expect(answers[i], `pass ${i}`).toEqual(answers[i % 2]);
      } finally {
        model.dispose();
      }
    }, 300_000);

    it('keeps the CUDA graphs of the eight shapes run last; one dropped is captured again', async () => {
      const { graphStats } = await import('../core/model/cuda/register.js');
      await initBackend('cuda', () => {});
      const ids = Int32Array.from({ length: 8 }, (_, i) => i);
      // Passes of different kinds are different shapes to the runner.
      const pass = async (kind: number) => {
        const [out] = runRepeatedPass({
          key: `kind ${kind}`,
          inputs: [{ shape: [8], dtype: 'int32', data: ids }],
          state: [],
          body: ([t]) => [tf.add(tf.cast(t, 'float32'), kind)],
        });
        const first = (await out.data())[0];
        out.dispose();
        return first;
      };
      const before = graphStats();
      for (let kind = 0; kind < 9; kind++) for (let i = 0; i < 3; i++) expect(await pass(kind)).toBe(kind);
      const nine = graphStats();
      expect(nine.captures - before.captures).toBe(9);
      // Kind 8 is kept and replays; kind 0 made way for it, so it starts over: two eager passes, a capture.
      for (let i = 0; i < 3; i++) await pass(8);
      const kept = graphStats();
      expect([kept.captures - nine.captures, kept.replays - nine.replays]).toEqual([0, 3]);
      for (let i = 0; i < 3; i++) expect(await pass(0)).toBe(0);
      expect(graphStats().captures - kept.captures).toBe(1);
    }, 300_000);

    it('resuming from a periodic checkpoint, read back while the next steps were queued, gives the uninterrupted weights bit for bit', async () => {
      await initBackend('cuda', () => {});
      const hyper = tinyHyper(6, { batchSize: 2, seqLen: 16 });
      const synthetic = syntheticBatches(config.vocabSize, hyper.batchSize, hyper.seqLen, 3);
      const { expected, resumed, stoppedAt, resumedAt } = await straightAndResumed(config, hyper, synthetic, 3);
      expect([stoppedAt, resumedAt]).toEqual([3, 3]);
      for (const [name, t] of expected)
        expect(Buffer.from(resumed.get(name)!.data.buffer).equals(Buffer.from(t.data.buffer)), name).toBe(true);
    }, 300_000);

    it('the same steps run eagerly (OFFSHOOT_CUDA_GRAPHS=0) give the replayed losses bit for bit', async () => {
      const replayed = await curve('cuda');
      process.env.OFFSHOOT_CUDA_GRAPHS = '0';
      try {
        expect(await curve('cuda')).toEqual(replayed);
      } finally {
        delete process.env.OFFSHOOT_CUDA_GRAPHS;
      }
    }, 300_000);

    it('mixed precision (bf16 activations and products, f32 master weights) follows the f32 curve', async () => {
      const f32 = await curve('cuda');
      const mixed = await curve('cuda', 'mixed');
      expect(mixed).toHaveLength(steps);
      for (let i = 0; i < steps; i++) expect(Math.abs(mixed[i] - f32[i]), `step ${i}`).toBeLessThan(0.05);
      expect(mixed[steps - 1]).toBeLessThan(mixed[0] - 0.5);
    }, 300_000);
  },
);

async function cudaStats(stats: () => { captures: number; replays: number }) {
  await initBackend('cuda', () => {});
  return stats();
}

const ROOT = path.join(import.meta.dirname, '..');

/** A TypeScript entry point of the project (through tsx) as a child process; auto picks the backend unless told. */
function runTs(
  script: string,
  args: string[],
  cwd: string,
  extraEnv: Record<string, string> = {},
): { status: number | null; stdout: string; stderr: string } {
  const { OFFSHOOT_BACKEND: _, ...env } = process.env;
  const r = spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), path.join(ROOT, script), ...args], {
    cwd,
    env: { ...env, ...extraEnv },
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `offshoot ARGS` on the emulator. */
const offshoot = (cwd: string, ...args: string[]) => runTs('services/cli/main.ts', args, cwd);

/** `bench/gpu-train ARGS` on the emulator: its last JSON line (the cuda backend's). */
function gpuTrain(cwd: string, args: string, env: Record<string, string> = {}): Record<string, unknown> {
  const r = runTs('bench/gpu-train.ts', args.split(' '), cwd, env);
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(
    r.stdout
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .pop()!,
  );
}

describe.skipIf(!!compilerReason)('the commands on an (emulated) GPU machine', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-cuda-emulator-'));
  const teacher = path.join(tmp, 'teacher');
  let restore = () => {};
  beforeAll(() => {
    restore = useCudaEmulator();
  });
  afterAll(async () => {
    await stopAllTeachers();
    restore();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('teacher train picks cuda under auto and trains; its checkpoint evaluates the same on the cpu backend', () => {
    const train = offshoot(
      tmp,
      'teacher',
      'train',
      '--out',
      teacher,
      ...'--preset tiny --vocab 300 --steps 30 --batch-size 4 --seq-len 32 --eval-every 30 --eval-tokens 2048 --json'.split(
        ' ',
      ),
    );
    expect(train.status, train.stderr).toBe(0);
    expect(train.stderr).toMatch(/^backend: cuda \(offshoot CUDA emulator/m);
    const summary = JSON.parse(train.stdout.trim());
    expect(summary.finalValLoss).toBeLessThan(summary.initialValLoss - 0.3);
    const evaluate = (...backend: string[]) => {
      const r = offshoot(
        tmp,
        ...backend,
        'eval',
        '--model',
        teacher,
        '--data',
        'sotu:val',
        '--max-tokens',
        '2048',
        '--json',
      );
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout.trim()) as { loss: number; tokens: number };
    };
    const onCuda = evaluate('--precision', 'f32');
    const onCpu = evaluate('--backend', 'cpu');
    expect(onCuda.tokens).toBe(2048);
    expect(Math.abs(onCuda.loss - onCpu.loss)).toBeLessThan(1e-4);
  }, 600_000);

  it('bench/gpu-train measures the cuda backend: tokens/s, TFLOP/s, host time, launches, peak memory', () => {
    const line = gpuTrain(tmp, '--config tiny --backends cuda --no-torch --steps 4 --warmup 3');
    expect(line).toMatchObject({ bench: 'gpu-train', config: 'tiny', backend: 'cuda', mfu: null });
    expect(line.detail).toMatch(/offshoot CUDA emulator/);
    expect(line.tokensPerSecond).toBeGreaterThan(0);
    expect(line.tflops).toBeGreaterThanOrEqual(0);
    expect(line.hostMs).toBeGreaterThan(0);
    expect(line.peakGpuMiB).toBeGreaterThan(0);
    expect(Number.isFinite(line.finalLoss)).toBe(true);
    // Every timed step replayed from a graph: the graph launch and the copies of the inputs, numbers and outputs.
    expect(line.replayedSteps).toBe(4);
    expect(line.launchesPerStep).toBeLessThan(10);
  }, 300_000);

  it('bench/gpu-train measures distillation steps: the teacher forward eager, the student step replayed, nothing through the host', () => {
    for (const topK of [undefined, 8]) {
      const kd = `--teacher tiny${topK ? ` --teacher-top-k ${topK}` : ''}`;
      const line = gpuTrain(
        tmp,
        `--config tiny --batch-size 2 --seq-len 32 --backends cuda --no-torch --steps 2 --warmup 3 ${kd}`,
      );
      expect(line).toMatchObject({ backend: 'cuda', teacher: 'tiny', distill: topK ? 'top-8' : 'full logits' });
      // The teacher's forward pass: a third of the same model's training step.
      expect((line.teacherFlopsPerToken as number) * 3).toBe(line.trainingFlopsPerToken);
      expect(line.replayedSteps).toBe(2);
      expect(line.viaHost ?? {}).toEqual({});
      expect(Number.isFinite(line.finalLoss)).toBe(true);
    }
  }, 300_000);

  it("bench/evaluator-gpu --profile: the first candidate's GPU time per kernel and product", () => {
    const args = ['--backends', 'cuda', '--preset', 'tiny', '--teacher', teacher, '--candidates', '2'];
    args.push('--population', '2', '--steps', '2', '--batch-size', '2', '--seq-len', '16', '--eval-tokens', '64');
    const r = runTs('bench/evaluator-gpu.ts', [...args, '--work', path.join(tmp, 'evaluator'), '--profile'], tmp);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l));
    const { profile } = lines.find((l) => l.profile);
    expect(profile.launches).toBeGreaterThan(10);
    expect(profile.gpuSeconds).toBeGreaterThan(0);
    const names = profile.top.map((e: [string, number, number]) => e[0]);
    // The in-process teacher's full logits: the fused distillation kernels, and the products.
    expect(names).toContain('full_distill_forward');
    expect(names.some((n: string) => n.startsWith('matmul '))).toBe(true);
    expect(lines.find((l) => l.summary)).toMatchObject({ backend: 'cuda', candidates: 2, failed: 0 });
  }, 300_000);

  it("Pythia-160M's replayed step holds no more memory than the same step run eagerly (the graph's memory is planned)", () => {
    // The emulator without its arithmetic: allocations, copies and graphs as always, at Pythia's shapes.
    const peak = (graphs: '0' | '1') => {
      const line = gpuTrain(tmp, '--config pythia-160m --backends cuda --no-torch --steps 2', {
        OFFSHOOT_CUDA_EMULATOR_NO_COMPUTE: '1',
        OFFSHOOT_CUDA_GRAPHS: graphs,
      });
      expect(line.replayedSteps).toBe(graphs === '1' ? 2 : 0);
      return line.peakGpuMiB as number;
    };
    const replayed = peak('1');
    const eager = peak('0');
    // Measured: 4,468 MiB both ways (with a free list per size for the graph's memory, 5,594).
    expect(replayed).toBeLessThanOrEqual(eager);
    expect(eager).toBeGreaterThan(4000);
  }, 600_000);

  it("the teacher service serves top-k from cuda: the cpu backend's indices and values", async () => {
    const server = await startTeacher(teacher, { env: { OFFSHOOT_BACKEND: 'cuda', OFFSHOOT_PRECISION: 'f32' } });
    expect(server.stderr()).toMatch(/backend: cuda \(offshoot CUDA emulator/);
    const client = new TeacherClient({ targets: server.target });
    try {
      const [batchSize, seqLen, k] = [2, 16, 12];
      // One after the other: the service's passes run eagerly twice, then replay a CUDA graph.
      const sent = [37, 41, 43, 47].map((m) =>
        Int32Array.from({ length: batchSize * seqLen }, (_, i) => (i * m + 5) % 300),
      );
      const answers = [];
      for (const tokens of sent)
        answers.push(await client.topK({ tokens, batchSize, seqLen, topK: k, temperature: 1, encoding: 'f32' }));
      await initBackend('cpu', () => {});
      const ckpt = loadCheckpoint(teacher);
      const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, teacher);
      for (const [n, tokens] of sent.entries()) {
        const want = tf.tidy(() => {
          const t = topKFromLogits(model.logits2d(tf.tensor2d(tokens, [batchSize, seqLen], 'int32')), k, 1);
          return [t.indices, t.logits];
        });
        const [indices, logits] = await Promise.all(want.map((t) => t.data()));
        tf.dispose(want);
        expect(Array.from(answers[n].indices), `request ${n}`).toEqual(Array.from(indices));
        for (let i = 0; i < logits.length; i++)
          expect(Math.abs(answers[n].logits[i] - logits[i]), `request ${n}`).toBeLessThan(1e-4);
      }
      model.dispose();
      // The passes after the second were captured and replayed, not left eager.
      expect(server.stderr()).not.toMatch(/without a CUDA graph/);
    } finally {
      client.close();
      await server.stop();
    }
  }, 300_000);
});
