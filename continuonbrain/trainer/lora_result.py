"""What a local LoRA run reports and where: :class:`TrainerResult`, the per-run JSONL log
(rotated) and ``status.json`` in ``log_dir``.

``status.json`` is written after every run, skipped ones too, with the summary writer both
trainers share (:func:`~continuonbrain.trainer.metrics.write_json`: atomic and durable), and
reads the store's versions straight from the manifests (no store object: a skipped run only
touches what it reports).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continuonbrain.trainer.metrics import json_default, write_json

__all__ = [
    "LOG_PREFIX",
    "STATUS_FILE",
    "TrainerResult",
    "json_default",
    "rotate_logs",
    "store_summary",
    "write_status",
]

STATUS_FILE = "status.json"
LOG_PREFIX = "adapt_"


@dataclass
class TrainerResult:
    """What one call of :func:`~continuonbrain.trainer.local_lora_trainer.maybe_run_local_training` did.

    ``status``: "promoted", "rejected" (the gate said no; current untouched), "dry_run" (stub
    hooks: trained and gated, set aside with the reason "stub"), "interrupted" (training
    stopped before its budget, by the memory guard, the thermal give-up or a stop request:
    checkpointed, nothing written to the store; ``--resume`` trains on), "skipped" (a start
    gate failed, or another run holds the store), "no_data" (too few episodes; nothing
    written), "no_base" (no model to adapt) or "error". For "skipped", ``reason`` is a stable code
    (the scheduler's ``not_idle``, ``teleop_active``, ``battery_low``, ``too_hot``,
    ``no_new_episodes``, or ``busy``, ``candidate_pending``) and ``detail`` the text; otherwise
    ``reason`` says why in words. ``stop_reason`` names what ended training:
    "max_steps", "max_wall_time_s" (the budget: the adapter is gated), "memory", "thermal",
    "stopped" (interrupted) or "non_finite_loss"; ``stop_detail`` says it in words.
    ``resumed_from_step``: the checkpoint step a resumed run continued from.
    """

    status: str
    reason: str | None = None
    detail: str | None = None
    promoted: bool = False
    stub: bool = False
    steps: int = 0
    avg_loss: float | None = None
    initial_loss: float | None = None
    final_loss: float | None = None
    #: ``{"step", "loss"}`` every ``log_every_steps`` (mean loss since the previous record).
    losses: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str | None = None
    stop_detail: str | None = None
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    peak_rss_mb: float | None = None
    episodes: dict[str, int] = field(default_factory=dict)
    #: Mean action distance to the logged actions on the held-out episodes, of the model that
    #: was current before the run and of the candidate.
    before_avg_action_delta: float | None = None
    after_avg_action_delta: float | None = None
    candidate_version: str | None = None
    previous_version: str | None = None
    current_version: str | None = None
    gate: dict[str, Any] | None = None
    #: The start gates' decision and live values (when gating was given).
    gating: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None
    #: The replay set (:meth:`~continuonbrain.trainer.replay.ReplaySet.describe`): where it came
    #: from, the share rehearsed, how many were trained on, the held-out ids, or why there is none.
    replay: dict[str, Any] | None = None
    resumed_from_step: int | None = None
    log_path: str | None = None
    status_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_status(res: TrainerResult, log_dir: Path, model_root: Path) -> Path:
    """Write ``status.json`` in ``log_dir``: the run's result and the store's versions.
    Returns its path; raises :class:`OSError` when it cannot be written."""
    summary = store_summary(model_root)
    status = {
        "updated": datetime.now(UTC).isoformat(),
        "status": res.status,
        "reason": res.reason,
        "detail": res.detail,
        "stub": res.stub,
        "promoted": res.promoted,
        "steps": res.steps,
        "stop_reason": res.stop_reason,
        "resumed_from_step": res.resumed_from_step,
        "losses": res.losses,
        "initial_loss": res.initial_loss,
        "final_loss": res.final_loss,
        "avg_action_delta": {"current": res.before_avg_action_delta, "candidate": res.after_avg_action_delta},
        "replay": res.replay,
        "candidate_version": res.candidate_version,
        "wall_time_s": res.wall_time_s,
        "peak_rss_mb": res.peak_rss_mb,
        **summary,
        "latest_log": res.log_path,
    }
    return write_json(log_dir / STATUS_FILE, status)


def store_summary(root: Path) -> dict[str, Any]:
    """Current version, candidate and history count, read from the manifests."""

    def version(path: Path) -> str | None:
        try:
            return json.loads((path / "manifest.json").read_text()).get("version")
        except (OSError, ValueError):
            return None

    history = root / "history"
    count = sum(1 for d in history.iterdir() if (d / "manifest.json").is_file()) if history.is_dir() else 0
    return {
        "current_version": version(root / "current"),
        "pending_candidate": version(root / "candidate"),
        "history_count": count,
    }


def rotate_logs(log_dir: Path, keep: int) -> None:
    logs = sorted(log_dir.glob(f"{LOG_PREFIX}*.jsonl"), key=lambda p: p.name, reverse=True)
    for stale in logs[keep:]:
        stale.unlink(missing_ok=True)
