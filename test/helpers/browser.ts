/**
 * Headless Chromium (Debian's `chromium`, installed by scripts/setup.sh --test) driven by playwright-core,
 * with a fresh profile folder that close() removes. No network beyond loopback is needed or used.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { type BrowserContext, chromium } from 'playwright-core';

export const CHROMIUM = process.env.OFFSHOOT_CHROMIUM || '/usr/bin/chromium';

export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

export interface Browser {
  context: BrowserContext;
  close(): Promise<void>;
}

export async function launchChromium(viewport = { width: 1400, height: 1000 }): Promise<Browser> {
  if (!fs.existsSync(CHROMIUM))
    throw new Error(
      `${CHROMIUM} not found: run scripts/setup.sh --test (apt-get install chromium) or set OFFSHOOT_CHROMIUM`,
    );
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // The profile folder is the --user-data-dir (playwright passes it).
    args: CHROMIUM_FLAGS,
    viewport,
  });
  return {
    context,
    close: async () => {
      await context.close().catch(() => undefined);
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Where tests keep artifacts (screenshots): test-artifacts/ at the repository root (git-ignored). */
export function artifactPath(name: string): string {
  const dir = path.join(import.meta.dirname, '..', '..', 'test-artifacts');
  fs.mkdirSync(dir, { recursive: true });
  return path.join(dir, name);
}
