/**
 * services/progress: progress events over NATS (docs/progress.md) — the versioned event schema, the
 * publisher activities and workers call, the JetStream history and KV run status, `offshoot watch`,
 * `offshoot dashboard`, and Prometheus metrics for workers and the teacher service.
 *
 * Workflow code never imports this (it publishes nothing; activities and workers do).
 */
export {
  EVENT_KINDS,
  type EventKind,
  type EventOf,
  PROGRESS_SCHEMA_VERSION,
  type ProgressEvent,
  ProgressEventError,
  type ProgressEventInput,
  RUN_ID_PATTERN,
  SUBJECT_PREFIX,
  checkRunId,
  defaultEventId,
  eventSubject,
  makeEvent,
  parseEvent,
  progressEventJsonSchema,
  progressEventSchema,
  runSubjects,
} from './events.js';
export {
  type ConnectOptions,
  DEFAULT_NATS_URL,
  type ProgressStreamOptions,
  type ReadOptions,
  type RunEventReader,
  STATUS_BUCKET,
  STREAM_DEFAULTS,
  STREAM_NAME,
  type StoredEvent,
  connectNats,
  ensureProgressStream,
  getRunStatus,
  listRuns,
  natsServers,
  openRunEvents,
  openStatusBucket,
} from './nats.js';
export {
  MemoryProgressPublisher,
  NatsProgressPublisher,
  NoopProgressPublisher,
  type ProgressPublisher,
  type PublisherOptions,
  createProgressPublisher,
  defaultWorkerName,
  updateRunStatus,
} from './publisher.js';
export {
  type CandidateRef,
  type CandidateRow,
  type ErrorNote,
  type RunPhase,
  type RunState,
  type RunStatus,
  type SeriesState,
  type WorkerState,
  applyEvent,
  applyStatus,
  initialRunState,
  initialStatus,
  paretoFront,
} from './state.js';
export {
  type MetricsServer,
  type TeacherMetricsSnapshot,
  activitiesInFlight,
  activityDuration,
  enableProcessMetrics,
  metricsRegistry,
  progressMetrics,
  queueDepth,
  registerTeacherMetrics,
  startMetricsServer,
  timeActivity,
  tokensPerSecond,
  tokensProcessed,
} from './metrics.js';
export { describeEvent, formatEventLine, humanCount } from './format.js';
export {
  type WatchMode,
  type WatchOptions,
  type WatchResult,
  WatchError,
  formatRunList,
  renderView,
  watchRun,
} from './watch.js';
export { DASHBOARD_DEFAULTS, type Dashboard, type DashboardOptions, startDashboard } from './dashboard.js';
export { registerProgressCommands } from './cli.js';
