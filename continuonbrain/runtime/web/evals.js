// Closed-loop evaluations per model version: how each brain did in a simulator.
//
// The store keeps one record per evaluation (``<model_root>/evaluations.jsonl``, written by
// ``continuonbrain eval`` and the demo through BrainService.act); GET /api/models hands them
// out as {"evaluations": {version: [record, ...]}} (oldest first). Per version and env the
// newest record is shown; a chart per env puts the versions side by side, oldest to newest:
// the success rate (or the mean return, for an env without a notion of success) and the
// distance figure (final distance, or the mean tracking error), so a user sees whether the
// robot got better. Records of different envs are never drawn on one chart; the table names
// the episodes and seed of each figure, so figures from different seeds are not taken for
// the same test.

import { fill, fillTable, fmtNum, fmtTime, h } from "./dom.js";

const SUCCESS_COLOR = "#1e7b34";
const DISTANCE_COLOR = "#d9730d";
const charts = new Map(); // env -> {plot, box}

export const percent = (x) => (x === null || x === undefined || !Number.isFinite(x) ? "n/a" : `${fmtNum(100 * x, 3)}%`);

/** ``20261201T102811248079Z-1b00b9`` -> ``1b00b9`` (a chart's axis has no room for the rest). */
export function shortVersion(version) {
  const m = /^\d{8}T\d+Z-([0-9a-f]+)$/.exec(version || "");
  return m ? m[1] : String(version || "?").slice(-10);
}

/** The newest record of each env for one version: Map env -> record. */
function latestByEnv(records) {
  const out = new Map();
  for (const r of records || []) if (r && r.env) out.set(r.env, r);
  return out;
}

function distanceName(record) {
  return record.distance_metric === "tracking_error" ? "tracking error" : "final distance";
}

/** "reach2d: 86% success, final distance 0.031 (100 episodes, seed 7)" for a slot's view. */
export function slotEvaluation(info, version) {
  const records = latestByEnv((info.evaluations || {})[version]);
  if (!records.size) return h("p", { class: "muted eval-figures" }, "closed loop: not evaluated yet");
  return [...records.values()].map((r) =>
    h(
      "p",
      { class: "eval-figures", "data-eval-env": r.env },
      h("strong", {}, "closed loop: "),
      `${r.env} ${typeof r.success_rate === "number" ? `${percent(r.success_rate)} success, ` : ""}` +
        `${distanceName(r)} ${fmtNum(r.mean_final_distance)}, return ${fmtNum(r.mean_return)}` +
        ` (${r.episodes} episodes, seed ${r.seed})`,
    ),
  );
}

/** Every version with an evaluation, oldest first (the store's created time, else the first record's). */
function orderedVersions(info) {
  const evaluations = info.evaluations || {};
  const created = new Map();
  for (const m of [info.current, info.candidate, ...(info.history || [])])
    if (m && m.version && typeof m.created_unix === "number") created.set(m.version, m.created_unix);
  const when = (v) => {
    if (created.has(v)) return created.get(v);
    const t = Date.parse((evaluations[v][0] || {}).time || "");
    return Number.isFinite(t) ? t / 1000 : 0;
  };
  return Object.keys(evaluations)
    .filter((v) => (evaluations[v] || []).length)
    .sort((a, b) => when(a) - when(b) || (a < b ? -1 : 1));
}

function roleOf(info, version) {
  if (info.current && info.current.version === version) return "current";
  if (info.candidate && info.candidate.version === version) return "candidate";
  if ((info.history || []).some((m) => m.version === version)) return "history";
  return "not in the store";
}

/** The table (newest version first) and one chart per env (oldest to newest). */
export function renderEvaluations(info, table, chartBox) {
  const versions = orderedVersions(info);
  const evaluations = info.evaluations || {};
  const rows = [];
  const perEnv = new Map(); // env -> [{version, record}] oldest first
  for (const version of versions) {
    for (const [env, r] of latestByEnv(evaluations[version])) {
      if (!perEnv.has(env)) perEnv.set(env, []);
      perEnv.get(env).push({ version, record: r });
    }
  }
  for (const version of [...versions].reverse()) {
    for (const [env, r] of latestByEnv(evaluations[version])) {
      const expert = r.baselines && r.baselines.expert;
      const random = r.baselines && r.baselines.random;
      const runs = evaluations[version].filter((x) => x.env === env).length;
      rows.push(
        h(
          "tr",
          {
            "data-version": version,
            "data-env": env,
            "data-success": r.success_rate ?? "",
            "data-distance": r.mean_final_distance ?? "",
            "data-return": r.mean_return ?? "",
            "data-episodes": r.episodes,
            "data-seed": r.seed,
          },
          h(
            "td",
            {},
            h("code", { title: version }, shortVersion(version)),
            h("span", { class: "version-meta" }, roleOf(info, version)),
          ),
          h(
            "td",
            {},
            `${env} · ${r.episodes} ep · seed ${r.seed}`,
            h(
              "span",
              { class: "version-meta" },
              `${r.source || "eval"}, ${fmtTime(r.time)}${runs > 1 ? ` (newest of ${runs})` : ""}`,
            ),
          ),
          h(
            "td",
            {},
            percent(r.success_rate),
            expert && expert.success_rate !== null && expert.success_rate !== undefined
              ? h("span", { class: "version-meta" }, `expert ${percent(expert.success_rate)}`)
              : null,
          ),
          h(
            "td",
            { title: distanceName(r) },
            fmtNum(r.mean_final_distance),
            random && random.mean_final_distance !== null && random.mean_final_distance !== undefined
              ? h("span", { class: "version-meta" }, `random ${fmtNum(random.mean_final_distance)}`)
              : null,
          ),
          h("td", {}, fmtNum(r.mean_return)),
        ),
      );
    }
  }
  fillTable(
    table,
    rows,
    "no closed-loop evaluation yet: run `continuonbrain eval --env ENV --model-root DIR` (the demo does)",
    5,
  );
  renderCharts(perEnv, chartBox);
}

function renderCharts(perEnv, chartBox) {
  for (const [env, chart] of charts) {
    if (!perEnv.has(env)) {
      if (chart.plot) chart.plot.destroy();
      chart.box.remove();
      charts.delete(env);
    }
  }
  for (const [env, points] of perEnv) {
    const labels = points.map((p) => shortVersion(p.version));
    const hasSuccess = points.some((p) => typeof p.record.success_rate === "number");
    const left = points.map((p) =>
      hasSuccess
        ? typeof p.record.success_rate === "number"
          ? 100 * p.record.success_rate
          : null
        : (p.record.mean_return ?? null),
    );
    const right = points.map((p) => p.record.mean_final_distance ?? null);
    const leftName = hasSuccess ? "success %" : "mean return";
    const key = [env, leftName, ...labels].join("|");
    let chart = charts.get(env);
    if (chart && chart.key !== key) {
      if (chart.plot) chart.plot.destroy();
      chart.box.remove();
      charts.delete(env);
      chart = null;
    }
    if (!chart) chart = makeChart(env, labels, leftName, distanceName(points[0].record), chartBox, key);
    if (chart.plot) chart.plot.setData([points.map((_, i) => i), left, right]);
    Object.assign(chart.box.dataset, {
      points: String(points.length),
      versions: points.map((p) => p.version).join(","),
      left: left.map((v) => (v === null ? "" : String(v))).join(","),
    });
  }
}

function makeChart(env, labels, leftName, rightName, chartBox, key) {
  const plotBox = h("div", { class: "plot" });
  const box = h(
    "figure",
    { class: "chart eval-chart", "data-testid": `eval-chart-${env}`, "data-env": env },
    h(
      "figcaption",
      {},
      h("strong", {}, env),
      " by version, oldest → newest: ",
      h("span", { style: `color:${SUCCESS_COLOR}` }, `● ${leftName}`),
      " ",
      h("span", { style: `color:${DISTANCE_COLOR}` }, `■ ${rightName}`),
    ),
    plotBox,
  );
  chartBox.append(box);
  const chart = { box, plotBox, plot: null, key };
  if (window.uPlot) {
    const n = labels.length;
    chart.plot = new window.uPlot(
      {
        width: Math.max(220, (plotBox.clientWidth || chartBox.clientWidth || 320) - 4),
        height: 140,
        legend: { show: false },
        cursor: { drag: { x: false, y: false } },
        scales: {
          x: { time: false, range: [-0.5, Math.max(n - 0.5, 0.5)] },
          y: leftName === "success %" ? { range: [0, 100] } : {},
          d: { range: (u, min, max) => [0, Math.max(max * 1.15, 1e-3)] },
        },
        axes: [
          {
            size: 28,
            splits: () => labels.map((_, i) => i),
            values: (u, splits) => splits.map((i) => labels[i] ?? ""),
          },
          { size: 40, stroke: SUCCESS_COLOR },
          { scale: "d", side: 1, size: 44, stroke: DISTANCE_COLOR, grid: { show: false } },
        ],
        series: [
          { label: "version" },
          { label: leftName, stroke: SUCCESS_COLOR, width: 2, points: { show: true, size: 7 } },
          {
            label: rightName,
            scale: "d",
            stroke: DISTANCE_COLOR,
            width: 1.5,
            dash: [4, 3],
            points: { show: true, size: 6 },
          },
        ],
      },
      [[], [], []],
      plotBox,
    );
  } else {
    fill(plotBox, h("p", { class: "error" }, "chart library (vendor/uplot) did not load: the table has the figures"));
  }
  charts.set(env, chart);
  return chart;
}

window.addEventListener("resize", () => {
  for (const chart of charts.values()) {
    if (chart.plot) chart.plot.setSize({ width: Math.max(220, chart.plotBox.clientWidth - 4), height: 140 });
  }
});
