/**
 * Orchestration pieces that need no server: the configuration schema (defaults, one error listing
 * every problem, documentation of every field, bounds, the storage root), the 2 MB payload limit, pure workflow helpers, and the
 * workflow bundle (the deterministic sandbox's import rules) built from the sources and from dist/.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { bundleWorkflowCode } from '@temporalio/worker';
import { describe, expect, it } from 'vitest';

import { presetConfig } from '../core/model/index.js';
import { canonicalParameters, canonicalize } from '../core/subnet/pure.js';
import {
  CONFIG_LIMITS,
  ConfigError,
  configLeaves,
  defaultConfig,
  ensureStorageRoot,
  loadConfigFile,
  parseConfig,
  pipelineInput,
} from '../services/config/index.js';
import { ROOT, offshootCommand } from '../services/stack/index.js';
import { TEMPERATURE_RANGE } from '../services/teacher/index.js';
import {
  MAX_PAYLOAD_BYTES,
  PayloadTooLargeError,
  checkPayloadSize,
  evaluationSeed,
  firstKSpec,
  jsonBytes,
} from '../workflows/index.js';
import { payloadConverter } from '../workflows/payload-converter.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-config-'));

describe('configuration', () => {
  it('an empty file is the documented defaults', () => {
    const d = defaultConfig();
    expect(parseConfig({})).toEqual(d);
    expect(parseConfig(null)).toEqual(d);
    fs.writeFileSync(path.join(tmp, 'empty.yaml'), '');
    expect(loadConfigFile(path.join(tmp, 'empty.yaml'))).toEqual(d);
    expect(d.services.temporal.address).toBeNull();
    expect(d.search.target).toEqual({ bin: 5 });
  });

  it('docs/configuration.md documents every field', () => {
    const doc = fs.readFileSync(path.join(ROOT, 'docs', 'configuration.md'), 'utf8');
    const fields = configLeaves(defaultConfig()).map(([k]) => k.replace(/\.bin$/, ''));
    const optional = [
      'search.choices',
      'search.tournamentSize',
      'search.elitism',
      'search.crossoverProbability',
      'search.mutationProbability',
      'search.multiObjective',
      'search.retryFailed',
    ];
    for (const f of [...fields, ...optional]) expect(doc, f).toContain(`\`${f}\``);
  });

  it('a bad file is one error listing every problem with its field and value', () => {
    const file = path.join(tmp, 'bad.yaml');
    fs.writeFileSync(
      file,
      'search:\n  population: 1\n  target: { bins: 3 }\npretrain:\n  steps: many\n  checkpointEvery: 500\nservices:\n  temporal: { adress: x }\n',
    );
    let err: ConfigError | undefined;
    try {
      loadConfigFile(file);
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.problems.map((p) => p.field).sort()).toEqual([
      'pretrain.checkpointEvery',
      'pretrain.steps',
      'search.population',
      'search.target',
      'services.temporal.adress',
    ]);
    expect(err!.message).toContain(`${file}: 5 problems:`);
    expect(err!.message).toMatch(/search\.population: .*got 1/);
    expect(err!.message).toMatch(/pretrain\.steps: .*got "many"/);
    expect(err!.message).toMatch(/services\.temporal\.adress: unknown field/);
    expect(err!.message).toMatch(/pretrain\.checkpointEvery: must be at most pretrain\.segmentSteps \(100\), got 500/);
  });

  it('search options are checked as core/search checks them, in the same list', () => {
    expect(() =>
      parseConfig({ search: { tournamentSize: 50 }, pretrain: { warmup: 500, steps: 100 } }, 'x.yaml'),
    ).toThrow(
      /x\.yaml: 2 problems:\n {2}search\.tournamentSize: .*population = 8.*got 50\n {2}pretrain\.warmup: must be at most pretrain\.steps \(100\), got 500/,
    );
  });

  it('numbers have upper bounds, and storage.root is not the file system root: each a problem naming the field', () => {
    let err: ConfigError | undefined;
    try {
      parseConfig(
        {
          search: { population: 1e9, budget: 1e12, fitness: { steps: 1e7 } },
          pretrain: { steps: 1e15, distill: { temperature: 1e-300 } },
          storage: { root: '/' },
          workers: { evaluators: 1000 },
        },
        'huge.yaml',
      );
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const byField = Object.fromEntries(err!.problems.map((p) => [p.field, p.message]));
    expect(byField['search.population']).toMatch(/expected number to be <=10000, got 1000000000/);
    expect(byField['search.budget']).toMatch(/<=1000000, got 1000000000000/);
    expect(byField['search.fitness.steps']).toMatch(/<=1000000, got 10000000/);
    expect(byField['pretrain.steps']).toMatch(/<=10000000, got 1000000000000000/);
    expect(byField['pretrain.distill.temperature']).toMatch(/>=0.01, got 1e-300/);
    expect(byField['storage.root']).toMatch(
      /must not be the file system root: a run writes <root>\/<run.name>\/ there, got "\/"/,
    );
    expect(byField['workers.evaluators']).toMatch(/<=256, got 1000/);
    // The distillation temperatures the config accepts are the ones the teacher service does.
    expect(CONFIG_LIMITS.temperature).toEqual(TEMPERATURE_RANGE);
  });

  it('storage.root is created before anything starts, or is one error naming it', () => {
    const root = path.join(tmp, 'made', 'here');
    expect(ensureStorageRoot(parseConfig({ storage: { root } }))).toBe(root);
    expect(fs.statSync(root).isDirectory()).toBe(true);
    const file = path.join(tmp, 'a-file');
    fs.writeFileSync(file, 'x');
    expect(() => ensureStorageRoot(parseConfig({ storage: { root: path.join(file, 'runs') } }))).toThrow(
      new RegExp(
        `storage.root ${file}/runs: cannot create or write it \\(ENOTDIR\\); choose a folder this user may write`,
      ),
    );
  });

  it('offshoot run refuses an empty --name and a storage.root of / before it starts anything', () => {
    const cli = offshootCommand();
    const run = (...args: string[]) =>
      spawnSync(cli.command, [...cli.args, '--backend', 'cpu', 'run', ...args], {
        cwd: tmp,
        encoding: 'utf8',
        timeout: 120_000,
      });
    const empty = run('--name', '');
    expect(empty.status).toBe(1);
    expect(empty.stderr).toMatch(
      /command line: 1 problem:\n {2}run\.name: must be 1-128 of A-Z a-z 0-9 _ - \(starting with a letter or digit\), got ""/,
    );
    const slash = path.join(tmp, 'slash.yaml');
    fs.writeFileSync(slash, 'storage: { root: / }\nrun: { name: evil }\n');
    const r = run('--config', slash);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/storage\.root: must not be the file system root/);
    expect(fs.existsSync('/evil')).toBe(false);
    expect(fs.readdirSync(tmp).filter((f) => f === 'runs')).toEqual([]);
  }, 120_000);

  it('bad YAML and unreadable files are one clear error', () => {
    const file = path.join(tmp, 'broken.yaml');
    fs.writeFileSync(file, 'search: [1, 2\n');
    expect(() => loadConfigFile(file)).toThrow(/broken\.yaml: 1 problem:\n {2}\(file\): not valid YAML/);
    expect(() => loadConfigFile(path.join(tmp, 'missing.json'))).toThrow(
      /missing\.json: 1 problem:\n {2}\(file\): cannot read \(ENOENT\)/,
    );
  });

  it('JSON works as well, and the pipeline input follows the configuration', () => {
    const file = path.join(tmp, 'c.json');
    fs.writeFileSync(
      file,
      JSON.stringify({
        run: { name: 'j1', seed: 4 },
        storage: { root: tmp },
        pretrain: { distill: { enabled: false }, targetPpl: 50 },
      }),
    );
    const c = loadConfigFile(file);
    const input = pipelineInput(c);
    expect(input.run).toEqual({ runId: 'j1', dir: path.join(tmp, 'j1') });
    expect(input.evolution.search.seed).toBe(4);
    expect(input.pretrain.hyper.distill).toBeNull();
    expect(input.pretrain.targetPpl).toBe(50);
    expect(input.teacher.dir).toBe(path.join(tmp, 'j1', 'teacher'));
    expect(input.teacher.train?.preset).toBe('sotu-teacher');
    expect(input.teacherService).toBeUndefined();
    const withService = pipelineInput(parseConfig({ services: { teacher: { targets: ['10.0.0.5:50051'] } } }));
    expect(withService.teacherService).toEqual({ targets: ['10.0.0.5:50051'], topK: 64 });
  });
});

describe('payloads and pure workflow helpers', () => {
  it('payloads over 2 MB are refused with a message naming the limit', () => {
    const big = { data: 'x'.repeat(MAX_PAYLOAD_BYTES) };
    expect(() => payloadConverter.toPayload(big)).toThrow(/exceeds offshoot's 2 MB limit: .*references/);
    expect(payloadConverter.fromPayload(payloadConverter.toPayload({ a: [1, 2] }))).toEqual({ a: [1, 2] });
    expect(() => checkPayloadSize('the state', big)).toThrow(PayloadTooLargeError);
    expect(jsonBytes({ s: 'é€😀' })).toBe(Buffer.byteLength(JSON.stringify({ s: 'é€😀' })));
  });

  it('evaluation seeds are a pure function of the search seed and candidate id', () => {
    expect(evaluationSeed(1, 5)).toBe(evaluationSeed(1, 5));
    const seeds = new Set(Array.from({ length: 1000 }, (_, i) => evaluationSeed(7, i)));
    expect(seeds.size).toBe(1000);
    expect(evaluationSeed(1, 0)).not.toBe(evaluationSeed(2, 0));
  });

  it('the first-k baseline is the teacher shrunk uniformly into the target range', () => {
    const teacher = presetConfig('tiny', 300);
    const fk = firstKSpec(teacher, { minParams: 18_000, maxParams: 21_000 });
    expect(fk.inRange).toBe(true);
    expect(fk.parameters).toBe(canonicalParameters(teacher, canonicalize(fk.spec, teacher)));
    expect(fk.parameters).toBeGreaterThanOrEqual(18_000);
    expect(fk.parameters).toBeLessThanOrEqual(21_000);
  });
});

describe('workflow bundle', () => {
  const entries = [
    [
      'the TypeScript sources',
      path.join(ROOT, 'workflows', 'index.ts'),
      path.join(ROOT, 'workflows', 'payload-converter.ts'),
    ],
    [
      'dist/ (npm run build)',
      path.join(ROOT, 'dist', 'workflows', 'index.js'),
      path.join(ROOT, 'dist', 'workflows', 'payload-converter.js'),
    ],
  ] as const;
  for (const [what, entry, converter] of entries) {
    it.skipIf(!fs.existsSync(entry))(
      `builds from ${what} with only deterministic imports`,
      async () => {
        // Temporal's bundler fails on any import of a Node module (fs, crypto, ...), tfjs's included.
        const { code } = await bundleWorkflowCode({
          workflowsPath: entry,
          payloadConverterPath: converter,
          logger: { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error() {} },
        });
        for (const name of ['pipeline', 'evolution', 'pretrain']) expect(code).toContain(`function ${name}(`);
        expect(code).not.toMatch(/@tensorflow\/tfjs/);
      },
      120_000,
    );
  }
});
