/** The `offshoot` command. */
import { Command, Option } from 'commander';

import { registerProgressCommands } from '../progress/index.js';
import { registerEvalCommands } from './eval.js';
import { registerTeacherServeCommand } from './serve.js';
import { registerSearchCommand } from './search.js';
import { registerSubnetCommands } from './subnet.js';
import { registerTeacherCommands } from './teacher.js';
import { registerWorkerCommand } from './worker.js';
import { embeddedNats, registerRunCommands } from './run.js';
import { registerExperimentCommands } from './experiment.js';

export function buildProgram(): Command {
  const program = new Command('offshoot')
    .description('grow small language models out of large ones: sub-network search and distillation')
    .addOption(
      new Option('--backend <name>', 'compute backend: auto, tensorflow, webgpu, wasm or cpu (env OFFSHOOT_BACKEND)').env('OFFSHOOT_BACKEND'),
    )
    .showHelpAfterError();
  registerTeacherCommands(program);
  registerTeacherServeCommand(program);
  registerEvalCommands(program);
  registerSubnetCommands(program);
  registerWorkerCommand(program);
  registerRunCommands(program);
  registerProgressCommands(program, { embeddedNats });
  registerSearchCommand(program);
  registerExperimentCommands(program);
  return program;
}

try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`offshoot: ${(err as Error).message}\n`);
  if (process.env.OFFSHOOT_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
  process.exitCode = 1;
}
