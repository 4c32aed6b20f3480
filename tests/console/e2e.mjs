// End-to-end test of the web console in real headless Chromium, against a real qtask
// server. Run by crates/cli/tests/api/console.rs, which starts the server, creates the
// instances and passes (in the environment):
//   QTASK_CONSOLE_URL   the console's URL (http://127.0.0.1:PORT/console)
//   QTASK_SECRET_ID, QTASK_SECRET_KEY
//   QTASK_INSTANCES     two running instances to stop, comma-separated: a healthy one
//                       and one whose name makes the simulator fail StopInstances
//   QTASK_SPARE         a third running instance, restarted from outside the page
//   QTASK_LOAD_BALANCER a load balancer with QTASK_SPARE as its backend, weight 30
//   QTASK_SCREENSHOTS   where to save screenshots of the main views
// It signs its own calls with node:crypto (a second, independent implementation of the
// protocol's signing) to act on the server behind the page's back.

import { chromium } from 'playwright-core';
import { createHmac, randomInt } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const consoleUrl = env('QTASK_CONSOLE_URL');
const secretId = env('QTASK_SECRET_ID');
const secretKey = env('QTASK_SECRET_KEY');
const [healthy, failing] = env('QTASK_INSTANCES').split(',');
const spare = env('QTASK_SPARE');
const loadBalancer = env('QTASK_LOAD_BALANCER');
const shots = env('QTASK_SCREENSHOTS');
const origin = new URL(consoleUrl).origin;
const TIMEOUT = 20_000;

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

/** A signed API call from outside the page (POST, HmacSHA256). */
async function api(action, params = {}) {
  const all = {
    ...params, Action: action, Region: 'ap-guangzhou', SecretId: secretId, SignatureMethod: 'HmacSHA256',
    Timestamp: String(Math.floor(Date.now() / 1000)), Nonce: String(randomInt(1, 2 ** 47)),
  };
  const joined = Object.keys(all).sort().map((k) => `${k}=${all[k]}`).join('&');
  const host = new URL(origin).host;
  all.Signature = createHmac('sha256', secretKey).update(`POST${host}/v2/index.php?${joined}`).digest('base64');
  const response = await fetch(`${origin}/v2/index.php`, { method: 'POST', body: new URLSearchParams(all) });
  return response.json();
}

const step = (name) => console.log(`-- ${name}`);
mkdirSync(shots, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), 'qtask-console-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 860 },
});
const problems = [];
let page;
try {
  page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  // The page must need nothing outside qtask.
  page.on('request', (r) => { if (!r.url().startsWith(origin)) problems.push(`external request: ${r.url()}`); });

  step('the console is served with a strict policy');
  const first = await page.goto(consoleUrl);
  check(first.ok(), `GET ${consoleUrl}: HTTP ${first.status()}`);
  const csp = first.headers()['content-security-policy'] || '';
  check(csp.includes("default-src 'self'") && !csp.includes('unsafe-inline'), `Content-Security-Policy: ${csp}`);

  step('a wrong SecretKey is refused with the API\'s own code and message');
  await page.fill('#in-secretId', secretId);
  await page.fill('#in-secretKey', 'not-the-key');
  await page.click('#sign-in button[type=submit]');
  const refusal = await page.locator('.sign-in-problem .error').textContent();
  check(refusal.includes('code 4100') && refusal.includes('the signature does not match'), `sign-in error: ${refusal}`);
  check(!await page.evaluate(() => sessionStorage.length), 'a refused sign-in keeps nothing');

  step('sign in and see the instances');
  await page.fill('#in-secretKey', secretKey);
  await page.press('#in-secretKey', 'Enter'); // the keyboard is enough
  for (const id of [healthy, failing, spare]) {
    await page.locator(`#instances tr[data-id="${id}"]`).waitFor();
  }
  const state = await page.locator(`#instances tr[data-id="${healthy}"] .badge`).first().textContent();
  check(state === 'RUNNING 2', `state of ${healthy}: ${state}`);
  await page.screenshot({ path: join(shots, 'instances.png'), fullPage: true });

  step('stop two instances and see the chain outcome');
  await page.check(`#instances tr[data-id="${healthy}"] input[type=checkbox]`);
  await page.check(`#instances tr[data-id="${failing}"] input[type=checkbox]`);
  await page.click('button[data-action=StopInstances]');
  await page.locator('dialog[open]').waitFor();
  await page.keyboard.press('Enter'); // the dialog's Confirm has the focus
  await page.locator('#chain-result').waitFor();
  const result = await page.locator('#chain-result').textContent();
  check(result.includes('aggregate code 5400'), `chain result: ${result}`);
  const outcome = (id) => page.locator(`#chain-outcome tr[data-id="${id}"]`).textContent();
  check((await outcome(healthy)).includes('SUCCESS'), `outcome of ${healthy}: ${await outcome(healthy)}`);
  check((await outcome(failing)).includes('FAILED'), `outcome of ${failing}: ${await outcome(failing)}`);
  await page.locator(`#instances tr[data-id="${healthy}"] .badge`).filter({ hasText: 'STOPPED 4' }).waitFor();
  await page.screenshot({ path: join(shots, 'chain-outcome.png'), fullPage: true });
  const failedTask = await page.locator(`#chain-outcome tr[data-id="${failing}"] td:nth-child(4) a`).textContent();
  const stopChain = await page.locator('#chain-outcome p a').textContent();

  step('reset a password: the dialog asks for it');
  await page.uncheck(`#instances tr[data-id="${healthy}"] input[type=checkbox]`);
  await page.uncheck(`#instances tr[data-id="${failing}"] input[type=checkbox]`);
  await page.check(`#instances tr[data-id="${spare}"] input[type=checkbox]`);
  await page.click('button[data-action=ResetInstancePassword]');
  await page.fill('dialog[open] input[name=password]', 'Console-Secret-1');
  await page.click('dialog[open] button.primary');
  await page.locator('#chain-outcome h2').filter({ hasText: 'ResetInstancePassword: code 0' }).waitFor();
  await page.locator('#chain-result').filter({ hasText: 'aggregate code 0' }).waitFor();
  await page.click(`#instances tr[data-id="${spare}"] a[href^="#/history/"]`);
  await page.locator('#history tbody tr').filter({ hasText: 'ResetInstancePassword' }).waitFor();
  await page.goBack();
  await page.locator(`#instances tr[data-id="${healthy}"]`).waitFor();

  step('the chain page shows every resource and the aggregate code');
  await page.goto(`${consoleUrl}/#/tasks/${stopChain}`);
  await page.locator('#aggregate-code').filter({ hasText: '5400' }).waitFor();
  check(await page.locator('.chain-page tbody tr').count() === 2, 'the chain has two tasks');
  await page.locator('#retry').waitFor(); // a failed task can be retried
  await page.screenshot({ path: join(shots, 'chain.png'), fullPage: true });

  step('open the failed task and read its error');
  await page.click(`.chain-page tr[data-id="${failing}"] a[href="#/tasks/${failedTask}"]`);
  await page.locator('#task-error').waitFor();
  // Navigation moves the keyboard focus to the new view's heading.
  const focus = await page.evaluate(() => document.activeElement.textContent);
  check(focus === `Task ${failedTask}`, `focus after navigation: ${focus}`);
  const shown = await page.locator('#task-error').textContent();
  const truth = (await api('DescribeTaskResult', { requestId: failedTask })).data.error;
  check(shown === `code ${truth.code} ${truth.message}`, `task error shown as "${shown}", the API says ${JSON.stringify(truth)}`);
  check(truth.message.includes('qtask-fail') || truth.code === 5100, `the simulator's failure: ${JSON.stringify(truth)}`);
  await page.screenshot({ path: join(shots, 'task.png'), fullPage: true });

  step('retry the failed task: a new chain, which fails again (5100)');
  await page.click('#retry');
  await page.click('dialog[open] button.primary');
  const retried = await page.locator('.notice').textContent();
  check(retried.startsWith('Retry accepted (code 0)'), `retry: ${retried}`);
  await page.click('.notice a');
  await page.locator('#aggregate-code').filter({ hasText: '5100' }).waitFor();
  check(await page.locator(`.chain-page tr[data-id="${failing}"][data-state=FAILED]`).count() === 1, 'the retried task failed again');

  step('the task list updates live, without a reload');
  await page.goto(`${consoleUrl}/#/tasks`);
  await page.locator('#live-status[data-state=live]').waitFor();
  await page.evaluate(() => { window.qtaskNoReload = true; });
  const restart = await api('RestartInstances', { 'instanceIds.0': spare });
  check(restart.code === 0, `RestartInstances: ${JSON.stringify(restart)}`);
  const restartTask = restart.detail[spare].requestId;
  await page.locator(`#tasks tr[data-id="${restartTask}"]`).waitFor();
  await page.locator(`#tasks tr[data-id="${restartTask}"][data-state=SUCCESS]`).waitFor();
  check(await page.evaluate(() => window.qtaskNoReload === true), 'the page was reloaded');
  await page.screenshot({ path: join(shots, 'tasks.png'), fullPage: true });

  step('filters: only FAILED tasks');
  await page.selectOption('#f-status', 'FAILED');
  await page.waitForURL(/status=FAILED/);
  // The filtered list: every row FAILED, the failed stop among them.
  await page.waitForFunction((task) => {
    const rows = [...document.querySelectorAll('#tasks tbody tr')];
    return rows.some((r) => r.dataset.id === task) && rows.every((r) => r.dataset.state === 'FAILED');
  }, failedTask);

  step('load balancers and their backends');
  await page.goto(`${consoleUrl}/#/lb`);
  await page.click(`#load-balancers a[href="#/lb/${loadBalancer}"]`);
  const backend = page.locator('#backends tbody tr').filter({ hasText: spare });
  await backend.waitFor();
  const backendText = await backend.textContent();
  check(backendText.includes('30') && backendText.includes('RUNNING 2'), `backend: ${backendText}`);
  await page.screenshot({ path: join(shots, 'load-balancer.png'), fullPage: true });

  step('queue health');
  await page.goto(`${consoleUrl}/#/health`);
  await page.locator('#stat-finished').waitFor();
  const finished = Number(await page.locator('#stat-finished .stat-value').textContent());
  check(finished >= 10, `finished in the window: ${finished}`); // 3 launches, LB + backend, 2 stops, password, retry, restart
  check(await page.locator('.chart svg rect.failed').count() >= 1, 'the failed stop is charted');
  await page.screenshot({ path: join(shots, 'health.png'), fullPage: true });

  step('a resource\'s history');
  await page.goto(`${consoleUrl}/#/history/${failing}`);
  await page.locator('#history tbody tr').first().waitFor();
  const actions = await page.locator('#history tbody tr td:nth-child(2)').allTextContents();
  check(actions[0] === 'StopInstances' && actions.includes('RunInstances'), `history: ${actions}`);

  step('an error answer is shown as the API gave it');
  await page.goto(`${consoleUrl}/#/history/ins-00000000`);
  const missing = await page.locator('#history .error').textContent();
  const said = await api('DescribeResourceHistory', { resourceId: 'ins-00000000' });
  check(missing === `code ${said.code} ${said.message}`, `shown "${missing}", the API said ${JSON.stringify(said)}`);

  step('a narrow window');
  await page.setViewportSize({ width: 390, height: 800 });
  await page.goto(`${consoleUrl}/#/instances`);
  await page.locator(`#instances tr[data-id="${healthy}"]`).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `the page is ${overflow}px wider than a 390px window`);
  await page.screenshot({ path: join(shots, 'instances-narrow.png'), fullPage: true });

  step('sign out: the SecretKey is gone from storage');
  await page.click('#sign-out');
  await page.locator('#sign-in').waitFor();
  const stored = await page.evaluate(() => JSON.stringify([{ ...sessionStorage }, { ...localStorage }]));
  check(!stored.includes(secretKey) && !stored.includes(secretId), `storage after sign-out: ${stored}`);

  check(problems.length === 0, problems.join('\n'));
  console.log('console e2e: all checks passed');
} catch (e) {
  // What the page showed when a step failed: a rare failure is diagnosed from the log.
  if (page) {
    console.log(`-- the page at the failure: ${page.url()}`);
    console.log(await page.locator('main').innerText({ timeout: 2000 }).catch((err) => `(unreadable: ${err.message})`));
    await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  }
  if (problems.length) console.log(problems.join('\n'));
  throw e;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
