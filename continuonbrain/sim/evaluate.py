"""Score a policy over seeded episodes of an env, next to the random and expert baselines.

Why it looks like this:

* **Same seeds for everything.** Episode ``i`` resets the env with
  :func:`~continuonbrain.sim.collect.episode_seed` ``(seed, i)`` for the policy *and* for
  both baselines, so "the model reached 97 targets, the expert 100" compares the same 100
  targets and start poses, and a rerun gives the same numbers. Training data is collected
  with seed 0 by default; evaluating with another base seed scores unseen episodes
  (``episode_seed`` mixes the base seed, so nearby seeds share no episode).
* **Any Box env.** Built-in ids (``reach2d``, ``track2d``, ``drive2d``) or any gymnasium id
  (``module:EnvId`` imports ``module`` first) whose action space is a Box and whose
  observation space is a Box or a Dict of Boxes. The policy sees a Box observation flattened
  to ``float32``, as the trainer stored it in the RLDS episodes it learned from, and a Dict
  one as a dict with the env's keys: images (``uint8 [H, W, 3]``) as they are, every other
  Box flattened to ``float32``. Which models fit which envs is :func:`fit_problems`.
* **The policy is passed in, not built here.** ``sim`` must not import ``runtime`` (the
  import direction in README "Layout of the code"), so the CLI hands in an object with ``reset()`` and
  ``act(obs)`` that drives the served model through ``BrainService.act``: what is scored
  is the very path that serves the robot, not a re-implementation of it.
* **Metrics only where the env has them.** ``success`` is ``None`` for an env whose
  ``info`` has no ``"success"`` (and for ``track2d``, whose ``info["success"]`` is always
  false because tracking has no end state). The distance figure is the tip-to-target
  distance at the last step (``info["distance"]``), except for ``track2d`` and ``drive2d``
  where it is the mean tracking error over the episode (``info["tracking_error"]``: the arm's
  distance to its moving target, the car's distance from the centreline), the task's metric;
  ``None`` where the env reports neither.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from continuonbrain.sim.collect import PolicyLike, episode_seed, make_env, observation_layout, resolve_policy, rollout
from continuonbrain.sim.drive2d import Drive2DEnv
from continuonbrain.sim.envs import Track2DEnv
from continuonbrain.sim.experts import has_expert

__all__ = [
    "EpisodeScore",
    "evaluate",
    "evaluate_policy",
    "fit_problems",
    "observation_spaces",
    "percent",
    "space_dims",
]


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
    """Hands the policy the observation as the trainer stored it: flattened ``float32``, or
    for a Dict observation a dict with the env's keys (images as they are, ``uint8 [H, W, 3]``;
    every other value flattened ``float32``)."""

    def __init__(self, policy: Any, layout: dict[str, str] | None = None):
        self._policy = policy
        self._layout = layout

    def reset(self) -> None:
        self._policy.reset()

    def act(self, obs: Any) -> Any:
        if self._layout is None:
            return self._policy.act(np.asarray(obs, dtype=np.float32).reshape(-1))
        return self._policy.act(
            {
                key: np.asarray(obs[key]) if kind == "image" else np.asarray(obs[key], dtype=np.float32).reshape(-1)
                for key, kind in self._layout.items()
            }
        )


def space_dims(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """``(observation size, action size)`` of an env, flattened: what a model must take and give.

    For a Dict observation the size is that of its numeric (non-image) Boxes together, the
    state vector a model builds from them (0 for a camera alone); :func:`observation_spaces`
    has the keys and image shapes. Raises ``ValueError`` for an env whose action space is not
    a Box or whose observation space is neither a Box nor a Dict of Boxes (and gymnasium's own
    errors for an unknown id).
    """
    obs_size, action_size, _ = _describe(env_id, env_kwargs)
    return obs_size, action_size


def observation_spaces(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """``None`` for a Box observation; for a Dict one, ``{key: {"kind": "image" | "state",
    "shape": [...], "dtype": str}}`` in the env's order."""
    return _describe(env_id, env_kwargs)[2]


def _describe(env_id: str, env_kwargs: Mapping[str, Any] | None) -> tuple[int, int, dict[str, Any] | None]:
    env = make_env(env_id, env_kwargs)
    try:
        obs_space, act_space = env.observation_space, env.action_space
        assert isinstance(act_space, gym.spaces.Box)
        layout = observation_layout(obs_space, env_id)
        if layout is None:
            return int(np.prod(obs_space.shape)), int(np.prod(act_space.shape)), None  # type: ignore[arg-type]
        subs = obs_space.spaces  # type: ignore[attr-defined]
        spaces = {
            k: {"kind": kind, "shape": [int(s) for s in subs[k].shape], "dtype": str(subs[k].dtype)}
            for k, kind in layout.items()
        }
        obs_size = sum(int(np.prod(s["shape"])) for s in spaces.values() if s["kind"] == "state")
        return obs_size, int(np.prod(act_space.shape)), spaces
    finally:
        env.close()


def fit_problems(model: Mapping[str, Any], env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> list[str]:
    """Why a model cannot act in an env (an empty list: it can).

    ``model`` describes what the model takes and gives, as :meth:`BrainService.status` (or a
    HopeConfig dict) does: ``observation_dim`` (or ``obs_dim``), ``action_dim``, and for dict
    observations ``state_keys``, ``image_keys`` and ``image_shapes``. A vector model needs a
    Box observation of its size. A dict model needs a Dict observation with exactly its keys:
    every image key an image of the model's shape, the state keys numeric Boxes whose sizes
    add up to the model's ``observation_dim``; each problem names the key and both shapes.
    """
    obs_dim, action_dim, env_spaces = _describe(env_id, env_kwargs)
    model_dim = model.get("observation_dim", model.get("obs_dim"))
    state_keys = list(model.get("state_keys") or [])
    image_keys = list(model.get("image_keys") or [])
    image_shapes = {k: list(v) for k, v in (model.get("image_shapes") or {}).items()}
    problems = []

    def env_has(key: str) -> str:
        spec = env_spaces[key]  # type: ignore[index]
        return f"{'an image' if spec['kind'] == 'image' else 'a state'} {spec['dtype']} {spec['shape']}"

    if env_spaces is None:
        if state_keys or image_keys:
            problems.append(
                f"the model takes dict observations (state keys {state_keys}, image keys {image_keys}), "
                f"the env gives a vector of {obs_dim}"
            )
        elif model_dim != obs_dim:
            problems.append(f"the model takes observations of {model_dim} numbers, the env gives {obs_dim}")
    elif not (state_keys or image_keys):
        described = ", ".join(f"{k!r} ({env_has(k)})" for k in env_spaces)
        problems.append(f"the model takes a vector of {model_dim} numbers, the env gives a dict: {described}")
    else:
        for key in image_keys:
            want = image_shapes.get(key)
            if key not in env_spaces:
                problems.append(f"the model's image key {key!r} ({want}) is not in the env's observation")
            elif env_spaces[key]["kind"] != "image":
                problems.append(f"key {key!r} is an image {want} for the model, the env gives {env_has(key)}")
            elif want is not None and env_spaces[key]["shape"] != want:
                problems.append(f"image {key!r}: the model takes {want}, the env gives {env_spaces[key]['shape']}")
        for key in state_keys:
            if key not in env_spaces:
                problems.append(f"the model's state key {key!r} is not in the env's observation")
            elif env_spaces[key]["kind"] == "image":
                problems.append(f"key {key!r} is a state vector for the model, the env gives {env_has(key)}")
        for key in env_spaces:
            if key not in state_keys and key not in image_keys:
                problems.append(
                    f"the env's observation key {key!r} ({env_has(key)}) is not one of the model's "
                    f"(state keys {state_keys}, image keys {image_keys})"
                )
        if not problems and model_dim is not None and model_dim != obs_dim:
            problems.append(f"the model's state keys {state_keys} make {model_dim} numbers, the env's make {obs_dim}")
    if model.get("action_dim") != action_dim:
        problems.append(f"the model gives actions of {model.get('action_dim')} numbers, the env takes {action_dim}")
    return problems


def _is_tracking(env: gym.Env) -> bool:
    """Scored by the mean tracking error over the episode (not the last distance)."""
    return isinstance(env.unwrapped, Track2DEnv | Drive2DEnv)


def _has_no_success(env: gym.Env) -> bool:
    """``info["success"]`` is there but means nothing (tracking has no end state)."""
    return isinstance(env.unwrapped, Track2DEnv)


def _run(
    probe: _InfoProbe,
    policy: Any,
    index: int,
    ep_seed: int,
    tracking: bool,
    max_steps: int | None,
    no_success: bool = False,
) -> EpisodeScore:
    stats = rollout(probe, policy, ep_seed, max_steps=max_steps)
    info = probe.last_info
    success: bool | None = bool(stats["success"]) if probe.saw_success and not no_success else None
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
        tracking, no_success = _is_tracking(env), _has_no_success(env)
        layout = observation_layout(env.observation_space, env_id)
        scores = []
        for i in range(episodes):
            ep_seed = episode_seed(seed, i)
            # Baselines are rebuilt per episode (the random one seeded from the episode, so it
            # replays exactly); a passed-in policy is reset by the rollout loop.
            pol, _ = resolve_policy(policy, env, ep_seed, env_id=env_id)
            scores.append(_run(probe, _FlatObservation(pol, layout), i, ep_seed, tracking, max_steps, no_success))
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
