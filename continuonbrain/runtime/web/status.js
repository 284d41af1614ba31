// Status panel: GET /api/status about once a second (never two requests at once), rendered
// here and handed to the other panels (the models panel refreshes when the slots change).

import { get } from "./api.js";
import { $, fillTable, fmtNum, h, setText, sleep } from "./dom.js";

const POLL_MS = 1000;
const listeners = [];
let wake = null;

/** Call ``fn(status)`` after every successful poll. */
export function onStatus(fn) {
  listeners.push(fn);
}

/** Poll now instead of waiting for the next tick (after a promotion, a rollback, a start). */
export function refreshStatusNow() {
  if (wake) wake();
}

export async function startStatus() {
  for (;;) {
    try {
      const status = await get("api/status");
      renderStatus(status);
      for (const fn of listeners) {
        try {
          fn(status);
        } catch (err) {
          console.error(err);
        }
      }
      const conn = $("status-conn");
      conn.className = "conn ok";
      setText("status-conn", `updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      $("status-conn").className = "conn error";
      setText("status-conn", `status unavailable: ${err.message}`);
    }
    await Promise.race([sleep(POLL_MS), new Promise((resolve) => (wake = resolve))]);
    wake = null;
  }
}

function renderStatus(s) {
  const service = s.service || {};
  const version = s.model_version || "no model loaded";
  const el = $("status-version");
  setText("status-version", version);
  el.dataset.version = s.model_version || "";
  el.classList.toggle("error", !s.model_version);

  const sessions = service.sessions || {};
  setText(
    "status-served",
    service.loaded
      ? `${service.backend} backend · loaded in ${fmtNum(service.load_ms)} ms · ${service.swaps} swap(s) · ` +
          `${sessions.active ?? 0} session(s) · components ${(service.components || []).join(", ")}`
      : "nothing loaded",
  );

  const training = s.training || {};
  const job = training.job;
  setText(
    "status-training",
    job
      ? `${training.state} — last job ${job.job_id} (${job.kind}) ${job.state}` +
          (job.component ? ` · ${job.component} step ${job.step ?? "–"}` : "")
      : "idle (no job yet)",
  );

  const sys = s.system || {};
  const jobRss =
    job && ["running", "stopping"].includes(job.state) && job.rss_mb ? ` · trainer ${fmtNum(job.rss_mb)} MB` : "";
  setText(
    "status-memory",
    `server ${fmtNum(sys.rss_mb)} MB${jobRss} · ` +
      `available ${fmtNum(sys.mem_available_mb)} of ${fmtNum(sys.mem_total_mb)} MB`,
  );
  const thermal = (s.gates && s.gates.gates && s.gates.gates.thermal) || {};
  setText(
    "status-temp",
    sys.cpu_temp_c === null || sys.cpu_temp_c === undefined
      ? "unknown (no thermal sensor)"
      : `${fmtNum(sys.cpu_temp_c)} °C (training limit ${fmtNum(thermal.max)} °C)`,
  );
  setText(
    "status-load",
    `${fmtNum(sys.load_1m)} (1 min) on ${sys.cpu_count ?? "?"} CPUs · up ${fmtNum(sys.uptime_s)} s`,
  );

  renderGates(s.gates || {});

  // Serving a history version because current could not be served: the robot runs, on an older brain.
  const fallback = s.fallback;
  $("status-fallback").classList.toggle("hidden", !fallback);
  setText(
    "status-fallback",
    fallback
      ? `FALLBACK: serving history version ${fallback.version} because ${fallback.reason}. ` +
          "The store is unchanged: roll back or promote a good version."
      : "",
  );
  const integrity = s.integrity || {};
  $("status-integrity").classList.toggle("hidden", integrity.ok !== false);
  setText(
    "status-integrity",
    integrity.ok === false
      ? `The served files of ${integrity.version} changed on disk: ${integrity.reason}. ` +
          "The verified copy in memory keeps serving; a restart would refuse them."
      : "",
  );
  const broken = (s.slots && s.slots.broken) || [];
  $("status-broken").classList.toggle("hidden", broken.length === 0);
  setText(
    "status-broken",
    broken.length ? `Damaged in the store: ${broken.map((b) => `${b.slot} ${b.version ?? ""}: ${b.reason}`).join("; ")}` : "",
  );

  const refused = service.refused || [];
  const refusedEl = $("status-refused");
  refusedEl.classList.toggle("hidden", refused.length === 0);
  setText(
    "status-refused",
    refused.length ? `Refused to serve: ${refused.map((r) => `${r.version ?? r.link}: ${r.reason}`).join("; ")}` : "",
  );
}

function gateValue(name, gate) {
  const v = gate.value;
  if (v === null || v === undefined) return "unknown";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (name === "battery" && typeof v === "number")
    return `${Math.round(v * 100)} % (min ${Math.round((gate.min ?? 0) * 100)} %)`;
  if (name === "thermal" && typeof v === "number") return `${fmtNum(v)} °C (max ${fmtNum(gate.max)})`;
  return typeof v === "number" ? fmtNum(v) : String(v);
}

function renderGates(decision) {
  const gates = decision.gates || {};
  const blocking = new Set(decision.blocking || []);
  const rows = Object.entries(gates).map(([name, gate]) =>
    h(
      "tr",
      {
        class: gate.ok ? "ok" : blocking.has(name) ? "bad blocking" : "bad",
        "data-gate": name,
        "data-ok": String(!!gate.ok),
      },
      h("td", {}, name, blocking.has(name) ? " (blocks training)" : ""),
      h("td", {}, gate.ok ? "✓" : "✗"),
      h("td", {}, gateValue(name, gate)),
      h("td", {}, gate.detail || gate.reason || ""),
    ),
  );
  fillTable($("status-gates"), rows, "no gates reported", 4);
}
