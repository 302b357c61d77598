/**
 * The dashboard's single page: HTML, CSS and a small script. The two charts (loss curves of the student
 * against its baselines; the search population as parameters against fitness, with the Pareto front and
 * the best candidate) are drawn by uPlot, a charting library the dashboard's server serves from
 * node_modules at vendor/uPlot.iife.min.js and vendor/uPlot.min.css (VENDOR_ASSETS), so the page needs
 * nothing beyond the server. Data comes over server-sent events from /api/events?run=RUN (every event of
 * the run, history first; the browser reconnects with Last-Event-ID and the server resumes after it), the
 * run list from /api/runs; each render hands the charts their new data with uPlot's setData.
 *
 * Hooks for tests and scripts: body[data-events] (events applied), body[data-caughtup],
 * `window.offshootCharts.loss` and `.population` (the uPlot instances, null while a chart has no data),
 * `#population[data-points]` (the points the population chart holds: the non-null values of its
 * generation series in the instance's data, one per successfully evaluated candidate), the population
 * chart's series classes `generation`, `front` and `best`, the loss chart's `train` and `val` (labelled
 * `SERIES train` / `SERIES val`), `#candidates tbody tr`, `#workers tbody tr`.
 */

/** Files the page loads, served by the dashboard from node_modules: URL path (relative to the page) → module path and type. */
export const VENDOR_ASSETS: Record<string, { module: string; type: string }> = {
  'vendor/uPlot.iife.min.js': { module: 'uplot/dist/uPlot.iife.min.js', type: 'text/javascript; charset=utf-8' },
  'vendor/uPlot.min.css': { module: 'uplot/dist/uPlot.min.css', type: 'text/css; charset=utf-8' },
};

// The script is kept free of backticks and dollar-brace so it can live in this template literal.
const SCRIPT = `
(function () {
  'use strict';
  var PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  var params = new URLSearchParams(location.search);
  var run = params.get('run');
  var S = null;
  var es = null;
  var renderTimer = null;

  function reset() {
    S = {
      events: 0, caughtUp: false, mode: null, state: 'waiting', startedAt: null, finishedAt: null, error: null,
      plan: {}, gensDone: 0, candidates: new Map(), failed: 0, series: new Map(), workers: new Map(),
      errors: [], best: null, lastTime: 0, baselines: []
    };
  }

  function seriesOf(name) {
    var s = S.series.get(name);
    if (!s) { s = { name: name, step: 0, steps: null, train: [], val: [], tps: null, tokens: null, ckpt: null }; S.series.set(name, s); }
    return s;
  }

  function addPoint(arr, p) {
    var last = arr[arr.length - 1];
    if (!last || p.step > last.step) { arr.push(p); return; }
    for (var i = 0; i < arr.length; i++) {
      if (arr[i].step === p.step) { arr[i] = p; return; }
      if (arr[i].step > p.step) { arr.splice(i, 0, p); return; }
    }
  }

  function worker(e) {
    var name = e.source && e.source.worker;
    if (!name) return null;
    var w = S.workers.get(name);
    if (!w && e.kind.indexOf('activity.') !== 0) return null;
    if (!w) { w = { worker: name, state: 'idle', activity: '', detail: '', attempt: 1, since: e.time, lastSeen: e.time }; S.workers.set(name, w); }
    if (e.time > w.lastSeen) w.lastSeen = e.time;
    return w;
  }

  function setWorker(w, state, e) {
    if (!w) return;
    w.state = state; w.activity = e.activity; w.detail = e.detail || ''; w.attempt = e.attempt || 1; w.since = e.time;
  }

  function apply(e) {
    S.events++;
    var t = Date.parse(e.time);
    if (t > S.lastTime) S.lastTime = t;
    var w = worker(e);
    switch (e.kind) {
      case 'run.started':
        S.mode = e.mode; S.state = 'running'; S.startedAt = t; S.baselines = e.baselines || [];
        S.plan = { generations: e.generations, populationSize: e.populationSize, budget: e.budget, pretrainSteps: e.pretrainSteps, bin: e.bin };
        break;
      case 'generation.finished':
        if (e.generation + 1 > S.gensDone) S.gensDone = e.generation + 1;
        if (e.generations) S.plan.generations = e.generations;
        break;
      case 'candidate.evaluated': {
        var key = e.generation + ':' + e.candidate;
        var prev = S.candidates.get(key);
        if (prev && prev.fitness === null) S.failed--;
        if (e.fitness === null) S.failed++;
        var row = { generation: e.generation, candidate: e.candidate, params: e.params, fitness: e.fitness, error: e.error || '',
          worker: (e.source && e.source.worker) || '', durationMs: e.durationMs, time: e.time };
        S.candidates.set(key, row);
        if (e.fitness !== null && (!S.best || e.fitness < S.best.fitness)) S.best = row;
        if (S.state === 'waiting') S.state = 'running';
        break;
      }
      case 'pretrain.step': {
        var s = seriesOf(e.series);
        if (e.step > s.step) s.step = e.step;
        if (e.steps) s.steps = e.steps;
        if (e.tokensPerSecond !== undefined) s.tps = e.tokensPerSecond;
        if (e.tokens !== undefined) s.tokens = e.tokens;
        addPoint(s.train, { step: e.step, value: e.loss });
        break;
      }
      case 'pretrain.eval':
        addPoint(seriesOf(e.series).val, { step: e.step, value: e.valLoss });
        break;
      case 'checkpoint.saved': {
        var c = seriesOf(e.series);
        if (!c.ckpt || e.step >= c.ckpt.step) c.ckpt = { step: e.step, uri: e.uri };
        break;
      }
      case 'activity.started': setWorker(w, 'busy', e); break;
      case 'activity.retried':
        setWorker(w, 'busy', e);
        S.errors.push({ time: e.time, what: e.activity + ' retried (attempt ' + e.attempt + ')', worker: w ? w.worker : '', error: e.error || '' });
        break;
      case 'activity.completed': setWorker(w, 'idle', e); break;
      case 'activity.failed':
        setWorker(w, 'failed', e);
        S.errors.push({ time: e.time, what: e.activity + ' failed (attempt ' + e.attempt + ')', worker: w ? w.worker : '', error: e.error });
        break;
      case 'service.exited':
        S.errors.push({ time: e.time, what: e.service + ' exited (' + (e.signal || 'code ' + e.code) + ')' + (e.willRestart ? ', restarting' : ', not restarted'), worker: '', error: e.error || '' });
        break;
      case 'service.restarted':
        S.errors.push({ time: e.time, what: e.service + ' restarted (pid ' + e.pid + ', down ' + (e.downMs / 1000).toFixed(1) + ' s)', worker: '', error: '' });
        break;
      case 'run.finished':
        S.state = e.status; S.finishedAt = t; S.error = e.error || null;
        if (e.error) S.errors.push({ time: e.time, what: 'run ' + e.status, worker: '', error: e.error });
        break;
    }
    if (S.errors.length > 50) S.errors.splice(0, S.errors.length - 50);
  }

  // ---- formatting ----
  function human(n) {
    if (n === null || n === undefined || !isFinite(n)) return '-';
    var a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toPrecision(3) + 'B';
    if (a >= 1e6) return (n / 1e6).toPrecision(3) + 'M';
    if (a >= 1e3) return (n / 1e3).toPrecision(3) + 'k';
    return String(Math.round(n));
  }
  function loss(x) { return x === null || x === undefined || !isFinite(x) ? '-' : x.toFixed(4); }
  function dur(sec) {
    if (!isFinite(sec) || sec < 0) return '?';
    sec = Math.round(sec);
    var h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    if (h) return h + 'h' + (m < 10 ? '0' : '') + m + 'm';
    if (m) return m + 'm' + (s < 10 ? '0' : '') + s + 's';
    return s + 's';
  }
  function el(tag, attrs, text) {
    var n = document.createElement(tag);
    if (attrs) for (var k in attrs) n.setAttribute(k, attrs[k]);
    if (text !== undefined) n.textContent = text;
    return n;
  }
  // ---- charts (uPlot, loaded from vendor/uPlot.iife.min.js as the global uPlot) ----
  // One uPlot instance per chart, kept in window.offshootCharts for tests and scripts. A render gives
  // the chart new data with setData; the chart is rebuilt only when its series change (a new training
  // series, a new generation). A chart the user has zoomed (drag to zoom, double-click to reset) keeps
  // its scales through live updates.
  var charts = { loss: null, population: null };
  var chartKeys = { loss: '', population: '' };
  var zoomed = { loss: false, population: false };
  window.offshootCharts = charts;
  var CHART_HEIGHT = 340;
  var noPath = function () { return null; };

  /** A scale range around the data with 5% on either side; a non-negative quantity keeps a non-negative axis. */
  function padded(nonNegative) {
    return function (u, min, max) {
      if (min === null || max === null || !isFinite(min) || !isFinite(max)) return [0, 1];
      if (!(max > min)) { var d = Math.abs(min) * 0.05 || 1; min -= d; max += d; }
      var pad = (max - min) * 0.05;
      return [nonNegative && min >= 0 ? Math.max(0, min - pad) : min - pad, max + pad];
    };
  }

  function axis(label, fmt) {
    var a = { label: label, stroke: '#6b7385', grid: { stroke: '#eef0f5', width: 1 }, ticks: { stroke: '#d5d9e3', width: 1, size: 4 } };
    if (fmt) a.values = function (u, splits) { return splits.map(fmt); };
    return a;
  }

  function chartWidth(box) { return Math.max(240, box.clientWidth); }

  /** Shows a message instead of the chart (and drops the chart). */
  function clearChart(name, message) {
    var box = document.getElementById(name);
    if (charts[name]) { charts[name].destroy(); charts[name] = null; chartKeys[name] = ''; }
    box.textContent = '';
    box.appendChild(el('div', { class: 'empty' }, message));
  }

  /** Gives chart NAME its data: setData on the chart there is when KEY (its series) is unchanged, else a new chart from makeOpts(). */
  function plot(name, key, makeOpts, data) {
    // Without the library the rest of the page still works.
    if (typeof uPlot === 'undefined') { clearChart(name, 'charts unavailable: vendor/uPlot.iife.min.js did not load'); return null; }
    var u = charts[name];
    if (u && chartKeys[name] === key) {
      u.setData(data, !zoomed[name]);
      return u;
    }
    var box = document.getElementById(name);
    if (u) u.destroy();
    box.textContent = '';
    zoomed[name] = false;
    var opts = makeOpts();
    opts.width = chartWidth(box);
    opts.height = CHART_HEIGHT;
    opts.hooks = opts.hooks || {};
    opts.hooks.setSelect = [function (self) { if (self.select.width > 0) zoomed[name] = true; }];
    u = new uPlot(opts, data, box);
    u.over.addEventListener('dblclick', function () { zoomed[name] = false; });
    charts[name] = u;
    chartKeys[name] = key;
    return u;
  }

  if (window.ResizeObserver) {
    ['loss', 'population'].forEach(function (name) {
      var box = document.getElementById(name);
      new ResizeObserver(function () {
        var u = charts[name];
        if (u && u.width !== chartWidth(box)) u.setSize({ width: chartWidth(box), height: CHART_HEIGHT });
      }).observe(box);
    });
  }

  function thin(points, max) {
    if (points.length <= max) return points;
    var out = [], stride = points.length / max;
    for (var i = 0; i < max; i++) out.push(points[Math.floor(i * stride)]);
    out.push(points[points.length - 1]);
    return out;
  }

  function colorOf(name, i) { return name === 'student' ? PALETTE[0] : PALETTE[1 + (i % (PALETTE.length - 1))]; }
  function lossValue(u, v) { return loss(v); }

  function drawLoss() {
    var all = Array.from(S.series.values()).sort(function (a, b) { return a.name === 'student' ? -1 : b.name === 'student' ? 1 : a.name < b.name ? -1 : 1; });
    var curves = [];
    var latest = [];
    all.forEach(function (s, i) {
      var color = colorOf(s.name, i);
      if (s.train.length) curves.push({ name: s.name, kind: 'train', color: color, points: thin(s.train, 1200) });
      if (s.val.length) {
        curves.push({ name: s.name, kind: 'val', color: color, points: s.val });
        latest.push(s.name + ' ' + loss(s.val[s.val.length - 1].value));
      }
    });
    document.getElementById('loss-note').textContent =
      'thin: training objective (the distillation loss when distilling) · thick with dots: validation loss' +
      (latest.length ? ' · latest validation: ' + latest.join(', ') : '');
    if (!curves.length) { clearChart('loss', 'no pretraining yet'); return; }
    // Aligned data: one x (step) for all curves, null where a curve has no point (spanGaps joins across).
    var seen = new Set();
    curves.forEach(function (c) { c.points.forEach(function (p) { seen.add(p.step); }); });
    var steps = Array.from(seen).sort(function (a, b) { return a - b; });
    var at = new Map();
    steps.forEach(function (s, i) { at.set(s, i); });
    var data = [steps];
    curves.forEach(function (c) {
      var ys = new Array(steps.length).fill(null);
      c.points.forEach(function (p) { ys[at.get(p.step)] = p.value; });
      data.push(ys);
    });
    var key = curves.map(function (c) { return c.name + ':' + c.kind + ':' + c.color; }).join(',');
    plot('loss', key, function () {
      var series = [{ label: 'step' }];
      curves.forEach(function (c) {
        series.push(c.kind === 'train'
          ? { label: c.name + ' train', class: 'train', stroke: c.color, width: 1.2, alpha: 0.55, spanGaps: true, points: { show: false }, value: lossValue }
          : { label: c.name + ' val', class: 'val', stroke: c.color, width: 2.4, spanGaps: true, points: { show: true, size: 6, width: 1, stroke: c.color, fill: c.color }, value: lossValue });
      });
      return {
        class: 'loss-chart',
        series: series,
        scales: { x: { time: false, range: padded(true) }, y: { range: padded(false) } },
        axes: [axis('step', human), axis('loss', null)],
        legend: { live: true }
      };
    }, data);
  }

  function genColor(g, maxGen) {
    var t = maxGen > 0 ? g / maxGen : 1;
    // light to dark blue: later generations darker
    var a = [198, 219, 239], b = [8, 48, 107];
    return 'rgb(' + [0, 1, 2].map(function (i) { return Math.round(a[i] + (b[i] - a[i]) * t); }).join(',') + ')';
  }

  function front(rows) {
    var ok = rows.filter(function (r) { return r.fitness !== null; }).sort(function (a, b) { return a.params - b.params || a.fitness - b.fitness; });
    var out = [];
    ok.forEach(function (r) { if (!out.length || r.fitness < out[out.length - 1].fitness) out.push(r); });
    return out;
  }

  /** Points the population chart holds: the non-null values of its generation series, read from the uPlot instance's data. */
  function populationPoints(u) {
    var n = 0;
    for (var i = 1; i < u.series.length; i++) {
      if (u.series[i].class !== 'generation') continue;
      var ys = u.data[i];
      for (var j = 0; j < ys.length; j++) if (ys[j] !== null && ys[j] !== undefined) n++;
    }
    return n;
  }

  // The candidates in the population chart's x order, for its tooltip.
  var popRows = [];

  /** Tooltip of the population chart: the candidate nearest the cursor (within 20 px). */
  function populationTip(u) {
    var tip = u.over.querySelector('.tip');
    if (!tip) { tip = el('div', { class: 'tip' }); tip.hidden = true; u.over.appendChild(tip); }
    var left = u.cursor.left, top = u.cursor.top, near = null, dist = 400;
    if (left !== undefined && left >= 0) {
      popRows.forEach(function (r) {
        var dx = u.valToPos(r.params, 'x') - left, dy = u.valToPos(r.fitness, 'y') - top, d = dx * dx + dy * dy;
        if (d < dist) { dist = d; near = r; }
      });
    }
    if (!near) { tip.hidden = true; return; }
    tip.textContent = '#' + near.candidate + ' · generation ' + near.generation + ' · fitness ' + loss(near.fitness) + ' · ' + human(near.params) + ' parameters' + (S.best && near.generation === S.best.generation && near.candidate === S.best.candidate ? ' · best' : '');
    tip.hidden = false;
    tip.style.left = Math.max(0, Math.min(left + 12, u.over.clientWidth - tip.offsetWidth)) + 'px';
    tip.style.top = Math.max(0, top - tip.offsetHeight - 8) + 'px';
  }

  function drawPopulation() {
    var box = document.getElementById('population');
    var ok = Array.from(S.candidates.values()).filter(function (r) { return r.fitness !== null; });
    document.getElementById('population-note').textContent =
      ok.length + ' evaluated' + (S.failed ? ', ' + S.failed + ' failed (not shown)' : '') + ' · colour: generation (darker is later) · line: Pareto front · ring: best';
    if (!ok.length) { popRows = []; clearChart('population', 'no candidates evaluated yet'); box.dataset.points = '0'; return; }
    // Aligned data: x is the candidates' parameter counts in ascending order (one index per candidate);
    // each generation is a points-only series holding its candidates' fitness and null elsewhere.
    ok.sort(function (a, b) { return a.params - b.params || a.fitness - b.fitness; });
    popRows = ok;
    var gens = Array.from(new Set(ok.map(function (r) { return r.generation; }))).sort(function (a, b) { return a - b; });
    var maxGen = gens[gens.length - 1];
    var onFront = new Set(front(ok));
    var best = S.best;
    var isBest = function (r) { return best !== null && r.generation === best.generation && r.candidate === best.candidate; };
    var data = [ok.map(function (r) { return r.params; })];
    gens.forEach(function (g) { data.push(ok.map(function (r) { return r.generation === g ? r.fitness : null; })); });
    data.push(ok.map(function (r) { return onFront.has(r) ? r.fitness : null; }));
    data.push(ok.map(function (r) { return isBest(r) ? r.fitness : null; }));
    var u = plot('population', gens.join(','), function () {
      var series = [{ label: 'parameters' }];
      gens.forEach(function (g) {
        var c = genColor(g, maxGen);
        series.push({ label: 'generation ' + g, class: 'generation', stroke: c, paths: noPath, points: { show: true, size: 9, width: 1, stroke: '#fff', fill: c } });
      });
      series.push({ label: 'Pareto front', class: 'front', stroke: '#ff7f0e', width: 2, spanGaps: true, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } });
      series.push({ label: 'best', class: 'best', stroke: '#d62728', paths: noPath, points: { show: true, size: 18, width: 2, stroke: '#d62728', fill: 'rgba(0,0,0,0)' } });
      return {
        class: 'population-chart',
        series: series,
        scales: { x: { time: false, range: padded(true) }, y: { range: padded(false) } },
        axes: [axis('parameters', human), axis('fitness (validation loss)', null)],
        legend: { show: false },
        cursor: { points: { show: false } },
        hooks: { setCursor: [populationTip] }
      };
    }, data);
    box.dataset.points = u ? String(populationPoints(u)) : '0';
  }

  function fillTable(id, rows, cells) {
    var body = document.querySelector('#' + id + ' tbody');
    body.textContent = '';
    rows.forEach(function (r) {
      var tr = el('tr');
      cells(r).forEach(function (c) {
        var td = el('td', c.cls ? { class: c.cls } : null, c.text);
        if (c.title) td.title = c.title;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function drawCandidates() {
    var rows = Array.from(S.candidates.values()).sort(function (a, b) {
      if (a.fitness === null) return b.fitness === null ? 0 : 1;
      if (b.fitness === null) return -1;
      return a.fitness - b.fitness;
    });
    var shown = rows.slice(0, 200);
    document.getElementById('candidates-note').textContent = rows.length > shown.length ? 'best ' + shown.length + ' of ' + rows.length : rows.length + ' candidates';
    fillTable('candidates', shown, function (r) {
      return [
        { text: '#' + r.candidate }, { text: String(r.generation), cls: 'num' }, { text: human(r.params), cls: 'num' },
        r.fitness === null ? { text: 'failed', cls: 'bad', title: r.error } : { text: loss(r.fitness), cls: 'num' },
        { text: r.worker }, { text: r.durationMs !== undefined ? dur(r.durationMs / 1000) : '', cls: 'num' }
      ];
    });
  }

  function drawWorkers() {
    var now = Date.now();
    var rows = Array.from(S.workers.values()).sort(function (a, b) { return a.worker < b.worker ? -1 : 1; });
    fillTable('workers', rows, function (w) {
      return [
        { text: w.worker }, { text: w.state, cls: 'state-' + w.state },
        { text: (w.activity || '') + (w.detail ? ' · ' + w.detail : '') + (w.attempt > 1 ? ' (attempt ' + w.attempt + ')' : '') },
        { text: dur((now - Date.parse(w.since)) / 1000), cls: 'num' }, { text: dur((now - Date.parse(w.lastSeen)) / 1000) + ' ago', cls: 'num' }
      ];
    });
    var list = document.getElementById('errors');
    list.textContent = '';
    S.errors.slice(-8).reverse().forEach(function (e) {
      var li = el('li');
      li.appendChild(el('span', { class: 'time' }, e.time.slice(11, 19)));
      li.appendChild(document.createTextNode(' ' + e.what + (e.worker ? ' on ' + e.worker : '') + (e.error ? ': ' + e.error : '')));
      list.appendChild(li);
    });
    document.getElementById('errors-none').hidden = S.errors.length > 0;
  }

  function setBar(id, done, total, text) {
    var b = document.getElementById(id);
    b.hidden = false;
    b.querySelector('.fill').style.width = (total ? Math.min(100, 100 * done / total) : 0) + '%';
    b.querySelector('.text').textContent = text;
  }

  function etaText(done, total, from, to) {
    if (S.state !== 'running' || !total || !from || !to || done <= 0 || done >= total || to <= from) return '';
    var rem = (total - done) * (to - from) / done - Math.max(0, Date.now() - to);
    return ' · ETA ' + dur(Math.max(0, rem) / 1000);
  }

  function drawHeader() {
    var st = document.getElementById('state');
    st.textContent = S.state;
    st.className = 'pill ' + S.state;
    var bits = [];
    if (S.mode) bits.push(S.mode);
    if (S.startedAt) bits.push((S.finishedAt ? 'took ' : 'running for ') + dur(((S.finishedAt || Date.now()) - S.startedAt) / 1000));
    bits.push(S.events + ' events');
    if (S.best) bits.push('best ' + loss(S.best.fitness) + ' (#' + S.best.candidate + ', ' + human(S.best.params) + ')');
    if (S.error) bits.push(S.error);
    document.getElementById('summary').textContent = bits.join(' · ');
    var evals = S.candidates.size;
    var total = S.plan.budget || (S.plan.generations && S.plan.populationSize ? S.plan.generations * S.plan.populationSize : 0);
    var lastEval = 0;
    S.candidates.forEach(function (r) { var t = Date.parse(r.time); if (t > lastEval) lastEval = t; });
    if (S.plan.generations || evals) {
      setBar('bar-gen', S.gensDone, S.plan.generations, 'generations ' + S.gensDone + (S.plan.generations ? '/' + S.plan.generations : ''));
      setBar('bar-eval', evals, total, 'evaluations ' + evals + (total ? '/' + total : '') + etaText(evals, total, S.startedAt, lastEval));
    }
    var student = S.series.get('student');
    var steps = (student && student.steps) || S.plan.pretrainSteps;
    if (student || S.plan.pretrainSteps) {
      var step = student ? student.step : 0;
      var tps = student && student.tps !== null ? ' · ' + human(student.tps) + ' tokens/s' : '';
      setBar('bar-pre', step, steps, 'pretraining ' + step + (steps ? '/' + steps : '') + tps);
    }
  }

  function render() {
    renderTimer = null;
    if (!S) return;
    drawHeader();
    drawLoss();
    drawPopulation();
    drawCandidates();
    drawWorkers();
    document.body.dataset.events = String(S.events);
    document.body.dataset.caughtup = String(S.caughtUp);
  }

  function schedule() {
    // While replaying history, draw once at the end; afterwards at most every 150 ms.
    if (!S.caughtUp || renderTimer) return;
    renderTimer = setTimeout(render, 150);
  }

  function setConn(text, cls) {
    var c = document.getElementById('conn');
    c.textContent = text;
    c.className = 'conn ' + cls;
  }

  function connect() {
    reset();
    document.getElementById('run-name').textContent = run;
    document.title = 'offshoot · ' + run;
    es = new EventSource('api/events?run=' + encodeURIComponent(run));
    es.addEventListener('progress', function (m) { apply(JSON.parse(m.data)); schedule(); });
    es.addEventListener('caughtup', function () { S.caughtUp = true; render(); });
    es.addEventListener('open', function () { setConn('live', 'ok'); });
    es.addEventListener('error', function () { setConn(es.readyState === 2 ? 'disconnected' : 'reconnecting…', 'bad'); });
  }

  function loadRuns(first) {
    fetch('api/runs').then(function (r) { return r.json(); }).then(function (runs) {
      var sel = document.getElementById('runs');
      var current = run;
      sel.textContent = '';
      runs.forEach(function (r) {
        var o = el('option', { value: r.run }, r.run + ' (' + r.state + ')');
        if (r.run === current) o.selected = true;
        sel.appendChild(o);
      });
      if (first && !run) {
        if (runs.length) { run = runs[0].run; history.replaceState(null, '', '?run=' + encodeURIComponent(run)); connect(); loadRuns(false); }
        else document.getElementById('run-name').textContent = 'no runs yet';
      }
    }).catch(function () { /* the next poll tries again */ });
  }

  document.getElementById('runs').addEventListener('change', function (ev) {
    location.search = '?run=' + encodeURIComponent(ev.target.value);
  });
  if (run) connect();
  loadRuns(true);
  setInterval(function () { loadRuns(false); }, 5000);
  setInterval(function () { if (S && S.caughtUp) { drawHeader(); drawWorkers(); } }, 1000);
})();
`;

const STYLE = `
:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ee; --bg: #f6f7fb; --card: #fff; --accent: #1f77b4; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: center; gap: 14px; padding: 10px 18px; background: var(--card); border-bottom: 1px solid var(--line); flex-wrap: wrap; }
header h1 { font-size: 17px; margin: 0; }
header h1 .brand { color: var(--accent); }
#summary { color: var(--muted); }
.pill { padding: 2px 9px; border-radius: 10px; font-size: 12px; font-weight: 600; background: #eee; }
.pill.running { background: #e1efff; color: #0b5cad; } .pill.completed { background: #e2f5e6; color: #1d7a34; }
.pill.failed, .pill.cancelled { background: #fde6e6; color: #b42318; }
.conn { margin-left: auto; font-size: 12px; } .conn.ok { color: #1d7a34; } .conn.bad { color: #b42318; }
select { font: inherit; padding: 2px 4px; }
.bars { display: flex; gap: 14px; padding: 10px 18px 0; flex-wrap: wrap; }
.bar { position: relative; flex: 1 1 260px; height: 24px; background: #e8ebf2; border-radius: 6px; overflow: hidden; }
.bar .fill { position: absolute; inset: 0 auto 0 0; background: #9cc3e6; transition: width .3s; }
.bar .text { position: relative; padding: 0 10px; line-height: 24px; font-size: 12.5px; white-space: nowrap; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px; padding: 14px 18px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; min-width: 0; }
section h2 { font-size: 14px; margin: 0 0 6px; display: flex; gap: 10px; align-items: baseline; }
section h2 small { font-weight: normal; color: var(--muted); font-size: 12px; }
.chart { position: relative; min-height: 340px; }
.chart .empty { display: flex; align-items: center; justify-content: center; height: 340px; color: var(--muted); font-size: 14px; }
.chart .uplot { font-family: inherit; } .chart .u-legend { font-size: 12px; }
.chart .tip { position: absolute; z-index: 10; pointer-events: none; white-space: nowrap; font-size: 12px; padding: 3px 7px;
  background: rgba(29, 35, 48, .9); color: #fff; border-radius: 4px; }
.legend-note { color: var(--muted); font-size: 12px; margin-top: 4px; }
.scroll { max-height: 340px; overflow: auto; }
table { width: 100%; border-collapse: collapse; font-size: 12.5px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { position: sticky; top: 0; background: var(--card); color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.bad { color: #b42318; }
td.state-busy { color: #0b5cad; } td.state-failed { color: #b42318; } td.state-idle { color: var(--muted); }
ul#errors { margin: 6px 0 0; padding-left: 18px; font-size: 12.5px; } ul#errors .time { color: var(--muted); font-variant-numeric: tabular-nums; }
`;

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>offshoot dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="vendor/uPlot.min.css">
<style>${STYLE}</style>
</head>
<body data-events="0" data-caughtup="false">
<header>
  <h1><span class="brand">offshoot</span> · <span id="run-name">…</span></h1>
  <span id="state" class="pill">waiting</span>
  <span id="summary"></span>
  <label>run <select id="runs"></select></label>
  <span id="conn" class="conn">connecting…</span>
</header>
<div class="bars">
  <div class="bar" id="bar-gen" hidden><div class="fill"></div><div class="text"></div></div>
  <div class="bar" id="bar-eval" hidden><div class="fill"></div><div class="text"></div></div>
  <div class="bar" id="bar-pre" hidden><div class="fill"></div><div class="text"></div></div>
</div>
<main>
  <section>
    <h2>Loss <small>student against baselines</small></h2>
    <div id="loss" class="chart" role="img" aria-label="training and validation loss"></div>
    <div id="loss-note" class="legend-note"></div>
  </section>
  <section>
    <h2>Population <small id="population-note"></small></h2>
    <div id="population" class="chart" data-points="0" role="img" aria-label="parameters against fitness"></div>
  </section>
  <section>
    <h2>Candidates <small id="candidates-note"></small></h2>
    <div class="scroll"><table id="candidates"><thead><tr><th>id</th><th>gen</th><th>params</th><th>fitness</th><th>worker</th><th>took</th></tr></thead><tbody></tbody></table></div>
  </section>
  <section>
    <h2>Workers <small>current activity</small></h2>
    <div class="scroll"><table id="workers"><thead><tr><th>worker</th><th>state</th><th>activity</th><th>for</th><th>last seen</th></tr></thead><tbody></tbody></table></div>
    <h2 style="margin-top:10px">Last errors</h2>
    <div id="errors-none" style="color:var(--muted);font-size:12.5px">none</div>
    <ul id="errors"></ul>
  </section>
</main>
<script src="vendor/uPlot.iife.min.js"></script>
<script>${SCRIPT}</script>
</body>
</html>
`;
