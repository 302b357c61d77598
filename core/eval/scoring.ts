/**
 * Log-likelihood scoring of task requests with a GPT-NeoX on any backend, computed as
 * lm-evaluation-harness's `--model hf` computes it, and the task metrics:
 *
 * - Encoding (lm-eval's TemplateLM._encode_pair): trailing whitespace of the context moves to the
 *   front of the continuation; the continuation's tokens are those of encode(context +
 *   continuation) after the first len(encode(context)); an empty context is the end-of-text token.
 * - Scoring (HFLM._loglikelihood_tokens): the model reads (context + continuation)[−(n+1):][:−1]
 *   (n = the model's context length); the log-softmax of the positions that predict the
 *   continuation's tokens is summed, and `greedy` says whether argmax gives every one of them.
 * - Metrics (ConfigurableTask.process_results): acc = argmax of the log-likelihoods, acc_norm =
 *   argmax of log-likelihood / the choice's length in characters (Python's len: code points),
 *   acc_bytes = the same per UTF-8 byte, exact_match = greedy decoding gives the gold choice; all
 *   averaged over documents, with the standard error of the mean. loglikelihood tasks: perplexity =
 *   exp(−mean log-likelihood) and acc = mean of greedy.
 */
import type { Tokenizer } from '../data/index.js';
import type { GPTNeoX } from '../model/index.js';
import * as tf from '../model/tfjs.js';
import { type Task, TaskError, type TaskMetric, type TaskRequest } from './tasks.js';
import { pythonLength, trailingSpaces } from './template.js';

export interface Loglikelihood {
  /** Sum of the continuation tokens' log-probabilities (natural log). */
  logLikelihood: number;
  /** True when greedy decoding would produce the whole continuation. */
  greedy: boolean;
}

export interface EncodedRequest {
  context: number[];
  continuation: number[];
}

/** The tokens of a request, as lm-eval encodes a (context, continuation) pair. */
export function encodeRequest(tokenizer: Tokenizer, request: TaskRequest): EncodedRequest {
  let { context, continuation } = request;
  if (context === '') {
    const ids = tokenizer.encode(continuation);
    const prefix = tokenizer.endOfTextId;
    if (prefix === null)
      throw new TaskError(
        `an empty context is conditioned on the end-of-text token, and tokenizer ${tokenizer.name} has none`,
      );
    return prefix !== ids[0]
      ? { context: [prefix], continuation: ids }
      : { context: ids.slice(0, 1), continuation: ids.slice(1) };
  }
  const spaces = trailingSpaces(context);
  if (spaces > 0) {
    continuation = context.slice(context.length - spaces) + continuation;
    context = context.slice(0, context.length - spaces);
  }
  const whole = tokenizer.encode(context + continuation);
  const ctx = tokenizer.encode(context);
  return { context: ctx, continuation: whole.slice(ctx.length) };
}

export interface ScoreOptions {
  /** Sequences per forward pass. Default 8. */
  batchSize?: number;
  /** Called after each forward pass with requests done and in all. */
  onProgress?: (done: number, total: number) => void;
}

/** Logit values a forward pass may hold at once (rows × length × vocabulary): 256 MiB of float32. */
const LOGIT_BUDGET = 64 * 1024 * 1024;

/** Log-likelihood of each encoded request's continuation given its context. */
export async function scoreEncoded(
  model: GPTNeoX,
  requests: EncodedRequest[],
  options: ScoreOptions = {},
): Promise<Loglikelihood[]> {
  const maxLength = model.config.maxPositions;
  const vocab = model.config.vocabSize;
  const inputs = requests.map((r, i) => {
    if (r.context.length === 0) throw new TaskError(`request ${i}: the context encodes to no tokens`);
    if (r.continuation.length === 0) throw new TaskError(`request ${i}: the continuation encodes to no tokens`);
    if (r.continuation.length > maxLength)
      throw new TaskError(
        `request ${i}: the continuation has ${r.continuation.length} tokens, more than the model's context of ${maxLength}`,
      );
    for (const id of [...r.context, ...r.continuation]) {
      if (!Number.isInteger(id) || id < 0 || id >= vocab)
        throw new TaskError(`request ${i}: token id ${id} is outside the model's vocabulary [0, ${vocab})`);
    }
    // Left-truncated to the model's context, the last token only predicted.
    return [...r.context, ...r.continuation].slice(-(maxLength + 1)).slice(0, -1);
  });
  // Longest first, so each batch pads little.
  const order = inputs.map((_, i) => i).sort((a, b) => inputs[b].length - inputs[a].length || a - b);
  const out = new Array<Loglikelihood>(requests.length);
  const batchSize = options.batchSize ?? 8;
  let done = 0;
  while (done < order.length) {
    const width = inputs[order[done]].length;
    const rows = Math.max(1, Math.min(batchSize, Math.floor(LOGIT_BUDGET / (width * vocab)), order.length - done));
    const batch = order.slice(done, done + rows);
    const ids = new Int32Array(rows * width);
    const positions: number[] = [];
    const targets: number[] = [];
    batch.forEach((req, r) => {
      const input = inputs[req];
      ids.set(input, r * width);
      const cont = requests[req].continuation;
      // The last cont.length input positions predict the continuation's tokens.
      for (let j = 0; j < cont.length; j++) {
        positions.push(r * width + input.length - cont.length + j);
        targets.push(cont[j]);
      }
    });
    const [picked, argmax] = tf.tidy(() => {
      const logits = model.logits2d(tf.tensor2d(ids, [rows, width], 'int32'));
      const chosen = tf.gather(logits, tf.tensor1d(positions, 'int32'));
      const logp = tf.logSoftmax(chosen);
      const flat = targets.map((t, k) => k * vocab + t);
      return [tf.gather(tf.reshape(logp, [-1]), tf.tensor1d(flat, 'int32')), tf.argMax(chosen, 1)];
    });
    const lp = (await picked.data()) as Float32Array;
    const best = (await argmax.data()) as Int32Array;
    tf.dispose([picked, argmax]);
    let k = 0;
    for (const req of batch) {
      let sum = 0;
      let greedy = true;
      for (let j = 0; j < requests[req].continuation.length; j++, k++) {
        sum += lp[k];
        if (best[k] !== targets[k]) greedy = false;
      }
      out[req] = { logLikelihood: sum, greedy };
    }
    done += rows;
    options.onProgress?.(done, order.length);
  }
  return out;
}

/** numpy's argmax: the first maximum, or the first NaN when there is one. */
function argmax(values: number[]): number {
  let best = 0;
  for (let i = 0; i < values.length; i++) {
    if (Number.isNaN(values[i])) return i;
    if (values[i] > values[best]) best = i;
  }
  return best;
}

export interface MetricValue {
  value: number;
  /** Standard error of the mean (sample standard deviation / √n); null for perplexity or one document. */
  stderr: number | null;
}

export interface TaskScore {
  task: string;
  file: string;
  outputType: Task['outputType'];
  split: string;
  /** Documents scored. */
  docs: number;
  metrics: Partial<Record<TaskMetric, MetricValue>>;
  /** Documents whose target named no choice (scored wrong, as lm-eval does, which warns). */
  invalidGold: number;
}

/** One document's scores, for comparing with lm-eval's --log_samples. */
export interface DocScore {
  task: string;
  doc: number;
  /** Per request: [log-likelihood, greedy], lm-eval's `resps` order. */
  responses: [number, boolean][];
  gold: number | number[];
  /** Per-document metric values. */
  metrics: Partial<Record<TaskMetric, number>>;
}

function meanStderr(values: number[]): MetricValue {
  const n = values.length;
  const mean = values.reduce((a, b) => a + b, 0) / n;
  if (n < 2) return { value: mean, stderr: null };
  const variance = values.reduce((a, b) => a + (b - mean) ** 2, 0) / (n - 1);
  return { value: mean, stderr: Math.sqrt(variance) / Math.sqrt(n) };
}

const utf8 = new TextEncoder();

/** Per-document metric values of a task from its requests' log-likelihoods (lm-eval's process_results). */
function docMetrics(
  task: Task,
  doc: Task['docs'][number],
  results: Loglikelihood[],
): Partial<Record<TaskMetric, number>> {
  if (task.outputType === 'loglikelihood')
    return { perplexity: results[0].logLikelihood, acc: results[0].greedy ? 1 : 0 };
  const lls = results.map((r) => r.logLikelihood);
  const pred = argmax(lls);
  const predNorm = argmax(lls.map((ll, i) => ll / pythonLength(doc.choices[i])));
  const predBytes = argmax(lls.map((ll, i) => ll / utf8.encode(doc.choices[i]).length));
  // Python indexing: a negative gold counts from the end.
  const greedyAt = (i: number): boolean => results.at(i)?.greedy ?? false;
  const hit = (p: number): number => ((Array.isArray(doc.gold) ? doc.gold.includes(p) : p === doc.gold) ? 1 : 0);
  const exact = Array.isArray(doc.gold)
    ? doc.gold.some((g) => g !== -100 && greedyAt(g))
    : doc.gold !== -100 && greedyAt(doc.gold);
  return { acc: hit(pred), acc_norm: hit(predNorm), acc_bytes: hit(predBytes), exact_match: exact ? 1 : 0 };
}

export interface TaskEvaluation {
  scores: TaskScore[];
  samples: DocScore[];
}

/** Scores tasks with a model: every request of every task, then each task's metrics. */
export async function evaluateTasks(
  model: GPTNeoX,
  tokenizer: Tokenizer,
  tasks: Task[],
  options: ScoreOptions = {},
): Promise<TaskEvaluation> {
  const flat: { task: number; doc: number }[] = [];
  const encoded: EncodedRequest[] = [];
  tasks.forEach((task, t) =>
    task.docs.forEach((doc, d) => {
      for (const [r, request] of doc.requests.entries()) {
        const e = encodeRequest(tokenizer, request);
        const where = `${task.file} (task ${task.name}): document ${doc.index}, request ${r}`;
        if (e.context.length === 0)
          throw new TaskError(`${where}: the context ${JSON.stringify(request.context)} encodes to no tokens`);
        if (e.continuation.length === 0)
          throw new TaskError(
            `${where}: the continuation ${JSON.stringify(request.continuation)} encodes to no tokens`,
          );
        flat.push({ task: t, doc: d });
        encoded.push(e);
      }
    }),
  );
  const lls = await scoreEncoded(model, encoded, options);
  const byDoc = tasks.map((task) => task.docs.map(() => [] as Loglikelihood[]));
  flat.forEach((f, i) => byDoc[f.task][f.doc].push(lls[i]));
  const scores: TaskScore[] = [];
  const samples: DocScore[] = [];
  tasks.forEach((task, t) => {
    const perDoc = task.docs.map((doc, d) => docMetrics(task, doc, byDoc[t][d]));
    task.docs.forEach((doc, d) =>
      samples.push({
        task: task.name,
        doc: doc.index,
        responses: byDoc[t][d].map((r) => [r.logLikelihood, r.greedy]),
        gold: doc.gold,
        metrics: perDoc[d],
      }),
    );
    const metrics: TaskScore['metrics'] = {};
    for (const m of task.metrics) {
      const values = perDoc.map((v) => v[m]!);
      metrics[m] =
        m === 'perplexity'
          ? { value: Math.exp(-values.reduce((a, b) => a + b, 0) / values.length), stderr: null }
          : meanStderr(values);
    }
    const invalidGold = task.docs.filter((d) =>
      Array.isArray(d.gold) ? d.gold.includes(-100) : d.gold === -100,
    ).length;
    scores.push({
      task: task.name,
      file: task.file,
      outputType: task.outputType,
      split: task.split,
      docs: task.docs.length,
      metrics,
      invalidGold,
    });
  });
  return { scores, samples };
}
