/**
 * bench/evaluator-gpu at tiny shapes on the cpu backend: the command a GPU machine runs, here end to
 * end: a teacher trained by the teacher-training code, then the same search twice (shape classes off,
 * then on), each candidate evaluated twice, one JSON line per candidate, a summary per arm and the
 * closing comparison.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { testBackends } from './helpers/backends.js';

const ROOT = path.join(import.meta.dirname, '..');
const hasWebGPU = (await testBackends()).includes('webgpu');

/** Runs the bench with `args` in a work folder of its own (removed afterwards); its JSON lines parsed. */
function runBench(
  args: string[],
  backend: string,
): { status: number | null; stderr: string; lines: Record<string, unknown>[] } {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-evaluator-bench-'));
  try {
    const r = spawnSync(
      process.execPath,
      ['--import', import.meta.resolve('tsx'), path.join(ROOT, 'bench', 'evaluator-gpu.ts'), ...args, '--work', work],
      { cwd: ROOT, encoding: 'utf8', env: { ...process.env, OFFSHOOT_BACKEND: backend }, timeout: 600_000 },
    );
    const lines = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    return { status: r.status, stderr: r.stderr, lines };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

describe('bench/evaluator-gpu', () => {
  it('measures each candidate against its steady time in both arms and compares them', () => {
    const args = ['--backends', 'cpu', '--preset', 'tiny', '--seq-len', '16', '--batch-size', '4'];
    args.push('--candidates', '2', '--population', '2', '--steps', '2', '--eval-tokens', '128');
    args.push('--teacher-steps', '2', '--compare');
    const { status, stderr, lines } = runBench(args, 'cpu');
    expect(status, stderr).toBe(0);
    for (const arm of [false, true]) {
      const candidates = lines.filter((l) => l.shapeClasses === arm && typeof l.candidate === 'number');
      expect(candidates).toHaveLength(2);
      for (const c of candidates) {
        expect(c.wallSeconds as number).toBeGreaterThan(0);
        expect(c.steadySeconds as number).toBeGreaterThan(0);
        // Each figure is printed to 3 decimals: the quotient of the printed seconds is off by up to
        // 0.0005 of each over the steady time (a few hundredths of a second on this machine).
        const wall = c.wallSeconds as number;
        const steady = c.steadySeconds as number;
        const slack = 0.0005 + (0.0005 * (1 + wall / steady)) / (steady - 0.0005);
        expect(Math.abs((c.ratio as number) - wall / steady)).toBeLessThanOrEqual(slack);
        // Nothing about a candidate changes between its two evaluations but the caches.
        expect(Math.abs(c.steadyFitnessDelta as number)).toBeLessThan(1e-4);
        // The cpu backend compiles nothing per shape.
        expect(c.compiled).toEqual({});
      }
      const summary = lines.find((l) => l.shapeClasses === arm && l.summary)!;
      expect(summary).toMatchObject({ backend: 'cpu', candidates: 2, failed: 0, steps: 2 });
      expect(summary.evaluationsPerHour as number).toBeGreaterThan(0);
      expect(typeof summary.meets).toBe('boolean');
    }
    // Same seed, same search: the arms evaluate the same candidates.
    const specs = (arm: boolean) =>
      lines.filter((l) => l.shapeClasses === arm && typeof l.candidate === 'number').map((l) => JSON.stringify(l.spec));
    expect(specs(true)).toEqual(specs(false));
    const closing = lines.find((l) => l.closing)!;
    expect(closing.ratio as number).toBeGreaterThan(0);
    expect(closing).toMatchObject({ before: { shapeClasses: false }, after: { shapeClasses: true } });
  }, 600_000);

  it.skipIf(!hasWebGPU)(
    "--profile on webgpu: the first candidate's GPU time per dispatch",
    () => {
      const args = ['--backends', 'webgpu', '--preset', 'tiny', '--seq-len', '16', '--batch-size', '2'];
      args.push('--candidates', '2', '--population', '2', '--steps', '2', '--eval-tokens', '64');
      args.push('--teacher-steps', '2', '--profile');
      const { status, stderr, lines } = runBench(args, 'webgpu');
      expect(status, stderr).toBe(0);
      const { profile } = lines.find((l) => l.profile) as { profile: Record<string, unknown> };
      expect(profile.launches as number).toBeGreaterThan(10);
      expect(profile.gpuSeconds as number).toBeGreaterThan(0);
      // offshoot's kernels by name and grid ("full_distill_forward 7x1x1"), tfjs's programs by name.
      const top = profile.top as Array<[string, number, number]>;
      expect(top.some(([n]) => /^\S+ \d+x\d+x\d+$/.test(n))).toBe(true);
      const names = top.map((e) => e[0].split(' ')[0]);
      // The in-process teacher's full logits: the fused distillation kernels, and the products.
      expect(names).toContain('full_distill_forward');
      expect(names.some((n) => n.startsWith('matmul_') || n.startsWith('sgmatmul_'))).toBe(true);
      expect(lines.find((l) => l.summary)).toMatchObject({ backend: 'webgpu', candidates: 2, failed: 0 });
      // Each candidate's new pipelines by kernel (what its shape still compiles after the warm-up).
      for (const c of lines.filter((l) => typeof l.candidate === 'number' && !l.profile)) {
        const compiled = c.compiled as Record<string, number>;
        for (const [name, n] of Object.entries(compiled))
          expect([name, Number.isInteger(n) && n > 0]).toEqual([name, true]);
      }
    },
    600_000,
  );
});
