// Training panel: start/stop jobs with budgets, and one live loss chart per component fed by
// the Server-Sent Events of GET /api/training/events.
//
// The stream replays the current job's events to a fresh connection, so a page opened in
// the middle of a run draws the whole curve; an automatic reconnect sends Last-Event-ID and
// gets only what it missed. Events of another job than the one drawn start new charts.

import { ApiError, get, post } from "./api.js";
import { $, fill, fmtNum, h, notify, setText, showResult } from "./dom.js";
import { refreshModels } from "./models.js";
import { onStatus, refreshStatusNow } from "./status.js";

const COLORS = { vqvae: "#1f77b4", mid_loop: "#d62728", fast_loop: "#2ca02c", lora: "#9467bd" };
const FALLBACK_COLORS = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

let configs = { sequential: [], adapt: [] };
let defaults = {};
let jobId = null; // the job whose curves are drawn
let lastEventId = 0;
const charts = new Map(); // component -> {box, plot, xs, ys, readout}
let flushQueued = false;

export async function initTraining() {
  $("train-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    startJob();
  });
  $("train-stop").addEventListener("click", stopJob);
  $("train-kind").addEventListener("change", fillConfigs);
  onStatus(renderJob);
  connectEvents();
  try {
    const status = await get("api/training/status");
    configs = status.configs || configs;
    defaults = status.defaults || {};
  } catch (err) {
    notify("error", `training configs: ${err.message}`);
  }
  fillConfigs();
}

function fillConfigs() {
  const kind = $("train-kind").value;
  const select = $("train-config");
  const fallback = defaults[kind] ? `server default (${defaults[kind]})` : "server default";
  fill(
    select,
    h("option", { value: "" }, fallback),
    ...(configs[kind] || []).map((name) => h("option", { value: name }, name)),
  );
  $("train-resume").disabled = kind !== "sequential";
}

function readBudget(id, parse) {
  const raw = $(id).value.trim();
  if (!raw) return undefined;
  const value = parse(raw);
  if (!Number.isFinite(value)) throw new Error(`${$(id).name}: not a number: ${raw}`);
  return value;
}

async function startJob() {
  const out = $("train-result");
  const kind = $("train-kind").value;
  let body;
  try {
    body = {
      max_steps: readBudget("train-max-steps", (v) => parseInt(v, 10)),
      max_wall_time_s: readBudget("train-max-wall", Number),
      memory_budget_mb: readBudget("train-memory", (v) => parseInt(v, 10)),
      config: $("train-config").value || undefined,
      force: $("train-force").checked,
      resume: kind === "sequential" && $("train-resume").checked,
    };
  } catch (err) {
    showResult(out, "error", err.message);
    return;
  }
  showResult(out, "info", `starting ${kind} training…`);
  try {
    const res = await post(`api/training/${kind}`, body, { auth: true });
    showResult(
      out,
      "ok",
      `Started ${res.kind} job `,
      h("code", {}, res.job_id),
      res.gates && res.gates.blocking && res.gates.blocking.length ? " (forced past the gates)" : "",
    );
    refreshStatusNow();
  } catch (err) {
    showError(out, err);
  }
}

async function stopJob() {
  const out = $("train-result");
  try {
    const res = await post("api/training/stop", undefined, { auth: true });
    showResult(out, "info", res.stopping ? `Stopping job ${res.job_id} (it checkpoints first)…` : res.message);
    refreshStatusNow();
  } catch (err) {
    showError(out, err);
  }
}

/** A refused start names the gate that refused it; any other error shows the server's message. */
function showError(out, err) {
  if (err instanceof ApiError && err.status === 409 && err.detail && err.detail.reason) {
    showResult(out, "error", h("strong", {}, `Refused (${err.detail.reason}): `), err.message);
  } else {
    showResult(out, "error", err.status ? `${err.status}: ${err.message}` : err.message);
  }
}

function renderJob(status) {
  const training = status.training || {};
  const job = training.job;
  if (!job) {
    setText("train-job", "no job yet");
    setText("train-state", "idle");
    return;
  }
  setText("train-job", `${job.job_id} (${job.kind}${job.forced ? ", forced" : ""}) · ${fmtNum(job.elapsed_s)} s`);
  const state = $("train-state");
  state.dataset.state = job.state;
  setText("train-state", job.state + (job.error ? ` — ${job.error.split("\n").slice(-1)[0]}` : ""));
  $("train-stop").disabled = !["running", "stopping"].includes(job.state);
}

// -- the event stream -------------------------------------------------------------------

function connectEvents() {
  const source = new EventSource("api/training/events");
  const stream = $("train-stream");
  source.onopen = () => {
    stream.dataset.state = "open";
    setText("train-stream", "connected");
  };
  source.onerror = () => {
    stream.dataset.state = "reconnecting";
    setText("train-stream", "disconnected; reconnecting…");
    if (source.readyState === EventSource.CLOSED) setTimeout(connectEvents, 5000); // the browser gave up: we do not
  };
  source.addEventListener("hello", (ev) => {
    const hello = JSON.parse(ev.data);
    if (typeof hello.last_seq === "number" && hello.last_seq < lastEventId) {
      // The server restarted and numbers its events from 1 again: the Last-Event-ID this
      // reconnect sent means nothing there. A new EventSource sends none and gets the replay.
      source.close();
      lastEventId = 0;
      jobId = null;
      connectEvents();
      return;
    }
    if (hello.job && hello.job.job_id !== jobId) startJobCharts(hello.job.job_id);
  });
  for (const kind of ["job", "metrics", "progress"]) {
    source.addEventListener(kind, (ev) => {
      const id = Number(ev.lastEventId);
      if (id && id <= lastEventId) return; // already drawn
      if (id) lastEventId = id;
      let record;
      try {
        record = JSON.parse(ev.data);
      } catch (err) {
        notify("error", `unreadable ${kind} event: ${err.message}`);
        return;
      }
      handleEvent(kind, record);
    });
  }
}

function handleEvent(kind, record) {
  if (record.job_id && record.job_id !== jobId) startJobCharts(record.job_id);
  if (kind === "metrics") {
    addPoint(record.component, record.step, record.loss);
    setText("train-progress", `${record.component} step ${record.step} · loss ${fmtNum(record.loss, 4)}`);
  } else if (kind === "progress") {
    const what = record.event || "progress";
    setText(
      "train-progress",
      `${what}${record.component ? ` · ${record.component}` : ""}${record.reason ? ` · ${record.reason}` : ""}`,
    );
  } else if (kind === "job") {
    jobEvent(record);
  }
}

function jobEvent(record) {
  if (!["succeeded", "failed", "stopped", "interrupted"].includes(record.state)) return;
  const out = $("train-result");
  const result = record.result || {};
  if (record.state === "failed") {
    showResult(
      out,
      "error",
      `Job ${record.job_id} failed (exit ${record.returncode}): `,
      h("pre", {}, record.error || ""),
    );
  } else if (result.components) {
    const parts = Object.entries(result.components).map(
      ([name, c]) =>
        `${name} ${c.steps} steps (${c.stop_reason}), loss ${fmtNum(c.initial_loss, 4)} → ${fmtNum(c.final_loss, 4)}`,
    );
    const next = record.state === "succeeded" ? " The candidate waits in Models." : "";
    showResult(
      out,
      record.state === "succeeded" ? "ok" : "info",
      `Job ${record.job_id} ${record.state}: ${parts.join("; ")} (loss: mean of the first → last 10 steps).${next}`,
    );
  } else {
    let verdict = result.status ? ` (${result.status})` : "";
    if (result.promoted === true)
      verdict = `: adapter promoted, now serving ${result.current_version || result.candidate_version}`;
    else if (result.promoted === false)
      verdict = `: not promoted (${result.status || "rejected"}): ${result.reason || "no reason given"}`;
    showResult(
      out,
      record.state === "succeeded" && result.promoted !== false ? "ok" : "info",
      `Job ${record.job_id} ${record.state}${verdict}`,
    );
  }
  refreshStatusNow();
  refreshModels(); // an adaptation may have gated (and audited) a candidate the slots no longer show
}

// -- charts -----------------------------------------------------------------------------

function startJobCharts(id) {
  jobId = id;
  for (const chart of charts.values()) if (chart.plot) chart.plot.destroy();
  charts.clear();
  const box = $("train-charts");
  box.dataset.job = id;
  box.replaceChildren();
}

function chartFor(component) {
  let chart = charts.get(component);
  if (chart) return chart;
  const color = COLORS[component] || FALLBACK_COLORS[charts.size % FALLBACK_COLORS.length];
  const readout = h("span", { class: "muted" });
  const plotBox = h("div", { class: "plot" });
  const box = h(
    "figure",
    { class: "chart", "data-testid": `chart-${component}`, "data-component": component, "data-points": "0" },
    h("figcaption", {}, h("strong", { style: `color:${color}` }, component), " loss ", readout),
    plotBox,
  );
  $("train-charts").append(box);
  chart = { box, plotBox, readout, xs: [], ys: [], plot: null, color };
  if (window.uPlot) {
    chart.plot = new window.uPlot(
      {
        width: Math.max(240, (plotBox.clientWidth || 360) - 4),
        height: 150,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: false } },
        axes: [{ label: "step", size: 30 }, { size: 50 }],
        series: [{ label: "step" }, { label: "loss", stroke: color, width: 1.5, points: { show: false } }],
      },
      [[], []],
      plotBox,
    );
  } else {
    fill(plotBox, h("p", { class: "error" }, "chart library (vendor/uplot) did not load: showing numbers only"));
  }
  charts.set(component, chart);
  return chart;
}

function addPoint(component, step, loss) {
  if (!component || typeof loss !== "number" || !Number.isFinite(loss)) return;
  const chart = chartFor(component);
  chart.xs.push(typeof step === "number" ? step : chart.xs.length);
  chart.ys.push(loss);
  chart.readout.textContent = `step ${chart.xs[chart.xs.length - 1]}: ${fmtNum(loss, 4)}`;
  chart.box.dataset.points = String(chart.xs.length);
  chart.box.dataset.last = String(loss);
  if (!flushQueued) {
    flushQueued = true; // a replay delivers hundreds of points at once: draw once per frame
    requestAnimationFrame(flushCharts);
  }
}

function flushCharts() {
  flushQueued = false;
  for (const chart of charts.values()) if (chart.plot) chart.plot.setData([chart.xs, chart.ys]);
}

window.addEventListener("resize", () => {
  for (const chart of charts.values()) {
    if (chart.plot) chart.plot.setSize({ width: Math.max(240, chart.plotBox.clientWidth - 4), height: 150 });
  }
});
