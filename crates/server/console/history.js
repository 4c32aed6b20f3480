// A resource's history (DescribeResourceHistory): every operation on it, newest first.

import { call } from './api.js';
import { h, fill, table, badge, link, errorBox, header } from './dom.js';

const PAGE = 50;

export async function render(main, route) {
  const id = route.path[1] || '';
  const page = Math.max(1, Number(route.query.get('page')) || 1);
  const results = h('div', { id: 'history' });
  fill(main, header(`History of ${id}`, link(`#/tasks?resource=${encodeURIComponent(id)}`, 'Its tasks')), results);
  try {
    const answer = await call('DescribeResourceHistory', { resourceId: id, offset: (page - 1) * PAGE, limit: PAGE });
    const pages = Math.max(1, Math.ceil(answer.totalCount / PAGE));
    const go = (p) => { location.hash = `#/history/${encodeURIComponent(id)}?page=${p}`; };
    fill(results, table([
      { title: 'Task', cell: (t) => link(`#/tasks/${t.requestId}`, t.requestId), class: 'id' },
      { title: 'Action', cell: (t) => t.action },
      { title: 'State', cell: (t) => badge(t.state, t.status) },
      { title: 'Created', cell: (t) => t.createTime, class: 'time' },
      { title: 'Ended', cell: (t) => t.endTime || '', class: 'time' },
      { title: 'Error', cell: (t) => (t.error ? h('span', { class: 'error-inline' }, `${t.error.code} ${t.error.message}`) : '') },
    ], answer.history, { empty: 'No operation on this resource is recorded (finished tasks are deleted after the retention period).' }),
    h('nav', { class: 'pager', 'aria-label': 'Pages' },
      h('span', {}, `${answer.totalCount} operation${answer.totalCount === 1 ? '' : 's'} · page ${page} of ${pages}`),
      h('button', { type: 'button', class: 'secondary', disabled: page <= 1, onclick: () => go(page - 1) }, 'Previous'),
      h('button', { type: 'button', class: 'secondary', disabled: page >= pages, onclick: () => go(page + 1) }, 'Next')));
  } catch (e) {
    fill(results, errorBox(e));
  }
}
