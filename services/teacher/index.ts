/**
 * services/teacher: the teacher-logit gRPC service (docs/teacher-service.md) — the server that holds the
 * teacher and streams its top-k logits, and the client students train with.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { GPTNeoX, loadCheckpoint } from '../../core/model/index.js';
import { type TeacherServerOptions, TeacherServer } from './server.js';

export {
  SERVER_DEFAULTS,
  SERVICE_NAME,
  type ServerTlsOptions,
  type TeacherServerOptions,
  TeacherServer,
} from './server.js';
export {
  CLIENT_DEFAULTS,
  DEFAULT_TEACHER_WINDOW,
  type BackoffOptions,
  type ClientStats,
  type ClientTlsOptions,
  StreamingTeacher,
  type StreamingTeacherOptions,
  TeacherClient,
  type TeacherClientOptions,
  TeacherError,
  type TopKQuery,
  clientCredentials,
  topKTensors,
} from './client.js';
export {
  type TopKResult,
  type ValueEncodingName,
  decodeTopK,
  encodeTopK,
  float16Tolerance,
  fromFloat16,
  toFloat16,
} from './codec.js';
export { RequestError, TEMPERATURE_RANGE, type ValidRequest, validateRequest } from './validate.js';
export {
  IndexEncoding,
  InfoResponse,
  Metrics,
  StreamMetrics,
  TeacherLogitsClient,
  TeacherLogitsService,
  TopKRequest,
  TopKResponse,
  ValueEncoding,
} from '../../proto/gen/offshoot/teacher/v1/teacher.js';

export type ServeOptions = Omit<TeacherServerOptions, 'model' | 'modelName' | 'contentHash'> & { modelName?: string };

/** Loads a checkpoint (once) and serves it; resolves when the server listens. */
export async function serveCheckpoint(dir: string, options: ServeOptions = {}): Promise<TeacherServer> {
  const ckpt = loadCheckpoint(dir);
  const model = GPTNeoX.fromTensors(ckpt.config, ckpt.tensors, dir);
  const server = new TeacherServer({
    ...options,
    model,
    modelName: options.modelName ?? path.basename(path.resolve(dir)),
    contentHash: ckpt.hash,
  });
  try {
    await server.start();
  } catch (err) {
    server.forceShutdown();
    model.dispose();
    throw err;
  }
  return server;
}

/** Reads a PEM file for a TLS option, naming the option when it cannot. */
export function readPem(file: string, option: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(
      `${option} ${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
  }
}
