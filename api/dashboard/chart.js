// An inline SVG chart drawn with DOM APIs: bars for all events per bucket, a line for
// errors. Labels are text nodes.
const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function label(iso, interval) {
  const d = new Date(iso);
  if (interval === '1d') return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  return d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

export function drawChart(container, series, interval) {
  const W = 800, H = 240, L = 44, R = 8, T = 10, B = 28;
  const totals = series.map((b) => b.event + b.error + b.metric);
  const max = Math.max(1, ...totals);
  const n = Math.max(1, series.length);
  const bw = (W - L - R) / n;
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': 'chart-title' });
  const sumAll = totals.reduce((a, b) => a + b, 0);
  const sumErr = series.reduce((a, b) => a + b.error, 0);
  svg.append(el('title', { id: 'chart-title' }, `${sumAll} events, ${sumErr} errors over ${series.length} buckets`));
  svg.append(el('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
  svg.append(el('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  for (const v of [0, Math.round(max / 2), max]) {
    svg.append(el('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end' }, String(v)));
  }
  const bars = el('g', { class: 'bars' });
  series.forEach((b, i) => {
    const t = totals[i];
    if (t > 0) {
      const r = el('rect', { class: 'bar-event', x: L + i * bw + bw * 0.1, y: y(t), width: Math.max(1, bw * 0.8), height: H - B - y(t) });
      r.append(el('title', {}, `${label(b.bucket, interval)}: ${t} events, ${b.error} errors`));
      bars.append(r);
    }
  });
  svg.append(bars);
  const pts = series.map((b, i) => `${(L + i * bw + bw / 2).toFixed(1)},${y(b.error).toFixed(1)}`).join(' ');
  if (series.length) svg.append(el('polyline', { class: 'line-error', points: pts }));
  const step = Math.max(1, Math.ceil(n / 6));
  for (let i = 0; i < series.length; i += step) {
    svg.append(el('text', { x: L + i * bw + bw / 2, y: H - 8, 'text-anchor': 'middle' }, label(series[i].bucket, interval)));
  }
  container.replaceChildren(svg);
  return { total: sumAll, errors: sumErr };
}
