/**
 * Matrix products on the WebGPU backend: offshoot's register-tiled f32 kernel (wgsl-matmul.ts) and,
 * for mixed precision's f16 products, its subgroup-matrix kernel (wgsl-sgmatrix.ts). A plan per shape
 * (tile, and split-K when the output has too few tiles to fill the GPU and K is long), bias and
 * bias + GELU epilogues, and an autotuner that times the candidate
 * plans of each shape class seen so far on the device and keeps the fastest (autotuneMatMuls), in
 * this process and in a plan file per GPU (matmul-plans.ts), so that no class is tuned twice.
 * Shapes are uniforms of the kernels: a pipeline serves every shape of its variant (tile, transposes,
 * epilogue, and what stays compiled in for speed: four-wide loads and the absence of bounds checks).
 */
/// <reference types="@webgpu/types" />
import { createHash } from 'node:crypto';
import * as path from 'node:path';

import { measureShapeCostAsync, shapeClassesEnabled } from '../shape-costs.js';
import * as tf from '../tfjs.js';

import { f16MatrixConfigs, halfProducts, matrixUnavailable, toHalf } from './half.js';
import {
  type GpuIdentity,
  type PlanRecord,
  planCacheDir,
  planDirs,
  planFileName,
  readPlanFile,
  savePlans,
} from './matmul-plans.js';
import {
  type Capabilities,
  type Kernel,
  type UniformValue,
  allocate,
  capabilities,
  compileError,
  dispatch,
  grid1d,
  kernelFor,
  precompile,
  release,
  releaseFreeBuffers,
  webgpuBackend,
} from './runtime.js';
import {
  type MatMulTile,
  type MatMulVariant,
  type OperandType,
  matmulGrid,
  matmulSource,
  parseTile,
  sumSlicesSource,
  sumSlicesWideSource,
  tileName,
  variantKey,
} from './wgsl-matmul.js';
import {
  type SgMatMulTile,
  type SgMatMulVariant,
  sgMatmulSource,
  sgThreads,
  sgTile,
  sgTileDescription,
  sgTileKey,
  sgVariantKey,
  sgBiasRowsSource,
  sgMatmulGrid,
  sgStoresDirect,
  sgVariantProblem,
  sgWorkgroupBytes,
} from './wgsl-sgmatrix.js';

/** The tiles the planner and the autotuner choose from (every one is covered by the kernel tests). */
export const MATMUL_TILES: Record<string, MatMulTile> = {
  large: { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 },
  largeK16: { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8 },
  tall: { BM: 128, BN: 128, BK: 8, TM: 16, TN: 4 },
  medium: { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4 },
  small: { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
  wide: { BM: 256, BN: 128, BK: 16, TM: 8, TN: 8 },
  wideN: { BM: 128, BN: 256, BK: 16, TM: 8, TN: 16 },
  largeDouble: { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8, double: true },
  largeK16Double: { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8, double: true },
  tallDouble: { BM: 128, BN: 128, BK: 8, TM: 16, TN: 4, double: true },
  mediumDouble: { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4, double: true },
};
/**
 * Narrower tiles the autotuner also tries for batched products (attention's, whose N is the head
 * size): more workgroups per product, shorter per-invocation work.
 */
export const BATCHED_TILES: Record<string, MatMulTile> = {
  ...MATMUL_TILES,
  narrow: { BM: 64, BN: 64, BK: 16, TM: 8, TN: 4 },
  slim: { BM: 32, BN: 64, BK: 16, TM: 4, TN: 4 },
};
const { large: LARGE, medium: MEDIUM, small: SMALL } = MATMUL_TILES;
/** Workgroups that fill a large GPU about twice (an H100/H200 has 132 multiprocessors). */
const TARGET_WORKGROUPS = 264;

/** OFFSHOOT_MATMUL_TILE=BMxBNxBKxTMxTN[d] forces one tile (d: two slabs in workgroup memory); OFFSHOOT_MATMUL_SPLITK=0 turns split-K off. */
const forcedTile = process.env.OFFSHOOT_MATMUL_TILE ? parseTile(process.env.OFFSHOOT_MATMUL_TILE) : null;
const splitKEnabled = process.env.OFFSHOOT_MATMUL_SPLITK !== '0';

export interface MatMulPlan {
  /** A register tile of the f32 kernel, or a subgroup-matrix tile (f16 products). */
  tile: MatMulTile | SgMatMulTile;
  /** K slices (1: no split). */
  S: number;
  kChunk: number;
}

const isSg = (t: MatMulTile | SgMatMulTile): t is SgMatMulTile => 'kind' in t && t.kind === 'subgroup-matrix';

/** A tile's name in plan files and logs: parseTile's form, or the subgroup-matrix tile's key. */
function planTileName(t: MatMulTile | SgMatMulTile): string {
  return isSg(t) ? sgTileKey(t) : tileName(t);
}

function tilesOf(t: Pick<MatMulTile, 'BM' | 'BN'>, M: number, N: number): number {
  return Math.ceil(M / t.BM) * Math.ceil(N / t.BN);
}

/** A plan with `tile` and about S K-slices (chunks a multiple of the tile's BK). */
export function makePlan(tile: MatMulTile | SgMatMulTile, K: number, S: number): MatMulPlan {
  if (S <= 1) return { tile, S: 1, kChunk: K };
  const kChunk = Math.ceil(K / S / tile.BK) * tile.BK;
  const slices = Math.ceil(K / kChunk);
  return slices <= 1 ? { tile, S: 1, kChunk: K } : { tile, S: slices, kChunk };
}

/** Split-K slices that bring `tile`'s workgroups to about TARGET_WORKGROUPS (1 when K is short). */
function autoSlices(tile: Pick<MatMulTile, 'BM' | 'BN'>, M: number, N: number, K: number): number {
  const tiles = tilesOf(tile, M, N);
  if (!splitKEnabled || tiles >= TARGET_WORKGROUPS || K < 1024) return 1;
  return Math.max(1, Math.min(Math.ceil(TARGET_WORKGROUPS / tiles), Math.floor(K / 256), 32));
}

/** The plan without tuning: the largest tile that still fills the GPU, else split-K over a large tile when K is long. */
export function defaultPlan(M: number, N: number, K: number): MatMulPlan {
  if (forcedTile) return makePlan(forcedTile, K, autoSlices(forcedTile, M, N, K));
  let tile: MatMulTile;
  if (tilesOf(LARGE, M, N) >= TARGET_WORKGROUPS || (K >= 1024 && M >= 128 && N >= 128)) tile = LARGE;
  else if (tilesOf(MEDIUM, M, N) >= TARGET_WORKGROUPS) tile = MEDIUM;
  else tile = SMALL;
  return makePlan(tile, K, autoSlices(tile, M, N, K));
}

type Triangle = NonNullable<MatMulVariant['triangle']>;

interface Shape {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  /** Products in the batch (1: a single product). */
  batch: number;
  triangle: Triangle;
  /** Storage of the operands. */
  aType: OperandType;
  bType: OperandType;
  /** f16 arithmetic allowed (mixed precision): subgroup-matrix plans are candidates. */
  half: boolean;
  /** Set by a caller that wants one order of the workgroups (the tile checks); else walksM decides. */
  walkM?: boolean;
}

const shapeKey = (s: Shape) =>
  `${s.batch > 1 ? `${s.batch}@` : ''}${s.M}x${s.N}x${s.K}${s.transA ? 'T' : 'N'}${s.transB ? 'T' : 'N'}${s.triangle === 'none' ? '' : `/${s.triangle}`}` +
  (s.half ? ` f16${s.aType === 'f32' ? ' A:f32' : ''}${s.bType === 'f32' ? ' B:f32' : ''}` : '');

function pow2AtLeast(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/**
 * A shape's class: M, N, K and the batch each rounded up to a power of two, with the transposes and
 * the causal shortcut (`4096x512x512NT` holds every M in 2049..4096, N and K in 257..512). Shapes of a
 * class share one tuned plan: the tile that fills the GPU best, and the split-K slices, change little
 * within a factor of two. A class is tuned once, on the first of its shapes seen.
 */
export function shapeClass(
  s: Pick<Shape, 'M' | 'N' | 'K' | 'transA' | 'transB'> &
    Partial<Pick<Shape, 'batch' | 'triangle' | 'aType' | 'bType' | 'half'>>,
): string {
  const batch = s.batch ?? 1;
  const triangle = s.triangle ?? 'none';
  return shapeKey({
    aType: 'f32',
    bType: 'f32',
    half: false,
    ...s,
    M: pow2AtLeast(s.M),
    N: pow2AtLeast(s.N),
    K: pow2AtLeast(s.K),
    batch: batch > 1 ? pow2AtLeast(batch) : 1,
    triangle,
  });
}

/** Shapes seen and not yet tuned, by shape class (by shape with shape classes off). */
const pending = new Map<string, Shape>();
/** Plans of shapes seen since their class was tuned, by shape. */
const tuned = new Map<string, MatMulPlan>();
/** Tuned plans by shape class: the autotuner's, and the plan files' (matmul-plans.ts). */
const classPlans = new Map<string, { tile: MatMulTile | SgMatMulTile; S: number }>();
/** The device whose plan files were read into classPlans. */
let plansReadFor: GPUDevice | null = null;
/** Shape classes (shapes, with shape classes off) tuned by this process. */
let tunedHere = 0;

/** Tuned shape classes known now (the plan files' included, read on the active webgpu device), and how many of them this process tuned. */
export function matmulPlanCounts(): { classes: number; tuned: number } {
  if (shapeClassesEnabled()) readPlanFiles();
  return { classes: shapeClassesEnabled() ? classPlans.size : tuned.size, tuned: tunedHere };
}

/** Untuned shapes' plans, made once (the same object each time, so its prepared dispatches are reused), with their class. */
const defaults = new Map<string, { plan: MatMulPlan; cls: string }>();

/** Forgets tuned plans and shapes waiting to be tuned (plan files are read again on next use). */
export function clearMatMulTuning(): void {
  pending.clear();
  tuned.clear();
  classPlans.clear();
  defaults.clear();
  plansReadFor = null;
}

/**
 * The tuned plan of a shape (`key` is its shapeKey), from its class's when that is tuned, else the
 * default one, noting the shape's class for the autotuner.
 */
function planFor(key: string, s: Shape): MatMulPlan {
  const t = tuned.get(key) ?? defaults.get(key)?.plan;
  if (t) return t;
  const byClass = shapeClassesEnabled();
  const cls = byClass ? shapeClass(s) : key;
  if (byClass) {
    readPlanFiles();
    const c = classPlans.get(cls);
    if (c) {
      // A subgroup-matrix tile with direct loads serves only the class's shapes that are whole tiles.
      let plan = makePlan(c.tile, s.K, c.S);
      if (isSg(c.tile) && !sgFits(c.tile, s, plan.kChunk)) plan = defaultPlanOf(s);
      tuned.set(key, plan);
      return plan;
    }
  }
  const plan = defaultPlanOf(s);
  defaults.set(key, { plan, cls });
  if (!pending.has(cls)) pending.set(cls, s);
  return plan;
}

// ---------------------------------------------------------------------------------------------
// Plan files (matmul-plans.ts)

const planLog = (msg: string): void => {
  process.stderr.write(`matmul plans: ${msg}\n`);
};

/** This device's GPU, as plan files name it. */
function gpuIdentity(device: GPUDevice): GpuIdentity {
  const info = (device as unknown as { adapterInfo?: Partial<GpuIdentity> }).adapterInfo ?? {};
  return {
    vendor: info.vendor || 'unknown',
    architecture: info.architecture || 'unknown',
    device: info.device || 'unknown',
    description: info.description || '',
  };
}

let kernelsVersion: string | undefined;

/**
 * The version of the product kernels that tuned plans depend on: a hash of the generated sources of
 * every tile (a plain and a split-K variant each), the slices' reductions and the planner's target.
 * Any change to the kernels gives new plan files.
 */
export function matmulKernelsVersion(): string {
  if (kernelsVersion) return kernelsVersion;
  const hash = createHash('sha256').update(`${TARGET_WORKGROUPS}\0${JSON.stringify(BATCHED_TILES)}\0`);
  for (const tile of Object.values(BATCHED_TILES)) {
    const base = { ...tile, transA: false, transB: true, vecA: true, vecB: true, vecC: true, exact: false } as const;
    hash
      .update(matmulSource({ ...base, epilogue: 'bias-gelu', splitK: false }))
      .update(matmulSource({ ...base, transA: true, transB: false, vecA: false, epilogue: 'none', splitK: true }));
  }
  for (const staging of ['workgroup', 'direct'] as const) {
    const t = sgTile({
      M: 16,
      N: 16,
      K: 16,
      SGX: 2,
      SGY: 2,
      RM: 4,
      RN: 4,
      BK: 32,
      staging,
      double: staging === 'workgroup',
    });
    hash.update(sgMatmulSource({ ...sgVariantFor(t, 32, false, true), exact: staging === 'direct' }));
  }
  for (const epilogue of ['none', 'bias', 'bias-gelu'] as const) hash.update(sumSlicesSource({ epilogue }));
  return (kernelsVersion = hash.update(sumSlicesWideSource()).digest('hex').slice(0, 12));
}

/** Whether a class (or shape key) is of batched or triangular products: `64@…` or `…/lowerC`. */
const batchedClass = (cls: string) => cls.includes('@') || cls.includes('/');

/** Whether a class (or shape key) is of f16 products: `… f16`. */
const halfClass = (cls: string) => cls.includes(' f16');

/**
 * The tiles a class may use: those the autotuner tries for it (the subgroup-matrix ones for f16
 * classes, where mixed precision runs them: the plan files are read once, maybe while f32 is in force).
 */
function allowedTiles(cls: string): Map<string, MatMulTile | SgMatMulTile> {
  const tiles: Array<MatMulTile | SgMatMulTile> = Object.values(batchedClass(cls) ? BATCHED_TILES : MATMUL_TILES);
  if (halfClass(cls) && halfProducts('mixed') === 'matrix') tiles.push(...sgTiles());
  return new Map(tiles.map((t) => [planTileName(t), t]));
}

/** Reads this device's plan files into classPlans, once per device; problems are logged and skipped. */
function readPlanFiles(): void {
  const b = webgpuBackend();
  if (!b || plansReadFor === b.device) return;
  plansReadFor = b.device;
  const gpu = gpuIdentity(b.device);
  const version = matmulKernelsVersion();
  for (const dir of planDirs()) {
    const file = path.join(dir, planFileName(gpu, version));
    const { plans, warnings } = readPlanFile(file, gpu, version);
    for (const w of warnings) planLog(w);
    for (const [cls, rec] of plans) {
      if (classPlans.has(cls)) continue;
      const tile = allowedTiles(cls).get(rec.tile);
      // Batched and triangular products take no split-K.
      if (!tile || (rec.slices > 1 && batchedClass(cls))) {
        planLog(
          `${file}: plans[${JSON.stringify(cls)}]: tile ${rec.tile} with ${rec.slices} slices is not a plan this class can use; entry ignored`,
        );
        continue;
      }
      classPlans.set(cls, { tile, S: rec.slices });
    }
  }
}

/** Adds newly tuned classes to the plan cache file (a failure to write is logged: the plans still hold in this process). */
function savePlanFile(results: TuneResult[]): void {
  const b = webgpuBackend();
  if (!b || results.length === 0) return;
  const records = new Map<string, PlanRecord>();
  for (const r of results) {
    const c = classPlans.get(r.class);
    if (c) records.set(r.class, { tile: planTileName(c.tile), slices: c.S, shape: r.shape, ms: r.ms });
  }
  try {
    const { skipped } = savePlans(planCacheDir(), gpuIdentity(b.device), matmulKernelsVersion(), records);
    if (skipped) planLog(`not saved: ${skipped}`);
  } catch (err) {
    planLog(`could not save to ${planCacheDir()}: ${(err as Error).message}`);
  }
}

/** The plan of a shape without tuning: subgroup matrices for an f16 product where they run, else the f32 kernel's plan. */
function defaultPlanOf(s: Shape): MatMulPlan {
  const noSplit = s.batch > 1 || s.triangle !== 'none';
  const sg = s.half && halfProducts() === 'matrix' ? sgTiles() : [];
  if (sg.length > 0) {
    const fits = (t: SgMatMulTile) => sgFits(t, s);
    const large = sg.find((t) => t.BM === 128 && t.BN === 128 && fits(t));
    const small = sg.find((t) => t.BM <= 64 && t.BN <= 64 && fits(t));
    const tile =
      large && (noSplit ? s.M >= 128 && s.N >= 128 : tilesOf(large, s.M, s.N) >= TARGET_WORKGROUPS || s.K >= 1024)
        ? large
        : (small ?? large);
    if (tile) return makePlan(tile, s.K, noSplit ? 1 : autoSlices(tile, s.M, s.N, s.K));
  }
  return noSplit ? batchedPlan(s.M, s.N, s.K) : defaultPlan(s.M, s.N, s.K);
}

/** Batches and triangular products take no split-K; the batch fills the GPU, so the largest tile that fits the product. */
function batchedPlan(M: number, N: number, K: number): MatMulPlan {
  const tile = forcedTile ?? (M >= 128 && N >= 128 ? LARGE : N >= 64 && M >= 128 ? MEDIUM : SMALL);
  return makePlan(tile, K, 1);
}

// ---------------------------------------------------------------------------------------------
// Subgroup-matrix tiles

/**
 * Layouts of the subgroup-matrix tiles, per configuration (M × N × K): subgroups along N and M,
 * result matrices per subgroup along M and N, and the K slab. The workgroup blocks come out at
 * 256 × 128 and 128 × 256 (eight subgroups of 64 × 64: less staging per product), 128 × 128 (four
 * or eight subgroups; K slab 32 or 64), 128 × 64 and 64 × 64 for 16 × 16 matrices, the same in
 * elements for 16 × 8 ones (twice the matrices along N).
 */
const SG_LAYOUTS: Array<{ SGX: number; SGY: number; RM: number; RN: number; BK: number }> = [
  { SGX: 2, SGY: 2, RM: 4, RN: 4, BK: 32 },
  { SGX: 2, SGY: 4, RM: 2, RN: 4, BK: 32 },
  { SGX: 2, SGY: 2, RM: 4, RN: 4, BK: 64 },
  { SGX: 2, SGY: 2, RM: 4, RN: 2, BK: 32 },
  { SGX: 2, SGY: 2, RM: 2, RN: 2, BK: 32 },
  // Last: an autotuner out of time has tried the layouts that win most classes first.
  { SGX: 2, SGY: 4, RM: 4, RN: 4, BK: 32 },
  { SGX: 4, SGY: 2, RM: 4, RN: 4, BK: 32 },
];

/** What sgTilesFor needs to know of a device. */
export type SgDevice = Pick<
  Capabilities,
  'subgroupMatrixConfigs' | 'subgroupMinSize' | 'maxWorkgroupStorage' | 'maxWorkgroupInvocations'
>;

/**
 * The subgroup-matrix tiles a device can run: each layout per f16 → f32 configuration (of those
 * with the same result shape, the deepest), with workgroup staging (one and two slabs) and direct
 * loads, kept when its workgroup memory and invocations fit the device; the epilogue's patch takes
 * as many result matrices side by side as the memory left holds.
 */
export function sgTilesFor(caps: SgDevice): SgMatMulTile[] {
  const SG = caps.subgroupMinSize ?? 0;
  const configs = f16MatrixConfigs(caps).filter(
    (c, _, all) => !all.some((o) => o.M === c.M && o.N === c.N && o.K > c.K),
  );
  // The most workgroup memory any use takes: transposes change slab strides, an epilogue through
  // workgroup memory adds patches.
  const worst = (t: SgMatMulTile) =>
    Math.max(
      ...[false, true].flatMap((transA) =>
        [false, true].map((transB) =>
          sgWorkgroupBytes({ ...sgVariantFor(t, SG, transA, transB), exact: false, epilogue: 'bias-gelu' }),
        ),
      ),
    );
  const out: SgMatMulTile[] = [];
  for (const cfg of configs) {
    for (const l of SG_LAYOUTS) {
      // Smaller matrices: more of them for the same block.
      const RN = (l.RN * 16) / cfg.N;
      const RM = (l.RM * 16) / cfg.M;
      if (!Number.isInteger(RN) || !Number.isInteger(RM) || l.BK % cfg.K !== 0) continue;
      for (const [staging, double] of [
        ['workgroup', false],
        ['workgroup', true],
        ['direct', false],
      ] as const) {
        const tile = sgTile({
          M: cfg.M,
          N: cfg.N,
          K: cfg.K,
          SGX: l.SGX,
          SGY: l.SGY,
          RM,
          RN,
          BK: l.BK,
          staging,
          ...(double ? { double } : {}),
        });
        if (
          worst(tile) > caps.maxWorkgroupStorage ||
          sgThreads({ ...tile, subgroupSize: SG }) > caps.maxWorkgroupInvocations
        )
          continue;
        // As many result matrices per epilogue round as the workgroup memory left holds.
        let patch = RN;
        while (patch > 1 && worst({ ...tile, patch }) > caps.maxWorkgroupStorage) patch /= 2;
        out.push(patch > 1 ? { ...tile, patch } : tile);
      }
    }
  }
  return out;
}

/** The subgroup-matrix tiles of the active device (empty unless its products can run on subgroup matrices). */
export function sgTiles(): SgMatMulTile[] {
  const caps = capabilities();
  return matrixUnavailable(caps) === null ? sgTilesFor(caps) : [];
}

/** A variant of `t` with default operands, for sizing. */
function sgVariantFor(t: SgMatMulTile, subgroupSize: number, transA: boolean, transB: boolean): SgMatMulVariant {
  return {
    ...t,
    subgroupSize,
    transA,
    transB,
    aType: 'f16',
    bType: 'f16',
    widthA: 8,
    widthB: 8,
    exact: true,
    epilogue: 'bias-gelu',
    splitK: false,
    batched: false,
    triangle: 'none',
    walkM: false,
  };
}

/**
 * Bytes past which an operand is taken not to stay in the GPU's L2 cache while a product streams
 * it (an H100's L2 is 50 MB, shared with everything else in flight).
 */
const L2_RESIDENT_BYTES = 32 * 2 ** 20;

/**
 * Whether a product's workgroups should walk M blocks first: when B does not stay in L2 and A does
 * (the logits: the vocabulary's weights against a batch of rows), walking N would stream all of B
 * again for every block row of A; walking M streams it once.
 */
function walksM(s: Shape, split: boolean): boolean {
  if (s.walkM !== undefined) return s.walkM && !split;
  const bytes = (type: OperandType, n: number) => n * (type === 'f16' ? 2 : 4);
  return (
    !split &&
    s.batch === 1 &&
    bytes(s.bType, s.K * s.N) > L2_RESIDENT_BYTES &&
    bytes(s.aType, s.M * s.K) <= L2_RESIDENT_BYTES
  );
}

/** Whether a subgroup-matrix tile can run this shape (direct loads need f16 operands and a whole number of tiles). */
function sgFits(t: SgMatMulTile, s: Shape, kChunk = s.K): boolean {
  if (t.staging === 'workgroup') return s.triangle === 'none' || t.BM % t.BK === 0;
  return s.aType === 'f16' && s.bType === 'f16' && exactFor(t, s, kChunk);
}

function exactFor(t: Pick<MatMulTile, 'BM' | 'BN' | 'BK'>, s: Shape, kChunk: number): boolean {
  return s.M % t.BM === 0 && s.N % t.BN === 0 && kChunk % t.BK === 0 && s.K % kChunk === 0;
}

/** Elements per global load of an operand whose contiguous axis has `length` elements. */
function loadWidth(type: OperandType, length: number): 1 | 4 | 8 {
  if (type === 'f16' && length % 8 === 0) return 8;
  return length % 4 === 0 ? 4 : 1;
}

function mmKernel(v: MatMulVariant): Kernel {
  const tri = v.triangle && v.triangle !== 'none' ? `_${v.triangle}` : '';
  const name = `matmul_${v.transA ? 'T' : 'N'}${v.transB ? 'T' : 'N'}_${v.BM}x${v.BN}${v.splitK ? '_splitk' : ''}${v.batched ? '_batched' : ''}${tri}${v.epilogue === 'none' ? '' : `_${v.epilogue}`}`;
  return kernelFor(variantKey(v), name, () => matmulSource(v));
}

function sgKernel(v: SgMatMulVariant): Kernel {
  const tri = v.triangle !== 'none' ? `_${v.triangle}` : '';
  const name = `sgmatmul_${v.transA ? 'T' : 'N'}${v.transB ? 'T' : 'N'}_${v.BM}x${v.BN}_${v.staging}${v.splitK ? '_splitk' : ''}${v.batched ? '_batched' : ''}${tri}${v.epilogue === 'none' ? '' : `_${v.epilogue}`}`;
  return kernelFor(sgVariantKey(v), name, () => sgMatmulSource(v));
}

function sumKernel(epilogue: 'none' | 'bias' | 'bias-gelu'): Kernel {
  return kernelFor(`sumslices_${epilogue}`, `sum_slices${epilogue === 'none' ? '' : `_${epilogue}`}`, () =>
    sumSlicesSource({ epilogue }),
  );
}

export interface MatMulArgs {
  /** A is [M, K], or [K, M] when transA. */
  a: tf.TensorInfo;
  /** B is [K, N], or [N, K] when transB. */
  b: tf.TensorInfo;
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  /** [N], added to every row. */
  bias?: tf.TensorInfo;
  /** Apply exact GELU after the bias; the pre-activation comes back as `z`. */
  gelu?: boolean;
  /** A batch of products: A, B and C are [batch, …] (no bias). */
  batch?: number;
  /** Causal shortcuts of square products (MatMulVariant.triangle). */
  triangle?: Triangle;
  /** Use this plan instead of the tuned or default one. */
  plan?: MatMulPlan;
  /** Storage of A and B: f32 (default), or f16 (half.ts's layout; makes the product an f16 one). */
  aType?: OperandType;
  bType?: OperandType;
  /**
   * Mixed precision: f32 operands may be rounded to f16 for the product (subgroup-matrix plans are
   * candidates; attention's products). Implied by an f16 operand.
   */
  half?: boolean;
  /** Subgroup-matrix plans: walk M blocks first, or not (the tile checks); by default walksM decides. */
  walkM?: boolean;
}

/** A product's dispatches for one plan, worked out once (a training step repeats the same products). */
interface Prepared {
  kernel: Kernel;
  grid: [number, number, number];
  uniforms: UniformValue[];
  /** Split-K: the slices' reduction (with the epilogue). */
  sum?: { kernel: Kernel; grid: [number, number, number]; uniforms: UniformValue[] };
  /** Subgroup-matrix results stored straight with a bias: the bias is first repeated in this many rows (sgBiasRowsSource). */
  biasRows?: number;
}

const biasRowsKernel: Kernel = { key: 'sg_bias_rows', name: 'sg_bias_rows', source: sgBiasRowsSource };
const preparedByPlan = new WeakMap<MatMulPlan, Map<string, Prepared>>();

function prepare(plan: MatMulPlan, s: Shape, epilogue: MatMulVariant['epilogue']): Prepared {
  const { M, N, K, transA, transB, batch, triangle } = s;
  const uniforms: UniformValue[] = [
    ['u', M],
    ['u', N],
    ['u', K],
    ['u', plan.kChunk],
  ];
  const split = plan.S > 1;
  const sum = split
    ? {
        kernel: sumKernel(epilogue),
        grid: grid1d(M * N),
        uniforms: [
          ['u', plan.S],
          ['u', M * N],
          ['u', N],
          ['u', 0],
        ] as UniformValue[],
      }
    : undefined;
  const exact = exactFor(plan.tile, s, plan.kChunk);
  if (isSg(plan.tile)) {
    const subgroupSize = capabilities().subgroupMinSize;
    if (subgroupSize === null)
      throw new Error('matmul: a subgroup-matrix plan on an adapter that does not say its subgroup size');
    const v: SgMatMulVariant = {
      ...plan.tile,
      subgroupSize,
      transA,
      transB,
      aType: s.aType,
      bType: s.bType,
      widthA: loadWidth(s.aType, transA ? M : K),
      widthB: loadWidth(s.bType, transB ? K : N),
      exact,
      epilogue: split ? 'none' : epilogue,
      splitK: split,
      batched: batch > 1,
      triangle,
      walkM: walksM(s, split),
    };
    const problem = sgVariantProblem(v);
    if (problem) throw new Error(`matmul ${shapeKey(s)}: plan ${planName(plan)} does not fit (${problem})`);
    const biasRows = sgStoresDirect(v) && v.epilogue === 'bias' ? v.M : undefined;
    return { kernel: sgKernel(v), grid: sgMatmulGrid(v, M, N, split ? plan.S : batch), uniforms, sum, biasRows };
  }
  const grid = matmulGrid(plan.tile, M, N, split ? plan.S : batch);
  const base = {
    ...plan.tile,
    transA,
    transB,
    vecA: (transA ? M : K) % 4 === 0,
    vecB: (transB ? K : N) % 4 === 0,
    vecC: N % 4 === 0,
    aType: s.aType,
    bType: s.bType,
  };
  if (!split) {
    const v: MatMulVariant = { ...base, exact, epilogue, splitK: false, batched: batch > 1, triangle };
    return { kernel: mmKernel(v), grid, uniforms };
  }
  const v: MatMulVariant = { ...base, exact, epilogue: 'none', splitK: true };
  return { kernel: mmKernel(v), grid, uniforms, sum };
}

/** bias [N] repeated in R rows: [R, N]. */
function biasRows(bias: tf.TensorInfo, R: number, N: number): tf.TensorInfo {
  const rows = allocate([R, N]);
  dispatch(
    biasRowsKernel,
    [bias],
    [rows],
    [
      ['u', R * N],
      ['u', N],
      ['u', 0],
      ['u', 0],
    ],
    grid1d(R * N),
  );
  return rows;
}

/** C [M, N] = op(A) · op(B) (+ bias) (→ GELU). Returns tensor data (wrap with toTensor). */
export function matmul(args: MatMulArgs): { c: tf.TensorInfo; z?: tf.TensorInfo } {
  const {
    a,
    b,
    M,
    N,
    K,
    transA = false,
    transB = false,
    bias,
    gelu = false,
    batch = 1,
    triangle = 'none',
    aType = 'f32',
    bType = 'f32',
  } = args;
  if (gelu && !bias) throw new Error('matmul: GELU epilogue needs a bias');
  if (K === 0) throw new Error('matmul: K is 0');
  const epilogue = gelu ? 'bias-gelu' : bias ? 'bias' : 'none';
  const half = args.half === true || aType === 'f16' || bType === 'f16';
  const shape: Shape = { M, N, K, transA, transB, batch, triangle, aType, bType, half, walkM: args.walkM };
  const key = shapeKey(shape);
  const plan = args.plan ?? planFor(key, shape);
  if ((batch > 1 || triangle !== 'none') && (bias || plan.S !== 1))
    throw new Error('matmul: batched and triangular products take no bias or split-K');
  let byShape = preparedByPlan.get(plan);
  if (!byShape) preparedByPlan.set(plan, (byShape = new Map()));
  const preparedKey = `${key}|${epilogue}|${args.walkM ?? ''}`;
  let p = byShape.get(preparedKey);
  if (!p) byShape.set(preparedKey, (p = prepare(plan, shape, epilogue)));
  const c = allocate(batch > 1 ? [batch, M, N] : [M, N]);
  const z = gelu ? allocate([M, N]) : undefined;
  const outs = z ? [c, z] : [c];
  if (!p.sum) {
    const rows = bias && p.biasRows ? biasRows(bias, p.biasRows, N) : undefined;
    dispatch(p.kernel, bias ? [a, b, rows ?? bias] : [a, b], outs, p.uniforms, p.grid);
    if (rows) release(rows);
    return { c, z };
  }
  const partial = allocate([plan.S, M, N]);
  dispatch(p.kernel, [a, b], [partial], p.uniforms, p.grid);
  dispatch(p.sum.kernel, bias ? [partial, bias] : [partial], outs, p.sum.uniforms, p.sum.grid);
  release(partial);
  return { c, z };
}

const wideSum: Kernel = { key: 'sumslices_wide', name: 'sum_slices_wide', source: () => sumSlicesWideSource() };
const wideSumPair: Kernel = {
  key: 'sumslices_wide_pair',
  name: 'sum_slices_wide_pair',
  source: () => sumSlicesWideSource(true),
};

/** Sums the S slices of x [S, 2L] into two [L]: its first L columns' sums and its last L columns' (one dispatch). */
export function sumSlicePair(x: tf.TensorInfo, S: number, L: number): [tf.TensorInfo, tf.TensorInfo] {
  const y = allocate([L]);
  const z = allocate([L]);
  dispatch(
    wideSumPair,
    [x],
    [y, z],
    [
      ['u', S],
      ['u', 2 * L],
      ['u', L],
      ['u', 0],
    ],
    grid1d(2 * L, 16),
  );
  return [y, z];
}

/** Sums the S slices of x [S, L] into [L] (one thread per column for few slices, cooperative for many). */
export function sumSlices(x: tf.TensorInfo, S: number, L: number): tf.TensorInfo {
  const y = allocate([L]);
  if (S <= 16)
    dispatch(
      sumKernel('none'),
      [x],
      [y],
      [
        ['u', S],
        ['u', L],
        ['u', L],
        ['u', 0],
      ],
      grid1d(L),
    );
  else
    dispatch(
      wideSum,
      [x],
      [y],
      [
        ['u', S],
        ['u', L],
        ['u', 0],
        ['u', 0],
      ],
      grid1d(L, 16),
    );
  return y;
}

// ---------------------------------------------------------------------------------------------
// Autotuning

/**
 * The plans the autotuner tries for a shape: every tile, each without split-K and (for long K) with
 * about the slices that fill the GPU and twice that; for batched or triangular products every
 * batched-product tile no larger than the product, without split-K. An f16 product on subgroup
 * matrices tries every subgroup-matrix tile that fits it the same way, and of the f32 kernel's plans
 * only its default one (all of them for batches).
 */
function candidatePlans(s: Shape): MatMulPlan[] {
  const { M, N, K } = s;
  const noSplit = s.batch > 1 || s.triangle !== 'none';
  const out: MatMulPlan[] = [];
  const seen = new Set<string>();
  const add = (p: MatMulPlan) => {
    const key = planName(p);
    if (!seen.has(key)) {
      seen.add(key);
      out.push(p);
    }
  };
  const sg = s.half && halfProducts() === 'matrix' ? sgTiles() : [];
  // Beside the subgroup-matrix tiles, the f32 kernel's own plan as a fallback (every tile for batches,
  // which take no split-K and are few): the autotuner's time goes to the tiles that can win.
  if (sg.length > 0 && !noSplit) add(defaultPlan(M, N, K));
  const f32Tiles = sg.length > 0 && !noSplit ? [] : Object.values(noSplit ? BATCHED_TILES : MATMUL_TILES);
  for (const tile of [...sg, ...f32Tiles]) {
    if (noSplit) {
      if (tile.BM <= Math.max(64, M) && tile.BN <= Math.max(64, N) && (!isSg(tile) || sgFits(tile, s)))
        add(makePlan(tile, K, 1));
      continue;
    }
    const auto = autoSlices(tile, M, N, K);
    for (const S of new Set([1, auto, auto > 1 ? auto * 2 : 1])) {
      const p = makePlan(tile, K, S);
      if (!isSg(tile) || sgFits(tile, s, p.kChunk)) add(p);
    }
  }
  return out;
}

export interface TuneResult {
  /** The shape timed. */
  shape: string;
  /** Its shape class, which the plan now serves. */
  class: string;
  plan: string;
  ms: number;
  defaultMs: number;
  tflops: number;
  /** Candidates left out: the device could not compile them, or their product was wrong. */
  rejected?: string[];
  /** Candidates never tried because the time budget ran out: the choice is the best of the rest, kept out of the plan file. */
  untried?: number;
}

/** Candidates compiled at once (the driver compiles them on its own threads; see precompile). */
const PARALLEL_COMPILES = 16;

/** How far a candidate's product may be from the f32 kernel's on the same operands (relErr): f16 rounding of f32 operands at most; a broken kernel is off by its whole size. */
const CANDIDATE_TOL = 2e-2;

function planName(p: MatMulPlan): string {
  const t = p.tile;
  const split = p.S > 1 ? ` split-K ${p.S}` : '';
  if (isSg(t)) return `subgroup-matrix ${sgTileDescription(t)}${split}`;
  return `${t.BM}x${t.BN}x${t.BK} t${t.TM}x${t.TN}${t.double ? ' double' : ''}${split}`;
}

async function drain(): Promise<void> {
  const b = webgpuBackend()!;
  b.endComputePassEncoder();
  if (b.commandEncoder) b.submitQueue();
  await b.device.queue.onSubmittedWorkDone();
}

/** Random operands of a product's shape, in its storage types (A lower-triangular for the causal shortcuts that assume it). */
function randomOperands(s: Shape): [tf.Tensor, tf.Tensor] {
  const operand = (type: OperandType, shape: number[], lowerTriangular = false): tf.Tensor => {
    let x = tf.randomUniform(shape, -1, 1);
    if (lowerTriangular) x = tf.tidy(() => tf.linalg.bandPart(x, -1, 0));
    if (type === 'f32') return x;
    const h = tf.engine().makeTensorFromTensorInfo(toHalf(x));
    x.dispose();
    return h;
  };
  return [
    operand(
      s.aType,
      [s.batch, ...(s.transA ? [s.K, s.M] : [s.M, s.K])],
      s.triangle === 'lowerA' || s.triangle === 'upperA',
    ),
    operand(s.bType, [s.batch, ...(s.transB ? [s.N, s.K] : [s.K, s.N])]),
  ];
}

/** Multiply-adds of a product, times two (half of them for the causal shortcuts). */
const productFlops = (s: Shape) => 2 * s.batch * s.M * s.N * s.K * (s.triangle === 'none' ? 1 : 0.5);

/** Milliseconds per product of `reps` products of `plan` on the device, back to back. */
async function timeProduct(s: Shape, a: tf.Tensor, b: tf.Tensor, plan: MatMulPlan, reps: number): Promise<number> {
  await drain();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) release(matmul({ a, b, ...s, plan }).c);
  await drain();
  return (performance.now() - t0) / reps;
}

/**
 * Times every candidate plan of one shape of each shape class used since the last call and not tuned
 * yet, on the device, and keeps the fastest for the class (by shape, with shape classes off). First
 * every candidate runs once (compiling its pipeline), then the GPU is kept busy for a while (clocks
 * up), then the candidates are timed in turn, three rounds of enough repetitions for about `targetMs`
 * each, keeping each one's best round. The choices go to the plan cache file, and the free buffers
 * of tfjs's pool (the candidates' operands and results among them) are destroyed. Call it between
 * training steps (it waits for the device). Returns what it chose; its time counts as autotuning.
 */
export async function autotuneMatMuls(opts: { targetMs?: number; budgetSeconds?: number } = {}): Promise<TuneResult[]> {
  if (webgpuBackend() === null || pending.size === 0) return [];
  const budget = opts.budgetSeconds ?? autotuneBudgetSeconds();
  const results = await measureShapeCostAsync('autotune', () => tunePending(opts.targetMs ?? 12, budget));
  if (shapeClassesEnabled()) savePlanFile(results.filter((r) => !r.untried));
  // Else the candidates' operands and results stay in tfjs's pool for the rest of the process.
  await releaseFreeBuffers();
  return results;
}

/**
 * Seconds one autotuneMatMuls may spend compiling candidates: OFFSHOOT_MATMUL_AUTOTUNE_SECONDS, default
 * 300 (an H100 compiles every subgroup-matrix candidate of pythia-160m's classes in about 240 s; 100 s
 * once left pythia-70m's logits gradients at several times their tuned time). It bounds compiling only,
 * so a tune whose candidates all compile sooner ends sooner; the plans it chooses are saved, so a GPU
 * model is tuned once.
 */
export function autotuneBudgetSeconds(setting = process.env.OFFSHOOT_MATMUL_AUTOTUNE_SECONDS): number {
  if (setting === undefined || setting.trim() === '') return 300;
  const n = Number(setting);
  if (!(n > 0))
    throw new Error(
      `OFFSHOOT_MATMUL_AUTOTUNE_SECONDS must be a positive number of seconds, got ${JSON.stringify(setting)}`,
    );
  return n;
}

/**
 * Tunes the pending shape classes within `budgetSeconds` of compiling: on a driver that compiles
 * subgroup-matrix pipelines slowly, every tile of every class would take many minutes. The classes
 * go largest first (by FLOPs), so a budget that runs out leaves the products where a poor plan costs
 * least. The budget is shared out: class i of n stops compiling candidates once (i + 1) / n of it has
 * gone (time an earlier class left passes on), then chooses among those compiled (its untuned plan
 * always among them); a class reached after the whole budget keeps its untuned plan. Neither goes to the plan file, so a
 * later process tunes them.
 */
async function tunePending(targetMs: number, budgetSeconds: number): Promise<TuneResult[]> {
  const results: TuneResult[] = [];
  const shapes = [...pending.entries()].sort(([, x], [, y]) => productFlops(y) - productFlops(x));
  pending.clear();
  const started = performance.now();
  const past = (share: number) => performance.now() - started > budgetSeconds * 1000 * share;
  let notReached = 0;
  for (const [index, [cls, s]] of shapes.entries()) {
    const overBudget = () => past((index + 1) / shapes.length);
    if (results.length > 0 && past(1)) {
      notReached++;
      continue;
    }
    const key = shapeKey(s);
    const [a, b] = randomOperands(s);
    const flops = productFlops(s);
    const noSplit = s.batch > 1 || s.triangle !== 'none';
    // The f32 kernel's product on the same operands: each candidate must agree with it.
    const reference = noSplit ? batchedPlan(s.M, s.N, s.K) : defaultPlan(s.M, s.N, s.K);
    const checkProduct = await productChecker(a, b, s, reference);
    const rejected: string[] = [];
    const plans: MatMulPlan[] = [];
    const initial = defaultPlanOf(s);
    const names = new Set<string>();
    const candidates: MatMulPlan[] = [];
    for (const p of [initial, ...candidatePlans(s)]) {
      if (names.has(planName(p))) continue;
      names.add(planName(p));
      candidates.push(p);
    }
    // Compiled side by side, a group at a time while the budget lasts (the untuned plan always).
    let compiled = 0;
    while (compiled < candidates.length && (compiled === 0 || !overBudget())) {
      const group = candidates.slice(compiled, compiled + (overBudget() ? 1 : PARALLEL_COMPILES));
      await precompile(
        group.flatMap((p) => {
          const { kernel, sum } = prepare(p, s, 'none');
          return [kernel, ...(sum ? [sum.kernel] : [])].map((k) => ({
            kernel: k,
            nIn: k === kernel ? 2 : 1,
            nOut: 1,
            hasUniforms: true,
          }));
        }),
      );
      compiled += group.length;
    }
    const untried = candidates.length - compiled;
    for (const p of candidates.slice(0, compiled)) {
      const problem = await planProblem(p, s, a, b, checkProduct);
      if (problem) rejected.push(`${planName(p)}: ${problem}`);
      else plans.push(p);
    }
    checkProduct.dispose();
    // The untuned plan, unless it was left out: then the f32 kernel's.
    const def = plans.includes(initial) ? initial : reference;
    if (!plans.includes(def)) plans.unshift(def);
    const timed = (plan: MatMulPlan, reps: number) => timeProduct(s, a, b, plan, reps);
    // Estimate (each candidate has run once already).
    const estimate = new Map<MatMulPlan, number>();
    for (const p of plans) estimate.set(p, await timed(p, 1));
    // Clocks up: about 50 ms of the default plan (300 ms before the first shape: an idle GPU's
    // clocks take longer than 50 ms to rise, and the first shape's choice was skewed by it).
    const warmMs = cls === shapes[0][0] ? 300 : 50;
    await timed(def, Math.max(2, Math.min(2000, Math.ceil(warmMs / Math.max(estimate.get(def)!, 0.01)))));
    const best = new Map<MatMulPlan, number>();
    for (let round = 0; round < 3; round++) {
      for (const p of plans) {
        const reps = Math.max(2, Math.min(200, Math.ceil(targetMs / Math.max(estimate.get(p)!, 0.01))));
        const ms = await timed(p, reps);
        best.set(p, Math.min(best.get(p) ?? Infinity, ms));
      }
    }
    let choice = def;
    for (const p of plans) if (best.get(p)! < best.get(choice)!) choice = p;
    tuned.set(key, choice);
    tunedHere++;
    if (shapeClassesEnabled()) classPlans.set(cls, { tile: choice.tile, S: choice.S });
    // The class's other shapes seen so far take its plan from their next product on.
    for (const [k, d] of defaults) if (d.cls === cls) defaults.delete(k);
    const ms = best.get(choice)!;
    results.push({
      shape: key,
      class: cls,
      plan: planName(choice),
      ms: Number(ms.toFixed(3)),
      defaultMs: Number(best.get(def)!.toFixed(3)),
      tflops: Number((flops / ms / 1e9).toFixed(2)),
      ...(rejected.length ? { rejected } : {}),
      ...(untried ? { untried } : {}),
    });
    tf.dispose([a, b]);
  }
  const cut = results.filter((r) => r.untried).length;
  if (cut || notReached) {
    planLog(
      `autotuning stopped at its budget of ${budgetSeconds} s (OFFSHOOT_MATMUL_AUTOTUNE_SECONDS): ` +
        `${results.length - cut} of ${shapes.length} shape classes tuned fully, ${cut} among the candidates compiled by then, ` +
        `${notReached} keep their untuned plans; the plan file keeps only the full ones`,
    );
  }
  return results;
}

interface ProductChecker {
  /** relErr of a product against the reference one (over C's lower triangle for lowerC). */
  error(c: tf.TensorInfo): Promise<number>;
  dispose(): void;
}

/** Compares products of (a, b) in shape `s` with the one `reference` computes. */
async function productChecker(a: tf.Tensor, b: tf.Tensor, s: Shape, reference: MatMulPlan): Promise<ProductChecker> {
  // Only the lower triangle of a lowerC product is defined.
  const lower =
    s.triangle === 'lowerC' ? tf.tidy(() => tf.linalg.bandPart(tf.ones([s.M, s.N]), -1, 0).cast('bool')) : null;
  const ref = tf.engine().makeTensorFromTensorInfo(matmul({ a, b, ...s, plan: reference }).c);
  const masked = (x: tf.Tensor) => (lower ? tf.where(lower, x, tf.zerosLike(x)) : x);
  const scale = Math.max(1e-30, (await tf.tidy(() => tf.max(tf.abs(masked(ref)))).data())[0]);
  return {
    async error(c) {
      const t = tf.engine().makeTensorFromTensorInfo(c);
      const diff = tf.tidy(() => tf.max(tf.abs(masked(tf.sub(t, ref)))));
      const e = (await diff.data())[0] / scale;
      tf.dispose([t, diff]);
      return e;
    },
    dispose: () => tf.dispose(lower ? [ref, lower] : [ref]),
  };
}

/** Why a candidate plan cannot be used for shape `s` (its pipeline does not compile, or its product is wrong), or null. */
async function planProblem(
  plan: MatMulPlan,
  s: Shape,
  a: tf.Tensor,
  b: tf.Tensor,
  check: ProductChecker,
): Promise<string | null> {
  const p = prepare(plan, s, 'none');
  const compiled =
    (await compileError(p.kernel, 2, 1, true)) ?? (p.sum ? await compileError(p.sum.kernel, 1, 1, true) : null);
  if (compiled) return `does not compile (${compiled})`;
  const err = await check.error(matmul({ a, b, ...s, plan }).c);
  return err < CANDIDATE_TOL ? null : `its product is ${err.toExponential(2)} (relative) from the f32 kernel's`;
}

/**
 * The fewest steps a run must have left for autotuning to run after its first step: tuning takes up
 * to its budget (OFFSHOOT_MATMUL_AUTOTUNE_SECONDS) for a few percent a step, which a brief-fitness
 * candidate's 40 steps (about a second) never pay back. Classes tuned earlier (plan files) still serve.
 */
export const AUTOTUNE_MIN_STEPS = 500;

/**
 * Whether a run autotunes after its first step: on a hardware adapter (a software one, such as
 * lavapipe, would spend minutes) with at least AUTOTUNE_MIN_STEPS steps ahead — any run with shape
 * classes off (`byClass` false: the behaviour before them) — unless `setting`
 * (OFFSHOOT_MATMUL_AUTOTUNE) is 0; with 1 on any adapter and run.
 */
export function autotuneWanted(software: boolean, stepsAhead: number, setting?: string, byClass = true): boolean {
  if (setting === '0') return false;
  return setting === '1' || (!software && (stepsAhead >= AUTOTUNE_MIN_STEPS || !byClass));
}

/** autotuneMatMuls where autotuneWanted: webgpu's afterFirstTrainingStep. */
export async function autotuneIfHardware(stepsAhead: number): Promise<TuneResult[]> {
  if (webgpuBackend() === null) return [];
  const setting = process.env.OFFSHOOT_MATMUL_AUTOTUNE;
  if (!autotuneWanted(capabilities().software, stepsAhead, setting, shapeClassesEnabled())) return [];
  return autotuneMatMuls();
}
