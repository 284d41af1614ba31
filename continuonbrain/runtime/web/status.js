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

// -- gates --------------------------------------------------------------------------------
//
// Three states, told apart: "pass" (a reading that allows training), "block" (a reading that
// stops it) and "unknown" (no reading: no sensor, no robot state file, new data not tracked).
// An unknown reading still has an effect (an unknown battery passes, an unknown robot state
// counts as busy where idle is required); the "Now" column says which, in a few words.

const STATE_TEXT = { pass: "✓ passes", block: "✗ blocks", unknown: "? unknown" };
const SHORT_REASON = {
  idle: "robot busy",
  teleop: "teleop active",
  battery: "battery low",
  thermal: "too hot",
  new_episodes: "no new episodes",
};

function gateState(name, gate, sensors) {
  if (name === "idle") return gate.known === false ? "unknown" : gate.ok ? "pass" : "block";
  if (name === "teleop") return gate.value ? "block" : sensors.state_error ? "unknown" : "pass";
  if (gate.value === null || gate.value === undefined) return "unknown";
  return gate.ok ? "pass" : "block";
}

/** What the gate does right now, in a few words. ``manual``: it refuses a start from here. */
function gateEffect(name, gate, state, manual) {
  if (state === "block") return manual ? "blocks training (force overrides)" : "holds scheduled runs";
  if (name === "idle") {
    if (gate.required === false) return "not required here";
    return state === "unknown" ? "no robot state: scheduled runs wait" : "";
  }
  if (state !== "unknown") return "";
  if (name === "teleop") return "no robot state: assumed not teleoperated";
  if (name === "battery") return "no battery reading: passes (mains power?)";
  if (name === "thermal") return "no sensor: passes";
  if (name === "new_episodes") return "not tracked for manual runs";
  return "";
}

function gateValue(name, gate, state) {
  if (state === "unknown") return "unknown";
  const v = gate.value;
  if (v === null || v === undefined) return "unknown";
  if (name === "idle") return v ? "idle" : `busy${gate.mode ? ` (${gate.mode})` : ""}`;
  if (name === "teleop") return v ? "active" : "off";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (name === "battery" && typeof v === "number")
    return `${Math.round(v * 100)} % (min ${Math.round((gate.min ?? 0) * 100)} %)`;
  if (name === "thermal" && typeof v === "number") return `${fmtNum(v)} °C (max ${fmtNum(gate.max)})`;
  if (name === "new_episodes" && typeof v === "number") return `${v} (min ${gate.min ?? 1})`;
  return typeof v === "number" ? fmtNum(v) : String(v);
}

/** The one line above the table: what binds now. */
function bindsLine(decision, gates, states) {
  const blocking = decision.blocking || [];
  const unknown = Object.keys(states).filter((k) => states[k] === "unknown");
  const tail = unknown.length ? ` (unknown: ${unknown.join(", ")})` : "";
  if (blocking.length) {
    const why = blocking.map((k) =>
      ["battery", "thermal"].includes(k) && gates[k]
        ? `${SHORT_REASON[k]} (${gateValue(k, gates[k], "block")})`
        : SHORT_REASON[k] || k,
    );
    return { blocked: true, text: `${why.join(", ")}: training blocked (force overrides)` };
  }
  if (decision.ok === false) {
    const first = decision.reason ? Object.keys(gates).find((k) => gates[k].reason === decision.reason) : null;
    const why = first ? (states[first] === "unknown" ? "robot state unknown" : SHORT_REASON[first] || first) : "a gate";
    return { blocked: false, text: `Training may start; scheduled runs wait: ${why}${tail}` };
  }
  return { blocked: false, text: `Nothing blocks: training may start${tail}` };
}

function renderGates(decision) {
  const gates = decision.gates || {};
  const sensors = decision.sensors || {};
  const blocking = new Set(decision.blocking || []);
  const states = {};
  const rows = Object.entries(gates).map(([name, gate]) => {
    const state = gateState(name, gate, sensors);
    states[name] = state;
    const effect = gateEffect(name, gate, state, blocking.has(name));
    return h(
      "tr",
      {
        class: `gate-${state}${blocking.has(name) ? " blocking" : ""}`,
        "data-gate": name,
        "data-ok": String(!!gate.ok),
        "data-state": state,
        "data-blocks-start": String(blocking.has(name)),
        title: gate.detail || gate.reason || "",
      },
      h("td", {}, name),
      h("td", { class: "gate-state" }, STATE_TEXT[state]),
      h("td", {}, gateValue(name, gate, state)),
      h("td", {}, effect),
    );
  });
  fillTable($("status-gates"), rows, "no gates reported", 4);
  const binds = bindsLine(decision, gates, states);
  const el = $("status-binds");
  el.className = `binds${binds.blocked ? " blocked" : ""}`;
  el.dataset.blocked = String(binds.blocked);
  setText("status-binds", binds.text);
}
