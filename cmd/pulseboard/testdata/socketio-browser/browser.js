// Drives Debian's headless Chromium with playwright-core for
// cmd/pulseboard/socketio_browser_test.go. argv: page URL, user data dir.
// stdout, one JSON line each: {"ready":true,"transport":…} once the page shows
// "Subscribed" (and the client upgraded to WebSocket), {"seen":name,"shown":bool} for
// every event the page put into its DOM, {"error":…} on failure.
const { chromium } = require('playwright-core');

const [pageURL, userDataDir] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

(async () => {
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on('console', (m) => process.stderr.write('console: ' + m.text() + '\n'));
  page.on('pageerror', (e) => process.stderr.write('pageerror: ' + e + '\n'));
  await page.exposeFunction('pulseboardSeen', async (name) => {
    const shown = await page.locator(`li[data-name="${name}"]`).count();
    out({ seen: name, shown: shown > 0 });
  });
  await page.goto(pageURL);
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Subscribed')
    && document.getElementById('transport').textContent === 'websocket', null, { timeout: 15000 });
  out({ ready: true, status: await page.textContent('#status'), transport: await page.textContent('#transport') });
  // Runs until the test closes stdin.
  process.stdin.resume();
  process.stdin.on('end', async () => { await ctx.close(); process.exit(0); });
})().catch((e) => { out({ error: String(e && e.stack || e) }); process.exit(1); });
