"""Request and response bodies of the HTTP API (the API contract's JSON shapes), with their bounds.

Every request model bounds what a client can make the server allocate or do: observation
length and nesting, session id length and alphabet, budget ranges, version id alphabet (a
version names a directory: it must never be able to name ``../..``). Response models exist
where a shape is contract (``/api/infer``); the rest return plain dicts documented on the
route, because they carry manifests and gate records whose keys grow with the trainer.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Largest observation a client may send: 64 k numbers (a 128x128 RGB image is 49 k).
MAX_OBS_NUMBERS = 1 << 16
#: Dict observations: at most this many keys (state vectors and cameras).
MAX_OBS_KEYS = 32
SESSION_ID_PATTERN = r"^[A-Za-z0-9._:@/+=-]{1,128}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
CONFIG_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def _count_numbers(value: Any, depth: int = 0) -> int:
    """Numbers in a nested list, refusing deep nesting and non-numbers (why: bound the work)."""
    if depth > 4:
        raise ValueError("observation arrays may be nested at most 4 deep (e.g. an H x W x C image)")
    if isinstance(value, list):
        return sum(_count_numbers(v, depth + 1) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"observation values must be numbers, got {type(value).__name__}")
    return 1


class InferRequest(BaseModel):
    """``POST /api/infer``."""

    model_config = ConfigDict(extra="forbid")

    # The dict's bounds are in the schema too (minProperties/maxProperties): a client validating
    # against /openapi.json must not be able to build an observation the server refuses.
    observation: (
        Annotated[list[float], Field(min_length=1, max_length=MAX_OBS_NUMBERS)]
        | Annotated[dict[str, Any], Field(min_length=1, max_length=MAX_OBS_KEYS)]
    ) = Field(
        description="a numeric vector, or a dict of named numeric arrays (state keys, camera images); "
        "an image may also be a base64 JPEG/PNG string (optionally a data:image/...;base64, URL)"
    )
    session_id: Annotated[str, Field(pattern=SESSION_ID_PATTERN)] | None = Field(
        default=None, description="one control stream with its own recurrent state; omitted: 'default'"
    )
    reset: bool = Field(default=False, description="start this session's recurrent state over before acting")

    @field_validator("observation")
    @classmethod
    def _bounded(cls, value: list[float] | dict[str, Any]) -> list[float] | dict[str, Any]:
        if isinstance(value, dict):
            if not value:
                raise ValueError("a dict observation needs at least one key")
            if len(value) > MAX_OBS_KEYS:
                raise ValueError(f"a dict observation has at most {MAX_OBS_KEYS} keys, got {len(value)}")
            # A string is a base64 JPEG/PNG camera frame: bounded by ServerLimits.max_image_b64_bytes
            # and decoded (to the served model's image shape) by the route, not here.
            total = sum(_count_numbers(v) for v in value.values() if not isinstance(v, str))
            if total > MAX_OBS_NUMBERS:
                raise ValueError(f"observation has {total} numbers, more than {MAX_OBS_NUMBERS}")
        return value


class InferResponse(BaseModel):
    """``POST /api/infer`` answer: the action, the version that computed it, the time it took."""

    action: list[float]
    model_version: str
    latency_us: float
    session_id: str
    fresh_state: bool


class ErrorResponse(BaseModel):
    """Every error answer: ``detail`` (a string, or the validation errors / a structured record)
    and ``message``, one line a person can read."""

    detail: Any
    message: str


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[str, Field(pattern=VERSION_PATTERN)] | None = Field(
        default=None, description="a version in history; omitted: the newest one"
    )


class TrainingRequest(BaseModel):
    """``POST /api/training/sequential`` and ``/adapt``: budgets, and whether to override the gates."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int | None = Field(default=None, ge=1, le=1_000_000, description="steps per component")
    max_wall_time_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600, description="seconds per component")
    memory_budget_mb: int | None = Field(default=None, ge=64, le=1 << 20, description="RSS at which to stop")
    config: Annotated[str, Field(pattern=CONFIG_NAME_PATTERN)] | None = Field(
        default=None, description="a shipped config by name (see /api/training/status 'configs'); omitted: the server's"
    )
    resume: bool = Field(default=False, description="sequential only: continue the newest stopped run")
    force: bool = Field(default=False, description="start even though a blocking gate (teleop, battery, heat) fails")


class SimResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    env: str = Field(
        default="reach2d", pattern=r"^(reach2d|track2d|drive2d)$", description="drive2d: the car (/api/sim/drive)"
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    target: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None
    sim_id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None


class SimDriveRequest(BaseModel):
    """``POST /api/sim/drive``: one tick of the camera car, driven by the served brain."""

    model_config = ConfigDict(extra="forbid")

    sim_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    frame: bool = Field(default=False, description="include the camera picture (a JPEG data URL)")
    track: bool = Field(default=False, description="include the track map (centreline, half width)")


class SimStepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sim_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    action: Annotated[list[float], Field(min_length=2, max_length=2)]
    target: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None


class ShadowRequest(BaseModel):
    """``POST /api/models/shadow``: how long the window runs (neither: the server's default,
    ``ShadowConfig.window_ticks``; both: whichever ends first). The server's ``ShadowConfig``
    bounds both further (``max_window_ticks``, ``max_window_s``)."""

    model_config = ConfigDict(extra="forbid")

    window_ticks: int | None = Field(default=None, ge=1, le=10_000_000, description="ticks to compare")
    window_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600, description="seconds to shadow")


class ShadowStatus(BaseModel):
    """``GET /api/models/shadow`` (and the answers of POST and DELETE): the running window's live
    figures, or the last finished window's record, or nothing yet (``active`` false, nulls).
    The first ten fields are the contract; the rest are added (see ``continuonbrain.runtime.shadow``)."""

    model_config = ConfigDict(extra="allow")

    active: bool
    candidate_version: str | None
    current_version: str | None
    ticks: int
    window_ticks: int | None
    mean_action_distance: float | None
    p95_action_distance: float | None
    bound_violations: int
    non_finite: int
    passed: bool | None = Field(description="null while the window runs (or before any window)")
    window_s: float | None = None
    dropped: int = Field(default=0, description="ticks the shadow could not keep up with (never waited for)")
    latency_us_p50: float | None = Field(default=None, description="the candidate's act, µs")
    latency_us_p99: float | None = None
    started_at: str | None = None
    reason: str | None = Field(default=None, description="why the window ended (or 'running')")
    verdict: str | None = Field(default=None, description="why it passed or not, with values")
