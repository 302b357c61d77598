/**
 * Prometheus metrics: the endpoint helper, activity timing, the teacher adaptor, and
 * `offshoot teacher serve --metrics-port` (a real teacher process answering real requests).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Registry } from 'prom-client';
import { afterAll, describe, expect, it } from 'vitest';

import {
  type TeacherMetricsSnapshot,
  activityDuration,
  metricsRegistry,
  queueDepth,
  registerTeacherMetrics,
  startMetricsServer,
  timeActivity,
  tokensPerSecond,
} from '../services/progress/index.js';
import { TeacherClient } from '../services/teacher/index.js';
import { freePort, saveTeacher, startTeacher, stopAllTeachers } from './helpers/teacher.js';
import { syntheticBatches, tinyConfig } from './helpers/tiny.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'offshoot-metrics-'));

afterAll(async () => {
  await stopAllTeachers();
  fs.rmSync(tmp, { recursive: true, force: true });
});

/** A sample's value from Prometheus text: `name{labels} value`. */
function sample(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels ? `{${labels}}` : ''} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('metrics', () => {
  it('serves the registry: activity durations, tokens/s, queue depths, process metrics', async () => {
    const server = await startMetricsServer(0);
    try {
      await timeActivity('evaluateCandidate', async () => new Promise((r) => setTimeout(r, 20)));
      await expect(timeActivity('evaluateCandidate', async () => Promise.reject(new Error('boom')))).rejects.toThrow(
        'boom',
      );
      tokensPerSecond.set({ component: 'pretrain' }, 12345);
      queueDepth.set({ queue: 'evaluate' }, 7);

      const res = await fetch(server.url);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toContain('text/plain');
      const text = await res.text();
      expect(
        sample(text, 'offshoot_activity_duration_seconds_count', 'activity="evaluateCandidate",outcome="completed"'),
      ).toBe(1);
      expect(
        sample(text, 'offshoot_activity_duration_seconds_count', 'activity="evaluateCandidate",outcome="failed"'),
      ).toBe(1);
      expect(
        sample(text, 'offshoot_activity_duration_seconds_sum', 'activity="evaluateCandidate",outcome="completed"'),
      ).toBeGreaterThan(0.015);
      expect(sample(text, 'offshoot_activities_in_flight', 'activity="evaluateCandidate"')).toBe(0);
      expect(sample(text, 'offshoot_tokens_per_second', 'component="pretrain"')).toBe(12345);
      expect(sample(text, 'offshoot_queue_depth', 'queue="evaluate"')).toBe(7);
      expect(text).toContain('offshoot_process_cpu_user_seconds_total');
      expect((await fetch(new URL('/healthz', server.url))).status).toBe(200);
      expect((await fetch(new URL('/other', server.url))).status).toBe(404);
    } finally {
      await server.close();
      activityDuration.reset();
    }
  });

  it('the teacher adaptor reads a snapshot at scrape time and can be removed', async () => {
    const registry = new Registry();
    let served = 100;
    const snap = (): TeacherMetricsSnapshot => ({
      uptimeSeconds: 5,
      tokensPerSecond: 2048,
      tokensServed: served,
      requestsServed: 4,
      forwardPasses: 3,
      requestsRejected: 1,
      requestsCancelled: 0,
      activeStreams: 2,
      queueDepth: 6,
      queuedTokens: 600,
      bytesBuffered: 1000,
      busySeconds: 1.5,
      computeSeconds: 1.2,
    });
    const remove = registerTeacherMetrics(snap, registry);
    let text = await registry.metrics();
    expect(sample(text, 'offshoot_teacher_tokens_served_total')).toBe(100);
    expect(sample(text, 'offshoot_teacher_queue_depth')).toBe(6);
    expect(sample(text, 'offshoot_teacher_tokens_per_second')).toBe(2048);
    expect(sample(text, 'offshoot_teacher_compute_seconds_total')).toBe(1.2);
    served = 250;
    await new Promise((r) => setTimeout(r, 150));
    text = await registry.metrics();
    expect(sample(text, 'offshoot_teacher_tokens_served_total')).toBe(250);
    // Registering again (a second server in one process) replaces the first.
    registerTeacherMetrics(snap, registry);
    remove();
    expect(await registry.metrics()).not.toContain('offshoot_teacher_');
    expect(metricsRegistry.getSingleMetric('offshoot_teacher_queue_depth')).toBeUndefined();
  });

  it('offshoot teacher serve --metrics-port exposes the teacher service', async () => {
    const config = tinyConfig();
    const dir = path.join(tmp, 'teacher');
    await saveTeacher(dir, config, 5);
    const metricsPort = await freePort();
    const teacher = await startTeacher(dir, { extra: ['--metrics-port', String(metricsPort)] });
    const client = new TeacherClient({ targets: [teacher.target] });
    try {
      const batch = syntheticBatches(config.vocabSize, 2, 16)(0);
      for (let i = 0; i < 3; i++) await client.topK({ tokens: batch.input, batchSize: 2, seqLen: 16, topK: 4 });
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      expect(sample(text, 'offshoot_teacher_tokens_served_total')).toBe(96);
      expect(sample(text, 'offshoot_teacher_requests_served_total')).toBe(3);
      expect(sample(text, 'offshoot_teacher_tokens_per_second')).toBeGreaterThan(0);
      expect(sample(text, 'offshoot_teacher_queue_depth')).toBe(0);
      expect(sample(text, 'offshoot_teacher_active_streams')).toBeGreaterThanOrEqual(0);
      expect(text).toContain('offshoot_process_resident_memory_bytes');
      expect(teacher.stderr()).toContain(`teacher: metrics on http://127.0.0.1:${metricsPort}/metrics`);
    } finally {
      client.close();
    }
    const exit = await teacher.stop();
    expect(exit.code).toBe(0);
    // The metrics endpoint went away with the server.
    await expect(fetch(`http://127.0.0.1:${metricsPort}/metrics`)).rejects.toThrow();
  }, 120_000);
});
