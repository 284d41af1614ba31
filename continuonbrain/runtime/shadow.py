"""A candidate brain run in shadow beside the served one, off the request's critical path.

:class:`ShadowRunner` is what :class:`~continuonbrain.runtime.brain_service.BrainService` holds
while a shadow window runs. The service's ``act`` computes the served answer exactly as it
always does, then hands the tick to :meth:`ShadowRunner.offer`: the observation, the action it
served, and whether the session's state started over. ``offer`` does no inference: it puts one
tuple on a bounded queue (a C ``SimpleQueue`` put, well under a microsecond) or, when the queue
is full, counts the tick as dropped. It never waits.

One worker thread takes the ticks in order and runs the candidate on them, with one candidate
fork per session (its own recurrent state, reset whenever the served session's was, so both
walk the same trajectory from the same zero state), then feeds the pair to
:class:`~continuonbrain.models.shadow_stats.ShadowStats`. The candidate never sees the served
session's brain, and the served brain never sees the candidate: the shadow cannot change
an answer.

The window ends when it has compared ``window_ticks`` ticks, when ``window_s`` seconds have
passed (checked also while no traffic comes), or when :meth:`ShadowRunner.stop` is called (a
DELETE, or the service noticing that current or candidate changed). The worker then writes the
record to ``<model_root>/shadow.json`` and tells the service through ``on_finish``.

Why ``offer`` is called inside the session's lock: two calls of one session are serialised by
that lock, and so their ticks reach the queue in the order the served brain saw them; the
candidate's recurrent state must see the same order.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.hope import HopeBrain
from continuonbrain.models.shadow_stats import ShadowConfig, ShadowStats, now_iso, write_shadow_record

__all__ = ["NoShadowError", "ShadowConflictError", "ShadowRunner"]

log = logging.getLogger(__name__)

#: How often the idle worker wakes to check a window in seconds (and a stop request).
IDLE_POLL_S = 0.1
#: A tick on the queue: (session id, observation, served action, session state started over).
_Tick = tuple[str, Any, np.ndarray, bool]
_STOP = object()


class ShadowConflictError(RuntimeError):
    """A shadow cannot start now: one runs already, there is no candidate or no served brain,
    the candidate is refused or does not take the served brain's observations. The API: 409."""


class NoShadowError(RuntimeError):
    """There is no running shadow to stop. The API: 404."""


class ShadowRunner:
    """One shadow window of ``candidate`` (a loaded template brain, never acted with) beside the
    served ``current_version``. ``record_base`` holds the identities that go into the record
    (versions, manifest digests); ``on_finish(runner)`` is called once, from the worker, after
    the record is written."""

    def __init__(
        self,
        candidate: HopeBrain,
        *,
        model_root: str | os.PathLike,
        config: ShadowConfig,
        record_base: Mapping[str, Any],
        window_ticks: int | None,
        window_s: float | None,
        served: Any = None,
        on_finish: Callable[[ShadowRunner], None] | None = None,
    ):
        self.candidate = candidate
        self.model_root = Path(model_root)
        self.config = config
        self.window_ticks = window_ticks
        self.window_s = window_s
        self.base = dict(record_base)
        self.served = served  # the service's published record of the brain it compares with
        cfg = candidate.config
        self.stats = ShadowStats(cfg.action_low, cfg.action_high, reservoir_size=config.reservoir_size)
        self._on_finish = on_finish
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sessions: OrderedDict[str, HopeBrain] = OrderedDict()  # worker thread only
        self._dropped = 0
        self._drop_lock = threading.Lock()
        self._done = threading.Event()  # no more ticks are taken
        self._stop_reason: str | None = None
        self._started_mono = time.monotonic()
        self.started_at = now_iso()
        self.ended_at: str | None = None
        self.record: dict[str, Any] | None = None  # set once, when the window is over
        self._thread = threading.Thread(target=self._run, name="brain-service-shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- the producer side (request threads) -----------------------------------------------

    @property
    def active(self) -> bool:
        """True until the window is over *and* recorded (``shadow.json`` written)."""
        return self.record is None

    def offer(self, session_id: str, observation: Any, action: np.ndarray, fresh: bool) -> None:
        """Queue one served tick for the candidate, or count it as dropped when the queue is
        full; never blocks. ``observation`` must not be changed afterwards (the service passes a
        copy of anything a caller could still change)."""
        if self._done.is_set():
            return
        if self._queue.qsize() >= self.config.queue_size:
            with self._drop_lock:
                self._dropped += 1
            return
        self._queue.put((session_id, observation, action, fresh))

    def stop(self, reason: str, wait: bool = True) -> dict[str, Any] | None:
        """End the window now (``reason`` goes into the record); with ``wait``, return the
        record once written. Ticks already queued are discarded, not compared."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._queue.put(_STOP)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        return self.record

    @property
    def dropped(self) -> int:
        return self._dropped

    def status(self) -> dict[str, Any]:
        """The live figures (or the final record once the window is over)."""
        if self.record is not None:
            return dict(self.record)
        return self._snapshot(active=True, complete=False, reason="running")

    # -- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            reason, complete = self._loop()
        except Exception as exc:  # a bug here must end the window loudly, never the server
            log.exception("shadow worker failed")
            reason, complete = f"the shadow worker failed: {type(exc).__name__}: {exc}", False
        self._done.set()
        self.ended_at = now_iso()
        record = self._snapshot(active=False, complete=complete, reason=reason)
        self._sessions.clear()
        try:
            write_shadow_record(self.model_root, record)
        except OSError as exc:
            log.error("cannot write the shadow record to %s: %s", self.model_root, exc)
            record["write_error"] = f"{type(exc).__name__}: {exc}"
        self.record = record  # only now does the status say "over": the file is there to read
        log.info(
            "shadow of %s ended (%s): %s",
            self.base.get("candidate_version"),
            reason,
            "passed" if record["passed"] else f"not passed: {record['verdict']}",
        )
        if self._on_finish is not None:
            try:
                self._on_finish(self)
            except Exception:
                log.exception("shadow on_finish callback failed")

    def _loop(self) -> tuple[str, bool]:
        """Compare ticks until the window is complete or a stop comes; ``(reason, complete)``."""
        deadline = None if self.window_s is None else self._started_mono + self.window_s
        while True:
            if self._stop_reason is not None:
                return self._stop_reason, False
            if deadline is not None and time.monotonic() >= deadline:
                return f"window of {self.window_s:g} s complete", True
            try:
                item = self._queue.get(timeout=IDLE_POLL_S if deadline is None else _until(deadline))
            except queue.Empty:
                continue
            if item is _STOP:
                continue  # the loop's first check returns with the reason
            self._compare(item)
            if self.window_ticks is not None and self.stats.ticks >= self.window_ticks:
                return f"window of {self.window_ticks} ticks complete", True

    def _compare(self, item: _Tick) -> None:
        session_id, observation, action, fresh = item
        brain = self._sessions.get(session_id)
        if brain is None:
            brain = self.candidate.fork()
            brain.reset()
            self._sessions[session_id] = brain
            while len(self._sessions) > self.config.max_sessions:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(session_id)
            if fresh:  # the served session started over: so does the candidate's
                brain.reset()
        t0 = time.perf_counter()
        try:
            out = brain.act(observation)
        except Exception as exc:  # any failure of the candidate is a finding, not a crash
            self.stats.add_error(f"{type(exc).__name__}: {exc}")
            return
        self.stats.add(action, out, (time.perf_counter() - t0) * 1e6)

    def _snapshot(self, *, active: bool, complete: bool, reason: str) -> dict[str, Any]:
        stats = self.stats.summary()
        dropped = self._dropped
        if active:
            passed: bool | None = None
            verdict = "the window is still running"
        else:
            passed, verdict = self.stats.verdict(self.config, complete=complete, dropped=dropped)
        return {
            **self.base,
            "active": active,
            **stats,
            "window_ticks": self.window_ticks,
            "window_s": self.window_s,
            "elapsed_s": round(time.monotonic() - self._started_mono, 3),
            "dropped": dropped,
            "queued": self._queue.qsize() if active else 0,
            "sessions": len(self._sessions),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "complete": complete,
            "reason": reason,
            "passed": passed,
            "verdict": verdict,
            "max_p95_action_distance": self.config.max_p95_action_distance,
            "min_ticks": self.config.min_ticks,
        }


def _until(deadline: float) -> float:
    return max(0.0, min(IDLE_POLL_S, deadline - time.monotonic()))
