/**
 * Data-parallel training of one model by several processes of one host (docs/multi-gpu.md): each rank
 * computes the gradients of its slice of the step's global batch, the gradients are averaged over the
 * ranks (all-reduce), and every rank applies the same update, so the weights stay identical on every
 * rank. The global batch of a step is a function of the step alone (core/data), and rank r takes its
 * rows [r·B/N, (r+1)·B/N): a run resumed on any number of ranks sees the same data in the same order.
 *
 * The all-reduce comes in two kinds, behind one interface (the trainer, core/model/train.ts, applies it
 * between the gradients and the optimiser's update):
 * - `device`: on the compute stream, inside the training step (NCCL on the cuda backend,
 *   cuda/nccl.ts); a CUDA graph captures it with the rest of the step.
 * - `host`: through host memory, awaited between the step's gradient half and its update half
 *   (the TCP ring of tcp-ring.ts, for the backends without NCCL, and what the CPU tests use).
 */
import type * as tf from '../tfjs.js';

import { RingError, TcpRing, type TcpRingOptions, newJobId } from './tcp-ring.js';

export { RingError, TcpRing, type TcpRingOptions, newJobId };

interface Ranked {
  readonly rank: number;
  readonly worldSize: number;
}

/** An all-reduce that runs on the device's stream, inside a training step. */
export interface DeviceAllReduce extends Ranked {
  readonly kind: 'device';
  /** Element-wise means over the ranks of each tensor (same shapes and order on every rank), as new tensors. */
  allReduceMean(tensors: tf.Tensor[]): tf.Tensor[];
}

/** An all-reduce through host memory, between a step's gradients and its update. */
export interface HostAllReduce extends Ranked {
  readonly kind: 'host';
  /** Replaces `values` by their element-wise mean over the ranks (identical on every rank). */
  allReduceMean(values: Float32Array): Promise<void>;
}

/** How a data-parallel trainer averages its gradients over the ranks. */
export type GradientAllReduce = DeviceAllReduce | HostAllReduce;

/** The TCP ring's all-reduce as a HostAllReduce. */
export function hostAllReduce(ring: TcpRing): HostAllReduce {
  return {
    kind: 'host',
    rank: ring.rank,
    worldSize: ring.worldSize,
    allReduceMean: (values) => ring.allReduceMean(values),
  };
}

/** Which all-reduce a data-parallel job uses: NCCL on the cuda backend, the TCP ring elsewhere (`auto`). */
export const ALL_REDUCE_CHOICES = ['auto', 'nccl', 'tcp'] as const;
export type AllReduceChoice = (typeof ALL_REDUCE_CHOICES)[number];

/** One rank's membership of a data-parallel job. */
export interface DataParallelGroup extends Ranked {
  /** What the trainer averages gradients with. */
  allReduce: GradientAllReduce;
  /** The ranks' TCP ring (small collectives: barriers, broadcasts). */
  ring: TcpRing;
  close(): void;
}

/**
 * Joins a data-parallel job as rank `options.rank`: connects the TCP ring and, with NCCL (the cuda
 * backend, unless `allReduce` says tcp), creates the NCCL communicator from an id rank 0 broadcasts
 * over the ring. `backend` is the active tfjs backend's name.
 */
export async function joinDataParallel(
  options: TcpRingOptions & { backend: string; allReduce?: AllReduceChoice },
): Promise<DataParallelGroup> {
  const choice = options.allReduce ?? 'auto';
  if (!(ALL_REDUCE_CHOICES as readonly string[]).includes(choice))
    throw new Error(`allReduce: expected one of ${ALL_REDUCE_CHOICES.join(', ')}, got ${JSON.stringify(choice)}`);
  const nccl = choice === 'nccl' || (choice === 'auto' && options.backend === 'cuda' && options.worldSize > 1);
  if (nccl && options.backend !== 'cuda')
    throw new Error(`allReduce nccl needs the cuda backend; this rank runs ${options.backend}`);
  const ring = await TcpRing.join(options);
  try {
    if (!nccl)
      return {
        rank: ring.rank,
        worldSize: ring.worldSize,
        allReduce: hostAllReduce(ring),
        ring,
        close: () => ring.close(),
      };
    const { ncclAllReduce } = await import('../cuda/nccl.js');
    const allReduce = await ncclAllReduce(ring);
    return {
      rank: ring.rank,
      worldSize: ring.worldSize,
      allReduce,
      ring,
      close: () => {
        allReduce.destroy();
        ring.close();
      },
    };
  } catch (err) {
    ring.close();
    throw err;
  }
}

// ---- how the global batch is shared out -------------------------------------------------------------

/** A batch of token rows (core/data's and the trainer's Batch). */
export interface RowBatch {
  batchSize: number;
  seqLen: number;
  input: Int32Array;
  target: Int32Array;
}

/** How a rank works through its share of a step's global batch. */
export interface RankLayout {
  /** Rows of the global batch this rank takes: [first, first + rows). */
  first: number;
  rows: number;
  /** Rows per forward/backward pass, and passes per step (gradient accumulation). */
  microBatchSize: number;
  microBatches: number;
}

/**
 * The rows rank `rank` of `worldSize` takes of a global batch of `batchSize` rows, split into
 * micro-batches of `microBatchSize` rows (default: the whole share in one pass). Throws naming the
 * numbers when they do not divide: every rank must take the same number of rows, and every
 * micro-batch as many, for the mean of the ranks' means to be the global batch's mean.
 */
export function rankLayout(batchSize: number, rank: number, worldSize: number, microBatchSize?: number): RankLayout {
  if (!Number.isSafeInteger(worldSize) || worldSize < 1)
    throw new Error(`data parallel: the number of ranks must be a positive integer, got ${worldSize}`);
  if (!Number.isSafeInteger(rank) || rank < 0 || rank >= worldSize)
    throw new Error(`data parallel: rank must be in [0, ${worldSize - 1}], got ${rank}`);
  if (batchSize % worldSize !== 0) {
    throw new Error(
      `data parallel: the batch size ${batchSize} does not divide into ${worldSize} ranks; use a batch size that is a multiple of ${worldSize}`,
    );
  }
  const rows = batchSize / worldSize;
  const micro = microBatchSize ?? rows;
  if (!Number.isSafeInteger(micro) || micro < 1)
    throw new Error(`data parallel: the micro-batch size must be a positive integer, got ${microBatchSize}`);
  if (rows % micro !== 0) {
    throw new Error(
      `data parallel: each of the ${worldSize} rank${worldSize === 1 ? '' : 's'} takes ${rows} rows of the batch of ${batchSize}, which do not divide into micro-batches of ${micro} rows`,
    );
  }
  return { first: rank * rows, rows, microBatchSize: micro, microBatches: rows / micro };
}

/** Rows [first, first + rows) of a batch, sharing its memory. */
export function sliceRows<B extends RowBatch>(batch: B, first: number, rows: number): B {
  if (first < 0 || rows < 1 || first + rows > batch.batchSize)
    throw new Error(`rows [${first}, ${first + rows}) outside a batch of ${batch.batchSize}`);
  const from = first * batch.seqLen;
  const to = from + rows * batch.seqLen;
  return { ...batch, batchSize: rows, input: batch.input.subarray(from, to), target: batch.target.subarray(from, to) };
}

/** The batches rank `rank` of `worldSize` trains on: its rows of each step's global batch. */
export function rankBatches<B extends RowBatch>(
  batches: (step: number) => B,
  rank: number,
  worldSize: number,
): (step: number) => B {
  return (step) => {
    const global = batches(step);
    const { first, rows } = rankLayout(global.batchSize, rank, worldSize);
    return sliceRows(global, first, rows);
  };
}
