/**
 * What the WebGPU adapter offers and how fast offshoot's matrix-product kernels run on it, on raw
 * Dawn (no tfjs): adapter features, limits and subgroup-matrix configurations (with and without
 * Dawn's allow_unsafe_apis), per-dispatch CPU cost, and a sweep of matmul tile variants (plain f32
 * and, where offered, cooperative-matrix) over the shapes of a Pythia-70M training step, each
 * checked against a float64 product first. One JSON line per finding.
 *
 *   node dist/bench/webgpu-probe.js [--quick] [--toggles allow_unsafe_apis,disable_robustness[;...]]
 *        [--tiles 128x128x8x8x8,256x128x8x16x8d,...]   (BMxBNxBKxTMxTN, d: two slabs; default: offshoot's tiles)
 */
/// <reference types="@webgpu/types" />
import {
  type MatMulTile,
  type MatMulVariant,
  matmulGrid,
  matmulSource,
  parseTile,
} from '../core/model/webgpu/wgsl-matmul.js';
import type { SubgroupMatrixConfig } from '../core/model/webgpu/runtime.js';
import {
  type SgMatMulVariant,
  sgMatmulGrid,
  sgMatmulSource,
  sgThreads,
  sgTile,
  sgWorkgroupBytes,
} from '../core/model/webgpu/wgsl-sgmatrix.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const togglesArg = args.indexOf('--toggles');
const tilesArg = args.indexOf('--tiles');
const scaleArg = args.indexOf('--scale');
/** Divide every dimension by this (for trying the probe on a slow adapter). */
const scale = scaleArg >= 0 ? Number(args[scaleArg + 1]) : 1;
const toggleSets =
  togglesArg >= 0
    ? args[togglesArg + 1].split(';')
    : [
        'allow_unsafe_apis',
        'allow_unsafe_apis,disable_robustness',
        'allow_unsafe_apis,disable_robustness,vulkan_enable_f16_on_nvidia,use_vulkan_memory_model',
        'allow_unsafe_apis,skip_validation',
      ];

const dawn = (await import('webgpu')) as unknown as { create(flags: string[]): GPU; globals: object };
Object.assign(globalThis, dawn.globals);

// Dawn's promises alone do not keep Node's event loop alive.
const keepAlive = setInterval(() => {}, 1000);
const out = (o: Record<string, unknown>): void => console.log(JSON.stringify(o));

interface Ctx {
  device: GPUDevice;
  adapter: GPUAdapter;
  toggles: string;
  pipelines: Map<string, GPUComputePipeline | null>;
  /** Dawn's instance lives as long as this reference does. */
  gpu: GPU;
}

async function open(toggles: string): Promise<Ctx> {
  const gpu = dawn.create(toggles ? [`enable-dawn-features=${toggles}`] : []);
  const adapter = (await gpu.requestAdapter({ powerPreference: 'high-performance' }))!;
  const info = adapter.info as GPUAdapterInfo & {
    subgroupMatrixConfigs?: SubgroupMatrixConfig[];
    subgroupMinSize?: number;
    subgroupMaxSize?: number;
  };
  const want = ['subgroups', 'shader-f16', 'chromium-experimental-subgroup-matrix', 'timestamp-query'].filter((f) =>
    adapter.features.has(f as GPUFeatureName),
  );
  const limits: Record<string, number> = {};
  for (const k of [
    'maxComputeWorkgroupStorageSize',
    'maxStorageBufferBindingSize',
    'maxBufferSize',
    'maxComputeInvocationsPerWorkgroup',
    'maxStorageBuffersPerShaderStage',
    'maxComputeWorkgroupSizeX',
    'maxComputeWorkgroupsPerDimension',
  ]) {
    limits[k] = (adapter.limits as unknown as Record<string, number>)[k];
  }
  const device = await adapter.requestDevice({ requiredFeatures: want as GPUFeatureName[], requiredLimits: limits });
  device.onuncapturederror = (ev) =>
    out({
      probe: 'uncaptured-error',
      toggles,
      message: String((ev as GPUUncapturedErrorEvent).error.message).slice(0, 400),
    });
  out({
    probe: 'adapter',
    toggles,
    description: info.description,
    vendor: info.vendor,
    architecture: info.architecture,
    features: [...adapter.features].sort(),
    requested: want,
    subgroupMinSize: info.subgroupMinSize,
    subgroupMaxSize: info.subgroupMaxSize,
    subgroupMatrixConfigs: info.subgroupMatrixConfigs ?? null,
    limits,
  });
  return { device, adapter, toggles, pipelines: new Map(), gpu };
}

async function pipeline(ctx: Ctx, key: string, code: string): Promise<GPUComputePipeline | null> {
  if (ctx.pipelines.has(key)) return ctx.pipelines.get(key)!;
  ctx.device.pushErrorScope('validation');
  const module = ctx.device.createShaderModule({ code });
  const info = await module.getCompilationInfo();
  const errors = info.messages.filter((m) => m.type === 'error');
  let p: GPUComputePipeline | null = null;
  if (errors.length === 0) {
    try {
      p = await ctx.device.createComputePipelineAsync({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    } catch (e) {
      out({ probe: 'pipeline-error', key, message: String((e as Error).message).slice(0, 600) });
    }
  } else {
    out({
      probe: 'compile-error',
      key,
      messages: errors.slice(0, 3).map((m) => `${m.lineNum}:${m.linePos} ${m.message}`.slice(0, 300)),
    });
  }
  const err = await ctx.device.popErrorScope();
  if (err) {
    out({ probe: 'validation-error', key, message: err.message.slice(0, 600) });
    p = null;
  }
  ctx.pipelines.set(key, p);
  return p;
}

function buffer(
  ctx: Ctx,
  data: Float32Array | number,
  usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
): GPUBuffer {
  const size = typeof data === 'number' ? data * 4 : data.byteLength;
  const b = ctx.device.createBuffer({ size: Math.max(16, Math.ceil(size / 16) * 16), usage });
  if (typeof data !== 'number') ctx.device.queue.writeBuffer(b, 0, data);
  return b;
}

async function readBack(ctx: Ctx, b: GPUBuffer, n: number): Promise<Float32Array> {
  const staging = ctx.device.createBuffer({ size: b.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  const enc = ctx.device.createCommandEncoder();
  enc.copyBufferToBuffer(b, 0, staging, 0, b.size);
  ctx.device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const r = new Float32Array(staging.getMappedRange().slice(0, n * 4));
  staging.unmap();
  staging.destroy();
  return r;
}

function rand(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = ((s >>> 0) / 4294967296) * 2 - 1;
  }
  return a;
}

interface Shape {
  name: string;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  S?: number;
}

type Kernel = { kind: 'simt'; v: MatMulVariant } | { kind: 'sg'; v: SgMatMulVariant };

function kernelKey(k: Kernel): string {
  return k.kind === 'simt'
    ? `simt ${k.v.BM}x${k.v.BN}x${k.v.BK} t${k.v.TM}x${k.v.TN}${k.v.double ? ' double' : ''}`
    : `sg f16->f32 ${k.v.M}x${k.v.N}x${k.v.K} sg${k.v.SGY}x${k.v.SGX} r${k.v.RM}x${k.v.RN} bk${k.v.BK}${k.v.double ? ' double' : ''}`;
}

function build(k: Kernel, s: Shape): { code: string; grid: [number, number, number]; key: string } | null {
  const S = s.S ?? 1;
  if (k.kind === 'simt') {
    const v: MatMulVariant = {
      ...k.v,
      transA: s.transA,
      transB: s.transB,
      vecA: (s.transA ? s.M : s.K) % 4 === 0,
      vecB: (s.transB ? s.K : s.N) % 4 === 0,
      vecC: s.N % 4 === 0,
      exact: s.M % k.v.BM === 0 && s.N % k.v.BN === 0 && s.K % (k.v.BK * S) === 0,
      epilogue: 'none',
      splitK: S > 1,
    };
    try {
      return { code: matmulSource(v), grid: matmulGrid(v, s.M, s.N, S), key: JSON.stringify(v) };
    } catch {
      return null;
    }
  }
  // The probe's buffers are f32: the kernel converts them to f16 as it stages them.
  const w = (n: number) => (n % 4 === 0 ? 4 : 1);
  const v: SgMatMulVariant = {
    ...k.v,
    transA: s.transA,
    transB: s.transB,
    widthA: w(s.transA ? s.M : s.K),
    widthB: w(s.transB ? s.K : s.N),
    exact: s.M % k.v.BM === 0 && s.N % k.v.BN === 0 && s.K % (k.v.BK * S) === 0,
    epilogue: 'none',
    splitK: S > 1,
  };
  if (s.K % (v.BK * S) !== 0) return null;
  return { code: sgMatmulSource(v), grid: sgMatmulGrid(v, s.M, s.N, S), key: JSON.stringify(v) };
}

const hostData = new Map<string, { a: Float32Array; b: Float32Array }>();
const gpuData = new Map<string, { A: GPUBuffer; B: GPUBuffer; C: GPUBuffer }>();

function shapeData(ctx: Ctx, s: Shape): { a: Float32Array; b: Float32Array; A: GPUBuffer; B: GPUBuffer; C: GPUBuffer } {
  const key = `${s.M}x${s.N}x${s.K}x${s.S ?? 1}`;
  let h = hostData.get(key);
  if (!h) {
    h = { a: rand(s.M * s.K, 1 + s.M), b: rand(s.K * s.N, 7 + s.N) };
    hostData.set(key, h);
  }
  const gkey = `${ctx.toggles}|${key}`;
  let g = gpuData.get(gkey);
  if (!g) {
    g = { A: buffer(ctx, h.a), B: buffer(ctx, h.b), C: buffer(ctx, s.M * s.N * (s.S ?? 1)) };
    gpuData.set(gkey, g);
  }
  return { ...h, ...g };
}

/** Runs one product: checks it against float64 on a sample of outputs, then times `reps` runs. */
async function runShape(ctx: Ctx, k: Kernel, s: Shape, reps: number, check: boolean): Promise<Record<string, unknown>> {
  const built = build(k, s);
  if (!built) return { skipped: 'variant does not fit this shape' };
  const p = await pipeline(ctx, built.key, built.code);
  if (!p) return { error: 'did not compile' };
  const S = s.S ?? 1;
  const { a, b: bb, A, B, C } = shapeData(ctx, s);
  // Poison the output so unwritten elements show.
  ctx.device.queue.writeBuffer(C, 0, new Float32Array(s.M * s.N * S).fill(NaN));
  const uni = ctx.device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  const kChunk = S > 1 ? Math.ceil(s.K / S / 64) * 64 : s.K;
  ctx.device.queue.writeBuffer(uni, 0, new Uint32Array([s.M, s.N, s.K, kChunk]));
  const bind = ctx.device.createBindGroup({
    layout: p.getBindGroupLayout(0),
    entries: [A, B, C]
      .map((buf, i) => ({ binding: i, resource: { buffer: buf } }))
      .concat([{ binding: 3, resource: { buffer: uni } }]),
  });
  const encode = (n: number) => {
    const enc = ctx.device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(p);
    pass.setBindGroup(0, bind);
    for (let i = 0; i < n; i++) pass.dispatchWorkgroups(...built.grid);
    pass.end();
    ctx.device.queue.submit([enc.finish()]);
  };
  const result: Record<string, unknown> = {};
  if (check) {
    encode(1);
    const c = await readBack(ctx, C, s.M * s.N * S);
    let nan = 0;
    for (let i = 0; i < c.length; i += 97) if (Number.isNaN(c[i])) nan++;
    // 64 sampled outputs against float64.
    let worst = 0;
    for (let t = 0; t < 64; t++) {
      const m = (t * 7919) % s.M;
      const n = (t * 104729) % s.N;
      let ref = 0;
      let mag = 0;
      for (let q = 0; q < s.K; q++) {
        const av = s.transA ? a[q * s.M + m] : a[m * s.K + q];
        const bv = s.transB ? bb[n * s.K + q] : bb[q * s.N + n];
        ref += av * bv;
        mag += Math.abs(av * bv);
      }
      let got = 0;
      for (let z = 0; z < S; z++) got += c[z * s.M * s.N + m * s.N + n];
      worst = Math.max(worst, Number.isNaN(got) ? Infinity : Math.abs(got - ref) / Math.max(mag, 1e-30));
    }
    result.maxRelErr = Number(worst.toExponential(2));
    if (nan) result.unwritten = nan;
  }
  encode(2);
  await ctx.device.queue.onSubmittedWorkDone();
  const t0 = performance.now();
  encode(reps);
  await ctx.device.queue.onSubmittedWorkDone();
  const ms = (performance.now() - t0) / reps;
  uni.destroy();
  return { ...result, ms: Number(ms.toFixed(3)), tflops: Number(((2 * s.M * s.N * s.K) / ms / 1e9).toFixed(2)) };
}

/** CPU cost of one tfjs-style dispatch: a uniform write, a bind group, a dispatch; submitted every 15. */
async function dispatchOverhead(ctx: Ctx): Promise<void> {
  const p = await pipeline(
    ctx,
    'noop',
    `@group(0) @binding(0) var<storage, read_write> x: array<f32>;
struct U { a: u32, b: u32, c: u32, d: u32 };
@group(0) @binding(1) var<uniform> u: U;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < u.a) { x[g.x] = x[g.x] + 1.0; } }`,
  );
  if (!p) return;
  const x = buffer(ctx, 4096);
  const n = 3000;
  const unis = Array.from({ length: 64 }, () =>
    ctx.device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST }),
  );
  const t0 = performance.now();
  let enc = ctx.device.createCommandEncoder();
  let pass = enc.beginComputePass();
  for (let i = 0; i < n; i++) {
    const uni = unis[i % 64];
    ctx.device.queue.writeBuffer(uni, 0, new Uint32Array([4096, 0, 0, 0]));
    const bind = ctx.device.createBindGroup({
      layout: p.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: x } },
        { binding: 1, resource: { buffer: uni } },
      ],
    });
    pass.setPipeline(p);
    pass.setBindGroup(0, bind);
    pass.dispatchWorkgroups(64);
    if (i % 15 === 14) {
      pass.end();
      ctx.device.queue.submit([enc.finish()]);
      enc = ctx.device.createCommandEncoder();
      pass = enc.beginComputePass();
    }
  }
  pass.end();
  ctx.device.queue.submit([enc.finish()]);
  const cpu = performance.now() - t0;
  await ctx.device.queue.onSubmittedWorkDone();
  const total = performance.now() - t0;
  out({
    probe: 'dispatch-overhead',
    toggles: ctx.toggles,
    dispatches: n,
    cpuUsPerDispatch: Number(((cpu * 1000) / n).toFixed(1)),
    wallUsPerDispatch: Number(((total * 1000) / n).toFixed(1)),
  });
}

const tiles: MatMulTile[] =
  tilesArg >= 0
    ? args[tilesArg + 1].split(',').map(parseTile)
    : Object.values((await import('../core/model/webgpu/matmul.js')).MATMUL_TILES);

const shapes: Shape[] = [
  { name: 'square4096 NN', M: 4096, N: 4096, K: 4096, transA: false, transB: false },
  { name: 'logits NT', M: 4096, N: 50304, K: 512, transA: false, transB: true },
  { name: 'dH NN (split 8)', M: 4096, N: 512, K: 50304, transA: false, transB: false, S: 8 },
  { name: 'dWout TN', M: 50304, N: 512, K: 4096, transA: true, transB: false },
  { name: 'mlp-up NT', M: 4096, N: 2048, K: 512, transA: false, transB: true },
  { name: 'mlp-down NT', M: 4096, N: 512, K: 2048, transA: false, transB: true },
  { name: 'dW qkv TN (split 4)', M: 1536, N: 512, K: 4096, transA: true, transB: false, S: 4 },
];

for (const toggles of toggleSets) {
  const ctx = await open(toggles);
  await dispatchOverhead(ctx);
  if (toggles.includes('skip_validation')) {
    ctx.device.destroy();
    continue;
  }
  const info = ctx.adapter.info as GPUAdapterInfo & {
    subgroupMatrixConfigs?: SubgroupMatrixConfig[];
    subgroupMaxSize?: number;
    subgroupMinSize?: number;
  };
  const kernels: Kernel[] = tiles.map((t) => ({ kind: 'simt', v: { ...t } as MatMulVariant }));
  const wgMem = ctx.device.limits.maxComputeWorkgroupStorageSize;
  const sgSize = info.subgroupMaxSize ?? 32;
  if (
    ctx.device.features.has('chromium-experimental-subgroup-matrix' as GPUFeatureName) &&
    info.subgroupMinSize === info.subgroupMaxSize
  ) {
    for (const cfg of info.subgroupMatrixConfigs ?? []) {
      if (cfg.componentType !== 'f16' || cfg.resultComponentType !== 'f32' || !ctx.device.features.has('shader-f16'))
        continue;
      for (const [SGY, SGX, RM, RN, BK] of [
        [2, 2, 2, 2, 32],
        [2, 2, 4, 4, 32],
        [4, 2, 2, 4, 32],
        [2, 2, 4, 4, 64],
      ]) {
        for (const double of [false, true]) {
          if (cfg.M * RM * SGY > 128 || BK % cfg.K !== 0) continue;
          const t = sgTile({
            M: cfg.M,
            N: cfg.N,
            K: cfg.K,
            SGX,
            SGY,
            RM,
            RN: (RN * 16) / cfg.N,
            BK,
            staging: 'workgroup',
            double,
          });
          const v: SgMatMulVariant = {
            ...t,
            subgroupSize: sgSize,
            transA: false,
            transB: false,
            aType: 'f32',
            bType: 'f32',
            widthA: 4,
            widthB: 4,
            exact: false,
            epilogue: 'none',
            splitK: false,
            batched: false,
            triangle: 'none',
            walkM: false,
          };
          if (sgWorkgroupBytes(v) > wgMem || sgThreads(v) > 1024) continue;
          kernels.push({ kind: 'sg', v });
          if (quick) break;
        }
      }
    }
  }
  for (const k of kernels) {
    // A small odd shape for correctness of the bounds paths (plain kernels only handle any shape).
    if (k.kind === 'simt') {
      for (const [transA, transB] of [
        [false, false],
        [false, true],
        [true, false],
      ] as const) {
        const r = await runShape(ctx, k, { name: 'odd', M: 200, N: 132, K: 100, transA, transB }, 1, true);
        if ((r.maxRelErr as number) > 1e-5 || r.error)
          out({ probe: 'matmul-check-failed', toggles, kernel: kernelKey(k), transA, transB, ...r });
      }
    }
    for (const s0 of quick ? shapes.slice(0, 3) : shapes) {
      const d = (x: number) => Math.max(4, Math.round(x / scale / 4) * 4);
      const s = scale === 1 ? s0 : { ...s0, M: d(s0.M), N: d(s0.N), K: d(s0.K) };
      const r = await runShape(ctx, k, s, s.M * s.N * s.K > 5e10 ? 5 : 10, true);
      out({ probe: 'matmul', toggles, kernel: kernelKey(k), shape: s.name, ...r });
      if (r.error) break;
    }
  }
  for (const [key, g] of gpuData) if (key.startsWith(`${toggles}|`)) for (const b of Object.values(g)) b.destroy();
  ctx.device.destroy();
}
clearInterval(keepAlive);
