/**
 * The tiny teacher the orchestration benchmarks use when none is given: the `tiny` preset trained on
 * the embedded corpus by `offshoot teacher train` (its own byte-level BPE tokenizer), once per machine
 * under the cache.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { computeCheckpointHash, loadConfig, parameterCount } from '../core/model/index.js';
import { offshootCache, offshootCommand, spawnManaged } from '../services/stack/index.js';
import type { TeacherRef } from '../workflows/index.js';

/** `dir`, or the cached tiny teacher (trained on first use), as a TeacherRef. */
export async function benchTeacher(dir: string | undefined, log: (line: string) => void): Promise<TeacherRef> {
  if (!dir) {
    dir = offshootCache('bench', 'teacher-tiny');
    if (!fs.existsSync(path.join(dir, 'offshoot-checkpoint.json'))) {
      log(`training the tiny teacher into ${dir}`);
      const cli = offshootCommand();
      const p = spawnManaged({
        name: 'teacher train',
        command: cli.command,
        args: [
          ...cli.args,
          'teacher',
          'train',
          '--out',
          dir,
          '--preset',
          'tiny',
          '--vocab',
          '300',
          '--steps',
          '120',
          '--seq-len',
          '64',
          '--eval-every',
          '120',
        ],
      });
      const r = await p.exited;
      if (r.code !== 0) throw new Error(`teacher train failed:\n${p.output()}`);
    }
  }
  const config = loadConfig(dir);
  return { dir: path.resolve(dir), hash: computeCheckpointHash(dir), config, parameters: parameterCount(config) };
}
