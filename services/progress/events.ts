/**
 * Progress events, schema version 1 (docs/progress.md; JSON schema in docs/progress-events.schema.json).
 *
 * Every event is one JSON object on the subject `offshoot.<run>.<kind>` (kind has dots, e.g.
 * `offshoot.r1.candidate.evaluated`), stored in the JetStream stream OFFSHOOT_PROGRESS with its `id` as
 * the Nats-Msg-Id header, so a publish repeated within the stream's duplicate window is stored once.
 *
 * The envelope (v, id, run, kind, time, source) is shared; the other fields depend on the kind. Readers
 * accept unknown extra fields (a later minor addition) and skip events whose `v` they do not know.
 */
import { randomUUID } from 'node:crypto';

import { z } from 'zod';

export const PROGRESS_SCHEMA_VERSION = 1;

/** Run ids are one NATS subject token and one KV key: letters, digits, `_` and `-`, at most 128. */
export const RUN_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;

export const EVENT_KINDS = [
  'run.started',
  'generation.finished',
  'candidate.evaluated',
  'pretrain.step',
  'pretrain.eval',
  'checkpoint.saved',
  'activity.started',
  'activity.completed',
  'activity.retried',
  'activity.failed',
  'service.exited',
  'service.restarted',
  'run.finished',
] as const;
export type EventKind = (typeof EVENT_KINDS)[number];

const finite = z.number().refine(Number.isFinite, 'must be a finite number');
const count = z.number().int().nonnegative();
const positive = z.number().int().positive();
const text = (max: number) => z.string().max(max);

export const runIdSchema = z
  .string()
  .regex(RUN_ID_PATTERN, 'run id: 1-128 of A-Z a-z 0-9 _ - (starting with a letter or digit)');

/** Who published: the worker (default hostname:pid), and the activity attempt it was in, if any. */
export const sourceSchema = z.object({
  worker: text(200).optional(),
  activity: text(200).optional(),
  activityId: text(200).optional(),
  attempt: positive.optional(),
});

/** A candidate's id: core/search's sequential number, or any string. */
export const candidateIdSchema = z.union([count, z.string().min(1).max(200)]);

/** A candidate in a summary (best so far, Pareto front). */
export const candidateRefSchema = z.object({
  candidate: candidateIdSchema,
  params: count,
  fitness: finite,
});

/** A parameter bin: the range of parameter counts a search targets. */
export const binSchema = z.object({ index: count.optional(), lo: finite, hi: finite });

/** Training series: the student, or a baseline ('random-init', 'first-k', 'pythia-70m', ...). */
const series = text(100).default('student');

const envelope = {
  v: z.literal(PROGRESS_SCHEMA_VERSION),
  /** The message id (Nats-Msg-Id). Deterministic per fact by default (see defaultEventId). */
  id: z.string().min(1).max(500),
  run: runIdSchema,
  /** When the publisher made the event (ISO 8601). */
  time: z.iso.datetime({ offset: true }),
  source: sourceSchema.optional(),
};

export const runStartedSchema = z.object({
  ...envelope,
  kind: z.literal('run.started'),
  /** What the run does: a search, a pretraining, or the whole pipeline (search then pretrain). */
  mode: z.enum(['search', 'pretrain', 'pipeline']),
  /** Planned generations (evolution) or batches. */
  generations: positive.optional(),
  populationSize: positive.optional(),
  /** Planned evaluations in all. */
  budget: positive.optional(),
  /** Planned pretraining steps. */
  pretrainSteps: positive.optional(),
  bin: binSchema.optional(),
  teacher: text(500).optional(),
  /** Baseline series the run trains for comparison. */
  baselines: z.array(text(100)).max(50).optional(),
  /** Free-form summary of the configuration (keep it small). */
  config: z.record(z.string(), z.unknown()).optional(),
});

export const generationFinishedSchema = z.object({
  ...envelope,
  kind: z.literal('generation.finished'),
  /** 0-based. */
  generation: count,
  /** Planned generations (may change when the budget does). */
  generations: positive.optional(),
  /** Evaluations in this generation: successful and failed. */
  evaluated: count,
  failed: count.default(0),
  /** Best candidate so far (lowest fitness). */
  best: candidateRefSchema.optional(),
  /** Pareto front so far (parameters vs fitness, both minimised). */
  front: z.array(candidateRefSchema).max(1000).optional(),
});

export const candidateEvaluatedSchema = z.object({
  ...envelope,
  kind: z.literal('candidate.evaluated'),
  generation: count,
  candidate: candidateIdSchema,
  params: count,
  /** Validation loss (minimised); null when the evaluation failed. */
  fitness: finite.nullable(),
  error: text(2000).optional(),
  /** sha256 of the canonical sub-network spec. */
  specHash: text(100).optional(),
  origin: text(50).optional(),
  durationMs: z.number().nonnegative().optional(),
  /** Other numbers the evaluation measured (tokens, flops, trainLoss, ...). */
  metrics: z.record(z.string(), finite).optional(),
});

export const pretrainStepSchema = z.object({
  ...envelope,
  kind: z.literal('pretrain.step'),
  series,
  step: count,
  /** Planned steps. */
  steps: positive.optional(),
  /** Training loss at this step. */
  loss: finite,
  /** Tokens trained on so far. */
  tokens: count.optional(),
  tokensPerSecond: z.number().nonnegative().optional(),
  lr: finite.optional(),
});

export const pretrainEvalSchema = z.object({
  ...envelope,
  kind: z.literal('pretrain.eval'),
  series,
  step: count,
  valLoss: finite,
  tokens: count.optional(),
});

export const checkpointSavedSchema = z.object({
  ...envelope,
  kind: z.literal('checkpoint.saved'),
  series,
  step: count,
  uri: text(2000),
  hash: text(100).optional(),
  bytes: count.optional(),
});

const activityFields = {
  /** Activity type, e.g. evaluateCandidate, trainSegment. */
  activity: text(200),
  /** Temporal's activity id (unique within its workflow). */
  activityId: text(200).optional(),
  attempt: positive.default(1),
  taskQueue: text(200).optional(),
  /** What it works on, for people (e.g. "candidate 17", "steps 1000-2000"). */
  detail: text(500).optional(),
};

export const activityStartedSchema = z.object({ ...envelope, kind: z.literal('activity.started'), ...activityFields });
export const activityCompletedSchema = z.object({
  ...envelope,
  kind: z.literal('activity.completed'),
  ...activityFields,
  durationMs: z.number().nonnegative(),
});
/** An attempt after the first began (Temporal retried the activity). */
export const activityRetriedSchema = z.object({
  ...envelope,
  kind: z.literal('activity.retried'),
  ...activityFields,
  /** Why the previous attempt failed, when the publisher knows. */
  error: text(2000).optional(),
});
export const activityFailedSchema = z.object({
  ...envelope,
  kind: z.literal('activity.failed'),
  ...activityFields,
  error: text(2000),
  durationMs: z.number().nonnegative().optional(),
  /** False when the failure is final (non-retryable, or the last attempt). */
  willRetry: z.boolean().optional(),
});

const serviceFields = {
  /** The embedded stack's component: temporal, nats, teacher, orchestrate, pretrain, evaluate-N. */
  service: text(100),
  /** Its process id (the one that exited, or the new one). */
  pid: positive,
};

/** A child of the embedded stack exited without being asked to (it was killed, or crashed). */
export const serviceExitedSchema = z.object({
  ...envelope,
  kind: z.literal('service.exited'),
  ...serviceFields,
  /** Exit code, or null when a signal ended it. */
  code: z.number().int().nullable(),
  signal: text(20).nullable(),
  /** False when the supervisor gives up on it: the run stops (and may be resumed by running it again). */
  willRestart: z.boolean(),
  /** Restarts of this component before this exit. */
  restarts: count,
  /** Why the supervisor gave up, with the component's last output lines. */
  error: text(4000).optional(),
});

/** The supervisor restarted a child of the embedded stack on the same port and data. */
export const serviceRestartedSchema = z.object({
  ...envelope,
  kind: z.literal('service.restarted'),
  ...serviceFields,
  previousPid: positive.optional(),
  /** From the exit to the new process answering. */
  downMs: z.number().nonnegative(),
  /** Restarts of this component so far, this one included. */
  restarts: positive,
});

export const runFinishedSchema = z.object({
  ...envelope,
  kind: z.literal('run.finished'),
  status: z.enum(['completed', 'failed', 'cancelled']),
  error: text(2000).optional(),
  best: candidateRefSchema.optional(),
  /** Final numbers (e.g. student and baseline perplexities, tokens, FLOPs). */
  results: z.record(z.string(), z.unknown()).optional(),
});

export const progressEventSchema = z.discriminatedUnion('kind', [
  runStartedSchema,
  generationFinishedSchema,
  candidateEvaluatedSchema,
  pretrainStepSchema,
  pretrainEvalSchema,
  checkpointSavedSchema,
  activityStartedSchema,
  activityCompletedSchema,
  activityRetriedSchema,
  activityFailedSchema,
  serviceExitedSchema,
  serviceRestartedSchema,
  runFinishedSchema,
]);

export type ProgressEvent = z.output<typeof progressEventSchema>;
export type EventOf<K extends EventKind> = Extract<ProgressEvent, { kind: K }>;

type Envelope = 'v' | 'id' | 'time';
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
/**
 * What a publisher passes: an event without the envelope fields it fills in (v, id, time), which it
 * may still give (an explicit id replaces the default one).
 */
export type ProgressEventInput = DistributiveOmit<z.input<typeof progressEventSchema>, Envelope> & {
  v?: typeof PROGRESS_SCHEMA_VERSION;
  id?: string;
  time?: string;
};

/** An event that does not match the schema; `issues` names each field and what is wrong. */
export class ProgressEventError extends Error {
  constructor(
    message: string,
    readonly issues: string[],
  ) {
    super(message);
    this.name = 'ProgressEventError';
  }
}

function describeIssues(error: z.ZodError): string[] {
  return error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(event)'}: ${i.message}`);
}

/**
 * A natural key per fact, so the same fact published twice (a retried publish, or a retried activity
 * reporting the same step) gets the same message id and is stored once (within the stream's duplicate
 * window). Undefined when the event has no natural key (activity events): makeEvent then draws a random
 * id, which still dedupes the publisher's own retries.
 */
export function defaultEventId(e: DistributiveOmit<ProgressEvent, 'id'>): string | undefined {
  const r = e.run;
  switch (e.kind) {
    case 'run.started':
      return `${r}.run.started`;
    case 'run.finished':
      return `${r}.run.finished`;
    case 'generation.finished':
      return `${r}.gen.${e.generation}`;
    case 'candidate.evaluated':
      return `${r}.cand.${e.generation}.${e.candidate}`;
    case 'pretrain.step':
      return `${r}.step.${e.series}.${e.step}`;
    case 'pretrain.eval':
      return `${r}.eval.${e.series}.${e.step}`;
    case 'checkpoint.saved':
      return `${r}.ckpt.${e.series}.${e.step}`;
    case 'service.exited':
      return `${r}.service.exited.${e.service}.${e.pid}`;
    case 'service.restarted':
      return `${r}.service.restarted.${e.service}.${e.pid}`;
    case 'activity.started':
    case 'activity.completed':
    case 'activity.retried':
    case 'activity.failed':
      // No natural key: Temporal's activity ids repeat across workflows and continue-as-new, and each
      // attempt happens once anyway. A random id still makes the publisher's own retries idempotent.
      return undefined;
  }
}

/** Fills in v, time and id, and validates; throws ProgressEventError naming every bad field. */
export function makeEvent<I extends ProgressEventInput>(input: I, now: Date = new Date()): EventOf<I['kind']> {
  const draft = { v: PROGRESS_SCHEMA_VERSION, time: now.toISOString(), ...input, id: input.id ?? 'pending' };
  const parsed = progressEventSchema.safeParse(draft);
  if (!parsed.success) {
    const issues = describeIssues(parsed.error);
    throw new ProgressEventError(
      `invalid ${String((input as { kind?: unknown }).kind ?? 'progress')} event: ${issues.join('; ')}`,
      issues,
    );
  }
  const event = parsed.data;
  if (input.id === undefined) event.id = defaultEventId(event) ?? `${event.run}.${event.kind}.${randomUUID()}`;
  return event as EventOf<I['kind']>;
}

/** Parses a stored event; an error result (not a throw) for anything else, so readers can skip it. */
export function parseEvent(data: unknown): { ok: true; event: ProgressEvent } | { ok: false; error: string } {
  let value = data;
  if (typeof data === 'string' || data instanceof Uint8Array) {
    try {
      value = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
    } catch (err) {
      return { ok: false, error: `not JSON: ${(err as Error).message}` };
    }
  }
  const v = (value as { v?: unknown } | null)?.v;
  if (v !== PROGRESS_SCHEMA_VERSION) return { ok: false, error: `unsupported schema version ${JSON.stringify(v)}` };
  const parsed = progressEventSchema.safeParse(value);
  return parsed.success
    ? { ok: true, event: parsed.data }
    : { ok: false, error: describeIssues(parsed.error).join('; ') };
}

/** The subject an event goes to: offshoot.<run>.<kind>. */
export function eventSubject(run: string, kind: EventKind): string {
  return `${SUBJECT_PREFIX}.${run}.${kind}`;
}

/** All events of a run: offshoot.<run>.> */
export function runSubjects(run: string): string {
  return `${SUBJECT_PREFIX}.${run}.>`;
}

export const SUBJECT_PREFIX = 'offshoot';

/** Throws when `run` is not a valid run id. */
export function checkRunId(run: string): string {
  if (!RUN_ID_PATTERN.test(run))
    throw new ProgressEventError(
      `run id ${JSON.stringify(run)}: use 1-128 of A-Z a-z 0-9 _ - (starting with a letter or digit)`,
      ['run'],
    );
  return run;
}

/** Drops `additionalProperties: false`: readers accept (and ignore) fields a later minor version adds. */
function openObjects(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(openObjects);
  if (!node || typeof node !== 'object') return node;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node))
    if (!(k === 'additionalProperties' && v === false)) out[k] = openObjects(v);
  return out;
}

/**
 * The JSON schema of a stored event (what docs/progress-events.schema.json holds): fields with defaults
 * are required there, since the publisher fills them in.
 */
export function progressEventJsonSchema(): Record<string, unknown> {
  const schema = openObjects(z.toJSONSchema(progressEventSchema, { io: 'output', unrepresentable: 'any' })) as Record<
    string,
    unknown
  >;
  return {
    title: `offshoot progress event, schema version ${PROGRESS_SCHEMA_VERSION}`,
    ...schema,
  };
}
