/*! journeys.js: the first-party tracker of Journeys (Segment-compatible events). No dependencies.
 *  <script src="https://HOST/js/journeys.js" data-write-key="jw_…" async></script>
 *  or journeys.load({writeKey: "jw_…", host: "https://HOST"}). See docs/tracker.md. */
(function (w, d) {
  "use strict";
  var VERSION = "1.0.0";
  var stub = w.journeys;
  if (stub && stub.VERSION) return; // loaded twice

  // Names shared with Segment's analytics.js, so a site that moves keeps its visitors' ids.
  var ANON = "ajs_anonymous_id", USER = "ajs_user_id", TRAITS = "ajs_user_traits";
  var CONSENT = "journeys_consent", PENDING = "journeys_pending";
  var MAX_HELD = 100, MAX_BATCH = 100, MAX_BATCH_BYTES = 400000, MAX_BEACON_BYTES = 60000;

  var cfg = null;            // set by load()
  var early = [];            // calls made before load()
  var queue = [];            // events to send
  var held = [];             // events waiting for a consent decision
  var sending = null, timer = null, retryTimer = null, attempt = 0;
  var state = { anon: null, user: null, traits: {}, consent: null };
  // Where this script came from: the default host (the service that serves it).
  var script = d.currentScript;
  var scriptOrigin = script && script.src ? new URL(script.src, location.href).origin : "";

  // ------------------------------------------------------------------ storage
  function ls(key, value) {
    try {
      var s = w.localStorage;
      if (value === undefined) return s.getItem(key);
      if (value === null) s.removeItem(key); else s.setItem(key, value);
    } catch (e) { /* storage disabled: cookies still work */ }
    return null;
  }
  function readCookie(key) {
    var m = d.cookie.match(new RegExp("(?:^|; )" + key + "=([^;]*)"));
    try { return m ? decodeURIComponent(m[1]) : null; } catch (e) { return null; }
  }
  function cookieDomain() {
    if (cfg.cookieDomain !== undefined) return cfg.cookieDomain;
    var host = location.hostname, parts = host.split("."), i, dom;
    cfg.cookieDomain = "";
    if (/^[\d.]+$|:/.test(host) || parts.length < 2) return "";
    // The widest domain the browser accepts (it refuses public suffixes such as co.uk).
    for (i = parts.length - 2; i >= 0; i--) {
      dom = parts.slice(i).join(".");
      d.cookie = "ajs_probe=1; path=/; domain=" + dom;
      if (readCookie("ajs_probe")) {
        d.cookie = "ajs_probe=; path=/; max-age=0; domain=" + dom;
        return (cfg.cookieDomain = dom);
      }
    }
    return "";
  }
  function writeCookie(key, value) {
    var dom = cookieDomain();
    d.cookie = key + "=" + (value === null ? "" : encodeURIComponent(value)) + "; path=/" +
      "; max-age=" + (value === null ? 0 : 31536000) + (dom ? "; domain=" + dom : "") +
      "; SameSite=Lax" + (location.protocol === "https:" ? "; Secure" : "");
  }
  // analytics.js stores JSON ('"id"'), older versions and cookies may hold the bare id.
  function unquote(v) {
    if (v === null || v === "") return null;
    try { v = JSON.parse(v); } catch (e) { return v; }
    return v === null || typeof v === "object" ? null : String(v);
  }
  function readJSON(key, fallback) {
    try { return JSON.parse(ls(key)) || fallback; } catch (e) { return fallback; }
  }
  function readId(key) { return unquote(readCookie(key)) || unquote(ls(key)); }
  function saveId(key, value) {
    if (!mayStore()) return;
    writeCookie(key, value);
    ls(key, value === null ? null : JSON.stringify(value));
  }
  function saveAll() {
    saveId(ANON, state.anon);
    saveId(USER, state.user);
    if (mayStore()) ls(TRAITS, JSON.stringify(state.traits));
  }

  // ------------------------------------------------------------------ consent
  // Undecided: allowed unless the page requires consent. Decided: `analytics` says.
  function allowed() {
    var c = state.consent;
    if (!c || c.analytics === undefined) return !cfg.requireConsent;
    return c.analytics === true;
  }
  function decided() { return !!(state.consent && state.consent.analytics !== undefined); }
  function mayStore() { return cfg && allowed(); }

  // ------------------------------------------------------------------ events
  function uuid() {
    var c = w.crypto, b, h = [], i;
    if (c && c.randomUUID) return c.randomUUID();
    b = new Uint8Array(16);
    c.getRandomValues(b);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    for (i = 0; i < 16; i++) h.push((b[i] + 256).toString(16).slice(1));
    h = h.join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }
  function assign(to) {
    for (var i = 1; i < arguments.length; i++) {
      var from = arguments[i] || {};
      for (var k in from) if (Object.prototype.hasOwnProperty.call(from, k)) to[k] = from[k];
    }
    return to;
  }
  // The same page fields as analytics.js (the canonical URL when the page declares one).
  function pageInfo() {
    var link = d.querySelector("link[rel='canonical']"), canon = link && link.href;
    var url = location.href.split("#")[0], path = location.pathname;
    if (canon) {
      url = canon.indexOf("?") < 0 ? canon + location.search : canon;
      try { path = new URL(canon).pathname; } catch (e) { /* keep location's */ }
    }
    return { path: path, referrer: d.referrer, search: location.search, title: d.title, url: url };
  }
  // utm_source → source, utm_campaign → name, … (as analytics.js reads them).
  function campaign() {
    var out = null;
    new URLSearchParams(location.search).forEach(function (value, key) {
      key = key.toLowerCase();
      if (key.indexOf("utm_") === 0 && key.length > 4) {
        out = out || {};
        out[key === "utm_campaign" ? "name" : key.slice(4)] = value;
      }
    });
    return out;
  }
  function build(type, fields, options) {
    options = options || {};
    var tz, camp = campaign(), ctx = {
      library: { name: "journeys.js", version: VERSION },
      page: pageInfo(),
      userAgent: navigator.userAgent,
      locale: navigator.language,
      screen: { width: w.screen.width, height: w.screen.height, density: w.devicePixelRatio },
      consent: { categoryPreferences: assign({}, state.consent) }
    };
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { /* old browser */ }
    if (tz) ctx.timezone = tz;
    if (camp) ctx.campaign = camp;
    var ev = assign({
      type: type,
      messageId: options.messageId || uuid(),
      // originalTimestamp + sentAt let the server correct this device's clock.
      originalTimestamp: new Date().toISOString(),
      anonymousId: state.anon,
      integrations: assign({}, options.integrations),
      context: assign(ctx, options.context)
    }, fields);
    if (state.user) ev.userId = state.user;
    if (options.timestamp) ev.timestamp = new Date(options.timestamp).toISOString();
    return ev;
  }
  function enqueue(ev) {
    if (allowed()) {
      queue.push(ev);
      schedule();
    } else if (!decided()) {
      // Held in memory only (nothing stored) until the visitor decides.
      if (held.length < MAX_HELD) held.push(ev);
    }
  }

  // ------------------------------------------------------------------ delivery
  function schedule() {
    if (retryTimer) return; // backing off: the retry takes everything queued
    if (queue.length >= cfg.flushAt) return flush();
    if (!timer) timer = setTimeout(flush, cfg.flushInterval);
  }
  function take(maxBytes) {
    var batch = [], size = 0, n;
    for (var i = 0; i < queue.length && batch.length < MAX_BATCH; i++) {
      n = JSON.stringify(queue[i]).length + 1;
      if (batch.length && size + n > maxBytes) break;
      batch.push(queue[i]);
      size += n;
    }
    return batch;
  }
  function body(batch) {
    var b = { batch: batch, sentAt: new Date().toISOString() };
    if (!cfg.basicAuth) b.writeKey = cfg.writeKey;
    return JSON.stringify(b);
  }
  function drop(batch) {
    queue = queue.filter(function (ev) { return batch.indexOf(ev) < 0; });
  }
  function post(payload) {
    // text/plain with the key in the body is a "simple" request: no CORS preflight.
    var headers = { "Content-Type": "text/plain" };
    if (cfg.basicAuth) headers.Authorization = "Basic " + btoa(cfg.writeKey + ":");
    return fetch(cfg.host + "/v1/batch", {
      method: "POST", body: payload, headers: headers, credentials: "omit",
      keepalive: payload.length < MAX_BEACON_BYTES
    }).then(function (r) {
      return { status: r.status, retryAfter: parseFloat(r.headers.get("Retry-After")) || 0 };
    }, function () { return { status: 0, retryAfter: 0 }; });
  }
  // Send what is queued; resolves when it is delivered, refused, or waiting for a retry.
  function flush() {
    clearTimeout(timer);
    timer = null;
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    if (sending) return sending;
    if (!cfg || !queue.length || !allowed()) return Promise.resolve();
    var batch = take(MAX_BATCH_BYTES);
    sending = post(body(batch)).then(function (r) {
      var s = r.status;
      sending = null;
      // 5xx, 429, 408 and network errors are retried; any other 4xx never succeeds.
      if ((s === 0 || s === 408 || s === 429 || s >= 500) && attempt < cfg.maxRetries) {
        attempt++;
        var wait = Math.min(cfg.backoff.max, cfg.backoff.base * Math.pow(2, attempt - 1));
        wait = Math.max(wait * (0.5 + Math.random() / 2), r.retryAfter * 1000);
        retryTimer = setTimeout(function () { retryTimer = null; flush(); }, wait);
        return;
      }
      attempt = 0;
      drop(batch);
      if (queue.length) return flush();
    });
    return sending;
  }
  // The page is going away: hand everything to the browser, which sends it after we are gone.
  function beacon() {
    if (!cfg || !queue.length || !allowed()) return;
    clearTimeout(timer);
    timer = null;
    var batch, left = MAX_BEACON_BYTES;
    while (queue.length && navigator.sendBeacon) {
      batch = take(Math.min(left, MAX_BATCH_BYTES));
      var payload = body(batch), size = new Blob([payload]).size;
      if (size > left || !navigator.sendBeacon(cfg.host + "/v1/batch", payload)) break;
      left -= size;
      drop(batch);
    }
    // What did not fit goes out from the next page (the server drops duplicate messageIds).
    if (queue.length) {
      var ids = queue.map(function (ev) { return ev.messageId; });
      var pending = readJSON(PENDING, []).filter(function (ev) {
        return ids.indexOf(ev.messageId) < 0;
      });
      ls(PENDING, JSON.stringify(pending.concat(queue).slice(-MAX_HELD)));
    }
  }

  // ------------------------------------------------------------------ the API
  function call(name, impl) {
    return function () {
      if (!cfg) { early.push([name].concat([].slice.call(arguments))); return; }
      return impl.apply(null, arguments);
    };
  }
  var api = {
    VERSION: VERSION,
    load: load,
    track: call("track", function (event, properties, options) {
      enqueue(build("track", { event: String(event), properties: assign({}, properties) }, options));
    }),
    // page(), page(name), page(properties), page(name, properties), page(category, name, properties)
    page: call("page", function (category, name, properties, options) {
      if (category && typeof category === "object") { options = name; properties = category; name = category = null; }
      else if (name && typeof name === "object") { options = properties; properties = name; name = category; category = null; }
      else if (name === undefined) { name = category; category = null; }
      var fields = { properties: assign(pageInfo(), properties) };
      if (name) fields.name = fields.properties.name = String(name);
      if (category) fields.category = fields.properties.category = String(category);
      enqueue(build("page", fields, options));
    }),
    // identify(userId, traits), identify(traits): traits are kept and merged.
    identify: call("identify", function (userId, traits, options) {
      if (userId && typeof userId === "object") { options = traits; traits = userId; userId = null; }
      if (userId !== null && userId !== undefined) {
        userId = String(userId);
        if (state.user && state.user !== userId) state.traits = {};
        state.user = userId;
      }
      assign(state.traits, traits);
      saveAll();
      enqueue(build("identify", { traits: assign({}, state.traits) }, options));
    }),
    // A new visitor: new anonymous id, no user id, no traits (e.g. after logging out).
    reset: call("reset", function () {
      state.user = null;
      state.traits = {};
      state.anon = uuid();
      saveAll();
    }),
    // consent({analytics: true|false, …}): categories are merged and sent with every event.
    consent: call("consent", function (categories) {
      state.consent = assign({}, state.consent, categories);
      ls(CONSENT, JSON.stringify(state.consent));
      if (allowed()) {
        held.forEach(function (ev) {
          ev.context.consent.categoryPreferences = assign({}, state.consent);
        });
        queue = queue.concat(held);
        held = [];
        saveAll();
        if (queue.length) flush();
      } else if (decided()) {
        // Refused or withdrawn: send nothing, and forget this visitor on this device.
        held = [];
        queue = [];
        [ANON, USER].forEach(function (k) { writeCookie(k, null); ls(k, null); });
        [TRAITS, PENDING].forEach(function (k) { ls(k, null); });
      }
    }),
    flush: function () { return cfg ? flush() : Promise.resolve(); },
    user: function () {
      return { anonymousId: state.anon, userId: state.user, traits: assign({}, state.traits) };
    }
  };

  function load(options) {
    if (cfg) return;
    options = options || {};
    if (!options.writeKey) throw new Error("journeys.load: writeKey is required");
    var host = String(options.host || scriptOrigin).replace(/\/+$/, "").replace(/\/v1$/, "");
    if (host && !/^https?:\/\//.test(host)) host = "https://" + host;
    cfg = assign({
      flushAt: 20, flushInterval: 1000, maxRetries: 10, requireConsent: false, autoPage: true,
      basicAuth: false
    }, options, { host: host });
    cfg.backoff = assign({ base: 1000, max: 60000 }, options.backoff);
    state.consent = readJSON(CONSENT, null);
    state.traits = readJSON(TRAITS, {});
    // One id in both places: whichever exists wins, a new one only when neither does.
    state.anon = readId(ANON) || uuid();
    state.user = readId(USER);
    saveAll();
    if (allowed()) {
      queue = readJSON(PENDING, []);
      ls(PENDING, null);
      if (queue.length) schedule();
    }
    w.addEventListener("pagehide", beacon);
    d.addEventListener("visibilitychange", function () {
      if (d.visibilityState === "hidden") beacon();
    });
    if (cfg.autoPage) api.page();
    var calls = early;
    early = [];
    calls.forEach(function (c) { api[c[0]].apply(null, c.slice(1)); });
  }

  w.journeys = api;
  // Calls queued by the async snippet's stub: [["track", "Signed Up", {...}], …].
  if (stub && stub.length) early = [].slice.call(stub).filter(function (c) { return c[0] !== "load"; });
  var key = script && script.getAttribute("data-write-key");
  var loadCall = stub && [].slice.call(stub).filter(function (c) { return c[0] === "load"; })[0];
  if (key) {
    load({
      writeKey: key,
      host: script.getAttribute("data-host") || scriptOrigin,
      requireConsent: script.getAttribute("data-require-consent") === "true",
      autoPage: script.getAttribute("data-auto-page") !== "false",
      cookieDomain: script.getAttribute("data-cookie-domain") || undefined
    });
  } else if (loadCall) {
    load(loadCall[1]);
  }
})(window, document);
