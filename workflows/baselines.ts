/**
 * Baseline students for the results table, chosen without search (pure; runs in workflows).
 */
import type { NeoXConfig } from '../core/model/index.js';
import {
  type SubnetSpec,
  canonicalize,
  canonicalParameters,
  describeCanonical,
  teacherShape,
} from '../core/subnet/pure.js';

/**
 * The "first-k" baseline: no search — every dimension of the teacher (layers, width, heads, MLP)
 * shrunk by the same factor, keeping the first k of each (whittle's default extraction), at the
 * factor whose parameter count lies in [minParams, maxParams] (nearest the middle of the range when
 * several do; nearest the range when none does).
 */
export function firstKSpec(
  teacher: NeoXConfig,
  target: { minParams: number; maxParams: number },
): { spec: SubnetSpec; parameters: number; inRange: boolean; description: string } {
  const heads = Math.min(...teacher.layers.map((l) => l.numHeads));
  const mlp = Math.min(...teacher.layers.map((l) => l.intermediateSize));
  const mid = (target.minParams + target.maxParams) / 2;
  let best: { spec: SubnetSpec; parameters: number; inRange: boolean; score: number } | undefined;
  const seen = new Set<string>();
  for (let i = 1; i <= 400; i++) {
    const f = i / 400;
    const spec: SubnetSpec = {
      format: 1,
      teacher: teacherShape(teacher),
      layers: Math.max(1, Math.round(teacher.numLayers * f)),
      embedding: Math.max(1, Math.round(teacher.hiddenSize * f)),
      heads: Math.max(1, Math.round(heads * f)),
      mlp: Math.max(1, Math.round(mlp * f)),
    };
    const k = JSON.stringify(spec);
    if (seen.has(k)) continue;
    seen.add(k);
    let parameters: number;
    try {
      parameters = canonicalParameters(teacher, canonicalize(spec, teacher));
    } catch {
      continue;
    }
    const inRange = parameters >= target.minParams && parameters <= target.maxParams;
    const score = inRange
      ? Math.abs(parameters - mid)
      : 1e15 + Math.min(Math.abs(parameters - target.minParams), Math.abs(parameters - target.maxParams));
    if (!best || score < best.score) best = { spec, parameters, inRange, score };
  }
  if (!best) throw new Error('first-k baseline: no valid shrunk teacher shape');
  return {
    spec: best.spec,
    parameters: best.parameters,
    inRange: best.inRange,
    description: describeCanonical(canonicalize(best.spec, teacher)),
  };
}
