/**
 * The trainer's backward (core/model/gradients.ts): on every backend that runs here it gives exactly
 * tf.variableGrads's loss and gradients for a GPTNeoX (with fused and hand-written gradient
 * functions, and a parameter reused by two operations), frees each node's saved tensors and
 * intermediate gradients as the backward passes it (so its peak memory is lower and nothing is left
 * behind), and says clearly when it cannot differentiate.
 */
import { afterAll, describe, expect, it } from 'vitest';

import { variableGradients } from '../core/model/gradients.js';
import { GPTNeoX, crossEntropy, customOp } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { tinyConfig } from './helpers/tiny.js';

const backends = await testBackends();

afterAll(async () => {
  await useBackend('cpu');
});

const config = tinyConfig({ numLayers: 3 });
const [B, T] = [2, 16];
const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 7 + 3) % config.vocabSize);
const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 11 + 1) % config.vocabSize);

type Differentiate = typeof variableGradients;

/** The loss, each parameter's gradient, and the peak and leftover bytes of one backward. */
async function run(model: GPTNeoX, differentiate: Differentiate) {
  const x = tf.tensor2d(ids, [B, T], 'int32');
  const y = tf.tensor1d(targets, 'int32');
  let result: ReturnType<Differentiate> | undefined;
  const before = tf.memory().numTensors;
  const profile = await tf.profile(() => {
    result = differentiate(() => crossEntropy(model.logits2d(x), y), model.variables());
  });
  const { value, grads } = result!;
  const extra = tf.memory().numTensors - before - 1 - Object.keys(grads).length;
  const gradients = new Map<string, Float32Array>();
  for (const [name, v] of model.params) gradients.set(name, (await grads[v.name].data()) as Float32Array);
  const loss = (await value.data())[0];
  tf.dispose([x, y, value, ...Object.values(grads)]);
  return { loss, gradients, peakBytes: profile.peakBytes, extra };
}

describe('variableGradients', () => {
  for (const backend of backends) {
    it(`${backend}: the same loss and gradients as tf.variableGrads, with less memory at the peak`, async () => {
      await useBackend(backend);
      const model = GPTNeoX.random(config, 11);
      try {
        const ref = await run(model, tf.variableGrads as Differentiate);
        const lean = await run(model, variableGradients);
        expect(lean.loss).toBe(ref.loss);
        expect([...lean.gradients.keys()]).toEqual([...ref.gradients.keys()]);
        for (const [name, g] of ref.gradients) expect(lean.gradients.get(name), name).toEqual(g);
        // What is left after the call: the loss and the gradients, no saved tensor or intermediate gradient.
        expect(lean.extra).toBe(0);
        expect(lean.peakBytes).toBeLessThan(ref.peakBytes);
      } finally {
        model.dispose();
      }
    });
  }

  it('a parameter used twice gets the sum of both uses, and a gradient handed on unchanged is not freed early', async () => {
    await useBackend('cpu');
    const w = tf.variable(tf.tensor1d([1, 2, 3]), true, 'twice');
    const unused = tf.variable(tf.tensor1d([5]), true, 'unused');
    // identity's gradient is dy itself: two tensors' gradients are then one tensor.
    const passOn = customOp(([x], save) => {
      save([x]);
      return { value: tf.mul(x, 1), gradFunc: (dy) => dy };
    });
    const loss = () => tf.sum(tf.mul(passOn(tf.mul(w, w)), w)) as tf.Scalar;
    const ref = tf.variableGrads(loss, [w, unused]);
    const lean = variableGradients(loss, [w, unused]);
    expect(await lean.grads.twice.data()).toEqual(await ref.grads.twice.data());
    expect(Array.from(await lean.grads.twice.data())).toEqual([3, 12, 27]);
    expect(lean.grads.unused).toBeUndefined();
    tf.dispose([w, unused, ref.value, lean.value, ...Object.values(ref.grads), ...Object.values(lean.grads)]);
  });

  it('says what is wrong with a loss it cannot differentiate', async () => {
    await useBackend('cpu');
    const w = tf.variable(tf.tensor1d([1, 2]), true, 'w');
    const frozen = tf.variable(tf.tensor1d([1]), false, 'frozen');
    const constant = tf.scalar(4);
    expect(() => variableGradients(() => tf.sum(w), [frozen])).toThrow(/none of the variables is trainable/);
    expect(() => variableGradients(() => tf.mul(w, 2) as unknown as tf.Scalar, [w])).toThrow(
      /loss must be a scalar tensor, got shape \[2\]/,
    );
    expect(() => variableGradients(() => tf.mul(constant, 2), [w])).toThrow(/depends on none of the variables/);
    tf.dispose([w, frozen, constant]);
  });
});
