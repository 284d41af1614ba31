"""The camera car segment of ``continuonbrain demo`` (continuonbrain/demo_car.py) at a tiny scale:
it records a Donkeycar tub, trains a pixel brain on it, gates it, serves and scores it, gives the
demo its rows, and a second run reuses everything; a brain the gate rejects is never served."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_CAMERA_MODEL, tiny_components

from continuonbrain.demo_car import CACHE_KEY, run_car
from continuonbrain.models.store import PromotionStore
from continuonbrain.rlds import read_episodes


def tiny(tmp: Path) -> dict[str, Any]:
    return {
        "model": TINY_CAMERA_MODEL,
        "components": tiny_components(4, batch=(16, 2, 16), shuffle_buffer=64),
        "torch_threads": 1,
        "thermal.sysfs_root": str(tmp / "no-sysfs"),
    }


def gate_threshold(workdir: Path, threshold: float) -> None:
    """The car store's own gate config (what ``load_gate_config`` reads): a tiny brain's
    action error decides nothing here, the threshold does."""
    models = workdir / "car" / "models"
    models.mkdir(parents=True)
    (models / "gate_config.json").write_text(json.dumps({"avg_action_delta_threshold": threshold}))


def test_records_a_tub_trains_gates_serves_scores_and_reuses(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gate_threshold(tmp_path, 10.0)
    cache: dict[str, Any] = {}
    car = run_car(tmp_path, cache, tracks=2, eval_episodes=1, overrides=tiny(tmp_path))
    assert car.ok
    # a real Donkeycar tub, read back as two episodes of camera frames and [angle, throttle]
    tub = tmp_path / "car" / "tub"
    assert (tub / "manifest.json").is_file() and (tub / "images").is_dir()
    episodes = list(read_episodes(tub))
    assert len(episodes) == 2
    assert episodes[0].observation["cam/image_array"][0].decode().shape == (120, 160, 3)
    assert episodes[0].action_vector().shape[1] == 2
    # promoted into the car's own store (the arm's store is not touched), a pixel model
    store = PromotionStore(tmp_path / "car" / "models")
    current = store.manifest("current")
    assert current is not None and current["kind"] == "hope-seed"
    assert not (tmp_path / "models").exists()
    config = json.loads((tmp_path / "car" / "models" / "current" / "config.json").read_text())
    assert config["image_keys"] == ["cam/image_array"]
    # scored through BrainService on an unseen track, next to the baselines, cached by version
    scores = cache[CACHE_KEY]
    assert scores["model_version"] == current["version"] and scores["env"] == "drive2d"
    assert scores["episodes"] == 1 and scores["baselines"]["expert"]["success_rate"] == 1.0
    keys = [k for k, _ in car.rows]
    assert keys == ["car: tub recorded", "car: trained", "car: gate", "car: serving"]
    assert dict(car.rows)["car: gate"].startswith("promoted")
    assert "HOPE from pixels" in car.table[1] and "expert" in car.table[2] and "random" in car.table[3]

    # a second run: the tub, the brain and its evaluation are reused, nothing retrained
    capsys.readouterr()
    again = run_car(tmp_path, cache, tracks=2, eval_episodes=1, overrides=tiny(tmp_path))
    out = capsys.readouterr().out
    assert again.ok and "reusing" in out and "training" not in out
    assert store.manifest("current")["version"] == current["version"]
    assert [k for k, _ in again.rows] == ["car: serving"]
    assert again.table == car.table


def test_a_rejected_brain_is_not_served_and_the_segment_fails(tmp_path: Path) -> None:
    gate_threshold(tmp_path, 1e-9)
    cache: dict[str, Any] = {}
    car = run_car(tmp_path, cache, tracks=2, eval_episodes=1, overrides=tiny(tmp_path))
    assert not car.ok
    assert dict(car.rows)["car: gate"].startswith("REJECTED")
    assert CACHE_KEY not in cache and car.table == []
    assert not PromotionStore(tmp_path / "car" / "models").slot("current").exists()
