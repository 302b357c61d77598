/**
 * The operation registry (core/model/ops): a call runs the active backend's first enabled kernel
 * that supports the arguments, else the reference; a backend that registers a kernel is used by the
 * model with no other edit (a toy tfjs backend made of the cpu backend's kernels, with a LayerNorm
 * of its own); and docs/operations.md lists exactly the kernels the backends register.
 */
import * as fs from 'node:fs';

import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { GPTNeoX, crossEntropy, customOp, defineOperation, layerNorm, listOperations } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { relErr } from '../core/model/kernel-check.js';
import { tinyConfig } from './helpers/tiny.js';

/** A tfjs backend named `name` that runs the cpu backend's kernels. */
function registerCpuLikeBackend(name: string): void {
  if (tf.findBackendFactory(name) != null) return;
  tf.registerBackend(name, () => new MathBackendCPU());
  for (const k of tf.getKernelsForBackend('cpu')) tf.registerKernel({ ...k, backendName: name });
}

beforeAll(async () => {
  registerCpuLikeBackend('toy');
  await tf.setBackend('cpu');
});

afterAll(async () => {
  await tf.setBackend('cpu');
});

describe('operation registry', () => {
  it('dispatches on the active backend, skipping disabled kernels and shapes a kernel does not support', async () => {
    const double = defineOperation('test.double', (x: number): string => `reference ${2 * x}`);
    let on = true;
    const offWhenAsked = double.register({
      backend: 'toy',
      name: 'switchable',
      enabled: () => on,
      run: (x) => `switchable ${2 * x}`,
    });
    double.register({ backend: 'toy', name: 'small only', supports: (x) => x < 10, run: (x) => `small ${2 * x}` });
    double.register({ backend: 'other', run: (x) => `other ${2 * x}` });

    await tf.setBackend('cpu');
    expect(double(3)).toBe('reference 6');
    expect(double.kernelFor(3)).toBeNull();

    await tf.setBackend('toy');
    expect(double(3)).toBe('switchable 6');
    on = false;
    expect(double(3)).toBe('small 6');
    expect(double.kernelFor(3)?.name).toBe('small only');
    expect(double(30)).toBe('reference 60');
    on = true;
    offWhenAsked();
    expect(double(30)).toBe('reference 60');
    expect(double.kernels().map((k) => k.backend)).toEqual(['toy', 'other']);
    expect(double.reference(4)).toBe('reference 8');
    await tf.setBackend('cpu');
  });

  it('refuses to define an operation twice, and kernels without a backend or a run function', () => {
    const once = defineOperation('test.once', () => 1);
    expect(() => defineOperation('test.once', () => 2)).toThrow(/operation "test.once" is defined twice/);
    expect(() => once.register({ backend: '', run: () => 3 })).toThrow(
      /operation "test.once": a kernel needs the name of the tfjs backend it runs on, got ""/,
    );
    expect(() => once.register({ backend: 'toy', name: 'broken' } as never)).toThrow(
      /operation "test.once": the toy kernel "broken" has no run function/,
    );
    expect(once.kernels()).toEqual([]);
  });
});

/** LayerNorm over the last axis of a [N, D] input with its gradient written out; counts its calls. */
function countingLayerNorm(calls: { forward: number; backward: number }) {
  return (x: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor => {
    calls.forward++;
    const f = customOp(([xt, wt, bt], save) => {
      const xc = tf.sub(xt, tf.mean(xt, 1, true));
      const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(xc), 1, true), eps));
      const xhat = tf.mul(xc, rstd);
      save([xhat, rstd, wt]);
      return {
        value: tf.add(tf.mul(xhat, wt), bt),
        gradFunc: (dy, [xh, rs, ws]) => {
          calls.backward++;
          const g = tf.mul(dy, ws);
          const dx = tf.mul(tf.sub(tf.sub(g, tf.mean(g, 1, true)), tf.mul(xh, tf.mean(tf.mul(g, xh), 1, true))), rs);
          return [dx, tf.sum(tf.mul(dy, xh), 0), tf.sum(dy, 0)];
        },
      };
    });
    return f(x, weight, bias);
  };
}

describe('a new backend plugs in through registrations alone', () => {
  it("GPTNeoX's forward and backward run a toy backend's LayerNorm kernel, with the cpu backend's loss and gradients", async () => {
    const config = tinyConfig({ numLayers: 2 });
    const [B, T] = [2, 12];
    const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + 3) % config.vocabSize);
    const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 11 + 1) % config.vocabSize);
    const lossAndGrads = async (backend: string) => {
      await tf.setBackend(backend);
      const model = GPTNeoX.random(config, 5);
      const { value, grads } = tf.variableGrads(
        () => crossEntropy(model.logits2d(tf.tensor2d(ids, [B, T], 'int32')), tf.tensor1d(targets, 'int32')),
        model.variables(),
      );
      const byName = new Map<string, Float32Array>();
      for (const [name, v] of model.params) byName.set(name, (await grads[v.name].data()) as Float32Array);
      const loss = (await value.data())[0];
      tf.dispose([value, ...Object.values(grads)]);
      model.dispose();
      return { loss, byName };
    };

    const calls = { forward: 0, backward: 0 };
    const unregister = layerNorm.register({
      backend: 'toy',
      name: 'counting LayerNorm',
      supports: (x) => x.rank === 2,
      run: countingLayerNorm(calls),
    });
    try {
      const ref = await lossAndGrads('cpu');
      expect(calls).toEqual({ forward: 0, backward: 0 });
      const got = await lossAndGrads('toy');
      // Two LayerNorms per layer and the final one, each differentiated once.
      const norms = 2 * config.numLayers + 1;
      expect(calls).toEqual({ forward: norms, backward: norms });
      expect(Math.abs(got.loss - ref.loss)).toBeLessThan(1e-6);
      expect([...got.byName.keys()]).toEqual([...ref.byName.keys()]);
      for (const [name, g] of ref.byName) expect(relErr(got.byName.get(name)!, g), name).toBeLessThan(1e-5);
    } finally {
      unregister();
      await tf.setBackend('cpu');
    }
    // Unregistered, the toy backend runs the reference again.
    await tf.setBackend('toy');
    expect(layerNorm.kernelFor(tf.zeros([2, 4]), tf.ones([4]), tf.zeros([4]), 1e-5)).toBeNull();
    await tf.setBackend('cpu');
  });
});

describe('docs/operations.md', () => {
  it("lists every operation with the backends that register kernels for it, as the backends' register.ts files do", async () => {
    await Promise.all([
      import('../core/model/webgpu/register.js'),
      import('../core/model/tensorflow/register.js'),
      import('../core/model/wasm/register.js'),
      import('../core/model/cuda/register.js'),
    ]);
    const doc = fs.readFileSync(new URL('../docs/operations.md', import.meta.url), 'utf8');
    // The table's rows: | `name` | module | reference | kernels |
    const documented = new Map<string, string[]>();
    for (const m of doc.matchAll(/^\| `(\w+)` \|[^|]*\|[^|]*\| ([^|]*) \|$/gm)) {
      documented.set(
        m[1],
        m[2]
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s && s !== '—')
          .sort(),
      );
    }
    const registered = new Map(
      listOperations()
        .filter((o) => !o.opName.startsWith('test.'))
        .map((o) => [o.opName, [...new Set(o.kernels.map((k) => k.backend))].sort()]),
    );
    expect(documented).toEqual(registered);
  });
});
