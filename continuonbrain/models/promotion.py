"""The promotion gate: one path for seeds and adapters, for the CLI, the API, the trainers and the demo.

Every candidate, a HOPE seed from ``continuonbrain train`` or a LoRA adapter from the local
trainer, is judged by :func:`gate_candidate`, and its verdict is applied by
:func:`apply_gate`::

    candidate files verified against the manifest        else rejected, nothing is run
    the held-out episodes: the candidate manifest's held_out set (never trained on)
    candidate and current run in shadow on those same episodes (max_eval_steps)
    replay episodes (an adapter's: what the brain could already do): both again, paired
    offline decision (continuonbrain.models.safety.gate): errors, bounds, ceiling,
        paired held-out difference, forgetting, shadow window (require_shadow)
    the sim twin (cfg.sim_env, if the offline checks passed): both closed-loop on the same
        seeded episodes through BrainService.act (an injected runner: see ClosedLoop)
    pass -> PromotionStore.promote (old current to history/)   fail -> PromotionStore.reject (rejected/)
    audit.jsonl, the promoted manifest's gate and rejected/<version>/gate.json record why
        (gate_record: passed, reason, both runs' metrics, checks with every value)

Where the held-out episodes come from (:mod:`~continuonbrain.models.held_out`,
:func:`manifest_held_out`): both trainers hold out the
newest real episodes of their data and record them in the candidate's manifest (``held_out``:
``rlds_dir``, ``split``, ``episode_ids``; :func:`held_out_record`). A manifest written before
that falls back to the newest ``eval_tail_episodes`` episodes of its ``rlds_dir``, and the
record says so (they may have been training data). The adapter trainer hands its held-out
episodes in directly (:func:`hold_out`).

Which config (:mod:`~continuonbrain.models.gate_config`, :func:`load_gate_config`):
``<model_root>/gate_config.json`` when the store has
one, so that ``models promote``, ``POST /api/models/promote``, the adapter trainer and the
demo judge a store's candidates alike; else the adapter job's ``safety`` section (the server
passes its adaptation config's), else the defaults. ``models promote --sim-env ENV
--sim-episodes N`` overrides the sim twin for one call.

The rules are the same for every path:

* **A gate judges on real data.** Imagined episodes (``provenance.origin`` ``imagined:*``, the
  world model's own rollouts) are never evaluation data: they say what a model expected, not
  what the robot did, and a candidate scored on them would be graded on its own predictions.
  :func:`tail_episodes` and :func:`hold_out` skip them, and :func:`gate_candidate` drops any
  that a caller hands in. They may still be training data (under the trainers' caps).
* **Paired, relative, then absolute.** Candidate and current are scored on the same episodes
  and compared episode by episode; the absolute ceiling is only a last guard.
* **Closed loop where there is a loop to close.** Action distance on logged episodes does not
  predict closed-loop behaviour well enough (a 30-step seed passed the old distance gate and
  reached 12% of reach2d targets against 100%), so a store whose task has a simulator names
  it (``sim_env``) and the gate runs both models on it. The runner is injected (models/ may
  not import runtime/ or sim/): :func:`continuonbrain.runtime.sim_twin.closed_loop_runner`,
  used by every caller. A config naming a sim twin with no runner is refused, not skipped.
* **Bounded memory.** Observations reach the policy one step at a time, camera frames decoded
  per step (:func:`step_observations`): a whole episode of decoded frames does not fit a Pi's
  memory budget. The held-out episodes themselves stay encoded (frames are lazy).
* **The newest behaviour first.** Episodes are replayed newest first, so the
  ``max_eval_steps`` budget goes to what the robot did last.
* **A stub is never promoted.** A dry run of a trainer's loop (manifest ``kind: "stub"``) is
  run in shadow, so the dry run shows what the gate would see, and then set aside.

Importing this module does not import torch: :func:`hope_policy` imports the HOPE brain when
it loads one, so the stub path and the store's users stay free of it.

Why one module of 555 lines: it is the one promotion gate, and the rule is that there is one
path: shadow runs, the replay and sim twin evidence, the gate call and applying the verdict
are the steps of that single path, and keeping them together is what keeps the seed and
adapter paths from drifting apart. Which episodes judge (:mod:`~continuonbrain.models.held_out`)
and which config (:mod:`~continuonbrain.models.gate_config`) are their own modules; their
names are re-exported here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuonbrain.models.gate_config import GATE_CONFIG_FILE, load_gate_config, write_gate_config
from continuonbrain.models.held_out import (
    held_out_record,
    hold_out,
    manifest_held_out,
    real_episodes,
    select_episodes,
    tail_episodes,
)
from continuonbrain.models.safety import (
    ActionDistance,
    GateResult,
    SafetyGateConfig,
    ShadowResult,
    Violates,
    build_simple_action_guards,
    gate,
    shadow_evaluate,
    sim_check,
)
from continuonbrain.models.store import PromotionStore, StoreError
from continuonbrain.rlds import Episode

if TYPE_CHECKING:
    from continuonbrain.hope import HopeBrain, HopeConfig

log = logging.getLogger(__name__)

__all__ = [
    "GATE_CONFIG_FILE",
    "GATE_METRICS",
    "ActionNamer",
    "ClosedLoop",
    "GatePolicy",
    "Guards",
    "apply_gate",
    "evaluate_candidate",
    "gate_candidate",
    "gate_metrics",
    "gate_record",
    "held_out_record",
    "hold_out",
    "hope_guards",
    "hope_policy",
    "is_stub_manifest",
    "load_gate_config",
    "manifest_held_out",
    "promote_candidate",
    "real_episodes",
    "select_episodes",
    "shadow_brain",
    "shadow_pairs",
    "shadow_policy",
    "step_observations",
    "tail_episodes",
    "write_gate_config",
]

#: ``(action_distance, violates)``, as :func:`~continuonbrain.models.safety.build_simple_action_guards` returns.
Guards = tuple[ActionDistance, Violates]
#: What each shadow run contributes to the audit record.
GATE_METRICS = ("steps", "episodes", "avg_action_delta", "violations", "first_violation", "error")


# --------------------------------------------------------------------------- observations


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


#: ``slot directory -> closed-loop figures`` (``continuonbrain eval``'s result: ``success_rate``,
#: ``mean_return``, ``mean_final_distance``, ``distance_metric``): the sim twin, built by the
#: caller (:func:`continuonbrain.runtime.sim_twin.closed_loop_runner`) because this package may
#: not import the runtime or the simulators.
ClosedLoop = Callable[[Path], Mapping[str, Any]]
#: Episodes, or a function that reads them (called only once the candidate's files verified).
EpisodesOrReader = Sequence[Episode] | Callable[[], Sequence[Episode]]


def gate_candidate(
    store: PromotionStore,
    episodes: EpisodesOrReader,
    cfg: SafetyGateConfig | None,
    load_policy: Callable[[Path], Any],
    guards: Guards | None = None,
    *,
    observation_keys: Sequence[str] | None = None,
    action_keys: Sequence[str] | None = None,
    stub: bool = False,
    replay: EpisodesOrReader | None = None,
    closed_loop: ClosedLoop | None = None,
    held_out_info: Mapping[str, Any] | None = None,
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

    ``replay``: held-out episodes of what the brain could already do (an adapter's replay
    set): candidate and current are compared on them too, paired, as ``checks["forgetting"]``.
    ``closed_loop``: the sim twin (:data:`ClosedLoop`), run on both slots when ``cfg.sim_env``
    is set and the offline checks passed (a config naming a sim twin with no runner given is
    refused, never silently skipped). ``cfg.require_shadow``: the store's last live shadow
    window must be of this candidate beside this current model and have passed.
    ``held_out_info``: where the held-out episodes came from, recorded in ``checks["held_out"]``.
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
    held_out = _real(episodes, "held-out")

    def run(
        slot_dir: Path, what: str, guards: Guards | None, data: Sequence[Episode]
    ) -> tuple[ShadowResult, Guards | None]:
        try:
            policy = load_policy(slot_dir)
        except Exception as exc:  # a model that does not even load is rejected, not a crash
            return ShadowResult(error=f"cannot load the {what}: {type(exc).__name__}: {exc}"), guards
        if policy is None:
            return ShadowResult(error=f"cannot run the {what} with these hooks"), guards
        guards = guards or getattr(policy, "guards", None) or build_simple_action_guards()
        result = _shadow_loaded(policy, data, *guards, observation_keys, action_keys, cfg.max_eval_steps)
        return result, guards

    candidate, used = run(candidate_dir, "candidate", guards, held_out)
    if stub:
        reason = "stub: a dry run of the trainer loop (no weights); never promoted"
        return GateResult(False, reason, candidate.to_dict(), None, cfg.to_dict())
    current_version = store.current_version()
    current = None
    if current_version is not None:
        current, _ = run(store.slot("current"), "current model", used, held_out)
    forgetting = None
    replayed = _real(replay, "replay") if replay is not None else None
    if replayed is not None:
        f_cand, _ = run(candidate_dir, "candidate", used, replayed)
        f_cur = run(store.slot("current"), "current model", used, replayed)[0] if current is not None else None
        forgetting = (f_cand, f_cur)
    shadow = _shadow_evidence(store, manifest, current_version) if cfg.require_shadow else None
    offline = gate(candidate, current, cfg, forgetting=forgetting, shadow=shadow)
    sim_twin = None
    if cfg.sim_env:
        if not offline.passed:
            sim_twin = {"env": cfg.sim_env, "skipped": f"not run: {offline.reason}", "passed": None}
        else:
            sim_twin = _sim_evidence(closed_loop, candidate_dir, store.slot("current") if current else None, cfg)
    result = gate(candidate, current, cfg, forgetting=forgetting, sim_twin=sim_twin, shadow=shadow)
    result.checks["held_out"] = {
        **(held_out_info or {"source": "given"}),
        "episode_ids": [ep.episode_id for ep in held_out],
        **result.checks.get("held_out", {}),
    }
    if replayed is not None and "forgetting" in result.checks:
        result.checks["forgetting"]["episode_ids"] = [ep.episode_id for ep in replayed]
    return result


def _real(episodes: EpisodesOrReader, what: str) -> list[Episode]:
    given = list(episodes() if callable(episodes) else episodes)
    real = real_episodes(given)
    if len(real) < len(given):
        log.info("gate: %d imagined %s episode(s) left out of the evaluation data", len(given) - len(real), what)
    return real


def _sim_evidence(
    closed_loop: ClosedLoop | None, candidate_dir: Path, current_dir: Path | None, cfg: SafetyGateConfig
) -> dict[str, Any]:
    """Both slots closed-loop on the sim twin, then :func:`~continuonbrain.models.safety.sim_check`."""
    if closed_loop is None:
        missing = {"error": "the gate config names a sim twin but no closed-loop runner was given to the gate"}
        return sim_check(missing, None, cfg)

    def figures(slot_dir: Path) -> dict[str, Any]:
        started = time.monotonic()
        try:
            out = dict(closed_loop(slot_dir))
        except Exception as exc:  # a model that cannot run on the twin is refused, not a crash
            out = {"error": f"{type(exc).__name__}: {exc}"}
        out["wall_time_s"] = round(time.monotonic() - started, 3)
        return out

    cand = figures(candidate_dir)
    cur = figures(current_dir) if current_dir is not None and not cand.get("error") else None
    check = sim_check(cand, cur, cfg)
    for name, r in (("candidate_run", cand), ("current_run", cur)):
        if r and not r.get("error"):
            check[name] = {k: r.get(k) for k in _SIM_FIGURES if k in r}
    return check


#: What the record keeps of each closed-loop run (the per-episode rows are left out).
_SIM_FIGURES = ("model_version", "success_rate", "mean_return", "mean_final_distance", "mean_length", "wall_time_s")


def _shadow_evidence(store: PromotionStore, manifest: Mapping[str, Any], current_version: str | None) -> dict[str, Any]:
    """``require_shadow``: the store's last live shadow window, judged by
    :func:`~continuonbrain.models.shadow_stats.shadow_verdict`."""
    from continuonbrain.models.shadow_stats import (
        ShadowRecordError,
        manifest_sha256,
        read_shadow_record,
        shadow_verdict,
    )

    out: dict[str, Any] = {"candidate_version": manifest.get("version"), "current_version": current_version}
    try:
        record = read_shadow_record(store.root)
    except ShadowRecordError as exc:
        return {**out, "passed": False, "why": str(exc)}
    if record is not None:
        keep = ("candidate_version", "current_version", "ticks", "window_ticks", "mean_action_distance")
        keep += ("p95_action_distance", "bound_violations", "non_finite", "passed")
        out["record"] = {k: record.get(k) for k in keep}
    why = shadow_verdict(
        record,
        candidate_version=manifest.get("version"),
        candidate_manifest_sha256=manifest_sha256(store.slot("candidate")),
        current_version=current_version,
    )
    return {**out, "passed": why is None, "why": why}


def gate_metrics(result: GateResult) -> dict[str, Any]:
    """The audit's view of both shadow runs (:data:`GATE_METRICS` of each)."""
    return {
        "candidate": {k: result.candidate.get(k) for k in GATE_METRICS},
        "current": {k: result.current.get(k) for k in GATE_METRICS} if result.current else None,
    }


def gate_record(result: GateResult, *, metrics: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What the store records for a decision (the audit line, the promoted manifest's ``gate``,
    ``rejected/<version>/gate.json``): ``passed``, ``reason``, ``metrics`` (both shadow runs,
    plus ``metrics``, e.g. ``{"training": ...}``), ``checks`` (every check with its values:
    :attr:`~continuonbrain.models.safety.GateResult.checks`) and the ``extra`` keys."""
    return {
        "passed": result.passed,
        "reason": result.reason,
        "metrics": {**gate_metrics(result), **(metrics or {})},
        "checks": result.checks,
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
    store: PromotionStore,
    rlds_dir: str | os.PathLike | None = None,
    cfg: SafetyGateConfig | None = None,
    *,
    closed_loop: ClosedLoop | None = None,
) -> GateResult:
    """Gate the candidate as a HOPE brain (seed, or seed + adapter) on its held-out episodes
    (:func:`manifest_held_out`), with the sim twin ``closed_loop`` when ``cfg.sim_env`` is set."""
    cfg = cfg or SafetyGateConfig()
    info: dict[str, Any] = {}

    def episodes() -> list[Episode]:
        manifest = store.manifest("candidate") or {}  # verified by now
        found, where = manifest_held_out(manifest, cfg, rlds_dir)
        info.update(where)
        return found

    # held_out_info is filled in by episodes(), which gate_candidate calls before it records it
    return gate_candidate(store, episodes, cfg, hope_policy, closed_loop=closed_loop, held_out_info=info)


def promote_candidate(
    model_root: str | os.PathLike,
    rlds_dir: str | os.PathLike | None = None,
    cfg: SafetyGateConfig | None = None,
    max_history: int = 10,
    *,
    closed_loop: ClosedLoop | None = None,
    config_source: str | None = None,
) -> tuple[GateResult, dict[str, Any]]:
    """Gate the candidate; promote it if it passes, set it aside if not. Returns the gate
    result and the store's new description. ``cfg`` None: :func:`load_gate_config`."""
    store = PromotionStore(Path(model_root), max_history=max_history)
    if not store.slot("candidate").exists():
        raise StoreError(f"no candidate in {model_root}: nothing to promote")
    if cfg is None:
        cfg, config_source = load_gate_config(model_root)
    result = evaluate_candidate(store, rlds_dir, cfg, closed_loop=closed_loop)
    extra = {"config_source": config_source} if config_source else {}
    apply_gate(store, result, gate_record(result, **extra))
    return result, store.describe()
