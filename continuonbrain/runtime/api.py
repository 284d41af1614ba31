"""The HTTP API and the Robot Editor: DESIGN.md's routes, on FastAPI + uvicorn.

One process serves the robot and the people watching it: :class:`BrainService` answers
``/api/infer`` (the control loop), the model store answers ``/api/models`` (promotion and
rollback run the same gate as ``continuonbrain models promote``), the job manager runs
training in a child process (``/api/training/...``, progress as Server-Sent Events), and the
static Robot Editor page at ``/`` shows all of it.

Decisions worth knowing:

* **Auth.** Every state-changing route (promote, rollback, start/stop training, quarantine)
  needs ``Authorization: Bearer <token>`` (see :mod:`continuonbrain.runtime.auth`); reads
  and ``/api/infer`` do not (a robot's control loop and a status display need no secret,
  and inference changes nothing but the caller's own session). The live-sim routes are for
  the page's demo arm; they touch no robot and no model, hold at most 16 small sims, and so
  need no token either.
* **Bound to loopback** unless ``--host`` says otherwise: on a robot, exposing the API is
  a decision, not a default.
* **Gates on starting training.** The scheduler's gates are evaluated and returned with
  every answer. A manual start is refused (409, with the reason code and text) when the
  robot is teleoperated, its battery is low or it is too hot; ``"force": true`` overrides.
  The idle and new-episodes gates are shown but do not block a manual start: a person
  pressing "train" is the decision those gates make for unattended runs.
* **Errors** are JSON: ``{"detail": ..., "message": "..."}``, every one of them, including
  400s, 404s of the static files, an unexpected 500 and the answers the HTTP layer writes
  itself (see :mod:`continuonbrain.runtime.limits`); 422 messages name the field
  (``observation: ...``). 503 while no model is loaded, 409 for conflicts (a job runs,
  no candidate, a gate refuses), 401 without the token, 413 for a body over the limit, 429
  when every session is in active use, 507 when the disk is full. OpenAPI documents them.
* **Limits** (:mod:`continuonbrain.runtime.limits`): the ``Host`` header is checked against
  the bound address (DNS rebinding), bodies are bounded before they are read, at most
  ``max_sse_subscribers`` event streams run at once; ``serve()`` adds request deadlines and a
  connection cap in the HTTP protocol. None of it costs ``/api/infer`` measurable time.
* **A damaged store still has a status page.** ``/api/status`` and ``/api/models`` list a slot
  whose manifest is garbage as ``"broken"`` with its reason instead of failing.
* ``/api/infer`` runs on the event loop itself for vector observations (an act is tens of
  µs: a thread hop would cost more than the work) and in the thread pool for images.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from continuonbrain.runtime.api_models import (
    ErrorResponse,
    InferRequest,
    InferResponse,
    RollbackRequest,
    SimResetRequest,
    SimStepRequest,
    TrainingRequest,
)
from continuonbrain.runtime.auth import bearer_matches, load_or_create_token
from continuonbrain.runtime.brain_service import BrainService, NoModelError, SessionLimitError
from continuonbrain.runtime.episodes import EpisodeCatalog
from continuonbrain.runtime.jobs import Budgets, JobError, JobManager
from continuonbrain.runtime.limits import (
    GuardCounters,
    HostPolicy,
    RequestGuard,
    ServerLimits,
    connection_stats,
    http_protocol,
)
from continuonbrain.runtime.live_sim import LiveSims, SimNotFound
from continuonbrain.trainer.budgets import read_temperature_c
from continuonbrain.trainer.scheduler import DEFAULT_STATE_FILE, GatingConfig, evaluate_gates, read_sensors
from continuonbrain.trainer.store import PromotionStore, StorageError, StoreError, is_disk_full

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
WEB_DIR = Path(__file__).resolve().parent / "web"
CONFIG_DIR = PACKAGE_DIR / "configs"
DEFAULT_TRAIN_CONFIG = CONFIG_DIR / "pi5-hope-v1.json"
DEFAULT_ADAPT_CONFIG = CONFIG_DIR / "sim-arm-lora.json"
#: Gates that refuse a manual start (the rest are shown only); see the module doc.
BLOCKING_GATES = ("teleop", "battery", "thermal")
#: How often the SSE stream looks for new events (the trainer logs every few steps anyway).
SSE_POLL_S = 0.1
#: What each error status means, for OpenAPI (every error body is an ErrorResponse).
ERROR_TEXT = {
    400: "malformed request, or a Host header that is not this server's",
    401: "missing or wrong token ('Authorization: Bearer <token>')",
    404: "no such version or sim",
    409: "conflict: a job runs, no candidate, a promotion in progress, a gate refuses",
    413: "request body over the size limit",
    422: "invalid input; the message names the field",
    429: "every session is in active use: a new session id is refused (Retry-After)",
    500: "unexpected server error",
    503: "no model loaded, or too many event subscribers (Retry-After)",
    507: "the disk is full; nothing half-written was left behind",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses: JSON ``ErrorResponse`` bodies (also on a
    route whose success answer is another media type, such as the SSE stream)."""
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code], "content": json_body} for code in codes}


def create_app(
    model_root: str | os.PathLike,
    *,
    token: str | None = None,
    token_file: str | os.PathLike | None = None,
    rlds_dir: str | os.PathLike | None = None,
    run_root: str | os.PathLike | None = None,
    train_config: str | os.PathLike | None = None,
    adapt_config: str | os.PathLike | None = None,
    quarantine_dir: str | os.PathLike | None = None,
    sysfs_root: str | os.PathLike = "/sys",
    robot_state_file: str | os.PathLike = DEFAULT_STATE_FILE,
    service: BrainService | None = None,
    watch_interval_s: float = 0.02,
    limits: ServerLimits | None = None,
    bind_host: str = "127.0.0.1",
    allowed_hosts: Iterable[str] = (),
) -> FastAPI:
    """The app, ready for uvicorn. ``token`` None reads (or creates) ``token_file``, default
    ``<model_root>/api_token`` (:class:`~continuonbrain.runtime.auth.TokenError` if it cannot
    be used). ``rlds_dir`` None: the one recorded in the served model's manifest, if any
    (training routes answer 409 without one). ``run_root``: job dirs, default
    ``<model_root>/../runs``. ``bind_host`` and ``allowed_hosts``: which ``Host`` headers are
    answered (:class:`~continuonbrain.runtime.limits.HostPolicy`); ``limits``: body size and
    subscriber caps (and, through :func:`server_config`, the HTTP layer's)."""
    model_root = Path(model_root)
    limits = limits or ServerLimits()
    hosts = HostPolicy(bind_host, allowed_hosts)
    model_root.mkdir(parents=True, exist_ok=True)
    if token is None:
        token = load_or_create_token(token_file or model_root / "api_token")
    store = PromotionStore(model_root)
    if rlds_dir is None:
        rlds_dir = _manifest_rlds_dir(store)
    run_root = Path(run_root) if run_root is not None else model_root.parent / "runs"
    train_config = Path(train_config or DEFAULT_TRAIN_CONFIG)
    adapt_config = Path(adapt_config or DEFAULT_ADAPT_CONFIG)
    service = service or BrainService(model_root, watch_interval_s=watch_interval_s)
    jobs = JobManager(
        model_root=model_root,
        run_root=run_root,
        rlds_dir=rlds_dir,
        train_config=train_config,
        adapt_config=adapt_config,
    )
    catalog = EpisodeCatalog(rlds_dir, quarantine_dir)
    sims = LiveSims()
    gating_cfg = _gating_config(adapt_config)
    store_lock = threading.Lock()  # promote/rollback: one at a time

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()
            await run_in_threadpool(jobs.close)

    app = FastAPI(
        title="ContinuonBrain",
        summary="BrainService inference, the model store and on-robot training",
        version="1.0",
        lifespan=lifespan,
        responses=_errors(400, 500),
    )
    app.state.service, app.state.jobs, app.state.store, app.state.sims = service, jobs, store, sims
    app.state.limits, app.state.hosts = limits, hosts
    counters = GuardCounters()
    app.add_middleware(RequestGuard, limits=limits, hosts=hosts, counters=counters)

    def require_token(authorization: str | None = Header(default=None)) -> None:
        if not bearer_matches(authorization, token):
            raise HTTPException(
                401,
                "missing or wrong token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    auth = [Depends(require_token)]

    def gates() -> dict[str, Any]:
        sensors = read_sensors(sysfs_root, robot_state_file)
        decision = evaluate_gates(sensors, gating_cfg).to_dict()
        blocking = [k for k in BLOCKING_GATES if not decision["gates"].get(k, {}).get("ok", True)]
        decision["blocking"] = blocking
        decision["sensors"] = {"mode": sensors.mode, "state_error": sensors.state_error}
        return decision

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = []
        for e in errors:
            loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "header")]
            parts.append(f"{'.'.join(loc) or 'body'}: {e.get('msg')}")
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
        return JSONResponse({"detail": detail, "message": "; ".join(parts)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, Starlette's (404 of static files, 405) and the 413
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        message = detail if isinstance(detail, str) else (detail or {}).get("message", str(detail))
        return JSONResponse(
            {"detail": detail, "message": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        """A bug or an I/O failure: still a JSON answer with the reason (the traceback goes to the log)."""
        if isinstance(exc, OSError) and is_disk_full(exc):
            message = f"the disk is full: {exc}"
            return JSONResponse({"detail": message, "message": message}, status_code=507)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return JSONResponse({"detail": message, "message": message}, status_code=500)

    # -- status and inference -----------------------------------------------------------------

    @app.get("/api/status")
    def status(request: Request) -> dict[str, Any]:
        """Model version, slots, gates with live values, training state, memory and temperature."""
        served = service.status()
        info = store.describe(audit=1)
        return {
            "model_version": served["version"],
            "slots": {
                "current": _brief(info["current"]),
                "candidate": _brief(info["candidate"]),
                "history": [_brief(m) for m in info["history"]],
                "broken": info["broken"],
            },
            # Serving a history version because current could not be: shown loudly by the Robot Editor.
            "fallback": served["fallback"],
            "integrity": served["integrity"],
            "audit_last": info["audit"][-1] if info["audit"] else None,
            "gates": gates(),
            "training": jobs.status(curves=False),
            "service": served,
            "system": _system(sysfs_root),
            "rlds_dir": str(rlds_dir) if rlds_dir else None,
            "limits": {
                "max_body_bytes": limits.max_body_bytes,
                "max_sse_subscribers": limits.max_sse_subscribers,
                "sse_subscribers": counters.sse_subscribers,
                "refused": dict(counters.refused),
                "hosts": hosts.describe(),
                "connections": connection_stats(request.scope.get("state")),
            },
            "time": datetime.now(UTC).isoformat(),
        }

    @app.post("/api/infer", response_model=InferResponse, responses=_errors(413, 422, 429, 503))
    async def infer(req: InferRequest) -> Response:
        """One control tick: the action for ``observation`` from the served model."""
        obs = req.observation
        try:
            if isinstance(obs, dict):
                result = await run_in_threadpool(service.act, obs, req.session_id, req.reset)
            else:
                result = service.act(obs, req.session_id, req.reset)
        except NoModelError as exc:
            raise HTTPException(503, str(exc)) from None
        except SessionLimitError as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": "1"}) from None
        except ValueError as exc:
            raise HTTPException(422, f"observation: {exc}") from None
        # Encoded here with orjson and returned as a Response, so FastAPI does not re-validate
        # and re-encode a shape this code controls (the route's hot path; InferResponse still
        # documents it in OpenAPI).
        body = {
            "action": result.action.tolist(),
            "model_version": result.model_version,
            "latency_us": result.latency_us,
            "session_id": result.session_id,
            "fresh_state": result.fresh_state,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    # -- models ---------------------------------------------------------------------------

    @app.get("/api/models", responses=_errors(422))
    def models(audit: int = Query(default=50, ge=0, le=10_000)) -> dict[str, Any]:
        """Candidate, current and history with their metrics, and the newest audit records."""
        info = store.describe(audit=audit)
        served = service.status()
        info["serving"] = served["version"]
        info["refused"] = served["refused"]
        return info

    @app.post("/api/models/promote", dependencies=auth, responses=_errors(401, 409, 507))
    def promote() -> dict[str, Any]:
        """Gate the candidate (shadow evaluation, action-distance and bounds guards); promote it if it passes."""
        from continuonbrain.trainer.promotion import promote_candidate  # the gate (not the training loop)

        if jobs.running() and jobs.job is not None and jobs.job.kind == "adapt":
            raise HTTPException(409, "an adaptation job owns the store right now; wait for it or stop it")
        if not store_lock.acquire(blocking=False):
            raise HTTPException(409, "a promotion or rollback is already in progress")
        try:
            result, info = promote_candidate(model_root, rlds_dir=rlds_dir)
        except StorageError as exc:  # nothing half-written is left: the store cleaned up
            raise HTTPException(507 if exc.disk_full else 500, str(exc)) from None
        except StoreError as exc:
            raise HTTPException(409, str(exc)) from None
        except OSError as exc:
            raise _io_error("promotion", exc) from None
        finally:
            store_lock.release()
        version = service.reload()
        return {
            "promoted": result.passed,
            "reason": result.reason,
            "gate": result.to_dict(),
            "model_version": version,
            "current": _brief(info["current"]),
            "candidate": _brief(info["candidate"]),
        }

    @app.post("/api/models/rollback", dependencies=auth, responses=_errors(401, 404, 409, 422, 507))
    def rollback(req: RollbackRequest | None = None) -> dict[str, Any]:
        """Make a history version current again (the newest one when ``version`` is omitted)."""
        if not store_lock.acquire(blocking=False):
            raise HTTPException(409, "a promotion or rollback is already in progress")
        try:
            record = store.rollback(req.version if req else None)
        except StoreError as exc:
            code = 404 if req and req.version and "not in history" in str(exc) else 409
            raise HTTPException(code, str(exc)) from None
        except OSError as exc:
            raise _io_error("rollback", exc) from None
        finally:
            store_lock.release()
        version = service.reload()
        return {"rolled_back": True, "model_version": version, "record": record}

    # -- training -------------------------------------------------------------------------

    def start(kind: str, req: TrainingRequest) -> dict[str, Any]:
        config = _config_by_name(req.config, kind) if req.config else None
        decision = gates()
        if decision["blocking"] and not req.force:
            first = decision["blocking"][0]
            gate = decision["gates"][first]
            message = f"training refused: {gate.get('reason')} ({gate.get('detail')}); send force=true to override"
            raise HTTPException(
                409,
                {
                    "message": message,
                    "reason": gate.get("reason"),
                    "gates": decision,
                },
            )
        if req.resume and kind != "sequential":
            raise HTTPException(422, "resume: only sequential training can be resumed")
        budgets = Budgets(req.max_steps, req.max_wall_time_s, req.memory_budget_mb)
        try:
            job = jobs.start(
                kind,
                budgets,
                resume=req.resume,
                forced=req.force and bool(decision["blocking"]),
                gates=decision,
                config=config,
            )
        except JobError as exc:
            raise HTTPException(exc.status, {"message": str(exc), **exc.detail}) from None
        return {"job_id": job.job_id, "kind": kind, "state": job.state, "gates": decision}

    @app.post("/api/training/sequential", dependencies=auth, responses=_errors(401, 409, 422))
    def train_sequential(req: TrainingRequest | None = None) -> dict[str, Any]:
        """Start HOPE sequential training (VQ-VAE, Mid loop, Fast loop) in a child process."""
        return start("sequential", req or TrainingRequest())

    @app.post("/api/training/adapt", dependencies=auth, responses=_errors(401, 409, 422))
    def train_adapt(req: TrainingRequest | None = None) -> dict[str, Any]:
        """Start LoRA adaptation of the current model in a child process (it gates and promotes itself)."""
        return start("adapt", req or TrainingRequest())

    @app.post("/api/training/stop", dependencies=auth, responses=_errors(401))
    def train_stop() -> dict[str, Any]:
        """Stop the running job (SIGTERM: sequential training checkpoints first; SIGKILL after a grace period)."""
        job = jobs.stop()
        if job is None:
            return {"stopping": False, "message": "no job is running"}
        return {"stopping": True, "job_id": job.job_id, "state": job.state}

    @app.get("/api/training/status")
    def train_status() -> dict[str, Any]:
        """The current or last job: state, component, step, loss, budgets and loss curves."""
        out = jobs.status(curves=True)
        out["gates"] = gates()
        out["configs"] = _shipped_configs()
        out["defaults"] = {"sequential": train_config.name, "adapt": adapt_config.name}
        return out

    @app.get("/api/training/events", response_class=EventSourceResponse, responses=_errors(422, 503))
    async def train_events(
        request: Request,
        since: int | None = Query(default=None, ge=0, description="the last event id seen"),
        last_event_id: str | None = Header(default=None),
    ) -> AsyncIterator[ServerSentEvent]:
        """Server-Sent Events: ``job`` (state changes), ``metrics`` (records with a loss) and
        ``progress`` (the trainer's other records). A new subscriber first gets the current
        job's events so far; ``Last-Event-ID`` (or ``since``) resumes after that id."""
        seq = since
        if seq is None and last_event_id and last_event_id.isdigit():
            seq = int(last_event_id)
        if seq is None:
            seq = jobs.first_seq_of_current_job()
        yield ServerSentEvent(event="hello", data=jobs.status(curves=False), retry=2000)
        while not await request.is_disconnected():
            batch = jobs.events_after(seq)
            for n, kind, record in batch:
                seq = n
                yield ServerSentEvent(event=kind, id=str(n), data=record)
            if not batch:
                await asyncio.sleep(SSE_POLL_S)

    # -- episodes -------------------------------------------------------------------------

    @app.get("/api/episodes", responses=_errors(422))
    def episodes(offset: int = Query(default=0, ge=0), limit: int = Query(default=200, ge=1, le=5000)) -> dict:
        """The RLDS episodes the trainer sees, with their validation state, and the quarantine."""
        return catalog.listing(offset, limit)

    @app.post("/api/episodes/quarantine", dependencies=auth, responses=_errors(401, 409))
    def episodes_quarantine() -> dict[str, Any]:
        """Move every episode that fails validation to the quarantine, with its reason."""
        try:
            return catalog.quarantine_bad()
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None

    # -- live sim (the Robot Editor's demo arm) --------------------------------------------

    @app.post("/api/sim/reset", responses=_errors(422))
    def sim_reset(req: SimResetRequest | None = None) -> dict[str, Any]:
        """A new live-sim episode: the arm's observation (for /api/infer) and its geometry."""
        req = req or SimResetRequest()
        try:
            return sims.reset(req.env, req.seed, tuple(req.target) if req.target else None, req.sim_id)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post("/api/sim/step", responses=_errors(404, 422))
    def sim_step(req: SimStepRequest) -> dict[str, Any]:
        """One tick of a live sim with an action (from /api/infer); ``target`` moves the target first."""
        try:
            return sims.step(req.sim_id, req.action, tuple(req.target) if req.target else None)
        except SimNotFound:
            raise HTTPException(404, f"no live sim {req.sim_id} (expired?): reset one") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    # -- the Robot Editor -----------------------------------------------------------------

    if WEB_DIR.is_dir():
        app.mount("/", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return app


def server_config(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info", **uvicorn_kwargs: Any
) -> Any:
    """The ``uvicorn.Config`` the robot runs ``app`` with: the HTTP protocol of
    :func:`~continuonbrain.runtime.limits.http_protocol` (request deadlines, header bound,
    connection cap) with the app's :class:`ServerLimits`, keep-alive from them, no access log."""
    import uvicorn

    limits: ServerLimits = getattr(app.state, "limits", None) or ServerLimits()
    # An open SSE stream (a Robot Editor tab) never ends by itself: without a grace limit, Ctrl-C or
    # SIGTERM would wait for every tab to close, and the lifespan shutdown (stopping a training job) never ran.
    options: dict[str, Any] = {
        "log_level": log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 5,
        "http": http_protocol(limits),
        "timeout_keep_alive": limits.keep_alive_s,
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        **uvicorn_kwargs,
    }
    return uvicorn.Config(app, host=host, port=port, **options)


def serve(
    model_root: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    token_file: str | os.PathLike | None = None,
    log_level: str = "info",
    on_ready: Any = None,
    allowed_hosts: Iterable[str] = (),
    limits: ServerLimits | None = None,
    **app_kwargs: Any,
) -> None:
    """Run the API with uvicorn until interrupted (the ``continuonbrain serve`` command)."""
    import uvicorn

    from continuonbrain.runtime.limits import raise_open_file_limit

    raise_open_file_limit()  # room for connections within the hard limit; the cap adapts to what is left
    token_path = Path(token_file) if token_file else Path(model_root) / "api_token"
    app = create_app(
        model_root, token_file=token_path, bind_host=host, allowed_hosts=allowed_hosts, limits=limits, **app_kwargs
    )
    if app.state.hosts.any_host:
        log.warning("bound to %s with no --allow-host: any Host header is answered", host)
    server = uvicorn.Server(server_config(app, host=host, port=port, log_level=log_level))
    if on_ready is not None:
        on_ready(host, port, token_path)
    server.run()


# --------------------------------------------------------------------------- helpers


def _brief(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """A slot's manifest without the per-file hashes (the page shows versions and metrics)."""
    if not manifest:
        return None
    return {k: v for k, v in manifest.items() if k != "files"}


def _io_error(what: str, exc: OSError) -> HTTPException:
    """An OSError from the store as a JSON error: 507 for a full disk, 500 otherwise."""
    if is_disk_full(exc):
        return HTTPException(507, f"{what} failed: the disk is full ({exc})")
    return HTTPException(500, f"{what} failed: {type(exc).__name__}: {exc}")


def _manifest_rlds_dir(store: PromotionStore) -> str | None:
    for slot in ("current", "candidate"):
        try:
            manifest = store.manifest(slot)
        except (OSError, ValueError, StoreError):  # a damaged slot must not keep the server from starting
            manifest = None
        if manifest and manifest.get("rlds_dir"):
            return str(manifest["rlds_dir"])
    return None


def _gating_config(adapt_config: Path) -> GatingConfig:
    """The gate thresholds of the server's adaptation config (the defaults if it has none)."""
    try:
        doc = json.loads(adapt_config.read_text())
    except (OSError, ValueError):
        doc = {}
    keys = ("min_battery", "max_temp_c", "require_idle")
    return GatingConfig(**{k: doc[k] for k in keys if k in doc}, require_new_episodes=False)


@functools.cache
def _shipped_configs() -> dict[str, list[str]]:
    """The configs in ``continuonbrain/configs/`` by kind (sequential: has ``components``);
    read once, since the package's files do not change while it runs."""
    out: dict[str, list[str]] = {"sequential": [], "adapt": []}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out["sequential" if "components" in doc else "adapt"].append(path.stem)
    return out


def _config_by_name(name: str, kind: str) -> Path:
    """A shipped config by name: never a client-supplied path (no traversal)."""
    if name.endswith(".json"):
        name = name[:-5]
    shipped = _shipped_configs()[kind]
    if name not in shipped:
        raise HTTPException(422, f"config: {name!r} is not a shipped {kind} config; one of {shipped}")
    return CONFIG_DIR / f"{name}.json"


def _system(sysfs_root: str | os.PathLike) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "mem_total_mb": round(vm.total / 2**20),
        "mem_available_mb": round(vm.available / 2**20),
        "cpu_temp_c": read_temperature_c(sysfs_root),
        "load_1m": load,
        "cpu_count": os.cpu_count(),
        "uptime_s": round(time.time() - psutil.Process().create_time(), 1),
    }
