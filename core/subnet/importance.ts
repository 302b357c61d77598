/**
 * Importance scores for importance-ranked extraction (Minitron-style activation magnitudes) and block
 * importance for layer choice, from one forward pass of the teacher over a calibration batch.
 *
 *   head h of layer l:      mean over tokens of ‖attention output of h‖₂ (before attention.dense)
 *   MLP neuron j of layer l: mean over tokens of |GELU activation j|
 *   embedding channel c:    Σ over layers of mean over tokens |input_layernorm_l(x_l)_c|, plus the same
 *                           for final_layer_norm(h_L) (the LayerNorm outputs, as Minitron scores them)
 *   layer l:                mean over tokens of 1 − cos(x_l, x_{l+1}) (block input vs block output;
 *                           ShortGPT's block importance)
 */
import { type Batch, type ForwardTrace, type GPTNeoX, layerNorm } from '../model/index.js';
import * as tf from '../model/tfjs.js';
import type { ImportanceScores } from './spec.js';

/** Scores of every head, neuron, channel and layer of `model` on the calibration batch. */
export async function importanceScores(
  model: GPTNeoX,
  batch: Pick<Batch, 'input' | 'batchSize' | 'seqLen'>,
): Promise<ImportanceScores> {
  const trace: ForwardTrace = { layerInputs: [], layerOutputs: [], headOutputs: [], mlpActivations: [] };
  const ids = tf.tensor2d(batch.input, [batch.batchSize, batch.seqLen], 'int32');
  try {
    const scores = tf.tidy(() => {
      const final = model.hidden(ids, trace);
      const L = model.config.numLayers;
      const heads: tf.Tensor[] = [];
      const mlp: tf.Tensor[] = [];
      const layers: tf.Tensor[] = [];
      let embedding = tf.mean(tf.abs(final), 0);
      for (let l = 0; l < L; l++) {
        heads.push(tf.mean(tf.norm(trace.headOutputs![l], 'euclidean', 2), 0));
        mlp.push(tf.mean(tf.abs(trace.mlpActivations![l]), 0));
        const x = trace.layerInputs![l];
        const y = trace.layerOutputs![l];
        const p = `gpt_neox.layers.${l}.input_layernorm`;
        const normed = layerNorm(x, model.param(`${p}.weight`), model.param(`${p}.bias`), model.config.layerNormEps);
        embedding = tf.add(embedding, tf.mean(tf.abs(normed), 0));
        const dot = tf.sum(tf.mul(x, y), 1);
        const norms = tf.mul(tf.norm(x, 'euclidean', 1), tf.norm(y, 'euclidean', 1));
        layers.push(tf.mean(tf.sub(1, tf.div(dot, tf.maximum(norms, 1e-12)))));
      }
      return { heads, mlp, layers, embedding };
    });
    const read = async (t: tf.Tensor) => Array.from(await t.data());
    const result: ImportanceScores = {
      heads: await Promise.all(scores.heads.map(read)),
      mlp: await Promise.all(scores.mlp.map(read)),
      embedding: await read(scores.embedding),
      layers: (await Promise.all(scores.layers.map(read))).map((v) => v[0]),
    };
    tf.dispose([...scores.heads, ...scores.mlp, ...scores.layers, scores.embedding]);
    return result;
  } finally {
    ids.dispose();
    tf.dispose([...trace.layerInputs!, ...trace.layerOutputs!, ...trace.headOutputs!, ...trace.mlpActivations!]);
  }
}
