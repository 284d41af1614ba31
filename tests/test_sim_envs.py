"""The built-in arm envs and their scripted expert: API, dynamics, determinism, learnability."""

from __future__ import annotations

import importlib
import math
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import continuonbrain.sim as sim
from continuonbrain.sim import ArmExpert, Reach2DEnv, Track2DEnv, make_expert
from continuonbrain.sim.collect import episode_seed, rollout, summarize

ENV_IDS = ["reach2d", "track2d"]


def run(env: gymnasium.Env, actions: list, seed: int) -> list[tuple]:
    out = [env.reset(seed=seed)[0]]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((obs, reward, terminated, truncated, info["distance"]))
    return out


def outcomes(env_id: str, policy: str, n: int, **kwargs) -> list[dict]:
    env = gymnasium.make(env_id, **kwargs)
    return [rollout(env, policy, episode_seed(0, i)) for i in range(n)]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_without_version_and_passes_env_checker(env_id):
    env = gymnasium.make(env_id)
    assert env.spec is not None and env.spec.id == env_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker complaint fails the test
        check_env(env.unwrapped)
        check_env(gymnasium.make(env_id, gain=0.5, target_shift=math.pi).unwrapped)


def test_registration_is_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is overridden
        sim.register_envs()
        importlib.reload(sim)
    assert isinstance(gymnasium.make("reach2d").unwrapped, Reach2DEnv)
    assert isinstance(gymnasium.make("track2d").unwrapped, Track2DEnv)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spaces_rate_and_observation_layout(env_id):
    env = gymnasium.make(env_id).unwrapped
    assert env.control_hz == 50 and env.metadata["control_hz"] == 50 and env.dt == pytest.approx(0.02)
    assert env.observation_space.shape == (10,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    assert list(env.action_space.low) == [-1, -1] and list(env.action_space.high) == [1, 1]
    assert len(env.observation_names) == 10
    obs, _ = env.reset(seed=3)
    for _ in range(7):
        obs, *_ = env.step(np.array([0.7, -0.4], np.float32))
    assert obs.dtype == np.float32
    named = dict(zip(env.observation_names, obs.tolist(), strict=True))
    q1 = math.atan2(named["sin_q1"], named["cos_q1"])
    q2 = math.atan2(named["sin_q2"], named["cos_q2"])
    l1, l2 = env.link_lengths
    assert named["tip_x"] == pytest.approx(l1 * math.cos(q1) + l2 * math.cos(q1 + q2), abs=1e-5)
    assert named["tip_y"] == pytest.approx(l1 * math.sin(q1) + l2 * math.sin(q1 + q2), abs=1e-5)
    assert (named["target_x"], named["target_y"]) == pytest.approx(env.target, abs=1e-6)
    assert named["dq1"] > 0 > named["dq2"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_deterministic_given_seed(env_id):
    actions = list(np.random.default_rng(0).uniform(-1, 1, (30, 2)).astype(np.float32))
    a = run(gymnasium.make(env_id), actions, seed=11)
    b = run(gymnasium.make(env_id), actions, seed=11)
    c = run(gymnasium.make(env_id), actions, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    for x, y in zip(a[1:], b[1:], strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    assert not np.array_equal(a[0], c[0])


def test_actions_are_clipped_and_non_finite_refused():
    big = run(Reach2DEnv(), [[5.0, -7.0]] * 10, seed=1)
    unit = run(Reach2DEnv(), [np.array([1.0, -1.0], np.float32)] * 10, seed=1)
    for x, y in zip(big[1:], unit[1:], strict=True):
        np.testing.assert_array_equal(x[0], y[0])
    env = Reach2DEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step([math.nan, 0.0])


def test_first_order_velocity_dynamics_and_gain():
    env = Reach2DEnv()
    env.reset(seed=0)
    obs, *_ = env.step([1.0, 0.0])
    assert obs[4] == pytest.approx(3.0 * (1 - math.exp(-0.02 / 0.05)), rel=1e-5)
    assert obs[5] == 0.0
    for _ in range(40):
        obs, *_ = env.step([1.0, -1.0])
    assert obs[4] == pytest.approx(3.0, rel=1e-3) and obs[5] == pytest.approx(-3.0, rel=1e-3)
    weak = gymnasium.make("reach2d", gain=0.5, max_steps=500)
    weak.reset(seed=0)
    for _ in range(40):
        obs, *_ = weak.step(np.array([1.0, 1.0], np.float32))
    assert obs[4] == pytest.approx(1.5, rel=1e-3)


def test_target_shift_rotates_the_target_sector():
    def targets(**kw) -> np.ndarray:
        env = gymnasium.make("reach2d", **kw)
        return np.array([env.reset(seed=s)[0][6:8] for s in range(50)])

    base, shifted = targets(), targets(target_shift=math.pi)
    assert (base[:, 0] >= -1e-6).all() and (shifted[:, 0] <= 1e-6).all()
    radii = np.hypot(base[:, 0], base[:, 1])
    assert radii.min() >= 0.3 - 1e-6 and radii.max() <= 0.9 + 1e-6


def test_reach2d_success_hold_termination_and_truncation():
    env = Reach2DEnv()
    obs, info = env.reset(seed=5)
    assert not info["success"] and info["distance"] >= 0.2
    expert = make_expert(env)
    held = 0
    for _ in range(200):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        held = held + 1 if info["in_target"] else 0
        if terminated:
            break
    assert terminated and not truncated and info["success"]
    assert held == env.hold_steps and info["distance"] <= env.success_radius
    assert reward == pytest.approx(-info["distance"] + env.success_bonus)

    short = Reach2DEnv(max_steps=10)
    short.reset(seed=5)
    ends = [short.step([0.0, 0.0])[2:4] for _ in range(10)]
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])


def test_reach2d_expert_reliable_and_random_rarely_succeeds():
    expert = summarize(outcomes("reach2d", "expert", 100))["success_rate"]
    random = summarize(outcomes("reach2d", "random", 100))["success_rate"]
    assert expert >= 0.95
    assert random <= 0.10


def test_track2d_fixed_length_smooth_path_and_expert_beats_random():
    env = Track2DEnv()
    env.reset(seed=2)
    targets, dists = [], []
    for t in range(200):
        _, reward, terminated, truncated, info = env.step([0.3, -0.2])
        targets.append(env.target)
        dists.append(info["distance"])
        assert not terminated and not info["success"]
        assert truncated == (t == 199)
        assert reward == pytest.approx(-info["distance"])
    assert info["tracking_error"] == pytest.approx(np.mean(dists))
    path = np.array(targets)
    radii = np.hypot(path[:, 0], path[:, 1])
    assert radii.min() >= 0.35 - 1e-9 and radii.max() <= 0.85 + 1e-9
    assert np.ptp(path, axis=0).max() > 0.05  # it moves
    assert np.abs(np.diff(path, axis=0)).max() < 2.0 * env.dt  # smoothly (under 2 units/s)

    expert = summarize(outcomes("track2d", "expert", 20))["mean_tracking_error"]
    random = summarize(outcomes("track2d", "random", 20))["mean_tracking_error"]
    assert expert < 0.25 * random


def test_expert_inverse_kinematics_and_unknown_env():
    expert = ArmExpert()
    for x, y, q1, q2 in [(0.6, 0.2, 0.0, 1.0), (-0.3, 0.5, 0.0, -1.0), (0.0, -0.9, 2.0, 0.5)]:
        g1, g2 = expert.inverse_kinematics(x, y, q1, q2)
        assert 0.5 * math.cos(g1) + 0.5 * math.cos(g1 + g2) == pytest.approx(x)
        assert 0.5 * math.sin(g1) + 0.5 * math.sin(g1 + g2) == pytest.approx(y)
        assert math.copysign(1, g2) == math.copysign(1, q2)  # keeps the current elbow side
    action = expert.act(np.array([1, 0, 1, 0, 0, 0, -0.9, 0.0, 1.0, 0.0], np.float32))
    assert np.abs(action).max() == pytest.approx(1.0)  # saturated, scaled as a vector
    with pytest.raises(ValueError, match="no scripted expert"):
        make_expert("CartPole-v1")


def test_oracle_expert_handles_an_inverted_actuator():
    # gain=-1 flips the motors: the naive expert fails, the one built from the env adapts.
    naive = gymnasium.make("reach2d", gain=-1.0)
    assert not rollout(naive, ArmExpert(), episode_seed(0, 0))["success"]
    assert rollout(naive, "expert", episode_seed(0, 0))["success"]
