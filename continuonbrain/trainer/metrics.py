"""What both trainers report, in one format: the event records, the JSONL writers and the summaries.

**One event format** (the HOPE seed trainer and the LoRA adapter trainer alike). Every record
is one JSON object with ``time`` (unix seconds) and ``event``:

* ``"step"``: ``component`` (``vqvae``, ``mid_loop``, ``fast_loop``; ``lora`` for an adapter),
  ``step``, ``loss`` and the sub-losses, ``rss_mb``, and what the trainer measures (seed: ``lr``,
  ``grad_norm``, ``steps_per_s``, ``temp_c``, ``wall_time_s``, ``epoch``; adapter: ``train_time_s``,
  ``loss`` being the mean since the previous record);
* ``"component_start"``: ``component``, ``step`` (above 0 when resumed), ``steps`` (the budget);
* ``"resumed"``: ``component``, ``step`` (the checkpoint it continues from);
* ``"thermal_pause"`` / ``"thermal_resume"``: ``component``, ``step``, ``temp_c`` (+ ``max_temp_c``,
  ``paused_s``);
* ``"component_done"``: ``component``, ``status`` (``done``: budget spent; ``interrupted``:
  checkpointed, resumable), ``steps``, ``stop_reason`` and the trainer's own result fields;
* trainer-specific records around training keep their own names (the adapter's ``start``,
  ``gates``, ``episodes``, ``lora``, ``candidate``, ``gate``, ``result``).

:func:`step_record` and :func:`event_record` build them. The same records go to the run's log
file (:class:`EventFile`: the seed's ``metrics.jsonl``, the adapter's ``adapt_*.jsonl``), to
``--events FILE`` (what the API's job manager tails) and to ``on_event`` callbacks, so a reader
needs no per-trainer branch. Logs are appended and flushed line by line: a killed run keeps
every line it logged and a resumed run continues the same file.

**One summary writer.** :func:`write_json` writes every summary document (``summary.json``,
``status.json``, the seed's ``state.json``) atomically and durably; :func:`loss_summary` is the
one definition of initial and final loss (means of the first and last :data:`SUMMARY_WINDOW`
steps) for both trainers.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from continuonbrain.fsutil import atomic_write_bytes

__all__ = [
    "SUMMARY_WINDOW",
    "EventFile",
    "MetricsLogger",
    "component_summary",
    "event_record",
    "json_default",
    "loss_summary",
    "read_metrics",
    "step_record",
    "write_json",
    "write_summary",
]

SUMMARY_WINDOW = 10


# --------------------------------------------------------------------------- records


def step_record(component: str, step: int, losses: dict[str, float], **measured: Any) -> dict[str, Any]:
    """A ``"step"`` record: ``losses`` holds ``loss`` and any sub-losses."""
    return {"event": "step", "component": component, "step": int(step), **losses, **measured}


def event_record(event: str, component: str | None = None, step: int | None = None, **fields: Any) -> dict[str, Any]:
    """Any other record, with its ``component`` and ``step`` when it has them."""
    out: dict[str, Any] = {"event": event}
    if component is not None:
        out["component"] = component
    if step is not None:
        out["step"] = int(step)
    return {**out, **fields}


def is_step(record: dict[str, Any]) -> bool:
    """A step record (also those of logs written before ``"event": "step"`` was added)."""
    return record.get("event", "step") == "step" and "loss" in record and "step" in record


# --------------------------------------------------------------------------- writers


class EventFile:
    """Records appended to ``path`` as JSON lines (``time`` added), written whole and flushed
    one by one, so a reader tailing the file sees only complete records and a killed process
    keeps what it reported. ``path`` None makes it a no-op, so callers need no branch.

    The one JSONL writer of the trainers: the run logs and ``--events FILE`` (the channel from
    a training child process to the HTTP API, the same for both trainers).
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", buffering=1)

    def __call__(self, record: dict[str, Any]) -> None:
        self.log(record)

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {"time": round(time.time(), 3), **record}
        if self._file is not None:
            self._file.write(json.dumps(record, default=json_default) + "\n")
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MetricsLogger(EventFile):
    """The seed trainer's ``<run_dir>/metrics.jsonl`` (an :class:`EventFile`) and, if installed,
    TensorBoard scalars of the step records."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(self.run_dir / "metrics.jsonl")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: the JSONL log is the record
                self._tb = None

    def log(self, record: dict[str, Any]) -> dict[str, Any]:
        record = super().log(record)
        if self._tb is not None and "step" in record and "component" in record:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "time"):
                    self._tb.add_scalar(f"{record['component']}/{key}", value, record["step"])
        return record

    def close(self) -> None:
        super().close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for the trainers' logs: numpy/torch scalars and arrays
    become plain numbers and lists (``tolist`` covers both), anything else its ``str``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Replace ``path`` with ``doc`` atomically and durably (after a power cut it is the old
    document or the new one, never a torn one)."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=json_default) + "\n").encode())
    return path


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """``<run_dir>/summary.json``."""
    return write_json(Path(run_dir) / "summary.json", summary)


# --------------------------------------------------------------------------- summaries


def loss_summary(losses: Iterable[float]) -> dict[str, Any]:
    """Initial and final loss (means of the first and last :data:`SUMMARY_WINDOW` values, non-finite
    ones left out), their ratio and whether the loss halved; empty without a finite loss."""
    finite = [float(x) for x in losses if math.isfinite(float(x))]
    if not finite:
        return {}
    first, last = finite[:SUMMARY_WINDOW], finite[-SUMMARY_WINDOW:]
    initial, final = sum(first) / len(first), sum(last) / len(last)
    return {
        "initial_loss": initial,
        "final_loss": final,
        "final_over_initial": final / initial if initial else None,
        "halved": final < 0.5 * initial,
    }


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    return read_events(Path(run_dir) / "metrics.jsonl")


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL log (unparseable lines, e.g. torn by a kill, are skipped)."""
    path = Path(path)
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def component_summary(records: Sequence[dict[str, Any]], component: str) -> dict[str, Any]:
    """:func:`loss_summary` of one component's step records, and how many steps were logged.

    A resumed run logs some steps twice (those after the last checkpoint): the last record
    for each step wins.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("component") == component and is_step(r):
            by_step[r["step"]] = r
    steps = [by_step[s] for s in sorted(by_step)]
    return {"logged_steps": len(steps), **loss_summary(float(r["loss"]) for r in steps)}
