/** The global `--backend` and `--precision` options: every command that computes initialises the backend first. */
import type { Command } from 'commander';

import { type BackendInfo, initBackend, parseBackendChoice } from '../../core/model/backend.js';
import { parsePrecision, setPrecision } from '../../core/model/precision.js';

let active: BackendInfo | undefined;

/** Wraps a command action so the backend chosen by `--backend` (or OFFSHOOT_BACKEND) is ready when it runs. */
export function withBackend<A extends unknown[]>(action: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const command = args[args.length - 1] as Command;
    const root = rootOf(command);
    const choice = root.opts().backend as string | undefined;
    const precision = root.opts().precision as string | undefined;
    if (precision !== undefined) {
      setPrecision(parsePrecision(precision));
      // Processes this command starts (workers, the teacher service) compute at the same precision.
      process.env.OFFSHOOT_PRECISION = precision;
    }
    active = await initBackend(choice === undefined ? undefined : parseBackendChoice(choice));
    await action(...args);
  };
}

/** The backend the running command uses (after withBackend initialised it). */
export function activeBackend(): BackendInfo | undefined {
  return active;
}

function rootOf(command: Command): Command {
  let c = command;
  while (c.parent) c = c.parent;
  return c;
}
