/**
 * Parameter bins: the range from the smallest to the largest sub-network of a search space, cut into
 * bins (whittle: 20, linear; log-spaced as an option). A search targets one bin, or an explicit range
 * such as "70.4M ± 5%". Pure.
 *
 * Bin i covers the integer parameter counts [ceil(e_i), ceil(e_{i+1}) − 1], where e_0 = min,
 * e_count = max and the edges are evenly spaced (linear) or evenly spaced in log(parameters) (log);
 * the last bin also includes max itself.
 */
import type { NeoXConfig } from '../model/index.js';
import { type SpaceChoices, type SpaceKind, dimsParamRange, resolveDims } from './choices.js';
import { type ParamTarget, TargetError, findInRange, formatParams, unreachableMessage } from './space.js';

export const BIN_SCALES = ['linear', 'log'] as const;
export type BinScale = (typeof BIN_SCALES)[number];

export interface BinOptions {
  /** Default 'uniform'. */
  space?: SpaceKind;
  choices?: SpaceChoices;
  /** Number of bins, default 20. */
  count?: number;
  /** Default 'linear'. */
  scale?: BinScale;
}

export interface ParamBin {
  index: number;
  /** Inclusive. */
  minParams: number;
  /** Inclusive. */
  maxParams: number;
}

export const DEFAULT_BIN_COUNT = 20;

/** The space's smallest and largest sub-network's parameter counts. */
export function spaceParamRange(
  teacher: NeoXConfig,
  options: Pick<BinOptions, 'space' | 'choices'> = {},
): { min: number; max: number } {
  const space = options.space ?? 'uniform';
  return dimsParamRange(teacher, space, resolveDims(teacher, space, options.choices));
}

/** The bins of a space (their union is [min, max]; empty bins, narrower than one parameter, are kept). */
export function parameterBins(teacher: NeoXConfig, options: BinOptions = {}): ParamBin[] {
  const count = options.count ?? DEFAULT_BIN_COUNT;
  if (!Number.isSafeInteger(count) || count < 1)
    throw new TargetError(`bin count must be a positive integer, got ${JSON.stringify(count)}`);
  const scale = options.scale ?? 'linear';
  if (scale !== 'linear' && scale !== 'log')
    throw new TargetError(`bin scale must be linear or log, got ${JSON.stringify(scale)}`);
  const { min, max } = spaceParamRange(teacher, options);
  const edge = (i: number): number => {
    if (i === 0) return min;
    if (i === count) return max + 1;
    const x =
      scale === 'linear'
        ? min + ((max - min) * i) / count
        : Math.exp(Math.log(min) + ((Math.log(max) - Math.log(min)) * i) / count);
    return Math.ceil(x);
  };
  return Array.from({ length: count }, (_, i) => ({ index: i, minParams: edge(i), maxParams: edge(i + 1) - 1 }));
}

const UNITS: Record<string, number> = { '': 1, k: 1e3, K: 1e3, m: 1e6, M: 1e6, b: 1e9, B: 1e9, g: 1e9, G: 1e9 };

function amount(num: string, unit: string, text: string): number {
  const v = Number(num) * UNITS[unit];
  if (!Number.isFinite(v) || v < 0) throw new TargetError(`cannot read ${JSON.stringify(text)} as a parameter count`);
  return v;
}

/**
 * A parameter range from text: "70.4M ± 5%" (also "+-", "+/-"), "70.4M ± 2M", "60M-80M", "60M..80M",
 * or one count ("70426624": exactly that). Units k, M, B (also G); case-insensitive except m = M.
 */
export function parseParamRange(text: string): ParamTarget {
  const num = '(\\d+(?:\\.\\d+)?|\\.\\d+)(?:e(\\d+))?\\s*([kKmMbBgG]?)';
  const plusMinus = new RegExp(`^\\s*${num}\\s*(?:±|\\+-|\\+/-)\\s*${num}\\s*(%?)\\s*$`);
  const between = new RegExp(`^\\s*${num}\\s*(?:-|\\.\\.|to)\\s*${num}\\s*$`);
  const single = new RegExp(`^\\s*${num}\\s*$`);
  const val = (n: string, exp: string | undefined, unit: string) => amount(exp ? `${n}e${exp}` : n, unit, text);
  let m = plusMinus.exec(text);
  if (m) {
    const center = val(m[1], m[2], m[3]);
    const tol = m[7] === '%' ? (center * Number(m[4])) / 100 : val(m[4], m[5], m[6]);
    return { minParams: Math.ceil(center - tol), maxParams: Math.floor(center + tol) };
  }
  m = between.exec(text);
  if (m) {
    const a = val(m[1], m[2], m[3]);
    const b = val(m[4], m[5], m[6]);
    if (a > b) throw new TargetError(`${JSON.stringify(text)}: the lower end exceeds the upper`);
    return { minParams: Math.ceil(a), maxParams: Math.floor(b) };
  }
  m = single.exec(text);
  if (m) {
    const v = Math.round(val(m[1], m[2], m[3]));
    return { minParams: v, maxParams: v };
  }
  throw new TargetError(
    `cannot read ${JSON.stringify(text)} as a parameter range; expected e.g. "70.4M ± 5%", "60M-80M" or a count`,
  );
}

/** A search target: a bin index, a range as text, or explicit bounds. */
export type TargetRequest = { bin: number } | { params: string } | ParamTarget;

export interface ResolvedTarget extends ParamTarget {
  /** The bin index, when the target was a bin. */
  bin?: number;
  /** e.g. "bin 7 of 20 (linear): 1.23M to 1.45M" */
  label: string;
}

/**
 * Resolves a target to a parameter range and checks that some sub-network of the space reaches it:
 * a bin no sub-network reaches, or a range outside the space, is a TargetError naming it.
 */
export function resolveTarget(teacher: NeoXConfig, request: TargetRequest, options: BinOptions = {}): ResolvedTarget {
  const space = options.space ?? 'uniform';
  let target: ResolvedTarget;
  if ('bin' in request) {
    const bins = parameterBins(teacher, options);
    const i = request.bin;
    if (!Number.isSafeInteger(i) || i < 0 || i >= bins.length) {
      throw new TargetError(`bin ${JSON.stringify(i)} out of range [0, ${bins.length})`);
    }
    const b = bins[i];
    const label = `bin ${i} of ${bins.length} (${options.scale ?? 'linear'}): ${formatParams(b.minParams)} to ${formatParams(b.maxParams)} parameters`;
    if (b.maxParams < b.minParams) throw new TargetError(`${label}: the bin is empty (narrower than one parameter)`);
    target = { minParams: b.minParams, maxParams: b.maxParams, bin: i, label };
  } else {
    const range = 'params' in request ? parseParamRange(request.params) : request;
    const label = `${formatParams(range.minParams)} to ${formatParams(range.maxParams)} parameters`;
    target = { minParams: range.minParams, maxParams: range.maxParams, label };
  }
  const reach = findInRange(teacher, { space, target, choices: options.choices });
  if (!reach.spec) throw new TargetError(unreachableMessage(target.label, space, reach));
  return target;
}
