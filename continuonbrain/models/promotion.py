"""Gate the candidate slot and promote or reject it: one path for the CLI, the API and trainers.

The candidate brain (HOPE seed, with or without a LoRA adapter) runs in shadow on the newest
``eval_tail_episodes`` episodes of the data it was trained for (``rlds_dir`` from its
manifest unless given), next to the current brain on the same episodes; the
:func:`~continuonbrain.trainer.safety.gate` decides, the store rotates the slots, and
``audit.jsonl`` records why. A stub candidate (a dry run of the trainer's loop) is never
promoted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from continuonbrain.hope import HopeBrain, HopeConfig
from continuonbrain.rlds import Episode, read_episodes
from continuonbrain.trainer.safety import (
    GateResult,
    SafetyGateConfig,
    ShadowResult,
    build_simple_action_guards,
    gate,
    shadow_evaluate,
)
from continuonbrain.trainer.store import PromotionStore, StoreError


def tail_episodes(rlds_dir: str | os.PathLike, n: int) -> list[Episode]:
    """The newest ``n`` good episodes (read order is sorted by name: ids and logger file
    names grow with time), kept in memory: a gate's worth is small."""
    tail: list[Episode] = []
    for ep in read_episodes(rlds_dir, on_error="skip"):
        tail.append(ep)
        if len(tail) > n:
            tail.pop(0)
    return tail


def _pairs(episodes: Sequence[Episode], hope: HopeConfig) -> Iterator[tuple[Any, Any]]:
    """(observations, logged actions) per episode, shaped as the brain takes them on the
    robot: state vectors, or dicts of state keys and decoded camera frames."""
    keys = hope.state_keys or None
    for ep in episodes:
        if not hope.image_keys:
            yield ep.observation_vector(keys), ep.action_vector()
            continue
        obs = ep.observation
        frames = {k: obs[k] for k in hope.image_keys}
        steps = [
            {**{k: obs[k][t] for k in hope.state_keys}, **{k: col[t].decode() for k, col in frames.items()}}
            for t in range(len(ep))
        ]
        yield steps, ep.action_vector()


def shadow_brain(brain: HopeBrain, episodes: Sequence[Episode], cfg: SafetyGateConfig) -> ShadowResult:
    hope = brain.config
    bounds = {str(i): (lo, hi) for i, (lo, hi) in enumerate(zip(hope.action_low, hope.action_high, strict=True))}
    distance, violates = build_simple_action_guards(per_key_bounds=bounds)
    return shadow_evaluate(brain.act, brain.reset, _pairs(episodes, hope), distance, violates, cfg.max_eval_steps)


def evaluate_candidate(
    store: PromotionStore, rlds_dir: str | os.PathLike | None = None, cfg: SafetyGateConfig | None = None
) -> GateResult:
    cfg = cfg or SafetyGateConfig()
    try:
        manifest = store.verify(store.slot("candidate"))
    except StoreError as exc:  # corrupted or incomplete: rejected (and kept for inspection)
        broken = ShadowResult(error=str(exc))
        return GateResult(
            False, f"candidate files do not match its manifest: {exc}", broken.to_dict(), None, cfg.to_dict()
        )
    if manifest.get("kind") == "stub" or manifest.get("stub"):
        empty = ShadowResult(error="stub candidate")
        return GateResult(False, "stub candidate (a dry run): never promoted", empty.to_dict(), None, cfg.to_dict())
    rlds_dir = rlds_dir or manifest.get("rlds_dir")
    episodes = tail_episodes(rlds_dir, cfg.eval_tail_episodes) if rlds_dir else []
    try:
        candidate = shadow_brain(HopeBrain.load(store.slot("candidate")), episodes, cfg)
    except Exception as exc:  # a candidate that does not even load is rejected, not a crash
        candidate = ShadowResult(error=f"cannot load the candidate: {type(exc).__name__}: {exc}")
    current = None
    if store.current_version() is not None:
        try:
            current = shadow_brain(HopeBrain.load(store.slot("current")), episodes, cfg)
        except Exception as exc:
            current = ShadowResult(error=f"cannot load the current model: {exc}")
    return gate(candidate, current, cfg)


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
    record = {"passed": result.passed, "reason": result.reason, "metrics": _metrics(result)}
    if result.passed:
        store.promote(record)
    else:
        store.reject(record)
    return result, store.describe()


def _metrics(result: GateResult) -> dict[str, Any]:
    pick = ("steps", "episodes", "avg_action_delta", "violations", "error")
    return {
        "candidate": {k: result.candidate.get(k) for k in pick},
        "current": {k: result.current.get(k) for k in pick} if result.current else None,
    }
