// Drives Debian's headless Chromium with playwright-core through the dashboard the api
// serves at / (cmd/pulseboard/dashboard_browser_test.go). argv: api URL, ingestor URL,
// user data dir, artifacts dir. stdout, one JSON line each: {"step":name,...details}
// after every step that passed, {"metric":name,"value":…} for the figures, then
// {"done":true}; {"error":…} on the first failure (the Go test fails on it).
const { chromium } = require('playwright-core');
const path = require('path');

const [apiURL, ingestURL, userDataDir, artifacts] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function check(cond, msg) { if (!cond) throw new Error('check failed: ' + msg); }

async function ingest(url, key, ev) {
  const res = await fetch(url + '/ingest', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ apiKey: key, ...ev }),
  });
  await res.text();
  return res.status;
}
async function ingestBatch(key, events) {
  const res = await fetch(ingestURL + '/ingest/batch', {
    method: 'POST', headers: { 'Content-Type': 'application/json', 'X-API-Key': key },
    body: JSON.stringify({ events }),
  });
  await res.text();
  return res.status;
}

(async () => {
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 860 },
    colorScheme: 'light',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: apiURL });
  const page = ctx.pages()[0] || (await ctx.newPage());
  const problems = [];
  page.on('console', (m) => { process.stderr.write('console: ' + m.text() + '\n'); if (m.type() === 'error' && /Content Security Policy/.test(m.text())) problems.push(m.text()); });
  page.on('pageerror', (e) => { process.stderr.write('pageerror: ' + e + '\n'); problems.push(String(e)); });
  const foreign = [];
  page.on('request', (r) => { if (!r.url().startsWith(apiURL) && !r.url().startsWith('data:')) foreign.push(r.url()); });
  const shot = (name) => page.screenshot({ path: path.join(artifacts, name), fullPage: false });
  const text = (sel) => page.locator(sel).textContent();
  const liveState = () => page.locator('#live-state').textContent();
  const waitLive = () => page.waitForFunction(() => document.getElementById('live-state').dataset.state === 'live', null, { timeout: 10000 });
  // The live row of an event, found by its name (dataset, so any characters work).
  const liveRow = (name, timeout = 10000) => page.waitForFunction((n) => [...document.querySelectorAll('#live-list li')]
    .some((li) => li.dataset.name === n), name, { timeout, polling: 'raf' });
  const liveNames = () => page.evaluate(() => [...document.querySelectorAll('#live-list li')].map((li) => li.dataset.name));
  // Event ids shown more than once in the live list.
  const liveDuplicates = () => page.evaluate(() => {
    const ids = [...document.querySelectorAll('#live-list li')].map((li) => li.dataset.id);
    return ids.filter((id, i) => ids.indexOf(id) !== i);
  });
  // The PATCH the settings form sends, answered: its project JSON.
  const saveSettings = async () => {
    const answered = page.waitForResponse((r) => r.request().method() === 'PATCH' && /\/projects\//.test(r.url()), { timeout: 10000 });
    await page.click('#settings-form button[type=submit]');
    const res = await answered;
    check(res.status() === 200, 'settings saved: ' + res.status());
    await page.waitForFunction(() => document.getElementById('flash').textContent === 'Settings saved.', null, { timeout: 10000 });
    return (await res.json()).data;
  };

  // 1. First load on loopback, signed out: navigation start → the sign-in form ready.
  await page.goto(apiURL + '/');
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 15000 });
  const load = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    return {
      readyMs: performance.getEntriesByName('pulseboard-ready')[0].startTime,
      transfer: nav.transferSize + res.reduce((a, r) => a + r.transferSize, 0),
      decoded: nav.decodedBodySize + res.reduce((a, r) => a + r.decodedBodySize, 0),
      requests: 1 + res.length,
    };
  });
  out({ metric: 'first_load_ms', value: load.readyMs });
  out({ metric: 'first_load_transfer_bytes', value: load.transfer, decoded: load.decoded, requests: load.requests });
  check(await page.locator('#auth').isVisible(), 'the sign-in view is shown');
  const unlabeled = await page.evaluate(() => [...document.querySelectorAll('input, select')].filter((e) => !e.labels || !e.labels.length).map((e) => e.id));
  check(unlabeled.length === 0, 'every control has a label: ' + unlabeled.join(','));
  await shot('01-signin.png');
  out({ step: 'first-load' });

  // 2. Errors in words, then register.
  await page.fill('#login-email', 'nobody@example.com');
  await page.fill('#login-password', 'wrong password here');
  await page.press('#login-password', 'Enter');
  await page.waitForFunction(() => !document.getElementById('flash').hidden, null, { timeout: 10000 });
  const loginErr = await text('#flash');
  check(/invalid|password|credentials/i.test(loginErr), 'a failed login says why: ' + loginErr);
  const email = `dash-${Date.now()}@example.com`;
  await page.fill('#reg-name', 'Dana Board');
  await page.fill('#reg-email', email);
  await page.fill('#reg-password', 'correct horse battery');
  await page.click('#register-form button[type=submit]');
  await page.waitForSelector('#app', { state: 'visible', timeout: 10000 });
  check((await text('#who-name')).includes(email), 'the signed-in user is shown');
  out({ step: 'register', email });

  // 3. Create a project; its live feed connects over WebSocket.
  await page.fill('#create-name', 'Checkout app');
  await page.press('#create-name', 'Enter');
  await page.waitForFunction(() => document.getElementById('project-title').textContent === 'Checkout app', null, { timeout: 10000 });
  await waitLive();
  check((await text('#live-transport')).includes('WebSocket'), 'the live feed uses WebSocket');
  const apiKey = (await text('#api-key')).trim();
  check(apiKey.startsWith('pb_'), 'the API key is shown: ' + apiKey);
  const projectId = await page.getAttribute('#project-list button[aria-pressed=true]', 'data-id');
  out({ step: 'create-project', projectId });

  // 4. Events sent to the ingestor appear live within 1 s of the 202.
  let worst = 0;
  for (let i = 0; i < 3; i++) {
    const name = `checkout_started_${i}`;
    const status = await ingest(ingestURL, apiKey, { type: 'event', name, payload: { cart: i, items: ['a', 'b'] } });
    check(status === 202, 'ingest answered ' + status);
    const t0 = Date.now();
    await liveRow(name, 5000);
    worst = Math.max(worst, Date.now() - t0);
  }
  out({ metric: 'live_latency_worst_ms', value: worst });
  check(worst < 1000, `an event took ${worst} ms to appear`);
  for (let i = 0; i < 2; i++) {
    check(await ingest(ingestURL, apiKey, { type: 'error', name: 'PaymentFailed', payload: { code: 'card_declined', attempt: i },
      context: { os: 'iOS 18', app: { version: '2.3.1' } } }) === 202, 'error ingest');
  }
  check(await ingest(ingestURL, apiKey, { type: 'error', name: 'TimeoutError', payload: { ms: 30000 } }) === 202, 'error ingest');
  await liveRow('TimeoutError');
  out({ step: 'live', worstMs: worst });

  // 5. A hostile event renders as text: nothing runs, no element is created from it.
  const evil = '<script>window.__pbXss=1</script><img src=x onerror="window.__pbXss=2">';
  check(await ingest(apiURL, apiKey, { type: 'event', name: evil,
    payload: { html: '<script>window.__pbXss=3</script>', img: '<img src=x onerror="window.__pbXss=4">' },
    context: { note: '<svg onload="window.__pbXss=5">' } }) === 202, 'hostile ingest through the api origin');
  await liveRow(evil);
  const xss = await page.evaluate((n) => {
    const li = [...document.querySelectorAll('#live-list li')].find((l) => l.dataset.name === n);
    return { flag: window.__pbXss, text: li.querySelector('.nm').textContent, imgs: document.querySelectorAll('#live-list img, #live-list script, #live-list svg').length, payload: li.textContent };
  }, evil);
  check(xss.flag === undefined, 'no injected script ran');
  check(xss.text === evil && xss.imgs === 0, 'the name is shown as text: ' + JSON.stringify(xss));
  check(xss.payload.includes('<img src=x onerror'), 'the payload is shown as text');
  await page.evaluate((n) => [...document.querySelectorAll('#live-list li')].find((l) => l.dataset.name === n).click(), evil);
  await page.waitForSelector('#detail', { state: 'visible' });
  check(await text('#detail-title') === evil, 'the detail title is the text');
  check((await text('#detail-payload')).includes('"html": "<script>window.__pbXss=3</script>"'), 'the payload is pretty-printed text');
  check((await text('#detail-context')).includes('<svg onload'), 'the context is text');
  check(await page.evaluate(() => window.__pbXss === undefined && document.querySelectorAll('main img, main script, main svg:not(#chart svg)').length === 0), 'still nothing ran');
  await shot('02-live-detail.png');
  await page.click('#detail-close');
  out({ step: 'xss' });

  // 6. Explore: a filter narrows the list; the detail shows payload and context.
  await page.click('.tabs button[data-tab=explore]');
  await page.waitForFunction(() => document.querySelectorAll('#explore-rows tr').length >= 7, null, { timeout: 10000 });
  const all = await page.locator('#explore-rows tr').count();
  await page.selectOption('#f-type', 'error');
  await page.click('#explore-form button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#explore-rows tr').length === 3, null, { timeout: 10000 });
  await page.fill('#f-name', 'PaymentFailed');
  await page.click('#explore-form button[type=submit]');
  await page.waitForFunction(() => [...document.querySelectorAll('#explore-rows tr')].length === 2
    && [...document.querySelectorAll('#explore-rows tr')].every((r) => r.dataset.name === 'PaymentFailed'), null, { timeout: 10000 });
  await page.click('#explore-rows tr:first-child button');
  await page.waitForSelector('#detail', { state: 'visible' });
  const payload = await text('#detail-payload');
  const context = await text('#detail-context');
  check(payload.includes('"code": "card_declined"') && payload.includes('\n  '), 'the payload is pretty-printed: ' + payload);
  check(context.includes('"version": "2.3.1"'), 'the context is pretty-printed: ' + context);
  await shot('03-explore.png');
  out({ step: 'explore', all, errors: 3, named: 2 });

  // 7. Charts: the stats endpoint's buckets show the events.
  await page.click('.tabs button[data-tab=charts]');
  await page.selectOption('#c-interval', '1m');
  const sent = all;
  const deadline = Date.now() + 10000;
  let summary = '';
  for (;;) {
    await page.waitForSelector('#chart svg', { timeout: 10000 });
    summary = await page.locator('#chart svg title').first().textContent();
    const m = /^(\d+) events, (\d+) errors/.exec(summary);
    if (m && +m[1] >= sent && +m[2] >= 3) break;
    check(Date.now() < deadline, 'the chart did not reach the events: ' + summary);
    await sleep(300);
    await page.click('#c-refresh');
  }
  check(await page.locator('#chart rect.bar-event').count() >= 1, 'the chart has bars');
  const top = await page.locator('#top-errors li').allTextContents();
  check(top[0] && top[0].includes('PaymentFailed') && top[0].startsWith('2'), 'top error names: ' + JSON.stringify(top));
  const topNote = await text('#top-note');
  check(/^Among \d+ errors in this range\.$/.test(topNote), 'top error names are counted over the chart\'s range: ' + topNote);
  await shot('04-charts.png');
  out({ step: 'charts', summary, top });

  // 8. 1,000 events/s for 3 s on the live tab: frames longer than two vsyncs are counted.
  await page.click('.tabs button[data-tab=live]');
  await page.evaluate(() => {
    window.__frames = { n: 0, long: 0, worst: 0, stop: false };
    let last = performance.now();
    const tick = (t) => {
      const d = t - last; last = t;
      window.__frames.n++;
      if (d > 2 * 16.7) window.__frames.long++;
      window.__frames.worst = Math.max(window.__frames.worst, d);
      if (!window.__frames.stop) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  const floodStart = Date.now();
  let floodSent = 0;
  const floodStatuses = new Map();
  for (let tick = 0; tick < 30; tick++) {
    const events = [];
    for (let j = 0; j < 100; j++) events.push({ type: j % 10 === 0 ? 'error' : 'event', name: `flood_${tick}_${j}`, payload: { tick, j, pad: 'x'.repeat(64) } });
    const due = floodStart + tick * 100;
    if (Date.now() < due) await sleep(due - Date.now());
    const s = await ingestBatch(apiKey, events);
    floodStatuses.set(s, (floodStatuses.get(s) || 0) + 1);
    if (s === 202) floodSent += events.length;
  }
  await sleep(1500);
  const frames = await page.evaluate(() => { window.__frames.stop = true; return window.__frames; });
  const floodSecs = (Date.now() - floodStart) / 1000;
  const rows = await page.locator('#live-list li').count();
  out({ metric: 'flood', sent: floodSent, seconds: floodSecs, statuses: Object.fromEntries(floodStatuses), frames: frames.n, long: frames.long, worstMs: frames.worst, rows, count: await text('#live-count') });
  check(rows <= 500, 'the live list is bounded: ' + rows);
  check(await page.evaluate(() => document.querySelector('#live-list li').dataset.name.startsWith('flood_29_')), 'the newest event is on top');
  await shot('05-live-flood.png');

  // Pause holds new rows back; resume shows them.
  await page.click('#live-pause');
  check(await liveState() === 'paused', 'paused');
  check(await ingest(ingestURL, apiKey, { type: 'event', name: 'while_paused', payload: {} }) === 202, 'ingest');
  await sleep(700);
  check(await page.evaluate(() => ![...document.querySelectorAll('#live-list li')].some((l) => l.dataset.name === 'while_paused')), 'a paused feed adds no rows');
  await page.click('#live-pause');
  await liveRow('while_paused', 3000);
  out({ step: 'flood-and-pause' });

  // 9. Keyset pages in Explore.
  await page.click('.tabs button[data-tab=explore]');
  await page.selectOption('#f-type', '');
  await page.fill('#f-name', '');
  await page.selectOption('#f-limit', '25');
  await page.click('#explore-form button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#explore-rows tr').length === 25 && !document.getElementById('explore-next').disabled, null, { timeout: 10000 });
  const first = await page.evaluate(() => [...document.querySelectorAll('#explore-rows tr')].map((r) => r.dataset.name));
  await page.click('#explore-next');
  await page.waitForFunction((f) => document.querySelectorAll('#explore-rows tr').length === 25
    && document.querySelector('#explore-rows tr').dataset.name !== f, first[0], { timeout: 10000 });
  const second = await page.evaluate(() => [...document.querySelectorAll('#explore-rows tr')].map((r) => r.dataset.name));
  check(second.every((n) => !first.includes(n)), 'the second page holds other events');
  check(!(await page.locator('#explore-first').isDisabled()), 'First page is offered');
  out({ step: 'keyset' });

  // 10. Settings: snippets name the page's origin; rename; the key rotates after a confirmation.
  await page.click('.tabs button[data-tab=settings]');
  check((await text('#sn-curl')).includes(apiURL + '/ingest'), 'the curl snippet targets the page origin');
  check((await text('#sn-rn')).includes(`host: "${apiURL}"`), 'the React Native snippet names host');
  // The copy buttons put each snippet on the clipboard.
  for (const [id, label] of [['sn-curl', 'Copy curl'], ['sn-go', 'Copy Go'], ['sn-rn', 'Copy React Native']]) {
    await page.evaluate(() => navigator.clipboard.writeText('(empty)'));
    const button = page.locator(`button[data-copy=${id}]`);
    check(await button.textContent() === label, 'the copy button is labelled: ' + label);
    await button.click();
    await page.waitForFunction((i) => document.querySelector(`button[data-copy=${i}]`).textContent === 'Copied', id, { timeout: 5000 });
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    check(copied === await text('#' + id), `the clipboard holds the ${id} snippet: ` + JSON.stringify(copied.slice(0, 80)));
    check(copied.includes(apiKey), `the ${id} snippet names the key`);
  }
  out({ step: 'copy' });
  await page.fill('#rename-name', 'Checkout');
  await page.click('#rename-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('project-title').textContent === 'Checkout', null, { timeout: 10000 });
  await page.fill('#s-threshold', '0');
  await page.click('#settings-form button[type=submit]');
  check(await page.$eval('#s-threshold', (e) => !e.validity.valid && e.validationMessage !== ''), 'an out-of-range setting is refused in words before it is sent');
  await page.fill('#s-threshold', '25');
  await page.fill('#s-retention', '14');
  const saved = await saveSettings();
  check(saved.settings.alertThreshold === 25 && saved.settings.retentionDays === 14 && saved.settings.rateLimit === null,
    'the settings are stored: ' + JSON.stringify(saved.settings));
  await shot('06-settings.png');
  await page.click('#rotate');
  await page.waitForSelector('#confirm', { state: 'visible' });
  await page.click('#confirm-cancel');
  check((await text('#api-key')).trim() === apiKey, 'cancel keeps the key');
  await page.click('#rotate');
  await page.click('#confirm-ok');
  await page.waitForFunction((k) => document.getElementById('api-key').textContent.trim() !== k, apiKey, { timeout: 10000 });
  const newKey = (await text('#api-key')).trim();
  let oldStatus = 0;
  for (let i = 0; i < 20; i++) { // "at once" on the api; allow the ingestor's cache a moment
    oldStatus = await ingest(ingestURL, apiKey, { type: 'event', name: 'old_key', payload: {} });
    if (oldStatus === 401) break;
    await sleep(250);
  }
  check(oldStatus === 401, 'the old key answers ' + oldStatus);
  check(await ingest(ingestURL, newKey, { type: 'event', name: 'new_key', payload: {} }) === 202, 'the new key works');
  await liveRow('new_key');
  out({ step: 'rotate', oldKeyStatus: oldStatus });

  // 10b. A second project: its rate limit and alert threshold set in Settings (an invalid
  // rate limit refused in words before it is sent), the limit enforced by the ingestor
  // (429), errors over the threshold fire an alert shown in the history with its delivery
  // state; then it is deleted after a confirmation, and its key gets 401.
  await page.fill('#create-name', 'Disposable');
  await page.press('#create-name', 'Enter');
  await page.waitForFunction(() => document.getElementById('project-title').textContent === 'Disposable', null, { timeout: 10000 });
  const doomedId = await page.getAttribute('#project-list button[aria-pressed=true]', 'data-id');
  const doomedKey = (await text('#api-key')).trim();
  check(doomedKey !== newKey && doomedKey.startsWith('pb_'), 'the new project has its own key');
  check(await page.locator('label[for=s-ratelimit]').textContent() === 'Ingest rate limit (events/s)', 'the rate limit field is labelled');
  for (const bad of ['0', '1000001', '2.5']) {
    await page.fill('#s-ratelimit', bad);
    let patched = false;
    const onReq = (r) => { if (r.method() === 'PATCH') patched = true; };
    page.on('request', onReq);
    await page.click('#settings-form button[type=submit]');
    await sleep(200);
    page.off('request', onReq);
    check(!patched && await page.$eval('#s-ratelimit', (e) => !e.validity.valid && e.validationMessage !== ''),
      `the rate limit ${bad} is refused in words before it is sent`);
  }
  await page.fill('#s-ratelimit', '1');
  await page.fill('#s-threshold', '3');
  const limitedSettings = (await saveSettings()).settings;
  check(limitedSettings.rateLimit === 1 && limitedSettings.alertThreshold === 3, 'rate limit and threshold stored: ' + JSON.stringify(limitedSettings));
  const errors = [];
  for (let i = 0; i < 5; i++) errors.push({ type: 'error', name: 'CheckoutCrash', payload: { i } });
  check(await ingestBatch(doomedKey, errors) === 202, 'errors over the threshold accepted');
  // 1 event/s: the bucket (one full batch, 1,000 events) lacks the five just taken.
  const full = [];
  for (let i = 0; i < 1000; i++) full.push({ type: 'event', name: 'over_limit', payload: {} });
  const limitedStatus = await ingestBatch(doomedKey, full);
  check(limitedStatus === 429, 'a project limited to 1 event/s refuses a full batch: ' + limitedStatus);
  await page.click('.tabs button[data-tab=alerts]');
  const alertDeadline = Date.now() + 60000;
  for (;;) { // until the alert is in the history and mailed (the mail sink of the Go test)
    const delivery = await page.evaluate(() => { const td = document.querySelector('#alert-rows tr:first-child td:nth-child(3)'); return td ? td.textContent : ''; });
    if (delivery.startsWith('sent')) break;
    check(Date.now() < alertDeadline, 'no alert sent within 60 s: ' + (delivery || await text('#alerts-status')));
    await sleep(500);
    await page.click('.tabs button[data-tab=alerts]'); // reloads the history
  }
  const alertRow = await page.evaluate(() => [...document.querySelectorAll('#alert-rows tr:first-child td')].map((td) => td.textContent));
  check(alertRow[1] === 'threshold', 'the alert kind: ' + JSON.stringify(alertRow));
  check(/^sent \(.+\)$/.test(alertRow[2]), 'the delivery state and time are shown: ' + JSON.stringify(alertRow));
  check(/^\d+ \/ 3$/.test(alertRow[3]) && +alertRow[3].split(' ')[0] > 3, 'errors over the threshold of 3: ' + JSON.stringify(alertRow));
  await shot('08-alerts.png');
  out({ step: 'alerts', row: alertRow });
  // Clearing the field restores the default (null).
  await page.click('.tabs button[data-tab=settings]');
  await page.fill('#s-ratelimit', '');
  check((await saveSettings()).settings.rateLimit === null, 'an empty rate limit is the default (null)');
  check(await page.inputValue('#s-ratelimit') === '', 'the form shows the default');
  // Delete: cancel keeps the project; confirming removes it and its key stops working.
  await page.click('#delete');
  await page.waitForSelector('#confirm', { state: 'visible' });
  check((await text('#confirm-text')).includes('Disposable'), 'the confirmation names the project');
  await page.click('#confirm-cancel');
  await page.waitForSelector('#confirm', { state: 'hidden' });
  check(await page.locator(`#project-list button[data-id="${doomedId}"]`).count() === 1, 'cancel keeps the project');
  await page.click('#delete');
  await page.waitForSelector('#confirm', { state: 'visible' });
  await page.click('#confirm-ok');
  await page.waitForFunction((id) => !document.querySelector(`#project-list button[data-id="${id}"]`)
    && document.getElementById('project-title').textContent === 'Checkout', doomedId, { timeout: 10000 });
  check((await text('#flash')).includes('deleted'), 'the deletion is confirmed in words');
  let doomedStatus = 0;
  for (let i = 0; i < 20; i++) {
    doomedStatus = await ingest(ingestURL, doomedKey, { type: 'event', name: 'after_delete', payload: {} });
    if (doomedStatus === 401) break;
    await sleep(250);
  }
  check(doomedStatus === 401, 'the deleted project\'s key answers ' + doomedStatus);
  out({ step: 'delete', keyStatus: doomedStatus });

  // 11. The session survives a reload (refresh cookie); a signed-in load is measured too.
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 15000 });
  check(await page.locator('#app').isVisible(), 'still signed in after a reload');
  const reloadMs = await page.evaluate(() => performance.getEntriesByName('pulseboard-ready')[0].startTime);
  out({ metric: 'signed_in_reload_ms', value: reloadMs });
  await waitLive();
  check((await text('#live-transport')).includes('WebSocket'), 'WebSocket after the reload');
  // The live view opened with the latest stored events (backfill), before any new one.
  await liveRow('new_key', 5000);
  check((await text('#live-count')).includes('loaded from storage'), 'the count says what was loaded: ' + await text('#live-count'));
  const backfilled = await page.locator('#live-list li').count();
  check(backfilled === 50, 'the latest 50 stored events are shown: ' + backfilled);
  check((await liveNames())[0] === 'new_key', 'newest first');
  check(await ingest(ingestURL, newKey, { type: 'event', name: 'after_backfill', payload: {} }) === 202, 'ingest');
  await liveRow('after_backfill', 5000);
  check((await liveNames())[0] === 'after_backfill', 'a live event goes on top of the backfill');
  check((await liveDuplicates()).length === 0, 'no event shown twice: ' + await liveDuplicates());
  out({ step: 'backfill', rows: backfilled });

  // 11a. The WebSocket drops; while it cannot reconnect, events are sent; once it does,
  // they appear (fetched from the events API: the WebSocket does not replay), each once.
  let held = null; // while set, new WebSocket connections wait before reaching the api
  let routed = [];
  await page.routeWebSocket(/\/realtime\//, async (ws) => {
    routed.push(ws);
    if (held) await held.promise;
    ws.connectToServer();
  });
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 15000 });
  await waitLive();
  check((await text('#live-transport')).includes('WebSocket') && routed.length === 1, 'WebSocket through the test route');
  check(await ingest(ingestURL, newKey, { type: 'event', name: 'before_drop', payload: {} }) === 202, 'ingest');
  await liveRow('before_drop', 5000);
  let release;
  held = { promise: new Promise((r) => { release = r; }) };
  await routed[0].close({ code: 4000, reason: 'test: connection dropped' });
  await page.waitForFunction(() => document.getElementById('live-state').dataset.state === 'connecting', null, { timeout: 5000 });
  for (let i = 0; i < 3; i++) check(await ingest(ingestURL, newKey, { type: 'event', name: `while_down_${i}`, payload: { i } }) === 202, 'ingest');
  await sleep(800);
  check(!(await liveNames()).some((n) => n.startsWith('while_down_')), 'nothing arrives while disconnected');
  check(routed.length >= 2, 'the feed is reconnecting: ' + routed.length);
  held = null;
  release();
  await waitLive();
  for (let i = 0; i < 3; i++) await liveRow(`while_down_${i}`, 5000);
  const resumed = await liveNames();
  check(resumed.filter((n) => n === 'before_drop').length === 1, 'an event seen before the drop (fetched again) is shown once');
  check((await liveDuplicates()).length === 0, 'no event shown twice after the reconnect: ' + await liveDuplicates());
  check(resumed.indexOf('while_down_2') < resumed.indexOf('while_down_0') && resumed.indexOf('while_down_0') < resumed.indexOf('before_drop'), 'newest first after the catch-up: ' + resumed.slice(0, 6));
  check(await ingest(ingestURL, newKey, { type: 'event', name: 'after_resume', payload: {} }) === 202, 'ingest');
  await liveRow('after_resume', 5000);
  check(await page.locator('#live-notice').isHidden(), 'nothing was missed, so no notice');
  out({ step: 'ws-resume', reconnects: routed.length - 1 });

  // 11b. Where WebSockets fail (here: every upgrade closed at once), the feed falls back
  // to SSE, and events still arrive.
  await page.routeWebSocket(/\/realtime\//, (ws) => ws.close({ code: 1011, reason: 'test: no WebSocket' }));
  // Keeps the page's EventSources reachable, so that step 11c can drop the stream.
  await page.addInitScript(() => {
    const Native = window.EventSource;
    window.__pbSources = [];
    window.EventSource = class extends Native {
      constructor(...args) { super(...args); window.__pbSources.push(this); }
    };
  });
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 15000 });
  await page.waitForFunction(() => document.getElementById('live-state').dataset.state === 'live'
    && document.getElementById('live-transport').textContent.includes('SSE'), null, { timeout: 15000 });
  check(await ingest(ingestURL, newKey, { type: 'event', name: 'via_sse', payload: { ok: true } }) === 202, 'ingest');
  await liveRow('via_sse', 5000);
  out({ step: 'sse-fallback' });

  // 11c. The SSE stream drops (as a network error does: the EventSource errors); while it
  // cannot reconnect, events are sent. The reconnect carries the last event id, and the
  // events appear, each once, with no notice. Then a gap longer than the replay
  // (LIVE_REPLAY_LIMIT=5 in this test): the server's resync is shown as the "may have
  // missed events" notice.
  let sseHeld = null;
  const sseURLs = [];
  await page.route(/\/realtime\/[^/]+\/sse/, async (route) => {
    sseURLs.push(route.request().url());
    if (sseHeld) await sseHeld.promise;
    await route.continue();
  });
  const sseGap = async (prefix, n) => {
    let rel;
    sseHeld = { promise: new Promise((r) => { rel = r; }) };
    const before = sseURLs.length;
    await page.evaluate(() => {
      const es = window.__pbSources[window.__pbSources.length - 1];
      es.close();
      es.onerror(new Event('error'));
    });
    await page.waitForFunction(() => document.getElementById('live-state').dataset.state === 'connecting', null, { timeout: 5000 });
    for (let i = 0; i < n; i++) check(await ingest(ingestURL, newKey, { type: 'event', name: `${prefix}_${i}`, payload: { i } }) === 202, 'ingest');
    for (let waited = 0; sseURLs.length === before; waited += 50) {
      check(waited < 15000, 'the SSE stream reconnects');
      await sleep(50);
    }
    await sleep(1000); // the events are stored before the replay reads them
    check(!(await liveNames()).some((name) => name.startsWith(prefix)), 'nothing arrives while the SSE stream is down');
    sseHeld = null;
    rel();
    await page.waitForFunction(() => document.getElementById('live-state').dataset.state === 'live'
      && document.getElementById('live-transport').textContent.includes('SSE'), null, { timeout: 15000 });
    return sseURLs[sseURLs.length - 1];
  };
  const resumeURL = await sseGap('sse_gap', 3);
  check(/[?&]lastEventId=[^&]+/.test(resumeURL), 'the SSE reconnect carries the last event id: ' + resumeURL);
  for (let i = 0; i < 3; i++) await liveRow(`sse_gap_${i}`, 5000);
  check((await liveDuplicates()).length === 0, 'no event shown twice after the SSE reconnect: ' + await liveDuplicates());
  check(await page.locator('#live-notice').isHidden(), 'a gap the replay covers shows no notice');
  await sseGap('sse_long_gap', 8);
  await page.waitForSelector('#live-notice', { state: 'visible', timeout: 5000 });
  const notice = await text('#live-notice');
  check(/missed|skipped/.test(notice) && notice.includes('Explore shows every stored event'), 'the resync notice: ' + notice);
  await shot('06b-resync-notice.png');
  await page.unroute(/\/realtime\/[^/]+\/sse/);
  out({ step: 'sse-resume', notice });

  // 12. Phone width and the dark scheme: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.emulateMedia({ colorScheme: 'dark' });
  await sleep(100);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, 'no horizontal scroll at 390 px: ' + overflow);
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  check(bg === 'rgb(16, 19, 24)', 'the dark scheme applies: ' + bg);
  await shot('07-phone-dark.png');
  await page.setViewportSize({ width: 1280, height: 860 });
  await page.emulateMedia({ colorScheme: 'light' });
  out({ step: 'responsive' });

  // 13. Logout ends the live feed: the state says so, and new events no longer arrive.
  await page.click('#logout');
  await page.waitForSelector('#auth', { state: 'visible', timeout: 10000 });
  check(await liveState() === 'ended', 'the feed ended: ' + await liveState());
  check(await ingest(ingestURL, newKey, { type: 'event', name: 'after_logout', payload: {} }) === 202, 'ingest');
  await sleep(1500);
  check(await page.evaluate(() => ![...document.querySelectorAll('#live-list li')].some((l) => l.dataset.name === 'after_logout')), 'no event after logout');
  const refreshAfter = await page.evaluate(async () => (await fetch('/auth/refresh', { method: 'POST' })).status);
  check(refreshAfter === 401, 'the refresh cookie is gone: ' + refreshAfter);
  out({ step: 'logout' });

  check(problems.length === 0, 'page errors: ' + problems.join(' | '));
  check(foreign.length === 0, 'requests outside the api origin: ' + foreign.join(' '));
  out({ done: true });
  await ctx.close();
  process.exit(0);
})().catch(async (e) => { out({ error: String(e && e.stack || e) }); process.exit(1); });
