"""The promotion gate's sim twin: a model store slot run closed-loop through ``BrainService.act``.

The gate (:func:`continuonbrain.models.promotion.gate_candidate`) may not import the runtime
or the simulators (``models`` imports only ``rlds`` and ``hope``), so the closed-loop check is
handed to it as a callable, ``slot directory -> figures``. This module builds that callable,
once, for every path that gates: ``continuonbrain models promote``, ``POST
/api/models/promote``, ``continuonbrain adapt`` (the adapter trainer's own promotion) and the
demo. It scores a slot exactly as ``continuonbrain eval`` does
(:func:`~continuonbrain.runtime.served_policy.evaluate_served`): a :class:`BrainService` on
the slot, one session, ``reset=True`` at each episode start, the same seeded episodes for
candidate and current, so the gate sees what the robot's serving path would do, bugs of that
path included.

Each run is appended to ``<model_root>/evaluations.jsonl`` under the slot's version with
``source: "gate"`` (best effort, as ``eval`` records), so the Robot Editor shows the twin's
figures per version. Baselines are not run (the gate compares two models, not a model and the
expert), which halves the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from continuonbrain.models.safety import SafetyGateConfig
from continuonbrain.runtime.served_policy import evaluate_served
from continuonbrain.sim.evaluate import space_dims

__all__ = ["check_sim_env", "closed_loop_runner"]


def check_sim_env(cfg: SafetyGateConfig) -> None:
    """Raise ``ValueError`` naming the env when ``cfg.sim_env`` cannot be made (an unknown id,
    a space the evaluation cannot drive): a typo in the gate config is the caller's error
    (exit 2, HTTP 422), not a reason to set the candidate aside as rejected."""
    if not cfg.sim_env:
        return
    try:
        space_dims(cfg.sim_env, cfg.sim_env_kwargs)
    except Exception as exc:  # gymnasium's errors for unknown ids, ImportError for module:EnvId
        raise ValueError(f"the gate's sim twin {cfg.sim_env!r} cannot be made: {type(exc).__name__}: {exc}") from None


def closed_loop_runner(cfg: SafetyGateConfig) -> Callable[[Path], Mapping[str, Any]] | None:
    """The sim twin of ``cfg`` (None when ``cfg.sim_env`` is not set): ``runner(slot_dir)``
    evaluates ``<model_root>/<slot>`` on ``cfg.sim_env`` for ``cfg.sim_episodes`` episodes from
    ``cfg.sim_seed`` and returns ``evaluate_served``'s result. Its errors (a model that does
    not fit the env, an empty slot) propagate: the gate turns them into a refusal naming them."""
    if not cfg.sim_env:
        return None
    env_id, episodes, seed = cfg.sim_env, cfg.sim_episodes, cfg.sim_seed
    env_kwargs = dict(cfg.sim_env_kwargs) if cfg.sim_env_kwargs else None

    def run(slot_dir: Path) -> Mapping[str, Any]:
        slot_dir = Path(slot_dir)
        return evaluate_served(
            slot_dir.parent,
            env_id,
            slot=slot_dir.name,
            episodes=episodes,
            seed=seed,
            baselines=False,
            env_kwargs=env_kwargs,
            source="gate",
        )

    return run
