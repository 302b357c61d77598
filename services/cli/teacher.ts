/** `offshoot teacher train`: train a GPT-NeoX on a corpus into a checkpoint directory (resumable; core/teacher). */
import type { Command } from 'commander';

import { DEFAULT_TRAIN_CORPUS, DEFAULT_VALIDATION_CORPUS, defaultTokenStore } from '../../core/data/index.js';
import { MODEL_PRESETS } from '../../core/model/index.js';
import { TEACHER_TRAIN_DEFAULTS, type TeacherTrainSettings, trainTeacher } from '../../core/teacher/index.js';
import { withBackend } from './backend-option.js';
import { nonNegativeInt, positiveInt, positiveNumber } from './options.js';
import { ProgressBar } from './progress.js';

interface TeacherTrainCliOptions extends TeacherTrainSettings {
  data: string;
  val: string;
  out: string;
  tokenizer?: string;
  json?: boolean;
}

async function teacherTrainAction(opts: TeacherTrainCliOptions): Promise<void> {
  const { json, ...options } = opts;
  const bar = new ProgressBar(opts.steps, 'train');
  const summary = await trainTeacher(
    { ...options, tokenCache: defaultTokenStore() },
    {
      log: (line) => process.stderr.write(`${line}\n`),
      onStep: (r) =>
        bar.update(
          r.step,
          `loss ${r.loss.toFixed(3)} val ${Number.isNaN(r.valLoss) ? '-' : r.valLoss.toFixed(3)} ${Math.round(r.tokensPerSecond)} tok/s`,
        ),
    },
  );
  bar.done();
  if (json) console.log(JSON.stringify(summary));
}

export function registerTeacherCommands(program: Command): void {
  const teacher =
    program.commands.find((c) => c.name() === 'teacher') ??
    program.command('teacher').description('the teacher model: train one, or serve its logits');
  const d = TEACHER_TRAIN_DEFAULTS;
  teacher
    .command('train')
    .description('train a GPT-NeoX on a corpus into a checkpoint directory; rerunning continues an unfinished run')
    .option(
      '--data <spec>',
      'training data spec: sotu:train, sotu:val, mobydick, a file, folder or glob, or a spec file (docs/data.md)',
      DEFAULT_TRAIN_CORPUS,
    )
    .option('--val <spec>', 'validation data spec (e.g. "corpus.yaml;split=val")', DEFAULT_VALIDATION_CORPUS)
    .option('--out <dir>', 'checkpoint directory', 'runs/teacher')
    .option('--preset <name>', `model shape: ${Object.keys(MODEL_PRESETS).join(', ')}`, d.preset)
    .option('--tokenizer <path>', 'tokenizer.json (or a folder holding one); default: train a byte-level BPE on --data')
    .option('--vocab <n>', 'vocabulary of the trained BPE', positiveInt('--vocab'), d.vocab)
    .option('--steps <n>', 'optimisation steps', positiveInt('--steps'), d.steps)
    .option('--batch-size <n>', 'sequences per step', positiveInt('--batch-size'), d.batchSize)
    .option('--seq-len <n>', 'tokens per sequence', positiveInt('--seq-len'), d.seqLen)
    .option('--lr <x>', 'peak learning rate (cosine decay to a tenth)', positiveNumber('--lr'), d.lr)
    .option('--warmup <n>', 'warmup steps', nonNegativeInt('--warmup'), d.warmup)
    .option('--seed <n>', 'seed of initialisation and data order', nonNegativeInt('--seed'), d.seed)
    .option(
      '--eval-every <n>',
      'steps between validation passes (default: a quarter of --steps)',
      positiveInt('--eval-every'),
    )
    .option('--eval-tokens <n>', 'validation tokens per pass', positiveInt('--eval-tokens'), d.evalTokens)
    .option(
      '--checkpoint-every <n>',
      'steps between checkpoints (default: a quarter of --steps)',
      positiveInt('--checkpoint-every'),
    )
    .option('--json', 'print a JSON summary at the end')
    .action(withBackend(teacherTrainAction));
}
