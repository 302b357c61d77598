/**
 * GPT-NeoX configuration: the fields offshoot needs, read from and written to a Hugging Face
 * `config.json`. Students that plain transformers cannot express (layers of different shapes, a head
 * size other than width / heads) keep their extra shape under the `offshoot` key; see
 * docs/checkpoints.md.
 */

export interface LayerShape {
  /** Attention heads kept in this layer. */
  numHeads: number;
  /** MLP hidden size of this layer. */
  intermediateSize: number;
}

export interface NeoXConfig {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  /** Per-head width; transformers requires hiddenSize / numHeads. */
  headSize: number;
  /** One entry per layer; all alike for a model transformers can load. */
  layers: LayerShape[];
  rotaryPct: number;
  rotaryBase: number;
  maxPositions: number;
  parallelResidual: boolean;
  layerNormEps: number;
  initializerRange: number;
  bosTokenId: number;
  eosTokenId: number;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Rotary dims per head, as transformers computes them: int(head_size * rotary_pct). */
export function rotaryDims(config: Pick<NeoXConfig, 'headSize' | 'rotaryPct'>): number {
  return Math.floor(config.headSize * config.rotaryPct);
}

/**
 * Dims the rotary embedding actually rotates. transformers builds ceil(n/2) frequencies
 * base^(-2i/n) for n = rotaryDims and rotates twice that many dims, so an odd n rotates n + 1.
 */
export function rotatedDims(config: Pick<NeoXConfig, 'headSize' | 'rotaryPct'>): number {
  return 2 * Math.ceil(rotaryDims(config) / 2);
}

/** True when every layer has the teacher-style shape transformers' GPTNeoX can express. */
export function isTransformersCompatible(config: NeoXConfig): boolean {
  const first = config.layers[0];
  return config.layers.every(
    (l) =>
      l.numHeads === first.numHeads &&
      l.intermediateSize === first.intermediateSize &&
      l.numHeads * config.headSize === config.hiddenSize,
  );
}

/** Why a config cannot be exported for plain transformers, or null when it can. */
export function transformersIncompatibility(config: NeoXConfig): string | null {
  const first = config.layers[0];
  const mixed = config.layers.findIndex(
    (l) => l.numHeads !== first.numHeads || l.intermediateSize !== first.intermediateSize,
  );
  if (mixed >= 0) {
    return `layer ${mixed} has ${config.layers[mixed].numHeads} heads and MLP ${config.layers[mixed].intermediateSize}, layer 0 has ${first.numHeads} and ${first.intermediateSize}; transformers' GPTNeoX needs all layers alike`;
  }
  if (first.numHeads * config.headSize !== config.hiddenSize) {
    return `heads × head size = ${first.numHeads} × ${config.headSize} = ${first.numHeads * config.headSize} differs from the width ${config.hiddenSize}; transformers' GPTNeoX needs them equal`;
  }
  return null;
}

export interface UniformShape {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize?: number;
  rotaryPct?: number;
  rotaryBase?: number;
  maxPositions?: number;
  parallelResidual?: boolean;
}

/** A config with all layers alike, Pythia-style defaults for everything not given. */
export function uniformConfig(shape: UniformShape): NeoXConfig {
  const intermediateSize = shape.intermediateSize ?? 4 * shape.hiddenSize;
  const config: NeoXConfig = {
    vocabSize: shape.vocabSize,
    hiddenSize: shape.hiddenSize,
    numLayers: shape.numLayers,
    headSize: shape.hiddenSize / shape.numHeads,
    layers: Array.from({ length: shape.numLayers }, () => ({
      numHeads: shape.numHeads,
      intermediateSize,
    })),
    rotaryPct: shape.rotaryPct ?? 0.25,
    rotaryBase: shape.rotaryBase ?? 10000,
    maxPositions: shape.maxPositions ?? 2048,
    parallelResidual: shape.parallelResidual ?? true,
    layerNormEps: 1e-5,
    initializerRange: 0.02,
    bosTokenId: 0,
    eosTokenId: 0,
  };
  validateConfig(config, 'config');
  return config;
}

function positiveInt(value: unknown, field: string, source: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    throw new ConfigError(`${source}: field "${field}" must be a positive integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

export function validateConfig(config: NeoXConfig, source: string): void {
  positiveInt(config.vocabSize, 'vocab_size', source);
  positiveInt(config.hiddenSize, 'hidden_size', source);
  positiveInt(config.numLayers, 'num_hidden_layers', source);
  positiveInt(config.headSize, 'head_size', source);
  positiveInt(config.maxPositions, 'max_position_embeddings', source);
  if (config.layers.length !== config.numLayers) {
    throw new ConfigError(`${source}: ${config.layers.length} layer shapes for num_hidden_layers ${config.numLayers}`);
  }
  config.layers.forEach((l, i) => {
    positiveInt(l.numHeads, `layers[${i}].num_heads`, source);
    positiveInt(l.intermediateSize, `layers[${i}].intermediate_size`, source);
  });
  if (!(config.rotaryPct >= 0 && config.rotaryPct <= 1)) {
    throw new ConfigError(`${source}: field "rotary_pct" must be in [0, 1], got ${config.rotaryPct}`);
  }
  if (rotatedDims(config) > config.headSize) {
    throw new ConfigError(
      `${source}: rotary dims int(head_size ${config.headSize} × rotary_pct ${config.rotaryPct}) = ${rotaryDims(config)} round up past the head size`,
    );
  }
  if (!(config.layerNormEps > 0)) {
    throw new ConfigError(`${source}: field "layer_norm_eps" must be positive, got ${config.layerNormEps}`);
  }
}

type Json = Record<string, unknown>;

/** Parse a Hugging Face GPTNeoX config.json object. `source` names the file in errors. */
export function configFromHF(raw: Json, source = 'config.json'): NeoXConfig {
  const archs = raw.architectures;
  const modelType = raw.model_type;
  if (modelType !== undefined && modelType !== 'gpt_neox') {
    throw new ConfigError(
      `${source}: model_type is ${JSON.stringify(modelType)}; offshoot supports only GPT-NeoX ("gpt_neox", GPTNeoXForCausalLM)`,
    );
  }
  if (Array.isArray(archs) && !archs.includes('GPTNeoXForCausalLM')) {
    throw new ConfigError(
      `${source}: architectures is ${JSON.stringify(archs)}; offshoot supports only GPTNeoXForCausalLM`,
    );
  }
  if (modelType === undefined && archs === undefined) {
    throw new ConfigError(`${source}: neither model_type nor architectures is set; expected a GPT-NeoX config`);
  }
  const act = raw.hidden_act ?? 'gelu';
  if (act !== 'gelu') {
    throw new ConfigError(`${source}: hidden_act ${JSON.stringify(act)} is not supported (only exact "gelu")`);
  }
  if (raw.tie_word_embeddings === true) {
    throw new ConfigError(`${source}: tie_word_embeddings true is not supported; GPT-NeoX has an untied embed_out`);
  }
  if (raw.attention_bias === false) {
    throw new ConfigError(`${source}: attention_bias false is not supported`);
  }
  const hiddenSize = positiveInt(raw.hidden_size, 'hidden_size', source);
  const numLayers = positiveInt(raw.num_hidden_layers, 'num_hidden_layers', source);
  const numHeads = positiveInt(raw.num_attention_heads, 'num_attention_heads', source);
  const intermediateSize = positiveInt(raw.intermediate_size, 'intermediate_size', source);
  const ext = (raw.offshoot ?? {}) as Json;
  let headSize: number;
  if (ext.head_size !== undefined) {
    headSize = positiveInt(ext.head_size, 'offshoot.head_size', source);
  } else {
    if (hiddenSize % numHeads !== 0) {
      throw new ConfigError(`${source}: num_attention_heads ${numHeads} does not divide hidden_size ${hiddenSize}`);
    }
    headSize = hiddenSize / numHeads;
  }
  let layers: LayerShape[];
  if (ext.layers !== undefined) {
    if (!Array.isArray(ext.layers)) {
      throw new ConfigError(`${source}: field "offshoot.layers" must be an array`);
    }
    layers = (ext.layers as Json[]).map((l, i) => ({
      numHeads: positiveInt(l?.num_heads, `offshoot.layers[${i}].num_heads`, source),
      intermediateSize: positiveInt(l?.intermediate_size, `offshoot.layers[${i}].intermediate_size`, source),
    }));
  } else {
    layers = Array.from({ length: numLayers }, () => ({ numHeads, intermediateSize }));
  }
  // Newer transformers spell rotary settings as partial_rotary_factor / rope_theta.
  const ropeParams = (raw.rope_parameters ?? raw.rope_scaling ?? {}) as Json;
  const rotaryPct = (raw.rotary_pct ?? raw.partial_rotary_factor ?? ropeParams.partial_rotary_factor ?? 0.25) as number;
  const rotaryBase = (raw.rotary_emb_base ?? raw.rope_theta ?? ropeParams.rope_theta ?? 10000) as number;
  if (ropeParams.rope_type !== undefined && ropeParams.rope_type !== 'default') {
    throw new ConfigError(`${source}: rope type ${JSON.stringify(ropeParams.rope_type)} is not supported`);
  }
  const config: NeoXConfig = {
    vocabSize: positiveInt(raw.vocab_size, 'vocab_size', source),
    hiddenSize,
    numLayers,
    headSize,
    layers,
    rotaryPct,
    rotaryBase,
    maxPositions: positiveInt(raw.max_position_embeddings ?? 2048, 'max_position_embeddings', source),
    parallelResidual: (raw.use_parallel_residual ?? true) as boolean,
    layerNormEps: (raw.layer_norm_eps ?? 1e-5) as number,
    initializerRange: (raw.initializer_range ?? 0.02) as number,
    bosTokenId: (raw.bos_token_id ?? 0) as number,
    eosTokenId: (raw.eos_token_id ?? 0) as number,
  };
  validateConfig(config, source);
  return config;
}

/** The Hugging Face config.json object for a config (plus `offshoot` keys when it needs them). */
export function configToHF(config: NeoXConfig, dtype: 'float32' | 'bfloat16' | 'float16' = 'float32'): Json {
  const first = config.layers[0];
  const out: Json = {
    architectures: ['GPTNeoXForCausalLM'],
    model_type: 'gpt_neox',
    vocab_size: config.vocabSize,
    hidden_size: config.hiddenSize,
    num_hidden_layers: config.numLayers,
    num_attention_heads: first.numHeads,
    intermediate_size: first.intermediateSize,
    hidden_act: 'gelu',
    rotary_pct: config.rotaryPct,
    rotary_emb_base: config.rotaryBase,
    max_position_embeddings: config.maxPositions,
    use_parallel_residual: config.parallelResidual,
    layer_norm_eps: config.layerNormEps,
    initializer_range: config.initializerRange,
    bos_token_id: config.bosTokenId,
    eos_token_id: config.eosTokenId,
    tie_word_embeddings: false,
    attention_dropout: 0,
    hidden_dropout: 0,
    use_cache: true,
    torch_dtype: dtype,
  };
  if (!isTransformersCompatible(config)) {
    out.offshoot = {
      head_size: config.headSize,
      layers: config.layers.map((l) => ({ num_heads: l.numHeads, intermediate_size: l.intermediateSize })),
    };
  }
  return out;
}

/** Expected shape of every weight, keyed by its Hugging Face name. */
export function expectedShapes(config: NeoXConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  const d = config.hiddenSize;
  shapes.set('gpt_neox.embed_in.weight', [config.vocabSize, d]);
  config.layers.forEach((l, i) => {
    const p = `gpt_neox.layers.${i}.`;
    const inner = l.numHeads * config.headSize;
    shapes.set(`${p}input_layernorm.weight`, [d]);
    shapes.set(`${p}input_layernorm.bias`, [d]);
    shapes.set(`${p}post_attention_layernorm.weight`, [d]);
    shapes.set(`${p}post_attention_layernorm.bias`, [d]);
    shapes.set(`${p}attention.query_key_value.weight`, [3 * inner, d]);
    shapes.set(`${p}attention.query_key_value.bias`, [3 * inner]);
    shapes.set(`${p}attention.dense.weight`, [d, inner]);
    shapes.set(`${p}attention.dense.bias`, [d]);
    shapes.set(`${p}mlp.dense_h_to_4h.weight`, [l.intermediateSize, d]);
    shapes.set(`${p}mlp.dense_h_to_4h.bias`, [l.intermediateSize]);
    shapes.set(`${p}mlp.dense_4h_to_h.weight`, [d, l.intermediateSize]);
    shapes.set(`${p}mlp.dense_4h_to_h.bias`, [d]);
  });
  shapes.set('gpt_neox.final_layer_norm.weight', [d]);
  shapes.set('gpt_neox.final_layer_norm.bias', [d]);
  shapes.set('embed_out.weight', [config.vocabSize, d]);
  return shapes;
}

/** Number of parameters: the sum of all weight sizes. */
export function parameterCount(config: NeoXConfig): number {
  let n = 0;
  for (const shape of expectedShapes(config).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}
