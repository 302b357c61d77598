/**
 * `offshoot dashboard` in headless Chromium (Debian's chromium through playwright-core) against a real
 * nats-server: the page of a run in progress shows one point per evaluated candidate and updates when
 * a new event arrives; a screenshot is kept in test-artifacts/dashboard.png.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { NatsProgressPublisher, type ProgressEventInput } from '../services/progress/index.js';
import { type Browser, artifactPath, launchChromium } from './helpers/browser.js';
import { type NatsServer, startNats } from './helpers/nats.js';
import { type OffshootProcess, startOffshoot } from './helpers/offshoot-process.js';
import { simulatedRun } from './helpers/progress-sim.js';

let nats: NatsServer;
let pub: NatsProgressPublisher;
let dashboard: OffshootProcess;
let url: string;
let browser: Browser;

beforeAll(async () => {
  nats = await startNats();
  pub = new NatsProgressPublisher({ url: nats.url });
  dashboard = startOffshoot(['dashboard', '--port', '0', '--nats', nats.url]);
  await dashboard.waitFor((lines) => lines.some((l) => l.includes('"listening"')));
  url = (JSON.parse(dashboard.lines.find((l) => l.includes('"listening"'))!) as { url: string }).url;
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  const exit = await dashboard?.stop();
  await pub?.close();
  await nats?.stop();
  // SIGTERM is a clean stop.
  expect(exit?.code).toBe(0);
});

const count = (events: ProgressEventInput[], pred: (e: ProgressEventInput) => boolean) => events.filter(pred).length;

describe('offshoot dashboard', () => {
  it('shows as many points as candidates evaluated, and updates when a new event arrives', async () => {
    const run = 'dash-run';
    const sim = simulatedRun({ run, generations: 5, population: 10, steps: 120, evalEvery: 20 });
    // A run in progress: the whole search and part of the student's pretraining.
    const studentSteps = sim.events.findIndex((e, i) => i > sim.searchEnd && e.kind === 'pretrain.step' && e.step === 70);
    const published = sim.events.slice(0, studentSteps);
    await Promise.all(published.map((e) => pub.publish(e)));
    const evaluated = count(published, (e) => e.kind === 'candidate.evaluated' && e.fitness !== null);
    const failed = count(published, (e) => e.kind === 'candidate.evaluated' && e.fitness === null);
    expect(evaluated).toBe(49);
    expect(failed).toBe(1);

    const page = await browser.context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    await page.goto(`${url}?run=${run}`);
    await page.waitForSelector('body[data-caughtup="true"]', { timeout: 20_000 });
    await expect.poll(() => page.getAttribute('body', 'data-events'), { timeout: 10_000 }).toBe(String(published.length));

    const points = page.locator('svg#population circle.point');
    expect(await points.count()).toBe(evaluated);
    expect(await page.locator('#candidates tbody tr').count()).toBe(evaluated + failed);
    expect(await page.locator('svg#population path.front').count()).toBe(1);
    expect(await page.locator('#loss path.train[data-series="student"]').count()).toBe(1);
    expect(await page.locator('#loss path.val[data-series="random-init"]').count()).toBe(1);
    expect(await page.locator('#workers tbody tr').count()).toBe(5);
    expect(await page.textContent('#state')).toBe('running');
    expect(await page.textContent('#bar-eval .text')).toContain('evaluations 50/50');
    expect(await page.textContent('#errors')).toContain('teacher service unavailable');

    // A new candidate arrives: one more point, live.
    await pub.publish({ run, kind: 'candidate.evaluated', generation: 5, candidate: 999, params: 61_000_000, fitness: 2.5, durationMs: 9000, source: { worker: 'evaluator-9' } });
    await expect.poll(() => points.count(), { timeout: 10_000 }).toBe(evaluated + 1);
    // It is the best so far: first row of the table, ringed in the chart.
    await expect.poll(() => page.textContent('#candidates tbody tr:first-child td:first-child')).toBe('#999');
    expect(await page.locator('#summary').textContent()).toContain('best 2.5000 (#999');

    // More pretraining steps extend the student's curve.
    const before = (await page.getAttribute('#loss path.train[data-series="student"]', 'd'))!.split('L').length;
    await Promise.all(sim.events.slice(studentSteps, studentSteps + 12).map((e) => pub.publish(e)));
    await expect
      .poll(async () => (await page.getAttribute('#loss path.train[data-series="student"]', 'd'))!.split('L').length, { timeout: 10_000 })
      .toBeGreaterThan(before);

    await page.waitForTimeout(300);
    const shot = artifactPath('dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`dashboard screenshot: ${shot}`);
    expect(errors).toEqual([]);
    await page.close();
  }, 90_000);

  it('serves the run list and rejects a bad run id', async () => {
    const runs = (await (await fetch(new URL('api/runs', url))).json()) as { run: string; state: string }[];
    expect(runs.find((r) => r.run === 'dash-run')).toMatchObject({ state: 'running' });
    const bad = await fetch(new URL('api/events?run=..%2Fx', url));
    expect(bad.status).toBe(400);
  });
});
