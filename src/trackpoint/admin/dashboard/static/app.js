// trackpoint's admin dashboard: polls /dashboard/stats (and the banker and rollup routes when the tracker has
// them) with the admin token kept in this tab's sessionStorage. No framework, no build step; every value from the
// tracker is written as text (textContent), never as markup: event fields are client input.
"use strict";

const TOKEN_KEY = "trackpoint.admin.token";
const STATS_EVERY_MS = 2000;
const SLOW_EVERY_MS = 10000; // banker campaigns and hourly rollups
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

const $ = (id) => document.getElementById(id);
let statsTimer = null;
let slowTimer = null;
let features = { banker: false, rollups: false };

// --- the token ---------------------------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function askForToken(message) {
  clearTimeout(statsTimer);
  clearTimeout(slowTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("token-form").hidden = false;
  $("token-error").hidden = !message;
  $("token-error").textContent = message || "";
  $("status").textContent = "not connected";
  $("token").focus();
}

class Unauthorized extends Error {}

async function get(path) {
  const response = await fetch(path, {
    headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
    cache: "no-store",
  });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  return { status: response.status, body };
}

// --- formatting --------------------------------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

function count(n) {
  return n === null || n === undefined ? "–" : integer.format(n);
}

function rate(n) {
  return n === null || n === undefined ? "–" : decimal.format(n);
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  const i = Math.min(units.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return decimal.format(n / 1024 ** i) + " " + units[i];
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return decimal.format(seconds) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
}

function ago(ms, now) {
  return ms ? duration(Math.max(0, (now - ms) / 1000)) + " ago" : "never";
}

function money(micros) {
  return micros === null || micros === undefined ? "–" : (micros / 1e6).toFixed(2);
}

// --- DOM helpers -------------------------------------------------------------------------------------------------

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function fillTable(table, rows) {
  // rows: arrays of cells ([text, className] or text), with an optional `key` (data-key) for tests and readers
  const body = table.tBodies[0];
  body.replaceChildren(
    ...rows.map((row) => {
      const tr = document.createElement("tr");
      if (row.key !== undefined) tr.dataset.key = row.key;
      for (const value of row.cells) tr.append(Array.isArray(value) ? cell(value[0], value[1]) : cell(value));
      return tr;
    })
  );
}

const SVG = "http://www.w3.org/2000/svg";

function chart(svg, lines, width, height) {
  // lines: [{name, values (numbers or null), color}]: polylines scaled to the largest value, with a legend
  lines = lines.filter((l) => l.always || l.values.some((v) => v)); // a series that stayed at 0 only clutters
  const max = Math.max(1e-9, ...lines.flatMap((l) => l.values.filter((v) => v !== null)));
  const children = [];
  for (const line of lines) {
    const n = line.values.length;
    if (n < 2) continue;
    const points = line.values
      .map((v, i) => (v === null ? null : [(i / (n - 1)) * width, height - 4 - (v / max) * (height - 18)]))
      .filter((p) => p !== null)
      .map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1));
    if (points.length === 1) {
      // one point so far: a dot, which a polyline of one point would not draw
      const [cx, cy] = points[0].split(",");
      const dot = document.createElementNS(SVG, "circle");
      dot.setAttribute("cx", cx);
      dot.setAttribute("cy", cy);
      dot.setAttribute("r", "3");
      dot.setAttribute("fill", line.color);
      children.push(dot);
      continue;
    }
    const polyline = document.createElementNS(SVG, "polyline");
    polyline.setAttribute("points", points.join(" "));
    polyline.setAttribute("fill", "none");
    polyline.setAttribute("stroke", line.color);
    polyline.setAttribute("stroke-width", "2");
    polyline.setAttribute("vector-effect", "non-scaling-stroke");
    children.push(polyline);
  }
  let x = 4;
  for (const line of lines) {
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", String(x));
    label.setAttribute("y", "11");
    label.setAttribute("fill", line.color);
    label.setAttribute("font-size", "11");
    label.textContent = line.name;
    children.push(label);
    x += 8 + 7 * line.name.length;
  }
  const top = document.createElementNS(SVG, "text");
  top.setAttribute("x", String(width - 4));
  top.setAttribute("y", "11");
  top.setAttribute("text-anchor", "end");
  top.setAttribute("font-size", "11");
  top.setAttribute("fill", "#6b7280");
  top.textContent = "max " + rate(max);
  children.push(top);
  svg.replaceChildren(...children);
}

// --- rendering ---------------------------------------------------------------------------------------------------

function renderTracker(stats) {
  const t = stats.tracker;
  $("version").textContent = t.version;
  $("config").textContent = t.config_file;
  $("config-version").textContent = t.config_version;
  $("uptime").textContent = duration(t.uptime_s);
  $("workers-ready").textContent = t.workers_ready + " of " + t.workers_wanted + " ready";
  $("workers-ready").className = t.workers_ready < t.workers_wanted ? "bad" : "";
  renderNotices($("attribution"), t.attributions);
}

function renderNotices(element, notices) {
  // The data's attributions, their addresses as links (DB-IP's licence asks for a link to db-ip.com); rebuilt only
  // when they change (after a reload), not on every poll.
  const text = notices.join(" · ");
  if (element.dataset.shown === text) return;
  element.dataset.shown = text;
  const parts = [];
  notices.forEach((notice, i) => {
    if (i > 0) parts.push(" · ");
    for (const piece of notice.split(/(https:\/\/[^\s()]+[^\s().,])/)) {
      if (!piece.startsWith("https://")) {
        if (piece) parts.push(piece);
        continue;
      }
      const link = document.createElement("a");
      link.href = piece;
      link.rel = "noopener noreferrer";
      link.textContent = piece;
      parts.push(link);
    }
  });
  element.replaceChildren(...parts);
}

function renderTraffic(stats) {
  const totals = stats.totals;
  const rates = stats.rates;
  $("requests-rate").textContent = rate(rates.requests);
  $("requests-total").textContent = count(totals.requests);
  // event types that saw nothing yet stay out of the table (a config may declare many)
  const types = Object.keys(totals.events)
    .filter((type) => totals.events[type] || rates.events[type])
    .sort();
  fillTable(
    $("events"),
    types.map((type) => ({
      key: type,
      cells: [type, [rate(rates.events[type] || 0), "num rate"], [count(totals.events[type]), "num total"]],
    }))
  );
  const reasons = Object.keys(totals.rejected).sort((a, b) => totals.rejected[b] - totals.rejected[a]);
  fillTable(
    $("rejected"),
    reasons.map((reason) => ({
      key: reason,
      cells: [reason, [rate(rates.rejected[reason] || 0), "num rate"], [count(totals.rejected[reason]), "num total"]],
    }))
  );
  $("rejected-none").hidden = reasons.length > 0;
  $("events-none").hidden = types.length > 0;
  const series = stats.series;
  chart(
    $("chart-traffic"),
    [
      { name: "all requests", values: series.requests, color: "#111827", always: true },
      ...Object.keys(series.events)
        .sort()
        .map((type, i) => ({ name: type, values: series.events[type], color: COLORS[i % COLORS.length] })),
      ...Object.keys(series.rejected)
        .sort()
        .map((reason) => ({ name: "refused " + reason, values: series.rejected[reason], color: "#ef4444" })),
    ],
    600,
    160
  );
}

function renderLatency(stats) {
  const latency = stats.latency_ms;
  for (const q of ["p50", "p90", "p99"]) $(q).textContent = latency[q] === null ? "–" : decimal.format(latency[q]);
  chart(
    $("chart-latency"),
    [
      { name: "p50", values: stats.series.p50, color: COLORS[0], always: true },
      { name: "p99", values: stats.series.p99, color: COLORS[1] },
    ],
    600,
    100
  );
}

function renderWorkers(stats) {
  fillTable(
    $("workers"),
    stats.workers.map((w) => ({
      key: String(w.slot),
      cells: [
        String(w.slot),
        String(w.pid),
        w.ready ? ["ready", "good"] : ["starting", "bad"],
        duration(w.uptime_s),
        [count(w.restarts), w.restarts ? "num bad" : "num"],
        [bytes(w.rss_bytes), "num"],
        [count(w.requests), "num"],
      ],
    }))
  );
}

function renderCollectors(stats) {
  const now = stats.now_ms;
  fillTable(
    $("collectors"),
    stats.collectors.map((c) => ({
      key: c.name,
      cells: [
        c.name,
        c.type,
        c.healthy ? ["healthy", "good"] : [c.required ? "unhealthy (required)" : "unhealthy", "bad"],
        [rate(c.sent_per_s), "num"],
        [count(c.sent), "num"],
        [count(c.pending + c.spooled_events), "num"],
        [c.spool_max_bytes ? bytes(c.spooled_bytes) + " of " + bytes(c.spool_max_bytes) : "off", "num"],
        [c.seconds_until_full === null ? "–" : duration(c.seconds_until_full), c.seconds_until_full ? "bad" : ""],
        ago(c.last_success_ms, now),
        [c.lag_s === null ? "no delivery yet" : duration(c.lag_s), c.lag_s ? "num bad" : "num"],
        [count(c.dropped), c.dropped ? "num bad" : "num"],
        [count(c.errors), c.errors ? "num bad" : "num"],
      ],
    }))
  );
}

function renderTail(stats) {
  const items = stats.tail.map((event) => {
    const li = document.createElement("li");
    const head = document.createElement("span");
    head.className = "head";
    head.textContent = new Date(event.ts).toISOString().slice(11, 23) + " " + event.type;
    const body = document.createElement("code");
    body.textContent = JSON.stringify({ id: event.id, dims: event.dims, metrics: event.metrics, ctx: event.ctx });
    li.append(head, " ", body);
    return li;
  });
  $("tail").replaceChildren(...items);
}

async function refreshStats() {
  try {
    const { status, body } = await get("/dashboard/stats");
    if (status !== 200) throw new Error("HTTP " + status);
    features = body.features;
    renderTracker(body);
    renderTraffic(body);
    renderLatency(body);
    renderWorkers(body);
    renderCollectors(body);
    renderTail(body);
    $("banker").hidden = !features.banker;
    $("status").textContent = "live · updated " + new Date(body.now_ms).toLocaleTimeString();
    $("status").className = "status good";
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForToken("That token was refused.");
      return;
    }
    $("status").textContent = "cannot reach the tracker (" + error.message + "); retrying";
    $("status").className = "status bad";
  }
  statsTimer = setTimeout(refreshStats, STATS_EVERY_MS);
}

async function refreshBanker() {
  const { status, body } = await get("/banker/campaigns?limit=100");
  const note = $("banker-error");
  if (status !== 200) {
    note.hidden = false;
    note.textContent = "banker: " + (body.detail || body.error || "HTTP " + status);
    return;
  }
  note.hidden = body.campaigns.length > 0;
  note.textContent = "no campaigns yet (PUT /banker/campaigns/{id} sets a budget)";
  fillTable(
    $("campaigns"),
    body.campaigns.map((c) => ({
      key: c.id,
      cells: [
        c.id,
        [money(c.spent_micros), "num"],
        [money(c.total_budget_micros), "num"],
        [money(c.today_spent_micros) + (c.daily_budget_micros === null ? "" : " of " + money(c.daily_budget_micros)), "num"],
        [money(c.hour_spent_micros) + (c.hourly_cap_micros === null ? "" : " / " + money(c.hourly_cap_micros)), "num"],
        c.paced ? ["paced", "bad"] : ["on pace", "good"],
        c.exhausted ? ["exhausted (" + c.exhausted_reason + ")", "bad"] : ["no", "good"],
      ],
    }))
  );
}

async function refreshRollups() {
  const now = new Date();
  const day = now.toISOString().slice(0, 10);
  const next = new Date(Date.parse(day + "T00:00:00Z") + 86400000).toISOString().slice(0, 19) + "Z";
  const query = new URLSearchParams({ from: day + "T00:00:00Z", to: next, by: "cid,crid" });
  const { status, body } = await get("/reports/hourly?" + query.toString());
  const table = $("rollup-table");
  const note = $("rollups-note");
  if (status !== 200 || !Array.isArray(body.rows)) {
    table.hidden = true;
    note.hidden = false;
    note.textContent = "hourly rollups: " + (body.detail || body.error || "HTTP " + status);
    return;
  }
  table.hidden = body.rows.length === 0;
  note.hidden = body.rows.length > 0;
  note.textContent = "no events rolled up today yet";
  fillTable(
    table,
    body.rows.map((row) => ({
      cells: [
        row.hour.slice(11, 16),
        row.type,
        Object.entries(row.dims || {})
          .map(([k, v]) => k + "=" + v)
          .join(" "),
        [count(row.events), "num"],
        Object.entries(row.metrics || {})
          .map(([k, v]) => k + " " + (typeof v === "number" ? decimal.format(v) : String(v)))
          .join(" · "),
      ],
    }))
  );
}

async function refreshSlow() {
  try {
    if (features.banker) await refreshBanker();
    if (features.rollups) await refreshRollups();
  } catch (error) {
    if (error instanceof Unauthorized) {
      askForToken("That token was refused.");
      return;
    }
  }
  slowTimer = setTimeout(refreshSlow, SLOW_EVERY_MS);
}

function start() {
  $("token-form").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
  refreshStats().then(refreshSlow);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    const value = $("token").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    start();
  });
  $("sign-out").addEventListener("click", () => askForToken(""));
  if (token()) start();
  else askForToken("");
});
