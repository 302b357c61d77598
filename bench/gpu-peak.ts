/**
 * The dense bf16 tensor-core peak of NVIDIA's data-centre GPUs (their datasheets, without sparsity):
 * the denominator of model FLOP utilisation (MFU) in the benchmarks' lines, whatever precision a run
 * uses, so MFU says how much of what the card could do a run gets. A device not listed (a CPU, a
 * software adapter, the CUDA emulator) has no MFU.
 */
const BF16_PEAK_TFLOPS: ReadonlyArray<readonly [RegExp, number]> = [
  [/H200/i, 989],
  [/H100.*PCIe/i, 756],
  [/H100.*NVL/i, 835],
  [/H100/i, 989],
  [/A100/i, 312],
  [/L40S/i, 362],
  [/\bL4\b/i, 121],
];

/** The bf16 peak in TFLOP/s of the GPU a description names, or null. */
export function bf16PeakTflops(device: string | null | undefined): number | null {
  if (!device) return null;
  return BF16_PEAK_TFLOPS.find(([name]) => name.test(device))?.[1] ?? null;
}

/** TFLOP/s as a fraction of the named GPU's bf16 peak (4 decimals), or null. */
export function mfu(tflops: number, device: string | null | undefined): number | null {
  const peak = bf16PeakTflops(device);
  return peak === null ? null : Number((tflops / peak).toFixed(4));
}
