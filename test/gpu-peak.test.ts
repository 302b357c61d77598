/** MFU's denominator (bench/gpu-peak.ts): the dense bf16 peak of the GPU a device description names. */
import { describe, expect, it } from 'vitest';

import { bf16PeakTflops, mfu } from '../bench/gpu-peak.js';

describe('GPU bf16 peaks', () => {
  it('knows the data-centre GPUs by the names their drivers and PyTorch give', () => {
    expect(bf16PeakTflops('NVIDIA H200')).toBe(989);
    expect(bf16PeakTflops('NVIDIA H200 (sm_90, 132 SMs), driver CUDA 13.0')).toBe(989);
    expect(bf16PeakTflops('torch 2.11.0 bf16 fused AdamW on NVIDIA H100 80GB HBM3, attention sdpa')).toBe(989);
    expect(bf16PeakTflops('NVIDIA H100 PCIe')).toBe(756);
    expect(bf16PeakTflops('NVIDIA H100 NVL')).toBe(835);
    expect(bf16PeakTflops('NVIDIA A100-SXM4-80GB')).toBe(312);
    expect(bf16PeakTflops('NVIDIA L4')).toBe(121);
  });

  it('has no peak, so no MFU, for a CPU, a software adapter or the CUDA emulator', () => {
    for (const d of [
      'cpu',
      'llvmpipe (LLVM 15.0.6, 256 bits)',
      'offshoot CUDA emulator (CPU) (sm_90, 4 SMs)',
      '',
      null,
    ])
      expect(bf16PeakTflops(d)).toBeNull();
    expect(mfu(395.6, 'offshoot CUDA emulator (CPU)')).toBeNull();
  });

  it('gives MFU as the fraction of the peak', () => {
    expect(mfu(395.6, 'NVIDIA H200')).toBe(0.4);
    expect(mfu(78, 'NVIDIA A100-PCIE-40GB')).toBe(0.25);
  });
});
