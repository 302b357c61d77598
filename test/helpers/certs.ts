/**
 * Test certificates made with openssl (P-256, valid one day): a CA, a server certificate for
 * 127.0.0.1/localhost and client certificates signed by the CA, plus any self-signed ones (a
 * "rogue" client the CA never signed).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Writes ca.{key,crt}, server.{key,crt}, NAME.{key,crt} per client and per self-signed name into dir. */
export function makeTestCerts(dir: string, clients: string[], selfSigned: string[] = []): void {
  fs.mkdirSync(dir, { recursive: true });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const run = (...args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  run('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=offshoot test CA');
  fs.writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  for (const who of ['server', ...clients]) {
    run('req', ...ec, '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=${who}`);
    run(
      'x509',
      '-req',
      '-in',
      `${who}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${who}.crt`,
      '-days',
      '1',
      ...(who === 'server' ? ['-extfile', 'server.ext'] : []),
    );
  }
  for (const who of selfSigned)
    run('req', '-x509', ...ec, '-keyout', `${who}.key`, '-out', `${who}.crt`, '-days', '1', '-subj', `/CN=${who}`);
}
