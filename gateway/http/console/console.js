// The 12123 gateway console: plain JavaScript over the /v1 JSON API (no framework, no CDN).
"use strict";

const state = { session: null, timezone: "Asia/Shanghai", timer: null, batch: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  return node;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.session && state.session.csrf_token) headers["X-CSRF-Token"] = state.session.csrf_token;
  const response = await fetch("/v1" + path, { method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = {};
  try { data = await response.json(); } catch (e) { data = { error: "bad_answer", message: "not JSON" }; }
  if (response.status === 401 && path !== "/session") { showLogin(); }
  if (!response.ok) { const error = new Error(data.message || response.statusText); error.status = response.status; error.data = data; throw error; }
  return data;
}

// -- time, in the gateway's zone (quiet hours are local) --------------------------------
function localTime(seconds, withDate) {
  if (!seconds) return "";
  const options = { timeZone: state.timezone, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  if (withDate) Object.assign(options, { year: "numeric", month: "2-digit", day: "2-digit" });
  return new Intl.DateTimeFormat("zh-CN", options).format(new Date(seconds * 1000));
}
function ago(seconds, now) {
  if (seconds === null || seconds === undefined) return "";
  let s = Math.max(0, Math.round(now - seconds));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function age(s) { if (s === null || s === undefined) return "—"; return ago(0, s); }

// -- confirmation -------------------------------------------------------------------------
function confirmAction(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// -- pages ---------------------------------------------------------------------------------
function show(page) {
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== page + "-page";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === page);
}

function route() {
  if (!state.session) return;
  const hash = location.hash.slice(1) || "overview";
  clearInterval(state.timer);
  if (hash.startsWith("n/")) { show("notification"); loadNotification(decodeURIComponent(hash.slice(2))); return; }
  const page = ["overview", "search", "dead", "audit"].includes(hash) ? hash : "overview";
  show(page);
  if (page === "overview") { refreshOverview(); state.timer = setInterval(refreshOverview, 2000); }
  if (page === "dead") loadDead();
  if (page === "audit") loadAudit();
}

function showLogin() {
  state.session = null;
  clearInterval(state.timer);
  document.body.classList.remove("viewer", "operator");
  $("who").hidden = true;
  for (const section of document.querySelectorAll(".page")) section.hidden = true;
  $("login-page").hidden = false;
  setBanner("muted", "Log in to see the gateway");
}

function setBanner(kind, text) { const b = $("banner"); b.className = "banner " + kind; b.textContent = text; }

async function start() {
  try { state.session = await api("GET", "/session"); } catch (e) { if (e.status !== 401) setBanner("bad", e.message); showLogin(); return; }
  loggedIn();
}
function loggedIn() {
  $("login-page").hidden = true;
  $("who").hidden = false;
  $("user").textContent = state.session.user + " (" + state.session.role + ")";
  document.body.classList.toggle("viewer", state.session.role !== "operator");
  document.body.classList.toggle("operator", state.session.role === "operator");
  route();
}

// -- overview ------------------------------------------------------------------------------
// A process's clock report (FleetClock.status; the same words as `gateway carriers`,
// gateway/ops/fleet.py clock_attention): take-overs held, or its host's clock a second or
// more off Redis's (host_offset_seconds is Redis's clock minus the host's).
const HOLD_WORDS = { starting: "starting (until its clock has settled, about 5 s)", redis_clock_stepped: "Redis's clock stepped forward" };
function clockWords(clock) {
  if (!clock) return { text: "—", attention: false };
  if (clock.takeovers_held) return { text: "take-overs held: " + (HOLD_WORDS[clock.takeovers_held] || clock.takeovers_held), attention: true };
  const offset = clock.host_offset_seconds;
  if (offset !== null && offset !== undefined && Math.abs(offset) >= 1)
    return { text: `host clock ${Math.abs(offset).toFixed(1)} s ${offset < 0 ? "ahead of" : "behind"} Redis's (fix its NTP)`, attention: true };
  return { text: "in time", attention: false };
}

const STATE_WORDS = { bound: "BOUND", isolated: "ISOLATED", connecting: "CONNECTING", down: "DOWN", stopped: "STOPPED" };

async function refreshOverview() {
  let data;
  try { data = await api("GET", "/overview"); } catch (e) { if (e.status !== 401) setBanner("bad", "Gateway API unreachable: " + e.message); return; }
  state.timezone = data.timezone || state.timezone;
  const now = data.now;
  const carriers = Object.entries(data.carriers);
  const bad = carriers.filter(([, c]) => c.state === "down" || c.state === "stopped");
  const warn = carriers.filter(([, c]) => c.state === "isolated" || c.state === "connecting");
  if (!data.processes.length) setBanner("bad", "No gateway process is reporting");
  else if (bad.length) setBanner("bad", bad.map(([n, c]) => `${n} ${STATE_WORDS[c.state]} for ${ago(c.since, now)}${c.reason ? " (" + c.reason + ")" : ""}`).join(" · "));
  else if (warn.length) setBanner("warn", warn.map(([n, c]) => `${n} ${STATE_WORDS[c.state]}`).join(" · "));
  else setBanner("ok", `All ${carriers.length} carriers bound · ${data.processes.length} process${data.processes.length === 1 ? "" : "es"}`);

  // Rows are updated in place and a row's action buttons are rebuilt only when its state or
  // control changes: a button must not vanish under the operator's pointer on a refresh.
  const body = $("carriers").tBodies[0];
  const seen = new Set();
  for (const [name, c] of carriers) {
    seen.add(name);
    let row = body.querySelector(`tr[data-carrier="${CSS.escape(name)}"]`);
    if (!row) {
      row = el("tr", { "data-carrier": name }, ...Array.from({ length: 9 }, () => el("td")));
      row.cells[0].append(el("b", {}, name));
      row.cells[8].className = "op";
      body.append(row);
    }
    const used = c.tps_limit ? Math.min(100, 100 * c.submit_per_second / c.tps_limit) : 0;
    row.cells[1].replaceChildren(el("span", { class: "state " + c.state, "data-state": c.state }, STATE_WORDS[c.state] || c.state),
      c.reason ? el("div", { class: "reason" }, c.reason) : "");
    row.cells[2].replaceChildren(c.since ? localTime(c.since) : "", el("div", { class: "muted" }, c.since ? ago(c.since, now) : ""));
    row.cells[3].textContent = `${c.sessions_bound} / ${c.sessions_configured}`;
    row.cells[4].textContent = `${c.window_in_use} / ${c.window_size}`;
    row.cells[5].replaceChildren(el("span", { class: "bar" }, el("span", { style: `width:${used}%` })), ` ${c.submit_per_second} / ${c.tps_limit}`,
      c.tps_override ? el("div", { class: "muted" }, "runtime TPS") : "");
    row.cells[6].textContent = String(c.receipts_per_second);
    row.cells[7].textContent = c.delivery_ratio_15min === null ? "—" : (100 * c.delivery_ratio_15min).toFixed(1) + " %";
    const key = c.control + "/" + c.state;
    if (row.dataset.actions !== key) {
      row.dataset.actions = key;
      const actions = [];
      if (c.control === "stopped") actions.push(button("Start", () => carrierAction(name, "start")));
      else actions.push(button("Stop", () => carrierAction(name, "stop"), "danger"));
      if (c.control === "isolated") actions.push(" ", button("Un-isolate", () => carrierAction(name, "start")));
      else if (c.control !== "stopped") actions.push(" ", button("Isolate", () => carrierAction(name, "isolate")));
      actions.push(" ", button("TPS…", () => changeTps(name, row.dataset.tps)));
      row.cells[8].replaceChildren(...actions);
    }
    row.dataset.tps = String(c.tps_limit);
  }
  for (const row of Array.from(body.rows)) if (!seen.has(row.dataset.carrier)) row.remove();

  const q = data.queues;
  const voice = Object.entries(data.voice.calls_in_progress).map(([t, n]) => `${n} on ${t}`).join(", ") || "0";
  const tiles = [
    ["Held for quiet hours", q.quiet_hours_held, q.quiet_hours_release_at ? "released " + localTime(q.quiet_hours_release_at, true) : "not in quiet hours"],
    ["Scheduled (retries, quiet hours)", q.scheduled, q.next_scheduled_at ? "next " + localTime(q.next_scheduled_at, true) : ""],
    ["Being submitted", q.submitting, ""],
    ["Awaiting receipts", q.awaiting_receipt, ""],
    ["Receipts parked", q.receipts_parked, "waiting for their submit to be recorded"],
    ["Dead letters", q.dead_letters, "failed or rejected", q.dead_letters > 0],
    ["Voice calls in progress", Object.values(data.voice.calls_in_progress).reduce((a, b) => a + b, 0), voice],
    ["Voice reminders queued", data.voice.reminders_queued, ""],
    ["Partners bound", data.partners_bound, ""],
  ];
  $("tiles").replaceChildren(...tiles.map(([label, value, note, alert]) =>
    el("div", { class: "tile" + (alert ? " alert" : ""), "data-tile": label }, label, el("b", {}, String(value)), el("span", { class: "muted" }, note))));
  const pausedLanes = q.paused_lanes || [];
  $("lanes").tBodies[0].replaceChildren(...Object.entries(q.lanes).map(([lane, l]) => {
    const isPaused = pausedLanes.includes(lane);
    return el("tr", { "data-lane": lane, class: isPaused ? "paused" : "" }, el("td", {}, lane + (isPaused ? " (PAUSED)" : "")),
      el("td", {}, String(l.depth)), el("td", {}, age(l.oldest_age_seconds)),
      el("td", { class: "op" }, button(isPaused ? "Resume" : "Pause", () => pauseAction("lanes", lane, !isPaused))));
  }));
  $("paused-types").textContent = (q.paused_types || []).length ? "Paused types: " + q.paused_types.join(", ") : "";
  $("processes").tBodies[0].replaceChildren(...data.processes.map((p) => {
    const clock = clockWords(p.clock);
    return el("tr", { "data-process": p.id }, el("td", {}, p.id), el("td", {}, localTime(p.started_at, true)),
      el("td", {}, ago(p.reported_at, now) + " ago"), el("td", { class: clock.attention ? "warn" : "", "data-clock": "" }, clock.text));
  }));
  drawCharts(data.charts);
}

async function pauseAction(kind, name, pause) {
  const what = kind === "lanes" ? `lane ${name}` : `type ${name}`;
  if (!await confirmAction(`${pause ? "Pause" : "Resume"} ${what} in every process?${pause ? " Nothing more of it is sent until it is resumed." : ""}`)) return;
  try { await api("POST", `/${kind}/${encodeURIComponent(name)}/${pause ? "pause" : "resume"}`); refreshOverview(); }
  catch (e) { setBanner("bad", e.message); }
}

async function pauseType(event) {
  event.preventDefault();
  const name = $("type-name").value.trim(); if (!name) return;
  await pauseAction("types", name, event.submitter && event.submitter.id === "type-pause");
}

function button(text, action, cls) { return el("button", { type: "button", class: cls || "", onclick: action }, text); }

async function carrierAction(name, action) {
  const words = { stop: `Stop carrier ${name} in every process? Its binds close; traffic moves to the other carriers.`,
    start: `Start carrier ${name} again (bind, normal routing)?`,
    isolate: `Isolate carrier ${name}? It stays bound for receipts but gets no new messages.` };
  if (!await confirmAction(words[action])) return;
  try { await api("POST", `/carriers/${encodeURIComponent(name)}/${action}`); refreshOverview(); }
  catch (e) { setBanner("bad", e.message); }
}

async function changeTps(name, current) {
  const answer = prompt(`New submit_sm per second for ${name} (each process; empty = the configured value). Now ${current}.`, "");
  if (answer === null) return;
  const tps = answer.trim() === "" ? null : Number(answer);
  if (!await confirmAction(`Set ${name} TPS to ${tps === null ? "the configured value" : tps}?`)) return;
  try { await api("POST", `/carriers/${encodeURIComponent(name)}/tps`, { tps }); refreshOverview(); }
  catch (e) { setBanner("bad", e.message); }
}

const COLOURS = { submits: "#0969da", receipts: "#1a7f37", failures: "#cf222e" };
function drawCharts(charts) {
  const box = $("charts");
  const figures = Object.entries(charts.carriers).sort().map(([carrier, series]) => {
    const canvas = el("canvas", { width: 480, height: 140, "data-chart": carrier });
    const figure = el("figure", {}, el("figcaption", {}, carrier), canvas,
      el("div", { class: "legend" }, ...Object.keys(COLOURS).map((k) => el("span", { style: "color:" + COLOURS[k] }, "— " + k))));
    const ctx = canvas.getContext("2d");
    const all = Object.keys(COLOURS).flatMap((k) => series[k] || []);
    const max = Math.max(1, ...all);
    ctx.strokeStyle = "#d0d7de"; ctx.strokeRect(30, 5, 445, 115);
    ctx.fillStyle = "#57606a"; ctx.font = "10px sans-serif"; ctx.fillText(String(max), 2, 12); ctx.fillText("0", 2, 120);
    ctx.fillText(localTime(charts.minutes[0]).slice(0, 5), 30, 135); ctx.fillText(localTime(charts.minutes[charts.minutes.length - 1]).slice(0, 5), 440, 135);
    for (const [k, colour] of Object.entries(COLOURS)) {
      const values = series[k] || []; if (!values.length) continue;
      ctx.strokeStyle = colour; ctx.beginPath();
      values.forEach((v, i) => { const x = 30 + 445 * i / Math.max(1, values.length - 1); const y = 120 - 115 * v / max; if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
      ctx.stroke();
    }
    return figure;
  });
  box.replaceChildren(...(figures.length ? figures : [el("p", { class: "muted" }, "No traffic in the last hour.")]));
}

// -- search --------------------------------------------------------------------------------
async function runSearch(event) {
  event.preventDefault();
  const by = $("search-by").value, q = $("search-q").value.trim();
  $("search-error").textContent = ""; $("batch-actions").hidden = true; $("batch-result").textContent = "";
  try {
    const data = await api("GET", `/search?${by}=${encodeURIComponent(q)}`);
    // The typed number is not kept on the page: results carry the masked form only.
    if (by === "phone") $("search-q").value = "";
    $("results").tBodies[0].replaceChildren(...data.results.map((n) => el("tr", { "data-id": n.id },
      el("td", {}, el("a", { href: "#n/" + encodeURIComponent(n.id) }, n.id)), el("td", { class: "to" }, n.to),
      el("td", {}, n.type || ""), el("td", {}, n.state || ""), el("td", {}, n.carrier || ""),
      el("td", {}, localTime(n.accepted_at, true)), el("td", {}, n.batch || ""))));
    if (!data.results.length) $("search-error").textContent = "Nothing found.";
    if (by === "batch" && data.results.length) { state.batch = q; $("batch-actions").hidden = false; }
  } catch (e) { $("search-error").textContent = e.message; }
}

async function cancelBatch() {
  const batch = state.batch;
  try {
    const preview = await api("POST", `/batches/${encodeURIComponent(batch)}/cancel`, { confirm: false });
    if (!await confirmAction(`Cancel ${preview.waiting} notifications of batch ${batch} that are still queued or scheduled (of ${preview.in_batch})? Those already sent are not affected.`)) return;
    const done = await api("POST", `/batches/${encodeURIComponent(batch)}/cancel`, { confirm: true });
    $("batch-result").textContent = `Cancelled ${done.cancelled}; ${done.not_waiting} were no longer waiting.`;
  } catch (e) { $("search-error").textContent = e.message; }
}

async function cancelByType(event) {
  event.preventDefault();
  // datetime-local is the browser's clock: operators' browsers run on Beijing time.
  const body = { type: $("tc-type").value.trim(), since: new Date($("tc-since").value).getTime() / 1000,
    until: new Date($("tc-until").value).getTime() / 1000 };
  $("search-error").textContent = "";
  try {
    const preview = await api("POST", "/cancel", { ...body, confirm: false });
    if (!await confirmAction(`Cancel ${preview.waiting} notifications of type ${body.type} still queued or scheduled, accepted between ${localTime(body.since, true)} and ${localTime(body.until, true)}?`)) return;
    const done = await api("POST", "/cancel", { ...body, confirm: true });
    $("search-error").textContent = `Cancelled ${done.cancelled}; ${done.not_waiting} were no longer waiting.`;
  } catch (e) { $("search-error").textContent = e.message; }
}

// -- one notification ----------------------------------------------------------------------
async function loadNotification(id) {
  $("n-title").textContent = id; $("n-text").hidden = true;
  try {
    const data = await api("GET", `/notifications/${encodeURIComponent(id)}/timeline`);
    const n = data.notification;
    $("n-fields").replaceChildren(...Object.entries(n).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, Array.isArray(v) ? v.join(" ") : String(v))]));
    $("n-timeline").replaceChildren(...data.timeline.map((s) => el("li", {}, `${localTime(s.at, true)} — ${s.step}`)));
  } catch (e) { $("n-fields").replaceChildren(el("dd", { class: "error" }, e.message)); $("n-timeline").replaceChildren(); }
  $("n-show-text").onclick = async () => {
    try { const t = await api("GET", `/notifications/${encodeURIComponent(id)}/text`); $("n-text").textContent = t.text; $("n-text").hidden = false; }
    catch (e) { $("n-text").textContent = e.message; $("n-text").hidden = false; }
  };
}

// -- dead letters --------------------------------------------------------------------------
async function loadDead(event) {
  if (event) event.preventDefault();
  const params = new URLSearchParams();
  for (const [k, id] of [["type", "dead-type"], ["carrier", "dead-carrier"], ["reason", "dead-reason"]]) if ($(id).value) params.set(k, $(id).value);
  if ($("dead-hours").value) params.set("since", String(Date.now() / 1000 - 3600 * Number($("dead-hours").value)));
  $("dead-error").textContent = "";
  try {
    const data = await api("GET", "/dead-letters?" + params);
    $("dead").tBodies[0].replaceChildren(...data.dead_letters.map((d) => el("tr", { "data-id": d.id },
      el("td", {}, el("a", { href: "#n/" + encodeURIComponent(d.id) }, d.id)), el("td", {}, d.to), el("td", {}, d.type || ""),
      el("td", {}, d.state), el("td", {}, d.reason || d.error || ""), el("td", {}, localTime(d.dead_at, true)),
      el("td", { class: "op" }, button("Retry", () => retryDead(d.id)), " ", button("Fix…", () => openFix(d))))));
    if (!data.dead_letters.length) $("dead-error").textContent = "No dead letters match.";
  } catch (e) { $("dead-error").textContent = e.message; }
}

async function retryDead(id) {
  if (!await confirmAction(`Send ${id} again through the intake (validated again)?`)) return;
  try { await api("POST", "/dead-letters/retry", { ids: [id] }); $("dead-error").textContent = `${id} handed back to the intake.`; setTimeout(loadDead, 1500); }
  catch (e) { $("dead-error").textContent = e.message; }
}

function openFix(d) {
  $("fix-form").hidden = false; $("fix-id").textContent = d.id; $("fix-form").dataset.id = d.id;
  $("fix-params").replaceChildren(...Object.entries(d.params || {}).map(([k, v]) =>
    el("label", { class: "row" }, k + " ", el("input", { "data-param": k, value: v }))),
    el("label", { class: "row" }, "add parameter ", el("input", { id: "fix-new-name", placeholder: "name" }), el("input", { id: "fix-new-value", placeholder: "value" })));
}

async function submitFix(event) {
  event.preventDefault();
  const id = $("fix-form").dataset.id, params = {};
  for (const input of $("fix-params").querySelectorAll("input[data-param]")) params[input.dataset.param] = input.value;
  if ($("fix-new-name").value) params[$("fix-new-name").value] = $("fix-new-value").value;
  if (!await confirmAction(`Retry ${id} with the parameters shown?`)) return;
  try { await api("POST", `/dead-letters/${encodeURIComponent(id)}/retry`, { params }); $("fix-form").hidden = true; $("dead-error").textContent = `${id} fixed and handed back to the intake.`; setTimeout(loadDead, 1500); }
  catch (e) { $("dead-error").textContent = e.message; }
}

// -- audit ---------------------------------------------------------------------------------
async function loadAudit() {
  try {
    const data = await api("GET", "/audit?limit=200");
    $("audit").tBodies[0].replaceChildren(...data.audit.map((a) => el("tr", {},
      el("td", {}, localTime(a.at, true)), el("td", {}, a.user), el("td", {}, a.role), el("td", {}, a.action),
      el("td", {}, a.target), el("td", {}, a.from), el("td", {}, JSON.stringify(a.detail)))));
  } catch (e) { setBanner("bad", e.message); }
}

// -- wiring --------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    try {
      state.session = await api("POST", "/session", { user: $("login-user").value, password: $("login-password").value });
      $("login-password").value = "";
      loggedIn();
    } catch (e) { $("login-error").textContent = e.message; }
  });
  $("logout").addEventListener("click", async () => { try { await api("DELETE", "/session"); } finally { showLogin(); } });
  $("search-form").addEventListener("submit", runSearch);
  $("type-form").addEventListener("submit", pauseType);
  $("batch-cancel").addEventListener("click", cancelBatch);
  $("type-cancel-form").addEventListener("submit", cancelByType);
  $("dead-form").addEventListener("submit", loadDead);
  $("fix-form").addEventListener("submit", submitFix);
  $("fix-cancel").addEventListener("click", () => { $("fix-form").hidden = true; });
  window.addEventListener("hashchange", route);
  start();
});
