"""Evaluate a model the way the robot runs it: through :meth:`BrainService.act`.

``continuonbrain eval`` and ``bench/bench_reflex.py`` score a model store slot in a simulator.
They could load the weights with :class:`~continuonbrain.hope.HopeBrain` and call ``act``
directly, but then a bug in the serving path (verification, observation checks, sessions,
state resets, the numpy export) would never show in the figures. So the model is driven
through a :class:`BrainService` on the slot, one session for the whole evaluation with
``reset=True`` at every episode start, and :func:`~continuonbrain.sim.evaluate.evaluate`
(which must not import ``runtime``) receives it as a plain ``reset()``/``act(obs)`` policy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.models.store import ModelStore
from continuonbrain.runtime.brain_service import BrainService, NoModelError
from continuonbrain.sim.evaluate import evaluate, fit_problems

__all__ = ["ModelEnvMismatch", "ServedPolicy", "evaluate_served", "evaluation_record"]

log = logging.getLogger(__name__)
#: The figures of an evaluation (and of each baseline) that ``evaluations.jsonl`` keeps.
FIGURES = ("success_rate", "mean_return", "mean_final_distance")


class ModelEnvMismatch(ValueError):
    """The served model cannot act in the env (observation or action sizes, keys or image shapes differ)."""


class ServedPolicy:
    """One :class:`BrainService` session as a policy: ``reset()`` starts an episode (the next
    ``act`` passes ``reset=True``), ``act(obs)`` is one ``BrainService.act`` call.

    Remembers every model version that answered (a promotion during an evaluation would mix
    two models into one figure: the caller can tell from :attr:`versions`).
    """

    def __init__(self, service: BrainService, session_id: str = "eval"):
        self.service = service
        self.session_id = session_id
        self.versions: list[str] = []
        self.calls = 0
        self._reset_next = True

    def reset(self) -> None:
        self._reset_next = True

    def act(self, obs: np.ndarray) -> np.ndarray:
        result = self.service.act(obs, session_id=self.session_id, reset=self._reset_next)
        self._reset_next = False
        self.calls += 1
        if not self.versions or self.versions[-1] != result.model_version:
            self.versions.append(result.model_version)
        return result.action


def check_fits(status: dict[str, Any], env_id: str, env_kwargs: dict[str, Any] | None = None) -> None:
    """Raise :class:`ModelEnvMismatch` when the served model cannot act in the env: sizes, and
    for dict observations the keys and image shapes (:func:`~continuonbrain.sim.evaluate.fit_problems`)."""
    problems = fit_problems(status, env_id, env_kwargs)
    if problems:
        raise ModelEnvMismatch(f"model {status.get('version')} does not fit env {env_id!r}: " + "; ".join(problems))


def evaluate_served(
    model_root: str | Path,
    env_id: str,
    *,
    slot: str = "current",
    episodes: int = 100,
    seed: int = 0,
    baselines: bool = True,
    env_kwargs: dict[str, Any] | None = None,
    record: bool = True,
    source: str = "eval",
) -> dict[str, Any]:
    """Score the model in ``<model_root>/<slot>`` on ``env_id`` through a :class:`BrainService`.

    Returns :func:`~continuonbrain.sim.evaluate.evaluate`'s result plus ``model_root``,
    ``slot``, ``model_version`` and ``model_versions`` (more than one if the slot changed
    during the run). Raises :class:`NoModelError` when the slot is empty or its model was
    refused (the reason is in the message), :class:`ModelEnvMismatch` when it does not fit
    the env.

    ``record``: append the figures to ``<model_root>/evaluations.jsonl`` under the version
    (:func:`evaluation_record`, ``source`` says who ran it), which ``GET /api/models`` and the
    Robot Editor show per version. Best effort: a store that cannot be written (read-only, full)
    is logged, never fails the evaluation; a run that saw two versions is not recorded.
    """
    root = Path(model_root)
    if not root.is_dir():
        raise NoModelError(f"no model store at {root} (not a directory)")
    # fallback=False: an evaluation scores the slot it names, never a history version instead
    service = BrainService(root, slot=slot, fallback=False)
    service.start()
    try:
        status = service.status()
        if not status["loaded"]:
            refused = status["refused"]
            why = f"version {refused[-1]['version']} was refused: {refused[-1]['reason']}" if refused else "it is empty"
            raise NoModelError(f"no model to evaluate in {root / slot}: {why}")
        check_fits(status, env_id, env_kwargs)
        policy = ServedPolicy(service)
        result = evaluate(env_id, policy, episodes, seed, baselines=baselines, env_kwargs=env_kwargs)
    finally:
        service.stop()
    out = {
        **result,
        "model_root": str(root),
        "slot": slot,
        "model_version": policy.versions[-1] if policy.versions else status["version"],
        "model_versions": policy.versions,
    }
    if record and len(set(policy.versions)) <= 1:
        try:
            ModelStore(root).record_evaluation(evaluation_record(out, source=source, env_kwargs=env_kwargs))
        except OSError as exc:
            log.warning("evaluation of %s not recorded in %s: %s", out["model_version"], root, exc)
    return out


def evaluation_record(
    result: dict[str, Any], *, source: str = "eval", env_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The line ``evaluations.jsonl`` keeps of an :func:`evaluate_served` result: which version,
    slot, env, episodes and seed, the figures, and the baselines' figures (no per-episode rows)."""

    def figures(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if r is None else {k: r.get(k) for k in FIGURES}

    rec: dict[str, Any] = {
        "version": result["model_version"],
        "slot": result.get("slot"),
        "env": result["env"],
        "episodes": result["episodes"],
        "seed": result["seed"],
        **{k: result.get(k) for k in FIGURES},
        "distance_metric": result.get("distance_metric"),
        "baselines": {k: figures(v) for k, v in (result.get("baselines") or {}).items()} or None,
        "source": source,
    }
    if env_kwargs:
        rec["env_kwargs"] = env_kwargs
    return rec
