/**
 * Helpers for the deployment tests (test/deploy-*.test.ts): rendering deploy/k8s with kustomize (the
 * engine of `kubectl apply -k`), validating what it renders against the Kubernetes and KEDA schemas of
 * kubernetes-models and @kubernetes-models/keda, a strict check for unknown fields (TypeScript's excess
 * property check against the same packages' types), and reading the Dockerfiles.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { ScaledObject, TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import ts from 'typescript';
import { parseAllDocuments } from 'yaml';

export const ROOT = path.join(import.meta.dirname, '..', '..');
export const K8S = path.join(ROOT, 'deploy', 'k8s');
export const IMAGES = path.join(ROOT, 'deploy', 'images');
export const OVERLAYS = ['cpu', 'cuda', 'vulkan', 'production', 'multi-gpu'] as const;
export type Overlay = (typeof OVERLAYS)[number];

const CACHE_BIN = path.join(process.env.OFFSHOOT_CACHE || path.join(os.homedir(), '.cache', 'offshoot'), 'bin');

function findTool(name: string, envVar: string): string {
  const candidates = [
    process.env[envVar],
    path.join(CACHE_BIN, name),
    ...(process.env.PATH ?? '').split(path.delimiter).map((d) => path.join(d, name)),
  ];
  for (const c of candidates) if (c && fs.existsSync(c)) return c;
  throw new Error(
    `${name} not found: run scripts/setup-deploy-tools.sh (scripts/setup.sh --test does), or set ${envVar}`,
  );
}

export const kustomizeBinary = (): string => findTool('kustomize', 'OFFSHOOT_KUSTOMIZE');
export const hadolintBinary = (): string => findTool('hadolint', 'OFFSHOOT_HADOLINT');

/** A Kubernetes object as rendered (plain JSON). */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [key: string]: unknown;
}

/** The Secret files overlays/production reads (never in git); placeholders where a test renders it. */
export const PRODUCTION_SECRET_FILES = [
  'temporal/tls.crt',
  'temporal/tls.key',
  'temporal/ca.crt',
  'teacher/tls.crt',
  'teacher/tls.key',
  'teacher/ca.crt',
  'teacher-client/tls.crt',
  'teacher-client/tls.key',
  'teacher-client/ca.crt',
  'nats/nats.creds',
];

const rendered = new Map<string, K8sObject[]>();

/** `kustomize build` of an overlay (or `base`), parsed; overlays/production from a copy with placeholder secret files. */
export function render(overlay: Overlay | 'base'): K8sObject[] {
  const hit = rendered.get(overlay);
  if (hit) return hit;
  let dir = overlay === 'base' ? path.join(K8S, 'base') : path.join(K8S, 'overlays', overlay);
  if (overlay === 'production') {
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-k8s-'));
    process.once('exit', () => fs.rmSync(copy, { recursive: true, force: true }));
    fs.cpSync(K8S, copy, { recursive: true });
    for (const f of PRODUCTION_SECRET_FILES) {
      const file = path.join(copy, 'overlays', 'production', 'secrets', f);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, `placeholder for ${f}\n`);
    }
    dir = path.join(copy, 'overlays', 'production');
  }
  const out = execFileSync(kustomizeBinary(), ['build', dir], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const objects = parseAllDocuments(out)
    .map((d) => {
      if (d.errors.length) throw new Error(`kustomize build ${overlay}: ${d.errors[0].message}`);
      return d.toJS() as K8sObject | null;
    })
    .filter((o): o is K8sObject => o !== null);
  rendered.set(overlay, objects);
  return objects;
}

/** The schema (kubernetes-models class) of each kind the manifests use. */
export const MODELS: Record<string, { new (data: never): { validate(): void } }> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/ConfigMap': ConfigMap,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'apps/v1/Deployment': Deployment,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': TriggerAuthentication,
};

/** The same kinds' TypeScript interfaces: module and name. */
const TYPES: Record<string, [string, string]> = {
  'v1/Namespace': ['kubernetes-models/v1', 'INamespace'],
  'v1/ServiceAccount': ['kubernetes-models/v1', 'IServiceAccount'],
  'v1/ConfigMap': ['kubernetes-models/v1', 'IConfigMap'],
  'v1/Secret': ['kubernetes-models/v1', 'ISecret'],
  'v1/Service': ['kubernetes-models/v1', 'IService'],
  'v1/PersistentVolumeClaim': ['kubernetes-models/v1', 'IPersistentVolumeClaim'],
  'apps/v1/Deployment': ['kubernetes-models/apps/v1', 'IDeployment'],
  'policy/v1/PodDisruptionBudget': ['kubernetes-models/policy/v1', 'IPodDisruptionBudget'],
  'keda.sh/v1alpha1/ScaledObject': ['@kubernetes-models/keda/keda.sh/v1alpha1', 'IScaledObject'],
  'keda.sh/v1alpha1/TriggerAuthentication': ['@kubernetes-models/keda/keda.sh/v1alpha1', 'ITriggerAuthentication'],
};

export const gvk = (o: K8sObject): string => `${o.apiVersion}/${o.kind}`;

/** Schema problems of one object (kubernetes-models' validate()); [] when it conforms. */
export function schemaProblems(o: K8sObject): string[] {
  const Model = MODELS[gvk(o)];
  if (!Model) return [`${gvk(o)} ${o.metadata?.name}: no schema for this kind in the test (add it to MODELS)`];
  try {
    new Model(o as never).validate();
    return [];
  } catch (err) {
    return [`${gvk(o)} ${o.metadata.name}: ${(err as Error).message}`];
  }
}

/**
 * Unknown fields: the JSON schemas accept them (as `kubectl apply --validate=false` would), the API
 * server's strict field validation does not. Each object becomes an object literal typed with its
 * kind's interface; TypeScript's excess property check then reports every field the type lacks, at any
 * depth, and every wrong type. Returns the compiler's messages ([] when clean).
 */
export function strictTypeProblems(sets: Record<string, K8sObject[]>): string[] {
  const dir = path.join(ROOT, 'test-artifacts', 'deploy-strict');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const files = Object.entries(sets).map(([label, objects]) => {
    const imports = new Map<string, Set<string>>();
    const lines: string[] = [];
    objects.forEach((o, i) => {
      const t = TYPES[gvk(o)];
      if (!t) return;
      if (!imports.has(t[0])) imports.set(t[0], new Set());
      imports.get(t[0])!.add(t[1]);
      lines.push(`// ${gvk(o)} ${o.metadata.name}`, `export const o${i}: ${t[1]} = ${JSON.stringify(o, null, 2)};`);
    });
    const head = [...imports].map(([m, names]) => `import type { ${[...names].join(', ')} } from '${m}';`);
    const file = path.join(dir, `${label}.ts`);
    fs.writeFileSync(file, [...head, ...lines, ''].join('\n'));
    return file;
  });
  // One program for every set: the packages' types are loaded once.
  const program = ts.createProgram(files, {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  });
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where =
      d.file && d.start !== undefined
        ? `${path.relative(ROOT, d.file.fileName)}:${d.file.getLineAndCharacterOfPosition(d.start).line + 1}: `
        : '';
    return where + ts.flattenDiagnosticMessageText(d.messageText, '\n');
  });
}

export function find(objects: K8sObject[], kind: string, name: string): K8sObject {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name} among ${objects.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}`);
  return o;
}

/** Loosely typed access to a rendered object's fields (the tests assert their shape). */
// biome-ignore lint/suspicious/noExplicitAny: the tests assert the shape of what they read.
export type Any = any;

/** A container's args as a map of --flag=value (bare flags: true). */
export function flags(args: string[]): Record<string, string | true> {
  const out: Record<string, string | true> = {};
  for (const a of args) {
    const m = /^--([^=]+)(?:=(.*))?$/.exec(a);
    if (m) out[m[1]] = m[2] ?? true;
  }
  return out;
}

// ---- Dockerfiles ----------------------------------------------------------------------------------

export {
  type DockerInstruction,
  type DockerStage,
  parseDockerfile,
  runCommands,
} from '../../deploy/images/dockerfile.js';

export function hadolint(files: string[]): { status: number | null; output: string } {
  const r = spawnSync(hadolintBinary(), ['--no-color', ...files], { encoding: 'utf8' });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}
