/**
 * Hugging Face checkpoint directories: config.json plus model.safetensors (or a sharded
 * model.safetensors.index.json), optionally tokenizer.json. offshoot writes the same layout, atomically,
 * with a manifest (offshoot-checkpoint.json) holding the content hash.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Worker } from 'node:worker_threads';

import { startModuleWorker } from '../worker-thread.js';
import { writeDirAtomic, writeFileAtomicSync } from '../atomic.js';
import {
  ConfigError,
  type NeoXConfig,
  configFromHF,
  configToHF,
  expectedShapes,
  transformersIncompatibility,
} from './config.js';
import {
  type HostTensor,
  SafetensorsError,
  type TensorToWrite,
  readHeader,
  readTensor,
  verifyDataHash,
  writeSafetensors,
} from './safetensors.js';

export const MANIFEST_FILE = 'offshoot-checkpoint.json';

export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

export interface LoadedCheckpoint {
  dir: string;
  config: NeoXConfig;
  /** The raw config.json object (for fields offshoot does not model). */
  rawConfig: Record<string, unknown>;
  tensors: Map<string, HostTensor>;
  /** Content hash of the weights: the manifest's when present, else computed from the weight files. */
  hash: string;
}

function readJson(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new CheckpointError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('not a JSON object');
    return value;
  } catch (err) {
    throw new CheckpointError(`${file}: invalid JSON (${(err as Error).message})`);
  }
}

function sha256File(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** The weight files of a checkpoint directory, in a stable order. */
export function weightFiles(dir: string): string[] {
  const single = path.join(dir, 'model.safetensors');
  const index = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(index)) {
    const raw = readJson(index);
    const map = raw.weight_map as Record<string, string> | undefined;
    if (!map || typeof map !== 'object') throw new CheckpointError(`${index}: missing "weight_map"`);
    return [...new Set(Object.values(map))].sort().map((f) => path.join(dir, f));
  }
  if (fs.existsSync(single)) return [single];
  if (!fs.existsSync(dir)) throw new CheckpointError(`${dir}: checkpoint directory does not exist`);
  throw new CheckpointError(
    `${dir}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)`,
  );
}

/** Content hash of a checkpoint's weights: sha256 over each weight file's name and sha256. */
export function computeCheckpointHash(dir: string): string {
  const h = createHash('sha256');
  for (const file of weightFiles(dir)) h.update(`${path.basename(file)}:${sha256File(file)}\n`);
  return h.digest('hex');
}

/** Reads only config.json of a checkpoint. */
export function loadConfig(dir: string): NeoXConfig {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new CheckpointError(`${dir}: no config.json`);
  return configFromHF(readJson(file), file);
}

export interface LoadOptions {
  /** Check each offshoot-written file's data hash (reads every byte twice). Default true. */
  verify?: boolean;
}

export function loadCheckpoint(dir: string, options: LoadOptions = {}): LoadedCheckpoint {
  const configFile = path.join(dir, 'config.json');
  if (!fs.existsSync(configFile)) {
    throw new CheckpointError(
      fs.existsSync(dir) ? `${dir}: no config.json` : `${dir}: checkpoint directory does not exist`,
    );
  }
  const rawConfig = readJson(configFile);
  let config: NeoXConfig;
  try {
    config = configFromHF(rawConfig, configFile);
  } catch (err) {
    if (err instanceof ConfigError) throw new CheckpointError(err.message);
    throw err;
  }
  const expected = expectedShapes(config);
  const tensors = new Map<string, HostTensor>();
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  const sharded = fs.existsSync(indexFile);
  const weightMap = sharded ? ((readJson(indexFile).weight_map ?? {}) as Record<string, string>) : null;
  for (const file of weightFiles(dir)) {
    const header = readHeader(file);
    if (options.verify !== false && !verifyDataHash(header)) {
      throw new SafetensorsError(
        `${file}: data does not match the sha256 recorded when it was written; the file is corrupt`,
      );
    }
    for (const [name, entry] of header.tensors) {
      if (weightMap && weightMap[name] !== path.basename(file)) continue;
      const shape = expected.get(name);
      if (!shape) continue; // e.g. rotary inv_freq buffers some exporters include
      if (entry.shape.length !== shape.length || entry.shape.some((d, i) => d !== shape[i])) {
        throw new CheckpointError(
          `${file}: tensor "${name}" has shape ${JSON.stringify(entry.shape)} but ${configFile} implies ${JSON.stringify(shape)}`,
        );
      }
      tensors.set(name, readTensor(header, name));
    }
  }
  for (const [name, shape] of expected) {
    if (!tensors.has(name)) {
      throw new CheckpointError(
        `${dir}: missing tensor "${name}" (shape ${JSON.stringify(shape)}) required by config.json`,
      );
    }
  }
  return { dir, config, rawConfig, tensors, hash: checkpointHash(dir) };
}

/** A checkpoint's content hash without loading it: its manifest's, else computed from the weight files. */
export function checkpointHash(dir: string): string {
  const manifestFile = path.join(dir, MANIFEST_FILE);
  return fs.existsSync(manifestFile) ? String(readJson(manifestFile).hash) : computeCheckpointHash(dir);
}

export type SaveDtype = 'float32' | 'bfloat16';

export interface SaveOptions {
  dtype?: SaveDtype;
  /** Extra files to place in the directory (name → content), e.g. tokenizer.json, trainer state. */
  extraFiles?: Record<string, string | Buffer>;
  /** Extra safetensors files (name → tensors), e.g. optimiser state; written in f32. */
  extraTensors?: Record<string, Map<string, HostTensor>>;
  /** Fail instead of writing `offshoot` config keys when transformers could not load the result. */
  requireTransformersCompatible?: boolean;
}

/**
 * Writes a checkpoint directory atomically (built in a temporary sibling, then swapped in) and
 * returns its content hash.
 */
export async function saveCheckpoint(
  dir: string,
  config: NeoXConfig,
  tensors: Map<string, HostTensor>,
  options: SaveOptions = {},
): Promise<string> {
  const dtype = options.dtype ?? 'float32';
  if (options.requireTransformersCompatible) {
    const why = transformersIncompatibility(config);
    if (why)
      throw new CheckpointError(
        `cannot export for plain transformers: ${why} (\`offshoot export\` writes it zero-padded)`,
      );
  }
  const ordered = new Map<string, TensorToWrite>();
  for (const [name, shape] of expectedShapes(config)) {
    const t = tensors.get(name);
    if (!t) throw new CheckpointError(`cannot save ${dir}: missing tensor "${name}"`);
    if (t.shape.some((d, i) => d !== shape[i]) || t.shape.length !== shape.length) {
      throw new CheckpointError(
        `cannot save ${dir}: tensor "${name}" has shape ${JSON.stringify(t.shape)}, expected ${JSON.stringify(shape)}`,
      );
    }
    ordered.set(name, { shape, data: t.data, dtype: dtype === 'bfloat16' ? 'BF16' : 'F32' });
  }
  let hash = '';
  await writeDirAtomic(dir, (tmp) => {
    writeFileAtomicSync(path.join(tmp, 'config.json'), `${JSON.stringify(configToHF(config, dtype), null, 2)}\n`);
    writeSafetensors(path.join(tmp, 'model.safetensors'), ordered);
    for (const [name, tensorsOfFile] of Object.entries(options.extraTensors ?? {})) {
      const m = new Map<string, TensorToWrite>();
      for (const [k, t] of tensorsOfFile)
        m.set(k, { shape: t.shape, data: t.data, dtype: t.dtype === 'int32' ? 'I32' : 'F32' });
      writeSafetensors(path.join(tmp, name), m);
    }
    for (const [name, content] of Object.entries(options.extraFiles ?? {})) {
      writeFileAtomicSync(path.join(tmp, name), content);
    }
    hash = computeCheckpointHash(tmp);
    writeFileAtomicSync(path.join(tmp, MANIFEST_FILE), `${JSON.stringify({ format: 1, hash, dtype }, null, 2)}\n`);
  });
  return hash;
}

/**
 * Writes checkpoints (saveCheckpoint) on a thread of its own, one at a time in the order given, so
 * that training goes on while a checkpoint's files are encoded, hashed, written and synced. The
 * tensors go to that thread when `save` is called (copied, or handed over). The thread starts with the
 * first save and does not keep the process alive while idle.
 */
export class CheckpointWriter {
  private worker?: Worker;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (hash: string) => void; reject: (err: Error) => void }>();

  /**
   * Resolves to the checkpoint's content hash once its directory is in place. `handOver`: the tensors'
   * memory moves to the thread instead of being copied, and the caller's arrays are left empty (for
   * arrays nothing else holds, such as a GPU backend's read-backs).
   */
  save(
    dir: string,
    config: NeoXConfig,
    tensors: Map<string, HostTensor>,
    options: SaveOptions = {},
    handOver = false,
  ): Promise<string> {
    const worker = this.start();
    const id = this.nextId++;
    const buffers = new Set<ArrayBuffer>();
    if (handOver)
      for (const m of [tensors, ...Object.values(options.extraTensors ?? {})])
        for (const t of m.values()) buffers.add(t.data.buffer as ArrayBuffer);
    return new Promise<string>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      worker.ref();
      worker.postMessage({ id, dir, config, tensors, options }, [...buffers]);
    });
  }

  /** Stops the thread; a checkpoint still being written is abandoned (its target stays as it was). */
  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    await worker?.terminate();
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = startModuleWorker(import.meta.url, 'checkpoint-worker');
    const failAll = (err: Error) => {
      if (this.worker === worker) this.worker = undefined;
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    };
    worker.on('message', (m: { id: number; hash?: string; error?: { message: string; name: string } }) => {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.error)
        w.reject(
          m.error.name === 'CheckpointError' ? new CheckpointError(m.error.message) : new Error(m.error.message),
        );
      else w.resolve(m.hash!);
      if (this.waiting.size === 0) worker.unref();
    });
    worker.on('error', (err) => failAll(new Error(`checkpoint writer: ${err.message}`)));
    worker.on('exit', (code) => failAll(new Error(`checkpoint writer: its thread exited (code ${code})`)));
    this.worker = worker;
    return worker;
  }
}
