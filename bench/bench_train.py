"""HOPE sequential training: steps/s per component, total wall time and peak RSS.

    python bench/bench_train.py [--episodes 200] [--config continuonbrain/configs/pi5-hope-v1.json]

Records ``--episodes`` expert episodes of ``reach2d`` (cached), then runs
``continuonbrain train`` with the given config (default: the shipped Pi 5 config, all three
components with their default budgets) as a child process, and reports per component the
steps/s at its batch size, wall time, loss from/to, and the whole run's wall time and peak
RSS (the child's ``ru_maxrss``; this parent stays free of torch so the figure is the
trainer's own). Goals on this 2-core machine: whole run <= 3 minutes, peak RSS <= 1 GB.
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

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--config", type=Path, default=REPO / "continuonbrain" / "configs" / "pi5-hope-v1.json")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-train")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_train.json")
    args = parser.parse_args()

    cli = [sys.executable, "-m", "continuonbrain"]
    episodes = args.data / f"reach2d-{args.episodes}"
    if not (episodes / ".complete").exists():
        subprocess.run([*cli, "sim", "collect", "--env", "reach2d", "--episodes", str(args.episodes),
                        "--out", str(episodes), "--dart-sigma", "0.1", "--json"], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        (episodes / ".complete").write_text("ok")
    run_dir, models = args.data / "run", args.data / "models"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cli, "train", "--config", str(args.config), "--rlds-dir", str(episodes), "--run-dir", str(run_dir),
         "--model-root", str(models), "--json"],
        check=True, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads(proc.stdout)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "episodes": args.episodes,
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "wall_time_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "components": {
            name: {
                "steps": c["steps"],
                "batch_size": json.loads(args.config.read_text())["components"][name]["batch_size"],
                "steps_per_s": round(c["steps"] / c["wall_time_s"], 1),
                "wall_time_s": c["wall_time_s"],
                "initial_loss": round(c["initial_loss"], 4),
                "final_loss": round(c["final_loss"], 4),
                "stop_reason": c["stop_reason"],
            }
            for name, c in summary["components"].items()
        },
        "all_halved": summary["all_halved"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
