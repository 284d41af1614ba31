"""The promotion gate: guards, shadow evaluation, decisions, and `models promote` on a real seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from continuonbrain.models.safety import (
    SafetyGateConfig,
    ShadowResult,
    build_simple_action_guards,
    gate,
    shadow_evaluate,
)


def test_guards_on_named_and_vector_actions() -> None:
    distance, violates = build_simple_action_guards(
        per_key_bounds={"steering": (-1.0, 1.0), "throttle": (-1.0, 1.0)}, delta_weight=2.0
    )
    assert violates({"steering": [0.5], "throttle": [0.2]}) is None
    assert "steering" in violates({"steering": [1.5], "throttle": [0.2]})
    assert "not finite" in violates({"steering": [float("nan")], "throttle": [0.2]})
    assert distance({"steering": [0.5], "throttle": [0.0]}, {"steering": [0.0], "throttle": [0.0]}) == 0.5
    named = build_simple_action_guards(per_key_bounds={"throttle": (0.0, 1.0)}, action_names=["steering", "throttle"])
    assert "throttle" in named[1](np.array([0.0, -0.5]))
    limit = build_simple_action_guards(numeric_abs_limit=2.0)
    assert limit[1](np.array([1.0, -3.0])) is not None and limit[1](np.array([1.0, -1.5])) is None


def test_shadow_evaluation_counts_steps_violations_and_errors() -> None:
    distance, violates = build_simple_action_guards(numeric_abs_limit=1.0)
    eps = [(np.zeros((5, 2)), np.full((5, 1), 0.5)), (np.zeros((5, 2)), np.full((5, 1), 0.5))]
    ok = shadow_evaluate(lambda o: np.array([0.25]), lambda: None, eps, distance, violates, max_steps=7)
    assert (ok.steps, ok.episodes, ok.violations) == (7, 2, 0) and ok.avg_action_delta == pytest.approx(0.25)
    bad = shadow_evaluate(lambda o: np.array([3.0]), lambda: None, eps, distance, violates, max_steps=100)
    assert bad.violations == 10 and bad.first_violation.startswith("step 0")

    def boom(o):
        raise RuntimeError("NaN in layer 2")

    err = shadow_evaluate(boom, lambda: None, eps, distance, violates, max_steps=100)
    assert err.error == "RuntimeError: NaN in layer 2"


@pytest.mark.parametrize(
    ("candidate", "current", "passed", "fragment"),
    [
        (ShadowResult(steps=10, avg_action_delta=0.1), None, True, "under 0.4"),
        (ShadowResult(steps=10, avg_action_delta=0.45), None, False, "over the threshold"),
        (ShadowResult(steps=10, avg_action_delta=0.1, violations=1, first_violation="x"), None, False, "bounds"),
        (ShadowResult(error="boom"), None, False, "raised"),
        (ShadowResult(), None, False, "no evaluation data"),
        (ShadowResult(steps=10, avg_action_delta=0.2), ShadowResult(steps=10, avg_action_delta=0.1), False, "worse"),
        (ShadowResult(steps=10, avg_action_delta=0.11), ShadowResult(steps=10, avg_action_delta=0.1), True, "current"),
    ],
)
def test_gate_decisions(candidate, current, passed, fragment) -> None:
    result = gate(candidate, current, SafetyGateConfig())
    assert result.passed is passed and fragment in result.reason
    json.dumps(result.to_dict())  # goes to audit.jsonl and the API as is


def test_no_eval_data_passes_only_when_allowed() -> None:
    assert gate(ShadowResult(), None, SafetyGateConfig(allow_promotion_without_eval=True)).passed


@pytest.fixture(scope="module")
def trained_seed(tmp_path_factory) -> tuple[Path, Path]:
    from continuonbrain.sim.collect import collect_to_dir
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    tmp = tmp_path_factory.mktemp("seed")
    collect_to_dir("reach2d", 40, tmp / "eps", seed=3)
    cfg = SequentialConfig(rlds_dir=str(tmp / "eps"), model_root=str(tmp / "models"), run_dir=str(tmp / "run"))
    cfg.thermal.sysfs_root = str(tmp / "nosys")
    cfg.cap_steps(60)
    SequentialTrainer(cfg).run()
    return tmp / "eps", tmp / "models"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "continuonbrain", *args], capture_output=True, text=True, timeout=120)


def test_models_promote_then_a_corrupted_candidate_is_rejected(trained_seed, tmp_path: Path) -> None:
    import shutil

    eps, models = trained_seed
    root = tmp_path / "models"
    shutil.copytree(models, root, symlinks=True)
    candidate_copy = tmp_path / "candidate-copy"
    shutil.copytree(root / "candidate", candidate_copy)
    proc = run_cli("models", "promote", "--model-root", str(root), "--rlds-dir", str(eps), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["promoted"] is True and out["current"]["gate"]["passed"] is True
    current_bytes = {p.name: p.read_bytes() for p in (root / "current").iterdir()}

    shutil.copytree(candidate_copy, root / "candidate")  # the same weights again, then corrupt one file
    weights = root / "candidate" / "fast_loop.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = run_cli("models", "promote", "--model-root", str(root), "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["promoted"] is False and "sha256" in out["reason"]
    assert {p.name: p.read_bytes() for p in (root / "current").iterdir()} == current_bytes  # byte-identical
    audit = [json.loads(x) for x in (root / "audit.jsonl").read_text().splitlines()]
    assert [a["decision"] for a in audit] == ["promoted", "rejected"]
    listed = json.loads(run_cli("models", "list", "--model-root", str(root), "--json").stdout)
    assert listed["current"]["version"] == out["current"]["version"] and listed["candidate"] is None
