/**
 * `offshoot pretrain-rank`: one rank of a data-parallel training segment. The pretrain worker starts
 * these (services/pretrain/data-parallel.ts); it is not meant to be run by hand, so --help leaves it out.
 */
import type { Command } from 'commander';

import { readRankJob, runRank } from '../pretrain/rank.js';
import { activeBackend, withBackend } from './backend-option.js';
import { nonNegativeInt } from './common.js';

export function registerPretrainRankCommand(program: Command): void {
  program
    .command('pretrain-rank', { hidden: true })
    .description('one rank of a data-parallel training segment (started by the pretrain worker)')
    .requiredOption('--job <file>', 'the segment (JSON, written by the pretrain worker)')
    .requiredOption('--rank <n>', 'this rank', nonNegativeInt('--rank'))
    .action(
      withBackend(async (opts: { job: string; rank: number }) => {
        const job = readRankJob(opts.job);
        if (opts.rank >= job.worldSize)
          throw new Error(`--rank ${opts.rank}: the job has ${job.worldSize} ranks (0-${job.worldSize - 1})`);
        const backend = activeBackend()!;
        await runRank(job, opts.rank, backend.name, backend.detail);
      }),
    );
}
