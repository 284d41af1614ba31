"""The trainer: HOPE sequential training and on-robot LoRA adaptation.

The model store and the promotion gate live in :mod:`continuonbrain.models`, the sensors and
the training gates in :mod:`continuonbrain.robot`; ``trainer.store``, ``trainer.safety``,
``trainer.promotion`` and ``trainer.scheduler`` re-export them where they used to be (the
scheduler keeps ``run_if_idle``), and ``trainer.budgets`` re-exports ``read_temperature_c``.

The public names below are imported lazily (PEP 562), so ``import continuonbrain.trainer``
costs nothing and never imports torch; torch comes in with the modules that need it
(``sequential``, ``hooks_torch`` when hooks are built)::

    from continuonbrain.trainer import (build_torch_hooks, make_episode_loader, SafetyGateConfig,
                                        LocalTrainerJobConfig, maybe_run_local_training)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from continuonbrain.lazy import lazy_exports

_EXPORTS = {
    "build_torch_hooks": "hooks_torch",
    "make_episode_loader": "rlds_loader",
    "SafetyGateConfig": "safety",
    "build_simple_action_guards": "safety",
    "LocalTrainerJobConfig": "local_lora_trainer",
    "maybe_run_local_training": "local_lora_trainer",
    "ModelHooks": "local_lora_trainer",
    "TrainerResult": "local_lora_trainer",
    "build_stub_hooks": "local_lora_trainer",
    "GatingSensors": "scheduler",
    "GatingConfig": "scheduler",
}

__all__ = [
    "GatingConfig",
    "GatingSensors",
    "LocalTrainerJobConfig",
    "ModelHooks",
    "SafetyGateConfig",
    "TrainerResult",
    "build_simple_action_guards",
    "build_stub_hooks",
    "build_torch_hooks",
    "make_episode_loader",
    "maybe_run_local_training",
]

if TYPE_CHECKING:
    from continuonbrain.trainer.hooks_torch import build_torch_hooks
    from continuonbrain.trainer.local_lora_trainer import (
        LocalTrainerJobConfig,
        ModelHooks,
        TrainerResult,
        build_stub_hooks,
        maybe_run_local_training,
    )
    from continuonbrain.trainer.rlds_loader import make_episode_loader
    from continuonbrain.trainer.safety import SafetyGateConfig, build_simple_action_guards
    from continuonbrain.trainer.scheduler import GatingConfig, GatingSensors


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
