// Queue health (DescribeQueueHealth): depth, the oldest queued task, and per minute
// the tasks submitted and finished and the failure rate, as small inline SVG charts.
// Refreshed every 10 s while shown.

import { call } from './api.js';
import { h, fill, errorBox, header, select } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const REFRESH_MS = 10_000;

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

/**
 * A bar chart of `series` ([{name, cls, values}], stacked) over the minutes' `labels`.
 */
function barChart(title, labels, series) {
  const width = 320;
  const height = 120;
  const pad = 18;
  const totals = labels.map((_, i) => series.reduce((sum, x) => sum + x.values[i], 0));
  const max = Math.max(1, ...totals);
  const step = (width - pad) / labels.length;
  const bars = [];
  labels.forEach((label, i) => {
    let y = height - pad;
    for (const x of series) {
      const value = x.values[i];
      if (!value) continue;
      const barHeight = (value / max) * (height - 2 * pad);
      y -= barHeight;
      bars.push(s('rect', { x: pad + i * step + 1, y, width: Math.max(1, step - 2), height: barHeight, class: x.cls },
        s('title', {}, `${label}: ${value} ${x.name}`)));
    }
  });
  const summary = series.map((x) => `${x.values.reduce((a, b) => a + b, 0)} ${x.name}`).join(', ');
  return h('figure', { class: 'chart' },
    s('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `${title}: ${summary}` },
      s('line', { x1: pad, y1: height - pad, x2: width, y2: height - pad, class: 'axis' }),
      s('text', { x: 0, y: pad, class: 'tick' }, String(max)),
      s('text', { x: pad, y: height - 4, class: 'tick' }, labels[0].slice(11, 16)),
      s('text', { x: width, y: height - 4, class: 'tick end' }, labels[labels.length - 1].slice(11, 16)),
      ...bars),
    h('figcaption', {}, h('strong', {}, title), ' ', summary,
      h('span', { class: 'legend' }, series.map((x) => h('span', { class: `key ${x.cls}` }, x.name)))));
}

/** A line of the failure rate per minute (minutes where nothing ended have no point). */
function rateChart(title, labels, rates) {
  const width = 320;
  const height = 120;
  const pad = 18;
  const step = (width - pad) / Math.max(1, labels.length - 1);
  const points = rates.map((r, i) => (r === null ? null : [pad + i * step, height - pad - r * (height - 2 * pad)]));
  const path = points.filter(Boolean).map(([x, y], i) => `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`).join(' ');
  return h('figure', { class: 'chart' },
    s('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': title },
      s('line', { x1: pad, y1: height - pad, x2: width, y2: height - pad, class: 'axis' }),
      s('text', { x: 0, y: pad, class: 'tick' }, '100%'),
      s('text', { x: 0, y: height - pad, class: 'tick' }, '0'),
      path ? s('path', { d: path, class: 'rate' }) : s('text', { x: width / 2, y: height / 2, class: 'tick middle' }, 'nothing finished'),
      ...points.filter(Boolean).map(([x, y], i) => s('circle', { cx: x, cy: y, r: 2.5, class: 'rate-point' }, s('title', {}, `${(rates.filter((r) => r !== null)[i] * 100).toFixed(0)}%`)))),
    h('figcaption', {}, h('strong', {}, title)));
}

function stat(label, value, id) {
  return h('div', { class: 'stat', id }, h('span', { class: 'stat-value' }, value), h('span', { class: 'stat-label' }, label));
}

function age(seconds) {
  if (seconds === null) return '—';
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

export async function render(main, route) {
  const minutes = route.query.get('minutes') || '15';
  const body = h('div', { id: 'health' });
  fill(main, header('Queue health',
    select('Window', 'minutes', [['5', '5 minutes'], ['15', '15 minutes'], ['30', '30 minutes'], ['60', '60 minutes']], minutes,
      (e) => { location.hash = `#/health?minutes=${e.target.value}`; })), body);

  async function load() {
    let q;
    try {
      q = await call('DescribeQueueHealth', { minutes });
    } catch (e) {
      fill(body, errorBox(e));
      return;
    }
    const labels = q.timeline.map((m) => m.time);
    const rates = q.timeline.map((m) => {
      const ended = m.succeeded + m.failed + m.canceled;
      return ended ? m.failed / ended : null;
    });
    fill(body,
      h('div', { class: 'stats' },
        stat('queued', q.queued, 'stat-queued'),
        stat('running', q.running, 'stat-running'),
        stat('oldest queued', age(q.oldestQueuedSeconds), 'stat-oldest'),
        stat(`finished in ${q.minutes} min`, q.succeeded + q.failed + q.canceled, 'stat-finished'),
        stat('failure rate', q.failureRate === null ? '—' : `${(q.failureRate * 100).toFixed(1)}%`, 'stat-failure-rate')),
      h('div', { class: 'charts' },
        barChart('Submitted per minute', labels, [{ name: 'submitted', cls: 'submitted', values: q.timeline.map((m) => m.submitted) }]),
        barChart('Finished per minute', labels, [
          { name: 'succeeded', cls: 'succeeded', values: q.timeline.map((m) => m.succeeded) },
          { name: 'failed', cls: 'failed', values: q.timeline.map((m) => m.failed) },
          { name: 'canceled', cls: 'canceled', values: q.timeline.map((m) => m.canceled) }]),
        rateChart('Failure rate per minute', labels, rates)),
      q.complete ? null : h('p', { class: 'muted' }, 'More than 5000 tasks in the window: the counts cover the newest 5000.'),
      q.oldestQueuedTime ? h('p', {}, `Oldest queued task submitted at ${q.oldestQueuedTime} UTC.`) : null);
  }
  await load();
  const timer = setInterval(load, REFRESH_MS);
  return () => clearInterval(timer);
}
