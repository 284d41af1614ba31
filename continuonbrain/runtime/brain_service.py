"""BrainService: serve the model store's ``current`` brain, with per-session state and hot swap.

The robot's control loop (and the HTTP API in front of it) calls :meth:`BrainService.act`
at 10-100 Hz while a trainer, in this process or another one, may promote a new brain at
any moment. The service must therefore never answer with half of one model and half of
another, never fail a request because a swap is under way, and never serve weights that do
not match the manifest the safety gate approved.

How it is built, and why:

* **What is loaded.** ``<model_root>/current`` is a symbolic link to ``.slots/<version>/``
  that :class:`~continuonbrain.models.store.PromotionStore` replaces with one ``rename(2)``.
  The service reads the link once and loads from the directory it names, so a swap during
  loading cannot mix two versions. That directory is verified first (the sha256 of every
  file against ``manifest.json``), then loaded with its adapter merged
  (:meth:`HopeBrain.load`), then smoke-tested (one act on a zero observation must give a
  finite action: a NaN in the weights passes any checksum). If the directory vanishes
  meanwhile (a concurrent promotion moved it to ``history/``) and the link has moved on, the
  load is retried with the new target; otherwise the version is *refused*: the reason is
  logged and kept in :meth:`status`, and the last good brain keeps serving (or, when there
  has never been one, :class:`NoModelError` until a good version appears).
* **Swapping.** The loaded brain and its version live together in one immutable
  :class:`_Loaded` record behind one attribute. A new record is built completely (verified,
  loaded, numpy path exported) in the watcher thread or in :meth:`reload`, then published
  with a single reference assignment, atomic under the GIL. ``act`` reads that reference
  once, so an answer always comes from exactly one version and names it.
* **Watching.** A daemon thread polls ``readlink(current)`` every ``watch_interval_s``: a
  system call of a few microseconds, no file hashing until the link changes. So a promotion
  by another process takes effect within one poll plus the load time (tens of ms for a
  seed). :meth:`reload` does the same check at once, for the API right after a promotion.
  The watcher does not retry a refused link on its own (re-hashing a corrupt version every
  20 ms would be a busy loop); a new promotion, a rollback or an explicit :meth:`reload`
  does. The link must lead to a directory inside the model root; anything else is refused.
* **Fallback.** When nothing is loaded and ``current`` cannot be served (refused, a dangling
  link, removed), the newest ``history/`` version that verifies and passes the smoke act is
  served instead, loudly: an error in the log, ``fallback`` in :meth:`status` (shown by
  ``/api/status`` and the Robot Editor) and a ``fallback`` line in ``audit.jsonl``. A robot
  with a damaged ``current`` and good versions in history keeps driving; the store itself is
  not changed (an operator decides: ``models rollback``). The next good ``current`` ends it.
* **Integrity of what is served.** Every ``reverify_interval_s`` the watcher compares size and
  mtime of the served files with those seen when they were verified (a few ``stat`` calls);
  when they differ it hashes them again. Files changed on disk under a running server (bit
  rot, a careless copy) do not change the brain in memory, which keeps serving, but they would
  be refused at the next start: :meth:`status` reports ``integrity`` not ok, the log says so
  and ``audit.jsonl`` gets a ``corrupted`` line, once per finding.
* **Leases.** A service on ``current`` records the version it has loaded in
  ``<model_root>/.serving/`` so that the store never deletes it (history trimming, duplicate
  removal) while it runs.
* **Sessions.** Each session id is one control stream with its own recurrent state: a
  :meth:`HopeBrain.fork` of the loaded brain (shared, read-only weights and numpy export,
  private state). ``session_id=None`` means the ``"default"`` session: a robot with one
  control loop needs no ids. Sessions expire after ``session_ttl_s`` without a call and are
  capped at ``max_sessions``, so forgotten clients cannot grow memory. A session called within
  the last ``session_active_s`` is *in active use* (a control loop at 10-100 Hz always is) and
  is never evicted: a new session id that finds the table full evicts the least recently used
  idle session, and when every session is in active use it is refused
  (:class:`SessionLimitError`, 429 in the API) rather than resetting a running robot's state.
  Evictions and refusals are counted and the newest ones listed in :meth:`status`.
  **A new model version resets every session's state** (lazily, at the session's next call):
  a recurrent state is a point in one model's hidden space and means nothing to another.
  :attr:`ActResult.fresh_state` tells the caller when its state started over.
* **Shadow mode.** :meth:`start_shadow` runs the candidate beside the served brain on every
  :meth:`act` (:mod:`continuonbrain.runtime.shadow`): ``act`` computes its answer as always and
  then, inside the session's lock, sends the tick to a worker process without waiting (a
  full buffer drops the tick and counts it). The shadow ends on its window, on
  :meth:`stop_shadow`, and when the served brain (:meth:`_publish`) or the candidate (the
  watcher's stat of its manifest) changes; its record is ``<model_root>/shadow.json``.
* **Threads.** The API serves requests from a thread pool. One session's calls are
  serialised by that session's lock (its state is updated in place); different sessions run
  in parallel (numpy and torch release the GIL in their kernels). The only lock shared by
  all requests guards the session table for a dictionary lookup, never inference; loads are
  serialised by their own lock, which ``act`` never takes.

Import rule (README "Layout of the code"): ``runtime``
imports ``hope``, ``models`` (the store) and ``robot``, never the training loop.

Why one module of 1001 lines: it is one class, :class:`BrainService`, whose loading, watching,
fallback, integrity checks and sessions all work on the same published ``_Loaded`` record and
locks described above; shadow mode adds only its start, stop and the two hooks (``act``,
``_publish``), its machinery lives in :mod:`continuonbrain.runtime.shadow`. Split candidate:
the session table (``_session``, ``_make_room``, ``_drop_expired``, ``_release_idle_sessions``)
as a small class of its own.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.hope import HopeBrain, HopeConfig
from continuonbrain.models.shadow_stats import ShadowConfig, json_safe, manifest_sha256, read_shadow_record
from continuonbrain.models.store import ModelStore, StoreError
from continuonbrain.runtime.shadow import NoShadowError, ShadowConflictError, ShadowRunner

__all__ = [
    "DEFAULT_SESSION",
    "ActResult",
    "BrainService",
    "NoModelError",
    "NoShadowError",
    "SessionLimitError",
    "ShadowConflictError",
]

log = logging.getLogger(__name__)

#: The session of callers that pass no session id (one robot, one control loop).
DEFAULT_SESSION = "default"
#: Session ids are short printable strings; anything else is a client bug (or an attack on memory).
MAX_SESSION_ID_LEN = 128
#: How often a load that lost a race with a concurrent promotion is retried with the new target.
MAX_LOAD_ATTEMPTS = 5
#: Refused versions remembered in :meth:`BrainService.status` (the newest ones).
MAX_REFUSED = 20
#: How long :meth:`BrainService.start_shadow` waits for the shadow worker to load the candidate.
SHADOW_START_TIMEOUT_S = 120.0
#: Session evictions listed in :meth:`BrainService.status` (the newest ones).
MAX_EVICTIONS_SHOWN = 20


class NoModelError(RuntimeError):
    """No brain is loaded: the store has no (good) current version yet. The API answers 503."""


class SessionLimitError(RuntimeError):
    """A new session id found every session slot in active use. The API answers 429."""


@dataclass(slots=True)
class ActResult:
    """One answer of :meth:`BrainService.act`."""

    #: The action, ``float32 [action_dim]``, in robot units (within the model's action bounds).
    action: np.ndarray
    #: The version (manifest ``version``) of the brain that computed this action.
    model_version: str
    #: Time spent in :meth:`BrainService.act`, waiting for the session included, in µs.
    latency_us: float
    #: The session whose state this call advanced (``"default"`` when none was given).
    session_id: str
    #: True when this call started from a zero state: a new or expired session, ``reset``,
    #: or a model swap since the session's previous call.
    fresh_state: bool = False


@dataclass(frozen=True)
class _Loaded:
    """One loaded version, published as a whole: the brain and the version that name each other."""

    brain: HopeBrain  # a template: reset once (numpy path exported), never acted with; sessions fork it
    version: str
    link: str  # the ``current`` link text it was loaded through (``.slots/<version>``)
    directory: str
    manifest: dict[str, Any]
    loaded_at: float
    load_ms: float
    obs_shape: tuple[int, ...] = field(default=())
    dict_obs: bool = False  # the model expects dict observations (state keys and/or cameras)
    #: ``{name: (size, mtime_ns)}`` of the directory's entries, taken just before verifying it.
    signature: dict[str, tuple[int, int]] = field(default_factory=dict)
    fallback: bool = False  # served from history because current could not be


class _Session:
    """One control stream. ``lock`` serialises its calls; ``model`` is the load it was forked from."""

    __slots__ = ("brain", "created", "last_used", "lock", "model", "session_id", "ticks")

    def __init__(self, session_id: str, now: float):
        self.session_id = session_id
        self.lock = threading.Lock()
        self.brain: HopeBrain | None = None
        self.model: _Loaded | None = None
        self.created = now
        self.last_used = now
        self.ticks = 0


class BrainService:
    """Serve ``<model_root>/current`` to concurrent callers; see the module doc.

    ``backend``: ``"numpy"`` (the Fast loop on its numpy export, the fast path) or ``"torch"``.
    ``slot``: the store slot to serve, ``"current"`` (the robot) or ``"candidate"`` (evaluating
    weights before the gate, through the very same act path).
    ``torch_threads``: torch's intra-op threads for this process, set at :meth:`start` (None
    leaves them alone). One by default: a served brain computes a batch of one, where extra
    threads only add wake-ups, and on a loaded 2-core board their barriers wait for a
    scheduler slice (measured: p99 of ``/api/infer`` 31 ms with torch's default of 2 threads).
    ``session_active_s``: a session called within this long is in active use and never
    evicted (0: plain least-recent-use eviction).
    ``fallback``: serve the newest good history version when ``current`` cannot be served
    (None: only when serving ``current``; an evaluation of a named slot must never score a
    different model).
    ``reverify_interval_s``: how often the watcher checks the served files on disk.
    ``shadow_config``: windows and pass rule of live shadow mode (:meth:`start_shadow`).
    """

    def __init__(
        self,
        model_root: str | Path,
        *,
        session_ttl_s: float = 300.0,
        max_sessions: int = 64,
        watch_interval_s: float = 0.02,
        backend: str = "numpy",
        slot: str = "current",
        torch_threads: int | None = 1,
        session_active_s: float = 1.0,
        fallback: bool | None = None,
        reverify_interval_s: float = 1.0,
        shadow_config: ShadowConfig | None = None,
    ):
        if slot not in ("current", "candidate"):
            raise ValueError(f"slot must be 'current' or 'candidate', got {slot!r}")
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        if not (session_ttl_s > 0 and math.isfinite(session_ttl_s)):
            raise ValueError(f"session_ttl_s must be a positive number, got {session_ttl_s!r}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions!r}")
        if not watch_interval_s > 0:
            raise ValueError(f"watch_interval_s must be > 0, got {watch_interval_s!r}")
        if not (session_active_s >= 0 and math.isfinite(session_active_s)):
            raise ValueError(f"session_active_s must be a number >= 0, got {session_active_s!r}")
        if not reverify_interval_s > 0:
            raise ValueError(f"reverify_interval_s must be > 0, got {reverify_interval_s!r}")
        self.model_root = Path(model_root)
        self.session_ttl_s = float(session_ttl_s)
        self.max_sessions = int(max_sessions)
        self.watch_interval_s = float(watch_interval_s)
        self.backend = backend
        self.slot = slot
        self.torch_threads = torch_threads
        self.session_active_s = float(session_active_s)
        self.fallback_enabled = (slot == "current") if fallback is None else bool(fallback)
        self.reverify_interval_s = float(reverify_interval_s)
        self._store = ModelStore(self.model_root)
        self._lease_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._fallback: dict[str, Any] | None = None  # why and what, while serving from history
        self._integrity: dict[str, Any] = {"ok": True, "checked_at": None, "reason": None}
        self._integrity_reported: set[tuple[str, str]] = set()
        self._verified: tuple[str, dict[str, tuple[int, int]]] | None = None  # (version, signature) last verified
        self._loaded: _Loaded | None = None  # replaced whole, never mutated
        self._load_lock = threading.Lock()  # serialises loads (watcher vs reload); act never takes it
        self._seen_link: str | None = None  # the link last handled (loaded or refused)
        self._refused: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._swaps = 0
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first
        self._sessions_lock = threading.Lock()  # the session table only: a lookup, never inference
        self._expired = 0
        self._evicted = 0
        self._sessions_refused = 0
        self._evictions: deque[dict[str, Any]] = deque(maxlen=MAX_EVICTIONS_SHOWN)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watch_errors = 0
        self.shadow_config = shadow_config or ShadowConfig()
        self._shadow: ShadowRunner | None = None  # the running window; act reads it once per call
        self._shadow_last: ShadowRunner | None = None  # the newest finished window of this process
        self._shadow_lock = threading.Lock()  # start/stop of shadows; act never takes it
        self._shadow_ref_lock = threading.Lock()  # swapping the _shadow reference, nothing else
        self._shadow_candidate_stat: tuple[int, int, int] | None = None  # candidate manifest at start

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Load ``current`` (if any; refusing it is not an error) and start the watcher thread."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop.clear()
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)
        self._check(retry_refused=True)
        self._fall_back_if_nothing_served("at start")
        self._watcher = threading.Thread(target=self._watch, name="brain-service-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher (the loaded brain keeps answering :meth:`act`)."""
        self._stop.set()
        self._end_shadow("the service stopped")
        if self._watcher is not None:
            self._watcher.join(timeout=max(5.0, 10 * self.watch_interval_s))
            self._watcher = None
        self._store.drop_lease(self._lease_id)

    def __enter__(self) -> BrainService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """The version being served, or None."""
        loaded = self._loaded
        return loaded.version if loaded is not None else None

    def served(self) -> tuple[str, HopeConfig] | None:
        """The served version and its model config, read together from one published record
        (None while nothing is served): for callers that shape observations for the brain
        before :meth:`act`, such as camera frames decoded to the model's image shape."""
        loaded = self._loaded
        return None if loaded is None else (loaded.version, loaded.brain.config)

    def act(self, observation: Any, session_id: str | None = None, reset: bool = False) -> ActResult:
        """One control tick of session ``session_id`` (None: ``"default"``).

        ``reset`` zeroes that session's recurrent state before acting. Raises
        :class:`NoModelError` when no brain is loaded and :class:`ValueError` for an
        observation the brain cannot take (wrong size or keys, not numeric, NaN/inf) or a bad
        session id; a rejected call leaves the session's state as it was.
        """
        t0 = time.perf_counter()
        loaded = self._loaded
        if loaded is None:
            raise NoModelError(self._no_model_reason())
        sid = DEFAULT_SESSION if session_id is None else session_id
        if type(sid) is not str or not sid or len(sid) > MAX_SESSION_ID_LEN or not sid.isprintable():
            raise ValueError(f"session_id must be a printable string of 1-{MAX_SESSION_ID_LEN} characters")
        obs = _prepare(observation, loaded)
        session = self._session(sid, t0)
        with session.lock:
            now_loaded = self._loaded  # the one (brain, version) pair this answer uses
            if now_loaded is not loaded and now_loaded is not None:
                if now_loaded.obs_shape != loaded.obs_shape or now_loaded.dict_obs != loaded.dict_obs:
                    obs = _prepare(observation, now_loaded)
                loaded = now_loaded
            fresh = session.model is not loaded
            if fresh:
                session.brain = loaded.brain.fork()
                session.model = loaded
                session.brain.reset()
                session.ticks = 0
            elif reset:
                session.brain.reset()  # type: ignore[union-attr]
                session.ticks = 0
                fresh = True
            try:
                action = session.brain.act(obs)  # type: ignore[union-attr]
            except (TypeError, KeyError, IndexError) as exc:  # a dict observation of the wrong kind
                raise ValueError(f"bad observation: {type(exc).__name__}: {exc}") from None
            session.ticks += 1
            shadow = self._shadow
            if shadow is not None and shadow.served is loaded:  # in the lock: ticks queue in session order
                shadow.offer(sid, obs, action, fresh)  # encoded and sent at once, never waited for
        if action.dtype != np.float32:
            action = action.astype(np.float32)
        return ActResult(action, loaded.version, (time.perf_counter() - t0) * 1e6, sid, fresh)

    def _session(self, sid: str, now: float) -> _Session:
        """The session ``sid`` (created if needed), marked as just used; expired and
        over-cap sessions are dropped here, in least-recent-use order (O(1) amortised)."""
        with self._sessions_lock:
            sessions = self._sessions
            session = sessions.get(sid)
            if session is not None and now - session.last_used > self.session_ttl_s:
                del sessions[sid]
                self._expired += 1
                session = None
            if session is None:
                self._drop_expired(now)
                if len(sessions) >= self.max_sessions:
                    self._make_room(now)
                session = _Session(sid, now)
                sessions[sid] = session
            else:
                sessions.move_to_end(sid)
                session.last_used = now
            return session

    def _make_room(self, now: float) -> None:
        """Evict least recently used sessions until one slot is free, but only idle ones: the
        table is in last-use order, so when its oldest session is in active use, all are, and
        the new session is refused instead. Callers hold ``_sessions_lock``."""
        sessions = self._sessions
        while len(sessions) >= self.max_sessions:
            oldest = next(iter(sessions.values()))
            idle = now - oldest.last_used
            if idle < self.session_active_s:
                self._sessions_refused += 1
                raise SessionLimitError(
                    f"all {self.max_sessions} sessions are in active use (each called within the last "
                    f"{self.session_active_s:g} s): a new session id is refused rather than resetting a running "
                    "control loop; retry later or reuse a session id"
                )
            sessions.popitem(last=False)
            self._evicted += 1
            self._evictions.append(
                {
                    "session_id": oldest.session_id,
                    "idle_s": round(idle, 3),
                    "ticks": oldest.ticks,
                    "time": _iso(time.time()),
                }
            )

    def _drop_expired(self, now: float) -> None:
        """Remove expired sessions (the table is in last-use order, so they are at its front).
        Callers hold ``_sessions_lock``. A call already inside an expired session finishes on
        it; the id's next call starts a new one."""
        sessions = self._sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if now - oldest.last_used <= self.session_ttl_s:
                break
            sessions.popitem(last=False)
            self._expired += 1

    def end_session(self, session_id: str) -> bool:
        """Forget a session (a client that is done); True if it existed."""
        with self._sessions_lock:
            return self._sessions.pop(session_id, None) is not None

    # -- loading -------------------------------------------------------------------------

    def reload(self) -> str | None:
        """Check the store now and load ``current`` if it is not what is being served.

        Returns the version served afterwards. Unlike the watcher, this also retries a
        version refused before (an operator's "try again").
        """
        self._check(retry_refused=True)
        self._fall_back_if_nothing_served("on reload")
        return self.version

    def _watch(self) -> None:
        """Poll the ``current`` link (cheap) and load when it changes; re-check the served files
        every ``reverify_interval_s``; never dies."""
        last_purge = last_verify = time.monotonic()
        while not self._stop.wait(self.watch_interval_s):
            try:
                self._check(retry_refused=False)
                if self._shadow is not None:
                    self._check_shadow_candidate()
                now = time.monotonic()
                if now - last_purge > 1.0:
                    last_purge = now
                    with self._sessions_lock:
                        self._drop_expired(time.perf_counter())
                if now - last_verify >= self.reverify_interval_s:
                    last_verify = now
                    self._check_integrity()
            except Exception:  # a watcher that dies would silently stop all hot swaps
                self._watch_errors += 1
                log.exception("brain service watcher: unexpected error (continuing)")

    def _read_link(self) -> str | None:
        """The text of the ``current`` link, or None when there is no current.

        A plain directory (a store from before links) gets a key from its inode and mtime,
        so replacing it is noticed too.
        """
        link = self._store.slot(self.slot)
        try:
            return os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError:  # EINVAL: not a link
            try:
                st = os.stat(link)
            except OSError:
                return None
            return f"dir:{st.st_ino}:{st.st_mtime_ns}" if os.path.isdir(link) else None

    def _target(self, link: str) -> Path:
        if link.startswith("dir:"):
            return self._store.slot(self.slot)
        return Path(os.path.normpath(os.path.join(self.model_root, link)))

    def _pending_link(self, retry_refused: bool) -> str | None:
        """The ``current`` link if it names something to load: not what is served, and not a
        version refused before (unless ``retry_refused``)."""
        link = self._read_link()
        loaded = self._loaded
        if link is None or (loaded is not None and link == loaded.link):
            return None
        if not retry_refused and link == self._seen_link:
            return None
        return link

    def _check(self, retry_refused: bool) -> None:
        """Load the link's target if it is new; refuse it (keeping the old brain) if it is bad."""
        if self._pending_link(retry_refused) is None:  # the cheap check, without the lock
            return
        with self._load_lock:
            for _ in range(MAX_LOAD_ATTEMPTS):
                link = self._pending_link(retry_refused)  # again under the lock: another thread may have loaded it
                if link is None:
                    return
                target = self._target(link)
                try:
                    new = self._load(target, link)
                except Exception as exc:  # any failure refuses the version, never the service
                    if self._read_link() != link:
                        log.info("current moved on while loading %s (%s); retrying", target.name, exc)
                        continue
                    reason = self._refuse(target, link, exc)
                    self._fall_back_locked(f"current ({link}) was refused: {reason}")
                    return
                self._seen_link = link
                self._refused.pop(new.version, None)
                self._publish(new)
                return
            log.warning("current kept moving during %d load attempts; will try again", MAX_LOAD_ATTEMPTS)

    def _publish(self, new: _Loaded) -> None:
        """Serve ``new`` from now on (callers hold the load lock): one reference assignment."""
        previous = self._loaded
        self._loaded = new  # the swap
        self._swaps += 1
        shadow = self._shadow
        if shadow is not None and shadow.served is not new:
            shadow.stop(f"the served brain changed from {shadow.served.version} to {new.version}", wait=False)
        self._verified = (new.version, new.signature)
        self._integrity = {"ok": True, "version": new.version, "checked_at": _iso(time.time()), "reason": None}
        self._release_idle_sessions(new)
        if self.slot == "current":
            self._store.write_lease(self._lease_id, new.version, new.directory)
        if not new.fallback and self._fallback is not None:
            log.warning(
                "fallback over: serving current %s (was history version %s)", new.version, self._fallback["version"]
            )
            self._fallback = None
        log.info(
            "serving %s (was %s; verified and loaded in %.1f ms)",
            new.version,
            previous.version if previous else None,
            new.load_ms,
        )

    def _load(self, directory: Path, link: str, fallback: bool = False) -> _Loaded:
        """Verify, load and smoke-test one slot directory; raise on anything wrong."""
        t0 = time.perf_counter()
        directory = self._store.check_inside(directory, what=link)  # a link out of the store is refused
        signature = self._store.file_signature(directory)  # before hashing: a later change shows
        manifest = self._store.verify(directory)  # sha256 of every file first: nothing unverified is read
        version = str(manifest.get("version") or directory.name)
        brain = HopeBrain.load(directory, backend=self.backend)  # type: ignore[arg-type]
        if brain.fast_loop is None:
            raise ValueError(f"the brain has no fast_loop (components {brain.components()}): it cannot act")
        brain.reset()  # exports the numpy Fast loop once; every session's fork shares it
        cfg = brain.config
        dict_obs = bool(cfg.image_keys or cfg.state_keys)
        # A NaN or inf in the weights passes any checksum: act once on a zero observation to see.
        zero: Any = np.zeros(cfg.obs_dim, np.float32)
        if cfg.image_keys:  # black frames too; the state width goes to the first state key (concatenated)
            zero = {k: np.zeros(cfg.obs_dim if i == 0 else 0, np.float32) for i, k in enumerate(cfg.state_keys)}
            zero.update({k: np.zeros(shape, np.uint8) for k, shape in cfg.image_shape_tuples.items()})
        out = brain.fork().act(zero)  # a fork: the template stays unused
        if out.shape != (cfg.action_dim,) or not np.all(np.isfinite(out)):
            raise ValueError(f"the brain's action on a zero observation is not finite: {out.tolist()}")
        return _Loaded(
            brain=brain,
            version=version,
            link=link,
            directory=str(directory),
            manifest=manifest,
            loaded_at=time.time(),
            load_ms=(time.perf_counter() - t0) * 1e3,
            obs_shape=(cfg.obs_dim,),
            dict_obs=dict_obs,
            signature=signature,
            fallback=fallback,
        )

    # -- fallback and integrity ----------------------------------------------------------

    def _fall_back_if_nothing_served(self, when: str) -> None:
        if self.fallback_enabled and self._loaded is None:
            with self._load_lock:
                link = self._read_link()
                why = f"{self.slot} does not exist" if link is None else self._no_model_reason()
                self._fall_back_locked(f"{why} ({when})")

    def _fall_back_locked(self, why: str) -> None:
        """Nothing is served and ``current`` cannot be: serve the newest history version that
        verifies and passes the smoke act, and say so everywhere (callers hold the load lock)."""
        if not self.fallback_enabled or self._loaded is not None:
            return
        skipped: list[str] = []
        try:
            history = self._store.history()
        except OSError as exc:
            log.error("nothing to serve (%s), and history cannot be read: %s", why, exc)
            return
        for manifest in history:
            version = str(manifest.get("version"))
            directory = self._store.history_dir() / version
            try:
                new = self._load(directory, f"history/{version}", fallback=True)
            except Exception as exc:
                skipped.append(f"{version}: {type(exc).__name__}: {exc}")
                continue
            self._fallback = {
                "active": True,
                "version": version,
                "directory": str(directory),
                "reason": why,
                "since": _iso(time.time()),
                "skipped": skipped,
            }
            self._publish(new)
            log.error(
                "FALLBACK: %s; serving history version %s instead. The store is unchanged: "
                "roll back or promote a good version to end this.",
                why,
                version,
            )
            record = {"decision": "fallback", "version": version, "reason": why, "skipped": skipped, "pid": os.getpid()}
            try:
                self._store.append_audit(record)
            except OSError as exc:
                log.error("cannot write the fallback's audit line: %s", exc)
            return
        if history:
            log.error("nothing to serve: %s, and no history version verifies (%s)", why, "; ".join(skipped))

    def _check_integrity(self) -> None:
        """Compare the served files on disk with what was verified: ``stat`` first, and the
        sha256 of every file only when a size or mtime changed."""
        loaded = self._loaded
        if loaded is None:
            return
        directory = self._locate(loaded)
        if directory is None:
            self._report_integrity(
                loaded, f"the served files are gone from the store (they were in {loaded.directory})"
            )
            return
        signature = self._store.file_signature(directory)
        if self._verified == (loaded.version, signature):
            self._integrity["checked_at"] = _iso(time.time())
            return
        try:
            manifest = self._store.verify(directory)
            if manifest.get("files") != loaded.manifest.get("files"):
                raise StoreError(f"{directory}: the manifest's files differ from those loaded and served")
        except (StoreError, OSError) as exc:
            self._verified = (loaded.version, signature)  # hash again only after the next change
            self._report_integrity(loaded, str(exc))
            return
        self._verified = (loaded.version, signature)
        if not self._integrity.get("ok"):
            log.warning("served version %s: the files on disk verify again (%s)", loaded.version, directory)
        self._integrity = {"ok": True, "version": loaded.version, "checked_at": _iso(time.time()), "reason": None}

    def _locate(self, loaded: _Loaded) -> Path | None:
        """Where the served version's files are now: a promotion moves ``.slots/<v>`` to
        ``history/<v>`` (and a rollback back) while the old brain may still be served."""
        root = self.model_root
        for place in (Path(loaded.directory), root / ".slots" / loaded.version, root / "history" / loaded.version):
            try:
                manifest = self._store.manifest(place)
            except StoreError:
                manifest = {"version": loaded.version}  # unreadable here: this is the place, and it is damaged
            if manifest is not None and str(manifest.get("version")) == loaded.version:
                return place
        return None

    def _report_integrity(self, loaded: _Loaded, reason: str) -> None:
        now = _iso(time.time())
        self._integrity = {"ok": False, "version": loaded.version, "checked_at": now, "reason": reason}
        key = (loaded.version, reason)
        if key in self._integrity_reported:
            return
        self._integrity_reported.add(key)
        log.error(
            "served version %s is damaged on disk: %s. The copy verified at load time keeps serving from memory; "
            "a restart would refuse these files.",
            loaded.version,
            reason,
        )
        try:
            self._store.append_audit(
                {"decision": "corrupted", "version": loaded.version, "reason": reason, "pid": os.getpid()}
            )
        except OSError as exc:
            log.error("cannot write the audit line: %s", exc)

    def _release_idle_sessions(self, new: _Loaded) -> None:
        """Drop idle sessions' forks of older versions now, so the old weights can be freed
        without waiting for each session's next call (which would start fresh anyway). A
        session busy in a call is left alone: its next call notices the new version itself."""
        with self._sessions_lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            if session.model is not new and session.lock.acquire(blocking=False):
                try:
                    if session.model is not new:
                        session.brain, session.model = None, None
                finally:
                    session.lock.release()

    def _refuse(self, directory: Path, link: str, exc: BaseException) -> str:
        """Remember and log a version that will not be served; returns the reason."""
        version = directory.name
        reason = f"{type(exc).__name__}: {exc}"
        serving = self.version
        log.error("refusing model version %s: %s; still serving %s", version, reason, serving or "nothing")
        self._seen_link = link
        self._refused.pop(version, None)
        self._refused[version] = {
            "version": version,
            "reason": reason,
            "directory": str(directory),
            "time": _iso(time.time()),
            "kept_serving": serving,
        }
        while len(self._refused) > MAX_REFUSED:
            self._refused.popitem(last=False)
        return reason

    def _no_model_reason(self) -> str:
        if self._refused:
            last = next(reversed(self._refused.values()))
            return f"no model loaded: version {last['version']} was refused ({last['reason']})"
        return f"no model loaded: {self.model_root}/{self.slot} does not exist yet"

    # -- shadow mode -------------------------------------------------------------------

    def start_shadow(self, window_ticks: int | None = None, window_s: float | None = None) -> dict[str, Any]:
        """Run ``<model_root>/candidate`` in shadow beside the served brain on every :meth:`act`
        until ``window_ticks`` ticks are compared or ``window_s`` seconds pass, whichever comes
        first (neither: the config's ``window_ticks``). Returns the status.

        The candidate is verified, loaded and smoke-tested here exactly as a served version is
        (:meth:`_load`), so that a bad one is refused at once with its reason, and must take the
        served brain's observations and give actions of the same size; then it runs in a worker
        process (:mod:`continuonbrain.runtime.shadow`), which verifies it again. Raises
        :class:`ShadowConflictError` when that fails or a shadow runs already, ``ValueError``
        for a window out of the config's bounds.
        """
        cfg = self.shadow_config
        if window_ticks is not None and not 1 <= window_ticks <= cfg.max_window_ticks:
            raise ValueError(f"window_ticks must be 1-{cfg.max_window_ticks}, got {window_ticks}")
        if window_s is not None and not (0 < window_s <= cfg.max_window_s):
            raise ValueError(f"window_s must be > 0 and <= {cfg.max_window_s:g}, got {window_s}")
        if window_ticks is None and window_s is None:
            window_ticks = cfg.window_ticks
        if self.slot != "current":
            raise ShadowConflictError(f"shadow mode runs beside the served current brain, not on slot {self.slot}")
        with self._shadow_lock:
            running = self._shadow
            if running is not None and running.active:
                raise ShadowConflictError(
                    f"a shadow of candidate {running.base['candidate_version']} is running "
                    f"({running.ticks} ticks); stop it first (DELETE /api/models/shadow)"
                )
            served = self._loaded
            if served is None:
                raise ShadowConflictError(f"nothing is served to shadow beside: {self._no_model_reason()}")
            directory = self._store.slot("candidate")
            manifest_path = directory / "manifest.json"
            try:
                stat_before = _stat_key(manifest_path)
                sha = manifest_sha256(directory)
            except FileNotFoundError:
                raise ShadowConflictError(f"no candidate to shadow: {directory} does not exist") from None
            except OSError as exc:
                raise ShadowConflictError(f"the candidate's manifest cannot be read: {exc}") from None
            try:
                candidate = self._load(directory, "candidate")  # verified, loaded, smoke-tested
                if _stat_key(manifest_path) != stat_before:
                    raise StoreError("the candidate was replaced while it was being loaded; try again")
            except Exception as exc:
                raise ShadowConflictError(f"candidate refused: {type(exc).__name__}: {exc}") from None
            mismatch = _interface_mismatch(served.brain.config, candidate.brain.config)
            if mismatch:
                raise ShadowConflictError(f"candidate {candidate.version} cannot shadow {served.version}: {mismatch}")
            try:
                current_sha: str | None = manifest_sha256(served.directory)
            except OSError:
                current_sha = None  # moved to history meanwhile; the version still names it
            runner = ShadowRunner(
                candidate.directory,
                model_root=self.model_root,
                config=cfg,
                record_base={
                    "candidate_version": candidate.version,
                    "candidate_manifest_sha256": sha,
                    "current_version": served.version,
                    "current_manifest_sha256": current_sha,
                },
                window_ticks=window_ticks,
                window_s=window_s,
                backend=self.backend,
                served=served,
                on_finish=self._shadow_finished,
            )
            self._shadow_candidate_stat = stat_before
            runner.start()
            if not runner.wait_ready(SHADOW_START_TIMEOUT_S):  # the window starts once the worker runs
                record = runner.stop("the shadow worker did not start in time")
                why = (record or {}).get("reason") or f"not ready within {SHADOW_START_TIMEOUT_S:g} s"
                raise ShadowConflictError(f"candidate {candidate.version} cannot shadow: {why}")
            with self._shadow_ref_lock:
                self._shadow = runner  # from now on act offers its ticks
        log.info(
            "shadowing candidate %s beside %s (window: %s ticks, %s s)",
            candidate.version,
            served.version,
            window_ticks,
            window_s,
        )
        return runner.status()

    def stop_shadow(self) -> dict[str, Any]:
        """Stop the running shadow and return its record (also written to ``shadow.json``).
        Raises :class:`NoShadowError` when none runs."""
        with self._shadow_lock:
            runner = self._shadow
            if runner is None or not runner.active:
                raise NoShadowError("no shadow is running")
        runner.stop("stopped by request")
        return runner.status()

    def shadow_status(self) -> dict[str, Any]:
        """The running window's live figures; else the last finished one (of this process, or
        the record on disk); else the shape with nothing in it (``active`` false)."""
        runner = self._shadow or self._shadow_last
        if runner is not None:
            return json_safe(runner.status())
        try:
            record = read_shadow_record(self.model_root)
        except ValueError as exc:
            return {**_EMPTY_SHADOW, "reason": str(exc)}
        return json_safe({**_EMPTY_SHADOW, **record, "active": False}) if record else dict(_EMPTY_SHADOW)

    def _shadow_finished(self, runner: ShadowRunner) -> None:
        """The worker's last word: the window is over and recorded (the reference lock only:
        :meth:`start_shadow` may hold the start lock while it waits for this very runner)."""
        with self._shadow_ref_lock:
            self._shadow_last = runner
            if self._shadow is runner:
                self._shadow = None

    def _end_shadow(self, reason: str) -> None:
        runner = self._shadow
        if runner is not None:
            runner.stop(reason)

    def _check_shadow_candidate(self) -> None:
        """Stop the shadow when the candidate it runs left the slot or was replaced (a stat of
        the candidate's manifest every watcher poll: a few µs)."""
        runner = self._shadow
        if runner is None or not runner.active:
            return
        try:
            now = _stat_key(self._store.slot("candidate") / "manifest.json")
        except OSError:
            now = None
        if now != self._shadow_candidate_stat:
            what = "left the candidate slot (promoted, rejected or removed)" if now is None else "was replaced"
            runner.stop(f"candidate {runner.base['candidate_version']} {what}", wait=False)

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-safe picture of what is served, the sessions and what was refused."""
        loaded = self._loaded
        now = time.perf_counter()
        with self._sessions_lock:
            live = [s for s in self._sessions.values() if now - s.last_used <= self.session_ttl_s]
            sessions = {
                "active": len(live),
                "max": self.max_sessions,
                "ttl_s": self.session_ttl_s,
                "expired": self._expired,
                "evicted": self._evicted,
                "active_s": self.session_active_s,
                "in_active_use": sum(1 for s in live if now - s.last_used < self.session_active_s),
                "refused_new": self._sessions_refused,
                "recent_evictions": list(self._evictions),
                "ids": [s.session_id for s in live][-self.max_sessions :],
            }
        link = self._read_link()
        store_current = None if link is None else "current" if link.startswith("dir:") else self._target(link).name
        out: dict[str, Any] = {
            "version": loaded.version if loaded else None,
            "loaded": loaded is not None,
            "loaded_at": _iso(loaded.loaded_at) if loaded else None,
            "loaded_at_unix": loaded.loaded_at if loaded else None,
            "load_ms": round(loaded.load_ms, 3) if loaded else None,
            "directory": loaded.directory if loaded else None,
            "store_current": store_current,  # what the link names now (differs from version after a refusal)
            "model_root": str(self.model_root),
            "slot": self.slot,
            "backend": self.backend,
            "components": loaded.brain.components() if loaded else [],
            "sessions": sessions,
            "refused": list(self._refused.values()),
            "swaps": self._swaps,
            "watching": self._watcher is not None and self._watcher.is_alive(),
            "watch_interval_s": self.watch_interval_s,
            "watch_errors": self._watch_errors,
            "fallback": dict(self._fallback) if self._fallback else None,
            "integrity": dict(self._integrity),
        }
        if loaded is not None:
            cfg = loaded.brain.config
            out.update(
                {
                    "observation_dim": cfg.obs_dim,
                    "action_dim": cfg.action_dim,
                    "action_low": list(cfg.action_low or []),
                    "action_high": list(cfg.action_high or []),
                    "state_keys": list(cfg.state_keys),
                    "image_keys": list(cfg.image_keys),
                    "image_shapes": {k: list(v) for k, v in cfg.image_shapes.items()},
                    "uses_mid": loaded.brain.uses_mid,
                    "manifest": {
                        k: loaded.manifest.get(k) for k in ("version", "parent", "kind", "created", "promoted", "gate")
                    },
                }
            )
        return json_safe(out)


# --------------------------------------------------------------------------- helpers


def _prepare(observation: Any, loaded: _Loaded) -> Any:
    """Check an observation before it touches any session state; vectors become the
    ``float32 [obs_dim]`` array that :meth:`HopeBrain.act` takes without further parsing."""
    if isinstance(observation, Mapping):
        if not loaded.dict_obs:
            raise ValueError(f"this brain takes a vector of {loaded.obs_shape[0]} numbers, not a dict")
        return observation  # keys, sizes and image shapes are checked by the brain (ValueError)
    if type(observation) is np.ndarray and observation.dtype == np.float32 and observation.shape == loaded.obs_shape:
        vec = observation
    else:
        try:
            vec = np.asarray(observation, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"observation is not a numeric vector: {exc}") from None
        if vec.shape != loaded.obs_shape:
            raise ValueError(
                f"observation has {vec.shape[0]} numbers, the brain expects obs_dim={loaded.obs_shape[0]}"
                + (" (or a dict with its state/image keys)" if loaded.dict_obs else "")
            )
    if not np.isfinite(vec).all():
        raise ValueError("observation holds NaN or infinite values")
    return vec


#: ``GET /api/models/shadow`` before any window: the contract's keys, nothing in them.
_EMPTY_SHADOW: dict[str, Any] = {
    "active": False,
    "candidate_version": None,
    "current_version": None,
    "ticks": 0,
    "window_ticks": None,
    "mean_action_distance": None,
    "p95_action_distance": None,
    "bound_violations": 0,
    "non_finite": 0,
    "passed": None,
    "reason": "no shadow window has run",
}


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _interface_mismatch(current: Any, candidate: Any) -> str | None:
    """What differs between two brains' observation and action interfaces (None: nothing)."""
    for name in ("obs_dim", "action_dim", "state_keys", "image_keys", "image_shapes"):
        a, b = getattr(current, name), getattr(candidate, name)
        if a != b:
            return f"{name} differs (current {a!r}, candidate {b!r})"
    return None


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()
