/**
 * Extraction: slice a teacher's tensors down to a sub-network (a dense student). Host arrays only (no
 * tfjs, no file system); see extract-checkpoint.ts for directories and importance.ts for orderings.
 *
 * Teacher layout (torch Linear weights are [out, in]), hsT = teacher head size:
 *   attention.query_key_value.weight [3·H·hsT, d]: row h·3·hsT + p·hsT + j is head h, part p (q, k, v),
 *     head dim j. The student keeps, for each kept head in order, its q, k and v blocks, each
 *     restricted to the kept head dims; columns: the kept embedding channels. The bias likewise.
 *   attention.dense.weight [d, H·hsT]: rows = kept channels, columns h·hsT + j for kept heads and dims.
 *   mlp.dense_h_to_4h [m, d] (rows = kept neurons, columns = channels), its bias [m];
 *   mlp.dense_4h_to_h [d, m] (rows = channels, columns = neurons), its bias [d].
 *   Every LayerNorm (both per layer and the final one), attention.dense.bias: kept channels.
 *   embed_in [V, d] and embed_out [V, d]: columns = kept channels.
 */
import type { HostTensor, NeoXConfig } from '../model/index.js';
import { type CanonicalSpec, studentConfig } from './spec.js';

export interface ExtractedModel {
  config: NeoXConfig;
  tensors: Map<string, HostTensor>;
}

function get(tensors: Map<string, HostTensor>, name: string): HostTensor {
  const t = tensors.get(name);
  if (!t) throw new Error(`teacher has no tensor "${name}"`);
  if (t.dtype !== 'float32') throw new Error(`teacher tensor "${name}" is ${t.dtype}, expected float32`);
  return t;
}

/** Rows × columns of a [R, C] matrix (null: all). */
function take2d(t: HostTensor, rows: number[] | null, cols: number[] | null): HostTensor {
  const [R, C] = t.shape;
  const src = t.data as Float32Array;
  const r = rows ?? Array.from({ length: R }, (_, i) => i);
  const out = new Float32Array(r.length * (cols ? cols.length : C));
  if (cols === null) {
    r.forEach((row, i) => out.set(src.subarray(row * C, row * C + C), i * C));
    return { dtype: 'float32', shape: [r.length, C], data: out };
  }
  const n = cols.length;
  for (let i = 0; i < r.length; i++) {
    const base = r[i] * C;
    for (let j = 0; j < n; j++) out[i * n + j] = src[base + cols[j]];
  }
  return { dtype: 'float32', shape: [r.length, n], data: out };
}

function take1d(t: HostTensor, idx: number[]): HostTensor {
  const src = t.data as Float32Array;
  const out = new Float32Array(idx.length);
  idx.forEach((v, i) => (out[i] = src[v]));
  return { dtype: 'float32', shape: [idx.length], data: out };
}

/** QKV rows (teacher indices) for kept heads and head dims, in the student's interleaved order. */
export function qkvRows(heads: number[], headDims: number[], teacherHeadSize: number): number[] {
  const rows: number[] = [];
  for (const h of heads) {
    for (let p = 0; p < 3; p++) {
      for (const j of headDims) rows.push(h * 3 * teacherHeadSize + p * teacherHeadSize + j);
    }
  }
  return rows;
}

/** attention.dense columns (teacher indices) for kept heads and head dims. */
export function denseColumns(heads: number[], headDims: number[], teacherHeadSize: number): number[] {
  const cols: number[] = [];
  for (const h of heads) for (const j of headDims) cols.push(h * teacherHeadSize + j);
  return cols;
}

/** The dense student of a canonical spec (validate it with canonicalize first). */
export function extractTensors(
  teacher: NeoXConfig,
  tensors: Map<string, HostTensor>,
  c: CanonicalSpec,
): ExtractedModel {
  const out = new Map<string, HostTensor>();
  const ch = c.embedding;
  const hsT = teacher.headSize;
  out.set('gpt_neox.embed_in.weight', take2d(get(tensors, 'gpt_neox.embed_in.weight'), null, ch));
  c.layers.forEach((t, i) => {
    const src = `gpt_neox.layers.${t}.`;
    const dst = `gpt_neox.layers.${i}.`;
    const { heads, mlp } = c.perLayer[i];
    for (const ln of ['input_layernorm', 'post_attention_layernorm']) {
      out.set(`${dst}${ln}.weight`, take1d(get(tensors, `${src}${ln}.weight`), ch));
      out.set(`${dst}${ln}.bias`, take1d(get(tensors, `${src}${ln}.bias`), ch));
    }
    const rows = qkvRows(heads, c.headSize, hsT);
    out.set(
      `${dst}attention.query_key_value.weight`,
      take2d(get(tensors, `${src}attention.query_key_value.weight`), rows, ch),
    );
    out.set(`${dst}attention.query_key_value.bias`, take1d(get(tensors, `${src}attention.query_key_value.bias`), rows));
    out.set(
      `${dst}attention.dense.weight`,
      take2d(get(tensors, `${src}attention.dense.weight`), ch, denseColumns(heads, c.headSize, hsT)),
    );
    out.set(`${dst}attention.dense.bias`, take1d(get(tensors, `${src}attention.dense.bias`), ch));
    out.set(`${dst}mlp.dense_h_to_4h.weight`, take2d(get(tensors, `${src}mlp.dense_h_to_4h.weight`), mlp, ch));
    out.set(`${dst}mlp.dense_h_to_4h.bias`, take1d(get(tensors, `${src}mlp.dense_h_to_4h.bias`), mlp));
    out.set(`${dst}mlp.dense_4h_to_h.weight`, take2d(get(tensors, `${src}mlp.dense_4h_to_h.weight`), ch, mlp));
    out.set(`${dst}mlp.dense_4h_to_h.bias`, take1d(get(tensors, `${src}mlp.dense_4h_to_h.bias`), ch));
  });
  out.set('gpt_neox.final_layer_norm.weight', take1d(get(tensors, 'gpt_neox.final_layer_norm.weight'), ch));
  out.set('gpt_neox.final_layer_norm.bias', take1d(get(tensors, 'gpt_neox.final_layer_norm.bias'), ch));
  out.set('embed_out.weight', take2d(get(tensors, 'embed_out.weight'), null, ch));
  return { config: studentConfig(teacher, c), tensors: out };
}

/** Number of values in a set of tensors. */
export function tensorElements(tensors: Map<string, HostTensor>): number {
  let n = 0;
  for (const t of tensors.values()) n += t.shape.reduce((a, b) => a * b, 1);
  return n;
}
