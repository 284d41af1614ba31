// The Robot Editor: wires the panels together. Plain ES modules, no framework, no build step:
// the page is served as-is from continuonbrain/runtime/web/ by the API (StaticFiles at /).
//
//   api.js       fetch + token + errors      status.js    GET /api/status every second
//   training.js  jobs + SSE loss charts      models.js    slots, promote, rollback, audit
//   sim.js       live reach2d via /api/infer episodes.js  RLDS listing + quarantine
//   car.js       live drive2d camera car     viewer.js    an image episode's frames, scrubbed
//   shadow.js    candidate in shadow mode    checks.js    a gate record's checks

import { clearToken, getToken, onTokenChange, setToken, setTokenPrompt } from "./api.js";
import { $, notify, setText } from "./dom.js";
import { chooseLiveSim, initCar } from "./car.js";
import { initEpisodes } from "./episodes.js";
import { initModels } from "./models.js";
import { initShadow } from "./shadow.js";
import { initSim } from "./sim.js";
import { onStatus, startStatus } from "./status.js";
import { initTraining } from "./training.js";
import { initViewer } from "./viewer.js";

/** Ask for the token in the page's dialog; resolves to the token, or null if cancelled. */
function promptToken(reason) {
  const dialog = $("token-dialog");
  const input = $("token-input");
  setText("token-why", reason);
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const token = input.value.trim();
        input.value = "";
        if (dialog.returnValue === "save" && token) {
          setToken(token);
          resolve(token);
        } else {
          resolve(null);
        }
      },
      { once: true },
    );
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
}

function showTokenState(hasToken) {
  const el = $("token-state");
  el.dataset.hasToken = String(hasToken);
  setText("token-state", hasToken ? "token set (this tab)" : "no token");
  $("token-forget").disabled = !hasToken;
}

function initToken() {
  setTokenPrompt(promptToken);
  onTokenChange(showTokenState);
  showTokenState(Boolean(getToken()));
  $("token-set").addEventListener("click", () => promptToken("Enter the API token."));
  $("token-forget").addEventListener("click", clearToken);
}

window.addEventListener("unhandledrejection", (ev) => {
  notify("error", `unexpected error: ${ev.reason && ev.reason.message ? ev.reason.message : ev.reason}`);
});

initToken();
initSim();
initCar();
onStatus(chooseLiveSim);
initModels();
initShadow();
initTraining();
initViewer();
initEpisodes();
startStatus();
document.body.dataset.ready = "true";
