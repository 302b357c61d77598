/**
 * Extraction between checkpoint directories: teacher checkpoint + spec → dense student checkpoint
 * (Hugging Face layout, written atomically by saveCheckpoint), with the teacher's tokenizer.json and a
 * `subnet.json` recording the resolved spec, its hash and the teacher it came from.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import {
  type Batch,
  CheckpointError,
  GPTNeoX,
  type LoadedCheckpoint,
  MANIFEST_FILE,
  type NeoXConfig,
  type SaveDtype,
  loadCheckpoint,
  saveCheckpoint,
  transformersIncompatibility,
} from '../model/index.js';
import { type ExtractedModel, extractTensors } from './extract.js';
import { importanceScores } from './importance.js';
import { shapeParameters } from './count.js';
import {
  type CanonicalSpec,
  type HeadOrder,
  type ImportanceScores,
  type LayerOrder,
  type ResolveOptions,
  type SubnetSpec,
  canonicalHash,
  canonicalize,
  compactSpec,
} from './spec.js';

export const SUBNET_FILE = 'subnet.json';
const TOKENIZER_FILE = 'tokenizer.json';

export interface ExtractOptions {
  /** How counts of heads, neurons and channels become indices. Default first-k. */
  order?: HeadOrder;
  /** How a layer count becomes layers. Default first. */
  layers?: LayerOrder;
  /** Calibration batch for importance orderings (required when either is 'importance'). */
  calibration?: Pick<Batch, 'input' | 'batchSize' | 'seqLen'>;
  /** Scores computed before (instead of a calibration batch). */
  importance?: ImportanceScores;
}

/** True when the options need importance scores. */
export function needsImportance(options: Pick<ExtractOptions, 'order' | 'layers'>): boolean {
  return options.order === 'importance' || options.layers === 'importance';
}

/** Resolves the ordering options, computing importance scores from the teacher when needed. */
export async function resolveOptions(
  teacher: { config: NeoXConfig; tensors: LoadedCheckpoint['tensors'] },
  options: ExtractOptions,
  source = 'teacher',
): Promise<ResolveOptions> {
  const resolved: ResolveOptions = { order: options.order ?? 'first-k', layers: options.layers ?? 'first' };
  if (!needsImportance(resolved)) return resolved;
  if (options.importance) return { ...resolved, importance: options.importance };
  if (!options.calibration) throw new Error('importance ordering needs a calibration batch');
  const model = GPTNeoX.fromTensors(teacher.config, teacher.tensors, source);
  try {
    return { ...resolved, importance: await importanceScores(model, options.calibration) };
  } finally {
    model.dispose();
  }
}

/** The student of a spec from a loaded teacher. */
export async function extractFromTeacher(
  teacher: { config: NeoXConfig; tensors: LoadedCheckpoint['tensors'] },
  spec: unknown,
  options: ExtractOptions = {},
): Promise<ExtractedModel & { canonical: CanonicalSpec }> {
  const resolve = await resolveOptions(teacher, options);
  const canonical = canonicalize(spec, teacher.config, resolve);
  return { ...extractTensors(teacher.config, teacher.tensors, canonical), canonical };
}

export interface ExtractCheckpointOptions extends ExtractOptions {
  teacher: string;
  spec: unknown;
  out: string;
  /** Replace `out` when it holds a student checkpoint offshoot extracted (never anything else). */
  force?: boolean;
  /** tokenizer.json (or a folder holding one) to put in the student; default: the teacher's. */
  tokenizer?: string;
  /** Refuse (with the reason) when plain transformers could not load the student. */
  exportTransformers?: boolean;
  dtype?: SaveDtype;
}

/** A folder offshoot's extraction wrote: a checkpoint with its manifest and subnet.json. */
export function isExtractedStudent(dir: string): boolean {
  return (
    fs.existsSync(path.join(dir, MANIFEST_FILE)) &&
    fs.existsSync(path.join(dir, SUBNET_FILE)) &&
    fs.existsSync(path.join(dir, 'config.json'))
  );
}

/** The folder and every folder above it. */
function selfAndAncestors(dir: string): string[] {
  const out = [dir];
  for (let d = dir; path.dirname(d) !== d; d = path.dirname(d)) out.push(path.dirname(d));
  return out;
}

function realOrResolved(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/**
 * Where an extraction may write, checked before anything is read or written: a new or empty folder,
 * or — with `force` — a student checkpoint offshoot extracted. Never the teacher (nor a folder holding
 * it), the current folder, or anything else that exists: offshoot does not delete what it did not make.
 */
export function checkStudentOutput(out: string, teacher: string, force = false): void {
  const target = realOrResolved(out);
  if (selfAndAncestors(realOrResolved(teacher)).includes(target)) {
    throw new CheckpointError(
      `--out ${out}: that is the teacher ${teacher}${target === realOrResolved(teacher) ? '' : "'s folder or one above it"}; the student must go to a new folder`,
    );
  }
  if (selfAndAncestors(process.cwd()).includes(target))
    throw new CheckpointError(
      `--out ${out}: that is the current folder (or one above it); name a new folder for the student`,
    );
  if (!fs.existsSync(target)) return;
  if (!fs.statSync(target).isDirectory())
    throw new CheckpointError(`--out ${out}: exists and is not a folder; the student must go to a new folder`);
  const entries = fs.readdirSync(target);
  if (entries.length === 0) return;
  if (isExtractedStudent(target)) {
    if (force) return;
    throw new CheckpointError(
      `--out ${out}: holds a student checkpoint offshoot extracted; pass --force to replace it`,
    );
  }
  throw new CheckpointError(
    `--out ${out}: exists and is not empty (${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}: ${entries.slice(0, 3).join(', ')}${entries.length > 3 ? ', …' : ''}) and is not a student checkpoint offshoot extracted; offshoot replaces only those (with --force): name a new folder`,
  );
}

export interface SubnetRecord {
  format: 1;
  /** The resolved spec (compact: counts where first-k, explicit indices otherwise). */
  spec: SubnetSpec;
  hash: string;
  teacher: { dir: string; hash: string };
  order: HeadOrder;
  layers: LayerOrder;
  parameters: number;
}

export interface ExtractCheckpointResult {
  out: string;
  /** Whether the student got a tokenizer.json (the teacher's, or the one given). */
  tokenizer: boolean;
  /** Content hash of the written checkpoint. */
  checkpointHash: string;
  specHash: string;
  canonical: CanonicalSpec;
  spec: SubnetSpec;
  config: NeoXConfig;
  parameters: number;
  /** Why plain transformers cannot load it, or null. */
  transformersIncompatibility: string | null;
}

function tokenizerFile(fileOrDir: string): string {
  return fs.existsSync(fileOrDir) && fs.statSync(fileOrDir).isDirectory()
    ? path.join(fileOrDir, TOKENIZER_FILE)
    : fileOrDir;
}

/** Extracts a student checkpoint directory from a teacher checkpoint directory. */
export async function extractCheckpoint(options: ExtractCheckpointOptions): Promise<ExtractCheckpointResult> {
  checkStudentOutput(options.out, options.teacher, options.force);
  const teacher = loadCheckpoint(options.teacher);
  const student = await extractFromTeacher(teacher, options.spec, options);
  const specHash = canonicalHash(student.canonical);
  const parameters = shapeParameters(student.config);
  const record: SubnetRecord = {
    format: 1,
    spec: compactSpec(student.canonical),
    hash: specHash,
    teacher: { dir: path.resolve(options.teacher), hash: teacher.hash },
    order: options.order ?? 'first-k',
    layers: options.layers ?? 'first',
    parameters,
  };
  const extraFiles: Record<string, string | Buffer> = { [SUBNET_FILE]: `${JSON.stringify(record, null, 2)}\n` };
  const tokenizer = tokenizerFile(options.tokenizer ?? options.teacher);
  if (fs.existsSync(tokenizer)) extraFiles[TOKENIZER_FILE] = fs.readFileSync(tokenizer);
  else if (options.tokenizer) throw new CheckpointError(`tokenizer ${options.tokenizer}: no ${TOKENIZER_FILE} there`);
  const checkpointHash = await saveCheckpoint(options.out, student.config, student.tensors, {
    dtype: options.dtype,
    extraFiles,
    requireTransformersCompatible: options.exportTransformers,
  });
  return {
    out: options.out,
    tokenizer: TOKENIZER_FILE in extraFiles,
    checkpointHash,
    specHash,
    canonical: student.canonical,
    spec: record.spec,
    config: student.config,
    parameters,
    transformersIncompatibility: transformersIncompatibility(student.config),
  };
}
