/**
 * deploy/k8s: every overlay (and the base) rendered by kustomize — the engine of `kubectl apply -k` —
 * validated against the Kubernetes and KEDA schemas (kubernetes-models, @kubernetes-models/keda), checked
 * for unknown fields, and held to what docs/deploy.md promises: GPU limits and one evaluation slot per
 * GPU, gRPC health probes on the teacher, the KEDA temporal scaler on the evaluate queue's activity
 * backlog, grace periods long enough to checkpoint, the restricted security context, the PVC and the PDB,
 * and the wiring between them (endpoints, Secrets, flags the CLI knows).
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { parseConfig } from '../services/config/index.js';
import { SERVICE_NAME } from '../services/teacher/index.js';
import { QUEUE_NAMES, TASK_QUEUES } from '../workflows/index.js';
import {
  type Any,
  type K8sObject,
  OVERLAYS,
  type Overlay,
  ROOT,
  find,
  flags,
  render,
  schemaProblems,
  strictTypeProblems,
} from './helpers/deploy.js';
import { parse as parseYaml } from 'yaml';

const GPU_OVERLAYS: Overlay[] = ['cuda', 'vulkan', 'production', 'multi-gpu'];
/** GPUs per pod where an overlay gives a workload more than one (components/multi-gpu: nodes of 8). */
const GPUS_PER_POD: Partial<Record<Overlay, Record<string, number>>> = {
  'multi-gpu': { 'offshoot-evaluator': 8, 'offshoot-pretrain': 8 },
};
const GPU_WORKLOADS = ['offshoot-teacher', 'offshoot-evaluator', 'offshoot-pretrain'];
const WORKERS = {
  'offshoot-evaluator': 'evaluate',
  'offshoot-pretrain': 'pretrain',
  'offshoot-orchestrator': 'orchestrate',
} as const;
/** Trigger metadata of KEDA's temporal scaler, as documented (keda.sh/docs/2.22/scalers/temporal). */
const TEMPORAL_SCALER_FIELDS = new Set([
  'endpoint',
  'endpointFromEnv',
  'namespace',
  'activationTargetQueueSize',
  'targetQueueSize',
  'taskQueue',
  'queueTypes',
  'workerDeploymentName',
  'workerDeploymentBuildId',
  'includeRunningWorkflowCount',
  'workflowTaskQueueForCount',
  'apiKeyFromEnv',
  'minConnectTimeout',
  'unsafeSsl',
  'tlsServerName',
  'enableTLS',
]);

const deployments = (objs: K8sObject[]): Any[] => objs.filter((o) => o.kind === 'Deployment');
const container = (d: Any): Any => d.spec.template.spec.containers[0];
const argsOf = (d: Any) => flags(container(d).args);
const envConfig = (objs: K8sObject[]): Record<string, string> =>
  (find(objs, 'ConfigMap', configMapName(objs, 'offshoot-env')) as Any).data;

/** A generated ConfigMap's name (kustomize appends a content hash). */
function configMapName(objs: K8sObject[], base: string): string {
  const cm = objs.find(
    (o) => o.kind === 'ConfigMap' && (o.metadata.name === base || o.metadata.name.startsWith(`${base}-`)),
  );
  if (!cm) throw new Error(`no ConfigMap ${base}`);
  return cm.metadata.name;
}

/** The options a command's --help lists (once per command: each asks a new CLI process). */
const helpCache = new Map<string, Set<string>>();
function cliOptions(...command: string[]): Set<string> {
  const hit = helpCache.get(command.join(' '));
  if (hit) return hit;
  const r = spawnSync(process.execPath, [path.join(ROOT, 'bin', 'offshoot.js'), ...command, '--help'], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`offshoot ${command.join(' ')} --help: ${r.stderr}`);
  const options = new Set([...r.stdout.matchAll(/--([a-z][a-z-]*)/g)].map((m) => m[1]));
  helpCache.set(command.join(' '), options);
  return options;
}

describe('every overlay renders and validates', () => {
  it.each([...OVERLAYS, 'base' as const])('%s: kustomize build, Kubernetes and KEDA schemas', (overlay) => {
    const objs = render(overlay);
    expect(objs.length).toBeGreaterThan(10);
    expect(objs.flatMap(schemaProblems)).toEqual([]);
    const kinds = new Set(objs.map((o) => o.kind));
    for (const k of [
      'Namespace',
      'ServiceAccount',
      'ConfigMap',
      'PersistentVolumeClaim',
      'Deployment',
      'Service',
      'PodDisruptionBudget',
    ])
      expect(kinds).toContain(k);
    if (overlay !== 'base') expect(kinds).toContain('ScaledObject');
  });

  it('no unknown fields anywhere (TypeScript excess-property check against the same schemas)', () => {
    const sets = Object.fromEntries([...OVERLAYS, 'base' as const].map((o) => [o, render(o)]));
    expect(strictTypeProblems(sets)).toEqual([]);
  }, 60_000);

  it('the unknown-field check does catch a misspelt field', () => {
    const bad = structuredClone(render('cuda')) as Any[];
    container(bad.find((o) => o.kind === 'Deployment')).resources.limitz = {};
    expect(strictTypeProblems({ misspelt: bad }).join('\n')).toMatch(/'"limitz"' does not exist/);
  }, 60_000);
});

describe.each(OVERLAYS)('overlay %s', (overlay) => {
  const objs = render(overlay);
  const gpu = GPU_OVERLAYS.includes(overlay);
  const env = envConfig(objs);

  it('security: non-root, read-only root filesystem with writable emptyDirs, no privilege escalation, no capabilities, restricted namespace', () => {
    const ns = find(objs, 'Namespace', 'offshoot') as Any;
    expect(ns.metadata.labels['pod-security.kubernetes.io/enforce']).toBe('restricted');
    for (const d of deployments(objs)) {
      const pod = d.spec.template.spec;
      expect(pod.securityContext, d.metadata.name).toMatchObject({
        runAsNonRoot: true,
        runAsUser: 1000,
        seccompProfile: { type: 'RuntimeDefault' },
      });
      expect(pod.automountServiceAccountToken).toBe(false);
      expect(pod.serviceAccountName).toBe('offshoot');
      for (const c of pod.containers) {
        expect(c.securityContext, `${d.metadata.name}/${c.name}`).toEqual({
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          runAsNonRoot: true,
          capabilities: { drop: ['ALL'] },
        });
        // Writable places: /tmp and the cache on emptyDirs, /data on the shared volume.
        const volumes = new Map<string, Any>(pod.volumes.map((v: Any) => [v.name, v]));
        const mount = (p: string) => volumes.get(c.volumeMounts.find((m: Any) => m.mountPath === p)?.name);
        expect(mount('/tmp')?.emptyDir, `${d.metadata.name} /tmp`).toBeDefined();
        expect(mount('/var/cache/offshoot')?.emptyDir, `${d.metadata.name} cache`).toBeDefined();
        expect(mount('/data')?.persistentVolumeClaim?.claimName).toBe('offshoot-data');
        for (const v of volumes.values())
          if (v.emptyDir) expect(v.emptyDir.sizeLimit, `${d.metadata.name} ${v.name}`).toBeDefined();
      }
    }
  });

  it('requests and limits on every container; images set by the overlay', () => {
    for (const d of deployments(objs)) {
      for (const c of d.spec.template.spec.containers) {
        for (const r of ['cpu', 'memory', 'ephemeral-storage']) {
          expect(c.resources.requests[r], `${d.metadata.name} requests.${r}`).toBeDefined();
          expect(c.resources.limits[r], `${d.metadata.name} limits.${r}`).toBeDefined();
        }
        expect(c.image, d.metadata.name).toMatch(/^[\w.-]+(:\d+)?\/[\w./-]+:[\w.-]+$/);
      }
    }
    const tag = (name: string) =>
      container(find(objs, 'Deployment', name))
        .image.split(':')
        .at(-1);
    const variant = overlay === 'production' || overlay === 'multi-gpu' ? 'cuda' : overlay;
    for (const w of GPU_WORKLOADS) expect(tag(w)).toMatch(new RegExp(`-${variant}$`));
    // The orchestrator computes nothing: always the CPU image.
    expect(tag('offshoot-orchestrator')).toMatch(/-cpu$/);
  });

  it(
    gpu
      ? 'nvidia.com/gpu for the teacher, evaluator and pretrain pods (one each, or a node of 8), tolerating the GPU taint; none for the orchestrator'
      : 'no GPU requested anywhere',
    () => {
      for (const d of deployments(objs)) {
        const limits = container(d).resources.limits;
        const tolerations = d.spec.template.spec.tolerations ?? [];
        if (gpu && GPU_WORKLOADS.includes(d.metadata.name)) {
          expect(limits['nvidia.com/gpu'], d.metadata.name).toBe(GPUS_PER_POD[overlay]?.[d.metadata.name] ?? 1);
          expect(tolerations).toContainEqual({ key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' });
        } else {
          expect(limits['nvidia.com/gpu'], d.metadata.name).toBeUndefined();
          expect(
            tolerations.some((t: Any) => t.key === 'nvidia.com/gpu'),
            d.metadata.name,
          ).toBe(false);
        }
      }
    },
  );

  it('workers: the right queue each, flags the CLI knows, one evaluation slot per GPU (one evaluator per GPU with --gpus), endpoints from offshoot-env', () => {
    const known = cliOptions('worker');
    for (const [name, queue] of Object.entries(WORKERS)) {
      const d = find(objs, 'Deployment', name) as Any;
      const c = container(d);
      expect(c.args[0]).toBe('worker');
      const f = argsOf(d);
      expect(f.queues).toBe(queue);
      expect(QUEUE_NAMES).toContain(queue);
      for (const k of Object.keys(f)) expect(known, `${name}: --${k}`).toContain(k);
      expect(f.config).toBe('/etc/offshoot/offshoot.yaml');
      expect(c.volumeMounts).toContainEqual({ name: 'config', mountPath: '/etc/offshoot', readOnly: true });
      expect(d.spec.template.spec.volumes.find((v: Any) => v.name === 'config').configMap.name).toBe(
        configMapName(objs, 'offshoot-config'),
      );
      // Every $(VAR) in the args is defined for the container.
      const defined = new Set([...Object.keys(env), ...(c.env ?? []).map((e: Any) => e.name)]);
      expect(c.envFrom).toContainEqual({ configMapRef: { name: configMapName(objs, 'offshoot-env') } });
      for (const a of c.args)
        for (const m of a.matchAll(/\$\((\w+)\)/g)) expect(defined, `${name}: $(${m[1]})`).toContain(m[1]);
      expect(f.namespace).toBe('$(OFFSHOOT_TEMPORAL_NAMESPACE)');
      expect(f['metrics-host']).toBe('0.0.0.0');
    }
    // Temporal and NATS addresses reach the workers through the environment (OFFSHOOT_TEMPORAL_ADDRESS,
    // OFFSHOOT_NATS_URL are what `offshoot worker` reads when no flag or config names them).
    expect(env.OFFSHOOT_TEMPORAL_ADDRESS).toMatch(/^[\w.-]+:\d+$/);
    expect(env.OFFSHOOT_NATS_URL).toMatch(/^(nats|tls):\/\/[\w.-]+:\d+$/);
    // The token store is on the shared volume, writable by the workers that tokenise: a corpus is
    // tokenised once for every pod and run, not per pod.
    expect(env.OFFSHOOT_TOKENS).toMatch(/^\/data\//);
    for (const name of ['offshoot-evaluator', 'offshoot-pretrain']) {
      const mount = container(find(objs, 'Deployment', name) as Any).volumeMounts.find(
        (m: Any) => m.mountPath === '/data',
      );
      expect(mount?.readOnly, name).not.toBe(true);
    }
    const evaluator = find(objs, 'Deployment', 'offshoot-evaluator') as Any;
    const slots = Number(argsOf(evaluator).slots);
    expect(slots).toBe(1);
    // One evaluator process per pod, or one per GPU of the pod (--gpus=all): one slot per GPU either way.
    const evaluatorGpus = gpu ? container(evaluator).resources.limits['nvidia.com/gpu'] : 1;
    expect(argsOf(evaluator).gpus).toBe(evaluatorGpus > 1 ? 'all' : undefined);
    // The workers' config file parses, and agrees.
    const config = parseConfig(
      parseYaml((find(objs, 'ConfigMap', configMapName(objs, 'offshoot-config')) as Any).data['offshoot.yaml']) ?? {},
      'offshoot.yaml',
    );
    expect(config.workers.evaluateSlots).toBe(slots);
  });

  it('grace periods: Kubernetes waits longer than each process drains (--grace-period + 5 s, plus margin)', () => {
    for (const d of deployments(objs)) {
      const grace = Number(argsOf(d)['grace-period']);
      expect(grace, d.metadata.name).toBeGreaterThan(0);
      // A worker exits at the latest grace + 5 s after SIGTERM; the teacher after its grace period.
      expect(d.spec.template.spec.terminationGracePeriodSeconds, d.metadata.name).toBeGreaterThanOrEqual(
        grace + 5 + 10,
      );
    }
    expect(Number(argsOf(find(objs, 'Deployment', 'offshoot-pretrain'))['grace-period'])).toBeGreaterThanOrEqual(60);
  });

  it('teacher: Deployment behind a headless Service, gRPC health probes (plaintext) or TCP probes (TLS)', () => {
    const d = find(objs, 'Deployment', 'offshoot-teacher') as Any;
    const c = container(d);
    expect(c.args.slice(0, 2)).toEqual(['teacher', 'serve']);
    const known = cliOptions('teacher', 'serve');
    const f = argsOf(d);
    for (const k of Object.keys(f)) expect(known, `teacher: --${k}`).toContain(k);
    expect(f.host).toBe('0.0.0.0');
    expect(f.model).toBe('$(OFFSHOOT_TEACHER_MODEL)');
    expect(env.OFFSHOOT_TEACHER_MODEL).toMatch(/^\/data\//);
    expect(f['metrics-port']).toBe('9464');
    const port = Number(f.port);
    expect(c.ports).toContainEqual({ name: 'grpc', containerPort: port, protocol: 'TCP' });
    expect(d.spec.replicas).toBeGreaterThanOrEqual(2);

    const svc = find(objs, 'Service', 'offshoot-teacher') as Any;
    expect(svc.spec.clusterIP).toBe('None');
    expect(d.spec.template.metadata.labels).toMatchObject(svc.spec.selector);
    expect(svc.spec.ports).toContainEqual({
      name: 'grpc',
      port,
      targetPort: 'grpc',
      protocol: 'TCP',
      appProtocol: 'grpc',
    });
    // Clients dial the Service's name.
    expect(env.OFFSHOOT_TEACHER_TARGETS).toBe(`${svc.metadata.name}:${port}`);
    for (const w of ['offshoot-evaluator', 'offshoot-pretrain'])
      expect(argsOf(find(objs, 'Deployment', w))['teacher-service']).toBe('$(OFFSHOOT_TEACHER_TARGETS)');

    const tls = overlay === 'production';
    if (!tls) {
      expect(c.readinessProbe.grpc).toEqual({ port, service: SERVICE_NAME });
      expect(c.livenessProbe.grpc).toEqual({ port });
      expect(c.startupProbe.grpc).toEqual({ port });
    } else {
      for (const p of ['readinessProbe', 'livenessProbe', 'startupProbe'])
        expect(c[p].tcpSocket, p).toEqual({ port: 'grpc' });
      expect(f).toMatchObject({
        'tls-cert': expect.stringMatching(/tls\.crt$/),
        'tls-key': expect.stringMatching(/tls\.key$/),
        'tls-ca': expect.stringMatching(/ca\.crt$/),
      });
    }
    // Loading a large teacher may take minutes: the startup probe allows them before liveness counts.
    expect(c.startupProbe.periodSeconds * c.startupProbe.failureThreshold).toBeGreaterThanOrEqual(300);
  });

  it('evaluators: KEDA temporal scaler on the evaluate queue (activity tasks), one waiting evaluation per evaluator of a replica, scale to zero, bounded', () => {
    const so = find(objs, 'ScaledObject', 'offshoot-evaluator') as Any;
    const d = find(objs, 'Deployment', 'offshoot-evaluator') as Any;
    expect(so.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: d.metadata.name });
    // The HPA owns the replica count: re-applying the manifests must not reset it.
    expect(d.spec.replicas).toBeUndefined();
    expect(so.spec.minReplicaCount).toBe(0);
    // At least 4 evaluators' worth of GPUs.
    const perPod = GPUS_PER_POD[overlay]?.['offshoot-evaluator'] ?? 1;
    expect(so.spec.maxReplicaCount * perPod).toBeGreaterThanOrEqual(4);
    expect(so.spec.triggers).toHaveLength(1);
    const t = so.spec.triggers[0];
    expect(t.type).toBe('temporal');
    for (const k of Object.keys(t.metadata)) expect(TEMPORAL_SCALER_FIELDS, `trigger metadata ${k}`).toContain(k);
    expect(t.metadata.taskQueue).toBe(TASK_QUEUES.evaluate);
    expect(t.metadata.queueTypes).toBe('activity');
    expect(t.metadata.targetQueueSize).toBe(String(Number(argsOf(d).slots) * perPod));
    expect(t.metadata.activationTargetQueueSize).toBe('0');
    // The same Temporal as the workers.
    expect(t.metadata.endpoint).toBe(env.OFFSHOOT_TEMPORAL_ADDRESS);
    expect(t.metadata.namespace).toBe(env.OFFSHOOT_TEMPORAL_NAMESPACE);
    // Scale-down is slower than an evaluation: running evaluations are not in the backlog.
    expect(
      so.spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleDown.stabilizationWindowSeconds,
    ).toBeGreaterThanOrEqual(300);
    expect(so.spec.cooldownPeriod).toBeGreaterThanOrEqual(300);
  });

  it('pretraining worker: ReadWriteMany volume for checkpoints, PodDisruptionBudget, Recreate, quick rescheduling off a lost node', () => {
    const d = find(objs, 'Deployment', 'offshoot-pretrain') as Any;
    const pvc = find(objs, 'PersistentVolumeClaim', 'offshoot-data') as Any;
    expect(pvc.spec.accessModes).toEqual(['ReadWriteMany']);
    expect(pvc.spec.resources.requests.storage).toBeDefined();
    const pdb = find(objs, 'PodDisruptionBudget', 'offshoot-pretrain') as Any;
    expect(d.spec.template.metadata.labels).toMatchObject(pdb.spec.selector.matchLabels);
    expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(1);
    expect(pdb.spec.minAvailable).toBeLessThanOrEqual(d.spec.replicas);
    expect(d.spec.strategy.type).toBe('Recreate');
    for (const key of ['node.kubernetes.io/unreachable', 'node.kubernetes.io/not-ready']) {
      expect(d.spec.template.spec.tolerations).toContainEqual({
        key,
        operator: 'Exists',
        effect: 'NoExecute',
        tolerationSeconds: 30,
      });
    }
    // Every worker and the teacher see the same volume.
    for (const w of deployments(objs))
      expect(w.spec.template.spec.volumes.find((v: Any) => v.name === 'data').persistentVolumeClaim.claimName).toBe(
        pvc.metadata.name,
      );
  });

  it('secrets: every Secret a pod or KEDA uses is rendered with the keys they read (production), none otherwise', () => {
    const secrets = new Map(objs.filter((o) => o.kind === 'Secret').map((s) => [s.metadata.name, s as Any]));
    const used: { secret: string; key: string; by: string }[] = [];
    for (const d of deployments(objs)) {
      const c = container(d);
      const mounts = new Map<string, string>(c.volumeMounts.map((m: Any) => [m.name, m.mountPath]));
      for (const v of d.spec.template.spec.volumes.filter((x: Any) => x.secret)) {
        const dir = mounts.get(v.name);
        expect(dir, `${d.metadata.name} mounts ${v.name}`).toBeDefined();
        // Each OFFSHOOT_*  variable or flag naming a file in that mount names a key of the Secret.
        const paths = [...(c.env ?? []).map((e: Any) => e.value), ...c.args].filter(
          (x: string) => typeof x === 'string' && x.includes(`${dir}/`),
        );
        expect(paths.length, `${d.metadata.name}: files read from ${v.name}`).toBeGreaterThan(0);
        for (const p of paths)
          used.push({
            secret: v.secret.secretName,
            key: p.slice(p.indexOf(`${dir}/`) + dir!.length + 1),
            by: d.metadata.name,
          });
      }
    }
    for (const ta of objs.filter((o) => o.kind === 'TriggerAuthentication') as Any[]) {
      for (const r of ta.spec.secretTargetRef)
        used.push({ secret: r.name, key: r.key, by: `TriggerAuthentication ${ta.metadata.name}` });
    }
    for (const u of used)
      expect(Object.keys(secrets.get(u.secret)?.data ?? {}), `${u.by}: Secret ${u.secret} key ${u.key}`).toContain(
        u.key,
      );
    if (overlay === 'production') {
      expect([...secrets.keys()].sort()).toEqual([
        'offshoot-nats',
        'offshoot-teacher-client-tls',
        'offshoot-teacher-tls',
        'offshoot-temporal-tls',
      ]);
      const so = find(objs, 'ScaledObject', 'offshoot-evaluator') as Any;
      expect(find(objs, 'TriggerAuthentication', so.spec.triggers[0].authenticationRef.name)).toBeDefined();
      const envOf = (name: string) =>
        new Map<string, string>((container(find(objs, 'Deployment', name)).env as Any[]).map((e) => [e.name, e.value]));
      for (const w of Object.keys(WORKERS)) {
        expect(envOf(w).get('OFFSHOOT_TEMPORAL_TLS_CERT'), w).toBeDefined();
        expect(envOf(w).get('OFFSHOOT_NATS_CREDS'), w).toBeDefined();
      }
      for (const w of ['offshoot-evaluator', 'offshoot-pretrain'])
        expect(envOf(w).get('OFFSHOOT_TEACHER_TLS_CA'), w).toBeDefined();
    } else {
      expect(secrets.size).toBe(0);
      expect(used).toEqual([]);
    }
  });

  if (overlay === 'multi-gpu') {
    it('nodes of 8 GPUs: one evaluator per GPU, each with its metrics port; data-parallel pretraining over 8 GPUs with shared memory for NCCL', () => {
      const evaluator = find(objs, 'Deployment', 'offshoot-evaluator') as Any;
      const base = Number(argsOf(evaluator)['metrics-port']);
      // `worker --gpus` serves GPU i's metrics on --metrics-port + i.
      expect(
        container(evaluator)
          .ports.map((p: Any) => p.containerPort)
          .sort(),
      ).toEqual(Array.from({ length: 8 }, (_, i) => base + i));
      const pretrain = find(objs, 'Deployment', 'offshoot-pretrain') as Any;
      expect(argsOf(pretrain).gpus).toBe('all');
      const shm = pretrain.spec.template.spec.volumes.find((v: Any) => v.name === 'shm');
      expect(shm.emptyDir).toMatchObject({ medium: 'Memory' });
      expect(container(pretrain).volumeMounts).toContainEqual({ name: 'shm', mountPath: '/dev/shm' });
      // Eight evaluators need eight times one's memory; the pretrain pod holds eight ranks.
      for (const d of [evaluator, pretrain])
        expect(Number.parseInt(container(d).resources.requests.memory, 10)).toBeGreaterThanOrEqual(64);
    });
  }

  if (overlay === 'vulkan') {
    it('vulkan: the webgpu backend, and the graphics driver capability so the NVIDIA toolkit mounts the Vulkan driver', () => {
      for (const w of GPU_WORKLOADS) {
        const e = new Map<string, string>(
          (container(find(objs, 'Deployment', w)).env as Any[]).map((x) => [x.name, x.value]),
        );
        expect(e.get('NVIDIA_DRIVER_CAPABILITIES')?.split(',')).toEqual(
          expect.arrayContaining(['compute', 'utility', 'graphics']),
        );
        expect(e.get('OFFSHOOT_BACKEND')).toBe('webgpu');
      }
    });
  }
});
