/**
 * Parameters and FLOPs of a sub-network, analytically from its shape (no tensors). Pure.
 *
 * Parameters: exactly the sum of the student's tensor sizes (transformers' num_parameters()):
 *   embed_in V·d + embed_out V·d + final LayerNorm 2d
 *   + per layer: 2 LayerNorms 4d, QKV 3·h·hs·d + 3·h·hs, attention.dense d·h·hs + d,
 *     MLP 2·m·d + m + d
 * (d = embedding width, h = heads, hs = head size, m = MLP width of the layer, V = vocabulary).
 *
 * FLOPs per token (one multiply-add = 2 FLOPs):
 *   N_f = parameters − V·d: every parameter except the input embedding, which is a table lookup. Each
 *     weight costs one multiply-add per token (2 FLOPs); counting biases and LayerNorm parameters the
 *     same way overstates their (elementwise) cost slightly, by design, so the term stays "2N".
 *   attention, forward, per layer: 2·2·h·hs·T_a — QKᵀ (h·hs multiply-adds against each of T_a keys)
 *     and A·V (the same again). T_a = T, the full sequence length, by default (dense kernels compute
 *     the masked half too; Kaplan et al. and Chinchilla count it so); with `causal: true`,
 *     T_a = (T + 1)/2, the mean number of keys a position attends to.
 *   Softmax, GELU, rotary, LayerNorm normalisation and the loss are not counted.
 *   forward  = 2·N_f + Σ_layers 4·h·hs·T_a
 *   training = 3 × forward (backward ≈ 2 × forward) = 6·N_f + 3·attention
 *   teacher forward (distillation targets) = the teacher's forward, same formula
 *   distillation training = student training + teacher forward.
 */
import type { LayerShape, NeoXConfig } from '../model/index.js';
import { type CanonicalSpec, type ResolveOptions, canonicalize, studentConfig } from './spec.js';

/** What counting needs of a model's shape. */
export type ModelShape = Pick<NeoXConfig, 'vocabSize' | 'hiddenSize' | 'headSize'> & { layers: readonly LayerShape[] };

/** Parameters of one layer at width d and head size hs. */
export function layerParameters(d: number, hs: number, layer: LayerShape): number {
  const inner = layer.numHeads * hs;
  const m = layer.intermediateSize;
  return 4 * d + 3 * inner * d + 3 * inner + d * inner + d + 2 * m * d + m + d;
}

/** Total parameters: the sum of every tensor's size. */
export function shapeParameters(shape: ModelShape): number {
  const d = shape.hiddenSize;
  let n = 2 * shape.vocabSize * d + 2 * d;
  for (const l of shape.layers) n += layerParameters(d, shape.headSize, l);
  return n;
}

export interface FlopOptions {
  /** Sequence length T. */
  seqLen: number;
  /** Average attention over the causal triangle ((T + 1)/2 keys per position) instead of T. Default false. */
  causal?: boolean;
}

export interface ForwardFlops {
  /** Parameters that cost FLOPs per token (all but the input embedding). */
  flopParameters: number;
  /** Attention-score and attention-value FLOPs per token, forward, summed over layers. */
  attention: number;
  /** 2·N_f + attention. */
  forward: number;
}

/** Forward FLOPs per token of a model shape (see the module comment for the exact formula). */
export function forwardFlops(shape: ModelShape, options: FlopOptions): ForwardFlops {
  const d = shape.hiddenSize;
  const flopParameters = shapeParameters(shape) - shape.vocabSize * d;
  const keys = options.causal ? (options.seqLen + 1) / 2 : options.seqLen;
  let attention = 0;
  for (const l of shape.layers) attention += 4 * l.numHeads * shape.headSize * keys;
  return { flopParameters, attention, forward: 2 * flopParameters + attention };
}

export interface SubnetCount {
  parameters: number;
  /** embed_in + embed_out. */
  embeddingParameters: number;
  nonEmbeddingParameters: number;
  teacherParameters: number;
  /** Fraction of the teacher's parameters. */
  fraction: number;
  seqLen: number;
  causal: boolean;
  flopsPerToken: {
    /** Parameters counted in 2N / 6N (all but the input embedding). */
    flopParameters: number;
    attentionForward: number;
    /** 2·N_f + attention. */
    forward: number;
    /** 6·N_f + 3·attention. */
    training: number;
    /** The teacher's forward (distillation targets). */
    teacherForward: number;
    /** training + teacherForward. */
    distillationTraining: number;
  };
  shape: { layers: number; hiddenSize: number; headSize: number; heads: number[]; intermediateSize: number[] };
}

/** Counts of a model shape against its teacher's. */
export function countShape(shape: ModelShape, teacher: ModelShape, options: FlopOptions): SubnetCount {
  const parameters = shapeParameters(shape);
  const embeddingParameters = 2 * shape.vocabSize * shape.hiddenSize;
  const teacherParameters = shapeParameters(teacher);
  const f = forwardFlops(shape, options);
  const t = forwardFlops(teacher, options);
  const training = 3 * f.forward;
  return {
    parameters,
    embeddingParameters,
    nonEmbeddingParameters: parameters - embeddingParameters,
    teacherParameters,
    fraction: parameters / teacherParameters,
    seqLen: options.seqLen,
    causal: options.causal ?? false,
    flopsPerToken: {
      flopParameters: f.flopParameters,
      attentionForward: f.attention,
      forward: f.forward,
      training,
      teacherForward: t.forward,
      distillationTraining: training + t.forward,
    },
    shape: {
      layers: shape.layers.length,
      hiddenSize: shape.hiddenSize,
      headSize: shape.headSize,
      heads: shape.layers.map((l) => l.numHeads),
      intermediateSize: shape.layers.map((l) => l.intermediateSize),
    },
  };
}

export interface CountOptions extends Partial<FlopOptions>, ResolveOptions {}

/**
 * Parameters and FLOPs per token of a spec's sub-network (validated against the teacher). The
 * sequence length defaults to the teacher's context.
 */
export function countSubnet(teacher: NeoXConfig, spec: unknown, options: CountOptions = {}): SubnetCount {
  const canonical: CanonicalSpec = canonicalize(spec, teacher, options);
  return countShape(studentConfig(teacher, canonical), teacher, {
    seqLen: options.seqLen ?? teacher.maxPositions,
    causal: options.causal,
  });
}

/** Parameters of a canonical spec's student. */
export function canonicalParameters(teacher: NeoXConfig, c: CanonicalSpec): number {
  return shapeParameters(studentConfig(teacher, c));
}
