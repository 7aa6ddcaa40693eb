// The real trackers of Sparklytics, Plausible and Umami against Pulse, unmodified (issue 13).
//
// Starts the real `pulse` binary (PULSE_BIN, default target/debug/pulse from the repo root) on a
// free loopback port with a temporary data directory, and serves test pages from a second
// loopback port, so every browser request is cross-origin. In Debian's headless `chromium`
// (driven by playwright-core; never a downloaded browser), with a desktop Chrome User-Agent:
//   - Sparklytics' own `s.js` (vendored in sparklytics/, MIT, loaded with `data-api-host`),
//   - Plausible's tracker (`@plausible-analytics/tracker`, its ESM file served as it is from
//     node_modules, `captureOnLocalhost: true` since the page is on 127.0.0.1),
// each send a pageview, a custom event with properties and an SPA navigation; from Node,
// `@umami/node` does the same. Pulse's realtime API must then show the visitor, the event name
// and the paths without their query strings. Sparklytics' `identify()` must make a second visitor.
// Plausible's engagement pings are answered 202 and never show up as events.
//
// Run: `npm ci` here, `cargo build -p pulse-server`, then node server/tests/compat/clients.test.mjs.
// Every wait polls a condition against a deadline. Exits non-zero on the first failure.

import { spawn, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";
import { Umami } from "@umami/node";

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, "../../..");
const PULSE_BIN = resolve(repoRoot, process.env.PULSE_BIN || "target/debug/pulse");
const OVERALL_DEADLINE_MS = 90_000;
const WAIT_MS = 15_000;

/** A desktop Chrome: the visitors must count as humans, not as HeadlessChrome. */
const DESKTOP_CHROME_UA =
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const UMAMI_WEBSITE = "94db1cb1-74f4-4a40-ad6c-962362670409";
const PLAUSIBLE_DOMAIN = "plausible.test";

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

/** Starts pulse on a free port with `dataDir`; resolves once it is listening. */
async function startPulse(dataDir) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("PULSE_")));
  const child = spawn(PULSE_BIN, ["--listen", "127.0.0.1:0", "--data-dir", dataDir], {
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (chunk) => {
    stderr += chunk;
  });
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
    child.once("exit", (code) => reject(new TestFailure(`pulse exited (${code}) before listening; stderr:\n${stderr}`)));
  });
  const match = /^listening on (127\.0\.0\.1:\d+)$/.exec(line.trim());
  check(match, `pulse's first stdout line should be "listening on ADDR", got ${JSON.stringify(line)}`);
  return { child, origin: `http://${match[1]}`, stderr: () => stderr };
}

async function api(pulse, path, { method = "GET", body } = {}) {
  const response = await fetch(pulse.origin + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : null };
}

async function createWebsite(pulse, body) {
  const created = await api(pulse, "/api/websites", { method: "POST", body });
  check(created.status === 201, `POST /api/websites ${JSON.stringify(body)}: ${JSON.stringify(created)}`);
  return created.json.data;
}

async function realtime(pulse, id) {
  const resp = await api(pulse, `/api/websites/${id}/realtime`);
  check(resp.status === 200, `realtime of ${id}: ${JSON.stringify(resp)}`);
  return resp.json.data;
}

/** Waits until website `id`'s realtime shows at least `visitors` visitors and every url in `urls`. */
async function expectRealtime(pulse, id, { visitors, urls }) {
  const data = await until(`${id} to show ${visitors} visitor(s) and ${urls.join(", ")}`, WAIT_MS, async () => {
    const data = await realtime(pulse, id);
    const seen = data.recent_events.map((e) => e.url);
    return data.active_visitors >= visitors && urls.every((u) => seen.includes(u)) ? data : null;
  });
  for (const event of data.recent_events) {
    check(!event.url.includes("?"), `${id}: a recorded url kept its query string: ${event.url}`);
    check(event.browser.toLowerCase() === "chrome", `${id}: desktop Chrome expected, got ${JSON.stringify(event)}`);
  }
  const custom = data.recent_events.filter((e) => e.event_type !== "pageview").map((e) => e.url);
  log(`${id}: ${data.active_visitors} visitor(s); pages ${data.recent_events.filter((e) => e.event_type === "pageview").map((e) => e.url).join(", ")}; events ${custom.join(", ")}`);
  return data;
}

/** The third-party site: Sparklytics' and Plausible's trackers on SPA shells, on its own port. */
async function startTestSite(pulse) {
  const sparklytics = readFileSync(join(here, "sparklytics/s.js"));
  const plausible = readFileSync(join(here, "node_modules/@plausible-analytics/tracker/plausible.js"));
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, "http://x");
    if (url.pathname === "/sparklytics/s.js" || url.pathname === "/plausible.js") {
      response.writeHead(200, { "content-type": "text/javascript" });
      response.end(url.pathname === "/plausible.js" ? plausible : sparklytics);
      return;
    }
    if (url.pathname === "/favicon.ico") {
      response.writeHead(204);
      response.end();
      return;
    }
    const tracker = url.pathname.startsWith("/spark")
      ? `<script defer src="/sparklytics/s.js" data-website-id="spark" data-api-host="${pulse.origin}"></script>`
      : `<script type="module">
           import { init, track } from "/plausible.js";
           init({ domain: "${PLAUSIBLE_DOMAIN}", endpoint: "${pulse.origin}/api/event", captureOnLocalhost: true });
           window.plausibleTrack = track;
         </script>`;
    response.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    response.end(`<!doctype html><html><head><title>Shop</title>${tracker}</head><body><h1>Shop</h1></body></html>`);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  cleanups.push(() => {
    server.closeAllConnections();
    server.close();
  });
  return `http://127.0.0.1:${server.address().port}`;
}

async function main() {
  check(existsSync(PULSE_BIN), `no pulse binary at ${PULSE_BIN}: run \`cargo build -p pulse-server\` or set PULSE_BIN`);
  const executablePath = existsSync("/usr/bin/chromium")
    ? "/usr/bin/chromium"
    : (() => {
        try {
          return execFileSync("sh", ["-c", "command -v chromium"], { encoding: "utf8" }).trim();
        } catch {
          throw new TestFailure("no `chromium`: apt-get install -y chromium");
        }
      })();
  const dataDir = mkdtempSync(join(tmpdir(), "pulse-compat-"));
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
  const pulse = await startPulse(dataDir);
  log(`pulse at ${pulse.origin}`);
  await createWebsite(pulse, { id: "spark", name: "Sparklytics site", domain: "spark.test" });
  await createWebsite(pulse, { id: "plaus", name: "Plausible site", domain: PLAUSIBLE_DOMAIN });
  await createWebsite(pulse, { id: UMAMI_WEBSITE, name: "Umami site", domain: "umami.test" });
  const site = await startTestSite(pulse);
  log(`test pages at ${site}`);

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
  const context = await browser.newContext({ userAgent: DESKTOP_CHROME_UA });
  const refused = [];
  context.on("requestfailed", (r) => refused.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));

  // Sparklytics: pageview, custom event with properties, SPA navigation, then identify().
  const spark = await context.newPage();
  spark.on("console", (m) => m.type() === "error" && log(`spark console: ${m.text()}`));
  await spark.goto(`${site}/spark/home?utm_source=news&utm_medium=email`);
  await until("Sparklytics' tracker to load", WAIT_MS, () => spark.evaluate(() => Boolean(window.sparklytics)));
  await expectRealtime(pulse, "spark", { visitors: 1, urls: ["/spark/home"] });
  await spark.evaluate(() => window.sparklytics.track("signup", { plan: "pro" }));
  await spark.evaluate(() => history.pushState({}, "", "/spark/pricing?ref=nav"));
  await expectRealtime(pulse, "spark", { visitors: 1, urls: ["/spark/home", "signup", "/spark/pricing"] });
  await spark.evaluate(() => {
    window.sparklytics.identify("user-1");
    window.sparklytics.track("upgrade", { plan: "team" });
  });
  await expectRealtime(pulse, "spark", { visitors: 2, urls: ["upgrade"] });

  // Plausible: its tracker captures the first pageview and pushState navigations itself.
  const plaus = await context.newPage();
  plaus.on("console", (m) => m.type() === "error" && log(`plausible console: ${m.text()}`));
  // The tracker's engagement pings (before each SPA pageview, on tab hide), with Pulse's answers.
  const engagements = [];
  plaus.on("response", (r) => {
    const sent = r.request();
    if (sent.url().endsWith("/api/event") && (sent.postData() || "").includes('"engagement"')) engagements.push(r.status());
  });
  await plaus.goto(`${site}/plaus/home?utm_source=news`);
  await until("Plausible's tracker to load", WAIT_MS, () => plaus.evaluate(() => Boolean(window.plausibleTrack)));
  await expectRealtime(pulse, "plaus", { visitors: 1, urls: ["/plaus/home"] });
  await plaus.evaluate(() => window.plausibleTrack("Signup", { props: { plan: "pro" }, revenue: { amount: 9.99, currency: "EUR" } }));
  await plaus.evaluate(() => history.pushState({}, "", "/plaus/pricing?ref=nav"));
  await expectRealtime(pulse, "plaus", { visitors: 1, urls: ["/plaus/home", "Signup", "/plaus/pricing"] });
  // An engagement refreshes the visitor; it is never an event of its own.
  await until("Plausible's engagement ping to be answered", WAIT_MS, () => engagements.length > 0);
  check(engagements.every((status) => status === 202), `engagement answers: ${engagements.join(", ")}`);
  const engaged = await realtime(pulse, "plaus");
  check(
    !engaged.recent_events.some((e) => e.url === "engagement") && engaged.pagination.total_in_window === 3,
    `plaus: an engagement showed up as an event: ${JSON.stringify(engaged)}`,
  );
  log(`plaus: ${engagements.length} engagement ping(s) answered 202, still ${engaged.pagination.total_in_window} events`);

  // Umami from Node: a pageview, a custom event with data, a second page.
  const umami = new Umami({ hostUrl: pulse.origin, websiteId: UMAMI_WEBSITE, userAgent: DESKTOP_CHROME_UA });
  const first = await umami.track({ url: "/umami/home?utm_source=news", hostname: "umami.test", title: "Home", language: "en-US" });
  check(first.status === 200, `@umami/node pageview: ${first.status}`);
  const answer = await first.json();
  check(typeof answer.cache === "string" && "sessionId" in answer, `Umami's answer shape: ${JSON.stringify(answer)}`);
  const custom = await umami.track("signup", { plan: "pro" });
  check(custom.status === 200, `@umami/node event: ${custom.status} ${await custom.text()}`);
  const second = await umami.track({ url: "/umami/pricing?ref=nav", hostname: "umami.test", title: "Pricing" });
  check(second.status === 200, `@umami/node second page: ${second.status}`);
  const identified = await umami.identify({ plan: "pro" });
  check(identified.status === 200, `@umami/node identify: ${identified.status}`);
  await expectRealtime(pulse, UMAMI_WEBSITE, { visitors: 1, urls: ["/umami/home", "signup", "/umami/pricing"] });

  check(refused.length === 0, `requests failed in the browser:\n${refused.join("\n")}`);
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
  console.error(`FAIL: the compat test took longer than ${OVERALL_DEADLINE_MS / 1000}s`);
  await cleanup();
  process.exit(1);
}, OVERALL_DEADLINE_MS);

try {
  await main();
  clearTimeout(deadline);
  await cleanup();
  process.exit(0);
} catch (error) {
  clearTimeout(deadline);
  console.error(`FAIL: ${error instanceof TestFailure ? error.message : error.stack || error}`);
  await cleanup();
  process.exit(1);
}
