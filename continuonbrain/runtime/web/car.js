// Live car: drive2d driven by the served camera brain, on the server (POST /api/sim/drive).
//
// Shown instead of the arm when the served brain takes drive2d's camera (its image_keys
// hold cam/image_array, from /api/status): a vector brain cannot drive a car and a camera
// brain cannot drive the arm, so the page picks the one the served brain can drive.
//
// Each tick is one request: the server hands the car's frame to the same BrainService.act that
// /api/infer calls and moves the car (a frame is 57,600 numbers: relaying it through the
// browser would cost more than the brain does). The page asks for the camera picture (a JPEG)
// every FRAME_MS only and keeps the trail itself; the track map comes once per episode. Like
// the arm it starts paused and never queues ticks: the next starts when the last one finished.

import { ApiError, post } from "./api.js";
import { $, fmtNum, notify, setText } from "./dom.js";
import { settled as settledOf, startLoop } from "./live_loop.js";

const CAR_IMAGE_KEY = "cam/image_array";
const PERIOD_MS = 50; // drive2d's 20 Hz
const FRAME_MS = 200; // a few camera pictures a second are enough to watch
const TRAIL = 600; // poses: 30 s at 20 Hz
const CAR_DRAWN_M = 0.35; // the car's length on the map (larger than life, to be seen)

const car = {
  state: null, // the last answer of /api/sim/reset or /api/sim/drive
  track: null, // {centreline, half_width, ...} of the current sim
  running: false,
  generation: 0,
  inflight: Promise.resolve(),
  trail: [],
  frames: 0,
  lastFrameAt: 0,
  lastTickAt: null,
  periodMs: null,
  shown: false,
};

/** What the shared run loop (live_loop.js) needs to know of the car. */
const panel = {
  what: "car",
  periodMs: PERIOD_MS,
  setRunning,
  newEpisode,
  tick,
  noModel: (message) => showBanner(`No model loaded: ${message}`),
  failed,
};

export function initCar() {
  $("car-run").addEventListener("click", () => (car.running ? pause() : run()));
  $("car-reset").addEventListener("click", () => newTrack(car.running));
  draw();
}

/** Show the car (and hide the arm) when the served brain is a camera brain. One whose cameras
 * are not drive2d's gets the car panel too, saying why it cannot drive it (the arm would only
 * answer 422 on every tick). */
export function chooseLiveSim(status) {
  const service = (status && status.service) || {};
  const keys = service.image_keys || [];
  const camera = keys.length > 0;
  const fits = keys.includes(CAR_IMAGE_KEY);
  $("car-run").disabled = camera && !fits;
  if (camera && !fits) {
    showBanner(`the served brain's cameras (${keys.join(", ")}) are not drive2d's ${CAR_IMAGE_KEY}: no live sim can feed it`);
    pause();
  }
  if (camera === car.shown) return;
  car.shown = camera;
  $("panel-car").classList.toggle("hidden", !camera);
  $("panel-sim").classList.toggle("hidden", camera);
  document.body.dataset.liveSim = camera ? "car" : "arm";
  if (!camera) pause();
}

function setRunning(running) {
  car.running = running;
  setText("car-run", running ? "Pause" : "Run");
  const el = $("car-state");
  el.dataset.state = running ? "running" : "paused";
  setText("car-state", running ? "running" : "paused");
}

const settled = () => settledOf(car);

function pause() {
  car.generation++;
  car.lastTickAt = null;
  setRunning(false);
}

function run() {
  return startLoop(car, panel);
}

async function newTrack(resume) {
  pause();
  await settled();
  try {
    await newEpisode(car.generation, true);
  } catch (err) {
    failed(err);
    return;
  }
  if (resume) run();
}

async function newEpisode(gen, fresh = false) {
  const seedRaw = $("car-seed").value.trim();
  const body = { env: "drive2d" };
  if (seedRaw) body.seed = parseInt(seedRaw, 10);
  if (car.state && !fresh) body.sim_id = car.state.sim_id;
  const state = await post("api/sim/reset", body);
  if (gen !== car.generation) return;
  car.track = state.track;
  car.trail = [];
  apply(state);
}

async function tick(gen) {
  const now = performance.now();
  const frame = now - car.lastFrameAt >= FRAME_MS;
  const t0 = performance.now();
  const next = await post("api/sim/drive", { sim_id: car.state.sim_id, frame });
  const roundTripMs = performance.now() - t0;
  if (gen !== car.generation) return;
  showBanner(null);
  if (frame) car.lastFrameAt = now;
  if (car.lastTickAt !== null) {
    const period = now - car.lastTickAt;
    car.periodMs = car.periodMs === null ? period : 0.9 * car.periodMs + 0.1 * period;
  }
  car.lastTickAt = now;
  setText(
    "car-latency",
    `${fmtNum(next.latency_us)} µs in the model · ${fmtNum(roundTripMs)} ms round trip` +
      (car.periodMs ? ` · ${fmtNum(1000 / car.periodMs, 2)} Hz` : ""),
  );
  apply(next);
}

function apply(state) {
  const previous = car.state;
  car.state = state;
  if (state.track) car.track = state.track;
  if (previous && previous.episode !== state.episode) car.trail.push(null); // a restart: break the line
  car.trail.push([state.pose[0], state.pose[1]]);
  while (car.trail.length > TRAIL) car.trail.shift();
  if (state.frame) {
    const img = $("car-camera");
    img.src = state.frame;
    car.frames += 1;
    img.dataset.frames = String(car.frames);
    img.dataset.frameTick = String(state.steps);
    setText("car-camera-info", `${state.image_shape[1]}×${state.image_shape[0]} at tick ${state.steps}`);
  }
  renderReadout();
  requestAnimationFrame(draw);
}

function renderReadout() {
  const s = car.state;
  Object.assign($("car-map").dataset, {
    simId: s.sim_id,
    ticks: String(s.steps),
    trackPoints: String(car.track ? car.track.centreline.length : 0),
    trail: String(car.trail.filter(Boolean).length),
    carX: String(s.pose[0]),
    carY: String(s.pose[1]),
  });
  const version = $("car-version");
  version.dataset.version = s.model_version || "";
  setText("car-version", s.model_version || "–");
  setText(
    "car-action",
    s.action ? `angle ${s.action[0].toFixed(3)} · throttle ${s.action[1].toFixed(3)}` : "– (not driven yet)",
  );
  setText("car-speed", `${s.speed.toFixed(2)} m/s`);
  setText("car-progress", `${(100 * s.progress).toFixed(1)} % of this lap (episode ${s.episode + 1})`);
  setText("car-cte", `${(100 * s.cross_track_error).toFixed(1)} cm${s.off_track ? " · OFF THE TRACK" : ""}`);
  const end = s.last_end === "lap" ? "last: a lap" : s.last_end === "off_track" ? "last: off the track" : "";
  setText("car-laps", `${s.laps} lap(s) · ${s.off_track_restarts} restart(s) off the track${end ? ` (${end})` : ""}`);
}

function showBanner(text) {
  const el = $("car-nomodel");
  if (text) el.textContent = text;
  el.classList.toggle("hidden", !text);
}

function failed(err) {
  pause();
  if (err instanceof ApiError && err.status === 422) showBanner(err.message);
  notify("error", `live car: ${err.status ? `${err.status}: ` : ""}${err.message}`);
}

// -- the track map ------------------------------------------------------------------------

/** World -> canvas transform fitting the track (with its width and a margin) in the canvas. */
function view(canvas) {
  const pts = car.track.centreline;
  const pad = car.track.half_width + 0.5;
  let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of pts) {
    x0 = Math.min(x0, x);
    y0 = Math.min(y0, y);
    x1 = Math.max(x1, x);
    y1 = Math.max(y1, y);
  }
  const scale = Math.min(canvas.width / (x1 - x0 + 2 * pad), canvas.height / (y1 - y0 + 2 * pad));
  const cx = (x0 + x1) / 2;
  const cy = (y0 + y1) / 2;
  return {
    scale,
    px: ([x, y]) => [canvas.width / 2 + (x - cx) * scale, canvas.height / 2 - (y - cy) * scale],
  };
}

function polyline(ctx, points, px, close) {
  ctx.beginPath();
  let pen = false;
  for (const p of points) {
    if (!p) {
      pen = false;
      continue;
    }
    const [x, y] = px(p);
    if (pen) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
    pen = true;
  }
  if (close) ctx.closePath();
  ctx.stroke();
}

function draw() {
  const canvas = $("car-map");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!car.track || !car.state) {
    ctx.fillStyle = "#667";
    ctx.font = "14px system-ui, sans-serif";
    ctx.fillText("press Run to start the car", 12, 22);
    return;
  }
  const { scale, px } = view(canvas);
  ctx.lineJoin = "round";
  ctx.lineCap = "round";
  // the track surface, its edges and the centre line
  ctx.strokeStyle = "#3a3f47";
  ctx.lineWidth = Math.max(2, 2 * car.track.half_width * scale + 2);
  polyline(ctx, car.track.centreline, px, true);
  ctx.strokeStyle = "#8d949e";
  ctx.lineWidth = Math.max(1, 2 * car.track.half_width * scale);
  polyline(ctx, car.track.centreline, px, true);
  ctx.strokeStyle = "#f4f4f4";
  ctx.lineWidth = 1;
  ctx.setLineDash([4, 4]);
  polyline(ctx, car.track.centreline, px, true);
  ctx.setLineDash([]);
  // the trail
  ctx.strokeStyle = "rgba(31, 119, 180, 0.8)";
  ctx.lineWidth = 2;
  polyline(ctx, car.trail, px, false);
  // the car: a triangle pointing where it heads, red when off the track
  const [x, y, yaw] = car.state.pose;
  const len = Math.max(10, CAR_DRAWN_M * scale);
  const [cx, cy] = px([x, y]);
  ctx.save();
  ctx.translate(cx, cy);
  ctx.rotate(-yaw);
  ctx.fillStyle = car.state.off_track ? "#d62728" : "#ff7f0e";
  ctx.strokeStyle = "#222";
  ctx.beginPath();
  ctx.moveTo(len * 0.7, 0);
  ctx.lineTo(-len * 0.3, len * 0.35);
  ctx.lineTo(-len * 0.3, -len * 0.35);
  ctx.closePath();
  ctx.fill();
  ctx.stroke();
  ctx.restore();
}
