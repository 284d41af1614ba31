"""``/api/episodes``: the RLDS episodes the trainer sees, and quarantine."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Query

from continuonbrain.runtime.api.context import AUTH, Ctx
from continuonbrain.runtime.api.errors import area_router, error_responses

router = area_router()


@router.get("/api/episodes", responses=error_responses(422))
def episodes(ctx: Ctx, offset: int = Query(default=0, ge=0), limit: int = Query(default=200, ge=1, le=5000)) -> dict:
    """The RLDS episodes the trainer sees, with their validation state, and the quarantine."""
    return ctx.catalog.listing(offset, limit)


@router.post("/api/episodes/quarantine", dependencies=AUTH, responses=error_responses(401, 409))
def episodes_quarantine(ctx: Ctx) -> dict[str, Any]:
    """Move every episode that fails validation to the quarantine, with its reason."""
    try:
        return ctx.catalog.quarantine_bad()
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
