"""drive2d benchmark: camera frames per second, reset time, collection speed and the expert's laps.

    taskset -c 0 python bench/bench_drive2d.py [--seeds 100] [--out bench/results/bench_drive2d.json]

Measures, on one core (``taskset -c 0``; the script also pins BLAS/OpenMP to one thread):

* rendered frames/s of the camera alone (``render_frame``) at 160x120 (goal: >= 1,000) and
  at 80x60 and 320x240, and of whole ``env.step`` calls (physics, track projection, frame)
  driven by the scripted expert, resets excluded;
* ``reset`` time (a new track: shape, painted ground map, backdrop);
* ``collect_episodes`` steps/s with the JPEG encoding of every frame;
* the scripted expert over ``--seeds`` seeded episodes (``episode_seed(0, i)``): lap success
  rate, mean lap length, mean |cross-track error|; the same with DART noise (sigma 0.3) on the
  executed action, and the random policy for reference.

Prints a Markdown table and writes JSON to ``--out``. Not a test: numbers depend on load.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain.sim import Drive2DEnv, collect_episodes, make_expert  # noqa: E402
from continuonbrain.sim.collect import episode_seed, rollout  # noqa: E402


def best_rate(fn, n: int, repeats: int = 5) -> float:
    """Calls per second of ``fn`` over ``n`` calls, the best of ``repeats`` runs (least disturbed)."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def render_fps(height: int, width: int, n: int) -> float:
    env = Drive2DEnv(image_height=height, image_width=width)
    env.reset(seed=0)
    for _ in range(20):
        env.step([0.1, 0.5])
    return best_rate(env.render_frame, n)


def step_fps(n_steps: int) -> float:
    """Whole ``env.step`` calls driven by the expert, resets excluded (the car laps on: the
    termination flag is ignored)."""
    env = Drive2DEnv(max_steps=10 * n_steps)
    env.reset(seed=1)
    expert = make_expert(env)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        env.step(expert.act(None))
    return n_steps / (time.perf_counter() - t0)


def reset_ms(n: int) -> float:
    env = Drive2DEnv()
    env.reset(seed=0)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        env.reset(seed=i + 1)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def collect_rate(episodes: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    steps = sum(len(ep) for ep in collect_episodes("drive2d", episodes, seed=0, dart_sigma=0.3))
    dt = time.perf_counter() - t0
    return steps / dt, dt / episodes


def policy_stats(policy: str, seeds: int, dart_sigma: float = 0.0) -> dict:
    env = Drive2DEnv()
    rows = [rollout(env, policy, episode_seed(0, i), dart_sigma=dart_sigma) for i in range(seeds)]
    laps = [r for r in rows if r["success"]]
    return {
        "policy": policy,
        "dart_sigma": dart_sigma,
        "episodes": seeds,
        "success_rate": len(laps) / seeds,
        "mean_lap_steps": float(np.mean([r["length"] for r in laps])) if laps else None,
        "mean_length": float(np.mean([r["length"] for r in rows])),
        "mean_return": float(np.mean([r["return"] for r in rows])),
        "mean_abs_cte": float(np.mean([r["tracking_error"] for r in rows])),
        "failed_seeds": [episode_seed(0, i) for i, r in enumerate(rows) if not r["success"]],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100, help="seeded episodes for the expert figures")
    ap.add_argument("--frames", type=int, default=2000, help="frames per render measurement")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_drive2d.json"))
    args = ap.parse_args()

    res: dict = {
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": platform.machine(),
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        }
    }
    res["render_fps"] = {f"{w}x{h}": render_fps(h, w, args.frames) for h, w in ((120, 160), (60, 80), (240, 320))}
    res["step_fps_160x120_expert"] = step_fps(3 * args.frames)
    res["reset_ms_median"] = reset_ms(20)
    res["collect_steps_per_s"], res["collect_s_per_episode"] = collect_rate(10)
    res["expert"] = policy_stats("expert", args.seeds)
    res["expert_dart_0.3"] = policy_stats("expert", args.seeds, dart_sigma=0.3)
    res["random"] = policy_stats("random", args.seeds)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    def pct(x: float) -> str:
        return f"{100 * x:.0f}%"

    print("| measurement | result |")
    print("|---|---|")
    for size, fps in res["render_fps"].items():
        print(f"| camera frame alone, {size} | {fps:,.0f} frames/s |")
    step = res["step_fps_160x120_expert"]
    print(f"| `env.step` + expert (physics, projection, frame), 160x120 | {step:,.0f} steps/s |")
    print(f"| `reset` (new track, ground map painted), median | {res['reset_ms_median']:.0f} ms |")
    print(
        f"| `collect_episodes` (expert, DART 0.3, JPEG per frame) | {res['collect_steps_per_s']:,.0f} steps/s "
        f"({res['collect_s_per_episode']:.2f} s per episode) |"
    )
    for key in ("expert", "expert_dart_0.3", "random"):
        r = res[key]
        steps = r["mean_lap_steps"]
        lap = "n/a" if steps is None else f"{steps:.0f} steps ({steps / 20:.1f} s)"
        print(
            f"| {key} over {r['episodes']} seeds | laps {pct(r['success_rate'])}, lap {lap}, "
            f"mean abs. cross-track error {100 * r['mean_abs_cte']:.1f} cm, return {r['mean_return']:.1f} |"
        )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
