"""Shadow evaluation for the local LoRA gate: a slot's policy replays the held-out episodes and
its actions are compared with the logged ones, component by component under ``action_keys``
names, so the guards can bound ``steering`` or ``throttle`` by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from continuonbrain.models.safety import ActionDistance, ShadowResult, Violates, shadow_evaluate
from continuonbrain.rlds import Episode
from continuonbrain.trainer.lora_hooks import Policy

__all__ = ["ActionNamer", "shadow_pairs", "shadow_policy"]


def shadow_policy(
    load: Callable[[], Policy | None],
    episodes: list[Episode],
    distance: ActionDistance,
    violates: Violates,
    observation_keys: Sequence[str] | None,
    action_keys: Sequence[str] | None,
    max_eval_steps: int,
) -> ShadowResult:
    """Load a policy and run it in shadow on ``episodes``; a policy that does not load (or that
    the hooks cannot run) gives a result with an ``error``, never an exception."""
    try:
        policy = load()
    except Exception as exc:  # a model that does not even load is rejected, not a crash
        return ShadowResult(error=f"cannot load the model: {type(exc).__name__}: {exc}")
    if policy is None:
        return ShadowResult(error="these hooks cannot run this model")
    observations = policy.observations or (lambda ep: ep.observation_vector(observation_keys))
    pairs = shadow_pairs(episodes, observations, action_keys)  # lazy: one episode at a time
    namer = ActionNamer.for_episodes(episodes, action_keys)

    def act(obs: Any) -> Any:
        return namer(policy.act(obs))

    return shadow_evaluate(act, policy.reset, pairs, distance, violates, max_eval_steps)


def shadow_pairs(
    episodes: Sequence[Episode],
    observations: Callable[[Episode], Iterable[Any]],
    action_keys: Sequence[str] | None,
) -> Iterator[tuple[Iterable[Any], list[Any]]]:
    """(observations, logged actions) per held-out episode, newest first (the gate's step
    budget goes to the newest behaviour)."""
    for ep in reversed(episodes):
        namer = ActionNamer.for_episodes([ep], action_keys)
        logged = ep.action_vector(action_keys)
        yield observations(ep), [namer(row) for row in logged]


class ActionNamer:
    """Turns action vectors into ``{name: value}`` dicts by ``action_keys`` (identity without
    keys), so guards can bound components by name (``steering``, ``throttle``)."""

    def __init__(self, keys: Sequence[str] | None, sizes: Sequence[int] | None):
        self.keys = list(keys) if keys else None
        self.sizes = list(sizes) if sizes else ([1] * len(self.keys) if self.keys else None)

    @classmethod
    def for_episodes(cls, episodes: Sequence[Episode], keys: Sequence[str] | None) -> ActionNamer:
        sizes = None
        if keys and episodes and isinstance(episodes[0].action, dict):
            cols = episodes[0].action
            sizes = [int(np.asarray(cols[k]).reshape(len(episodes[0]), -1).shape[1]) for k in keys]
        return cls(keys, sizes)

    def __call__(self, action: Any) -> Any:
        if self.keys is None:
            return np.asarray(action, dtype=np.float64).reshape(-1)
        vec = np.asarray(action, dtype=np.float64).reshape(-1)
        if len(vec) != sum(self.sizes or []):
            raise ValueError(f"action has {len(vec)} values, action_keys {self.keys} need {sum(self.sizes or [])}")
        out, start = {}, 0
        for key, size in zip(self.keys, self.sizes or [], strict=True):
            out[key] = vec[start : start + size]
            start += size
        return out
