// Live sim: the server's reach2d arm driven by the served policy, one tick per round trip.
//
// Each tick is exactly what a robot does: send the observation to /api/infer (with this
// page's session id, reset on the first tick of an episode), apply the action
// (/api/sim/step), draw. The next tick starts only after the previous one finished, at most
// every 20 ms (50 Hz, the arm's control rate): a slow server slows the arm down, it never
// queues requests. A click on the canvas moves the target; the new target rides along with
// the next step. It starts paused: on a robot, a browser tab should not load the CPU that
// the control loop needs until someone asks it to. Step runs one tick while paused.
//
// The readout keeps apart what holds *now* (the tip within the success radius at this tick,
// and for how many ticks) from what happened *earlier* (the env's success for this target:
// held for 5 ticks, which stays true after the tip drifts off).

import { ApiError, post } from "./api.js";
import { $, fmtNum, notify, setText } from "./dom.js";
import { settled as settledOf, startLoop } from "./live_loop.js";

const PERIOD_MS = 20;
const TRAIL = 160;
const VIEW = 1.1; // world units from the centre to the canvas edge (the arm reaches 1.0)
const SUCCESS_RADIUS = 0.05; // reach2d's success radius, drawn around the target
const HOLD_TICKS = 5; // reach2d's hold_steps: success is this many ticks within the radius
const cm = (metres) => `${(100 * metres).toFixed(1)} cm`; // the arm's links are 1 m long together

// One control stream per page (its own recurrent state on the server), as a robot would have.
const randomHex = (bytes) =>
  Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
const sessionId = `page-${randomHex(8)}`;

const sim = {
  state: null, // the last answer of /api/sim/reset or /api/sim/step
  running: false,
  generation: 0, // bumps on pause/reset: a loop of an older generation stops
  inflight: Promise.resolve(),
  freshEpisode: true, // the next /api/infer sends reset: true
  pendingTarget: null,
  trail: [],
  startDistance: null, // distance when the current target was set
  bestDistance: null,
  reachedAt: null, // tick count at the first success for the current target
  heldTicks: 0, // consecutive ticks within the success radius, up to now
  touched: false,
  ticksForTarget: 0,
  periodMs: null,
  lastTickAt: null,
};

/** What the shared run loop (live_loop.js) needs to know of the arm. */
const panel = {
  what: "sim",
  periodMs: PERIOD_MS,
  setRunning,
  newEpisode,
  tick,
  noModel: (message) => showNoModel(true, message),
  failed,
};

export function initSim() {
  $("sim-run").addEventListener("click", () => (sim.running ? pause() : run()));
  $("sim-reset").addEventListener("click", () => resetSim(sim.running));
  $("sim-step").addEventListener("click", stepOnce);
  $("sim-canvas").addEventListener("click", onCanvasClick);
  draw();
}

function setRunning(running) {
  sim.running = running;
  setText("sim-run", running ? "Pause" : "Run");
  $("sim-step").disabled = running;
  const stateEl = $("sim-state");
  stateEl.dataset.state = running ? "running" : "paused";
  setText("sim-state", running ? "running" : "paused");
}

function run() {
  return startLoop(sim, panel);
}

/** One tick while paused (a new episode first if there is none). */
async function stepOnce() {
  if (sim.running) return;
  const gen = sim.generation;
  await settled();
  if (sim.running || gen !== sim.generation) return;
  try {
    if (!sim.state) await newEpisode(gen);
    sim.inflight = tick(gen);
    await sim.inflight;
  } catch (err) {
    if (err instanceof ApiError && err.status === 503) showNoModel(true, err.message);
    else if (err instanceof ApiError && err.status === 404) sim.state = null;
    else failed(err);
  }
}

function pause() {
  sim.generation++;
  sim.lastTickAt = null;
  setRunning(false);
}

/** Resolves when the tick in flight (if any) has finished, however it ended. */
const settled = () => settledOf(sim);

async function resetSim(resume) {
  pause();
  await settled();
  sim.pendingTarget = null; // a new episode draws its own target
  try {
    await newEpisode(sim.generation);
  } catch (err) {
    failed(err);
    return;
  }
  if (resume) run();
}

async function newEpisode(gen) {
  const seedRaw = $("sim-seed").value.trim();
  const body = { env: "reach2d" };
  if (seedRaw) body.seed = parseInt(seedRaw, 10);
  if (sim.state) body.sim_id = sim.state.sim_id;
  const state = await post("api/sim/reset", body);
  if (gen !== sim.generation) return;
  sim.freshEpisode = true;
  sim.trail = [];
  apply(state, true);
}

async function tick(gen) {
  const state = sim.state;
  const t0 = performance.now();
  const act = await post("api/infer", {
    observation: state.observation,
    session_id: sessionId,
    reset: sim.freshEpisode,
  });
  const roundTripMs = performance.now() - t0;
  showNoModel(false);
  sim.freshEpisode = false;
  const target = sim.pendingTarget;
  const body = { sim_id: state.sim_id, action: act.action };
  if (target) body.target = target;
  const next = await post("api/sim/step", body);
  if (gen !== sim.generation) return;
  if (target && sim.pendingTarget === target) sim.pendingTarget = null;
  const version = $("sim-version");
  version.dataset.version = act.model_version;
  setText("sim-version", act.model_version);
  setText("sim-latency", `${fmtNum(act.latency_us)} µs in the model · ${fmtNum(roundTripMs)} ms round trip`);
  const now = performance.now();
  if (sim.lastTickAt !== null) {
    const period = now - sim.lastTickAt; // averaged as a period: the mean of 1/dt overstates the rate
    sim.periodMs = sim.periodMs === null ? period : 0.9 * sim.periodMs + 0.1 * period;
    setText("sim-rate", `${fmtNum(1000 / sim.periodMs, 2)} Hz`);
  }
  sim.lastTickAt = now;
  apply(next, Boolean(target));
}

/** Take a new sim state; ``newTarget``: the distance and the success count start over. */
function apply(state, newTarget) {
  sim.state = state;
  if (newTarget) {
    sim.startDistance = state.distance;
    sim.bestDistance = state.distance;
    sim.reachedAt = null;
    sim.touched = false;
    sim.ticksForTarget = 0;
    sim.heldTicks = 0;
  } else {
    sim.ticksForTarget += 1;
    sim.bestDistance = Math.min(sim.bestDistance ?? state.distance, state.distance);
  }
  sim.touched = sim.touched || state.in_target;
  sim.heldTicks = state.in_target ? sim.heldTicks + 1 : 0;
  if (state.success && sim.reachedAt === null) sim.reachedAt = sim.ticksForTarget;
  sim.trail.push(state.tip);
  if (sim.trail.length > TRAIL) sim.trail.shift();
  renderReadout();
  requestAnimationFrame(draw);
}

function renderReadout() {
  const s = sim.state;
  const holds = Boolean(s.in_target);
  const canvas = $("sim-canvas");
  Object.assign(canvas.dataset, {
    simId: s.sim_id,
    ticks: String(s.steps),
    distance: String(s.distance),
    startDistance: String(sim.startDistance),
    bestDistance: String(sim.bestDistance),
    targetX: String(s.target[0]),
    targetY: String(s.target[1]),
    success: String(s.success),
    inTarget: String(s.in_target),
    holds: String(holds),
    reachedAt: sim.reachedAt === null ? "" : String(sim.reachedAt),
  });
  setText("sim-steps", `${s.steps} (${sim.ticksForTarget} for this target)`);
  setText("sim-target", `(${s.target[0].toFixed(3)}, ${s.target[1].toFixed(3)})`);

  const holdsEl = $("sim-holds");
  holdsEl.dataset.holds = String(holds);
  holdsEl.className = holds ? "holds-yes" : "holds-no";
  setText(
    "sim-holds",
    holds
      ? `yes: ${cm(s.distance)} from the target, for ${sim.heldTicks} tick(s)`
      : `no: ${cm(s.distance)} from the target (needs ≤ ${cm(SUCCESS_RADIUS)})`,
  );
  setText(
    "sim-distance",
    `${cm(s.distance)} now · best ${cm(sim.bestDistance)} · started at ${cm(sim.startDistance)}`,
  );
  const reached = $("sim-success");
  reached.dataset.reached = String(sim.reachedAt !== null);
  setText(
    "sim-success",
    sim.reachedAt !== null
      ? `yes, after ${sim.reachedAt} ticks (held ${HOLD_TICKS} ticks)${holds ? "" : ", not holding now"}`
      : sim.touched
        ? `touched it, not held ${HOLD_TICKS} ticks yet`
        : "not yet for this target",
  );
}

function showNoModel(show, message = "") {
  const el = $("sim-nomodel");
  if (show) el.textContent = `No model loaded: ${message}`;
  el.classList.toggle("hidden", !show);
}

function failed(err) {
  pause();
  notify("error", `live sim: ${err.status ? `${err.status}: ` : ""}${err.message}`);
}

// -- canvas -----------------------------------------------------------------------------

function toPx(canvas, [x, y]) {
  const scale = canvas.width / (2 * VIEW);
  return [canvas.width / 2 + x * scale, canvas.height / 2 - y * scale];
}

function onCanvasClick(ev) {
  const canvas = ev.currentTarget;
  const rect = canvas.getBoundingClientRect();
  const px = ((ev.clientX - rect.left) * canvas.width) / rect.width;
  const py = ((ev.clientY - rect.top) * canvas.height) / rect.height;
  const scale = canvas.width / (2 * VIEW);
  sim.pendingTarget = [(px - canvas.width / 2) / scale, (canvas.height / 2 - py) / scale];
  canvas.dataset.pendingTarget = sim.pendingTarget.map((v) => v.toFixed(3)).join(",");
  if (!sim.running) notify("info", "target set: press Run to send it to the arm");
  requestAnimationFrame(draw);
}

function draw() {
  const canvas = $("sim-canvas");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const scale = width / (2 * VIEW);
  ctx.clearRect(0, 0, width, height);
  // reach circle and axes
  ctx.strokeStyle = "#d8dde3";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.arc(width / 2, height / 2, scale, 0, 2 * Math.PI);
  ctx.moveTo(0, height / 2);
  ctx.lineTo(width, height / 2);
  ctx.moveTo(width / 2, 0);
  ctx.lineTo(width / 2, height);
  ctx.stroke();
  const s = sim.state;
  if (!s) {
    ctx.fillStyle = "#667";
    ctx.font = "14px system-ui, sans-serif";
    ctx.fillText("press Run to start the arm", 12, 22);
    return;
  }
  // target
  const [tx, ty] = toPx(canvas, s.target);
  ctx.fillStyle = s.success ? "#2ca02c" : s.in_target ? "#98df8a" : "#ffbb78";
  ctx.beginPath();
  ctx.arc(tx, ty, Math.max(4, SUCCESS_RADIUS * scale), 0, 2 * Math.PI);
  ctx.fill();
  if (sim.pendingTarget) {
    const [qx, qy] = toPx(canvas, sim.pendingTarget);
    ctx.strokeStyle = "#ff7f0e";
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.arc(qx, qy, Math.max(4, SUCCESS_RADIUS * scale), 0, 2 * Math.PI);
    ctx.stroke();
    ctx.setLineDash([]);
  }
  // trail of the tip
  ctx.strokeStyle = "rgba(31, 119, 180, 0.35)";
  ctx.beginPath();
  sim.trail.forEach((p, i) => {
    const [x, y] = toPx(canvas, p);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  // the arm: base -> elbow -> tip
  const base = toPx(canvas, [0, 0]);
  const elbow = toPx(canvas, s.elbow);
  const tip = toPx(canvas, s.tip);
  ctx.strokeStyle = "#334";
  ctx.lineWidth = 6;
  ctx.lineCap = "round";
  ctx.beginPath();
  ctx.moveTo(...base);
  ctx.lineTo(...elbow);
  ctx.lineTo(...tip);
  ctx.stroke();
  ctx.lineWidth = 1;
  ctx.fillStyle = "#334";
  for (const [x, y] of [base, elbow]) {
    ctx.beginPath();
    ctx.arc(x, y, 5, 0, 2 * Math.PI);
    ctx.fill();
  }
  ctx.fillStyle = "#1f77b4";
  ctx.beginPath();
  ctx.arc(tip[0], tip[1], 4, 0, 2 * Math.PI);
  ctx.fill();
}
