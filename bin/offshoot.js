#!/usr/bin/env node
// In a development checkout (tsx installed) the CLI runs from the TypeScript sources, so it is never a
// stale build; in an installation without dev dependencies (the container images) it runs the
// compiled dist/ that `npm run build` produced.
import { existsSync } from 'node:fs';

const sources = new URL('../services/cli/main.ts', import.meta.url);
const compiled = new URL('../dist/services/cli/main.js', import.meta.url);

let tsx = null;
if (existsSync(sources)) {
  try {
    tsx = await import('tsx/esm/api');
  } catch {
    // No dev dependencies here: use the build.
  }
}
if (tsx) {
  tsx.register();
  await import(sources.href);
} else if (existsSync(compiled)) {
  await import(compiled.href);
} else {
  process.stderr.write('offshoot: no build found (dist/); run `npm run build` or scripts/setup.sh\n');
  process.exitCode = 1;
}
