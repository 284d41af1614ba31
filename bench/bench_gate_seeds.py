"""The promotion gate against the truth, on the tests' small recipe: seed candidates of known
quality judged by the offline-only gate and by the full gate (with a sim twin), next to their
closed-loop success. (``bench/bench_gate.py`` runs the same question on the demo's full-size
task, with adapters; this one runs in minutes and is what the gate's defaults were set from.)

    python bench/bench_gate_seeds.py [--steps 10 30 100 300 1000] [--twin-episodes 20] [--truth-episodes 100]

Setup (the tests' arm-seed recipe): ``--episodes`` reach2d expert episodes (seed 5, DART noise
0.1), of which the seed trainer holds out the newest 8; a current seed trained with the shipped
model shapes (Fast loop without Mid context, VQ-VAE and Mid loop 40 steps, Fast loop 1000 steps,
seed 0). Candidates, each trained into a fresh copy of that store on the same episodes: every
component capped at N steps (the VQ-VAE and Mid loop at most 40) for each ``--steps`` N with
training seed 1, one more 1000-step candidate with seed 2, and a deliberately broken one (the
current's Fast-loop weights x25).

Each candidate is judged by

* the offline gate: ``SafetyGateConfig()`` defaults (paired held-out comparison, ceiling, bounds);
* the full gate: the same plus the sim twin (``sim_env=reach2d``, ``--twin-episodes`` episodes,
  base seed 1000), through ``BrainService.act``;
* the truth: closed-loop success on ``--truth-episodes`` episodes of base seed 2000 (neither
  trained on nor seen by the twin), through the same serving path.

A candidate is *bad* when its true success is more than 5 points below the current's. Reported:
per candidate the offline figures (paired mean difference, SE, margin), the twin's success, both
decisions and the truth; and per gate how many bad candidates it let through and how many good
ones it refused. Results: ``--out`` (JSON) and a Markdown table on stdout.
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

TWIN_SEED = 1000
TRUTH_SEED = 2000


def components(steps: int, fast_steps: int) -> dict[str, Any]:
    return {
        "vqvae": {"max_steps": steps, "batch_size": 128, "shuffle_buffer": 1024, "checkpoint_every": 1000},
        "mid_loop": {"max_steps": steps, "batch_size": 8, "window_s": 2.0, "checkpoint_every": 1000},
        "fast_loop": {"max_steps": fast_steps, "batch_size": 64, "window_s": 0.1, "checkpoint_every": 1000},
    }


def train(models: Path, episodes: Path, run: Path, steps: int, fast_steps: int, seed: int) -> float:
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    cfg = SequentialConfig(
        model={"fast": {"use_context": False}},
        rlds_dir=str(episodes),
        model_root=str(models),
        run_dir=str(run),
        torch_threads=1,
        seed=seed,
        components=components(steps, fast_steps),
    )
    cfg.thermal.sysfs_root = str(run / "no-sysfs")
    for comp in cfg.components.values():
        comp.max_wall_time_s = None  # a busy machine must not change the table
    started = time.monotonic()
    SequentialTrainer(cfg).run()
    return time.monotonic() - started


def broken_candidate(models: Path, work: Path) -> None:
    """The current's weights with the Fast loop's matrices x25: it loads and acts, badly."""
    from safetensors.numpy import load_file, save_file

    from continuonbrain.models.store import PromotionStore

    store = PromotionStore(models)
    current = store.slot("current").resolve()
    work.mkdir(parents=True)
    files = []
    for src in sorted(current.iterdir()):
        if src.name == "manifest.json":
            continue
        dst = work / src.name
        if src.name == "fast_loop.safetensors":
            tensors = load_file(str(src))
            for key, value in tensors.items():
                if value.dtype.kind == "f" and value.ndim == 2:
                    tensors[key] = (value * 25).astype(value.dtype)
            save_file(tensors, str(dst))
        else:
            dst.write_bytes(src.read_bytes())
        files.append(dst)
    manifest = store.manifest("current") or {}
    store.write_slot(
        "candidate",
        files,
        components=list(manifest.get("components") or []),
        kind="hope-seed",
        parent=manifest.get("version"),
        extra={k: manifest[k] for k in ("rlds_dir", "held_out") if k in manifest},
    )


def judge(models: Path, twin_episodes: int, truth_episodes: int) -> dict[str, Any]:
    from continuonbrain.models.promotion import evaluate_candidate
    from continuonbrain.models.safety import SafetyGateConfig
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.runtime.served_policy import evaluate_served
    from continuonbrain.runtime.sim_twin import closed_loop_runner

    store = PromotionStore(models)
    offline = evaluate_candidate(store, None, SafetyGateConfig())
    cfg = SafetyGateConfig(sim_env="reach2d", sim_episodes=twin_episodes, sim_seed=TWIN_SEED)
    started = time.monotonic()
    full = evaluate_candidate(store, None, cfg, closed_loop=closed_loop_runner(cfg))
    full_s = time.monotonic() - started
    truth = evaluate_served(
        models, "reach2d", slot="candidate", episodes=truth_episodes, seed=TRUTH_SEED, baselines=False, record=False
    )
    held = offline.checks.get("held_out", {})
    twin = full.checks.get("sim_twin", {})
    keys = ("candidate", "current", "paired_mean_diff", "paired_std", "paired_se", "margin", "episodes")
    return {
        "offline": {"passed": offline.passed, "reason": offline.reason},
        "full": {"passed": full.passed, "reason": full.reason, "wall_time_s": round(full_s, 2)},
        "held_out": {k: held.get(k) for k in keys},
        "twin": {
            **{k: twin.get(k) for k in ("candidate", "current", "metric", "skipped")},
            "candidate_s": (twin.get("candidate_run") or {}).get("wall_time_s"),
            "current_s": (twin.get("current_run") or {}).get("wall_time_s"),
        },
        "truth_success": truth["success_rate"],
        "truth_final_distance": truth["mean_final_distance"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    parser.add_argument("--episodes", type=int, default=60, help="reach2d expert episodes (8 held out)")
    parser.add_argument("--twin-episodes", type=int, default=20)
    parser.add_argument("--truth-episodes", type=int, default=100)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bench-gate-seeds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_gate_seeds.json")
    args = parser.parse_args()

    from continuonbrain.models.store import PromotionStore
    from continuonbrain.runtime.served_policy import evaluate_served
    from continuonbrain.sim.collect import collect_to_dir

    data = args.data
    episodes, seed_models = data / "episodes", data / "seed-models"
    if not (episodes / ".complete").exists():
        shutil.rmtree(episodes, ignore_errors=True)
        collect_to_dir("reach2d", args.episodes, episodes, seed=5, dart_sigma=0.1)
        (episodes / ".complete").write_text("ok\n")
    if PromotionStore(seed_models).current_version() is None:
        shutil.rmtree(seed_models, ignore_errors=True)
        train(seed_models, episodes, data / "run-seed", 40, 1000, 0)
        PromotionStore(seed_models).promote({"passed": True, "reason": "bench_gate_seeds: the current seed"})
    current_truth = evaluate_served(
        seed_models, "reach2d", episodes=args.truth_episodes, seed=TRUTH_SEED, baselines=False, record=False
    )["success_rate"]

    plan = [(f"{n} steps", min(n, 40), n, 1) for n in args.steps]
    plan += [("1000 steps, seed 2", 40, 1000, 2), ("broken (Fast x25)", 0, 0, 0)]
    rows = []
    for name, steps, fast, seed in plan:
        slug = "".join(c if c.isalnum() else "_" for c in name)
        models = data / "stores" / slug
        shutil.rmtree(models, ignore_errors=True)
        shutil.copytree(seed_models, models, symlinks=True)
        train_s = None
        if fast:
            train_s = round(train(models, episodes, data / "runs" / slug, steps, fast, seed), 1)
        else:
            broken_candidate(models, data / "broken-work" / str(time.time_ns()))
        row = {"candidate": name, "train_s": train_s, **judge(models, args.twin_episodes, args.truth_episodes)}
        row["bad"] = row["truth_success"] < current_truth - 0.05
        rows.append(row)
        print(
            f"{name}: truth {row['truth_success']:.2f} offline {row['offline']['passed']} full {row['full']['passed']}",
            file=sys.stderr,
        )

    def tally(gate: str) -> dict[str, int]:
        return {
            "bad_let_through": sum(r["bad"] and r[gate]["passed"] for r in rows),
            "good_refused": sum((not r["bad"]) and not r[gate]["passed"] for r in rows),
            "bad": sum(r["bad"] for r in rows),
            "good": sum(not r["bad"] for r in rows),
        }

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": "python bench/bench_gate_seeds.py " + " ".join(sys.argv[1:]),
        "current_truth_success": current_truth,
        "rows": rows,
        "offline_gate": tally("offline"),
        "full_gate": tally("full"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"current seed: closed-loop success {current_truth:.2f} on {args.truth_episodes} episodes (seed {TRUTH_SEED})\n"
    )
    head = ["candidate", "held-out cand / cur", "paired diff (SE) / margin", "twin success cand / cur"]
    print("| " + " | ".join([*head, "offline gate", "full gate", "true success"]) + " |")
    print("|---" * 7 + "|")
    for r in rows:
        h, t = r["held_out"], r["twin"]
        paired, dist, twin = "n/a", "n/a", "n/a"
        if h.get("paired_mean_diff") is not None:
            paired = f"{h['paired_mean_diff']:+.3f} ({h['paired_se'] or 0:.3f}) / {h['margin']:.3f}"
        if h.get("candidate") is not None:
            dist = f"{h['candidate']:.3f} / {h['current']:.3f}"
        if t.get("skipped"):
            twin = "skipped (offline refused)"
        elif t.get("candidate") is not None:
            twin = f"{t['candidate']:.2f} / {t['current']:.2f}"
        offline, full = ("promote" if r[g]["passed"] else "refuse" for g in ("offline", "full"))
        truth = f"{r['truth_success']:.2f}" + (" (bad)" if r["bad"] else "")
        print(f"| {r['candidate']} | {dist} | {paired} | {twin} | {offline} | {full} | {truth} |")
    for gate in ("offline_gate", "full_gate"):
        print(f"\n{gate}: {result[gate]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
