"""The robot keeps learning after the seed: the Pi 5 integration of the local LoRA trainer, end to end.

    python examples/pi5_integration.py [--workdir DIR] [--sysfs-root /sys] [--state-file FILE]

Runs for real on any Linux machine, here on simulator episodes:

1. A HOPE seed in ``<workdir>/models/current``: if there is none, one is trained on expert
   episodes of ``reach2d`` (SequentialTrainer, small budgets) and promoted through the gate.
2. New episodes of a shifted task land in the robot's episode directory: the arm got weaker
   (``gain 0.5``, a worn servo or a heavier payload), so the seed undershoots its commands.
3. The start gates read the sensors: ``<sysfs>/class/thermal/thermal_zone0/temp``, the first
   ``<sysfs>/class/power_supply/*`` battery, and the robot stack's state file. Without
   ``--sysfs-root`` a fake sysfs (52 °C, battery 87 %) and an idle robot state are written in
   the workdir; the env vars ``ROBOT_MODE``, ``TELEOP_ACTIVE`` and ``BATTERY_LEVEL`` override
   them (try ``ROBOT_MODE=teleop``).
4. ``maybe_run_local_training`` with torch hooks (the HOPE loader, the LoRA injector, the Fast
   loop's BC loss) and named action guards: trains the adapter under budgets, gates it in
   shadow on held-out episodes against the current model, promotes or rejects it.
5. The seed and the adapted brain then drive the weak arm in closed loop, so the gate's
   verdict (made on logged actions) can be checked against what actually happens.

Run it again: a new batch of episodes arrives and the next adapter is gated against the
previous one (the watermark in ``logs/`` skips runs without new episodes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain.models.safety import build_simple_action_guards  # noqa: E402
from continuonbrain.robot.sensors import read_sensors  # noqa: E402
from continuonbrain.trainer import (  # noqa: E402
    LocalTrainerJobConfig,
    build_torch_hooks,
    make_episode_loader,
    maybe_run_local_training,
)
from continuonbrain.trainer.hooks_torch import hope_bc_loss, load_hope_base, make_lora_injector  # noqa: E402

CONFIG = REPO / "continuonbrain" / "configs" / "pi5-donkey.json"
#: reach2d's action names: the guards bound each joint-velocity command by name.
ACTION_KEYS = ["dq1_cmd", "dq2_cmd"]


def ensure_seed(work: Path, episodes: int, steps: int) -> str:
    """Train and promote a small HOPE seed unless ``models/current`` already holds one."""
    from continuonbrain.models.promotion import promote_candidate
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.sim.collect import collect_to_dir
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    models = work / "models"
    store = PromotionStore(models)
    if store.current_version() is not None:
        print(f"seed: using {store.current_version()} in {models / 'current'}")
        return store.current_version()  # type: ignore[return-value]
    base = work / "seed-episodes"
    if not base.exists():
        collect_to_dir("reach2d", episodes, base, seed=3)
    comps = {
        "vqvae": {"max_steps": steps, "batch_size": 128, "shuffle_buffer": 1024},
        "mid_loop": {"max_steps": steps, "batch_size": 8, "window_s": 2.0},
        "fast_loop": {"max_steps": steps, "batch_size": 64, "window_s": 0.1},
    }
    cfg = SequentialConfig(
        rlds_dir=str(base), model_root=str(models), run_dir=str(work / "seed-run"), torch_threads=1, components=comps
    )
    cfg.thermal.sysfs_root = str(work / "sys")
    t0 = time.monotonic()
    summary = SequentialTrainer(cfg).run()
    for name, c in summary["components"].items():
        loss = f"{c.get('initial_loss', 0):.3f} -> {c.get('final_loss', 0):.3f}"
        print(f"seed: {name:<9} {c['steps']} steps, loss {loss}")
    result, _ = promote_candidate(models, base)
    if not result.passed:
        raise SystemExit(f"the seed did not pass its own gate: {result.reason}")
    print(f"seed: trained in {time.monotonic() - t0:.1f} s and promoted ({result.reason})")
    return store.current_version()  # type: ignore[return-value]


def new_episodes(work: Path, n: int, gain: float) -> Path:
    """A new batch of episodes from the weaker arm, in its own directory (read order = time)."""
    from continuonbrain.sim.collect import collect_to_dir

    rlds = work / "episodes"
    rlds.mkdir(parents=True, exist_ok=True)
    batch = len([d for d in rlds.iterdir() if d.is_dir()]) + 1
    out = rlds / f"batch-{batch:04d}"
    summary = collect_to_dir("reach2d", n, out, seed=1000 + batch, env_kwargs={"gain": gain})
    print(f"data: {summary['episodes']} new episodes ({summary['steps']} steps) of reach2d gain={gain} in {out}")
    return rlds


def fake_board(work: Path) -> tuple[Path, Path]:
    """A sysfs with a cool SoC and a charged battery, and an idle robot state file."""
    sysfs = work / "sys"
    zone = sysfs / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "temp").write_text("52000\n")
    bat = sysfs / "class" / "power_supply" / "BAT0"
    bat.mkdir(parents=True, exist_ok=True)
    (bat / "type").write_text("Battery\n")
    (bat / "capacity").write_text("87\n")
    state = work / "robot_state.json"
    state.write_text(json.dumps({"mode": "idle", "teleop_active": False}) + "\n")
    return sysfs, state


def closed_loop(model_dir: Path, gain: float, episodes: int) -> dict[str, Any]:
    """Success rate and final distance of the brain in ``model_dir`` driving the weak arm."""
    from continuonbrain.hope import HopeBrain
    from continuonbrain.sim.collect import make_env, rollout, summarize

    brain = HopeBrain.load(model_dir)
    env = make_env("reach2d", {"gain": gain})
    return summarize([rollout(env, brain, seed=50_000 + i) for i in range(episodes)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-pi5-integration")
    parser.add_argument("--sysfs-root", type=Path, help="read the real sensors here (default: a fake sysfs)")
    parser.add_argument("--state-file", type=Path, help="the robot stack's state file (default: a fake idle one)")
    parser.add_argument("--gain", type=float, default=0.5, help="actuator gain of the shifted task")
    parser.add_argument("--episodes", type=int, default=40, help="new episodes per run")
    parser.add_argument("--seed-steps", type=int, default=60, help="steps per seed component (only if no seed)")
    parser.add_argument("--max-steps", type=int, default=300, help="adapter training steps")
    parser.add_argument("--eval-episodes", type=int, default=20, help="closed-loop episodes per model")
    args = parser.parse_args()

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sysfs, state = fake_board(work)
    sysfs = args.sysfs_root or sysfs
    state = args.state_file or state
    before = ensure_seed(work, 40, args.seed_steps)
    rlds = new_episodes(work, args.episodes, args.gain)

    cfg = LocalTrainerJobConfig.from_json(CONFIG).with_overrides(
        {
            "rlds_dir": str(rlds),
            "model_root": str(work / "models"),
            "log_dir": str(work / "logs"),
            "action_keys": ACTION_KEYS,
            "per_key_bounds": {k: [-1.0, 1.0] for k in ACTION_KEYS},
            "max_steps": args.max_steps,
            "sysfs_root": str(sysfs),
            "robot_state_file": str(state),
        }
    )
    bounds = {k: (lo, hi) for k, (lo, hi) in cfg.per_key_bounds.items()}
    action_distance, violates = build_simple_action_guards(
        numeric_abs_limit=cfg.numeric_abs_limit, per_key_bounds=bounds, delta_weight=cfg.delta_weight
    )
    hooks = build_torch_hooks(
        base_model_loader=load_hope_base,
        lora_injector=make_lora_injector(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout),
        loss_fn=hope_bc_loss,
        action_distance_fn=action_distance,
        safety_fn=violates,
    )
    sensors = read_sensors(cfg.sysfs_root, cfg.robot_state_file)
    print(
        f"board: idle={sensors.robot_idle} teleop={sensors.teleop_active} "
        f"battery={sensors.battery_level} temp={sensors.cpu_temp_c} °C"
    )
    result = maybe_run_local_training(
        cfg,
        hooks,
        cfg.safety_config(),
        gating=lambda: read_sensors(cfg.sysfs_root, cfg.robot_state_file, env=os.environ),
        episode_loader=make_episode_loader(),
    )

    print(f"\nadapt: {result.status}: {result.reason}" + (f" ({result.detail})" if result.detail else ""))
    if result.steps:
        print(
            f"  {result.steps} steps (stop: {result.stop_reason}), loss {result.initial_loss:.4f} -> "
            f"{result.final_loss:.4f}, training {result.train_time_s:.1f} s, whole run {result.wall_time_s:.1f} s, "
            f"peak RSS {result.peak_rss_mb:.0f} MB"
        )
        print(f"  episodes: {result.episodes}")
        threshold = cfg.safety_config().avg_action_delta_threshold
        print(
            f"  held-out avg action delta: current {result.before_avg_action_delta:.4f} -> "
            f"candidate {result.after_avg_action_delta:.4f} (threshold {threshold})"
        )
        print(f"  current: {result.previous_version} -> {result.current_version}")
    print(f"  status {result.status_path}" + (f"\n  log {result.log_path}" if result.log_path else ""))

    if result.promoted and args.eval_episodes:
        from continuonbrain.models.store import PromotionStore

        store = PromotionStore(work / "models")
        previous = store.history_dir() / (result.previous_version or before)
        old = closed_loop(previous, args.gain, args.eval_episodes)
        new = closed_loop(store.slot("current"), args.gain, args.eval_episodes)
        print(f"\nclosed loop on reach2d gain={args.gain}, {args.eval_episodes} episodes each:")
        for name, stats in (("previous", old), ("adapted", new)):
            print(
                f"  {name:<9} success {stats['success_rate']:.2f}  final distance {stats['mean_final_distance']:.3f}  "
                f"return {stats['mean_return']:.1f}"
            )
    return 0 if result.status in ("promoted", "skipped", "no_data") else 1


if __name__ == "__main__":
    sys.exit(main())
