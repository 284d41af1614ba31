"""Evaluation: seeded episodes, baselines on the same seeds, envs without a notion of success,
and the ``continuonbrain eval`` command driving a trained model through BrainService."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL, main_cli, seed_config, tiny_components

from continuonbrain.cli import main
from continuonbrain.hope import HopeBrain
from continuonbrain.sim.evaluate import evaluate, evaluate_policy, space_dims


def test_reach2d_expert_beats_random_on_the_same_seeds_and_reruns_identically() -> None:
    result = evaluate("reach2d", "expert", episodes=4, seed=3)
    assert result["env"] == "reach2d" and result["episodes"] == 4 and result["distance_metric"] == "final_distance"
    random, expert = result["baselines"]["random"], result["baselines"]["expert"]
    # The expert evaluated as "the policy" and as the baseline ran the very same episodes.
    assert expert == {k: result[k] for k in expert}
    seeds = [row["seed"] for row in result["per_episode"]]
    assert len(set(seeds)) == 4
    assert [row["seed"] for row in random["per_episode"]] == seeds
    assert result["success_rate"] == 1.0 and random["success_rate"] == 0.0
    assert result["mean_final_distance"] < 0.05 < random["mean_final_distance"]
    assert result["mean_return"] > random["mean_return"]
    for row in result["per_episode"]:
        assert row["success"] is True and row["length"] < 200
    assert evaluate("reach2d", "expert", episodes=4, seed=3) == result
    assert evaluate("reach2d", "expert", episodes=4, seed=4)["per_episode"][0]["seed"] not in seeds


class CountingPolicy:
    """A reset/act policy: always the zero action, counting episodes and observations."""

    def __init__(self) -> None:
        self.resets = 0
        self.observations: list[np.ndarray] = []

    def reset(self) -> None:
        self.resets += 1

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.observations.append(obs)
        return np.zeros(2, np.float32)


def test_a_passed_in_policy_is_reset_every_episode_and_sees_flat_float32_observations() -> None:
    policy = CountingPolicy()
    result = evaluate("reach2d", policy, episodes=3, seed=0, max_steps=20, baselines=False)
    assert "baselines" not in result
    assert policy.resets == 3
    assert len(policy.observations) == sum(row["length"] for row in result["per_episode"]) == 60
    assert all(o.dtype == np.float32 and o.shape == (10,) for o in policy.observations)
    # Standing still never reaches a target that starts at least 0.2 away.
    assert result["success_rate"] == 0.0 and all(row["final_distance"] >= 0.2 for row in result["per_episode"])


def test_track2d_scores_the_mean_tracking_error_and_has_no_success() -> None:
    result = evaluate("track2d", "expert", episodes=2, seed=0, max_steps=60)
    assert result["distance_metric"] == "tracking_error"
    assert result["success_rate"] is None and all(row["success"] is None for row in result["per_episode"])
    random = result["baselines"]["random"]
    assert random["success_rate"] is None
    assert result["mean_final_distance"] < random["mean_final_distance"]


def test_an_env_without_success_or_distance_gives_nulls_and_no_expert() -> None:
    result = evaluate("Pendulum-v1", "random", episodes=2, seed=0, max_steps=10)
    assert result["success_rate"] is None and result["mean_final_distance"] is None
    assert result["baselines"]["expert"] is None
    assert result["baselines"]["random"] == {k: result[k] for k in result["baselines"]["random"]}
    assert math.isfinite(result["mean_return"]) and result["mean_length"] == 10
    assert evaluate_policy("Pendulum-v1", "expert", episodes=1) is None
    with pytest.raises(ValueError, match="no scripted expert"):
        evaluate("Pendulum-v1", "expert", episodes=1)
    assert space_dims("Pendulum-v1") == (3, 1) and space_dims("reach2d") == (10, 2)
    with pytest.raises(ValueError, match="episodes"):
        evaluate("reach2d", "random", episodes=0)


# --- the eval command, through BrainService ------------------------------------------------


@pytest.fixture(scope="module")
def pendulum_model(tmp_path_factory) -> Path:
    """A tiny HOPE seed trained on random Pendulum-v1 episodes (3 floats in, 1 torque out):
    training and evaluation work on any RLDS source of float vectors, not only the arm's."""
    from continuonbrain.sim.collect import collect_to_dir

    tmp = tmp_path_factory.mktemp("pendulum")
    episodes = tmp / "episodes"
    summary = collect_to_dir("Pendulum-v1", 3, episodes, seed=0, policy="random", max_steps=40)
    assert summary["episodes"] == 3 and summary["steps"] == 120
    config = seed_config(
        tmp, episodes, name="tiny.json", model=TINY_MODEL, components=tiny_components(4), normalizer_episodes=10
    )
    assert main(["train", "--config", str(config), "--json"]) == 0
    return tmp / "models"


def test_eval_json_drives_the_model_through_brain_service(pendulum_model: Path, capsys) -> None:
    capsys.readouterr()  # the fixture's training summary
    args = ["eval", "--env", "Pendulum-v1", "--model-root", str(pendulum_model), "--slot", "candidate"]
    code, out, err = main_cli(capsys, *args, "--episodes", "2", "--seed", "5", "--json")
    assert code == 0, err
    result = json.loads(out)  # exactly one JSON object on stdout
    manifest = json.loads((pendulum_model / "candidate" / "manifest.json").read_text())
    assert result["env"] == "Pendulum-v1" and result["episodes"] == 2 and result["slot"] == "candidate"
    assert result["model_version"] == manifest["version"] and result["model_versions"] == [manifest["version"]]
    assert result["success_rate"] is None and result["mean_final_distance"] is None
    assert result["baselines"]["expert"] is None
    assert result["baselines"]["random"]["success_rate"] is None
    assert [r["length"] for r in result["per_episode"]] == [200, 200]  # Pendulum's own time limit
    # The same model acting directly, reset at every episode, scores exactly the same:
    # the service started every episode from a fresh state and changed nothing on the way.
    brain = HopeBrain.load(pendulum_model / "candidate")
    # The torque bounds come from the episodes' declared action space, not the [-1, 1] default.
    assert (brain.config.obs_dim, brain.config.action_low, brain.config.action_high) == (3, [-2.0], [2.0])
    direct = evaluate("Pendulum-v1", brain, episodes=2, seed=5, baselines=False)
    assert [r["return"] for r in direct["per_episode"]] == pytest.approx(
        [r["return"] for r in result["per_episode"]], rel=1e-6
    )
    code, out, _ = main_cli(capsys, *args, "--episodes", "1")
    assert code == 0 and "through BrainService.act" in out and "no scripted expert" in out


def test_eval_errors_name_the_problem(pendulum_model: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    code, out, err = main_cli(capsys, "eval", "--env", "reach2d", "--model-root", str(pendulum_model), "--json")
    assert code == 2 and out == "" and "current" in err and "empty" in err
    code, out, err = main_cli(
        capsys, "eval", "--env", "reach2d", "--model-root", str(pendulum_model), "--slot", "candidate", "--json"
    )
    assert code == 2 and out == ""
    assert "does not fit env 'reach2d'" in err and "3 numbers, the env gives 10" in err
    code, _, err = main_cli(capsys, "eval", "--env", "reach2d", "--model-root", str(tmp_path / "nope"))
    assert code == 2 and "no model store" in err
    args = ["eval", "--model-root", str(pendulum_model), "--slot", "candidate"]
    code, _, err = main_cli(capsys, *args, "--env", "NoSuchEnv-v0")
    assert code == 2 and "NoSuchEnv" in err
    code, _, err = main_cli(capsys, *args, "--env", "Pendulum-v1", "--episodes", "0")
    assert code == 2 and "episodes" in err
