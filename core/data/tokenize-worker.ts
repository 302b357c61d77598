/**
 * A tokenisation worker thread (store.ts starts them): builds the tokenizer from the recipe it is
 * given, then encodes the parts it is sent, one at a time, each into its shard.
 *
 * Messages in:  { recipe } once, then { task } per part.
 * Messages out: { progress: {bytes, tokens} } now and then, { result } or { error: {message, name} } per task.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { type EncodeTask, type TokenizerRecipe, encodePart, tokenizerFromRecipe } from './encode-part.js';

const recipe = (workerData as { recipe: TokenizerRecipe }).recipe;
const tokenizer = tokenizerFromRecipe(recipe);
const port = parentPort!;

port.on('message', (msg: { task: EncodeTask }) => {
  let pending = { bytes: 0, tokens: 0 };
  let last = 0;
  encodePart(msg.task, tokenizer, recipe, (d) => {
    pending.bytes += d.bytes;
    pending.tokens += d.tokens;
    const now = performance.now();
    if (now - last > 200) {
      port.postMessage({ progress: pending });
      pending = { bytes: 0, tokens: 0 };
      last = now;
    }
  }).then(
    (result) => {
      port.postMessage({ progress: pending });
      port.postMessage({ result });
    },
    (err: Error) => port.postMessage({ error: { message: err.message, name: err.name } }),
  );
});
port.postMessage({ ready: true });
