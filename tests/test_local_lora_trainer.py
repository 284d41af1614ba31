"""The local LoRA trainer on a real (small) HOPE seed: stub dry runs through the command line,
real adaptation to a shifted task that is gated and promoted, bad candidates that are
rejected with current untouched, and the start gates. Crash safety of the store is covered by
tests/test_store_promotion.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import signal_when, train_promoted_seed

from continuonbrain.trainer import (
    LocalTrainerJobConfig,
    SafetyGateConfig,
    build_stub_hooks,
    build_torch_hooks,
    make_episode_loader,
    maybe_run_local_training,
)
from continuonbrain.trainer.hooks_torch import TorchLoRAHooks, hope_bc_loss, load_hope_base, make_lora_injector
from continuonbrain.trainer.safety import build_simple_action_guards
from continuonbrain.trainer.scheduler import EpisodeWatermark, GatingSensors, read_sensors
from continuonbrain.trainer.store import PromotionStore

REPO = Path(__file__).resolve().parents[1]
DONKEY = REPO / "continuonbrain" / "configs" / "pi5-donkey.json"
ACTION_KEYS = ["dq1_cmd", "dq2_cmd"]  # reach2d's action names: the guards bound them by name
GOOD = GatingSensors(robot_idle=True, battery_level=0.9, cpu_temp_c=50.0, teleop_active=False, mode="idle")


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> dict[str, Path]:
    """A small HOPE seed (VQ-VAE, Mid loop, Fast loop) trained on reach2d and promoted to
    current, plus episodes of a shifted task (a weaker arm: gain 0.5) to adapt to."""
    from continuonbrain.sim.collect import collect_to_dir

    tmp = tmp_path_factory.mktemp("lora")
    collect_to_dir("reach2d", 40, tmp / "base", seed=3)
    collect_to_dir("reach2d", 40, tmp / "gain05", seed=21, env_kwargs={"gain": 0.5})
    train_promoted_seed(tmp / "base", tmp, steps=60, reason="seed for the LoRA tests")
    return {"models": tmp / "models", "base": tmp / "base", "gain05": tmp / "gain05"}


def fresh_store(seed: dict[str, Path], tmp: Path) -> Path:
    root = tmp / "models"
    shutil.copytree(seed["models"], root, symlinks=True)
    return root


def job(tmp: Path, rlds: Path, models: Path, **overrides) -> LocalTrainerJobConfig:
    """The shipped Donkeycar config pointed at temp dirs and reach2d's action names."""
    over = {
        "rlds_dir": str(rlds),
        "model_root": str(models),
        "log_dir": str(tmp / "logs"),
        "action_keys": ACTION_KEYS,
        "per_key_bounds": {k: [-1.0, 1.0] for k in ACTION_KEYS},
        "sysfs_root": str(tmp / "no-sysfs"),
        **overrides,
    }
    return LocalTrainerJobConfig.from_json(DONKEY).with_overrides(over)


def slot_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- config


def test_the_shipped_config_and_overrides(tmp_path: Path) -> None:
    cfg = LocalTrainerJobConfig.from_json(DONKEY)
    assert cfg.action_keys == ["steering", "throttle"]
    assert cfg.per_key_bounds == {"steering": [-1.0, 1.0], "throttle": [-1.0, 1.0]}
    # the shipped gate is the documented default, with the car's own ceiling (the default is reach2d's)
    assert cfg.safety_config() == SafetyGateConfig(avg_action_delta_threshold=0.25)
    data = {**json.loads(DONKEY.read_text()), "rlds_dir": "episodes", "model_root": "../models"}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "job.json").write_text(json.dumps(data))
    cfg = LocalTrainerJobConfig.from_json(tmp_path / "cfg" / "job.json", max_steps=5)
    assert cfg.rlds_dir == str(tmp_path / "cfg" / "episodes") and cfg.model_root == str(tmp_path / "models")
    assert cfg.max_steps == 5
    assert cfg.with_overrides({"safety.eval_tail_episodes": 2}).safety_config().eval_tail_episodes == 2
    (tmp_path / "bad.json").write_text(json.dumps({**data, "lora_rnak": 8}))
    with pytest.raises(ValueError, match="lora_rnak"):
        LocalTrainerJobConfig.from_json(tmp_path / "bad.json")


def test_adapt_takes_dotted_and_flat_set_on_the_command_line() -> None:
    import argparse

    from continuonbrain.trainer.local_lora_trainer import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--config", str(DONKEY), "--set", "max_steps=5", "--set", "lora.rank=8", "--rlds-dir", "x"])
    cfg = config_from_args(args)
    assert cfg.budgets.max_steps == 5 and cfg.lora.rank == 8 and cfg.rlds_dir == str(Path("x").resolve())
    with pytest.raises(ValueError, match=r"LocalTrainerJobConfig\.lora\.rank: .*greater than or equal to 1"):
        config_from_args(p.parse_args(["--config", str(DONKEY), "--set", "lora.rank=0"]))


# --------------------------------------------------------------------------- 1. stub dry run, real CLI


def test_stub_hooks_command_runs_the_loop_and_never_replaces_current(seed, tmp_path: Path) -> None:
    root = fresh_store(seed, tmp_path)
    before = slot_bytes(root / "current")
    version = PromotionStore(root).current_version()
    logs = tmp_path / "logs"
    common = ["--config", str(DONKEY), "--use-stub-hooks", "--rlds-dir", str(seed["gain05"]), "--model-root", str(root)]
    sets = ["--set", f"log_dir={logs}", "--set", "max_steps=25", "--set", f"action_keys={json.dumps(ACTION_KEYS)}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "continuonbrain.trainer.local_lora_trainer", *common, *sets, "--json"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "dry_run" and out["stub"] is True and out["promoted"] is False
    assert out["steps"] == 25 and out["stop_reason"] == "max_steps"
    assert out["episodes"] == {"found": 40, "train": 32, "eval": 8}
    assert out["gate"]["candidate"]["steps"] > 0 and "stub" in out["reason"]
    # The stub went through the candidate slot and was set aside: current is byte-identical.
    store = PromotionStore(root)
    assert store.current_version() == version and slot_bytes(root / "current") == before
    assert not store.slot("candidate").exists()
    rejected = root / "rejected" / out["candidate_version"]
    assert json.loads((rejected / "manifest.json").read_text())["kind"] == "stub"
    last = store.audit()[-1]
    assert last["decision"] == "rejected" and last["stub"] is True and "stub" in last["reason"]
    status = json.loads((logs / "status.json").read_text())
    assert status["status"] == "dry_run" and status["current_version"] == version and status["steps"] == 25
    assert Path(status["latest_log"]).is_file() and status["losses"]

    # The same through `continuonbrain adapt`, human output.
    proc = subprocess.run(
        [sys.executable, "-m", "continuonbrain", "adapt", *common, *sets],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("adapt: DRY_RUN") and "steps 25 (stop: max_steps)" in proc.stdout
    assert slot_bytes(root / "current") == before
    assert len(list((root / "rejected").iterdir())) == 2


# --------------------------------------------------------------------------- 2. real adaptation


def test_adaptation_to_a_shifted_task_is_gated_and_promoted(seed, tmp_path: Path) -> None:
    root = fresh_store(seed, tmp_path)
    seed_version = PromotionStore(root).current_version()
    seed_fast = (root / "current" / "fast_loop.safetensors").read_bytes()
    # No rehearsal: the losses below are those of the new task alone (tests/test_rehearsal.py
    # covers replay); the gate's forgetting check still runs on the seed's held-out episodes.
    cfg = job(tmp_path, seed["gain05"], root, max_steps=150, **{"replay.share": 0.0})
    distance, violates = build_simple_action_guards(
        numeric_abs_limit=None, per_key_bounds={k: (-1.0, 1.0) for k in ACTION_KEYS}, delta_weight=1.0
    )
    hooks = build_torch_hooks(
        base_model_loader=load_hope_base,
        lora_injector=make_lora_injector(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout),
        loss_fn=hope_bc_loss,
        action_distance_fn=distance,
        safety_fn=violates,
    )
    result = maybe_run_local_training(cfg, hooks, SafetyGateConfig(), gating=None, episode_loader=make_episode_loader())

    assert result.status == "promoted" and result.promoted, result.reason
    assert result.steps == 150 and result.stop_reason == "max_steps"
    assert result.final_loss < 0.5 * result.initial_loss
    # The held-out episodes of the shifted task: the adapter acts closer to what was done.
    assert result.after_avg_action_delta < result.before_avg_action_delta - 0.02
    assert result.after_avg_action_delta < SafetyGateConfig().avg_action_delta_threshold
    assert result.gate["candidate"]["violations"] == 0 and result.gate["candidate"]["steps"] > 0

    store = PromotionStore(root)
    assert store.current_version() == result.candidate_version
    assert [m["version"] for m in store.history()] == [seed_version]  # the previous current
    manifest = store.manifest("current")
    assert manifest["kind"] == "hope-lora" and manifest["parent"] == seed_version
    assert manifest["rlds_dir"] == str(seed["gain05"]) and manifest["metrics"]["steps"] == 150
    assert {"adapter_config.json", "adapter_model.safetensors", "fast_loop.safetensors"} <= set(manifest["files"])
    assert (root / "current" / "fast_loop.safetensors").read_bytes() == seed_fast  # the seed, plus an adapter

    # PEFT-format adapter, merged by HopeBrain.load for inference.
    from safetensors.torch import load_file

    from continuonbrain.hope import HopeBrain

    keys = sorted(load_file(str(root / "current" / "adapter_model.safetensors")))
    assert keys and all(k.startswith("base_model.model.fast_loop.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    adapter_cfg = json.loads((root / "current" / "adapter_config.json").read_text())
    assert adapter_cfg["peft_type"] == "LORA" and adapter_cfg["r"] == cfg.lora_rank
    obs = next(iter(make_episode_loader()(seed["gain05"], 1))).observation_vector()[0]
    merged = HopeBrain.load(root / "current").act(obs)
    plain = HopeBrain.load(root / "current", apply_adapter=False).act(obs)
    assert not np.allclose(merged, plain)

    # The audit line says why, with metrics and the sha256 of each file.
    last = store.audit()[-1]
    assert last["decision"] == "promoted" and last["version"] == result.candidate_version
    assert "avg action delta" in last["reason"] and last["previous"] == seed_version
    assert last["metrics"]["candidate"]["avg_action_delta"] == pytest.approx(result.after_avg_action_delta)
    assert last["metrics"]["current"]["avg_action_delta"] == pytest.approx(result.before_avg_action_delta)
    assert last["files"]["adapter_model.safetensors"] == sha256(root / "current" / "adapter_model.safetensors")

    status = json.loads((tmp_path / "logs" / "status.json").read_text())
    assert status["promoted"] and status["current_version"] == result.candidate_version
    assert status["history_count"] == 1 and status["steps"] == 150 and status["losses"]
    assert Path(status["latest_log"]).is_file()

    # Those episodes are trained on: a scheduled run waits for new ones.
    again = maybe_run_local_training(cfg, build_stub_hooks(), SafetyGateConfig(), gating=GOOD)
    assert again.status == "skipped" and again.reason == "no_new_episodes"


def camera_episode(i: int, n: int = 40):
    """A Donkeycar-shaped episode: a camera frame and a state vector in, named steering and
    throttle out (the camera brightness follows the state, so the image carries it too)."""
    from conftest import png_bytes

    from continuonbrain.rlds import Episode, LazyImage

    rows = []
    for t in range(n):
        x = float(np.sin(0.1 * t + i))
        cam = LazyImage(data=png_bytes(16, 16, value=int(120 + 100 * x)), format="png")
        obs = {"camera": cam, "state": [x, float(np.cos(0.1 * t + i))]}
        rows.append({"observation": obs, "action": {"steering": [0.5 * x], "throttle": [0.3]}})
    return Episode.from_steps(rows, {"episode_id": f"cam{i:03d}"})


def test_a_camera_seed_adapts_with_the_shipped_donkeycar_config(tmp_path: Path) -> None:
    """Dict observations with camera frames (tokenized for the Mid context, decoded for the
    shadow gate) and dict actions named steering/throttle, bounded by the shipped guards."""
    from continuonbrain.rlds import write_episodes
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    write_episodes([camera_episode(i) for i in range(20)], tmp_path / "episodes")
    comp = {"max_steps": 8, "checkpoint_every": 100, "shuffle_buffer": 64, "warmup_steps": 2}
    seed_cfg = SequentialConfig(
        rlds_dir=str(tmp_path / "episodes"),
        model_root=str(tmp_path / "models"),
        run_dir=str(tmp_path / "run"),
        torch_threads=1,
        normalizer_episodes=8,
        image_keys=["camera"],
        observation_keys=["state"],
        model={"vqvae": {"codebook_size": 16, "conv_channels": [8, 8]}},
        components={
            "vqvae": {**comp, "batch_size": 32},
            "mid_loop": {**comp, "batch_size": 4, "window_s": 1.0},
            "fast_loop": {**comp, "batch_size": 32, "window_s": 0.1},
        },
    )
    seed_cfg.thermal.sysfs_root = str(tmp_path / "no-sysfs")
    SequentialTrainer(seed_cfg).run()
    PromotionStore(tmp_path / "models").promote({"passed": True, "reason": "camera seed"})

    cfg = LocalTrainerJobConfig.from_json(DONKEY).with_overrides(
        {
            "rlds_dir": str(tmp_path / "episodes"),
            "model_root": str(tmp_path / "models"),
            "log_dir": str(tmp_path / "logs"),
            "max_steps": 20,
        }
    )
    result = maybe_run_local_training(cfg, build_torch_hooks(), SafetyGateConfig())
    assert result.status in ("promoted", "rejected"), result.reason
    assert result.steps == 20 and result.episodes == {"found": 20, "train": 12, "eval": 8}
    for side in ("candidate", "current"):
        assert result.gate[side]["error"] is None and result.gate[side]["steps"] == 8 * 40
        assert result.gate[side]["violations"] == 0
    assert result.gate["config"]["avg_action_delta_threshold"] == SafetyGateConfig().avg_action_delta_threshold


# --------------------------------------------------------------------------- 3. bad candidates


def test_a_candidate_that_breaks_the_bounds_is_rejected(seed, tmp_path: Path) -> None:
    """Episodes whose actions are 3x the expert's teach the adapter to slam the joints. HOPE
    actions are tanh-bounded to the model's [-1, 1], so the guards here are tighter (0.9):
    the seed stays inside them on these observations, the candidate does not."""
    from continuonbrain.rlds import read_episodes, write_episodes

    root = fresh_store(seed, tmp_path)
    before = slot_bytes(root / "current")
    version = PromotionStore(root).current_version()
    episodes = list(read_episodes(seed["gain05"]))[:24]
    # 3x actions contradict the recorded [-1, 1] action space, which validation refuses: drop it.
    caps = {k: v for k, v in episodes[0].metadata["capabilities"].items() if k != "action_space"}
    bad = [
        dataclasses.replace(
            ep,
            action=np.asarray(ep.action) * 3.0,
            metadata={**ep.metadata, "episode_id": f"x3-{i}", "capabilities": caps},
        )
        for i, ep in enumerate(episodes)
    ]
    write_episodes(bad, tmp_path / "x3")
    cfg = job(tmp_path, tmp_path / "x3", root, max_steps=60)
    distance, violates = build_simple_action_guards(per_key_bounds={k: (-0.9, 0.9) for k in ACTION_KEYS})
    result = maybe_run_local_training(
        cfg, build_torch_hooks(action_distance_fn=distance, safety_fn=violates), SafetyGateConfig()
    )

    assert result.status == "rejected" and not result.promoted
    assert "bounds violation" in result.reason
    assert result.gate["candidate"]["violations"] > 0 and result.gate["current"]["violations"] == 0
    assert PromotionStore(root).current_version() == version
    assert slot_bytes(root / "current") == before  # byte-identical
    last = PromotionStore(root).audit()[-1]
    assert last["decision"] == "rejected" and last["version"] == result.candidate_version
    assert "bounds violation" in last["reason"] and last["files"]["adapter_model.safetensors"]
    assert (root / "rejected" / result.candidate_version / "gate.json").is_file()


class CorruptingHooks(TorchLoRAHooks):
    """Torch hooks whose saved adapter file is damaged (a bad SD-card write)."""

    def save_candidate(self, out_dir: Path):
        files = super().save_candidate(out_dir)
        weights = next(p for p in files.files if p.name == "adapter_model.safetensors")
        weights.write_bytes(weights.read_bytes()[:100])
        return files


def test_a_candidate_with_a_corrupted_adapter_is_rejected(seed, tmp_path: Path) -> None:
    root = fresh_store(seed, tmp_path)
    before = slot_bytes(root / "current")
    cfg = job(tmp_path, seed["gain05"], root, max_steps=20)
    result = maybe_run_local_training(cfg, CorruptingHooks(), SafetyGateConfig())
    assert result.status == "rejected", result.reason
    assert "cannot load" in result.reason and result.gate["candidate"]["error"]
    assert slot_bytes(root / "current") == before
    assert PromotionStore(root).audit()[-1]["decision"] == "rejected"


# --------------------------------------------------------------------------- 4. start gates


def fake_sysfs(root: Path, temp_c: float, battery_percent: int) -> Path:
    zone = root / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "temp").write_text(f"{int(temp_c * 1000)}\n")
    bat = root / "class" / "power_supply" / "BAT0"
    bat.mkdir(parents=True, exist_ok=True)
    (bat / "type").write_text("Battery\n")
    (bat / "capacity").write_text(f"{battery_percent}\n")
    return root


@pytest.mark.parametrize(
    ("reason", "sensors"),
    [
        ("not_idle", dataclasses.replace(GOOD, robot_idle=False, mode="autonomous")),
        ("teleop_active", dataclasses.replace(GOOD, teleop_active=True)),
        ("battery_low", dataclasses.replace(GOOD, battery_level=0.2)),
        ("too_hot", "sysfs"),
        ("no_new_episodes", GOOD),
    ],
)
def test_each_start_gate_skips_with_its_reason(seed, tmp_path: Path, reason: str, sensors) -> None:
    root = tmp_path / "models"
    cfg = job(tmp_path, seed["gain05"], root)
    if sensors == "sysfs":  # the real sensor path, on a fake sysfs and state file
        fake_sysfs(tmp_path / "sys", temp_c=81.5, battery_percent=90)
        (tmp_path / "state.json").write_text(json.dumps({"mode": "idle"}))
        sensors = lambda: read_sensors(tmp_path / "sys", tmp_path / "state.json", env={})  # noqa: E731
    if reason == "no_new_episodes":
        EpisodeWatermark(cfg.rlds_dir, cfg.log_dir).mark_trained()
    result = maybe_run_local_training(cfg, build_stub_hooks(), SafetyGateConfig(), gating=sensors)
    assert result.status == "skipped" and result.reason == reason and result.detail
    assert result.gating["gates"] and result.steps == 0 and result.log_path is None
    assert not (root / "candidate").exists() and not (root / "audit.jsonl").exists()  # nothing written
    assert json.loads((tmp_path / "logs" / "status.json").read_text())["reason"] == reason


def test_too_few_episodes_is_no_data_and_writes_nothing(seed, tmp_path: Path) -> None:
    root = tmp_path / "models"
    cfg = job(tmp_path, seed["gain05"], root, min_episodes=41, max_episodes=100)
    result = maybe_run_local_training(cfg, build_stub_hooks(), SafetyGateConfig(), gating=GOOD)
    assert result.status == "no_data" and "need at least 41" in result.reason
    assert not (root / "candidate").exists() and not (root / "audit.jsonl").exists()


def test_a_pending_seed_a_busy_store_and_a_missing_base_are_reported(seed, tmp_path: Path) -> None:
    import fcntl

    root = tmp_path / "models"
    store = PromotionStore(root)
    src = tmp_path / "seed-files"
    shutil.copytree(seed["models"] / "current", src)
    (src / "manifest.json").unlink()
    store.write_slot("candidate", sorted(src.iterdir()), components=["fast_loop"], kind="hope-seed")
    cfg = job(tmp_path, seed["gain05"], root)
    result = maybe_run_local_training(cfg, build_stub_hooks(), SafetyGateConfig())
    assert result.status == "skipped" and result.reason == "candidate_pending"  # a seed awaiting review is kept
    assert store.manifest("candidate")["kind"] == "hope-seed"

    with (root / ".adapt.lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        result = maybe_run_local_training(cfg, build_stub_hooks(), SafetyGateConfig())
    assert result.status == "skipped" and result.reason == "busy"

    empty = tmp_path / "empty-store"
    result = maybe_run_local_training(job(tmp_path, seed["gain05"], empty), build_torch_hooks(), SafetyGateConfig())
    assert result.status == "no_base" and "train and promote a seed first" in result.reason
    assert not (empty / "candidate").exists()


# PEFT interop (adapters load with the real peft, both ways) is tests/interop/test_peft_compat.py,
# run in .venv-peft by `make test-interop`.


# --------------------------------------------------------------------------- 5. resume after a kill, pauses, stops

#: The killed run is killed once it has logged this step: past its first checkpoint (step
#: ``RESUME_CHECKPOINT_EVERY``), with steps after it that the resumed run must redo.
RESUME_CHECKPOINT_EVERY = 10
RESUME_KILL_AFTER = RESUME_CHECKPOINT_EVERY + 3
RESUME_STEPS = 150


def _adapt(seed: dict[str, Path], root: Path, logs: Path, events: Path, *extra: str) -> list[str]:
    """``continuonbrain adapt`` with the shipped flat Donkeycar config and dotted overrides:
    every step logged, a checkpoint every 10 steps, LoRA dropout (random draws after the
    resume point), small batches over several epochs of a shuffle buffer smaller than one."""
    sets = {
        "log_dir": str(logs),
        "data.action_keys": json.dumps(ACTION_KEYS),
        "guards.per_key_bounds": json.dumps({k: [-1.0, 1.0] for k in ACTION_KEYS}),
        "thermal.sysfs_root": str(root.parent / "no-sysfs"),
        "budgets.max_steps": str(RESUME_STEPS),
        "training.checkpoint_every": str(RESUME_CHECKPOINT_EVERY),
        "training.log_every_steps": "1",
        "training.batch_size": "16",
        "training.shuffle_buffer_multiplier": "2",
        "lora.dropout": "0.1",
    }
    cmd = [sys.executable, "-m", "continuonbrain", "adapt", "--config", str(DONKEY), "--rlds-dir", str(seed["gain05"]),
           "--model-root", str(root), "--events", str(events), "--json"]  # fmt: skip
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return [*cmd, *extra]


def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]  # a torn last line is skipped


def _adapter_dir(root: Path, result: dict) -> Path:
    """Where the run's adapter ended up: current/ when promoted, rejected/<version>/ otherwise."""
    return root / "current" if result["promoted"] else root / "rejected" / result["candidate_version"]


def test_kill_9_during_adaptation_then_resume_gives_the_uninterrupted_adapter(seed, tmp_path: Path) -> None:
    """A real ``continuonbrain adapt`` process is killed with SIGKILL mid-training (after its
    first checkpoint); ``adapt --resume`` continues from the checkpoint with the same episodes
    and ends with the uninterrupted run's adapter, byte for byte."""
    import signal

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    a_root, b_root = fresh_store(seed, tmp_path / "a"), fresh_store(seed, tmp_path / "b")
    a = subprocess.run(
        _adapt(seed, a_root, tmp_path / "a" / "logs", tmp_path / "a" / "events.jsonl"),
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert a.returncode in (0, 1), a.stderr
    a_result = json.loads(a.stdout)
    assert a_result["steps"] == RESUME_STEPS and a_result["stop_reason"] == "max_steps", a_result

    logs, events = tmp_path / "b" / "logs", tmp_path / "b" / "events.jsonl"

    def ready() -> bool:
        steps = [e["step"] for e in _read_events(events) if e.get("event") == "step"]
        return bool(steps) and steps[-1] >= RESUME_KILL_AFTER

    code = signal_when(_adapt(seed, b_root, logs, events), tmp_path / "killed.log", ready, signal.SIGKILL, env=env)
    assert code == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    run_state = logs / "adapt-run"
    assert (run_state / "checkpoint.safetensors").is_file() and (run_state / "job.json").is_file()
    assert not (b_root / "candidate").exists()  # killed mid-training: nothing reached the store

    b = subprocess.run(
        _adapt(seed, b_root, logs, events, "--resume"), capture_output=True, text=True, timeout=300, env=env
    )
    assert b.returncode == a.returncode, b.stderr
    b_result = json.loads(b.stdout)
    # It resumed from a checkpoint written before the kill (not from scratch) ...
    resumed = [e["step"] for e in _read_events(events) if e.get("event") == "resumed"]
    assert resumed == [b_result["resumed_from_step"]], resumed
    assert resumed[0] > 0 and resumed[0] % RESUME_CHECKPOINT_EVERY == 0 and resumed[0] < RESUME_STEPS
    # ... and ended with the uninterrupted run's adapter, its losses and its gate decision.
    assert b_result["steps"] == RESUME_STEPS and b_result["status"] == a_result["status"]
    assert b_result["losses"] == a_result["losses"] and b_result["final_loss"] == a_result["final_loss"]
    assert b_result["after_avg_action_delta"] == a_result["after_avg_action_delta"]
    a_dir, b_dir = _adapter_dir(a_root, a_result), _adapter_dir(b_root, b_result)
    weights = "adapter_model.safetensors"
    assert sha256(b_dir / weights) == sha256(a_dir / weights), "the resumed adapter differs"
    a_cfg, b_cfg = (json.loads((d / "adapter_config.json").read_text()) for d in (a_dir, b_dir))
    assert {**a_cfg, "base_model_name_or_path": None} == {**b_cfg, "base_model_name_or_path": None}
    assert not run_state.exists()  # the candidate is in the store: nothing is left to resume
    # One log for the run: the killed run's, continued.
    assert b_result["log_path"] == json.loads((run_state.parent / "status.json").read_text())["latest_log"]
    assert len(list(logs.glob("adapt_*.jsonl"))) == 1


def test_a_stopped_dry_run_resumes_to_the_uninterrupted_result(seed, tmp_path: Path) -> None:
    """A stop request (SIGTERM in the command) checkpoints and ends the run "interrupted" with
    nothing in the store; ``resume=True`` finishes it exactly as an uninterrupted run."""
    full = maybe_run_local_training(job(tmp_path / "full", seed["gain05"], fresh_store(seed, tmp_path / "full"),
                                        max_steps=30), build_stub_hooks())  # fmt: skip
    assert full.status == "dry_run" and full.steps == 30

    root = fresh_store(seed, tmp_path / "stopped")
    cfg = job(tmp_path / "stopped", seed["gain05"], root, max_steps=30)
    steps: list[int] = []
    record = lambda e: steps.append(e["step"]) if e.get("event") == "step" else None  # noqa: E731
    stopped = maybe_run_local_training(
        cfg, build_stub_hooks(), on_event=record, stop_requested=lambda: bool(steps) and steps[-1] >= 10
    )
    assert stopped.status == "interrupted" and stopped.stop_reason == "stopped" and stopped.steps == 10
    assert "--resume" in stopped.reason and not (root / "candidate").exists() and not (root / "rejected").exists()
    status = json.loads((tmp_path / "stopped" / "logs" / "status.json").read_text())
    assert status["status"] == "interrupted"

    done = maybe_run_local_training(cfg, build_stub_hooks(), resume=True)
    assert done.status == "dry_run" and done.resumed_from_step == 10 and done.steps == 30
    assert done.losses == full.losses and done.final_loss == full.final_loss
    stub = lambda result, root: (root / "rejected" / result.candidate_version / "stub_adapter.json").read_text()  # noqa: E731
    assert stub(done, root) == stub(full, tmp_path / "full" / "models")
    # Without --resume a new run starts afresh (and discards an unfinished one).
    again = maybe_run_local_training(cfg, build_stub_hooks(), resume=False)
    assert again.status == "dry_run" and again.resumed_from_step is None


def test_adaptation_pauses_while_the_soc_is_hot_and_a_memory_stop_is_resumable(seed, tmp_path: Path) -> None:
    """The seed trainer's thermal policy: above thermal.max_temp_c the run pauses between steps
    (logged), resumes below resume_temp_c and trains its whole budget; the memory guard
    checkpoints and interrupts, as in the seed trainer."""
    import threading

    sysfs = fake_sysfs(tmp_path / "sys", temp_c=86.0, battery_percent=90)
    root = fresh_store(seed, tmp_path)
    cfg = job(tmp_path, seed["gain05"], root, max_steps=12).with_overrides(
        {"thermal.sysfs_root": str(sysfs), "thermal.poll_s": 0.05}
    )
    events: list[dict] = []
    temp = sysfs / "class" / "thermal" / "thermal_zone0" / "temp"
    cooler = threading.Timer(0.5, lambda: temp.write_text("65000\n"))
    cooler.start()
    result = maybe_run_local_training(cfg, build_stub_hooks(), on_event=events.append)
    cooler.join()
    assert result.status == "dry_run" and result.steps == 12 and result.stop_reason == "max_steps"
    pauses = [e for e in events if e["event"] in ("thermal_pause", "thermal_resume")]
    assert [(e["event"], e["component"], e["step"]) for e in pauses] == [
        ("thermal_pause", "lora", 0),
        ("thermal_resume", "lora", 0),
    ]
    assert pauses[0]["temp_c"] == 86.0 and pauses[1]["temp_c"] == 65.0 and pauses[1]["paused_s"] > 0
    # One event format: steps are the seed trainer's records, with the component "lora".
    step = next(e for e in events if e["event"] == "step")
    assert step["component"] == "lora" and {"step", "loss", "rss_mb", "time"} <= set(step)
    assert [e["event"] for e in events if e.get("component") == "lora" and e["event"].startswith("component")] == [
        "component_start",
        "component_done",
    ]

    tight = cfg.with_overrides({"budgets.memory_budget_mb": 1.0})
    stopped = maybe_run_local_training(tight, build_stub_hooks())
    assert stopped.status == "interrupted" and stopped.stop_reason == "memory" and stopped.steps == 1
    assert stopped.stop_detail.startswith("memory: process RSS")
    assert (tmp_path / "logs" / "adapt-run-stub" / "checkpoint.safetensors").is_file()
    done = maybe_run_local_training(cfg, build_stub_hooks(), resume=True)
    assert done.status == "dry_run" and done.resumed_from_step == 1 and done.steps == 12


def test_a_stub_dry_run_loads_no_torch(episodes_dir: Path, tmp_path: Path) -> None:
    """Dry runs (and the command's parser) stay light: episodes, budgets, checkpoints, the gate
    and the store's rotation all run without importing torch."""
    code = f"""
import sys
from continuonbrain.trainer import LocalTrainerJobConfig, build_stub_hooks, maybe_run_local_training
cfg = LocalTrainerJobConfig(rlds_dir={str(episodes_dir)!r}, model_root={str(tmp_path / "models")!r},
                            log_dir={str(tmp_path / "logs")!r}, data={{"min_episodes": 2}},
                            budgets={{"max_steps": 12}}, training={{"checkpoint_every": 5}},
                            safety={{"eval_tail_episodes": 1}}, thermal={{"sysfs_root": {str(tmp_path)!r}}})
result = maybe_run_local_training(cfg, build_stub_hooks())
import continuonbrain.cli
continuonbrain.cli.build_parser()
print(result.status, result.steps, "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dry_run", "12", "False"]
