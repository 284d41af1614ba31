"""Old home of the gate's decision and guards: a thin re-export of :mod:`continuonbrain.models.safety`.

The gate moved to :mod:`continuonbrain.models`, beside the store it guards. This module keeps
``from continuonbrain.trainer.safety import ...`` working; new code imports from
``continuonbrain.models.safety``.
"""

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
