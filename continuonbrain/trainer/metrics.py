"""Scientific training logs: ``metrics.jsonl``, ``summary.json`` and, if installed, TensorBoard.

``metrics.jsonl`` has one JSON line per logged step (component, step, loss and sub-losses,
learning rate, gradient norm, steps/s, RSS, temperature, wall time) and one line per event
(thermal pause, stop). It is appended and flushed line by line, so a killed run keeps every
line it logged and a resumed run continues the same file. ``summary.json`` holds, per
component, the initial loss (mean of the first 10 logged steps), the final loss (mean of the
last 10), steps, wall time, peak RSS and the stop reason: the numbers that say whether a run
converged, without reading the whole log.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from continuonbrain.fsutil import atomic_write_bytes

SUMMARY_WINDOW = 10


class MetricsLogger:
    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: the JSONL log is the record
                self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record, default=json_default) + "\n")
        if self._tb is not None and "step" in record and "component" in record:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and key not in ("step", "time"):
                    self._tb.add_scalar(f"{record['component']}/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventFile:
    """``--events FILE``: every progress record of a run, appended to FILE as a JSON line.

    The HTTP API runs training in a child process (memory isolation, a real stop) and streams
    its progress to the Robot Editor; this file is the one channel between the two, the same
    for sequential training and LoRA adaptation. Lines are written whole and flushed one by
    one, so a reader tailing the file sees only complete records, and a killed child keeps
    what it reported. ``path`` None makes it a no-op, so callers need no branch.
    """

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", buffering=1)

    def __call__(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"time": round(time.time(), 3), **record}, default=json_default) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for the trainers' logs: numpy/torch scalars and arrays
    become plain numbers and lists (``tolist`` covers both), anything else its ``str``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def component_summary(records: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """Initial and final loss (means of the first and last 10 logged steps) of one component.

    A resumed run logs some steps twice (those after the last checkpoint): the last record
    for each step wins.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("component") == component and "loss" in r and "step" in r:
            by_step[r["step"]] = r
    steps = [by_step[s] for s in sorted(by_step)]
    losses = [float(r["loss"]) for r in steps if math.isfinite(float(r["loss"]))]
    out: dict[str, Any] = {"logged_steps": len(steps)}
    if losses:
        first = losses[:SUMMARY_WINDOW]
        last = losses[-SUMMARY_WINDOW:]
        out["initial_loss"] = sum(first) / len(first)
        out["final_loss"] = sum(last) / len(last)
        out["final_over_initial"] = out["final_loss"] / out["initial_loss"] if out["initial_loss"] else None
        out["halved"] = out["final_loss"] < 0.5 * out["initial_loss"]
    return out


def write_summary(run_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / "summary.json"
    atomic_write_bytes(path, (json.dumps(summary, indent=2, default=json_default) + "\n").encode())
    return path
