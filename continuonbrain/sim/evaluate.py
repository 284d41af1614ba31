"""Score a policy over seeded episodes of an env, next to the random and expert baselines.

Why it looks like this:

* **Same seeds for everything.** Episode ``i`` resets the env with
  :func:`~continuonbrain.sim.collect.episode_seed` ``(seed, i)`` for the policy *and* for
  both baselines, so "the model reached 97 targets, the expert 100" compares the same 100
  targets and start poses, and a rerun gives the same numbers. Training data is collected
  with seed 0 by default; evaluating with another base seed scores unseen episodes
  (``episode_seed`` mixes the base seed, so nearby seeds share no episode).
* **Any Box env.** Built-in ids (``reach2d``, ``track2d``) or any gymnasium id whose
  observation and action spaces are Boxes. The policy sees the observation flattened to
  ``float32``, as the trainer stored it in the RLDS episodes it learned from.
* **The policy is passed in, not built here.** ``sim`` must not import ``runtime`` (the
  import direction of DESIGN.md), so the CLI hands in an object with ``reset()`` and
  ``act(obs)`` that drives the served model through ``BrainService.act``: what is scored
  is the very path that serves the robot, not a re-implementation of it.
* **Metrics only where the env has them.** ``success`` is ``None`` for an env whose
  ``info`` has no ``"success"`` (and for ``track2d``, whose ``info["success"]`` is always
  false because tracking has no end state). The distance figure is the tip-to-target
  distance at the last step (``info["distance"]``), except for ``track2d`` where it is the
  mean tracking error over the episode (``info["tracking_error"]``), the task's metric;
  ``None`` where the env reports neither.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from continuonbrain.sim.collect import PolicyLike, episode_seed, make_env, resolve_policy, rollout
from continuonbrain.sim.envs import Track2DEnv
from continuonbrain.sim.experts import has_expert

__all__ = ["EpisodeScore", "evaluate", "evaluate_policy", "percent", "space_dims"]


@dataclass(frozen=True)
class EpisodeScore:
    """One evaluated episode (``None``: the env has no notion of it)."""

    index: int
    seed: int
    length: int
    #: The sum of rewards.
    return_: float
    success: bool | None
    #: Last-step distance to the target, or (``track2d``) the mean tracking error.
    final_distance: float | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["return"] = d.pop("return_")
        return d


class _InfoProbe(gym.Wrapper):
    """Remembers whether ``info`` ever had a ``"success"`` key, and the last ``info``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.saw_success = False
        self.last_info: dict[str, Any] = {}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.saw_success = "success" in info
        self.last_info = dict(info)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.saw_success = self.saw_success or "success" in info
        self.last_info = dict(info)
        return obs, reward, terminated, truncated, info


class _FlatObservation:
    """Hands the policy the observation as the trainer stored it: flattened ``float32``."""

    def __init__(self, policy: Any):
        self._policy = policy

    def reset(self) -> None:
        self._policy.reset()

    def act(self, obs: Any) -> Any:
        return self._policy.act(np.asarray(obs, dtype=np.float32).reshape(-1))


def space_dims(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """``(observation size, action size)`` of an env, flattened: what a model must take and give.

    Raises ``ValueError`` for an env whose spaces are not Boxes (and gymnasium's own errors for
    an unknown id).
    """
    env = make_env(env_id, env_kwargs)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
        return int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))
    finally:
        env.close()


def _is_tracking(env: gym.Env) -> bool:
    return isinstance(env.unwrapped, Track2DEnv)


def _run(
    probe: _InfoProbe, policy: Any, index: int, ep_seed: int, tracking: bool, max_steps: int | None
) -> EpisodeScore:
    stats = rollout(probe, policy, ep_seed, max_steps=max_steps)
    info = probe.last_info
    success: bool | None = bool(stats["success"]) if probe.saw_success and not tracking else None
    if tracking and info.get("tracking_error") is not None:
        distance: float | None = float(info["tracking_error"])
    else:
        distance = stats["final_distance"]
    return EpisodeScore(index, ep_seed, int(stats["length"]), float(stats["return"]), success, distance)


def _summary(scores: list[EpisodeScore], tracking: bool) -> dict[str, Any]:
    """Means over episodes (``None`` where no episode had the figure) plus the per-episode rows."""

    def mean(values: list[float | None]) -> float | None:
        real = [float(v) for v in values if v is not None]
        return float(np.mean(real)) if real else None

    return {
        "mean_return": mean([s.return_ for s in scores]),
        "success_rate": mean([None if s.success is None else float(s.success) for s in scores]),
        "mean_final_distance": mean([s.final_distance for s in scores]),
        "mean_length": mean([float(s.length) for s in scores]),
        "distance_metric": "tracking_error" if tracking else "final_distance",
        "per_episode": [s.to_dict() for s in scores],
    }


def evaluate_policy(
    env_id: str,
    policy: PolicyLike,
    episodes: int = 100,
    seed: int = 0,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
) -> dict[str, Any] | None:
    """Score one policy (no baselines) over ``episodes`` seeded episodes: ``mean_return``,
    ``success_rate``, ``mean_final_distance``, ``mean_length``, ``distance_metric`` and
    ``per_episode`` (see :func:`evaluate`).

    ``policy`` is ``"expert"``, ``"random"``, an object with ``reset()`` and ``act(obs)``, or a
    plain ``obs -> action`` callable. Returns ``None`` for ``"expert"`` on an env without a
    scripted expert.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be an integer >= 1, got {episodes!r}")
    env = make_env(env_id, env_kwargs)
    try:
        if policy == "expert" and not has_expert(env):
            return None
        probe = _InfoProbe(env)
        tracking = _is_tracking(env)
        scores = []
        for i in range(episodes):
            ep_seed = episode_seed(seed, i)
            # Baselines are rebuilt per episode (the random one seeded from the episode, so it
            # replays exactly); a passed-in policy is reset by the rollout loop.
            pol, _ = resolve_policy(policy, env, ep_seed, env_id=env_id)
            scores.append(_run(probe, _FlatObservation(pol), i, ep_seed, tracking, max_steps))
    finally:
        env.close()
    return _summary(scores, tracking)


def evaluate(
    env_id: str,
    policy: PolicyLike,
    episodes: int = 100,
    seed: int = 0,
    *,
    baselines: bool = True,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Score ``policy`` on ``episodes`` seeded episodes of ``env_id``, with the baselines on the same seeds.

    Returns ``env``, ``episodes``, ``seed``, ``mean_return``, ``success_rate``,
    ``mean_final_distance`` (``None`` where the env has no notion of it), ``mean_length``,
    ``distance_metric`` (``"final_distance"`` or ``"tracking_error"``), ``per_episode`` (one
    row per episode: ``index``, ``seed``, ``length``, ``return``, ``success``,
    ``final_distance``) and ``baselines``: ``{"random": {...}, "expert": {...} or None}``
    with the same figures (``None`` for the expert where the env has none).
    """
    result = evaluate_policy(env_id, policy, episodes, seed, env_kwargs=env_kwargs, max_steps=max_steps)
    if result is None:
        raise ValueError(f"env {env_id!r} has no scripted expert to evaluate")
    out: dict[str, Any] = {"env": env_id, "episodes": episodes, "seed": seed, **result}
    if baselines:
        out["baselines"] = {
            name: evaluate_policy(env_id, name, episodes, seed, env_kwargs=env_kwargs, max_steps=max_steps)
            for name in ("random", "expert")
        }
    return out


def percent(value: float | None) -> str:
    """``0.97`` -> ``"97.0%"``; ``None`` -> ``"n/a"`` (for tables)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100.0 * value:.1f}%"
