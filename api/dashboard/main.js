// PulseBoard's dashboard: every value from the API is rendered with textContent or
// attributes set through the DOM, never parsed as HTML (payloads are attacker-controlled).
import { api, refresh, signIn, signOut, setSignedOutHandler, token } from './api.js';
import { LiveFeed } from './live.js';
import { drawChart } from './chart.js';

const $ = (id) => document.getElementById(id);
const LIVE_MAX = 500;
// Event ids already shown or queued in the live list (backfill, live, catch-up), so an
// event that arrives twice is shown once; the oldest ids are forgotten past SEEN_MAX.
const SEEN_MAX = 5000;
// The live list opens with the latest stored events (backfill); after a reconnect the
// events received from RESUME_MARGIN_MS before the newest one seen are fetched again
// (duplicates dropped by id), at most RESUME_MAX of them.
const BACKFILL = 50;
const RESUME_MAX = 1000;
const RESUME_MARGIN_MS = 5000;

const state = {
  user: null, projects: [], project: null, tab: 'live', feed: null,
  paused: false, pending: [], received: 0, skipped: 0, frame: 0,
  seen: new Set(), newestMs: 0, holding: 0, loaded: 0,
  cursors: [], nextCursor: null, alertsCursor: null,
};
const eventOf = new WeakMap();

function h(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  return e;
}

function flash(msg, info) {
  const f = $('flash');
  f.textContent = msg;
  f.classList.toggle('info', !!info);
  f.hidden = !msg;
}
function clearFlash() { flash(''); }

async function guarded(fn) {
  try { clearFlash(); return await fn(); } catch (e) { flash(e.message || String(e)); return undefined; }
}

function fmtTime(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleTimeString(undefined, { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}
function fmtDate(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString(undefined, { hour12: false });
}
function preview(v) {
  let s;
  try { s = JSON.stringify(v); } catch { s = String(v); }
  return s && s.length > 160 ? s.slice(0, 160) + '…' : (s || '');
}

function confirmDialog(text, okLabel) {
  const d = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  $('confirm-cancel').focus();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

// ---- account ----
function showSignedOut(msg) {
  stopFeed('signed out');
  state.user = null; state.project = null; state.projects = [];
  $('app').hidden = true; $('who').hidden = true; $('auth').hidden = false;
  if (msg) flash(msg);
}

function showSignedIn(user) {
  state.user = user;
  $('who-name').textContent = user.name ? `${user.name} (${user.email})` : user.email;
  $('who').hidden = false; $('auth').hidden = true; $('app').hidden = false;
  clearFlash();
  return loadProjects();
}

setSignedOutHandler((msg) => showSignedOut(msg));

function formFields(form) { return Object.fromEntries(new FormData(form).entries()); }

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(async () => showSignedIn(await signIn('login', formFields(e.target))));
});
$('register-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(async () => showSignedIn(await signIn('register', formFields(e.target))));
});
$('logout').addEventListener('click', () => guarded(async () => {
  stopFeed('logged out');
  await signOut();
  showSignedOut();
  flash('You are logged out.', true);
}));

// ---- projects ----
async function loadProjects(selectId) {
  const b = await api('GET', '/projects');
  state.projects = Array.isArray(b.data) ? b.data : [];
  renderProjects();
  const want = selectId || (state.project && state.project.id);
  const p = state.projects.find((x) => x.id === want) || state.projects[0];
  if (!p) {
    stopFeed('no project');
    state.project = null;
    $('project').hidden = true; $('detail').hidden = true;
    return;
  }
  selectProject(p);
}

function renderProjects() {
  const list = $('project-list');
  list.replaceChildren(...state.projects.map((p) => {
    const count = p._count && Number.isFinite(p._count.events) ? p._count.events : 0;
    const b = h('button', { type: 'button', 'aria-pressed': String(!!state.project && state.project.id === p.id), dataset: { id: p.id },
      onclick: () => selectProject(p) },
    h('span', { class: 'pname' }, p.name), h('span', { class: 'count' }, `${count.toLocaleString()} events`));
    return h('li', {}, b);
  }));
  if (!state.projects.length) list.append(h('li', { class: 'muted' }, 'No projects yet: create one below.'));
}

// The event counts move as events arrive: the list is refetched now and then (the open
// project's forms are left alone).
async function refreshCounts() {
  if (!state.user || document.hidden) return;
  try {
    const b = await api('GET', '/projects');
    if (!state.user || !Array.isArray(b.data)) return;
    state.projects = b.data;
    if (state.project) state.project = state.projects.find((x) => x.id === state.project.id) || state.project;
    renderProjects();
  } catch { /* the next round retries; errors of user actions are shown where they happen */ }
}
setInterval(refreshCounts, 10000);

$('create-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(async () => {
    const name = $('create-name').value.trim();
    const b = await api('POST', '/projects', { name });
    $('create-name').value = '';
    await loadProjects(b.data.id);
    flash(`Project “${b.data.name}” created. Send it events with the snippet in Settings.`, true);
  });
});

// selectProject shows p; its live feed (re)starts only when the project changes.
function selectProject(p) {
  const changed = !state.project || state.project.id !== p.id;
  state.project = p;
  renderProjects();
  $('project').hidden = false;
  $('project-title').textContent = p.name;
  renderSettings(p);
  if (changed) {
    $('detail').hidden = true;
    clearLive();
    startFeed();
    state.cursors = []; state.nextCursor = null;
    $('explore-rows').replaceChildren(); $('explore-status').textContent = '';
    if (state.tab !== 'live') showTab(state.tab);
  }
}

// ---- tabs ----
function showTab(tab) {
  state.tab = tab;
  for (const b of document.querySelectorAll('.tabs button')) b.setAttribute('aria-pressed', String(b.dataset.tab === tab));
  for (const name of ['live', 'explore', 'charts', 'alerts', 'settings']) $('tab-' + name).hidden = name !== tab;
  if (tab === 'explore') guarded(() => explore());
  if (tab === 'charts') guarded(() => loadCharts());
  if (tab !== 'live') refreshCounts();
  if (tab === 'alerts') guarded(() => loadAlerts(false));
}
for (const b of document.querySelectorAll('.tabs button')) b.addEventListener('click', () => showTab(b.dataset.tab));

// ---- live ----
function setLiveState(s, detail) {
  const el = $('live-state');
  const label = s === 'live' && state.paused ? 'paused' : s;
  el.dataset.state = label;
  el.textContent = label;
  $('live-transport').textContent = detail ? `(${detail})` : '';
}

// remember records an event id; false when it was seen already (not to be shown again).
function remember(ev) {
  if (state.seen.has(ev.id)) return false;
  state.seen.add(ev.id);
  if (state.seen.size > SEEN_MAX) state.seen.delete(state.seen.values().next().value);
  const t = Date.parse(ev.receivedAt);
  if (t > state.newestMs) state.newestMs = t;
  return true;
}

function capPending() {
  if (state.pending.length > LIVE_MAX) { state.skipped += state.pending.length - LIVE_MAX; state.pending.splice(0, state.pending.length - LIVE_MAX); }
}

function showMissed(text) {
  const n = $('live-notice');
  n.textContent = text;
  n.hidden = false;
}

// catchUp fetches stored events (the latest BACKFILL when the view opens; after a
// reconnect, those received since shortly before the newest one seen) and queues the
// unseen ones before the live events that arrived meanwhile, which wait for it: the
// list stays newest first. When the API cannot say it returned everything, the page
// says events may be missing.
async function catchUp(feed, resume) {
  state.holding++;
  const q = new URLSearchParams({ limit: String(resume ? RESUME_MAX : BACKFILL) });
  if (resume && state.newestMs) q.set('since', new Date(state.newestMs - RESUME_MARGIN_MS).toISOString());
  let got = [];
  let complete = true;
  try {
    const b = await api('GET', `/projects/${encodeURIComponent(feed.projectId)}/events?${q}`);
    got = Array.isArray(b.data) ? b.data : [];
    if (resume && b.nextCursor) complete = false;
  } catch {
    complete = false;
  } finally {
    state.holding--;
  }
  if (state.feed !== feed) return;
  const fresh = [];
  for (let i = got.length - 1; i >= 0; i--) { // the API answers newest first
    const ev = got[i];
    if (ev && typeof ev.id === 'string' && remember(ev)) fresh.push(ev);
  }
  if (resume) state.received += fresh.length; else state.loaded += fresh.length;
  state.pending = fresh.concat(state.pending);
  capPending();
  if (!complete) {
    showMissed(resume
      ? 'The live stream was interrupted and may have missed events. Explore shows every stored event.'
      : 'The latest stored events could not be loaded. Explore shows every stored event.');
  }
  if (!state.paused) scheduleFlush();
  updateCount();
}

function startFeed() {
  stopFeed();
  if (!state.project || !token()) return;
  state.seen = new Set(); state.newestMs = 0; state.loaded = 0;
  const feed = new LiveFeed(state.project.id, {
    onEvent: (ev) => {
      if (!remember(ev)) return;
      state.received++;
      state.pending.push(ev);
      capPending();
      if (!state.paused) scheduleFlush();
    },
    onState: (s, detail) => { if (state.feed === feed) setLiveState(s, detail); },
    onResync: (missed) => {
      showMissed(missed > 0
        ? `The stream skipped ${missed} events (the page could not keep up). Explore shows every stored event.`
        : 'The stream may have missed events (the server reconnected). Explore shows every stored event.');
    },
    onReconnect: () => { if (state.feed === feed) catchUp(feed, true); },
  });
  state.feed = feed;
  feed.start();
  catchUp(feed, false);
}

function stopFeed(reason) {
  if (state.feed) { const f = state.feed; state.feed = null; f.stop(reason); setLiveState('ended', reason); }
  state.pending = [];
}

function clearLive() {
  $('live-list').replaceChildren();
  state.pending = []; state.received = 0; state.skipped = 0; state.loaded = 0;
  updateCount();
  $('live-notice').hidden = true;
}

function updateCount() {
  $('live-count').textContent = `${state.received.toLocaleString()} received`
    + (state.loaded ? `, ${state.loaded.toLocaleString()} loaded from storage` : '')
    + (state.skipped ? `, ${state.skipped.toLocaleString()} not shown` : '');
}

function scheduleFlush() {
  if (!state.frame) state.frame = requestAnimationFrame(flushLive);
}

function eventRow(ev) {
  const li = h('li', { tabindex: '0', dataset: { id: String(ev.id), name: String(ev.name), type: String(ev.type) } },
    h('span', {}, fmtTime(ev.receivedAt || ev.timestamp)),
    h('span', { class: 't-' + (ev.type === 'error' || ev.type === 'metric' ? ev.type : 'event') }, ev.type),
    h('span', { class: 'nm' }, ev.name),
    h('span', { class: 'pl' }, preview(ev.payload)));
  eventOf.set(li, ev);
  return li;
}

// One DOM update per frame, however many events arrived: newest first, at most LIVE_MAX.
function flushLive() {
  state.frame = 0;
  if (state.paused || state.holding || !state.pending.length) return;
  const batch = state.pending;
  state.pending = [];
  const list = $('live-list');
  const frag = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0 && frag.childNodes.length < LIVE_MAX; i--) frag.append(eventRow(batch[i]));
  list.prepend(frag);
  while (list.childElementCount > LIVE_MAX) list.lastElementChild.remove();
  updateCount();
}

$('live-pause').addEventListener('click', (e) => {
  state.paused = !state.paused;
  e.target.setAttribute('aria-pressed', String(state.paused));
  e.target.textContent = state.paused ? 'Resume' : 'Pause';
  const s = $('live-state');
  if (s.dataset.state === 'live' || s.dataset.state === 'paused') setLiveState('live', $('live-transport').textContent.slice(1, -1));
  if (!state.paused) scheduleFlush();
});
$('live-clear').addEventListener('click', clearLive);

function openFromList(e) {
  const li = e.target.closest('li');
  if (!li) return;
  const ev = eventOf.get(li);
  if (ev && (e.type === 'click' || e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); showDetail(ev); }
}
$('live-list').addEventListener('click', openFromList);
$('live-list').addEventListener('keydown', openFromList);

// ---- detail ----
function showDetail(ev) {
  const d = $('detail');
  $('detail-title').textContent = ev.name;
  const meta = $('detail-meta');
  meta.replaceChildren();
  for (const [k, v] of [['Type', ev.type], ['Id', ev.id], ['Timestamp', ev.timestamp], ['Received', ev.receivedAt]]) {
    meta.append(h('dt', {}, k), h('dd', {}, v));
  }
  $('detail-payload').textContent = JSON.stringify(ev.payload, null, 2);
  $('detail-context').textContent = ev.context === undefined ? '(none)' : JSON.stringify(ev.context, null, 2);
  d.hidden = false;
  d.focus();
}
$('detail-close').addEventListener('click', () => { $('detail').hidden = true; });

// ---- explore ----
function isoFromLocal(v) { return v ? new Date(v).toISOString() : ''; }

async function explore(cursor) {
  if (!state.project) return;
  const q = new URLSearchParams();
  const f = formFields($('explore-form'));
  if (f.type) q.set('type', f.type);
  if (f.name) q.set('name', f.name);
  if (f.since) q.set('since', isoFromLocal(f.since));
  if (f.until) q.set('until', isoFromLocal(f.until));
  q.set('limit', f.limit || '50');
  if (cursor) q.set('cursor', cursor);
  $('explore-status').textContent = 'Loading…';
  const b = await api('GET', `/projects/${encodeURIComponent(state.project.id)}/events?${q}`);
  const rows = (b.data || []).map((ev) => {
    const open = h('button', { type: 'button', onclick: () => showDetail(ev), 'aria-label': 'Open event ' + ev.name }, ev.name);
    const tr = h('tr', { dataset: { name: String(ev.name) } },
      h('td', {}, fmtDate(ev.receivedAt)),
      h('td', { class: 't-' + (ev.type === 'error' || ev.type === 'metric' ? ev.type : 'event') }, ev.type),
      h('td', {}, open),
      h('td', { class: 'pl' }, preview(ev.payload)));
    return tr;
  });
  $('explore-rows').replaceChildren(...rows);
  state.nextCursor = b.nextCursor || null;
  $('explore-next').disabled = !state.nextCursor;
  $('explore-first').disabled = !cursor;
  $('explore-status').textContent = rows.length ? `${rows.length} events${state.nextCursor ? ' (more below: Older)' : ''}` : 'No events match.';
}
$('explore-form').addEventListener('submit', (e) => { e.preventDefault(); guarded(() => explore()); });
$('explore-next').addEventListener('click', () => guarded(() => explore(state.nextCursor)));
$('explore-first').addEventListener('click', () => guarded(() => explore()));

// ---- charts ----
const CHART_RANGE_MS = { '1m': 3600e3, '1h': 24 * 3600e3, '1d': 30 * 24 * 3600e3 };
async function loadCharts() {
  if (!state.project) return;
  const id = encodeURIComponent(state.project.id);
  const interval = $('c-interval').value;
  // The top names cover the chart's range (the stats endpoint's default for the interval).
  const since = new Date(Date.now() - CHART_RANGE_MS[interval]).toISOString();
  const [stats, errs] = await Promise.all([
    api('GET', `/projects/${id}/stats?interval=${interval}`),
    api('GET', `/projects/${id}/stats/errors?limit=10&since=${encodeURIComponent(since)}`),
  ]);
  const series = (stats.data && stats.data.series) || [];
  const r = drawChart($('chart'), series, interval);
  $('chart-summary').replaceChildren(
    h('span', { class: 'legend-event' }, `■ ${r.total.toLocaleString()} events`), ' · ',
    h('span', { class: 'legend-error' }, `— ${r.errors.toLocaleString()} errors`), ` in ${series.length} buckets`);
  const top = (errs.data && errs.data.names) || [];
  $('top-errors').replaceChildren(...top.map((t) => h('li', {}, h('strong', {}, t.count.toLocaleString()), ' ', t.name)));
  const counted = (errs.data && errs.data.counted) || 0;
  $('top-note').textContent = !top.length ? 'No errors in this range.'
    : errs.data.complete ? `Among ${counted.toLocaleString()} errors in this range.`
      : `Among the latest ${counted.toLocaleString()} errors of this range.`;
}
$('c-refresh').addEventListener('click', () => guarded(() => loadCharts()));
$('c-interval').addEventListener('change', () => guarded(() => loadCharts()));

// ---- alerts ----
async function loadAlerts(more) {
  if (!state.project) return;
  const q = new URLSearchParams({ limit: '50' });
  if (more && state.alertsCursor) q.set('cursor', state.alertsCursor);
  const b = await api('GET', `/projects/${encodeURIComponent(state.project.id)}/alerts?${q}`);
  const rows = (b.data || []).map((a) => h('tr', {},
    h('td', {}, fmtDate(a.createdAt)), h('td', {}, a.kind),
    h('td', {}, a.state + (a.sentAt ? ` (${fmtDate(a.sentAt)})` : '')),
    h('td', {}, `${a.errorCount} / ${a.threshold}`),
    h('td', {}, `${fmtDate(a.windowStart)} – ${fmtDate(a.windowEnd)}`),
    h('td', {}, a.attempts), h('td', {}, a.lastError || ''),
    // One line per notification channel (text only), e.g. "webhook https://x.io/…: failed, HTTP 500".
    h('td', {}, ...(a.deliveries || []).map((d) => h('div', {},
      `${d.kind} ${d.target}: ${d.state}${d.responseStatus ? `, HTTP ${d.responseStatus}` : ''}${d.channelId ? '' : ' (channel deleted)'}`)))));
  if (more) $('alert-rows').append(...rows); else $('alert-rows').replaceChildren(...rows);
  state.alertsCursor = b.nextCursor || null;
  $('alerts-more').disabled = !state.alertsCursor;
  $('alerts-status').textContent = $('alert-rows').childElementCount ? '' : 'No alerts yet.';
}
$('alerts-more').addEventListener('click', () => guarded(() => loadAlerts(true)));

// ---- settings ----
function renderSettings(p) {
  const origin = location.origin;
  $('api-key').textContent = p.apiKey;
  const body = JSON.stringify({ apiKey: p.apiKey, type: 'event', name: 'signup', payload: { plan: 'pro' } });
  $('sn-curl').textContent = `curl -s ${origin}/ingest -H 'Content-Type: application/json' \\\n  -d '${body.replaceAll("'", "'\\''")}'`;
  $('sn-go').textContent = `// import "github.com/pulseboard/pulseboard/pkg/client"\nc, _ := client.New(client.Options{Endpoint: ${JSON.stringify(origin)}, APIKey: ${JSON.stringify(p.apiKey)}})\n_ = c.Enqueue(client.Event{Type: client.TypeEvent, Name: "signup", Payload: map[string]any{"plan": "pro"}})\n_ = c.Close(ctx) // flushes`;
  $('sn-rn').textContent = `PulseBoard.init({\n  apiKey: ${JSON.stringify(p.apiKey)},\n  host: ${JSON.stringify(origin)},\n});`;
  $('rename-name').value = p.name;
  const s = p.settings || {};
  $('s-threshold').value = s.alertThreshold ?? '';
  $('s-window').value = s.alertWindowSeconds ?? '';
  $('s-cooldown').value = s.alertCooldownSeconds ?? '';
  $('s-retention').value = s.retentionDays ?? '';
  $('s-ratelimit').value = s.rateLimit ?? '';
  $('s-enabled').checked = s.alertsEnabled !== false;
}

for (const b of document.querySelectorAll('[data-copy]')) {
  b.addEventListener('click', async () => {
    const text = $(b.dataset.copy).textContent;
    const label = b.textContent;
    try {
      await navigator.clipboard.writeText(text);
      b.textContent = 'Copied';
    } catch {
      const r = document.createRange();
      r.selectNodeContents($(b.dataset.copy));
      getSelection().removeAllRanges(); getSelection().addRange(r);
      b.textContent = 'Selected: press Ctrl+C';
    }
    setTimeout(() => { b.textContent = label; }, 1500);
  });
}

async function patchProject(body, what) {
  const b = await api('PATCH', `/projects/${encodeURIComponent(state.project.id)}`, body);
  state.project = b.data;
  await loadProjects(b.data.id);
  flash(what, true);
}
$('rename-form').addEventListener('submit', (e) => {
  e.preventDefault();
  guarded(() => patchProject({ name: $('rename-name').value.trim() }, 'Project renamed.'));
});
$('settings-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const num = (id) => ($(id).value === '' ? null : Number($(id).value));
  guarded(() => patchProject({ settings: {
    alertThreshold: num('s-threshold'), alertWindowSeconds: num('s-window'), alertCooldownSeconds: num('s-cooldown'),
    retentionDays: num('s-retention'), rateLimit: num('s-ratelimit'), alertsEnabled: $('s-enabled').checked,
  } }, 'Settings saved.'));
});
$('rotate').addEventListener('click', async () => {
  const p = state.project;
  if (!await confirmDialog(`Issue a new API key for “${p.name}”? The current key stops working at once.`, 'Rotate key')) return;
  guarded(async () => {
    const b = await api('POST', `/projects/${encodeURIComponent(p.id)}/rotate-key`);
    await loadProjects(b.data.id);
    flash('A new API key is in use; the old one no longer works.', true);
  });
});
$('delete').addEventListener('click', async () => {
  const p = state.project;
  if (!await confirmDialog(`Delete “${p.name}” with all its events, rollups and alerts? This cannot be undone.`, 'Delete project')) return;
  guarded(async () => {
    await api('DELETE', `/projects/${encodeURIComponent(p.id)}`);
    stopFeed('project deleted');
    state.project = null;
    await loadProjects();
    flash(`Project “${p.name}” deleted.`, true);
  });
});

// ---- boot ----
(async () => {
  const user = await refresh();
  $('boot').hidden = true;
  if (user) await guarded(() => showSignedIn(user));
  else showSignedOut();
  document.body.dataset.ready = 'true';
  performance.mark('pulseboard-ready');
})();
