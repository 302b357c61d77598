/**
 * `offshoot dashboard`: a small HTTP server with the live web page (page.ts) and its data.
 *
 *   GET /                       the page (?run=RUN; default: the most recently updated run)
 *   GET /api/runs               every run's KV status, most recently updated first (JSON)
 *   GET /api/events?run=RUN     server-sent events: `progress` (one per stored event, id = stream
 *                               sequence; a reconnect with Last-Event-ID resumes after it), `caughtup`
 *                               once the history is sent, `skipped` for messages that are not v1 events
 *   GET /vendor/uPlot.iife.min.js, /vendor/uPlot.min.css
 *                               uPlot, the charting library the page draws with, read from node_modules
 *                               (the `uplot` dependency) at start, so the page needs no network
 *   GET /healthz
 *
 * Binds 127.0.0.1 unless told otherwise: it has no authentication. It answers only requests whose Host
 * header names a loopback address (or the address it listens on, or a name given in `allowedHosts`),
 * so a web page elsewhere cannot read it through DNS rebinding.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';

import type { NatsConnection } from '@nats-io/transport-node';

import { RUN_ID_PATTERN } from './events.js';
import { connectNats, listRuns, openRunEvents } from './nats.js';
import { DASHBOARD_HTML, VENDOR_ASSETS } from './page.js';

export interface DashboardOptions {
  /** NATS server(s); default env OFFSHOOT_NATS_URL, else nats://127.0.0.1:4222. */
  url?: string;
  host?: string;
  /** 0: any free port. */
  port?: number;
  log?: (line: string) => void;
  /** Seconds between keep-alive comments on idle event streams. */
  keepAliveSeconds?: number;
  /** Host names (Host header, without the port) served besides the loopback ones; '*' serves any. */
  allowedHosts?: string[];
}

export interface Dashboard {
  port: number;
  url: string;
  /** Event streams open now. */
  clients(): number;
  close(): Promise<void>;
}

export const DASHBOARD_DEFAULTS = { host: '127.0.0.1', port: 8080 };

const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

function send(res: http.ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...SECURITY_HEADERS }).end(body);
}

const resolveModule = createRequire(import.meta.url).resolve;

export const LOOPBACK_HOSTS = ['localhost', '127.0.0.1', '::1'];

/** The host name of a Host header, without the port and brackets, lower case. */
export function hostName(header: string): string {
  const h = header.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(1, h.indexOf(']') > 0 ? h.indexOf(']') : undefined);
  const colon = h.lastIndexOf(':');
  return colon >= 0 && h.indexOf(':') === colon ? h.slice(0, colon) : h;
}

/** Whether a request's Host header names a host the dashboard serves. */
export function hostAllowed(header: string | undefined, allowed: ReadonlySet<string>): boolean {
  if (allowed.has('*')) return true;
  if (!header) return false;
  const name = hostName(header);
  return allowed.has(name) || name.endsWith('.localhost');
}

/**
 * The vendored files the page loads, by URL path, read from node_modules. createRequire resolves them
 * from this module's own location, so they are found from the sources (tsx) and from dist/ alike.
 */
export function loadVendorAssets(): Map<string, { type: string; body: Buffer }> {
  const assets = new Map<string, { type: string; body: Buffer }>();
  for (const [urlPath, { module, type }] of Object.entries(VENDOR_ASSETS)) {
    let file: string;
    try {
      file = resolveModule(module);
    } catch (err) {
      throw new Error(
        `dashboard: cannot find ${module} (is the uplot dependency installed? run npm ci): ${(err as Error).message}`,
      );
    }
    assets.set(`/${urlPath}`, { type, body: fs.readFileSync(file) });
  }
  return assets;
}

/** Writes and waits for 'drain' when the socket's buffer is full (a slow browser slows the consumer down). */
function write(res: http.ServerResponse, chunk: string): Promise<void> | undefined {
  if (res.write(chunk)) return undefined;
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

async function streamEvents(
  nc: NatsConnection,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  run: string,
  afterSeq: number,
  keepAliveMs: number,
): Promise<void> {
  const reader = await openRunEvents(nc, run, { afterSeq });
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-store',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
    ...SECURITY_HEADERS,
  });
  res.write('retry: 2000\n\n');
  let caughtUp = false;
  const caught = (): void => {
    if (!caughtUp) {
      caughtUp = true;
      res.write('event: caughtup\ndata: {}\n\n');
    }
  };
  if (reader.initialPending === 0) caught();
  const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), keepAliveMs);
  const stop = (): void => reader.stop();
  req.on('close', stop);
  res.on('close', stop);
  try {
    for await (const s of reader.events) {
      if (res.destroyed) break;
      const body = s.event
        ? `id: ${s.seq}\nevent: progress\ndata: ${JSON.stringify(s.event)}\n\n`
        : `id: ${s.seq}\nevent: skipped\ndata: ${JSON.stringify({ seq: s.seq, subject: s.subject, error: s.error })}\n\n`;
      const wait = write(res, body);
      if (wait) await wait;
      if (s.pending === 0) caught();
    }
  } finally {
    clearInterval(keepAlive);
    reader.stop();
    res.end();
  }
}

export async function startDashboard(options: DashboardOptions = {}): Promise<Dashboard> {
  const host = options.host ?? DASHBOARD_DEFAULTS.host;
  const log = options.log ?? (() => undefined);
  const keepAliveMs = (options.keepAliveSeconds ?? 15) * 1000;
  const vendor = loadVendorAssets();
  const nc = await connectNats(options.url, { name: 'offshoot dashboard' });
  const open = new Set<http.ServerResponse>();

  const wildcard = host === '0.0.0.0' || host === '::';
  const allowed = new Set([
    ...LOOPBACK_HOSTS,
    ...(wildcard ? [] : [hostName(host.includes(':') ? `[${host}]` : host)]),
    ...(options.allowedHosts ?? []).map((h) => h.toLowerCase()),
  ]);
  const server = http.createServer((req, res) => {
    if (!hostAllowed(req.headers.host, allowed)) {
      return send(
        res,
        403,
        'text/plain; charset=utf-8',
        `dashboard: Host ${JSON.stringify(req.headers.host ?? '')} is not served (only ${[...allowed].join(', ')}); start it with --allow-host NAME to serve it under another name\n`,
      );
    }
    const url = new URL(req.url ?? '/', 'http://dashboard');
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain', 'method not allowed\n');
    if (url.pathname === '/' || url.pathname === '/index.html')
      return send(res, 200, 'text/html; charset=utf-8', DASHBOARD_HTML);
    const asset = vendor.get(url.pathname);
    if (asset) return send(res, 200, asset.type, asset.body);
    if (url.pathname === '/healthz') return send(res, 200, 'text/plain', 'ok\n');
    if (url.pathname === '/api/runs') {
      listRuns(nc).then(
        (runs) => send(res, 200, 'application/json', JSON.stringify(runs.map(({ recent: _recent, ...r }) => r))),
        (err: Error) => send(res, 502, 'application/json', JSON.stringify({ error: `NATS: ${err.message}` })),
      );
      return;
    }
    if (url.pathname === '/api/events') {
      const run = url.searchParams.get('run') ?? '';
      if (!RUN_ID_PATTERN.test(run))
        return send(
          res,
          400,
          'application/json',
          JSON.stringify({ error: `run: expected a run id, got ${JSON.stringify(run)}` }),
        );
      const last = Number(req.headers['last-event-id'] ?? url.searchParams.get('after') ?? 0);
      const afterSeq = Number.isSafeInteger(last) && last > 0 ? last : 0;
      open.add(res);
      res.on('close', () => open.delete(res));
      streamEvents(nc, req, res, run, afterSeq, keepAliveMs).catch((err: Error) => {
        log(`dashboard: event stream for ${run}: ${err.message}`);
        if (!res.headersSent) send(res, 502, 'application/json', JSON.stringify({ error: `NATS: ${err.message}` }));
        else res.end();
      });
      return;
    }
    send(res, 404, 'text/plain', 'not found\n');
  });

  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(
          new Error(`dashboard: cannot listen on ${host}:${options.port ?? DASHBOARD_DEFAULTS.port}: ${err.message}`),
        ),
      );
      server.listen(options.port ?? DASHBOARD_DEFAULTS.port, host, () => resolve());
    });
  } catch (err) {
    await nc.close();
    throw err;
  }
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    port,
    url: `http://${shown}:${port}/`,
    clients: () => open.size,
    close: async () => {
      for (const res of open) res.end();
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await nc.close().catch(() => undefined);
    },
  };
}
