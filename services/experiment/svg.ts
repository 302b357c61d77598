/**
 * Plain SVG line charts (no dependency): linear x axis, logarithmic or linear y axis, one line per
 * series with an optional shaded band (e.g. min–max over seeds), a dashed reference line and a legend.
 */

export interface ChartSeries {
  label: string;
  color: string;
  /** SVG stroke-dasharray, e.g. "6 4"; empty: solid. */
  dash?: string;
  points: { x: number; y: number }[];
  band?: { x: number; lo: number; hi: number }[];
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: ChartSeries[];
  logY?: boolean;
  /** Horizontal reference line. */
  hline?: { y: number; label: string };
  width?: number;
  height?: number;
  formatX?: (x: number) => string;
}

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Round tick values covering [lo, hi] (about `count` of them). */
export function linearTicks(lo: number, hi: number, count = 6): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

/** 1-2-5 ticks of a log axis covering [lo, hi]. */
export function logTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
  }
  if (out.length < 3) {
    // A narrow range: add intermediate ticks.
    const more: number[] = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
      for (const m of [1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9]) more.push(m * 10 ** e);
    return more.filter((v) => v >= lo * 0.999 && v <= hi * 1.001);
  }
  return out;
}

/** 12000 -> "12k", 1.5e6 -> "1.5M", 3.2e11 -> "3.2e11". */
export function shortNumber(x: number): string {
  const a = Math.abs(x);
  // Three significant digits, without trailing zeros after the decimal point (120 stays 120).
  const trim = (v: number) =>
    Number.isInteger(v)
      ? String(v)
      : v
          .toPrecision(3)
          .replace(/(\.\d*?)0+$/, '$1')
          .replace(/\.$/, '');
  if (a === 0) return '0';
  if (a >= 1e9) {
    const e = Math.floor(Math.log10(a));
    return `${trim(x / 10 ** e)}e${e}`;
  }
  if (a >= 1e6) return `${trim(x / 1e6)}M`;
  if (a >= 1e3) return `${trim(x / 1e3)}k`;
  return trim(x);
}

export function lineChart(o: ChartOptions): string {
  const W = o.width ?? 760;
  const H = o.height ?? 460;
  const m = { left: 70, right: 20, top: 40, bottom: 52 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const xs = o.series.flatMap((s) => s.points.map((p) => p.x));
  const ys = o.series
    .flatMap((s) => [...s.points.map((p) => p.y), ...(s.band ?? []).flatMap((b) => [b.lo, b.hi])])
    .filter((y) => Number.isFinite(y) && (!o.logY || y > 0));
  if (o.hline) ys.push(o.hline.y);
  const xMin = Math.min(0, ...xs);
  const xMax = Math.max(...xs, xMin + 1);
  let yMin = Math.min(...ys);
  let yMax = Math.max(...ys);
  if (o.logY) {
    yMin /= 1.08;
    yMax *= 1.08;
  } else {
    const pad = (yMax - yMin) * 0.05 || 1;
    yMin -= pad;
    yMax += pad;
  }
  const fy = (y: number) =>
    o.logY ? (Math.log(y) - Math.log(yMin)) / (Math.log(yMax) - Math.log(yMin)) : (y - yMin) / (yMax - yMin);
  const px = (x: number) => m.left + ((x - xMin) / (xMax - xMin)) * pw;
  const py = (y: number) => m.top + (1 - fy(y)) * ph;
  const f = (v: number) => v.toFixed(1);
  const fmtX = o.formatX ?? shortNumber;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
  );
  parts.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="white"/>`);
  parts.push(
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(o.title)}</text>`,
  );
  // Grid and ticks.
  for (const t of linearTicks(xMin, xMax)) {
    const x = px(t);
    parts.push(`<line x1="${f(x)}" y1="${m.top}" x2="${f(x)}" y2="${m.top + ph}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${f(x)}" y="${m.top + ph + 16}" text-anchor="middle">${escapeXml(fmtX(t))}</text>`);
  }
  const yTicks = o.logY ? logTicks(yMin, yMax) : linearTicks(yMin, yMax);
  for (const t of yTicks) {
    const y = py(t);
    parts.push(`<line x1="${m.left}" y1="${f(y)}" x2="${m.left + pw}" y2="${f(y)}" stroke="#e5e5e5"/>`);
    parts.push(`<text x="${m.left - 6}" y="${f(y + 4)}" text-anchor="end">${escapeXml(shortNumber(t))}</text>`);
  }
  parts.push(`<rect x="${m.left}" y="${m.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
  parts.push(`<text x="${m.left + pw / 2}" y="${H - 12}" text-anchor="middle">${escapeXml(o.xLabel)}</text>`);
  parts.push(
    `<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${escapeXml(o.yLabel)}</text>`,
  );
  // Bands, then lines.
  for (const s of o.series) {
    if (!s.band?.length) continue;
    const upper = s.band.map((b) => `${f(px(b.x))},${f(py(b.hi))}`);
    const lower = [...s.band].reverse().map((b) => `${f(px(b.x))},${f(py(b.lo))}`);
    parts.push(
      `<polygon points="${[...upper, ...lower].join(' ')}" fill="${s.color}" fill-opacity="0.12" stroke="none"/>`,
    );
  }
  if (o.hline) {
    const y = py(o.hline.y);
    parts.push(
      `<line x1="${m.left}" y1="${f(y)}" x2="${m.left + pw}" y2="${f(y)}" stroke="#444" stroke-dasharray="2 3"/>`,
    );
    parts.push(
      `<text x="${m.left + pw / 2}" y="${f(y + 15)}" text-anchor="middle" fill="#444">${escapeXml(o.hline.label)}</text>`,
    );
  }
  for (const s of o.series) {
    if (!s.points.length) continue;
    const pts = s.points.map((p) => `${f(px(p.x))},${f(py(p.y))}`).join(' ');
    parts.push(
      `<polyline class="series" data-label="${escapeXml(s.label)}" points="${pts}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`,
    );
  }
  // Legend (top right, inside the plot).
  const lw = 300;
  const lx = m.left + pw - lw - 8;
  const ly = m.top + 8;
  parts.push(
    `<rect x="${lx}" y="${ly}" width="${lw}" height="${o.series.length * 18 + 8}" fill="white" fill-opacity="0.85" stroke="#ccc"/>`,
  );
  o.series.forEach((s, i) => {
    const y = ly + 16 + i * 18;
    parts.push(
      `<line x1="${lx + 8}" y1="${y - 4}" x2="${lx + 38}" y2="${y - 4}" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`,
    );
    parts.push(`<text x="${lx + 46}" y="${y}">${escapeXml(s.label)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
