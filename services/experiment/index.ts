/**
 * services/experiment: the paper-table experiment (`offshoot experiment paper-table`) — its
 * configuration (the run configuration of docs/configuration.md plus an `experiment` section, with
 * defaults sized for a 2-core CPU), the workflow input, the report activity the orchestrate worker
 * serves, and writing the report's files. The analysis and rendering are in analysis.ts / render.ts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import YAML from 'yaml';
import { z } from 'zod';

import { loadTasks } from '../../core/eval/index.js';
import { writeFileAtomicSync } from '../../core/model/index.js';
import {
  ConfigError,
  type ConfigProblem,
  type OffshootConfig,
  mergeRaw,
  parseConfig,
  pipelineInput,
} from '../config/index.js';
import type { WorkerEnv } from '../orchestration/index.js';
import {
  type ExperimentActivities,
  PAPER_ARMS,
  type PaperTableInput,
  type PaperTableResult,
} from '../../workflows/paper-table.js';
import type { TeacherServiceRef } from '../../workflows/types.js';
import { renderPaperTable } from './render.js';

export {
  analysePaperTable,
  reachAt,
  mean,
  std,
  stats,
  PAPER_GOALS,
  type PaperTableAnalysis,
  type ArmSummary,
} from './analysis.js';
export { renderPaperTable, type RenderedPaperTable } from './render.js';
export { lineChart } from './svg.js';

/**
 * The run-configuration defaults of the experiment (over docs/configuration.md's): a teacher trained
 * longer than the students' budget, full-logit distillation in the workers (no teacher service), a bin
 * a fifth of the teacher's size, dense validation curves. Sized so the whole experiment takes about 25
 * minutes on 2 CPU cores with the tensorflow backend.
 */
export const EXPERIMENT_RUN_DEFAULTS = {
  run: { name: 'paper-table', seed: 1 },
  teacher: {
    train: {
      preset: 'sotu-teacher',
      vocab: 1024,
      steps: 1600,
      batchSize: 16,
      seqLen: 64,
      lr: 0.003,
      warmup: 40,
      evalTokens: 16384,
    },
    service: { enabled: false },
  },
  search: {
    space: 'uniform',
    target: { bin: 4 },
    budget: 40,
    population: 10,
    parallelism: 2,
    fitness: { kind: 'brief', steps: 30, batchSize: 8, seqLen: 64, evalTokens: 4096, loss: 'distill' },
  },
  pretrain: {
    steps: 400,
    batchSize: 8,
    seqLen: 64,
    lr: 0.003,
    warmup: 20,
    segmentSteps: 100,
    checkpointEvery: 100,
    evalEvery: 10,
    evalTokens: 4096,
    finalEvalTokens: 16384,
  },
  workers: { evaluators: 1 },
} as const;

const posInt = () => z.number().int().positive();

export const experimentSchema = z
  .strictObject({
    seeds: z
      .array(z.number().int().min(0))
      .min(1)
      .default([1, 2, 3])
      .describe('pretraining seeds (data order and random initialisation); every arm runs each'),
    arms: z
      .array(z.enum(PAPER_ARMS))
      .min(1)
      .default([...PAPER_ARMS])
      .describe('which of the six arms to run'),
    randomShape: z
      .enum(['search', 'first-k'])
      .default('search')
      .describe("the random-init arms' shape: the searched sub-network's or the first-k one's"),
    workers: posInt()
      .default(2)
      .describe('embedded stack: compute worker processes, each serving the evaluate and pretrain queues'),
    concurrency: posInt().default(2).describe('pretraining runs at once'),
    ood: z.string().min(1).default('mobydick').describe('out-of-domain corpus of the second column'),
    oodEvalTokens: posInt().default(16384),
    out: z.string().min(1).default('docs/results').describe('folder the table, plots and data are written to'),
    prefix: z
      .string()
      .regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, . _ -')
      .default('paper-table')
      .describe('file name prefix of the outputs'),
    tasks: z
      .array(z.string().min(1))
      .default([])
      .describe(
        'lm-evaluation-harness task YAML files (or folders of them) scored zero-shot on the teacher and every final student',
      ),
    taskLimit: posInt().optional().describe('score only the first N documents of each task'),
  })
  .prefault({});

export type ExperimentSettings = z.output<typeof experimentSchema>;

export interface ExperimentConfig {
  experiment: ExperimentSettings;
  config: OffshootConfig;
}

/** Validates a parsed experiment file (the run configuration plus `experiment:`); one ConfigError lists every problem. */
export function parseExperimentConfig(raw: unknown, source = 'config'): ExperimentConfig {
  const input = raw === null || raw === undefined ? {} : raw;
  if (typeof input !== 'object' || Array.isArray(input))
    throw new ConfigError(source, [
      { field: '(top level)', message: `expected a mapping, got ${JSON.stringify(input)}` },
    ]);
  const { experiment: rawExperiment, ...rest } = input as Record<string, unknown>;
  const problems: ConfigProblem[] = [];
  let config: OffshootConfig | undefined;
  try {
    config = parseConfig(mergeRaw(JSON.parse(JSON.stringify(EXPERIMENT_RUN_DEFAULTS)), rest), source);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    problems.push(...err.problems);
  }
  const e = experimentSchema.safeParse(rawExperiment ?? {});
  if (!e.success) {
    for (const issue of e.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys)
          problems.push({ field: ['experiment', ...issue.path, key].map(String).join('.'), message: 'unknown field' });
      } else {
        problems.push({ field: ['experiment', ...issue.path].map(String).join('.'), message: issue.message });
      }
    }
  }
  if (e.success) {
    const x = e.data;
    if (new Set(x.seeds).size !== x.seeds.length)
      problems.push({ field: 'experiment.seeds', message: `seeds must differ, got ${JSON.stringify(x.seeds)}` });
    if (new Set(x.arms).size !== x.arms.length)
      problems.push({ field: 'experiment.arms', message: `arms must differ, got ${JSON.stringify(x.arms)}` });
  }
  if (config) {
    const p = config.pretrain;
    if (p.steps % p.evalEvery !== 0) {
      problems.push({
        field: 'pretrain.evalEvery',
        message: `must divide pretrain.steps (${p.steps}) so every curve ends at the budget, got ${p.evalEvery}`,
      });
    }
    if (p.targetPpl !== null)
      problems.push({
        field: 'pretrain.targetPpl',
        message: 'must be null in an experiment (every arm trains its whole budget)',
      });
  }
  if (problems.length || !config || !e.success) throw new ConfigError(source, problems);
  return { experiment: e.data, config };
}

/** Reads an experiment file (YAML or JSON); no file: the defaults. */
export function loadExperimentConfig(file?: string, overrides: Record<string, unknown> = {}): ExperimentConfig {
  let raw: unknown = {};
  if (file) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      throw new ConfigError(file, [
        { field: '(file)', message: `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` },
      ]);
    }
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
  }
  return parseExperimentConfig(mergeRaw(raw ?? {}, overrides), file ?? 'defaults');
}

/** The resolved configuration as plain data (what the report records). */
export function resolvedConfig(x: ExperimentConfig): Record<string, unknown> {
  return JSON.parse(JSON.stringify({ experiment: x.experiment, ...x.config })) as Record<string, unknown>;
}

/** The experiment's task files as the workers read them: absolute, with the folder relative data_files are read from. */
function taskInput(e: ExperimentSettings, cwd: string): NonNullable<PaperTableInput['tasks']> {
  return {
    files: e.tasks.map((f) => path.resolve(cwd, f)),
    cwd: path.resolve(cwd),
    ...(e.taskLimit ? { limit: e.taskLimit } : {}),
  };
}

/**
 * Reads the experiment's tasks once, so a bad task file is reported before anything runs; returns
 * their names (empty when the experiment names none).
 */
export function checkExperimentTasks(x: ExperimentConfig, cwd = process.cwd()): string[] {
  if (!x.experiment.tasks.length) return [];
  const t = taskInput(x.experiment, cwd);
  return loadTasks(t.files, { cwd: t.cwd, limit: t.limit }).map((task) => task.name);
}

/** The paperTable workflow's input for a configuration. */
export function paperTableInput(
  x: ExperimentConfig,
  options: { cwd?: string; command: string; backend?: string; teacherService?: TeacherServiceRef },
): PaperTableInput {
  const base = pipelineInput(x.config, { cwd: options.cwd, teacherService: options.teacherService });
  const { order, layers, targetPpl: _t, ...pretrain } = base.pretrain;
  const d = x.config.pretrain.distill;
  return {
    run: base.run,
    teacher: base.teacher,
    data: base.data,
    ...(base.teacherService ? { teacherService: base.teacherService } : {}),
    ood: { data: x.experiment.ood, evalTokens: x.experiment.oodEvalTokens },
    ...(x.experiment.tasks.length ? { tasks: taskInput(x.experiment, options.cwd ?? process.cwd()) } : {}),
    evolution: base.evolution,
    pretrain,
    distill: { alpha: d.alpha, temperature: d.temperature, direction: d.direction },
    arms: x.experiment.arms,
    seeds: x.experiment.seeds,
    randomShape: x.experiment.randomShape,
    order,
    layers,
    concurrency: x.experiment.concurrency,
    finalEvalTokens: x.config.pretrain.finalEvalTokens,
    activity: base.activity,
    meta: {
      command: options.command,
      config: resolvedConfig(x),
      ...(options.backend ? { backend: options.backend } : {}),
    },
  };
}

/** Renders a finished experiment and writes its files into `outDir`; returns their paths. */
export function writePaperTableFiles(
  outDir: string,
  result: PaperTableResult,
  prefix = 'paper-table',
): { files: string[]; markdown: string } {
  const rendered = renderPaperTable(result, { prefix });
  fs.mkdirSync(outDir, { recursive: true });
  const files: string[] = [];
  for (const [name, content] of Object.entries(rendered.files)) {
    const file = path.join(outDir, name);
    writeFileAtomicSync(file, content);
    files.push(file);
  }
  return { files, markdown: rendered.markdown };
}

/** The experiment's activities on the orchestrate queue (registered by services/worker). */
export function createExperimentActivities(_env: WorkerEnv): ExperimentActivities {
  return {
    async writePaperTable({ outDir, result }) {
      return writePaperTableFiles(outDir, result);
    },
  };
}
