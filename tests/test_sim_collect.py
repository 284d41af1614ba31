"""Collecting RLDS episodes from the built-in envs: columns, conventions, metadata, DART, writing."""

from __future__ import annotations

import json
import socket

import gymnasium
import numpy as np
import pytest

import continuonbrain
from continuonbrain.rlds import Episode, read_episodes
from continuonbrain.rlds.schema import check_metadata, upload_problems
from continuonbrain.sim import collect_episodes, collect_to_dir, make_expert, rollout
from continuonbrain.sim.collect import episode_seed


def replay_expert(ep: Episode) -> np.ndarray:
    """The clean expert actions for an episode's recorded observations."""
    expert = make_expert(ep.metadata["environment_id"])
    return np.stack([expert.act(o) for o in ep.observation])


def test_reach2d_episode_columns_and_step_conventions():
    eps = list(collect_episodes("reach2d", 3, seed=4))
    assert len(eps) == 3
    for ep in eps:
        n = len(ep)
        assert ep.observation.shape == (n, 10) and ep.observation.dtype == np.float32
        assert ep.action.shape == (n, 2) and ep.action.dtype == np.float32
        assert ep.reward.shape == ep.discount.shape == (n,)
        assert ep.is_first.tolist() == [True] + [False] * (n - 1)
        assert ep.is_last.tolist() == [False] * (n - 1) + [True]
        # The expert succeeds, so every episode ends by termination, not truncation.
        assert ep.is_terminal.tolist() == [False] * (n - 1) + [True]
        assert ep.metadata["outcome"]["success"] and n < 200
        np.testing.assert_allclose(ep.timestamp, np.arange(n) * 0.02, atol=1e-12)
        assert ep.control_hz == pytest.approx(50.0)
        assert (np.abs(ep.action) <= 1).all()
        np.testing.assert_array_equal(ep.action, replay_expert(ep))
        assert ep.reward[-1] > 0 > ep.reward[:-1].max()  # success bonus only on the last step
        assert float(ep.reward.sum()) == pytest.approx(ep.metadata["outcome"]["return"], rel=1e-5)


def test_step_t_holds_the_observation_before_its_action():
    ep = next(collect_episodes("reach2d", 1, seed=0))
    env = gymnasium.make("reach2d")
    obs, _ = env.reset(seed=ep.metadata["episode_seed"])
    for t in range(len(ep)):
        np.testing.assert_array_equal(ep.observation[t], obs)
        obs, reward, *_ = env.step(ep.action[t])
        assert ep.reward[t] == pytest.approx(reward)


def test_track2d_episodes_are_truncated_not_terminal():
    ep = next(collect_episodes("track2d", 1))
    assert len(ep) == 200 and ep.is_last[-1] and not ep.is_terminal.any()
    assert not ep.metadata["outcome"]["success"]
    assert ep.metadata["outcome"]["tracking_error"] < 0.3
    short = next(collect_episodes("track2d", 1, env_kwargs={"max_steps": 25}))
    assert len(short) == 25 and short.metadata["environment_kwargs"] == {"max_steps": 25}


def test_metadata_is_complete_continuon_v1_1():
    eps = list(collect_episodes("reach2d", 13, seed=0))
    meta = eps[12].metadata
    assert meta["schema_version"] == "1.1"
    assert meta["episode_id"] == "reach2d-s0-000012"
    assert eps[0].metadata["episode_id"] == "reach2d-s0-000000"
    assert meta["robot_id"] == "sim-reach2d" and meta["robot_model"] == "continuon-sim-2link"
    assert meta["xr_mode"] == "none" and meta["control_role"] == "expert"
    assert meta["environment_id"] == "reach2d" and meta["tags"] == ["sim", "reach2d"]
    assert meta["software"] == {"name": "continuonbrain", "version": continuonbrain.__version__}
    caps = meta["capabilities"]
    assert caps["control_hz"] == 50 and meta["control_hz"] == 50
    assert caps["observation_names"][:2] == ["cos_q1", "sin_q1"] and len(caps["observation_names"]) == 10
    assert caps["action_space"]["shape"] == [2] and caps["action_space"]["low"] == [-1.0, -1.0]
    assert meta["safety"] == {
        "pii_attestation": "synthetic",
        "pii_cleared": True,
        "pii_redacted": False,
        "pending_review": False,
        "content_rating": "general",
    }
    assert meta["share"] == {"public": False}
    prov = meta["provenance"]
    assert prov["origin"] == "sim:reach2d" and prov["source_commit"] == ""
    assert prov["source_host"] == socket.gethostname()
    assert "seed=0" in prov["notes"] and "dart_sigma=0.0" in prov["notes"]
    assert meta["seed"] == 0 and meta["episode_index"] == 12 and meta["episode_seed"] == episode_seed(0, 12)
    check_metadata(meta)
    assert upload_problems(meta) == []
    json.dumps(meta)  # all plain JSON


def test_collection_is_deterministic_and_seeds_do_not_overlap():
    a = list(collect_episodes("reach2d", 2, seed=7, dart_sigma=0.2))
    b = list(collect_episodes("reach2d", 2, seed=7, dart_sigma=0.2))
    c = list(collect_episodes("reach2d", 2, seed=8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.observation, y.observation)
        np.testing.assert_array_equal(x.action, y.action)
        assert x.step_metadata == y.step_metadata
    assert not np.array_equal(a[1].observation[0], c[0].observation[0])  # seed 8 is not seed 7 shifted


def test_dart_noise_changes_executed_but_not_recorded_actions():
    ep = next(collect_episodes("reach2d", 1, seed=3, dart_sigma=0.3))
    executed = np.array([m["executed_action"] for m in ep.step_metadata], np.float32)
    # Recorded: exactly what the clean expert says for the states visited.
    np.testing.assert_array_equal(ep.action, replay_expert(ep))
    # Executed: noisy, within bounds, and really what drove the env.
    assert np.abs(executed - ep.action).mean() > 0.05 and (np.abs(executed) <= 1).all()
    env = gymnasium.make("reach2d")
    obs, _ = env.reset(seed=ep.metadata["episode_seed"])
    for t in range(len(ep)):
        np.testing.assert_array_equal(obs, ep.observation[t])
        obs, *_ = env.step(executed[t])
    clean = next(collect_episodes("reach2d", 1, seed=3))
    assert clean.step_metadata is None and "dart_sigma=0.3" in ep.metadata["provenance"]["notes"]


def test_random_callable_and_generic_policies():
    rand = next(collect_episodes("reach2d", 1, policy="random", env_kwargs={"max_steps": 30}))
    assert rand.metadata["control_role"] == "random" and len(rand) == 30
    again = next(collect_episodes("reach2d", 1, policy="random", env_kwargs={"max_steps": 30}))
    np.testing.assert_array_equal(rand.action, again.action)

    calls = []

    def hold_still(obs):
        calls.append(obs)
        return [5.0, 0.0]  # out of bounds: recorded clipped

    ep = next(collect_episodes("reach2d", 1, policy=hold_still, env_kwargs={"max_steps": 5}))
    assert ep.metadata["control_role"] == "policy" and len(calls) == 5
    assert ep.action.tolist() == [[1.0, 0.0]] * 5
    with pytest.raises(ValueError, match="unknown policy"):
        next(collect_episodes("reach2d", 1, policy="teleop"))


def test_any_gymnasium_box_env_collects_with_random_fallback():
    ep = next(collect_episodes("Pendulum-v1", 1, seed=0, max_steps=20))
    assert ep.metadata["control_role"] == "random" and ep.metadata["robot_model"] == "gymnasium:Pendulum-v1"
    assert len(ep) == 20 and ep.observation.shape == (20, 3) and not ep.is_terminal.any()
    assert ep.metadata["capabilities"]["observation_names"] == ["obs_0", "obs_1", "obs_2"]
    assert ep.control_hz == pytest.approx(20.0)  # Pendulum's dt = 0.05
    with pytest.raises(ValueError, match="only Box"):
        next(collect_episodes("CartPole-v1", 1))


def test_rollout_reports_generic_metrics():
    result = rollout(gymnasium.make("reach2d"), "expert", seed=episode_seed(0, 0))
    assert result["success"] and result["terminated"] and not result["truncated"]
    assert result["final_distance"] <= 0.05 and result["tracking_error"] > result["final_distance"]
    assert set(result) >= {"return", "length", "success", "final_distance", "tracking_error"}
    pend = rollout(gymnasium.make("Pendulum-v1"), lambda obs: [0.0], seed=1, max_steps=15)
    assert pend["length"] == 15 and pend["truncated"] and pend["success"] is None  # Pendulum has no notion of success
    assert pend["final_distance"] is None and pend["tracking_error"] is None


def test_collect_to_dir_continuon_round_trip(tmp_path):
    out = tmp_path / "reach"
    summary = collect_to_dir("reach2d", 3, out, format="continuon", seed=1, dart_sigma=0.1)
    assert summary["episodes"] == 3 and summary["format"] == "continuon" and summary["success_rate"] == 1.0
    assert summary["control_role"] == "expert" and len(summary["paths"]) == 3
    back = sorted(read_episodes(out), key=lambda e: e.episode_id)
    orig = list(collect_episodes("reach2d", 3, seed=1, dart_sigma=0.1))
    assert summary["steps"] == sum(len(e) for e in orig)
    for a, b in zip(orig, back, strict=True):
        assert b.episode_id == a.episode_id == f"reach2d-s1-{orig.index(a):06d}"
        np.testing.assert_allclose(b.observation, a.observation, rtol=1e-6)
        np.testing.assert_allclose(b.action, a.action, rtol=1e-6)
        assert b.is_terminal.tolist() == a.is_terminal.tolist()
        assert b.metadata["provenance"] == a.metadata["provenance"]
        assert b.control_hz == pytest.approx(50.0)


def test_collect_to_dir_tfds(tmp_path):
    pytest.importorskip("continuonbrain.rlds.tfds")
    summary = collect_to_dir("track2d", 2, tmp_path / "ds", format="tfds", seed=0, env_kwargs={"max_steps": 40})
    assert summary["episodes"] == 2 and summary["steps"] == 80
    back = list(read_episodes(tmp_path / "ds"))
    assert len(back) == 2 and all(len(e) == 40 for e in back)
    orig = list(collect_episodes("track2d", 2, seed=0, env_kwargs={"max_steps": 40}))
    by_id = {e.episode_id: e for e in back}
    for a in orig:
        np.testing.assert_allclose(by_id[a.episode_id].observation, a.observation, rtol=1e-6)
