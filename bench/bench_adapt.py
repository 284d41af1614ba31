"""On-robot LoRA adaptation: wall time, peak RSS, and new episodes on disk -> promoted adapter.

    python bench/bench_adapt.py [--repeat 3] [--new-episodes 40] [--gain 0.5] [--config FILE]

Once (cached under ``--data``): ``--base-episodes`` expert episodes of ``reach2d`` and a HOPE
seed trained on them with the shipped ``pi5-hope-v1`` config (``--seed-steps`` per component)
and promoted. Then, ``--repeat`` times, on a fresh copy of that model store: new episodes of a
shifted task (``reach2d`` with actuator gain ``--gain``) are written, and the clock starts
when they are on disk; ``continuonbrain adapt --config <the adaptation config>`` runs as a child
process (the shipped config, pointed at the bench dirs and reach2d's action names) and the
clock stops when it exits with the adapter promoted. Reported per run: that latency, the
child's wall time and peak RSS (its own ``ru_maxrss`` from ``wait4``; this parent never imports
torch), and the trainer's own figures (training time, steps, held-out action delta of the
current model and of the candidate). Goals on this 2-core machine: under 60 s and under 1 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ACTION_KEYS = ["dq1_cmd", "dq2_cmd"]
GOAL_S, GOAL_MB = 60.0, 1024.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "continuonbrain", *args]


def ensure_seed(data: Path, episodes: int, steps: int) -> Path:
    """A promoted seed trained with the shipped HOPE config (cached between runs)."""
    from continuonbrain.sim.collect import collect_to_dir

    base = data / f"reach2d-{episodes}"
    if not (base / ".complete").exists():
        shutil.rmtree(base, ignore_errors=True)
        collect_to_dir("reach2d", episodes, base, seed=0, dart_sigma=0.1)
        (base / ".complete").write_text("ok")
    models = data / f"seed-{episodes}-{steps}"
    if not (models / "current" / "manifest.json").exists():
        shutil.rmtree(models, ignore_errors=True)
        t0 = time.perf_counter()
        run = [
            "train", "--config", str(REPO / "continuonbrain" / "configs" / "pi5-hope-v1.json"),
            "--rlds-dir", str(base), "--model-root", str(models), "--run-dir", str(data / "seed-run"),
            "--max-steps", str(steps), "--json",
        ]  # fmt: skip
        subprocess.run(cli(*run), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        promote = ["models", "promote", "--model-root", str(models), "--rlds-dir", str(base), "--json"]
        subprocess.run(cli(*promote), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        print(f"seed trained and promoted in {time.perf_counter() - t0:.1f} s -> {models}", file=sys.stderr)
    return models


def run_child(argv: list[str], stdout: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MB) of one child, measured with ``wait4`` so that only
    this child's ``ru_maxrss`` counts."""
    t0 = time.perf_counter()
    with stdout.open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.stderr is not None:
        err = proc.stderr.read().decode()
        if proc.returncode not in (0, 1) and err:
            print(err, file=sys.stderr)
        proc.stderr.close()
    return proc.returncode, wall, usage.ru_maxrss / 1024


def one_run(i: int, args: argparse.Namespace, seed_models: Path, work: Path) -> dict[str, Any]:
    from continuonbrain.sim.collect import collect_to_dir

    root = work / f"run{i}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(seed_models, root / "models", symlinks=True)
    collect_to_dir("reach2d", args.new_episodes, root / "episodes", seed=7000 + i, env_kwargs={"gain": args.gain})
    on_disk = time.perf_counter()  # the new episodes are written: the clock starts
    adapt = [
        "adapt", "--config", str(args.config), "--rlds-dir", str(root / "episodes"),
        "--model-root", str(root / "models"), "--set", f"log_dir={root / 'logs'}",
        "--set", f"action_keys={json.dumps(ACTION_KEYS)}",
        "--set", "per_key_bounds=" + json.dumps({k: [-1.0, 1.0] for k in ACTION_KEYS}), "--json",
    ]  # fmt: skip
    code, wall, peak_mb = run_child(cli(*adapt), root / "result.json")
    latency = time.perf_counter() - on_disk
    result = json.loads((root / "result.json").read_text())
    current = json.loads((root / "models" / "current" / "manifest.json").read_text())["version"]
    promoted = result["status"] == "promoted" and current == result["candidate_version"]
    return {
        "exit_code": code,
        "status": result["status"],
        "promoted": promoted,
        "reason": result["reason"],
        "episodes_to_promoted_s": round(latency, 2),
        "child_wall_s": round(wall, 2),
        "child_peak_rss_mb": round(peak_mb, 1),
        "trainer_wall_s": result["wall_time_s"],
        "train_s": result["train_time_s"],
        "steps": result["steps"],
        "stop_reason": result["stop_reason"],
        "loss": [result["initial_loss"], result["final_loss"]],
        "avg_action_delta": {
            "current": result["before_avg_action_delta"],
            "candidate": result["after_avg_action_delta"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base-episodes", type=int, default=200)
    parser.add_argument("--seed-steps", type=int, default=100)
    parser.add_argument("--new-episodes", type=int, default=40)
    parser.add_argument("--gain", type=float, default=0.5)
    parser.add_argument("--config", type=Path, default=REPO / "continuonbrain" / "configs" / "pi5-donkey.json")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-adapt")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_adapt.json")
    args = parser.parse_args()

    args.data.mkdir(parents=True, exist_ok=True)
    seed_models = ensure_seed(args.data, args.base_episodes, args.seed_steps)
    runs = []
    for i in range(args.repeat):
        runs.append(one_run(i, args, seed_models, args.data / "runs"))
        print(json.dumps(runs[-1]), file=sys.stderr)
    latency = [r["episodes_to_promoted_s"] for r in runs]
    peak = [r["child_peak_rss_mb"] for r in runs]
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "config": str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config),
        "seed": {
            "config": "continuonbrain/configs/pi5-hope-v1.json",
            "episodes": args.base_episodes,
            "max_steps": args.seed_steps,
        },
        "new_episodes": args.new_episodes,
        "task": f"reach2d gain={args.gain}",
        "episodes_to_promoted_s": {"median": statistics.median(latency), "max": max(latency)},
        "child_peak_rss_mb": {"median": statistics.median(peak), "max": max(peak)},
        "all_promoted": all(r["promoted"] for r in runs),
        "goals": {
            "under_60_s": max(latency) < GOAL_S,
            "under_1_gb": max(peak) < GOAL_MB,
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
