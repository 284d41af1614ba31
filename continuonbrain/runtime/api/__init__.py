"""The HTTP API and the Robot Editor: the contract's routes (README "HTTP API"), on FastAPI + uvicorn.

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
  the page's demo arm and camera car (which the served brain drives, in a session of its own);
  they touch no robot and change no model, hold at most 16 small sims, and so need no token
  either. Neither do the episode viewer's reads (one episode's steps and frames, by key).
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

The package: one ``APIRouter`` per area (:mod:`~continuonbrain.runtime.api.status`:
``/api/status`` and ``/api/infer``; :mod:`~continuonbrain.runtime.api.models`,
:mod:`~continuonbrain.runtime.api.training`, :mod:`~continuonbrain.runtime.api.episodes`,
:mod:`~continuonbrain.runtime.api.sim`), sharing the app's state through one typed
:class:`~continuonbrain.runtime.api.context.ApiContext`; the JSON errors in
:mod:`~continuonbrain.runtime.api.errors`. :func:`create_app` wires them together.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles

from continuonbrain.models.store import PromotionStore, StoreError
from continuonbrain.robot.gates import GatingConfig
from continuonbrain.robot.sensors import DEFAULT_STATE_FILE
from continuonbrain.runtime.api import episodes, models, sim, status, training
from continuonbrain.runtime.api.context import (
    BLOCKING_GATES,
    CONFIG_DIR,
    DEFAULT_ADAPT_CONFIG,
    DEFAULT_TRAIN_CONFIG,
    PACKAGE_DIR,
    WEB_DIR,
    ApiContext,
)
from continuonbrain.runtime.api.errors import ERROR_TEXT, error_responses, install_error_handlers
from continuonbrain.runtime.api.training import SSE_POLL_S
from continuonbrain.runtime.auth import load_or_create_token
from continuonbrain.runtime.brain_service import BrainService
from continuonbrain.runtime.episode_viewer import EpisodeViewer
from continuonbrain.runtime.episodes import EpisodeCatalog
from continuonbrain.runtime.jobs import JobManager
from continuonbrain.runtime.limits import GuardCounters, HostPolicy, RequestGuard, ServerLimits, http_protocol
from continuonbrain.runtime.live_sim import LiveSims
from continuonbrain.trainer.lora_config import LocalTrainerJobConfig

__all__ = [
    "BLOCKING_GATES",
    "CONFIG_DIR",
    "DEFAULT_ADAPT_CONFIG",
    "DEFAULT_TRAIN_CONFIG",
    "ERROR_TEXT",
    "PACKAGE_DIR",
    "SSE_POLL_S",
    "WEB_DIR",
    "ApiContext",
    "create_app",
    "serve",
    "server_config",
]

log = logging.getLogger(__name__)


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
    catalog = EpisodeCatalog(rlds_dir, quarantine_dir)
    jobs = JobManager(
        model_root=model_root,
        run_root=run_root,
        rlds_dir=rlds_dir,
        train_config=train_config,
        adapt_config=adapt_config,
    )
    ctx = ApiContext(
        model_root=model_root,
        token=token,
        rlds_dir=rlds_dir,
        train_config=train_config,
        adapt_config=adapt_config,
        sysfs_root=sysfs_root,
        robot_state_file=robot_state_file,
        service=service,
        store=store,
        jobs=jobs,
        catalog=catalog,
        viewer=EpisodeViewer(catalog),
        sims=LiveSims(),
        gating=_gating_config(adapt_config),
        limits=limits,
        hosts=hosts,
        counters=GuardCounters(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()
            await run_in_threadpool(jobs.close)

    # The routers' routes go straight into the app's own routing table: ``include_router``
    # would wrap each router in a lazily resolved one, ~10 µs more on every /api/infer.
    routes = [route for area in (status, models, training, episodes, sim) for route in area.router.routes]
    app = FastAPI(
        title="ContinuonBrain",
        summary="BrainService inference, the model store and on-robot training",
        version="1.0",
        lifespan=lifespan,
        responses=error_responses(400, 500),
        routes=routes,
    )
    app.state.ctx = ctx
    app.state.service, app.state.jobs, app.state.store, app.state.sims = service, jobs, store, ctx.sims
    app.state.limits, app.state.hosts = limits, hosts
    app.add_middleware(RequestGuard, limits=limits, hosts=hosts, counters=ctx.counters)
    install_error_handlers(app)
    # The Robot Editor.
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
    """The gate thresholds of the server's adaptation config, loaded as the typed config (a
    flat older file or a sectioned one); the defaults when it cannot be read. New data binds
    only unattended runs, so it is not required here."""
    try:
        gating = LocalTrainerJobConfig.load(adapt_config).gating_config()
    except (OSError, ValueError) as exc:
        log.warning("adaptation config %s cannot be read (%s): default gate thresholds", adapt_config, exc)
        return GatingConfig(require_new_episodes=False)
    return gating.model_copy(update={"require_new_episodes": False})
