// pollux ui: the few things a server-rendered page cannot do alone. No framework, no build step.
// Untrusted text (answers, rationales) is only ever written with textContent, never as HTML.
"use strict";

// Sortable tables: click a header; cells may carry data-sort (numbers), else their text is used.
function sortKey(cell) {
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  const num = parseFloat(raw);
  return raw !== "" && !isNaN(num) && isFinite(raw) ? num : raw.toLowerCase();
}

function makeSortable(table) {
  table.querySelectorAll("thead th").forEach((th, col) => {
    th.addEventListener("click", () => {
      const body = table.tBodies[0];
      const up = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
        if (x === y) return 0;
        if (x === "") return 1;  // blanks last either way
        if (y === "") return -1;
        const less = typeof x === typeof y ? x < y : typeof x === "number";
        return (less ? -1 : 1) * (up ? 1 : -1);
      });
      rows.forEach((r) => body.appendChild(r));
    });
  });
}

// Live progress: the runs table polls the runs endpoint every 2 s while a run is unfinished.
function pollRuns(table) {
  const url = table.dataset.live;
  const tick = async () => {
    let data;
    try {
      const response = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
      if (!response.ok) return setTimeout(tick, 5000);
      data = await response.json();
    } catch (e) {
      return setTimeout(tick, 5000);
    }
    let running = false;
    for (const run of data.runs) {
      const row = table.querySelector(`tr[data-ref="${CSS.escape(run.ref)}"]`);
      if (!row) continue;
      for (const field of ["judged", "failed", "invalid"]) {
        const cell = row.querySelector(`[data-field="${field}"]`);
        if (cell) {
          cell.textContent = Number(run[field]).toLocaleString("en-US");  // 1,045, as the server writes it
          cell.dataset.sort = String(run[field]);
        }
      }
      const bar = row.querySelector("progress");
      if (bar) bar.value = run.progress;
      row.querySelector('[data-field="percent"]').textContent = `${(run.progress * 100).toFixed(1)} %`;
      const stateCell = row.querySelector('[data-field="state"]');
      stateCell.textContent = run.finished ? "finished" : "running";
      stateCell.className = run.finished ? "done" : "live";
      running = running || !run.finished;
    }
    table.dataset.polls = String(Number(table.dataset.polls || 0) + 1);
    if (running) setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

// Judge live: POST the form as JSON, read the NDJSON stream, show deltas as they come.
function liveJudge(form) {
  const out = document.getElementById("live-rationale");
  const score = document.getElementById("live-score");
  const valid = document.getElementById("live-valid");
  const error = document.getElementById("live-error");
  const state = document.getElementById("live-state");
  const csrf = document.querySelector('meta[name="csrf-token"]');
  const handle = (msg) => {
    if (msg.type === "delta") {
      out.textContent += msg.text;
    } else if (msg.type === "verdict") {
      score.textContent = msg.score === null ? "none" : String(Math.round(msg.score * 1000) / 1000);
      valid.textContent = msg.valid ? "" : `invalid: ${msg.invalid_reason || msg.error || ""}`;
      if (msg.rationale && !out.textContent) out.textContent = msg.rationale;
    } else if (msg.type === "error") {
      error.hidden = false;
      error.textContent = msg.message;
    }
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    document.getElementById("live-result").hidden = false;
    out.textContent = ""; score.textContent = "…"; valid.textContent = ""; error.hidden = true;
    state.textContent = "(generating…)";
    const body = JSON.stringify(Object.fromEntries(new FormData(form).entries()));
    try {
      const response = await fetch(form.dataset.endpoint, {
        method: "POST", body, credentials: "same-origin",
        headers: {"Content-Type": "application/json", Accept: "application/x-ndjson",
                  "X-CSRF-Token": csrf ? csrf.content : ""},
      });
      if (!response.ok) {
        const data = await response.json().catch(() => ({error: {message: response.statusText}}));
        handle({type: "error", message: `${response.status}: ${data.error.message}`});
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        buffer += decoder.decode(value || new Uint8Array(), {stream: !done});
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl).trim();
          buffer = buffer.slice(nl + 1);
          if (line) handle(JSON.parse(line));
        }
        if (done) break;
      }
    } catch (e) {
      handle({type: "error", message: String(e)});
    } finally {
      state.textContent = "(done)";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("table.sortable").forEach(makeSortable);
  const runs = document.querySelector("table[data-live]");
  if (runs) pollRuns(runs);
  const live = document.getElementById("live-form");
  if (live) liveJudge(live);
  document.body.dataset.ready = "1";
});
