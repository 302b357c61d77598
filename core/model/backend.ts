/**
 * Compute backend selection for tfjs (DESIGN.md "Compute").
 *
 * Backends, best first: `cuda` (NVIDIA's libraries from the CUDA 13 wheels, cuda/) > `tensorflow`
 * (@tensorflow/tfjs-node-gpu, then @tensorflow/tfjs-node; optional, native libtensorflow) > `webgpu`
 * (@tensorflow/tfjs-backend-webgpu on Dawn, npm `webgpu`) > `wasm` > `cpu`.
 * The choice is one setting (`--backend`, env `OFFSHOOT_BACKEND`, default `auto`). `auto` passes over a
 * WebGPU adapter that is a software rasteriser (Mesa lavapipe): it is slower than wasm; asking for
 * `webgpu` explicitly still uses it (that is how CI exercises the WebGPU path on CPU machines).
 * Which device: the cuda backend opens the first GPU CUDA shows the process (CUDA_VISIBLE_DEVICES), the
 * webgpu backend the adapter env OFFSHOOT_WEBGPU_ADAPTER names (an index or a name; default Dawn's
 * first, high-performance preferred).
 */
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { precision } from './precision.js';
import * as tf from './tfjs.js';

/** The backends, in the order `auto` tries them. */
export const BACKEND_NAMES = ['cuda', 'tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];
/** What `--backend` (env OFFSHOOT_BACKEND) accepts. */
export const BACKEND_CHOICES = ['auto', ...BACKEND_NAMES] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];

const GPU_BACKENDS: readonly BackendName[] = ['webgpu', 'cuda'];

/**
 * Whether the active backend is a GPU one (webgpu, cuda). Those compile programs for the shapes they
 * meet (where warming up a long-lived process pays), rather than running precompiled kernels; and they
 * queue work on the device while the host goes on until something is read back (so work queued before
 * the host handles earlier results runs meanwhile), where the others compute each op when called.
 */
export function gpuBackendActive(): boolean {
  return (GPU_BACKENDS as readonly string[]).includes(tf.getBackend());
}

export interface BackendInfo {
  /** The tfjs backend now active. */
  name: BackendName;
  /** Why it was chosen (explicit request, or what `auto` skipped and why). */
  reason: string;
  /** What runs it, e.g. the WebGPU adapter or the tfjs-node package. */
  detail?: string;
}

const ENV_VAR = 'OFFSHOOT_BACKEND';

/** Parses a backend setting (case-insensitive, trimmed); throws naming the valid values. */
export function parseBackendChoice(s: string): BackendChoice {
  const v = String(s).trim().toLowerCase();
  if ((BACKEND_CHOICES as readonly string[]).includes(v)) return v as BackendChoice;
  throw new Error(`backend: invalid value ${JSON.stringify(s)}; expected one of ${BACKEND_CHOICES.join(', ')}`);
}

function choiceFromEnv(): BackendChoice {
  const raw = process.env[ENV_VAR];
  if (raw === undefined || raw.trim() === '') return 'auto';
  try {
    return parseBackendChoice(raw);
  } catch (e) {
    throw new Error(`${ENV_VAR}: ${(e as Error).message}`);
  }
}

const defaultLog = (msg: string): void => {
  process.stderr.write(`${msg}\n`);
};

/** One successful result per choice; a failed attempt is forgotten so that it can be retried. */
const inits = new Map<BackendChoice, Promise<BackendInfo>>();

/**
 * Selects and activates a tfjs backend. `choice` defaults to env OFFSHOOT_BACKEND, else `auto`, which takes
 * the first that loads of tensorflow > webgpu (hardware adapter only) > wasm > cpu. Logs one line saying
 * what was chosen and why (to stderr unless `log` is given).
 * An explicit backend that cannot load throws an Error saying what is missing and how to fix it.
 * Idempotent per choice: later calls return the same info without registering anything again (they
 * only make that backend the active one again if something switched away from it).
 */
export async function initBackend(
  choice: BackendChoice = choiceFromEnv(),
  log: (msg: string) => void = defaultLog,
): Promise<BackendInfo> {
  const c = parseBackendChoice(choice);
  let p = inits.get(c);
  if (p === undefined) {
    p = doInit(c, log);
    inits.set(c, p);
    p.catch(() => inits.delete(c));
  }
  const info = await p;
  if (tf.getBackend() !== info.name) await activate(info.name);
  return info;
}

async function doInit(choice: BackendChoice, log: (msg: string) => void): Promise<BackendInfo> {
  let info: BackendInfo;
  if (choice === 'auto') {
    const skipped: string[] = [];
    let found: BackendInfo | undefined;
    for (const name of BACKEND_NAMES) {
      try {
        if (name === 'webgpu') {
          // A software adapter (Mesa lavapipe, SwiftShader) is several times slower than wasm: measured
          // on 2 cores, tfjs f32 matmul 512x512 ran at ~2.9 GFLOP/s on lavapipe vs ~26 on wasm SIMD.
          const probe = await probeWebGPU();
          if (probe.software) {
            skipped.push(
              `webgpu skipped: software adapter only (${probe.description}), slower than wasm; --backend webgpu forces it`,
            );
            continue;
          }
        }
        const { detail } = await load(name);
        await activate(name);
        found = { name, reason: skipped.length ? `auto; ${skipped.join('; ')}` : 'auto: best available', detail };
        break;
      } catch (e) {
        skipped.push(`${name} unavailable: ${e instanceof BackendUnavailable ? e.short : firstLine(e)}`);
      }
    }
    if (found === undefined) throw new Error(`backend: no tfjs backend could be initialised (${skipped.join('; ')})`);
    info = found;
  } else {
    const { detail } = await load(choice);
    await activate(choice);
    info = { name: choice, reason: 'requested', detail };
  }
  log(`backend: ${info.name}${info.detail ? ` (${info.detail})` : ''}; ${info.reason}`);
  return info;
}

async function activate(name: BackendName): Promise<void> {
  let ok: boolean;
  try {
    ok = await tf.setBackend(name);
  } catch (e) {
    throw new Error(`backend ${name}: failed to initialise: ${firstLine(e)}`);
  }
  // tfjs catches a failing backend factory, warns on the console and returns false.
  if (!ok) throw new Error(`backend ${name}: failed to initialise (tfjs's warning above says why)`);
  await tf.ready();
}

/** A backend that cannot load: `short` says what is missing, the message adds how to fix it. */
class BackendUnavailable extends Error {
  constructor(
    readonly backend: BackendName,
    readonly short: string,
    hint: string,
  ) {
    super(`${backend} backend unavailable: ${short}. ${hint}`);
    this.name = 'BackendUnavailable';
  }
}

function firstLine(e: unknown): string {
  const msg = e instanceof Error ? e.message : String(e);
  // Node's module-not-found messages end with " imported from <file>": noise here.
  return (msg.split('\n')[0] ?? '').replace(/ imported from \S+$/, '');
}

// ---------------------------------------------------------------------------------------------------
// Loading: registers the backend's factory with tfjs and its kernels with the operations (its
// folder's register.ts), once per process.

const loads = new Map<BackendName, Promise<{ detail?: string }>>();

function load(name: BackendName): Promise<{ detail?: string }> {
  let p = loads.get(name);
  if (p === undefined) {
    p = LOADERS[name]();
    loads.set(name, p);
    // A backend that could not load may load later (e.g. after scripts/setup-webgpu.sh); let it retry.
    p.catch(() => loads.delete(name));
  }
  return p;
}

const LOADERS: Record<BackendName, () => Promise<{ detail?: string }>> = {
  cuda: loadCuda,
  tensorflow: loadTensorflow,
  webgpu: loadWebGPU,
  wasm: loadWasm,
  cpu: loadCpu,
};

const require = createRequire(import.meta.url);

function packageVersion(pkg: string): string {
  try {
    return (require(`${pkg}/package.json`) as { version?: string }).version ?? '?';
  } catch {
    return '?';
  }
}

async function loadCuda(): Promise<{ detail?: string }> {
  const cuda = await import('./cuda/index.js');
  let device;
  try {
    device = cuda.cudaDevice();
  } catch (e) {
    if (e instanceof cuda.CudaUnavailable) {
      throw new BackendUnavailable(
        'cuda',
        e.short,
        'On a machine with an NVIDIA GPU and driver, run scripts/setup-cuda.sh (docs/cuda-backend.md).',
      );
    }
    throw e;
  }
  cuda.registerCuda();
  await import('./cuda/register.js');
  const { info } = device;
  return {
    detail: `${info.name} (${info.arch}, ${info.multiprocessors} SMs), driver CUDA ${info.driverVersion}, NVRTC ${info.nvrtcVersion}; ${info.libraries}`,
  };
}

async function loadCpu(): Promise<{ detail?: string }> {
  await import('@tensorflow/tfjs-backend-cpu');
  return { detail: 'pure JS, single-threaded' };
}

async function loadWasm(): Promise<{ detail?: string }> {
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  if (!wasmPathsSet) {
    // The .wasm binaries sit beside the package's main file (dist/); tell it so explicitly, as
    // bundlers and test runners move the JS away from them.
    const dist = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm'));
    wasm.setWasmPaths(dist + path.sep);
    wasmPathsSet = true;
  }
  // tfjs-backend-wasm disables its threaded build under Node (tfjs issue 3830), so XNNPACK runs on
  // one thread; SIMD is detected (Node 20 has it) and picks tfjs-backend-wasm-simd.wasm.
  const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
  await import('./wasm/register.js');
  return { detail: `${simd ? 'SIMD' : 'no SIMD'}, single-threaded` };
}
let wasmPathsSet = false;

async function loadTensorflow(): Promise<{ detail?: string }> {
  const problems: string[] = [];
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    const addon = nativeAddon(pkg);
    if (addon === null) {
      problems.push(`${pkg} not installed`);
      continue;
    }
    if (!fs.existsSync(addon)) {
      // Importing it anyway would register its kernels and then fail, leaving noise behind.
      problems.push(
        `${pkg} has no native addon (${addon}); run scripts/setup-tensorflow.sh${pkg.endsWith('-gpu') ? ' --gpu' : ''}`,
      );
      continue;
    }
    try {
      // A variable specifier: these packages are optional and absent from most installs.
      const spec: string = pkg;
      await import(spec);
      if (tf.findBackendFactory('tensorflow') == null) throw new Error(`${pkg} registered no 'tensorflow' backend`);
      await import('./tensorflow/register.js');
      return { detail: `${pkg} ${packageVersion(pkg)}` };
    } catch (e) {
      const msg = firstLine(e);
      const missing = new RegExp(`Cannot find (package|module) '${pkg}'`).test(msg);
      problems.push(missing ? `${pkg} not installed` : `${pkg} failed to load: ${msg}`);
    }
  }
  throw new BackendUnavailable(
    'tensorflow',
    problems.join('; '),
    'Run scripts/setup-tensorflow.sh (CPU) or scripts/setup-tensorflow.sh --gpu (CUDA): it builds tfjs-node ' +
      "against TensorFlow's PyPI wheel (docs/tensorflow-backend.md). Or choose another backend: webgpu, wasm, cpu.",
  );
}

/** Where a tfjs-node package loads its native addon from, or null when the package is absent. */
function nativeAddon(pkg: string): string | null {
  let manifest: string;
  try {
    manifest = require.resolve(`${pkg}/package.json`);
  } catch {
    return null;
  }
  const preGyp = createRequire(manifest)('@mapbox/node-pre-gyp') as { find(packageJson: string): string };
  return preGyp.find(manifest);
}

// ---------------------------------------------------------------------------------------------------
// WebGPU in Node: Dawn through the `webgpu` package.
//
// tfjs-backend-webgpu expects a browser: `navigator.gpu` and the GPU* constants (GPUBufferUsage,
// GPUMapMode, ...) as globals. It registers its own factory at import time only if navigator.gpu already
// exists, and that factory fails obscurely when there is no adapter. So we set the globals, request the
// adapter and device ourselves (with the limits and features tfjs's own factory asks for), and register a
// factory that wraps that device in the package's exported WebGPUBackend.
//
// Process exit: with dawn.node 0.6.2 the process exits by itself once the event loop is empty, with the
// device alive and `navigator.gpu` still referenced (verified with tfjs work, device.lost and
// onuncapturederror handlers attached). The webgpu README warns that a global reference to the GPU
// object can keep Node alive (crbug.com/387965810); if that ever shows up, `delete navigator.gpu`.

/** Limits tfjs's own factory raises to the adapter's maxima, plus the storage-buffer count. */
const WEBGPU_LIMITS = [
  'maxComputeWorkgroupStorageSize',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupSizeX',
  'maxComputeInvocationsPerWorkgroup',
  'maxStorageBuffersPerShaderStage',
] as const;

const SETUP_HINT =
  'On a CPU-only Debian bookworm machine run scripts/setup-webgpu.sh (Mesa lavapipe 25.x from ' +
  'bookworm-backports plus libvulkan1); on a GPU machine install the vendor Vulkan driver and libvulkan1';

interface GpuLike {
  requestAdapter(options?: { powerPreference?: 'low-power' | 'high-performance' }): Promise<AdapterLike | null>;
}
interface AdapterLike {
  features: ReadonlySet<string>;
  limits: Record<string, number>;
  info?: { vendor?: string; architecture?: string; device?: string; description?: string; isFallbackAdapter?: boolean };
  requestDevice(descriptor?: {
    requiredFeatures?: string[];
    requiredLimits?: Record<string, number>;
  }): Promise<DeviceLike>;
}
interface DeviceLike {
  lost: Promise<{ reason: string; message: string }>;
  onuncapturederror: ((ev: { error: { message: string } }) => void) | null;
}

interface WebGPUProbe {
  adapter: AdapterLike;
  software: boolean;
  description: string;
}

let probing: Promise<WebGPUProbe> | undefined;

/** Sets up navigator.gpu and the GPU* globals from Dawn and requests an adapter (once, unless it fails). */
function probeWebGPU(): Promise<WebGPUProbe> {
  if (probing === undefined) {
    probing = doProbeWebGPU();
    probing.catch(() => {
      probing = undefined;
    });
  }
  return probing;
}

/**
 * Dawn toggles, from env OFFSHOOT_DAWN_TOGGLES (comma-separated; it replaces all of the defaults
 * below). allow_unsafe_apis exposes experimental adapter features such as
 * chromium-experimental-subgroup-matrix; disable_robustness drops the clamp Dawn adds to every
 * storage and workgroup access, which guards browsers against untrusted shaders: the kernels run
 * here check their own bounds, and the clamp cost 5% of a training step on an H200
 * (docs/gpu-kernels.md). On NVIDIA (`vendor`), Dawn withholds shader-f16, and with it the f16
 * subgroup-matrix configurations (the tensor cores), unless vulkan_enable_f16_on_nvidia is on;
 * use_vulkan_memory_model is how they were measured.
 */
export function dawnToggles(vendor?: string): string {
  const override = process.env.OFFSHOOT_DAWN_TOGGLES;
  if (override !== undefined) return override.trim();
  const base = 'allow_unsafe_apis,disable_robustness';
  return /nvidia/i.test(vendor ?? '') ? `${base},${NVIDIA_TOGGLES}` : base;
}
const NVIDIA_TOGGLES = 'vulkan_enable_f16_on_nvidia,use_vulkan_memory_model';

function dawnFlags(vendor?: string): string[] {
  const toggles = dawnToggles(vendor);
  // Dawn's `null` backend records and validates commands but runs nothing: it measures the host's
  // cost of a step on any machine (bench/train-throughput's hostMs).
  const dawnBackend = process.env.OFFSHOOT_DAWN_BACKEND?.trim();
  return [
    ...(toggles ? [`enable-dawn-features=${toggles}`] : []),
    // Browsers round timestamps to about 0.1 ms against timing attacks; profiles want them exact.
    'disable-dawn-features=timestamp_quantization',
    ...(dawnBackend ? [`backend=${dawnBackend}`] : []),
  ];
}

async function doProbeWebGPU(): Promise<WebGPUProbe> {
  let dawn: { create(flags: string[]): unknown; globals: object };
  try {
    dawn = (await import('webgpu')) as unknown as typeof dawn;
  } catch (e) {
    throw new BackendUnavailable(
      'webgpu',
      `the Dawn bindings (npm package "webgpu") failed to load: ${firstLine(e)}`,
      'Reinstall the "webgpu" package; it ships dawn.node for linux-x64/arm64, darwin and win32.',
    );
  }
  // Registers tfjs's webgpu kernels and WEBGPU_* flags. Its import-time factory (registered only when
  // navigator.gpu already exists) is replaced in loadWebGPU.
  await import('@tensorflow/tfjs-backend-webgpu');
  const g = globalThis as Record<string, unknown>;
  for (const [k, v] of Object.entries(dawn.globals)) if (!(k in g)) g[k] = v;
  let nav = g.navigator as { gpu?: unknown } | undefined;
  if (nav == null) {
    // Node 20 has no navigator; Node 21+ has one without `gpu`.
    nav = {};
    Object.defineProperty(globalThis, 'navigator', { value: nav, writable: true, configurable: true });
  }
  const lowPower = tf.env().getBool('WEBGPU_USE_LOW_POWER_GPU') === true;
  const options = { powerPreference: lowPower ? 'low-power' : 'high-performance' } as const;
  if (nav.gpu == null) {
    const chosen = await chosenAdapter(dawn);
    const flags = (vendor?: string) => [...dawnFlags(vendor), ...(chosen ? [`adapter=${chosen}`] : [])];
    // The vendor's toggles are adapter toggles: a first instance finds the adapter's vendor, a second
    // one has them (a missing adapter is reported below).
    let gpu = dawn.create(flags()) as GpuLike;
    const vendor = (await gpu.requestAdapter(options).catch(() => null))?.info?.vendor;
    if (dawnToggles(vendor) !== dawnToggles()) gpu = dawn.create(flags(vendor)) as GpuLike;
    Object.defineProperty(nav, 'gpu', { value: gpu, writable: true, configurable: true });
  }
  const gpu = nav.gpu as GpuLike;
  let adapter: AdapterLike | null;
  try {
    adapter = await gpu.requestAdapter(options);
  } catch (e) {
    const wanted = process.env.OFFSHOOT_WEBGPU_ADAPTER?.trim();
    if (!wanted) throw e;
    // Dawn rejects when the adapter named is not there, listing those that are.
    const available = String(e instanceof Error ? e.message : e)
      .split('Available adapters:')[1]
      ?.trim()
      .replace(/\s*\n\s*/g, ' ');
    throw new BackendUnavailable(
      'webgpu',
      `OFFSHOOT_WEBGPU_ADAPTER=${wanted}: no such adapter (${available ? `Dawn finds: ${available}` : firstLine(e)})`,
      'Name an adapter Dawn finds, or give its index.',
    );
  }
  if (adapter == null)
    throw new BackendUnavailable('webgpu', 'Dawn found no WebGPU adapter (no Vulkan driver)', SETUP_HINT);
  const info = adapter.info ?? {};
  const software =
    info.isFallbackAdapter === true ||
    info.architecture === 'software' ||
    /llvmpipe|lavapipe|swiftshader/i.test(`${info.description} ${info.device}`);
  return { adapter, software, description: describeAdapter(info) };
}

/** The adapters Dawn finds (backend and device name, in its order), from the list it gives when asked for one it lacks. */
async function dawnAdapters(dawn: {
  create(flags: string[]): unknown;
}): Promise<Array<{ backend: string; name: string }>> {
  const gpu = dawn.create([...dawnFlags(), 'adapter=\u0001no such adapter']) as GpuLike;
  try {
    await gpu.requestAdapter();
    return []; // resolved without one: no adapter at all
  } catch (e) {
    const text = e instanceof Error ? e.message : String(e);
    return [...text.matchAll(/^ \* backend: '([^']*)', name: '(.*)'$/gm)].map((m) => ({ backend: m[1], name: m[2] }));
  }
}

/**
 * The adapter env OFFSHOOT_WEBGPU_ADAPTER asks for, as Dawn's `adapter=` flag takes it (a name it
 * matches by substring, first match wins): an index into Dawn's list of adapters (how
 * `offshoot worker --gpus` pins a process to a GPU), or a name. Undefined when it is not set.
 * Dawn's Node binding selects adapters by name only, so of several adapters with the same name (a host
 * of identical GPUs) only the first can be chosen: asking for another by index is an error saying so.
 */
async function chosenAdapter(dawn: { create(flags: string[]): unknown }): Promise<string | undefined> {
  const wanted = process.env.OFFSHOOT_WEBGPU_ADAPTER?.trim();
  if (!wanted) return undefined;
  if (!/^\d+$/.test(wanted)) return wanted;
  const index = Number(wanted);
  const adapters = await dawnAdapters(dawn);
  const listed = adapters.map((a, i) => `${i} '${a.name}' (${a.backend})`).join(', ') || 'none';
  if (index >= adapters.length) {
    throw new BackendUnavailable(
      'webgpu',
      `OFFSHOOT_WEBGPU_ADAPTER=${wanted}: Dawn finds ${adapters.length} adapter${adapters.length === 1 ? '' : 's'} (${listed})`,
      'Choose one of those indices, or a name.',
    );
  }
  const name = adapters[index].name;
  const first = adapters.findIndex((a) => a.name.includes(name));
  if (first !== index) {
    throw new BackendUnavailable(
      'webgpu',
      `OFFSHOOT_WEBGPU_ADAPTER=${wanted}: adapter ${index} '${name}' cannot be told apart from adapter ${first} (Dawn's Node binding picks adapters by name; ${listed})`,
      'On a host of identical GPUs run one webgpu process per container with one GPU each, or use the cuda backend (docs/multi-gpu.md).',
    );
  }
  return name;
}

async function loadWebGPU(): Promise<{ detail?: string }> {
  const { adapter, description } = await probeWebGPU();
  const requiredLimits: Record<string, number> = {};
  for (const k of WEBGPU_LIMITS) {
    const v = adapter.limits[k];
    if (typeof v === 'number') requiredLimits[k] = v;
  }
  // tfjs uses timestamp-query for profiling and bgra8unorm-storage for canvas output; its own factory
  // passes the latter wrapped in an array by mistake.
  // shader-f16 and subgroup matrices for mixed precision's f16 products (webgpu/half.ts); tfjs's own
  // kernels use none of them.
  const requiredFeatures = [
    'timestamp-query',
    'bgra8unorm-storage',
    'shader-f16',
    'subgroups',
    'chromium-experimental-subgroup-matrix',
  ].filter((f) => adapter.features.has(f));
  let device: DeviceLike;
  try {
    device = await adapter.requestDevice({ requiredFeatures, requiredLimits });
  } catch (e) {
    throw new BackendUnavailable('webgpu', `requestDevice failed on ${description}: ${firstLine(e)}`, SETUP_HINT);
  }
  device.onuncapturederror = (ev) => {
    process.stderr.write(`webgpu: uncaptured error: ${ev.error.message}\n`);
  };
  void device.lost.then((l) => {
    if (l.reason !== 'destroyed') process.stderr.write(`webgpu: device lost (${l.reason}): ${l.message}\n`);
  });

  const { WebGPUBackend } = await import('@tensorflow/tfjs-backend-webgpu');
  const { adoptBackend } = await import('./webgpu/runtime.js');
  if (tf.findBackendFactory('webgpu') != null) tf.removeBackend('webgpu');
  const info = adapter.info ?? {};
  tf.registerBackend(
    'webgpu',
    // tfjs types the device and info as the DOM's GPUDevice/GPUAdapterInfo, which this project's lib lacks.
    () => adoptBackend(new WebGPUBackend(device as never, info as never), info),
    3,
  );
  tf.env().set('WEBGPU_DEFERRED_SUBMIT_BATCH_SIZE', submitBatch());
  await import('./webgpu/register.js');
  return { detail: `adapter: ${description}; ${await describeCompute(adapter)}` };
}

/**
 * Dispatches recorded before the command buffer is submitted, from env OFFSHOOT_WEBGPU_SUBMIT_BATCH.
 * The default is tfjs's, 15: on the H200 machine each submit cost the host about 0.2 ms, but 64 or
 * 128, which saved the host 1–4 ms a step, came with more slow processes (docs/benchmarks.md).
 * offshoot's dispatches also submit early once 256 MiB of freed tensors wait.
 */
function submitBatch(): number {
  const raw = process.env.OFFSHOOT_WEBGPU_SUBMIT_BATCH?.trim();
  if (!raw) return DEFAULT_SUBMIT_BATCH;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1)
    throw new Error(
      `OFFSHOOT_WEBGPU_SUBMIT_BATCH: expected a whole number of dispatches ≥ 1, got ${JSON.stringify(raw)}`,
    );
  return n;
}
const DEFAULT_SUBMIT_BATCH = 15;

/** What the fused kernels can use on this adapter, and what the matrix products run on (docs/gpu-kernels.md). */
async function describeCompute(adapter: AdapterLike): Promise<string> {
  const info = (adapter.info ?? {}) as {
    subgroupMinSize?: number;
    subgroupMaxSize?: number;
    subgroupMatrixConfigs?: Iterable<{
      componentType: string;
      resultComponentType: string;
      M: number;
      N: number;
      K: number;
    }>;
  };
  const parts: string[] = [];
  if (adapter.features.has('subgroups'))
    parts.push(`subgroups ${info.subgroupMinSize ?? '?'}-${info.subgroupMaxSize ?? '?'}`);
  parts.push(adapter.features.has('shader-f16') ? 'shader-f16' : 'no shader-f16');
  const configs = adapter.features.has('chromium-experimental-subgroup-matrix')
    ? [...(info.subgroupMatrixConfigs ?? [])]
    : [];
  if (configs.length > 0)
    parts.push(
      `subgroup-matrix [${configs.map((c) => `${c.componentType}>${c.resultComponentType} ${c.M}x${c.N}x${c.K}`).join(', ')}]`,
    );
  if (process.env.OFFSHOOT_FUSED_KERNELS === '0') {
    parts.push('fused kernels off');
    return parts.join(', ');
  }
  const { chooseHalfProducts, matrixUnavailable } = await import('./webgpu/half.js');
  const caps = {
    shaderF16: adapter.features.has('shader-f16'),
    subgroupMatrixConfigs: configs,
    subgroupMinSize: info.subgroupMinSize ?? null,
    subgroupMaxSize: info.subgroupMaxSize ?? null,
  };
  const p = precision();
  const products = chooseHalfProducts(p, caps);
  const why = products === 'off' && p === 'mixed' ? matrixUnavailable(caps) : null;
  const what = {
    matrix: 'f16 subgroup-matrix products, f32 accumulation, loss scaling',
    storage: 'f16 operands on the f32 register-tiled products, loss scaling',
    off: 'f32 register-tiled products',
  }[products];
  parts.push(`fused kernels on, precision ${p}: ${what}${why ? ` (${why})` : ''}`);
  return parts.join(', ');
}

function describeAdapter(info: NonNullable<AdapterLike['info']>): string {
  const api =
    process.env.OFFSHOOT_DAWN_BACKEND?.trim() ||
    (process.platform === 'darwin' ? 'Metal' : process.platform === 'win32' ? 'D3D12' : 'Vulkan');
  const name = info.description || info.device || 'unknown';
  const tags = new Set([info.vendor, info.architecture, info.isFallbackAdapter ? 'software' : undefined]);
  const extra = [...tags].filter((t): t is string => !!t);
  return `${name}${extra.length ? ` [${extra.join(', ')}]` : ''}, Dawn/${api}`;
}
