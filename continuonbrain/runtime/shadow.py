"""A candidate brain run in shadow beside the served one, off the request's critical path.

:class:`ShadowRunner` is what :class:`~continuonbrain.runtime.brain_service.BrainService` holds
while a shadow window runs. The service's ``act`` computes the served answer exactly as it
always does, then hands the tick to :meth:`ShadowRunner.offer`: the observation, the action it
served, and whether the session's state started over. ``offer`` does no inference: it encodes
the tick (a few µs for a vector) and sends it, non-blocking, to the shadow worker *process*
(:mod:`continuonbrain.runtime.shadow_worker`, which explains why a process). When the socket's
buffer is full the tick is dropped and counted. It never waits.

The worker runs the candidate with one fork per session (its own recurrent state, reset
whenever the served session's was, so both walk the same trajectory from the same zero state)
and accumulates :class:`~continuonbrain.models.shadow_stats.ShadowStats`, pushing its figures
every 0.2 s. The candidate never touches the served brain, and the served brain never sees the
candidate: the shadow cannot change an answer.

The window ends when the worker has compared ``window_ticks`` ticks, when ``window_s`` seconds
have passed since it was ready, or on :meth:`ShadowRunner.stop` (a DELETE, or the service
noticing that current or candidate changed). One monitor thread here (blocked on the control
socket; it wakes a few times a second at most) then judges the window
(:func:`~continuonbrain.models.shadow_stats.window_verdict`, with the drops counted here),
writes ``<model_root>/shadow.json`` and tells the service through ``on_finish``.

Why ``offer`` is called inside the session's lock: two calls of one session are serialised by
that lock, and so their ticks reach the socket in the order the served brain saw them; the
candidate's recurrent state must see the same order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.models.shadow_stats import ShadowConfig, now_iso, window_verdict, write_shadow_record
from continuonbrain.runtime.shadow_worker import MAX_MESSAGE, encode_tick

__all__ = ["NoShadowError", "ShadowConflictError", "ShadowRunner"]

log = logging.getLogger(__name__)

#: How long a stop waits for the worker's last figures before killing it.
STOP_TIMEOUT_S = 15.0
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


class ShadowConflictError(RuntimeError):
    """A shadow cannot start now: one runs already, there is no candidate or no served brain,
    the candidate is refused or does not take the served brain's observations. The API: 409."""


class NoShadowError(RuntimeError):
    """There is no running shadow to stop. The API: 404."""


class ShadowRunner:
    """One shadow window of the candidate in ``candidate_dir`` (already verified, loaded and
    smoke-tested by the service, whose manifest had ``manifest_sha256``) beside the served
    brain ``served``. ``record_base`` holds the identities that go into the record (versions,
    manifest digests); ``on_finish(runner)`` is called once, from the monitor thread, after
    the record is written."""

    def __init__(
        self,
        candidate_dir: str | os.PathLike,
        *,
        model_root: str | os.PathLike,
        config: ShadowConfig,
        record_base: Mapping[str, Any],
        window_ticks: int | None,
        window_s: float | None,
        backend: str = "numpy",
        served: Any = None,
        on_finish: Callable[[ShadowRunner], None] | None = None,
    ):
        self.candidate_dir = Path(candidate_dir)
        self.model_root = Path(model_root)
        self.config = config
        self.window_ticks = window_ticks
        self.window_s = window_s
        self.backend = backend
        self.base = dict(record_base)
        self.served = served  # the service's published record of the brain it compares with
        self._on_finish = on_finish
        self._ticks, self._ticks_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control, self._control_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (self._ticks, self._ticks_child):
            with contextlib.suppress(OSError):  # the kernel's default buffer then
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.buffer_bytes)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.buffer_bytes)
        self._ticks.setblocking(False)
        self._count_lock = threading.Lock()
        self._sent = 0
        self._dropped = 0
        self._too_large = 0
        self._summary: dict[str, Any] = {}
        self._sessions = 0
        self._ready = False
        self._ready_event = threading.Event()  # set on the worker's "ready", or when the window ends
        self._worker_pid: int | None = None
        self._done = False  # no more ticks are sent
        self._finished = False  # the worker's last message came
        self._stop_reason: str | None = None
        self._started_mono = time.monotonic()
        self.started_at = now_iso()
        self.ended_at: str | None = None
        self.record: dict[str, Any] | None = None  # set once, when the window is over and recorded
        self._proc: subprocess.Popen[bytes] | None = None
        self._monitor = threading.Thread(target=self._run, name="brain-service-shadow", daemon=True)

    def start(self) -> None:
        """Start the worker process (it loads the candidate again, a second or two) and the
        monitor thread. Ticks offered meanwhile wait in the socket's buffer."""
        cmd = [
            sys.executable,
            "-m",
            "continuonbrain.runtime.shadow_worker",
            "--candidate",
            str(self.candidate_dir),
            "--model-root",
            str(self.model_root),
            "--manifest-sha256",
            str(self.base.get("candidate_manifest_sha256")),
            "--backend",
            self.backend,
            "--ticks-fd",
            str(self._ticks_child.fileno()),
            "--control-fd",
            str(self._control_child.fileno()),
            "--config",
            self.config.model_dump_json(),
        ]
        if self.window_ticks is not None:
            cmd += ["--window-ticks", str(self.window_ticks)]
        if self.window_s is not None:
            cmd += ["--window-s", repr(float(self.window_s))]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (_PACKAGE_PARENT, os.environ.get("PYTHONPATH")) if p),
        }
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        self._proc = subprocess.Popen(
            cmd, pass_fds=(self._ticks_child.fileno(), self._control_child.fileno()), env=env, stdin=subprocess.DEVNULL
        )
        self._ticks_child.close()
        self._control_child.close()
        self._monitor.start()

    # -- the producer side (request threads) -----------------------------------------------

    @property
    def active(self) -> bool:
        """True until the window is over *and* recorded (``shadow.json`` written)."""
        return self.record is None

    def offer(self, session_id: str, observation: Any, action: np.ndarray, fresh: bool) -> None:
        """Send one served tick to the worker, or count it as dropped when its buffer is full;
        never blocks. The tick is encoded here, so the caller may reuse its buffers at once."""
        if self._done:
            return
        try:
            message = encode_tick(session_id, observation, action, fresh)
        except (TypeError, ValueError):
            message = b""
        if not message or len(message) > MAX_MESSAGE:
            with self._count_lock:
                self._dropped += 1
                self._too_large += 1
            return
        try:
            self._ticks.send(message)
        except (BrokenPipeError, ConnectionError):  # the worker has left: the window is over
            self._done = True
            return
        except OSError:  # BlockingIOError: the worker is behind and its buffer full; EMSGSIZE
            with self._count_lock:
                self._dropped += 1
            return
        with self._count_lock:
            self._sent += 1

    def stop(self, reason: str, wait: bool = True) -> dict[str, Any] | None:
        """End the window now (``reason`` goes into the record); with ``wait``, return the
        record once written. Ticks still in flight are not compared."""
        with self._count_lock:
            first = self._stop_reason is None and not self._finished
            if first:
                self._stop_reason = reason
        self._done = True
        if first:  # one stop message: a worker leaving with unread messages resets the socket
            with contextlib.suppress(OSError):  # the worker is gone already: the monitor records that
                self._control.send(json.dumps({"cmd": "stop", "reason": reason}).encode())
        if wait and threading.current_thread() is not self._monitor and self._monitor.is_alive():
            self._monitor.join(timeout=STOP_TIMEOUT_S + 5)
        return self.record

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker has loaded the candidate (True) or the window ended without it
        (False: :attr:`record` says why), at most ``timeout`` seconds."""
        self._ready_event.wait(timeout)
        return self._ready and self.record is None

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def ticks(self) -> int:
        return int(self._summary.get("ticks") or 0)

    def status(self) -> dict[str, Any]:
        """The live figures (as of the worker's last push), or the record once it is written."""
        if self.record is not None:
            return dict(self.record)
        return self._snapshot(self._summary, active=True, complete=False, reason="running")

    # -- the monitor thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            reason, complete = self._listen()
        except Exception as exc:  # a bug here must end the window loudly, never the server
            log.exception("shadow monitor failed")
            reason, complete = f"the shadow monitor failed: {type(exc).__name__}: {exc}", False
        self._done = True
        self._reap()
        self.ended_at = now_iso()
        record = self._snapshot(self._summary, active=False, complete=complete, reason=reason)
        try:
            write_shadow_record(self.model_root, record)
        except OSError as exc:
            log.error("cannot write the shadow record to %s: %s", self.model_root, exc)
            record["write_error"] = f"{type(exc).__name__}: {exc}"
        self.record = record  # only now does the status say "over": the file is there to read
        self._ready_event.set()
        for sock in (self._ticks, self._control):
            sock.close()
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

    def _listen(self) -> tuple[str, bool]:
        """Read the worker's messages until its last one; ``(reason, complete)``."""
        stop_sent_at: float | None = None
        while True:
            if self._stop_reason is not None and stop_sent_at is None:
                stop_sent_at = time.monotonic()
            self._control.settimeout(1.0)
            try:
                data = self._control.recv(1 << 20)
            except TimeoutError:
                if stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_TIMEOUT_S:
                    return f"{self._stop_reason} (the worker did not answer and was killed)", False
                continue
            except ConnectionError:
                data = b""  # the worker left: as an end of file
            if not data:
                code = self._proc.poll() if self._proc else None
                why = self._stop_reason or f"the shadow worker exited unexpectedly (code {code}; see the server's log)"
                return why, False
            message = json.loads(data)
            event = message.get("event")
            if event == "ready":
                self._ready, self._worker_pid = True, message.get("pid")
                self._ready_event.set()
            elif event == "stats":
                self._summary, self._sessions = message["summary"], int(message.get("sessions") or 0)
            elif event == "done":
                with self._count_lock:
                    self._finished = True
                self._done = True  # ticks from now on are past the window: neither sent nor dropped
                self._summary, self._sessions = message["summary"], int(message.get("sessions") or 0)
                return str(message.get("reason")), bool(message.get("complete"))
            elif event == "error":
                if self._stop_reason is not None:  # told to stop meanwhile: that is the story
                    return f"{self._stop_reason} ({message.get('message')})", False
                return f"the shadow worker could not start: {message.get('message')}", False

    def _reap(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def _snapshot(self, summary: Mapping[str, Any], *, active: bool, complete: bool, reason: str) -> dict[str, Any]:
        with self._count_lock:
            sent, dropped, too_large = self._sent, self._dropped, self._too_large
        ticks = int(summary.get("ticks") or 0)
        if active:
            passed: bool | None = None
            verdict = "the window is still running"
        else:
            passed, verdict = window_verdict(summary, self.config, complete=complete, dropped=dropped)
        return {
            **self.base,
            "active": active,
            "ticks": ticks,
            "compared": summary.get("compared", 0),
            "mean_action_distance": summary.get("mean_action_distance"),
            "p95_action_distance": summary.get("p95_action_distance"),
            "max_action_distance": summary.get("max_action_distance"),
            "bound_violations": summary.get("bound_violations", 0),
            "non_finite": summary.get("non_finite", 0),
            "errors": summary.get("errors", 0),
            "first_violation": summary.get("first_violation"),
            "first_error": summary.get("first_error"),
            "latency_us_p50": summary.get("latency_us_p50"),
            "latency_us_p99": summary.get("latency_us_p99"),
            "window_ticks": self.window_ticks,
            "window_s": self.window_s,
            "elapsed_s": round(time.monotonic() - self._started_mono, 3),
            "sent": sent,
            "dropped": dropped,
            "too_large": too_large,
            "worker_ready": self._ready,
            "worker_pid": self._worker_pid,
            "sessions": self._sessions,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "complete": complete,
            "reason": reason,
            "passed": passed,
            "verdict": verdict,
            "max_mean_action_distance": self.config.max_mean_action_distance,
            "max_p95_action_distance": self.config.max_p95_action_distance,
            "min_ticks": self.config.min_ticks,
        }
