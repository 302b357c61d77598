/**
 * Arithmetic precision of training and inference: one setting (`--precision`, env OFFSHOOT_PRECISION).
 *
 * - `mixed` (the default): like PyTorch's autocast — matrix products take low-precision inputs and
 *   accumulate in f32; master weights, optimiser state, layer norms, softmax and losses stay f32.
 *   cuda: bf16 inputs, activations between products in bf16. webgpu: f16 inputs on the adapter's
 *   subgroup matrices where it offers them, with dynamic loss scaling (webgpu/half.ts), else f32.
 *   tensorflow, wasm and cpu run f32.
 * - `f32`: everything in f32 (parity checks against transformers, and bit-for-bit comparisons).
 */
export type Precision = 'f32' | 'mixed';
export const PRECISIONS: readonly Precision[] = ['mixed', 'f32'];

let override: Precision | null = null;

export function parsePrecision(s: string): Precision {
  const v = String(s).trim().toLowerCase();
  if ((PRECISIONS as readonly string[]).includes(v)) return v as Precision;
  throw new Error(`precision: invalid value ${JSON.stringify(s)}; expected one of ${PRECISIONS.join(', ')}`);
}

/** The precision in force: setPrecision's, else env OFFSHOOT_PRECISION, else mixed. */
export function precision(): Precision {
  if (override) return override;
  const raw = process.env.OFFSHOOT_PRECISION;
  if (raw === undefined || raw.trim() === '') return 'mixed';
  try {
    return parsePrecision(raw);
  } catch (e) {
    throw new Error(`OFFSHOOT_PRECISION: ${(e as Error).message}`);
  }
}

/** Sets the precision for this process (null: back to env OFFSHOOT_PRECISION / the default). */
export function setPrecision(p: Precision | null): void {
  override = p;
}
