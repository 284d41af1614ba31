"""The live camera car of the Robot Editor: ``drive2d`` driven by the served brain, on the server.

What the page shows for a camera brain: what the car's camera sees (a JPEG of the frame the
brain just acted on) and the car on a top-down map of its track (the centreline and width,
sent once per episode; the pose every tick, the page keeps the trail).

Why the server drives (``POST /api/sim/drive``) instead of the page relaying the frame to
``/api/infer`` as it does for the arm: a 160x120 frame is 57,600 numbers, which the browser
would fetch and send back every 50 ms only to hand them to the brain next door. The tick calls
the same :meth:`~continuonbrain.runtime.brain_service.BrainService.act` that ``/api/infer``
calls (same served version, same verified hot swap, its own session per live car), and the
page asks for the picture only a few times a second (``frame``).

A live car never truncates. When an episode ends (a completed lap, or off the track for too
long) the car is put back on the same track at a new start and the brain's session starts
over; :class:`CarRun` counts laps and restarts so the page can say how the brain drives.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from continuonbrain.sim.drive2d import IMAGE_KEY, Drive2DEnv

#: Centreline points sent to the page for the track map (every n-th sample, at most this many).
MAX_TRACK_POINTS = 400
#: JPEG quality of the camera picture: ~6-9 KB a frame at 160x120, enough to see the lines.
JPEG_QUALITY = 80

#: ``act(observation, session_id, reset) -> result with .action, .model_version, .latency_us``.
ActFn = Callable[..., Any]


@dataclass
class CarRun:
    """What one live car has done since it was reset (the page's readout)."""

    track_seed: int
    episode: int = 0
    laps: int = 0
    off_track_restarts: int = 0
    last_end: str | None = None  # "lap" | "off_track": why the previous episode ended
    fresh_session: bool = True  # the next act starts the brain's recurrent state over
    last_action: tuple[float, float] | None = None
    model_version: str | None = None
    latency_us: float | None = None
    progress: float = 0.0
    cross_track_error: float = 0.0
    off_track: bool = False
    speed: float = 0.0


def new_car(seed: int | None, image_shape: tuple[int, int] | None) -> tuple[Drive2DEnv, dict, CarRun]:
    """A car on the track of ``seed`` (random when None), with a camera of ``image_shape``
    ``(H, W)`` (the served brain's, so its frames fit; drive2d's default when None)."""
    track_seed = int(np.random.default_rng(seed).integers(0, 2**31 - 1)) if seed is None else int(seed)
    h, w = image_shape or (120, 160)
    env = Drive2DEnv(max_steps=10**9, image_height=h, image_width=w, track_seed=track_seed)
    obs, _ = env.reset(seed=track_seed)
    return env, obs, CarRun(track_seed=track_seed)


def drive_tick(env: Drive2DEnv, obs: dict, run: CarRun, act: ActFn, session_id: str) -> dict:
    """One control tick: the brain acts on the camera frame, the car moves; returns the new
    observation. An episode that ends restarts on the same track (see the module doc).
    Errors of ``act`` (no model, a brain that does not take this camera) propagate unchanged
    and leave the car where it was."""
    try:
        result = act(obs, session_id=session_id, reset=run.fresh_session)
    except ValueError as exc:  # e.g. a vector brain, or a camera of another size
        raise ValueError(f"the served brain cannot drive the car: {exc}") from None
    action = np.asarray(result.action, dtype=np.float64).reshape(-1)
    if action.shape != (2,):
        raise ValueError(f"the served brain gives {action.size} action values; the car needs [angle, throttle]")
    run.fresh_session = False
    run.model_version, run.latency_us = result.model_version, float(result.latency_us)
    return apply_action(env, run, action)


def apply_action(env: Drive2DEnv, run: CarRun, action: Any) -> dict:
    """Step the car with ``action`` (clipped by the env); restart it when the episode ends."""
    obs, _, terminated, _, info = env.step(action)
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    run.last_action = (float(np.clip(a[0], -1, 1)), float(np.clip(a[1], -1, 1)))
    run.progress, run.cross_track_error = float(info["progress"]), float(info["cross_track_error"])
    run.off_track, run.speed = bool(info["off_track"]), float(info["speed"])
    if terminated:
        if info.get("success"):
            run.laps += 1
            run.last_end = "lap"
        else:
            run.off_track_restarts += 1
            run.last_end = "off_track"
        run.episode += 1
        run.fresh_session = True
        obs, info = env.reset(seed=run.track_seed + run.episode)
        run.progress, run.cross_track_error = 0.0, float(info["cross_track_error"])
        run.off_track, run.speed = False, 0.0
    return obs


def track_geometry(env: Drive2DEnv) -> dict[str, Any]:
    """The track map: centreline (closed polyline, metres), half width, driving direction."""
    track = env.track
    assert track is not None
    every = max(1, math.ceil(len(track) / MAX_TRACK_POINTS))
    pts = track.points[::every]
    return {
        "centreline": [[round(float(x), 3), round(float(y), 3)] for x, y in pts],
        "half_width": float(track.half_width),
        "length_m": round(float(track.length), 2),
        "clockwise": bool(track.clockwise),
    }


def jpeg_data_url(frame: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """``frame`` (uint8 HxWx3) as a ``data:image/jpeg;base64,...`` URL for an ``<img>``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def car_state(env: Drive2DEnv, obs: dict, run: CarRun, *, frame: bool, geometry: bool) -> dict[str, Any]:
    """What the page draws: the pose, the last action and what it did, and (when asked) the
    camera picture and the track map."""
    x, y, yaw = env.pose
    out: dict[str, Any] = {
        "pose": [float(x), float(y), float(yaw)],
        "speed": run.speed,
        "action": list(run.last_action) if run.last_action else None,
        "model_version": run.model_version,
        "latency_us": run.latency_us,
        "progress": run.progress,
        "cross_track_error": run.cross_track_error,
        "off_track": run.off_track,
        "laps": run.laps,
        "off_track_restarts": run.off_track_restarts,
        "episode": run.episode,
        "last_end": run.last_end,
        "track_seed": run.track_seed,
        "image_key": IMAGE_KEY,
        "image_shape": list(env.image_shape),
        "wheelbase": float(env.wheelbase),
    }
    if frame:
        out["frame"] = jpeg_data_url(obs[IMAGE_KEY])
    if geometry:
        out["track"] = track_geometry(env)
    return out
