/* Pulse dashboard: the website list, the "add website" form, the realtime panel of one website
 * and the admin-token prompt. Plain DOM, no framework, no build step.
 *
 * The realtime panel reads the live stream (GET …/realtime/stream, Server-Sent Events read with
 * fetch and a stream reader, so the admin token stays in a header and never in a URL). When the
 * stream fails it polls GET …/realtime every 10 s and retries the stream with backoff; the badge
 * says which is feeding the panel. The chart and ranked lists come from GET …/realtime/breakdown,
 * fetched when a stream message arrives (at most every 5 s), on every poll, and once a minute.
 *
 * Everything the API returns is untrusted (event urls and names come from any web page): it
 * reaches the page only as text (textContent, text nodes), never parsed as HTML. */
(function () {
  "use strict";

  const REFRESH_MS = 10000; // realtime refresh while the tab is visible
  const BACKOFF_BASE_MS = 2000; // first retry after an error; doubles per failure
  const BACKOFF_MAX_MS = 60000;
  const REQUEST_TIMEOUT_MS = 8000;
  const TOKEN_KEY = "pulse.adminToken"; // sessionStorage only: gone with the tab
  const SKELETON_ROWS = 5;
  const STREAM_RETRY_BASE_MS = 5000; // first stream retry after a failure; doubles per failure
  const STREAM_RETRY_MAX_MS = 60000;
  const STREAM_SILENCE_MS = 40000; // no byte for this long (heartbeats come every 15 s): dead
  const BREAKDOWN_MIN_GAP_MS = 5000; // breakdown fetched at most this often on stream messages
  const BREAKDOWN_MAX_AGE_MS = 60000; // and at least this often, so the chart's minutes move
  const BREAKDOWN_LIMIT = 10;
  const SERIES_POINTS = 30;

  const $ = (id) => document.getElementById(id);

  /** Builds an element: attributes from `attrs`, children appended as nodes or text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child != null) node.append(child); // strings become text nodes
    }
    return node;
  }

  // ---------------------------------------------------------------------------------------
  // API
  // ---------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  let clockOffsetMs = 0; // server clock minus browser clock, when they disagree by > 2 s

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Storage disabled: the token lives only as long as this page.
    }
    $("forget-token").hidden = !value;
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    const bearer = token();
    if (bearer) headers.Authorization = "Bearer " + bearer;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    let response;
    let json = null;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
        credentials: "same-origin",
        signal: abort.signal,
      });
      json = await response.json().catch(() => null);
    } catch (e) {
      throw new ApiError(0, "network", "The server cannot be reached.");
    } finally {
      clearTimeout(timer);
    }
    if (!response.ok) {
      const error = (json && json.error) || {};
      throw new ApiError(
        response.status,
        error.code || "http_" + response.status,
        error.message || "The server answered " + response.status + ".",
      );
    }
    const date = Date.parse(response.headers.get("Date") || "");
    if (!Number.isNaN(date)) {
      // Date has whole seconds: the server's clock is somewhere in [date, date + 1 s).
      const offset = date + 500 - Date.now();
      clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
    }
    return json;
  }

  function backoffMs(failures) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, failures - 1));
    return Math.round(base * (0.8 + Math.random() * 0.4));
  }

  function describe(error) {
    if (error.status === 0) return "Can't reach the server.";
    if (error.status >= 500) return "The server answered with an error (" + error.status + ").";
    return error.message;
  }

  // ---------------------------------------------------------------------------------------
  // Admin token
  // ---------------------------------------------------------------------------------------

  const dialog = $("token-dialog");

  function askForToken() {
    const rejected = Boolean(token());
    setToken("");
    // Several requests may fail at once: the first one's reason (a rejected token) stays.
    if (rejected || !dialog.open) {
      $("token-why").textContent = rejected
        ? "That token was not accepted. Enter the admin token this server was started with."
        : "This Pulse server needs its admin token. It is kept only in this browser tab and forgotten when you close it.";
    }
    showSitesNotice("The admin token is needed to see your websites.", "Enter token", openTokenDialog);
    openTokenDialog();
  }

  function openTokenDialog() {
    if (dialog.open) return;
    $("token-input").value = "";
    if (typeof dialog.showModal === "function") dialog.showModal();
    else dialog.setAttribute("open", "");
    $("token-input").focus();
  }

  $("token-form").addEventListener("submit", () => {
    // method="dialog": the browser closes the dialog after this handler.
    const value = $("token-input").value.trim();
    if (!value) return;
    setToken(value);
    loadSites();
    if (rt.siteId) startStream();
  });

  $("forget-token").addEventListener("click", () => {
    setToken("");
    loadSites();
  });

  // ---------------------------------------------------------------------------------------
  // Websites
  // ---------------------------------------------------------------------------------------

  let sites = null; // [{id, name, domain, bot_policy, ...}] once loaded
  let sitesFailures = 0;
  let sitesTimer = null;

  function showSitesNotice(text, actionLabel, action) {
    const notice = $("sites-error");
    notice.replaceChildren(text);
    if (actionLabel) {
      const button = el("button", { type: "button", class: "link" }, actionLabel);
      button.addEventListener("click", action);
      notice.append(" ", button);
    }
    notice.hidden = false;
  }

  async function loadSites() {
    clearTimeout(sitesTimer);
    try {
      const body = await api("/api/websites");
      sites = Array.isArray(body && body.data) ? body.data : [];
      sitesFailures = 0;
      $("sites-error").hidden = true;
      renderSites();
      if (rt.siteId) applySite();
    } catch (error) {
      if (error.status === 401) return askForToken();
      sitesFailures += 1;
      const delay = backoffMs(sitesFailures);
      showSitesNotice("Couldn't load websites. " + describe(error), "Retry now", loadSites);
      sitesTimer = setTimeout(loadSites, delay);
      if (sites === null) $("site-list").replaceChildren();
    }
  }

  function renderSites() {
    const list = $("site-list");
    list.setAttribute("aria-busy", "false");
    if (!sites.length) {
      list.replaceChildren(el("li", { class: "muted" }, "No websites yet."));
      $("add-site").open = true;
      return;
    }
    list.replaceChildren(
      ...sites.map((site) =>
        el(
          "li",
          {},
          el(
            "a",
            {
              href: "#/site/" + encodeURIComponent(site.id),
              "data-testid": "site-link",
              "data-site-id": site.id,
              "aria-current": site.id === rt.siteId ? "page" : null,
            },
            site.name || site.id,
            el("span", { class: "domain" }, site.domain || ""),
          ),
        ),
      ),
    );
  }

  $("add-site-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.currentTarget;
    const errorLine = $("add-site-error");
    const button = form.querySelector("button[type=submit]");
    errorLine.hidden = true;
    button.disabled = true;
    try {
      const body = await api("/api/websites", {
        method: "POST",
        body: { name: $("site-name").value.trim(), domain: $("site-domain").value.trim() },
      });
      const site = body && body.data ? body.data : body;
      sites = (sites || []).concat([site]);
      form.reset();
      $("add-site").open = false;
      location.hash = "#/site/" + encodeURIComponent(site.id);
      renderSites();
    } catch (error) {
      if (error.status === 401) {
        askForToken();
      } else {
        errorLine.textContent = describe(error);
        errorLine.hidden = false;
      }
    } finally {
      button.disabled = false;
    }
  });

  // ---------------------------------------------------------------------------------------
  // Realtime
  // ---------------------------------------------------------------------------------------

  const rt = {
    siteId: null,
    includeBots: null, // null: the website's own bot policy
    data: null, // the last good answer
    lastOkAt: 0, // when it arrived (browser clock)
    failures: 0,
    timer: null,
    generation: 0, // answers of an older generation are stale and dropped
    seen: new Set(), // keys of the events already shown, to highlight new ones
    mode: null, // "live" (the stream feeds the panel) or "polling"
    stream: null, // the AbortController of the open stream
    streamFailures: 0,
    streamTimer: null, // the stream's next attempt
    breakdownAt: 0, // when the last breakdown request went out
    breakdownTimer: null,
    breakdownGeneration: 0,
    breakdownUnavailable: false, // the server has no breakdown route
  };

  function currentSite() {
    return (sites || []).find((site) => site.id === rt.siteId) || null;
  }

  function selectSite(id) {
    rt.siteId = id;
    rt.includeBots = null;
    rt.data = null;
    rt.failures = 0;
    rt.seen = new Set();
    rt.generation += 1;
    rt.streamFailures = 0;
    clearTimeout(rt.timer);
    resetBreakdown();
    $("welcome").hidden = true;
    $("realtime").hidden = false;
    $("error-notice").hidden = true;
    $("snippet").textContent =
      '<script defer src="' + location.origin + '/s.js" data-website-id="' + id + '"></script>';
    $("copy-status").textContent = "";
    showSkeleton();
    setLive("loading");
    setMode(null);
    applySite();
    if (sites) renderSites();
    startStream();
  }

  /** Name, domain and default bot policy of the selected website, once the list is known. */
  function applySite() {
    const site = currentSite();
    $("site-title").textContent = site ? site.name || site.id : rt.siteId;
    $("site-domain-label").textContent = site ? site.domain : "";
    if (rt.includeBots === null) $("include-bots").checked = Boolean(site && site.bot_policy === "include");
    updateTitle();
  }

  function updateTitle() {
    const site = currentSite();
    const name = site ? site.name || site.id : rt.siteId;
    const count = rt.data ? rt.data.active_visitors : null;
    document.title = rt.siteId
      ? (count === null ? "" : count.toLocaleString() + " now · ") + name + " · Pulse"
      : "Pulse";
  }

  function showSkeleton() {
    const skeletonNumber = () => el("span", { class: "skeleton skeleton-number", "data-testid": "skeleton" });
    $("active-visitors").replaceChildren(skeletonNumber());
    $("total-events").replaceChildren(skeletonNumber());
    const rows = [];
    for (let i = 0; i < SKELETON_ROWS; i += 1) {
      rows.push(el("li", { class: "skeleton skeleton-event", "data-testid": "skeleton", "aria-hidden": "true" }));
    }
    $("events").replaceChildren(...rows);
    $("events").setAttribute("aria-busy", "true");
    $("events-empty").hidden = true;
  }

  function showNoData() {
    $("active-visitors").replaceChildren("–");
    $("total-events").replaceChildren("–");
    $("events").replaceChildren();
    $("events").setAttribute("aria-busy", "false");
  }

  function setLive(state) {
    const dot = $("live-dot");
    dot.dataset.state = state;
    $("live-label").textContent =
      state === "live" ? "Live" : state === "loading" ? "Connecting…" : "Not live";
  }

  /** Which source feeds the panel: "live" (the stream), "polling", or null (neither yet). */
  function setMode(mode) {
    rt.mode = mode;
    const badge = $("stream-mode");
    badge.hidden = !mode;
    badge.dataset.mode = mode || "";
    badge.textContent = mode || "";
    badge.title =
      mode === "live"
        ? "Updates are pushed by the server as they happen."
        : mode === "polling"
          ? "The live stream is unavailable: refreshing every 10 seconds."
          : "";
  }

  function realtimeQuery() {
    return rt.includeBots === null ? "" : "?include_bots=" + rt.includeBots;
  }

  function sitePath(suffix) {
    return "/api/websites/" + encodeURIComponent(rt.siteId) + suffix;
  }

  // ---------------------------------------------------------------------------------------
  // The live stream
  // ---------------------------------------------------------------------------------------

  function stopStream() {
    clearTimeout(rt.streamTimer);
    rt.streamTimer = null;
    if (rt.stream) rt.stream.abort();
    rt.stream = null;
  }

  /** Opens the stream of the selected website (closing any other); polls until it delivers. */
  function startStream() {
    stopStream();
    if (!rt.siteId || document.hidden) return;
    if (typeof ReadableStream === "undefined" || typeof TextDecoder === "undefined") {
      setMode("polling");
      refresh();
      return;
    }
    const abort = new AbortController();
    rt.stream = abort;
    readStream(sitePath("/realtime/stream" + realtimeQuery()), abort.signal).then(
      () => streamFailed(abort, new ApiError(0, "ended", "The live stream ended.")),
      (error) => streamFailed(abort, error),
    );
  }

  /** Reads the stream until it ends; each `data:` message renders the panel. */
  async function readStream(path, signal) {
    const headers = { Accept: "text/event-stream" };
    const bearer = token();
    if (bearer) headers.Authorization = "Bearer " + bearer;
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store", credentials: "same-origin", signal });
    } catch (e) {
      throw new ApiError(0, "network", "The server cannot be reached.");
    }
    if (!response.ok || !response.body) {
      const json = await response.json().catch(() => null);
      const error = (json && json.error) || {};
      const failure = new ApiError(
        response.status,
        error.code || "http_" + response.status,
        error.message || "The server answered " + response.status + ".",
      );
      failure.retryAfterMs = 1000 * Number(response.headers.get("Retry-After") || 0);
      throw failure;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (e) {
        throw new ApiError(0, "network", "The live stream was cut.");
      }
      if (chunk.done) return;
      if (signal.aborted) return;
      rt.streamSeenAt = Date.now(); // heartbeats count: the connection is alive
      buffer += decoder.decode(chunk.value, { stream: true }).replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        onStreamMessage(block);
      }
    }
  }

  function onStreamMessage(block) {
    const data = block
      .split("\n")
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).replace(/^ /, ""))
      .join("\n");
    if (!data) return; // a comment: the heartbeat
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch (e) {
      return;
    }
    rt.data = parsed;
    rt.lastOkAt = Date.now();
    rt.failures = 0;
    rt.streamFailures = 0;
    // The stream feeds the panel now: no polling.
    clearTimeout(rt.timer);
    rt.timer = null;
    rt.generation += 1; // a poll still on its way is older than this
    setMode("live");
    setLive("live");
    $("error-notice").hidden = true;
    renderRealtime();
    requestBreakdown(false);
  }

  /** The stream `abort` ended or failed: poll instead, and try the stream again later. */
  function streamFailed(abort, error) {
    if (abort.signal.aborted || rt.stream !== abort) return; // closed on purpose, or replaced
    rt.stream = null;
    if (error.status === 401) {
      setMode(null);
      setLive("stale");
      if (!rt.data) showNoData();
      showNotice("The admin token is needed.", null);
      askForToken(); // the stream restarts once a token is entered
      return;
    }
    if (error.status === 404) {
      setMode(null);
      setLive("stale");
      if (!rt.data) showNoData();
      showNotice("No website has this id. It may have been deleted.", null);
      return;
    }
    rt.streamFailures += 1;
    setMode("polling");
    refresh();
    const delay = Math.max(
      error.retryAfterMs || 0,
      Math.min(STREAM_RETRY_MAX_MS, STREAM_RETRY_BASE_MS * 2 ** (rt.streamFailures - 1)),
    );
    rt.streamTimer = setTimeout(startStream, Math.round(delay * (0.8 + Math.random() * 0.4)));
  }

  function schedule(delay) {
    clearTimeout(rt.timer);
    rt.timer = null;
    if (!rt.siteId || document.hidden) return; // paused; visibilitychange resumes
    rt.timer = setTimeout(refresh, delay);
  }

  async function refresh() {
    clearTimeout(rt.timer);
    rt.timer = null;
    if (!rt.siteId) return;
    const generation = ++rt.generation;
    const query = rt.includeBots === null ? "" : "?include_bots=" + rt.includeBots;
    try {
      const body = await api("/api/websites/" + encodeURIComponent(rt.siteId) + "/realtime" + query);
      if (generation !== rt.generation) return;
      rt.data = body.data;
      rt.lastOkAt = Date.now();
      rt.failures = 0;
      $("error-notice").hidden = true;
      setLive("live");
      renderRealtime();
      requestBreakdown(true);
      if (rt.mode !== "live") schedule(REFRESH_MS);
    } catch (error) {
      if (generation !== rt.generation) return;
      setLive("stale");
      if (!rt.data) showNoData();
      if (error.status === 401) {
        showNotice("The admin token is needed.", null);
        askForToken(); // refresh resumes once a token is entered
        return;
      }
      if (error.status === 404) {
        showNotice("No website has this id. It may have been deleted.", null);
        return;
      }
      rt.failures += 1;
      const since = rt.data
        ? " Showing data from " + new Date(rt.lastOkAt).toLocaleTimeString() + "."
        : "";
      showNotice(describe(error) + since + " Retrying automatically.", "Retry now");
      schedule(backoffMs(rt.failures));
    }
  }

  // ---------------------------------------------------------------------------------------
  // Breakdown: the per-minute chart and the ranked lists
  // ---------------------------------------------------------------------------------------

  function resetBreakdown() {
    clearTimeout(rt.breakdownTimer);
    rt.breakdownTimer = null;
    rt.breakdownAt = 0;
    rt.breakdownGeneration += 1;
    $("trend").hidden = true;
    $("breakdowns").hidden = true;
  }

  /** Asks for the breakdown now (`force`) or, on stream messages, at most every 5 s. */
  function requestBreakdown(force) {
    // A hidden tab asks for nothing, also when a poll it sent before hiding is answered after.
    if (!rt.siteId || rt.breakdownUnavailable || document.hidden) return;
    const since = Date.now() - rt.breakdownAt;
    if (!force && since < BREAKDOWN_MIN_GAP_MS) {
      // One trailing request, so the last change within the gap is shown too.
      if (!rt.breakdownTimer) {
        rt.breakdownTimer = setTimeout(() => {
          rt.breakdownTimer = null;
          requestBreakdown(true);
        }, BREAKDOWN_MIN_GAP_MS - since);
      }
      return;
    }
    clearTimeout(rt.breakdownTimer);
    rt.breakdownTimer = null;
    rt.breakdownAt = Date.now();
    loadBreakdown();
  }

  async function loadBreakdown() {
    const generation = ++rt.breakdownGeneration;
    const bots = rt.includeBots === null ? "" : "&include_bots=" + rt.includeBots;
    try {
      const body = await api(sitePath("/realtime/breakdown?limit=" + BREAKDOWN_LIMIT + bots));
      if (generation !== rt.breakdownGeneration || !body || !body.data) return;
      renderBreakdown(body.data);
    } catch (error) {
      if (generation !== rt.breakdownGeneration) return;
      // A server without the breakdown route: the panel goes without it.
      if (error.status === 404 && error.code === "not_found") rt.breakdownUnavailable = true;
      // Anything else: the last breakdown stays; the next message or poll tries again.
    }
  }

  function renderBreakdown(data) {
    const series = Array.isArray(data.series) ? data.series.slice(-SERIES_POINTS) : [];
    const peak = Math.max(0, ...series.map((p) => Number(p.pageviews) || 0));
    // Labels are HTML, not SVG text: the chart stretches to any width, text must not.
    $("chart").replaceChildren(
      chart(series),
      el(
        "div",
        { class: "axis-row", "aria-hidden": "true" },
        el("span", {}, series.length ? minuteLabel(series[0].minute) : ""),
        el("span", {}, "busiest minute: " + peak.toLocaleString() + " pageviews"),
        el("span", {}, "now"),
      ),
    );
    $("approximate-note").hidden = data.approximate !== true;
    $("trend").hidden = false;
    for (const list of $("breakdowns").querySelectorAll("ol[data-list]")) {
      const rows = Array.isArray(data[list.dataset.list]) ? data[list.dataset.list] : [];
      renderRanked(list, rows);
    }
    $("breakdowns").hidden = false;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function minuteLabel(iso) {
    const at = Date.parse(iso);
    if (Number.isNaN(at)) return "";
    return new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  /** Pageviews (wide, pale) and visitors (narrow, solid) per minute, oldest on the left. */
  function chart(series) {
    const width = 600;
    const height = 130;
    const top = 4;
    const bottom = 1;
    const plot = height - top - bottom;
    const slot = width / SERIES_POINTS;
    const max = Math.max(1, ...series.map((p) => Math.max(Number(p.pageviews) || 0, Number(p.visitors) || 0)));
    const y = (value) => top + plot - (plot * value) / max;
    const totalVisitors = series.reduce((sum, p) => sum + (Number(p.visitors) || 0), 0);
    const totalViews = series.reduce((sum, p) => sum + (Number(p.pageviews) || 0), 0);
    const root = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      preserveAspectRatio: "none",
      role: "img",
      "aria-label":
        "Pageviews and visitors per minute over the last 30 minutes: " +
        totalViews + " pageviews; the busiest minute had " + max + ".",
      "data-points": series.length,
      "data-total-visitors": totalVisitors,
      "data-total-pageviews": totalViews,
    });
    root.append(
      svg("line", { class: "grid", x1: 0, x2: width, y1: top + plot, y2: top + plot, "vector-effect": "non-scaling-stroke" }),
      svg("line", { class: "grid", x1: 0, x2: width, y1: top, y2: top, "vector-effect": "non-scaling-stroke" }),
    );
    series.forEach((point, i) => {
      const views = Number(point.pageviews) || 0;
      const visitors = Number(point.visitors) || 0;
      const x = i * slot;
      const group = svg(
        "g",
        { class: "minute", "data-testid": "chart-minute" },
        svg("title", {}, minuteLabel(point.minute) + ": " + visitors + " visitors, " + views + " pageviews"),
        svg("rect", { class: "hit", x: x, y: top, width: slot, height: plot, fill: "transparent" }),
        svg("rect", { class: "bar-pageviews", x: x + 1, y: y(views), width: slot - 2, height: top + plot - y(views), rx: 1.5 }),
        svg("rect", { class: "bar-visitors", x: x + slot * 0.3, y: y(visitors), width: slot * 0.4, height: top + plot - y(visitors), rx: 1 }),
      );
      root.append(group);
    });
    return root;
  }

  function displayValue(list, value) {
    if (value == null || value === "") {
      return list === "referrers" ? "(direct)" : list === "countries" ? "Unknown" : "(none)";
    }
    return list === "devices" || list === "browsers" ? capitalise(String(value)) : String(value);
  }

  function renderRanked(list, rows) {
    const name = list.dataset.list;
    if (!rows.length) {
      list.replaceChildren(el("li", { class: "none" }, name === "events" ? "No custom events yet." : "Nothing yet."));
      return;
    }
    const top = Math.max(1, ...rows.map((r) => Number(r.visitors) || 0));
    list.replaceChildren(
      el(
        "li",
        { class: "head", "aria-hidden": "true" },
        el("span", { class: "value" }, ""),
        el("span", { class: "num" }, "Visitors"),
        el("span", { class: "num events" }, list.dataset.eventsLabel || "Events"),
      ),
      ...rows.map((row) => {
        const visitors = Number(row.visitors) || 0;
        const share = el("span", { class: "share", "aria-hidden": "true" });
        share.style.width = ((100 * visitors) / top).toFixed(1) + "%";
        return el(
          "li",
          { "data-testid": "ranked-row", "data-value": row.value == null ? "" : String(row.value) },
          share,
          el("span", { class: "value" }, displayValue(name, row.value)),
          el("span", { class: "num", title: "visitors" }, visitors.toLocaleString()),
          el("span", { class: "num events", title: "events" }, (Number(row.events) || 0).toLocaleString()),
        );
      }),
    );
  }

  function showNotice(text, actionLabel) {
    const notice = $("error-notice");
    notice.replaceChildren(text);
    if (actionLabel) {
      const button = el("button", { type: "button", class: "link", "data-testid": "retry-now" }, actionLabel);
      button.addEventListener("click", refresh);
      notice.append(" ", button);
    }
    notice.hidden = false;
  }

  function eventKey(event) {
    return event.ts + "\u0000" + event.event_type + "\u0000" + event.url;
  }

  function renderRealtime() {
    const data = rt.data;
    const active = Number(data.active_visitors);
    // The server marks counts it had to estimate to stay within its memory limit.
    const approximate = data.approximate === true;
    $("active-visitors").replaceChildren((approximate ? "≈ " : "") + active.toLocaleString());
    $("active-caption").textContent =
      (active === 1 ? "visitor" : "visitors") +
      " in the last 30 minutes" +
      (approximate ? " (estimated within 2%: the exact count exceeds the memory limit)" : "");
    const total = data.pagination ? data.pagination.total_in_window : null;
    $("total-events").replaceChildren(total == null ? "–" : Number(total).toLocaleString());

    const events = Array.isArray(data.recent_events) ? data.recent_events : [];
    const highlight = rt.seen.size > 0;
    const seen = new Set();
    const rows = events.map((event) => {
      const key = eventKey(event);
      seen.add(key);
      return eventRow(event, highlight && !rt.seen.has(key));
    });
    rt.seen = seen;
    $("events").replaceChildren(...rows);
    $("events").setAttribute("aria-busy", "false");
    $("events-empty").hidden = events.length > 0;
    updateTitle();
  }

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : "";
  }

  function eventRow(event, isNew) {
    const custom = event.event_type === "event";
    const at = Date.parse(event.ts);
    const meta = [
      event.referrer_domain ? "from " + event.referrer_domain : custom ? null : "direct",
      [capitalise(event.browser), event.device_type].filter(Boolean).join(" on "),
      event.country,
    ].filter(Boolean);
    return el(
      "li",
      { class: "event" + (isNew ? " new" : ""), "data-testid": "event", "data-event-type": custom ? "event" : "pageview" },
      el(
        "div",
        { class: "event-main" },
        custom ? el("span", { class: "event-kind" }, "Event") : el("span", { class: "sr-only" }, "Page view "),
        el("span", { class: custom ? "event-target" : "event-target page", "data-testid": "event-target" }, String(event.url)),
      ),
      el(
        "time",
        { datetime: event.ts, "data-ts": Number.isNaN(at) ? null : at, title: Number.isNaN(at) ? null : new Date(at).toLocaleString() },
        Number.isNaN(at) ? "" : ago(at),
      ),
      el("p", { class: "event-meta" }, meta.join(" · ")),
    );
  }

  function ago(at) {
    const seconds = Math.max(0, Math.floor((Date.now() + clockOffsetMs - at) / 1000));
    if (seconds < 60) return seconds + "s ago";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + "m ago";
    const hours = Math.floor(minutes / 60);
    if (hours < 24) return hours + "h ago";
    return Math.floor(hours / 24) + "d ago";
  }

  /** Every second: relative times keep ticking, and data that stopped arriving stops looking live. */
  function tick() {
    if (document.hidden) return;
    for (const time of $("events").querySelectorAll("time[data-ts]")) {
      const text = ago(Number(time.dataset.ts));
      if (time.textContent !== text) time.textContent = text;
    }
    if (rt.mode === "live" && rt.stream && Date.now() - Math.max(rt.lastOkAt, rt.streamSeenAt || 0) > STREAM_SILENCE_MS) {
      // Not even a heartbeat: the connection is dead without having said so.
      const stream = rt.stream;
      streamFailed(stream, new ApiError(0, "silent", "The live stream went silent."));
      stream.abort();
    }
    if ($("live-dot").dataset.state === "live" && Date.now() - Math.max(rt.lastOkAt, rt.mode === "live" ? rt.streamSeenAt || 0 : 0) > REFRESH_MS * 3) {
      setLive("stale");
    }
    if (rt.siteId && rt.data && !rt.breakdownUnavailable && Date.now() - rt.breakdownAt > BREAKDOWN_MAX_AGE_MS) {
      requestBreakdown(true);
    }
  }

  $("include-bots").addEventListener("change", (event) => {
    rt.includeBots = event.currentTarget.checked;
    rt.seen = new Set();
    rt.streamFailures = 0;
    clearTimeout(rt.timer);
    rt.timer = null;
    rt.generation += 1;
    resetBreakdown();
    startStream();
  });

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      clearTimeout(rt.timer); // paused while nobody is looking: no polls, no stream
      rt.timer = null;
      clearTimeout(rt.breakdownTimer);
      rt.breakdownTimer = null;
      stopStream();
    } else if (rt.siteId) {
      startStream(); // at once on return
    }
  });

  window.addEventListener("online", () => {
    if (rt.siteId && (rt.failures > 0 || rt.mode !== "live")) startStream();
  });

  // ---------------------------------------------------------------------------------------
  // Snippet
  // ---------------------------------------------------------------------------------------

  $("copy-snippet").addEventListener("click", async () => {
    const text = $("snippet").textContent;
    const status = $("copy-status");
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = "Copied to the clipboard.";
    } catch (e) {
      // No clipboard API (plain http): select the text so Ctrl+C / Cmd+C copies it.
      const range = document.createRange();
      range.selectNodeContents($("snippet"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      status.textContent = "Selected: press Ctrl+C (or ⌘C) to copy.";
    }
  });

  // ---------------------------------------------------------------------------------------
  // Routing: #/site/ID shows that website; anything else the welcome text.
  // ---------------------------------------------------------------------------------------

  function route(moveFocus) {
    // In-page anchors such as the skip link (#main) are not routes.
    if (location.hash && !location.hash.startsWith("#/")) return;
    const match = /^#\/site\/([^/]+)$/.exec(location.hash);
    let id = null;
    if (match) {
      try {
        id = decodeURIComponent(match[1]);
      } catch (e) {
        id = null;
      }
    }
    if (!id) {
      rt.siteId = null;
      rt.generation += 1;
      clearTimeout(rt.timer);
      stopStream();
      resetBreakdown();
      setMode(null);
      $("realtime").hidden = true;
      $("welcome").hidden = false;
      updateTitle();
      if (sites) renderSites();
      return;
    }
    if (id !== rt.siteId) selectSite(id);
    if (moveFocus) {
      $("site-title").setAttribute("tabindex", "-1");
      $("site-title").focus();
    }
  }

  window.addEventListener("hashchange", () => route(true));

  setToken(token());
  setInterval(tick, 1000);
  route(false);
  loadSites();
})();
