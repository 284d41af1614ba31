"""The model store and the promotion gate: the one place that knows how models are kept.

* :mod:`~continuonbrain.models.store`: slots (``candidate/``, ``current/``, ``history/``,
  ``rejected/``), manifests with every file's sha256, the crash journal, ``audit.jsonl`` and
  the servers' leases. Standard library only: no torch, no numpy.
* :mod:`~continuonbrain.models.safety`: the gate's decision and its action guards (numpy).
* :mod:`~continuonbrain.models.promotion`: the one gate path for seeds and adapters: paired
  shadow runs of candidate and current, the replay (forgetting) and sim twin evidence, promote
  or reject. Importing it does not import torch; loading a HOPE brain does.
* :mod:`~continuonbrain.models.held_out`: which episodes judge (real ones, held out of
  training and recorded in the candidate's manifest).
* :mod:`~continuonbrain.models.gate_config`: the store's ``gate_config.json``, read by every
  path that gates.

The runtime, the simulators, the CLI and the trainers all use this package; it imports only
:mod:`continuonbrain.rlds`, :mod:`continuonbrain.hope` (when a brain is loaded) and
:mod:`continuonbrain.fsutil`, never the trainers or the runtime. The old paths
``continuonbrain.trainer.store``, ``.safety`` and ``.promotion`` re-export these modules.

The names below are imported lazily (PEP 562), so ``import continuonbrain.models`` costs
nothing::

    from continuonbrain.models import PromotionStore, SafetyGateConfig, promote_candidate
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from continuonbrain.lazy import lazy_exports

_EXPORTS = {
    "ModelStore": "store",
    "PromotionStore": "store",
    "StorageError": "store",
    "StoreError": "store",
    "GateResult": "safety",
    "SafetyGateConfig": "safety",
    "ShadowResult": "safety",
    "build_simple_action_guards": "safety",
    "GatePolicy": "promotion",
    "apply_gate": "promotion",
    "evaluate_candidate": "promotion",
    "gate_candidate": "promotion",
    "gate_record": "promotion",
    "promote_candidate": "promotion",
}

__all__ = [
    "GatePolicy",
    "GateResult",
    "ModelStore",
    "PromotionStore",
    "SafetyGateConfig",
    "ShadowResult",
    "StorageError",
    "StoreError",
    "apply_gate",
    "build_simple_action_guards",
    "evaluate_candidate",
    "gate_candidate",
    "gate_record",
    "promote_candidate",
]

if TYPE_CHECKING:
    from continuonbrain.models.promotion import (
        GatePolicy,
        apply_gate,
        evaluate_candidate,
        gate_candidate,
        gate_record,
        promote_candidate,
    )
    from continuonbrain.models.safety import GateResult, SafetyGateConfig, ShadowResult, build_simple_action_guards
    from continuonbrain.models.store import ModelStore, PromotionStore, StorageError, StoreError


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
