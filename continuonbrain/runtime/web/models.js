// Models panel: the store's slots with their metrics, promotion (showing the gate's verdict),
// rollback per history version, and the audit log. Refreshed when the status poll shows the
// slots changed, and after every action taken here.
//
// Brains are compared by behaviour, not only by training losses: every closed-loop evaluation
// recorded in the store (``continuonbrain eval``, the demo; GET /api/models "evaluations") is
// shown per version, with a small chart across versions per env, so a user sees whether the
// robot got better. Figures of different envs are never mixed in one chart.
//
// Every gate record (a slot's manifest, a history version, an audit line, a promotion's answer)
// shows its checks with their figures and a pass/fail mark (checks.js).

import { get, post } from "./api.js";
import { checksList } from "./checks.js";
import { $, fill, fillTable, fmtNum, fmtTime, h, jsonDetails, notify, showResult } from "./dom.js";
import { renderEvaluations, slotEvaluation } from "./evals.js";
import { onStatus, refreshStatusNow } from "./status.js";

// A slow refresh on top of the change-driven ones: a decision made by another process (the
// CLI's ``models promote`` rejecting a candidate) changes the audit log but not the slots.
const REFRESH_MS = 15000;
let signature = null;
let loading = null;

export function initModels() {
  $("models-promote").addEventListener("click", promote);
  setInterval(() => document.hidden || refreshModels(), REFRESH_MS);
  onStatus((status) => {
    const slots = status.slots || {};
    const sig = [
      status.model_version,
      slots.current && slots.current.version,
      slots.candidate && slots.candidate.version,
      ...(slots.history || []).map((m) => m && m.version),
    ].join("|");
    if (sig !== signature) {
      signature = sig;
      refreshModels();
    }
  });
}

export function refreshModels() {
  if (!loading) {
    loading = get("api/models?audit=50")
      .then(renderModels)
      .catch((err) => notify("error", `models: ${err.message}`))
      .finally(() => {
        loading = null;
      });
  }
  return loading;
}

/** The few numbers of a manifest's metrics worth a glance: steps and stop reason per component. */
function metricsLine(metrics) {
  if (!metrics || typeof metrics !== "object") return "";
  const parts = [];
  for (const [name, m] of Object.entries(metrics)) {
    if (m && typeof m === "object" && "steps" in m)
      parts.push(`${name}: ${m.steps} steps${m.stop_reason ? ` (${m.stop_reason})` : ""}`);
    else if (typeof m === "number") parts.push(`${name}: ${fmtNum(m)}`);
  }
  return parts.join(" · ");
}

function gateLine(gate) {
  if (!gate) return "not gated yet";
  return `${gate.passed ? "passed" : "rejected"}${gate.reason ? `: ${gate.reason}` : ""}`;
}

function slotView(manifest, slot, info) {
  if (!manifest) return h("p", { class: "muted" }, slot === "candidate" ? "no candidate waiting" : "no current model");
  if (manifest.broken)
    return h(
      "div",
      { class: "slot broken", "data-version": manifest.version || "" },
      h("p", { class: "error", "data-testid": `${slot}-broken` }, `damaged: ${manifest.reason}`),
    );
  return h(
    "div",
    { class: "slot", "data-version": manifest.version },
    h("p", {}, h("code", { "data-testid": `${slot}-version` }, manifest.version), ` · ${manifest.kind || "?"}`),
    h(
      "p",
      { class: "muted" },
      `created ${fmtTime(manifest.created)}`,
      manifest.promoted ? ` · promoted ${fmtTime(manifest.promoted)}` : "",
      manifest.parent ? ` · parent ${manifest.parent}` : "",
    ),
    h("p", {}, `components: ${(manifest.components || []).join(", ") || "–"}`),
    h("p", {}, `gate: ${gateLine(manifest.gate)}`),
    checksList(manifest.gate),
    slotEvaluation(info, manifest.version),
    metricsLine(manifest.metrics) ? h("p", { class: "muted" }, metricsLine(manifest.metrics)) : null,
    jsonDetails("metrics", manifest.metrics),
  );
}

function renderModels(info) {
  const current = $("models-current");
  fill(current, slotView(info.current, "current", info));
  if (info.serving && info.current && info.serving !== info.current.version) {
    current.append(
      h("p", { class: "error" }, `serving ${info.serving}, not the store's current version (refused: see Status)`),
    );
  }
  fill($("models-candidate"), slotView(info.candidate, "candidate", info));
  $("models-promote").disabled = !info.candidate;

  const history = (info.history || []).map((m) =>
    m.broken
      ? h(
          "tr",
          { "data-version": m.version, class: "bad" },
          h("td", {}, h("code", {}, m.version)),
          h("td", { colspan: "2", class: "error" }, `damaged: ${m.reason}`),
        )
      : historyRow(m, info),
  );
  fillTable($("models-history"), history, "no earlier versions", 3);
  renderEvaluations(info, $("models-evals"), $("models-eval-charts"));
  renderAudit(info);
}

function historyRow(m, info) {
  return h(
    "tr",
    { "data-version": m.version },
    h(
      "td",
      {},
      h("code", {}, m.version),
      h("span", { class: "version-meta" }, `${m.kind || "?"} · ${fmtTime(m.created)}`),
    ),
    h(
      "td",
      {},
      slotEvaluation(info, m.version),
      h("span", { class: "version-meta" }, metricsLine(m.metrics) || "–"),
      checksList(m.gate),
    ),
    h(
      "td",
      { class: "actions" },
      h(
        "button",
        {
          type: "button",
          class: "rollback",
          "data-testid": `rollback-${m.version}`,
          onclick: () => rollback(m.version),
        },
        "Roll back to this",
      ),
    ),
  );
}

function renderAudit(info) {
  const audit = (info.audit || [])
    .slice()
    .reverse()
    .map((a) =>
      h(
        "tr",
        { class: `decision-${a.decision}` },
        h("td", {}, fmtTime(a.time)),
        h("td", {}, a.decision || ""),
        h("td", {}, h("code", {}, a.version || "")),
        h("td", {}, a.reason || (a.previous ? `replaced ${a.previous}` : ""), checksList(a.checks ? a : a.gate)),
      ),
    );
  fillTable($("models-audit"), audit, "no decisions yet", 4);
}

async function promote() {
  const out = $("promote-result");
  showResult(out, "info", "gating the candidate (shadow evaluation)…");
  try {
    const res = await post("api/models/promote", undefined, { auth: true });
    const gate = res.gate || {};
    const numbers = (side) =>
      gate[side]
        ? `${side}: avg action delta ${fmtNum(gate[side].avg_action_delta)}, ${gate[side].violations} violation(s)`
        : null;
    const details = [numbers("candidate"), numbers("current")].filter(Boolean).join(" · ");
    if (res.promoted) {
      showResult(
        out,
        "ok",
        h("strong", {}, "Promoted "),
        h("code", {}, res.model_version),
        `. ${details}`,
        checksList(gate),
      );
    } else {
      showResult(
        out,
        "error",
        h("strong", {}, "Rejected: "),
        res.reason || "the gate said no",
        `. ${details}`,
        checksList(gate),
      );
    }
    out.dataset.promoted = String(!!res.promoted);
  } catch (err) {
    showResult(out, "error", `${err.status ? `${err.status}: ` : ""}${err.message}`);
  }
  refreshStatusNow();
  refreshModels();
}

async function rollback(version) {
  if (!window.confirm(`Serve ${version} again? The current version moves to history.`)) return;
  const out = $("promote-result");
  try {
    const res = await post("api/models/rollback", { version }, { auth: true });
    showResult(out, "ok", "Rolled back: now serving ", h("code", {}, res.model_version || version));
  } catch (err) {
    showResult(out, "error", `${err.status ? `${err.status}: ` : ""}${err.message}`);
  }
  refreshStatusNow();
  refreshModels();
}
