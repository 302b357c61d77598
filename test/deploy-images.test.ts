/**
 * deploy/images: the three Dockerfiles lint clean with hadolint, have the shape docs/deploy.md promises
 * (multi-stage, non-root, tini as PID 1, no build tools in the runtime stage, the paths the manifests
 * mount), and their build stages run the project's own setup commands — the ones CI runs through
 * scripts/setup.sh — on the Node and npm CI runs. (This machine has no Docker engine: the images
 * themselves are not built here. deploy/images/check-build.sh runs a build stage's commands and the
 * runtime layout without Docker.)
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  type Any,
  type DockerStage,
  IMAGES,
  ROOT,
  find,
  hadolint,
  parseDockerfile,
  render,
  runCommands,
} from './helpers/deploy.js';

const VARIANTS = ['cpu', 'cuda', 'vulkan'] as const;
const dockerfile = (v: string) => path.join(IMAGES, `Dockerfile.${v}`);
const setupSh = fs.readFileSync(path.join(ROOT, 'scripts', 'setup.sh'), 'utf8');
const setupTf = fs.readFileSync(path.join(ROOT, 'scripts', 'setup-tensorflow.sh'), 'utf8');
const TF_VERSION = /^TF_VERSION=(\S+)$/m.exec(setupTf)![1];

/** Package names an apt-get install line installs. */
function aptPackages(run: string): string[] {
  return runCommands(run)
    .filter((c) => /^apt-get install/.test(c))
    .flatMap((c) =>
      c
        .split(/\s+/)
        .slice(2)
        .filter((w) => !w.startsWith('-')),
    );
}

function argDefault(args: { args: string }[], name: string): string {
  const a = args.find((x) => x.args.startsWith(`${name}=`));
  if (!a) throw new Error(`no ARG ${name}`);
  return a.args.slice(name.length + 1);
}

it('hadolint finds nothing to report in any Dockerfile', () => {
  const r = hadolint(VARIANTS.map(dockerfile));
  expect(r.output).toBe('');
  expect(r.status).toBe(0);
});

describe.each(VARIANTS)('Dockerfile.%s', (variant) => {
  const { args, stages } = parseDockerfile(dockerfile(variant));
  const build = stages.find((s) => s.name === 'build') as DockerStage;
  const runtime = stages.at(-1) as DockerStage;
  const of = (stage: DockerStage, instruction: string) =>
    stage.instructions.filter((i) => i.instruction === instruction).map((i) => i.args);

  it('multi-stage on the Node and npm CI uses: a build stage, then a slim runtime stage', () => {
    expect(stages).toHaveLength(2);
    // The Dockerfile's own text, build arguments unexpanded.
    const nodeImage = 'node:$' + '{NODE_VERSION}-bookworm';
    expect(build.from).toBe(nodeImage);
    expect(runtime.from).toBe(`${nodeImage}-slim`);
    // The Node CI runs (this process), and its npm: package.json's allowScripts needs npm 11.
    expect(argDefault(args, 'NODE_VERSION')).toBe(process.versions.node);
    expect(argDefault(args, 'NPM_VERSION')).toBe(execFileSync('npm', ['--version'], { encoding: 'utf8' }).trim());
    expect(of(build, 'RUN')).toContain('npm install -g "npm@$' + '{NPM_VERSION}" --no-audit --no-fund');
  });

  it("the build stage runs the project's setup commands, the ones scripts/setup.sh (CI) runs", () => {
    const commands = of(build, 'RUN').flatMap(runCommands);
    const project = commands.filter((c) => /^(npm (ci|run|prune)|scripts\/)/.test(c));
    const tf =
      variant === 'cpu'
        ? ['scripts/setup-tensorflow.sh']
        : variant === 'cuda'
          ? ['scripts/setup-tensorflow.sh --gpu', 'scripts/setup-cuda.sh --nccl']
          : [];
    expect(project).toEqual([
      'npm ci --no-audit --no-fund',
      'npm run build',
      'npm prune --omit=dev --no-audit --no-fund',
      ...tf,
    ]);
    // The same commands in CI's setup: npm ci and the build verbatim, the TensorFlow script (whose --gpu
    // variant shares every step but the wheels).
    expect(setupSh).toContain('npm ci --no-audit --no-fund');
    expect(setupSh).toMatch(/npm run (--silent )?build/);
    expect(setupSh).toContain('scripts/setup-tensorflow.sh');
    expect(setupTf).toMatch(/--gpu\) VARIANT=gpu/);
    expect(setupSh).toContain('scripts/setup-cuda.sh');
    // Sources go in after the dependencies (a layer cache that survives source edits), whole, minus
    // what .dockerignore leaves out.
    expect(of(build, 'COPY')).toEqual(['package.json package-lock.json ./', '. .']);
    const ignored = fs
      .readFileSync(path.join(ROOT, '.dockerignore'), 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#'));
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', 'dist', '.git', 'runs']));
    // Downloads come from package registries only: apt (Debian), npm, and PyPI through the script.
    for (const c of commands) expect(c, c).not.toMatch(/\b(curl|wget)\b|https?:\/\//);
  });

  it('the runtime stage: non-root, tini as PID 1 in front of node, no build tools, no package managers', () => {
    expect(of(runtime, 'USER')).toEqual(['1000:1000']);
    expect(of(runtime, 'ENTRYPOINT')).toEqual(['["/usr/bin/tini", "--", "node", "/app/bin/offshoot.js"]']);
    expect(of(runtime, 'COPY')).toContain('--from=build /usr/bin/tini-static /usr/bin/tini');
    expect(aptPackages(of(build, 'RUN').join(' && '))).toContain('tini=0.19.0-1+b3');
    const runs = of(runtime, 'RUN').join(' && ');
    const installed = aptPackages(runs);
    expect(installed.filter((p) => /^(gcc|g\+\+|make|build-essential|python3|binutils|cmake|git)\b/.test(p))).toEqual(
      [],
    );
    expect(installed).toEqual(variant === 'vulkan' ? ['libvulkan1=1.3.239.0-1'] : []);
    expect(runs).not.toMatch(/npm (ci|install|run)|node-gyp|setup-tensorflow/);
    expect(runs).toMatch(/rm -rf \/usr\/local\/lib\/node_modules\/npm /);
    // What runs: the compiled CLI and the production dependencies, nothing else of the sources.
    const fromBuild = of(runtime, 'COPY').filter((c) => c.startsWith('--from=build /app'));
    expect(fromBuild).toEqual([
      '--from=build /app/package.json /app/package-lock.json ./',
      '--from=build /app/bin ./bin',
      '--from=build /app/dist ./dist',
      '--from=build /app/node_modules ./node_modules',
    ]);
  });

  it("the TensorFlow libraries are copied to the path the addon's deps/lib link points to", () => {
    const copies = of(runtime, 'COPY').filter((c) => c.includes('/opt/offshoot/cache/tensorflow/'));
    // The CUDA wheels and setup-cuda.sh's links into them, at the path OFFSHOOT_CUDA_HOME names.
    expect(of(runtime, 'COPY').filter((c) => c.includes('/opt/offshoot/cache/cuda'))).toEqual(
      variant === 'cuda' ? ['--from=build /opt/offshoot/cache/cuda /opt/offshoot/cache/cuda'] : [],
    );
    expect(
      build.instructions.some((i) => i.instruction === 'ENV' && i.args === 'OFFSHOOT_CACHE=/opt/offshoot/cache') ||
        variant === 'vulkan',
    ).toBe(true);
    const dir = { cpu: `tensorflow-cpu-${TF_VERSION}`, cuda: `tensorflow-${TF_VERSION}-cuda12`, vulkan: undefined }[
      variant
    ];
    // scripts/setup-tensorflow.sh: TF_HOME="$TF_CACHE/tensorflow-cpu-$TF_VERSION" or "$TF_CACHE/tensorflow-$TF_VERSION-cuda12".
    expect(setupTf).toContain(
      variant === 'cuda'
        ? 'TF_HOME="$TF_CACHE/tensorflow-$TF_VERSION-cuda12"'
        : 'TF_HOME="$TF_CACHE/tensorflow-cpu-$TF_VERSION"',
    );
    expect(copies).toEqual(
      dir ? [`--from=build /opt/offshoot/cache/tensorflow/${dir} /opt/offshoot/cache/tensorflow/${dir}`] : [],
    );
  });

  it('environment: the backend, the cache and data paths the manifests mount, and the NVIDIA toolkit settings', () => {
    const env = Object.fromEntries(
      of(runtime, 'ENV')
        .join(' ')
        .split(/\s+/)
        .map((kv) => kv.split('=') as [string, string]),
    );
    expect(env.OFFSHOOT_BACKEND).toBe({ cpu: 'tensorflow', cuda: 'auto', vulkan: 'webgpu' }[variant]);
    if (variant === 'cuda') expect(env.OFFSHOOT_CUDA_HOME).toBe('/opt/offshoot/cache/cuda/13');
    expect(env.OFFSHOOT_CACHE).toBe('/var/cache/offshoot');
    expect(of(runtime, 'RUN').join(' ')).toMatch(
      /mkdir -p \/var\/cache\/offshoot \/data && chown 1000:1000 \/var\/cache\/offshoot \/data/,
    );
    const overlay = render(variant);
    const pod = (find(overlay, 'Deployment', 'offshoot-evaluator') as Any).spec.template.spec;
    expect(pod.containers[0].volumeMounts.map((m: Any) => m.mountPath)).toEqual(
      expect.arrayContaining([env.OFFSHOOT_CACHE, '/data', '/tmp']),
    );
    expect(pod.securityContext.runAsUser).toBe(1000);
    if (variant === 'cpu') expect(env.NVIDIA_VISIBLE_DEVICES).toBeUndefined();
    if (variant === 'cuda')
      expect(env).toMatchObject({
        NVIDIA_VISIBLE_DEVICES: 'all',
        NVIDIA_DRIVER_CAPABILITIES: 'compute,utility',
        TF_FORCE_GPU_ALLOW_GROWTH: 'true',
      });
    if (variant === 'vulkan') {
      expect(env).toMatchObject({
        NVIDIA_VISIBLE_DEVICES: 'all',
        NVIDIA_DRIVER_CAPABILITIES: 'compute,utility,graphics',
      });
      const icd = JSON.parse(fs.readFileSync(path.join(IMAGES, 'nvidia_icd.json'), 'utf8'));
      expect(icd.ICD.library_path).toBe('libGLX_nvidia.so.0');
      expect(of(runtime, 'COPY')).toContain('deploy/images/nvidia_icd.json /usr/share/offshoot/vulkan/nvidia_icd.json');
    }
  });
});
