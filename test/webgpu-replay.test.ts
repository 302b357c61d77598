/**
 * Replayed steps on the webgpu backend (core/model/webgpu/replay.ts), on Mesa lavapipe here: a step
 * recorded once per shape and replayed must give what the same steps run eagerly
 * (OFFSHOOT_WEBGPU_REPLAY=0) give, bit for bit: losses, gradient norms and the weights after, with
 * plain and loss-scaled AdamW, with distillation from a teacher's top-k or full logits, and a
 * teacher's repeated forward pass with different tokens each time; and a replayed step timed by the
 * profiler.
 */
import { afterAll, describe, expect, it } from 'vitest';

import { GPTNeoX, Trainer, inProcessTeacher, runRepeatedPass, trainingHyperparameters } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { type GpuProfile, profileGpu } from '../core/model/webgpu/profiler.js';
import { replayStats } from '../core/model/webgpu/replay.js';
import { gpuBytesAllocated } from '../core/model/webgpu/runtime.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { syntheticBatches, alternatingTeacherPasses, tinyConfig } from './helpers/tiny.js';

const hasWebGPU = (await testBackends()).includes('webgpu');

afterAll(async () => {
  await useBackend('cpu');
});

/** Runs `body` with replays off. */
async function eagerly<T>(body: () => Promise<T>): Promise<T> {
  process.env.OFFSHOOT_WEBGPU_REPLAY = '0';
  try {
    return await body();
  } finally {
    delete process.env.OFFSHOOT_WEBGPU_REPLAY;
  }
}

describe.skipIf(!hasWebGPU)('webgpu: steps recorded once per shape and replayed', () => {
  const config = tinyConfig({ vocabSize: 256, hiddenSize: 64, numLayers: 2, numHeads: 4 });
  const steps = 8;
  const [batchSize, seqLen] = [2, 32];
  const batches = syntheticBatches(config.vocabSize, batchSize, seqLen, 5);

  /** Trains `steps` steps from the same init and data; the losses, gradient norms and weights after. */
  const train = async (options: { lossScale?: boolean; topK?: number; full?: boolean } = {}) => {
    await useBackend('webgpu');
    const teacher = options.topK || options.full ? GPTNeoX.random(config, 11) : null;
    const model = GPTNeoX.random(config, 7);
    const reports: Array<[number, number]> = [];
    const trainer = new Trainer(model, {
      hyper: trainingHyperparameters({ steps, lr: 3e-3, warmup: 2 }, { batchSize, seqLen, seed: 1 }),
      batches,
      teacher: teacher ? inProcessTeacher(teacher, options.topK ? { topK: options.topK } : {}) : undefined,
      distill: teacher ? { alpha: 0.5, temperature: 2, direction: 'forward' } : undefined,
      lossScale: options.lossScale ?? false,
      reportEvery: 1,
      onStep: (r) => reports.push([r.loss, r.gradNorm]),
    });
    try {
      await trainer.run();
      const weights = new Map<string, Float32Array>();
      for (const [name, v] of model.params) weights.set(name, (await v.data()) as Float32Array);
      return { reports, weights };
    } finally {
      trainer.dispose();
      teacher?.dispose();
    }
  };

  const expectSame = (
    replayed: Awaited<ReturnType<typeof train>>,
    eager: Awaited<ReturnType<typeof train>>,
    what: string,
  ) => {
    expect(replayed.reports, what).toEqual(eager.reports);
    for (const [name, w] of eager.weights)
      expect(Buffer.from(replayed.weights.get(name)!.buffer).equals(Buffer.from(w.buffer)), `${what}: ${name}`).toBe(
        true,
      );
  };

  // The first step makes the optimiser's moments, so its state is not the later steps': their shape
  // starts at the second step, with two eager steps and a recorded one, and replays from the fifth.
  const replays = steps - 4;

  it('training steps: eager, one recorded, the rest replayed, with the eager losses and weights bit for bit', async () => {
    const before = replayStats();
    const replayed = await train();
    const after = replayStats();
    expect(after.recordings - before.recordings).toBe(1);
    expect(after.replays - before.replays).toBe(replays);
    const eager = await eagerly(() => train());
    expect(replayStats()).toEqual(after);
    expectSame(replayed, eager, 'f32');
    // Each replay computed a step of its own: new batches, weights that moved.
    expect(new Set(replayed.reports.map(([loss]) => loss)).size).toBe(steps);
  }, 600_000);

  it('loss-scaled AdamW (its scale and skip decided on the device) replays bit for bit', async () => {
    const before = replayStats();
    const replayed = await train({ lossScale: true });
    expect(replayStats().replays - before.replays).toBe(replays);
    expectSame(replayed, await eagerly(() => train({ lossScale: true })), 'loss-scaled');
  }, 600_000);

  it("distillation steps, from a teacher's top-k and from its full logits, replay bit for bit", async () => {
    for (const options of [{ topK: 8 }, { full: true }]) {
      const before = replayStats();
      const replayed = await train(options);
      expect(replayStats().replays - before.replays, JSON.stringify(options)).toBe(replays);
      expectSame(replayed, await eagerly(() => train(options)), JSON.stringify(options));
    }
  }, 600_000);

  it("a teacher's repeated forward pass and top-k replays with each pass's own tokens", async () => {
    await useBackend('webgpu');
    const model = GPTNeoX.random(config, 11);
    try {
      const before = replayStats();
      // Two eager passes, the third recorded, then replays; the two token sets alternate.
      const answers = await alternatingTeacherPasses(model, 2, seqLen, 8);
      const after = replayStats();
      expect([after.recordings - before.recordings, after.replays - before.replays]).toEqual([1, 3]);
      expect(answers[0]).not.toEqual(answers[1]);
      for (let i = 2; i < 6; i++) expect(answers[i], `pass ${i}`).toEqual(answers[i % 2]);
    } finally {
      model.dispose();
    }
  }, 600_000);

  it('a variable assigned between passes (the same variable, new data) is recorded again, not replayed stale', async () => {
    await useBackend('webgpu');
    const v = tf.tidy(() => tf.variable(tf.fill([1024], 1)));
    const ids = Int32Array.from({ length: 1024 }, (_, i) => i);
    const pass = async () => {
      const [out] = runRepeatedPass({
        key: 'assigned',
        inputs: [{ shape: [1024], dtype: 'int32', data: ids }],
        state: [v],
        body: ([t]) => [tf.add(tf.cast(t, 'float32'), v)],
      });
      const values = await out.data();
      out.dispose();
      return values[5];
    };
    try {
      for (let i = 0; i < 4; i++) expect(await pass()).toBe(6);
      const before = replayStats();
      tf.tidy(() => v.assign(tf.fill([1024], 3)));
      for (let i = 0; i < 4; i++) expect(await pass(), `pass ${i} after the assign`).toBe(8);
      expect(replayStats().recordings - before.recordings).toBe(1);
    } finally {
      v.dispose();
    }
  }, 600_000);

  it("the profiler times a replayed step's dispatches one by one, and the step stays bit for bit", async () => {
    /** Seven steps, the one at `profiled` under the profiler: the losses, the weights after, the profile. */
    const run = async (profiled: number) => {
      await useBackend('webgpu');
      const model = GPTNeoX.random(config, 7);
      const trainer = new Trainer(model, {
        hyper: trainingHyperparameters({ steps: 7, lr: 3e-3, warmup: 2 }, { batchSize, seqLen, seed: 1 }),
        batches,
        lossScale: false,
      });
      const losses: number[] = [];
      let profile: GpuProfile | null = null;
      try {
        for (let i = 0; i < 7; i++) {
          const step = async () => {
            const { loss, gradNorm } = await trainer.trainStep();
            losses.push((await loss.data())[0]);
            tf.dispose([loss, gradNorm]);
          };
          if (i === profiled) profile = await profileGpu(step);
          else await step();
        }
        const weights = new Map<string, Float32Array>();
        for (const [name, v] of model.params) weights.set(name, (await v.data()) as Float32Array);
        return { reports: losses.map((l) => [l, 0] as [number, number]), weights, profile: profile! };
      } finally {
        trainer.dispose();
      }
    };
    const before = replayStats();
    // The sixth step is replayed (the first makes the moments, two eager steps, one recorded).
    const replayed = await run(5);
    const afterReplayed = replayStats();
    expect([afterReplayed.recordings - before.recordings, afterReplayed.replays - before.replays]).toEqual([1, 3]);
    // The fourth would be recorded: timed, it runs eagerly, and the fifth is recorded instead.
    const delayed = await run(3);
    const afterDelayed = replayStats();
    expect([afterDelayed.recordings - afterReplayed.recordings, afterDelayed.replays - afterReplayed.replays]).toEqual([
      1, 2,
    ]);
    const eager = await eagerly(() => run(5));
    expectSame(replayed, eager, 'profiled replay');
    expectSame(delayed, eager, 'profiled step before the recording');
    expect(replayed.profile.dispatches).toBeGreaterThan(20);
    expect(replayed.profile.dispatches).toBe(eager.profile.dispatches);
    expect(replayed.profile.totalMs).toBeGreaterThan(0);
    // The replay's dispatches are named by their pipelines: offshoot's kernels and tfjs's programs.
    expect(replayed.profile.byName.some((e) => e.name.startsWith('layernorm '))).toBe(true);
  }, 600_000);

  it('keeps the recordings of the eight shapes run last; one dropped is recorded again, and memory stays bounded', async () => {
    await useBackend('webgpu');
    const ids = Int32Array.from({ length: 1024 }, (_, i) => i);
    // Passes of different kinds are different shapes to the replayer.
    const pass = async (kind: number) => {
      const [out] = runRepeatedPass({
        key: `kind ${kind}`,
        inputs: [{ shape: [1024], dtype: 'int32', data: ids }],
        state: [],
        body: ([t]) => [tf.add(tf.mul(tf.cast(t, 'float32'), 2), kind)],
      });
      const values = await out.data();
      out.dispose();
      return [values[0], values[1023]];
    };
    const before = replayStats();
    for (let kind = 0; kind < 9; kind++)
      for (let i = 0; i < 4; i++) expect(await pass(kind)).toEqual([kind, 2046 + kind]);
    const nine = replayStats();
    expect(nine.recordings - before.recordings).toBe(9);
    const allocated = gpuBytesAllocated()!;
    // Kind 8 is kept and replays; kind 0 made way for it, so it starts over: two eager passes, a recording.
    for (let i = 0; i < 3; i++) expect(await pass(8)).toEqual([8, 2054]);
    const kept = replayStats();
    expect([kept.recordings - nine.recordings, kept.replays - nine.replays]).toEqual([0, 3]);
    for (let i = 0; i < 4; i++) expect(await pass(0)).toEqual([0, 2046]);
    expect(replayStats().recordings - kept.recordings).toBe(1);
    // Dropping kind 1's recording for kind 0's gave its buffers back: the pool grew by less than one shape's worth.
    expect(gpuBytesAllocated()!).toBeLessThanOrEqual(allocated + 3 * 4096);
  }, 600_000);
});
