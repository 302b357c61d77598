/**
 * Arithmetic precision of training and inference: one setting (`--precision`, env OFFSHOOT_PRECISION).
 *
 * - `mixed` (the default): like PyTorch's bf16 autocast — matrix products take bf16 inputs and
 *   accumulate in f32, activations between them are bf16; master weights, optimiser state, layer
 *   norms, softmax and losses stay f32. Backends without bf16 (webgpu, tensorflow, wasm, cpu) run f32.
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
