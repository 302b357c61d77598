/**
 * A reader for deploy/images/Dockerfile.*: instructions grouped by stage, continuation lines joined,
 * comments dropped. Enough for the Dockerfiles here (test/deploy-images.test.ts, check-build.ts), not a
 * general Dockerfile parser (no heredocs, no escape directive).
 */
import * as fs from 'node:fs';

export interface DockerInstruction {
  instruction: string;
  args: string;
  line: number;
}

export interface DockerStage {
  from: string;
  name?: string;
  instructions: DockerInstruction[];
}

/** Parses a Dockerfile into stages of instructions (continuation lines joined, comments dropped). */
export function parseDockerfile(file: string): { args: DockerInstruction[]; stages: DockerStage[] } {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  const all: DockerInstruction[] = [];
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let text = lines[i];
    if (/^\s*(#|$)/.test(text)) continue;
    while (/\\\s*$/.test(text) && i + 1 < lines.length) {
      i++;
      if (/^\s*#/.test(lines[i])) continue;
      text = text.replace(/\\\s*$/, ' ') + lines[i].trim();
    }
    const m = /^\s*([A-Za-z]+)\s+([\s\S]*)$/.exec(text);
    if (m) all.push({ instruction: m[1].toUpperCase(), args: m[2].replace(/\s+/g, ' ').trim(), line: start + 1 });
  }
  const args: DockerInstruction[] = [];
  const stages: DockerStage[] = [];
  for (const ins of all) {
    if (ins.instruction === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args)!;
      stages.push({ from: m[1], name: m[2], instructions: [] });
    } else if (stages.length === 0) args.push(ins);
    else stages.at(-1)!.instructions.push(ins);
  }
  return { args, stages };
}

/** The shell commands of a RUN instruction (split on && and ;). */
export function runCommands(run: string): string[] {
  return run
    .split(/&&|;/)
    .map((s) => s.trim())
    .filter(Boolean);
}
