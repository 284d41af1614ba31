"""The gate config of a model store: one file, read by every path that gates its candidates.

``models promote``, ``POST /api/models/promote``, the adapter trainer's own promotion and the
demo must judge a store's candidates alike, or the path a candidate takes would decide whether
it drives. So a store may carry its gate config beside its slots (``gate_config.json``, a
:class:`~continuonbrain.models.safety.SafetyGateConfig` as JSON: the sim twin of the robot's
task, the margins, ``require_shadow``), and every path reads it with :func:`load_gate_config`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from continuonbrain.models.safety import SafetyGateConfig

__all__ = ["GATE_CONFIG_FILE", "load_gate_config", "write_gate_config"]

#: The store's gate config, beside ``audit.jsonl``.
GATE_CONFIG_FILE = "gate_config.json"


def load_gate_config(
    model_root: str | os.PathLike,
    fallback: SafetyGateConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[SafetyGateConfig, str]:
    """The gate config of a model store, and where it came from: every path that gates a
    candidate of this store (``models promote``, ``POST /api/models/promote``, the adapter
    trainer, the demo) calls this, so they all judge with the same thresholds.

    ``<model_root>/gate_config.json`` (a :class:`SafetyGateConfig` as JSON) when it exists,
    else ``fallback`` (the adapter job's ``safety`` section; the server's adaptation config),
    else the defaults; then ``overrides`` (``--sim-env``, ``--sim-episodes``: this call only).
    A file that does not parse raises :class:`~continuonbrain.config_base.ConfigError` naming it.
    """
    path = Path(model_root) / GATE_CONFIG_FILE
    if path.is_file():
        cfg, source = SafetyGateConfig.load(path), str(path)
    elif fallback is not None:
        cfg, source = fallback, "the job's config"
    else:
        cfg, source = SafetyGateConfig(), "defaults"
    if overrides:
        cfg = cfg.with_overrides({k: v for k, v in overrides.items() if v is not None})
        source += " + " + ", ".join(sorted(k for k, v in overrides.items() if v is not None))
    return cfg, source


def write_gate_config(model_root: str | os.PathLike, cfg: SafetyGateConfig) -> Path:
    """Write ``cfg`` as the store's gate config (what ``make demo`` does with its sim twin)."""
    path = Path(model_root) / GATE_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    return path
