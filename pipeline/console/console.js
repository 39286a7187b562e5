// labelpipe console: reads the admin API every poll_ms and calls its
// controls. Everything shown is set with textContent: dead letters carry
// vendors' answers, which must never be taken for markup.
"use strict";

const state = { session: null, pollMs: 1000, timer: null, export: null, exportQuery: "" };

function $(sel) { return document.querySelector(sel); }

function say(msg, isError) {
  const el = $("#status");
  el.textContent = msg;
  el.classList.toggle("error", !!isError);
}

async function getJSON(path) {
  const resp = await fetch(path, { headers: { "Accept": "application/json" }, cache: "no-store" });
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  return { ok: resp.ok, code: resp.status, body };
}

// post calls a control; the session cookie is the credential, and the
// browser's Sec-Fetch-Site tells the admin API it is same-origin.
async function post(path, payload) {
  const init = { method: "POST", headers: { "Accept": "application/json" } };
  if (payload !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const resp = await fetch(path, init);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const why = body && body.error ? body.error : resp.statusText;
    say(`${path}: ${resp.status} ${why}`, true);
    return null;
  }
  return body;
}

function fmtAge(s) {
  if (!s) return "—";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  return `${(s / 3600).toFixed(1)} h`;
}

// row returns the <tr> of tbody keyed by key, creating it with n cells.
function row(tbody, key, n, attr) {
  let tr = tbody.querySelector(`tr[${attr}="${CSS.escape(key)}"]`);
  if (!tr) {
    tr = document.createElement("tr");
    tr.setAttribute(attr, key);
    for (let i = 0; i < n; i++) tr.appendChild(document.createElement(i === 0 ? "th" : "td"));
    tr.firstChild.setAttribute("scope", "row");
    tbody.appendChild(tr);
  }
  return tr;
}

function prune(tbody, attr, keep) {
  for (const tr of [...tbody.querySelectorAll(`tr[${attr}]`)]) {
    if (!keep.has(tr.getAttribute(attr))) tr.remove();
  }
}

function cell(td, text, cls) {
  if (td.textContent !== String(text)) td.textContent = text;
  if (cls !== undefined) td.className = cls;
}

// button returns td's button for action, creating it once so that
// keyboard focus survives the updates.
function button(td, action, label, onClick, aria) {
  let b = td.querySelector(`button[data-action="${action}"]`);
  if (!b) {
    b = document.createElement("button");
    b.type = "button";
    b.dataset.action = action;
    b.setAttribute("data-needs-change", "");
    b.addEventListener("click", onClick);
    td.appendChild(b);
  }
  if (b.textContent !== label) b.textContent = label;
  if (aria && b.getAttribute("aria-label") !== aria) b.setAttribute("aria-label", aria);
  b.disabled = !(state.session && state.session.can_change);
  return b;
}

// first puts b first in its cell, moving it only when it is not there
// already: a moved button would lose the keyboard focus.
function first(b) {
  if (b.parentNode.firstChild !== b) b.parentNode.prepend(b);
}

function renderSinks(sinks) {
  const tbody = $("#sinks tbody");
  const keep = new Set();
  const sel = $("#f-sink");
  for (const s of sinks) {
    keep.add(s.name);
    const tr = row(tbody, s.name, 9, "data-sink");
    const c = tr.children;
    cell(c[0], s.name);
    cell(c[1], s.breaker, `breaker breaker-${s.breaker}`);
    cell(c[2], s.paused ? `paused by ${s.paused_by || "an operator"}` : "running", s.paused ? "state paused" : "state");
    cell(c[3], s.queue_depth, "num queue");
    cell(c[4], fmtAge(s.oldest_pending_seconds), "num oldest");
    cell(c[5], s.delivered_last_minute_here, "num rate");
    cell(c[6], s.dlq, "num dlqlen");
    cell(c[7], s.last_error ? `${s.last_error} (${new Date(s.last_error_at).toLocaleTimeString()})` : "—", "error");
    const name = s.name;
    if (s.paused) {
      c[8].querySelector('button[data-action="pause"]')?.remove();
      first(button(c[8], "resume", "Resume", () => control(`/api/sinks/${encodeURIComponent(name)}/resume`, `${name} resumed`), `Resume ${name}`));
    } else {
      c[8].querySelector('button[data-action="resume"]')?.remove();
      first(button(c[8], "pause", "Pause", () => control(`/api/sinks/${encodeURIComponent(name)}/pause`, `${name} paused: its queue holds`), `Pause ${name}`));
    }
    button(c[8], "reset", "Reset breaker", () => control(`/api/sinks/${encodeURIComponent(name)}/breaker/reset`, `${name}: breaker closed`), `Reset the breaker of ${name}`);
    if (![...sel.options].some(o => o.value === name)) {
      const o = document.createElement("option");
      o.value = name; o.textContent = name;
      sel.appendChild(o);
    }
  }
  prune(tbody, "data-sink", keep);
}

function renderDLQ(entries) {
  const tbody = $("#dlq tbody");
  const keep = new Set();
  for (const d of entries) {
    const key = `${d.sink}/${d.id}`;
    keep.add(key);
    const tr = row(tbody, key, 11, "data-entry");
    tr.dataset.export = d.export_id;
    const c = tr.children;
    cell(c[0], d.sink);
    cell(c[1], d.export_id, "export");
    cell(c[2], d.issue_id || "—", "issue");
    cell(c[3], d.chunk, "num");
    cell(c[4], d.status || "no answer", "num status");
    cell(c[5], d.answer || "—", "answer");
    cell(c[6], d.error, "error");
    cell(c[7], d.attempts, "num");
    cell(c[8], new Date(d.failed_at).toLocaleString());
    if (d.trace_url) {
      let a = c[9].querySelector("a");
      if (!a) { a = document.createElement("a"); a.rel = "noreferrer noopener"; a.target = "_blank"; c[9].appendChild(a); }
      a.href = d.trace_url;
      a.textContent = `trace ${d.trace_id.slice(0, 8)}`;
    } else {
      cell(c[9], d.trace_id ? d.trace_id.slice(0, 8) : "—");
    }
    const sink = d.sink, id = d.id;
    button(c[10], "replay-one", "Replay",
      () => replay(sink, { ids: [id] }), `Replay export ${d.export_id} chunk ${d.chunk} to ${sink}`);
  }
  prune(tbody, "data-entry", keep);
  $("#dlq-empty").hidden = entries.length > 0;
}

// renderExports lists the export history, newest first, with each sink's
// state; a row's button opens the export.
function renderExports(list) {
  const tbody = $("#exports-list tbody");
  const keep = new Set();
  list.forEach((e, i) => {
    keep.add(e.id);
    const tr = row(tbody, e.id, 6, "data-export-row");
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i]); // newest first, as listed
    const c = tr.children;
    cell(c[0], new Date(e.received_at).toLocaleString());
    if (!c[1].querySelector("button")) {
      const b = document.createElement("button");
      const id = e.id;
      b.type = "button";
      b.dataset.action = "open";
      b.textContent = id;
      b.setAttribute("aria-label", `Open export ${id}`);
      b.addEventListener("click", () => openExport(id));
      c[1].appendChild(b);
    }
    cell(c[2], e.issue_id || "—", "issue");
    cell(c[3], e.project || "—");
    let ul = c[4].querySelector("ul");
    if (!ul) { ul = document.createElement("ul"); ul.className = "sink-states"; c[4].appendChild(ul); }
    const names = Object.keys(e.sinks || {}).sort();
    while (ul.children.length > names.length) ul.lastChild.remove();
    names.forEach((name, i) => {
      let li = ul.children[i];
      if (!li) { li = document.createElement("li"); ul.appendChild(li); }
      li.dataset.sink = name;
      cell(li, `${name}: ${e.sinks[name]}`, `state-${e.sinks[name]}`);
    });
    traceCell(c[5], e);
  });
  prune(tbody, "data-export-row", keep);
  $("#exports-empty").hidden = list.length > 0;
}

function traceCell(td, e) {
  if (e.trace_url) {
    let a = td.querySelector("a");
    if (!a) { a = document.createElement("a"); a.rel = "noreferrer noopener"; a.target = "_blank"; td.appendChild(a); }
    a.href = e.trace_url;
    a.textContent = `trace ${e.trace_id.slice(0, 8)}`;
  } else {
    cell(td, e.trace_id ? e.trace_id.slice(0, 8) : "—");
  }
}

async function openExport(id) {
  state.export = id;
  await refreshExport();
}

// eventText says what a timeline event was, in words.
const eventText = {
  queued: () => "queued",
  resent: ev => `resent (generation ${ev.generation})`,
  attempt_failed: ev => `attempt ${ev.attempt} failed`,
  dead_lettered: ev => "dead-lettered" + (ev.attempt ? ` after ${ev.attempt} attempt(s)` : ""),
  delivered: ev => "delivered" + (ev.attempt ? ` on attempt ${ev.attempt}` : ""),
  skipped: () => "skipped by the sink's filter",
};

// renderTimeline lists a request's events, oldest first, each with its
// time. It is rebuilt only when it changed: the detail is a live region,
// and an unchanged list must not be read out again at every poll.
function renderTimeline(td, events) {
  const list = events || [];
  const key = JSON.stringify(list);
  if (td.dataset.timeline === key) return;
  td.dataset.timeline = key;
  td.textContent = "";
  if (!list.length) { td.textContent = "—"; return; }
  const ol = document.createElement("ol");
  ol.className = "timeline";
  for (const ev of list) {
    const li = document.createElement("li");
    li.dataset.event = ev.event;
    const t = document.createElement("time");
    t.dateTime = ev.at;
    t.textContent = new Date(ev.at).toLocaleString();
    li.appendChild(t);
    let text = " " + (eventText[ev.event] ? eventText[ev.event](ev) : ev.event);
    if (ev.status) text += `: ${ev.status}`;
    if (ev.error) text += ` (${ev.error})`;
    li.appendChild(document.createTextNode(text));
    ol.appendChild(li);
  }
  td.appendChild(ol);
}

// refreshExport shows the open export's requests: each sink and chunk
// with its state, generation, attempts, the vendor's last answer and its
// timeline.
async function refreshExport() {
  if (!state.export) return;
  const r = await getJSON(`/api/exports/${encodeURIComponent(state.export)}`);
  const box = $("#export-detail");
  if (!r.ok) { box.hidden = true; return; }
  const e = r.body;
  box.hidden = false;
  box.dataset.export = e.id;
  cell($("#export-detail-h"), `Export ${e.id}`);
  cell($("#export-detail-meta"), `Issue ${e.issue_id || "—"}, project ${e.project || "—"}, ${e.event}, received ${new Date(e.received_at).toLocaleString()}` +
    (e.generation ? `; resent ${e.generation} time(s)` : ""));
  const tbody = $("#export-requests tbody");
  const keep = new Set();
  for (const q of e.requests || []) {
    const key = `${q.sink}.${q.chunk}`;
    keep.add(key);
    const tr = row(tbody, key, 9, "data-request");
    const c = tr.children;
    cell(c[0], q.sink);
    cell(c[1], q.chunk < 0 ? "—" : `${q.chunk + 1} of ${q.chunks || 1}`, "num");
    cell(c[2], q.state, `state state-${q.state}`);
    cell(c[3], q.generation || 0, "num generation");
    cell(c[4], q.attempts || 0, "num");
    cell(c[5], q.status || "—", "num status");
    cell(c[6], q.error || "—", "error");
    cell(c[7], q.idempotency_key || "—", "key");
    renderTimeline(c[8], q.timeline);
  }
  prune(tbody, "data-request", keep);
  const sel = $("#resend-sink");
  for (const name of Object.keys(e.sinks || {}).sort()) {
    if (![...sel.options].some(o => o.value === name)) {
      const o = document.createElement("option");
      o.value = name; o.textContent = name;
      sel.appendChild(o);
    }
  }
}

async function resend(fresh) {
  const id = state.export;
  if (!id) return;
  const sink = $("#resend-sink").value;
  const to = sink || "every sink";
  if (fresh) {
    if (!confirm(`Resend export ${id} to ${to} as NEW work, with new idempotency keys? The vendor will create it again.`)) return;
    if (!confirm(`Really create export ${id} again at ${to}? This cannot be undone.`)) return;
  }
  const body = {};
  if (sink) body.sink = sink;
  if (fresh) body.fresh = true;
  const ans = await post(`/api/exports/${encodeURIComponent(id)}/resend`, body);
  if (ans) say(`Export ${id} resent to ${to} (generation ${ans.generation}${fresh ? ", new work" : ""})`);
  await refresh();
}

async function control(path, done) {
  const ans = await post(path);
  if (ans) say(done);
  await refresh();
}

async function replay(sink, filter) {
  const ans = await post(`/api/dlq/${encodeURIComponent(sink)}/replay`, filter);
  if (ans) say(`Replayed ${ans.replayed} of ${ans.total} dead letters of ${sink}${ans.error ? ": " + ans.error : ""}`, !!ans.error);
  await refresh();
}

function filterFromForm() {
  const f = {};
  const v = id => $(id).value.trim();
  if (v("#f-export")) f.export_id = v("#f-export");
  if (v("#f-issue")) f.issue_id = v("#f-issue");
  if (v("#f-status")) f.status = parseInt(v("#f-status"), 10);
  if (v("#f-older")) f.older_than = v("#f-older");
  if (v("#f-newer")) f.newer_than = v("#f-newer");
  return f;
}

function renderSession(s) {
  state.session = s;
  state.pollMs = s.poll_ms || 1000;
  const who = $("#whoami");
  const needSignIn = s.token_configured && !s.signed_in;
  $("#signin").hidden = !needSignIn;
  $("#signout").hidden = !s.signed_in;
  let text;
  if (s.signed_in) text = "Signed in: you can pause, resume, reset and replay.";
  else if (!s.token_configured && s.loopback) text = "No admin token is set: on loopback you can read and change.";
  else if (s.loopback) text = "Reading on loopback; sign in with the admin token to change anything.";
  else text = "Sign in with the admin token to see this pipeline.";
  if (s.replica) text += ` Replica ${s.replica}, broker ${s.broker}${s.pauses_shared ? " (pauses shared by replicas)" : ""}.`;
  if (who.textContent !== text) who.textContent = text; // unchanged: not announced again
  for (const b of document.querySelectorAll("[data-needs-change]")) b.disabled = !s.can_change;
}

// signInOutcome says once what the sign-in form's redirect reported.
function signInOutcome() {
  const q = new URLSearchParams(location.search).get("signin");
  if (q === "failed") say("Sign-in failed: wrong admin token.", true);
  if (q === "notoken") say("No admin token is configured: nothing to sign in with.", true);
  if (q === "full") say("Too many console sessions: try again later.", true);
  if (q) history.replaceState(null, "", "/");
}

async function refresh() {
  try {
    const s = await getJSON("/console/session");
    if (s.body) renderSession(s.body);
    if (!state.session || !state.session.can_read) return;
    const [sinks, dlq, exps] = await Promise.all([getJSON("/api/sinks"), getJSON("/api/dlq?limit=200"),
      getJSON("/api/exports?limit=50" + state.exportQuery)]);
    if (sinks.ok) renderSinks(sinks.body);
    if (dlq.ok) renderDLQ(dlq.body);
    if (exps.ok) renderExports(exps.body.exports);
    await refreshExport();
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    say(`Cannot reach the admin API: ${e}`, true);
  }
}

async function loop() {
  await refresh();
  state.timer = setTimeout(loop, state.pollMs);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#replay-filter").addEventListener("submit", ev => {
    ev.preventDefault();
    replay($("#f-sink").value, filterFromForm());
  });
  $("#replay-all").addEventListener("click", () => {
    const sink = $("#f-sink").value;
    if (confirm(`Replay every dead letter of ${sink}?`)) replay(sink, {});
  });
  $("#exports-filter").addEventListener("submit", ev => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if ($("#x-issue").value.trim()) q.set("issue_id", $("#x-issue").value.trim());
    if ($("#x-state").value) q.set("state", $("#x-state").value);
    state.exportQuery = q.toString() ? "&" + q.toString() : "";
    refresh();
  });
  $("#resend").addEventListener("submit", ev => { ev.preventDefault(); resend(false); });
  $("#resend-fresh").addEventListener("click", () => resend(true));
  signInOutcome();
  loop();
});
