// The console's shell: sign-in and sign-out, the header, and the hash router that
// hands the main area to one view at a time. Each view module exports
// `render(main, route)`, which may return a function that stops what it started
// (event streams, timers) when the user leaves it.

import { session, signIn, signOut, call } from './api.js';
import { h, fill, errorBox } from './dom.js';
import * as instances from './instances.js';
import * as lb from './lb.js';
import * as tasks from './tasks.js';
import * as health from './health.js';
import * as history from './history.js';

const main = document.getElementById('view');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let leave = null;

/** '#/tasks/41?state=FAILED' → {path: ['tasks', '41'], query: URLSearchParams} */
function parseRoute() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  return { path: path.split('/').filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || '') };
}

const VIEWS = { instances, lb, tasks, health, history };

async function route() {
  if (leave) { leave(); leave = null; }
  // A filter that changed the route keeps the focus across the re-render; any other
  // navigation moves it to the new view's heading.
  const focused = document.activeElement && main.contains(document.activeElement) ? document.activeElement.id : '';
  if (!session()) return showSignIn();
  showHeader();
  const r = parseRoute();
  const view = VIEWS[r.path[0]] || instances;
  for (const a of nav.querySelectorAll('a')) {
    a.toggleAttribute('aria-current', a.getAttribute('href') === `#/${r.path[0] || 'instances'}`);
    if (a.hasAttribute('aria-current')) a.setAttribute('aria-current', 'page');
  }
  fill(main, h('p', { class: 'loading', role: 'status' }, 'Loading…'));
  try {
    leave = (await view.render(main, r)) || null;
  } catch (e) {
    fill(main, errorBox(e));
  }
  const target = (focused && document.getElementById(focused)) || main.querySelector('h1') || main;
  target.focus();
}

function showHeader() {
  const s = session();
  nav.hidden = false;
  fill(who,
    h('span', { class: 'secret-id', title: 'SecretId' }, s.secretId), ' ',
    h('span', { class: 'region' }, s.region), ' ',
    h('button', { type: 'button', id: 'sign-out', class: 'secondary', onclick: () => { signOut(); route(); } }, 'Sign out'));
}

function showSignIn() {
  nav.hidden = true;
  fill(who);
  const problem = h('div', { class: 'sign-in-problem' });
  const field = (label, name, attrs) => h('label', { for: `in-${name}` }, label, h('input', { id: `in-${name}`, name, required: true, ...attrs }));
  const form = h('form', { class: 'sign-in', id: 'sign-in' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'hint' }, 'Use an API key (qtask keys create). Every call is signed in this browser; ' +
      'the SecretKey is kept for this tab only and never sent.'),
    field('SecretId', 'secretId', { autocomplete: 'username', spellcheck: 'false' }),
    field('SecretKey', 'secretKey', { type: 'password', autocomplete: 'current-password' }),
    field('Region', 'region', { value: 'ap-guangzhou', spellcheck: 'false' }),
    problem,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const data = new FormData(form);
    signIn(data.get('secretId').trim(), data.get('secretKey'), data.get('region').trim());
    try {
      // A cheap signed query proves the key before the console opens.
      await call('DescribeTasks', { limit: 1 });
    } catch (error) {
      signOut();
      fill(problem, errorBox(error));
      return;
    }
    if (parseRoute().path.length) route();
    else location.hash = '#/instances'; // the hashchange routes

  });
  fill(main, form);
  form.querySelector('input').focus();
}

window.addEventListener('hashchange', route);
route();
