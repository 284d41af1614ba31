"""Shadow evaluation for the local LoRA gate: now part of the one gate.

Kept as a thin re-export (old import path): the code lives in
:mod:`continuonbrain.models.promotion`, which both the seed path (``models promote``, the API)
and the adapter trainer use.
"""

from __future__ import annotations

from continuonbrain.models.promotion import ActionNamer, shadow_pairs, shadow_policy

__all__ = ["ActionNamer", "shadow_pairs", "shadow_policy"]
