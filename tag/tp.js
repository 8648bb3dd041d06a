// @ts-check
/**
 * tp.js: trackpoint's first-party tag. Page views, custom events and conversions, sent to the tracker that serves
 * this file; consent first, nothing lost that the tracker has not acknowledged.
 *
 * Built by scripts/build-tag into src/trackpoint/tag/tp.min.js; types checked by `tsc --checkJs --strict`.
 */
(() => {
  /** @typedef {string | number | boolean | null | undefined} Value */
  /** @typedef {Record<string, Value>} Props */
  /**
   * An event on its way: where it goes, what it says, and its retry state (`sending` is never persisted).
   * @typedef {{path: string, body: Props, anon: boolean, tries: number, due: number, sending?: boolean}} Item
   */
  /**
   * @typedef {object} Options
   * @property {string} endpoint the tracker's origin (default: the origin this file was loaded from)
   * @property {string} page path of the page view event type
   * @property {string} event path of the custom event type
   * @property {string} conversion path of the conversion event type
   * @property {string} pageBatch batch path of the page view event type ("": one request per page view)
   * @property {string} eventBatch batch path of the custom event type ("": one request per event)
   * @property {string} conversionBatch batch path of the conversion event type ("": one request per conversion)
   * @property {boolean} consent wait for `tp('consent', ...)` (or the page's TCF or GPP CMP) before sending anything
   * @property {boolean} publisherConsent with `consent`, a TCF CMP's answer is the publisher's own consent to the
   *           purposes (its publisher TC segment, for a first-party site), not the vendors'
   * @property {number[]} tcfPurposes with `consent`, the TCF purposes a CMP's answer must give consent to (default
   *           [1]: store and access information on a device), as the tracker's `check_consent.tcf_purposes`
   * @property {number} batchMs how long events gather before they are sent
   * @property {number} clickDays how long a click id from the landing URL is kept for conversions
   */
  /**
   * The page's IAB TCF v2 CMP, when it has one.
   * @typedef {{eventStatus?: string, gdprApplies?: boolean, tcString?: string,
   *            purpose?: {consents?: Record<string, boolean>},
   *            publisher?: {consents?: Record<string, boolean>}}} TCData
   * @typedef {(command: string, version: number, callback: (data: TCData, ok: boolean) => void) => void} TcfApi
   */
  /**
   * The page's IAB GPP CMP (CMP API 1.1), when it has one: what its events carry (`pingData`).
   * @typedef {{signalStatus?: string, cmpStatus?: string, gppString?: string, applicableSections?: number[],
   *            parsedSections?: Record<string, any>}} GppPing
   * @typedef {(command: string, callback: (event: {pingData?: GppPing} | null, ok: boolean) => void) => void} GppApi
   */

  const win = /** @type {Window & {tp?: any, __tcfapi?: TcfApi, __gpp?: GppApi}} */ (window);
  if (win.tp && win.tp.version) return; // loaded twice: the first copy keeps the queue

  const QUEUE_KEY = "tp_q";
  const CLICK_KEY = "tp_click";
  const MAX_QUEUE = 100; // events kept while the tracker cannot be reached (the oldest give way)
  const MAX_BACKOFF_MS = 60000;
  const MAX_BATCH = 50; // items per batch request (a batch path's max_items is at least this, else: one each)
  // Refusals of an item in a batch that a later try may turn into an acceptance (429, 503); any other is final.
  const TRANSIENT = /^(rate_limited|backpressure|log_|collector_)/;
  const PENDING = 0;
  const GRANTED = 1;
  const DENIED = 2;

  const script = document.currentScript;
  const data = script instanceof HTMLScriptElement ? script.dataset : {};
  /** @type {Options} */
  const options = {
    endpoint: data.endpoint || (script instanceof HTMLScriptElement && script.src ? new URL(script.src).origin : ""),
    page: data.page || "/t/page",
    event: data.event || "/t/event",
    conversion: data.conversion || "/conv",
    pageBatch: data.pageBatch || "",
    eventBatch: data.eventBatch || "",
    conversionBatch: data.conversionBatch || "",
    consent: data.consent === "required",
    publisherConsent: data.tcfConsent === "publisher",
    tcfPurposes: data.tcfPurposes === undefined ? [1] : data.tcfPurposes.split(",").map(Number),
    batchMs: Number(data.batchMs || 500),
    clickDays: Number(data.clickDays || 30),
  };
  // Global Privacy Control: events are still sent, never with an identifier (no cookie, no click id).
  const gpc = /** @type {Navigator & {globalPrivacyControl?: boolean}} */ (navigator).globalPrivacyControl === true;

  let consent = PENDING;
  let waitingForCmp = false;
  let waitingForGpp = false;
  // A US section of the page's GPP string (applicable) opts out of sale, sharing or targeted ads, or carries GPC:
  // as with GPC, events are still sent, never with an identifier.
  let gppOptOut = false;
  /** @type {Props} the CMPs' strings, passed with every event for the tracker's check_consent */
  let tcf = {};
  /** @type {Props} */
  let gpp = {};
  /** @type {Item[]} events held until consent is known (in memory only: nothing is stored before consent) */
  let held = [];
  /** @type {Item[]} events accepted for sending, persisted until the tracker acknowledges them */
  let queue = [];
  /** @type {{id: string, ts: number} | null} the click id the landing URL carried, or the stored one */
  let click = null;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  /** @type {Record<string, boolean>} batch paths that failed or were answered 404, 405, 413: one request each now */
  const unbatched = {};

  // Storage may be missing or refuse access (blocked cookies, private modes): the events still go, only without
  // surviving a reload. `local`: localStorage (the click id, for later visits), else sessionStorage (the queue).
  /** @param {boolean} local @param {string} key @param {unknown} value */
  const store = (local, key, value) => {
    try {
      const storage = local ? localStorage : sessionStorage;
      if (value === null) storage.removeItem(key);
      else storage.setItem(key, JSON.stringify(value));
    } catch (_) {}
  };
  /** @param {boolean} local @param {string} key @returns {any} */
  const read = (local, key) => {
    try {
      return JSON.parse((local ? localStorage : sessionStorage).getItem(key) || "null");
    } catch (_) {
      return null;
    }
  };
  const identifying = () => consent === GRANTED && !gpc && !gppOptOut;
  const waiting = () => consent === PENDING || waitingForCmp || waitingForGpp;
  const save = () => store(false, QUEUE_KEY, queue.map(({ sending, ...item }) => item));
  /** This page's URL without the click id (which goes only where consent lets it). */
  const here = () => {
    const url = new URL(location.href);
    url.searchParams.delete(CLICK_KEY);
    return url.href;
  };
  /** The event's id, so that a retried event is recorded once (the event type's dedupe_key). */
  const randomId = () =>
    Array.from(crypto.getRandomValues(new Uint8Array(16)), (byte) => (byte + 256).toString(16).slice(1)).join("");

  /** The batch path an event goes to, or "" (one request per event). @param {string} path */
  const batchOf = (path) => {
    const batch =
      path === options.page
        ? options.pageBatch
        : path === options.event
          ? options.eventBatch
          : path === options.conversion
            ? options.conversionBatch
            : "";
    return batch && !unbatched[batch] ? batch : "";
  };
  /** Items of a type with a batch path wait while a single request is in flight: the page view goes first, and its
   * answer sets the user id cookie (a batch's answer sets none). @param {Item} item */
  const waits = (item) => !!batchOf(item.path) && queue.some((other) => other.sending && !batchOf(other.path));

  /**
   * The transport. Events of a type with a batch path leave together, up to MAX_BATCH per request, the others one
   * request each. While the page lives: fetch with keepalive, acknowledged by a 2xx; in a batch's answer, an item is
   * acknowledged unless it is listed as refused (refused for good: dropped; for a while, 429 or 503: retried). A 4xx
   * other than 408 and 429 will never succeed: dropped. A batch that fails or gets 404, 405 or 413 is retried one
   * request per item. As the page goes away: sendBeacon (a batch in one beacon), delivered after the page is gone.
   * @param {Item[]} items
   * @param {boolean} leaving
   */
  const transmit = (items, leaving) => {
    /** @type {Record<string, Item[]>} items by anonymity and batch path */
    const batches = {};
    for (const item of items) {
      const batch = batchOf(item.path);
      if (batch) (batches[+item.anon + batch] = batches[+item.anon + batch] || []).push(item);
      else send([item], item.path, leaving, false);
    }
    for (const key in batches)
      for (let list = batches[key]; list.length; ) send(list.splice(0, MAX_BATCH), key.slice(1), leaving, true);
  };

  /** @param {Item[]} items @param {string} path @param {boolean} leaving @param {boolean} batched */
  const send = (items, path, leaving, batched) => {
    const url = options.endpoint + path;
    const bodies = items.map((item) => ({ ...item.body, ...tcf, ...gpp }));
    const body = JSON.stringify(batched ? bodies : bodies[0]); // a string: text/plain, no preflight
    const anon = items[0].anon;
    // sendBeacon always sends cookies: an event that must carry none goes by fetch, which keepalive lets outlive us
    if (leaving && !anon && navigator.sendBeacon && navigator.sendBeacon(url, body)) return items.forEach(done);
    for (const item of items) item.sending = true;
    fetch(url, { method: "POST", body, keepalive: true, credentials: anon ? "omit" : "include" })
      .then(async (response) => {
        const status = response.status;
        /** @type {{index: number, error: string}[]} */
        let refused = [];
        if (batched && response.ok) refused = (await response.json()).refused;
        else if (batched && (status === 404 || status === 405 || status === 413)) throw 0; // not a batch path
        else if (!response.ok && (status < 400 || status > 499 || status === 408 || status === 429))
          return items.forEach(retry);
        items.forEach((item, index) => {
          const refusal = refused.find((refusal) => refusal.index === index);
          if (refusal && TRANSIENT.test(refusal.error)) retry(item);
          else done(item);
        });
      })
      .catch(() => {
        // No answer the tag can read (offline, or a 404 without CORS headers), or not a batch path's: this page
        // sends the type's events one request each from now on (always valid; a batch is only cheaper).
        if (batched) unbatched[path] = true;
        items.forEach(retry);
      });
  };

  /** @param {Item} item */
  const done = (item) => {
    queue = queue.filter((queued) => queued !== item);
    save();
    schedule(); // what waited for this request
  };

  /** Backoff with jitter: 1 s, 2 s, 4 s ... up to a minute, and at once when the browser is back online.
   * @param {Item} item */
  const retry = (item) => {
    item.sending = false;
    item.tries += 1;
    item.due = Date.now() + Math.min(MAX_BACKOFF_MS, 1000 * 2 ** item.tries) * (0.5 + Math.random() / 2);
    save();
    schedule();
  };

  /** Sends what is due, then sets the timer for the next due item. */
  const flush = () => {
    clearTimeout(timer);
    timer = undefined;
    if (!navigator.onLine) return; // the `online` event flushes
    const now = Date.now();
    const due = queue.filter((item) => !item.sending && item.due <= now);
    transmit(due.filter((item) => !batchOf(item.path)), false);
    transmit(due.filter((item) => !item.sending && !waits(item)), false);
    schedule();
  };

  const schedule = () => {
    const waiting = queue.filter((item) => !item.sending && !waits(item)).map((item) => item.due);
    clearTimeout(timer);
    timer = waiting.length ? setTimeout(flush, Math.max(0, Math.min(...waiting) - Date.now())) : undefined;
  };

  /** The page goes away (or to the background, from where it may never come back): everything not in flight. */
  const leave = () => {
    if (navigator.onLine) transmit(queue.filter((item) => !item.sending), true);
  };

  /** An event accepted for sending: identifiers attached only with consent. @param {Item} item */
  const accept = (item) => {
    item.anon = !identifying();
    if (item.path === options.conversion && click && !item.anon) item.body.click_id = click.id;
    item.due = Date.now() + options.batchMs;
    queue.push(item);
    if (queue.length > MAX_QUEUE) queue.shift();
    save();
    schedule();
  };

  /** @param {string} path @param {Props} body */
  const track = (path, body) => {
    /** @type {Item} */
    const item = { path, body: { ...body, eid: randomId() }, anon: true, tries: 0, due: 0 };
    if (waiting()) held.push(item);
    else if (consent === GRANTED) accept(item);
  };

  /** @param {boolean} granted */
  const decide = (granted) => {
    consent = granted ? GRANTED : DENIED;
    if (identifying() && click) store(true, CLICK_KEY, click);
    if (!granted) {
      store(true, CLICK_KEY, null); // a withdrawal forgets the click too
      store(false, QUEUE_KEY, null);
      queue = [];
    }
    release();
  };

  const release = () => {
    if (waiting()) return;
    const ready = held;
    held = [];
    if (consent === GRANTED) ready.forEach(accept);
  };

  /**
   * The API: tp('page'), tp('event', name, props), tp('conversion', props), tp('consent', 'granted' | 'denied'),
   * tp('init', options).
   * @param {string} command
   * @param {any} [first]
   * @param {Props} [second]
   */
  const tp = (command, first, second) => {
    if (command === "init") Object.assign(options, first);
    else if (command === "page")
      track(options.page, { url: here(), ref: document.referrer || undefined, title: document.title, ...first });
    else if (command === "event") track(options.event, { url: here(), ...second, name: first });
    else if (command === "conversion") track(options.conversion, { ...first });
    else if (command === "consent") decide(first === true || first === "granted");
  };
  tp.version = TP_VERSION;

  // What an earlier page of this tab left unacknowledged.
  /** @type {Item[]} */
  const left = read(false, QUEUE_KEY) || [];
  queue = left.slice(-MAX_QUEUE);

  const queued = (win.tp && win.tp.q) || [];
  win.tp = tp;
  // The calls the snippet queued before this file arrived: options first, whatever their order.
  for (const args of queued) if (args[0] === "init") tp(args[0], args[1]);
  // The click id a click through the tracker's redirect appended to this landing page, kept first party for the
  // conversions that follow (the tracker attributes them by the id alone).
  const landed = new URLSearchParams(location.search).get(CLICK_KEY);
  const stored = read(true, CLICK_KEY);
  if (landed) click = { id: landed, ts: Date.now() };
  else if (stored && stored.id && Date.now() - stored.ts < options.clickDays * 86400000) click = stored;
  if (!options.consent) decide(true); // no banner to wait for
  let purposesRefused = false;
  /** Whether a CMP's answer gives consent to every purpose of `tcfPurposes`: `given(id)` says for one. A list that
   * is not purpose ids (1 to 24) gives none: a typo must not track visitors on less consent than the site asked.
   * @param {(purpose: number) => boolean} given @returns {boolean} */
  const purposesGiven = (given) => {
    const wanted = options.tcfPurposes;
    const ids = Array.isArray(wanted) && wanted.length > 0;
    if (!ids || !wanted.every((id) => Number.isInteger(id) && id >= 1 && id <= 24)) {
      if (!purposesRefused) console.error("tp.js: tcfPurposes is not a list of TCF purpose ids (1 to 24): no consent");
      purposesRefused = true;
      return false;
    }
    return wanted.every(given);
  };
  if (typeof win.__tcfapi === "function") {
    waitingForCmp = true;
    win.__tcfapi("addEventListener", 2, (tcData, ok) => {
      if (!ok || (tcData.eventStatus !== "tcloaded" && tcData.eventStatus !== "useractioncomplete")) return;
      tcf = { gdpr: tcData.gdprApplies ? 1 : 0, gdpr_consent: tcData.tcString };
      waitingForCmp = false;
      const given = (options.publisherConsent ? tcData.publisher : tcData.purpose)?.consents;
      if (options.consent) decide(!tcData.gdprApplies || purposesGiven((id) => !!(given || {})[id]));
      else release();
    });
  }
  /** A parsed GPP section: one object, or a list of its segments' objects (anything else a broken CMP passes is
   * left out). @param {any} section @returns {any[]} */
  const segments = (section) =>
    (Array.isArray(section) ? section : [section]).filter((part) => part && typeof part === "object");
  // The GPP's US sections by name, in the order of their ids (6 to 27): parsedSections names them, applicableSections
  // gives ids.
  const US_SECTIONS = (
    "uspv1 usnat usca usva usco usut usct usfl usmt usor ustx usde usia usne usnh usnj ustn usmn usmd usin usky usri"
  ).split(" ");
  if (typeof win.__gpp === "function") {
    waitingForGpp = true;
    // Every event of the CMP carries its state: the string once its signal is ready, again at each change.
    win.__gpp("addEventListener", (event, ok) => {
      const ping = (ok && event && event.pingData) || {};
      if (ping.cmpStatus === "error") waitingForGpp = false; // no string will come: the events go without one
      if (ping.signalStatus === "ready") {
        const applicable = Array.isArray(ping.applicableSections) ? ping.applicableSections : [];
        const sections = ping.parsedSections || {};
        gpp = { gpp: ping.gppString, gpp_sid: applicable.join(",") };
        gppOptOut = false;
        for (const name in sections) {
          const index = US_SECTIONS.indexOf(name);
          if (index < 0 || !applicable.includes(6 + index)) continue;
          for (const part of segments(sections[name]))
            gppOptOut =
              gppOptOut ||
              [part.SaleOptOut, part.SharingOptOut, part.TargetedAdvertisingOptOut, part.OptOutSale].includes(1) ||
              part.Gpc === true;
        }
        if (gppOptOut) store(true, CLICK_KEY, null); // an opt-out forgets the click too
        waitingForGpp = false;
        // Without a TCF CMP, the GPP one decides: the EU section's consent to the purposes where it applies, else
        // granted (the US regimes are opt-outs, kept above).
        // (The publisher's own consent, with data-tcf-consent="publisher": its publisher purposes segment.)
        const field = options.publisherConsent ? "PublisherConsents" : "PurposeConsents";
        const eu = applicable.includes(2) ? segments(sections.tcfeuv2) : [];
        const part = eu.find((segment) => field in segment);
        if (options.consent && !waitingForCmp && typeof win.__tcfapi !== "function")
          decide(eu.length ? purposesGiven((id) => !!((part && part[field]) || [])[id - 1]) : true);
      }
      release();
    });
  }
  for (const args of queued) if (args[0] !== "init") tp(args[0], args[1], args[2]);

  addEventListener("online", () => {
    for (const item of queue) item.due = 0; // back online: no need to wait out the backoff
    flush();
  });
  addEventListener("pagehide", leave);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") leave();
  });
  flush();
})();
