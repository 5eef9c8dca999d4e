// The Sluice console: every screen is drawn here from the admin API. The page is built
// with DOM calls and textContent only (never HTML strings), so whatever events hold is
// shown as text. Changes carry the session's CSRF token; the server checks the role.
'use strict';

const state = { me: null, cleanup: [] };

// ---------- building blocks ----------

/** An element: attributes (`on…` are listeners, `text` is textContent), then children. */
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  // A scrollable block of text must be reachable with the keyboard.
  if (tag === 'pre' && !el.hasAttribute('tabindex')) el.setAttribute('tabindex', '0');
  for (const c of kids.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Appends what is given, leaving out null, undefined and false (`el.append` would write them). */
function add(el, ...kids) {
  el.append(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
}

/** A link inside the console (handled without a page load). */
function link(path, text, attrs) {
  return h('a', Object.assign({ href: path }, attrs || {}), text);
}

const enc = encodeURIComponent;
const isAdmin = () => state.me && state.me.role === 'admin';
const pretty = (v) => JSON.stringify(v, null, 2);

/** Headers as `name: value` lines, from an object or a list of pairs. */
function headerLines(headers) {
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers || {});
  return pairs.map(([k, v]) => k + ': ' + v).join('\n');
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || ('HTTP ' + status));
    this.status = status;
    this.body = body || {};
  }
}

/** Calls the admin API (or the sign-in endpoint) with the session's cookie. */
async function api(method, path, body, headers) {
  return (await apiFull(method, path, body, headers)).data;
}

/** `api`, with the answer's entity tag (a version to send back in If-Match). */
async function apiFull(method, path, body, headers) {
  const opts = { method, headers: Object.assign({}, headers || {}), credentials: 'same-origin' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  if (method !== 'GET' && state.me && state.me.csrf) opts.headers['X-CSRF-Token'] = state.me.csrf;
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { message: text }; }
  if (r.status === 401 && !path.startsWith('/console/api/')) {
    state.me = null;
    render();
  }
  if (!r.ok) throw new ApiError(r.status, data);
  return { data, etag: r.headers.get('ETag') };
}

/** A message line for an error, naming the field when the API does. */
function errorLine(e) {
  const field = e.body && e.body.field ? ' (' + e.body.field + ')' : '';
  return h('p', { class: 'error', role: 'alert' }, e.message + field);
}

/** Runs `f`, showing its error in `where` instead of throwing. */
async function attempt(where, f) {
  where.replaceChildren();
  try {
    return await f();
  } catch (e) {
    where.replaceChildren(errorLine(e));
    return undefined;
  }
}

function table(head, rows) {
  return h('table', {},
    h('thead', {}, h('tr', {}, head.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.length ? rows.map((r) => h('tr', {}, r.map((c) => h('td', {}, c))))
      : h('tr', {}, h('td', { colspan: head.length, class: 'muted' }, 'Nothing yet.'))));
}

function field(label, input, hint) {
  const id = 'f-' + Math.random().toString(36).slice(2);
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    hint ? h('div', { class: 'hint' }, hint) : null);
}

function tabs(base, current, items) {
  return h('nav', { class: 'tabs', 'aria-label': 'Sections' }, items.map(([slug, text]) =>
    link(base + (slug ? '/' + slug : ''), text, current === slug ? { 'aria-current': 'page' } : {})));
}

function time(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

// ---------- navigation ----------

const NAV = [
  ['/console/sources', 'Sources'],
  ['/console/destinations', 'Destinations'],
  ['/console/catalog', 'Catalog'],
  ['/console/events', 'Event search'],
  ['/console/profiles', 'Profiles'],
  ['/console/privacy', 'Privacy'],
  ['/console/access', 'Access'],
];

const ROUTES = [
  [/^\/console\/?$/, () => go('/console/sources', true)],
  [/^\/console\/sources$/, sources],
  [/^\/console\/sources\/([^/]+)(?:\/(refused|install))?$/, source],
  [/^\/console\/destinations$/, destinations],
  [/^\/console\/destinations\/([^/]+)(?:\/(mappings|tester|delivery))?$/, destination],
  [/^\/console\/warehouses\/([^/]+)$/, warehouse],
  [/^\/console\/catalog$/, catalog],
  [/^\/console\/catalog\/([^/]+)$/, addDestination],
  [/^\/console\/events$/, eventSearch],
  [/^\/console\/profiles$/, profiles],
  [/^\/console\/privacy$/, privacy],
  [/^\/console\/access$/, access],
];

function go(path, replace) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render();
}

document.addEventListener('click', (ev) => {
  const a = ev.target.closest && ev.target.closest('a[href^="/console/"]');
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  go(a.getAttribute('href'));
});
window.addEventListener('popstate', () => render());

async function render() {
  for (const f of state.cleanup.splice(0)) f();
  const main = document.getElementById('main');
  if (!state.me) {
    // Not through api(): its answer to a 401 is to draw the sign-in, which is this.
    const r = await fetch('/admin/v1/me', { credentials: 'same-origin' });
    state.me = r.ok ? await r.json() : null;
  }
  drawChrome();
  if (!state.me) return signIn(main);
  const path = location.pathname;
  for (const [re, screen] of ROUTES) {
    const m = path.match(re);
    if (m) {
      main.replaceChildren();
      try {
        await screen(main, ...m.slice(1).map((x) => (x === undefined ? x : decodeURIComponent(x))));
      } catch (e) {
        add(main, errorLine(e));
      }
      // A new screen starts at the top; focus moves to it for screen readers without a
      // scroll of its own, so the page never moves under a pointer mid-click.
      window.scrollTo(0, 0);
      main.focus({ preventScroll: true });
      return;
    }
  }
  main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, 'No screen at this address. '), link('/console/sources', 'Sources'));
}

function drawChrome() {
  const nav = document.getElementById('nav');
  const who = document.getElementById('who');
  if (!state.me) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  nav.replaceChildren(...NAV.map(([p, t]) => link(p, t, location.pathname.startsWith(p) ? { 'aria-current': 'page' } : {})));
  who.replaceChildren(
    h('span', {}, state.me.user + ' (' + state.me.role + ')'),
    state.me.csrf ? h('button', { class: 'secondary', type: 'button', onclick: signOut }, 'Sign out') : null,
  );
}

async function signOut() {
  try { await api('DELETE', '/console/api/session'); } catch (_) { /* signed out anyway */ }
  state.me = null;
  go('/console/sources');
}

function signIn(main) {
  const user = h('input', { name: 'username', autocomplete: 'username', required: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const msg = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'signin', onsubmit: async (ev) => {
    ev.preventDefault();
    const ok = await attempt(msg, () => api('POST', '/console/api/session', { username: user.value, password: pass.value }));
    if (ok) {
      state.me = ok;
      render();
    }
  } },
  h('h1', {}, 'Sign in to Sluice'),
  field('User name', user),
  field('Password', pass, 'The first start printed the password of the user admin.'),
  msg,
  h('button', { type: 'submit' }, 'Sign in'));
  main.replaceChildren(form);
  user.focus();
}

// ---------- sources ----------

function snippet(src) {
  // The Tracking API's address: the page's own unless the console has one of its own.
  const host = state.me.tracking_url || location.origin;
  if (src.kind === 'segment_webhook' && src.webhook_path) {
    return [
      '# In the Segment workspace that sends here: Connections → Destinations → Add',
      '# Destination → Webhooks (or Webhooks (Actions)), with',
      'Webhook URL:   ' + host + src.webhook_path,
      'Shared Secret: ' + (src.shared_secret || '(the shared_secret in sluice.toml)'),
      '# Each post is checked against X-Signature; its events are stored as this source\'s.',
      '# The Tracking API takes this source\'s write key too:',
      "curl -u '" + src.write_key + ":' -H 'Content-Type: application/json' -d '{\"userId\":\"u1\",\"event\":\"Signed Up\"}' " + host + '/v1/track',
    ].join('\n');
  }
  return [
    '// A website, with @segment/analytics-next (npm): only cdnURL changes. analytics.js',
    '// reads its settings from Sluice and sends its events here.',
    "import { AnalyticsBrowser } from '@segment/analytics-next'",
    "const analytics = AnalyticsBrowser.load({ writeKey: '" + src.write_key + "', cdnURL: '" + host + "' })",
    '',
    '# Python',
    "segment.analytics.write_key = '" + src.write_key + "'",
    "segment.analytics.host = '" + host + "'",
    '',
    '// Node.js',
    "new Analytics({ writeKey: '" + src.write_key + "', host: '" + host + "' })",
  ].join('\n');
}

function copyButton(text, label) {
  return h('button', { class: 'secondary', type: 'button', 'aria-label': label, onclick: async (ev) => {
    try {
      await navigator.clipboard.writeText(text);
      ev.target.textContent = 'Copied';
    } catch (_) {
      ev.target.textContent = 'Select and copy';
    }
  } }, 'Copy');
}

/** A small bar chart of counts (an SVG drawn with DOM calls). */
function sparkline(values, label) {
  const ns = 'http://www.w3.org/2000/svg';
  const w = 120;
  const hgt = 24;
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', String(w));
  svg.setAttribute('height', String(hgt));
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const max = Math.max(1, ...values);
  const bw = w / Math.max(1, values.length);
  values.forEach((v, i) => {
    const r = document.createElementNS(ns, 'rect');
    const bh = Math.round((v / max) * (hgt - 2));
    r.setAttribute('x', String(i * bw));
    r.setAttribute('y', String(hgt - bh));
    r.setAttribute('width', String(Math.max(1, bw - 0.5)));
    r.setAttribute('height', String(bh));
    r.setAttribute('fill', '#1f5fbf');
    svg.append(r);
  });
  return svg;
}

/** Delivery counts as horizontal bars, each labelled with its number. */
function bars(counts) {
  const max = Math.max(1, ...Object.values(counts));
  return h('div', { class: 'bars' }, Object.entries(counts).map(([k, v]) => {
    const bar = h('span', { class: 'bar ' + k });
    // Through the CSSOM: the CSP allows no style attributes.
    bar.style.width = Math.max(1, Math.round((v / max) * 60)) + '%';
    return h('div', { class: 'bar-row' }, h('span', { class: 'bar-label' }, k), bar, h('span', {}, String(v)));
  }));
}

async function sources(main) {
  add(main, h('div', { class: 'row' }, h('h1', {}, 'Sources')));
  const list = (await api('GET', '/admin/v1/sources')).data;
  add(main, table(['Source', 'Type', 'Status', 'Last hour', 'Last day', 'Refused (day)', 'Write key', ''], list.map((s) => [
    link('/console/sources/' + enc(s.name), s.name),
    s.type || s.kind,
    h('span', { class: 'badge ' + (s.enabled ? 'good' : 'bad') }, s.enabled ? 'enabled' : 'disabled'),
    h('span', {}, sparkline(s.volume.per_minute, s.volume.last_hour.accepted + ' events in the last hour'), ' ' + s.volume.last_hour.accepted),
    String(s.volume.last_day.accepted),
    s.volume.last_day.refused ? h('span', { class: 'error' }, String(s.volume.last_day.refused)) : '0',
    h('code', {}, s.write_key),
    isAdmin() && s.write_key !== '********' ? copyButton(s.write_key, 'Copy the write key of ' + s.name) : null,
  ])));
  add(main, h('p', { class: 'muted' }, 'Volumes are counted by this node since it started.'));
  if (!isAdmin()) return;
  const types = (await api('GET', '/admin/v1/source-types')).data;
  const name = h('input', { required: true, pattern: '[A-Za-z0-9_\\-]{1,64}', autocomplete: 'off' });
  const type = h('select', {}, types.map((t) => h('option', { value: t.id }, t.name)));
  const msg = h('div', { 'aria-live': 'polite' });
  add(main, h('form', { onsubmit: async (ev) => {
    ev.preventDefault();
    const r = await attempt(msg, () => api('PUT', '/admin/v1/sources/' + enc(name.value), { type: type.value }));
    if (r) go('/console/sources/' + enc(r.name) + '/install');
  } }, h('h2', {}, 'Add source'), h('div', { class: 'row' }, field('Name', name, 'Letters, digits, - and _.'), field('Type', type)), msg,
  h('button', { type: 'submit' }, 'Add source')));
}

async function source(main, name, tab) {
  const list = (await api('GET', '/admin/v1/sources')).data;
  const src = list.find((s) => s.name === name);
  if (!src) throw new ApiError(404, { message: 'no source named ' + name });
  add(main, h('h1', {}, 'Source ' + name),
    tabs('/console/sources/' + enc(name), tab || '', [['', 'Debugger'], ['refused', 'Refused'], ['install', 'Settings and install']]));
  if (tab === 'refused') return refused(main, name);
  if (tab === 'install') return sourceSettings(main, src);
  debuggerView(main, name);
}

function sourceSettings(main, src) {
  const msg = h('div', { 'aria-live': 'polite' });
  const editable = isAdmin() && src.managed_by === 'api';
  add(main, h('h2', {}, 'Write key'), h('p', {}, h('code', {}, src.write_key), ' ',
    isAdmin() && src.write_key !== '********' ? copyButton(src.write_key, 'Copy the write key') : null),
  src.previous_key_valid_until ? h('p', { class: 'muted' }, 'The previous key is accepted until ' + time(src.previous_key_valid_until) + '.') : null,
  src.shared_secret ? [h('h2', {}, 'Webhook shared secret'), h('p', {}, h('code', {}, src.shared_secret), ' ',
    isAdmin() && src.shared_secret !== '********' ? copyButton(src.shared_secret, 'Copy the shared secret') : null)] : null);
  if (src.managed_by === 'file') add(main, h('p', { class: 'muted' }, 'Defined in sluice.toml: change it there. Shown read-only.'));
  if (editable) {
    const grace = h('select', {}, [['24', '24 hours'], ['1', '1 hour'], ['168', '7 days'], ['0', 'no grace: the old key stops now']].map(([v, t]) => h('option', { value: v }, t)));
    const enabled = h('input', { type: 'checkbox', checked: src.enabled });
    add(main, 
      h('div', { class: 'row' }, field('Old key stays valid for', grace), h('button', { type: 'button', onclick: async () => {
        if (!confirm('Make a new write key for ' + src.name + '?')) return;
        const r = await attempt(msg, () => api('POST', '/admin/v1/sources/' + enc(src.name) + '/rotate-key', { grace_hours: Number(grace.value) }));
        if (r) go('/console/sources/' + enc(src.name) + '/install', true);
      } }, 'Rotate write key')),
      h('div', { class: 'row' }, h('label', {}, enabled, ' Enabled'), h('button', { type: 'button', class: 'secondary', onclick: async () => {
        const r = await attempt(msg, () => api('PUT', '/admin/v1/sources/' + enc(src.name), { type: src.type, enabled: enabled.checked, version: src.version }));
        if (r) go('/console/sources/' + enc(src.name) + '/install', true);
      } }, 'Save')),
      h('div', { class: 'row' }, h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!confirm('Remove source ' + src.name + '? Its key stops working; its events stay in the log.')) return;
        const r = await attempt(msg, () => api('DELETE', '/admin/v1/sources/' + enc(src.name) + '?version=' + src.version));
        if (r !== undefined) go('/console/sources');
      } }, 'Remove source')));
  }
  add(main, msg, h('h2', {}, 'Install'), h('pre', {}, snippet(src)));
}

async function refused(main, name) {
  const rows = (await api('GET', '/admin/v1/sources/' + enc(name) + '/rejected?limit=100')).data;
  add(main, table(['Received', 'Code', 'Field', 'Reason', 'Raw'], rows.map((r) => [
    time(r.receivedAt), r.code, r.field || '', r.reason, h('pre', {}, r.raw),
  ])));
}

/** Most events kept on screen; the stream is sampled above RATE_SHOWN a second. */
const KEEP = 500;
const RATE_SHOWN = 50;

function debuggerView(main, name) {
  let paused = false;
  let received = 0;
  let shown = 0;
  let buffer = [];
  const items = [];
  const typeSel = h('select', {}, ['', 'track', 'identify', 'page', 'screen', 'group', 'alias'].map((t) => h('option', { value: t }, t || 'all types')));
  const nameIn = h('input', { type: 'search', placeholder: 'event name' });
  const userIn = h('input', { type: 'search', placeholder: 'user or anonymous id' });
  const pause = h('button', { type: 'button', class: 'secondary', onclick: () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    status();
  } }, 'Pause');
  const counts = h('span', { class: 'muted', 'aria-live': 'off' });
  const list = h('ul', { class: 'events', 'aria-label': 'Live events' });
  const detail = h('div', {}, h('p', { class: 'muted' }, 'Select an event to see it.'));
  add(main, 
    h('div', { class: 'row' }, pause, field('Type', typeSel), field('Event', nameIn), field('User', userIn), counts),
    h('div', { class: 'split' }, list, detail),
  );
  const matches = (e) => (!typeSel.value || e.type === typeSel.value)
    && (!nameIn.value || String(e.event || e.name || '').toLowerCase().includes(nameIn.value.toLowerCase()))
    && (!userIn.value || [e.userId, e.anonymousId].some((u) => String(u || '').includes(userIn.value)));
  function status() {
    counts.textContent = (paused ? 'Paused. ' : 'Live. ') + received + ' received, ' + shown + ' shown'
      + (received > shown ? ' (sampled: at most ' + RATE_SHOWN + ' a second are drawn)' : '') + '.';
  }
  function show(e) {
    const raw = h('pre', {}, pretty(e.event));
    const calls = [['type', e.type], ['event', e.event.event], ['name', e.event.name], ['userId', e.event.userId],
      ['anonymousId', e.event.anonymousId], ['messageId', e.event.messageId], ['receivedAt', e.event.receivedAt]]
      .filter(([, v]) => v !== undefined);
    detail.replaceChildren(
      e.refused ? h('p', { class: 'error' }, 'Refused (' + e.refused.code + (e.refused.field ? ', ' + e.refused.field : '') + '): ' + e.refused.reason) : null,
      h('h2', {}, 'Pretty'), table(['Field', 'Value'], calls.map(([k, v]) => [k, String(v)])),
      h('h2', {}, 'Properties and traits'), h('pre', {}, pretty(e.event.properties || e.event.traits || {})),
      h('h2', {}, 'Raw'), raw);
    for (const li of list.children) li.classList.toggle('selected', li._event === e);
  }
  function row(e) {
    const ev = e.event;
    const li = h('li', { class: e.refused ? 'refused' : '' }, h('button', { type: 'button', onclick: () => show(e) },
      h('span', {}, new Date(ev.receivedAt || Date.now()).toLocaleTimeString()),
      h('span', {}, e.type),
      h('span', {}, String(ev.event || ev.name || '')),
      h('span', {}, String(ev.userId || ev.anonymousId || ''))));
    li._event = e;
    return li;
  }
  function redraw() {
    list.replaceChildren(...items.filter((e) => matches(e.event)).map(row));
  }
  for (const input of [typeSel, nameIn, userIn]) input.addEventListener('input', redraw);
  const source = new EventSource('/admin/v1/sources/' + enc(name) + '/live');
  const take = (type) => (msg) => {
    received += 1;
    if (paused) return;
    let event;
    try { event = JSON.parse(msg.data); } catch (_) { return; }
    buffer.push({ type, event });
  };
  for (const t of ['track', 'identify', 'page', 'screen', 'group', 'alias', 'event']) source.addEventListener(t, take(t));
  // Refused items beside the accepted ones: polled, as they are kept with their reasons.
  const refusedSince = Date.now();
  const seenRefused = new Set();
  const pollRefused = setInterval(async () => {
    if (paused) return;
    let rows;
    try { rows = (await api('GET', '/admin/v1/sources/' + enc(name) + '/rejected?limit=50')).data; } catch (_) { return; }
    for (const r of rows.slice().reverse()) {
      if (seenRefused.has(r.id) || new Date(r.receivedAt).getTime() < refusedSince - 1000) continue;
      seenRefused.add(r.id);
      received += 1;
      let raw;
      try { raw = JSON.parse(r.raw); } catch (_) { raw = { raw: r.raw }; }
      const ev = Object.assign({}, typeof raw === 'object' && raw ? raw : { raw }, { receivedAt: r.receivedAt });
      buffer.push({ type: 'refused: ' + r.code, refused: r, event: ev });
    }
  }, 2000);
  state.cleanup.push(() => clearInterval(pollRefused));
  source.addEventListener('lagged', (msg) => {
    try { received += JSON.parse(msg.data).skipped; } catch (_) { /* ignore */ }
  });
  // Drawn four times a second; above RATE_SHOWN a second only the newest are drawn.
  const timer = setInterval(() => {
    if (buffer.length) {
      const batch = buffer.slice(-Math.ceil(RATE_SHOWN / 4));
      buffer = [];
      shown += batch.length;
      for (const e of batch) {
        items.unshift(e);
        if (matches(e.event)) list.prepend(row(e));
      }
      while (items.length > KEEP) items.pop();
      while (list.children.length > KEEP) list.lastChild.remove();
    }
    status();
  }, 250);
  status();
  state.cleanup.push(() => {
    source.close();
    clearInterval(timer);
  });
}

// ---------- destinations ----------

async function destinations(main) {
  add(main, h('div', { class: 'row' }, h('h1', {}, 'Destinations'), isAdmin() ? link('/console/catalog', 'Add destination', { class: 'button' }) : null));
  const [list, warehouses] = await Promise.all([api('GET', '/admin/v1/destinations'), api('GET', '/admin/v1/warehouses')]);
  add(main, table(['Destination', 'Type', 'Sources', 'State', 'Managed by'], list.data.map((d) => [
    link('/console/destinations/' + enc(d.name), d.name), d.type, (d.sources || []).join(', '),
    h('span', { class: 'badge ' + (d.state === 'running' ? 'good' : 'bad') }, d.state), d.managed_by,
  ])));
  add(main, h('h2', {}, 'Warehouses'), table(['Warehouse', 'Sources', 'Lag (events)', 'Last sync'], warehouses.data.map((w) => [
    link('/console/warehouses/' + enc(w.name), w.name), (w.sources || []).join(', '), String(w.lagEvents ?? ''),
    w.lastSync ? (w.lastSync.error ? h('span', { class: 'error' }, w.lastSync.error) : time(w.lastSync.startedAt)) : 'none yet',
  ])));
}

async function warehouse(main, name) {
  const base = '/admin/v1/warehouses/' + enc(name);
  const [w, syncs, replays] = await Promise.all([api('GET', base), api('GET', base + '/syncs'),
    api('GET', '/admin/v1/destinations/' + enc(name) + '/replays')]);
  add(main, h('h1', {}, 'Warehouse ' + name), h('p', {}, 'Schemas: ' + Object.entries(w.schemas).map(([s, sc]) => s + ' → ' + sc).join(', ')
    + '. Lag: ' + (w.lagEvents ?? '?') + ' events.'),
  h('p', { class: 'muted' }, 'Defined in sluice.toml: change it there.'));
  add(main, h('h2', {}, 'Sync history'), table(['Started', 'Kind', 'Duration', 'Events', 'Rows', 'Discards', 'Error'], syncs.data.map((s) => [
    time(s.startedAt), s.kind, s.durationMs + ' ms', String(s.events),
    Object.entries(s.rows).map(([t, n]) => t + ': ' + n).join(', '), String(s.discards), s.error ? h('span', { class: 'error' }, s.error) : '',
  ])));
  // Replays: a window of the log loaded again (each row stays once).
  const replayRows = h('div', {});
  const drawReplays = (list) => replayRows.replaceChildren(table(['Replay', 'From', 'To', 'Status', 'Events', 'Rows', 'Error'],
    list.map((r) => [r.id, time(r.from), time(r.to), r.status, String(r.events), String(r.rows), r.error || ''])));
  drawReplays(replays.data);
  const replayMsg = h('div', { 'aria-live': 'polite' });
  add(main, h('h2', {}, 'Replays'), replayRows);
  if (isAdmin()) {
    add(main, replayForm(name, 'Load a time window again', replayMsg, (job) => {
      replayMsg.replaceChildren(h('p', { class: 'ok' }, 'Replay ' + job.id + ' started.'));
      // Followed until it ends, while this screen is open.
      const timer = setInterval(async () => {
        try {
          const list = (await api('GET', '/admin/v1/destinations/' + enc(name) + '/replays')).data;
          drawReplays(list);
          if (!list.some((r) => r.status === 'running')) clearInterval(timer);
        } catch (_) { clearInterval(timer); }
      }, 1000);
      state.cleanup.push(() => clearInterval(timer));
    }));
  }
  // Discards: values (and whole rows, column *) the warehouse could not take as they came.
  const discards = h('div', { 'aria-live': 'polite' });
  add(main, h('h2', {}, 'Latest discards'), discards);
  await attempt(discards, async () => {
    const d = await api('GET', base + '/discards?limit=50');
    discards.replaceChildren(table(['Loaded', 'Table', 'Column', 'Row id', 'Reason', 'Value'], d.data.map((x) => [
      time(x.loadedAt), x.schema + '.' + x.table, x.column, x.rowId || '', x.reason, h('pre', {}, x.value || ''),
    ])));
  });
}

/**
 * The form that replays a time window of a destination or warehouse (from an hour ago by
 * default, to now); `started` gets the replay job.
 */
function replayForm(name, title, msg, started) {
  const from = h('input', { type: 'datetime-local', required: true });
  const to = h('input', { type: 'datetime-local' });
  from.value = new Date(Date.now() - 3600e3 - new Date().getTimezoneOffset() * 60e3).toISOString().slice(0, 16);
  return h('form', { onsubmit: async (ev) => {
    ev.preventDefault();
    const body = { from: new Date(from.value).toISOString() };
    if (to.value) body.to = new Date(to.value).toISOString();
    const job = await attempt(msg, () => api('POST', '/admin/v1/destinations/' + enc(name) + '/replay', body));
    if (job) started(job);
  } }, h('h2', {}, title), h('div', { class: 'row' }, field('From', from), field('To (default: now)', to)), msg,
  h('button', { type: 'submit' }, 'Replay window'));
}

/** A sample event for the tester and the preview when the source has none yet. */
function sampleEvent() {
  return {
    type: 'track', event: 'Order Completed', userId: 'user-1', anonymousId: 'anon-1',
    messageId: 'console-' + Date.now(), timestamp: new Date().toISOString(),
    properties: { order_id: 'o-1', revenue: 42.5, currency: 'EUR', products: [{ product_id: 'p-1', sku: 'SKU-1', price: 42.5, quantity: 1 }] },
    context: { library: { name: 'sluice-console' } },
  };
}

async function recentEvents(sourcesOf) {
  const out = [];
  for (const s of sourcesOf || []) {
    try {
      const r = await api('GET', '/admin/v1/sources/' + enc(s) + '/events?limit=20');
      for (const e of r.data) out.push(e.event);
    } catch (_) { /* a source without events */ }
  }
  return out;
}

/** An event editor: a textarea, and a picker of the source's recent events. */
function eventEditor(recent, onchange) {
  const area = h('textarea', { 'aria-label': 'Event (JSON)', spellcheck: 'false' });
  area.value = pretty(recent[0] || sampleEvent());
  const pick = h('select', { 'aria-label': 'Recent events' },
    h('option', { value: '' }, recent.length ? 'Pick one of the recent events…' : 'No recent events: a sample is shown'),
    recent.map((e, i) => h('option', { value: String(i) }, (e.type || '') + ' ' + (e.event || e.name || '') + ' ' + (e.messageId || ''))));
  pick.addEventListener('change', () => {
    if (pick.value !== '') {
      area.value = pretty(recent[Number(pick.value)]);
      if (onchange) onchange();
    }
  });
  if (onchange) area.addEventListener('input', onchange);
  return { area, pick, value: () => JSON.parse(area.value) };
}

async function destination(main, name, tab) {
  const { data: d, etag } = await apiFull('GET', '/admin/v1/destinations/' + enc(name));
  d._etag = etag;
  add(main, h('h1', {}, 'Destination ' + name + ' '), h('p', { class: 'muted' }, d.type + ' · sources: ' + (d.sources || []).join(', ') + ' · ' + d.state),
    tabs('/console/destinations/' + enc(name), tab || '', [['', 'Settings'], ['mappings', 'Mappings'], ['tester', 'Event Tester'], ['delivery', 'Event Delivery']]));
  if (!tab) return destinationSettings(main, name, d);
  if (tab === 'mappings') return mappings(main, name, d);
  if (tab === 'tester') return tester(main, name, d);
  return delivery(main, name);
}

function destinationSettings(main, name, d) {
  const editable = isAdmin() && d.managed_by === 'api';
  const config = editableConfig(d);
  const area = h('textarea', { 'aria-label': 'Configuration (JSON)', spellcheck: 'false', readonly: !editable });
  area.value = pretty(config);
  const msg = h('div', { 'aria-live': 'polite' });
  add(main, 
    d.managed_by === 'file' ? h('p', { class: 'muted' }, 'Defined in sluice.toml: change it there. Shown read-only.') : null,
    d.error ? h('p', { class: 'error' }, d.error) : null,
    field('Configuration', area, 'Secrets are shown as ********; leave them so to keep them.'),
    msg,
    editable ? h('div', { class: 'row' },
      h('button', { type: 'button', onclick: async () => {
        let body;
        try { body = JSON.parse(area.value); } catch (e) { msg.replaceChildren(h('p', { class: 'error' }, 'Not JSON: ' + e.message)); return; }
        // Sent with the version it was read at: a change made meanwhile is not overwritten.
        const saved = await attempt(msg, () => apiFull('PUT', '/admin/v1/destinations/' + enc(name), body, { 'If-Match': d._etag }));
        if (saved) {
          d._etag = saved.etag || d._etag;
          msg.replaceChildren(h('p', { class: 'ok' }, 'Saved.'));
        }
      } }, 'Save'),
      h('button', { type: 'button', class: 'danger', onclick: async () => {
        if (!confirm('Remove destination ' + name + ' and its retry queue?')) return;
        const ok = await attempt(msg, () => api('DELETE', '/admin/v1/destinations/' + enc(name), undefined, { 'If-Match': d._etag }));
        if (ok !== undefined) go('/console/destinations');
      } }, 'Remove')) : null,
  );
}

/** A destination's configuration as it is edited (the API's fields that are shown only, out). */
function editableConfig(d) {
  const config = Object.assign({}, d);
  for (const k of ['name', 'managed_by', 'state', 'error', '_etag']) delete config[k];
  return config;
}

async function mappings(main, name, d) {
  const recent = await recentEvents(d.sources);
  const out = h('div', { 'aria-live': 'polite' });
  const editable = isAdmin() && d.managed_by === 'api';
  const configArea = h('textarea', { 'aria-label': 'Configuration with its mappings (JSON)', spellcheck: 'false' });
  configArea.value = pretty(editableConfig(d));
  const msg = h('div', { 'aria-live': 'polite' });
  let timer = null;
  const run = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      let event;
      let config;
      try { event = editor.value(); } catch (e) { out.replaceChildren(h('p', { class: 'error' }, 'The event is not JSON: ' + e.message)); return; }
      try { config = JSON.parse(configArea.value); } catch (e) { out.replaceChildren(h('p', { class: 'error' }, 'The configuration is not JSON: ' + e.message)); return; }
      // The preview of what is in the editor, saved or not.
      if (forms) forms.clear();
      let r;
      try {
        r = await api('POST', '/admin/v1/destinations/' + enc(name) + '/preview', { event, config });
      } catch (e) {
        out.replaceChildren(errorLine(e));
        if (forms) forms.place(e);
        return;
      }
      out.replaceChildren(...r.actions.map((a) => h('div', { class: 'card preview' },
        h('h2', {}, a.action + ' ', h('span', { class: 'badge ' + (a.matched ? 'good' : '') }, a.matched ? 'matches' : 'does not match')),
        a.skipped_reason ? h('p', { class: 'muted' }, a.skipped_reason) : null,
        a.requests.map((q) => h('div', {}, h('p', {}, h('code', {}, q.method + ' ' + q.url)),
          h('pre', {}, headerLines(q.headers)), h('pre', {}, typeof q.body === 'string' ? q.body : pretty(q.body)))))));
    }, 300);
  };
  const editor = eventEditor(recent, run);
  configArea.addEventListener('input', run);
  // The type's actions and presets, as the catalog declares them, and a form per action
  // that writes the configuration's `actions`.
  let presets = null;
  let forms = null;
  try {
    const entry = (await api('GET', '/admin/v1/catalog')).data.find((e) => e.id === d.type);
    if (entry && entry.actions.length) {
      forms = actionForms(entry, configArea, run);
      presets = h('details', {}, h('summary', {}, 'Actions and presets of ' + entry.name),
        table(['Action', 'Default subscription', 'Fields'], entry.actions.map((a) => [a.slug + ' — ' + a.title, a.defaultSubscription,
          a.fields.map((f) => f.key + (f.required ? '*' : '')).join(', ')])),
        h('p', {}, 'Presets (enabled when the configuration lists no actions): ' + (entry.presets.map((p) => p.action + ' (' + p.subscription + ')').join(', ') || 'none')));
    }
  } catch (_) { /* the catalog is optional here */ }
  add(main, 
    h('p', { class: 'muted' }, 'Each action\'s subscription and field mappings are in the configuration (`actions`; none listed: the type\'s presets). '
      + 'The preview follows what you type; nothing is sent.'),
    d.managed_by === 'file' ? h('p', { class: 'muted' }, 'Defined in sluice.toml: try changes here, then make them there.') : null,
    presets,
    forms ? forms.el : null,
    h('div', { class: 'split' },
      h('div', {}, field('Configuration', configArea), msg, editable ? h('button', { type: 'button', onclick: async () => {
        let body;
        try { body = JSON.parse(configArea.value); } catch (e) { msg.replaceChildren(h('p', { class: 'error' }, 'Not JSON: ' + e.message)); return; }
        if (forms) forms.clear();
        const saved = await attempt(msg, () => apiFull('PUT', '/admin/v1/destinations/' + enc(name), body, { 'If-Match': d._etag })
          .catch((e) => { if (forms) forms.place(e); throw e; }));
        if (saved) {
          d._etag = saved.etag || d._etag;
          msg.replaceChildren(h('p', { class: 'ok' }, 'Saved.'));
        }
      } }, 'Save mappings') : null,
      h('h2', {}, 'Event'), editor.pick, editor.area),
      h('div', {}, h('h2', {}, 'Requests'), out)),
  );
  run();
}

/**
 * One form per action of the type: on or off, its subscription (FQL), and each field's
 * mapping (a mapping-kit value as JSON; empty: the catalog's default, shown as the
 * placeholder). Every change rewrites `actions` in the configuration editor and runs the
 * preview. With no action on, the type's presets apply.
 */
function actionForms(entry, configArea, onchange) {
  const editors = [];
  let current;
  try { current = JSON.parse(configArea.value).actions || []; } catch (_) { current = []; }
  const sync = () => {
    let config;
    try { config = JSON.parse(configArea.value); } catch (_) { return; }
    const actions = [];
    for (const ed of editors) {
      if (!ed.on.checked) continue;
      const item = { action: ed.slug };
      if (ed.sub.value.trim() && ed.sub.value.trim() !== ed.defaultSub) item.subscription = ed.sub.value.trim();
      const mapping = {};
      for (const [key, input, error] of ed.fields) {
        error.textContent = '';
        if (!input.value.trim()) continue;
        try { mapping[key] = JSON.parse(input.value); } catch (e) { error.textContent = 'Not JSON (write a text in quotes): ' + e.message; return; }
      }
      if (Object.keys(mapping).length) item.mapping = mapping;
      actions.push(item);
    }
    if (actions.length) config.actions = actions;
    else delete config.actions;
    configArea.value = pretty(config);
    onchange();
  };
  const cards = entry.actions.map((a) => {
    const existing = current.find((x) => x.action === a.slug);
    const on = h('input', { type: 'checkbox', checked: !!existing && existing.enabled !== false });
    const sub = h('input', { value: (existing && existing.subscription) || a.defaultSubscription, 'aria-label': 'Subscription of ' + a.slug });
    const subError = h('span', { class: 'error', 'aria-live': 'polite' });
    const fields = a.fields.map((f) => {
      const cur = existing && existing.mapping ? existing.mapping[f.key] : undefined;
      const shown = cur === undefined ? '' : JSON.stringify(cur);
      const dflt = JSON.stringify(f.default === undefined ? null : f.default);
      let input;
      if (f.choices && f.choices.length) {
        // A picker of the catalog's choices; a mapping already there that is none of
        // them stays as an option of its own.
        const values = f.choices.map((c) => JSON.stringify(c));
        if (shown && !values.includes(shown)) values.push(shown);
        input = h('select', { 'aria-label': a.slug + ' ' + f.key },
          h('option', { value: '' }, '(default: ' + dflt + ')'),
          values.map((v) => h('option', { value: v }, v)));
        input.value = shown;
      } else {
        input = h('input', { value: shown, placeholder: dflt, 'aria-label': a.slug + ' ' + f.key });
      }
      return [f.key, input, h('div', { class: 'error', 'aria-live': 'polite' }), f];
    });
    const ed = { slug: a.slug, on, sub, subError, defaultSub: a.defaultSubscription, fields };
    editors.push(ed);
    for (const el of [on, sub, ...fields.map((x) => x[1])]) el.addEventListener('input', sync);
    for (const el of [on, ...fields.map((x) => x[1])]) el.addEventListener('change', sync);
    return h('div', { class: 'card' },
      h('h2', {}, h('label', {}, on, ' ' + a.slug + ' — ' + a.title)),
      field('Subscription', sub), subError,
      table(['Field', 'Mapping'], fields.map(([key, input, error, f]) => [key + (f.required ? ' (required)' : ''), h('div', { class: 'mapping' }, input, error)])));
  });
  const el = h('details', { open: current.length > 0 }, h('summary', {}, 'Edit each action'), cards);
  return {
    el,
    clear() {
      for (const ed of editors) {
        ed.subError.textContent = '';
        for (const [, , error] of ed.fields) error.textContent = '';
      }
    },
    /**
     * Puts an API error that names `actions[i].subscription` or
     * `actions[i].mapping.<key>` beside that input (i counts the configuration's
     * actions, which are the forms that are on, in order).
     */
    place(e) {
      const m = e.body && typeof e.body.field === 'string' && e.body.field.match(/actions\[(\d+)\]\.(subscription|mapping\.([^.[]+))/);
      if (!m) return false;
      let config;
      try { config = JSON.parse(configArea.value); } catch (_) { return false; }
      const item = (config.actions || [])[Number(m[1])];
      const ed = item && editors.find((x) => x.slug === item.action);
      if (!ed) return false;
      const target = m[2] === 'subscription' ? ed.subError : (ed.fields.find(([key]) => key === m[3]) || [])[2];
      if (!target) return false;
      target.textContent = e.message;
      el.open = true;
      return true;
    },
  };
}

async function tester(main, name, d) {
  const recent = await recentEvents(d.sources);
  const editor = eventEditor(recent);
  const out = h('div', { 'aria-live': 'polite' });
  const send = h('button', { type: 'button', disabled: !isAdmin(), onclick: async () => {
    let event;
    try { event = editor.value(); } catch (e) { out.replaceChildren(h('p', { class: 'error' }, 'Not JSON: ' + e.message)); return; }
    send.disabled = true;
    const r = await attempt(out, () => api('POST', '/admin/v1/destinations/' + enc(name) + '/test', { event }));
    send.disabled = false;
    if (!r) return;
    out.replaceChildren(h('p', {}, 'Result: ', h('strong', {}, r.result), r.reason ? ' — ' + r.reason : ''),
      ...r.calls.map((c) => h('div', { class: 'card' },
        h('p', {}, h('code', {}, c.request.method + ' ' + c.request.url), ' → ',
          c.response ? h('strong', { class: c.response.status < 300 ? 'ok' : 'error' }, String(c.response.status)) : h('span', { class: 'error' }, c.error || 'no response'),
          ' in ' + c.duration_ms + ' ms'),
        h('h2', {}, 'Request'), h('pre', {}, headerLines(c.request.headers)), h('pre', {}, c.request.body),
        c.response ? [h('h2', {}, 'Response'), h('pre', {}, headerLines(c.response.headers)), h('pre', {}, c.response.body)] : null)));
  } }, 'Send test event');
  add(main, h('p', { class: 'muted' }, 'Sends one event now, to every URL, without recording or retrying it.'),
    h('div', { class: 'split' }, h('div', {}, editor.pick, editor.area, h('div', { class: 'row' }, send)), out));
}

async function delivery(main, name) {
  const [r, dead] = await Promise.all([
    api('GET', '/admin/v1/destinations/' + enc(name) + '/delivery'),
    api('GET', '/admin/v1/destinations/' + enc(name) + '/dead-letters?limit=20'),
  ]);
  const windows = Object.entries(r.windows);
  add(main, table(['Window', 'Delivered', 'Retrying', 'Failed', 'Filtered', 'p50 ms', 'p95 ms', 'p99 ms'], windows.map(([w, s]) => [
    w, String(s.counts.delivered), String(s.counts.retrying), String(s.counts.failed), String(s.counts.filtered),
    String(s.latency_ms.p50 ?? ''), String(s.latency_ms.p95 ?? ''), String(s.latency_ms.p99 ?? ''),
  ])));
  const b = r.backlog;
  add(main, h('p', {}, 'Backlog: ' + b.log_events + ' events in the log, ' + b.retry_queue + ' retrying, ' + b.dead_letters + ' dead letters'
    + (b.paused ? '; paused by the circuit breaker' : '') + '.'));
  add(main, h('h2', {}, 'Latest errors'), table(['At', 'Message', 'Status', 'Error', 'Response'], r.latest_errors.map((e) => [
    time(e.at), e.messageId, String(e.status ?? ''), e.error || '', h('pre', {}, e.response || ''),
  ])));
  add(main, h('h2', {}, 'The last hour'), bars(r.windows['1h'].counts));
  const replayMsg = h('div', { 'aria-live': 'polite' });
  if (isAdmin()) {
    add(main, replayForm(name, 'Replay a time window', replayMsg, (job) => replayMsg.replaceChildren(
      h('p', { class: 'ok' }, 'Replay ' + job.id + ' started (offsets ' + job.start_offset + ' to ' + job.end_offset + ').'))));
  }
  const msg = h('div', { 'aria-live': 'polite' });
  add(main, h('h2', {}, 'Dead letters'), table(['Failed', 'Message', 'Status', 'Reason'], dead.data.map((x) => [
    time(x.failedAt), x.messageId, String(x.status ?? ''), x.reason,
  ])), msg, isAdmin() && dead.data.length ? h('button', { type: 'button', onclick: async () => {
    const ok = await attempt(msg, () => api('POST', '/admin/v1/destinations/' + enc(name) + '/dead-letters/replay', {}));
    if (ok) msg.replaceChildren(h('p', { class: 'ok' }, ok.replayed + ' dead letters are back in the retry queue.'));
  } }, 'Replay dead letters') : null);
}

// ---------- catalog ----------

async function catalog(main) {
  const entries = (await api('GET', '/admin/v1/catalog')).data;
  const search = h('input', { type: 'search', placeholder: 'Search destinations' });
  const grid = h('div', { class: 'cards' });
  const draw = () => {
    const q = search.value.toLowerCase();
    grid.replaceChildren(...entries.filter((e) => !q || (e.name + ' ' + e.id + ' ' + e.description).toLowerCase().includes(q)).map((e) => h('div', { class: 'card' },
      h('h2', {}, e.name), h('p', { class: 'muted' }, e.description),
      h('p', {}, 'Settings: ' + (e.settings.map((s) => s.key + (s.required ? '*' : '')).join(', ') || 'none')),
      isAdmin() ? link('/console/catalog/' + enc(e.id), 'Add ' + e.name, { class: 'button' }) : null)));
  };
  search.addEventListener('input', draw);
  add(main, h('h1', {}, 'Catalog'), field('Search', search), grid);
  draw();
}

async function addDestination(main, type) {
  const entries = (await api('GET', '/admin/v1/catalog')).data;
  const entry = entries.find((e) => e.id === type);
  if (!entry) throw new ApiError(404, { message: 'no catalog entry ' + type });
  const sources = (await api('GET', '/admin/v1/sources')).data;
  const nameIn = h('input', { required: true, pattern: '[A-Za-z0-9_\\-]{1,64}' });
  const enabled = h('input', { type: 'checkbox', checked: true });
  const privateNets = h('input', { type: 'checkbox' });
  const picks = sources.map((s) => h('input', { type: 'checkbox', value: s.name, 'aria-label': 'Source ' + s.name }));
  const inputs = {};
  const errors = {};
  const settingFields = entry.settings.map((s) => {
    let input;
    if (s.type === 'boolean') input = h('input', { type: 'checkbox', checked: s.default === true });
    else if (s.type === 'object' || s.multiple || s.type === 'array') input = h('textarea', { spellcheck: 'false' });
    else input = h('input', { type: s.secret ? 'password' : (s.type === 'number' || s.type === 'integer' ? 'number' : 'text'), autocomplete: 'off' });
    if (s.default !== undefined && s.default !== null && input.type !== 'checkbox') input.value = typeof s.default === 'string' ? s.default : JSON.stringify(s.default);
    if (s.required) input.required = true;
    inputs[s.key] = { s, input };
    errors[s.key] = h('div', { class: 'error', 'aria-live': 'polite' });
    return h('div', {}, field(s.key + (s.required ? ' (required)' : ''), input, s.description), errors[s.key]);
  });
  const msg = h('div', { 'aria-live': 'polite' });
  const form = h('form', { onsubmit: async (ev) => {
    ev.preventDefault();
    for (const e of Object.values(errors)) e.replaceChildren();
    const settings = {};
    for (const [k, { s, input }] of Object.entries(inputs)) {
      if (input.type === 'checkbox') { settings[k] = input.checked; continue; }
      if (input.value === '') continue;
      if (input.tagName === 'TEXTAREA') {
        try { settings[k] = JSON.parse(input.value); } catch (e) { errors[k].textContent = 'Not JSON: ' + e.message; return; }
      } else if (s.type === 'number' || s.type === 'integer') settings[k] = Number(input.value);
      else settings[k] = input.value;
    }
    const body = { type: entry.id, sources: picks.filter((p) => p.checked).map((p) => p.value), enabled: enabled.checked, settings };
    if (privateNets.checked) body.allow_private_networks = true;
    try {
      await api('PUT', '/admin/v1/destinations/' + enc(nameIn.value), body);
      go('/console/destinations/' + enc(nameIn.value));
    } catch (e) {
      const f = e.body && e.body.field ? String(e.body.field).replace(/^settings\./, '').split(/[.[]/)[0] : null;
      if (f && errors[f]) errors[f].replaceChildren(errorLine(e));
      else msg.replaceChildren(errorLine(e));
    }
  } },
  h('h1', {}, 'Add ' + entry.name),
  field('Name', nameIn, 'Letters, digits, - and _.'),
  h('fieldset', {}, h('legend', {}, 'Sources'), picks.map((p) => h('label', {}, p, ' ' + p.value))),
  h('label', {}, enabled, ' Enable destination'),
  h('label', {}, privateNets, ' Allow private networks (a partner on this machine or your network; off by default: requests to private addresses are refused)'),
  h('h2', {}, 'Connection settings'),
  settingFields,
  msg,
  h('button', { type: 'submit' }, 'Save'));
  add(main, form);
}

// ---------- event search, profiles, privacy ----------

async function eventSearch(main) {
  const id = h('input', { type: 'search', placeholder: 'messageId' });
  const user = h('input', { type: 'search', placeholder: 'userId or anonymousId' });
  const out = h('div', { 'aria-live': 'polite' });
  const params = new URLSearchParams(location.search);
  const find = async (messageId, since) => {
    const q = since ? '?since=' + enc(since) : '';
    const r = await attempt(out, () => api('GET', '/admin/v1/events/' + enc(messageId) + q));
    if (!r) return;
    out.replaceChildren(
      h('h2', {}, 'Stored'), r.stored ? h('p', {}, 'Source ' + r.stored.source + ', offset ' + r.stored.offset + ', received ' + time(r.stored.receivedAt)) : h('p', { class: 'muted' }, 'Not in the log any more.'),
      r.stored ? h('pre', {}, pretty(r.stored.event)) : null,
      h('h2', {}, 'Deliveries'), table(['Destination', 'Outcome', 'Attempts', 'Status', 'Latency', 'Detail'], r.deliveries.map((d) => [
        link('/console/destinations/' + enc(d.destination) + '/delivery', d.destination), d.outcome, String(d.attempts), String(d.status ?? ''),
        d.latency_ms === null || d.latency_ms === undefined ? '' : d.latency_ms + ' ms', d.detail || '',
      ])));
  };
  // A user's latest events come from the profile store (the index by user), each a link
  // to its journey.
  const findUser = async (who) => {
    const base = '/v1/spaces/default/collections/users/profiles/';
    const r = await attempt(out, async () => {
      try {
        return await api('GET', base + enc('user_id:' + who) + '/events?limit=50');
      } catch (e) {
        if (e.status !== 404) throw e;
        return api('GET', base + enc('anonymous_id:' + who) + '/events?limit=50');
      }
    });
    if (!r) return;
    out.replaceChildren(h('h2', {}, 'Latest events of ' + who),
      table(['Time', 'Type', 'Event', 'Message id'], (r.data || []).map((e) => [
        time(e.timestamp), e.type, e.event || '',
        link('/console/events?id=' + enc(e.message_id) + (e.timestamp ? '&since=' + enc(e.timestamp) : ''), e.message_id)])),
      h('p', { class: 'muted' }, 'From the profile store: events of users it knows, newest first.'));
  };
  add(main, h('h1', {}, 'Event search'),
    h('form', { class: 'row', onsubmit: (ev) => {
      ev.preventDefault();
      if (!id.value) return;
      history.replaceState(null, '', '/console/events?id=' + enc(id.value));
      find(id.value);
    } }, field('Message id', id), h('button', { type: 'submit' }, 'Find event')),
    h('form', { class: 'row', onsubmit: (ev) => {
      ev.preventDefault();
      if (!user.value) return;
      history.replaceState(null, '', '/console/events?user=' + enc(user.value));
      findUser(user.value);
    } }, field('User', user), h('button', { type: 'submit' }, 'Find their events')),
    out);
  if (params.get('id')) {
    id.value = params.get('id');
    // An event's journey is searched from shortly before its time.
    const since = params.get('since') ? new Date(Date.parse(params.get('since')) - 3600e3) : null;
    find(params.get('id'), since && !isNaN(since) ? since.toISOString() : null);
  } else if (params.get('user')) {
    user.value = params.get('user');
    findUser(user.value);
  }
}

async function profiles(main) {
  const type = h('select', {}, ['user_id', 'anonymous_id', 'email', 'phone', 'group_id'].map((t) => h('option', { value: t }, t)));
  const value = h('input', { type: 'search', required: true });
  const out = h('div', { 'aria-live': 'polite' });
  const params = new URLSearchParams(location.search);
  const base = (space, id) => '/v1/spaces/' + enc(space) + '/collections/users/profiles/' + enc(id);
  const find = async () => {
    const id = type.value + ':' + value.value;
    const space = 'default';
    const r = await attempt(out, async () => {
      const [traits, ids, events, links] = await Promise.all(['traits', 'external_ids', 'events', 'links']
        .map((what) => api('GET', base(space, id) + '/' + what + (what === 'events' ? '?limit=20' : ''))));
      return { traits, ids, events, links };
    });
    if (!r) return;
    const userIds = r.ids.data.filter((x) => x.type === 'user_id').map((x) => x.id);
    const anonIds = r.ids.data.filter((x) => x.type === 'anonymous_id').map((x) => x.id);
    const msg = h('div', { 'aria-live': 'polite' });
    out.replaceChildren(
      h('h2', {}, 'Traits'), table(['Trait', 'Value'], Object.entries(r.traits.traits || {}).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)])),
      h('h2', {}, 'Identities'), table(['Type', 'Id', 'Source', 'First seen'], r.ids.data.map((x) => [x.type, x.id, x.source_id || '', time(x.created_at)])),
      h('h2', {}, 'Latest events'), table(['Time', 'Type', 'Event', 'Message id'], (r.events.data || []).map((e) => [
        time(e.timestamp), e.type, e.event || '', link('/console/events?id=' + enc(e.message_id), e.message_id)])),
      h('h2', {}, 'Accounts'), table(['Account'], (r.links.data || []).map((l) => [JSON.stringify(l.external_ids || l)])),
      isAdmin() ? h('div', {}, h('h2', {}, 'Delete and suppress'), msg, h('button', { type: 'button', class: 'danger', onclick: async () => {
        const subjectType = userIds.length ? 'USER_ID' : 'ANONYMOUS_ID';
        const subjectIds = userIds.length ? userIds : anonIds;
        if (!confirm('Delete every event, trait and identity of this user, in Sluice and its destinations, and drop its future events?')) return;
        const ok = await attempt(msg, () => api('POST', '/admin/v1/regulations', { regulationType: 'SUPPRESS_WITH_DELETE', subjectType, subjectIds }));
        if (ok) msg.replaceChildren(h('p', { class: 'ok' }, 'Regulation ' + ok.data.regulateId + ' submitted: follow it under '), link('/console/privacy', 'Privacy'));
      } }, 'Delete and suppress this user')) : null,
    );
  };
  add(main, h('h1', {}, 'Profiles'), h('form', { class: 'row', onsubmit: (ev) => {
    ev.preventDefault();
    history.replaceState(null, '', '/console/profiles?type=' + enc(type.value) + '&id=' + enc(value.value));
    find();
  } }, field('Identifier type', type), field('Identifier', value), h('button', { type: 'submit' }, 'Look up')), out);
  if (params.get('id')) {
    type.value = params.get('type') || 'user_id';
    value.value = params.get('id');
    find();
  }
}

async function privacy(main) {
  const [regs, sup] = await Promise.all([api('GET', '/admin/v1/regulations'), api('GET', '/admin/v1/suppressions')]);
  add(main, h('h1', {}, 'Privacy'));
  if (isAdmin()) {
    const type = h('select', {}, ['SUPPRESS_WITH_DELETE', 'DELETE_ONLY', 'SUPPRESS_ONLY', 'UNSUPPRESS', 'DELETE_INTERNAL', 'SUPPRESS_WITH_DELETE_INTERNAL'].map((t) => h('option', { value: t }, t)));
    const subject = h('select', {}, h('option', { value: 'USER_ID' }, 'user id'), h('option', { value: 'ANONYMOUS_ID' }, 'anonymous id'));
    const ids = h('input', { required: true, placeholder: 'one id, or several separated by commas' });
    const msg = h('div', { 'aria-live': 'polite' });
    add(main, h('form', { onsubmit: async (ev) => {
      ev.preventDefault();
      const body = { regulationType: type.value, subjectType: subject.value, subjectIds: ids.value.split(',').map((s) => s.trim()).filter(Boolean) };
      if (!confirm(type.value + ' for ' + body.subjectIds.length + ' subject(s)?')) return;
      const r = await attempt(msg, () => api('POST', '/admin/v1/regulations', body));
      if (r) go('/console/privacy', true);
    } }, h('h2', {}, 'Delete and suppress a user'), h('div', { class: 'row' }, field('Regulation', type), field('Subject', subject), field('Ids', ids)), msg, h('button', { type: 'submit', class: 'danger' }, 'Submit regulation')));
  }
  add(main, h('h2', {}, 'Regulations'), table(['Id', 'Type', 'Subjects', 'Status', 'Created', 'Finished'], regs.data.regulations.slice().reverse().map((r) => [
    r.id, r.regulationType, r.subjectType + ' × ' + r.subjectIds.length, h('span', { class: 'badge ' + (r.overallStatus === 'FINISHED' ? 'good' : (r.overallStatus === 'FAILED' ? 'bad' : '')) }, r.overallStatus),
    time(r.createdAt), time(r.finishedAt),
  ])));
  add(main, h('h2', {}, 'Suppressed subjects'), h('p', {}, (sup.data.userIds.length + sup.data.anonymousIds.length) + ' suppressed (shown hashed).'));
}

// ---------- access ----------

async function access(main) {
  const [users, audit] = await Promise.all([api('GET', '/admin/v1/users'), api('GET', '/admin/v1/audit?limit=100')]);
  add(main, h('h1', {}, 'Access'));
  const msg = h('div', { 'aria-live': 'polite' });
  add(main, h('h2', {}, 'Users'), table(['User', 'Role', 'Changed', ''], users.data.map((u) => [
    u.name, u.role, time(u.updatedAt),
    isAdmin() && u.name !== state.me.user ? h('button', { type: 'button', class: 'danger', onclick: async () => {
      if (!confirm('Delete user ' + u.name + '?')) return;
      const ok = await attempt(msg, () => api('DELETE', '/admin/v1/users/' + enc(u.name) + '?version=' + u.version));
      if (ok !== undefined) go('/console/access', true);
    } }, 'Delete') : '',
  ])), msg);
  if (isAdmin()) {
    const name = h('input', { required: true, autocomplete: 'off' });
    const role = h('select', {}, h('option', { value: 'viewer' }, 'viewer'), h('option', { value: 'admin' }, 'admin'));
    const pass = h('input', { type: 'password', required: true, autocomplete: 'new-password', minlength: '12' });
    const out = h('div', { 'aria-live': 'polite' });
    add(main, h('form', { onsubmit: async (ev) => {
      ev.preventDefault();
      const existing = users.data.find((u) => u.name === name.value);
      const body = existing ? { role: role.value, password: pass.value, version: existing.version } : { role: role.value, password: pass.value };
      const r = await attempt(out, () => api('PUT', '/admin/v1/users/' + enc(name.value), body));
      if (r) go('/console/access', true);
    } }, h('h2', {}, 'Add a user, or set a user\'s role and password'), h('div', { class: 'row' }, field('User name', name), field('Role', role), field('Password', pass, 'At least 12 characters.')), out, h('button', { type: 'submit' }, 'Save user')));
  }
  add(main, h('h2', {}, 'Audit trail'), table(['When', 'Who', 'What', 'Before', 'After'], audit.data.map((e) => [
    time(e.at), e.actor, e.action + ' ' + e.kind + ' ' + e.name,
    e.before ? h('pre', {}, pretty(e.before)) : '', e.after ? h('pre', {}, pretty(e.after)) : '',
  ])));
}

document.addEventListener('DOMContentLoaded', render);
