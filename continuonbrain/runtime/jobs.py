"""The job manager: training started from the API runs in a child process, one at a time.

Why a child process and not a thread: training allocates hundreds of MB that a Python
process never fully hands back, and a thread cannot be stopped; the BrainService next to it
drives a robot. A child (``python -m continuonbrain train|adapt ...``, exactly what a person
would type) gives memory isolation, a real stop (SIGTERM: the sequential trainer
checkpoints and exits, so the run can be resumed; SIGKILL after a grace period for anything
that does not listen), and a crash that cannot take the server down. It also keeps the
import rule: ``runtime`` never imports the training loop.

The one channel between parent and child is the child's ``--events FILE`` (JSON lines,
written whole and flushed one by one; see :class:`continuonbrain.trainer.metrics.EventFile`).
A monitor thread per job tails it every ``poll_s``, keeps the live state (component, step,
loss, a downsampled loss curve per component) and appends every record to a bounded,
sequence-numbered event buffer that the SSE route serves, so a browser that connects late
(or reconnects with ``Last-Event-ID``) still draws the whole curve.

On disk, per job: ``<run_root>/jobs/<job_id>/`` with ``job.json`` (the state, rewritten
atomically at each change), ``config.json`` (the exact config the child ran), ``events.jsonl``,
``stdout.log`` and ``stderr.log``, and the sequential trainer's ``run/`` (metrics.jsonl,
checkpoints). A server that restarts finds the newest ``job.json``: a job whose process is
gone is marked ``interrupted`` (a sequential one can be resumed); one whose process still
runs (the server died, the child did not) blocks new jobs until it ends, as it should.

Why one module of 555 lines: it is one job lifecycle (start, monitor, stop, finish, recover
after a restart) over one on-disk ``job.json`` state; most of it is :class:`JobManager`,
whose methods share the job lock and the event buffer.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from continuonbrain.fsutil import atomic_write_bytes
from continuonbrain.trainer.lora_config import LocalTrainerJobConfig
from continuonbrain.trainer.train_config import SequentialConfig

log = logging.getLogger(__name__)

JOB_KINDS = ("sequential", "adapt")
#: States a job passes through; the last three are final.
ACTIVE_STATES = ("running", "stopping")
FINAL_STATES = ("succeeded", "failed", "stopped", "interrupted")
#: Events kept for late subscribers (every job's, newest last).
MAX_EVENTS = 20_000
#: Points kept per component curve before it is halved (the chart needs shape, not every step).
MAX_CURVE_POINTS = 1_000
#: Seconds between SIGTERM and SIGKILL on stop.
STOP_GRACE_S = 15.0
#: Characters of a failed child's stderr kept in its status.
ERROR_TAIL = 2_000


class JobError(RuntimeError):
    """A job request that cannot be carried out now; ``status`` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 409, **detail: Any):
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass
class Budgets:
    """What a job may spend; None means the config's own value."""

    max_steps: int | None = None
    max_wall_time_s: float | None = None
    memory_budget_mb: int | None = None


@dataclass
class Job:
    """One training job as the API shows it (``to_dict``) and as ``job.json`` stores it."""

    job_id: str
    kind: str
    state: str
    directory: str
    config: str
    budgets: dict[str, Any]
    command: list[str]
    created: float
    pid: int | None = None
    ended: float | None = None
    returncode: int | None = None
    run_dir: str | None = None
    resumed_from: str | None = None
    forced: bool = False
    gates: dict[str, Any] | None = None
    component: str | None = None
    step: int | None = None
    loss: float | None = None
    rss_mb: float | None = None
    last_event: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    stop_requested: bool = False

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        out = asdict(self)
        out["elapsed_s"] = round((self.ended or time.time()) - self.created, 3)
        if not curves:
            out.pop("curves")
        return out


class JobManager:
    """Start, stop and watch one training child at a time; see the module doc."""

    def __init__(
        self,
        *,
        model_root: str | os.PathLike,
        run_root: str | os.PathLike,
        rlds_dir: str | os.PathLike | None,
        train_config: str | os.PathLike,
        adapt_config: str | os.PathLike,
        python: str = sys.executable,
        poll_s: float = 0.1,
        stop_grace_s: float = STOP_GRACE_S,
    ):
        self.model_root = Path(model_root)
        self.run_root = Path(run_root)
        self.rlds_dir = None if rlds_dir is None else Path(rlds_dir)
        self.train_config = Path(train_config)
        self.adapt_config = Path(adapt_config)
        self.python = python
        self.poll_s = poll_s
        self.stop_grace_s = stop_grace_s
        self.jobs_dir = self.run_root / "jobs"
        self._lock = threading.Lock()  # guards _job, _events, _seq
        self._job: Job | None = None
        self._proc: subprocess.Popen | None = None
        self._events: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=MAX_EVENTS)
        self._seq = 0
        self._recover()

    # -- queries ---------------------------------------------------------------------------

    @property
    def job(self) -> Job | None:
        return self._job

    def running(self) -> bool:
        job = self._job
        return job is not None and job.state in ACTIVE_STATES

    def status(self, curves: bool = True) -> dict[str, Any]:
        """The current (or last) job, JSON-safe; ``{"state": "idle"}`` when there never was one."""
        with self._lock:
            job = self._job
            if job is None:
                return {"state": "idle", "job": None, "last_seq": self._seq}
            return {
                "state": job.state if job.state in ACTIVE_STATES else "idle",
                "job": job.to_dict(curves=curves),
                "last_seq": self._seq,
            }

    def events_after(self, seq: int, limit: int = 500) -> list[tuple[int, str, dict[str, Any]]]:
        """Buffered events with a sequence number above ``seq`` (oldest first, at most ``limit``)."""
        with self._lock:
            if not self._events or self._events[-1][0] <= seq:
                return []
            out = [e for e in self._events if e[0] > seq]
        return out[:limit]

    def first_seq_of_current_job(self) -> int:
        """The sequence number just before the current job's first event (for a fresh subscriber)."""
        with self._lock:
            job = self._job
            if job is None:
                return self._seq
            for seq, _, record in self._events:
                if record.get("job_id") == job.job_id:
                    return seq - 1
            return self._seq

    # -- start / stop ----------------------------------------------------------------------

    def start(
        self,
        kind: str,
        budgets: Budgets,
        *,
        resume: bool = False,
        forced: bool = False,
        gates: dict[str, Any] | None = None,
        config: str | os.PathLike | None = None,
    ) -> Job:
        """Launch a ``sequential`` or ``adapt`` child; :class:`JobError` (409) if one runs."""
        if kind not in JOB_KINDS:
            raise JobError(f"unknown job kind {kind!r}; one of {list(JOB_KINDS)}", 422)
        if self.rlds_dir is None:
            raise JobError("no episode directory configured: start the server with --rlds-dir", 409)
        with self._lock:
            job = self._job
            if job is not None and job.state in ACTIVE_STATES:
                raise JobError(f"job {job.job_id} ({job.kind}) is {job.state}; stop it first", 409, job_id=job.job_id)
            job_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
            directory = self.jobs_dir / job_id
            directory.mkdir(parents=True)
            config_path = (
                Path(config)
                if config is not None
                else (self.train_config if kind == "sequential" else self.adapt_config)
            )
            run_dir, resumed_from = directory / "run", None
            if kind == "sequential" and resume:
                run_dir, resumed_from = self._resumable_run()
            command = self._command(kind, directory, config_path, budgets, run_dir, resume)
            job = Job(
                job_id=job_id,
                kind=kind,
                state="running",
                directory=str(directory),
                config=str(config_path),
                budgets=asdict(budgets),
                command=command,
                created=time.time(),
                run_dir=str(run_dir) if kind == "sequential" else None,
                resumed_from=resumed_from,
                forced=forced,
                gates=gates,
            )
            with open(directory / "stdout.log", "wb") as out, open(directory / "stderr.log", "wb") as err:
                try:
                    proc = subprocess.Popen(
                        command,
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                except OSError as exc:
                    raise JobError(f"could not start the training process: {exc}", 500) from exc
            job.pid = proc.pid
            self._job, self._proc = job, proc
            self._write(job)
            self._publish_locked("job", {"job_id": job_id, "kind": kind, "state": "running", "pid": proc.pid})
        threading.Thread(target=self._monitor, args=(job, proc), name=f"job-{job_id}", daemon=True).start()
        log.info("started %s job %s (pid %d): %s", kind, job_id, proc.pid, " ".join(command))
        return job

    def stop(self) -> Job | None:
        """Ask the running job to stop (SIGTERM now, SIGKILL after the grace period); the
        job's final state arrives through the monitor. Returns the job, or None if none runs."""
        with self._lock:
            job, proc = self._job, self._proc
            if job is None or job.state not in ACTIVE_STATES:
                return None
            job.stop_requested = True
            job.state = "stopping"
            self._write(job)
            self._publish_locked("job", {"job_id": job.job_id, "state": "stopping"})
        _signal_group(job.pid, signal.SIGTERM)
        if proc is None:  # a job from a previous server: no monitor owns it, escalate here
            threading.Thread(target=self._reap_foreign, args=(job,), daemon=True).start()
        return job

    def close(self) -> None:
        """Server shutdown: stop a running job (it checkpoints) and wait for it briefly."""
        job = self.stop()
        if job is not None and self._proc is not None:
            try:
                self._proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(job.pid, signal.SIGKILL)

    # -- internals -------------------------------------------------------------------------

    def _command(
        self, kind: str, directory: Path, config: Path, budgets: Budgets, run_dir: Path, resume: bool
    ) -> list[str]:
        base = [self.python, "-m", "continuonbrain"]
        events = str(directory / "events.jsonl")
        spend = {k: v for k, v in asdict(budgets).items() if v is not None}
        job_config = directory / "config.json"
        if kind == "sequential":
            # A typed config (strict keys, ranges named by field), with the budgets applied to
            # every component, written beside the job: what the child runs is on disk.
            seq = SequentialConfig.load(config, overrides={f"components.*.{k}": v for k, v in spend.items()})
            _write_config(job_config, seq.to_dict())
            cmd = [
                *base,
                "train",
                "--config",
                str(job_config),
                "--rlds-dir",
                str(self.rlds_dir),
                "--model-root",
                str(self.model_root),
                "--run-dir",
                str(run_dir),
                "--events",
                events,
                "--json",
            ]
            return [*cmd, "--resume"] if resume else cmd
        overrides: dict[str, Any] = {f"budgets.{k}": v for k, v in spend.items()}
        adapt = LocalTrainerJobConfig.load(
            config, overrides={**overrides, "log_dir": str(self.run_root / "adapt-logs")}
        )
        _write_config(job_config, adapt.to_dict())
        cmd = [
            *base,
            "adapt",
            "--config",
            str(job_config),
            "--rlds-dir",
            str(self.rlds_dir),
            "--model-root",
            str(self.model_root),
            "--events",
            events,
            "--json",
        ]
        return cmd

    def _resumable_run(self) -> tuple[Path, str]:
        """The run dir of the newest sequential job that did not finish (stopped, failed, interrupted)."""
        for job_json in sorted(self.jobs_dir.glob("*/job.json"), reverse=True):
            try:
                doc = json.loads(job_json.read_text())
            except (OSError, ValueError):
                continue
            unfinished = doc.get("kind") == "sequential" and doc.get("state") in ("stopped", "failed", "interrupted")
            if unfinished and doc.get("run_dir") and (Path(doc["run_dir"]) / "state.json").exists():
                return Path(doc["run_dir"]), doc["job_id"]
            if doc.get("kind") == "sequential" and doc.get("state") == "succeeded":
                break  # the newest sequential run finished: there is nothing to resume
        raise JobError("no stopped sequential run to resume", 409)

    def _monitor(self, job: Job, proc: subprocess.Popen) -> None:
        """Tail the child's events until it exits, then record how it ended."""
        path = Path(job.directory) / "events.jsonl"
        offset, partial = 0, b""
        killed_at: float | None = None
        while True:
            exited = proc.poll() is not None
            offset, partial = self._drain(job, path, offset, partial)
            if exited:
                break
            if job.stop_requested:
                killed_at = killed_at or time.monotonic()
                if time.monotonic() - killed_at > self.stop_grace_s:
                    log.warning("job %s ignored SIGTERM for %.0f s: SIGKILL", job.job_id, self.stop_grace_s)
                    _signal_group(job.pid, signal.SIGKILL)
            time.sleep(self.poll_s)
        self._finish(job, proc.returncode)

    def _drain(self, job: Job, path: Path, offset: int, partial: bytes) -> tuple[int, bytes]:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            return offset, partial
        if not chunk:
            return offset, partial
        offset += len(chunk)
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()  # an incomplete last line waits for the next read
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("job %s: unreadable event line skipped: %r", job.job_id, line[:200])
                continue
            if isinstance(record, dict):
                self._ingest(job, record)
        return offset, partial

    def _ingest(self, job: Job, record: dict[str, Any]) -> None:
        """Update the live state from one trainer record and publish it."""
        with self._lock:
            if record.get("component"):
                job.component = str(record["component"])
            if isinstance(record.get("step"), int):
                job.step = record["step"]
            if isinstance(record.get("rss_mb"), int | float):
                job.rss_mb = float(record["rss_mb"])
            loss = record.get("loss")
            kind = "progress"
            if isinstance(loss, int | float) and not isinstance(loss, bool) and job.component:
                kind = "metrics"
                job.loss = float(loss)
                curve = job.curves.setdefault(job.component, [])
                curve.append([record.get("step", len(curve)), float(loss)])
                if len(curve) > MAX_CURVE_POINTS:
                    del curve[1::2]
            else:
                job.last_event = {k: v for k, v in record.items() if k not in ("config", "files")}
            self._publish_locked(kind, {"job_id": job.job_id, **record})

    def _finish(self, job: Job, returncode: int) -> None:
        directory = Path(job.directory)
        result = _last_json_object(directory / "stdout.log")
        with self._lock:
            job.returncode, job.ended, job.result = returncode, time.time(), result
            ok_codes = (0, 1) if job.kind == "adapt" else (0,)  # adapt exits 1 when its gate rejects
            if job.stop_requested:
                job.state = "stopped"
            elif returncode in ok_codes:
                job.state = "succeeded"
            else:
                job.state = "failed"
                job.error = _tail(directory / "stderr.log") or f"exit code {returncode}"
            self._write(job)
            self._publish_locked(
                "job",
                {
                    "job_id": job.job_id,
                    "state": job.state,
                    "returncode": returncode,
                    "error": job.error,
                    "result": _brief(result),
                },
            )
            if self._proc is not None and self._proc.pid == job.pid:
                self._proc = None
        log.info("job %s %s (exit %s)", job.job_id, job.state, returncode)

    def _publish_locked(self, kind: str, record: dict[str, Any]) -> None:
        self._seq += 1
        self._events.append((self._seq, kind, record))

    def _write(self, job: Job) -> None:
        path = Path(job.directory) / "job.json"
        atomic_write_bytes(path, (json.dumps(job.to_dict(), indent=2, default=str) + "\n").encode())

    def _recover(self) -> None:
        """Pick up the newest job of a previous server (see the module doc)."""
        if not self.jobs_dir.is_dir():
            return
        for job_json in sorted(self.jobs_dir.glob("*/job.json"), reverse=True):
            try:
                doc = json.loads(job_json.read_text())
                doc.pop("elapsed_s", None)
                job = Job(**doc)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable %s: %s", job_json, exc)
                continue
            if job.state in ACTIVE_STATES:
                if job.pid is not None and _alive(job.pid):
                    log.warning("job %s of a previous server still runs (pid %d)", job.job_id, job.pid)
                    threading.Thread(target=self._reap_foreign, args=(job,), daemon=True).start()
                else:
                    job.state, job.ended = "interrupted", job.ended or time.time()
                    job.error = "the server stopped while this job ran"
                    self._write(job)
            self._job = job
            return

    def _reap_foreign(self, job: Job) -> None:
        """Wait for a child we did not start (no Popen to wait on) and record its end."""
        deadline = None
        while job.pid is not None and _alive(job.pid):
            if job.stop_requested:
                deadline = deadline or time.monotonic() + self.stop_grace_s
                if time.monotonic() > deadline:
                    _signal_group(job.pid, signal.SIGKILL)
            time.sleep(max(self.poll_s, 0.5))
        with self._lock:
            job.state = "stopped" if job.stop_requested else "interrupted"
            job.ended = time.time()
            self._write(job)
            self._publish_locked("job", {"job_id": job.job_id, "state": job.state})


def _signal_group(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, sig)  # the child leads its own session: this reaches its workers too
    except ProcessLookupError:
        pass
    except PermissionError:
        log.warning("no permission to signal job process group %d", pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _last_json_object(path: Path) -> dict[str, Any] | None:
    """The child's ``--json`` result: the last line of stdout that parses as a JSON object."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return None


def _tail(path: Path, chars: int = ERROR_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:].strip()


def _brief(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The few fields of a child's result that a progress event needs."""
    if result is None:
        return None
    keys = ("status", "reason", "promoted", "candidate_version", "current_version", "steps", "final_loss")
    brief = {k: result[k] for k in keys if k in result}
    if "components" in result:
        brief["components"] = {
            name: {k: c.get(k) for k in ("steps", "initial_loss", "final_loss", "stop_reason")}
            for name, c in result["components"].items()
        }
    return brief


def _write_config(path: Path, doc: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(doc, indent=2, default=str) + "\n").encode())
