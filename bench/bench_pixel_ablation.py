"""How the Fast loop's camera encoder is trained, measured by driving: the `fast.pixel_encoder` ablation.

    nice -n 10 python bench/bench_pixel_ablation.py [--variants default,no-shuffle,vqvae_finetuned,vqvae_frozen]
        [--eval-episodes 50] [--eval-seed 2000] [--work /tmp/continuonbrain-bench-drive-proof]
        [--out bench/results/pixel_ablation.json]

The data is the drive2d proof's (``bench/bench_drive_proof.py``, cached under ``--work``): one
expert lap on each of 20 tracks as Donkeycar tubs, of which the trainer keeps the newest 5 for
the gate and trains on 15 (3,275 frames of 160x120). Each variant is ``continuonbrain train``
with the shipped ``pi5-hope-v1.json``, its wall-time caps lifted (every variant trains its full
step budgets) and one ``--set``:

* ``default``: the shipped config (``pixel_encoder`` ``"trained"``, ``channel_shuffle`` 0.5);
* ``no-shuffle``: ``"trained"`` without the colour-channel shuffle (frames still standardised);
* ``raw-frames``: ``"trained"`` on raw frames (no per-frame standardisation), with the shuffle;
* ``raw-frames-no-shuffle``: ``"trained"`` on raw frames, no shuffle: plain end to end;
* ``vqvae_finetuned``: the VQ-VAE's encoder copied in, then trained end to end;
* ``vqvae_frozen``: the VQ-VAE's encoder copied in and frozen (issue 14's first design).

Each trained candidate drives closed loop through ``BrainService.act`` on ``--eval-episodes``
unseen tracks (``episode_seed(--eval-seed, i)``: not the proof's 20, so this never tunes on
them), and the expert on the same tracks. A variant is one training seed: differences of a
few points are within what another seed gives (read the table with that in mind).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_drive_proof import CLI, CONFIG, DART_SIGMA, REPO, last_json, measured, record_tubs

#: Every variant runs its full step budgets: the shipped 300 s wall caps would otherwise cut
#: the end-to-end variants short on a busy machine and not the frozen one.
LIFT_WALL_CAPS = [f"components.{c}.max_wall_time_s=3600" for c in ("vqvae", "mid_loop", "fast_loop")]

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "no-shuffle": ["model.fast.channel_shuffle=0"],
    "raw-frames": ["model.fast.standardize_frames=false"],
    "raw-frames-no-shuffle": ["model.fast.standardize_frames=false", "model.fast.channel_shuffle=0"],
    "vqvae_finetuned": ['model.fast.pixel_encoder="vqvae_finetuned"'],
    "vqvae_frozen": ['model.fast.pixel_encoder="vqvae_frozen"'],
}


def train(tubs: Path, out: Path, sets: list[str]) -> dict[str, Any]:
    """``continuonbrain train`` with the shipped config and ``sets``; its wall/CPU/RSS and summary."""
    shutil.rmtree(out, ignore_errors=True)
    sysfs = f"thermal.sysfs_root={json.dumps(str(out / 'no-sysfs'))}"  # a build box, not a Pi
    cmd = [*CLI, "train", "--config", str(CONFIG), "--rlds-dir", str(tubs), "--model-root", str(out / "models"),
           "--run-dir", str(out / "run"), "--json", "--set", sysfs]  # fmt: skip
    for s in [*LIFT_WALL_CAPS, *sets]:
        cmd += ["--set", s]
    run = measured(cmd, out / "train.json")
    summary = last_json(out / "train.json")
    fast = summary["components"]["fast_loop"]
    return {
        **run,
        "fast_steps": fast["steps"],
        "fast_wall_s": fast["wall_time_s"],
        "fast_final_loss": fast["final_loss"],
    }


def evaluate(policy: str, model: Path | None, tubs: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    """``bench_drive_proof.py _evaluate`` (one thread): closed-loop figures on the unseen tracks."""
    cmd = [sys.executable, str(REPO / "bench" / "bench_drive_proof.py"), "_evaluate", "--policy", policy,
           "--data", str(tubs), "--episodes", str(args.eval_episodes), "--seed", str(args.eval_seed),
           "--slot", "candidate", "--calls", "10"]  # fmt: skip
    if model is not None:
        cmd += ["--model", str(model)]
    measured(cmd, log, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    res = last_json(log)
    failed = [r["index"] for r in res["per_episode"] if not r["lap"]]
    keys = ("mean_progress", "lap_rate", "off_track_rate", "mean_abs_cte")
    return {**{k: round(res[k], 4) for k in keys}, "failed_tracks": failed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tracks", type=int, default=20)
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--eval-seed", type=int, default=2000)
    p.add_argument("--work", type=Path, default=Path("/tmp/continuonbrain-bench-drive-proof"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pixel_ablation.json")
    p.add_argument("--merge", action="store_true", help="keep the variants already in --out")
    args = p.parse_args()
    tubs, data = record_tubs(args.work, args.tracks, DART_SIGMA)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "data": data,
        "eval_episodes": args.eval_episodes,
        "eval_seed": args.eval_seed,
        "variants": {},
    }
    if args.merge and args.out.exists():
        results["variants"] = json.loads(args.out.read_text())["variants"]
    logs = args.work / "ablation"
    results["expert"] = evaluate("expert", None, tubs, args, logs / "eval-expert.json")
    for name in args.variants.split(","):
        out = logs / name
        print(f"{name}: training ...", flush=True)
        trained = train(tubs, out, VARIANTS[name])
        driven = evaluate("hope", out / "models", tubs, args, logs / f"eval-{name}.json")
        results["variants"][name] = {"set": VARIANTS[name], **trained, **driven}
        print(f"  {name}: {json.dumps(results['variants'][name])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| variant | lap progress | laps | off track | mean \\|cte\\| m | Fast loop s | failed tracks |")
    print("|---|---|---|---|---|---|---|")
    for name, v in results["variants"].items():
        cells = [f"{100 * v['mean_progress']:.1f}%", f"{100 * v['lap_rate']:.0f}%", f"{100 * v['off_track_rate']:.0f}%",
                 f"{v['mean_abs_cte']:.3f}", f"{v['fast_wall_s']:.0f}", str(v["failed_tracks"])]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
