/**
 * What a fitness evaluator's candidate costs on a GPU: its training, or its compilation? A sub-network
 * search of brief-fitness candidates (24 by default: evolution, 3 generations of 8) of a teacher, in
 * one long-lived process per backend, as `offshoot search` and an evaluator run it. Each candidate is
 * evaluated, then evaluated again at once — nothing about it is new the second time, so that is its
 * steady compute time — and gets one JSON line: its wall time, its steady time, their ratio, and both
 * split into phases (extraction, teacher forward, pipelines, autotune, training, evaluation;
 * core/subnet/fitness.ts). Each backend and arm then gets a summary line: median and worst ratio,
 * evaluations per hour (first evaluations only, as a search runs them) and at steady speed.
 *
 *   node dist/bench/evaluator-gpu.js [--backends webgpu,cuda] [--compare]
 *        [--preset pythia-70m] [--teacher DIR | --teacher-steps 200] [--target-params 20M | --bin N]
 *        [--candidates 24] [--before-candidates N] [--population 8] [--steps 40] [--batch-size 8] [--seq-len 512]
 *        [--eval-tokens 8192] [--fitness brief|zero-shot] [--seed 0] [--shape-classes on|off]
 *        [--work runs/evaluator-gpu] [--fresh-plans] [--plans-out DIR] [--profile]
 *
 * --profile (cuda, webgpu) evaluates the first candidate once more timing every kernel and product on
 * the GPU (cuda eagerly, launch by launch; webgpu one timed pass per dispatch), and prints the 30 that
 * took longest in total: where a candidate's time goes.
 *
 * --compare runs each backend twice, first with shape classes off (every shape compiled and tuned on
 * its own, in memory, no warm-up: the behaviour before shape classes, core/model/shape-costs.ts) on
 * the first --before-candidates candidates of the same search, then on, and closes with a line giving
 * both and the ratio of their evaluations per hour, setup included. With shape classes the arm first
 * warms up as an evaluator does (warmUpFitness: compiles what every candidate runs; its time is in
 * setupSeconds, not in a candidate's). Every arm runs in a fresh child process with a fresh driver
 * shader cache (XDG_CACHE_HOME). The teacher (trained with `offshoot teacher train`'s
 * code when --teacher is not given) and the matrix-product plan cache live under --work and are kept
 * between calls; --fresh-plans empties the plan cache first (candidates then take the untuned plans:
 * a brief-fitness run is too short to tune, AUTOTUNE_MIN_STEPS; OFFSHOOT_MATMUL_AUTOTUNE=1 tunes
 * them), --plans-out copies the plan files afterwards (to ship them: core/model/webgpu/plans/). On a
 * CPU machine the same runs with tiny shapes, e.g.
 * `--backends webgpu,cpu --preset tiny --seq-len 32 --candidates 4 --population 4 --steps 4`.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { type BackendName, initBackend } from '../core/model/backend.js';
import { DEFAULT_TRAIN_CORPUS, DEFAULT_VALIDATION_CORPUS } from '../core/data/index.js';
import { cudaHome } from '../core/model/cuda/libraries.js';
import { MODEL_PRESETS, setShapeClasses, shapeCostTotals, takeCompiledPipelines } from '../core/model/index.js';
import { matmulPlanCounts } from '../core/model/webgpu/matmul.js';
import { planCacheDir } from '../core/model/webgpu/matmul-plans.js';
import { profileGpu } from '../core/model/webgpu/profiler.js';
import { gpuBytesAllocated } from '../core/model/webgpu/runtime.js';
import {
  type FitnessBudget,
  type FitnessKind,
  type FitnessPhases,
  type TargetRequest,
  createFitnessContext,
  disposeFitnessContext,
  evaluateFitness,
  searchSubnetworks,
  sumPhases,
  warmUpFitness,
} from '../core/subnet/index.js';
import { TEACHER_TRAIN_DEFAULTS, teacherFinished, trainTeacher } from '../core/teacher/index.js';

interface Args {
  backends: BackendName[];
  compare: boolean;
  shapeClasses: boolean;
  preset: string;
  teacher?: string;
  teacherSteps: number;
  /** --target-params or --bin. */
  target?: { bin: number } | { params: string };
  candidates: number;
  /** Candidates of the arm without shape classes under --compare (the first ones of the same search). */
  beforeCandidates?: number;
  population: number;
  steps: number;
  batchSize: number;
  seqLen: number;
  evalTokens: number;
  fitness: FitnessKind;
  seed: number;
  work: string;
  freshPlans: boolean;
  plansOut?: string;
  /** cuda: after the first candidate, one more evaluation of it timed launch by launch. */
  profile: boolean;
  /** Child modes: train the teacher, or run one arm. */
  child?: 'teacher' | 'search';
}

const BENCH = 'evaluator-gpu';

function parseArgs(argv: string[]): Args {
  const args: Args = {
    backends: ['webgpu'],
    compare: false,
    shapeClasses: true,
    preset: 'pythia-70m',
    teacherSteps: 200,
    candidates: 24,
    population: 8,
    steps: 40,
    batchSize: 8,
    seqLen: 512,
    evalTokens: 8192,
    fitness: 'brief',
    seed: 0,
    work: path.join('runs', BENCH),
    freshPlans: false,
    profile: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (key === '--compare' || key === '--fresh-plans' || key === '--profile') {
      args[key === '--compare' ? 'compare' : key === '--fresh-plans' ? 'freshPlans' : 'profile'] = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${key} needs a value`);
    const int = (min = 1): number => {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < min)
        throw new Error(`${key} must be an integer ≥ ${min}, got ${JSON.stringify(value)}`);
      return n;
    };
    switch (key) {
      case '--backends':
        args.backends = value.split(',').map((b) => b.trim()) as BackendName[];
        break;
      case '--shape-classes':
        if (value !== 'on' && value !== 'off')
          throw new Error(`--shape-classes takes on or off, got ${JSON.stringify(value)}`);
        args.shapeClasses = value === 'on';
        break;
      case '--preset':
        if (!(value in MODEL_PRESETS))
          throw new Error(
            `--preset must be one of ${Object.keys(MODEL_PRESETS).join(', ')}, got ${JSON.stringify(value)}`,
          );
        args.preset = value;
        break;
      case '--teacher':
        args.teacher = value;
        break;
      case '--teacher-steps':
        args.teacherSteps = int();
        break;
      case '--target-params':
        args.target = { params: /^[\d.]+\s*[kKmMbBgG]?$/.test(value.trim()) ? `${value} ± 5%` : value };
        break;
      case '--bin':
        args.target = { bin: int(0) };
        break;
      case '--candidates':
        args.candidates = int();
        break;
      case '--before-candidates':
        args.beforeCandidates = int();
        break;
      case '--population':
        args.population = int();
        break;
      case '--steps':
        args.steps = int();
        break;
      case '--batch-size':
        args.batchSize = int();
        break;
      case '--seq-len':
        args.seqLen = int();
        break;
      case '--eval-tokens':
        args.evalTokens = int();
        break;
      case '--fitness':
        if (value !== 'brief' && value !== 'zero-shot')
          throw new Error(`--fitness takes brief or zero-shot, got ${JSON.stringify(value)}`);
        args.fitness = value;
        break;
      case '--seed':
        args.seed = int(0);
        break;
      case '--work':
        args.work = value;
        break;
      case '--plans-out':
        args.plansOut = value;
        break;
      case '--child':
        if (value !== 'teacher' && value !== 'search')
          throw new Error(`--child takes teacher or search, got ${JSON.stringify(value)}`);
        args.child = value;
        break;
      default:
        throw new Error(`unknown argument ${key}`);
    }
  }
  for (const [flag, n] of [
    ['--candidates', args.candidates],
    ['--before-candidates', args.beforeCandidates],
  ] as const) {
    if (n !== undefined && n % args.population !== 0)
      throw new Error(`${flag} ${n} must be a multiple of --population ${args.population} (whole generations)`);
  }
  return args;
}

function toArgv(a: Args): string[] {
  const out = [
    '--backends',
    a.backends.join(','),
    '--shape-classes',
    a.shapeClasses ? 'on' : 'off',
    '--preset',
    a.preset,
    '--teacher-steps',
    String(a.teacherSteps),
  ];
  if (a.teacher) out.push('--teacher', a.teacher);
  if (a.target)
    out.push(...('bin' in a.target ? ['--bin', String(a.target.bin)] : ['--target-params', String(a.target.params)]));
  out.push(
    '--candidates',
    String(a.candidates),
    '--population',
    String(a.population),
    '--steps',
    String(a.steps),
    '--batch-size',
    String(a.batchSize),
  );
  out.push(
    '--seq-len',
    String(a.seqLen),
    '--eval-tokens',
    String(a.evalTokens),
    '--fitness',
    a.fitness,
    '--seed',
    String(a.seed),
    '--work',
    a.work,
  );
  if (a.profile) out.push('--profile');
  if (a.child) out.push('--child', a.child);
  return out;
}

const teacherDir = (a: Args) => a.teacher ?? path.join(a.work, `teacher-${a.preset}`);
/** The target: 20M parameters of a pythia-70m-shaped teacher, else bin 6 of 20. */
const targetOf = (a: Args): TargetRequest =>
  a.target ?? (a.preset === 'pythia-70m' ? { params: '20M ± 5%' } : { bin: 6 });

const round = (x: number, digits = 3) => Number(x.toFixed(digits));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** Phases added up, to the hundredth of a second. */
const totalPhases = (list: FitnessPhases[]) =>
  Object.fromEntries(Object.entries(sumPhases(list)).map(([p, s]) => [p, round(s, 2)])) as FitnessPhases;

/** Child: trains the teacher with the teacher-training code (`offshoot teacher train`), unless it is there. */
async function prepareTeacher(a: Args): Promise<void> {
  const out = teacherDir(a);
  if (teacherFinished(out)) return;
  await initBackend(a.backends[0], (m) => process.stderr.write(`${m}\n`));
  const seqLen = Math.min(a.seqLen, MODEL_PRESETS[a.preset].maxPositions);
  await trainTeacher(
    {
      ...TEACHER_TRAIN_DEFAULTS,
      preset: a.preset,
      steps: a.teacherSteps,
      seqLen,
      batchSize: a.batchSize,
      data: DEFAULT_TRAIN_CORPUS,
      val: DEFAULT_VALIDATION_CORPUS,
      out,
      tokenCache: path.join(a.work, 'cache', 'tokens'),
    },
    { log: (line) => process.stderr.write(`teacher: ${line}\n`) },
  );
}

/** Child: one arm — a whole search on one backend, each candidate evaluated twice. */
async function runArm(a: Args): Promise<void> {
  const started = performance.now();
  const backend = a.backends[0];
  setShapeClasses(a.shapeClasses);
  const info = await initBackend(backend, () => {});
  const teacher = teacherDir(a);
  const data = { tokenCache: path.join(a.work, 'cache', 'tokens') };
  const context = await createFitnessContext(teacher, data);
  const plansAtStart = matmulPlanCounts();
  const common = { bench: BENCH, backend, shapeClasses: a.shapeClasses };
  const budget: FitnessBudget = {
    kind: a.fitness,
    steps: a.steps,
    batchSize: a.batchSize,
    seqLen: a.seqLen,
    evalTokens: a.evalTokens,
  };
  // As a fitness evaluator starts (services/evaluator); the behaviour before shape classes had none.
  const warmUp = a.shapeClasses ? await warmUpFitness(context, budget, a.seed) : undefined;
  const setupSeconds = (performance.now() - started) / 1000;
  takeCompiledPipelines();
  const rows: Array<{ wall: number; steady: number; phases: FitnessPhases }> = [];
  let failed = 0;
  try {
    await searchSubnetworks(
      {
        teacher,
        target: targetOf(a),
        space: 'uniform',
        algorithm: 'evolution',
        generations: a.candidates / a.population,
        population: a.population,
        budget,
        data,
        seed: a.seed,
        context,
      },
      async (r) => {
        if (!r.metrics) {
          failed++;
          console.log(JSON.stringify({ ...common, candidate: r.done, spec: r.spec, error: 'evaluation failed' }));
          return;
        }
        // What its first evaluation compiled, by kernel: which kernels a new shape still costs.
        const compiled = takeCompiledPipelines();
        const steady = await evaluateFitness({ teacher, spec: r.spec, budget, seed: a.seed, data }, context);
        const m = r.metrics;
        rows.push({ wall: m.seconds, steady: steady.seconds, phases: m.phases });
        const gpuBytes = gpuBytesAllocated();
        console.log(
          JSON.stringify({
            ...common,
            candidate: r.done,
            parameters: m.parameters,
            spec: r.spec,
            fitness: m.valLoss,
            steadyFitnessDelta: Math.abs(steady.valLoss - m.valLoss),
            wallSeconds: round(m.seconds),
            steadySeconds: round(steady.seconds),
            ratio: round(m.seconds / steady.seconds),
            phases: m.phases,
            steadyPhases: steady.phases,
            compiled,
            ...(gpuBytes !== null ? { gpuMiBAfter: Math.round(gpuBytes / 2 ** 20) } : {}),
          }),
        );
        if (a.profile && (backend === 'cuda' || backend === 'webgpu') && r.done === 1) {
          const profile = await profileEvaluation(backend, () =>
            evaluateFitness({ teacher, spec: r.spec, budget, seed: a.seed, data }, context),
          );
          console.log(JSON.stringify({ ...common, candidate: r.done, profile }));
        }
        takeCompiledPipelines();
      },
    );
  } finally {
    disposeFitnessContext(context);
  }
  const ratios = rows.map((r) => r.wall / r.steady);
  const wall = rows.reduce((s, r) => s + r.wall, 0);
  const steady = rows.reduce((s, r) => s + r.steady, 0);
  const plansAtEnd = matmulPlanCounts();
  const costs = shapeCostTotals();
  console.log(
    JSON.stringify({
      ...common,
      summary: true,
      detail: info.detail,
      preset: a.preset,
      fitness: a.fitness,
      candidates: rows.length,
      failed,
      steps: a.steps,
      batchSize: a.batchSize,
      seqLen: a.seqLen,
      medianRatio: rows.length ? round(median(ratios)) : null,
      worstRatio: rows.length ? round(Math.max(...ratios)) : null,
      evaluationsPerHour: wall > 0 ? Math.round((3600 * rows.length) / wall) : null,
      evaluationsPerHourWithSetup: wall > 0 ? Math.round((3600 * rows.length) / (wall + setupSeconds)) : null,
      steadyEvaluationsPerHour: steady > 0 ? Math.round((3600 * rows.length) / steady) : null,
      meanWallSeconds: rows.length ? round(wall / rows.length) : null,
      meanSteadySeconds: rows.length ? round(steady / rows.length) : null,
      setupSeconds: round(setupSeconds, 2),
      ...(warmUp ? { warmUpSeconds: round(warmUp.seconds, 2), warmUpPhases: warmUp.phases } : {}),
      phaseSeconds: totalPhases(rows.map((r) => r.phases)),
      compiles: costs.compile.count,
      planClassesAtStart: plansAtStart.classes,
      planClassesTuned: plansAtEnd.tuned,
      meets: rows.length ? median(ratios) <= 1.5 && Math.max(...ratios) <= 3 : false,
    }),
  );
}

/**
 * GPU time per kernel and product over one whole evaluation on cuda, its steps run eagerly: the
 * GPU's busy time, not the evaluation's wall time.
 */
async function profileEvaluation(
  backend: 'cuda' | 'webgpu',
  evaluate: () => Promise<unknown>,
): Promise<Record<string, unknown>> {
  const t0 = performance.now();
  const profile =
    backend === 'cuda'
      ? await (await import('../core/model/cuda/register.js')).profileEagerly(evaluate)
      : await profileGpu(async () => {
          await evaluate();
        });
  if (!profile) return { unavailable: "the WebGPU adapter lacks the 'timestamp-query' feature" };
  return {
    wallSeconds: round((performance.now() - t0) / 1000),
    gpuSeconds: round(profile.totalMs / 1000),
    launches: 'launches' in profile ? profile.launches : profile.dispatches,
    top: profile.byName.slice(0, 30).map((e) => [e.name, round(e.ms, 2), e.count]),
  };
}

/** Runs the bench itself as a child with `args`; its JSON lines go to `onLine` as they come. */
function child(
  a: Args,
  env: NodeJS.ProcessEnv,
  onLine: (line: Record<string, unknown>) => void,
): Promise<number | null> {
  const self = fileURLToPath(import.meta.url);
  const proc = spawn(process.execPath, [...process.execArgv, self, ...toArgv(a)], {
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
    if (!line.startsWith('{')) return;
    try {
      onLine(JSON.parse(line) as Record<string, unknown>);
    } catch {
      // not one of ours
    }
  });
  return new Promise((resolve) => proc.on('close', (code) => resolve(code)));
}

async function main(argv: string[]): Promise<void> {
  let a: Args;
  try {
    a = parseArgs(argv);
  } catch (err) {
    // A wrong flag is the user's to fix: say what, without a stack trace.
    console.error(`evaluator-gpu: ${(err as Error).message}`);
    process.exit(2);
  }
  if (a.child === 'teacher') return prepareTeacher(a);
  if (a.child === 'search') {
    try {
      return await runArm(a);
    } catch (err) {
      console.log(
        JSON.stringify({
          bench: BENCH,
          backend: a.backends[0],
          shapeClasses: a.shapeClasses,
          error: (err as Error).message.split('\n')[0],
        }),
      );
      process.exit(1);
    }
  }

  const work = path.resolve(a.work);
  const cache = path.join(work, 'cache');
  const base = { ...a, work };
  // The CUDA libraries stay where scripts/setup-cuda.sh put them, under the cache the bench moves.
  const cudaLibraries = cudaHome();
  const env = (arm: string): NodeJS.ProcessEnv => {
    // A fresh driver shader cache per arm, so that no arm reuses another's (or an earlier call's) compiles.
    const xdg = fs.mkdtempSync(path.join(work, `xdg-${arm}-`));
    return { ...process.env, OFFSHOOT_CACHE: cache, OFFSHOOT_CUDA_HOME: cudaLibraries, XDG_CACHE_HOME: xdg };
  };
  fs.mkdirSync(work, { recursive: true });
  const print = (line: Record<string, unknown>) => console.log(JSON.stringify(line));
  const code = await child({ ...base, child: 'teacher' }, env('teacher'), print);
  if (code !== 0) throw new Error(`${BENCH}: preparing the teacher in ${teacherDir(base)} failed (exit ${code})`);
  process.env.OFFSHOOT_CACHE = cache;
  if (a.freshPlans) fs.rmSync(planCacheDir(), { recursive: true, force: true });

  for (const backend of a.backends) {
    const arms = a.compare ? [false, true] : [a.shapeClasses];
    const summaries = new Map<boolean, Record<string, unknown>>();
    for (const shapeClasses of arms) {
      const candidates = shapeClasses ? a.candidates : (a.beforeCandidates ?? a.candidates);
      const exit = await child(
        { ...base, backends: [backend], shapeClasses, candidates, child: 'search' },
        env(`${backend}-${shapeClasses ? 'on' : 'off'}`),
        (line) => {
          if (line.summary) summaries.set(shapeClasses, line);
          print(line);
        },
      );
      if (exit !== 0 && !summaries.has(shapeClasses))
        print({ bench: BENCH, backend, shapeClasses, failed: `the arm exited with ${exit}` });
    }
    const before = summaries.get(false);
    const after = summaries.get(true);
    if (a.compare && before && after) {
      const pick = (s: Record<string, unknown>) => ({
        candidates: s.candidates,
        evaluationsPerHourWithSetup: s.evaluationsPerHourWithSetup,
        evaluationsPerHour: s.evaluationsPerHour,
        medianRatio: s.medianRatio,
        worstRatio: s.worstRatio,
        meanWallSeconds: s.meanWallSeconds,
        phaseSeconds: s.phaseSeconds,
      });
      const speedup = Number(after.evaluationsPerHourWithSetup) / Number(before.evaluationsPerHourWithSetup);
      print({
        bench: BENCH,
        backend,
        closing: true,
        before: { shapeClasses: false, ...pick(before) },
        after: { shapeClasses: true, ...pick(after) },
        ratio: round(speedup),
      });
    }
  }
  if (a.plansOut) {
    fs.mkdirSync(a.plansOut, { recursive: true });
    const dir = planCacheDir();
    const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.json')) : [];
    for (const f of files) fs.copyFileSync(path.join(dir, f), path.join(a.plansOut, f));
    print({ bench: BENCH, plansOut: a.plansOut, files });
  }
}

await main(process.argv.slice(2));
