"""Imagined rollouts: with few real episodes, does adding imagined ones change the Fast loop's success?

    nice -n 10 python bench/bench_imagined.py [--seeds 0 1 2] [--real-episodes 5] [--imagined 50]
        [--eval-episodes 100] [--max-imagined-fraction 0.5] [--out bench/results/imagined.json]

For every seed ``s``:

1. ``--real-episodes`` reach2d expert episodes (``sim collect`` with seed ``s``);
2. the HOPE seed trained on them with the shipped ``pi5-hope-v1`` config (its ``seed`` set to
   ``s``), and its Fast loop (``HopeBrain.act``, Mid context as the config says) evaluated on
   ``--eval-episodes`` reach2d episodes of base seed ``--eval-seed`` (the same episodes for
   every seed and arm, none of them in the training data) with ``sim.evaluate``;
3. ``--imagined`` episodes imagined from that model (``imagine_to_dir``, default search,
   seed ``s``; plans predicted to end farther than the goal's threshold are dropped, so
   fewer may be written);
4. the same training again from scratch, same seed and budgets, with those episodes in
   ``imagined_rlds_dirs`` under ``max_imagined_fraction``, evaluated on the same episodes.

Also measured, because it says how much the imagined data can be trusted: each imagined
plan replayed in the simulator from its real start state (the source episodes are seeded
expert rollouts, so the state at ``source_step`` is reproduced exactly), giving the *real*
final tip distance next to the *predicted* one; and the share of imagined episodes and
steps in an epoch of the mixed training stream. Everything is seeded; the figures change
only with the code, the config and the torch build.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "continuonbrain" / "configs" / "pi5-hope-v1.json"


def train(rlds: Path, root: Path, run: Path, seed: int, imagined: Path | None, fraction: float, max_steps: int | None):
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    cfg = SequentialConfig.from_json(CONFIG, rlds_dir=str(rlds), model_root=str(root), run_dir=str(run))
    cfg.seed = seed
    cfg.max_imagined_fraction = fraction
    cfg.imagined_rlds_dirs = [str(imagined)] if imagined is not None else []
    cfg.thermal.sysfs_root = str(run / "no-sysfs")  # a shared build box, not a Pi: no thermal pauses
    if max_steps:
        cfg.cap_steps(max_steps)
    t0 = time.perf_counter()
    summary = SequentialTrainer(cfg).run()
    return {
        "wall_s": round(time.perf_counter() - t0, 1),
        "final_loss": {k: round(v.get("final_loss", float("nan")), 5) for k, v in summary["components"].items()},
    }


def evaluate(root: Path, episodes: int, seed: int) -> dict[str, Any]:
    from continuonbrain.hope import HopeBrain
    from continuonbrain.sim.evaluate import evaluate_policy

    brain = HopeBrain.load(root / "candidate")
    r = evaluate_policy("reach2d", brain, episodes, seed)
    assert r is not None
    return {"success_rate": r["success_rate"], "mean_final_distance": round(r["mean_final_distance"], 4)}


def replay_fidelity(imagined: Path, real: Path) -> dict[str, Any]:
    """Execute each imagined plan in the simulator from its real start state."""
    import numpy as np

    from continuonbrain.rlds import read_episodes
    from continuonbrain.sim.collect import make_env

    sources = {ep.episode_id: ep for ep in read_episodes(real)}
    env = make_env("reach2d")
    predicted, realized, tick_err = [], [], []
    for ep in read_episodes(imagined):
        prov, info = ep.metadata["provenance"], ep.metadata["imagination"]
        src = sources[prov["source_episode"]]
        env.reset(seed=int(src.metadata["episode_seed"]))
        for a in src.action_vector()[: prov["source_step"]]:
            env.step(a)
        m = info["mid_every"]
        real_ticks = []
        for t, a in enumerate(ep.action_vector()):
            _, _, _, _, step_info = env.step(a)
            if (t + 1) % m == 0:
                real_ticks.append(step_info["distance"])
        predicted.append(info["predicted_final_cost"])
        realized.append(real_ticks[-1])
        tick_err.append(np.abs(np.asarray(real_ticks) - np.asarray(info["predicted_tick_costs"])).mean())
    env.close()
    if not predicted:
        return {"plans": 0}
    return {
        "plans": len(predicted),
        "predicted_final_distance": round(float(np.mean(predicted)), 4),
        "realized_final_distance": round(float(np.mean(realized)), 4),
        "realized_within_5cm": round(float(np.mean(np.asarray(realized) <= 0.05)), 4),
        "mean_abs_tick_error": round(float(np.mean(tick_err)), 4),
    }


def stream_share(real: Path, imagined: Path, fraction: float, seed: int) -> dict[str, Any]:
    from continuonbrain.trainer.hope_data import episode_source
    from continuonbrain.trainer.train_config import SequentialConfig

    cfg = SequentialConfig(
        rlds_dir=str(real), imagined_rlds_dirs=[str(imagined)], max_imagined_fraction=fraction, seed=seed
    )
    eps = list(episode_source(cfg).iter_episodes(0))
    n_im = sum(ep.is_imagined for ep in eps)
    steps_im = sum(len(ep) for ep in eps if ep.is_imagined)
    return {
        "episodes": len(eps),
        "imagined_episodes": n_im,
        "imagined_step_share": round(steps_im / max(1, sum(len(ep) for ep in eps)), 4),
    }


def run_seed(work: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from continuonbrain.sim.collect import collect_to_dir
    from continuonbrain.sim.imagine import SearchConfig, imagine_to_dir

    real = work / f"real-{seed}"
    collect_to_dir("reach2d", args.real_episodes, real, seed=seed)
    base_root, mixed_root = work / f"models-real-{seed}", work / f"models-mixed-{seed}"
    out: dict[str, Any] = {"seed": seed}
    out["train_real"] = train(
        real, base_root, work / f"run-real-{seed}", seed, None, args.max_imagined_fraction, args.max_steps
    )
    out["real_only"] = evaluate(base_root, args.eval_episodes, args.eval_seed)
    print(f"seed {seed}: real only {out['real_only']}", flush=True)
    t0 = time.perf_counter()
    imagined = work / f"imagined-{seed}"
    summary = imagine_to_dir(base_root, imagined, args.imagined, search=SearchConfig(seed=seed))
    out["imagine"] = {
        "wall_s": round(time.perf_counter() - t0, 1),
        **{k: summary[k] for k in ("requested", "episodes", "start_states", "dropped", "steps", "max_final_cost")},
        "mean_predicted_final_cost": summary["mean_predicted_final_cost"],
    }
    out["fidelity"] = replay_fidelity(imagined, real)
    out["stream"] = stream_share(real, imagined, args.max_imagined_fraction, seed)
    print(f"seed {seed}: imagined {out['imagine']} fidelity {out['fidelity']} stream {out['stream']}", flush=True)
    out["train_mixed"] = train(
        real, mixed_root, work / f"run-mixed-{seed}", seed, imagined, args.max_imagined_fraction, args.max_steps
    )
    out["real_plus_imagined"] = evaluate(mixed_root, args.eval_episodes, args.eval_seed)
    print(f"seed {seed}: real + imagined {out['real_plus_imagined']}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--real-episodes", type=int, default=5)
    p.add_argument("--imagined", type=int, default=50, help="imagined episodes requested per seed")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--max-imagined-fraction", type=float, default=0.5)
    p.add_argument("--max-steps", type=int, help="cap every component (smoke runs); default: the config's")
    p.add_argument("--workdir", help="keep data and models here (default: a temporary dir, removed)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "imagined.json"))
    args = p.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-imagined-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        runs = [run_seed(work, s, args) for s in args.seeds]
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    def mean(arm: str, key: str) -> float:
        return round(statistics.fmean(r[arm][key] for r in runs), 4)

    deltas = [r["real_plus_imagined"]["success_rate"] - r["real_only"]["success_rate"] for r in runs]
    result = {
        "command": "nice -n 10 python bench/bench_imagined.py " + " ".join(sys.argv[1:]),
        "config": str(CONFIG.relative_to(REPO)),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "workdir")},
        "runs": runs,
        "summary": {
            "real_only_success": mean("real_only", "success_rate"),
            "real_plus_imagined_success": mean("real_plus_imagined", "success_rate"),
            "success_delta_per_seed": [round(d, 4) for d in deltas],
            "real_only_final_distance": mean("real_only", "mean_final_distance"),
            "real_plus_imagined_final_distance": mean("real_plus_imagined", "mean_final_distance"),
            "imagined_predicted_final_distance": round(
                statistics.fmean(r["fidelity"].get("predicted_final_distance", float("nan")) for r in runs), 4
            ),
            "imagined_realized_final_distance": round(
                statistics.fmean(r["fidelity"].get("realized_final_distance", float("nan")) for r in runs), 4
            ),
        },
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
