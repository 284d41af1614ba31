"""What a live shadow window measures for candidates of known quality: the figures behind
``ShadowConfig.max_mean_action_distance`` and ``max_p95_action_distance``.

    python bench/bench_shadow.py [--episodes 200] [--live-episodes 75] [--eval-episodes 100]

A current brain is trained with the shipped ``pi5-hope-v1`` config on reach2d expert episodes
(collection seed 0) and served by :class:`BrainService`. Candidates are trained as a robot
would retrain: the same config on *fresh* episodes (collection seeds 1 and 2, the second also
with another training seed): these are the "good retrained" ones; and the same with the Fast
loop cut short (30, 100, 300 steps): the under-trained ones a rushed job produces. For each
candidate:

1. **Live stream.** The current drives ``--live-episodes`` seeded reach2d episodes closed-loop
   through ``BrainService.act`` (the serving path) while the candidate runs in shadow over the
   whole stream (``start_shadow``): mean and p95 action distance to the current, violations.
2. **Truth.** The candidate's own closed-loop success on ``--eval-episodes`` held-out seeds
   (what it would do if promoted), and the current's on the same seeds.

Trained models are cached under ``--data`` (delete it to retrain). Results:
``bench/results/bench_shadow.json``; the table goes to BENCHMARKS.md ("Live shadow mode").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHIPPED = REPO / "continuonbrain" / "configs" / "pi5-hope-v1.json"
#: (name, collection seed, training seed, Fast-loop steps)
CANDIDATES = [
    ("retrained-fresh-data", 1, 0, 1000),
    ("retrained-fresh-data-seed1", 2, 1, 1000),
    ("fast-300-steps", 1, 0, 300),
    ("fast-100-steps", 1, 0, 100),
    ("fast-30-steps", 1, 0, 30),
]


def episodes(data: Path, seed: int, n: int) -> Path:
    from continuonbrain.sim.collect import collect_to_dir

    out = data / f"reach2d-s{seed}-{n}"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        collect_to_dir("reach2d", n, out, seed=seed, dart_sigma=0.1)
        (out / ".complete").write_text("ok")
    return out


def train(data: Path, name: str, rlds: Path, seed: int, fast_steps: int) -> Path:
    """The shipped config on ``rlds`` (Fast loop ``fast_steps``), promoted in its own store."""
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    root = data / f"model-{name}"
    if (root / "current" / "manifest.json").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(data / f"run-{name}", ignore_errors=True)
    cfg = SequentialConfig.load(
        SHIPPED,
        overrides={
            "rlds_dir": str(rlds),
            "model_root": str(root),
            "run_dir": str(data / f"run-{name}"),
            "seed": seed,
            "torch_threads": 1,
            "components.fast_loop.max_steps": fast_steps,
            "thermal.sysfs_root": str(data / "no-sysfs"),
        },
    )
    t0 = time.perf_counter()
    SequentialTrainer(cfg).run()
    PromotionStore(root).promote({"passed": True, "reason": f"bench_shadow: {name}"})
    print(f"trained {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return root


def served_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "current").resolve().iterdir() if p.name != "manifest.json")


class ServedPolicy:
    """The current brain through the serving path, as ``eval`` drives it (reset per episode)."""

    def __init__(self, service: Any, session: str):
        self.service, self.session, self._reset = service, session, True

    def reset(self) -> None:
        self._reset = True

    def act(self, obs: Any) -> Any:
        out = self.service.act(obs, self.session, reset=self._reset)
        self._reset = False
        return out.action


def success(root: Path, episodes_n: int, seed: int) -> float:
    from continuonbrain.runtime.brain_service import BrainService
    from continuonbrain.sim.evaluate import evaluate_policy

    with BrainService(root, watch_interval_s=1.0) as service:
        result = evaluate_policy("reach2d", ServedPolicy(service, "eval"), episodes_n, seed)
    assert result is not None
    return float(result["success_rate"])


def shadow_live(current: Path, candidate: Path, work: Path, live_episodes: int, seed: int) -> dict[str, Any]:
    """The current drives ``live_episodes`` reach2d episodes; ``candidate`` shadows them all."""
    from continuonbrain.models.shadow_stats import ShadowConfig
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.runtime.brain_service import BrainService
    from continuonbrain.sim.evaluate import evaluate_policy

    store_dir = work / "live-store"
    shutil.rmtree(store_dir, ignore_errors=True)
    shutil.copytree(current, store_dir, symlinks=True)
    store = PromotionStore(store_dir)
    store.write_slot(
        "candidate", served_files(candidate), components=["vqvae", "mid_loop", "fast_loop"], kind="hope-seed"
    )
    # The stream runs as fast as the sim computes, far faster than a 50 Hz robot: a 4 MiB buffer
    # (~11,000 ticks) lets the worker fall behind without dropping a tick.
    shadow_config = ShadowConfig(buffer_bytes=4 << 20)
    with BrainService(store_dir, watch_interval_s=1.0, shadow_config=shadow_config) as service:
        service.start_shadow(window_ticks=1_000_000)  # longer than the stream: stopped at its end
        live = evaluate_policy("reach2d", ServedPolicy(service, "live"), live_episodes, seed)
        deadline = time.monotonic() + 60
        while (st := service.shadow_status())["ticks"] < st["sent"] and time.monotonic() < deadline:
            time.sleep(0.05)  # the worker (a process, started as the stream began) catches up
        record = service.stop_shadow()
    assert live is not None
    keep = ("ticks", "dropped", "mean_action_distance", "p95_action_distance", "max_action_distance")
    keep += ("bound_violations", "non_finite", "errors", "latency_us_p50", "latency_us_p99")
    return {"current_live_success": live["success_rate"], **{k: record.get(k) for k in keep}}


def _passes(row: dict[str, Any], cfg: Any) -> bool:
    """Whether the row's window would pass with ``cfg`` (taken as complete)."""
    from continuonbrain.models.shadow_stats import window_verdict

    return window_verdict(row, cfg, complete=True, dropped=row["dropped"])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-shadow")
    parser.add_argument("--episodes", type=int, default=200, help="training episodes per model")
    parser.add_argument("--live-episodes", type=int, default=75, help="reach2d episodes of the live stream")
    parser.add_argument("--eval-episodes", type=int, default=100, help="held-out seeds for closed-loop success")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_shadow.json")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)

    from continuonbrain.models.shadow_stats import ShadowConfig

    current = train(args.data, "current", episodes(args.data, 0, args.episodes), 0, 1000)
    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    eval_seed, live_seed = 10_000, 20_000  # neither overlaps the collection seeds' episodes
    rows = []
    current_success = success(current, args.eval_episodes, eval_seed)
    print(f"current: closed-loop success {current_success:.0%}", file=sys.stderr)
    for name, data_seed, train_seed, fast_steps in CANDIDATES:
        root = train(args.data, name, episodes(args.data, data_seed, args.episodes), train_seed, fast_steps)
        row = {
            "candidate": name,
            "collection_seed": data_seed,
            "training_seed": train_seed,
            "fast_steps": fast_steps,
            "closed_loop_success": success(root, args.eval_episodes, eval_seed),
            **shadow_live(current, root, work, args.live_episodes, live_seed),
        }
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    shutil.rmtree(work, ignore_errors=True)
    report = {
        "command": "python bench/bench_shadow.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "training_episodes": args.episodes,
        "live_episodes": args.live_episodes,
        "eval_episodes": args.eval_episodes,
        "current_closed_loop_success": current_success,
        "max_mean_action_distance": ShadowConfig().max_mean_action_distance,
        "max_p95_action_distance": ShadowConfig().max_p95_action_distance,
        "passes": {r["candidate"]: _passes(r, ShadowConfig()) for r in rows},
        "candidates": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
