"""What every router of the API shares: :class:`ApiContext`, one per app (``app.state.ctx``).

Routes take it as a parameter (``ctx: Ctx``, resolved from the request's app without a thread
hop; ``/api/infer``, the hot path, calls :func:`context` itself), so a test builds an app
with its own service, store or job manager through
:func:`~continuonbrain.runtime.api.create_app`'s parameters, and no route reaches for a
module global.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from continuonbrain.models.store import PromotionStore
from continuonbrain.robot.gates import GatingConfig, evaluate_gates
from continuonbrain.robot.sensors import read_sensors
from continuonbrain.runtime.auth import bearer_matches
from continuonbrain.runtime.brain_service import BrainService
from continuonbrain.runtime.episode_viewer import EpisodeViewer
from continuonbrain.runtime.episodes import EpisodeCatalog
from continuonbrain.runtime.jobs import JobManager
from continuonbrain.runtime.limits import GuardCounters, HostPolicy, ServerLimits
from continuonbrain.runtime.live_sim import LiveSims

PACKAGE_DIR = Path(__file__).resolve().parent.parent.parent
WEB_DIR = PACKAGE_DIR / "runtime" / "web"
CONFIG_DIR = PACKAGE_DIR / "configs"
DEFAULT_TRAIN_CONFIG = CONFIG_DIR / "pi5-hope-v1.json"
DEFAULT_ADAPT_CONFIG = CONFIG_DIR / "sim-arm-lora.json"
#: Gates that refuse a manual start (the rest are shown only); see the package doc.
BLOCKING_GATES = ("teleop", "battery", "thermal")


@dataclass
class ApiContext:
    """The app's state: the served model, the store, the jobs, the episodes, the live sims,
    the limits, the token and where the sensors are read."""

    model_root: Path
    token: str
    rlds_dir: str | os.PathLike | None
    train_config: Path
    adapt_config: Path
    sysfs_root: str | os.PathLike
    robot_state_file: str | os.PathLike
    service: BrainService
    store: PromotionStore
    jobs: JobManager
    catalog: EpisodeCatalog
    viewer: EpisodeViewer  # one episode's steps and frames (the Robot Editor's scrubber)
    sims: LiveSims
    gating: GatingConfig
    limits: ServerLimits
    hosts: HostPolicy
    counters: GuardCounters
    #: promote/rollback: one at a time
    store_lock: threading.Lock = field(default_factory=threading.Lock)

    def gates(self) -> dict[str, Any]:
        """The scheduler's gates with live sensor values, and which of them block a manual start."""
        sensors = read_sensors(self.sysfs_root, self.robot_state_file)
        decision = evaluate_gates(sensors, self.gating).to_dict()
        blocking = [k for k in BLOCKING_GATES if not decision["gates"].get(k, {}).get("ok", True)]
        decision["blocking"] = blocking
        decision["sensors"] = {"mode": sensors.mode, "state_error": sensors.state_error}
        return decision


def context(request: Request) -> ApiContext:
    """The :class:`ApiContext` of the app serving ``request``."""
    return request.app.state.ctx


async def get_context(request: Request) -> ApiContext:
    """:func:`context` as a dependency (async: resolved on the event loop, no thread hop)."""
    return context(request)


#: A route parameter: the app's context.
Ctx = Annotated[ApiContext, Depends(get_context)]


def require_token(ctx: Ctx, authorization: str | None = Header(default=None)) -> None:
    """The dependency of every state-changing route: ``Authorization: Bearer <token>``."""
    if not bearer_matches(authorization, ctx.token):
        raise HTTPException(
            401,
            "missing or wrong token: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


#: ``dependencies=`` of the routes that need the token.
AUTH = [Depends(require_token)]


def brief(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """A slot's manifest without the per-file hashes (the page shows versions and metrics)."""
    if not manifest:
        return None
    return {k: v for k, v in manifest.items() if k != "files"}
