"""``/api/models``: the model store, promotion (the same gate as ``continuonbrain models
promote``), rollback and live shadow mode (``/api/models/shadow``: the candidate run beside the
served brain on the live ``/api/infer`` traffic, never actuated; see
:mod:`continuonbrain.runtime.shadow`)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import HTTPException, Query

from continuonbrain.models.safety import SafetyGateConfig
from continuonbrain.models.store import StorageError, StoreError
from continuonbrain.runtime.api.context import AUTH, ApiContext, Ctx, brief
from continuonbrain.runtime.api.errors import area_router, error_responses, io_error
from continuonbrain.runtime.api_models import RollbackRequest, ShadowRequest, ShadowStatus
from continuonbrain.runtime.brain_service import NoShadowError, ShadowConflictError
from continuonbrain.trainer.lora_config import LocalTrainerJobConfig

log = logging.getLogger(__name__)
router = area_router()


@router.get("/api/models", responses=error_responses(422))
def models(ctx: Ctx, audit: int = Query(default=50, ge=0, le=10_000)) -> dict[str, Any]:
    """Candidate, current and history with their metrics, the newest audit records, and the
    closed-loop evaluations recorded per version (``evaluations``: version -> records, oldest first)."""
    info = ctx.store.describe(audit=audit)
    served = ctx.service.status()
    info["serving"] = served["version"]
    info["refused"] = served["refused"]
    info["evaluations"] = ctx.store.evaluations()
    return info


@router.post("/api/models/promote", dependencies=AUTH, responses=error_responses(401, 409, 422, 507))
def promote(ctx: Ctx) -> dict[str, Any]:
    """Gate the candidate (paired shadow comparison on its held-out episodes, bounds, the sim
    twin and the shadow window where configured: the gate of ``continuonbrain models
    promote``); promote it if it passes. The gate config is the store's ``gate_config.json``,
    else the ``safety`` section of the server's adaptation config (what its adapt jobs gate
    with), else the defaults."""
    from continuonbrain.models.promotion import load_gate_config, promote_candidate  # the gate (not the training loop)
    from continuonbrain.runtime.sim_twin import check_sim_env, closed_loop_runner

    jobs = ctx.jobs
    if jobs.running() and jobs.job is not None and jobs.job.kind == "adapt":
        raise HTTPException(409, "an adaptation job owns the store right now; wait for it or stop it")
    if not ctx.store_lock.acquire(blocking=False):
        raise HTTPException(409, "a promotion or rollback is already in progress")
    try:
        cfg, source = load_gate_config(ctx.model_root, fallback=_adapt_safety(ctx))
        check_sim_env(cfg)
    except ValueError as exc:  # gate_config.json does not parse, or its sim twin cannot be made
        ctx.store_lock.release()
        raise HTTPException(422, str(exc)) from None
    try:
        result, info = promote_candidate(
            ctx.model_root, rlds_dir=ctx.rlds_dir, cfg=cfg, closed_loop=closed_loop_runner(cfg), config_source=source
        )
    except StorageError as exc:  # nothing half-written is left: the store cleaned up
        raise HTTPException(507 if exc.disk_full else 500, str(exc)) from None
    except StoreError as exc:
        raise HTTPException(409, str(exc)) from None
    except OSError as exc:
        raise io_error("promotion", exc) from None
    finally:
        ctx.store_lock.release()
    version = ctx.service.reload()
    return {
        "promoted": result.passed,
        "reason": result.reason,
        "gate": result.to_dict(),
        "model_version": version,
        "current": brief(info["current"]),
        "candidate": brief(info["candidate"]),
    }


def _adapt_safety(ctx: ApiContext) -> SafetyGateConfig | None:
    """The ``safety`` section of the server's adaptation config (None when it cannot be read:
    the defaults then apply, as they would for ``models promote``)."""
    try:
        return LocalTrainerJobConfig.load(ctx.adapt_config).safety_config()
    except (OSError, ValueError) as exc:
        log.warning("adaptation config %s cannot be read (%s): default gate config", ctx.adapt_config, exc)
        return None


@router.post("/api/models/rollback", dependencies=AUTH, responses=error_responses(401, 404, 409, 422, 507))
def rollback(ctx: Ctx, req: RollbackRequest | None = None) -> dict[str, Any]:
    """Make a history version current again (the newest one when ``version`` is omitted)."""
    if not ctx.store_lock.acquire(blocking=False):
        raise HTTPException(409, "a promotion or rollback is already in progress")
    try:
        record = ctx.store.rollback(req.version if req else None)
    except StoreError as exc:
        code = 404 if req and req.version and "not in history" in str(exc) else 409
        raise HTTPException(code, str(exc)) from None
    except OSError as exc:
        raise io_error("rollback", exc) from None
    finally:
        ctx.store_lock.release()
    version = ctx.service.reload()
    return {"rolled_back": True, "model_version": version, "record": record}


@router.post(
    "/api/models/shadow", dependencies=AUTH, response_model=ShadowStatus, responses=error_responses(401, 409, 422)
)
def start_shadow(ctx: Ctx, req: ShadowRequest | None = None) -> dict[str, Any]:
    """Run the candidate in shadow beside the served brain on every ``/api/infer`` tick (never
    actuated; the served answers stay byte for byte the same) for ``window_ticks`` ticks or
    ``window_s`` seconds. 409 when a shadow runs, there is no candidate or nothing is served,
    or the candidate is refused (its files do not verify, it does not take the served brain's
    observations)."""
    req = req or ShadowRequest()
    try:
        return ctx.service.start_shadow(window_ticks=req.window_ticks, window_s=req.window_s)
    except ShadowConflictError as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:  # a window beyond the server's ShadowConfig bounds
        raise HTTPException(422, str(exc)) from None


@router.get("/api/models/shadow", response_model=ShadowStatus)
def shadow_status(ctx: Ctx) -> dict[str, Any]:
    """The running window's divergence figures, else the last finished window's record
    (``<model_root>/shadow.json``, which the gate reads when it requires a passed window)."""
    return ctx.service.shadow_status()


@router.delete(
    "/api/models/shadow", dependencies=AUTH, response_model=ShadowStatus, responses=error_responses(401, 404)
)
def stop_shadow(ctx: Ctx) -> dict[str, Any]:
    """Stop the running shadow; its (not passed) record is written and returned. 404 when none runs."""
    try:
        return ctx.service.stop_shadow()
    except NoShadowError as exc:
        raise HTTPException(404, str(exc)) from None
