/**
 * The compute backends a test runs on: cpu and wasm always; webgpu (lavapipe on CPU machines) and
 * tensorflow when they load. In CI (env CI set) webgpu must load, since .ci/run installs it; tensorflow
 * must load when OFFSHOOT_REQUIRE_TENSORFLOW=1.
 */
import { type BackendName, initBackend } from '../../core/model/backend.js';

const silent = (): void => {};

export async function testBackends(): Promise<BackendName[]> {
  const names: BackendName[] = ['cpu', 'wasm'];
  for (const [name, required] of [
    ['webgpu', Boolean(process.env.CI)],
    ['tensorflow', process.env.OFFSHOOT_REQUIRE_TENSORFLOW === '1'],
  ] as const) {
    try {
      await initBackend(name, silent);
      names.push(name);
    } catch (err) {
      if (required) throw err;
    }
  }
  await initBackend('cpu', silent);
  return names;
}

export async function useBackend(name: BackendName): Promise<void> {
  await initBackend(name, silent);
}
