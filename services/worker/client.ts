/** A Temporal client with offshoot's payload converter (size-checked JSON). */
import { Client, Connection } from '@temporalio/client';
import { defaultFailureConverter } from '@temporalio/common';

import { payloadConverter } from '../../workflows/payload-converter.js';
import { temporalTls } from '../credentials/index.js';

export async function connectClient(options: {
  address: string;
  namespace?: string;
  connectTimeoutMs?: number;
}): Promise<Client> {
  // TLS from OFFSHOOT_TEMPORAL_TLS_* (services/credentials).
  const connection = await Connection.connect({
    address: options.address,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    tls: temporalTls(),
  });
  // The converter itself (not its path): clients also run where require() cannot load TypeScript.
  return new Client({
    connection,
    namespace: options.namespace ?? 'default',
    dataConverter: { payloadConverter, failureConverter: defaultFailureConverter, payloadCodecs: [] } as never,
  });
}
