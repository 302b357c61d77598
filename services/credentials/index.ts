/**
 * services/credentials: TLS and credentials of offshoot's connections, from the environment — how a
 * deployment hands mounted Secrets to a process (deploy/k8s, docs/deploy.md). Each variable names a
 * file (PEM, or a NATS credentials file) or holds a value; unset means the plaintext, unauthenticated
 * default that the local stack and the tests use.
 *
 *   Temporal (workers, `offshoot run/status/cancel`)
 *     OFFSHOOT_TEMPORAL_TLS_CA          CA bundle of the frontend's certificate (default: system roots)
 *     OFFSHOOT_TEMPORAL_TLS_CERT, _KEY  client certificate and key (mutual TLS)
 *     OFFSHOOT_TEMPORAL_TLS_SERVER_NAME name to check the frontend's certificate against
 *     OFFSHOOT_TEMPORAL_TLS=true        TLS with none of the above (system roots, no client certificate)
 *   Teacher-logit service clients (evaluators, pretraining)
 *     OFFSHOOT_TEACHER_TLS_CA, _CERT, _KEY, _SERVER_NAME   likewise (docs/teacher-service.md, TLS)
 *   NATS (progress publishers, watch, dashboard)
 *     OFFSHOOT_NATS_CREDS               credentials file (user JWT + NKey seed)
 *     OFFSHOOT_NATS_USER, _PASSWORD     user and password
 *     OFFSHOOT_NATS_TOKEN               token
 *     OFFSHOOT_NATS_TLS_CA              CA bundle of the server's certificate (TLS)
 *
 * Files are read when a connection is made, so a missing or unreadable one fails that connection with
 * an error naming the variable and the path.
 */
import * as fs from 'node:fs';

import type { ClientTlsOptions } from '../teacher/index.js';

type Env = Record<string, string | undefined>;

/** Temporal's TLSConfig (@temporalio/common), for NativeConnection and Connection. */
export interface TemporalTls {
  serverNameOverride?: string;
  serverRootCACertificate?: Buffer;
  clientCertPair?: { crt: Buffer; key: Buffer };
}

function value(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v ? v : undefined;
}

function file(env: Env, name: string): Buffer | undefined {
  const p = value(env, name);
  if (!p) return undefined;
  try {
    return fs.readFileSync(p);
  } catch (err) {
    throw new Error(`${name}=${p}: cannot read it: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function pair(env: Env, prefix: string): { cert?: Buffer; key?: Buffer } {
  const cert = file(env, `${prefix}_CERT`);
  const key = file(env, `${prefix}_KEY`);
  if (Boolean(cert) !== Boolean(key))
    throw new Error(
      `${prefix}_CERT and ${prefix}_KEY go together (a client certificate and its key); only ${cert ? `${prefix}_CERT` : `${prefix}_KEY`} is set`,
    );
  return { cert, key };
}

function flag(env: Env, name: string): boolean {
  const v = value(env, name)?.toLowerCase();
  if (v === undefined || v === '0' || v === 'false' || v === 'no') return false;
  if (v === '1' || v === 'true' || v === 'yes') return true;
  throw new Error(`${name}: expected true or false, got ${JSON.stringify(env[name])}`);
}

/** TLS to Temporal from OFFSHOOT_TEMPORAL_TLS_*; undefined: plaintext. */
export function temporalTls(env: Env = process.env): TemporalTls | undefined {
  const ca = file(env, 'OFFSHOOT_TEMPORAL_TLS_CA');
  const { cert, key } = pair(env, 'OFFSHOOT_TEMPORAL_TLS');
  const serverName = value(env, 'OFFSHOOT_TEMPORAL_TLS_SERVER_NAME');
  if (!ca && !cert && !serverName && !flag(env, 'OFFSHOOT_TEMPORAL_TLS')) return undefined;
  return {
    ...(serverName ? { serverNameOverride: serverName } : {}),
    ...(ca ? { serverRootCACertificate: ca } : {}),
    ...(cert && key ? { clientCertPair: { crt: cert, key } } : {}),
  };
}

/** TLS to the teacher-logit service from OFFSHOOT_TEACHER_TLS_*; undefined: plaintext. */
export function teacherTls(env: Env = process.env): ClientTlsOptions | undefined {
  const ca = file(env, 'OFFSHOOT_TEACHER_TLS_CA');
  const { cert, key } = pair(env, 'OFFSHOOT_TEACHER_TLS');
  const serverName = value(env, 'OFFSHOOT_TEACHER_TLS_SERVER_NAME');
  if (!ca && !cert && !serverName) return undefined;
  return { ...(ca ? { ca } : {}), ...(cert && key ? { cert, key } : {}), ...(serverName ? { serverName } : {}) };
}

/** What NATS' connect() takes for credentials and TLS (a subset of its ConnectionOptions). */
export interface NatsAuth {
  user?: string;
  pass?: string;
  token?: string;
  authenticator?: unknown;
  tls?: { caFile: string };
}

/**
 * NATS credentials from OFFSHOOT_NATS_*: at most one of a credentials file, user and password, or a
 * token; an empty object when none is set. The credentials file's content goes to `credsAuthenticator`
 * (the caller's import of @nats-io/transport-node, passed in so this module loads no NATS code).
 */
export function natsAuth(credsAuthenticator: (creds: Uint8Array) => unknown, env: Env = process.env): NatsAuth {
  const creds = file(env, 'OFFSHOOT_NATS_CREDS');
  const user = value(env, 'OFFSHOOT_NATS_USER');
  const pass = env.OFFSHOOT_NATS_PASSWORD;
  const token = value(env, 'OFFSHOOT_NATS_TOKEN');
  const kinds = [creds && 'OFFSHOOT_NATS_CREDS', user && 'OFFSHOOT_NATS_USER', token && 'OFFSHOOT_NATS_TOKEN'].filter(
    Boolean,
  );
  if (kinds.length > 1)
    throw new Error(
      `NATS credentials: set one of OFFSHOOT_NATS_CREDS, OFFSHOOT_NATS_USER (with OFFSHOOT_NATS_PASSWORD) or OFFSHOOT_NATS_TOKEN, not ${kinds.join(' and ')}`,
    );
  if (pass !== undefined && !user) throw new Error('OFFSHOOT_NATS_PASSWORD is set without OFFSHOOT_NATS_USER');
  const out: NatsAuth = {};
  if (creds) out.authenticator = credsAuthenticator(new Uint8Array(creds));
  if (user) Object.assign(out, { user, pass: pass ?? '' });
  if (token) out.token = token;
  const ca = value(env, 'OFFSHOOT_NATS_TLS_CA');
  if (ca) {
    file(env, 'OFFSHOOT_NATS_TLS_CA'); // fail now, naming the variable, rather than inside the client
    out.tls = { caFile: ca };
  }
  return out;
}
