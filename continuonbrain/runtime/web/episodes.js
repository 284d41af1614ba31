// Episodes panel: the RLDS episodes the trainer sees (with validation errors naming the
// file, episode and field), the quarantine with its reasons, and the button that moves every
// bad episode there. The listing is cached on the server, so polling it is cheap. An episode
// with camera streams gets a "Frames" button that opens it in the frame viewer (viewer.js).

import { get, post } from "./api.js";
import { $, fillTable, fmtNum, h, notify, setText, showResult, sleep } from "./dom.js";
import { openEpisode } from "./viewer.js";

const PAGE = 100;
const POLL_MS = 5000;
let offset = 0;
let total = 0;
let loading = null;

export function initEpisodes() {
  $("episodes-quarantine").addEventListener("click", quarantineBad);
  $("episodes-prev").addEventListener("click", () => page(-PAGE));
  $("episodes-next").addEventListener("click", () => page(PAGE));
  poll();
}

async function poll() {
  for (;;) {
    if (!document.hidden) await refreshEpisodes();
    await sleep(POLL_MS);
  }
}

function page(delta) {
  offset = Math.max(0, Math.min(offset + delta, Math.max(0, total - 1)));
  refreshEpisodes();
}

export function refreshEpisodes() {
  if (!loading) {
    loading = get(`api/episodes?offset=${offset}&limit=${PAGE}`)
      .then(renderEpisodes)
      .catch((err) => notify("error", `episodes: ${err.message}`))
      .finally(() => {
        loading = null;
      });
  }
  return loading;
}

function renderEpisodes(info) {
  total = info.total || 0;
  const totals = $("episodes-totals");
  totals.dataset.total = String(total);
  totals.dataset.bad = String(info.bad || 0);
  setText(
    "episodes-totals",
    info.rlds_dir
      ? `${total} episodes (${info.ok} valid, ${info.bad} bad) · ${info.steps} steps · ` +
          `${info.imagined} imagined · in ${info.rlds_dir}`
      : "no episode directory configured (start the server with --rlds-dir)",
  );
  const shown = (info.episodes || []).length;
  setText("episodes-page", total ? `${offset + 1}–${offset + shown} of ${total}` : "");
  $("episodes-prev").disabled = offset === 0;
  $("episodes-next").disabled = offset + shown >= total;
  $("episodes-quarantine").disabled = !info.rlds_dir;

  const rows = (info.episodes || []).map((e) =>
    h(
      "tr",
      { class: e.valid ? "ok" : "bad", "data-key": e.key, "data-valid": String(e.valid) },
      h("td", { title: e.unit || "" }, e.episode_id || e.key),
      h("td", {}, e.valid ? "✓" : "✗"),
      h("td", {}, String(e.steps ?? "")),
      h("td", {}, e.duration_s === null || e.duration_s === undefined ? "–" : `${fmtNum(e.duration_s)} s`),
      h("td", {}, (e.tags || []).join(", ")),
      h("td", {}, e.imagined ? "imagined" : ""),
      h("td", { class: "error-text" }, e.error ? [e.field ? h("strong", {}, `${e.field}: `) : null, e.error] : ""),
      h(
        "td",
        { class: "actions" },
        e.valid && (e.image_keys || []).length
          ? h(
              "button",
              { type: "button", class: "frames", "data-testid": "episode-frames", onclick: () => openEpisode(e.key) },
              "Frames",
            )
          : "",
      ),
    ),
  );
  fillTable($("episodes-table"), rows, "no episodes", 8);

  const quarantined = (info.quarantine || []).map((q) =>
    h(
      "tr",
      { "data-name": q.name },
      h("td", { title: q.path || "" }, q.name),
      h("td", { class: "error-text" }, q.reason || "(no reason recorded)"),
    ),
  );
  fillTable($("episodes-quarantined"), quarantined, "nothing quarantined", 2);
}

async function quarantineBad() {
  const out = $("episodes-result");
  try {
    const res = await post("api/episodes/quarantine", undefined, { auth: true });
    const moved = res.quarantined || [];
    showResult(
      out,
      moved.length ? "ok" : "info",
      moved.length
        ? `Moved ${moved.length} bad episode(s) to the quarantine: ${moved.map((m) => m.episode).join(", ")}`
        : "No bad episodes: nothing moved.",
    );
  } catch (err) {
    showResult(out, "error", `${err.status ? `${err.status}: ` : ""}${err.message}`);
  }
  refreshEpisodes();
}
