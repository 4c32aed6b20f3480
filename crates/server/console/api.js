// The console's API client: signs every call in the browser, exactly as the protocol
// reference says (HmacSHA256 over METHOD + host + path + "?" + the sorted raw
// parameters), and keeps the credentials in sessionStorage only: they live as long as
// the tab and a sign-out forgets them.

const API_PATH = '/v2/index.php';
const EVENTS_PATH = '/v2/events';
const SESSION_KEY = 'qtask.console.session';
const encoder = new TextEncoder();

/** The signed-in session ({secretId, secretKey, region}), or null. */
export function session() {
  const text = sessionStorage.getItem(SESSION_KEY);
  return text ? JSON.parse(text) : null;
}

export function signIn(secretId, secretKey, region) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ secretId, secretKey, region }));
}

export function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  cachedKey = null;
}

/** An error answer of the API: its code and message exactly as the server gave them. */
export class ApiError extends Error {
  constructor(answer) {
    super(answer.message);
    this.code = answer.code;
    this.answer = answer;
  }
}

let cachedKey = null; // {secret, key}: the imported HMAC key of the current SecretKey

async function hmacKey(secret) {
  if (!cachedKey || cachedKey.secret !== secret) {
    if (!crypto.subtle) {
      throw new Error('this page is not a secure context, so the browser offers no WebCrypto: ' +
        'open the console over HTTPS, or at localhost / 127.0.0.1');
    }
    const key = await crypto.subtle.importKey(
      'raw', encoder.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    cachedKey = { secret, key };
  }
  return cachedKey.key;
}

/** A random positive nonce below 2^53 (exact in a JS number). */
function nonce() {
  const [high, low] = crypto.getRandomValues(new Uint32Array(2));
  return String((high & 0x1fffff) * 0x100000000 + low + 1);
}

/** The common and action parameters of a call, signed for `method` (GET or POST). */
async function signedParams(method, action, params) {
  const s = session();
  if (!s) throw new Error('not signed in');
  const all = {
    ...params,
    Action: action,
    Region: s.region,
    Timestamp: String(Math.floor(Date.now() / 1000)),
    Nonce: nonce(),
    SecretId: s.secretId,
    SignatureMethod: 'HmacSHA256',
  };
  // Byte order of the names (they are ASCII, where code-unit order is byte order). On
  // POST a value starting with "@" is sent but not signed: the protocol's upload rule.
  const joined = Object.keys(all).sort()
    .filter((name) => !(method === 'POST' && String(all[name]).startsWith('@')))
    .map((name) => `${name}=${all[name]}`)
    .join('&');
  // The signed host is the Host header the browser sends: this page's host and port.
  const message = `${method}${location.host}${API_PATH}?${joined}`;
  const mac = await crypto.subtle.sign('HMAC', await hmacKey(s.secretKey), encoder.encode(message));
  all.Signature = btoa(String.fromCharCode(...new Uint8Array(mac)));
  return new URLSearchParams(all);
}

/** Flattens lists and objects into the protocol's `name.N.field` form. */
export function flatten(params, prefix = '', out = {}) {
  for (const [name, value] of Object.entries(params)) {
    const key = prefix ? `${prefix}.${name}` : name;
    if (value === undefined || value === null || value === '') continue;
    if (typeof value === 'object') flatten(value, key, out);
    else out[key] = String(value);
  }
  return out;
}

/**
 * Calls an action (a signed POST form) and returns its answer; an answer with a code
 * other than 0 is thrown as an ApiError — except a chain's 5100/5400, whose `detail`
 * is the answer (pass {chain: true}).
 */
export async function call(action, params = {}, { chain = false } = {}) {
  const body = await signedParams('POST', action, flatten(params));
  const response = await fetch(API_PATH, { method: 'POST', body });
  if (!response.ok) throw new Error(`HTTP ${response.status} from ${API_PATH}`);
  const answer = await response.json();
  if (answer.code !== 0 && !(chain && answer.detail)) throw new ApiError(answer);
  return answer;
}

/**
 * Follows the account's task events (Server-Sent Events). Each (re)connection is a new
 * signed request: a nonce is good once, so the browser's own reconnect would be
 * refused. `onEvent(kind, data)`; `onState('live' | 'reconnecting')`. Returns stop().
 */
export function watchEvents(params, onEvent, onState) {
  let source = null;
  let stopped = false;
  let retry = null;
  const kinds = ['queued', 'started', 'retrying', 'succeeded', 'failed', 'canceled',
    'released', 'leaseLost', 'fenced', 'lagged', 'end'];
  async function open() {
    if (stopped) return;
    let query;
    try {
      query = await signedParams('GET', 'WatchTaskEvents', flatten(params));
    } catch (e) {
      onState('reconnecting', e.message);
      return;
    }
    source = new EventSource(`${EVENTS_PATH}?${query}`);
    source.onopen = () => onState('live');
    for (const kind of kinds) {
      source.addEventListener(kind, (e) => onEvent(kind, JSON.parse(e.data)));
    }
    source.onerror = () => {
      source.close();
      if (stopped) return;
      onState('reconnecting');
      retry = setTimeout(open, 2000);
    };
  }
  open();
  return () => {
    stopped = true;
    clearTimeout(retry);
    if (source) source.close();
  };
}
