"""Start states: real steps to imagine from, each with the Mid-tick history that leads to it.

Chosen in two streaming passes over the real episodes (imagined ones are skipped): the first
keeps episode lengths only, the second extracts the chosen starts' histories.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.rlds import Episode, read_episodes
from continuonbrain.sim.imagine.errors import ImagineError


@dataclass
class StartState:
    """A real state to imagine from, with the Mid-tick history that leads to it.

    ``tick_obs [K + 1, D]``: the observations at the ``K`` history ticks and the start
    (left-padded with zeros where the episode began later, ``tick_valid`` false there).
    ``tick_prev_action [K + 1, A]``: the mean real action of the interval before each tick
    (zeros for the first real tick, as at the start of a Mid training window).
    """

    index: int
    episode_id: str
    step: int
    observation: np.ndarray
    tick_obs: np.ndarray
    tick_prev_action: np.ndarray
    tick_valid: np.ndarray
    source_metadata: dict[str, Any]


def _eligible(path: str | Path, env: str | None) -> Iterator[tuple[Episode, str | None]]:
    """Real episodes of ``path`` (imagined ones are skipped), with their environment id."""
    for ep in read_episodes(path, on_error="warn"):
        if ep.is_imagined:
            continue
        env_id = ep.metadata.get("environment_id")
        if env is not None and env_id not in (None, env):
            raise ImagineError(f"episode {ep.episode_id} in {path} was recorded in {env_id!r}, not {env!r}")
        yield ep, env_id


def detect_env(path: str | Path) -> str:
    """The ``environment_id`` of the first real episode under ``path``."""
    for ep, env_id in _eligible(path, None):
        if not env_id:
            raise ImagineError(f"episode {ep.episode_id} in {path} has no environment_id: pass the env explicitly")
        return str(env_id)
    raise ImagineError(f"no real (non-imagined) episodes in {path} to start imagining from")


def select_starts(
    path: str | Path, n: int, *, history: int, mid_every: int, seed: int = 0, env: str | None = None
) -> list[StartState]:
    """``n`` start states drawn uniformly (seeded) over the steps of the real episodes under ``path``.

    Two streaming passes: the first keeps only episode lengths, the second extracts each
    chosen start's history. Steps are drawn without replacement while there are enough of them.
    """
    lengths = [len(ep) for ep, _ in _eligible(path, env)]
    total = int(sum(lengths))
    if total == 0:
        raise ImagineError(f"no real (non-imagined) episodes in {path} to start imagining from")
    rng = np.random.default_rng([int(seed), 0x1A9])
    flat = np.sort(rng.choice(total, size=n, replace=n > total))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ep_of = np.searchsorted(offsets, flat, side="right") - 1
    wanted: dict[int, list[tuple[int, int]]] = {}
    for order, (e, g) in enumerate(zip(ep_of.tolist(), flat.tolist(), strict=True)):
        wanted.setdefault(e, []).append((order, g - int(offsets[e])))
    starts: list[StartState] = []
    for e, (ep, _) in enumerate(_eligible(path, env)):
        if e not in wanted:
            continue
        obs, act = ep.observation_vector(), ep.action_vector()
        meta = {k: ep.metadata.get(k) for k in ("robot_id", "robot_model", "environment_id", "capabilities")}
        meta["safety"], meta["share"] = ep.metadata.get("safety"), ep.metadata.get("share")
        for order, t0 in wanted[e]:
            starts.append(_start_state(order, ep.episode_id, t0, obs, act, history, mid_every, meta))
    starts.sort(key=lambda s: s.index)
    return starts


def _start_state(
    index: int,
    episode_id: str,
    t0: int,
    obs: np.ndarray,
    act: np.ndarray,
    history: int,
    mid_every: int,
    meta: dict[str, Any],
) -> StartState:
    k1 = history + 1
    ticks = [t0 - k * mid_every for k in range(history, -1, -1)]
    tick_obs = np.zeros((k1, obs.shape[1]), np.float32)
    prev = np.zeros((k1, act.shape[1]), np.float32)
    valid = np.zeros(k1, bool)
    first = True
    for i, t in enumerate(ticks):
        if t < 0:
            continue
        tick_obs[i], valid[i] = obs[t], True
        if not first:
            prev[i] = act[ticks[i - 1] : t].mean(0)
        first = False
    return StartState(index, episode_id, t0, obs[t0].astype(np.float32), tick_obs, prev, valid, meta)
