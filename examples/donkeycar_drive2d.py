"""A Donkeycar vehicle driven by ContinuonPilot, on the simulated camera car instead of a real one.

    python examples/donkeycar_drive2d.py --model-root DIR [--loops 1000] [--rate-hz 20] [--seed 100]

What a car's ``manage.py`` does, with drive2d standing in for the camera and the motors: a
real ``donkeycar.vehicle.Vehicle`` (the ``donkey-test`` extra) runs a camera part (the drive2d
frame the car sees, 160x120, after stepping the car with the last ``pilot/angle`` and
``pilot/throttle``), the pilot added exactly as the README's three lines add it, and a part
that reports the laps. Promote another brain into ``DIR`` while it runs (``continuonbrain
models promote --model-root DIR``) and the next frames are driven by it.

``DIR`` is a model store whose ``current`` takes ``cam/image_array`` frames of 120x160x3:
see the README's "Donkeycar" section (``sim collect --env drive2d --format tub``, ``train``,
``models promote``). Prints one line per episode (lap progress, off-track steps, the version
that drove) and the pilot's status at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain.integrations.donkeycar import ContinuonPilot  # noqa: E402
from continuonbrain.sim.drive2d import IMAGE_KEY, Drive2DEnv  # noqa: E402


class SimCar:
    """Camera and motors in one part: steps drive2d with the pilot's last outputs and returns
    the frame; a finished episode (a lap, off the track, the step limit) is reported and a new
    track starts."""

    def __init__(self, seed: int, pilot: ContinuonPilot):
        self.env, self.seed, self.pilot = Drive2DEnv(), seed, pilot
        self.obs, self.info = self.env.reset(seed=seed)
        self.episodes: list[dict[str, Any]] = []
        self.steps = self.off_track = 0

    def run(self, angle: float | None, throttle: float | None) -> np.ndarray:
        if self.steps:  # the first loop shows the start frame
            action = np.array([angle or 0.0, throttle or 0.0], np.float32)
            self.obs, _, terminated, truncated, self.info = self.env.step(action)
            self.off_track += bool(self.info["off_track"])
            if terminated or truncated:
                self._report()
                self.seed += 1
                self.obs, self.info = self.env.reset(seed=self.seed)
                self.steps = self.off_track = 0
        self.steps += 1
        return self.obs[IMAGE_KEY]

    def _report(self) -> None:
        row = {
            "seed": self.seed,
            "progress": round(float(self.info["progress"]), 3),
            "lap": bool(self.info.get("success")),
            "steps": self.steps,
            "off_track_steps": self.off_track,
            "version": self.pilot.model_version,
        }
        self.episodes.append(row)
        print(json.dumps(row), flush=True)

    def shutdown(self) -> None:
        if self.steps > 1:
            self._report()  # the episode the loop ended in


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-root", type=Path, required=True)
    ap.add_argument("--loops", type=int, default=1000)
    ap.add_argument("--rate-hz", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=100, help="first track (unseen by `sim collect --seed 0`)")
    args = ap.parse_args(argv)
    limit = sys.getrecursionlimit()
    from donkeycar.vehicle import Vehicle  # the real one: pip install -e ".[donkey-test]"

    sys.setrecursionlimit(limit)  # donkeycar raises it to 100,000 for the whole process

    V = Vehicle()
    pilot = ContinuonPilot(args.model_root)
    car = SimCar(args.seed, pilot)
    V.add(car, inputs=["pilot/angle", "pilot/throttle"], outputs=["cam/image_array"])
    # The README's lines, as in a car's manage.py:
    V.add(pilot, inputs=["cam/image_array"], outputs=["pilot/angle", "pilot/throttle"], run_condition="run_pilot")
    V.mem["run_pilot"] = True
    V.start(rate_hz=args.rate_hz, max_loop_count=args.loops)
    status = pilot.status()
    summary = {
        "episodes": len(car.episodes),
        "mean_progress": round(float(np.mean([e["progress"] for e in car.episodes])), 3) if car.episodes else None,
        "laps": sum(e["lap"] for e in car.episodes),
        "driven": status["driven"],
        "stopped": {k: v for k, v in status["stopped"].items() if v},
        "versions": sorted({e["version"] for e in car.episodes if e["version"]}),
    }
    print(json.dumps(summary))
    return 0 if status["driven"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
