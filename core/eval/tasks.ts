/**
 * Zero-shot tasks in lm-evaluation-harness's shape, read from local files: a task YAML (lm-eval's
 * TaskConfig: `task`, `dataset_path: json`, `dataset_kwargs.data_files`, `doc_to_text`,
 * `doc_to_target`, `doc_to_choice`, `target_delimiter`, `metric_list`, `include`, ...) whose
 * documents are JSON Lines (or JSON) files. Each document becomes the (context, continuation)
 * requests lm-eval would make, built the way lm-eval 0.4's ConfigurableTask builds them, so the
 * same model gives the same scores in both (see scoring.ts and docs/evaluation.md).
 *
 * Supported: `output_type` multiple_choice (one request per choice, context + target_delimiter +
 * choice; also the "multiple input" form where doc_to_text picks the choice that goes into the
 * context) and loglikelihood (cloze: the target's log-likelihood and whether greedy decoding gives
 * it). Anything that would need Python (`!function`, process_docs, process_results), few-shot
 * examples, generation, or a dataset not in local files is refused with the field named.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import YAML from 'yaml';

import { Template, TemplateError, isDigits, isPythonSpace, literalEval } from './template.js';

export class TaskError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TaskError';
  }
}

export type OutputType = 'multiple_choice' | 'loglikelihood';

/** Metrics offshoot computes exactly as lm-eval does (all aggregated by their mean, perplexity by exp(−mean)). */
export const TASK_METRICS = {
  multiple_choice: ['acc', 'acc_norm', 'acc_bytes', 'exact_match'],
  loglikelihood: ['perplexity', 'acc'],
} as const;
export type TaskMetric = (typeof TASK_METRICS)[OutputType][number];

/** lm-eval's DEFAULT_METRIC_REGISTRY: the metrics of a task without metric_list. */
const DEFAULT_METRICS: Record<OutputType, TaskMetric[]> = {
  multiple_choice: ['acc', 'acc_norm'],
  loglikelihood: ['perplexity', 'acc'],
};

/** One log-likelihood query: the text to condition on and the text whose log-probability is summed. */
export interface TaskRequest {
  context: string;
  continuation: string;
}

export interface TaskDoc {
  /** Position in the split's file(s). */
  index: number;
  /** multiple_choice: one per choice; loglikelihood: one. */
  requests: TaskRequest[];
  /** The choices (their lengths normalise acc_norm and acc_bytes); loglikelihood: none. */
  choices: string[];
  /** Index of the right choice, or several; -100 where the target names no choice (scored wrong, as in lm-eval). */
  gold: number | number[];
}

export interface Task {
  name: string;
  /** The task YAML. */
  file: string;
  outputType: OutputType;
  split: string;
  dataFiles: string[];
  metrics: TaskMetric[];
  docs: TaskDoc[];
}

export interface LoadTaskOptions {
  /** Folder relative data_files are resolved against (as datasets.load_dataset does): default process.cwd(). */
  cwd?: string;
  /** Score only the first N documents (lm-eval's --limit N). */
  limit?: number;
}

// ---- the task file ----------------------------------------------------------------------------------

/** A `!function module.name` tag: Python code offshoot cannot run. */
class PythonFunction {
  constructor(readonly name: string) {}
  toString(): string {
    return `!function ${this.name}`;
  }
}

const YAML_TAGS = [{ tag: '!function', resolve: (value: string) => new PythonFunction(value) }];

/** TaskConfig fields that change nothing in zero-shot log-likelihood scoring. */
const IGNORED_FIELDS = new Set([
  'tag',
  'task_alias',
  'dataset_name',
  'training_split',
  'fewshot_split',
  'fewshot_delimiter',
  'fewshot_config',
  'filter_list',
  'should_decontaminate',
  'doc_to_decontamination_query',
  'metadata',
  'generation_kwargs',
  'unsafe_code',
  'version',
]);
const USED_FIELDS = new Set([
  'task',
  'dataset_path',
  'dataset_kwargs',
  'validation_split',
  'test_split',
  'output_type',
  'doc_to_text',
  'doc_to_target',
  'doc_to_choice',
  'target_delimiter',
  'description',
  'gen_prefix',
  'num_fewshot',
  'metric_list',
  'repeats',
]);
const PYTHON_ONLY_FIELDS: Record<string, string> = {
  process_docs: 'a Python function over the documents',
  process_results: 'a Python scoring function',
  custom_dataset: 'a Python dataset loader',
  use_prompt: 'a promptsource prompt',
  doc_to_image: 'images',
  doc_to_audio: 'audio',
  class: 'a Python task class',
};

/** Reads a task YAML, merging `include`d files first (paths relative to the including file), as lm-eval does. */
function readTaskYaml(file: string, seen: Set<string> = new Set()): Record<string, unknown> {
  const abs = path.resolve(file);
  if (seen.has(abs)) throw new TaskError(`${file}: include cycle`);
  seen.add(abs);
  let text: string;
  try {
    text = fs.readFileSync(abs, 'utf8');
  } catch (err) {
    throw new TaskError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let cfg: unknown;
  try {
    cfg = YAML.parse(text, { customTags: YAML_TAGS });
  } catch (err) {
    throw new TaskError(`${file}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg))
    throw new TaskError(`${file}: expected a mapping of task fields`);
  const own = { ...(cfg as Record<string, unknown>) };
  if (own.include === undefined) return own;
  const includes = Array.isArray(own.include) ? own.include : [own.include];
  delete own.include;
  const merged: Record<string, unknown> = {};
  for (const inc of includes) {
    if (typeof inc !== 'string')
      throw new TaskError(`${file}: include: expected a file name, got ${JSON.stringify(inc)}`);
    const base = readTaskYaml(path.isAbsolute(inc) ? inc : path.join(path.dirname(abs), inc), seen);
    delete base.task_list;
    Object.assign(merged, base);
  }
  return Object.assign(merged, own);
}

function checkFields(cfg: Record<string, unknown>, where: string): void {
  for (const [key, value] of Object.entries(cfg)) {
    if (value === null || value === undefined) continue;
    if (key in PYTHON_ONLY_FIELDS)
      throw new TaskError(`${where}: ${key}: ${PYTHON_ONLY_FIELDS[key]} (${String(value)}) cannot be run by offshoot`);
    if (value instanceof PythonFunction)
      throw new TaskError(`${where}: ${key}: ${value} is Python code; offshoot reads templates and field names only`);
    if (!USED_FIELDS.has(key) && !IGNORED_FIELDS.has(key)) throw new TaskError(`${where}: unknown field "${key}"`);
  }
}

/** The files of the split to evaluate: test_split, else validation_split (lm-eval's eval_docs). */
function splitFiles(cfg: Record<string, unknown>, where: string, cwd: string): { split: string; files: string[] } {
  if (cfg.dataset_path !== 'json') {
    throw new TaskError(
      `${where}: dataset_path: ${JSON.stringify(cfg.dataset_path)}: offshoot reads local files only; set dataset_path: json and dataset_kwargs.data_files`,
    );
  }
  const split = (cfg.test_split ?? cfg.validation_split) as string | undefined;
  if (typeof split !== 'string')
    throw new TaskError(`${where}: test_split / validation_split: neither is set; name the split to evaluate`);
  const kwargs = (cfg.dataset_kwargs ?? {}) as Record<string, unknown>;
  if (typeof kwargs !== 'object' || Array.isArray(kwargs))
    throw new TaskError(`${where}: dataset_kwargs: expected a mapping`);
  for (const key of Object.keys(kwargs)) {
    if (key !== 'data_files' && key !== 'field')
      throw new TaskError(`${where}: dataset_kwargs.${key}: not supported (only data_files and field)`);
  }
  let spec = kwargs.data_files;
  // A bare file or list is the "train" split, as in datasets.load_dataset.
  if (typeof spec === 'string' || Array.isArray(spec)) spec = { train: spec };
  if (spec === null || typeof spec !== 'object')
    throw new TaskError(
      `${where}: dataset_kwargs.data_files: expected a file, a list of files or a mapping of split to files`,
    );
  const entry = (spec as Record<string, unknown>)[split];
  if (entry === undefined) {
    throw new TaskError(
      `${where}: dataset_kwargs.data_files has no split "${split}" (it has ${
        Object.keys(spec)
          .map((s) => JSON.stringify(s))
          .join(', ') || 'none'
      })`,
    );
  }
  const files = Array.isArray(entry) ? entry : [entry];
  return {
    split,
    files: files.map((f) => {
      if (typeof f !== 'string')
        throw new TaskError(
          `${where}: dataset_kwargs.data_files.${split}: expected file names, got ${JSON.stringify(f)}`,
        );
      if (/[*?[]/.test(f))
        throw new TaskError(
          `${where}: dataset_kwargs.data_files.${split}: ${f}: glob patterns are not supported; list the files`,
        );
      const abs = path.resolve(cwd, f);
      if (!fs.existsSync(abs))
        throw new TaskError(
          `${where}: dataset_kwargs.data_files.${split}: ${f} not found (relative paths are resolved against ${cwd}, as datasets.load_dataset does)`,
        );
      return abs;
    }),
  };
}

/** The rows of JSON Lines files (or JSON arrays, or an object's `field` array), as datasets' json builder reads them. */
function readRows(files: string[], field: string | undefined): Record<string, unknown>[] {
  const rows: Record<string, unknown>[] = [];
  const add = (row: unknown, where: string): void => {
    if (row === null || typeof row !== 'object' || Array.isArray(row))
      throw new TaskError(`${where}: expected a JSON object per document, got ${JSON.stringify(row)?.slice(0, 80)}`);
    rows.push(row as Record<string, unknown>);
  };
  for (const file of files) {
    const text = fs.readFileSync(file, 'utf8');
    const trimmed = text.trimStart();
    if (field !== undefined || trimmed.startsWith('[')) {
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (err) {
        throw new TaskError(`${file}: invalid JSON (${(err as Error).message})`);
      }
      const list = field !== undefined ? (value as Record<string, unknown>)?.[field] : value;
      if (!Array.isArray(list))
        throw new TaskError(
          `${file}: expected ${field !== undefined ? `field "${field}" to hold` : ''} a JSON array of documents`,
        );
      list.forEach((row, i) => add(row, `${file}: document ${i}`));
      continue;
    }
    text.split('\n').forEach((line, i) => {
      if (line.trim() === '') return;
      let row: unknown;
      try {
        row = JSON.parse(line);
      } catch (err) {
        throw new TaskError(`${file}:${i + 1}: invalid JSON (${(err as Error).message})`);
      }
      add(row, `${file}:${i + 1}`);
    });
  }
  // One schema for all rows, as a dataset has: a field a row lacks is None.
  const features = new Set(rows.flatMap((r) => Object.keys(r)));
  return rows.map((r) => Object.fromEntries([...features].map((f) => [f, r[f] ?? null])));
}

function parseMetrics(cfg: Record<string, unknown>, outputType: OutputType, where: string): TaskMetric[] {
  if (cfg.metric_list === undefined || cfg.metric_list === null) return DEFAULT_METRICS[outputType];
  if (!Array.isArray(cfg.metric_list)) throw new TaskError(`${where}: metric_list: expected a list`);
  const supported: readonly string[] = TASK_METRICS[outputType];
  return cfg.metric_list.map((m, i) => {
    const entry = m as Record<string, unknown>;
    const name = entry?.metric;
    if (typeof name !== 'string' || !supported.includes(name)) {
      throw new TaskError(
        `${where}: metric_list[${i}].metric: ${JSON.stringify(name)} is not supported for ${outputType} (offshoot computes ${supported.join(', ')})`,
      );
    }
    const aggregation = entry.aggregation ?? (name === 'perplexity' ? 'perplexity' : 'mean');
    if (aggregation !== (name === 'perplexity' ? 'perplexity' : 'mean')) {
      throw new TaskError(
        `${where}: metric_list[${i}].aggregation: ${JSON.stringify(aggregation)} is not supported for ${name}`,
      );
    }
    return name as TaskMetric;
  });
}

// ---- documents to requests --------------------------------------------------------------------------

type Value = unknown;

/** lm-eval's doc_to_* resolution: an int as it is, a field name's value, or a rendered template. */
class DocFields {
  private readonly templates = new Map<string, Template>();

  constructor(
    private readonly cfg: Record<string, unknown>,
    private readonly features: Set<string>,
  ) {}

  private render(source: string, doc: Record<string, unknown>): string {
    let t = this.templates.get(source);
    if (!t) {
      t = new Template(source);
      this.templates.set(source, t);
    }
    return t.render(doc);
  }

  private get hasChoices(): boolean {
    return this.cfg.doc_to_choice !== undefined && this.cfg.doc_to_choice !== null;
  }

  text(doc: Record<string, unknown>): Value {
    const v = this.cfg.doc_to_text;
    if (typeof v === 'number') return v;
    if (typeof v !== 'string')
      throw new TaskError(`doc_to_text: expected a template, a field name or an integer, got ${JSON.stringify(v)}`);
    if (this.features.has(v)) return doc[v];
    const s = this.render(v, doc);
    return isDigits(s) && this.hasChoices ? Number(s) : s;
  }

  target(doc: Record<string, unknown>): Value {
    const v = this.cfg.doc_to_target;
    if (typeof v === 'number' || Array.isArray(v)) return v;
    if (typeof v !== 'string')
      throw new TaskError(
        `doc_to_target: expected a template, a field name, an integer or a list, got ${JSON.stringify(v)}`,
      );
    if (this.features.has(v)) return doc[v];
    const s = this.render(v, doc);
    if (isDigits(s) && this.hasChoices) return Number(s);
    if (s.length >= 2 && s.startsWith('[') && s.endsWith(']')) {
      try {
        return literalEval(s);
      } catch {
        return s;
      }
    }
    return s;
  }

  choices(doc: Record<string, unknown>): string[] {
    const v = this.cfg.doc_to_choice;
    let list: unknown;
    if (typeof v === 'string') list = this.features.has(v) ? doc[v] : literalEval(this.render(v, doc));
    else if (Array.isArray(v)) list = v;
    else if (v !== null && typeof v === 'object') list = Object.values(v);
    else
      throw new TaskError(
        `doc_to_choice: expected a template, a field name, a list or a mapping, got ${JSON.stringify(v)}`,
      );
    if (!Array.isArray(list) || list.some((c) => typeof c !== 'string'))
      throw new TaskError(`doc_to_choice: expected a list of strings, got ${JSON.stringify(list)}`);
    return list as string[];
  }

  /** A field's value when the doc has the key, else the field rendered as a template (lm-eval's resolve_field). */
  resolve(source: unknown, doc: Record<string, unknown>): string {
    if (source === undefined || source === null || source === '') return '';
    if (typeof source !== 'string') throw new TaskError(`expected a string, got ${JSON.stringify(source)}`);
    return source in doc ? String(doc[source]) : this.render(source, doc);
  }

  prefix(doc: Record<string, unknown>): string | null {
    const v = this.cfg.gen_prefix;
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string') throw new TaskError(`gen_prefix: expected a string, got ${JSON.stringify(v)}`);
    return this.features.has(v) ? String(doc[v]) : this.render(v, doc);
  }
}

/** lm-eval's requires_delimiter: neither side has whitespace at the join. */
function requiresDelimiter(prefix: string, suffix: string): boolean {
  return prefix !== '' && !(isPythonSpace(prefix[prefix.length - 1]) || isPythonSpace(suffix[0] ?? ''));
}

/** Index of a gold answer among the choices, -100 when it names none (lm-eval's process_results). */
function goldIndex(gold: Value, choices: string[]): number {
  if (typeof gold === 'number' && Number.isInteger(gold)) return gold < choices.length ? gold : -100;
  if (typeof gold === 'string') {
    const i = choices.indexOf(gold);
    return i >= 0 ? i : -100;
  }
  throw new TaskError(`doc_to_target: expected a choice index or a choice, got ${JSON.stringify(gold)}`);
}

/** Builds every document's requests (the zero-shot context of lm-eval's fewshot_context with num_fewshot 0). */
function buildDocs(
  cfg: Record<string, unknown>,
  outputType: OutputType,
  rows: Record<string, unknown>[],
  where: string,
): TaskDoc[] {
  const fields = new DocFields(cfg, new Set(rows.length ? Object.keys(rows[0]) : []));
  const targetDelimiter = (cfg.target_delimiter ?? ' ') as string;
  if (typeof targetDelimiter !== 'string') throw new TaskError(`${where}: target_delimiter: expected a string`);
  // "Multiple input" tasks (Winogrande's form): doc_to_text gives the index of the choice that goes
  // into the context, and the target is the continuation; decided on the first document, like lm-eval.
  const multipleInput =
    outputType === 'multiple_choice' &&
    rows.length > 0 &&
    typeof wrap(where, 0, () => fields.text(rows[0])) === 'number';
  return rows.map((doc, index) =>
    wrap(where, index, () => {
      const description = fields.resolve(cfg.description, doc);
      const prefix = fields.prefix(doc);
      // The user turn q, then the generation prefix (joined with the target delimiter when neither side has whitespace).
      const context = (q: string, delimiter: string): string =>
        description + q + (prefix ? (requiresDelimiter(q, prefix) ? delimiter : '') + prefix : '');
      if (outputType === 'loglikelihood') {
        const text = fields.text(doc);
        const target = fields.target(doc);
        if (typeof text !== 'string') throw new TaskError(`doc_to_text: expected text, got ${JSON.stringify(text)}`);
        if (typeof target !== 'string')
          throw new TaskError(`doc_to_target: expected the text to score, got ${JSON.stringify(target)}`);
        return {
          index,
          requests: [{ context: context(text, targetDelimiter), continuation: target }],
          choices: [],
          gold: 0,
        };
      }
      const choices = fields.choices(doc);
      if (multipleInput) {
        const which = fields.text(doc);
        const target = fields.target(doc);
        if (typeof which !== 'number')
          throw new TaskError(
            `doc_to_text: expected a choice index (the first document gave one), got ${JSON.stringify(which)}`,
          );
        if (typeof target !== 'string' && typeof target !== 'number')
          throw new TaskError(`doc_to_target: expected the continuation, got ${JSON.stringify(target)}`);
        const continuation = targetDelimiter + String(target);
        return {
          index,
          requests: choices.map((c) => ({ context: context(c, ''), continuation })),
          choices,
          gold: goldIndex(which, choices),
        };
      }
      const text = fields.text(doc);
      if (typeof text !== 'string') throw new TaskError(`doc_to_text: expected text, got ${JSON.stringify(text)}`);
      const ctx = context(text, targetDelimiter);
      const target = fields.target(doc);
      const gold = Array.isArray(target) ? target.map((t) => goldIndex(t, choices)) : goldIndex(target, choices);
      return {
        index,
        requests: choices.map((c) => ({ context: ctx, continuation: targetDelimiter + c })),
        choices,
        gold,
      };
    }),
  );
}

function wrap<T>(where: string, index: number, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof TaskError || err instanceof TemplateError)
      throw new TaskError(`${where}: document ${index}: ${err.message}`);
    throw err;
  }
}

/** Reads one task YAML and its documents. */
export function loadTaskFile(file: string, options: LoadTaskOptions = {}): Task {
  const cfg = readTaskYaml(file);
  if ('group' in cfg) throw new TaskError(`${file}: group: group files are not supported; pass the files of its tasks`);
  const name = cfg.task;
  if (typeof name !== 'string' || name === '') throw new TaskError(`${file}: task: expected the task's name`);
  const where = `${file} (task ${name})`;
  checkFields(cfg, where);
  const outputType = cfg.output_type ?? 'generate_until';
  if (outputType !== 'multiple_choice' && outputType !== 'loglikelihood') {
    throw new TaskError(
      `${where}: output_type: ${JSON.stringify(outputType)} is not supported (offshoot scores multiple_choice and loglikelihood tasks)`,
    );
  }
  if (cfg.num_fewshot !== undefined && cfg.num_fewshot !== null && cfg.num_fewshot !== 0) {
    throw new TaskError(`${where}: num_fewshot: ${JSON.stringify(cfg.num_fewshot)}: offshoot scores zero-shot only`);
  }
  if (cfg.repeats !== undefined && cfg.repeats !== 1)
    throw new TaskError(`${where}: repeats: ${JSON.stringify(cfg.repeats)}: only 1 is supported`);
  if (cfg.doc_to_text === undefined || cfg.doc_to_text === null) throw new TaskError(`${where}: doc_to_text: missing`);
  if (cfg.doc_to_target === undefined || cfg.doc_to_target === null)
    throw new TaskError(`${where}: doc_to_target: missing`);
  if (outputType === 'multiple_choice' && (cfg.doc_to_choice === undefined || cfg.doc_to_choice === null)) {
    throw new TaskError(`${where}: doc_to_choice: missing (a multiple_choice task needs its choices)`);
  }
  const metrics = parseMetrics(cfg, outputType, where);
  const { split, files } = splitFiles(cfg, where, options.cwd ?? process.cwd());
  const field = (cfg.dataset_kwargs as Record<string, unknown> | undefined)?.field;
  let rows = readRows(files, typeof field === 'string' ? field : undefined);
  if (options.limit !== undefined) rows = rows.slice(0, options.limit);
  if (rows.length === 0) throw new TaskError(`${where}: split "${split}" has no documents (${files.join(', ')})`);
  return { name, file, outputType, split, dataFiles: files, metrics, docs: buildDocs(cfg, outputType, rows, where) };
}

/**
 * Task files named by a list: each entry a task YAML, or a folder whose *.yaml / *.yml files are
 * each a task. Task names must differ.
 */
export function loadTasks(files: string[], options: LoadTaskOptions = {}): Task[] {
  const yamls: string[] = [];
  for (const f of files) {
    let st: fs.Stats;
    try {
      st = fs.statSync(f);
    } catch {
      throw new TaskError(`${f}: no such task file or folder`);
    }
    if (st.isDirectory()) {
      const inside = fs
        .readdirSync(f)
        .filter((n) => /\.ya?ml$/.test(n))
        .sort();
      if (!inside.length) throw new TaskError(`${f}: folder holds no task YAML files`);
      yamls.push(...inside.map((n) => path.join(f, n)));
    } else yamls.push(f);
  }
  const tasks = yamls.map((f) => loadTaskFile(f, options));
  const seen = new Map<string, string>();
  for (const t of tasks) {
    const other = seen.get(t.name);
    if (other) throw new TaskError(`task "${t.name}" is defined twice: ${other} and ${t.file}`);
    seen.set(t.name, t.file);
  }
  return tasks;
}
