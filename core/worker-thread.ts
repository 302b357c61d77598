/**
 * Worker threads on a module of this project, run from the TypeScript sources (through tsx, as the
 * tests and `npx tsx` run them) or from the build (dist/).
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * A worker running the module `name` (without its extension) that lies beside the caller, whose
 * import.meta.url `from` is: its extension says whether the sources or the build are running.
 */
export function startModuleWorker(from: string, name: string, options: WorkerOptions = {}): Worker {
  if (from.endsWith('.ts')) {
    const entry = new URL(`./${name}.ts`, from).href;
    const tsx = import.meta.resolve('tsx/esm/api');
    const code = `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(entry)}); });`;
    return new Worker(code, { ...options, eval: true });
  }
  return new Worker(new URL(`./${name}.js`, from), options);
}
