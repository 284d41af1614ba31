"""The Donkeycar part in a real ``donkeycar.vehicle.Vehicle`` loop: what it costs the drive loop.

    python bench/bench_donkeycar_part.py [--loops 2000] [--rate-hz 20] [--model-dir DIR]

A vehicle wired like Donkeycar's ``complete.py`` (a drive2d camera part at 160x120 -> the
``ContinuonPilot`` -> a part reading ``pilot/angle`` and ``pilot/throttle``) runs ``--loops``
loops; halfway, another brain is promoted into the store (as ``models promote`` does). Reports

* ``pilot.run`` latency per loop (p50 / p99 / max), with one torch thread as the part uses;
* the same from the promotion until the new version drives: the promotion (in a thread of
  its own, as another process would) copies the candidate, and the service's watcher thread
  verifies (sha256) and loads it while the loop keeps driving on the old brain, so these
  loops show what a promotion costs the car;
* loops from the promotion until the first frame driven by the new version.

The brain is the shipped config's model (``continuonbrain/configs/pi5-hope-v1.json``) for a
camera-only car, untrained unless ``--model-dir`` names a trained model directory: latency
does not depend on the weights' values. Prints a Markdown table and writes JSON to
``bench/results/bench_donkeycar_part.json``. Needs the ``donkey-test`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain.hope import HopeBrain, HopeConfig  # noqa: E402
from continuonbrain.integrations.donkeycar import ContinuonPilot  # noqa: E402
from continuonbrain.models.store import PromotionStore  # noqa: E402
from continuonbrain.sim.drive2d import Drive2DEnv  # noqa: E402

KEY = "cam/image_array"


def shipped_camera_config() -> HopeConfig:
    model = json.loads((REPO / "continuonbrain/configs/pi5-hope-v1.json").read_text())["model"]
    return HopeConfig(
        **{**model, "obs_dim": 0, "action_dim": 2, "image_keys": [KEY], "image_shapes": {KEY: [120, 160, 3]}}
    )


def write_brain(work: Path, seed: int, model_dir: Path | None) -> Path:
    if model_dir is not None:
        brain = HopeBrain.load(model_dir)
        if seed:  # another version: the same shapes, other weights
            with torch.no_grad():
                for p in brain.fast_loop.parameters():  # type: ignore[union-attr]
                    p.mul_(0.9)
    else:
        torch.manual_seed(seed)
        brain = HopeBrain.build(shipped_camera_config())
    brain.save(work)
    return work


def promote(models: Path, work: Path) -> str:
    store = PromotionStore(models)
    files = sorted(work.iterdir())
    components = [f.stem for f in files if f.suffix == ".safetensors"]
    version = store.write_slot("candidate", files, components=components, kind="hope-seed")["version"]
    store.promote({"passed": True, "reason": "bench"})
    return version


class Camera:
    def __init__(self) -> None:
        self.env = Drive2DEnv()
        self.obs, _ = self.env.reset(seed=0)

    def run(self, angle: float | None, throttle: float | None) -> np.ndarray:
        self.obs, _, terminated, truncated, _ = self.env.step(np.array([angle or 0.0, throttle or 0.0], np.float32))
        if terminated or truncated:
            self.obs, _ = self.env.reset()
        return self.obs[KEY]


class Timed:
    """The pilot, timed: the latency of every ``run`` and the version it acted with."""

    def __init__(self, pilot: ContinuonPilot):
        self.pilot, self.us, self.versions = pilot, [], []

    def run(self, frame):
        t0 = time.perf_counter_ns()
        out = self.pilot.run(frame)
        self.us.append((time.perf_counter_ns() - t0) / 1000.0)
        self.versions.append(self.pilot.model_version)
        return out

    def shutdown(self) -> None:
        self.pilot.shutdown()


class Promoter:
    """Starts ``action`` in its own thread at loop ``at``: a promotion comes from another
    process (a trainer, ``models promote``), never from inside the drive loop."""

    def __init__(self, at: int, action):
        self.at, self.action, self.count, self.thread = at, action, 0, None

    def run(self) -> None:
        self.count += 1
        if self.count == self.at:
            self.thread = threading.Thread(target=self.action)
            self.thread.start()


def stats(us: list[float]) -> dict[str, float]:
    a = np.asarray(us)
    return {
        "p50_ms": round(float(np.percentile(a, 50)) / 1e3, 3),
        "p99_ms": round(float(np.percentile(a, 99)) / 1e3, 3),
        "max_ms": round(float(a.max()) / 1e3, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loops", type=int, default=2000)
    ap.add_argument("--rate-hz", type=float, default=20.0)
    ap.add_argument("--model-dir", type=Path, default=None)
    args = ap.parse_args()
    limit = sys.getrecursionlimit()
    from donkeycar.vehicle import Vehicle

    sys.setrecursionlimit(limit)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = tmp_path / "models"
        first = promote(models, write_brain(tmp_path / "a", 0, args.model_dir))
        second_dir = write_brain(tmp_path / "b", 1, args.model_dir)
        pilot = ContinuonPilot(models)
        timed = Timed(pilot)
        swap_at = args.loops // 2
        promoted: dict[str, object] = {}

        def do_promote() -> None:
            t0 = time.perf_counter()
            promoted["version"] = promote(models, second_dir)
            promoted["promote_s"] = time.perf_counter() - t0

        car = Vehicle()
        car.add(Camera(), inputs=["pilot/angle", "pilot/throttle"], outputs=[KEY])
        car.add(timed, inputs=[KEY], outputs=["pilot/angle", "pilot/throttle"])
        promoter = Promoter(swap_at, do_promote)
        car.add(promoter)
        t0 = time.perf_counter()
        car.start(rate_hz=args.rate_hz, max_loop_count=args.loops)
        wall = time.perf_counter() - t0
        promoter.thread.join()  # type: ignore[union-attr]
        status = pilot.status()

    versions = timed.versions
    new_from = next(i for i, v in enumerate(versions) if v == promoted["version"])
    steady = timed.us[50:swap_at]  # after warm-up, before the promotion
    around = timed.us[swap_at : new_from + 1]
    result = {
        "command": " ".join(["python", *sys.argv]),
        "loops": args.loops,
        "rate_hz": args.rate_hz,
        "wall_s": round(wall, 2),
        "model": "trained: " + str(args.model_dir) if args.model_dir else "shipped config, untrained (160x120 camera)",
        "versions": [first, promoted["version"]],
        "run_steady": stats(steady),
        "run_during_swap": stats(around),
        "loops_until_new_version": new_from - swap_at + 1,
        "promote_call_s": round(float(promoted["promote_s"]), 3),
        "load_ms": status["service"]["load_ms"],
        "driven": status["driven"],
        "stopped": {k: v for k, v in status["stopped"].items() if v},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    print("| what | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
    for name in ("run_steady", "run_during_swap"):
        s = result[name]
        print(f"| `pilot.run` {name[4:].replace('_', ' ')} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} |")
    print(
        f"\nnew version drove {result['loops_until_new_version']} loop(s) after the promotion "
        f"(load {result['load_ms']} ms in the watcher); driven {result['driven']}/{args.loops}, "
        f"stopped {result['stopped'] or 'never'}; wall {result['wall_s']} s"
    )
    out = REPO / "bench" / "results" / "bench_donkeycar_part.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
