/**
 * The values each dimension of a sub-network search space may take (layer count, embedding width,
 * heads, MLP width, head size), and the smallest and largest sub-network they allow. Pure.
 */
import type { NeoXConfig } from '../model/index.js';
import { type ModelShape, shapeParameters } from './count.js';
import { SpecError } from './spec.js';

/** Search spaces, coarse to fine. */
export const SPACE_KINDS = ['uniform', 'layer-wise', 'granular'] as const;
export type SpaceKind = (typeof SPACE_KINDS)[number];

/** Allowed values of one dimension: an explicit list, or an arithmetic range (min defaults to step, step to 1). */
export type Choice = number[] | { min?: number; max?: number; step?: number };

export interface SpaceChoices {
  /** Number of kept layers. Default 1..teacher layers. */
  layers?: Choice;
  /** Embedding width. Default 1..teacher width. */
  embedding?: Choice;
  /** Heads per layer. Default 1..teacher heads. */
  heads?: Choice;
  /** MLP width per layer. Default 1..teacher MLP width. */
  mlp?: Choice;
  /** Head size. Default: the teacher's only (head size is not searched). */
  headSize?: Choice;
}

/** Normalised choices: sorted, unique, every value valid for the teacher. */
export interface Dims {
  layers: number[];
  embedding: number[];
  heads: number[];
  mlp: number[];
  headSize: number[];
  /** Largest heads / MLP width allowed in each teacher layer (the teacher's, capped by the choices). */
  teacherHeads: number[];
  teacherMlp: number[];
}

function rotatedDims(hs: number, pct: number): number {
  return 2 * Math.ceil(Math.floor(hs * pct) / 2);
}

function expand(field: string, choice: Choice | undefined, cap: number, fallback: number[]): number[] {
  let values: number[];
  if (choice === undefined) values = fallback;
  else if (Array.isArray(choice)) {
    if (choice.length === 0) throw new SpecError(field, 'needs at least one value');
    values = choice.slice();
  } else {
    const step = choice.step ?? 1;
    const min = choice.min ?? step;
    const max = Math.min(choice.max ?? cap, cap);
    for (const [k, v] of [
      ['step', step],
      ['min', min],
      ['max', choice.max ?? cap],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < 1)
        throw new SpecError(`${field}.${k}`, `must be a positive integer, got ${JSON.stringify(v)}`);
    }
    values = [];
    for (let v = min; v <= max; v += step) values.push(v);
    if (values.length === 0)
      throw new SpecError(field, `no value in [${min}, ${max}] (the teacher allows at most ${cap})`);
  }
  for (const v of values) {
    if (!Number.isSafeInteger(v) || v < 1)
      throw new SpecError(field, `values must be positive integers, got ${JSON.stringify(v)}`);
    if (v > cap) throw new SpecError(field, `${v} exceeds the teacher's ${cap}`);
  }
  return [...new Set(values)].sort((a, b) => a - b);
}

function oneTo(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i + 1);
}

/**
 * The dimensions' allowed values for a teacher. For a teacher whose layers differ, the uniform and
 * layer-wise spaces (whose specs keep a layer count, not indices) cap heads and MLP at the smallest
 * teacher layer's, so any choice of layers is valid.
 */
export function resolveDims(teacher: NeoXConfig, kind: SpaceKind, choices: SpaceChoices = {}): Dims {
  const heads = teacher.layers.map((l) => l.numHeads);
  const mlp = teacher.layers.map((l) => l.intermediateSize);
  const granular = kind === 'granular';
  const headCap = granular ? Math.max(...heads) : Math.min(...heads);
  const mlpCap = granular ? Math.max(...mlp) : Math.min(...mlp);
  const hsValues = expand('choices.headSize', choices.headSize, teacher.headSize, [teacher.headSize]);
  const badHs = hsValues.find((hs) => rotatedDims(hs, teacher.rotaryPct) > hs);
  if (badHs !== undefined) {
    throw new SpecError(
      'choices.headSize',
      `${badHs} with rotary_pct ${teacher.rotaryPct} would rotate more dims than the head has`,
    );
  }
  const dims: Dims = {
    layers: expand('choices.layers', choices.layers, teacher.numLayers, oneTo(teacher.numLayers)),
    embedding: expand('choices.embedding', choices.embedding, teacher.hiddenSize, oneTo(teacher.hiddenSize)),
    heads: expand('choices.heads', choices.heads, headCap, oneTo(headCap)),
    mlp: expand('choices.mlp', choices.mlp, mlpCap, oneTo(mlpCap)),
    headSize: hsValues,
    teacherHeads: heads,
    teacherMlp: mlp,
  };
  if (granular) {
    // Every teacher layer must allow at least one head and MLP choice.
    heads.forEach((h, t) => {
      if (dims.heads[0] > h)
        throw new SpecError(
          'choices.heads',
          `smallest value ${dims.heads[0]} exceeds the ${h} heads of teacher layer ${t}`,
        );
    });
    mlp.forEach((m, t) => {
      if (dims.mlp[0] > m)
        throw new SpecError(
          'choices.mlp',
          `smallest value ${dims.mlp[0]} exceeds the MLP width ${m} of teacher layer ${t}`,
        );
    });
  }
  return dims;
}

function shapeWith(teacher: NeoXConfig, layers: number, e: number, hs: number, h: number, m: number): ModelShape {
  return {
    vocabSize: teacher.vocabSize,
    hiddenSize: e,
    headSize: hs,
    layers: Array.from({ length: layers }, () => ({ numHeads: h, intermediateSize: m })),
  };
}

/** Parameters of the smallest and the largest sub-network the dimensions allow. */
export function dimsParamRange(teacher: NeoXConfig, kind: SpaceKind, dims: Dims): { min: number; max: number } {
  const first = (v: number[]) => v[0];
  const last = (v: number[]) => v[v.length - 1];
  const min = shapeParameters(
    shapeWith(
      teacher,
      first(dims.layers),
      first(dims.embedding),
      first(dims.headSize),
      first(dims.heads),
      first(dims.mlp),
    ),
  );
  let max: number;
  if (kind === 'granular') {
    // The largest layers first, each with its own cap.
    const per = dims.teacherHeads.map((th, t) => {
      const h = dims.heads.filter((v) => v <= th).pop()!;
      const m = dims.mlp.filter((v) => v <= dims.teacherMlp[t]).pop()!;
      return { numHeads: h, intermediateSize: m };
    });
    const e = last(dims.embedding);
    const hs = last(dims.headSize);
    const cost = (l: { numHeads: number; intermediateSize: number }) =>
      shapeParameters({ vocabSize: 0, hiddenSize: e, headSize: hs, layers: [l] });
    per.sort((a, b) => cost(b) - cost(a));
    max = shapeParameters({
      vocabSize: teacher.vocabSize,
      hiddenSize: e,
      headSize: hs,
      layers: per.slice(0, last(dims.layers)),
    });
  } else {
    max = shapeParameters(
      shapeWith(
        teacher,
        last(dims.layers),
        last(dims.embedding),
        last(dims.headSize),
        last(dims.heads),
        last(dims.mlp),
      ),
    );
  }
  return { min, max };
}
