"""``/api/sim``: the Robot Editor's live demo arm (no robot, no model, no token; at most 16 small sims)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from continuonbrain.runtime.api.context import Ctx
from continuonbrain.runtime.api.errors import area_router, error_responses
from continuonbrain.runtime.api_models import SimResetRequest, SimStepRequest
from continuonbrain.runtime.live_sim import SimNotFound

router = area_router()


@router.post("/api/sim/reset", responses=error_responses(422))
def sim_reset(ctx: Ctx, req: SimResetRequest | None = None) -> dict[str, Any]:
    """A new live-sim episode: the arm's observation (for /api/infer) and its geometry."""
    req = req or SimResetRequest()
    try:
        return ctx.sims.reset(req.env, req.seed, tuple(req.target) if req.target else None, req.sim_id)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.post("/api/sim/step", responses=error_responses(404, 422))
def sim_step(req: SimStepRequest, ctx: Ctx) -> dict[str, Any]:
    """One tick of a live sim with an action (from /api/infer); ``target`` moves the target first."""
    try:
        return ctx.sims.step(req.sim_id, req.action, tuple(req.target) if req.target else None)
    except SimNotFound:
        raise HTTPException(404, f"no live sim {req.sim_id} (expired?): reset one") from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
