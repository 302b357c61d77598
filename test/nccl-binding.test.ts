/**
 * The NCCL binding (core/model/cuda/nccl.ts) against the wheel scripts/setup-cuda.sh --nccl installs:
 * every prototype's argument kinds and every enum value offshoot passes match nccl.h, and the library
 * loads and answers without a GPU (its version, a communicator id). An all-reduce itself needs two
 * GPUs: bench/data-parallel.ts --gpus runs it on a multi-GPU host.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import {
  NCCL_BINDINGS,
  NCCL_ENUMS,
  NCCL_VERSION,
  loadNccl,
  ncclLibraryPath,
  ncclVersion,
} from '../core/model/cuda/nccl.js';

const lib = ncclLibraryPath();
const header = path.join(path.dirname(path.dirname(lib)), 'include', 'nccl.h');
const missing =
  fs.existsSync(lib) && fs.existsSync(header) ? null : `NCCL is not installed (${lib}): scripts/setup-cuda.sh --nccl`;

/** How the x86-64 ABI passes a parameter: an 8-byte word (pointers, handles, size_t), a 32-bit integer (enums too), or the 128-byte id by value. */
function kindOf(param: string): string {
  const p = param.replace(/\b(const|_Out_|_Inout_)\b/g, '').trim();
  if (p.includes('*')) return 'word64';
  const type = p.split(/\s+/)[0];
  if (type === 'ncclUniqueId') return 'id128';
  if (/^(size_t|uint64_t|ncclComm_t|cudaStream_t|void)$/.test(type)) return 'word64';
  return 'int32';
}

describe.skipIf(!!missing)(`the NCCL binding${missing ? ` (skipped: ${missing})` : ''}`, () => {
  it('every binding matches its declaration in nccl.h', () => {
    const text = fs.readFileSync(header, 'utf8').replace(/\/\*[\s\S]*?\*\//g, '');
    for (const proto of NCCL_BINDINGS) {
      const name = /(\w+)\(/.exec(proto)![1];
      const m = new RegExp(`(?:ncclResult_t|const char\\s*\\*)\\s+${name}\\s*\\(([^)]*)\\)\\s*;`).exec(text);
      expect(m, `${name} is declared in nccl.h`).not.toBeNull();
      const theirs = m![1]
        .split(',')
        .map((p) => p.trim())
        .filter((p) => p && p !== 'void');
      const ours = proto
        .slice(proto.indexOf('(') + 1, proto.lastIndexOf(')'))
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean);
      expect(ours.map(kindOf), `${name}: argument kinds`).toEqual(theirs.map(kindOf));
      expect(proto.startsWith('const char*'), `${name}: return type`).toBe(m![0].startsWith('const char'));
    }
    for (const [name, value] of Object.entries(NCCL_ENUMS)) {
      expect(new RegExp(`\\b${name}\\s*=\\s*(\\d+)`).exec(text)?.[1], name).toBe(String(value));
    }
    expect(/#define NCCL_UNIQUE_ID_BYTES 128\b/.test(text)).toBe(true);
  });

  it('loads without a GPU: the pinned version, and a communicator id from ncclGetUniqueId', () => {
    expect(ncclVersion()).toBe(NCCL_VERSION);
    const out: { internal?: Uint8Array } = {};
    expect(loadNccl().ncclGetUniqueId(out)).toBe(NCCL_ENUMS.ncclSuccess);
    expect(out.internal).toHaveLength(128);
    expect(out.internal!.some((b) => b !== 0)).toBe(true);
  });
});

it('without NCCL the error names the file and the setup step', () => {
  const saved = process.env.OFFSHOOT_NCCL_HOME;
  process.env.OFFSHOOT_NCCL_HOME = '/nonexistent/nccl';
  try {
    expect(() => loadNccl()).toThrow(
      'NCCL not found: no /nonexistent/nccl/lib/libnccl.so.2; run scripts/setup-cuda.sh --nccl',
    );
  } finally {
    if (saved === undefined) delete process.env.OFFSHOOT_NCCL_HOME;
    else process.env.OFFSHOOT_NCCL_HOME = saved;
  }
});
