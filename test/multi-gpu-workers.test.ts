/**
 * `offshoot worker --gpus` and `--ranks` (docs/multi-gpu.md): the GPU listing and selection with their
 * errors, and, against a real Temporal dev server with real worker processes (cpu backend): one
 * evaluator per GPU, each pinned to its GPU, sharing a search's candidates and restarted when killed;
 * and a pretraining whose segments run on 2 rank processes.
 *
 * This machine has no GPU: where a GPU listing is needed, an `nvidia-smi` script on PATH prints what
 * `nvidia-smi -L` prints on a host of two H200s. Everything else is the real thing — the evaluators
 * are told their device through the environment, which is what the test reads back (/proc/PID/environ).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { type Stack, type WorkerProcess, startStack, startWorker } from '../services/stack/index.js';
import { GpuSelectionError, listGpus, parseNvidiaSmiList, selectGpus } from '../services/worker/gpus.js';
import { connectClient } from '../services/worker/index.js';
import { evolution, pretrain } from '../workflows/index.js';
import {
  evolutionInput,
  offshoot,
  pretrainInput,
  readLosses,
  trainTinyTeacher,
  waitUntil,
} from './helpers/orchestration.js';

const H200S = [
  'GPU 0: NVIDIA H200 (UUID: GPU-1f6a2a5e-7d0b-4c55-9a8c-3e2f7c1b9d01)',
  'GPU 1: NVIDIA H200 (UUID: GPU-8b3c4d5e-6f70-4182-93a4-b5c6d7e8f902)',
].join('\n');

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-multigpu-'));
/** A folder whose `nvidia-smi -L` lists two H200s, first on PATH. */
const fakeBin = path.join(tmp, 'bin');
fs.mkdirSync(fakeBin);
fs.writeFileSync(
  path.join(fakeBin, 'nvidia-smi'),
  `#!/bin/sh\n[ "$1" = "-L" ] || exit 2\ncat <<'EOF'\n${H200S}\nEOF\n`,
  { mode: 0o755 },
);
const withTwoGpus = { ...process.env, PATH: `${fakeBin}${path.delimiter}${process.env.PATH}` };
/** A PATH without any nvidia-smi (this machine has none; the fake one is left out). */
const withoutGpus = {
  ...process.env,
  PATH: (process.env.PATH ?? '')
    .split(path.delimiter)
    .filter((d) => !fs.existsSync(path.join(d, 'nvidia-smi')))
    .join(path.delimiter),
};

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('GPU listing and --gpus', () => {
  const gpus = parseNvidiaSmiList(H200S);

  it("reads nvidia-smi -L's lines", () => {
    expect(gpus).toEqual([
      { index: 0, name: 'NVIDIA H200', uuid: 'GPU-1f6a2a5e-7d0b-4c55-9a8c-3e2f7c1b9d01' },
      { index: 1, name: 'NVIDIA H200', uuid: 'GPU-8b3c4d5e-6f70-4182-93a4-b5c6d7e8f902' },
    ]);
    expect(listGpus(path.join(fakeBin, 'nvidia-smi'))).toEqual(gpus);
  });

  it('N, all, or a list of indices; errors name the value and what the machine has', () => {
    expect(selectGpus('all', gpus)).toEqual([0, 1]);
    expect(selectGpus('1', gpus)).toEqual([0]);
    expect(selectGpus('1,0', gpus)).toEqual([1, 0]);
    expect(selectGpus('1,', gpus)).toEqual([1]);
    expect(() => selectGpus('4', gpus)).toThrow(
      '--gpus 4: asks for 4 GPUs, but this machine has 2 GPUs (nvidia-smi -L: 0 NVIDIA H200, 1 NVIDIA H200)',
    );
    expect(() => selectGpus('0,5', gpus)).toThrow('--gpus 0,5: there is no GPU 5; this machine has 2 GPUs');
    expect(() => selectGpus('1,1', gpus)).toThrow('--gpus 1,1: GPU 1 is listed twice');
    expect(() => selectGpus('0', gpus)).toThrow('--gpus 0: ask for at least one GPU');
    expect(() => selectGpus('two', gpus)).toThrow(
      '--gpus: expected a number of GPUs (2), all, or a comma-separated list of GPU indices (0,2; one GPU: 3,), got "two"',
    );
    expect(() => selectGpus('1', [])).toThrow(GpuSelectionError);
  });

  it('the worker command: a clear error for each bad combination, before it contacts Temporal', () => {
    const fails = (args: string[], env: NodeJS.ProcessEnv, message: string) => {
      const r = offshoot(['worker', '--temporal', '127.0.0.1:1', ...args], { env, timeoutMs: 60_000 });
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toContain(message);
    };
    fails(
      ['--queues', 'evaluate', '--gpus', '2'],
      withoutGpus,
      "offshoot: --gpus: cannot list this machine's GPUs: nvidia-smi is not installed (it comes with the NVIDIA driver)",
    );
    fails(
      ['--queues', 'evaluate', '--gpus', '4'],
      withTwoGpus,
      'offshoot: --gpus 4: asks for 4 GPUs, but this machine has 2 GPUs',
    );
    fails(
      ['--queues', 'evaluate,pretrain', '--gpus', '2'],
      withTwoGpus,
      'offshoot: --gpus: the evaluate and pretrain queues would share these GPUs; start one worker for each',
    );
    fails(
      ['--queues', 'orchestrate,evaluate', '--gpus', '2'],
      withTwoGpus,
      'offshoot: --gpus: run the orchestrate queue in a worker of its own',
    );
    fails(
      ['--queues', 'evaluate', '--gpus', '2'],
      { ...withTwoGpus, CUDA_VISIBLE_DEVICES: '1' },
      'offshoot: --gpus: CUDA_VISIBLE_DEVICES is set (1)',
    );
    fails(['--queues', 'evaluate', '--ranks', '2'], withTwoGpus, 'offshoot: --ranks applies to the pretrain queue');
    fails(
      ['--queues', 'pretrain', '--gpus', '2', '--ranks', '3'],
      withTwoGpus,
      'offshoot: --ranks 3 with --gpus 2: one rank runs on each GPU, so 2 ranks',
    );
    fails(
      ['--queues', 'pretrain', '--micro-batch', '2'],
      withTwoGpus,
      'offshoot: --micro-batch: give --gpus or --ranks too',
    );
    fails(
      ['--queues', 'pretrain', '--ranks', '2', '--all-reduce', 'mpi'],
      withTwoGpus,
      'offshoot: --all-reduce: expected one of auto, nccl, tcp, got "mpi"',
    );
  }, 120_000);
});

describe('against a real Temporal dev server (cpu backend)', () => {
  let stack: Stack;
  let client: Client;
  let orchestrator: WorkerProcess;
  let teacher: ReturnType<typeof trainTinyTeacher>;

  beforeAll(async () => {
    [stack, teacher] = await Promise.all([
      startStack({ dir: path.join(tmp, 'stack'), nats: false }),
      Promise.resolve(trainTinyTeacher(path.join(tmp, 'teacher'))),
    ]);
    client = await connectClient({ address: stack.temporal.address });
    orchestrator = await startWorker({
      queues: ['orchestrate'],
      temporal: stack.temporal.address,
      name: 'orchestrate',
    });
  }, 300_000);

  afterAll(async () => {
    await orchestrator?.stop();
    await client?.connection.close();
    await stack?.stop();
  });

  /** A process's environment (Linux). */
  function environOf(pid: number): Record<string, string> {
    const raw = fs.readFileSync(`/proc/${pid}/environ`, 'utf8');
    return Object.fromEntries(
      raw
        .split('\0')
        .filter(Boolean)
        .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    );
  }
  const pidOf = (identity: string) => Number(identity.split(':')[1]);

  it('--gpus 2 on the evaluate queue: one evaluator per GPU, pinned to it; both take candidates; a killed one comes back on its GPU', async () => {
    let workers: Array<{ gpu: number; identity: string }> = [];
    const lines: string[] = [];
    const group = await startWorker({
      queues: ['evaluate'],
      temporal: stack.temporal.address,
      backend: 'cpu',
      name: 'evaluate',
      env: withTwoGpus,
      extra: ['--gpus', '2'],
      echo: (line) => {
        lines.push(line);
        if (line.startsWith('{"event":"worker-ready"'))
          workers = (JSON.parse(line) as { workers: typeof workers }).workers;
      },
    });
    try {
      expect(workers.map((w) => w.gpu)).toEqual([0, 1]);
      for (const { gpu, identity } of workers) {
        expect(identity).toMatch(new RegExp(`:evaluate-gpu${gpu}$`));
        const env = environOf(pidOf(identity));
        expect({
          visible: env.CUDA_VISIBLE_DEVICES,
          order: env.CUDA_DEVICE_ORDER,
          adapter: env.OFFSHOOT_WEBGPU_ADAPTER,
        }).toEqual({ visible: String(gpu), order: 'PCI_BUS_ID', adapter: String(gpu) });
      }

      const input = evolutionInput({ runId: 'per-gpu', dir: path.join(tmp, 'run-per-gpu') }, teacher, {
        search: { budget: 8, population: 4, seed: 3 },
        parallelism: 2,
      });
      const result = await client.workflow.execute(evolution, {
        workflowId: 'multi-gpu/evaluators',
        taskQueue: 'orchestrate',
        args: [input],
      });
      expect(result.status.evaluated).toBe(8);
      const evaluatedBy = new Set(result.history.map((h) => String(h.metrics?.worker)));
      // Temporal spread the candidates over both GPUs' evaluators.
      expect([...evaluatedBy].sort()).toEqual(workers.map((w) => w.identity).sort());

      // kill -9 of GPU 1's evaluator: the group starts a new one on GPU 1.
      const dead = pidOf(workers[1].identity);
      process.kill(dead, 'SIGKILL');
      const back = await waitUntil(
        'the evaluator on GPU 1 to come back',
        () => lines.map((l) => /the evaluator on GPU 1 is back \(pid (\d+), ([^)]+)\)/.exec(l)).find(Boolean),
        120_000,
        200,
      );
      expect(
        lines.some((l) => l.includes(`the evaluator on GPU 1 (pid ${dead}) was killed by SIGKILL; restarting it`)),
      ).toBe(true);
      const fresh = Number(back[1]);
      expect(fresh).not.toBe(dead);
      expect(environOf(fresh).CUDA_VISIBLE_DEVICES).toBe('1');
      const again = await client.workflow.execute(evolution, {
        workflowId: 'multi-gpu/evaluators-after-kill',
        taskQueue: 'orchestrate',
        args: [{ ...input, run: { runId: 'per-gpu-2', dir: path.join(tmp, 'run-per-gpu-2') } }],
      });
      expect(again.status.evaluated).toBe(8);
    } finally {
      // SIGTERM drains every evaluator and the group exits cleanly.
      const exit = await group.stop(60_000);
      expect(exit).toEqual({ code: 0, signal: null });
    }
    for (const { identity } of workers) expect(fs.existsSync(`/proc/${pidOf(identity)}`)).toBe(false);
  }, 600_000);

  it('--ranks 2 on the pretrain queue: the segments of a pretraining run on 2 rank processes', async () => {
    const pretrainer = await startWorker({
      queues: ['pretrain'],
      temporal: stack.temporal.address,
      backend: 'cpu',
      name: 'pretrain',
      extra: ['--ranks', '2'],
    });
    try {
      const run = { runId: 'ranks', dir: path.join(tmp, 'run-ranks') };
      const input = pretrainInput(run, teacher, 'student', {
        hyper: {
          steps: 8,
          batchSize: 4,
          seqLen: 32,
          lr: 3e-3,
          warmup: 2,
          seed: 1,
          distill: { alpha: 0.5, temperature: 1, direction: 'forward' },
        },
        segmentSteps: 4,
        checkpointEvery: 2,
        evalEvery: 4,
      });
      const result = await client.workflow.execute(pretrain, {
        workflowId: 'multi-gpu/ranks',
        taskQueue: 'orchestrate',
        args: [input],
      });
      expect(result.steps).toBe(8);
      expect(result.segments.map((s) => [s.fromStep, s.toStep])).toEqual([
        [0, 4],
        [4, 8],
      ]);
      expect(result.evals.map((e) => e.step)).toEqual([4, 8]);
      expect(readLosses(path.join(run.dir, 'student', 'losses.jsonl')).map((l) => l.step)).toEqual([
        1, 2, 3, 4, 5, 6, 7, 8,
      ]);
      // Each segment ran on two ranks, whose logs are kept.
      const logs = fs.readdirSync(path.join(run.dir, 'student', 'ranks', 'attempt-1'));
      expect(logs.filter((f) => /^rank-\d\.log$/.test(f)).sort()).toEqual(['rank-0.log', 'rank-1.log']);
      expect(fs.readFileSync(path.join(run.dir, 'student', 'ranks', 'attempt-1', 'rank-1.log'), 'utf8')).toContain(
        '"event":"rank-done","rank":1,"step":8',
      );
    } finally {
      await pretrainer.stop();
    }
  }, 600_000);
});
