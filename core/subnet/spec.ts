/**
 * Sub-network specs: which parts of a GPT-NeoX teacher a student keeps.
 *
 * A spec (JSON, docs/subnetworks.md) names the kept layers (teacher indices, ascending), the embedding
 * width or the kept embedding channels, the head size or the kept dims of every head, and per kept layer
 * the kept heads and MLP neurons, each as a count or as explicit teacher indices. Counts are resolved to
 * indices by an ordering: first-k (whittle's default) or importance-ranked (Minitron-style scores from
 * a calibration batch, computed in importance.ts); a layer count by first-n, evenly spaced or block
 * importance.
 *
 * The canonical form is fully explicit (every index set listed, sorted ascending; layers ascending) and
 * carries the teacher's shape; its hash (sha256 of `canonicalText`) identifies a sub-network. Without
 * options, counts resolve first-k / first-n, so equal counts give equal canonical forms and hashes.
 *
 * Pure: no tfjs, no file system, no clock (workflows and core/search may import it).
 */
import { z } from 'zod';

import type { NeoXConfig } from '../model/index.js';
import { sha256Hex } from './hash.js';

/** A spec's validation error; `field` is the path of the offending field, e.g. `perLayer[2].heads`. */
export class SpecError extends Error {
  readonly field: string;

  constructor(field: string, message: string) {
    super(field ? `${field}: ${message}` : message);
    this.name = 'SpecError';
    this.field = field;
  }
}

/** The tensor shape of a teacher, recorded in specs so one made for another teacher is caught. */
export interface TeacherShape {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  headSize: number;
  /** Heads per layer: one number when all layers are alike. */
  numHeads: number | number[];
  /** MLP width per layer: one number when all layers are alike. */
  intermediateSize: number | number[];
}

/** A count (keep that many, chosen by the ordering) or explicit teacher indices. */
export type CountOrIndices = number | number[];

export interface LayerSpec {
  /** Kept attention heads of this layer (default: all). */
  heads?: CountOrIndices;
  /** Kept MLP neurons of this layer (default: all). */
  mlp?: CountOrIndices;
}

/** The derived head size: embedding width / heads (heads must divide the width, and be alike in all layers). */
export const DERIVED_HEAD_SIZE = 'width/heads';

export interface SubnetSpec {
  format?: 1;
  /** The teacher's shape the spec was made for; when present it must match the teacher's. */
  teacher?: TeacherShape;
  /** Kept layers: a count (resolved first-n, evenly spaced or by importance) or ascending teacher indices. Default: all. */
  layers?: CountOrIndices;
  /** Embedding width or kept channel indices. Default: the teacher's width. */
  embedding?: CountOrIndices;
  /** Head size (the first dims of each head), kept head-dim indices, or "width/heads". Default: the teacher's. */
  headSize?: CountOrIndices | typeof DERIVED_HEAD_SIZE;
  /** Heads kept in every layer (uniform), unless perLayer says otherwise. Default: all. */
  heads?: CountOrIndices;
  /** MLP neurons kept in every layer (uniform), unless perLayer says otherwise. Default: all. */
  mlp?: CountOrIndices;
  /** One entry per kept layer (in order), overriding heads / mlp. */
  perLayer?: LayerSpec[];
}

/** The fully explicit form: every index set listed and sorted; a valid SubnetSpec itself. */
export interface CanonicalSpec {
  format: 1;
  teacher: TeacherShape;
  layers: number[];
  embedding: number[];
  headSize: number[];
  perLayer: { heads: number[]; mlp: number[] }[];
}

/** How counts of heads, neurons and channels pick them: the first k, or the most important k. */
export const HEAD_ORDERS = ['first-k', 'importance'] as const;
export type HeadOrder = (typeof HEAD_ORDERS)[number];
/** How a layer count picks teacher layers: the first n, evenly spaced, or by block importance. */
export const LAYER_ORDERS = ['first', 'even', 'importance'] as const;
export type LayerOrder = (typeof LAYER_ORDERS)[number];

/** Importance scores of the teacher's parts (higher = more important), see importance.ts. */
export interface ImportanceScores {
  /** Per teacher layer, one score per head: mean L2 norm of the head's attention output. */
  heads: number[][];
  /** Per teacher layer, one score per MLP neuron: mean |GELU activation|. */
  mlp: number[][];
  /** One score per embedding channel: mean |LayerNorm output| over all LayerNorms of the teacher. */
  embedding: number[];
  /** Per teacher layer: block importance, mean over tokens of 1 − cos(block input, block output). */
  layers: number[];
}

export interface ResolveOptions {
  /** How counts of heads, MLP neurons and embedding channels become indices. Default first-k. */
  order?: HeadOrder;
  /** How a layer count becomes layer indices. Default first (first-n). */
  layers?: LayerOrder;
  /** Required when `order` or `layers` is 'importance'. */
  importance?: ImportanceScores;
}

// ---------------------------------------------------------------------------------------------------
// Schema (structure); the checks against a teacher follow below.

const count = z
  .number({ error: (i) => `must be a positive integer, got ${JSON.stringify(i.input)}` })
  .int({ error: (i) => `must be a positive integer, got ${JSON.stringify(i.input)}` })
  .positive({ error: (i) => `must be a positive integer, got ${JSON.stringify(i.input)}` });
/** A list of indices, checked in one pass (per-element schemas are slow on lists of thousands). */
const indices = z
  .custom<number[]>((v) => Array.isArray(v), { error: 'expected an array of indices' })
  .superRefine((list, ctx) => {
    if (list.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'an index list must not be empty' });
      return;
    }
    for (let i = 0; i < list.length; i++) {
      const v = list[i];
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
        ctx.addIssue({
          code: 'custom',
          path: [i],
          message: `index must be a non-negative integer, got ${JSON.stringify(v)}`,
        });
        return;
      }
    }
  });
const countOrIndices = z.union([count, indices], {
  error: (i) => `must be a positive integer count or a non-empty array of indices, got ${JSON.stringify(i.input)}`,
});
const perLayerCount = z.union([count, z.array(count).min(1)], {
  error: (i) => `must be a positive integer or an array of them, got ${JSON.stringify(i.input)}`,
});

export const TeacherShapeSchema = z.strictObject({
  vocabSize: count,
  hiddenSize: count,
  numLayers: count,
  headSize: count,
  numHeads: perLayerCount,
  intermediateSize: perLayerCount,
});

export const SubnetSpecSchema = z.strictObject({
  format: z.literal(1, { error: (i) => `must be 1, got ${JSON.stringify(i.input)}` }).optional(),
  teacher: TeacherShapeSchema.optional(),
  layers: countOrIndices.optional(),
  embedding: countOrIndices.optional(),
  headSize: z
    .union([count, indices, z.literal(DERIVED_HEAD_SIZE)], {
      error: (i) =>
        `must be a positive integer, an array of head-dim indices or "${DERIVED_HEAD_SIZE}", got ${JSON.stringify(i.input)}`,
    })
    .optional(),
  heads: countOrIndices.optional(),
  mlp: countOrIndices.optional(),
  perLayer: z
    .array(z.strictObject({ heads: countOrIndices.optional(), mlp: countOrIndices.optional() }))
    .min(1, { error: 'perLayer must not be empty (leave it out to keep the uniform heads / mlp)' })
    .optional(),
});

/** "perLayer[2].heads" from a zod path. */
export function fieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

/** Parses a spec (any JSON value); throws SpecError naming the first bad field. Structure only. */
export function parseSpec(raw: unknown): SubnetSpec {
  const r = SubnetSpecSchema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = fieldPath(issue.path);
    const msg =
      issue.code === 'invalid_type' && issue.path.length === 0
        ? 'a sub-network spec must be a JSON object'
        : issue.message;
    throw new SpecError(field || 'spec', msg);
  }
  return r.data as SubnetSpec;
}

// ---------------------------------------------------------------------------------------------------
// Teacher shape.

function compactPerLayer(values: number[]): number | number[] {
  return values.every((v) => v === values[0]) ? values[0] : values.slice();
}

export function teacherShape(config: NeoXConfig): TeacherShape {
  return {
    vocabSize: config.vocabSize,
    hiddenSize: config.hiddenSize,
    numLayers: config.numLayers,
    headSize: config.headSize,
    numHeads: compactPerLayer(config.layers.map((l) => l.numHeads)),
    intermediateSize: compactPerLayer(config.layers.map((l) => l.intermediateSize)),
  };
}

export function describeTeacherShape(s: TeacherShape): string {
  const fmt = (v: number | number[]) => (Array.isArray(v) ? `[${v.join(',')}]` : String(v));
  return `${s.numLayers} layers, width ${s.hiddenSize}, heads ${fmt(s.numHeads)} of size ${s.headSize}, MLP ${fmt(s.intermediateSize)}, vocab ${s.vocabSize}`;
}

function perLayerValue(v: number | number[], i: number): number {
  return Array.isArray(v) ? v[i] : v;
}

function sameTeacherShape(a: TeacherShape, b: TeacherShape): boolean {
  if (
    a.vocabSize !== b.vocabSize ||
    a.hiddenSize !== b.hiddenSize ||
    a.numLayers !== b.numLayers ||
    a.headSize !== b.headSize
  )
    return false;
  for (const key of ['numHeads', 'intermediateSize'] as const) {
    const x = a[key];
    const y = b[key];
    if (Array.isArray(x) && x.length !== a.numLayers) return false;
    if (Array.isArray(y) && y.length !== b.numLayers) return false;
    for (let i = 0; i < a.numLayers; i++) if (perLayerValue(x, i) !== perLayerValue(y, i)) return false;
  }
  return true;
}

/** Throws SpecError `teacher: spec for another teacher shape ...` unless the shapes match. */
export function checkTeacherShape(spec: Pick<SubnetSpec, 'teacher'>, teacher: NeoXConfig): void {
  if (spec.teacher === undefined) return;
  const actual = teacherShape(teacher);
  if (!sameTeacherShape(spec.teacher, actual)) {
    throw new SpecError(
      'teacher',
      `spec for another teacher shape: it was made for ${describeTeacherShape(spec.teacher)}; this teacher has ${describeTeacherShape(actual)}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// Resolution to the canonical form, with the checks against the teacher.

function range(n: number): number[] {
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = i;
  return out;
}

/** The k highest-scoring indices (ties: the lower index first), returned ascending. */
export function topK(scores: ArrayLike<number>, k: number): number[] {
  const idx = range(scores.length);
  idx.sort((a, b) => scores[b] - scores[a] || a - b);
  return idx.slice(0, k).sort((a, b) => a - b);
}

/** Evenly spaced picks of n out of total: round(i·(total − 1)/(n − 1)), first and last included. */
export function evenlySpaced(n: number, total: number): number[] {
  if (n === 1) return [0];
  return range(n).map((i) => Math.round((i * (total - 1)) / (n - 1)));
}

/** Checks explicit indices: in [0, size), no repeats; `ascending` also demands strictly increasing order. */
function checkIndices(field: string, what: string, list: number[], size: number, ascending = false): number[] {
  const seen = new Uint8Array(size);
  let sorted = true;
  for (let i = 0; i < list.length; i++) {
    const v = list[i];
    if (v >= size) throw new SpecError(field, `index ${v} out of range [0, ${size})`);
    if (seen[v]) throw new SpecError(field, `index ${v} repeated`);
    if (i > 0 && v < list[i - 1]) {
      if (ascending) throw new SpecError(field, `${what} must be ascending (${v} after ${list[i - 1]})`);
      sorted = false;
    }
    seen[v] = 1;
  }
  return sorted ? list.slice() : Array.from(Int32Array.from(list).sort());
}

function checkCount(field: string, what: string, n: number, max: number): void {
  if (n > max) throw new SpecError(field, `${n} ${what} exceed the teacher's ${max}`);
}

function requireScores(options: ResolveOptions): ImportanceScores {
  if (!options.importance)
    throw new SpecError('', 'importance ordering needs importance scores (a calibration pass over the teacher)');
  return options.importance;
}

/** Rotated dims as transformers computes them: 2·ceil(int(hs·pct)/2). */
function rotated(headSize: number, rotaryPct: number): number {
  return 2 * Math.ceil(Math.floor(headSize * rotaryPct) / 2);
}

/**
 * Validates a spec against a teacher and resolves it to the canonical form. Throws SpecError naming
 * the field, e.g. `perLayer[2].heads: index 9 out of range [0, 8)`.
 */
export function canonicalize(raw: unknown, teacher: NeoXConfig, options: ResolveOptions = {}): CanonicalSpec {
  const spec = parseSpec(raw);
  checkTeacherShape(spec, teacher);
  const order = options.order ?? 'first-k';
  const layerOrder = options.layers ?? 'first';
  const L = teacher.numLayers;

  // Layers.
  let layers: number[];
  if (spec.layers === undefined) layers = range(L);
  else if (Array.isArray(spec.layers)) layers = checkIndices('layers', 'layer indices', spec.layers, L, true);
  else {
    checkCount('layers', 'layers', spec.layers, L);
    if (layerOrder === 'first') layers = range(spec.layers);
    else if (layerOrder === 'even') layers = evenlySpaced(spec.layers, L);
    else layers = topK(requireScores(options).layers, spec.layers);
  }

  // Embedding channels.
  const d = teacher.hiddenSize;
  let embedding: number[];
  if (spec.embedding === undefined) embedding = range(d);
  else if (Array.isArray(spec.embedding)) embedding = checkIndices('embedding', 'channels', spec.embedding, d);
  else {
    if (spec.embedding > d) throw new SpecError('embedding', `width ${spec.embedding} exceeds the teacher's ${d}`);
    embedding = order === 'importance' ? topK(requireScores(options).embedding, spec.embedding) : range(spec.embedding);
  }

  // Per kept layer: heads and neurons.
  if (spec.perLayer !== undefined && spec.perLayer.length !== layers.length) {
    throw new SpecError('perLayer', `${spec.perLayer.length} entries for ${layers.length} kept layers`);
  }
  const perLayer = layers.map((t, i) => {
    const entry = spec.perLayer?.[i];
    const resolve = (kind: 'heads' | 'mlp'): number[] => {
      const fromEntry = entry?.[kind];
      const value = fromEntry ?? spec[kind];
      const field = fromEntry !== undefined ? `perLayer[${i}].${kind}` : kind;
      const size = kind === 'heads' ? teacher.layers[t].numHeads : teacher.layers[t].intermediateSize;
      const what = kind === 'heads' ? 'heads' : 'MLP neurons';
      if (value === undefined) return range(size);
      if (Array.isArray(value)) return checkIndices(field, what, value, size);
      if (value > size) {
        throw new SpecError(field, `${value} ${what} exceed the ${size} of teacher layer ${t}`);
      }
      if (order === 'importance') {
        const scores = requireScores(options)[kind][t];
        return topK(scores, value);
      }
      return range(value);
    };
    return { heads: resolve('heads'), mlp: resolve('mlp') };
  });

  // Head size.
  const hsTeacher = teacher.headSize;
  let headSize: number[];
  if (spec.headSize === undefined) headSize = range(hsTeacher);
  else if (Array.isArray(spec.headSize)) headSize = checkIndices('headSize', 'head dims', spec.headSize, hsTeacher);
  else if (spec.headSize === DERIVED_HEAD_SIZE) {
    const h0 = perLayer[0].heads.length;
    const other = perLayer.findIndex((l) => l.heads.length !== h0);
    if (other >= 0) {
      throw new SpecError(
        'headSize',
        `"${DERIVED_HEAD_SIZE}" needs every layer to keep the same number of heads (layer ${other} keeps ${perLayer[other].heads.length}, layer 0 keeps ${h0})`,
      );
    }
    const e = embedding.length;
    if (e % h0 !== 0) {
      const field = spec.perLayer?.[0]?.heads !== undefined ? 'perLayer[0].heads' : 'heads';
      throw new SpecError(
        field,
        `${h0} heads do not divide the embedding width ${e} (headSize "${DERIVED_HEAD_SIZE}")`,
      );
    }
    if (e / h0 > hsTeacher) {
      throw new SpecError(
        'headSize',
        `width ${e} / ${h0} heads = ${e / h0} exceeds the teacher's head size ${hsTeacher}`,
      );
    }
    headSize = range(e / h0);
  } else {
    if (spec.headSize > hsTeacher)
      throw new SpecError('headSize', `${spec.headSize} exceeds the teacher's head size ${hsTeacher}`);
    headSize = range(spec.headSize);
  }
  const hs = headSize.length;
  if (rotated(hs, teacher.rotaryPct) > hs) {
    throw new SpecError(
      'headSize',
      `${hs} with rotary_pct ${teacher.rotaryPct}: int(${hs} × ${teacher.rotaryPct}) = ${Math.floor(hs * teacher.rotaryPct)} is odd and transformers would rotate ${rotated(hs, teacher.rotaryPct)} dims, more than the head size`,
    );
  }

  return { format: 1, teacher: teacherShape(teacher), layers, embedding, headSize, perLayer };
}

/** Validates a spec against a teacher (throws SpecError naming the field). */
export function validateSpec(raw: unknown, teacher: NeoXConfig, options: ResolveOptions = {}): void {
  canonicalize(raw, teacher, options);
}

/** True when the list is exactly 0, 1, ..., n − 1. */
function isPrefix(list: number[]): boolean {
  return list.every((v, i) => v === i);
}

/**
 * Index sets as runs: "0-7,9,12-15" (inclusive). Equal sets give equal text; short for first-k sets.
 */
export function indexRuns(list: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < list.length; ) {
    let j = i;
    while (j + 1 < list.length && list[j + 1] === list[j] + 1) j++;
    parts.push(j === i ? String(list[i]) : `${list[i]}-${list[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/**
 * The text the spec hash is taken over: canonical JSON (fixed key order) with every index set written
 * as runs (indexRuns). Two specs describe the same sub-network of the same teacher exactly when their
 * canonical texts are equal.
 */
export function canonicalText(c: CanonicalSpec): string {
  const t = c.teacher;
  const per = (v: number | number[]) => (Array.isArray(v) ? v : [v]);
  return JSON.stringify({
    format: c.format,
    teacher: {
      vocabSize: t.vocabSize,
      hiddenSize: t.hiddenSize,
      numLayers: t.numLayers,
      headSize: t.headSize,
      numHeads: per(t.numHeads),
      intermediateSize: per(t.intermediateSize),
    },
    layers: indexRuns(c.layers),
    embedding: indexRuns(c.embedding),
    headSize: indexRuns(c.headSize),
    perLayer: c.perLayer.map((l) => ({ heads: indexRuns(l.heads), mlp: indexRuns(l.mlp) })),
  });
}

/** The stable hash of a sub-network: sha256 (hex) of its canonical text. */
export function canonicalHash(c: CanonicalSpec): string {
  return sha256Hex(canonicalText(c));
}

/** Validates, canonicalises and hashes a spec. */
export function specHash(raw: unknown, teacher: NeoXConfig, options: ResolveOptions = {}): string {
  return canonicalHash(canonicalize(raw, teacher, options));
}

/**
 * The shortest spec equal to a canonical one: counts where an index set is first-k, uniform heads /
 * mlp when all layers agree, fields left out when they keep everything. Includes the teacher shape.
 */
export function compactSpec(c: CanonicalSpec): SubnetSpec {
  const t = c.teacher;
  const out: SubnetSpec = { format: 1, teacher: t };
  const asCount = (list: number[]): CountOrIndices => (isPrefix(list) ? list.length : list.slice());
  if (!(isPrefix(c.layers) && c.layers.length === t.numLayers)) out.layers = asCount(c.layers);
  if (!(isPrefix(c.embedding) && c.embedding.length === t.hiddenSize)) out.embedding = asCount(c.embedding);
  if (!(isPrefix(c.headSize) && c.headSize.length === t.headSize)) out.headSize = asCount(c.headSize);
  const full = (kind: 'heads' | 'mlp', i: number) => {
    const size = perLayerValue(kind === 'heads' ? t.numHeads : t.intermediateSize, c.layers[i]);
    const list = c.perLayer[i][kind];
    return isPrefix(list) && list.length === size;
  };
  const text = (kind: 'heads' | 'mlp', i: number) => (full(kind, i) ? 'full' : indexRuns(c.perLayer[i][kind]));
  const per: LayerSpec[] = c.perLayer.map(() => ({}));
  for (const kind of ['heads', 'mlp'] as const) {
    const first = text(kind, 0);
    const uniform = c.perLayer.every((_, i) => text(kind, i) === first);
    if (uniform) {
      if (first !== 'full') out[kind] = asCount(c.perLayer[0][kind]);
    } else {
      c.perLayer.forEach((l, i) => {
        per[i][kind] = asCount(l[kind]);
      });
    }
  }
  if (per.some((p) => p.heads !== undefined || p.mlp !== undefined)) out.perLayer = per;
  return out;
}

/** The dense student's config: the teacher's, with the kept shape. */
export function studentConfig(teacher: NeoXConfig, c: CanonicalSpec): NeoXConfig {
  return {
    ...teacher,
    hiddenSize: c.embedding.length,
    numLayers: c.layers.length,
    headSize: c.headSize.length,
    layers: c.perLayer.map((l) => ({ numHeads: l.heads.length, intermediateSize: l.mlp.length })),
  };
}

/** The spec that keeps the whole teacher. */
export function fullSpec(teacher: NeoXConfig): SubnetSpec {
  return { format: 1, teacher: teacherShape(teacher) };
}

/** A one-line summary, e.g. "4 layers [0,1,2,3], width 256, head size 64, heads 8, MLP 1024". */
export function describeCanonical(c: CanonicalSpec): string {
  const heads = c.perLayer.map((l) => l.heads.length);
  const mlp = c.perLayer.map((l) => l.mlp.length);
  const fmt = (v: number[]) => (v.every((x) => x === v[0]) ? String(v[0]) : `[${v.join(',')}]`);
  return `${c.layers.length} layers [${indexRuns(c.layers)}], width ${c.embedding.length}, head size ${c.headSize.length}, heads ${fmt(heads)}, MLP ${fmt(mlp)}`;
}
