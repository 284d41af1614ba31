"""Old home of the promotion gate: a thin re-export of :mod:`continuonbrain.models.promotion`.

The gate path (held-out episodes, shadow runs, promote or reject; one path for seeds and
adapters) moved to :mod:`continuonbrain.models`. This module keeps
``from continuonbrain.trainer.promotion import ...`` working; new code imports from
``continuonbrain.models.promotion``.
"""

from continuonbrain.models.promotion import (
    evaluate_candidate,
    promote_candidate,
    shadow_brain,
    tail_episodes,
)

__all__ = ["evaluate_candidate", "promote_candidate", "shadow_brain", "tail_episodes"]
