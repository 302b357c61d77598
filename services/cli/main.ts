/**
 * The `offshoot` command.
 *
 * A command loads only what it needs: each command group lives in its own module, and COMMANDS below
 * says which module defines which top-level commands. Only the module of the command being run is
 * imported (all of them for `--help` or an unknown command), so `offshoot teacher train`, `eval`,
 * `logits`, `search` and `subnet` run on a machine where Temporal and NATS are not installed
 * (test/cli-lean.test.ts runs them so). To add a command, write its module (a function that registers
 * it on the program) and add one line here; keep Temporal, NATS and the local stack out of modules
 * that compute-only commands share.
 */
import { Command, Option } from 'commander';

import { BACKEND_CHOICES } from '../../core/model/backend.js';
import { PRECISIONS } from '../../core/model/precision.js';

type Register = (program: Command) => void;

interface CommandModule {
  /** The top-level commands it registers. */
  names: string[];
  load: () => Promise<Register>;
}

const COMMANDS: CommandModule[] = [
  { names: ['teacher'], load: async () => (await import('./teacher.js')).registerTeacherCommands },
  { names: ['teacher'], load: async () => (await import('./serve.js')).registerTeacherServeCommand },
  { names: ['eval', 'logits'], load: async () => (await import('./eval.js')).registerEvalCommands },
  { names: ['export'], load: async () => (await import('./export.js')).registerExportCommand },
  { names: ['subnet'], load: async () => (await import('./subnet.js')).registerSubnetCommands },
  { names: ['search'], load: async () => (await import('./search.js')).registerSearchCommand },
  { names: ['worker'], load: async () => (await import('./worker.js')).registerWorkerCommand },
  { names: ['pretrain-rank'], load: async () => (await import('./pretrain-rank.js')).registerPretrainRankCommand },
  { names: ['run', 'status', 'cancel'], load: async () => (await import('./run.js')).registerRunCommands },
  {
    names: ['watch', 'dashboard'],
    load: async () => {
      const [{ registerProgressCommands }, { embeddedNats }] = await Promise.all([
        import('../progress/index.js'),
        import('./run.js'),
      ]);
      return (program) => registerProgressCommands(program, { embeddedNats });
    },
  },
  { names: ['experiment'], load: async () => (await import('./experiment.js')).registerExperimentCommands },
  { names: ['data'], load: async () => (await import('./data.js')).registerDataCommands },
];

/** The options every command takes (before its name). */
function withGlobalOptions(program: Command): Command {
  return program
    .addOption(new Option('--backend <name>', `compute backend: ${BACKEND_CHOICES.join(', ')}`).env('OFFSHOOT_BACKEND'))
    .addOption(
      new Option(
        '--precision <p>',
        `arithmetic: ${PRECISIONS.join(' (bf16 products, f32 master weights; cuda) or ')}`,
      ).env('OFFSHOOT_PRECISION'),
    );
}

/** The top-level command named on the command line (`help X` names X), if any. */
function requestedCommand(argv: string[]): string | undefined {
  const { operands } = withGlobalOptions(new Command())
    .allowUnknownOption()
    .helpOption(false)
    .parseOptions(argv.slice(2));
  return operands[0] === 'help' ? operands[1] : operands[0];
}

export async function buildProgram(argv: string[] = process.argv): Promise<Command> {
  const program = withGlobalOptions(new Command('offshoot'))
    .description('grow small language models out of large ones: sub-network search and distillation')
    .showHelpAfterError();
  const wanted = requestedCommand(argv);
  const chosen = COMMANDS.filter((c) => wanted !== undefined && c.names.includes(wanted));
  if (chosen.length) {
    for (const c of chosen) {
      const register = await c.load().catch((err: Error) => {
        throw new Error(`the ${wanted} command cannot load here: ${err.message.split('\n')[0]}`);
      });
      register(program);
    }
    return program;
  }
  // The full list: a command whose module cannot load here (a dependency not installed) says so.
  const loaded = await Promise.allSettled(COMMANDS.map((c) => c.load()));
  loaded.forEach((r, i) => {
    if (r.status === 'fulfilled') r.value(program);
    else
      for (const name of COMMANDS[i].names)
        if (!program.commands.some((c) => c.name() === name))
          program.command(name).description(`(not available here: ${(r.reason as Error).message.split('\n')[0]})`);
  });
  return program;
}

try {
  await (await buildProgram()).parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`offshoot: ${(err as Error).message}\n`);
  if (process.env.OFFSHOOT_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
  process.exitCode = 1;
}
