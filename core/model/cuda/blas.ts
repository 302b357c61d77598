/**
 * Matrix products through cuBLASLt, in the row-major terms the rest of offshoot uses:
 *   C[M, N] = alpha · op(A) · op(B) (+ bias[N]) (+ beta · C),  batched with strides,
 * A [M, K] (or [K, M] with transA), B [K, N] (or [N, K] with transB). cuBLASLt is column-major, so
 * the call computes Cᵀ = op(B)ᵀ · op(A)ᵀ, which reads the same memory. Inputs are f32 or bf16
 * (bf16 uses the tensor cores), accumulation is always f32 (CUBLAS_COMPUTE_32F: exact f32
 * arithmetic for f32 inputs, no TF32), the output f32 or bf16. Descriptors and the heuristic's
 * algorithm are made once per distinct shape and cached; the bias pointer is set per call.
 */
import { measureShapeCost, notePipeline } from '../shape-costs.js';
import type { CudaDevice } from './device.js';
import { check } from './driver.js';
import type { Storage } from './storage.js';

const CUDA_R_32F = 0;
const CUDA_R_16BF = 14;
const CUBLAS_COMPUTE_32F = 68;
const OP_N = 0;
const OP_T = 1;
const DESC_TRANSA = 3;
const DESC_TRANSB = 4;
const DESC_EPILOGUE = 7;
const DESC_BIAS_POINTER = 8;
const DESC_BIAS_DATA_TYPE = 26;
const EPILOGUE_DEFAULT = 1;
const EPILOGUE_BIAS = 4;
const LAYOUT_BATCH_COUNT = 5;
const LAYOUT_STRIDED_BATCH_OFFSET = 6;
const PREF_MAX_WORKSPACE_BYTES = 1;
/** cublasLtMatmulHeuristicResult_t: algo (64 bytes), workspaceSize, state, wavesCount, reserved[4]. */
const HEURISTIC_RESULT_BYTES = 96;
/** cuBLASLt's recommendation for Hopper. */
const WORKSPACE_BYTES = 32 << 20;

export interface Gemm {
  M: number;
  N: number;
  K: number;
  transA?: boolean;
  transB?: boolean;
  /** Independent products, each `strideX` elements after the previous (default 1, no strides). */
  batch?: number;
  strideA?: number;
  strideB?: number;
  strideC?: number;
  aType: Storage;
  bType: Storage;
  cType: Storage;
  /** bias[N] added to every row, in C's storage (cublasLt.h: the bias has the output's type). */
  bias?: boolean;
  alpha?: number;
  /** 0 overwrites C; 1 accumulates into it. */
  beta?: number;
}

interface Plan {
  /** For profiles: shape, transposes, types. */
  name: string;
  desc: unknown;
  a: unknown;
  b: unknown;
  c: unknown;
  algo: Buffer;
  workspace: number;
}

const dataType = (s: Storage): number => {
  if (s === 'f32') return CUDA_R_32F;
  if (s === 'bf16') return CUDA_R_16BF;
  throw new Error(`cuBLASLt products take f32 or bf16 operands, not ${s}`);
};

const CUBLAS_STATUS_NOT_SUPPORTED = 15;

/** cuBLASLt offers no algorithm for a product (a type combination it lacks). */
export class UnsupportedProduct extends Error {
  constructor(readonly gemm: Gemm) {
    super(`cuBLASLt has no algorithm for ${JSON.stringify(gemm)}`);
    this.name = 'UnsupportedProduct';
  }
}

export class Blas {
  private handle: unknown;
  private readonly plans = new Map<string, Plan>();
  private workspace = 0;
  private readonly scalars = { alpha: new Float32Array(1), beta: new Float32Array(1) };
  private readonly i32 = Buffer.alloc(4);
  private readonly i64 = Buffer.alloc(8);

  constructor(private readonly device: CudaDevice) {
    const out: [unknown] = [null];
    check(device.libs, 'cublasLtCreate', device.libs.fn.cublasLtCreate(out));
    this.handle = out[0];
  }

  /** Products whose plan exists (distinct shapes seen). */
  get planCount(): number {
    return this.plans.size;
  }

  /** Runs C = alpha·op(A)·op(B) (+ bias) (+ beta·C) on the device's stream. */
  matmul(g: Gemm, a: number, b: number, c: number, bias = 0): void {
    const plan = this.plan(g);
    const { fn } = this.device.libs;
    if (g.bias) {
      if (!bias) throw new Error('matmul: bias requested without a bias pointer');
      this.i64.writeBigUInt64LE(BigInt(bias));
      check(
        this.device.libs,
        'cublasLtMatmulDescSetAttribute',
        fn.cublasLtMatmulDescSetAttribute(plan.desc, DESC_BIAS_POINTER, this.i64, 8),
      );
    }
    this.scalars.alpha[0] = g.alpha ?? 1;
    this.scalars.beta[0] = g.beta ?? 0;
    this.device.timed(plan.name, () => this.run(plan, a, b, c));
  }

  private run(plan: Plan, a: number, b: number, c: number): void {
    const { fn } = this.device.libs;
    const status = fn.cublasLtMatmul(
      this.handle,
      plan.desc,
      this.scalars.alpha,
      b,
      plan.a,
      a,
      plan.b,
      this.scalars.beta,
      c,
      plan.c,
      c,
      plan.c,
      plan.algo,
      plan.workspace,
      WORKSPACE_BYTES,
      this.device.stream,
    );
    check(this.device.libs, 'cublasLtMatmul', status);
    this.device.launches++;
  }

  private plan(g: Gemm): Plan {
    const key = [
      g.M,
      g.N,
      g.K,
      g.transA ? 1 : 0,
      g.transB ? 1 : 0,
      g.batch ?? 1,
      g.strideA ?? 0,
      g.strideB ?? 0,
      g.strideC ?? 0,
      g.aType,
      g.bType,
      g.cType,
      g.bias ? 1 : 0,
      (g.beta ?? 0) !== 0 ? 1 : 0,
    ].join(',');
    const plan = this.plans.get(key);
    if (plan) return plan;
    // A new shape's descriptors and the heuristic's choice: per-shape work, like a pipeline's compile.
    notePipeline('cuBLASLt plan');
    return measureShapeCost('compile', () => this.newPlan(g, key));
  }

  private newPlan(g: Gemm, key: string): Plan {
    const { libs } = this.device;
    const { fn } = libs;
    const { M, N, K } = g;
    const batch = g.batch ?? 1;
    this.workspace ||= this.device.alloc(WORKSPACE_BYTES);
    const desc: [unknown] = [null];
    check(libs, 'cublasLtMatmulDescCreate', fn.cublasLtMatmulDescCreate(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const setDesc = (attr: number, value: number) => {
      this.i32.writeInt32LE(value);
      check(libs, 'cublasLtMatmulDescSetAttribute', fn.cublasLtMatmulDescSetAttribute(desc[0], attr, this.i32, 4));
    };
    // Column-major view: cuBLAS's A is our B, its B our A, its D our Cᵀ [N, M].
    setDesc(DESC_TRANSA, g.transB ? OP_T : OP_N);
    setDesc(DESC_TRANSB, g.transA ? OP_T : OP_N);
    setDesc(DESC_EPILOGUE, g.bias ? EPILOGUE_BIAS : EPILOGUE_DEFAULT);
    if (g.bias) setDesc(DESC_BIAS_DATA_TYPE, dataType(g.cType));
    const layout = (type: Storage, rows: number, cols: number, stride: number) => {
      const out: [unknown] = [null];
      check(libs, 'cublasLtMatrixLayoutCreate', fn.cublasLtMatrixLayoutCreate(out, dataType(type), rows, cols, rows));
      if (batch > 1) {
        this.i32.writeInt32LE(batch);
        check(
          libs,
          'cublasLtMatrixLayoutSetAttribute',
          fn.cublasLtMatrixLayoutSetAttribute(out[0], LAYOUT_BATCH_COUNT, this.i32, 4),
        );
        this.i64.writeBigInt64LE(BigInt(stride));
        check(
          libs,
          'cublasLtMatrixLayoutSetAttribute',
          fn.cublasLtMatrixLayoutSetAttribute(out[0], LAYOUT_STRIDED_BATCH_OFFSET, this.i64, 8),
        );
      }
      return out[0];
    };
    const a = g.transB ? layout(g.bType, K, N, g.strideB ?? 0) : layout(g.bType, N, K, g.strideB ?? 0);
    const b = g.transA ? layout(g.aType, M, K, g.strideA ?? 0) : layout(g.aType, K, M, g.strideA ?? 0);
    const c = layout(g.cType, N, M, g.strideC ?? 0);
    const pref: [unknown] = [null];
    check(libs, 'cublasLtMatmulPreferenceCreate', fn.cublasLtMatmulPreferenceCreate(pref));
    this.i64.writeBigUInt64LE(BigInt(WORKSPACE_BYTES));
    check(
      libs,
      'cublasLtMatmulPreferenceSetAttribute',
      fn.cublasLtMatmulPreferenceSetAttribute(pref[0], PREF_MAX_WORKSPACE_BYTES, this.i64, 8),
    );
    const algo = Buffer.alloc(HEURISTIC_RESULT_BYTES);
    const returned: [number] = [0];
    const status = fn.cublasLtMatmulAlgoGetHeuristic(this.handle, desc[0], a, b, c, c, pref[0], 1, algo, returned);
    if (status === CUBLAS_STATUS_NOT_SUPPORTED || (status === 0 && returned[0] < 1)) throw new UnsupportedProduct(g);
    check(libs, 'cublasLtMatmulAlgoGetHeuristic', status);
    const name = `matmul ${batch > 1 ? `${batch}@` : ''}${M}x${N}x${K}${g.transA ? 'T' : 'N'}${g.transB ? 'T' : 'N'} ${g.aType}>${g.cType}`;
    const plan: Plan = { name, desc: desc[0], a, b, c, algo, workspace: this.workspace };
    this.plans.set(key, plan);
    return plan;
  }
}
