// The Hugging Face oracle's Python: the cached virtualenv built by scripts/setup-python.sh
// (torch, transformers, safetensors, all pinned in scripts/hf-requirements.txt).
//
// Location: ${OFFSHOOT_CACHE:-$HOME/.cache/offshoot}/venv. The venv counts as ready only when
// setup-python.sh finished it: its python is executable and its stamp file exists (a build that
// was interrupted leaves no stamp, and tests skip instead of failing on a half-installed venv).
//
// Typical use in a parity test:
//   const py = hfPython();
//   it.skipIf(py === null)("matches transformers", () => { ... spawnSync(py!, [...]) ... });
// or, where the oracle is mandatory, `const py = requireHfPython();`.

import { accessSync, constants, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

const STAMP = '.offshoot-hf-stamp';

/** The venv folder setup-python.sh builds, whether or not it exists yet. */
export function hfVenvDir(): string {
  const cache = process.env.OFFSHOOT_CACHE || join(homedir(), '.cache', 'offshoot');
  return join(cache, 'venv');
}

function venvPythonPath(venv: string): string {
  return process.platform === 'win32' ? join(venv, 'Scripts', 'python.exe') : join(venv, 'bin', 'python');
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false; // follows the venv's python symlink
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** The venv's python path if setup-python.sh has built the venv and it is executable, else null. */
export function hfPython(): string | null {
  const venv = hfVenvDir();
  const python = venvPythonPath(venv);
  return isExecutableFile(python) && isFile(join(venv, STAMP)) ? python : null;
}

/** The venv's python path; throws, saying how to build it, when the venv is missing. */
export function requireHfPython(): string {
  const python = hfPython();
  if (python === null) {
    throw new Error(
      `The Hugging Face oracle venv is missing or incomplete (${venvPythonPath(hfVenvDir())}). ` +
        'Build it once per machine with `scripts/setup-python.sh` (about 1.5 minutes and 4.3 GB: ' +
        'pinned torch, transformers and safetensors from PyPI); set OFFSHOOT_CACHE to put it elsewhere.',
    );
  }
  return python;
}
