// A gate record's checks, as a list: each check's name, a pass/fail mark and its figures.
//
// Gate records (manifests' "gate", audit lines, promote answers) carry "checks": one entry per
// check the gate ran (held_out, ceiling, bounds, sim_twin, forgetting, shadow, ...), each a dict
// of figures with "passed". The list is rendered generically, key by key, so a check the gate
// learns later shows without a page change; a few figures get a friendlier label.

import { fmtNum, h } from "./dom.js";

/** Names a person reads instead of the record's keys (anything else is shown as written). */
const LABELS = {
  held_out: "held-out action distance",
  ceiling: "distance ceiling",
  bounds: "action bounds",
  sim_twin: "closed loop in the sim twin",
  forgetting: "forgetting (original task)",
  shadow: "shadow on live traffic",
  paired_mean_diff: "paired mean diff",
};

/** Items of a list figure shown before "… N more". */
const MAX_LIST = 4;

function fmtValue(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return fmtNum(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) {
    // e.g. the held-out episode ids: the first few say what they are, the count says the rest
    const shown = value.slice(0, MAX_LIST).map(fmtValue).join(", ");
    return `[${shown}${value.length > MAX_LIST ? `, … ${value.length - MAX_LIST} more` : ""}]`;
  }
  if (typeof value === "object") {
    return `{${Object.entries(value)
      .map(([k, v]) => `${k}: ${fmtValue(v)}`)
      .join(", ")}}`;
  }
  return String(value);
}

const mark = (passed) => (passed === true ? "✓" : passed === false ? "✗" : "–");

/** ``<ul class="checks">`` for ``gate.checks``; null when the record has none. */
export function checksList(gate) {
  const checks = gate && gate.checks;
  if (!checks || typeof checks !== "object" || !Object.keys(checks).length) return null;
  const items = Object.entries(checks).map(([name, check]) => {
    const passed = check && typeof check === "object" ? check.passed : typeof check === "boolean" ? check : null;
    const figures =
      check && typeof check === "object"
        ? Object.entries(check)
            .filter(([k]) => k !== "passed")
            .map(([k, v]) => `${LABELS[k] || k} ${fmtValue(v)}`)
            .join(" · ")
        : fmtValue(check);
    return h(
      "li",
      {
        "data-check": name,
        "data-passed": passed === true || passed === false ? String(passed) : "unknown",
        title: passed === true ? "passed" : passed === false ? "failed" : "not decided",
      },
      h("span", { class: "check-mark" }, mark(passed)),
      h("strong", {}, LABELS[name] || name),
      figures ? h("span", { class: "check-values" }, `: ${figures}`) : null,
    );
  });
  return h("ul", { class: "checks", "data-testid": "gate-checks" }, items);
}
