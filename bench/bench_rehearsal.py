"""Rehearsal: what a LoRA adaptation keeps of the old task, per replay share.

    python bench/bench_rehearsal.py [--shares 0 0.1 0.25 0.5 0.75] [--seeds 0] [--episodes 100] [--set KEY=VALUE]

The demo's setup (:mod:`continuonbrain.demo`, its constants): ``DEMO_EPISODES`` expert episodes
of ``reach2d`` (seed ``DEMO_SEED``, DART noise 0.1), a HOPE seed trained on them with the shipped
``pi5-hope-v1`` config and promoted through the gate, and ``SHIFT_EPISODES`` episodes of the
shifted task (``SHIFT``: targets behind the robot). Cached under ``--data``.

Then, for each replay share and adaptation seed, on a fresh copy of the seed's store: the shipped
adaptation config (``configs/sim-arm-lora.json``, what ``make demo`` runs) with
``replay.share`` set, the replay set left at its default (the seed's ``rlds_dir`` from its
manifest). Budgets are the configs' steps, their wall-time limits lifted (a busy machine
must not change the table). The adapter it trains, whatever the gate decided, is evaluated through
``BrainService.act`` (``continuonbrain eval``'s path, :func:`~continuonbrain.runtime.served_policy.evaluate_served`)
on ``--episodes`` episodes of base seed ``EVAL_SEED`` (none trained on) of the shifted task and
of the original reach2d, as is the seed. Reported per share: success on both, their sum, the
original task's drop against the seed, and the gate's decision. Results: ``--out`` (JSON) and a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(REPO / "bench"))

from bench_gate import NO_WALL_TIME, record_data  # noqa: E402  (the gate bench's data, the same recording)

from continuonbrain import demo  # noqa: E402  (after the path insert: runs from a checkout)


def ensure_data(data: Path) -> tuple[Path, Path, Path]:
    """(seed store, reach2d episodes, shifted episodes), made once."""
    from continuonbrain.models.promotion import promote_candidate
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    base, shifted = record_data(data)
    models = data / "seed-models"
    if PromotionStore(models).current_version() is None:
        shutil.rmtree(models, ignore_errors=True)
        cfg = SequentialConfig.from_json(
            demo.CONFIG_DIR / "pi5-hope-v1.json",
            # steps, not seconds: a busy machine must not stop the seed early (reproducible table)
            NO_WALL_TIME,
            rlds_dir=str(base),
            model_root=str(models),
            run_dir=str(data / "seed-run"),
        )
        t0 = time.perf_counter()
        SequentialTrainer(cfg).run()
        gate, _ = promote_candidate(models, rlds_dir=base)
        if not gate.passed:
            raise SystemExit(f"the seed was rejected by the gate: {gate.reason}")
        print(f"seed trained and promoted in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return models, base, shifted


def evaluate_slot(slot_dir: Path, env_kwargs: dict[str, Any] | None, episodes: int, scratch: Path) -> dict:
    """Success, distance and return of the model in ``slot_dir`` through BrainService: the slot
    is copied to ``candidate`` of a scratch store (a rejected adapter sits in ``rejected/``)."""
    from continuonbrain.runtime.served_policy import evaluate_served

    shutil.rmtree(scratch, ignore_errors=True)
    # the gate's record beside a rejected adapter is not a slot file
    shutil.copytree(slot_dir, scratch / "candidate", symlinks=False, ignore=shutil.ignore_patterns("gate.json"))
    r = evaluate_served(
        scratch,
        demo.DEMO_ENV,
        slot="candidate",
        episodes=episodes,
        seed=demo.EVAL_SEED,
        baselines=False,
        env_kwargs=env_kwargs,
        record=False,
    )
    return {k: r[k] for k in ("success_rate", "mean_final_distance", "mean_return")}


def adapted_slot(root: Path, version: str | None) -> Path | None:
    """Where the run's adapter is after the gate: ``current`` (promoted) or ``rejected/<v>``."""
    for slot in (root / "current", root / "rejected" / str(version), root / "candidate"):
        manifest = slot / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("version") == version:
            return slot
    return None


def one_run(
    share: float, seed: int, models: Path, shifted: Path, work: Path, episodes: int, extra: dict[str, Any]
) -> dict[str, Any]:
    from continuonbrain.trainer.local_lora_trainer import maybe_run_local_training
    from continuonbrain.trainer.lora_config import LocalTrainerJobConfig

    tag = "".join(f"-{k}={v}" for k, v in sorted(extra.items()))
    root = work / f"share{share}-seed{seed}{tag}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(models, root / "models", symlinks=True)
    cfg = LocalTrainerJobConfig.load(
        demo.ADAPT_CONFIG,
        {
            "rlds_dir": str(shifted),
            "model_root": str(root / "models"),
            "log_dir": str(root / "logs"),
            "seed": seed,
            "replay.share": share,
            "budgets.max_wall_time_s": None,  # steps, not seconds (as for the seed)
            **extra,
        },
    )
    t0 = time.perf_counter()
    result = maybe_run_local_training(cfg)
    adapt_s = time.perf_counter() - t0
    slot = adapted_slot(root / "models", result.candidate_version)
    if slot is None:
        raise SystemExit(f"share {share}: no adapter to evaluate ({result.status}: {result.reason})")
    shifted_eval = evaluate_slot(slot, demo.SHIFT, episodes, root / "eval")
    original_eval = evaluate_slot(slot, None, episodes, root / "eval")
    return {
        "share": share,
        "seed": seed,
        "status": result.status,
        "reason": result.reason,
        "replay": result.replay,
        "adapt_s": round(adapt_s, 1),
        "loss": [result.initial_loss, result.final_loss],
        "shifted": shifted_eval,
        "original": original_eval,
    }


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5, 0.75])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="adaptation seeds (config 'seed')")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes per task")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="adaptation config override (repeatable)"
    )
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-rehearsal")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rehearsal.json")
    args = parser.parse_args()

    from continuonbrain.config_base import parse_set

    extra = parse_set(args.set)
    args.data.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models, _, shifted = ensure_data(args.data)
    seed_slot, scratch = models / "current", args.data / f"eval-seed-{os.getpid()}"
    seed_eval = {
        "shifted": evaluate_slot(seed_slot, demo.SHIFT, args.episodes, scratch),
        "original": evaluate_slot(seed_slot, None, args.episodes, scratch),
    }
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"seed": seed_eval}), file=sys.stderr)
    runs = []
    for share in args.shares:
        for seed in args.seeds:
            runs.append(one_run(share, seed, models, shifted, args.data / "runs", args.episodes, extra))
            print(json.dumps(runs[-1]), file=sys.stderr)

    rows = []
    for share in args.shares:
        mine = [r for r in runs if r["share"] == share]
        new = statistics.mean(r["shifted"]["success_rate"] for r in mine)
        old = statistics.mean(r["original"]["success_rate"] for r in mine)
        rows.append(
            {
                "share": share,
                "shifted_success": new,
                "original_success": old,
                "sum": new + old,
                "original_drop_points": 100 * (seed_eval["original"]["success_rate"] - old),
                "shifted_gain_points": 100 * (new - seed_eval["shifted"]["success_rate"]),
                "gate": [r["status"] for r in mine],
            }
        )
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "python bench/bench_rehearsal.py " + " ".join(sys.argv[1:]),
        "setup": {
            "seed_episodes": demo.DEMO_EPISODES,
            "shifted_episodes": demo.SHIFT_EPISODES,
            "shift": demo.SHIFT,
            "adapt_config": str(demo.ADAPT_CONFIG.relative_to(REPO)),
            "eval_episodes": args.episodes,
            "eval_seed": demo.EVAL_SEED,
            "adaptation_seeds": args.seeds,
            "overrides": extra,
        },
        "seed": seed_eval,
        "table": rows,
        "runs": runs,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    head = "| replay share | shifted task | original reach2d | sum | original vs seed |"
    print(f"{head} gate ({len(args.seeds)} run(s)) |")
    print("|---|---|---|---|---|---|")
    s = seed_eval
    print(f"| seed (before) | {pct(s['shifted']['success_rate'])} | {pct(s['original']['success_rate'])} | "
          f"{pct(s['shifted']['success_rate'] + s['original']['success_rate'])} | | |")  # fmt: skip
    for row in rows:
        drop, gate = f"{-row['original_drop_points']:+.0f} points", ", ".join(row["gate"])
        print(f"| {row['share']} | {pct(row['shifted_success'])} | {pct(row['original_success'])} | "
              f"{pct(row['sum'])} | {drop} | {gate} |")  # fmt: skip


if __name__ == "__main__":
    main()
