"""Budgets and guards that keep on-robot training from hurting the robot.

* :class:`MemoryGuard`: the OOM killer does not ask; on a Pi it may take the motor driver
  with the trainer. So the trainer watches its own RSS and the system's available memory
  every few steps and stops *itself* (after a checkpoint) before either crosses its limit.
* :class:`ThermalGuard`: a Pi 5 throttles at 80-85 °C and training heats it. Above
  ``max_temp_c`` the trainer pauses between steps and resumes below ``resume_temp_c``
  (hysteresis, so it does not flap), logging each pause; after ``max_pause_s`` it gives up
  with a stop reason. The sysfs root is configurable so tests (and boards with another
  layout) can point it elsewhere.
* :class:`StepBudget`: steps and wall time, checked every step.

These are the one policy of both trainers (the HOPE seed trainer and the LoRA adapter
trainer): each builds its guards from its config (:meth:`ThermalGuard.from_config`), asks
:func:`stop_reason` after every step and waits in :meth:`ThermalGuard.wait_if_hot` before it.
A spent budget (:data:`BUDGET_REASONS`) finishes a run; any other stop (memory, the thermal
give-up, a stop request) interrupts it after a checkpoint, and ``--resume`` goes on from there.

Each guard answers "should I stop, and why?" with a short reason string that ends up in the
run's ``summary.json`` / ``status.json``; its first word (:func:`reason_code`) is the code.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

# The SoC temperature reader lives with the robot's other sensors; re-exported here, where it used to be.
from continuonbrain.robot.sensors import THERMAL_ZONE as THERMAL_ZONE
from continuonbrain.robot.sensors import read_temperature_c

if TYPE_CHECKING:
    from continuonbrain.trainer.train_config import ThermalConfig

__all__ = [
    "BUDGET_REASONS",
    "THERMAL_ZONE",
    "MemoryGuard",
    "StepBudget",
    "ThermalGuard",
    "available_mb",
    "budget_spent",
    "read_temperature_c",
    "reason_code",
    "release_memory",
    "rss_mb",
    "stop_reason",
]

log = logging.getLogger(__name__)

#: Stop reasons that mean a run (or a component) is finished: its budget is spent. Any other
#: stop (memory, thermal give-up, a stop request) only interrupts it: resumable.
BUDGET_REASONS = ("max_steps", "max_wall_time_s")


def rss_mb() -> float:
    """Resident memory of this process, in MB."""
    return psutil.Process().memory_info().rss / 2**20


def available_mb() -> float:
    """Memory the system can still give without swapping, in MB."""
    return psutil.virtual_memory().available / 2**20


@dataclass
class MemoryGuard:
    """Trips when RSS exceeds ``budget_mb`` or available memory drops below ``min_available_mb``."""

    budget_mb: float | None = None
    min_available_mb: float | None = None
    check_every: int = 10
    peak_rss_mb: float = 0.0
    _calls: int = 0

    def check(self, force: bool = False) -> str | None:
        self._calls += 1
        if not force and self._calls % self.check_every:
            return None
        rss = rss_mb()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        if self.budget_mb is not None and rss > self.budget_mb:
            return f"memory: process RSS {rss:.0f} MB is over the budget of {self.budget_mb:.0f} MB"
        if self.min_available_mb is not None:
            avail = available_mb()
            if avail < self.min_available_mb:
                return f"memory: only {avail:.0f} MB available, below the floor of {self.min_available_mb:.0f} MB"
        return None


@dataclass
class ThermalGuard:
    """Pause between steps while the SoC is hot; resume once it has cooled.

    ``max_temp_c`` None: never pause. ``sleep`` is a parameter so tests run pauses without waiting."""

    max_temp_c: float | None = 80.0
    resume_temp_c: float = 70.0
    sysfs_root: str | Path = "/sys"
    poll_s: float = 1.0
    max_pause_s: float | None = None
    pauses: list[dict] = field(default_factory=list)
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_config(cls, cfg: ThermalConfig, **overrides: Any) -> ThermalGuard:
        """The guard of a ``thermal`` config section (both trainers have one)."""
        return cls(**{**cfg.model_dump(), **overrides})

    def temperature(self) -> float | None:
        return read_temperature_c(self.sysfs_root)

    def is_hot(self) -> bool:
        """Would :meth:`wait_if_hot` pause now?"""
        if self.max_temp_c is None:
            return False
        temp = self.temperature()
        return temp is not None and temp >= self.max_temp_c

    def wait_if_hot(self, on_pause: Callable[[dict], None] | None = None) -> str | None:
        """Block while too hot. Returns a stop reason only if ``max_pause_s`` runs out."""
        if self.max_temp_c is None:
            return None
        temp = self.temperature()
        if temp is None or temp < self.max_temp_c:
            return None
        start = time.monotonic()
        event = {"event": "thermal_pause", "temp_c": temp, "max_temp_c": self.max_temp_c}
        log.warning("SoC at %.1f °C (limit %.1f): pausing training", temp, self.max_temp_c)
        if on_pause:
            on_pause(event)
        while temp is not None and temp > self.resume_temp_c:
            if self.max_pause_s is not None and time.monotonic() - start > self.max_pause_s:
                return f"thermal: still {temp:.1f} °C after {self.max_pause_s:.0f} s of pause"
            self.sleep(self.poll_s)
            temp = self.temperature()
        paused = time.monotonic() - start
        done = {"event": "thermal_resume", "temp_c": temp, "paused_s": round(paused, 3)}
        self.pauses.append({**event, **done})
        log.warning("SoC at %s °C: resuming after %.1f s", temp, paused)
        if on_pause:
            on_pause(done)
        return None


@dataclass
class StepBudget:
    """Steps and wall time for one component."""

    max_steps: int
    max_wall_time_s: float | None = None
    started: float = field(default_factory=time.monotonic)

    def exhausted(self, step: int) -> str | None:
        if step >= self.max_steps:
            return "max_steps"
        if self.max_wall_time_s is not None and time.monotonic() - self.started >= self.max_wall_time_s:
            return "max_wall_time_s"
        return None


def stop_reason(budget: StepBudget, memory: MemoryGuard, step: int, stop_requested: bool = False) -> str | None:
    """Why training must stop after ``step`` (None: go on): the memory guard, then the step
    and wall-time budget, then a stop request."""
    return memory.check() or budget.exhausted(step) or ("stopped" if stop_requested else None)


def reason_code(reason: str | None) -> str | None:
    """The code of a stop reason: ``"memory: process RSS ..."`` -> ``"memory"``; another rank's
    ``"rank 1: max_steps"`` -> ``"max_steps"``."""
    if reason is None:
        return None
    return re.sub(r"^rank \d+: ", "", reason).split(":", 1)[0]


def budget_spent(reason: str | None) -> bool:
    """Did this stop finish the run (``max_steps``, ``max_wall_time_s``, on any rank)?"""
    return reason_code(reason) in BUDGET_REASONS


def release_memory() -> None:
    """Give freed memory back to the OS between components (drop refs first)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
