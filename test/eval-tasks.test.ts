/**
 * Zero-shot task scoring and bits per byte (core/eval, `offshoot eval`):
 * - the acceptance check: a multiple-choice task made from the bundled corpora (the true next
 *   sentence among four) scored by `offshoot eval --tasks` and by lm-evaluation-harness
 *   (`lm_eval --model hf`, offline, from the pinned test venv) on an exported layer-wise student:
 *   identical accuracy, and the same log-likelihood for every choice;
 * - lm-eval's task shape read from YAML and JSONL: requests, templates, include, multiple input,
 *   cloze (loglikelihood) tasks, and every refusal naming its field;
 * - bits per byte: the byte count of the scored text, and the CLI's figures.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ByteTokenizer, evalBatches, loadTokenizer, tokenizeDocuments } from '../core/data/index.js';
import {
  TaskError,
  bitsPerByte,
  encodeRequest,
  evaluateTasks,
  evaluateText,
  loadTaskFile,
  loadTasks,
  scoredBytes,
  tokenByteLengths,
} from '../core/eval/index.js';
import { Template, literalEval, pythonLength } from '../core/eval/template.js';
import { GPTNeoX, evaluateLoss, saveCheckpoint, uniformConfig } from '../core/model/index.js';
import * as tf from '../core/model/tfjs.js';
import { testBackends, useBackend } from './helpers/backends.js';
import { hfPython, requireHfPython } from './helpers/python.js';
import { writeNextSentenceTask } from './helpers/tasks.js';

const ROOT = path.join(import.meta.dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-eval-tasks-'));
const cache = path.join(tmp, 'cache');
const BPE512 = path.join(import.meta.dirname, 'fixtures', 'tokenizer', 'offshoot-bpe512');

beforeAll(() => useBackend('cpu'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function offshoot(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const tsx = import.meta.resolve('tsx');
  const res = spawnSync(process.execPath, ['--import', tsx, path.join(ROOT, 'services', 'cli', 'main.ts'), ...args], {
    cwd: tmp,
    env: { ...process.env, OFFSHOOT_CACHE: cache },
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { status: res.status, stdout: res.stdout, stderr: res.stderr };
}

/** Writes a task YAML (and its JSONL documents) and returns the YAML's path. */
function task(
  name: string,
  fields: Record<string, unknown>,
  docs: Record<string, unknown>[],
  dir = path.join(tmp, 'tasks'),
): string {
  fs.mkdirSync(dir, { recursive: true });
  const data = path.join(dir, `${name}.jsonl`);
  fs.writeFileSync(data, `${docs.map((d) => JSON.stringify(d)).join('\n')}\n`);
  const file = path.join(dir, `${name}.yaml`);
  const cfg = {
    task: name,
    dataset_path: 'json',
    dataset_kwargs: { data_files: { test: data } },
    test_split: 'test',
    output_type: 'multiple_choice',
    ...fields,
  };
  fs.writeFileSync(file, JSON.stringify(cfg, null, 2));
  return file;
}

const docs2 = [
  { q: 'The sky is', choices: ['blue', 'a "loud" dog', "it's green"], label: 0 },
  { q: 'What do we owe the future?', choices: ['A strong Union.', 'Fish.', 'Nothing at all, said nobody.'], label: 0 },
];

describe('lm-evaluation-harness parity on an exported student', () => {
  // CI installs the oracle and lm-eval (scripts/setup-python.sh); elsewhere this needs it set up first
  // (a venv built before lm-eval joined the requirements skips until setup-python.sh rebuilds it).
  const python = process.env.CI ? requireHfPython() : hfPython();
  const ready =
    python !== null &&
    (Boolean(process.env.CI) || spawnSync(python, ['-c', 'import lm_eval'], { timeout: 60_000 }).status === 0);

  it.skipIf(!ready)(
    'offshoot eval --tasks and lm_eval --model hf give identical accuracy on a task made from the corpus',
    async () => {
      // A teacher trained on the corpus, a layer-wise student of it, exported for transformers.
      const teacher = path.join(tmp, 'teacher');
      let r = offshoot(
        'teacher',
        'train',
        '--out',
        teacher,
        '--preset',
        'tiny',
        '--vocab',
        '300',
        '--steps',
        '200',
        '--batch-size',
        '8',
        '--seq-len',
        '32',
        '--eval-every',
        '200',
        '--json',
      );
      expect(r.status, r.stderr).toBe(0);
      const student = path.join(tmp, 'student');
      const spec = {
        layers: 2,
        embedding: 32,
        perLayer: [
          { heads: 4, mlp: 128 },
          { heads: 2, mlp: 48 },
        ],
      };
      r = offshoot('subnet', 'extract', '--teacher', teacher, '--spec', JSON.stringify(spec), '--out', student);
      expect(r.status, r.stderr).toBe(0);
      const exported = path.join(tmp, 'student-hf');
      r = offshoot('export', '--model', student, '--out', exported, '--json');
      expect(r.status, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).padding.parameters.added).toBeGreaterThan(0);
      {
        const yaml = await writeNextSentenceTask(path.join(tmp, 'next-sentence'), { count: 40 });

        // offshoot, on the exported checkpoint and on the student as it was (padding is exact).
        const ours = path.join(tmp, 'ours.jsonl');
        r = offshoot('eval', '--model', exported, '--tasks', yaml, '--log-samples', ours, '--json');
        expect(r.status, r.stderr).toBe(0);
        const scores = JSON.parse(r.stdout).tasks as {
          task: string;
          docs: number;
          metrics: Record<string, { value: number; stderr: number }>;
        }[];
        expect(scores.map((s) => [s.task, s.docs])).toEqual([['sotu_next_sentence', 40]]);
        r = offshoot('eval', '--model', student, '--tasks', yaml, '--json');
        expect(r.status, r.stderr).toBe(0);
        expect(JSON.parse(r.stdout).tasks[0].metrics.acc.value).toBe(scores[0].metrics.acc.value);

        // lm-evaluation-harness, offline: the local task file, the local model directory.
        const out = path.join(tmp, 'lm-eval');
        const run = spawnSync(
          python!,
          [
            '-m',
            'lm_eval',
            '--model',
            'hf',
            '--model_args',
            `pretrained=${exported},dtype=float32`,
            '--tasks',
            yaml,
            '--device',
            'cpu',
            '--batch_size',
            '8',
            '--output_path',
            out,
            '--log_samples',
          ],
          {
            cwd: tmp,
            encoding: 'utf8',
            timeout: 600_000,
            env: {
              ...process.env,
              HF_HUB_OFFLINE: '1',
              HF_DATASETS_OFFLINE: '1',
              TRANSFORMERS_OFFLINE: '1',
              HF_HOME: path.join(tmp, 'hf-home'),
              TOKENIZERS_PARALLELISM: 'false',
            },
          },
        );
        expect(run.status, run.stderr.slice(-4000)).toBe(0);
        const files = fs.readdirSync(out, { recursive: true }).map(String);
        const resultsFile = files.find((f) => /results_.*\.json$/.test(f))!;
        const samplesFile = files.find((f) => /samples_sotu_next_sentence_.*\.jsonl$/.test(f))!;
        const theirs = JSON.parse(fs.readFileSync(path.join(out, resultsFile), 'utf8')).results.sotu_next_sentence;
        // Identical accuracy (the same documents decided the same way), and the same standard error.
        expect(theirs['acc,none']).toBe(scores[0].metrics.acc.value);
        expect(theirs['acc_norm,none']).toBe(scores[0].metrics.acc_norm.value);
        expect(theirs['acc_stderr,none']).toBeCloseTo(scores[0].metrics.acc.stderr, 12);
        // Per document and choice: the same log-likelihoods (float32 sums) and greedy flags.
        const ourDocs = new Map(
          fs
            .readFileSync(ours, 'utf8')
            .trim()
            .split('\n')
            .map((l) => {
              const d = JSON.parse(l) as {
                doc: number;
                responses: [number, boolean][];
                metrics: Record<string, number>;
              };
              return [d.doc, d];
            }),
        );
        const theirDocs = fs
          .readFileSync(path.join(out, samplesFile), 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l));
        expect(theirDocs.length).toBe(40);
        let maxDiff = 0;
        for (const d of theirDocs) {
          const o = ourDocs.get(d.doc_id)!;
          const resps = (d.resps as [string, string][][]).map((x) => x[0]);
          expect(resps.length).toBe(4);
          resps.forEach(([ll, greedy], i) => {
            maxDiff = Math.max(maxDiff, Math.abs(Number(ll) - o.responses[i][0]));
            expect(Math.abs(Number(ll) - o.responses[i][0]), `doc ${d.doc_id} choice ${i}`).toBeLessThan(1e-3);
            expect(greedy === 'True').toBe(o.responses[i][1]);
          });
          expect(o.metrics.acc).toBe(d.acc);
          expect(o.metrics.acc_norm).toBe(d.acc_norm);
        }
        console.log(
          `sotu_next_sentence, 40 documents: acc ${scores[0].metrics.acc.value} (lm-eval ${theirs['acc,none']}), acc_norm ${scores[0].metrics.acc_norm.value} ` +
            `(lm-eval ${theirs['acc_norm,none']}); largest log-likelihood difference ${maxDiff.toExponential(2)}`,
        );
      }
    },
    900_000,
  );
});

describe('tasks in lm-evaluation-harness shape', () => {
  const docs = [
    { q: 'The sky is', choices: ['blue', 'a "loud" dog', "it's green"], label: 0, key: 'B' },
    { q: 'Two plus two is  ', choices: ['four', 'five', 'fish'], label: 2, key: 'A' },
  ];

  it('builds the requests lm-eval builds: context, target delimiter, choice', () => {
    const t = loadTaskFile(
      task(
        'basic',
        {
          doc_to_text: 'Q: {{q}}\nA:',
          doc_to_choice: '{{choices}}',
          doc_to_target: 'label',
          description: 'Answer.\n\n',
        },
        docs,
      ),
    );
    expect(t.metrics).toEqual(['acc', 'acc_norm']);
    expect(t.docs[0].requests).toEqual([
      { context: 'Answer.\n\nQ: The sky is\nA:', continuation: ' blue' },
      { context: 'Answer.\n\nQ: The sky is\nA:', continuation: ' a "loud" dog' },
      { context: 'Answer.\n\nQ: The sky is\nA:', continuation: " it's green" },
    ]);
    expect(t.docs.map((d) => d.gold)).toEqual([0, 2]);
    expect(t.docs[1].choices).toEqual(['four', 'five', 'fish']);
  });

  it('reads targets as lm-eval does: a template digit is an index, a string names a choice, a list is several', () => {
    const byTemplate = loadTaskFile(
      task(
        'tpl',
        { doc_to_text: 'q', doc_to_choice: ['A', 'B', 'C'], doc_to_target: '{{label}}', target_delimiter: '' },
        docs,
      ),
    );
    expect(byTemplate.docs.map((d) => d.gold)).toEqual([0, 2]);
    expect(byTemplate.docs[0].requests[1]).toEqual({ context: 'The sky is', continuation: 'B' });
    const byString = loadTaskFile(
      task('str', { doc_to_text: 'q', doc_to_choice: { a: 'A', b: 'B' }, doc_to_target: 'key' }, docs),
    );
    expect(byString.docs.map((d) => d.gold)).toEqual([1, 0]);
    const missing = loadTaskFile(
      task('miss', { doc_to_text: 'q', doc_to_choice: ['x', 'y'], doc_to_target: 'key' }, docs),
    );
    expect(missing.docs.map((d) => d.gold)).toEqual([-100, -100]);
    const several = loadTaskFile(
      task('multi', { doc_to_text: 'q', doc_to_choice: '{{choices}}', doc_to_target: '[0, 1]' }, docs),
    );
    expect(several.docs[0].gold).toEqual([0, 1]);
  });

  it('merges include files (the including file wins) and reads the multiple-input form', () => {
    const dir = path.join(tmp, 'tasks');
    task('child-data', {}, docs);
    fs.writeFileSync(
      path.join(dir, 'base.yaml'),
      'output_type: multiple_choice\ntarget_delimiter: " "\ndoc_to_choice: "{{choices}}"\ndoc_to_text: "{{q}}"\ndoc_to_target: label\n',
    );
    fs.writeFileSync(
      path.join(dir, 'child.yaml'),
      `include: base.yaml\ntask: child\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    validation: ${path.join(dir, 'child-data.jsonl')}\nvalidation_split: validation\ndoc_to_text: "Q: {{q}}"\n`,
    );
    const child = loadTaskFile(path.join(dir, 'child.yaml'));
    expect(child.split).toBe('validation');
    expect(child.docs[0].requests[0]).toEqual({ context: 'Q: The sky is', continuation: ' blue' });
    // Winogrande's form: doc_to_text picks which choice goes into the context; the target continues each.
    const wino = loadTaskFile(
      task('wino', { doc_to_text: '{{label}}', doc_to_choice: '{{choices}}', doc_to_target: 'q' }, docs),
    );
    expect(wino.docs[0].requests).toEqual([
      { context: 'blue', continuation: ' The sky is' },
      { context: 'a "loud" dog', continuation: ' The sky is' },
      { context: "it's green", continuation: ' The sky is' },
    ]);
    expect(wino.docs.map((d) => d.gold)).toEqual([0, 2]);
  });

  it('reads cloze tasks (loglikelihood): the target as written, scored by perplexity and greedy accuracy', () => {
    const t = loadTaskFile(
      task(
        'cloze',
        {
          output_type: 'loglikelihood',
          doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}",
          doc_to_target: "{{' '+text.split(' ')[-1]}}",
        },
        [{ text: 'the end of the story' }],
      ),
    );
    expect(t.metrics).toEqual(['perplexity', 'acc']);
    expect(t.docs[0].requests).toEqual([{ context: 'the end of the', continuation: ' story' }]);
  });

  it('refuses what it cannot compute exactly, naming the field', () => {
    const base = { doc_to_text: 'q', doc_to_choice: '{{choices}}', doc_to_target: 'label' };
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ ...base, output_type: 'generate_until' }, /output_type: "generate_until" is not supported/],
      [{ ...base, num_fewshot: 5 }, /num_fewshot: 5: offshoot scores zero-shot only/],
      [{ ...base, dataset_path: 'hellaswag' }, /dataset_path: "hellaswag": offshoot reads local files only/],
      [{ ...base, doc_to_choice: undefined }, /doc_to_choice: missing/],
      [
        { ...base, metric_list: [{ metric: 'f1' }] },
        /metric_list\[0\]\.metric: "f1" is not supported for multiple_choice/,
      ],
      [{ ...base, metric_list: [{ metric: 'acc', aggregation: 'median' }] }, /metric_list\[0\]\.aggregation: "median"/],
      [
        { ...base, dataset_kwargs: { data_files: { test: 'nowhere.jsonl' } } },
        /dataset_kwargs\.data_files\.test: nowhere\.jsonl not found \(relative paths are resolved against/,
      ],
      [
        { ...base, dataset_kwargs: { data_files: { train: 'x' } } },
        /data_files has no split "test" \(it has "train"\)/,
      ],
      [{ ...base, doc_to_txt: 'q' }, /unknown field "doc_to_txt"/],
      [
        { ...base, doc_to_text: '{{ question }}' },
        /document 0: template "\{\{ question \}\}": "question" is undefined/,
      ],
      [{ ...base, doc_to_choice: '{{q}}' }, /document 0: cannot read "The sky is" as a Python literal/],
    ];
    for (const [fields, message] of cases) {
      const cfg = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
      expect(() => loadTaskFile(task('bad', cfg, docs)), String(message)).toThrow(message);
    }
    const python = path.join(tmp, 'tasks', 'python.yaml');
    fs.writeFileSync(python, `task: py\ndataset_path: json\nprocess_docs: !function utils.process_docs\n`);
    expect(() => loadTaskFile(python)).toThrow(
      /process_docs: a Python function over the documents \(!function utils\.process_docs\) cannot be run by offshoot/,
    );
    const group = path.join(tmp, 'tasks', 'group.yaml');
    fs.writeFileSync(group, 'group: g\ntask: [a, b]\n');
    expect(() => loadTaskFile(group)).toThrow(/group files are not supported/);
    const broken = path.join(tmp, 'tasks', 'broken-data.jsonl');
    fs.writeFileSync(broken, '{"q": "x", "choices": ["a"], "label": 0}\n{"q": oops}\n');
    expect(() =>
      loadTaskFile(task('broken', { ...base, dataset_kwargs: { data_files: { test: broken } } }, docs)),
    ).toThrow(/broken-data\.jsonl:2: invalid JSON/);
    expect(() => loadTasks([path.join(tmp, 'tasks', 'basic.yaml'), path.join(tmp, 'tasks', 'basic.yaml')])).toThrow(
      /task "basic" is defined twice/,
    );
    expect(() => loadTasks([path.join(tmp, 'no-such.yaml')])).toThrow(TaskError);
  });

  it('renders templates as lm-eval does', () => {
    expect(new Template('{{ q.strip() }}\n').render({ q: ' x ' })).toBe('x\n');
    expect(new Template('{{ choices }}').render({ choices: ['a', "it's"] })).toBe('["a", "it\'s"]');
    expect(literalEval(`['a', "it's", 'tab\\there', 3, True, None]`)).toEqual([
      'a',
      "it's",
      'tab\there',
      3,
      true,
      null,
    ]);
    expect(literalEval('["a", "\\u00e9"]')).toEqual(['a', 'é']);
    expect(pythonLength('naïve 😀')).toBe(7);
  });

  it('encodes a request as lm-eval does: trailing context whitespace moves to the continuation', async () => {
    const tok = await loadTokenizer(BPE512);
    const e = encodeRequest(tok, { context: 'Two plus two is  ', continuation: ' four' });
    expect(e.context).toEqual(tok.encode('Two plus two is'));
    expect([...e.context, ...e.continuation]).toEqual(tok.encode('Two plus two is   four'));
    const empty = encodeRequest(tok, { context: '', continuation: 'four' });
    expect(empty).toEqual({ context: [tok.endOfTextId], continuation: tok.encode('four') });
  });

  it('scores every choice and aggregates acc, acc_norm and acc_bytes from the log-likelihoods', async () => {
    const tok = await loadTokenizer(BPE512);
    const model = GPTNeoX.random(
      {
        ...uniformConfig({ vocabSize: 512, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 64 }),
        initializerRange: 0.5,
      },
      4,
    );
    const tasks = loadTasks([
      task(
        'scored',
        {
          doc_to_text: 'q',
          doc_to_choice: '{{choices}}',
          doc_to_target: 'label',
          metric_list: [{ metric: 'acc' }, { metric: 'acc_norm' }, { metric: 'acc_bytes' }, { metric: 'exact_match' }],
        },
        docs,
      ),
    ]);
    const { scores, samples } = await evaluateTasks(model, tok, tasks, { batchSize: 2 });
    // Every log-likelihood is the model's: the continuation's log-probabilities summed, one pass per request.
    const e = encodeRequest(tok, tasks[0].docs[0].requests[1]);
    const input = [...e.context, ...e.continuation].slice(0, -1);
    const logits = tf.tidy(() => model.logits2d(tf.tensor2d(input, [1, input.length], 'int32')));
    const rows = (await logits.array()) as number[][];
    logits.dispose();
    let ll = 0;
    e.continuation.forEach((t, j) => {
      const row = rows[e.context.length - 1 + j];
      const max = Math.max(...row);
      ll += row[t] - max - Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    });
    expect(samples[0].responses[1][0]).toBeCloseTo(ll, 4);
    for (const s of samples) {
      const lls = s.responses.map((r) => r[0]);
      const choices = tasks[0].docs[s.doc].choices;
      const best = (xs: number[]) => xs.indexOf(Math.max(...xs));
      expect(s.metrics.acc).toBe(best(lls) === s.gold ? 1 : 0);
      expect(s.metrics.acc_norm).toBe(best(lls.map((v, i) => v / [...choices[i]].length)) === s.gold ? 1 : 0);
      expect(s.metrics.acc_bytes).toBe(best(lls.map((v, i) => v / Buffer.byteLength(choices[i]))) === s.gold ? 1 : 0);
    }
    const accs = samples.map((s) => s.metrics.acc!);
    expect(scores[0].metrics.acc!.value).toBe(accs.reduce((a, b) => a + b, 0) / accs.length);
    expect(Object.keys(scores[0].metrics)).toEqual(['acc', 'acc_norm', 'acc_bytes', 'exact_match']);
    model.dispose();
  });
});

describe('on every backend', () => {
  it('the same log-likelihoods on each backend', async () => {
    const tok = await loadTokenizer(BPE512);
    const tasks = loadTasks([
      task('backends', { doc_to_text: 'Q: {{q}}\nA:', doc_to_choice: '{{choices}}', doc_to_target: 'label' }, docs2),
    ]);
    const config = {
      ...uniformConfig({ vocabSize: 512, hiddenSize: 32, numLayers: 2, numHeads: 4, maxPositions: 64 }),
      initializerRange: 0.3,
    };
    const weights = GPTNeoX.random(config, 8);
    const tensors = await weights.toHost();
    weights.dispose();
    const results: Record<string, number[]> = {};
    for (const backend of await testBackends()) {
      await useBackend(backend);
      const model = GPTNeoX.fromTensors(config, tensors, backend);
      const { samples } = await evaluateTasks(model, tok, tasks, { batchSize: 3 });
      results[backend] = samples.flatMap((x) => x.responses.map((r) => r[0]));
      model.dispose();
    }
    await useBackend('cpu');
    for (const [backend, lls] of Object.entries(results)) {
      lls.forEach((ll, i) => expect(Math.abs(ll - results.cpu[i]), `${backend} request ${i}`).toBeLessThan(1e-3));
    }
  }, 300_000);
});

describe('bits per byte', () => {
  it('counts the UTF-8 bytes every scored token stands for; separators count none', async () => {
    const bytes = tokenByteLengths(new ByteTokenizer());
    expect(bytes[65]).toBe(1);
    expect(bytes[256]).toBe(0);
    const tok = await loadTokenizer(BPE512);
    const lengths = tokenByteLengths(tok);
    const docs = ['Fellow citizens — the state of our Union is strong.', 'naïve café, 日本語 and 😀 emoji'];
    const stream = tokenizeDocuments(docs, tok);
    let total = 0;
    for (const id of stream) total += lengths[id];
    expect(total).toBe(docs.reduce((n, d) => n + Buffer.byteLength(d), 0));
    // Validation windows score tokens 1..W·T: every byte but the first token's, when they cover the stream.
    const seqLen = stream.length - 1;
    expect(scoredBytes(stream, { seqLen, batchSize: 1 }, lengths)).toBe(total - lengths[stream[0]]);
  });

  it('is the loss per byte in bits, and offshoot eval reports it next to perplexity', async () => {
    const tok = await loadTokenizer(BPE512);
    const model = GPTNeoX.random(
      uniformConfig({ vocabSize: 512, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 64 }),
      5,
    );
    const stream = tokenizeDocuments(['The state of our Union is strong, and the economy grows. '.repeat(20)], tok);
    const options = { seqLen: 16, batchSize: 4 };
    const r = await evaluateText(model, stream, tok, options);
    const plain = await evaluateLoss(model, evalBatches(stream, options));
    expect(r.loss).toBe(plain.loss);
    expect(r.bytes).toBe(scoredBytes(stream, options, tokenByteLengths(tok)));
    expect(r.bpb).toBeCloseTo((plain.loss * plain.tokens) / (Math.LN2 * r.bytes), 12);
    expect(bitsPerByte(Math.LN2, 10, 5)).toBeCloseTo(2, 12);
    model.dispose();

    // The CLI on a checkpoint with a tokenizer: the same relation between its figures.
    const dir = path.join(tmp, 'bpb-model');
    const m2 = GPTNeoX.random(
      uniformConfig({ vocabSize: 512, hiddenSize: 16, numLayers: 1, numHeads: 2, maxPositions: 64 }),
      6,
    );
    await saveCheckpoint(dir, m2.config, await m2.toHost(), {
      extraFiles: { 'tokenizer.json': fs.readFileSync(path.join(BPE512, 'tokenizer.json')) },
    });
    m2.dispose();
    const out = offshoot(
      '--backend',
      'cpu',
      'eval',
      '--model',
      dir,
      '--data',
      'sotu:val',
      '--seq-len',
      '32',
      '--max-tokens',
      '2048',
      '--json',
    );
    expect(out.status, out.stderr).toBe(0);
    const j = JSON.parse(out.stdout.trim().split('\n').pop()!) as {
      loss: number;
      ppl: number;
      bpb: number;
      tokens: number;
      bytes: number;
    };
    expect(j.tokens).toBe(2048);
    expect(j.bytes).toBeGreaterThan(j.tokens);
    expect(j.bpb).toBeCloseTo((j.loss * j.tokens) / (Math.LN2 * j.bytes), 10);
    const text = offshoot(
      '--backend',
      'cpu',
      'eval',
      '--model',
      dir,
      '--data',
      'sotu:val',
      '--seq-len',
      '32',
      '--max-tokens',
      '2048',
    );
    expect(text.stdout).toMatch(
      /sotu:val: loss \d+\.\d{4}, perplexity \d+\.\d{2}, \d+\.\d{4} bits per byte over 2048 tokens \(\d+ bytes\)/,
    );
  });
});
