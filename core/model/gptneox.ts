/**
 * GPT-NeoX (the Pythia family) in tfjs, matching transformers' GPTNeoXForCausalLM: head-interleaved
 * fused QKV, partial rotary embeddings (rotate_half), parallel or sequential residual, exact GELU,
 * LayerNorm, untied embed_out. Weights live in tf.Variables keyed by their Hugging Face names.
 */
import * as tf from './tfjs.js';

import { type NeoXConfig, expectedShapes, rotaryDims, rotatedDims } from './config.js';
import { gatherRows, layerNorm, linear, linearGelu, matMul, matMulNT } from './ops.js';
import { tensorflowKernelsActive } from './tensorflow/native.js';
import { type RotaryTables, rotaryTables, tfAttention } from './tensorflow/ops.js';
import { fusedAttention, fusedAttentionSupports, fusedKernelsActive } from './webgpu/fused.js';
import { SeededRandom, deriveSeed } from './random.js';
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
  private readonly ropeCache = new Map<number, RopeEntry>();

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
      params.set(name, tf.tidy(() => tf.variable(tf.tensor(data, shape, 'float32'), true)));
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
      if (t.dtype !== 'float32') throw new ShapeError(`${source}: tensor "${name}" is ${t.dtype}, expected a float type`);
    }
    const params = new Map<string, tf.Variable>();
    for (const [name, shape] of expected) {
      params.set(name, tf.tidy(() => tf.variable(tf.tensor(tensors.get(name)!.data, shape, 'float32'), true)));
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
    const out = new Map<string, HostTensor>();
    for (const [name, v] of this.params) {
      out.set(name, { dtype: 'float32', shape: v.shape.slice(), data: (await v.data()) as Float32Array });
    }
    return out;
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
    for (const c of this.ropeCache.values()) tf.dispose([c.cos, c.sin, c.mask, ...(c.tables ? [c.tables.cos, c.tables.sin] : [])]);
    this.ropeCache.clear();
  }

  /** cos/sin tables [T, rotaryDims] and the additive causal mask [T, T], cached per length. */
  private rope(seqLen: number): RopeEntry {
    const cached = this.ropeCache.get(seqLen);
    if (cached) return cached;
    const n = rotaryDims(this.config);
    const rd = rotatedDims(this.config);
    const half = rd / 2;
    const cos = new Float32Array(seqLen * rd);
    const sin = new Float32Array(seqLen * rd);
    for (let t = 0; t < seqLen; t++) {
      for (let i = 0; i < half; i++) {
        // Same arithmetic as transformers: inv_freq in f32, then t * inv_freq in f32.
        const invFreq = Math.fround(1 / Math.fround(this.config.rotaryBase ** Math.fround((2 * i) / n)));
        const angle = Math.fround(t * invFreq);
        cos[t * rd + i] = cos[t * rd + i + half] = Math.cos(angle);
        sin[t * rd + i] = sin[t * rd + i + half] = Math.sin(angle);
      }
    }
    const mask = new Float32Array(seqLen * seqLen);
    for (let i = 0; i < seqLen; i++) for (let j = i + 1; j < seqLen; j++) mask[i * seqLen + j] = -1e9;
    const entry: RopeEntry = {
      cos: tf.keep(tf.tensor2d(cos, [seqLen, rd])),
      sin: tf.keep(tf.tensor2d(sin, [seqLen, rd])),
      mask: tf.keep(tf.tensor2d(mask, [seqLen, seqLen])),
      cosHost: cos,
      sinHost: sin,
    };
    this.ropeCache.set(seqLen, entry);
    return entry;
  }

  /** The tensorflow attention's rotary tables for a length (tensorflow/ops.ts), cached with the cos/sin they come from. */
  private rotaryTables(seqLen: number): RotaryTables {
    const entry = this.rope(seqLen);
    entry.tables ??= rotaryTables(entry.cosHost, entry.sinHost, seqLen, this.config.headSize, rotatedDims(this.config));
    return entry.tables;
  }

  private attention(x: tf.Tensor2D, layer: number, batch: number, seqLen: number, trace?: ForwardTrace): tf.Tensor2D {
    const p = `gpt_neox.layers.${layer}.attention.`;
    const heads = this.config.layers[layer].numHeads;
    const hs = this.config.headSize;
    const fused = linear(x, this.param(`${p}query_key_value.weight`) as tf.Tensor2D, this.param(`${p}query_key_value.bias`) as tf.Tensor1D);
    const shape = { batch, seqLen, heads, headSize: hs, rotated: rotatedDims(this.config) };
    if (fusedKernelsActive() && fusedAttentionSupports(shape)) {
      // Rotary, causal attention and the head merge in WebGPU kernels (webgpu/fused.ts).
      const { cos, sin } = this.rope(seqLen);
      const merged = fusedAttention(fused, cos, sin, shape);
      if (trace?.headOutputs) trace.headOutputs.push(tf.keep(tf.reshape(merged, [batch * seqLen, heads, hs])));
      return linear(merged, this.param(`${p}dense.weight`) as tf.Tensor2D, this.param(`${p}dense.bias`) as tf.Tensor1D);
    }
    if (tensorflowKernelsActive()) {
      // Rotary, attention and the head merge in a few TensorFlow ops with the gradient written out.
      const merged = tfAttention(fused, this.rotaryTables(seqLen), this.rope(seqLen).mask, shape);
      if (trace?.headOutputs) trace.headOutputs.push(tf.keep(tf.reshape(merged, [batch * seqLen, heads, hs])));
      return linear(merged, this.param(`${p}dense.weight`) as tf.Tensor2D, this.param(`${p}dense.bias`) as tf.Tensor1D);
    }
    const { cos, sin, mask } = this.rope(seqLen);
    const merged = causalSelfAttention(fused, cos, sin, mask, shape);
    if (trace?.headOutputs) trace.headOutputs.push(tf.keep(tf.reshape(merged, [batch * seqLen, heads, hs])));
    return linear(merged, this.param(`${p}dense.weight`) as tf.Tensor2D, this.param(`${p}dense.bias`) as tf.Tensor1D);
  }

  private mlp(x: tf.Tensor2D, layer: number, trace?: ForwardTrace): tf.Tensor2D {
    const p = `gpt_neox.layers.${layer}.mlp.`;
    const hidden = linearGelu(x, this.param(`${p}dense_h_to_4h.weight`) as tf.Tensor2D, this.param(`${p}dense_h_to_4h.bias`) as tf.Tensor1D);
    if (trace?.mlpActivations) trace.mlpActivations.push(tf.keep(hidden));
    return linear(hidden, this.param(`${p}dense_4h_to_h.weight`) as tf.Tensor2D, this.param(`${p}dense_4h_to_h.bias`) as tf.Tensor1D);
  }

  private norm(x: tf.Tensor2D, name: string): tf.Tensor2D {
    return layerNorm(x, this.param(`${name}.weight`), this.param(`${name}.bias`), this.config.layerNormEps) as tf.Tensor2D;
  }

  /** Final hidden states [B·T, D] for token ids [B, T] (int32). */
  hidden(ids: tf.Tensor2D, trace?: ForwardTrace): tf.Tensor2D {
    const [batch, seqLen] = ids.shape;
    if (seqLen > this.config.maxPositions) {
      throw new ShapeError(`sequence length ${seqLen} exceeds the model's context of ${this.config.maxPositions}`);
    }
    let h = gatherRows(this.param('gpt_neox.embed_in.weight') as tf.Tensor2D, tf.reshape(ids, [batch * seqLen]) as tf.Tensor1D);
    for (let i = 0; i < this.config.numLayers; i++) {
      if (trace?.layerInputs) trace.layerInputs.push(tf.keep(h));
      const p = `gpt_neox.layers.${i}.`;
      const attn = this.attention(this.norm(h, `${p}input_layernorm`), i, batch, seqLen, trace);
      if (this.config.parallelResidual) {
        const m = this.mlp(this.norm(h, `${p}post_attention_layernorm`), i, trace);
        // One pass instead of two where each op is a TensorFlow call or a GPU dispatch (same order of additions).
        h = tensorflowKernelsActive() || fusedKernelsActive() ? tf.addN([h, attn, m]) : tf.add(tf.add(h, attn), m);
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

  /** Logits [B, T, V] for token ids [B, T]. Call inside tf.tidy. */
  logits(ids: tf.Tensor2D): tf.Tensor3D {
    const [b, t] = ids.shape;
    return tf.reshape(this.logits2d(ids), [b, t, this.config.vocabSize]);
  }
}

/** cos/sin tables [T, rotaryDims] and the additive causal mask [T, T] of one length, with what is derived from them. */
interface RopeEntry {
  cos: tf.Tensor2D;
  sin: tf.Tensor2D;
  mask: tf.Tensor2D;
  cosHost: Float32Array;
  sinHost: Float32Array;
  /** The tensorflow attention's tables, made on first use. */
  tables?: RotaryTables;
}

/** Rotary embedding on the first `rd` dims of x [B, H, T, hs], rotate_half style. */
function applyRotary(x: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D, rd: number): tf.Tensor4D {
  if (rd === 0) return x;
  const hs = x.shape[3];
  // split, not slice: its gradient is one concat, where each slice's would be a pad and an add.
  const [rot, pass] = rd === hs ? [x, null] : tf.split(x, [rd, hs - rd], 3);
  const [x1, x2] = tf.split(rot, 2, 3);
  const rotated = tf.concat([tf.neg(x2), x1], 3);
  const embedded = tf.add(tf.mul(rot, cos), tf.mul(rotated, sin));
  return (pass ? tf.concat([embedded, pass], 3) : embedded) as tf.Tensor4D;
}

/** The shape of one attention call (the reference here, and the webgpu and tensorflow ops). */
export interface AttentionShape {
  batch: number;
  seqLen: number;
  heads: number;
  headSize: number;
  /** Dims rotated (rotate_half) at the start of each q and k head; cos/sin are [T, rotated]. */
  rotated: number;
}

/**
 * Causal self-attention of a fused QKV projection [B·T, H·3·hs] (rows interleaved per head: q, k,
 * v), rotary on q and k (cos/sin [T, rd], additive mask [T, T]), heads merged: [B·T, H·hs]. The
 * reference tfjs ops; webgpu/fused.ts's fusedAttention computes the same in kernels.
 */
export function causalSelfAttention(fused: tf.Tensor2D, cos: tf.Tensor2D, sin: tf.Tensor2D, mask: tf.Tensor2D, s: AttentionShape): tf.Tensor2D {
  const { batch, seqLen, heads, headSize: hs, rotated } = s;
  // Rows are interleaved per head: (heads, 3·head_size) with q, k, v in that order.
  const qkv = tf.transpose(tf.reshape(fused, [batch, seqLen, heads, 3 * hs]), [0, 2, 1, 3]) as tf.Tensor4D;
  const [qh, kh, v] = tf.split(qkv, 3, 3) as tf.Tensor4D[];
  const q = applyRotary(qh, cos, sin, rotated);
  const k = applyRotary(kh, cos, sin, rotated);
  const scores = tf.add(tf.mul(matMul(q, k, false, true), 1 / Math.sqrt(hs)), mask);
  const context = tf.transpose(matMul(tf.softmax(scores), v), [0, 2, 1, 3]); // [B, T, H, hs]
  return tf.reshape(context, [batch * seqLen, heads * hs]) as tf.Tensor2D;
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
