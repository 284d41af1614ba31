"""``continuonbrain.models`` (store, gate) and ``continuonbrain.robot`` (sensors, gates on
training): where they may import from, that the store needs no torch, that the old
``continuonbrain.trainer.*`` paths still hand out the same objects, and the one gate path's
rules (real episodes only, newest first, frames decoded per step, stubs never promoted)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import make_image_episode, png_bytes

import continuonbrain
from continuonbrain.models.promotion import (
    GatePolicy,
    apply_gate,
    gate_candidate,
    hold_out,
    step_observations,
    tail_episodes,
)
from continuonbrain.models.safety import SafetyGateConfig
from continuonbrain.models.store import MANIFEST, PromotionStore
from continuonbrain.rlds import Episode, LazyImage, write_episodes
from continuonbrain.robot.watermark import EpisodeWatermark

PACKAGE = Path(continuonbrain.__file__).parent
REPO = PACKAGE.parent


# --------------------------------------------------------------------------- import direction


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``continuonbrain`` module a file imports, wherever the import is (module level,
    functions, ``TYPE_CHECKING`` blocks), as ``(line, dotted name)``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.startswith("continuonbrain.")]


#: The training configs are typed, torch-free and import nothing of the training loop: the
#: server builds its jobs' configs from them (never raw JSON dicts), and runs the loop itself in
#: a child process.
CONFIG_MODULES = ("continuonbrain.trainer.train_config", "continuonbrain.trainer.lora_config")


def _offending(folder: str, allowed: tuple[str, ...], modules: tuple[str, ...] = ()) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for line, name in _imports(path):
            top = name.split(".")[1]
            if top not in allowed and not any(name == m or name.startswith(m + ".") for m in modules):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return sorted(set(bad))


@pytest.mark.parametrize("folder", ["models", "robot"])
def test_models_and_robot_import_only_rlds_hope_and_fsutil(folder: str) -> None:
    """(and ``config_base``, the leaf module their configs derive from)"""
    assert _offending(folder, ("models", "robot", "rlds", "hope", "fsutil", "config_base", "lazy")) == []


def test_robot_does_not_import_the_model_store_or_the_hope_model() -> None:
    assert _offending("robot", ("robot", "rlds", "fsutil", "config_base", "lazy")) == []


@pytest.mark.parametrize(
    ("folder", "allowed"),
    [
        ("runtime", ("hope", "models", "robot", "rlds", "fsutil", "config_base", "runtime", "sim")),
        ("sim", ("hope", "models", "robot", "rlds", "fsutil", "config_base", "sim")),
        ("integrations", ("hope", "models", "runtime", "config_base", "integrations")),
    ],
)
def test_runtime_and_sim_never_import_the_training_package(folder: str, allowed: tuple[str, ...]) -> None:
    """The runtime reaches the store, the gate and the sensors through models/ and robot/;
    training runs as a child process, so nothing of trainer/ but its typed configs is imported here."""
    assert _offending(folder, allowed, CONFIG_MODULES if folder == "runtime" else ()) == []


@pytest.mark.parametrize("name", ["cli.py", "demo.py"])
def test_cli_and_demo_take_the_store_and_gates_from_their_new_homes(name: str) -> None:
    moved = ("store", "safety", "promotion", "scheduler", "budgets")
    bad = [
        f"{name}:{line} imports {mod}"
        for line, mod in _imports(PACKAGE / name)
        if mod.startswith("continuonbrain.trainer.") and mod.split(".")[2] in moved
    ]
    assert bad == []


# --------------------------------------------------------------------------- no torch, old paths


def _fresh_modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout  # fmt: skip
    return set(out.split())


def test_the_store_imports_neither_torch_nor_numpy() -> None:
    loaded = _fresh_modules("import continuonbrain.models.store")
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "numpy")}


def test_the_gate_the_sensors_and_the_old_paths_import_without_torch() -> None:
    loaded = _fresh_modules(
        "import continuonbrain.models, continuonbrain.models.safety, continuonbrain.models.promotion\n"
        "import continuonbrain.robot.sensors, continuonbrain.robot.gates, continuonbrain.robot.watermark\n"
        "import continuonbrain.trainer.store, continuonbrain.trainer.safety, continuonbrain.trainer.promotion\n"
        "import continuonbrain.trainer.scheduler, continuonbrain.trainer.budgets\n"
        "from continuonbrain.models import PromotionStore, promote_candidate\n"
        "from continuonbrain.robot import EpisodeWatermark, evaluate_gates"
    )
    assert "torch" not in loaded


OLD_TO_NEW = {
    "continuonbrain.trainer.store": ["continuonbrain.models.store"],
    "continuonbrain.trainer.safety": ["continuonbrain.models.safety"],
    "continuonbrain.trainer.promotion": ["continuonbrain.models.promotion"],
    "continuonbrain.trainer.scheduler": [
        "continuonbrain.robot.gates",
        "continuonbrain.robot.sensors",
        "continuonbrain.robot.watermark",
    ],
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_paths_hand_out_the_very_objects_of_the_new_homes(old: str) -> None:
    module = importlib.import_module(old)
    homes = [importlib.import_module(n) for n in OLD_TO_NEW[old]]
    names = [n for n in module.__all__ if n != "run_if_idle"]
    assert names
    for name in names:
        assert any(getattr(h, name, None) is getattr(module, name) for h in homes), f"{old}.{name}"


def test_budgets_and_the_packages_lazy_names_are_the_moved_objects() -> None:
    from continuonbrain import models, robot, trainer
    from continuonbrain.models import safety, store
    from continuonbrain.robot import gates, sensors
    from continuonbrain.trainer import budgets

    assert budgets.read_temperature_c is sensors.read_temperature_c
    assert trainer.SafetyGateConfig is safety.SafetyGateConfig and trainer.GatingConfig is gates.GatingConfig
    assert models.PromotionStore is store.PromotionStore and robot.read_sensors is sensors.read_sensors


# --------------------------------------------------------------------------- the one gate path


def episode(eid: str, action: float, n: int = 6, imagined: bool = False) -> Episode:
    rows = [{"observation": [float(t), 0.0], "action": [action, action]} for t in range(n)]
    origin = "imagined:cem:v1" if imagined else "robot"
    return Episode.from_steps(rows, {"episode_id": eid, "provenance": {"origin": origin}})


def store_with(tmp_path: Path, kind: str = "test", current: bool = False) -> PromotionStore:
    store = PromotionStore(tmp_path / "models")
    weights = tmp_path / "weights.bin"
    if current:
        weights.write_bytes(b"current")
        store.write_slot("candidate", [weights], components=["w"], kind="test")
        store.promote({"passed": True, "reason": "setup"})
    weights.write_bytes(b"candidate")
    store.write_slot("candidate", [weights], components=["w"], kind=kind)
    return store


def constant(value: float, calls: list[Path] | None = None) -> Any:
    def load(slot: Path) -> GatePolicy:
        if calls is not None:
            calls.append(slot)
        return GatePolicy(act=lambda obs: np.full(2, value))

    return load


def test_imagined_episodes_never_judge_a_candidate(tmp_path: Path) -> None:
    """The candidate copies the real episodes perfectly and the imagined ones not at all: it
    passes, judged on the real ones only, whoever hands the imagined ones in."""
    real = [episode(f"r{i}", 0.0) for i in range(3)]
    imagined = [episode(f"i{i}", 0.9, imagined=True) for i in range(3)]
    store = store_with(tmp_path)
    result = gate_candidate(store, [*real, *imagined], SafetyGateConfig(), constant(0.0))
    assert result.passed, result.reason
    assert result.candidate["episodes"] == 3 and result.candidate["steps"] == 18
    only_imagined = gate_candidate(store, imagined, SafetyGateConfig(), constant(0.9))
    assert not only_imagined.passed and "no evaluation data" in only_imagined.reason

    # The held-out sets both paths pick: real episodes only (imagined ones stay training data).
    train, held = hold_out([real[0], imagined[0], real[1], imagined[1], real[2]], 2)
    assert [e.metadata["episode_id"] for e in held] == ["r1", "r2"]
    assert [e.metadata["episode_id"] for e in train] == ["r0", "i0", "i1"]
    write_episodes([*real, *imagined], tmp_path / "rlds")
    assert all(not ep.is_imagined for ep in tail_episodes(tmp_path / "rlds", 5))
    assert len(tail_episodes(tmp_path / "rlds", 5)) == 3 and tail_episodes(tmp_path / "rlds", 0) == []


def test_the_newest_episodes_get_the_step_budget(tmp_path: Path) -> None:
    old, new = episode("a_old", 0.9), episode("b_new", 0.0)
    cfg = SafetyGateConfig(max_eval_steps=len(new))
    result = gate_candidate(store_with(tmp_path), [old, new], cfg, constant(0.0))
    assert result.passed and result.candidate["episodes"] == 1 and result.candidate["avg_action_delta"] == 0.0


def test_frames_are_decoded_one_step_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = make_image_episode(n=5)
    decoded: list[LazyImage] = []
    seen: list[int] = []
    original = LazyImage.decode

    def counting_decode(self: LazyImage) -> np.ndarray:
        decoded.append(self)
        return original(self)

    monkeypatch.setattr(LazyImage, "decode", counting_decode)
    config = SimpleNamespace(state_keys=["state"], image_keys=["camera"])

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        assert obs["camera"].shape == (8, 6, 3) and obs["state"].dtype == np.float32
        seen.append(len(decoded))
        return np.array([0.1 * int(obs["state"][0]), 0.5])

    load = lambda slot: GatePolicy(act=act, observations=step_observations(config))  # noqa: E731
    result = gate_candidate(store_with(tmp_path), [ep], SafetyGateConfig(), load, action_keys=["steering", "throttle"])
    assert result.passed, result.reason
    assert seen == [1, 2, 3, 4, 5]  # the frame of step t is decoded when step t is acted on, not before


def test_a_stub_is_run_in_shadow_and_never_promoted(tmp_path: Path) -> None:
    store = store_with(tmp_path, kind="stub", current=True)
    before = store.current_version()
    calls: list[Path] = []
    result = gate_candidate(store, [episode("r", 0.0)], SafetyGateConfig(), constant(0.0, calls))
    assert not result.passed and "stub" in result.reason and result.candidate["steps"] == 6
    assert result.current is None and calls == [store.slot("candidate")]  # the current model was not run
    apply_gate(store, result)
    assert store.current_version() == before and not store.slot("candidate").exists()
    assert store.audit()[-1]["decision"] == "rejected" and "stub" in store.audit()[-1]["reason"]


def test_a_candidate_whose_files_changed_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    store = store_with(tmp_path)
    (store.slot("candidate") / "weights.bin").write_bytes(b"tampered")
    calls: list[Path] = []

    def episodes() -> list[Episode]:
        raise AssertionError("episodes read for a candidate that does not verify")

    result = gate_candidate(store, episodes, SafetyGateConfig(), constant(0.0, calls))
    assert not result.passed and "do not match its manifest" in result.reason and calls == []


def test_load_errors_and_regressions_reject_and_the_current_model_is_the_reference(tmp_path: Path) -> None:
    store = store_with(tmp_path, current=True)
    eps = [episode("r", 0.0)]

    def broken(slot: Path) -> GatePolicy:
        raise RuntimeError("bad weights")

    result = gate_candidate(store, eps, SafetyGateConfig(), broken)
    assert not result.passed and "cannot load the candidate: RuntimeError: bad weights" in result.reason

    def by_slot(slot: Path) -> GatePolicy:  # the candidate is worse than the current model
        value = 0.2 if slot == store.slot("candidate") else 0.0
        return GatePolicy(act=lambda obs: np.full(2, value))

    result = gate_candidate(store, eps, SafetyGateConfig(), by_slot)
    assert not result.passed and "worse than the current model" in result.reason
    assert result.current is not None and result.current["avg_action_delta"] == 0.0


# --------------------------------------------------------------------------- the watermark and tubs


def test_the_watermark_counts_a_donkeycar_tub_and_sees_it_grow(tmp_path: Path) -> None:
    """A tub is one entry (the reader's layout rule), and a drive appended to its catalog is new data."""
    rows = [
        {"observation": {"cam/image_array": LazyImage(data=png_bytes(value=t), format="png")}, "action": [0.1, 0.4]}
        for t in range(3)
    ]
    rlds = tmp_path / "rlds"
    write_episodes([Episode.from_steps(rows, {"episode_id": "drive0"})], rlds / "tub", format="tub")
    wm = EpisodeWatermark(rlds, tmp_path / "state")
    assert wm.snapshot().count == 1
    wm.mark_trained()
    assert wm.new_episodes() == 0
    catalog = next((rlds / "tub").glob("catalog_*.catalog"))
    later = catalog.stat().st_mtime_ns + 10**9
    os.utime(catalog, ns=(later, later))
    assert wm.new_episodes() == 1
    # The model store's manifest.json is not a tub, and not an episode.
    (rlds / "models").mkdir()
    (rlds / "models" / MANIFEST).write_text('{"version": "x"}')
    assert wm.snapshot().count == 1
