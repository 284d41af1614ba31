"""Old home of the model store: a thin re-export of :mod:`continuonbrain.models.store`.

The store moved to :mod:`continuonbrain.models` (the one place that knows the store's layout,
used by the runtime, the simulators and the trainers alike). This module keeps
``from continuonbrain.trainer.store import ...`` working; new code imports from
``continuonbrain.models.store``.
"""

from continuonbrain.models.store import (
    CRASH_ENV,
    JOURNAL,
    MANIFEST,
    PROMOTION_STEPS,
    SERVING_DIR,
    SLOTS,
    ModelStore,
    PromotionStore,
    StorageError,
    StoreError,
    crash_point,
    is_disk_full,
    new_version,
    sha256_file,
)

__all__ = [
    "CRASH_ENV",
    "JOURNAL",
    "MANIFEST",
    "PROMOTION_STEPS",
    "SERVING_DIR",
    "SLOTS",
    "ModelStore",
    "PromotionStore",
    "StorageError",
    "StoreError",
    "crash_point",
    "is_disk_full",
    "new_version",
    "sha256_file",
]
