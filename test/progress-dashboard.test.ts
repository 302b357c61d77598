/**
 * `offshoot dashboard` in headless Chromium (Debian's chromium through playwright-core) against a real
 * nats-server: the page of a run in progress shows one point per evaluated candidate and updates when
 * a new event arrives; a screenshot is kept in test-artifacts/dashboard.png.
 *
 * The charts are uPlot canvases, so the checks read what each chart holds from its uPlot instance
 * (`window.offshootCharts`: the instance's series and data) and look at the canvas's pixels.
 */
import * as http from 'node:http';

import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { NatsProgressPublisher, type ProgressEventInput, startDashboard } from '../services/progress/index.js';
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

interface ChartSeries {
  label: string;
  class: string;
  /** Non-null values of the series in the chart's data: the points uPlot draws for it. */
  points: number;
  /** Its non-null [x, y] pairs. */
  xy: [number, number][];
}

/** The series of chart NAME as its uPlot instance holds them (null while the page has no chart). */
function chartSeries(page: Page, name: 'loss' | 'population'): Promise<ChartSeries[] | null> {
  return page.evaluate((n) => {
    type Plot = { series: { label: string; class: string }[]; data: (number | null | undefined)[][] };
    const u = (globalThis as unknown as { offshootCharts?: Record<string, Plot | null> }).offshootCharts?.[n];
    if (!u) return null;
    return u.series.slice(1).map((s, k) => {
      const xy: [number, number][] = [];
      u.data[k + 1].forEach((y, j) => {
        if (y !== null && y !== undefined) xy.push([u.data[0][j] as number, y]);
      });
      return { label: s.label, class: s.class, points: xy.length, xy };
    });
  }, name);
}

/** Points the population chart holds for its generation series (one per successfully evaluated candidate). */
async function populationPoints(page: Page): Promise<number> {
  const series = (await chartSeries(page, 'population')) ?? [];
  return series.filter((s) => s.class === 'generation').reduce((n, s) => n + s.points, 0);
}

/** The chart's canvas: its size, the pixels drawn on it (not transparent, not white) and those in the Pareto front's orange. */
function canvasInk(
  page: Page,
  name: 'loss' | 'population',
): Promise<{ width: number; height: number; ink: number; orange: number }> {
  return page.$eval(`#${name} canvas`, (el) => {
    type Canvas = {
      width: number;
      height: number;
      getContext(kind: '2d'): { getImageData(x: number, y: number, w: number, h: number): { data: Uint8ClampedArray } };
    };
    const c = el as unknown as Canvas;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let ink = 0;
    let orange = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] === 0 || (d[i] > 245 && d[i + 1] > 245 && d[i + 2] > 245)) continue;
      ink++;
      // #ff7f0e, allowing for antialiasing.
      if (d[i] > 220 && d[i + 1] > 90 && d[i + 1] < 160 && d[i + 2] < 60) orange++;
    }
    return { width: c.width, height: c.height, ink, orange };
  });
}

describe('offshoot dashboard', () => {
  it('shows as many points as candidates evaluated, and updates when a new event arrives', async () => {
    const run = 'dash-run';
    const sim = simulatedRun({ run, generations: 5, population: 10, steps: 120, evalEvery: 20 });
    // A run in progress: the whole search and part of the student's pretraining.
    const studentSteps = sim.events.findIndex(
      (e, i) => i > sim.searchEnd && e.kind === 'pretrain.step' && e.step === 70,
    );
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
    await expect
      .poll(() => page.getAttribute('body', 'data-events'), { timeout: 10_000 })
      .toBe(String(published.length));

    // The population chart holds one point per evaluated candidate (failed ones are not drawn), the
    // page's data-points hook says the same, and its canvas has something on it.
    expect(await populationPoints(page)).toBe(evaluated);
    expect(await page.getAttribute('#population', 'data-points')).toBe(String(evaluated));
    const population = (await chartSeries(page, 'population'))!;
    expect(population.filter((s) => s.class === 'generation').map((s) => s.label)).toEqual(
      [0, 1, 2, 3, 4].map((g) => `generation ${g}`),
    );
    const frontSeries = population.find((s) => s.class === 'front')!;
    expect(frontSeries.points).toBeGreaterThan(0);
    // The front: parameters ascending, fitness strictly descending.
    for (let i = 1; i < frontSeries.xy.length; i++) {
      expect(frontSeries.xy[i][0]).toBeGreaterThanOrEqual(frontSeries.xy[i - 1][0]);
      expect(frontSeries.xy[i][1]).toBeLessThan(frontSeries.xy[i - 1][1]);
    }
    expect(population.find((s) => s.class === 'best')!.points).toBe(1);
    const popInk = await canvasInk(page, 'population');
    expect(popInk.width).toBeGreaterThan(0);
    expect(popInk.height).toBeGreaterThan(0);
    expect(popInk.ink).toBeGreaterThan(1000);
    expect(popInk.orange).toBeGreaterThan(0);

    const lossSeries = (await chartSeries(page, 'loss'))!;
    const curve = (label: string) => lossSeries.find((s) => s.label === label);
    expect(curve('student train')?.points).toBeGreaterThan(0);
    expect(curve('student val')?.points).toBeGreaterThan(0);
    expect(curve('random-init val')?.points).toBeGreaterThan(0);
    expect((await canvasInk(page, 'loss')).ink).toBeGreaterThan(1000);

    expect(await page.locator('#candidates tbody tr').count()).toBe(evaluated + failed);
    expect(await page.locator('#workers tbody tr').count()).toBe(5);
    expect(await page.textContent('#state')).toBe('running');
    expect(await page.textContent('#bar-eval .text')).toContain('evaluations 50/50');
    expect(await page.textContent('#errors')).toContain('teacher service unavailable');

    // A new candidate arrives: one more point, live.
    await pub.publish({
      run,
      kind: 'candidate.evaluated',
      generation: 5,
      candidate: 999,
      params: 61_000_000,
      fitness: 2.5,
      durationMs: 9000,
      source: { worker: 'evaluator-9' },
    });
    await expect.poll(() => populationPoints(page), { timeout: 10_000 }).toBe(evaluated + 1);
    expect(await page.getAttribute('#population', 'data-points')).toBe(String(evaluated + 1));
    // It is the best so far: first row of the table, ringed in the chart.
    await expect.poll(() => page.textContent('#candidates tbody tr:first-child td:first-child')).toBe('#999');
    expect(await page.locator('#summary').textContent()).toContain('best 2.5000 (#999');
    const after = (await chartSeries(page, 'population'))!;
    expect(after.find((s) => s.label === 'generation 5')?.xy).toEqual([[61_000_000, 2.5]]);
    expect(after.find((s) => s.class === 'best')?.xy).toEqual([[61_000_000, 2.5]]);

    // Hovering the ringed point shows that candidate in the chart's tooltip.
    const at = await page.evaluate(() => {
      type Plot = {
        valToPos(v: number, scale: string): number;
        over: { getBoundingClientRect(): { left: number; top: number } };
      };
      const u = (globalThis as unknown as { offshootCharts: { population: Plot } }).offshootCharts.population;
      const r = u.over.getBoundingClientRect();
      return { x: r.left + u.valToPos(61_000_000, 'x'), y: r.top + u.valToPos(2.5, 'y') };
    });
    await page.mouse.move(at.x + 2, at.y + 1);
    await expect
      .poll(() => page.textContent('#population .tip'), { timeout: 5000 })
      .toContain('#999 · generation 5 · fitness 2.5000');
    await page.mouse.move(0, 0);

    // More pretraining steps extend the student's curve.
    const trainPoints = async () => (await chartSeries(page, 'loss'))!.find((s) => s.label === 'student train')!.points;
    const before = await trainPoints();
    await Promise.all(sim.events.slice(studentSteps, studentSteps + 12).map((e) => pub.publish(e)));
    await expect.poll(trainPoints, { timeout: 10_000 }).toBeGreaterThan(before);

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

  it('answers only requests whose Host names a loopback host (DNS rebinding); others get 403 naming it; --allow-host adds names', async () => {
    const get = (base: string, host: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const u = new URL(base);
        const req = http.request({ host: u.hostname, port: u.port, path: '/api/runs', headers: { host } }, (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (d: string) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end();
      });
    const port = new URL(url).port;
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, 'localhost'])
      expect((await get(url, host)).status, host).toBe(200);
    const evil = await get(url, `evil.example:${port}`);
    expect(evil.status).toBe(403);
    expect(evil.body).toMatch(
      new RegExp(
        `Host "evil.example:${port}" is not served \\(only localhost, 127.0.0.1, ::1\\); start it with --allow-host NAME`,
      ),
    );
    expect((await get(url, '127.0.0.1.evil.example')).status).toBe(403);

    const named = await startDashboard({ url: nats.url, port: 0, allowedHosts: ['dash.example'] });
    try {
      expect((await get(named.url, 'dash.example:8080')).status).toBe(200);
      expect((await get(named.url, 'other.example')).status).toBe(403);
    } finally {
      await named.close();
    }
  });
});
