"""``drive2d``: a camera car on a closed random track, the Donkeycar set-up in pure numpy.

The car is a kinematic bicycle (1/10 scale: wheelbase 0.2 m, 25° steering, 3 m/s at full
throttle) driving on a closed track drawn per seed; the policy sees only what a
forward-facing camera on the car sees, as a Donkeycar pilot does::

    observation  {"cam/image_array": uint8 [120, 160, 3]}     (image_height, image_width)
    action       Box [-1, 1]^2 = [angle, throttle]
    info         progress, cross_track_error, off_track, success, speed, distance, tracking_error

Conventions (Donkeycar's):

* ``angle`` -1 is full left, +1 full right, linear in the steering angle (±25°). Steering is
  immediate: a hobby servo turns faster than one 50 ms control period.
* ``throttle`` 0..1 is the target speed as a fraction of ``max_speed``; the car follows it
  through a first-order lag (the motor and the car's inertia, time constant 0.25 s).
  ``throttle`` < 0 is treated as 0, i.e. brake to a stop: the car never reverses. Donkeycar's
  ESCs need a brake-then-reverse sequence that recorded driving data never contains, and a
  lap is driven forwards.
* 20 Hz control (``control_hz``, Donkeycar's ``DRIVE_LOOP_HZ``); ``sim collect`` writes
  timestamps and ``control_hz`` at this rate.

The track: a star-shaped closed curve ``r(θ) = R0·(1 + Σ_k a_k cos(kθ + φ_k))`` (harmonics
2-5, ``R0`` 2.8-3.8 m, so laps are 18-30 m), driven clockwise or counter-clockwise, redrawn
until its tightest curve has a radius of at least 1.2 m and no two parts of it come closer
than its width plus a metre. Per seed the track width (0.7-1.1 m), the colours of the
ground, the surface, the edge lines and the dashed centre line, the ground texture, the
lighting and the sky change, so a policy must generalise across tracks rather than memorise
one (``track_seed`` pins the track and its look, the start still varies with the reset seed).

Rendering is an inverse perspective lookup, 4,500-7,700 frames/s at 160×120 on one core
(``bench/bench_drive2d.py``). Per track, the ground is painted once into a world-aligned
map (1 cm per pixel: texture, surface, lines). Per image size, the ground ray of every
pixel below the horizon is solved once in the car's frame (camera 0.2 m high, pitched 20°
down, 100° horizontal field of view): with no roll, all pixels of a row hit the ground at
the same forward distance, and the lateral offset is that distance times the pixel's
column slope. Per frame, the table is rotated and translated by the car's pose (two outer
products over the ground rows) and the map sampled at those points (nearest neighbour, one
``np.take``); rows that look further than 12 m, and the sky above, are a fixed backdrop.

Episode end: a completed lap (``progress`` >= 1; terminated with ``info["success"]``), off
the track (the car's centre beyond an edge) for more than ``max_off_track_steps``
consecutive steps (20 = 1 s; terminated), or ``max_steps`` (1000 = 50 s; truncated). Reward
per step: ``100 · Δprogress`` (a lap is worth 100), minus 1 for a step off the track.
``cross_track_error`` is the signed distance from the centreline, positive to the left in
the driving direction (so ``angle = k · cross_track_error`` steers back); ``distance`` is
its absolute value and ``tracking_error`` its running mean over the episode (the figure
``eval`` reports as ``mean_final_distance`` for this env).

Why one module of 616 lines: it is one simulated environment, and its track, ground map,
camera and dynamics are used only by it. Split candidate: track generation and ground
painting (:class:`Track`, :func:`make_track`, :func:`paint_ground` and their helpers, ~230
lines) into a track module, leaving the camera and :class:`Drive2DEnv`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CONTROL_HZ = 20
DT = 1.0 / CONTROL_HZ
IMAGE_KEY = "cam/image_array"
ACTION_NAMES = ("angle", "throttle")

WHEELBASE = 0.2
MAX_STEERING_DEG = 25.0
MAX_SPEED = 3.0
SPEED_TAU = 0.25

CAMERA_HEIGHT = 0.2
CAMERA_FORWARD = 0.15  # ahead of the rear axle, the car's reference point
CAMERA_PITCH_DEG = 20.0
CAMERA_HFOV_DEG = 100.0
MAX_VIEW = 12.0

MAP_RESOLUTION = 0.01  # metres per map pixel
MAP_MARGIN = 1.5  # ground painted around the track; rays beyond it see plain ground
TRACK_SPACING = 0.02  # metres between centreline samples
MIN_CURVE_RADIUS = 1.2
_TWO_PI = 2.0 * math.pi


# --------------------------------------------------------------------------- the track


@dataclass(frozen=True)
class Track:
    """A closed centreline sampled every ``spacing`` metres, in driving order.

    ``points[i]`` is at arc length ``i * spacing``; ``tangents`` are unit vectors in the
    driving direction, ``normals`` point to its left, ``curvature`` is signed (positive:
    turning left).
    """

    points: np.ndarray
    tangents: np.ndarray
    normals: np.ndarray
    curvature: np.ndarray
    spacing: float
    half_width: float
    clockwise: bool
    style: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> float:
        return len(self.points) * self.spacing

    def __len__(self) -> int:
        return len(self.points)

    def point_at(self, s: float) -> tuple[float, float]:
        """The centreline point at arc length ``s`` (wrapped, linearly interpolated)."""
        n = len(self.points)
        u = (s / self.spacing) % n
        i = int(u)
        f = u - i
        p, q = self.points[i], self.points[(i + 1) % n]
        return float(p[0] + f * (q[0] - p[0])), float(p[1] + f * (q[1] - p[1]))

    def heading_at(self, s: float) -> float:
        t = self.tangents[int((s / self.spacing) % len(self.points))]
        return math.atan2(float(t[1]), float(t[0]))

    def project(self, x: float, y: float, hint: int | None = None, window: int = 30) -> tuple[float, float, int]:
        """``(s, cross_track_error, nearest index)`` of the point ``(x, y)``.

        ``s`` is the arc length of its projection on the centreline and the error its signed
        distance (positive to the left). With a ``hint`` (the previous nearest index) only
        ``±window`` samples around it are searched, unless the nearest lies on the window's
        edge (the point moved further, or is far off the track): then all of them are.
        """
        pts = self.points
        n = len(pts)
        if hint is not None:
            idx = np.arange(hint - window, hint + window + 1) % n
            d = pts[idx] - (x, y)
            j = int(np.argmin(np.einsum("ij,ij->i", d, d)))
            i = int(idx[j])
            if j in (0, len(idx) - 1):
                hint = None
        if hint is None:
            d = pts - (x, y)
            i = int(np.argmin(np.einsum("ij,ij->i", d, d)))
        px, py = float(pts[i, 0]), float(pts[i, 1])
        tx, ty = float(self.tangents[i, 0]), float(self.tangents[i, 1])
        along = (x - px) * tx + (y - py) * ty
        along = min(self.spacing, max(-self.spacing, along))
        cte = -(x - px) * ty + (y - py) * tx
        return (i * self.spacing + along) % self.length, cte, i

    def max_abs_curvature(self, s: float, ahead: float) -> float:
        """The largest ``|curvature|`` over ``[s, s + ahead]``."""
        n = len(self.points)
        i0 = int((s / self.spacing) % n)
        k = max(1, int(ahead / self.spacing))
        return float(np.abs(self.curvature[np.arange(i0, i0 + k + 1) % n]).max())


def make_track(rng: np.random.Generator, spacing: float = TRACK_SPACING) -> Track:
    """A random closed track (see the module docstring for what is drawn and checked)."""
    theta = np.linspace(0.0, _TWO_PI, 4096, endpoint=False)
    half_width = float(rng.uniform(0.35, 0.55))
    for _ in range(1000):
        r0 = float(rng.uniform(2.8, 3.8))
        ks = np.arange(2, 6)
        amp = rng.uniform(0.0, 0.28, ks.size) / ks**0.8
        phase = rng.uniform(0.0, _TWO_PI, ks.size)
        r = r0 * (1.0 + (amp[:, None] * np.cos(ks[:, None] * theta + phase[:, None])).sum(axis=0))
        if r.min() < 1.0:
            continue
        xy = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        seg = np.linalg.norm(np.roll(xy, -1, axis=0) - xy, axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        total = float(cum[-1])
        n = round(total / spacing)
        s = np.arange(n) * (total / n)
        closed = np.vstack([xy, xy[:1]])
        pts = np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)
        ds = total / n
        d1 = (np.roll(pts, -1, axis=0) - np.roll(pts, 1, axis=0)) / (2 * ds)
        d2 = (np.roll(pts, -1, axis=0) - 2 * pts + np.roll(pts, 1, axis=0)) / (ds * ds)
        speed = np.linalg.norm(d1, axis=1)
        curvature = (d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / speed**3
        if np.abs(curvature).max() > 1.0 / MIN_CURVE_RADIUS:
            continue
        if not _clear_of_itself(pts, ds, half_width):
            continue
        clockwise = bool(rng.integers(2))
        if clockwise:  # drive the other way round: reverse the order, keep point 0
            pts = np.roll(pts[::-1], 1, axis=0)
            d1 = -np.roll(d1[::-1], 1, axis=0)
            curvature = -np.roll(curvature[::-1], 1)
        tangents = d1 / np.linalg.norm(d1, axis=1, keepdims=True)
        normals = np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
        return Track(pts, tangents, normals, curvature, ds, half_width, clockwise, _draw_style(rng))
    raise RuntimeError("no acceptable track in 1000 draws")  # pragma: no cover - rejection rate is ~50%


def _clear_of_itself(pts: np.ndarray, ds: float, half_width: float) -> bool:
    """No two parts of the track more than 3 m apart along it are nearer than its width + 1 m."""
    step = max(1, int(0.25 / ds))
    sub = pts[::step]
    m = len(sub)
    gap = np.linalg.norm(sub[:, None, :] - sub[None, :, :], axis=2)
    idx = np.arange(m)
    along = np.abs(idx[:, None] - idx[None, :]) * step * ds
    along = np.minimum(along, m * step * ds - along)
    return bool((gap[along > 3.0] >= 2 * half_width + 1.0).all())


def _draw_style(rng: np.random.Generator) -> dict[str, Any]:
    """Colours, line widths, texture and lighting of one track."""
    grounds = [(70, 120, 50), (95, 110, 60), (120, 120, 125), (150, 145, 135), (90, 70, 60), (60, 80, 120)]
    ground = np.array(grounds[int(rng.integers(len(grounds)))], float) + rng.uniform(-15, 15, 3)
    surface = np.full(3, rng.uniform(35, 85)) + rng.uniform(-8, 8, 3)
    if abs(ground.mean() - surface.mean()) < 45:  # keep the track visible against the ground
        darker = ground.mean() - 45
        surface = surface + ((darker if darker >= 25 else ground.mean() + 45) - surface.mean())
    edge = np.full(3, rng.uniform(200, 250)) + rng.uniform(-10, 5, 3)
    centre = np.array([rng.uniform(200, 250), rng.uniform(170, 230), rng.uniform(0, 70)])
    if rng.random() < 0.3:
        centre = edge.copy()
    light = float(rng.uniform(0.8, 1.15))
    sky_top = np.array([rng.uniform(60, 140), rng.uniform(110, 170), rng.uniform(180, 240)])
    sky_low = sky_top + rng.uniform(30, 70)
    return {
        "ground": _rgb(ground * light),
        "surface": _rgb(surface * light),
        "edge": _rgb(edge * light),
        "centre": _rgb(centre * light),
        "sky_top": _rgb(sky_top * light),
        "sky_low": _rgb(sky_low * light),
        "edge_width": float(rng.uniform(0.03, 0.06)),
        "centre_width": float(rng.uniform(0.025, 0.045)),
        "dash": float(rng.uniform(0.15, 0.35)),
        "ground_texture": float(rng.uniform(8, 30)),
        "surface_texture": float(rng.uniform(4, 14)),
        "texture_seed": int(rng.integers(2**31)),
    }


def _area(poly: np.ndarray) -> float:
    """Unsigned area of a closed polygon (shoelace)."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in np.clip(np.round(c), 0, 255))
    return r, g, b


@dataclass(frozen=True)
class GroundMap:
    """The track painted into a world-aligned image: ``pixels`` is ``uint8 [rows * cols, 3]``
    (flat, for ``np.take``); map pixel ``(col, row)`` covers world ``(x0 + col·res, y0 + row·res)``."""

    pixels: np.ndarray
    rows: int
    cols: int
    x0: float
    y0: float
    resolution: float


def paint_ground(track: Track, resolution: float = MAP_RESOLUTION) -> GroundMap:
    """Texture, track surface, edge lines and dashed centre line, painted once per track.

    Regions are bounded by offsets of the centreline (so a line is as wide on the inside of a
    curve as on the outside); textures are a 256x256 tile of noise (fine grain plus blotches)
    repeated over the map.
    """
    from PIL import Image, ImageDraw

    st = track.style
    pts, normals, hw = track.points, track.normals, track.half_width
    x0, y0 = pts.min(axis=0) - hw - MAP_MARGIN
    x1, y1 = pts.max(axis=0) + hw + MAP_MARGIN
    cols, rows = math.ceil((x1 - x0) / resolution), math.ceil((y1 - y0) / resolution)
    origin = np.array([x0, y0])

    def flat(poly: np.ndarray) -> list[float]:
        return ((poly - origin) / resolution).ravel().tolist()

    # Label image: 0 ground, 1 surface, 2 edge line, 3 centre dash. The offsets of the
    # centreline are nested polygons, so painting them from the outermost in leaves each
    # region with its label (no per-pixel mask arithmetic).
    outward = 1.0 if _area(pts + normals * 0.1) > _area(pts) else -1.0  # the side of the outer edge
    e = 0.5 * st["edge_width"]
    img = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(img)
    for d, fill in ((hw + e, 2), (hw - e, 1), (-hw + e, 2), (-hw - e, 0)):
        draw.polygon(flat(pts + normals * (outward * d)), fill=fill)
    c = 0.5 * st["centre_width"]
    period = max(2, round(2 * st["dash"] / track.spacing))
    on = period // 2
    for i in range(0, len(pts) - on, period):
        p, n = pts[i : i + on + 1], normals[i : i + on + 1] * c
        draw.polygon(flat(np.vstack([p + n, (p - n)[::-1]])), fill=3)
    label = np.asarray(img)

    trng = np.random.default_rng(st["texture_seed"])
    blotch = trng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    blotch = np.asarray(Image.fromarray(blotch, mode="F").resize((256, 256), Image.BILINEAR))
    tile = 0.6 * trng.normal(0.0, 1.0, (256, 256)) + 0.8 * blotch
    reps = (rows // 256 + 1, cols // 256 + 1, 1)

    def textured(colour: tuple[int, int, int], amp: float) -> np.ndarray:
        t = np.clip(np.asarray(colour, float) + amp * tile[..., None], 0, 255).astype(np.uint8)
        return np.tile(t, reps)[:rows, :cols]

    rgb = np.ascontiguousarray(textured(st["ground"], st["ground_texture"]))
    np.copyto(rgb, textured(st["surface"], st["surface_texture"]), where=(label == 1)[..., None])
    pixels = rgb.reshape(-1, 3)  # a view: the writes below paint rgb
    flat_label = label.ravel()
    pixels[np.flatnonzero(flat_label == 2)] = st["edge"]
    pixels[np.flatnonzero(flat_label == 3)] = st["centre"]
    # The outermost pixels are plain ground: rays beyond the map are clipped onto them.
    rgb[0, :] = rgb[-1, :] = rgb[:, 0] = rgb[:, -1] = st["ground"]
    return GroundMap(pixels, rows, cols, float(x0), float(y0), resolution)


# --------------------------------------------------------------------------- the camera


@dataclass(frozen=True)
class Camera:
    """The ground-ray table of a pinhole camera on the car, solved once per image size.

    Rows ``first_row..height-1`` see the ground within ``MAX_VIEW``: row ``r`` at ``forward[r]``
    metres ahead of the camera, column ``c`` at ``distance[r] * slope[c]`` to the right.
    ``backdrop`` is the sky (and haze) image the ground rows are drawn into.
    """

    height: int
    width: int
    first_row: int
    forward: np.ndarray
    distance: np.ndarray
    slope: np.ndarray


def make_camera(
    height: int,
    width: int,
    cam_height: float = CAMERA_HEIGHT,
    pitch_deg: float = CAMERA_PITCH_DEG,
    hfov_deg: float = CAMERA_HFOV_DEG,
    max_view: float = MAX_VIEW,
) -> Camera:
    f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    p = math.radians(pitch_deg)
    yn = -(np.arange(height) - cy) / f  # up component of each row's ray, camera frame
    up = -math.sin(p) + yn * math.cos(p)
    fwd = math.cos(p) + yn * math.sin(p)
    with np.errstate(divide="ignore"):
        t = np.where(up < 0, cam_height / np.where(up < 0, -up, 1.0), np.inf)
    forward = t * fwd
    ground = np.isfinite(forward) & (forward <= max_view)
    first = int(np.argmax(ground)) if ground.any() else height
    if not ground[first:].all():  # pragma: no cover - rows below the horizon all see the ground
        raise ValueError("camera looks up from the ground")
    slope = (np.arange(width) - cx) / f
    return Camera(height, width, first, forward[first:].copy(), t[first:].copy(), slope)


# --------------------------------------------------------------------------- the env


class Drive2DEnv(gym.Env[dict, np.ndarray]):
    """The camera car (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["rgb_array"],
        "render_fps": CONTROL_HZ,
        "control_hz": CONTROL_HZ,
    }
    control_hz: int = CONTROL_HZ
    dt: float = DT
    action_names: tuple[str, ...] = ACTION_NAMES
    image_key: str = IMAGE_KEY
    wheelbase: float = WHEELBASE
    camera_forward: float = CAMERA_FORWARD

    def __init__(
        self,
        max_steps: int = 1000,
        image_height: int = 120,
        image_width: int = 160,
        max_speed: float = MAX_SPEED,
        max_steering_deg: float = MAX_STEERING_DEG,
        max_off_track_steps: int = 20,
        track_seed: int | None = None,
        render_mode: str | None = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not (8 <= int(image_height) <= 2048 and 8 <= int(image_width) <= 2048):
            raise ValueError(f"image size must be 8-2048 pixels a side, got {image_height}x{image_width}")
        if not (max_speed > 0 and 0 < max_steering_deg < 80):
            raise ValueError("max_speed must be positive and max_steering_deg in (0, 80)")
        if max_off_track_steps < 0:
            raise ValueError(f"max_off_track_steps must be >= 0, got {max_off_track_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.max_steps = int(max_steps)
        self.max_speed = float(max_speed)
        self.max_steering = math.radians(max_steering_deg)
        self.max_off_track_steps = int(max_off_track_steps)
        self.track_seed = track_seed
        self.image_shape = (int(image_height), int(image_width), 3)
        self.camera = make_camera(int(image_height), int(image_width))
        self.observation_space = spaces.Dict(
            {IMAGE_KEY: spaces.Box(low=0, high=255, shape=self.image_shape, dtype=np.uint8)}
        )
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)
        self._speed_alpha = 1.0 - math.exp(-self.dt / SPEED_TAU)
        self.track: Track | None = None
        self.ground: GroundMap | None = None
        self._backdrop = np.zeros(self.image_shape, np.uint8)
        self._fixed: tuple[Track, GroundMap, np.ndarray] | None = None
        self._frame: np.ndarray | None = None
        n = self.image_shape[0] - self.camera.first_row
        w = self.image_shape[1]
        self._wx = np.empty((n, w), np.float32)
        self._wy = np.empty((n, w), np.float32)
        self._ix = np.empty((n, w), np.intp)
        self._iy = np.empty((n, w), np.intp)
        self.x = self.y = self.yaw = self.speed = self.steering = 0.0
        self._t = 0
        self._idx = 0
        self._s = 0.0
        self._progress = 0.0
        self._off = 0
        self._abs_cte_sum = 0.0

    # -- gymnasium API ------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        if self.track_seed is None:
            self.track = make_track(rng)
            self.ground = paint_ground(self.track)
            self._backdrop = self._paint_backdrop(self.track.style)
        else:
            if self._fixed is None:
                track = make_track(np.random.default_rng(int(self.track_seed)))
                self._fixed = (track, paint_ground(track), self._paint_backdrop(track.style))
            self.track, self.ground, self._backdrop = self._fixed
        track = self.track
        s0 = float(rng.uniform(0.0, track.length))
        x, y = track.point_at(s0)
        i = int((s0 / track.spacing) % len(track))
        offset = float(rng.uniform(-0.3, 0.3)) * track.half_width
        self.x = x + offset * float(track.normals[i, 0])
        self.y = y + offset * float(track.normals[i, 1])
        self.yaw = track.heading_at(s0) + math.radians(float(rng.uniform(-8.0, 8.0)))
        self.speed = self.steering = 0.0
        self._t = 0
        self._off = 0
        self._abs_cte_sum = 0.0
        self._progress = 0.0
        self._s, cte, self._idx = track.project(self.x, self.y)
        return self._observe(), self._info(cte, success=False, tracking_error=abs(cte))

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]:
        if self.track is None:
            raise RuntimeError("call reset() before step()")
        angle, throttle = _clip_action(action)
        track = self.track
        self.steering = angle * self.max_steering
        target = max(0.0, throttle) * self.max_speed
        v0 = self.speed
        self.speed = v0 + (target - v0) * self._speed_alpha
        v = 0.5 * (v0 + self.speed)
        # Kinematic bicycle about the rear axle (left turns have a positive yaw rate; a
        # positive angle steers right), integrated at the midpoint of the step.
        yaw_rate = -v * math.tan(self.steering) / self.wheelbase
        mid_yaw = self.yaw + 0.5 * yaw_rate * self.dt
        self.x += v * math.cos(mid_yaw) * self.dt
        self.y += v * math.sin(mid_yaw) * self.dt
        self.yaw = math.remainder(self.yaw + yaw_rate * self.dt, _TWO_PI)
        self._t += 1
        s, cte, self._idx = track.project(self.x, self.y, self._idx)
        ds = math.remainder(s - self._s, track.length)
        self._s = s
        self._progress += ds / track.length
        off = abs(cte) > track.half_width
        self._off = self._off + 1 if off else 0
        self._abs_cte_sum += abs(cte)
        success = self._progress >= 1.0
        terminated = success or self._off > self.max_off_track_steps
        truncated = not terminated and self._t >= self.max_steps
        reward = 100.0 * ds / track.length - (1.0 if off else 0.0)
        info = self._info(cte, success=success, tracking_error=self._abs_cte_sum / self._t)
        return self._observe(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the camera's last frame."""
        if self.render_mode != "rgb_array":
            return None
        return None if self._frame is None else self._frame.copy()

    # -- state for experts and tests ----------------------------------------------------

    @property
    def pose(self) -> tuple[float, float, float]:
        """``(x, y, yaw)`` of the rear axle."""
        return self.x, self.y, self.yaw

    @property
    def arc_length(self) -> float:
        """Where on the centreline the car is (metres from sample 0)."""
        return self._s

    @property
    def progress(self) -> float:
        return self._progress

    def place(self, x: float, y: float, yaw: float, speed: float = 0.0) -> dict:
        """Put the car at a pose (tests, a teleop reset); returns the new observation."""
        if self.track is None:
            raise RuntimeError("call reset() before place()")
        self.x, self.y, self.yaw, self.speed = float(x), float(y), float(yaw), float(speed)
        self._s, _, self._idx = self.track.project(self.x, self.y)
        return self._observe()

    # -- rendering ----------------------------------------------------------------------

    def _paint_backdrop(self, style: dict[str, Any]) -> np.ndarray:
        """Sky gradient above the ground rows, fading into a ground-coloured haze."""
        h = self.image_shape[0]
        first = self.camera.first_row
        img = np.empty(self.image_shape, np.uint8)
        top, low = np.array(style["sky_top"], float), np.array(style["sky_low"], float)
        haze = 0.5 * (low + np.array(style["ground"], float))
        for r in range(h):
            if r < first:
                f = r / max(1, first - 1)
                c = top + (low - top) * f
                horizon_rows = 2
                if r >= first - horizon_rows:
                    c = haze
            else:
                c = np.array(style["ground"], float)
            img[r, :] = np.clip(np.round(c), 0, 255).astype(np.uint8)
        return img

    def _observe(self) -> dict[str, np.ndarray]:
        frame = self.render_frame()
        self._frame = frame
        return {IMAGE_KEY: frame}

    def render_frame(self) -> np.ndarray:
        """The camera image at the current pose: ``uint8 [H, W, 3]`` (a new array)."""
        g, cam = self.ground, self.camera
        assert g is not None
        img = self._backdrop.copy()
        if cam.first_row >= cam.height:
            return img
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        inv = 1.0 / g.resolution
        # Camera position in map pixels (+0.5: truncation below is then rounding).
        cx = (self.x + self.camera_forward * c - g.x0) * inv + 0.5
        cy = (self.y + self.camera_forward * s - g.y0) * inv + 0.5
        fwd = cam.forward * inv
        dist = cam.distance * inv
        a = (cx + fwd * c).astype(np.float32)[:, None]
        b = (cy + fwd * s).astype(np.float32)[:, None]
        slope = cam.slope.astype(np.float32)
        wx, wy, ix, iy = self._wx, self._wy, self._ix, self._iy
        # world = camera + forward·(c, s) + right·(s, -c), right = distance·slope
        np.multiply.outer((dist * s).astype(np.float32), slope, out=wx)
        wx += a
        np.multiply.outer((dist * c).astype(np.float32), slope, out=wy)
        np.subtract(b, wy, out=wy)
        np.clip(wx, 0, g.cols - 1, out=wx)
        np.clip(wy, 0, g.rows - 1, out=wy)
        ix[...] = wx
        iy[...] = wy
        iy *= g.cols
        iy += ix
        np.take(g.pixels, iy, axis=0, out=img[cam.first_row :], mode="clip")  # indices are in range
        return img

    def _info(self, cte: float, success: bool, tracking_error: float) -> dict[str, Any]:
        assert self.track is not None
        return {
            "progress": self._progress,
            "cross_track_error": cte,
            "off_track": abs(cte) > self.track.half_width,
            "success": success,
            "speed": self.speed,
            "distance": abs(cte),
            "tracking_error": tracking_error,
        }


def _clip_action(action: Any) -> tuple[float, float]:
    """``[angle, throttle]`` as floats clipped to ``[-1, 1]``; NaN/inf are refused."""
    if isinstance(action, np.ndarray):
        action = action.tolist()
    a0, a1 = action
    a0, a1 = float(a0), float(a1)
    if not (math.isfinite(a0) and math.isfinite(a1)):
        raise ValueError(f"action must be finite, got {action!r}")
    return min(1.0, max(-1.0, a0)), min(1.0, max(-1.0, a1))
