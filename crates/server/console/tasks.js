// Tasks: the live list (the event stream re-reads the page as tasks move), a task's
// page (timeline, error, result, lease and fencing) and a chain's page (every
// resource's task and the aggregate code), with cancel and retry.

import { call, watchEvents } from './api.js';
import { h, fill, table, badge, link, errorBox, header, select, input, confirmDialog, emptyState } from './dom.js';

const PAGE = 50;
const STATES = [['', 'Any state'], ['QUEUED', 'Queued'], ['RUNNING', 'Running'], ['SUCCESS', 'Succeeded'],
  ['FAILED', 'Failed'], ['CANCELED', 'Canceled'], ['QUEUED,RUNNING', 'Unfinished']];

export async function render(main, route) {
  const id = route.path[1];
  return id ? renderOne(main, id) : renderList(main, route.query);
}

/** A live indicator that a view's event stream sets. */
function liveIndicator() {
  const node = h('span', { id: 'live-status', class: 'live', role: 'status' }, 'Connecting…');
  const set = (state) => {
    node.dataset.state = state;
    node.textContent = { live: 'Live', ended: 'Final' }[state] || 'Reconnecting…';
  };
  return { node, set };
}

/**
 * Re-reads after events: at most one read in flight and one per `ms`, started `ms`
 * after the first event of a burst; events during a read cause one more read after
 * it. So a busy stream costs a bounded rate of reads and the last event is never lost.
 */
function coalesce(read, ms) {
  let timer = null;
  let reading = false;
  let again = false;
  const run = async () => {
    timer = null;
    if (reading) { again = true; return; }
    reading = true;
    try { await read(); } finally {
      reading = false;
      if (again) { again = false; schedule(); }
    }
  };
  const schedule = () => { if (!timer) timer = setTimeout(run, ms); };
  return schedule;
}

async function renderList(main, q) {
  const filter = { status: q.get('status') || '', action: q.get('action') || '', resourceId: q.get('resource') || '' };
  const page = Math.max(1, Number(q.get('page')) || 1);
  const results = h('div', { id: 'tasks' });
  const live = liveIndicator();
  const go = (changes) => {
    const next = new URLSearchParams({ status: filter.status, action: filter.action, resource: filter.resourceId, page: String(page), ...changes });
    for (const [k, v] of [...next]) if (!v || (k === 'page' && v === '1')) next.delete(k);
    location.hash = `#/tasks${next.size ? `?${next}` : ''}`;
  };
  const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(form);
    go({ action: data.get('action').trim(), resource: data.get('resource').trim(), page: '1' });
  } },
  select('State', 'status', STATES, filter.status, (e) => go({ status: e.target.value, page: '1' })),
  input('Action', 'action', filter.action, { placeholder: 'e.g. StopInstances', spellcheck: 'false' }),
  input('Resource', 'resource', filter.resourceId, { placeholder: 'e.g. ins-…', spellcheck: 'false' }),
  h('button', { type: 'submit', class: 'secondary' }, 'Filter'));
  fill(main, header('Tasks', live.node), form, results);

  let latest = 0;
  async function load() {
    const mine = ++latest;
    try {
      const answer = await call('DescribeTasks', { ...filter, offset: (page - 1) * PAGE, limit: PAGE });
      if (mine !== latest) return; // a newer read started meanwhile: it draws
      const pages = Math.max(1, Math.ceil(answer.totalCount / PAGE));
      const filtered = filter.status || filter.action || filter.resourceId;
      fill(results,
        taskTable(answer.taskSet, filtered ? 'No task matches these filters.' : 'No tasks yet: every mutating call creates some.'),
        h('nav', { class: 'pager', 'aria-label': 'Pages' },
          h('span', {}, `${answer.totalCount} task${answer.totalCount === 1 ? '' : 's'} · page ${page} of ${pages}`),
          h('button', { type: 'button', class: 'secondary', disabled: page <= 1, onclick: () => go({ page: String(page - 1) }) }, 'Previous'),
          h('button', { type: 'button', class: 'secondary', disabled: page >= pages, onclick: () => go({ page: String(page + 1) }) }, 'Next')));
    } catch (e) {
      fill(results, errorBox(e));
    }
  }
  const reload = coalesce(load, 250);
  // Every event of the account (of the action, when filtered) re-reads the page; a
  // reconnection re-reads it too, for what happened while the stream was down.
  const stop = watchEvents(filter.action ? { action: filter.action } : {}, reload,
    (state) => { live.set(state); if (state === 'live') reload(); });
  await load();
  return stop;
}

function taskTable(tasks, empty) {
  return table([
    { title: 'Task', cell: (t) => link(`#/tasks/${t.requestId}`, t.requestId), class: 'id' },
    { title: 'Action', cell: (t) => t.action },
    { title: 'Resource', cell: (t) => link(`#/history/${t.resourceId}`, t.resourceId), class: 'id' },
    { title: 'State', cell: (t) => badge(t.state, t.status) },
    { title: 'Attempts', cell: (t) => t.attempts, class: 'num' },
    { title: 'Created', cell: (t) => t.createTime, class: 'time' },
    { title: 'Ended', cell: (t) => t.endTime || '', class: 'time' },
    { title: 'Chain', cell: (t) => (t.chainId ? link(`#/tasks/${t.chainId}`, t.chainId) : '') },
    { title: 'Error', cell: (t) => (t.error ? h('span', { class: 'error-inline' }, `${t.error.code} ${t.error.message}`) : '') },
  ], tasks, { empty, rowAttrs: (t) => ({ dataset: { id: t.requestId, state: t.state } }) });
}

/** The outcome of a finished chain as the batch codes say it: 0 all, 5400 some, 5100 none. */
export function aggregateCode(tasks) {
  if (tasks.some((t) => t.state === 'QUEUED' || t.state === 'RUNNING')) return null;
  const ok = tasks.filter((t) => t.state === 'SUCCESS').length;
  return ok === tasks.length ? 0 : ok === 0 ? 5100 : 5400;
}

async function renderOne(main, id) {
  const body = h('div', { id: 'task' });
  const actions = h('div', { class: 'toolbar' });
  const notice = h('div', { 'aria-live': 'polite' });
  const live = liveIndicator();
  const head = header(`Task ${id}`, live.node);
  // This view's own heading: a read finishing after the user left must not touch the next view.
  const title = head.querySelector('h1');
  fill(main, head, actions, notice, body);
  let data = null;
  let stop = () => {};
  async function load() {
    try {
      data = (await call('DescribeTaskResult', { requestId: id })).data;
    } catch (e) {
      fill(body, errorBox(e));
      fill(actions);
      stop(); // nothing to follow
      live.node.remove();
      return;
    }
    title.textContent = data.tasks ? `Chain ${id}` : `Task ${id}`;
    fill(body, data.tasks ? chainView(data) : taskView(data));
    const tasks = data.tasks || [data];
    const unfinished = tasks.some((t) => t.state === 'QUEUED' || t.state === 'RUNNING');
    const failed = tasks.some((t) => t.state === 'FAILED' || t.state === 'CANCELED');
    fill(actions,
      unfinished ? h('button', { type: 'button', id: 'cancel', onclick: cancel }, data.tasks ? 'Cancel chain' : 'Cancel task') : null,
      failed ? h('button', { type: 'button', id: 'retry', onclick: retry }, data.tasks ? 'Retry failed tasks' : 'Retry task') : null);
  }
  async function cancel() {
    if (!await confirmDialog(`Cancel ${id}?`, 'Tasks that have not started end CANCELED; running ones are asked to stop.')) return;
    try {
      const answer = await call('CancelTask', { requestId: id });
      fill(notice, h('p', { class: 'notice' }, answer.tasks.map((t) => `${t.resourceId}: ${t.cancel}`).join(', ')));
    } catch (e) { fill(notice, errorBox(e)); }
    load();
  }
  async function retry() {
    if (!await confirmDialog(`Retry ${id}?`, 'New tasks run for exactly the resources whose tasks failed or were canceled.')) return;
    try {
      const answer = await call('RetryTask', { requestId: id }, { chain: true });
      fill(notice, h('p', { class: 'notice' }, `Retry accepted (code ${answer.code}): `,
        answer.requestId ? link(`#/tasks/${answer.requestId}`, `follow ${answer.requestId}`) : JSON.stringify(answer.detail)));
    } catch (e) { fill(notice, errorBox(e)); }
  }
  const reload = coalesce(load, 250);
  // The stream ends (event "end") once every task followed is final.
  stop = watchEvents({ requestId: id }, (kind) => {
    reload();
    if (kind === 'end') { stop(); live.set('ended'); }
  }, (state) => live.set(state));
  await load();
  return () => stop();
}

function field(name, value) {
  if (value === undefined || value === null || value === '') return null;
  return [h('dt', {}, name), h('dd', {}, value)];
}

function taskView(t) {
  const step = (name, time, note) => h('li', { class: time ? 'done' : 'pending' },
    h('span', { class: 'step' }, name), ' ', h('span', { class: 'time' }, time || '—'), note ? h('span', { class: 'note' }, ` ${note}`) : null);
  return h('div', { class: 'task-page' },
    h('dl', { class: 'facts' },
      field('State', badge(t.state, t.status)),
      field('Action', t.action),
      field('Resource', link(`#/history/${t.resourceId}`, t.resourceId)),
      field('Region', t.region),
      field('Chain', t.chainId ? link(`#/tasks/${t.chainId}`, t.chainId) : null)),
    h('h2', {}, 'Timeline'),
    h('ol', { class: 'timeline' },
      step('Queued', t.createTime),
      step('Started', t.startTime, t.attempts ? `attempt${t.attempts === 1 ? '' : 's'}: ${t.attempts}` : null),
      t.nextAttemptTime ? step('Next attempt', t.nextAttemptTime, 'waiting to retry') : null,
      step('Finished', t.endTime, t.endTime ? t.state : null)),
    t.error ? [h('h2', {}, 'Error'), h('div', { class: 'error', id: 'task-error' },
      h('span', { class: 'error-code' }, `code ${t.error.code}`), ' ', h('span', { class: 'error-message' }, t.error.message))] : null,
    t.result !== undefined ? [h('h2', {}, 'Result'), h('pre', { class: 'json' }, JSON.stringify(t.result, null, 2))] : null,
    h('h2', {}, 'Lease and fencing'),
    t.lease || t.blockedBy || t.cancelRequested
      ? h('dl', { class: 'facts' },
        field('Lease owner', t.lease?.owner),
        field('Lease expires', t.lease?.expiresTime),
        field('Fencing token', t.lease?.fencingToken),
        field('Waiting behind', t.blockedBy ? link(`#/tasks/${t.blockedBy}`, t.blockedBy) : null),
        field('Queue position', t.queuePosition),
        field('Cancel requested', t.cancelRequested ? 'yes' : null))
      : emptyState(t.state === 'RUNNING' ? 'No lease is recorded.' : 'No lease: the task is not running.'));
}

function chainView(c) {
  const code = aggregateCode(c.tasks);
  const counts = Object.entries(c.taskStates).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s}`).join(', ');
  return h('div', { class: 'chain-page' },
    h('dl', { class: 'facts' },
      field('State', badge(c.state, c.status)),
      field('Aggregate code', h('span', { id: 'aggregate-code', class: `code code-${code}` }, code === null ? 'pending' : String(code))),
      field('Action', c.action),
      field('Tasks', counts),
      field('Created', c.createTime),
      field('Finished', c.endTime)),
    h('h2', {}, 'Tasks'),
    table([
      { title: 'Resource', cell: (t) => link(`#/history/${t.resourceId}`, t.resourceId), class: 'id' },
      { title: 'Task', cell: (t) => link(`#/tasks/${t.requestId}`, t.requestId), class: 'id' },
      { title: 'State', cell: (t) => badge(t.state, t.status) },
      { title: 'Attempts', cell: (t) => t.attempts, class: 'num' },
      { title: 'Ended', cell: (t) => t.endTime || '', class: 'time' },
      { title: 'Error', cell: (t) => (t.error ? h('span', { class: 'error-inline' }, `${t.error.code} ${t.error.message}`) : '') },
    ], c.tasks, { rowAttrs: (t) => ({ dataset: { id: t.resourceId, state: t.state } }) }));
}

/**
 * Shows a chain call's answer in `node` — the outer code and every resource's code,
 * message and task — then follows the tasks (long poll) until they are final, and
 * resolves then.
 */
export async function chainOutcome(node, action, answer) {
  const entries = Object.entries(answer.detail || {});
  const states = new Map();
  const draw = (final) => {
    const code = final ? aggregateCode(final.tasks) : null;
    fill(node,
      h('h2', {}, `${action}: code ${answer.code}`, answer.message ? ` (${answer.message})` : ''),
      answer.requestId ? h('p', {}, 'Chain ', link(`#/tasks/${answer.requestId}`, answer.requestId),
        code === null ? ' — running…' : h('span', { id: 'chain-result' }, ` — finished with aggregate code ${code}`)) : null,
      table([
        { title: 'Resource', cell: ([id]) => id, class: 'id' },
        { title: 'Code', cell: ([, e]) => e.code, class: 'num' },
        { title: 'Message', cell: ([, e]) => e.message },
        { title: 'Task', cell: ([, e]) => (e.requestId ? link(`#/tasks/${e.requestId}`, e.requestId) : '') },
        { title: 'Outcome', cell: ([id, e]) => {
          const t = states.get(id);
          if (!e.requestId) return '';
          return t ? [badge(t.state), t.error ? h('span', { class: 'error-inline' }, ` ${t.error.code} ${t.error.message}`) : null] : badge('QUEUED');
        } },
      ], entries, { rowAttrs: ([id]) => ({ dataset: { id } }) }));
  };
  draw(null);
  if (!answer.requestId) return;
  // Followed while the outcome is on screen.
  while (node.isConnected) {
    const data = (await call('DescribeTaskResult', { requestId: answer.requestId, waitSeconds: 10 })).data;
    for (const t of data.tasks || [data]) states.set(t.resourceId, t);
    const final = data.status !== 2;
    draw(final ? data : null);
    if (final) return;
  }
}
