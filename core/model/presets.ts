/**
 * Named model shapes. `vocabSize` comes from the tokenizer unless the preset fixes it (Pythia's).
 */
import { type NeoXConfig, uniformConfig } from './config.js';

export interface ModelPreset {
  description: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize?: number;
  maxPositions: number;
  /** Fixed vocabulary (Pythia's padded 50304); otherwise the tokenizer's. */
  vocabSize?: number;
}

export const MODEL_PRESETS: Record<string, ModelPreset> = {
  tiny: {
    description: 'test shape: 2 layers, width 32, 4 heads',
    hiddenSize: 32,
    numLayers: 2,
    numHeads: 4,
    maxPositions: 256,
  },
  'sotu-teacher': {
    description: 'the embedded default teacher: 4 layers, width 128, 8 heads (~1M parameters with a 1024 vocabulary)',
    hiddenSize: 128,
    numLayers: 4,
    numHeads: 8,
    maxPositions: 256,
  },
  '10m': {
    description: 'about 10M parameters with a 1024 vocabulary: 6 layers, width 384, 6 heads',
    hiddenSize: 384,
    numLayers: 6,
    numHeads: 6,
    maxPositions: 512,
  },
  'pythia-70m': {
    description: "Pythia-70M's shape",
    hiddenSize: 512,
    numLayers: 6,
    numHeads: 8,
    maxPositions: 2048,
    vocabSize: 50304,
  },
  'pythia-160m': {
    description: "Pythia-160M's shape",
    hiddenSize: 768,
    numLayers: 12,
    numHeads: 12,
    maxPositions: 2048,
    vocabSize: 50304,
  },
  'pythia-410m': {
    description: "Pythia-410M's shape",
    hiddenSize: 1024,
    numLayers: 24,
    numHeads: 16,
    maxPositions: 2048,
    vocabSize: 50304,
  },
};

/** The config of a preset, with the tokenizer's vocabulary unless the preset fixes one. */
export function presetConfig(name: string, vocabSize: number): NeoXConfig {
  const p = MODEL_PRESETS[name];
  if (!p)
    throw new Error(
      `model preset: unknown ${JSON.stringify(name)}; expected one of ${Object.keys(MODEL_PRESETS).join(', ')}`,
    );
  return uniformConfig({
    vocabSize: p.vocabSize ?? vocabSize,
    hiddenSize: p.hiddenSize,
    numLayers: p.numLayers,
    numHeads: p.numHeads,
    intermediateSize: p.intermediateSize,
    maxPositions: p.maxPositions,
  });
}
