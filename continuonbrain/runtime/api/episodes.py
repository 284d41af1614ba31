"""``/api/episodes``: the RLDS episodes the trainer sees, quarantine, and one episode's steps and
frames (the Robot Editor's scrubber; episodes named by their listing ``key``, never by a path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from fastapi import HTTPException, Query
from fastapi.responses import Response

from continuonbrain.runtime.api.context import AUTH, Ctx
from continuonbrain.runtime.api.errors import area_router, error_responses
from continuonbrain.runtime.episode_viewer import EpisodeNotFound, EpisodeUnreadable

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


#: An episode's listing key (``GET /api/episodes`` ``key``): looked up, never opened as a path.
EpisodeKey = Query(min_length=1, max_length=1024, description="the episode's key in GET /api/episodes")
StepIndex = Query(ge=0, le=10_000_000, description="step index, 0-based")


@router.get("/api/episodes/view", responses=error_responses(404, 422))
def episode_view(ctx: Ctx, key: str = EpisodeKey) -> dict[str, Any]:
    """One episode for the scrubber: its length, control rate, camera keys with their shapes."""
    with _viewer_errors():
        return ctx.viewer.describe(key)


@router.get("/api/episodes/step", responses=error_responses(404, 422))
def episode_step(ctx: Ctx, key: str = EpisodeKey, t: int = StepIndex) -> dict[str, Any]:
    """Step ``t`` of an episode: its action, reward, flags, time and numeric observation."""
    with _viewer_errors():
        return ctx.viewer.step(key, t)


@router.get(
    "/api/episodes/frame",
    responses={**error_responses(404, 422), 200: {"content": {"image/jpeg": {}, "image/png": {}}}},
    response_class=Response,
)
def episode_frame(
    ctx: Ctx,
    key: str = EpisodeKey,
    t: int = StepIndex,
    image: str = Query(min_length=1, max_length=256, description="the camera's observation key"),
) -> Response:
    """The camera frame ``image`` at step ``t``: the stored JPEG/PNG as is, raw pixels as PNG."""
    with _viewer_errors():
        data, media = ctx.viewer.frame(key, t, image)
    # A step's frame does not change while its episode exists; nosniff: served as an image only.
    return Response(
        data, media_type=media, headers={"Cache-Control": "private, max-age=60", "X-Content-Type-Options": "nosniff"}
    )


@contextlib.contextmanager
def _viewer_errors() -> Iterator[None]:
    try:
        yield
    except EpisodeNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except EpisodeUnreadable as exc:
        raise HTTPException(422, str(exc)) from None
