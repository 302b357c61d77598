import { describe, it, expect } from 'vitest';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import * as tf from '../core/model/tfjs.js';
import { initBackend, parseBackendChoice, type BackendInfo } from '../core/model/backend.js';

// tfjs keeps one engine per process; these tests switch its active backend in turn, so they run in order.

const A = [
  [1, 2, 3],
  [4, 5, 6],
];
const B = [
  [0.5, -1],
  [2, 0.25],
  [-1.5, 3],
];
// A @ B, by hand.
const AB = [
  [0, 8.5],
  [3, 15.25],
];

/** matmul + gradient of sum(tanh(A @ W)) w.r.t. W, computed on whichever backend is active. */
async function compute(seed = 7): Promise<{ ab: number[]; big: number[]; gradW: number[]; gradSq: number[] }> {
  const ab = tf.matMul(tf.tensor2d(A), tf.tensor2d(B));
  const x = tf.randomUniform([33, 47], -1, 1, 'float32', seed);
  const w = tf.randomUniform([47, 29], -1, 1, 'float32', seed + 1);
  const big = tf.matMul(x, w);
  const gradW = tf.grad((wv: tf.Tensor) => tf.sum(tf.tanh(tf.matMul(x, wv))))(w);
  const gradSq = tf.grad((v: tf.Tensor) => v.square().sum())(tf.tensor1d([1, -2, 3]));
  const out = {
    ab: Array.from(await ab.data()),
    big: Array.from(await big.data()),
    gradW: Array.from(await gradW.data()),
    gradSq: Array.from(await gradSq.data()),
  };
  tf.dispose([ab, x, w, big, gradW, gradSq]);
  return out;
}

function expectClose(actual: number[], expected: number[], tol: number): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  for (let i = 0; i < actual.length; i++) worst = Math.max(worst, Math.abs(actual[i] - expected[i]));
  expect(worst).toBeLessThanOrEqual(tol);
}

const logs: string[] = [];
const log = (m: string): void => {
  logs.push(m);
};

let cpuResult: Awaited<ReturnType<typeof compute>> | undefined;

describe('parseBackendChoice', () => {
  it('accepts the valid choices, case-insensitively', () => {
    for (const c of ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu']) expect(parseBackendChoice(c)).toBe(c);
    expect(parseBackendChoice(' WebGPU ')).toBe('webgpu');
  });

  it('rejects others, listing the valid ones', () => {
    expect(() => parseBackendChoice('gpu')).toThrow(/invalid value "gpu".*auto, cuda, tensorflow, webgpu, wasm, cpu/);
    expect(() => parseBackendChoice('')).toThrow(/expected one of/);
  });
});

describe('initBackend', () => {
  it('rejects an invalid choice, listing the valid ones', async () => {
    await expect(initBackend('gpu' as never, log)).rejects.toThrow(
      /invalid value "gpu".*auto, cuda, tensorflow, webgpu, wasm, cpu/,
    );
  });

  it('rejects an invalid OFFSHOOT_BACKEND, naming the variable', async () => {
    const saved = process.env.OFFSHOOT_BACKEND;
    process.env.OFFSHOOT_BACKEND = 'nope';
    try {
      await expect(initBackend(undefined, log)).rejects.toThrow(/OFFSHOOT_BACKEND: .*invalid value "nope"/);
    } finally {
      if (saved === undefined) delete process.env.OFFSHOOT_BACKEND;
      else process.env.OFFSHOOT_BACKEND = saved;
    }
  });

  it('cpu: initialises and computes matmul and gradients', async () => {
    const info = await initBackend('cpu', log);
    expect(info).toMatchObject({ name: 'cpu', reason: 'requested' });
    expect(tf.getBackend()).toBe('cpu');
    expect(logs.at(-1)).toMatch(/^backend: cpu/);
    cpuResult = await compute();
    expectClose(cpuResult.ab, AB.flat(), 1e-6);
    expectClose(cpuResult.gradSq, [2, -4, 6], 1e-6);
    // d/dW sum(tanh(XW)) = X^T (1 - tanh(XW)^2), checked against a finite difference on one entry.
    const x = tf.randomUniform([33, 47], -1, 1, 'float32', 7);
    const w = tf.randomUniform([47, 29], -1, 1, 'float32', 8);
    const f = (wv: tf.Tensor): number => tf.sum(tf.tanh(tf.matMul(x, wv))).dataSync()[0];
    const eps = 1e-2;
    const bump = tf.scatterND([[5, 3]], [eps], [47, 29]);
    const fd = (f(tf.add(w, bump)) - f(tf.sub(w, bump))) / (2 * eps);
    expect(Math.abs(fd - cpuResult.gradW[5 * 29 + 3])).toBeLessThan(1e-2);
  });

  it('is idempotent: same info, no second log line', async () => {
    const n = logs.length;
    const a = await initBackend('cpu', log);
    const b = await initBackend('cpu', log);
    expect(b).toBe(a);
    expect(logs.length).toBe(n);
  });

  it('wasm: initialises and matches cpu', async () => {
    const info = await initBackend('wasm', log);
    expect(info.name).toBe('wasm');
    expect(tf.getBackend()).toBe('wasm');
    const r = await compute();
    expectClose(r.ab, AB.flat(), 1e-5);
    expectClose(r.big, cpuResult!.big, 1e-4);
    expectClose(r.gradW, cpuResult!.gradW, 1e-4);
    expectClose(r.gradSq, [2, -4, 6], 1e-6);
  });

  it('switches back to an already initialised backend', async () => {
    await initBackend('cpu', log);
    expect(tf.getBackend()).toBe('cpu');
  });

  it('webgpu: initialises (lavapipe on CPU machines) and matches cpu within 1e-4', async (ctx) => {
    let info: BackendInfo;
    try {
      info = await initBackend('webgpu', log);
    } catch (e) {
      // In CI the setup script has run, so WebGPU must work there; locally it may not be set up.
      if (process.env.CI) throw e;
      ctx.skip(`webgpu unavailable here (run scripts/setup-webgpu.sh): ${(e as Error).message}`);
      return;
    }
    expect(info.name).toBe('webgpu');
    expect(info.detail).toMatch(/^adapter: /);
    expect(tf.getBackend()).toBe('webgpu');
    const r = await compute();
    expectClose(r.ab, AB.flat(), 1e-4);
    expectClose(r.big, cpuResult!.big, 1e-4);
    expectClose(r.gradW, cpuResult!.gradW, 1e-4);
    expectClose(r.gradSq, [2, -4, 6], 1e-4);
  });

  it('explicit tensorflow without tfjs-node installed: a clear error', async (ctx) => {
    const installed = await import('@tensorflow/tfjs-node' as string).then(
      () => true,
      () => false,
    );
    if (installed) ctx.skip('@tensorflow/tfjs-node is installed here');
    const before = tf.getBackend();
    await expect(initBackend('tensorflow', log)).rejects.toThrow(
      /tensorflow backend unavailable: @tensorflow\/tfjs-node-gpu (not installed|has no native addon .*); @tensorflow\/tfjs-node (not installed|has no native addon .*)\. Run scripts\/setup-tensorflow\.sh/,
    );
    expect(tf.getBackend()).toBe(before);
  });

  it('auto: picks the best loadable backend and says why', async () => {
    const n = logs.length;
    const info = await initBackend('auto', log);
    expect(['tensorflow', 'webgpu', 'wasm', 'cpu']).toContain(info.name);
    expect(tf.getBackend()).toBe(info.name);
    expect(logs.length).toBe(n + 1);
    expect(logs.at(-1)).toMatch(new RegExp(`^backend: ${info.name}.*; auto`));
    if (info.name !== 'tensorflow') expect(info.reason).toMatch(/tensorflow unavailable: /);
    // A software WebGPU adapter (lavapipe) is slower than wasm, so auto passes over it.
    if (info.name === 'wasm') expect(info.reason).toMatch(/webgpu (skipped: software adapter|unavailable: )/);
  });
});

// Fresh processes: Node must exit by itself after WebGPU work (no process.exit), and a machine without
// a Vulkan driver (simulated by pointing the Vulkan loader at no ICD) must get the setup hint.
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHILD = `
import { initBackend } from './core/model/backend.js';
import * as tf from './core/model/tfjs.js';
try {
  const info = await initBackend(process.argv[1], (m) => console.error(m));
  const c = tf.matMul(tf.ones([64, 64]), tf.ones([64, 64]));
  console.log(JSON.stringify({ ok: true, info, v: (await c.data())[0] }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: e.message }));
}
`;

interface ChildResult {
  ok: boolean;
  info?: { name: string; reason: string; detail?: string };
  v?: number;
  error?: string;
}

function runChild(choice: string, env: NodeJS.ProcessEnv = {}): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', CHILD, choice],
      { cwd: ROOT, env: { ...process.env, ...env }, timeout: 60_000 },
      (err, stdout, stderr) => {
        if (err) {
          const why = err.killed ? 'did not exit within 60 s' : `failed: ${err.message}`;
          reject(new Error(`child (${choice}) ${why}\n${stderr}`));
          return;
        }
        const line = stdout.trim().split('\n').at(-1) ?? '';
        resolve(JSON.parse(line) as ChildResult);
      },
    );
  });
}

const NO_VULKAN = { VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '/nonexistent/icd.json' };

describe('initBackend in a fresh process', () => {
  it('webgpu: the process exits by itself after GPU work', async (ctx) => {
    const r = await runChild('webgpu');
    if (!r.ok) {
      if (process.env.CI) throw new Error(r.error);
      ctx.skip(`webgpu unavailable here (run scripts/setup-webgpu.sh): ${r.error}`);
    }
    expect(r.info?.name).toBe('webgpu');
    expect(r.v).toBe(64);
  });

  it('webgpu without a Vulkan driver: a clear error naming the setup script', async () => {
    const r = await runChild('webgpu', NO_VULKAN);
    expect(r.ok).toBe(false);
    expect(r.error).toMatch(/webgpu backend unavailable: Dawn found no WebGPU adapter.*scripts\/setup-webgpu\.sh/);
  });

  it('auto without a Vulkan driver falls back (to wasm unless tensorflow loads) and says why', async () => {
    const r = await runChild('auto', NO_VULKAN);
    expect(r.ok).toBe(true);
    expect(['tensorflow', 'wasm']).toContain(r.info?.name);
    if (r.info?.name === 'wasm') {
      expect(r.info?.reason).toMatch(/tensorflow unavailable: .*webgpu unavailable: Dawn found no WebGPU adapter/);
    }
    expect(r.v).toBe(64);
  });
});
