/**
 * services/config: offshoot's one configuration file (YAML or JSON; docs/configuration.md) — a zod
 * schema with a documented default for every field, so an empty file (or none) is the embedded
 * default run. A bad file is ONE error listing every problem, each naming the field and its value.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import YAML from 'yaml';
import { z } from 'zod';

import { BACKEND_CHOICES } from '../../core/model/backend.js';
import { DEFAULT_DISTILL, KL_DIRECTIONS, MODEL_PRESETS } from '../../core/model/index.js';
import { ALGORITHMS, SEARCH_DEFAULTS, SearchError, resolveSearchOptions } from '../../core/search/index.js';
import {
  BIN_SCALES,
  DEFAULT_BIN_COUNT,
  FITNESS_KINDS,
  FITNESS_LOSSES,
  HEAD_ORDERS,
  LAYER_ORDERS,
  SPACE_KINDS,
  SUBNET_SPACE_DEFAULTS,
} from '../../core/subnet/index.js';
import { TEACHER_TRAIN_DEFAULTS } from '../../core/teacher/index.js';
import { RUN_ID_PATTERN } from '../progress/index.js';
import type { PipelineInput, TeacherServiceRef } from '../../workflows/index.js';

const int = (min: number) => z.number().int().min(min);
const posInt = () => z.number().int().positive();
const posNum = () => z.number().positive().refine(Number.isFinite, 'must be finite');
const fraction = () => z.number().min(0).max(1);

/**
 * Upper bounds: far above any run this tool is for, low enough that a typo (1e9 for 1e3) is an error
 * naming the field instead of a run that allocates, loops or waits for ever.
 */
export const CONFIG_LIMITS = {
  steps: 10_000_000,
  fitnessSteps: 1_000_000,
  budget: 1_000_000,
  population: 10_000,
  batchSize: 65_536,
  seqLen: 1_048_576,
  tokens: 1_000_000_000,
  vocab: 1_048_576,
  parallelism: 1024,
  processes: 256,
  seconds: 7 * 24 * 3600,
  attempts: 1000,
  /** Distillation temperatures the teacher service accepts (docs/teacher-service.md). */
  temperature: { min: 0.01, max: 100 },
} as const;

const upTo = (max: number) => posInt().max(max);

/** A folder that is not the file system's root (a run writes <root>/<run.name>/ and its stack's files). */
function notFileSystemRoot(value: string): boolean {
  const abs = path.resolve(value);
  return path.parse(abs).root !== abs;
}

const activitySchema = (timeoutSeconds: number, heartbeatSeconds: number, maxAttempts: number) =>
  z
    .strictObject({
      timeoutSeconds: upTo(CONFIG_LIMITS.seconds)
        .default(timeoutSeconds)
        .describe('start-to-close timeout of one attempt, seconds'),
      heartbeatSeconds: upTo(CONFIG_LIMITS.seconds)
        .default(heartbeatSeconds)
        .describe('a worker silent this long is presumed dead; the attempt is retried elsewhere'),
      maxAttempts: upTo(CONFIG_LIMITS.attempts).default(maxAttempts).describe('attempts before the activity fails'),
    })
    .prefault({});

const targetSchema = z.union(
  [
    z.strictObject({ bin: int(0) }),
    z.strictObject({ params: z.string().min(1) }),
    z.strictObject({ minParams: z.number().nonnegative(), maxParams: z.number().positive() }),
  ],
  { error: 'expected {bin: N}, {params: "70M ± 5%"} or {minParams: N, maxParams: M}' },
);

const T = TEACHER_TRAIN_DEFAULTS;

const choiceSchema = z.union([
  z.array(posInt()).min(1),
  z.strictObject({ min: posInt().optional(), max: posInt().optional(), step: posInt().optional() }),
]);

export const configSchema = z.strictObject({
  run: z
    .strictObject({
      name: z
        .string()
        .regex(RUN_ID_PATTERN, 'must be 1-128 of A-Z a-z 0-9 _ - (starting with a letter or digit)')
        .default('default')
        .describe('the run; workflow ids and its folder derive from it'),
      seed: int(0)
        .default(1)
        .describe('seed of the search (unless search.seed), the pretraining data order and initialisations'),
    })
    .prefault({}),
  storage: z
    .strictObject({
      root: z
        .string()
        .min(1)
        .refine(notFileSystemRoot, 'must not be the file system root: a run writes <root>/<run.name>/ there')
        .default('runs')
        .describe('shared folder every worker sees; a run keeps its files in <root>/<run.name>'),
    })
    .prefault({}),
  teacher: z
    .strictObject({
      dir: z
        .string()
        .min(1)
        .nullable()
        .default(null)
        .describe('teacher checkpoint directory; null: <run folder>/teacher, trained there when missing'),
      train: z
        .strictObject({
          enabled: z
            .boolean()
            .default(true)
            .describe('train the teacher when its directory holds no finished checkpoint'),
          preset: z
            .enum(Object.keys(MODEL_PRESETS) as [string, ...string[]])
            .default(T.preset)
            .describe('model shape (core/model presets)'),
          vocab: upTo(CONFIG_LIMITS.vocab).default(T.vocab).describe('vocabulary of the BPE trained on data.train'),
          steps: upTo(CONFIG_LIMITS.steps).default(T.steps),
          batchSize: upTo(CONFIG_LIMITS.batchSize).default(T.batchSize),
          seqLen: upTo(CONFIG_LIMITS.seqLen).default(T.seqLen),
          lr: posNum().default(T.lr),
          warmup: int(0).default(T.warmup),
          seed: int(0).default(T.seed),
          evalTokens: upTo(CONFIG_LIMITS.tokens).default(T.evalTokens),
        })
        .prefault({}),
      service: z
        .strictObject({
          enabled: z
            .boolean()
            .default(true)
            .describe(
              'distil through the teacher-logit service (embedded: started by offshoot run); false: each worker holds the teacher',
            ),
          topK: upTo(CONFIG_LIMITS.vocab).default(64).describe('top-k logits the service sends per position'),
          maxBatchTokens: upTo(CONFIG_LIMITS.tokens)
            .default(8192)
            .describe('largest forward pass of the embedded service'),
          maxBufferedMiB: upTo(1024 * 1024)
            .default(256)
            .describe("the embedded service's budget for answers computed and not yet taken by their students, MiB"),
        })
        .prefault({}),
    })
    .prefault({}),
  data: z
    .strictObject({
      train: z
        .string()
        .min(1)
        .default('sotu:train')
        .describe(
          'training data spec (docs/data.md): sotu:train, sotu:val, mobydick, a file, folder or glob, a spec file',
        ),
      val: z.string().min(1).default('sotu:val').describe('validation data spec, e.g. corpus.yaml;split=val'),
      tokenizer: z.string().min(1).nullable().default(null).describe("tokenizer.json or a folder; null: the teacher's"),
    })
    .prefault({}),
  search: z
    .strictObject({
      space: z.enum(SPACE_KINDS).default('uniform').describe('uniform, layer-wise or granular'),
      target: targetSchema.default({ bin: 5 }).describe('parameter range: a bin, a range as text, or explicit bounds'),
      bins: upTo(10_000).default(DEFAULT_BIN_COUNT),
      scale: z.enum(BIN_SCALES).default('linear'),
      choices: z
        .strictObject({
          layers: choiceSchema.optional(),
          embedding: choiceSchema.optional(),
          heads: choiceSchema.optional(),
          mlp: choiceSchema.optional(),
          headSize: choiceSchema.optional(),
        })
        .optional()
        .describe('allowed values per dimension (docs/subnetworks.md)'),
      algorithm: z.enum(ALGORITHMS).default(SEARCH_DEFAULTS.algorithm),
      budget: upTo(CONFIG_LIMITS.budget).default(16).describe('total fitness evaluations'),
      population: int(2).max(CONFIG_LIMITS.population).default(8),
      seed: int(0).nullable().default(null).describe('seed of the search; null: run.seed'),
      tournamentSize: upTo(CONFIG_LIMITS.population).optional(),
      elitism: int(0).optional(),
      crossoverProbability: fraction().optional(),
      mutationProbability: fraction().optional(),
      secondMutationProbability: fraction()
        .default(SUBNET_SPACE_DEFAULTS.secondMutationProbability)
        .describe('chance that a mutation changes a second dimension of the sub-network (core/subnet/mutations.ts)'),
      multiObjective: z.boolean().optional(),
      retryFailed: int(0).optional(),
      parallelism: upTo(CONFIG_LIMITS.parallelism).default(2).describe('evaluations in flight at once'),
      continueAsNewEvery: upTo(CONFIG_LIMITS.steps)
        .default(5)
        .describe('generations per workflow run before continue-as-new'),
      fitness: z
        .strictObject({
          kind: z.enum(FITNESS_KINDS).default('brief'),
          steps: upTo(CONFIG_LIMITS.fitnessSteps).default(20).describe('brief: training steps'),
          batchSize: upTo(CONFIG_LIMITS.batchSize).default(8),
          seqLen: upTo(CONFIG_LIMITS.seqLen).default(64),
          lr: posNum().default(3e-3),
          warmup: int(0).default(5),
          loss: z.enum(FITNESS_LOSSES).default('distill'),
          evalTokens: upTo(CONFIG_LIMITS.tokens).default(4096).describe('validation tokens per evaluation'),
          order: z.enum(HEAD_ORDERS).default('first-k').describe('which heads, neurons and channels counts keep'),
          layers: z.enum(LAYER_ORDERS).default('first'),
        })
        .prefault({}),
      activity: activitySchema(900, 60, 3),
    })
    .prefault({}),
  pretrain: z
    .strictObject({
      steps: upTo(CONFIG_LIMITS.steps).default(200),
      batchSize: upTo(CONFIG_LIMITS.batchSize).default(8),
      seqLen: upTo(CONFIG_LIMITS.seqLen).default(64),
      lr: posNum().default(3e-3),
      warmup: int(0).default(20),
      segmentSteps: upTo(CONFIG_LIMITS.steps).default(100).describe('steps per trainSegment activity'),
      checkpointEvery: upTo(CONFIG_LIMITS.steps)
        .default(25)
        .describe('steps between checkpoints (what a retry may redo at most)'),
      evalEvery: upTo(CONFIG_LIMITS.steps).default(100).describe('steps between validation passes'),
      evalTokens: upTo(CONFIG_LIMITS.tokens).default(4096),
      targetPpl: posNum()
        .nullable()
        .default(null)
        .describe('stop once validation perplexity reaches this; null: train all steps'),
      distill: z
        .strictObject({
          enabled: z.boolean().default(true).describe('knowledge distillation; false: cross-entropy only'),
          alpha: fraction()
            .default(DEFAULT_DISTILL.alpha)
            .describe('weight of cross-entropy; 1 − alpha weighs the KL term'),
          temperature: z
            .number()
            .min(CONFIG_LIMITS.temperature.min)
            .max(CONFIG_LIMITS.temperature.max)
            .default(DEFAULT_DISTILL.temperature)
            .describe(`distillation temperature, ${CONFIG_LIMITS.temperature.min} to ${CONFIG_LIMITS.temperature.max}`),
          direction: z.enum(KL_DIRECTIONS).default(DEFAULT_DISTILL.direction),
        })
        .prefault({}),
      baselines: z
        .strictObject({
          randomInit: z.boolean().default(true).describe("the winner's shape with random weights, same budget"),
          firstK: z
            .boolean()
            .default(true)
            .describe('no search: the teacher shrunk uniformly into the bin, first-k weights'),
        })
        .prefault({}),
      finalEvalTokens: upTo(CONFIG_LIMITS.tokens)
        .default(16384)
        .describe('validation tokens of the final evaluation (the results table)'),
      activity: activitySchema(3600, 60, 5),
    })
    .prefault({}),
  services: z
    .strictObject({
      temporal: z
        .strictObject({
          address: z
            .string()
            .min(1)
            .nullable()
            .default(null)
            .describe('host:port of Temporal; null: offshoot run starts the embedded dev server'),
          namespace: z.string().min(1).default('default'),
        })
        .prefault({}),
      nats: z
        .strictObject({
          url: z
            .string()
            .min(1)
            .nullable()
            .default(null)
            .describe('NATS for progress events; null: embedded (offshoot run) or none'),
        })
        .prefault({}),
      teacher: z
        .strictObject({
          targets: z
            .array(z.string().regex(/^[^\s:]+:\d+$/, 'expected host:port'))
            .default([])
            .describe('teacher-logit service replicas; empty: embedded (offshoot run) or in process'),
        })
        .prefault({}),
    })
    .prefault({}),
  workers: z
    .strictObject({
      evaluators: upTo(CONFIG_LIMITS.processes).default(1).describe('embedded stack: evaluator worker processes'),
      evaluateSlots: upTo(CONFIG_LIMITS.processes)
        .default(1)
        .describe('evaluations one evaluator runs at once (one per device)'),
      backend: z
        .enum(BACKEND_CHOICES)
        .default('auto')
        .describe('compute backend of embedded workers and the teacher service'),
      gracePeriodSeconds: upTo(CONFIG_LIMITS.seconds)
        .default(30)
        .describe('SIGTERM: how long a worker may finish or checkpoint its activities'),
      maxRestarts: int(0)
        .max(1000)
        .default(5)
        .describe(
          'embedded stack: failed restarts in a row of a child (Temporal, NATS, the teacher service, a worker) before the run stops',
        ),
    })
    .prefault({}),
});

export type OffshootConfig = z.output<typeof configSchema>;
export type OffshootConfigInput = z.input<typeof configSchema>;

export interface ConfigProblem {
  field: string;
  message: string;
}

/** A configuration with problems; `problems` lists every one, and the message shows them all. */
export class ConfigError extends Error {
  constructor(
    readonly source: string,
    readonly problems: ConfigProblem[],
  ) {
    super(
      `${source}: ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n${problems.map((p) => `  ${p.field}: ${p.message}`).join('\n')}`,
    );
    this.name = 'ConfigError';
  }
}

function valueAt(raw: unknown, p: readonly PropertyKey[]): unknown {
  let v = raw;
  for (const k of p) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

function fieldName(p: readonly PropertyKey[]): string {
  return p.map(String).join('.') || '(top level)';
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/** Validates a parsed file (any JSON value); throws one ConfigError listing every problem. */
export function parseConfig(raw: unknown, source = 'config'): OffshootConfig {
  const input = raw === null || raw === undefined ? {} : raw;
  const problems: ConfigProblem[] = [];
  const result = configSchema.safeParse(input);
  if (!result.success) {
    for (const issue of result.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys)
          problems.push({ field: fieldName([...issue.path, key]), message: 'unknown field' });
        continue;
      }
      const value = valueAt(input, issue.path);
      problems.push({
        field: fieldName(issue.path),
        message: `${issue.message}${value === undefined ? '' : `, got ${show(value)}`}`,
      });
    }
  }
  // Checks across fields, on the file's values over the defaults, reported in the same list (a field
  // that already has a problem is not checked again).
  if (input && typeof input === 'object' && !Array.isArray(input)) {
    const merged = mergeRaw(JSON.parse(JSON.stringify(configSchema.parse({}))), input as Record<string, unknown>);
    const bad = new Set(problems.map((p) => p.field));
    for (const p of crossFieldProblems(merged))
      if (![...bad].some((b) => p.field === b || p.field.startsWith(`${b}.`) || b.startsWith(`${p.field}.`)))
        problems.push(p);
  }
  if (problems.length || !result.success) throw new ConfigError(source, problems);
  return result.data;
}

// biome-ignore lint/suspicious/noExplicitAny: the merged file before its schema has checked it; every read is checked here.
function crossFieldProblems(c: Record<string, any>): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const n = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
  const s = c.search ?? {};
  const opts: Record<string, unknown> = {};
  for (const k of [
    'algorithm',
    'budget',
    'population',
    'tournamentSize',
    'elitism',
    'crossoverProbability',
    'mutationProbability',
    'multiObjective',
    'retryFailed',
  ]) {
    if (s[k] !== undefined) opts[k] = s[k];
  }
  try {
    resolveSearchOptions(opts);
  } catch (err) {
    if (!(err instanceof SearchError)) throw err;
    problems.push({ field: `search.${err.field}`, message: err.message });
  }
  const f = s.fitness ?? {};
  if (f.kind === 'brief' && n(f.warmup) && n(f.steps) && f.warmup > f.steps) {
    problems.push({
      field: 'search.fitness.warmup',
      message: `must be at most search.fitness.steps (${f.steps}), got ${f.warmup}`,
    });
  }
  const p = c.pretrain ?? {};
  if (n(p.warmup) && n(p.steps) && p.warmup > p.steps)
    problems.push({
      field: 'pretrain.warmup',
      message: `must be at most pretrain.steps (${p.steps}), got ${p.warmup}`,
    });
  if (n(p.checkpointEvery) && n(p.segmentSteps) && p.checkpointEvery > p.segmentSteps) {
    problems.push({
      field: 'pretrain.checkpointEvery',
      message: `must be at most pretrain.segmentSteps (${p.segmentSteps}), got ${p.checkpointEvery}`,
    });
  }
  const t = c.teacher?.train ?? {};
  if (n(t.warmup) && n(t.steps) && t.warmup > t.steps)
    problems.push({
      field: 'teacher.train.warmup',
      message: `must be at most teacher.train.steps (${t.steps}), got ${t.warmup}`,
    });
  return problems;
}

/** Reads and validates a YAML or JSON file (YAML is a superset of JSON). */
export function loadConfigFile(file: string): OffshootConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [
      { field: '(file)', message: `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` },
    ]);
  }
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (err) {
    throw new ConfigError(file, [
      {
        field: '(file)',
        message: `not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`,
      },
    ]);
  }
  return parseConfig(raw, file);
}

/** The defaults (what an empty file gives). */
export function defaultConfig(): OffshootConfig {
  return parseConfig({}, 'defaults');
}

/** Every leaf field of a config as [dotted path, value] (the documentation test walks the defaults). */
export function configLeaves(value: unknown, prefix = ''): [string, unknown][] {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return [[prefix, value]];
  return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) =>
    configLeaves(v, prefix ? `${prefix}.${k}` : k),
  );
}

/** Merges overrides (e.g. from command-line flags) into a raw config object, deeply. */
export function mergeRaw(base: unknown, override: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> =
    base && typeof base === 'object' && !Array.isArray(base) ? { ...(base as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(override)) {
    if (v === undefined) continue;
    const cur = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur)
        ? mergeRaw(cur, v as Record<string, unknown>)
        : v;
  }
  return out;
}

/** The search options of a config (core/search's names). */
export function searchOptions(config: OffshootConfig) {
  const s = config.search;
  return {
    algorithm: s.algorithm,
    budget: s.budget,
    population: s.population,
    seed: s.seed ?? config.run.seed,
    ...(s.tournamentSize !== undefined ? { tournamentSize: s.tournamentSize } : {}),
    ...(s.elitism !== undefined ? { elitism: s.elitism } : {}),
    ...(s.crossoverProbability !== undefined ? { crossoverProbability: s.crossoverProbability } : {}),
    ...(s.mutationProbability !== undefined ? { mutationProbability: s.mutationProbability } : {}),
    ...(s.multiObjective !== undefined ? { multiObjective: s.multiObjective } : {}),
    ...(s.retryFailed !== undefined ? { retryFailed: s.retryFailed } : {}),
  };
}

/** The run's folder on shared storage (absolute). */
export function runDir(config: OffshootConfig, cwd = process.cwd()): string {
  return path.resolve(cwd, config.storage.root, config.run.name);
}

/**
 * Creates the storage root when missing and checks this user may write there; throws naming the
 * folder and why not (before anything starts, so nothing is left half made).
 */
export function ensureStorageRoot(config: OffshootConfig, cwd = process.cwd()): string {
  const root = path.resolve(cwd, config.storage.root);
  try {
    fs.mkdirSync(root, { recursive: true });
    fs.accessSync(root, fs.constants.W_OK | fs.constants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`storage.root ${root}: cannot create or write it (${code}); choose a folder this user may write`);
  }
  return root;
}

/** The teacher's checkpoint directory (absolute). */
export function teacherDir(config: OffshootConfig, cwd = process.cwd()): string {
  return config.teacher.dir ? path.resolve(cwd, config.teacher.dir) : path.join(runDir(config, cwd), 'teacher');
}

/** The pipeline workflow's input for a config; `teacherService` from the embedded stack or the config. */
export function pipelineInput(
  config: OffshootConfig,
  options: { cwd?: string; teacherService?: TeacherServiceRef } = {},
): PipelineInput {
  const cwd = options.cwd ?? process.cwd();
  const dir = runDir(config, cwd);
  const run = { runId: config.run.name, dir };
  const data = {
    train: config.data.train,
    val: config.data.val,
    ...(config.data.tokenizer ? { tokenizer: path.resolve(cwd, config.data.tokenizer) } : {}),
  };
  const teacherService =
    options.teacherService ??
    (config.teacher.service.enabled && config.services.teacher.targets.length
      ? { targets: config.services.teacher.targets, topK: config.teacher.service.topK }
      : undefined);
  const s = config.search;
  const p = config.pretrain;
  const { enabled, ...train } = config.teacher.train;
  return {
    run,
    data,
    teacherService,
    teacher: {
      run,
      dir: teacherDir(config, cwd),
      data,
      ...(enabled ? { train } : {}),
      ...(teacherService ? { service: teacherService } : {}),
    },
    evolution: {
      space: {
        kind: s.space,
        target: s.target,
        bins: s.bins,
        scale: s.scale,
        ...(s.choices ? { choices: s.choices } : {}),
        secondMutationProbability: s.secondMutationProbability,
      },
      search: searchOptions(config),
      fitness: {
        budget:
          s.fitness.kind === 'zero-shot'
            ? {
                kind: 'zero-shot',
                batchSize: s.fitness.batchSize,
                seqLen: s.fitness.seqLen,
                evalTokens: s.fitness.evalTokens,
              }
            : {
                kind: 'brief',
                steps: s.fitness.steps,
                batchSize: s.fitness.batchSize,
                seqLen: s.fitness.seqLen,
                lr: s.fitness.lr,
                warmup: s.fitness.warmup,
                loss: s.fitness.loss,
                evalTokens: s.fitness.evalTokens,
                ...(s.fitness.loss === 'distill'
                  ? {
                      distill: {
                        alpha: p.distill.alpha,
                        temperature: p.distill.temperature,
                        direction: p.distill.direction,
                      },
                    }
                  : {}),
              },
        order: s.fitness.order,
        layers: s.fitness.layers,
      },
      parallelism: s.parallelism,
      continueAsNewEvery: s.continueAsNewEvery,
      activity: s.activity,
    },
    pretrain: {
      hyper: {
        steps: p.steps,
        batchSize: p.batchSize,
        seqLen: p.seqLen,
        lr: p.lr,
        warmup: p.warmup,
        seed: config.run.seed,
        distill: p.distill.enabled
          ? { alpha: p.distill.alpha, temperature: p.distill.temperature, direction: p.distill.direction }
          : null,
      },
      segmentSteps: p.segmentSteps,
      checkpointEvery: p.checkpointEvery,
      evalEvery: p.evalEvery,
      evalTokens: p.evalTokens,
      ...(p.targetPpl !== null ? { targetPpl: p.targetPpl } : {}),
      activity: p.activity,
      order: s.fitness.order,
      layers: s.fitness.layers,
    },
    baselines: { randomInit: p.baselines.randomInit, firstK: p.baselines.firstK },
    finalEvalTokens: p.finalEvalTokens,
    activity: {
      timeoutSeconds: Math.max(p.activity.timeoutSeconds, 3600),
      heartbeatSeconds: p.activity.heartbeatSeconds,
      maxAttempts: p.activity.maxAttempts,
    },
  };
}
