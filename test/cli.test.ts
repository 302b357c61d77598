/** The offshoot command end to end, as a user runs it (a child process on the backend `auto` picks). */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

const ROOT = path.join(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-cli-'));
const { OFFSHOOT_BACKEND: _, ...inherited } = process.env;
const env = { ...inherited, OFFSHOOT_CACHE: path.join(tmp, 'cache') };

function offshoot(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  // Runs the TypeScript sources (not a possibly stale dist/) the way bin/offshoot.js does without a build.
  const tsx = import.meta.resolve('tsx');
  const res = spawnSync(process.execPath, ['--import', tsx, path.join(ROOT, 'services', 'cli', 'main.ts'), ...args], {
    cwd: tmp,
    env,
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

describe('offshoot CLI', () => {
  const teacher = path.join(tmp, 'teacher');
  // The same command twice: the first trains, the rerun finds the finished teacher.
  const settings =
    '--preset tiny --vocab 300 --steps 80 --batch-size 8 --seq-len 32 --eval-every 40 --eval-tokens 4096';
  const trainTeacher = ['teacher', 'train', '--out', teacher, ...settings.split(' '), '--json'];

  it('--help lists the commands', () => {
    const r = offshoot('--help');
    expect(r.status).toBe(0);
    for (const c of ['teacher', 'eval', 'logits']) expect(r.stdout).toContain(c);
  });

  it('teacher train lowers the validation loss, and eval reports the same', () => {
    const r = offshoot(...trainTeacher);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^backend: (tensorflow|webgpu|wasm|cpu) /m);
    const summary = JSON.parse(r.stdout.trim());
    expect(summary.steps).toBe(80);
    expect(summary.finalValLoss).toBeLessThan(summary.initialValLoss - 0.8);
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'offshoot-checkpoint.json']) {
      expect(fs.existsSync(path.join(teacher, f)), f).toBe(true);
    }
    const e = offshoot('eval', '--model', teacher, '--data', 'sotu:val', '--max-tokens', '4096', '--json');
    expect(e.status, e.stderr).toBe(0);
    const result = JSON.parse(e.stdout.trim());
    expect(result.tokens).toBe(4096);
    expect(result.loss).toBeCloseTo(summary.finalValLoss, 4);
    expect(result.ppl).toBeCloseTo(Math.exp(result.loss), 6);
    const moby = JSON.parse(
      offshoot('eval', '--model', teacher, '--data', 'mobydick', '--max-tokens', '4096', '--json').stdout,
    );
    expect(moby.loss).toBeGreaterThan(0);
  });

  it('rerunning a finished teacher train continues nothing and keeps the checkpoint', () => {
    const before = fs.readFileSync(path.join(teacher, 'offshoot-checkpoint.json'), 'utf8');
    const r = offshoot(...trainTeacher);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/resuming from step 80/);
    expect(fs.readFileSync(path.join(teacher, 'offshoot-checkpoint.json'), 'utf8')).toBe(before);
  });

  it('logits prints one row of vocabulary size per position', () => {
    fs.writeFileSync(path.join(tmp, 'ids.json'), JSON.stringify([1, 2, 3, 299]));
    const r = offshoot('logits', '--model', teacher, '--ids', path.join(tmp, 'ids.json'), '--json');
    expect(r.status, r.stderr).toBe(0);
    const { logits } = JSON.parse(r.stdout);
    expect(logits).toHaveLength(4);
    expect(logits[0]).toHaveLength(300);
  });

  it('pretrain distils a student from a teacher checkpoint, stops at a step and resumes there', () => {
    const student = path.join(tmp, 'student');
    expect(
      offshoot(
        'subnet',
        'extract',
        '--teacher',
        teacher,
        '--spec',
        JSON.stringify({ layers: 1, embedding: 16, heads: 2, mlp: 32 }),
        '--out',
        student,
      ).status,
    ).toBe(0);
    const out = path.join(tmp, 'pretrain');
    const common = [
      'pretrain',
      '--init',
      student,
      '--out',
      out,
      '--teacher',
      teacher,
      '--steps',
      '12',
      '--warmup',
      '2',
      '--batch-size',
      '4',
      '--seq-len',
      '32',
      '--checkpoint-every',
      '4',
      '--eval-every',
      '6',
      '--eval-tokens',
      '1024',
      '--report-every',
      '2',
    ];
    const events = (stdout: string) =>
      stdout
        .trim()
        .split('\n')
        // biome-ignore lint/suspicious/noExplicitAny: the command's JSON lines, whose shape the test asserts.
        .map((l) => JSON.parse(l) as Record<string, any>);
    const first = offshoot(...common, '--stop-at', '6');
    expect(first.status, first.stderr).toBe(0);
    const a = events(first.stdout);
    expect(a[0]).toMatchObject({ event: 'start', step: 0, resumed: false, distill: 'in-process', steps: 12 });
    expect(a.at(-1)).toMatchObject({ event: 'done', step: 6, resumedFrom: 0, stopped: 'stop-at' });
    expect(a.filter((e) => e.event === 'eval').map((e) => e.step)).toEqual([0, 6]);
    const second = offshoot(...common);
    expect(second.status, second.stderr).toBe(0);
    const b = events(second.stdout);
    expect(b[0]).toMatchObject({ event: 'start', step: 6, resumed: true });
    expect(b.at(-1)).toMatchObject({ event: 'done', step: 12, resumedFrom: 6, stopped: null });
    // The folder keeps both processes' losses, step by step.
    const losses = fs
      .readFileSync(path.join(out, 'losses.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(losses.map((l) => l.step)).toEqual([2, 4, 6, 8, 10, 12]);
    expect(new Set(losses.map((l) => l.pid)).size).toBe(2);

    const both = offshoot(...common, '--teacher-service', '127.0.0.1:1');
    expect(both.status).not.toBe(0);
    expect(both.stderr).toMatch(/give --teacher-service or --teacher, not both/);
    const beyond = offshoot(...common, '--stop-at', '13');
    expect(beyond.status).not.toBe(0);
    expect(beyond.stderr).toMatch(/--stop-at 13 is beyond --steps 12/);
    const changed = offshoot(...common.map((a) => (a === '12' ? '20' : a)));
    expect(changed.status).not.toBe(0);
    expect(changed.stderr).toMatch(/cannot resume with different hyperparameters/);
  });

  it('bad input is one clear error and a non-zero exit', () => {
    fs.writeFileSync(path.join(tmp, 'bad-ids.json'), JSON.stringify([1, 300]));
    const ids = offshoot('logits', '--model', teacher, '--ids', path.join(tmp, 'bad-ids.json'));
    expect(ids.status).toBe(1);
    expect(ids.stderr).toMatch(/token id 300 at position 1 is outside the vocabulary \[0, 300\)/);

    fs.writeFileSync(path.join(tmp, 'empty.txt'), '');
    const empty = offshoot('eval', '--model', teacher, '--data', path.join(tmp, 'empty.txt'));
    expect(empty.status).toBe(1);
    expect(empty.stderr).toMatch(/empty\.txt.*empty|empty.*empty\.txt/);

    const missing = offshoot('eval', '--model', path.join(tmp, 'nope'));
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/nope: checkpoint directory does not exist/);

    const steps = offshoot('teacher', 'train', '--steps', '0');
    expect(steps.status).not.toBe(0);
    expect(steps.stderr).toMatch(/--steps must be a positive integer/);

    const second = offshoot('search', '--teacher', teacher, '--bin', '3', '--second-mutation-probability', '1.5');
    expect(second.status).not.toBe(0);
    expect(second.stderr).toMatch(/--second-mutation-probability must be a probability in \[0, 1\], got "1\.5"/);

    const backend = offshoot('--backend', 'gpu', 'eval', '--model', teacher);
    expect(backend.status).toBe(1);
    expect(backend.stderr).toMatch(/invalid value "gpu"; expected one of auto, cuda, tensorflow, webgpu, wasm, cpu/);
  });
});
