// Instances: a filtered, searchable table with each instance's state (and its legacy
// integer) and latest operation; start, stop, restart and reset password on the
// selected instances, with the chain's per-resource outcome shown right after.

import { call } from './api.js';
import { h, fill, table, badge, link, errorBox, header, select, input, confirmDialog } from './dom.js';
import { chainOutcome } from './tasks.js';

const PAGE = 20;
const STATUSES = [['', 'Any state'], ['2', '2 running'], ['3', '3 creating'], ['4', '4 stopped'],
  ['7', '7 restarting'], ['8', '8 starting'], ['9', '9 stopping'], ['10', '10 resetting password'],
  ['14', '14 reinstalling'], ['6', '6 returning'], ['5', '5 returned'], ['1', '1 launch failed']];

const ACTIONS = [
  { action: 'StartInstances', label: 'Start', verb: 'start' },
  { action: 'StopInstances', label: 'Stop', verb: 'stop' },
  { action: 'RestartInstances', label: 'Restart', verb: 'restart' },
  { action: 'ResetInstancePassword', label: 'Reset password', verb: 'reset the password of',
    fields: [{ name: 'password', label: 'New password', type: 'password', required: true }] },
];

export async function render(main, route) {
  const q = route.query;
  const status = q.get('status') || '';
  const search = q.get('q') || '';
  const page = Math.max(1, Number(q.get('page')) || 1);
  const selected = new Set();
  const results = h('div', { id: 'instances' });
  const outcome = h('section', { id: 'chain-outcome', 'aria-live': 'polite' });
  const buttons = ACTIONS.map((a) => h('button', { type: 'button', disabled: true, dataset: { action: a.action }, onclick: () => act(a) }, a.label));
  const count = h('span', { class: 'selection', role: 'status' });

  const go = (changes) => {
    const next = new URLSearchParams({ status, q: search, page: String(page), ...changes });
    for (const [k, v] of [...next]) if (!v || (k === 'page' && v === '1')) next.delete(k);
    location.hash = `#/instances${next.size ? `?${next}` : ''}`;
  };
  const searchBox = input('Search', 'q', search, { type: 'search', placeholder: 'ID or name' });
  const filters = h('form', { class: 'filters', role: 'search', onsubmit: (e) => { e.preventDefault(); go({ q: searchBox.querySelector('input').value.trim(), page: '1' }); } },
    select('State', 'status', STATUSES, status, (e) => go({ status: e.target.value, page: '1' })),
    searchBox,
    h('button', { type: 'submit', class: 'secondary' }, 'Search'));

  fill(main,
    header('Instances', h('button', { type: 'button', class: 'secondary', onclick: () => load() }, 'Refresh')),
    filters,
    h('div', { class: 'toolbar', role: 'toolbar', 'aria-label': 'Actions on the selected instances' }, count, buttons),
    outcome,
    results);

  function updateSelection() {
    count.textContent = selected.size ? `${selected.size} selected` : 'Select instances to act on them';
    for (const b of buttons) b.disabled = selected.size === 0;
  }

  async function load() {
    let answer;
    try {
      answer = await call('DescribeInstances', { status, searchWord: search, offset: (page - 1) * PAGE, limit: PAGE });
    } catch (e) {
      fill(results, errorBox(e));
      return;
    }
    const rows = answer.instanceSet;
    for (const id of [...selected]) if (!rows.some((r) => r.instanceId === id)) selected.delete(id);
    const toggle = (id) => (e) => { if (e.target.checked) selected.add(id); else selected.delete(id); updateSelection(); };
    const all = h('input', { type: 'checkbox', 'aria-label': 'Select every instance shown', onchange: (e) => {
      for (const box of results.querySelectorAll('tbody input[type=checkbox]')) { box.checked = e.target.checked; box.dispatchEvent(new Event('change')); }
    } });
    const empty = search || status ? 'No instance matches these filters.' : 'No instances yet. Create some with RunInstances (qtask call RunInstances --goodsNum 2).';
    fill(results,
      table([
        { title: h('span', {}, all), cell: (r) => h('input', { type: 'checkbox', 'aria-label': `Select ${r.instanceId}`, checked: selected.has(r.instanceId), onchange: toggle(r.instanceId) }), class: 'check' },
        { title: 'Instance', cell: (r) => link(`#/history/${r.instanceId}`, r.instanceId), class: 'id' },
        { title: 'Name', cell: (r) => r.instanceName || '' },
        { title: 'State', cell: (r) => badge(r.statusName, r.status) },
        { title: 'Latest operation', cell: (r) => latest(r.latestOperation) },
        { title: 'Created', cell: (r) => r.createTime, class: 'time' },
      ], rows, { empty, rowAttrs: (r) => ({ dataset: { id: r.instanceId } }) }),
      pager(answer.totalCount));
    updateSelection();
  }

  function pager(total) {
    const pages = Math.max(1, Math.ceil(total / PAGE));
    return h('nav', { class: 'pager', 'aria-label': 'Pages' },
      h('span', {}, `${total} instance${total === 1 ? '' : 's'} · page ${page} of ${pages}`),
      h('button', { type: 'button', class: 'secondary', disabled: page <= 1, onclick: () => go({ page: String(page - 1) }) }, 'Previous'),
      h('button', { type: 'button', class: 'secondary', disabled: page >= pages, onclick: () => go({ page: String(page + 1) }) }, 'Next'));
  }

  async function act(spec) {
    const ids = [...selected];
    const values = await confirmDialog(`${spec.label} ${ids.length} instance${ids.length === 1 ? '' : 's'}?`,
      `This will ${spec.verb} ${ids.join(', ')}.`, spec.fields);
    if (!values) return;
    try {
      const answer = await call(spec.action, { instanceIds: ids, ...values }, { chain: true });
      load(); // the transitional states
      await chainOutcome(outcome, spec.action, answer);
    } catch (e) {
      fill(outcome, errorBox(e));
    }
    load();
  }

  updateSelection();
  await load();
}

function latest(op) {
  if (!op) return h('span', { class: 'muted' }, 'none');
  return h('span', { class: 'latest' },
    link(`#/tasks/${op.requestId}`, op.action), ' ', badge(op.state),
    op.error ? h('span', { class: 'error-inline' }, ` ${op.error.code} ${op.error.message}`) : null);
}
