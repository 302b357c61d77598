/**
 * GPT-NeoX (the Pythia family) in tfjs, matching transformers' GPTNeoXForCausalLM: head-interleaved
 * fused QKV, partial rotary embeddings (rotate_half), parallel or sequential residual, exact GELU,
 * LayerNorm, untied embed_out. Weights live in tf.Variables keyed by their Hugging Face names.
 */
import * as tf from './tfjs.js';

import { type NeoXConfig, expectedShapes, rotaryDims, rotatedDims } from './config.js';
import {
  PositionTables,
  causalSelfAttention,
  gatherRows,
  layerNorm,
  linear,
  mlp,
  logitsCrossEntropy,
  matMulNT,
  parallelResidual,
} from './ops/index.js';
import { SeededRandom, deriveSeed } from './random.js';
import { readAllToHost } from './host.js';
import type { HostTensor } from './safetensors.js';

export class ShapeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ShapeError';
  }
}

/** Values a forward pass can record per layer, for importance scores and block similarity. */
export interface ForwardTrace {
  /** Input to each layer, [N, D]. */
  layerInputs?: tf.Tensor2D[];
  /** Output of each layer, [N, D]. */
  layerOutputs?: tf.Tensor2D[];
  /** Attention output per head before the output projection, [N, heads, headSize]. */
  headOutputs?: tf.Tensor3D[];
  /** MLP activations after GELU, [N, intermediate]. */
  mlpActivations?: tf.Tensor2D[];
}

export class GPTNeoX {
  readonly config: NeoXConfig;
  /** Weights by Hugging Face name. (tfjs variable names are global, so they stay auto-generated.) */
  readonly params: Map<string, tf.Variable>;
  /** Rotary tables and causal mask per sequence length. */
  private readonly positionCache = new Map<number, PositionTables>();

  private constructor(config: NeoXConfig, params: Map<string, tf.Variable>) {
    this.config = config;
    this.params = params;
  }

  /** A freshly initialised model (transformers' scheme: N(0, initializer_range), zero bias, unit norm). */
  static random(config: NeoXConfig, seed: number): GPTNeoX {
    const params = new Map<string, tf.Variable>();
    for (const [name, shape] of expectedShapes(config)) {
      const size = shape.reduce((a, b) => a * b, 1);
      let data: Float32Array;
      if (name.includes('layernorm') || name.includes('layer_norm')) {
        data = new Float32Array(size).fill(name.endsWith('.weight') ? 1 : 0);
      } else if (name.endsWith('.bias')) {
        data = new Float32Array(size);
      } else {
        data = new SeededRandom(deriveSeed(seed, name)).normal(size, config.initializerRange);
      }
      params.set(
        name,
        tf.tidy(() => tf.variable(tf.tensor(data, shape, 'float32'), true)),
      );
    }
    return new GPTNeoX(config, params);
  }

  /**
   * A model from host tensors (a checkpoint). Every expected weight must be present with its
   * expected shape; `source` names the checkpoint in errors.
   */
  static fromTensors(config: NeoXConfig, tensors: Map<string, HostTensor>, source: string): GPTNeoX {
    const expected = expectedShapes(config);
    for (const [name, shape] of expected) {
      const t = tensors.get(name);
      if (!t) throw new ShapeError(`${source}: missing tensor "${name}" (expected shape ${JSON.stringify(shape)})`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new ShapeError(
          `${source}: tensor "${name}" has shape ${JSON.stringify(t.shape)} but config.json implies ${JSON.stringify(shape)}`,
        );
      }
      if (t.dtype !== 'float32')
        throw new ShapeError(`${source}: tensor "${name}" is ${t.dtype}, expected a float type`);
    }
    const params = new Map<string, tf.Variable>();
    for (const [name, shape] of expected) {
      params.set(
        name,
        tf.tidy(() => tf.variable(tf.tensor(tensors.get(name)!.data, shape, 'float32'), true)),
      );
    }
    return new GPTNeoX(config, params);
  }

  param(name: string): tf.Variable {
    const p = this.params.get(name);
    if (!p) throw new Error(`model has no parameter "${name}"`);
    return p;
  }

  variables(): tf.Variable[] {
    return [...this.params.values()];
  }

  /** Reads every weight back to the host. */
  async toHost(): Promise<Map<string, HostTensor>> {
    return readAllToHost([...this.params]);
  }

  /** Replaces every weight's value (shapes must match). */
  assign(tensors: Map<string, HostTensor>): void {
    for (const [name, v] of this.params) {
      const t = tensors.get(name);
      if (!t) throw new ShapeError(`missing tensor "${name}"`);
      tf.tidy(() => v.assign(tf.tensor(t.data, v.shape, 'float32')));
    }
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    for (const p of this.positionCache.values()) p.dispose();
    this.positionCache.clear();
  }

  private positions(seqLen: number): PositionTables {
    let p = this.positionCache.get(seqLen);
    if (!p) {
      p = PositionTables.rotary(seqLen, rotaryDims(this.config), rotatedDims(this.config), this.config.rotaryBase);
      this.positionCache.set(seqLen, p);
    }
    return p;
  }

  private attention(x: tf.Tensor2D, layer: number, batch: number, seqLen: number, trace?: ForwardTrace): tf.Tensor2D {
    const p = `gpt_neox.layers.${layer}.attention.`;
    const heads = this.config.layers[layer].numHeads;
    const hs = this.config.headSize;
    const fused = linear(
      x,
      this.param(`${p}query_key_value.weight`) as tf.Tensor2D,
      this.param(`${p}query_key_value.bias`) as tf.Tensor1D,
    );
    const shape = { batch, seqLen, heads, headSize: hs, rotated: rotatedDims(this.config) };
    const merged = causalSelfAttention(fused, this.positions(seqLen), shape);
    if (trace?.headOutputs) trace.headOutputs.push(tf.keep(tf.reshape(merged, [batch * seqLen, heads, hs])));
    return linear(merged, this.param(`${p}dense.weight`) as tf.Tensor2D, this.param(`${p}dense.bias`) as tf.Tensor1D);
  }

  private mlp(x: tf.Tensor2D, layer: number, trace?: ForwardTrace): tf.Tensor2D {
    const p = `gpt_neox.layers.${layer}.mlp.`;
    const upWeight = this.param(`${p}dense_h_to_4h.weight`) as tf.Tensor2D;
    const upBias = this.param(`${p}dense_h_to_4h.bias`) as tf.Tensor1D;
    const downWeight = this.param(`${p}dense_4h_to_h.weight`) as tf.Tensor2D;
    const downBias = this.param(`${p}dense_4h_to_h.bias`) as tf.Tensor1D;
    if (!trace?.mlpActivations) return mlp(x, upWeight, upBias, downWeight, downBias);
    // The trace keeps the hidden activation, so the block runs as its two linear layers.
    const hidden = linear(x, upWeight, upBias, 'gelu');
    trace.mlpActivations.push(tf.keep(hidden));
    return linear(hidden, downWeight, downBias);
  }

  private norm(x: tf.Tensor2D, name: string): tf.Tensor2D {
    return layerNorm(
      x,
      this.param(`${name}.weight`),
      this.param(`${name}.bias`),
      this.config.layerNormEps,
    ) as tf.Tensor2D;
  }

  /** Final hidden states [B·T, D] for token ids [B, T] (int32). */
  hidden(ids: tf.Tensor2D, trace?: ForwardTrace): tf.Tensor2D {
    const [batch, seqLen] = ids.shape;
    if (seqLen > this.config.maxPositions) {
      throw new ShapeError(`sequence length ${seqLen} exceeds the model's context of ${this.config.maxPositions}`);
    }
    let h = gatherRows(
      this.param('gpt_neox.embed_in.weight') as tf.Tensor2D,
      tf.reshape(ids, [batch * seqLen]) as tf.Tensor1D,
    );
    for (let i = 0; i < this.config.numLayers; i++) {
      if (trace?.layerInputs) trace.layerInputs.push(tf.keep(h));
      const p = `gpt_neox.layers.${i}.`;
      const attn = this.attention(this.norm(h, `${p}input_layernorm`), i, batch, seqLen, trace);
      if (this.config.parallelResidual) {
        h = parallelResidual(h, attn, this.mlp(this.norm(h, `${p}post_attention_layernorm`), i, trace));
      } else {
        h = tf.add(h, attn);
        h = tf.add(h, this.mlp(this.norm(h, `${p}post_attention_layernorm`), i, trace));
      }
      if (trace?.layerOutputs) trace.layerOutputs.push(tf.keep(h));
    }
    return this.norm(h, 'gpt_neox.final_layer_norm');
  }

  /** Logits [B·T, V] for token ids [B, T]. Call inside tf.tidy. */
  logits2d(ids: tf.Tensor2D, trace?: ForwardTrace): tf.Tensor2D {
    return matMulNT(this.hidden(ids, trace), this.param('embed_out.weight') as tf.Tensor2D);
  }

  /** Mean cross-entropy of the next-token logits for ids [B, T] against targets [B·T] (the training loss). Call inside tf.tidy. */
  crossEntropy(ids: tf.Tensor2D, targets: tf.Tensor1D): tf.Scalar {
    return logitsCrossEntropy(this.hidden(ids), this.param('embed_out.weight') as tf.Tensor2D, targets);
  }

  /** Logits [B, T, V] for token ids [B, T]. Call inside tf.tidy. */
  logits(ids: tf.Tensor2D): tf.Tensor3D {
    const [b, t] = ids.shape;
    return tf.reshape(this.logits2d(ids), [b, t, this.config.vocabSize]);
  }
}

/** Checks token ids against the vocabulary before they reach a gather (which would read garbage). */
export function checkTokenIds(ids: ArrayLike<number>, vocabSize: number, source = 'input'): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw new ShapeError(`${source}: token id ${id} at position ${i} is outside the vocabulary [0, ${vocabSize})`);
    }
  }
}
