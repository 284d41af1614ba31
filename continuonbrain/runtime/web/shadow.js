// Shadow panel: run the candidate beside the served brain on live traffic (POST/GET/DELETE
// /api/models/shadow) and watch how far its actions would have been from the served ones.
//
// The candidate is never actuated; every tick any client sends to /api/infer (or the live
// car drives) is compared. The figures are polled every second while a window runs and
// every few seconds otherwise (a window started by another client or the CLI shows up too).
// A server without shadow mode (404 on GET) says so instead of showing empty figures.

import { ApiError, get, request } from "./api.js";
import { $, fill, fmtNum, h, notify, setText, showResult, sleep } from "./dom.js";
import { refreshModels } from "./models.js";

const ACTIVE_POLL_MS = 1000;
const IDLE_POLL_MS = 5000;
let active = false;
let wake = null;

export function initShadow() {
  $("shadow-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    start();
  });
  $("shadow-stop").addEventListener("click", stop);
  poll();
}

async function poll() {
  for (;;) {
    if (!document.hidden) await refreshShadow();
    await new Promise((resolve) => {
      wake = resolve;
      sleep(active ? ACTIVE_POLL_MS : IDLE_POLL_MS).then(resolve);
    });
  }
}

async function refreshShadow() {
  try {
    render(await get("api/models/shadow"));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) unavailable(err.message);
    else notify("error", `shadow: ${err.message}`);
  }
}

function unavailable(message) {
  active = false;
  const el = $("shadow-unavailable");
  el.dataset.unavailable = "true";
  el.textContent = `shadow mode unavailable on this server (${message})`;
  el.classList.remove("hidden");
  $("shadow-start").disabled = true;
  $("shadow-stop").disabled = true;
}

async function start() {
  const out = $("shadow-result");
  const raw = $("shadow-window").value.trim();
  const body = raw ? { window_ticks: parseInt(raw, 10) } : {};
  try {
    const res = await request("POST", "api/models/shadow", { body, auth: true });
    showResult(out, "ok", `Shadowing ${res.candidate_version} beside ${res.current_version}.`);
    render(res);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) unavailable(err.message);
    else showResult(out, "error", `${err.status ? `${err.status}: ` : ""}${err.message}`);
  }
  if (wake) wake();
}

async function stop() {
  const out = $("shadow-result");
  try {
    const res = await request("DELETE", "api/models/shadow", { auth: true });
    showResult(out, "info", `Stopped after ${res.ticks} tick(s).`);
    render(res);
  } catch (err) {
    showResult(out, "error", `${err.status ? `${err.status}: ` : ""}${err.message}`);
  }
  refreshModels(); // a finished window is a gate record the models panel may show
}

function render(s) {
  const wasActive = active;
  active = Boolean(s.active);
  const stats = $("shadow-stats");
  Object.assign(stats.dataset, {
    active: String(active),
    ticks: String(s.ticks ?? 0),
    passed: s.passed === null || s.passed === undefined ? "unknown" : String(s.passed),
  });
  const state = $("shadow-state");
  state.dataset.state = active ? "running" : s.ticks ? "finished" : "idle";
  setText(
    "shadow-state",
    active
      ? "running"
      : s.ticks
        ? `finished${s.reason ? `: ${s.reason}` : ""}`
        : "no window yet: start one, then drive the robot (or the live car)",
  );
  setText("shadow-candidate", s.candidate_version || "–");
  setText("shadow-current", s.current_version || "–");
  setText("shadow-ticks", `${s.ticks ?? 0}${s.window_ticks ? ` of ${s.window_ticks}` : ""}${s.dropped ? ` · ${s.dropped} dropped` : ""}`);
  setText(
    "shadow-distance",
    s.ticks ? `mean ${fmtNum(s.mean_action_distance)} · p95 ${fmtNum(s.p95_action_distance)}` : "–",
  );
  setText("shadow-violations", `${s.bound_violations ?? 0} out of bounds · ${s.non_finite ?? 0} NaN/inf`);
  setText(
    "shadow-latency",
    s.latency_us_p50 !== null && s.latency_us_p50 !== undefined
      ? `p50 ${fmtNum(s.latency_us_p50)} µs · p99 ${fmtNum(s.latency_us_p99)} µs`
      : "–",
  );
  const verdict = $("shadow-verdict");
  verdict.dataset.passed = stats.dataset.passed;
  fill(
    verdict,
    s.passed === true
      ? h("strong", { class: "ok-text" }, "✓ passed")
      : s.passed === false
        ? h("strong", { class: "error" }, "✗ not passed")
        : active
          ? "window running"
          : "–",
    s.verdict ? h("span", { class: "muted" }, ` ${s.verdict}`) : null,
  );
  $("shadow-start").disabled = active;
  $("shadow-stop").disabled = !active;
  if (wasActive && !active) refreshModels();
}
