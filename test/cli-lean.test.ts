/**
 * The compute commands need no orchestration stack: `offshoot teacher train|eval|logits|search|subnet|pretrain`
 * run from an installation whose node_modules lacks @temporalio/* and @nats-io/* (a copy of the sources
 * with every other package linked in), on a tiny model and the embedded corpus. The commands that do
 * need Temporal say so there, and `--help` still lists them.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.join(import.meta.dirname, '..');
const ABSENT = ['@temporalio', '@nats-io'];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-lean-'));
const app = path.join(tmp, 'app');
const teacher = path.join(tmp, 'teacher');
const tokenizer = path.join(ROOT, 'test', 'fixtures', 'tokenizer', 'offshoot-bpe512', 'tokenizer.json');
const { OFFSHOOT_BACKEND: _, ...inherited } = process.env;
const env = { ...inherited, OFFSHOOT_CACHE: path.join(tmp, 'cache') };

function offshoot(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(app, 'bin', 'offshoot.js'), ...args], {
    cwd: tmp,
    env,
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

// biome-ignore lint/suspicious/noExplicitAny: a command's JSON output, whose shape the tests assert.
function json(r: { status: number | null; stdout: string; stderr: string }): any {
  expect(r.status, r.stderr).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

beforeAll(() => {
  // The sources as they ship (bin/ runs them through tsx), and node_modules without Temporal and NATS.
  for (const entry of ['bin', 'core', 'services', 'workflows', 'proto', 'package.json', 'tsconfig.json']) {
    fs.cpSync(path.join(ROOT, entry), path.join(app, entry), { recursive: true });
  }
  fs.mkdirSync(path.join(app, 'node_modules'));
  for (const name of fs.readdirSync(path.join(ROOT, 'node_modules'))) {
    if (ABSENT.includes(name) || name.startsWith('.')) continue;
    fs.symlinkSync(path.join(ROOT, 'node_modules', name), path.join(app, 'node_modules', name), 'dir');
  }
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('offshoot without Temporal and NATS installed', () => {
  it('the installation really lacks them: a command that needs Temporal cannot load it', () => {
    for (const name of ABSENT) expect(fs.existsSync(path.join(app, 'node_modules', name))).toBe(false);
    const r = offshoot('status', 'some-run');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(
      /^offshoot: the status command cannot load here: Cannot find (package|module) '(@temporalio|@nats-io)\//m,
    );
  });

  it('--help lists every command, saying which cannot run here', () => {
    const r = offshoot('--help');
    expect(r.status, r.stderr).toBe(0);
    for (const c of ['teacher', 'eval', 'logits', 'subnet', 'search', 'pretrain', 'worker', 'experiment'])
      expect(r.stdout).toContain(c);
    // Node loads a command's imports concurrently, so whichever absent package it reaches first is named.
    expect(r.stdout).toMatch(/run\s+\(not available here: Cannot find\s+(package|module)\s+'(@temporalio|@nats-io)\//);
  });

  it('teacher train', () => {
    const summary = json(
      offshoot(
        'teacher',
        'train',
        '--out',
        teacher,
        '--preset',
        'tiny',
        '--tokenizer',
        tokenizer,
        '--steps',
        '10',
        '--batch-size',
        '4',
        '--seq-len',
        '32',
        '--eval-tokens',
        '1024',
        '--json',
      ),
    );
    expect(summary.steps).toBe(10);
    expect(summary.finalValLoss).toBeLessThan(summary.initialValLoss);
    expect(fs.existsSync(path.join(teacher, 'offshoot-checkpoint.json'))).toBe(true);
  });

  it('eval and logits', () => {
    const e = json(offshoot('eval', '--model', teacher, '--max-tokens', '1024', '--json'));
    expect(e.tokens).toBe(1024);
    expect(e.ppl).toBeCloseTo(Math.exp(e.loss), 6);
    fs.writeFileSync(path.join(tmp, 'ids.json'), JSON.stringify([5, 6, 7]));
    const { logits } = json(offshoot('logits', '--model', teacher, '--ids', path.join(tmp, 'ids.json')));
    expect(logits).toHaveLength(3);
    expect(logits[0]).toHaveLength(512);
  });

  it('subnet count and extract', () => {
    const spec = JSON.stringify({ layers: 1, embedding: 16, heads: 2, mlp: 32 });
    const count = json(offshoot('subnet', 'count', '--teacher', teacher, '--spec', spec, '--json'));
    expect(count.parameters).toBeGreaterThan(0);
    const student = path.join(tmp, 'student');
    json(offshoot('subnet', 'extract', '--teacher', teacher, '--spec', spec, '--out', student, '--json'));
    expect(fs.existsSync(path.join(student, 'config.json'))).toBe(true);
  });

  it('pretrain', () => {
    const r = offshoot(
      'pretrain',
      '--init',
      path.join(tmp, 'student'),
      '--out',
      path.join(tmp, 'pretrain'),
      '--steps',
      '4',
      '--warmup',
      '1',
      '--batch-size',
      '4',
      '--seq-len',
      '32',
      '--report-every',
      '2',
    );
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toMatchObject({ event: 'done', step: 4, stopped: null });
  });

  it('search', () => {
    const result = json(
      offshoot(
        'search',
        '--teacher',
        teacher,
        '--bin',
        '10',
        '--generations',
        '2',
        '--population',
        '3',
        '--fitness',
        'zero-shot',
        '--eval-tokens',
        '512',
        '--seq-len',
        '32',
        '--json',
      ),
    );
    expect(result.history).toHaveLength(6);
    expect(result.best.fitness).toBeGreaterThan(0);
  });

  it('teacher serve loads (its metrics, which need NATS, load only when asked for)', () => {
    const r = offshoot('teacher', 'serve', '--help');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('--metrics-port');
  });
});
