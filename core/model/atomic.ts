/**
 * Crash-safe writes: data goes to a temporary file in the same folder, is fsynced, then renamed
 * over the target, so a reader sees the old file or the new one, never half of one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

function fsyncDir(dir: string): void {
  try {
    const fd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // Some filesystems refuse to fsync a directory; the rename is still atomic there.
  }
}

function tempName(target: string): string {
  return path.join(
    path.dirname(target),
    `.${path.basename(target)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`,
  );
}

export function writeFileAtomic(target: string, data: string | Buffer | Buffer[]): void {
  fs.mkdirSync(path.dirname(target), { recursive: true });
  const tmp = tempName(target);
  const fd = fs.openSync(tmp, 'w');
  try {
    const parts = Array.isArray(data) ? data : [typeof data === 'string' ? Buffer.from(data, 'utf8') : data];
    for (const part of parts) {
      let written = 0;
      while (written < part.length) written += fs.writeSync(fd, part, written, part.length - written);
    }
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, target);
  fsyncDir(path.dirname(target));
}

/**
 * Builds a directory through `fill` in a temporary sibling, then swaps it in for `target`. If `fill`
 * throws, the target is untouched.
 */
export async function writeDirAtomic(target: string, fill: (dir: string) => void | Promise<void>): Promise<void> {
  const parent = path.dirname(path.resolve(target));
  fs.mkdirSync(parent, { recursive: true });
  const tmp = tempName(path.resolve(target));
  fs.mkdirSync(tmp);
  try {
    await fill(tmp);
    fsyncDir(tmp);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  try {
    if (fs.existsSync(target)) {
      const old = tempName(path.resolve(target));
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
  fsyncDir(parent);
}
