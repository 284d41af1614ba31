"""The promotion decision: paired shadow comparison, bounds, a ceiling, a sim twin, a shadow window.

New weights never drive the robot until they have been judged against the brain that drives
now. The evidence (gathered by :mod:`continuonbrain.models.promotion`):

* **Held-out episodes, paired.** Candidate and current run *in shadow* on the same held-out
  episodes (recorded in the candidate's manifest, never trained on): fed the logged
  observations, their actions are compared with what the robot did (``action_distance``) and
  checked against hard bounds (``violates``). The decision uses the per-episode differences
  ``candidate - current``: it refuses when their mean exceeds ``max(regression_margin,
  margin_se_k x SE)``. Two means from different data (the old gate) cannot tell a worse
  model from harder episodes; a paired difference can, and its spread says how sure it is.
* **A ceiling** (``avg_action_delta_threshold``): a last guard, the only distance check
  when there is no current model.
* **Forgetting.** An adapter is also compared with the current model on replay episodes of
  what the brain could already do (the same paired check on another set).
* **A sim twin** (``sim_env``): both run closed-loop on the same seeded episodes through the
  serving path; a lower success rate (or return, or a larger distance) beyond a margin is
  refused, since action distance on logged data does not predict closed-loop behaviour well
  (a 30-step seed passed the old gate and reached 12% of targets).
* **A live shadow window** (``require_shadow``) for robots without a simulator.

Every check is recorded with its values (:attr:`GateResult.checks`); the reason is the first
failing one, naming the metric and both values.

Actions reach the guards as dicts of named arrays (Donkeycar: ``steering``, ``throttle``) or
as vectors; ``per_key_bounds`` names components of either (a vector's names are its action
keys in order).

This module is the decision and its guards (numpy only); :mod:`continuonbrain.models.promotion`
picks the held-out episodes, runs the slots in shadow, calls the injected closed-loop runner
and rotates the store, for seeds and adapters alike.
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
    "paired_check",
    "shadow_evaluate",
    "sim_check",
]

ActionDistance = Callable[[Any, Any], float]
Violates = Callable[[Any], str | None]


class SafetyGateConfig(ConfigModel):
    """What a candidate must show before it may drive (a strict
    :class:`~continuonbrain.config_base.ConfigModel`: unknown keys and out-of-range values
    raise :class:`~continuonbrain.config_base.ConfigError` naming the field).

    The offline checks compare candidate and current on the *same* held-out episodes, episode
    by episode (a paired comparison: both models see the same observations, so most of the
    episode-to-episode spread cancels out of the difference); the sim twin (``sim_env``) runs
    both closed-loop on the same seeded episodes; ``require_shadow`` asks for a passed live
    shadow window. The figures behind the defaults are in BENCHMARKS.md ("Promotion gate").
    """

    avg_action_delta_threshold: float = Field(0.40, ge=0)
    """The absolute ceiling, a last guard: mean per-component |candidate - logged| action
    difference allowed on the held-out episodes whatever the current model does (it is the
    only distance check when there is no current model). Normalised units when actions live
    in [-1, 1] (Donkeycar steering/throttle, the arm's joint commands). Measured on reach2d
    (8 held-out episodes of 60 expert ones, BENCHMARKS.md "Promotion gate"): a good seed
    scores 0.30 (0.28 retrained with another seed), a 30-step one 0.28 as well, doing
    nothing 0.475 and uniform random actions 0.67. So 0.40 refuses only a model no better
    than standing still; it cannot tell a good seed from a bad one, which is why the
    decision is relative (``held_out``) and closed-loop (``sim_env``). (The former default
    0.25 refused good reach2d seeds once they were judged on episodes they had not seen.)"""
    max_eval_steps: int = Field(1024, ge=1)
    """Shadow-evaluation steps at most per run (the newest held-out steps first); the same
    budget applies to the replay (forgetting) set."""
    eval_tail_episodes: int = Field(8, ge=0)
    """How many of the newest real episodes the adapter trainer holds out for the gate; for a
    candidate whose manifest records no held-out set (one written before held-out sets were
    recorded), the gate falls back to this many newest episodes of its ``rlds_dir`` and says
    so in the record (those may have been training data)."""
    allow_promotion_without_eval: bool = False
    """Promote even with no evaluation data (never on a real robot)."""
    regression_margin: float = Field(0.02, ge=0)
    """The floor of the paired margin: the candidate's mean per-episode distance may exceed
    the current model's, on the same episodes, by at most ``max(regression_margin,
    margin_se_k x SE)``, SE being the standard error of the per-episode differences. A
    floor, because with few held-out episodes the SE is itself uncertain (it can come out
    near zero by chance), and a difference under 0.02 is far below the per-episode spread
    measured between equivalent models (next field)."""
    margin_se_k: float = Field(3.0, ge=0)
    """How many standard errors of the paired differences the margin allows (``k`` above).
    Measured on reach2d, a good seed retrained with another seed against the current one on
    the same 8 held-out episodes: per-episode differences with mean -0.002, standard
    deviation 0.109, SE 0.038, so the margin is 0.115; a candidate as good as the current
    falls within 3 SE about 99.7% of the time (normal approximation) and is refused by chance
    rarely. The same measurement shows the limit of any offline distance: a 30-step seed
    differs from the current by -0.001 on average (its closed-loop success is 10% against
    80%), so only the sim twin or a shadow window tells such a candidate apart."""
    sim_env: str | None = None
    """A sim twin of the robot's task (a built-in env id such as ``reach2d``, or a gymnasium
    id): when set, candidate and current also run closed-loop on the same ``sim_episodes``
    seeded episodes through ``BrainService.act`` (as ``continuonbrain eval`` does), and a
    candidate worse than the current beyond ``sim_margin`` is refused. None: no sim twin
    (a real robot without a simulator; use ``require_shadow``)."""
    sim_env_kwargs: dict[str, Any] | None = None
    """Keyword arguments of the sim twin's env (as ``eval``'s ``env_kwargs``)."""
    sim_episodes: int = Field(100, ge=1)
    """Seeded closed-loop episodes per model on the sim twin. 100, because a run of N episodes
    resolves success rates only to about ``sqrt(2p(1-p)/N)``: with 20 (the former default) a
    candidate 10 points below a current at 100% passed a 0.10 margin up to half the time.
    Measured on reach2d (``bench/bench_gate.py``, BENCHMARKS.md "Gate: does it predict
    behaviour?"; paired bootstrap over 300 twin episodes): a seed 10 points below the current
    (true success 89% against 99%) passed 20 episodes / margin 0.10 with probability 0.38,
    100 episodes / margin 0.05 with 0.01, while a re-seeded good one passed with 0.99. The
    cost is linear in it: the whole gate with both models' 100 episodes took 1-3.3 s on a
    loaded 2-core machine."""
    sim_seed: int = Field(1000, ge=0)
    """Base seed of the sim twin's episodes (episode ``i`` uses ``episode_seed(sim_seed, i)``
    for both models). Not 0, the default seed of ``sim collect``: the twin should score
    episodes the models were not trained on."""
    sim_margin: float = Field(0.05, ge=0, le=1)
    """Success-rate points the candidate may lose against the current model on the sim twin.
    Both run the same seeded episodes, so a candidate is charged only for episodes it fails
    and the current does not. The goal: no candidate through whose closed-loop success is
    more than 5 points below the current's. With a current near 100% the paired difference
    of a candidate at p has a standard error of about ``sqrt(p(1-p)/N)`` (the current's few
    failures add little; ``sqrt(2p(1-p)/N)`` when both are at p): 0.03 at p = 0.90, N = 100,
    so a candidate 10 points below passes 0.05 with probability ~5% (normal approximation;
    measured 1%), one 5 points below is a coin flip (it sits on the line), and one as good
    as a current at 99% is refused with probability well under 1% (SE 0.014). With 20
    episodes the same candidate 10 points below has an SE of 0.067 and a margin of 0.10
    (the former default, two episodes) let it through about half the time. A tighter 0.03
    refused the good re-seeded candidate 7% of the time instead of 1% for almost nothing
    (expected bad candidates through 0.01 -> 0.00; ``bench/bench_gate.py``). A candidate near
    the line is refused or not by chance whatever the margin (the bench's 300-step seed, ~5
    points below, passes 37% of the time). Set both together: fewer episodes need a wider
    margin."""
    sim_distance_margin: float | None = Field(0.05, ge=0)
    """Where the env reports a distance (reach2d: the final tip-to-target distance; track2d
    and drive2d: the mean tracking error), the candidate's mean may exceed the current's by at
    most this much (env units; 0.05 is reach2d's success radius). None: no distance check."""
    sim_return_margin: float = Field(0.10, ge=0)
    """For an env without a notion of success: the candidate's mean return may fall below the
    current's by at most this fraction of ``max(|current mean return|, 1)``."""
    require_shadow: bool = False
    """Refuse promotion unless a live shadow window (``POST /api/models/shadow``) of this very
    candidate beside this very current model has passed: what a robot without a sim twin
    shows of closed-loop behaviour before the candidate drives."""


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
    """The gate's verdict: ``passed`` and the ``reason`` that decided it, both shadow runs on
    the held-out episodes, the config, and ``checks``: every check with its values
    (``runs``, ``bounds``, ``ceiling``, ``held_out``, and where they ran ``forgetting``,
    ``sim_twin``, ``shadow``), each with ``passed``."""

    passed: bool
    reason: str
    candidate: dict[str, Any]
    current: dict[str, Any] | None
    config: dict[str, Any]
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def paired_check(candidate: ShadowResult, current: ShadowResult, cfg: SafetyGateConfig) -> dict[str, Any]:
    """The paired comparison of two shadow runs on the same episodes.

    Per episode the difference ``candidate distance - current distance``; the check fails when
    their mean exceeds ``margin = max(regression_margin, margin_se_k x SE)``. The runs pair up
    when they covered the same episodes with the same step counts (both ran the same list
    under the same step budget); otherwise (a run stopped early) the aggregate distances are
    compared against ``regression_margin`` alone and ``paired`` is false.
    """
    c_eps, r_eps = candidate.per_episode, current.per_episode
    c_mean, r_mean = candidate.avg_action_delta, current.avg_action_delta
    out: dict[str, Any] = {"candidate": _round(c_mean), "current": _round(r_mean)}
    same = (
        bool(c_eps)
        and len(c_eps) == len(r_eps)
        and all(a["steps"] == b["steps"] for a, b in zip(c_eps, r_eps, strict=False))
    )
    if not same:
        diff = float(c_mean) - float(r_mean)  # type: ignore[arg-type]
        margin = cfg.regression_margin
        out.update(paired=False, episodes=None, paired_mean_diff=_round(diff), margin=margin)
    else:
        diffs = np.array(
            [a["avg_action_delta"] - b["avg_action_delta"] for a, b in zip(c_eps, r_eps, strict=True)], np.float64
        )
        diff = float(diffs.mean())
        std = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
        se = std / math.sqrt(len(diffs))
        margin = max(cfg.regression_margin, cfg.margin_se_k * se)
        out.update(
            paired=True,
            episodes=len(diffs),
            paired_mean_diff=_round(diff),
            paired_std=_round(std),
            paired_se=_round(se),
            per_episode_diff=[_round(d) for d in diffs.tolist()],
            margin=_round(margin),
        )
    out["passed"] = bool(math.isfinite(diff) and diff <= margin)
    return out


def _paired_text(check: Mapping[str, Any]) -> str:
    where = f"on the same {check['episodes']} held-out episodes" if check["paired"] else "(unpaired: runs differ)"
    return f"mean paired difference {check['paired_mean_diff']:+.4f} {where}, margin {check['margin']:.4f}"


def sim_check(candidate: Mapping[str, Any], current: Mapping[str, Any] | None, cfg: SafetyGateConfig) -> dict[str, Any]:
    """The sim twin's verdict from two closed-loop evaluations on the same seeded episodes
    (``continuonbrain eval``'s figures: ``success_rate``, ``mean_return``,
    ``mean_final_distance``, ``distance_metric``).

    The metric is the success rate where the env has one, else the mean return; where the env
    reports a distance it is checked too (``sim_distance_margin``). A candidate whose
    evaluation raised (``error``) fails; with no current (or one that could not run) the
    candidate's figures are recorded and nothing is compared.
    """
    out: dict[str, Any] = {
        "env": cfg.sim_env,
        "episodes": cfg.sim_episodes,
        "seed": cfg.sim_seed,
    }
    if cfg.sim_env_kwargs:
        out["env_kwargs"] = cfg.sim_env_kwargs
    if candidate.get("error"):
        out.update(metric=None, candidate_error=candidate["error"], passed=False)
        return out
    metric = "success_rate" if candidate.get("success_rate") is not None else "mean_return"
    out.update(metric=metric, candidate=_round(candidate.get(metric)))
    distance_metric = candidate.get("distance_metric") or "final_distance"
    if current is None or current.get("error") or current.get(metric) is None:
        out.update(current=None, passed=True)
        if current is not None and current.get("error"):
            out["current_error"] = current["error"]
        out["note"] = "no current model to compare with" if current is None else "the current model could not run"
        return out
    cand, cur = float(candidate[metric]), float(current[metric])
    margin = cfg.sim_margin if metric == "success_rate" else cfg.sim_return_margin * max(abs(cur), 1.0)
    out.update(current=_round(cur), margin=_round(margin), passed=bool(math.isfinite(cand) and cand >= cur - margin))
    c_dist, r_dist = candidate.get("mean_final_distance"), current.get("mean_final_distance")
    if cfg.sim_distance_margin is not None and c_dist is not None and r_dist is not None:
        ok = math.isfinite(float(c_dist)) and float(c_dist) <= float(r_dist) + cfg.sim_distance_margin
        out["distance"] = {
            "metric": distance_metric,
            "candidate": _round(c_dist),
            "current": _round(r_dist),
            "margin": cfg.sim_distance_margin,
            "passed": ok,
        }
        out["passed"] = out["passed"] and ok
    return out


def _sim_text(check: Mapping[str, Any]) -> str:
    return f"sim twin {check['env']}, {check['episodes']} episodes, seed {check['seed']}"


def _sim_reason(check: Mapping[str, Any]) -> str:
    """Why the sim twin refused: the metric and both values."""
    if check.get("candidate_error"):
        return f"the candidate cannot run closed-loop on the sim twin {check['env']}: {check['candidate_error']}"
    metric, cand, cur, margin = check["metric"], check["candidate"], check["current"], check["margin"]
    if not cand >= cur - margin:
        return (
            f"closed-loop {metric} {cand:.2f} is below the current's {cur:.2f} by more than the margin "
            f"{margin:.2f} ({_sim_text(check)})"
        )
    dist = check["distance"]
    return (
        f"closed-loop mean {dist['metric']} {dist['candidate']:.4f} is over the current's {dist['current']:.4f} "
        f"by more than the margin {dist['margin']} ({_sim_text(check)})"
    )


def gate(
    candidate: ShadowResult,
    current: ShadowResult | None,
    cfg: SafetyGateConfig,
    *,
    forgetting: tuple[ShadowResult, ShadowResult | None] | None = None,
    sim_twin: Mapping[str, Any] | None = None,
    shadow: Mapping[str, Any] | None = None,
) -> GateResult:
    """The promotion decision from the evidence gathered by
    :func:`~continuonbrain.models.promotion.gate_candidate`, with the first reason that
    decided it and every check's values.

    In order: the candidate ran (``runs``), no bound was broken (``bounds``), there was data,
    its distance is under the ceiling (``ceiling``), it is not worse than the current model on
    the same held-out episodes beyond the paired margin (``held_out``), nor on the replay set
    of what the brain could already do (``forgetting``: ``(candidate run, current run)``),
    nor closed-loop on the sim twin (``sim_twin``: :func:`sim_check`'s result), and a live
    shadow window passed where one is required (``shadow``: ``passed`` and ``why``, from
    :func:`continuonbrain.models.shadow_stats.shadow_verdict`).
    """
    checks: dict[str, dict[str, Any]] = {}
    failures: list[str] = []

    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(
            passed, reason, candidate.to_dict(), current.to_dict() if current else None, cfg.to_dict(), checks
        )

    checks["runs"] = {
        "candidate_error": candidate.error,
        "current_error": current.error if current else None,
        "passed": candidate.error is None,
    }
    if candidate.error:
        return result(False, f"candidate raised during shadow evaluation: {candidate.error}")
    checks["bounds"] = {
        "violations": candidate.violations,
        "first_violation": candidate.first_violation,
        "passed": not candidate.violations,
    }
    if candidate.violations:
        return result(False, f"{candidate.violations} bounds violation(s), first: {candidate.first_violation}")
    if candidate.steps == 0 or candidate.avg_action_delta is None:
        checks["held_out"] = {"episodes": 0, "passed": cfg.allow_promotion_without_eval}
        if cfg.allow_promotion_without_eval:
            return result(True, "no evaluation data; promotion without evaluation is allowed by the config")
        return result(False, "no evaluation data (no held-out episodes)")
    delta = candidate.avg_action_delta
    checks["ceiling"] = {
        "candidate": _round(delta),
        "ceiling": cfg.avg_action_delta_threshold,
        "passed": bool(math.isfinite(delta) and delta <= cfg.avg_action_delta_threshold),
    }
    if not checks["ceiling"]["passed"]:
        failures.append(f"avg action delta {delta:.4f} over the threshold {cfg.avg_action_delta_threshold}")
    comparable = current is not None and current.avg_action_delta is not None and not current.error
    if comparable:
        assert current is not None
        checks["held_out"] = paired_check(candidate, current, cfg)
        if not checks["held_out"]["passed"]:
            failures.append(
                f"avg action delta {delta:.4f} is worse than the current model's {current.avg_action_delta:.4f}: "
                + _paired_text(checks["held_out"])
            )
    else:
        checks["held_out"] = {"candidate": _round(delta), "current": None, "passed": True}
        checks["held_out"]["note"] = (
            "no current model to compare with" if current is None else "the current model could not run"
        )
    if forgetting is not None:
        f_cand, f_cur = forgetting
        if f_cand.error or f_cand.violations:
            what = f_cand.error or f"{f_cand.violations} bounds violation(s), first: {f_cand.first_violation}"
            checks["forgetting"] = {"candidate_error": what, "passed": False}
            failures.append(f"forgetting: the candidate failed on the replay episodes: {what}")
        elif f_cand.steps == 0 or f_cand.avg_action_delta is None:
            checks["forgetting"] = {"episodes": 0, "passed": True, "note": "no replay episodes to judge on"}
        elif f_cur is None or f_cur.avg_action_delta is None or f_cur.error:
            checks["forgetting"] = {"candidate": _round(f_cand.avg_action_delta), "current": None, "passed": True}
            checks["forgetting"]["note"] = "no current model to compare with"
        else:
            checks["forgetting"] = paired_check(f_cand, f_cur, cfg)
            if not checks["forgetting"]["passed"]:
                failures.append(
                    f"forgetting: on the replay episodes (what the brain could already do) the avg action delta "
                    f"{f_cand.avg_action_delta:.4f} is worse than the current model's {f_cur.avg_action_delta:.4f}: "
                    + _paired_text(checks["forgetting"]).replace("held-out", "replay")
                )
    if sim_twin is not None:
        checks["sim_twin"] = dict(sim_twin)
        if not sim_twin.get("passed", False) and not sim_twin.get("skipped"):
            failures.append(_sim_reason(sim_twin))
    if shadow is not None:
        checks["shadow"] = dict(shadow)
        if not shadow.get("passed"):
            failures.append(f"a passed live shadow window is required (require_shadow): {shadow.get('why')}")
    if failures:
        return result(False, failures[0])
    if not comparable:
        reason = f"avg action delta {delta:.4f} under {cfg.avg_action_delta_threshold}, no violations"
    else:
        assert current is not None and current.avg_action_delta is not None
        reason = (
            f"avg action delta {delta:.4f} (current {current.avg_action_delta:.4f}), "
            f"{_paired_text(checks['held_out'])}, no violations"
        )
    twin = checks.get("sim_twin")
    if twin and twin.get("current") is not None and twin.get("metric"):
        reason += (
            f"; closed-loop {twin['metric']} {twin['candidate']:.2f} (current {twin['current']:.2f}, {_sim_text(twin)})"
        )
    return result(True, reason)
