// Episode frame viewer: open an image episode from the Episodes table and scrub through its
// camera frames with a slider, the step's action beside the picture.
//
// The server names episodes by their listing key (never a path) and reads one frame per
// request (GET /api/episodes/frame: the stored JPEG/PNG as is). While the slider moves, only
// the newest position is fetched: a request in flight is not followed by every position the
// slider passed, just by the one it rests on.

import { get } from "./api.js";
import { $, fill, fmtNum, h, notify, setText } from "./dom.js";

const viewer = { key: null, info: null, t: 0, want: null, busy: false };

export function initViewer() {
  $("viewer-slider").addEventListener("input", (ev) => show(parseInt(ev.target.value, 10)));
  $("viewer-image").addEventListener("change", () => show(viewer.t, true));
  $("viewer-close").addEventListener("click", close);
  $("viewer-frame").addEventListener("load", (ev) => {
    ev.target.dataset.loadedT = ev.target.dataset.t;
  });
  $("viewer-frame").addEventListener("error", () => {
    if (viewer.key) notify("error", `frame ${viewer.t} of ${viewer.key} did not load`);
  });
}

/** Open episode ``key`` (from GET /api/episodes) at its first step. */
export async function openEpisode(key) {
  let info;
  try {
    info = await get(`api/episodes/view?key=${encodeURIComponent(key)}`);
  } catch (err) {
    notify("error", `episode ${key}: ${err.message}`);
    return;
  }
  viewer.key = key;
  viewer.info = info;
  const box = $("viewer");
  box.dataset.key = key;
  box.dataset.steps = String(info.steps);
  box.classList.remove("hidden");
  setText("viewer-episode", info.episode_id || key);
  const keys = Object.keys(info.image_keys || {});
  fill(
    $("viewer-image"),
    keys.map((k) => h("option", { value: k, title: (info.image_keys[k] || []).join("×") }, k)),
  );
  const slider = $("viewer-slider");
  slider.max = String(Math.max(0, info.steps - 1));
  slider.value = "0";
  await show(0, true);
  box.scrollIntoView({ block: "nearest" });
}

function close() {
  viewer.key = null;
  $("viewer").classList.add("hidden");
}

async function show(t, force = false) {
  if (!viewer.key || (!force && t === viewer.t && !viewer.busy)) return;
  viewer.want = t;
  if (viewer.busy) return; // the loop below picks up the newest position
  viewer.busy = true;
  try {
    while (viewer.want !== null) {
      const want = viewer.want;
      viewer.want = null;
      await showStep(want);
    }
  } finally {
    viewer.busy = false;
  }
}

async function showStep(t) {
  const key = viewer.key;
  const image = $("viewer-image").value;
  viewer.t = t;
  setText("viewer-t", `${t} of ${viewer.info.steps - 1}`);
  const img = $("viewer-frame");
  img.dataset.t = String(t);
  if (image) {
    img.src = `api/episodes/frame?key=${encodeURIComponent(key)}&t=${t}&image=${encodeURIComponent(image)}`;
  }
  let step;
  try {
    step = await get(`api/episodes/step?key=${encodeURIComponent(key)}&t=${t}`);
  } catch (err) {
    notify("error", `step ${t} of ${key}: ${err.message}`);
    return;
  }
  if (key !== viewer.key) return;
  const action = $("viewer-action");
  action.dataset.t = String(t);
  action.dataset.action = JSON.stringify(step.action);
  setText("viewer-action", `[${step.action.map((v) => fmtNum(v, 4)).join(", ")}]`);
  setText(
    "viewer-time",
    step.timestamp === null || step.timestamp === undefined ? "–" : `${fmtNum(step.timestamp, 4)} s`,
  );
  setText("viewer-reward", fmtNum(step.reward, 4));
  const state = Object.entries(step.observation || {})
    .map(([k, v]) => `${k} ${Array.isArray(v) ? `[${v.map((x) => fmtNum(x)).join(", ")}]` : v}`)
    .join(" · ");
  setText("viewer-state", state || "– (camera only)");
}
