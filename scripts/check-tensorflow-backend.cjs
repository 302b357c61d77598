// Checks the `tensorflow` tfjs backend that scripts/setup-tensorflow.sh installs, and times f32 matmul.
//
//   node scripts/check-tensorflow-backend.cjs            # ops check + matmul GFLOP/s on 'tensorflow'
//   node scripts/check-tensorflow-backend.cjs cpu        # matmul GFLOP/s on pure-JS 'cpu' (no tfjs-node)
//   node scripts/check-tensorflow-backend.cjs wasm       # likewise on 'wasm'
//
// Each backend runs in its own process: importing @tensorflow/tfjs-node registers its kernels on
// the shared tfjs engine and makes 'tensorflow' the active backend.
'use strict';

const which = process.argv[2] || 'tensorflow';
const sizes = (process.env.SIZES || '512,1024').split(',').map(Number);

function assertClose(name, got, want, tol = 1e-5) {
  const g = Array.from(got);
  const ok = g.length === want.length && g.every((v, i) => Math.abs(v - want[i]) <= tol * Math.max(1, Math.abs(want[i])));
  if (!ok) throw new Error(`${name}: got [${g}], want [${want}]`);
  console.log(`  ok  ${name}: [${g.map((v) => +v.toFixed(6))}]`);
}

function checkOps(tf) {
  console.log(`backend: ${tf.getBackend()}`);
  if (tf.getBackend() !== 'tensorflow') throw new Error(`expected backend 'tensorflow', got '${tf.getBackend()}'`);
  assertClose('matMul', tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5, 6], [7, 8]])).dataSync(), [19, 22, 43, 50]);
  // d/dx sum(x^2 * w) = 2 x w
  const w = tf.tensor1d([1, 2, 3]);
  assertClose('grad', tf.grad((x) => x.square().mul(w).sum())(tf.tensor1d([1, -2, 0.5])).dataSync(), [2, -8, 3]);
  assertClose('erf', tf.erf(tf.tensor1d([0, 0.5, 1, -2])).dataSync(), [0, 0.5204999, 0.8427008, -0.9953223]);
  // duplicate indices are summed
  const scattered = tf.scatterND(tf.tensor2d([[0], [0], [2]], [3, 1], 'int32'), tf.tensor1d([1, 2, 3]), [4]);
  assertClose('scatterND (duplicates summed)', scattered.dataSync(), [3, 0, 3, 0]);
  const { values, indices } = tf.topk(tf.tensor1d([3, 1, 4, 1, 5, 9, 2]), 3);
  assertClose('topk values', values.dataSync(), [9, 5, 4]);
  assertClose('topk indices', indices.dataSync(), [5, 4, 2]);
  // gradient through a small GPT-style block: matmul + softmax + gelu-ish erf + mean
  const loss = (a) => tf.tidy(() => {
    const h = tf.matMul(a, a, false, true).softmax();
    return h.mul(tf.erf(h)).mean();
  });
  const a = tf.randomNormal([4, 8], 0, 1, 'float32', 7);
  const [gA] = tf.grads((x) => loss(x))([a]);
  if (!gA.shape.every((d, i) => d === a.shape[i]) || !Array.from(gA.dataSync()).every(Number.isFinite)) {
    throw new Error('grads through matmul/softmax/erf gave a bad gradient');
  }
  console.log('  ok  grads through matMul/softmax/erf/mean');
}

async function bench(tf) {
  for (const n of sizes) {
    const a = tf.randomUniform([n, n], -1, 1, 'float32', 1);
    const b = tf.randomUniform([n, n], -1, 1, 'float32', 2);
    const run = (k) => {
      let last;
      for (let i = 0; i < k; i++) {
        if (last) last.dispose();
        last = tf.matMul(a, b);
      }
      last.dataSync(); // waits for the work
      last.dispose();
    };
    run(2); // warm-up
    let iters = 1;
    let t = 0;
    // grow until a run takes >= 1 s, then report the best of 3 runs of that size
    for (;;) {
      const t0 = process.hrtime.bigint();
      run(iters);
      t = Number(process.hrtime.bigint() - t0) / 1e9;
      if (t >= 1 || iters >= 4096) break;
      iters *= 2;
    }
    let best = t;
    for (let r = 0; r < 2; r++) {
      const t0 = process.hrtime.bigint();
      run(iters);
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
    }
    const gflops = (2 * n ** 3 * iters) / best / 1e9;
    console.log(`  matmul f32 ${n}x${n}: ${gflops.toFixed(1)} GFLOP/s (${((best / iters) * 1e3).toFixed(2)} ms each, ${iters} per run)`);
    a.dispose();
    b.dispose();
  }
}

(async () => {
  let tf;
  if (which === 'tensorflow') {
    tf = require('@tensorflow/tfjs-node');
    checkOps(tf);
  } else {
    tf = require('@tensorflow/tfjs');
    if (which === 'wasm') {
      const wasm = require('@tensorflow/tfjs-backend-wasm');
      wasm.setWasmPaths(require('path').dirname(require.resolve('@tensorflow/tfjs-backend-wasm')) + '/');
    }
    if (!(await tf.setBackend(which))) throw new Error(`setBackend('${which}') failed`);
    await tf.ready();
  }
  console.log(`timing on '${tf.getBackend()}' (tfjs ${tf.version.tfjs}):`);
  await bench(tf);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
