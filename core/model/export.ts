/**
 * Export for plain transformers: any GPT-NeoX checkpoint offshoot can load — layer-wise and granular
 * students included — as a checkpoint `GPTNeoXForCausalLM` loads with no custom code.
 *
 * transformers' GPT-NeoX needs every layer alike and heads × head size = width. A student whose
 * layers differ is zero-padded up to its largest layer: the heads a layer lacks get zero query, key
 * and value rows and zero output-projection columns (their queries and keys are zero, so they attend
 * uniformly over zero values and add nothing), and the MLP neurons it lacks get zero input rows and
 * bias (GELU(0) = 0) and zero output columns. That is exact: the padded model computes the same sums
 * plus zeros.
 *
 * When heads × head size still falls short of the width, extra zero heads fill it if the head size
 * divides the width. If it does not, the head size itself is padded to a divisor of the width (zero
 * dims at the end of every head): the query rows are then multiplied by √(new/old head size), so
 * transformers' scale 1/√(new head size) gives back the student's 1/√(old head size), and rotary_pct
 * is rewritten so the same number of dims rotate with the same frequencies. That is exact up to the
 * float32 rounding of the rescaled query weights (relative 6e-8), and the report says so. Where no
 * padding can work — the heads of one layer span more dims than the width — export fails, naming
 * the layer.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type SaveDtype, loadCheckpoint, saveCheckpoint } from './checkpoint.js';
import { type NeoXConfig, parameterCount, rotaryDims, transformersIncompatibility } from './config.js';
import type { HostTensor } from './safetensors.js';

export class ExportError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ExportError';
  }
}

/** What exporting a model for plain transformers changed, and what it cost. */
export interface ExportPadding {
  /** Parameters of the model as it is, of the exported model, and the difference. */
  parameters: { model: number; exported: number; added: number };
  /** Heads per layer, head size and MLP width of the exported model. */
  numHeads: number;
  headSize: number;
  intermediateSize: number;
  /** Per layer of the model: its heads and MLP neurons, and how many zero ones were added. */
  layers: { numHeads: number; intermediateSize: number; addedHeads: number; addedNeurons: number }[];
  /** Zero dims added at the end of every head (head size padded), or 0. */
  addedHeadDims: number;
  /** The factor query rows were multiplied by to keep the attention scale (1 when the head size is kept). */
  queryScale: number;
  /** True when only zero rows and columns were added (bit-for-bit the same sums); false when queries were rescaled. */
  exact: boolean;
}

/**
 * The uniform shape a model is exported as: the largest layer's heads and MLP width, and a head
 * count × head size equal to the width. Throws an ExportError when there is none.
 */
export function exportShape(config: NeoXConfig): { numHeads: number; headSize: number; intermediateSize: number } {
  const d = config.hiddenSize;
  const hs = config.headSize;
  const intermediateSize = Math.max(...config.layers.map((l) => l.intermediateSize));
  const maxHeads = Math.max(...config.layers.map((l) => l.numHeads));
  if (maxHeads * hs > d) {
    const widest = config.layers.findIndex((l) => l.numHeads === maxHeads);
    throw new ExportError(
      `cannot export for plain transformers: layer ${widest} has ${maxHeads} heads of size ${hs} = ${maxHeads * hs} dims, more than the width ${d}; ` +
        `transformers' GPT-NeoX needs heads × head size = width, and padding can only add heads or head dims`,
    );
  }
  // Keep the head size when it divides the width (only zero heads are added); otherwise the smallest
  // larger head size that divides the width into at least maxHeads heads (exists: maxHeads·hs ≤ d).
  for (let size = hs; size <= d; size++) {
    if (d % size === 0 && d / size >= maxHeads) return { numHeads: d / size, headSize: size, intermediateSize };
  }
  const widest = config.layers.findIndex((l) => l.numHeads === maxHeads);
  throw new ExportError(
    `cannot export for plain transformers: the width ${d} is no multiple of the head size ${hs}, and no larger head size that divides it leaves room for ` +
      `the ${maxHeads} heads of layer ${widest}; transformers' GPT-NeoX needs heads × head size = width`,
  );
}

/**
 * rotary_pct for a padded head size that rotates the same dims with the same frequencies:
 * transformers rotates int(head_size · rotary_pct) dims, so this must floor to the model's count.
 */
function paddedRotaryPct(rotated: number, headSize: number): number {
  let pct = rotated / headSize;
  // Division can land a hair below the exact ratio; step up to the next double until it floors right.
  const bits = new DataView(new ArrayBuffer(8));
  while (Math.floor(headSize * pct) < rotated) {
    bits.setFloat64(0, pct);
    bits.setBigUint64(0, bits.getBigUint64(0) + 1n);
    pct = bits.getFloat64(0);
  }
  return pct;
}

function tensorOf(tensors: Map<string, HostTensor>, name: string): Float32Array {
  const t = tensors.get(name);
  if (!t) throw new ExportError(`model has no tensor "${name}"`);
  return t.data as Float32Array;
}

/**
 * The model padded to the uniform shape of exportShape(), with the padding report. A model that
 * transformers can already load is returned as it is (nothing added).
 */
export function padForTransformers(
  config: NeoXConfig,
  tensors: Map<string, HostTensor>,
): { config: NeoXConfig; tensors: Map<string, HostTensor>; padding: ExportPadding } {
  const shape = exportShape(config);
  const d = config.hiddenSize;
  const hs = config.headSize;
  const HS = shape.headSize;
  const H = shape.numHeads;
  const M = shape.intermediateSize;
  const queryScale = HS === hs ? 1 : Math.sqrt(HS / hs);
  const out = new Map<string, HostTensor>();
  for (const [name, t] of tensors) if (!name.startsWith('gpt_neox.layers.')) out.set(name, t);
  config.layers.forEach((layer, i) => {
    const p = `gpt_neox.layers.${i}.`;
    for (const name of [
      'input_layernorm.weight',
      'input_layernorm.bias',
      'post_attention_layernorm.weight',
      'post_attention_layernorm.bias',
      'attention.dense.bias',
      'mlp.dense_4h_to_h.bias',
    ]) {
      out.set(p + name, tensors.get(p + name)!);
    }
    const h = layer.numHeads;
    const m = layer.intermediateSize;
    // Fused QKV rows: head i's part q/k/v (0/1/2), dim j sits at row i·3·hs + part·hs + j.
    const qkvW = tensorOf(tensors, `${p}attention.query_key_value.weight`);
    const qkvB = tensorOf(tensors, `${p}attention.query_key_value.bias`);
    const newW = new Float32Array(3 * H * HS * d);
    const newB = new Float32Array(3 * H * HS);
    for (let head = 0; head < h; head++) {
      for (let part = 0; part < 3; part++) {
        const scale = part === 0 ? queryScale : 1;
        for (let j = 0; j < hs; j++) {
          const src = head * 3 * hs + part * hs + j;
          const dst = head * 3 * HS + part * HS + j;
          const row = qkvW.subarray(src * d, src * d + d);
          if (scale === 1) newW.set(row, dst * d);
          else for (let c = 0; c < d; c++) newW[dst * d + c] = row[c] * scale;
          newB[dst] = qkvB[src] * scale;
        }
      }
    }
    out.set(`${p}attention.query_key_value.weight`, { dtype: 'float32', shape: [3 * H * HS, d], data: newW });
    out.set(`${p}attention.query_key_value.bias`, { dtype: 'float32', shape: [3 * H * HS], data: newB });
    // Output projection [d, h·hs]: column i·hs + j moves to i·HS + j.
    const dense = tensorOf(tensors, `${p}attention.dense.weight`);
    const newDense = new Float32Array(d * H * HS);
    for (let r = 0; r < d; r++) {
      for (let head = 0; head < h; head++) {
        newDense.set(dense.subarray(r * h * hs + head * hs, r * h * hs + head * hs + hs), r * H * HS + head * HS);
      }
    }
    out.set(`${p}attention.dense.weight`, { dtype: 'float32', shape: [d, H * HS], data: newDense });
    // MLP: neurons m..M−1 are zero rows of dense_h_to_4h (and bias) and zero columns of dense_4h_to_h.
    const up = tensorOf(tensors, `${p}mlp.dense_h_to_4h.weight`);
    const upB = tensorOf(tensors, `${p}mlp.dense_h_to_4h.bias`);
    const newUp = new Float32Array(M * d);
    newUp.set(up);
    const newUpB = new Float32Array(M);
    newUpB.set(upB);
    out.set(`${p}mlp.dense_h_to_4h.weight`, { dtype: 'float32', shape: [M, d], data: newUp });
    out.set(`${p}mlp.dense_h_to_4h.bias`, { dtype: 'float32', shape: [M], data: newUpB });
    const down = tensorOf(tensors, `${p}mlp.dense_4h_to_h.weight`);
    const newDown = new Float32Array(d * M);
    for (let r = 0; r < d; r++) newDown.set(down.subarray(r * m, r * m + m), r * M);
    out.set(`${p}mlp.dense_4h_to_h.weight`, { dtype: 'float32', shape: [d, M], data: newDown });
  });
  const exported: NeoXConfig = {
    ...config,
    headSize: HS,
    rotaryPct: HS === hs ? config.rotaryPct : paddedRotaryPct(rotaryDims(config), HS),
    layers: config.layers.map(() => ({ numHeads: H, intermediateSize: M })),
  };
  const why = transformersIncompatibility(exported);
  if (why) throw new Error(`padding left the model incompatible with transformers: ${why}`);
  const before = parameterCount(config);
  const after = parameterCount(exported);
  return {
    config: exported,
    tensors: out,
    padding: {
      parameters: { model: before, exported: after, added: after - before },
      numHeads: H,
      headSize: HS,
      intermediateSize: M,
      layers: config.layers.map((l) => ({
        numHeads: l.numHeads,
        intermediateSize: l.intermediateSize,
        addedHeads: H - l.numHeads,
        addedNeurons: M - l.intermediateSize,
      })),
      addedHeadDims: HS - hs,
      queryScale,
      exact: HS === hs,
    },
  };
}

export const EXPORT_RECORD_FILE = 'export.json';

export interface ExportCheckpointOptions {
  /** Checkpoint directory to export (any GPT-NeoX checkpoint offshoot loads). */
  model: string;
  /** Directory to write; replaced atomically. */
  out: string;
  dtype?: SaveDtype;
}

export interface ExportCheckpointResult {
  out: string;
  /** Content hash of the written checkpoint. */
  hash: string;
  source: { dir: string; hash: string };
  config: NeoXConfig;
  padding: ExportPadding;
  /** Files written besides config.json and the weights. */
  files: string[];
}

const TOKENIZER_FILE = 'tokenizer.json';
const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';

/**
 * tokenizer_config.json for a tokenizer.json that has none: its end-of-text token as the bos, eos,
 * unk and pad token, so transformers' tokenizer (and lm-evaluation-harness, which pads batches and
 * conditions empty contexts on them) uses ids inside the vocabulary. Null when it has no such token.
 */
function tokenizerConfigFor(tokenizerJson: Buffer, maxPositions: number): string | null {
  let parsed: { added_tokens?: { content?: unknown; special?: unknown }[] };
  try {
    parsed = JSON.parse(tokenizerJson.toString('utf8'));
  } catch (err) {
    throw new ExportError(`${TOKENIZER_FILE}: invalid JSON (${(err as Error).message})`);
  }
  const eot = (parsed.added_tokens ?? []).find((t) => t.content === '<|endoftext|>');
  if (!eot) return null;
  const config = {
    tokenizer_class: 'GPTNeoXTokenizer',
    bos_token: '<|endoftext|>',
    eos_token: '<|endoftext|>',
    unk_token: '<|endoftext|>',
    // transformers' GPTNeoXTokenizer would otherwise add a "<|padding|>" token past the vocabulary.
    pad_token: '<|endoftext|>',
    add_bos_token: false,
    add_eos_token: false,
    add_prefix_space: false,
    clean_up_tokenization_spaces: false,
    model_max_length: maxPositions,
  };
  return `${JSON.stringify(config, null, 2)}\n`;
}

/**
 * Writes `out`: the model of `model` as a plain GPT-NeoX checkpoint (padded where needed), its
 * tokenizer.json and a tokenizer_config.json, and export.json recording the source and the padding.
 * Nothing is written when export is impossible.
 */
export async function exportCheckpoint(options: ExportCheckpointOptions): Promise<ExportCheckpointResult> {
  const source = loadCheckpoint(options.model);
  if (path.resolve(options.model) === path.resolve(options.out)) {
    throw new ExportError(`--out ${options.out} is the model's own directory; export writes a new one`);
  }
  const { config, tensors, padding } = padForTransformers(source.config, source.tensors);
  const extraFiles: Record<string, string | Buffer> = {};
  const tokenizer = path.join(options.model, TOKENIZER_FILE);
  if (fs.existsSync(tokenizer)) {
    const json = fs.readFileSync(tokenizer);
    extraFiles[TOKENIZER_FILE] = json;
    const tokenizerConfig = path.join(options.model, TOKENIZER_CONFIG_FILE);
    const generated = fs.existsSync(tokenizerConfig)
      ? fs.readFileSync(tokenizerConfig)
      : tokenizerConfigFor(json, config.maxPositions);
    if (generated !== null) extraFiles[TOKENIZER_CONFIG_FILE] = generated;
  }
  const sourceRef = { dir: path.resolve(options.model), hash: source.hash };
  extraFiles[EXPORT_RECORD_FILE] = `${JSON.stringify({ format: 1, source: sourceRef, padding }, null, 2)}\n`;
  const hash = await saveCheckpoint(options.out, config, tensors, {
    dtype: options.dtype,
    extraFiles,
    requireTransformersCompatible: true,
  });
  return { out: options.out, hash, source: sourceRef, config, padding, files: Object.keys(extraFiles).sort() };
}
