/**
 * The dashboard's single page: HTML, CSS and a small script. Charts are plain SVG drawn by the script
 * (no charting library is a dependency of offshoot). Data comes over server-sent events from
 * /api/events?run=RUN (every event of the run, history first; the browser reconnects with Last-Event-ID
 * and the server resumes after it), the run list from /api/runs.
 *
 * Hooks for tests and scripts: body[data-events] (events applied), body[data-caughtup], one
 * `svg#population circle.point` per successfully evaluated candidate, `path.front` for the Pareto front,
 * `#loss path.train` / `path.val` per series, `#candidates tbody tr`, `#workers tbody tr`.
 */

/** Files the page loads, served by the dashboard from node_modules: URL path (relative to the page) → module path and type. */
export const VENDOR_ASSETS: Record<string, { module: string; type: string }> = {
  'vendor/uPlot.iife.min.js': { module: 'uplot/dist/uPlot.iife.min.js', type: 'text/javascript; charset=utf-8' },
  'vendor/uPlot.min.css': { module: 'uplot/dist/uPlot.min.css', type: 'text/css; charset=utf-8' },
};

// The script is kept free of backticks and dollar-brace so it can live in this template literal.
const SCRIPT = String.raw`
(function () {
  'use strict';
  var SVGNS = 'http://www.w3.org/2000/svg';
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
  function svg(tag, attrs, parent) {
    var n = document.createElementNS(SVGNS, tag);
    for (var k in attrs) n.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(n);
    return n;
  }

  // ---- charts (plain SVG) ----
  /** Round ticks covering [lo, hi], the domain widened to the outer ticks; digits: decimals the labels need. */
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { var d = Math.abs(lo) * 0.05 || 1; lo -= d; hi += d; }
    var pad = (hi - lo) * 0.03;
    // Non-negative data (steps, parameters) keeps a non-negative axis.
    lo = lo >= 0 ? Math.max(0, lo - pad) : lo - pad; hi += pad;
    var raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
    var step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
    var first = Math.floor(lo / step), last = Math.ceil(hi / step), out = [];
    for (var k = first; k <= last; k++) out.push(k * step);
    return { lo: first * step, hi: last * step, ticks: out, digits: Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) };
  }

  /** Axes in a 640x340 viewBox; returns scales and the plot group. */
  function frame(root, xr, yr, xlabel, ylabel, xfmt, yfmt) {
    while (root.firstChild) root.removeChild(root.firstChild);
    var W = 640, H = 340, L = 62, R = 16, T = 14, B = 44;
    var xt = ticks(xr[0], xr[1], 6), yt = ticks(yr[0], yr[1], 5);
    var sx = function (v) { return L + (v - xt.lo) / (xt.hi - xt.lo) * (W - L - R); };
    var sy = function (v) { return H - B - (v - yt.lo) / (yt.hi - yt.lo) * (H - T - B); };
    var g = svg('g', { class: 'axes' }, root);
    xt.ticks.forEach(function (v) {
      svg('line', { x1: sx(v), x2: sx(v), y1: T, y2: H - B, class: 'grid' }, g);
      svg('text', { x: sx(v), y: H - B + 16, 'text-anchor': 'middle' }, g).textContent = xfmt(v);
    });
    yt.ticks.forEach(function (v) {
      svg('line', { x1: L, x2: W - R, y1: sy(v), y2: sy(v), class: 'grid' }, g);
      svg('text', { x: L - 6, y: sy(v) + 4, 'text-anchor': 'end' }, g).textContent = yfmt ? yfmt(v) : v.toFixed(yt.digits);
    });
    svg('rect', { x: L, y: T, width: W - L - R, height: H - T - B, class: 'plotarea' }, g);
    svg('text', { x: (L + W - R) / 2, y: H - 8, 'text-anchor': 'middle', class: 'label' }, g).textContent = xlabel;
    svg('text', { x: 14, y: (T + H - B) / 2, 'text-anchor': 'middle', class: 'label', transform: 'rotate(-90 14 ' + ((T + H - B) / 2) + ')' }, g).textContent = ylabel;
    return { sx: sx, sy: sy, plot: svg('g', { class: 'plot' }, root) };
  }

  function empty(root, message) {
    while (root.firstChild) root.removeChild(root.firstChild);
    svg('text', { x: 320, y: 170, 'text-anchor': 'middle', class: 'empty' }, root).textContent = message;
  }

  function pathOf(points, f) {
    var d = '';
    for (var i = 0; i < points.length; i++) d += (i ? 'L' : 'M') + f.sx(points[i].step).toFixed(1) + ',' + f.sy(points[i].value).toFixed(1);
    return d;
  }

  function thin(points, max) {
    if (points.length <= max) return points;
    var out = [], stride = points.length / max;
    for (var i = 0; i < max; i++) out.push(points[Math.floor(i * stride)]);
    out.push(points[points.length - 1]);
    return out;
  }

  function colorOf(name, i) { return name === 'student' ? PALETTE[0] : PALETTE[1 + (i % (PALETTE.length - 1))]; }

  function drawLoss() {
    var root = document.getElementById('loss');
    var legend = document.getElementById('loss-legend');
    legend.textContent = '';
    var all = Array.from(S.series.values()).sort(function (a, b) { return a.name === 'student' ? -1 : b.name === 'student' ? 1 : a.name < b.name ? -1 : 1; });
    var xs = [], ys = [];
    all.forEach(function (s) { s.train.concat(s.val).forEach(function (p) { xs.push(p.step); ys.push(p.value); }); });
    if (!xs.length) { empty(root, 'no pretraining yet'); return; }
    var f = frame(root, [Math.min.apply(null, xs), Math.max.apply(null, xs)], [Math.min.apply(null, ys), Math.max.apply(null, ys)], 'step', 'loss', human, null);
    all.forEach(function (s, i) {
      var color = colorOf(s.name, i);
      if (s.train.length) svg('path', { d: pathOf(thin(s.train, 1200), f), class: 'train', stroke: color, 'data-series': s.name }, f.plot);
      if (s.val.length) {
        svg('path', { d: pathOf(s.val, f), class: 'val', stroke: color, 'data-series': s.name }, f.plot);
        s.val.forEach(function (p) {
          var c = svg('circle', { cx: f.sx(p.step), cy: f.sy(p.value), r: 3, fill: color, class: 'valpoint' }, f.plot);
          svg('title', {}, c).textContent = s.name + ' step ' + p.step + ': val loss ' + loss(p.value);
        });
      }
      var item = el('span', { class: 'legend-item' });
      var sw = el('span', { class: 'swatch' }); sw.style.background = color;
      item.appendChild(sw);
      var lastVal = s.val[s.val.length - 1];
      item.appendChild(document.createTextNode(s.name + (lastVal ? ' (val ' + loss(lastVal.value) + ')' : '')));
      legend.appendChild(item);
    });
    var note = el('span', { class: 'legend-note' }, 'thin: training objective (the distillation loss when distilling) · thick with dots: validation loss');
    legend.appendChild(note);
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

  function drawPopulation() {
    var root = document.getElementById('population');
    var rows = Array.from(S.candidates.values());
    var ok = rows.filter(function (r) { return r.fitness !== null; });
    document.getElementById('population-note').textContent =
      ok.length + ' evaluated' + (S.failed ? ', ' + S.failed + ' failed (not shown)' : '') + ' · colour: generation (darker is later) · line: Pareto front';
    if (!ok.length) { empty(root, 'no candidates evaluated yet'); return; }
    var px = ok.map(function (r) { return r.params; }), fy = ok.map(function (r) { return r.fitness; });
    var f = frame(root, [Math.min.apply(null, px), Math.max.apply(null, px)], [Math.min.apply(null, fy), Math.max.apply(null, fy)], 'parameters', 'fitness (validation loss)', human, null);
    var maxGen = Math.max.apply(null, ok.map(function (r) { return r.generation; }));
    ok.forEach(function (r) {
      var c = svg('circle', { cx: f.sx(r.params).toFixed(1), cy: f.sy(r.fitness).toFixed(1), r: 4.5, fill: genColor(r.generation, maxGen), class: 'point', 'data-candidate': r.candidate }, f.plot);
      svg('title', {}, c).textContent = '#' + r.candidate + ' (generation ' + r.generation + '): fitness ' + loss(r.fitness) + ', ' + human(r.params) + ' parameters';
    });
    var fr = front(ok);
    var d = '';
    fr.forEach(function (r, i) {
      var x = f.sx(r.params), y = f.sy(r.fitness);
      if (i === 0) d += 'M' + x + ',' + y;
      else d += 'H' + x + 'V' + y;
    });
    svg('path', { d: d, class: 'front' }, f.plot);
    if (S.best) svg('circle', { cx: f.sx(S.best.params), cy: f.sy(S.best.fitness), r: 8, class: 'best' }, f.plot);
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
svg.chart { width: 100%; height: auto; display: block; }
svg .grid { stroke: #eef0f5; } svg .plotarea { fill: none; stroke: #d5d9e3; }
svg text { font-size: 11px; fill: var(--muted); } svg text.label { font-size: 12px; fill: var(--fg); } svg text.empty { font-size: 14px; }
svg path.train { fill: none; stroke-width: 1.2; opacity: .55; } svg path.val { fill: none; stroke-width: 2.4; }
svg circle.point { stroke: #fff; stroke-width: .8; } svg path.front { fill: none; stroke: #ff7f0e; stroke-width: 2; }
svg circle.best { fill: none; stroke: #d62728; stroke-width: 2; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; font-size: 12px; margin-top: 4px; }
.swatch { display: inline-block; width: 12px; height: 4px; margin-right: 5px; vertical-align: middle; }
.legend-note { color: var(--muted); margin-left: auto; }
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
    <svg id="loss" class="chart" viewBox="0 0 640 340" role="img" aria-label="training and validation loss"></svg>
    <div id="loss-legend" class="legend"></div>
  </section>
  <section>
    <h2>Population <small id="population-note"></small></h2>
    <svg id="population" class="chart" viewBox="0 0 640 340" role="img" aria-label="parameters against fitness"></svg>
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
<script>${SCRIPT}</script>
</body>
</html>
`;
