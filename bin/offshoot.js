#!/usr/bin/env node
// The compiled CLI when `npm run build` has produced it; in a source checkout without a build, the
// TypeScript itself through tsx.
import { existsSync } from 'node:fs';

const compiled = new URL('../dist/services/cli/main.js', import.meta.url);
if (existsSync(compiled)) {
  await import(compiled.href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import(new URL('../services/cli/main.ts', import.meta.url).href);
}
