/**
 * services/credentials: how deploy/k8s hands its mounted Secrets to offshoot's processes (environment
 * variables naming files). Unit checks of each variable, then the hooks against real servers: a
 * mutual-TLS teacher service reached through the workers' teacherClient(), and nats-server with user and
 * password, and with a token, reached through connectNats() (what every progress publisher uses).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import type { TLSConfig } from '@temporalio/common/lib/internal-non-workflow/tls-config.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { natsAuth, teacherTls, temporalTls } from '../services/credentials/index.js';
import { closeTeacherClients, localEnv, teacherClient } from '../services/orchestration/index.js';
import { connectNats } from '../services/progress/index.js';
import { freePort, natsServerBinary } from '../services/stack/index.js';
import { makeTestCerts } from './helpers/certs.js';
import { saveTeacher, startTeacher, stopAllTeachers } from './helpers/teacher.js';
import { tinyConfig } from './helpers/tiny.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-credentials-'));
const certs = path.join(tmp, 'certs');
const pemPath = (name: string) => path.join(certs, name);

beforeAll(() => makeTestCerts(certs, ['client']));

afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Sets environment variables for one test; afterEach puts the old values back. */
const saved = new Map<string, string | undefined>();
function setEnv(vars: Record<string, string>): void {
  for (const [k, v] of Object.entries(vars)) {
    if (!saved.has(k)) saved.set(k, process.env[k]);
    process.env[k] = v;
  }
}
afterEach(() => {
  for (const [k, v] of saved) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  saved.clear();
});

describe('credentials from the environment', () => {
  it('Temporal: nothing set is plaintext; CA, client pair and server name become its TLSConfig', () => {
    expect(temporalTls({})).toBeUndefined();
    expect(temporalTls({ OFFSHOOT_TEMPORAL_TLS: 'false' })).toBeUndefined();
    expect(temporalTls({ OFFSHOOT_TEMPORAL_TLS: 'true' })).toEqual({});
    const tls: TLSConfig | undefined = temporalTls({
      OFFSHOOT_TEMPORAL_TLS_CA: pemPath('ca.crt'),
      OFFSHOOT_TEMPORAL_TLS_CERT: pemPath('client.crt'),
      OFFSHOOT_TEMPORAL_TLS_KEY: pemPath('client.key'),
      OFFSHOOT_TEMPORAL_TLS_SERVER_NAME: 'temporal.example',
    });
    expect(tls?.serverNameOverride).toBe('temporal.example');
    expect(tls?.serverRootCACertificate?.toString()).toBe(fs.readFileSync(pemPath('ca.crt'), 'utf8'));
    expect(tls?.clientCertPair?.crt.toString()).toBe(fs.readFileSync(pemPath('client.crt'), 'utf8'));
    expect(tls?.clientCertPair?.key.toString()).toBe(fs.readFileSync(pemPath('client.key'), 'utf8'));
  });

  it('errors name the variable: a certificate without its key, an unreadable file, a bad flag', () => {
    expect(() => temporalTls({ OFFSHOOT_TEMPORAL_TLS_CERT: pemPath('client.crt') })).toThrow(
      /OFFSHOOT_TEMPORAL_TLS_CERT and OFFSHOOT_TEMPORAL_TLS_KEY go together/,
    );
    expect(() => teacherTls({ OFFSHOOT_TEACHER_TLS_CA: path.join(tmp, 'missing.pem') })).toThrow(
      /OFFSHOOT_TEACHER_TLS_CA=.*missing\.pem: cannot read it: ENOENT/,
    );
    expect(() => temporalTls({ OFFSHOOT_TEMPORAL_TLS: 'maybe' })).toThrow(
      /OFFSHOOT_TEMPORAL_TLS: expected true or false, got "maybe"/,
    );
  });

  it('NATS: a credentials file, user and password, or a token; one of them', () => {
    const seen: string[] = [];
    const creds = path.join(tmp, 'nats.creds');
    fs.writeFileSync(creds, '-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n');
    const auth = natsAuth(
      (b) => {
        seen.push(Buffer.from(b).toString());
        return 'authenticator';
      },
      { OFFSHOOT_NATS_CREDS: creds, OFFSHOOT_NATS_TLS_CA: pemPath('ca.crt') },
    );
    expect(auth).toEqual({ authenticator: 'authenticator', tls: { caFile: pemPath('ca.crt') } });
    expect(seen).toEqual([fs.readFileSync(creds, 'utf8')]);
    expect(natsAuth(() => undefined, {})).toEqual({});
    expect(natsAuth(() => undefined, { OFFSHOOT_NATS_USER: 'u', OFFSHOOT_NATS_PASSWORD: 'p' })).toEqual({
      user: 'u',
      pass: 'p',
    });
    expect(natsAuth(() => undefined, { OFFSHOOT_NATS_TOKEN: 't' })).toEqual({ token: 't' });
    expect(() => natsAuth(() => undefined, { OFFSHOOT_NATS_USER: 'u', OFFSHOOT_NATS_TOKEN: 't' })).toThrow(
      /not OFFSHOOT_NATS_USER and OFFSHOOT_NATS_TOKEN/,
    );
    expect(() => natsAuth(() => undefined, { OFFSHOOT_NATS_PASSWORD: 'p' })).toThrow(
      /OFFSHOOT_NATS_PASSWORD is set without OFFSHOOT_NATS_USER/,
    );
  });
});

describe('the hooks against real servers', () => {
  afterAll(async () => {
    closeTeacherClients();
    await stopAllTeachers();
  });

  it("workers' teacher clients use OFFSHOOT_TEACHER_TLS_* against a mutual-TLS teacher service", async () => {
    const model = path.join(tmp, 'teacher');
    const { hash } = await saveTeacher(model, tinyConfig(), 3);
    const t = await startTeacher(model, {
      extra: ['--tls-cert', pemPath('server.crt'), '--tls-key', pemPath('server.key'), '--tls-ca', pemPath('ca.crt')],
    });
    expect(t.stderr()).toMatch(/with mutual TLS/);
    setEnv({
      OFFSHOOT_TEACHER_TLS_CA: pemPath('ca.crt'),
      OFFSHOOT_TEACHER_TLS_CERT: pemPath('client.crt'),
      OFFSHOOT_TEACHER_TLS_KEY: pemPath('client.key'),
      // The certificate names 127.0.0.1 and localhost; an IP address is no TLS server name (RFC 6066).
      OFFSHOOT_TEACHER_TLS_SERVER_NAME: 'localhost',
    });
    const client = teacherClient(localEnv(), { targets: [t.target], topK: 8 }, hash);
    expect((await client.info()).contentHash).toBe(hash);
  }, 120_000);

  it('connectNats (progress publishers, watch, dashboard) authenticates with OFFSHOOT_NATS_USER/PASSWORD and OFFSHOOT_NATS_TOKEN', async () => {
    for (const [serverArgs, env] of [
      [
        ['--user', 'offshoot', '--pass', 's3cret'],
        { OFFSHOOT_NATS_USER: 'offshoot', OFFSHOOT_NATS_PASSWORD: 's3cret' },
      ],
      [['--auth', 't0ken'], { OFFSHOOT_NATS_TOKEN: 't0ken' }],
    ] as const) {
      const port = await freePort();
      const server = spawn(natsServerBinary(), ['-a', '127.0.0.1', '-p', String(port), ...serverArgs], {
        stdio: 'ignore',
      });
      try {
        await waitForPort(port, server);
        const url = `nats://127.0.0.1:${port}`;
        await expect(connectNats(url, { timeoutMs: 2000 })).rejects.toThrow(/Authorization|authentication|auth/i);
        setEnv(env);
        const nc = await connectNats(url, { timeoutMs: 2000 });
        nc.publish('offshoot.test', 'hello');
        await nc.flush();
        await nc.close();
      } finally {
        for (const k of Object.keys(env)) delete process.env[k];
        server.kill('SIGKILL');
      }
    }
  }, 60_000);
});

async function waitForPort(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nats-server exited with ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => {
        s.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
