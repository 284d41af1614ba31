"""The promotion gate: one path for seeds and adapters, for the CLI, the API and the trainers.

Every candidate, a HOPE seed from ``continuonbrain train`` or a LoRA adapter from the local
trainer, is judged by :func:`gate_candidate`, and its verdict is applied by
:func:`apply_gate`::

    candidate files verified against the manifest        else rejected, nothing is run
    the candidate runs in shadow on the held-out episodes (newest first, max_eval_steps)
    the current model runs in shadow on the same episodes (not for a stub)
    gate (continuonbrain.models.safety.gate): distance, bounds, regression, errors
    pass -> PromotionStore.promote (old current to history/)   fail -> PromotionStore.reject (rejected/)
    audit.jsonl records why (gate_record: passed, reason, both runs' metrics)

The seed path (:func:`promote_candidate`: ``continuonbrain models promote``, ``POST
/api/models/promote``) holds out the newest ``eval_tail_episodes`` episodes of the data the
candidate was trained for (``rlds_dir`` from its manifest unless given) and loads each slot as
:func:`hope_policy`. The adapter trainer holds out its own tail (:func:`hold_out`) and loads
slots with its hooks; both call :func:`gate_candidate`. The rules are the same for both:

* **A gate judges on real data.** Imagined episodes (``provenance.origin`` ``imagined:*``, the
  world model's own rollouts) are never evaluation data: they say what a model expected, not
  what the robot did, and a candidate scored on them would be graded on its own predictions.
  :func:`tail_episodes` and :func:`hold_out` skip them, and :func:`gate_candidate` drops any
  that a caller hands in. They may still be training data (under the trainers' caps).
* **Bounded memory.** Observations reach the policy one step at a time, camera frames decoded
  per step (:func:`step_observations`): a whole episode of decoded frames does not fit a Pi's
  memory budget. The held-out episodes themselves stay encoded (frames are lazy).
* **The newest behaviour first.** Episodes are replayed newest first, so the
  ``max_eval_steps`` budget goes to what the robot did last.
* **A stub is never promoted.** A dry run of a trainer's loop (manifest ``kind: "stub"``) is
  run in shadow, so the dry run shows what the gate would see, and then set aside.

Importing this module does not import torch: :func:`hope_policy` imports the HOPE brain when
it loads one, so the stub path and the store's users stay free of it.

Why one module of 426 lines: it is the one promotion gate, and the rule is that there is one
path: held-out selection, shadow runs, the gate call and applying the verdict are the steps of
that single path, and keeping them together is what keeps the seed and adapter paths from
drifting apart.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuonbrain.models.safety import (
    ActionDistance,
    GateResult,
    SafetyGateConfig,
    ShadowResult,
    Violates,
    build_simple_action_guards,
    gate,
    shadow_evaluate,
)
from continuonbrain.models.store import PromotionStore, StoreError
from continuonbrain.rlds import Episode, read_episodes

if TYPE_CHECKING:
    from continuonbrain.hope import HopeBrain, HopeConfig

log = logging.getLogger(__name__)

__all__ = [
    "GATE_METRICS",
    "ActionNamer",
    "GatePolicy",
    "Guards",
    "apply_gate",
    "evaluate_candidate",
    "gate_candidate",
    "gate_metrics",
    "gate_record",
    "hold_out",
    "hope_guards",
    "hope_policy",
    "is_stub_manifest",
    "promote_candidate",
    "real_episodes",
    "shadow_brain",
    "shadow_pairs",
    "shadow_policy",
    "step_observations",
    "tail_episodes",
]

#: ``(action_distance, violates)``, as :func:`~continuonbrain.models.safety.build_simple_action_guards` returns.
Guards = tuple[ActionDistance, Violates]
#: What each shadow run contributes to the audit record.
GATE_METRICS = ("steps", "episodes", "avg_action_delta", "violations", "first_violation", "error")


# --------------------------------------------------------------------------- evaluation data


def real_episodes(episodes: Iterable[Episode]) -> list[Episode]:
    """The episodes a gate may judge on: recorded ones, never imagined ones."""
    return [ep for ep in episodes if not ep.is_imagined]


def tail_episodes(rlds_dir: str | os.PathLike, n: int) -> list[Episode]:
    """The newest ``n`` good real episodes under ``rlds_dir``, oldest first.

    Read order is sorted by name (episode ids and logger file names grow with time); imagined
    episodes are skipped (a gate judges on real data). At most ``n`` episodes are kept while
    the directory streams by, frames still encoded: a gate's worth is small.
    """
    if n <= 0:
        return []
    tail: deque[Episode] = deque(maxlen=n)
    for ep in read_episodes(rlds_dir, on_error="skip"):
        if not ep.is_imagined:
            tail.append(ep)
    return list(tail)


def hold_out(episodes: Sequence[Episode], n: int) -> tuple[list[Episode], list[Episode]]:
    """``(train, held_out)`` for a trainer that gates what it trains: the newest ``n`` real
    episodes of ``episodes`` (oldest first) are held out for the gate; everything else,
    imagined episodes included, is training data. Order is kept in both lists."""
    real = [i for i, ep in enumerate(episodes) if not ep.is_imagined]
    held = set(real[-n:]) if n > 0 else set()
    train = [ep for i, ep in enumerate(episodes) if i not in held]
    return train, [ep for i, ep in enumerate(episodes) if i in held]


def step_observations(config: HopeConfig | Any) -> Callable[[Episode], Iterator[Any]]:
    """``episode -> observations`` as a HOPE brain takes them on the robot, one step at a time:
    state vectors, or dicts of the state keys (``float32``) and the camera frames, each frame
    decoded only when its step comes (a whole episode of decoded frames would not fit a Pi's
    memory budget). ``config`` needs ``state_keys`` and ``image_keys``."""
    state_keys = list(config.state_keys or [])
    image_keys = list(config.image_keys or [])
    keys = state_keys if (state_keys or image_keys) else None

    def observations(ep: Episode) -> Iterator[Any]:
        if not image_keys:
            yield from ep.observation_vector(keys)
            return
        obs = ep.observation
        for t in range(len(ep)):
            step: dict[str, Any] = {k: np.asarray(obs[k][t], np.float32) for k in state_keys}
            for k in image_keys:
                frame = obs[k][t]
                step[k] = frame.decode() if hasattr(frame, "decode") else np.asarray(frame, np.uint8)
            yield step

    return observations


# --------------------------------------------------------------------------- policies in shadow


@dataclass
class GatePolicy:
    """A model acting in shadow: ``act(observation) -> action``, ``reset()`` between episodes.

    ``observations(episode)``: the episode's observations as ``act`` takes them, one per step
    (None: state vectors of the caller's ``observation_keys``). ``guards``: the action bounds
    this model knows (a HOPE brain's ``action_low``/``action_high``), used when the caller of
    :func:`gate_candidate` gives none. The adapter trainer's ``Policy`` has the same fields
    (without ``guards``) and is accepted as it is.
    """

    act: Callable[[Any], Any]
    reset: Callable[[], None] = lambda: None
    observations: Callable[[Episode], Iterable[Any]] | None = None
    guards: Guards | None = None


def hope_guards(config: HopeConfig | Any) -> Guards:
    """Guards from a HOPE config: every action component within ``[action_low, action_high]``
    (named by index), finite; distance is the mean absolute difference."""
    low, high = config.action_low or [], config.action_high or []
    bounds = {str(i): (lo, hi) for i, (lo, hi) in enumerate(zip(low, high, strict=True))}
    return build_simple_action_guards(per_key_bounds=bounds)


def hope_policy(slot_dir: str | os.PathLike) -> GatePolicy:
    """The HOPE brain stored in ``slot_dir`` (its adapter merged, the numpy Fast path), exactly
    as BrainService will serve it: what is gated is what will drive. Imports torch."""
    from continuonbrain.hope import HopeBrain

    brain = HopeBrain.load(Path(slot_dir))
    return _brain_policy(brain)


def _brain_policy(brain: HopeBrain) -> GatePolicy:
    return GatePolicy(
        act=brain.act,
        reset=brain.reset,
        observations=step_observations(brain.config),
        guards=hope_guards(brain.config),
    )


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


def shadow_pairs(
    episodes: Sequence[Episode],
    observations: Callable[[Episode], Iterable[Any]],
    action_keys: Sequence[str] | None,
) -> Iterator[tuple[Iterable[Any], list[Any]]]:
    """(observations, logged actions) per held-out episode, newest first (the gate's step
    budget goes to the newest behaviour). Lazy: one episode at a time, and ``observations``
    yields one step at a time."""
    for ep in reversed(episodes):
        namer = ActionNamer.for_episodes([ep], action_keys)
        logged = ep.action_vector(action_keys)
        yield observations(ep), [namer(row) for row in logged]


def _shadow_loaded(
    policy: Any,
    episodes: Sequence[Episode],
    distance: ActionDistance,
    violates: Violates,
    observation_keys: Sequence[str] | None,
    action_keys: Sequence[str] | None,
    max_eval_steps: int,
) -> ShadowResult:
    observations = getattr(policy, "observations", None) or (lambda ep: ep.observation_vector(observation_keys))
    pairs = shadow_pairs(episodes, observations, action_keys)
    namer = ActionNamer.for_episodes(episodes, action_keys)

    def act(obs: Any) -> Any:
        return namer(policy.act(obs))

    return shadow_evaluate(act, policy.reset, pairs, distance, violates, max_eval_steps)


def shadow_policy(
    load: Callable[[], Any],
    episodes: Sequence[Episode],
    distance: ActionDistance,
    violates: Violates,
    observation_keys: Sequence[str] | None,
    action_keys: Sequence[str] | None,
    max_eval_steps: int,
) -> ShadowResult:
    """Load a policy and run it in shadow on ``episodes``; a policy that does not load (or that
    the loader cannot run: ``load`` returned None) gives a result with an ``error``, never an
    exception. ``load`` returns a :class:`GatePolicy` or anything with the same attributes."""
    try:
        policy = load()
    except Exception as exc:  # a model that does not even load is rejected, not a crash
        return ShadowResult(error=f"cannot load the model: {type(exc).__name__}: {exc}")
    if policy is None:
        return ShadowResult(error="these hooks cannot run this model")
    return _shadow_loaded(policy, episodes, distance, violates, observation_keys, action_keys, max_eval_steps)


def shadow_brain(brain: HopeBrain, episodes: Sequence[Episode], cfg: SafetyGateConfig) -> ShadowResult:
    """A loaded HOPE brain in shadow on ``episodes`` (real ones only), with its own action bounds."""
    policy = _brain_policy(brain)
    assert policy.guards is not None
    return _shadow_loaded(policy, real_episodes(episodes), *policy.guards, None, None, cfg.max_eval_steps)


# --------------------------------------------------------------------------- the gate


def is_stub_manifest(manifest: Mapping[str, Any]) -> bool:
    """A dry run of a trainer's loop (no weights): never promoted."""
    return manifest.get("kind") == "stub" or bool(manifest.get("stub"))


def gate_candidate(
    store: PromotionStore,
    episodes: Sequence[Episode] | Callable[[], Sequence[Episode]],
    cfg: SafetyGateConfig | None,
    load_policy: Callable[[Path], Any],
    guards: Guards | None = None,
    *,
    observation_keys: Sequence[str] | None = None,
    action_keys: Sequence[str] | None = None,
    stub: bool = False,
) -> GateResult:
    """Judge the store's candidate against its current model; decides nothing in the store.

    ``episodes``: the held-out episodes, oldest first, or a function that reads them (called
    only once the candidate's files verified, so a broken candidate costs no reading).
    Imagined episodes among them are dropped: a gate judges on real data. ``load_policy(slot
    directory)`` returns a :class:`GatePolicy` (or an object with ``act``, ``reset`` and
    ``observations``), or None when it cannot run that slot; its exceptions reject the
    candidate, they never propagate. ``guards``: ``(action_distance, violates)`` for both
    runs; None takes the candidate policy's own ``guards`` (a HOPE brain's action bounds),
    else finite-values-only guards. ``stub`` (or a stub manifest): run in shadow, never
    promoted. ``observation_keys`` / ``action_keys``: how observations are read for a policy
    without ``observations`` and how actions are named for the guards.
    """
    cfg = cfg or SafetyGateConfig()
    candidate_dir = store.slot("candidate")
    try:
        manifest = store.verify(candidate_dir)
    except StoreError as exc:  # corrupted or incomplete: rejected (and kept for inspection)
        broken = ShadowResult(error=str(exc))
        return GateResult(
            False, f"candidate files do not match its manifest: {exc}", broken.to_dict(), None, cfg.to_dict()
        )
    stub = stub or is_stub_manifest(manifest)
    given = list(episodes() if callable(episodes) else episodes)
    held_out = real_episodes(given)
    if len(held_out) < len(given):
        log.info("gate: %d imagined episode(s) left out of the evaluation data", len(given) - len(held_out))

    def run(slot_dir: Path, what: str, guards: Guards | None) -> tuple[ShadowResult, Guards | None]:
        try:
            policy = load_policy(slot_dir)
        except Exception as exc:  # a model that does not even load is rejected, not a crash
            return ShadowResult(error=f"cannot load the {what}: {type(exc).__name__}: {exc}"), guards
        if policy is None:
            return ShadowResult(error=f"cannot run the {what} with these hooks"), guards
        guards = guards or getattr(policy, "guards", None) or build_simple_action_guards()
        result = _shadow_loaded(policy, held_out, *guards, observation_keys, action_keys, cfg.max_eval_steps)
        return result, guards

    candidate, used = run(candidate_dir, "candidate", guards)
    if stub:
        reason = "stub: a dry run of the trainer loop (no weights); never promoted"
        return GateResult(False, reason, candidate.to_dict(), None, cfg.to_dict())
    current = None
    if store.current_version() is not None:
        current, _ = run(store.slot("current"), "current model", used)
    return gate(candidate, current, cfg)


def gate_metrics(result: GateResult) -> dict[str, Any]:
    """The audit's view of both shadow runs (:data:`GATE_METRICS` of each)."""
    return {
        "candidate": {k: result.candidate.get(k) for k in GATE_METRICS},
        "current": {k: result.current.get(k) for k in GATE_METRICS} if result.current else None,
    }


def gate_record(result: GateResult, *, metrics: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What the store records for a decision (the audit line, the promoted manifest's ``gate``,
    ``rejected/<version>/gate.json``): ``passed``, ``reason``, ``metrics`` (both shadow runs,
    plus ``metrics``, e.g. ``{"training": ...}``) and the ``extra`` keys."""
    return {
        "passed": result.passed,
        "reason": result.reason,
        "metrics": {**gate_metrics(result), **(metrics or {})},
        **extra,
    }


def apply_gate(store: PromotionStore, result: GateResult, record: dict[str, Any] | None = None) -> None:
    """Promote the candidate if it passed, set it aside in ``rejected/`` if not; ``record``
    (default :func:`gate_record`) goes to the audit log. Store errors (a full disk) propagate."""
    record = record if record is not None else gate_record(result)
    if result.passed:
        store.promote(record)
    else:
        store.reject(record)


# --------------------------------------------------------------------------- the seed path


def evaluate_candidate(
    store: PromotionStore, rlds_dir: str | os.PathLike | None = None, cfg: SafetyGateConfig | None = None
) -> GateResult:
    """Gate the candidate as a HOPE brain (seed, or seed + adapter) on the newest
    ``eval_tail_episodes`` real episodes of ``rlds_dir`` (default: the manifest's)."""
    cfg = cfg or SafetyGateConfig()

    def episodes() -> list[Episode]:
        where = rlds_dir
        if where is None:
            manifest = store.manifest("candidate") or {}  # verified by now
            where = manifest.get("rlds_dir")
        return tail_episodes(where, cfg.eval_tail_episodes) if where else []

    return gate_candidate(store, episodes, cfg, hope_policy)


def promote_candidate(
    model_root: str | os.PathLike,
    rlds_dir: str | os.PathLike | None = None,
    cfg: SafetyGateConfig | None = None,
    max_history: int = 10,
) -> tuple[GateResult, dict[str, Any]]:
    """Gate the candidate; promote it if it passes, set it aside if not. Returns the gate
    result and the store's new description."""
    store = PromotionStore(Path(model_root), max_history=max_history)
    if not store.slot("candidate").exists():
        raise StoreError(f"no candidate in {model_root}: nothing to promote")
    result = evaluate_candidate(store, rlds_dir, cfg)
    apply_gate(store, result, gate_record(result))
    return result, store.describe()
