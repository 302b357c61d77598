/**
 * A real nats-server with JetStream (file storage in a temporary folder) on a free loopback port, for
 * integration tests. restart() stops it (SIGTERM, or SIGKILL with `kill: true`) and starts it again on
 * the same port and store. Every server started here is stopped by stop() and, failing that, when the
 * test process exits.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { freePort } from '../../services/stack/index.js';

export { freePort };

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** The nats-server binary: env OFFSHOOT_NATS_SERVER, else PATH, else /usr/sbin; undefined when missing. */
export function natsServerBinary(): string | undefined {
  const candidates = [process.env.OFFSHOOT_NATS_SERVER, 'nats-server', '/usr/sbin/nats-server'].filter(
    Boolean,
  ) as string[];
  for (const c of candidates) {
    try {
      execFileSync(c, ['--version'], { stdio: 'ignore' });
      return c;
    } catch {
      // next
    }
  }
  return undefined;
}

export interface NatsServer {
  port: number;
  url: string;
  storeDir: string;
  /** What the server logged so far (all of its runs). */
  log(): string;
  restart(options?: { kill?: boolean; downMs?: number }): Promise<void>;
  stop(): Promise<void>;
}

function waitForPort(port: number, timeoutMs: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      if (child.exitCode !== null) {
        reject(new Error(`nats-server exited with ${child.exitCode}:\n${log()}`));
        return;
      }
      const sock = net.connect(port, '127.0.0.1');
      sock.once('connect', () => {
        sock.destroy();
        resolve();
      });
      sock.once('error', () => {
        sock.destroy();
        if (Date.now() > deadline)
          reject(new Error(`nats-server did not listen on ${port} within ${timeoutMs} ms:\n${log()}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

export async function startNats(options: { port?: number } = {}): Promise<NatsServer> {
  const bin = natsServerBinary();
  if (!bin)
    throw new Error(
      'nats-server not found: apt-get install nats-server (scripts/setup-services.sh) or set OFFSHOOT_NATS_SERVER',
    );
  const port = options.port ?? (await freePort());
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-nats-'));
  let output = '';
  let child: ChildProcess;
  let exited: Promise<void>;

  const launch = async (): Promise<void> => {
    child = spawn(bin, ['-js', '-sd', storeDir, '-a', '127.0.0.1', '-p', String(port)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(child);
    const c = child;
    exited = new Promise((resolve) =>
      c.once('exit', () => {
        running.delete(c);
        resolve();
      }),
    );
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (output += d));
    await waitForPort(port, 15_000, child, () => output);
    // Listening comes before JetStream is ready on some versions: wait for the log line.
    const deadline = Date.now() + 15_000;
    while (!/Server is ready/.test(output.slice(output.lastIndexOf('Starting nats-server')))) {
      if (Date.now() > deadline) throw new Error(`nats-server not ready:\n${output}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };

  const halt = async (signal: NodeJS.Signals): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  };

  await launch();
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    storeDir,
    log: () => output,
    async restart({ kill = false, downMs = 500 } = {}) {
      await halt(kill ? 'SIGKILL' : 'SIGTERM');
      await new Promise((r) => setTimeout(r, downMs));
      await launch();
    },
    async stop() {
      await halt('SIGTERM');
      fs.rmSync(storeDir, { recursive: true, force: true });
    },
  };
}
