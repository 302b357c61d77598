/**
 * The checkpoint writer's thread (CheckpointWriter in checkpoint.ts starts it): writes each checkpoint
 * it is sent with saveCheckpoint, in the order sent, while the training thread goes on.
 *
 * Messages in:  { id, dir, config, tensors, options }.
 * Messages out: { id, hash } or { id, error: {message, name} } per checkpoint.
 */
import { parentPort } from 'node:worker_threads';

import { type SaveOptions, saveCheckpoint } from './checkpoint.js';
import type { NeoXConfig } from './config.js';
import type { HostTensor } from './safetensors.js';

interface Job {
  id: number;
  dir: string;
  config: NeoXConfig;
  tensors: Map<string, HostTensor>;
  options: SaveOptions;
}

const port = parentPort!;
let queue = Promise.resolve();
port.on('message', (job: Job) => {
  queue = queue.then(async () => {
    try {
      port.postMessage({ id: job.id, hash: await saveCheckpoint(job.dir, job.config, job.tensors, job.options) });
    } catch (err) {
      port.postMessage({ id: job.id, error: { message: (err as Error).message, name: (err as Error).name } });
    }
  });
});
