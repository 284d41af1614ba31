"""``/api/status`` and ``/api/infer``: what is served, and one control tick."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import psutil
from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from continuonbrain.robot.sensors import read_temperature_c
from continuonbrain.runtime.api.context import Ctx, brief, context
from continuonbrain.runtime.api.errors import area_router, error_responses
from continuonbrain.runtime.api_models import InferRequest, InferResponse
from continuonbrain.runtime.brain_service import ActResult, BrainService, NoModelError, SessionLimitError
from continuonbrain.runtime.frames import FrameError, prepare_frames
from continuonbrain.runtime.limits import connection_stats

router = area_router()


@router.get("/api/status")
def status(request: Request, ctx: Ctx) -> dict[str, Any]:
    """Model version, slots, gates with live values, training state, memory and temperature."""
    served = ctx.service.status()
    info = ctx.store.describe(audit=1)
    limits, counters = ctx.limits, ctx.counters
    return {
        "model_version": served["version"],
        "slots": {
            "current": brief(info["current"]),
            "candidate": brief(info["candidate"]),
            "history": [brief(m) for m in info["history"]],
            "broken": info["broken"],
        },
        # Serving a history version because current could not be: shown loudly by the Robot Editor.
        "fallback": served["fallback"],
        "integrity": served["integrity"],
        "audit_last": info["audit"][-1] if info["audit"] else None,
        "gates": ctx.gates(),
        "training": ctx.jobs.status(curves=False),
        "service": served,
        "system": system_info(ctx.sysfs_root),
        "rlds_dir": str(ctx.rlds_dir) if ctx.rlds_dir else None,
        "limits": {
            "max_body_bytes": limits.max_body_bytes,
            "max_sse_subscribers": limits.max_sse_subscribers,
            "sse_subscribers": counters.sse_subscribers,
            "refused": dict(counters.refused),
            "hosts": ctx.hosts.describe(),
            "connections": connection_stats(request.scope.get("state")),
        },
        "time": datetime.now(UTC).isoformat(),
    }


@router.post("/api/infer", response_model=InferResponse, responses=error_responses(413, 422, 429, 503))
async def infer(req: InferRequest, request: Request) -> Response:
    """One control tick: the action for ``observation`` from the served model."""
    # The context straight from the app, not through ``Ctx``: resolving a dependency costs
    # ~15 µs, a third of this route's time in the server.
    ctx = context(request)
    service = ctx.service
    obs = req.observation
    try:
        if isinstance(obs, dict):
            max_chars = ctx.limits.max_image_b64_bytes
            result = await run_in_threadpool(_act_on_dict, service, obs, max_chars, req.session_id, req.reset)
        else:
            result = service.act(obs, req.session_id, req.reset)
    except NoModelError as exc:
        raise HTTPException(503, str(exc)) from None
    except SessionLimitError as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": "1"}) from None
    except FrameError as exc:  # the message names the key (and both shapes)
        raise HTTPException(exc.status_code, str(exc)) from None
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


def _act_on_dict(
    service: BrainService, obs: dict[str, Any], max_chars: int, session_id: str | None, reset: bool
) -> ActResult:
    """A dict observation's tick, in the thread pool: camera frames (base64 JPEG/PNG strings or
    nested lists) become ``uint8`` arrays of the served model's image shapes first."""
    served = service.served()
    if served is None:
        return service.act(obs, session_id, reset)  # raises NoModelError: nothing to shape frames for
    shapes = served[1].image_shape_tuples
    return service.act(prepare_frames(obs, shapes, max_chars=max_chars), session_id, reset)


def system_info(sysfs_root: str | os.PathLike) -> dict[str, Any]:
    """Memory, load, CPU temperature and uptime of this process and machine."""
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
