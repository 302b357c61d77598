/**
 * The cuda backend's own code, unchanged, on the CPU: the CUDA emulator (helpers/cuda-emulator)
 * stands in for the driver, NVRTC and cuBLASLt, compiling the kernels' CUDA C++ for the CPU and
 * running a block's threads as fibers. So what the backend does around the kernels (launch arguments,
 * storage types, the allocator, bf16 weight copies, AdamW's tables, the recomputed attention, graph
 * capture and replay) and the kernels' logic (barriers, shuffles, the radix top-k) are checked in CI
 * against the cpu backend. What only a GPU shows (speed, memory, the hardware's own rounding order in
 * products) is checked on one: test/cuda-backend.test.ts and bench/gpu-train --check.
 */
import { execFileSync } from 'node:child_process';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { initBackend } from '../core/model/backend.js';
import { textBatches, trainCurve } from '../core/model/curve.js';
import { GPTNeoX } from '../core/model/index.js';
import { setPrecision } from '../core/model/precision.js';
import { useCudaEmulator } from './helpers/cuda-emulator.js';
import { tinyConfig } from './helpers/tiny.js';

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
      expect(names.filter((n) => n.startsWith('causal attention')).length).toBe(4);
      expect(names.filter((n) => n.startsWith('tfjs: topk')).length).toBe(2);
    }, 600_000);

    it("training steps, eager and then replayed from a captured CUDA graph, give the cpu backend's losses (f32)", async () => {
      const { graphStats } = await import('../core/model/cuda/register.js');
      const cpu = await curve('cpu');
      const before = { ...(await cudaStats(graphStats)) };
      const cuda = await curve('cuda');
      const after = await cudaStats(graphStats);
      expect(after.captures - before.captures).toBe(1);
      expect(after.replays - before.replays).toBe(steps - 2 - 1);
      expect(cuda).toHaveLength(steps);
      for (let i = 0; i < steps; i++) expect(Math.abs(cuda[i] - cpu[i]), `step ${i}`).toBeLessThan(1e-4);
      expect(cpu[steps - 1]).toBeLessThan(cpu[0] - 0.5);
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
