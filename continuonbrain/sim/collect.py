"""Run policies in an env: RLDS episodes for training (``collect_*``), metrics for evaluation (``rollout``).

Both go through one loop (:func:`_run_episode`), so what the trainer learns from and what the
evaluator scores are produced the same way. The loop works with any gymnasium env whose action
space is a Box and whose observation space is a Box or a Dict of Boxes; the built-in envs
additionally have a scripted expert and report ``info["distance"]``/``info["success"]``.

Dict observations are recorded as dicts with the env's keys: an image (a ``uint8 [H, W, 3]``
Box, such as drive2d's ``cam/image_array``) as a JPEG :class:`~continuonbrain.rlds.LazyImage`
(quality 95: Donkeycar's tubs store JPEG too, a 160x120 frame is ~8 KB and ~0.3 ms to encode,
and the decoded pixels are within ~2 grey levels of the rendered ones on average), any other
Box as a ``float32`` array of its shape. ``image_format="png"`` stores them losslessly (5 ms a
frame, 1.6x the bytes).

RLDS step convention: step ``t`` holds the observation seen at ``t``, the action taken at
``t`` and the reward received after it; ``is_last`` marks the final step and ``is_terminal``
is set on it only when the episode ended by termination (success), not by truncation.

Why one module of 518 lines: collection and evaluation must go through the same loop
(:func:`_run_episode`) so that training data and evaluation scores are produced identically.
Split candidate: :func:`episode_metadata` and the space-description helpers (``_plain``,
``_box``, ``_space``, ~110 lines) into a metadata module.
"""

from __future__ import annotations

import io
import math
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

import continuonbrain
from continuonbrain.rlds import Episode, LazyImage, write_episodes
from continuonbrain.sim.experts import Policy, RandomPolicy, make_expert

#: A policy: "expert", "random", None (the expert when the env has one, else random), a
#: callable ``obs -> action``, or an object with ``act(obs)`` (and optionally ``reset()``).
PolicyLike = str | Callable[[np.ndarray], Any] | Policy | None

#: Episodes never run longer than this, even in an env without a time limit.
MAX_STEPS_CAP = 10_000

#: JPEG quality of recorded camera frames (see the module docstring).
JPEG_QUALITY = 95
IMAGE_FORMATS = ("jpeg", "png")


def episode_seed(seed: int, index: int) -> int:
    """The ``env.reset`` seed of episode ``index`` in a run with base ``seed``.

    Mixed through ``SeedSequence`` rather than ``seed + index`` so that runs with nearby base
    seeds (say training data with seed 0 and an evaluation with seed 1) share no episodes.
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint32)[0])


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> gym.Env:
    """``gymnasium.make`` that insists on a Box action space and a Box or Dict-of-Boxes
    observation space (the built-in ids are registered by ``continuonbrain.sim``'s
    ``__init__``, which always runs before this module; ``module:EnvId`` imports ``module``)."""
    env = gym.make(env_id, **dict(env_kwargs or {}))
    try:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(
                f"env {env_id!r} has a {type(env.action_space).__name__} action_space; only Box actions are supported"
            )
        observation_layout(env.observation_space, env_id)
    except ValueError:
        env.close()
        raise
    return env


def is_image_space(space: gym.spaces.Space) -> bool:
    """A camera: a ``uint8`` Box of shape ``[H, W, 3]``."""
    return (
        isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[2] == 3
    )


def observation_layout(space: gym.spaces.Space, env_id: str = "env") -> dict[str, str] | None:
    """``None`` for a Box observation; for a Dict of Boxes, ``{key: "image" | "state"}`` in the
    Dict's order. Raises ``ValueError`` for anything else (naming the offending key)."""
    if isinstance(space, gym.spaces.Box):
        return None
    if not isinstance(space, gym.spaces.Dict):
        raise ValueError(
            f"env {env_id!r} has a {type(space).__name__} observation_space; only a Box or a Dict of Boxes is supported"
        )
    layout: dict[str, str] = {}
    for key, sub in space.spaces.items():
        if not isinstance(sub, gym.spaces.Box):
            raise ValueError(
                f"env {env_id!r}: observation key {key!r} is a {type(sub).__name__}; only Boxes are supported in a Dict"
            )
        layout[str(key)] = "image" if is_image_space(sub) else "state"
    if not layout:
        raise ValueError(f"env {env_id!r} has an empty Dict observation_space")
    return layout


def rollout(
    env: gym.Env,
    policy: PolicyLike,
    seed: int | None = None,
    *,
    max_steps: int | None = None,
    dart_sigma: float = 0.0,
) -> dict[str, Any]:
    """Run one episode of ``policy`` in ``env`` and score it.

    Returns ``return``, ``length``, ``success`` (any step reported ``info["success"]``; None
    when the env never reports it), ``terminated``, ``truncated``, ``final_distance`` and
    ``tracking_error`` (the last and the mean ``info["distance"]``; ``None`` for envs that
    report no distance).
    """
    seed_ = 0 if seed is None else seed
    pol, _ = resolve_policy(policy, env, seed_)
    _, stats = _run_episode(env, pol, seed, dart_sigma=dart_sigma, noise_seed=seed_, record=None, max_steps=max_steps)
    return stats


def collect_episodes(
    env_id: str,
    n_episodes: int,
    seed: int = 0,
    dart_sigma: float = 0.0,
    policy: PolicyLike = None,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    image_format: str = "jpeg",
) -> Iterator[Episode]:
    """Yield ``n_episodes`` RLDS episodes of ``policy`` acting in ``env_id``.

    Episode ``i`` resets the env with :func:`episode_seed` ``(seed, i)``, so a collection is
    reproducible and any single episode can be replayed from its metadata ``episode_seed``. With
    ``dart_sigma`` > 0, Gaussian noise of that std is added to the executed action (clipped
    to the action bounds) while the clean policy action is recorded; the executed one is
    kept in ``step_metadata["executed_action"]``. Episodes are generated lazily, one at a
    time, so a writer can stream them. Camera images of a Dict observation are stored as
    ``image_format`` (``"jpeg"`` or ``"png"``) :class:`~continuonbrain.rlds.LazyImage` values.
    """
    if n_episodes < 0:
        raise ValueError(f"n_episodes must be >= 0, got {n_episodes}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if dart_sigma < 0 or not math.isfinite(dart_sigma):
        raise ValueError(f"dart_sigma must be a finite number >= 0, got {dart_sigma}")
    env = make_env(env_id, env_kwargs)
    try:
        hz = control_hz(env)
        for i in range(n_episodes):
            ep_seed = episode_seed(seed, i)
            pol, role = resolve_policy(policy, env, ep_seed, env_id=env_id)
            rows, stats = _run_episode(
                env,
                pol,
                ep_seed,
                dart_sigma=dart_sigma,
                noise_seed=ep_seed,
                record=image_format,
                max_steps=max_steps,
                hz=hz,
            )
            meta = episode_metadata(
                env, env_id, seed=seed, index=i, episode_seed=ep_seed, role=role, dart_sigma=dart_sigma, hz=hz
            )
            meta["environment_kwargs"] = {k: _plain(v) for k, v in (env_kwargs or {}).items()}
            meta["outcome"] = stats
            yield Episode.from_steps(rows, meta)
    finally:
        env.close()


def collect_to_dir(
    env_id: str,
    n_episodes: int,
    out_dir: str | os.PathLike,
    format: str = "continuon",
    seed: int = 0,
    dart_sigma: float = 0.0,
    policy: PolicyLike = None,
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    progress: str | None = None,
    image_format: str = "jpeg",
    **write_options: Any,
) -> dict[str, Any]:
    """Collect episodes and write them with :func:`continuonbrain.rlds.write_episodes`.

    Episodes stream from the env to disk one at a time. For ``format="tfds"`` the dataset
    name defaults to the env id (made identifier-safe). Returns a summary: ``env``,
    ``format``, ``out``, ``episodes``, ``steps``, ``control_role``, ``success_rate``,
    ``mean_return``, ``mean_final_distance``, ``mean_tracking_error``, ``seed``,
    ``dart_sigma`` and the ``paths`` written. ``progress``: a label for a progress bar on
    stderr (None: no bar).
    """
    if format == "tfds":
        write_options.setdefault("name", re.sub(r"\W", "_", env_id).lower())
    outcomes: list[dict[str, Any]] = []
    roles: set[str] = set()

    def tally() -> Iterator[Episode]:
        for ep in collect_episodes(
            env_id,
            n_episodes,
            seed,
            dart_sigma,
            policy,
            env_kwargs=env_kwargs,
            max_steps=max_steps,
            image_format=image_format,
        ):
            outcomes.append(ep.metadata["outcome"])
            roles.add(ep.metadata["control_role"])
            yield ep

    episodes: Iterator[Episode] = tally()
    if progress is not None:
        from tqdm import tqdm

        episodes = tqdm(episodes, total=n_episodes, desc=progress, unit="ep", mininterval=0.5)
    paths = write_episodes(episodes, out_dir, format=format, **write_options)  # type: ignore[arg-type]
    return {
        "env": env_id,
        "format": format,
        "out": str(out_dir),
        "episodes": paths.total,  # what is on disk (a taken name is kept beside, never overwritten)
        "steps": sum(o["length"] for o in outcomes),
        "control_role": ",".join(sorted(roles)),
        **summarize(outcomes),
        "seed": seed,
        "dart_sigma": dart_sigma,
        "paths": [str(p) for p in paths],
        "kept_both": [{"existing": str(a), "written": str(b)} for a, b in paths.kept_both],
    }


def summarize(outcomes: list[dict[str, Any]]) -> dict[str, float | None]:
    """Means of :func:`rollout` results: ``success_rate``, ``mean_return``,
    ``mean_final_distance``, ``mean_tracking_error`` (``None`` where nothing was reported)."""

    def mean(key: str) -> float | None:
        vals = [float(o[key]) for o in outcomes if o.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "success_rate": mean("success"),
        "mean_return": mean("return"),
        "mean_final_distance": mean("final_distance"),
        "mean_tracking_error": mean("tracking_error"),
    }


class _CallablePolicy:
    """Adapts a plain ``obs -> action`` function (or an object with ``act``) to ``reset``/``act``."""

    def __init__(self, fn: Any) -> None:
        self._act = fn.act if hasattr(fn, "act") else fn
        self._reset = getattr(fn, "reset", None)

    def reset(self) -> None:
        if callable(self._reset):
            self._reset()

    def act(self, obs: np.ndarray) -> Any:
        return self._act(obs)


def resolve_policy(policy: PolicyLike, env: gym.Env, seed: int, env_id: str | None = None) -> tuple[Any, str]:
    """``(policy object with reset/act, control_role)`` for a :data:`PolicyLike`.

    ``"random"`` gets a generator seeded from ``seed``, so random episodes replay exactly.
    """
    if policy is None or policy == "expert":
        try:
            return make_expert(env), "expert"
        except ValueError:
            if policy == "expert":
                raise
            policy = "random"
    if policy == "random":
        return RandomPolicy(env.action_space, seed=[int(seed), 2]), "random"  # type: ignore[arg-type]
    if isinstance(policy, str):
        raise ValueError(f"unknown policy {policy!r} (expected 'expert', 'random', a callable or an object with act)")
    if not (callable(policy) or hasattr(policy, "act")):
        raise TypeError(f"policy must be callable or have act(obs), got {type(policy).__name__}")
    return _CallablePolicy(policy), "policy"


def _run_episode(
    env: gym.Env,
    policy: Any,
    seed: int | None,
    *,
    dart_sigma: float,
    noise_seed: int,
    record: str | None,
    max_steps: int | None,
    hz: float | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The one rollout loop: returns the RLDS step rows (when ``record`` names the image format
    to store camera frames in) and the outcome."""
    layout = observation_layout(env.observation_space) if record else None
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    low, high, dtype = space.low, space.high, space.dtype
    noise = np.random.default_rng([int(noise_seed), 1]) if dart_sigma > 0 else None
    limit = min(max_steps or MAX_STEPS_CAP, MAX_STEPS_CAP)
    obs, info = env.reset(seed=seed)
    policy.reset()
    rows: list[dict[str, Any]] = []
    ret = 0.0
    success = bool(info.get("success", False))
    reports_success = "success" in info  # envs without the notion get None, not a misleading 0%
    distances: list[float] = []
    terminated = truncated = False
    t = 0
    while not (terminated or truncated):
        clean = np.clip(np.asarray(policy.act(obs), dtype=dtype).reshape(space.shape), low, high)
        executed = clean
        if noise is not None:
            executed = np.clip(clean + noise.normal(0.0, dart_sigma, size=clean.shape), low, high).astype(dtype)
        next_obs, reward, terminated, truncated, info = env.step(executed)
        terminated, truncated = bool(terminated), bool(truncated)
        t += 1
        if t >= limit and not terminated:
            truncated = True
        ret += float(reward)
        success = success or bool(info.get("success", False))
        reports_success = reports_success or "success" in info
        if "distance" in info:
            distances.append(float(info["distance"]))
        if record:
            row: dict[str, Any] = {
                "observation": _recorded(obs, layout, record),
                "action": clean,
                "reward": float(reward),
                "discount": 1.0,
                "is_first": t == 1,
                "is_last": terminated or truncated,
                "is_terminal": terminated,
            }
            if hz:
                row["timestamp"] = (t - 1) / hz
            if noise is not None:
                row["step_metadata"] = {"executed_action": [float(x) for x in executed]}
            rows.append(row)
        obs = next_obs
    stats = {
        "return": ret,
        "length": t,
        "success": success if reports_success else None,
        "terminated": terminated,
        "truncated": truncated,
        "final_distance": distances[-1] if distances else None,
        "tracking_error": float(np.mean(distances)) if distances else None,
    }
    return rows, stats


def _recorded(obs: Any, layout: dict[str, str] | None, image_format: str | None) -> Any:
    """An observation as a step row stores it: a ``float32`` array, or a dict of encoded
    images and ``float32`` arrays."""
    if layout is None:
        return np.asarray(obs, dtype=np.float32)
    return {
        key: encode_image(obs[key], image_format or "jpeg") if kind == "image" else np.asarray(obs[key], np.float32)
        for key, kind in layout.items()
    }


def encode_image(pixels: np.ndarray, image_format: str = "jpeg") -> LazyImage:
    """A ``uint8 [H, W, 3]`` frame as an in-memory JPEG (quality :data:`JPEG_QUALITY`) or PNG."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if image_format == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return LazyImage(data=buf.getvalue(), format=image_format)


def control_hz(env: gym.Env) -> float | None:
    """The env's control rate: ``control_hz`` on the env or in its metadata, else ``1/dt``,
    else ``render_fps``; ``None`` when the env says nothing (no timestamps are written then)."""
    base = env.unwrapped
    for value in (
        getattr(base, "control_hz", None),
        base.metadata.get("control_hz"),
        1.0 / base.dt if isinstance(getattr(base, "dt", None), int | float) and base.dt > 0 else None,  # type: ignore[attr-defined]
        base.metadata.get("render_fps"),
    ):
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _plain(value: Any) -> Any:
    """A JSON-friendly version of an env kwarg (numpy scalars and arrays become Python ones)."""
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def _box(space: gym.spaces.Box, names: list[str] | None) -> dict[str, Any]:
    """A Box as metadata: bounds element by element, except for a multi-dimensional Box with
    one bound throughout (an image: two numbers, not 57,600 each)."""
    low, high = np.ravel(space.low), np.ravel(space.high)
    uniform = len(space.shape) > 1 and low.size > 0 and (low == low[0]).all() and (high == high[0]).all()
    desc: dict[str, Any] = {
        "type": "box",
        "shape": list(space.shape),
        "dtype": str(space.dtype),
        "low": float(low[0]) if uniform else [float(x) for x in low],
        "high": float(high[0]) if uniform else [float(x) for x in high],
    }
    if names:
        desc["names"] = names
    return desc


def _space(space: gym.spaces.Space, names: list[str] | None) -> dict[str, Any]:
    """A Box, or a Dict of Boxes (``{"type": "dict", "spaces": {key: box}}``, images marked)."""
    if isinstance(space, gym.spaces.Dict):
        spaces = {}
        for key, sub in space.spaces.items():
            assert isinstance(sub, gym.spaces.Box)
            spaces[str(key)] = {**_box(sub, None), **({"image": True} if is_image_space(sub) else {})}
        return {"type": "dict", "spaces": spaces}
    assert isinstance(space, gym.spaces.Box)
    return _box(space, names)


def episode_metadata(
    env: gym.Env,
    env_id: str,
    *,
    seed: int,
    index: int,
    episode_seed: int,
    role: str,
    dart_sigma: float,
    hz: float | None,
) -> dict[str, Any]:
    """Continuon v1.1 ``metadata.json`` content for a simulated episode.

    Simulated data is synthetic, so it is PII-cleared and needs no review; it is still not
    public unless someone decides so.
    """
    from continuonbrain.sim.drive2d import Drive2DEnv
    from continuonbrain.sim.envs import TwoLinkArmEnv

    base = env.unwrapped
    robot_model = f"gymnasium:{env_id}"
    if isinstance(base, TwoLinkArmEnv):
        robot_model = "continuon-sim-2link"
    elif isinstance(base, Drive2DEnv):
        robot_model = "continuon-sim-car"
    obs_space, act_space = env.observation_space, env.action_space
    assert isinstance(act_space, gym.spaces.Box)
    layout = observation_layout(obs_space, env_id)
    if layout is None:
        obs_size = int(np.prod(obs_space.shape))  # type: ignore[arg-type]
        obs_names = list(getattr(base, "observation_names", None) or [f"obs_{i}" for i in range(obs_size)])
    else:
        obs_names = list(layout)
    act_names = list(getattr(base, "action_names", None) or [])
    hz_value: float | int | None = None
    if hz is not None:
        hz_value = round(hz, 6)  # 1 / 0.05 is 20.000000000000004
        hz_value = int(hz_value) if float(hz_value).is_integer() else hz_value
    meta: dict[str, Any] = {
        "schema_version": "1.1",
        "episode_id": f"{env_id}-s{seed}-{index:06d}",
        "robot_id": f"sim-{env_id}",
        "robot_model": robot_model,
        "xr_mode": "none",
        "control_role": role,
        "environment_id": env_id,
        "tags": ["sim", env_id],
        "software": {"name": "continuonbrain", "version": continuonbrain.__version__},
        "capabilities": {
            "control_hz": hz_value,
            "action_space": _box(act_space, act_names),
            "observation_space": _space(obs_space, obs_names),
            # A vector's element names, or a dict's keys (state and image keys alike).
            "observation_names": obs_names,
        },
        "safety": {
            "pii_attestation": "synthetic",
            "pii_cleared": True,
            "pii_redacted": False,
            "pending_review": False,
            "content_rating": "general",
        },
        "share": {"public": False},
        "provenance": {
            "origin": f"sim:{env_id}",
            "source_commit": "",
            "source_host": socket.gethostname(),
            "notes": f"seed={seed}, index={index}, episode_seed={episode_seed}, dart_sigma={dart_sigma}",
        },
        "seed": seed,
        "episode_index": index,
        "episode_seed": episode_seed,
    }
    if hz_value is not None:
        meta["control_hz"] = hz_value
    return meta
