"""``/api/sim``: the Robot Editor's live demo arm and camera car (no robot, no token; at most 16 small sims).

The arm is driven by the page through ``/api/infer``; the camera car by the server
(``/api/sim/drive``: the served brain acts on the car's frame, see
:mod:`continuonbrain.runtime.live_car`). Neither touches a robot or changes the store, so
neither needs the token.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from continuonbrain.runtime.api.context import Ctx
from continuonbrain.runtime.api.errors import area_router, error_responses
from continuonbrain.runtime.api_models import SimDriveRequest, SimResetRequest, SimStepRequest
from continuonbrain.runtime.brain_service import NoModelError, SessionLimitError
from continuonbrain.runtime.live_sim import CAR_ENV, SimNotFound
from continuonbrain.sim.drive2d import IMAGE_KEY

router = area_router()


@router.post("/api/sim/reset", responses=error_responses(422))
def sim_reset(ctx: Ctx, req: SimResetRequest | None = None) -> dict[str, Any]:
    """A new live-sim episode: the arm's observation (for /api/infer) and its geometry."""
    req = req or SimResetRequest()
    image_shape = _served_camera(ctx) if req.env == CAR_ENV else None
    try:
        return ctx.sims.reset(req.env, req.seed, tuple(req.target) if req.target else None, req.sim_id, image_shape)
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


@router.post("/api/sim/drive", responses=error_responses(404, 422, 429, 503))
def sim_drive(req: SimDriveRequest, ctx: Ctx) -> dict[str, Any]:
    """One tick of the camera car driven by the served brain (its own session); ``frame``: the
    camera picture as a JPEG data URL, ``track``: the track map. 503 without a model, 422 when
    the served brain does not take the car's camera."""
    try:
        return ctx.sims.drive(req.sim_id, ctx.service.act, frame=req.frame, geometry=req.track)
    except SimNotFound:
        raise HTTPException(404, f"no live sim {req.sim_id} (expired?): reset one") from None
    except NoModelError as exc:
        raise HTTPException(503, str(exc)) from None
    except SessionLimitError as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": "1"}) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _served_camera(ctx: Ctx) -> tuple[int, int] | None:
    """``(H, W)`` of the served brain's ``cam/image_array`` (the car's camera is made to fit it)."""
    shape = (ctx.service.status().get("image_shapes") or {}).get(IMAGE_KEY)
    return (int(shape[0]), int(shape[1])) if shape and len(shape) == 3 else None
