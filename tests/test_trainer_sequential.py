"""HOPE sequential training on simulator episodes: convergence, memory and thermal guards,
dependency checks, the candidate slot. Resume after kill -9 is in test_trainer_resume.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from continuonbrain.hope import HopeBrain
from continuonbrain.trainer.sequential import SequentialTrainer, TrainingError
from continuonbrain.trainer.train_config import SequentialConfig


@pytest.fixture(scope="module")
def reach_episodes(tmp_path_factory) -> Path:
    from continuonbrain.sim.collect import collect_to_dir

    out = tmp_path_factory.mktemp("reach") / "episodes"
    collect_to_dir("reach2d", 60, out, seed=0, dart_sigma=0.1)
    return out


def small_config(tmp: Path, episodes: Path, steps: int = 100, **overrides) -> SequentialConfig:
    comps = {
        "vqvae": {"max_steps": steps, "batch_size": 128, "checkpoint_every": 10, "shuffle_buffer": 1024},
        "mid_loop": {"max_steps": steps, "batch_size": 16, "window_s": 2.0, "checkpoint_every": 10},
        "fast_loop": {"max_steps": steps, "batch_size": 64, "window_s": 0.1, "checkpoint_every": 10},
    }
    data = {
        "rlds_dir": str(episodes),
        "model_root": str(tmp / "models"),
        "run_dir": str(tmp / "run"),
        "torch_threads": 1,
        "normalizer_episodes": 60,
        "components": comps,
        "thermal": {"sysfs_root": str(tmp / "no-sysfs")},
        **overrides,
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(data))
    return SequentialConfig.from_json(path)


def test_every_component_halves_its_loss_within_100_steps(tmp_path: Path, reach_episodes: Path) -> None:
    cfg = small_config(tmp_path, reach_episodes, steps=100)
    summary = SequentialTrainer(cfg).run()
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for name in ("vqvae", "mid_loop", "fast_loop"):
        c = on_disk["components"][name]
        assert c["steps"] == 100 and c["stop_reason"] == "max_steps"
        assert c["final_loss"] < 0.5 * c["initial_loss"], (name, c)
        assert c["halved"] is True and c["peak_rss_mb"] > 0
    assert on_disk["all_halved"] is True
    # metrics.jsonl: one line per step with the scientific fields.
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    fast = [r for r in lines if r.get("component") == "fast_loop" and "loss" in r]
    assert len(fast) == 100
    for key in ("loss", "bc_mse", "lr", "grad_norm", "steps_per_s", "rss_mb", "temp_c", "wall_time_s"):
        assert key in fast[-1]
    # The candidate slot holds all three components with a verified manifest, and loads.
    candidate = tmp_path / "models" / "candidate"
    manifest = json.loads((candidate / "manifest.json").read_text())
    assert manifest["components"] == ["vqvae", "mid_loop", "fast_loop"] and manifest["kind"] == "hope-seed"
    assert set(manifest["files"]) == {
        "vqvae.safetensors",
        "mid_loop.safetensors",
        "fast_loop.safetensors",
        "config.json",
    }
    brain = HopeBrain.load(candidate)
    assert brain.components() == ["vqvae", "mid_loop", "fast_loop"]
    assert not list(candidate.glob("*.pt")) and not list(candidate.glob("*.pkl"))


def test_memory_guard_checkpoints_and_stops_with_a_reason(tmp_path: Path, reach_episodes: Path) -> None:
    cfg = small_config(tmp_path, reach_episodes, steps=50, order=["vqvae"])
    cfg.components["vqvae"].memory_budget_mb = 1.0
    cfg.components["vqvae"].memory_check_every = 3
    summary = SequentialTrainer(cfg).run()
    vq = summary["components"]["vqvae"]
    assert vq["steps"] == 3 and vq["stop_reason"].startswith("memory: process RSS")
    assert (tmp_path / "run" / "checkpoints" / "vqvae.safetensors").is_file()
    assert (tmp_path / "models" / "candidate" / "vqvae.safetensors").is_file()


def test_thermal_pause_is_logged_and_training_resumes(tmp_path: Path, reach_episodes: Path) -> None:
    zone = tmp_path / "sysfs" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("86000")
    cfg = small_config(tmp_path, reach_episodes, steps=5, order=["vqvae"])
    cfg.thermal.sysfs_root = str(tmp_path / "sysfs")
    cfg.thermal.poll_s = 0.05
    cooler = threading.Timer(0.5, lambda: (zone / "temp").write_text("65000"))
    cooler.start()
    summary = SequentialTrainer(cfg).run()
    cooler.join()
    assert summary["components"]["vqvae"]["steps"] == 5 and summary["components"]["vqvae"]["thermal_pauses"] == 1
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    pause = next(e for e in events if e.get("event") == "thermal_pause")
    resume = next(e for e in events if e.get("event") == "thermal_resume")
    assert pause["temp_c"] == 86.0 and resume["temp_c"] == 65.0 and resume["paused_s"] > 0


def test_dependencies_are_checked(tmp_path: Path, reach_episodes: Path) -> None:
    cfg = small_config(tmp_path, reach_episodes, order=["mid_loop"])
    with pytest.raises(TrainingError, match="mid_loop needs a trained vqvae"):
        SequentialTrainer(cfg).run()
    cfg = small_config(tmp_path, reach_episodes, steps=5, order=["fast_loop"], model={"fast": {"use_context": False}})
    assert SequentialTrainer(cfg).run()["components"]["fast_loop"]["steps"] == 5


def test_no_episodes_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = small_config(tmp_path, tmp_path / "empty")
    with pytest.raises(TrainingError, match="no readable episodes"):
        SequentialTrainer(cfg).run()
