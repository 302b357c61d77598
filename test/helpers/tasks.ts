/**
 * A small zero-shot multiple-choice task made from the bundled corpora, in lm-evaluation-harness's
 * shape (a task YAML and a JSONL file): given a sentence of a State of the Union address, choose the
 * sentence that follows it among four (the other three drawn from elsewhere in the corpus).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { loadCorpus } from '../../core/data/index.js';

export interface NextSentenceDoc {
  context: string;
  choices: string[];
  label: number;
}

/** mulberry32: a small seeded generator, so the task is the same on every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sentences(document: string): string[] {
  return document
    .split(/(?<=[.!?])\s+(?=[A-Z])/)
    .map((s) => s.replace(/\s+/g, ' ').trim())
    .filter((s) => s.length >= 30 && s.length <= 160);
}

/** `count` documents of the next-sentence task from a corpus's documents. */
export function nextSentenceDocs(
  documents: readonly string[],
  options: { count: number; seed: number },
): NextSentenceDoc[] {
  const pairs: [string, string][] = [];
  const pool: string[] = [];
  for (const d of documents) {
    const s = sentences(d);
    pool.push(...s);
    for (let i = 0; i + 1 < s.length; i++) pairs.push([s[i], s[i + 1]]);
  }
  const next = rng(options.seed);
  const docs: NextSentenceDoc[] = [];
  for (let i = 0; i < options.count; i++) {
    const [context, truth] = pairs[Math.floor((i * pairs.length) / options.count)];
    const choices = [truth];
    while (choices.length < 4) {
      const other = pool[Math.floor(next() * pool.length)];
      if (other !== context && !choices.includes(other)) choices.push(other);
    }
    const label = Math.floor(next() * 4);
    [choices[0], choices[label]] = [choices[label], choices[0]];
    docs.push({ context, choices, label });
  }
  return docs;
}

/** Writes the task (YAML + JSONL) into `dir` from a corpus; returns the YAML's path. */
export async function writeNextSentenceTask(
  dir: string,
  options: { corpus?: string; count?: number; seed?: number; name?: string } = {},
): Promise<string> {
  const corpus = await loadCorpus(options.corpus ?? 'sotu:val');
  const docs = nextSentenceDocs(corpus.documents, { count: options.count ?? 40, seed: options.seed ?? 7 });
  fs.mkdirSync(dir, { recursive: true });
  const name = options.name ?? 'sotu_next_sentence';
  const data = path.join(dir, `${name}.jsonl`);
  fs.writeFileSync(data, `${docs.map((d) => JSON.stringify(d)).join('\n')}\n`);
  const yaml = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(
    yaml,
    [
      `task: ${name}`,
      'dataset_path: json',
      'dataset_kwargs:',
      '  data_files:',
      `    test: ${JSON.stringify(data)}`,
      'test_split: test',
      'output_type: multiple_choice',
      'doc_to_text: "{{context}}"',
      'doc_to_choice: "{{choices}}"',
      'doc_to_target: label',
      'metric_list:',
      '  - metric: acc',
      '  - metric: acc_norm',
      '',
    ].join('\n'),
  );
  return yaml;
}
