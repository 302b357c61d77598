/**
 * Crash-safe writes: data goes to a temporary file (or folder) beside the target, is fsynced, then
 * renamed over it, and the folder holding it is fsynced, so a reader sees the old file or the whole new
 * one, never half of one. Each in the form its callers need: async for the data pipeline, sync where a
 * caller must not yield (checkpoints, reports).
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** File contents: text (UTF-8) or bytes, whole or in parts written one after the other. */
export type FileData = string | Uint8Array | readonly Uint8Array[];

/** A hidden name beside `target`, unique to this process and call. */
function tempName(target: string): string {
  return path.join(
    path.dirname(target),
    `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`,
  );
}

function parts(data: FileData): readonly Uint8Array[] {
  if (typeof data === 'string') return [Buffer.from(data, 'utf8')];
  return data instanceof Uint8Array ? [data] : data;
}

/** fsyncs a folder (best effort), so a rename in it is durable. */
export function fsyncDirSync(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, 'r');
    fs.fsyncSync(fd);
  } catch {
    // Some filesystems refuse to fsync a folder; the rename is still atomic there.
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** fsyncs a folder (best effort), so a rename in it is durable. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: fs.promises.FileHandle | undefined;
  try {
    fh = await fs.promises.open(dir, 'r');
    await fh.sync();
  } catch {
    // Some filesystems refuse to fsync a folder; the rename is still atomic there.
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

/** Writes `data` to `file` atomically (see the top of this module), making its folder if needed. */
export function writeFileAtomicSync(file: string, data: FileData): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = tempName(file);
  const fd = fs.openSync(tmp, 'wx');
  try {
    for (const part of parts(data)) {
      let written = 0;
      while (written < part.byteLength) written += fs.writeSync(fd, part, written, part.byteLength - written);
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fs.renameSync(tmp, file);
  } catch (err) {
    try {
      fs.closeSync(fd);
    } catch {
      // Already closed.
    }
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fsyncDirSync(path.dirname(file));
}

/** Writes `data` to `file` atomically (see the top of this module), making its folder if needed. */
export async function writeFileAtomic(file: string, data: FileData): Promise<void> {
  const dir = path.dirname(file);
  await fs.promises.mkdir(dir, { recursive: true });
  const tmp = tempName(file);
  const fh = await fs.promises.open(tmp, 'wx');
  try {
    for (const part of parts(data)) {
      let written = 0;
      while (written < part.byteLength) {
        const { bytesWritten } = await fh.write(part, written, part.byteLength - written);
        written += bytesWritten;
      }
    }
    await fh.sync();
    await fh.close();
    await fs.promises.rename(tmp, file);
  } catch (err) {
    await fh.close().catch(() => undefined);
    await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

/**
 * Builds a folder through `fill` in a temporary sibling, then swaps it in for `target`. If `fill`
 * throws, the target is untouched.
 */
export async function writeDirAtomic(target: string, fill: (dir: string) => void | Promise<void>): Promise<void> {
  const resolved = path.resolve(target);
  const parent = path.dirname(resolved);
  fs.mkdirSync(parent, { recursive: true });
  const tmp = tempName(resolved);
  fs.mkdirSync(tmp);
  try {
    await fill(tmp);
    fsyncDirSync(tmp);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  try {
    if (fs.existsSync(target)) {
      const old = tempName(resolved);
      fs.renameSync(target, old);
      try {
        fs.renameSync(tmp, target);
      } catch (err) {
        fs.renameSync(old, target);
        throw err;
      }
      fs.rmSync(old, { recursive: true, force: true });
    } else {
      fs.renameSync(tmp, target);
    }
  } catch (err) {
    // A target that cannot be replaced (a mount point, the working folder: EBUSY) leaves nothing behind.
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  fsyncDirSync(parent);
}
