"""The promotion gate: shadow evaluation with action-distance and bounds guards.

New weights never drive the robot until they have been run *in shadow* on held-out episodes:
fed the logged observations, their actions are compared with what the robot actually did
(``action_distance``) and checked against hard bounds (``violates``). The gate promotes only
when the average distance is under ``avg_action_delta_threshold``, it is not worse than the
current model's by more than ``regression_margin``, no action broke a bound, nothing raised,
and there was evaluation data at all (unless ``allow_promotion_without_eval``).

Actions reach the guards as dicts of named arrays (Donkeycar: ``steering``, ``throttle``) or
as vectors; ``per_key_bounds`` names components of either (a vector's names are its action
keys in order).

This module is the decision and its guards (numpy only); :mod:`continuonbrain.models.promotion`
picks the held-out episodes, runs the slots in shadow and rotates the store, for seeds and
adapters alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from continuonbrain.config_base import ConfigModel

__all__ = [
    "ActionDistance",
    "GateResult",
    "SafetyGateConfig",
    "ShadowResult",
    "Violates",
    "build_simple_action_guards",
    "gate",
    "shadow_evaluate",
]

ActionDistance = Callable[[Any, Any], float]
Violates = Callable[[Any], str | None]


class SafetyGateConfig(ConfigModel):
    """What a candidate must show in shadow before it may drive (a strict
    :class:`~continuonbrain.config_base.ConfigModel`: unknown keys and out-of-range values
    raise :class:`~continuonbrain.config_base.ConfigError` naming the field)."""

    avg_action_delta_threshold: float = Field(0.25, ge=0)
    """Mean per-component |candidate - logged| action difference allowed (normalised units
    when actions live in [-1, 1], like Donkeycar steering/throttle)."""
    max_eval_steps: int = Field(1024, ge=1)
    """Shadow-evaluation steps at most (the newest held-out steps first)."""
    eval_tail_episodes: int = Field(8, ge=0)
    """Newest episodes held out of training for the gate."""
    allow_promotion_without_eval: bool = False
    """Promote even with no evaluation data (never on a real robot)."""
    regression_margin: float = Field(0.02, ge=0)
    """The candidate may be worse than the current model by at most this much distance."""


def _components(action: Any, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Named float arrays of an action (a dict, or a vector named by ``names`` or by index)."""
    if isinstance(action, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in action.items()}
    vec = np.asarray(action, dtype=np.float64).reshape(-1)
    names = list(names) if names is not None else [str(i) for i in range(len(vec))]
    if len(names) != len(vec):
        raise ValueError(f"{len(vec)} action values but {len(names)} names {names}")
    return {n: vec[i : i + 1] for i, n in enumerate(names)}


def build_simple_action_guards(
    numeric_abs_limit: float | None = None,
    per_key_bounds: Mapping[str, tuple[float, float]] | None = None,
    delta_weight: float = 1.0,
    action_names: Sequence[str] | None = None,
) -> tuple[ActionDistance, Violates]:
    """``(action_distance, violates)`` for the gate.

    ``action_distance(candidate, logged)``: ``delta_weight`` x the mean absolute difference
    over all action components. ``violates(action)``: a reason string when a component is
    not finite, is outside its ``per_key_bounds`` or exceeds ``numeric_abs_limit``, else None.
    """
    bounds = {k: (float(lo), float(hi)) for k, (lo, hi) in (per_key_bounds or {}).items()}

    def action_distance(candidate: Any, logged: Any) -> float:
        a, b = _components(candidate, action_names), _components(logged, action_names)
        if set(a) != set(b):
            raise ValueError(f"action keys differ: candidate {sorted(a)}, logged {sorted(b)}")
        diffs = np.concatenate([np.abs(a[k] - b[k]) for k in sorted(a)])
        return float(delta_weight * diffs.mean()) if diffs.size else 0.0

    def violates(action: Any) -> str | None:
        for name, values in _components(action, action_names).items():
            if not np.isfinite(values).all():
                return f"{name} is not finite ({values.tolist()})"
            if name in bounds:
                lo, hi = bounds[name]
                if (values < lo).any() or (values > hi).any():
                    return f"{name}={values.tolist()} outside [{lo}, {hi}]"
            if numeric_abs_limit is not None and (np.abs(values) > numeric_abs_limit).any():
                return f"|{name}|={np.abs(values).max():.3g} over the limit {numeric_abs_limit}"
        return None

    return action_distance, violates


@dataclass
class ShadowResult:
    """What a policy did in shadow on held-out episodes."""

    steps: int = 0
    episodes: int = 0
    avg_action_delta: float | None = None
    violations: int = 0
    first_violation: str | None = None
    error: str | None = None
    per_episode: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shadow_evaluate(
    act: Callable[[Any], Any],
    reset: Callable[[], None],
    episodes: Iterable[tuple[Sequence[Any], Sequence[Any]]],
    action_distance: ActionDistance,
    violates: Violates,
    max_steps: int,
) -> ShadowResult:
    """Run ``act`` over each held-out episode's logged observations (``reset`` between
    episodes, so recurrent state starts clean) and compare with the logged actions."""
    result = ShadowResult()
    total = 0.0
    try:
        for observations, logged in episodes:
            if result.steps >= max_steps:
                break
            reset()
            ep_total, ep_steps = 0.0, 0
            for obs, ref in zip(observations, logged, strict=True):
                if result.steps >= max_steps:
                    break
                action = act(obs)
                reason = violates(action)
                if reason is not None:
                    result.violations += 1
                    result.first_violation = result.first_violation or f"step {result.steps}: {reason}"
                d = action_distance(action, ref)
                ep_total += d
                ep_steps += 1
                result.steps += 1
            result.episodes += 1
            total += ep_total
            result.per_episode.append({"steps": ep_steps, "avg_action_delta": ep_total / max(ep_steps, 1)})
    except Exception as exc:  # the gate must reject, never crash, on a broken candidate
        result.error = f"{type(exc).__name__}: {exc}"
    if result.steps:
        result.avg_action_delta = total / result.steps
    return result


@dataclass
class GateResult:
    passed: bool
    reason: str
    candidate: dict[str, Any]
    current: dict[str, Any] | None
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(candidate: ShadowResult, current: ShadowResult | None, cfg: SafetyGateConfig) -> GateResult:
    """The promotion decision, with the first reason that decided it."""

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(passed, reason, candidate.to_dict(), current.to_dict() if current else None, cfg.to_dict())

    if candidate.error:
        return result(False, f"candidate raised during shadow evaluation: {candidate.error}")
    if candidate.violations:
        return result(False, f"{candidate.violations} bounds violation(s), first: {candidate.first_violation}")
    if candidate.steps == 0 or candidate.avg_action_delta is None:
        if cfg.allow_promotion_without_eval:
            return result(True, "no evaluation data; promotion without evaluation is allowed by the config")
        return result(False, "no evaluation data (no held-out episodes)")
    delta = candidate.avg_action_delta
    if not math.isfinite(delta) or delta > cfg.avg_action_delta_threshold:
        return result(False, f"avg action delta {delta:.4f} over the threshold {cfg.avg_action_delta_threshold}")
    if current is not None and current.avg_action_delta is not None and not current.error:
        limit = current.avg_action_delta + cfg.regression_margin
        if delta > limit:
            return result(
                False,
                f"avg action delta {delta:.4f} is worse than the current model's {current.avg_action_delta:.4f} "
                f"by more than the margin {cfg.regression_margin}",
            )
        return result(True, f"avg action delta {delta:.4f} (current {current.avg_action_delta:.4f}), no violations")
    return result(True, f"avg action delta {delta:.4f} under {cfg.avg_action_delta_threshold}, no violations")
