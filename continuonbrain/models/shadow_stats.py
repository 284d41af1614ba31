"""Live shadow mode's numbers: divergence of a candidate from the served brain, and the record
the promotion gate reads.

A robot without a simulator can still learn how a candidate would behave *on its own stream of
observations* before the candidate drives: BrainService runs it in shadow beside the current
brain (see :mod:`continuonbrain.runtime.shadow`), never actuating it, and feeds every pair
``(current's action, candidate's action)`` to a :class:`ShadowStats`. When the window ends (or
the shadow is stopped) the summary goes to ``<model_root>/shadow.json``
(:func:`write_shadow_record`), and a gate configured to require it (``require_shadow``) reads it
back with :func:`read_shadow_record` and checks with :func:`shadow_verdict` that the record is
about the candidate and the current it is about to swap.

What is measured, and why so:

* **Action distance**: the mean absolute difference over the action's components, the very
  ``action_distance`` of the offline gate (:func:`continuonbrain.models.safety.build_simple_action_guards`
  with weight 1), so that offline and live figures can be compared. Mean and p95 over the window:
  the mean says how far the candidate drifts on average, the p95 whether it sometimes does
  something quite different (a shadow whose mean is small but whose tail is large would jerk the
  robot now and then).
* **Exact percentiles up to** ``reservoir_size`` **ticks, a uniform sample beyond.** A window in
  ticks is bounded (``max_window_ticks``), but one in seconds is not; past the reservoir's
  capacity each new value replaces a random slot with the reservoir-sampling probability, so the
  memory stays ``2 x reservoir_size`` floats whatever the window. The mean is always exact.
* **Bound violations** against the *candidate's* action bounds (its model config), and
  **non-finite** actions: either one fails the window, however rare.
* **Latency** of the candidate's act (p50/p99, µs): what serving it would cost.

A leaf of the model store's package: numpy and the project's config base only (no torch, no
runtime), so the gate can read records without loading a model framework.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from continuonbrain.config_base import ConfigModel
from continuonbrain.fsutil import atomic_write_bytes

__all__ = [
    "SHADOW_FILE",
    "ShadowConfig",
    "ShadowRecordError",
    "ShadowStats",
    "manifest_sha256",
    "read_shadow_record",
    "shadow_verdict",
    "window_verdict",
    "write_shadow_record",
]

#: The last completed (or stopped) shadow window, beside ``audit.jsonl``.
SHADOW_FILE = "shadow.json"
#: Slack on the bound check: actions are clipped in float32, bounds are float64 in the config.
BOUND_TOLERANCE = 1e-5


class ShadowRecordError(ValueError):
    """``shadow.json`` exists but cannot be used (not JSON, not an object); names the file."""


class ShadowConfig(ConfigModel):
    """How long a shadow window runs and what it must show to pass (a strict
    :class:`~continuonbrain.config_base.ConfigModel`)."""

    window_ticks: int = Field(3000, ge=1)
    """Default window when a start names neither ticks nor seconds: 3,000 compared ticks, one
    minute of a 50 Hz control loop (15 reach2d episodes of 200 ticks), enough for a p95 that
    rests on 150 values."""
    max_window_ticks: int = Field(1_000_000, ge=1)
    """Largest window in ticks a client may ask for (memory is bounded anyway, see
    ``reservoir_size``; this bounds how long a forgotten shadow keeps the CPU busy)."""
    max_window_s: float = Field(24 * 3600.0, gt=0)
    """Longest window in seconds a client may ask for."""
    min_ticks: int = Field(100, ge=1)
    """A window in seconds passes only if it compared at least this many ticks (a quiet robot
    shadowed for a minute proves nothing)."""
    max_mean_action_distance: float = Field(0.12, ge=0)
    """The mean action distance to the current brain that a window may show and pass.
    Measured on the live reach2d stream (``bench/bench_shadow.py``, 75 episodes, 3,222 ticks;
    BENCHMARKS.md "Live shadow mode"): candidates retrained with the shipped config on fresh
    episodes (93% and 94% closed-loop success, the current 99%) score 0.072 and 0.085; one
    trained 30 steps (29%) 0.153. 0.12 passes the good ones with room and refuses that one.
    Candidates trained 100 and 300 steps (43%, 73%) score 0.100 and 0.078, inside the spread
    of the good ones: divergence from the current is not quality (two good policies take
    different paths to a target), so the shadow window is a guard against a candidate that
    behaves grossly differently, non-finite or out of bounds, not a judge of closed-loop
    skill. That is the sim twin's job (``gate.sim_env``)."""
    max_p95_action_distance: float = Field(0.4, ge=0)
    """The p95 of the action distance that a window may show and pass: the tail check (a
    candidate that is close on average but now and then does something else). Measured (same
    run): 0.23 and 0.29 for the good retrained candidates, 0.21-0.30 for the under-trained
    ones, whose tails are no larger; 0.4 leaves the good ones room and catches a tail well
    beyond what retraining produces."""
    max_dropped_fraction: float = Field(0.01, ge=0, le=1)
    """Ticks the shadow could not keep up with (the queue was full) may be at most this share
    of all ticks offered: a dropped tick is an observation the candidate's recurrent state never
    saw, so with many of them the comparison is not of the trajectory the robot drove."""
    buffer_bytes: int = Field(1 << 20, ge=4096, le=64 << 20)
    """Socket buffer for ticks on their way to the shadow worker: 1 MiB holds ~2,700 ticks of a
    10-number observation (the kernel counts ~380 bytes per small message; measured), 27 s of a
    100 Hz loop that the worker may fall behind before ticks drop. The kernel may cap it at
    ``net.core.wmem_max``. A tick that finds it full is dropped and counted, never waited for
    (the served answer must not wait for the shadow)."""
    reservoir_size: int = Field(65536, ge=16, le=1 << 24)
    """Values kept for the percentiles: exact up to this many ticks, a uniform sample beyond."""
    max_sessions: int = Field(64, ge=1, le=4096)
    """Candidate sessions (one recurrent state per control stream) at most; the least recently
    used is dropped beyond it."""


class _Reservoir:
    """Up to ``size`` float values: all of them until full, then a uniform sample (Algorithm R)."""

    def __init__(self, size: int, seed: int):
        self._buf = np.empty(size, np.float64)
        self._seen = 0
        self._rng = np.random.default_rng(seed)  # seeded: the same stream gives the same figures

    def add(self, value: float) -> None:
        size = self._buf.shape[0]
        if self._seen < size:
            self._buf[self._seen] = value
        else:
            j = int(self._rng.integers(0, self._seen + 1))
            if j < size:
                self._buf[j] = value
        self._seen += 1

    def values(self) -> np.ndarray:
        return self._buf[: min(self._seen, self._buf.shape[0])]

    def percentile(self, q: float) -> float | None:
        values = self.values()
        return float(np.percentile(values, q)) if values.size else None


class ShadowStats:
    """Accumulates one shadow window; :meth:`summary` is JSON-safe.

    ``action_low``/``action_high``: the candidate's bounds (None: no bound check).
    """

    def __init__(
        self,
        action_low: Sequence[float] | None = None,
        action_high: Sequence[float] | None = None,
        *,
        reservoir_size: int = 65536,
        seed: int = 0,
    ):
        self._low = None if action_low is None else np.asarray(action_low, np.float64) - BOUND_TOLERANCE
        self._high = None if action_high is None else np.asarray(action_high, np.float64) + BOUND_TOLERANCE
        self.ticks = 0
        self.bound_violations = 0
        self.non_finite = 0
        self.errors = 0
        self.first_violation: str | None = None
        self.first_error: str | None = None
        self._sum = 0.0
        self._max = 0.0
        self._compared = 0
        self._distance = _Reservoir(reservoir_size, seed)
        self._latency = _Reservoir(reservoir_size, seed + 1)

    def add(self, current: np.ndarray, candidate: np.ndarray, latency_us: float) -> None:
        """One tick: the served action, the candidate's action on the same observation and
        state history, and how long the candidate took."""
        self.ticks += 1
        self._latency.add(float(latency_us))
        cand = np.asarray(candidate, np.float64).reshape(-1)
        cur = np.asarray(current, np.float64).reshape(-1)
        if cand.shape != cur.shape:
            self._error(f"the candidate's action has {cand.size} values, the current's {cur.size}")
            return
        if not np.isfinite(cand).all():
            self.non_finite += 1
            if self.first_violation is None:
                self.first_violation = f"tick {self.ticks}: non-finite action {cand.tolist()}"
            return  # a NaN distance would poison the mean; the tick is counted as non-finite instead
        if self._low is not None and self._high is not None and ((cand < self._low) | (cand > self._high)).any():
            self.bound_violations += 1
            if self.first_violation is None:
                self.first_violation = (
                    f"tick {self.ticks}: action {cand.tolist()} outside "
                    f"[{(self._low + BOUND_TOLERANCE).tolist()}, {(self._high - BOUND_TOLERANCE).tolist()}]"
                )
        distance = float(np.abs(cand - cur).mean()) if cand.size else 0.0
        self._sum += distance
        self._max = max(self._max, distance)
        self._compared += 1
        self._distance.add(distance)

    def add_error(self, message: str) -> None:
        """A tick whose candidate act raised: counted, the first message kept; it fails the window."""
        self.ticks += 1
        self._error(message)

    def _error(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"tick {self.ticks}: {message}"

    def summary(self) -> dict[str, Any]:
        """The window's figures so far (distances over the ticks with a finite candidate action)."""
        return {
            "ticks": self.ticks,
            "compared": self._compared,
            "mean_action_distance": self._sum / self._compared if self._compared else None,
            "p95_action_distance": self._distance.percentile(95),
            "max_action_distance": self._max if self._compared else None,
            "bound_violations": self.bound_violations,
            "non_finite": self.non_finite,
            "errors": self.errors,
            "first_violation": self.first_violation,
            "first_error": self.first_error,
            "latency_us_p50": self._latency.percentile(50),
            "latency_us_p99": self._latency.percentile(99),
        }

    def verdict(self, config: ShadowConfig, *, complete: bool, dropped: int = 0) -> tuple[bool, str]:
        """:func:`window_verdict` of this window's :meth:`summary`."""
        return window_verdict(self.summary(), config, complete=complete, dropped=dropped)


def window_verdict(
    summary: Mapping[str, Any], config: ShadowConfig, *, complete: bool, dropped: int = 0
) -> tuple[bool, str]:
    """``(passed, reason)`` of a window's :meth:`ShadowStats.summary`: it passes when it is
    complete, compared at least ``min_ticks`` ticks, saw no bound violation, no non-finite
    action and no error, dropped at most ``max_dropped_fraction`` of the ticks offered, and its
    mean and p95 distances are within ``max_mean_action_distance`` and
    ``max_p95_action_distance``. The reason names the first rule broken,
    with values. (A function of the summary, so the process that counted the ticks and the one
    that judges them need not be the same.)"""
    ticks = int(summary.get("ticks") or 0)
    p95 = summary.get("p95_action_distance")
    offered = ticks + dropped
    if not complete:
        return False, f"the window did not complete ({ticks} ticks compared)"
    if ticks < config.min_ticks:
        return False, f"only {ticks} ticks compared, fewer than min_ticks={config.min_ticks}"
    if summary.get("errors"):
        return False, f"{summary['errors']} candidate acts raised (first: {summary.get('first_error')})"
    if summary.get("non_finite"):
        return False, f"{summary['non_finite']} non-finite candidate actions ({summary.get('first_violation')})"
    if summary.get("bound_violations"):
        return False, f"{summary['bound_violations']} bound violations (first: {summary.get('first_violation')})"
    if offered and dropped > config.max_dropped_fraction * offered:
        return False, (
            f"{dropped} of {offered} ticks dropped ({dropped / offered:.1%}), more than "
            f"max_dropped_fraction={config.max_dropped_fraction:g}"
        )
    mean, mean_limit = summary.get("mean_action_distance"), config.max_mean_action_distance
    if mean is None or mean > mean_limit:
        return False, f"mean action distance {_fmt(mean)} > max_mean_action_distance {mean_limit:g}"
    limit = config.max_p95_action_distance
    if p95 is None or p95 > limit:
        return False, f"p95 action distance {_fmt(p95)} > max_p95_action_distance {limit:g}"
    return True, f"mean action distance {_fmt(mean)} <= {mean_limit:g}, p95 {_fmt(p95)} <= {limit:g} over {ticks} ticks"


# --------------------------------------------------------------------------- the record


def manifest_sha256(slot_dir: str | Path) -> str:
    """sha256 of a slot's ``manifest.json`` bytes: the manifest lists every file's sha256, so
    this one digest names the exact weights a shadow record is about."""
    return hashlib.sha256((Path(slot_dir) / "manifest.json").read_bytes()).hexdigest()


def write_shadow_record(model_root: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` to ``<model_root>/shadow.json`` atomically (readers see the old record or
    the new one, and the new one survives a power cut); returns the path."""
    path = Path(model_root) / SHADOW_FILE
    data = json.dumps(json_safe(record), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path, data.encode())
    return path


def read_shadow_record(model_root: str | Path) -> dict[str, Any] | None:
    """The last completed or stopped shadow window of this store, or None when there has been
    none. Raises :class:`ShadowRecordError` naming the file when it exists but is not a JSON
    object (a gate must not mistake a damaged record for "no record" and say so)."""
    path = Path(model_root) / SHADOW_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ShadowRecordError(f"{path}: cannot be read: {exc}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ShadowRecordError(f"{path}: not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise ShadowRecordError(f"{path}: not a JSON object but {type(record).__name__}")
    return record


def shadow_verdict(
    record: Mapping[str, Any] | None,
    *,
    candidate_version: str | None,
    candidate_manifest_sha256: str | None,
    current_version: str | None,
) -> str | None:
    """Why ``record`` does not allow promoting this candidate over this current, or None when
    it does: it must exist, have passed, and be about exactly this candidate (version and
    manifest digest) shadowed beside exactly this current."""
    if record is None:
        return "no shadow window on record: run one (POST /api/models/shadow) before promoting"
    shadowed = record.get("candidate_version")
    if shadowed != candidate_version:
        return f"the shadow window was of candidate {shadowed}, not of candidate {candidate_version}"
    if candidate_manifest_sha256 is not None and record.get("candidate_manifest_sha256") != candidate_manifest_sha256:
        return f"candidate {candidate_version} changed since its shadow window (its manifest sha256 differs)"
    if record.get("current_version") != current_version:
        return (
            f"the shadow window compared with current {record.get('current_version')}, "
            f"but current is now {current_version}"
        )
    if record.get("passed") is not True:
        return f"the shadow window did not pass: {record.get('reason') or 'no reason recorded'}"
    return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def json_safe(value: Any) -> Any:
    """Plain JSON types only: numpy scalars become Python numbers, NaN and inf become None,
    anything else not JSON (a path in a manifest) its string. One helper for the shadow record
    on disk and for what the runtime's API answers (records, status, manifests from a trainer),
    so both say the same about the same value and ``allow_nan=False`` never trips."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
