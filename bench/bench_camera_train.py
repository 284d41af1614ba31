"""The camera car's budget: the shipped default training on a 20,000-frame 160x120 drive2d tub.

    python bench/bench_camera_train.py [--frames 20000] [--config continuonbrain/configs/pi5-hope-v1.json]
        [--eval-episodes 20] [--set model.fast.use_context=true ...] [--out bench/results/bench_camera_train.json]

Records expert drive2d episodes (DART noise 0.1) as a Donkeycar tub until it holds at least
``--frames`` frames (cached between runs), runs ``continuonbrain train`` with the given config
(default: the shipped one, unedited) as a child process, and reports the whole run's wall time
and peak RSS (the child's ``ru_maxrss``; this parent never imports torch) and CPU time, and per component
its time including set-up (from the previous component's end: loading the frozen
dependencies, tokenizing or featurising the frames once) as well as its training time alone,
steps and peak RSS. Then it drives the trained candidate closed loop on ``--eval-episodes``
unseen tracks (the seeds of ``continuonbrain eval --env drive2d --seed 1000``) and reports
mean lap progress, lap completion and off-track steps beside the expert's on the same tracks.

Budgets (issue 14): the whole training at most 10 minutes and 2 GB peak RSS on this 2-core
machine. ``--set`` options go to ``continuonbrain train`` (the Mid-context ablation runs this
with ``--set model.fast.use_context=true``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "continuonbrain"]


def record_tub(frames: int, data: Path, seed: int = 0) -> tuple[Path, int, int]:
    """A drive2d expert tub of at least ``frames`` frames (cached): (path, episodes, frames)."""
    tub = data / f"drive2d-tub-{frames}"
    done = tub / ".complete"
    if done.exists():
        info = json.loads(done.read_text())
        return tub, info["episodes"], info["steps"]
    per_episode = 200  # an expert lap is ~210 frames at 20 Hz
    n = max(1, -(-frames // per_episode))
    while True:
        if tub.exists():
            subprocess.run(["rm", "-rf", str(tub)], check=True)
        out = subprocess.run(
            [*CLI, "sim", "collect", "--env", "drive2d", "--episodes", str(n), "--out", str(tub),
             "--format", "tub", "--seed", str(seed), "--dart-sigma", "0.1", "--json"],
            check=True, cwd=REPO, capture_output=True, text=True,
        )  # fmt: skip
        info = json.loads(out.stdout)
        if info["steps"] >= frames:
            done.write_text(json.dumps({"episodes": info["episodes"], "steps": info["steps"]}))
            return tub, info["episodes"], info["steps"]
        n = int(n * frames / max(info["steps"], 1)) + 1


def per_component_times(run_dir: Path, started: float) -> dict[str, float]:
    """Seconds from the previous component's end (or the run's start) to each component's end."""
    out: dict[str, float] = {}
    last = started
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "component_done":
            out[rec["component"]] = round(rec["time"] - last, 1)
            last = rec["time"]
    return out


DRIVE_CHILD = """
import json, sys
import numpy as np, torch
from continuonbrain.hope import HopeBrain
from continuonbrain.sim.collect import episode_seed, make_env, resolve_policy
torch.set_num_threads(1)
models, episodes, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
brain = HopeBrain.load(models)
env = make_env("drive2d")
rows = {"brain": [], "expert": []}
for i in range(episodes):
    s = episode_seed(seed, i)
    for who in rows:
        obs, info = env.reset(seed=s)
        pol = brain if who == "brain" else resolve_policy("expert", env, s)[0]
        pol.reset()
        off = steps = 0
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(pol.act(obs))
            steps += 1
            off += bool(info["off_track"])
            done = term or trunc
        rows[who].append({"progress": min(1.0, float(info["progress"])), "lap": bool(info.get("success", False)),
                          "off_track_steps": off, "steps": steps, "tracking_error": float(info["tracking_error"])})
print(json.dumps(rows))
"""


def drive(models: Path, episodes: int, seed: int = 1000) -> dict[str, Any]:
    """Closed loop on ``episodes`` unseen tracks (the seeds ``continuonbrain eval --seed 1000``
    uses): the candidate and the expert, mean lap progress, lap completion, off-track share of
    steps, mean tracking error. Run in a child so this process stays torch-free."""
    out = subprocess.run(
        [sys.executable, "-c", DRIVE_CHILD, str(models / "candidate"), str(episodes), str(seed)],
        check=True, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)

    def figures(eps: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(eps)
        return {
            "mean_progress": round(sum(e["progress"] for e in eps) / n, 3),
            "lap_completion": round(sum(e["lap"] for e in eps) / n, 3),
            "off_track_step_share": round(sum(e["off_track_steps"] for e in eps) / sum(e["steps"] for e in eps), 4),
            "episodes_ever_off_track": sum(e["off_track_steps"] > 0 for e in eps),
            "mean_tracking_error_m": round(sum(e["tracking_error"] for e in eps) / n, 4),
        }

    brain, expert = figures(rows["brain"]), figures(rows["expert"])
    return {
        "brain": brain,
        "expert": expert,
        "progress_vs_expert": round(brain["mean_progress"] / expert["mean_progress"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--config", type=Path, default=REPO / "continuonbrain" / "configs" / "pi5-hope-v1.json")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-camera")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to train --set")
    parser.add_argument("--tag", default="default", help="names the run dir (several configs side by side)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_camera_train.json")
    args = parser.parse_args()

    tub, n_episodes, n_frames = record_tub(args.frames, args.data)
    run_dir, models = args.data / f"run-{args.tag}", args.data / f"models-{args.tag}"
    sets = [x for s in args.set for x in ("--set", s)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(
        [*CLI, "train", "--config", str(args.config), "--rlds-dir", str(tub), "--run-dir", str(run_dir),
         "--model-root", str(models), "--json", *sets],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_mb = after.ru_maxrss / 1024
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary = json.loads(proc.stdout)
    with_setup = per_component_times(run_dir, t0)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
        "tub": {"episodes": n_episodes, "frames": n_frames, "image": [120, 160, 3]},
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "set": args.set,
        "wall_time_s": round(wall, 1),
        # CPU seconds of the training process: on a shared machine the load-independent figure
        # (on an idle 2-core machine the wall time is at least cpu_time_s / 2)
        "cpu_time_s": round(cpu_s, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "budget": {"wall_time_s": 600, "peak_rss_mb": 2048},
        "within_budget": wall <= 600 and peak_mb <= 2048,
        "components": {
            name: {
                "steps": c["steps"],
                "time_with_setup_s": with_setup.get(name),
                "train_time_s": c["wall_time_s"],
                "peak_rss_mb": c["peak_rss_mb"],
                "initial_loss": round(c.get("initial_loss", float("nan")), 4),
                "final_loss": round(c.get("final_loss", float("nan")), 4),
                "stop_reason": c["stop_reason"],
            }
            for name, c in summary["components"].items()
        },
    }
    if args.eval_episodes:
        results["drive2d_unseen_tracks"] = {
            "episodes": args.eval_episodes,
            "seed": 1000,
            **drive(models, args.eval_episodes),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
