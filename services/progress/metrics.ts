/**
 * Prometheus metrics (prom-client) for workers and the teacher service, and the HTTP endpoint that
 * serves them (docs/progress.md#metrics). All metrics live in one registry, `metricsRegistry`.
 *
 *   offshoot_activity_duration_seconds{activity,outcome}   histogram of activity attempts
 *   offshoot_activities_in_flight{activity}                 attempts running now
 *   offshoot_tokens_per_second{component}                   latest training / serving rate
 *   offshoot_tokens_total{component}                        tokens processed
 *   offshoot_queue_depth{queue}                             work waiting (task queues, the teacher's batch queue)
 *   offshoot_progress_events_total{kind,result}             progress events stored / deduplicated
 *   offshoot_progress_publish_retries_total, _dropped_total, offshoot_progress_backlog
 *   offshoot_teacher_*                                      the teacher service (registerTeacherMetrics)
 *   offshoot_process_*, offshoot_nodejs_*                    prom-client's default process metrics
 */
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export const metricsRegistry = new Registry();

export const activityDuration = new Histogram({
  name: 'offshoot_activity_duration_seconds',
  help: 'Duration of activity attempts, by activity type and outcome (completed, failed)',
  labelNames: ['activity', 'outcome'] as const,
  buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200],
  registers: [metricsRegistry],
});

export const activitiesInFlight = new Gauge({
  name: 'offshoot_activities_in_flight',
  help: 'Activity attempts running in this process',
  labelNames: ['activity'] as const,
  registers: [metricsRegistry],
});

export const tokensPerSecond = new Gauge({
  name: 'offshoot_tokens_per_second',
  help: 'Latest tokens per second, by component (pretrain, evaluate, teacher)',
  labelNames: ['component'] as const,
  registers: [metricsRegistry],
});

export const tokensProcessed = new Counter({
  name: 'offshoot_tokens_total',
  help: 'Tokens processed, by component (pretrain, evaluate)',
  labelNames: ['component'] as const,
  registers: [metricsRegistry],
});

export const queueDepth = new Gauge({
  name: 'offshoot_queue_depth',
  help: 'Work waiting, by queue (Temporal task queue backlog as last observed, local slots)',
  labelNames: ['queue'] as const,
  registers: [metricsRegistry],
});

export const progressMetrics = {
  published: new Counter({
    name: 'offshoot_progress_events_total',
    help: 'Progress events acknowledged by JetStream, by kind and result (stored, duplicate)',
    labelNames: ['kind', 'result'] as const,
    registers: [metricsRegistry],
  }),
  retries: new Counter({
    name: 'offshoot_progress_publish_retries_total',
    help: 'Progress publishes (or status updates) that failed and were retried',
    registers: [metricsRegistry],
  }),
  dropped: new Counter({
    name: 'offshoot_progress_dropped_total',
    help: 'Progress events never stored (queue full, or the publisher closed first)',
    registers: [metricsRegistry],
  }),
  backlog: new Gauge({
    name: 'offshoot_progress_backlog',
    help: 'Progress events waiting to be stored',
    registers: [metricsRegistry],
  }),
};

/**
 * Times one activity attempt: counts it in flight while it runs and observes its duration with the
 * outcome. Rethrows what `fn` throws.
 */
export async function timeActivity<T>(activity: string, fn: () => Promise<T>): Promise<T> {
  const end = activityDuration.startTimer({ activity });
  activitiesInFlight.inc({ activity });
  try {
    const out = await fn();
    end({ outcome: 'completed' });
    return out;
  } catch (err) {
    end({ outcome: 'failed' });
    throw err;
  } finally {
    activitiesInFlight.dec({ activity });
  }
}

/** The teacher server's numbers the teacher metrics read (services/teacher's Metrics has them). */
export interface TeacherMetricsSnapshot {
  uptimeSeconds: number;
  tokensPerSecond: number;
  tokensServed: number;
  requestsServed: number;
  forwardPasses: number;
  requestsRejected: number;
  requestsCancelled: number;
  activeStreams: number;
  queueDepth: number;
  queuedTokens: number;
  bytesBuffered: number;
  busySeconds: number;
  computeSeconds: number;
}

const TEACHER_GAUGES: [keyof TeacherMetricsSnapshot, string, string][] = [
  ['tokensPerSecond', 'offshoot_teacher_tokens_per_second', 'Tokens answered per second over the last 10 seconds'],
  ['activeStreams', 'offshoot_teacher_active_streams', 'Open student streams'],
  ['queueDepth', 'offshoot_teacher_queue_depth', 'Requests waiting for a forward pass'],
  ['queuedTokens', 'offshoot_teacher_queued_tokens', 'Tokens of the requests waiting for a forward pass'],
  ['bytesBuffered', 'offshoot_teacher_bytes_buffered', 'Bytes of encoded answers held for slow students'],
  ['uptimeSeconds', 'offshoot_teacher_uptime_seconds', 'Seconds since the server started'],
];

const TEACHER_COUNTERS: [keyof TeacherMetricsSnapshot, string, string][] = [
  ['tokensServed', 'offshoot_teacher_tokens_served_total', 'Tokens (positions) answered'],
  ['requestsServed', 'offshoot_teacher_requests_served_total', 'Requests answered'],
  ['forwardPasses', 'offshoot_teacher_forward_passes_total', 'Batched forward passes'],
  ['requestsRejected', 'offshoot_teacher_requests_rejected_total', 'Requests rejected as bad input'],
  ['requestsCancelled', 'offshoot_teacher_requests_cancelled_total', 'Requests dropped because their stream went away'],
  ['busySeconds', 'offshoot_teacher_busy_seconds_total', 'Seconds spent serving forward passes'],
  ['computeSeconds', 'offshoot_teacher_compute_seconds_total', 'Seconds of forward passes and top-k, until read back'],
];

/**
 * Exposes a teacher server's metrics (read at scrape time from `source`, e.g. `() => server.metrics()`).
 * Returns a function that removes them again.
 */
export function registerTeacherMetrics(
  source: () => TeacherMetricsSnapshot,
  registry: Registry = metricsRegistry,
): () => void {
  const names: string[] = [];
  const add = (name: string): void => {
    registry.removeSingleMetric(name);
    names.push(name);
  };
  let snapshot: TeacherMetricsSnapshot | undefined;
  let taken = 0;
  // One snapshot per scrape, shared by every metric.
  const read = (): TeacherMetricsSnapshot => {
    const now = Date.now();
    if (!snapshot || now - taken > 100) {
      snapshot = source();
      taken = now;
    }
    return snapshot;
  };
  for (const [key, name, help] of TEACHER_GAUGES) {
    add(name);
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read()[key]);
      },
    });
  }
  for (const [key, name, help] of TEACHER_COUNTERS) {
    add(name);
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        // The server keeps the running total; the counter mirrors it.
        this.reset();
        this.inc(Math.max(0, read()[key]));
      },
    });
  }
  return () => {
    for (const n of names) registry.removeSingleMetric(n);
  };
}

let defaultsOn = false;

/** prom-client's process metrics (CPU, memory, event loop lag, GC), once per process. */
export function enableProcessMetrics(registry: Registry = metricsRegistry): void {
  if (defaultsOn) return;
  defaultsOn = true;
  collectDefaultMetrics({ register: registry, prefix: 'offshoot_' });
}

export interface MetricsServer {
  port: number;
  url: string;
  close(): Promise<void>;
}

/**
 * Serves the registry at http://HOST:PORT/metrics (Prometheus text format) and /healthz. Port 0: any
 * free one. Host default 127.0.0.1; use 0.0.0.0 where Prometheus scrapes from another machine.
 */
export async function startMetricsServer(
  port: number,
  options: { host?: string; registry?: Registry; processMetrics?: boolean } = {},
): Promise<MetricsServer> {
  const registry = options.registry ?? metricsRegistry;
  const host = options.host ?? '127.0.0.1';
  if (options.processMetrics ?? true) enableProcessMetrics(registry);
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
    } else if (url.pathname === '/metrics') {
      registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': registry.contentType }).end(body),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics: ${err.message}\n`),
      );
    } else if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`metrics: cannot listen on ${host}:${port}: ${err.message}`)));
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    port: bound,
    url: `http://${shown}:${bound}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
