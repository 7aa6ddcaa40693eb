// Browser test of the Pulse dashboard and the /s.js tracker, in headless Debian Chromium driven
// by playwright-core (no browser download: the system `chromium` is used).
//
// It starts the real `pulse` binary (PULSE_BIN, default target/debug/pulse from the repo root)
// on a free port with a temporary data directory, creates a website through the API, and serves
// a test page from a second, third-party origin (so CORS is exercised) that loads /s.js. The
// page navigates SPA-style and fires a custom event; the dashboard must then show the visitor,
// the pages and the event. It also checks the skeleton on first load, keyboard selection, the
// add-website form, that the live stream pushes a new visitor well before a 10 s poll could,
// the per-minute chart and the ranked lists, the include-bots toggle, that untrusted event names
// stay text, polling when the stream is unavailable and silence while the tab is hidden, the
// error state with the server stopped, recovery with the server back on the same port, and the
// admin-token prompt. Screenshots go to target/browser-artifacts/.
//
// Run from anywhere: node server/tests/browser/realtime.test.mjs (after `npm ci` there and
// `cargo build -p pulse-server`). Every wait polls a condition against a deadline; nothing
// sleeps and hopes. Exits non-zero with a message on the first failure.

import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "../../..");
const PULSE_BIN = resolve(repoRoot, process.env.PULSE_BIN || "target/debug/pulse");
const ARTIFACTS = resolve(repoRoot, "target/browser-artifacts");
const OVERALL_DEADLINE_MS = 110_000;

/** A desktop Chrome: the tracker page must count as a human, not as HeadlessChrome. */
const DESKTOP_CHROME_UA =
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const SAFARI_IPHONE_UA =
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
const GOOGLEBOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const SAFARI_MAC_UA =
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15";
/** A 10 s poll could not explain an update this fast. */
const PUSH_DEADLINE_MS = 5_000;
const EXTERNAL_REFERRER = "https://news.example.com/story/42";
const HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">';

const started = Date.now();
const cleanups = [];

function log(message) {
  const seconds = ((Date.now() - started) / 1000).toFixed(1).padStart(5);
  console.log(`[${seconds}s] ${message}`);
}

class TestFailure extends Error {}

function check(condition, message) {
  if (!condition) throw new TestFailure(message);
}

/** Polls `probe` every 100 ms until it returns a truthy value; fails after `timeoutMs`. */
async function until(what, timeoutMs, probe) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > end) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new TestFailure(`timed out after ${timeoutMs / 1000}s waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

// -------------------------------------------------------------------------------------------
// The pulse server
// -------------------------------------------------------------------------------------------

/** Starts pulse on `port` (0: any free one) with `dataDir`; resolves once it is listening. */
async function startPulse({ port = 0, dataDir, adminToken } = {}) {
  const args = ["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir];
  if (adminToken) args.push("--admin-token", adminToken);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PULSE_")));
  const child = spawn(PULSE_BIN, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const server = { child, exited, stderr: () => stderr };
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  const line = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new TestFailure(`pulse did not start within 20s; stderr:\n${stderr}`)), 20_000);
    createInterface({ input: child.stdout }).once("line", (l) => {
      clearTimeout(timer);
      resolve(l);
    });
    child.once("error", (e) => reject(new TestFailure(`cannot run ${PULSE_BIN}: ${e.message}`)));
    exited.then(({ code }) => reject(new TestFailure(`pulse exited (${code}) before listening; stderr:\n${stderr}`)));
  });
  const match = /^listening on (127\.0\.0\.1:(\d+))$/.exec(line.trim());
  check(match, `pulse's first stdout line should be "listening on ADDR", got ${JSON.stringify(line)}`);
  server.port = Number(match[2]);
  server.origin = `http://${match[1]}`;
  return server;
}

/** SIGTERM, then waits for a clean exit. */
async function stopPulse(server) {
  server.child.kill("SIGTERM");
  const result = await Promise.race([
    server.exited,
    new Promise((r) => setTimeout(() => r(null), 10_000)),
  ]);
  check(result, "pulse did not exit within 10s of SIGTERM");
  check(result.code === 0, `pulse should exit 0 on SIGTERM, got ${JSON.stringify(result)}; stderr:\n${server.stderr()}`);
}

async function api(server, path, { method = "GET", body, token, userAgent } = {}) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (userAgent) headers["user-agent"] = userAgent;
  const response = await fetch(server.origin + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : null };
}

// -------------------------------------------------------------------------------------------
// The third-party test page
// -------------------------------------------------------------------------------------------

/** Serves shop.html on another origin: every path is the same SPA shell loading /s.js. */
async function startTestSite(pulse, websiteId) {
  const trackerSource = await (await fetch(`${pulse.origin}/s.js`)).text();
  const shell = readFileSync(join(here, "shop.html"), "utf8");
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, "http://x");
    if (url.pathname === "/proxy/s.js") {
      // A proxy setup: the tracker served from the site's own origin, events sent to pulse.
      response.writeHead(200, { "content-type": "application/javascript" });
      response.end(trackerSource);
      return;
    }
    const tag = url.pathname.startsWith("/proxied")
      ? `<script defer src="/proxy/s.js" data-website-id="${websiteId}" data-api-host="${pulse.origin}"></script>`
      : `<script defer src="${pulse.origin}/s.js" data-website-id="${websiteId}"></script>`;
    response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    response.end(shell.replace("{{TRACKER}}", tag));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => {
    server.closeAllConnections();
    server.close();
  });
  return `http://127.0.0.1:${server.address().port}`;
}

// -------------------------------------------------------------------------------------------
// The dashboard
// -------------------------------------------------------------------------------------------

/** What the realtime panel shows right now. */
function panel(page) {
  return page.evaluate(() => {
    const q = (s) => document.querySelector(s);
    const notice = q("[data-testid=error-notice]");
    return {
      visible: !q("[data-testid=realtime]").hidden,
      active: q("[data-testid=active-visitors]").textContent.trim(),
      dot: q("[data-testid=live-dot]").dataset.state,
      mode: q("[data-testid=stream-mode]").dataset.mode,
      notice: notice.hidden ? null : notice.textContent,
      skeletons: document.querySelectorAll("[data-testid=realtime] [data-testid=skeleton]").length,
      events: [...document.querySelectorAll("[data-testid=event]")].map((row) => ({
        type: row.dataset.eventType,
        target: row.querySelector("[data-testid=event-target]").textContent,
        meta: row.querySelector(".event-meta").textContent,
        time: row.querySelector("time").textContent,
      })),
    };
  });
}

/** Makes the page believe its tab was hidden or shown, and tells it as a browser would. */
function setTabHidden(page, hidden) {
  return page.evaluate((hidden) => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    Object.defineProperty(document, "visibilityState", {
      configurable: true,
      get: () => (hidden ? "hidden" : "visible"),
    });
    document.dispatchEvent(new Event("visibilitychange"));
  }, hidden);
}

const hasEvent = (state, type, target) => state.events.some((e) => e.type === type && e.target === target);

/** A plain poll of GET …/realtime (not the stream, not the breakdown). */
const isPoll = (url) => /\/realtime(\?|$)/.test(new URL(url).pathname + new URL(url).search);

/** What the chart and the ranked lists show right now. */
function breakdownPanel(page) {
  return page.evaluate(() => {
    const list = (name) =>
      [...document.querySelectorAll(`[data-testid=list-${name}] [data-testid=ranked-row]`)].map((row) => ({
        value: row.dataset.value,
        visitors: Number(row.querySelector(".num").textContent.replace(/\D/g, "")),
      }));
    const chart = document.querySelector("[data-testid=chart] svg");
    return {
      visible: !document.querySelector("[data-testid=trend]").hidden && !document.querySelector("[data-testid=breakdowns]").hidden,
      minutes: document.querySelectorAll("[data-testid=chart-minute]").length,
      chartPageviews: chart ? Number(chart.dataset.totalPageviews) : 0,
      pages: list("pages"),
      referrers: list("referrers"),
      events: list("events"),
      browsers: list("browsers"),
      devices: list("devices"),
      countries: list("countries"),
    };
  });
}

/** A breakdown answer in the documented shape (issue 14), for a server without the route. */
function breakdownFixture() {
  const minute = Math.floor(Date.now() / 60_000) * 60_000;
  const series = [];
  for (let i = 29; i >= 0; i -= 1) {
    const at = new Date(minute - i * 60_000).toISOString().replace(".000Z", "Z");
    series.push({ minute: at, visitors: i === 0 ? 3 : i % 7 === 0 ? 1 : 0, pageviews: i === 0 ? 6 : i % 7 === 0 ? 2 : 0 });
  }
  const row = (value, visitors, events) => ({ value, visitors, events });
  return {
    data: {
      pages: [row("/landing", 1, 2), row("/blog/hello-world", 1, 1), row("/docs/getting-started", 1, 1), row("/pricing", 1, 1), row("/proxied", 1, 1)],
      referrers: [row("duckduckgo.com", 1, 2), row("news.example.com", 1, 4), row("t.co", 1, 1)],
      events: [row("newsletter", 1, 1), row("proxied-hello", 1, 1), row("signup", 1, 1)],
      browsers: [row("Chrome", 1, 6), row("Firefox", 1, 2), row("Safari", 1, 1)],
      devices: [row("desktop", 2, 8), row("mobile", 1, 1)],
      countries: [],
      series,
      approximate: false,
    },
  };
}

async function screenshot(page, name) {
  const file = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`screenshot ${file}`);
}

// -------------------------------------------------------------------------------------------
// The test
// -------------------------------------------------------------------------------------------

async function main() {
  check(existsSync(PULSE_BIN), `no pulse binary at ${PULSE_BIN}: run \`cargo build -p pulse-server\` or set PULSE_BIN`);
  let executablePath;
  try {
    executablePath = execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
  } catch {
    throw new TestFailure("no `chromium` on PATH: apt-get install -y chromium");
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  const dataDir = mkdtempSync(join(tmpdir(), "pulse-browser-"));
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));

  let pulse = await startPulse({ dataDir });
  log(`pulse at ${pulse.origin}`);
  const created = await api(pulse, "/api/websites", {
    method: "POST",
    body: { name: "Test shop", domain: "shop.test" },
  });
  check(created.status === 201, `POST /api/websites should be 201, got ${JSON.stringify(created)}`);
  const site = created.json.data;
  log(`website ${site.id} (bot policy ${site.bot_policy})`);
  const testSite = await startTestSite(pulse, site.id);
  log(`test page at ${testSite}`);

  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-quic",
    ],
  });
  cleanups.push(() => browser.close());
  log(`chromium ${browser.version()}`);

  // --- The tracker, on a third-party page --------------------------------------------------
  const visitor = await browser.newContext({ userAgent: DESKTOP_CHROME_UA, viewport: { width: 1024, height: 700 } });
  const shop = await visitor.newPage();
  const pageErrors = [];
  shop.on("pageerror", (error) => pageErrors.push(error.message));
  const sent = [];
  shop.on("response", async (response) => {
    const request = response.request();
    if (!request.url().endsWith("/api/collect")) return;
    sent.push({
      status: response.status(),
      method: request.method(),
      url: request.url(),
      contentType: request.headers()["content-type"] || "",
      cookie: request.headers()["cookie"],
      body: request.postDataJSON(),
    });
  });
  const collected = (pred) => sent.filter((s) => s.status === 202 && pred(s.body));

  await shop.goto(`${testSite}/landing?email=someone@example.com#top`, { referer: EXTERNAL_REFERRER });
  await until("the pageview of /landing to be accepted", 10_000, () =>
    collected((b) => b.type === "pageview" && b.url.endsWith("/landing")).length === 1,
  );
  const first = sent[0];
  check(first.url === `${pulse.origin}/api/collect`, `events go to the script's origin, got ${first.url}`);
  check(first.method === "POST", `collect is a POST, got ${first.method}`);
  check(first.contentType.startsWith("text/plain"), `collect is sent as text/plain (no preflight), got ${first.contentType}`);
  check(first.cookie === undefined, "the tracker must not send cookies");
  check(first.body.website_id === site.id, `website_id ${first.body.website_id}`);
  check(!first.body.url.includes("?") && !first.body.url.includes("#"), `the url is sent without query or fragment: ${first.body.url}`);
  check(first.body.referrer === EXTERNAL_REFERRER, `referrer ${first.body.referrer}`);
  check(/^\d+x\d+$/.test(first.body.screen) && first.body.language, `screen and language: ${JSON.stringify(first.body)}`);

  await shop.evaluate(() => {
    history.pushState({}, "", "/pricing");
    history.pushState({}, "", "/pricing"); // same page: not a new pageview
    history.replaceState({ tab: 2 }, "", "/pricing?tab=2"); // same path: not a new pageview
    window.pulse.track("signup", { plan: "pro", seats: 3 });
    const circular = {};
    circular.self = circular;
    window.pulse.track("unserialisable", circular); // must not throw into the page
    window.pulse.track(); // nor this
  });
  await until("the /pricing pageview and the signup event", 10_000, () =>
    collected((b) => b.url.endsWith("/pricing")).length >= 2,
  );
  const signup = collected((b) => b.type === "event")[0].body;
  check(signup.event_name === "signup" && signup.event_data.plan === "pro", `custom event: ${JSON.stringify(signup)}`);
  await shop.evaluate(() => history.go(-2)); // popstate back to /landing
  await until("a pageview on popstate", 10_000, () =>
    collected((b) => b.type === "pageview" && b.url.endsWith("/landing")).length === 2,
  );
  const pageviews = collected((b) => b.type === "pageview").map((s) => new URL(s.body.url).pathname);
  check(
    JSON.stringify(pageviews) === JSON.stringify(["/landing", "/pricing", "/landing"]),
    `pageviews on load, pushState and popstate only, got ${JSON.stringify(pageviews)}`,
  );
  const spaReferrer = collected((b) => b.url.endsWith("/pricing"))[0].body.referrer;
  check(spaReferrer === EXTERNAL_REFERRER, `an SPA navigation keeps the visit's referrer, got ${spaReferrer}`);

  // A proxy setup: the script from the site's own origin, data-api-host pointing at pulse.
  await shop.goto(`${testSite}/proxied`);
  await until("the proxied pageview", 10_000, () => collected((b) => b.url.endsWith("/proxied")).length === 1);
  check(
    sent.filter((s) => s.url.startsWith(testSite)).length === 0,
    "with data-api-host, nothing is sent to the page's own origin",
  );
  await shop.evaluate(() => window.pulse.track("proxied-hello"));
  await until("the proxied event", 10_000, () => collected((b) => b.event_name === "proxied-hello").length === 1);
  check(pageErrors.length === 0, `the tracker threw into the page: ${pageErrors.join("; ")}`);
  log(`tracker: ${sent.length} requests, all ${[...new Set(sent.map((s) => s.status))].join("/")}`);

  // Two more visitors (other browsers, same IP) and a bot, sent directly.
  for (const [userAgent, body] of [
    [SAFARI_IPHONE_UA, { type: "pageview", url: "/blog/hello-world", referrer: "https://t.co/abc" }],
    [FIREFOX_UA, { type: "pageview", url: "/docs/getting-started", referrer: "https://duckduckgo.com/" }],
    [FIREFOX_UA, { type: "event", url: "/docs/getting-started", event_name: "newsletter" }],
    [GOOGLEBOT_UA, { type: "pageview", url: "/crawled-by-a-bot" }],
  ]) {
    const resp = await api(pulse, "/api/collect", { method: "POST", userAgent, body: { website_id: site.id, ...body } });
    check(resp.status === 202, `collect ${JSON.stringify(body)}: ${JSON.stringify(resp)}`);
  }

  // --- The dashboard ---------------------------------------------------------------------------
  const admin = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: "light" });
  const dashboard = await admin.newPage();
  const dashboardErrors = [];
  dashboard.on("pageerror", (error) => dashboardErrors.push(error.message));
  dashboard.on("console", (message) => {
    if (message.type() === "error" && !/Failed to load resource|ERR_CONNECTION_REFUSED/.test(message.text())) {
      dashboardErrors.push(message.text());
    }
  });
  const realtimeRequests = [];
  dashboard.on("request", (request) => {
    if (request.url().includes("/realtime")) realtimeRequests.push(request.url());
  });
  // The chart and lists come from GET …/realtime/breakdown. A server without that route yet
  // gets answers in the documented shape, so the rendering is checked either way.
  const probe = await api(pulse, `/api/websites/${site.id}/realtime/breakdown`);
  const breakdownServed = probe.status === 200;
  if (!breakdownServed) {
    check(probe.status === 404, `breakdown probe: ${JSON.stringify(probe)}`);
    log("the server has no breakdown route: the dashboard gets the documented shape from the test");
    await dashboard.route("**/realtime/breakdown*", (route) =>
      route.fulfill({ status: 200, contentType: "application/json", body: JSON.stringify(breakdownFixture()) }),
    );
  }
  // Hold the first realtime request for our website (the stream), so the skeleton is observable.
  let releaseFirst;
  const firstHeld = new Promise((r) => (releaseFirst = r));
  let held = false;
  await dashboard.route(`**/api/websites/${site.id}/realtime/stream*`, async (route) => {
    if (!held) {
      held = true;
      await firstHeld;
    }
    await route.continue();
  });

  await dashboard.goto(`${pulse.origin}/`);
  await until("the website list", 10_000, () =>
    dashboard.locator(`[data-testid=site-link][data-site-id="${site.id}"]`).isVisible(),
  );

  // The add-website form.
  await dashboard.locator("#add-site summary").click();
  await dashboard.fill("#site-name", "Second site");
  await dashboard.fill("#site-domain", "second.test");
  await dashboard.click("[data-testid=add-site-form] button[type=submit]");
  const second = await until("the new website in the list and selected", 10_000, async () => {
    const hash = await dashboard.evaluate(() => location.hash);
    const link = dashboard.locator("[data-testid=site-link]", { hasText: "Second site" });
    return (await link.count()) === 1 && hash.startsWith("#/site/") && hash.slice(7);
  });
  const snippetOfSecond = await dashboard.locator("[data-testid=snippet]").textContent();
  check(snippetOfSecond.includes(`data-website-id="${decodeURIComponent(second)}"`), `snippet of the new site: ${snippetOfSecond}`);
  log(`added website ${second} through the form`);

  // Keyboard: Tab to our website's link and press Enter.
  await dashboard.evaluate(() => document.activeElement && document.activeElement.blur());
  await dashboard.evaluate(() => window.scrollTo(0, 0));
  await dashboard.locator("[data-testid=site-link]").first().focus();
  await until("keyboard focus on the website link", 5_000, async () => {
    const focused = await dashboard.evaluate(() => document.activeElement && document.activeElement.dataset.siteId);
    if (focused === site.id) return true;
    await dashboard.keyboard.press("Tab");
    return false;
  });
  await dashboard.keyboard.press("Enter");

  await until("the skeleton while the first answer is on its way", 10_000, async () => {
    const state = await panel(dashboard);
    return state.visible && state.skeletons > 0;
  });
  log("skeleton shown on first load");
  await screenshot(dashboard, "skeleton");
  releaseFirst();

  // The dashboard shows exactly the server's human count, which is below the count with the bot.
  const counted = async (query) =>
    (await api(pulse, `/api/websites/${encodeURIComponent(site.id)}/realtime${query}`)).json.data.active_visitors;
  const [humans, withBots] = [await counted(""), await counted("?include_bots=true")];
  check(humans >= 3 && withBots === humans + 1, `active visitors: ${humans} humans, ${withBots} with the bot`);
  const loaded = await until(`${humans} active visitors, the pages and the custom events`, 15_000, async () => {
    const state = await panel(dashboard);
    const ok =
      Number(state.active) === humans &&
      state.dot === "live" &&
      state.mode === "live" &&
      state.skeletons === 0 &&
      hasEvent(state, "pageview", "/landing") &&
      hasEvent(state, "pageview", "/pricing") &&
      hasEvent(state, "pageview", "/proxied") &&
      hasEvent(state, "event", "signup") &&
      hasEvent(state, "event", "proxied-hello");
    return ok ? state : false;
  });
  log(`dashboard: ${loaded.active} active, ${loaded.events.length} events`);
  check(!hasEvent(loaded, "pageview", "/crawled-by-a-bot"), "bots are excluded by default");
  const fromNews = loaded.events.find((e) => e.target === "/landing" && e.meta.includes("news.example.com"));
  check(fromNews, `the external referrer domain is shown: ${JSON.stringify(loaded.events)}`);
  check(/Chrome/.test(fromNews.meta) && /desktop/.test(fromNews.meta), `browser and device shown: ${fromNews.meta}`);
  check(loaded.events.every((e) => /^\d+[smhd] ago$/.test(e.time)), `relative times: ${loaded.events.map((e) => e.time)}`);

  // The stream pushes: a new visitor shows well before a 10 s poll could bring it, with no poll.
  const pollsBefore = realtimeRequests.filter(isPoll).length;
  const activeBefore = Number(loaded.active);
  const pushed = await api(pulse, "/api/collect", {
    method: "POST",
    userAgent: SAFARI_MAC_UA,
    body: { website_id: site.id, type: "pageview", url: "/pushed" },
  });
  check(pushed.status === 202, `collect /pushed: ${JSON.stringify(pushed)}`);
  const ingestedAt = Date.now();
  await until(`the new visitor pushed within ${PUSH_DEADLINE_MS / 1000}s`, PUSH_DEADLINE_MS, async () => {
    const state = await panel(dashboard);
    return Number(state.active) === activeBefore + 1 && hasEvent(state, "pageview", "/pushed") && state.mode === "live";
  });
  const pushMs = Date.now() - ingestedAt;
  check(realtimeRequests.filter(isPoll).length === pollsBefore, "the update came by the stream, not by a poll");
  log(`stream: the new visitor showed ${pushMs} ms after the ingest, without a poll`);

  // The per-minute chart and the ranked lists.
  const breakdown = await until("the chart and the ranked lists", 15_000, async () => {
    const state = await breakdownPanel(dashboard);
    const values = (rows) => rows.map((r) => r.value);
    const ok =
      state.visible &&
      state.minutes === 30 &&
      state.chartPageviews > 0 &&
      values(state.pages).includes("/landing") &&
      values(state.pages).includes("/pricing") &&
      values(state.events).includes("signup") &&
      values(state.browsers).includes("Chrome") &&
      values(state.devices).includes("desktop") &&
      values(state.referrers).includes("news.example.com");
    return ok ? state : false;
  });
  for (const [name, rows] of Object.entries(breakdown)) {
    if (!Array.isArray(rows)) continue;
    for (let i = 1; i < rows.length; i += 1) {
      check(rows[i - 1].visitors >= rows[i].visitors, `${name} is ranked by visitors: ${JSON.stringify(rows)}`);
    }
  }
  check(!breakdown.pages.some((r) => r.value === "/crawled-by-a-bot"), "bots are left out of the lists by default");
  log(`breakdown (${breakdownServed ? "server" : "documented shape"}): ${breakdown.pages.length} pages, ${breakdown.minutes} minutes charted`);

  // Relative times tick between refreshes.
  const timeOf = () => dashboard.locator("[data-testid=event] time").first().textContent();
  const before = await timeOf();
  const requestsBefore = realtimeRequests.filter((u) => !u.includes("/breakdown")).length;
  await until("the relative time to tick", 4_000, async () => (await timeOf()) !== before);
  check(
    realtimeRequests.filter((u) => !u.includes("/breakdown")).length === requestsBefore,
    "the time ticked without a refresh",
  );

  // The snippet.
  const snippet = await dashboard.locator("[data-testid=snippet]").textContent();
  const expectedSnippet = `<script defer src="${pulse.origin}/s.js" data-website-id="${site.id}"></script>`;
  check(snippet === expectedSnippet, `snippet: ${snippet}`);
  // Light, dark and phone screenshots of the live panel.
  await screenshot(dashboard, "realtime-light");
  await dashboard.emulateMedia({ colorScheme: "dark" });
  await screenshot(dashboard, "realtime-dark");
  await dashboard.setViewportSize({ width: 390, height: 844 });
  const overflow = await dashboard.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `no horizontal scrolling at phone width (overflow ${overflow}px)`);
  await screenshot(dashboard, "realtime-phone-dark");
  await dashboard.setViewportSize({ width: 1280, height: 900 });
  await dashboard.emulateMedia({ colorScheme: "light" });
  await dashboard.click("[data-testid=copy-snippet]");
  await until("the copy confirmation", 5_000, async () => (await dashboard.locator("#copy-status").textContent()).trim());

  // Untrusted text: a hostile event name, shown on the next refresh (the toggle's).
  const hostile = await api(pulse, "/api/collect", {
    method: "POST",
    userAgent: DESKTOP_CHROME_UA,
    body: { website_id: site.id, type: "event", url: "/x", event_name: HOSTILE_NAME },
  });
  check(hostile.status === 202, `hostile event: ${JSON.stringify(hostile)}`);

  // The include-bots toggle.
  await dashboard.check("[data-testid=include-bots]");
  await until("the bot's pageview with bots included", 10_000, async () =>
    hasEvent(await panel(dashboard), "pageview", "/crawled-by-a-bot"),
  );
  check(realtimeRequests.some((u) => u.includes("include_bots=true")), "the toggle asks for include_bots=true");
  const withHostile = await panel(dashboard);
  check(hasEvent(withHostile, "event", HOSTILE_NAME), "the hostile event name is shown literally");
  const injected = await dashboard.evaluate(() => ({
    pwned: window.__pwned === 1,
    images: document.querySelectorAll("[data-testid=events] img").length,
  }));
  check(!injected.pwned && injected.images === 0, "an event name must never become HTML");
  await dashboard.uncheck("[data-testid=include-bots]");
  await until("the bot's pageview gone with bots excluded", 10_000, async () => {
    const state = await panel(dashboard);
    return state.dot === "live" && !hasEvent(state, "pageview", "/crawled-by-a-bot") && hasEvent(state, "pageview", "/landing");
  });
  log("include-bots toggle works both ways");

  // Back from a hidden tab: refresh at once.
  const countBeforeVisible = realtimeRequests.length;
  await setTabHidden(dashboard, true);
  await setTabHidden(dashboard, false);
  await until("a refresh as soon as the tab is visible again", 2_000, () => realtimeRequests.length > countBeforeVisible);

  // --- No stream: polling; a hidden tab sends nothing: a page on Playwright's fake clock -------
  // The stream is refused for this page (as a proxy that buffers it might), so the dashboard
  // falls back to the 10 s poll and says so. Proving an absence needs more than one refresh
  // period; the fake clock runs those periods in an instant. The same page first shows that the
  // clock does drive the refresh, so the hidden-tab check below can fail.
  const pausedPage = await (await browser.newContext()).newPage();
  await pausedPage.route("**/realtime/stream*", (route) => route.abort("connectionrefused"));
  await pausedPage.clock.install();
  const pausedRequests = [];
  pausedPage.on("request", (request) => {
    if (request.url().includes(`/api/websites/${site.id}/realtime`)) pausedRequests.push(request.url());
  });
  await pausedPage.goto(`${pulse.origin}/#/site/${encodeURIComponent(site.id)}`);
  await until("the first realtime request of the fake-clock page, polling", 10_000, async () => {
    const state = await panel(pausedPage);
    return pausedRequests.some(isPoll) && state.dot === "live" && state.mode === "polling";
  });
  const afterFirst = pausedRequests.filter(isPoll).length;
  // The next poll is held on its way until the tab is hidden: its answer, arriving in a hidden
  // tab, must not start anything either (it used to ask for the breakdown).
  let releasePoll;
  const pollHeld = new Promise((resolve) => (releasePoll = resolve));
  let pollAnswered = false;
  await pausedPage.route(isPoll, async (route) => {
    await pollHeld;
    await route.continue();
  });
  pausedPage.on("requestfinished", (request) => {
    if (isPoll(request.url())) pollAnswered = true;
  });
  await pausedPage.clock.runFor(11_000);
  await until("a refresh after one fake 10 s period", 5_000, () => pausedRequests.filter(isPoll).length > afterFirst);
  await setTabHidden(pausedPage, true);
  const whileHidden = pausedRequests.length;
  releasePoll();
  await until("the held poll answered in the hidden tab", 5_000, () => pollAnswered);
  await pausedPage.unroute(isPoll);
  await pausedPage.clock.runFor(5 * 60_000);
  // A request the page starts now is seen after any the fake minutes started: wait for it.
  let sentinelSeen = false;
  pausedPage.on("request", (request) => {
    if (request.url().includes("/healthz?after-hidden")) sentinelSeen = true;
  });
  await pausedPage.evaluate(() => fetch("/healthz?after-hidden").then((r) => r.text()));
  await until("the request sent after the hidden fake minutes", 5_000, () => sentinelSeen);
  check(
    pausedRequests.length === whileHidden,
    `a hidden tab sent ${pausedRequests.length - whileHidden} realtime request(s) in 5 fake minutes`,
  );
  await setTabHidden(pausedPage, false);
  await until("a refresh as soon as the fake-clock tab is visible", 5_000, () => pausedRequests.length > whileHidden);
  await pausedPage.context().close();
  log("hidden tab: no requests for 5 fake minutes, one at once on return");

  // --- Server stopped: quiet error, grey dot, last good data kept --------------------------
  const port = pulse.port;
  await stopPulse(pulse);
  log("pulse stopped (SIGTERM)");
  const failed = await until("the error notice and the grey dot", 25_000, async () => {
    const state = await panel(dashboard);
    return state.notice && state.dot === "stale" ? state : false;
  });
  check(Number(failed.active) >= 1 && hasEvent(failed, "event", "signup"), `the last good data stays: ${JSON.stringify(failed)}`);
  log(`error state: "${failed.notice.trim()}"`);
  await screenshot(dashboard, "error-state");

  // --- Server back on the same port: recovery -----------------------------------------------
  pulse = await startPulse({ port, dataDir });
  log(`pulse restarted at ${pulse.origin}`);
  await until("recovery: green dot, notice gone", 45_000, async () => {
    const state = await panel(dashboard);
    return state.dot === "live" && state.notice === null;
  });
  log("recovered");
  await screenshot(dashboard, "recovered");
  check(dashboardErrors.length === 0, `the dashboard logged errors: ${dashboardErrors.join("; ")}`);

  // --- The admin token prompt -------------------------------------------------------------------
  const lockedDir = mkdtempSync(join(tmpdir(), "pulse-browser-token-"));
  cleanups.push(() => rmSync(lockedDir, { recursive: true, force: true }));
  const locked = await startPulse({ dataDir: lockedDir, adminToken: "s3cret-admin-token" });
  const lockedSite = await api(locked, "/api/websites", {
    method: "POST",
    token: "s3cret-admin-token",
    body: { name: "Locked site", domain: "locked.test" },
  });
  check(lockedSite.status === 201, `website on the locked server: ${JSON.stringify(lockedSite)}`);
  const tokenPage = await (await browser.newContext()).newPage();
  const tokenPageErrors = [];
  tokenPage.on("pageerror", (error) => tokenPageErrors.push(error.message));
  await tokenPage.goto(`${locked.origin}/`);
  await until("the token prompt on 401", 10_000, async () => {
    check(tokenPageErrors.length === 0, `the dashboard threw: ${tokenPageErrors.join("; ")}`);
    return tokenPage.locator("[data-testid=token-dialog]").isVisible();
  });
  await tokenPage.fill("[data-testid=token-input]", "wrong-token");
  await tokenPage.press("[data-testid=token-input]", "Enter");
  await until("the prompt again for a wrong token", 10_000, async () =>
    (await tokenPage.locator("[data-testid=token-dialog]").isVisible()) &&
    /not accepted/.test(await tokenPage.locator("#token-why").textContent()),
  );
  await tokenPage.fill("[data-testid=token-input]", "s3cret-admin-token");
  await tokenPage.press("[data-testid=token-input]", "Enter");
  await until("the website list with the token", 10_000, () =>
    tokenPage.locator("[data-testid=site-link]", { hasText: "Locked site" }).isVisible(),
  );
  const storage = await tokenPage.evaluate(() => ({
    session: sessionStorage.getItem("pulse.adminToken"),
    local: localStorage.length,
    cookies: document.cookie,
  }));
  check(storage.session === "s3cret-admin-token", "the token is kept in sessionStorage");
  check(storage.local === 0 && storage.cookies === "", "nothing in localStorage or cookies");
  log("admin token prompt works");
  await stopPulse(locked);

  await stopPulse(pulse);
  log(`ok: all checks passed in ${((Date.now() - started) / 1000).toFixed(1)}s`);
}

async function cleanup() {
  for (const fn of cleanups.reverse()) {
    try {
      await fn();
    } catch {
      // best effort
    }
  }
}

const deadline = setTimeout(async () => {
  console.error(`FAIL: the browser test took longer than ${OVERALL_DEADLINE_MS / 1000}s`);
  await cleanup();
  process.exit(1);
}, OVERALL_DEADLINE_MS);

try {
  await main();
  clearTimeout(deadline);
  await cleanup();
  process.exit(0); // lingering keep-alive sockets must not hold the process open
} catch (error) {
  clearTimeout(deadline);
  console.error(`FAIL: ${error instanceof TestFailure ? error.message : error.stack || error}`);
  await cleanup();
  process.exit(1);
}
