/**
 * How the cuda backend stores a tensor's elements on the device. tfjs sees float32, int32 and bool;
 * a float32 tensor may be stored as bf16 (activations in mixed precision), which only the backend
 * knows: every kernel reads either, and reading a tensor back converts to float32.
 */
export type Storage = 'f32' | 'bf16' | 'i32' | 'u8';

export function bytesPer(s: Storage): number {
  return s === 'f32' || s === 'i32' ? 4 : s === 'bf16' ? 2 : 1;
}

/** The storage a tfjs dtype is written with. */
export function storageOf(dtype: string): Storage {
  switch (dtype) {
    case 'float32':
      return 'f32';
    case 'int32':
      return 'i32';
    case 'bool':
      return 'u8';
    default:
      throw new Error(`the cuda backend does not store ${dtype} tensors on the device`);
  }
}

/** bf16 bits → float32 values. */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bits[i] << 16;
  return new Float32Array(out.buffer);
}

/** float32 values → bf16 bits, rounded to nearest even (as __float2bfloat16_rn). */
export function f32ToBf16(values: Float32Array): Uint16Array {
  const u = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < u.length; i++) {
    const x = u[i];
    if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0)
      out[i] = (x >>> 16) | 0x40; // NaN stays NaN
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}
