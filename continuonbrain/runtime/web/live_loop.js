// The run loop both live panels share: the arm (sim.js) and the car (car.js).
//
// Written once because its rules are the same for both and must stay the same: one tick in
// flight at a time (the next starts only when the last one finished, never queued), at most
// one tick per ``periodMs``, a 503 (no model loaded) retried every second with a banner, a 404
// (the server forgot the sim) answered with a new episode, anything else stops the run.
//
// ``live`` is the panel's own state object: {running, generation, inflight, state}. A pause or
// reset bumps ``live.generation``; a loop of an older generation then stops at its next turn.
// ``panel`` says what differs between the panels:
//   what        the name in messages ("sim", "car")
//   periodMs    the control period
//   setRunning  (running) => void: the panel's Run/Pause button and state readout
//   newEpisode  async (gen) => void: POST /api/sim/reset and take the answer
//   tick        async (gen) => void: one control tick
//   noModel     (message) => void: show that no model is loaded
//   failed      (err) => void: pause and say why

import { ApiError } from "./api.js";
import { notify, sleep } from "./dom.js";

const NO_MODEL_RETRY_MS = 1000;

/** Resolves when the tick in flight (if any) has finished, however it ended. */
export const settled = (live) => live.inflight.catch(() => {});

/** Start running (a new episode first if there is none); a no-op when already running. */
export async function startLoop(live, panel) {
  if (live.running) return;
  panel.setRunning(true);
  const gen = ++live.generation;
  await settled(live); // a tick of the previous run may still be on the wire: never two at once
  if (gen !== live.generation) return;
  if (!live.state) {
    try {
      await panel.newEpisode(gen);
    } catch (err) {
      panel.failed(err);
      return;
    }
  }
  loop(live, panel, gen);
}

async function loop(live, panel, gen) {
  while (live.running && gen === live.generation) {
    const started = performance.now();
    let wait = panel.periodMs;
    live.inflight = panel.tick(gen);
    try {
      await live.inflight;
    } catch (err) {
      if (err instanceof ApiError && err.status === 503) {
        panel.noModel(err.message);
        wait = NO_MODEL_RETRY_MS;
      } else if (err instanceof ApiError && err.status === 404) {
        notify("info", `the live ${panel.what} expired on the server; starting a new episode`);
        live.state = null;
        try {
          await panel.newEpisode(gen);
        } catch (err2) {
          panel.failed(err2);
          return;
        }
      } else {
        panel.failed(err);
        return;
      }
    }
    await sleep(Math.max(0, wait - (performance.now() - started)));
  }
}
