import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { beforeAll, describe, expect, it } from 'vitest';

import {
  CheckpointWriter,
  GPTNeoX,
  configToHF,
  loadCheckpoint,
  parameterCount,
  readSafetensors,
  saveCheckpoint,
  uniformConfig,
  writeSafetensors,
} from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { tinyConfig } from './helpers/tiny.js';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-ckpt-'));
}

async function savedTiny(dir: string): Promise<{ model: GPTNeoX; hash: string }> {
  const config = tinyConfig();
  const model = GPTNeoX.random(config, 3);
  const hash = await saveCheckpoint(dir, config, await model.toHost());
  return { model, hash };
}

describe('safetensors', () => {
  it('round-trips f32 exactly and bf16/f16 to within their precision', () => {
    const dir = tmpDir();
    const data = Float32Array.from([0, 1, -2.5, 3.25159, 1e-3, -65504, 1 / 3]);
    for (const dtype of ['F32', 'BF16', 'F16'] as const) {
      const file = path.join(dir, `${dtype}.safetensors`);
      writeSafetensors(file, new Map([['x', { shape: [7], data, dtype }]]));
      const back = readSafetensors(file).tensors.get('x')!;
      const tol = dtype === 'F32' ? 0 : dtype === 'BF16' ? 2 ** -8 : 2 ** -11;
      data.forEach((v, i) => expect(Math.abs(back.data[i] - v)).toBeLessThanOrEqual(Math.abs(v) * tol));
    }
  });

  it('names the file and problem for a header length past the end', () => {
    const file = path.join(tmpDir(), 'bad.safetensors');
    const buf = Buffer.alloc(16);
    buf.writeBigUInt64LE(1000n);
    fs.writeFileSync(file, buf);
    expect(() => readSafetensors(file)).toThrow(
      new RegExp(`${file.replace(/[.]/g, '\\.')}: header length 1000 runs past the end`),
    );
  });

  it('rejects an unsupported dtype naming the tensor', () => {
    const file = path.join(tmpDir(), 'u8.safetensors');
    const header = Buffer.from(JSON.stringify({ w: { dtype: 'U8', shape: [2], data_offsets: [0, 2] } }));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    fs.writeFileSync(file, Buffer.concat([len, header, Buffer.alloc(2)]));
    expect(() => readSafetensors(file)).toThrow(/tensor "w" has unsupported dtype "U8"/);
  });

  it('detects a truncated data section and a too-short file', () => {
    const dir = tmpDir();
    const file = path.join(dir, 't.safetensors');
    writeSafetensors(file, new Map([['w', { shape: [64], data: new Float32Array(64), dtype: 'F32' as const }]]));
    const full = fs.readFileSync(file);
    fs.writeFileSync(file, full.subarray(0, full.length - 10));
    expect(() => readSafetensors(file)).toThrow(/tensor "w" ends at byte 256 .* truncated/);
    fs.writeFileSync(file, full.subarray(0, 5));
    expect(() => readSafetensors(file)).toThrow(/truncated: 5 bytes/);
  });
});

describe('checkpoints', () => {
  it('save and load give back the same tensors, with a stable content hash', async () => {
    const dir = path.join(tmpDir(), 'ckpt');
    const { model, hash } = await savedTiny(dir);
    const loaded = loadCheckpoint(dir);
    expect(loaded.hash).toBe(hash);
    expect(loaded.config).toEqual(model.config);
    const host = await model.toHost();
    for (const [name, t] of host) expect(Array.from(loaded.tensors.get(name)!.data)).toEqual(Array.from(t.data));
    let n = 0;
    for (const t of loaded.tensors.values()) n += t.data.length;
    expect(n).toBe(parameterCount(model.config));
    // Same content gives the same hash.
    const again = await saveCheckpoint(path.join(path.dirname(dir), 'again'), model.config, host);
    expect(again).toBe(hash);
    model.dispose();
  });

  it('detects corruption inside the data through the recorded hash', async () => {
    const dir = path.join(tmpDir(), 'ckpt');
    (await savedTiny(dir)).model.dispose();
    const file = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(file);
    buf[buf.length - 3] ^= 0xff;
    fs.writeFileSync(file, buf);
    expect(() => loadCheckpoint(dir)).toThrow(/model\.safetensors: data does not match the sha256 .* corrupt/);
  });

  it('rejects a tensor whose shape disagrees with config.json, naming both', async () => {
    const dir = path.join(tmpDir(), 'ckpt');
    (await savedTiny(dir)).model.dispose();
    const cfgFile = path.join(dir, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    cfg.intermediate_size = 100;
    fs.writeFileSync(cfgFile, JSON.stringify(cfg));
    expect(() => loadCheckpoint(dir)).toThrow(
      /tensor "gpt_neox\.layers\.0\.mlp\.dense_h_to_4h\.weight" has shape \[128,32\] but .*config\.json implies \[100,32\]/,
    );
  });

  it('rejects other architectures and missing tensors', async () => {
    const dir = path.join(tmpDir(), 'ckpt');
    (await savedTiny(dir)).model.dispose();
    const cfgFile = path.join(dir, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, model_type: 'llama', architectures: ['LlamaForCausalLM'] }));
    expect(() => loadCheckpoint(dir)).toThrow(/model_type is "llama"; offshoot supports only GPT-NeoX/);
    fs.writeFileSync(cfgFile, JSON.stringify({ ...cfg, num_hidden_layers: 3 }));
    expect(() => loadCheckpoint(dir)).toThrow(/missing tensor "gpt_neox\.layers\.2\..*required by config\.json/);
    expect(() => loadCheckpoint(path.join(dir, 'nope'))).toThrow(/checkpoint directory does not exist/);
  });

  it('a failed save leaves the existing checkpoint intact', async () => {
    const dir = path.join(tmpDir(), 'ckpt');
    const { model, hash } = await savedTiny(dir);
    const host = await model.toHost();
    host.delete('embed_out.weight');
    await expect(saveCheckpoint(dir, model.config, host)).rejects.toThrow(/missing tensor "embed_out.weight"/);
    expect(loadCheckpoint(dir).hash).toBe(hash);
    expect(fs.readdirSync(path.dirname(dir))).toEqual(['ckpt']);
    model.dispose();
  });

  it("the writer's thread writes saveCheckpoint's checkpoint, from copies or handed-over arrays, and names a failure", async () => {
    const root = tmpDir();
    const { model, hash } = await savedTiny(path.join(root, 'direct'));
    const writer = new CheckpointWriter();
    try {
      const copied = await model.toHost();
      expect(await writer.save(path.join(root, 'copied'), model.config, copied)).toBe(hash);
      expect([...copied.values()].every((t) => t.data.length > 0)).toBe(true);
      const own = new Map([...copied].map(([name, t]) => [name, { ...t, data: Float32Array.from(t.data) }]));
      const pending = writer.save(path.join(root, 'handed'), model.config, own, {}, true);
      // Handed over: the caller's arrays are empty at once.
      expect([...own.values()].every((t) => t.data.length === 0)).toBe(true);
      expect(await pending).toBe(hash);
      expect(loadCheckpoint(path.join(root, 'handed')).hash).toBe(hash);
      copied.delete('embed_out.weight');
      await expect(writer.save(path.join(root, 'direct'), model.config, copied)).rejects.toThrow(
        /missing tensor "embed_out.weight"/,
      );
      expect(loadCheckpoint(path.join(root, 'direct')).hash).toBe(hash);
    } finally {
      await writer.close();
      model.dispose();
    }
  });

  it('records non-uniform students under the offshoot key and refuses a plain-transformers export', async () => {
    const config = uniformConfig({ vocabSize: 40, hiddenSize: 24, numLayers: 2, numHeads: 3 });
    config.layers[1] = { numHeads: 2, intermediateSize: 50 };
    const hf = configToHF(config);
    expect(hf.offshoot).toEqual({
      head_size: 8,
      layers: [
        { num_heads: 3, intermediate_size: 96 },
        { num_heads: 2, intermediate_size: 50 },
      ],
    });
    const model = GPTNeoX.random(config, 1);
    const dir = path.join(tmpDir(), 'student');
    await saveCheckpoint(dir, config, await model.toHost());
    expect(loadCheckpoint(dir).config).toEqual(config);
    await expect(
      saveCheckpoint(path.join(dir, '..', 'plain'), config, await model.toHost(), {
        requireTransformersCompatible: true,
      }),
    ).rejects.toThrow(/cannot export for plain transformers: layer 1 has 2 heads and MLP 50/);
    model.dispose();
  });
});
