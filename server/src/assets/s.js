/*! Pulse tracker: pageviews and custom events, no cookies, no storage, no fingerprinting.
 * <script defer src="https://HOST/s.js" data-website-id="ID"></script>
 * Optional: data-api-host="https://proxy.example" sends to that host instead of the script's.
 * API: pulse.track(name, data) sends a custom event. */
(function (w, d) {
  "use strict";
  try {
    var script = d.currentScript;
    var site = script && script.getAttribute("data-website-id");
    if (!site || w.pulse) return; // no id, or loaded twice
    var nav = w.navigator;
    var loc = w.location;
    var his = w.history;
    var host = script.getAttribute("data-api-host") || new URL(script.src).origin;
    var endpoint = host.replace(/\/+$/, "") + "/api/collect";
    var lastPath;

    // The page without query string or fragment: they can carry personal data.
    var page = function () {
      return loc.origin + loc.pathname;
    };

    // A text/plain POST is a "simple" request: no CORS preflight. keepalive lets it outlive
    // the page; credentials: "omit" means no cookies are ever sent.
    var send = function (payload) {
      try {
        payload.website_id = site;
        payload.url = page();
        // Where the visit came from, also after SPA navigation.
        payload.referrer = d.referrer || undefined;
        payload.screen = w.screen.width + "x" + w.screen.height;
        payload.language = nav.language;
        var body = JSON.stringify(payload);
        if (w.fetch) {
          w.fetch(endpoint, {
            method: "POST",
            body: body,
            keepalive: true,
            credentials: "omit"
          }).catch(function () {});
        } else if (nav.sendBeacon) {
          nav.sendBeacon(endpoint, body);
        }
      } catch (e) {
        // Analytics must never break the page.
      }
    };

    var pageview = function () {
      var path = page();
      if (path === lastPath) return; // same page: a state-only or hash change
      lastPath = path;
      send({ type: "pageview" });
    };

    // SPA navigation: wrap pushState/replaceState; the page's call runs first, unchanged.
    ["pushState", "replaceState"].forEach(function (name) {
      var original = his[name];
      if (typeof original !== "function") return;
      his[name] = function () {
        var result = original.apply(this, arguments);
        pageview();
        return result;
      };
    });
    w.addEventListener("popstate", pageview);

    w.pulse = {
      track: function (name, data) {
        if (typeof name !== "string" || !name) return;
        send({
          type: "event",
          event_name: name,
          event_data: data && typeof data === "object" ? data : undefined
        });
      }
    };

    // A prerendered page is counted when (and if) the visitor actually sees it.
    if (d.prerendering) {
      d.addEventListener("prerenderingchange", pageview, { once: true });
    } else {
      pageview();
    }
  } catch (e) {
    // Analytics must never break the page.
  }
})(window, document);
