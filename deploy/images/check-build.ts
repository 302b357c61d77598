/**
 * Runs an image's build as far as a machine without a Docker engine can (docs/deploy.md, "Checks"):
 *
 *   npx tsx deploy/images/check-build.ts cpu|cuda|vulkan [--worktree] [--keep]
 *
 * 1. The build context: the committed tree (HEAD; --worktree: the working tree with uncommitted and
 *    untracked files) minus .dockerignore, copied to a scratch /app.
 * 2. The build stage's RUN commands, read from the Dockerfile and run in that copy with the stage's ENV
 *    (absolute paths moved under the scratch folder). The system steps are checked instead of run: the
 *    pinned Debian packages must be what this machine's apt offers (bookworm, as the node image), and
 *    the pinned npm must be the one running here.
 * 3. The runtime stage's layout: exactly what its `COPY --from=build` lines take from /app, then, as user
 *    1000 with HOME unset and the runtime ENV: the CLI and the worker's --help, the compute backend the
 *    image is for (tfjs-node's addon through the copied TensorFlow libraries, or Dawn), and the Temporal
 *    workflow bundle (webpack) from the pruned dependencies.
 *
 * Prints one line per step and exits non-zero at the first failure. Takes minutes (npm ci, the build, and
 * for cpu and cuda TensorFlow's wheels: ~275 MB and ~3 GB from PyPI into a fresh cache).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { parseDockerfile, runCommands } from './dockerfile.js';

const ROOT = path.resolve(import.meta.dirname, '..', '..');
const variant = process.argv[2];
const keep = process.argv.includes('--keep');
const worktree = process.argv.includes('--worktree');
if (!['cpu', 'cuda', 'vulkan'].includes(variant ?? '')) {
  console.error('usage: npx tsx deploy/images/check-build.ts cpu|cuda|vulkan [--worktree] [--keep]');
  process.exit(2);
}
const dockerfile = path.join(ROOT, 'deploy', 'images', `Dockerfile.${variant}`);
const { args, stages } = parseDockerfile(dockerfile);
const [build, runtime] = stages;
const work = fs.mkdtempSync(path.join(os.tmpdir(), `offshoot-image-${variant}-`));
fs.chmodSync(work, 0o755);
/** Absolute paths of the image, under the scratch folder. */
const inImage = (p: string) => path.join(work, 'root', p);
const started = Date.now();

function step(what: string): void {
  console.log(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${what}`);
}

function fail(what: string): never {
  console.error(`check-build ${variant}: FAILED: ${what}${keep ? '' : ` (rerun with --keep to inspect ${work})`}`);
  if (!keep) fs.rmSync(work, { recursive: true, force: true });
  process.exit(1);
}

function argValue(name: string): string {
  const a = args.find((x) => x.args.startsWith(`${name}=`));
  if (!a) fail(`no ARG ${name}`);
  return a.args.slice(name.length + 1);
}

/** ENV lines as a map, with the image's absolute paths moved under the scratch folder. */
function envOf(stage: typeof build): Record<string, string> {
  const env: Record<string, string> = {};
  for (const i of stage.instructions.filter((x) => x.instruction === 'ENV')) {
    for (const kv of i.args.split(/\s+/)) {
      const [k, v] = kv.split('=');
      env[k] = v.startsWith('/') ? inImage(v) : v;
    }
  }
  return env;
}

function sh(command: string, options: { cwd: string; env: NodeJS.ProcessEnv; asUser?: boolean }): void {
  const argv = options.asUser
    ? ['setpriv', '--reuid=1000', '--regid=1000', '--clear-groups', 'bash', '-o', 'pipefail', '-c', command]
    : ['bash', '-o', 'pipefail', '-c', command];
  const r = spawnSync(argv[0], argv.slice(1), {
    cwd: options.cwd,
    env: options.env,
    encoding: 'utf8',
    maxBuffer: 256 << 20,
  });
  if (r.status !== 0) {
    process.stderr.write(`${r.stdout}\n${r.stderr}`.split('\n').slice(-40).join('\n'));
    fail(`\`${command}\` exited ${r.status ?? r.signal}`);
  }
}

// ---- 1. the build context ------------------------------------------------------------------------
step(`context: ${path.relative(ROOT, dockerfile)}, scratch ${work}`);
const ignore = fs
  .readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'));
const ignored = (file: string) =>
  ignore.some((pat) => {
    const re = new RegExp(`^${pat.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}(/|$)`);
    return re.test(file) || re.test(path.basename(file));
  });
const app = path.join(work, 'build', 'app');
let files: string[];
if (worktree) {
  // The working tree as it is, uncommitted and untracked files included (what `docker build .` sends).
  files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: ROOT, encoding: 'utf8' })
    .split('\0')
    .filter((f) => f && !ignored(f) && fs.existsSync(path.join(ROOT, f)));
  for (const f of files) {
    fs.mkdirSync(path.dirname(path.join(app, f)), { recursive: true });
    fs.cpSync(path.join(ROOT, f), path.join(app, f), { verbatimSymlinks: true });
  }
} else {
  // The committed tree (what CI checks out), so others' work in progress in this checkout stays out.
  const tree = path.join(work, 'tree');
  fs.mkdirSync(tree);
  execFileSync('bash', ['-o', 'pipefail', '-c', `git -C "${ROOT}" archive --format=tar HEAD | tar -x -C "${tree}"`]);
  files = execFileSync('git', ['ls-tree', '-r', '--name-only', '-z', 'HEAD'], { cwd: ROOT, encoding: 'utf8' })
    .split('\0')
    .filter((f) => f && !ignored(f) && fs.existsSync(path.join(tree, f)));
  for (const f of files) {
    fs.mkdirSync(path.dirname(path.join(app, f)), { recursive: true });
    fs.renameSync(path.join(tree, f), path.join(app, f));
  }
  fs.rmSync(tree, { recursive: true, force: true });
}
step(
  `context: ${files.length} files of ${worktree ? 'the working tree' : `commit ${execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim()}`} (without ${ignore.join(', ')})`,
);

// ---- 2. the build stage ----------------------------------------------------------------------------
/** Checks the pinned Debian packages of an `apt-get install` RUN against this machine's apt (bookworm). */
function checkApt(commands: string[], stage: string): void {
  for (const pkg of commands
    .filter((c) => c.startsWith('apt-get install'))
    .flatMap((c) =>
      c
        .split(/\s+/)
        .slice(2)
        .filter((w) => !w.startsWith('-')),
    )) {
    const [name, version] = pkg.split('=');
    const policy = execFileSync('apt-cache', ['policy', name], { encoding: 'utf8' });
    const candidate = /Candidate:\s*(\S+)/.exec(policy)?.[1];
    if (candidate !== version)
      fail(
        `apt package ${name}: pinned ${version}, this machine's apt offers ${candidate ?? 'nothing'} (run apt-get update?)`,
      );
    step(`apt (${stage} stage): ${name}=${version} is what Debian bookworm offers (a system step, not run here)`);
  }
}
const buildEnv: NodeJS.ProcessEnv = { ...process.env, ...envOf(build) };
const npmVersion = argValue('NPM_VERSION');
for (const run of runtime.instructions.filter((i) => i.instruction === 'RUN').map((i) => runCommands(i.args)))
  checkApt(run, 'runtime');
for (const run of build.instructions.filter((i) => i.instruction === 'RUN').map((i) => i.args)) {
  const commands = runCommands(run);
  if (commands.some((c) => c.startsWith('apt-get install'))) {
    checkApt(commands, 'build');
    continue;
  }
  if (run.startsWith('npm install -g')) {
    const have = execFileSync('npm', ['--version'], { encoding: 'utf8' }).trim();
    if (have !== npmVersion) fail(`the image pins npm ${npmVersion}; this machine runs ${have}`);
    step(`npm: ${npmVersion}, as pinned (a system step)`);
    continue;
  }
  step(`RUN ${run}`);
  sh(run, { cwd: app, env: buildEnv });
}

// ---- 3. the runtime stage --------------------------------------------------------------------------
const final = path.join(work, 'final', 'app');
fs.mkdirSync(final, { recursive: true });
for (const c of runtime.instructions.filter(
  (i) => i.instruction === 'COPY' && i.args.startsWith('--from=build /app/'),
)) {
  const parts = c.args.split(/\s+/).slice(1);
  const dest = parts.pop()!;
  for (const src of parts) {
    const to = dest.endsWith('/') ? path.join(final, dest, path.basename(src)) : path.join(final, dest);
    fs.cpSync(path.join(app, src.slice('/app/'.length)), to, { recursive: true, verbatimSymlinks: true });
  }
}
// The TensorFlow libraries stay where the build put them: the image copies them to the same path.
const runtimeEnv: NodeJS.ProcessEnv = { PATH: process.env.PATH, ...envOf(runtime) };
fs.mkdirSync(runtimeEnv.OFFSHOOT_CACHE!, { recursive: true });
fs.chownSync(runtimeEnv.OFFSHOOT_CACHE!, 1000, 1000);
step(`runtime layout: ${fs.readdirSync(final).join(', ')}; as uid 1000, env ${Object.keys(envOf(runtime)).join(' ')}`);

const checks: [string, string][] = [
  ['the CLI', 'node bin/offshoot.js --help >/dev/null'],
  ['the worker command', 'node bin/offshoot.js worker --help >/dev/null'],
  ['the teacher service command', 'node bin/offshoot.js teacher serve --help >/dev/null'],
  [
    'the Temporal workflow bundle (webpack, from the pruned dependencies)',
    `node --input-type=module -e "const { workflowBundle } = await import('./dist/services/worker/index.js'); const { code } = await workflowBundle(console.log); if (code.length < 100000) throw new Error('bundle too small');"`,
  ],
];
if (variant === 'vulkan') {
  checks.push([
    'Dawn (the webgpu package) loads',
    `node --input-type=module -e "const m = await import('webgpu'); if (typeof m.create !== 'function') throw new Error('no create()');"`,
  ]);
} else {
  const pkg = variant === 'cuda' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
  checks.push([
    `${pkg} on the copied TensorFlow libraries`,
    `node -e "const tf = require('${pkg}'); const y = tf.matMul(tf.tensor2d([[1, 2], [3, 4]]), tf.tensor2d([[5], [6]])).dataSync(); if (tf.getBackend() !== 'tensorflow' || y[0] !== 17) throw new Error('bad backend');"`,
  ]);
}
for (const [what, command] of checks) {
  step(`runtime: ${what}`);
  sh(command, { cwd: final, env: runtimeEnv, asUser: true });
}
step(
  `ok: Dockerfile.${variant}'s build stage ran and its runtime layout works (no Docker engine: base images, apt and the image itself not built)`,
);
if (!keep) fs.rmSync(work, { recursive: true, force: true });
