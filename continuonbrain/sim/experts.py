"""Scripted experts for the built-in envs: the demonstrations a policy learns from.

Arms (``reach2d``, ``track2d``): :class:`ArmExpert` reads only the observation (no privileged
simulator state), so whatever it does a learned policy could in principle do too. It solves
the arm's inverse kinematics for the target, picks the elbow solution nearest the current pose
(so it never flips the elbow mid-motion), and commands joint velocities ``kp·(q* - q)`` plus,
for a moving target, a feedforward of how fast ``q*`` is moving. ``kp`` = 5/s makes the loop critically damped
for the 50 ms actuator lag: fast, with no overshoot out of the success radius. The joint
velocity vector is scaled down as a whole (not clipped per joint) when it exceeds the action
bounds, which keeps the motion's direction.

DART (Laskey et al. 2017) noise is applied by the collector, not here: the expert always
returns its clean action, the collector executes a noisy one, and the clean one is recorded.
That way demonstrations visit the states a slightly-wrong learned policy drifts into, while
still labelling them with the right action.

The camera car (``drive2d``): :class:`DriveExpert` is pure pursuit on the true centreline,
read from the env it is bound to (privileged state: the track and the car's pose, which the
camera image shows but a script cannot easily read off it). Its action is still a function
of what the camera sees (where the lane goes ahead and how sharply it bends), which is what
makes it learnable from pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from continuonbrain.sim.envs import DT, LINK_LENGTHS, MAX_SPEED

BUILTIN_ENVS = ("reach2d", "track2d", "drive2d")


class Policy(Protocol):
    """Anything that maps an observation to an action; ``reset`` starts a new episode."""

    def reset(self) -> None: ...

    def act(self, obs: np.ndarray) -> np.ndarray: ...


class ArmExpert:
    """Inverse-kinematics expert for ``reach2d`` and ``track2d`` (observation layout in
    :mod:`continuonbrain.sim.envs`).

    ``gain`` is the actuator gain the expert assumes: an oracle for a shifted-gain variant
    passes the true gain, a naive expert keeps 1 (it still converges, more slowly or with
    more overshoot, because the loop is closed). ``feedforward`` estimates the target's
    joint-space velocity from consecutive observations; it matters for ``track2d`` only.
    """

    def __init__(
        self,
        link_lengths: tuple[float, float] = LINK_LENGTHS,
        max_speed: float = MAX_SPEED,
        dt: float = DT,
        gain: float = 1.0,
        kp: float = 5.0,
        feedforward: bool = True,
    ) -> None:
        self.l1, self.l2 = (float(x) for x in link_lengths)
        self.scale = 1.0 / (max_speed * gain)
        self.dt = float(dt)
        self.kp = float(kp)
        self.feedforward = bool(feedforward)
        self._prev_goal: tuple[float, float] | None = None

    def reset(self) -> None:
        self._prev_goal = None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.act(obs)

    def act(self, obs: np.ndarray) -> np.ndarray:
        c1, s1, c2, s2, _dq1, _dq2, tx, ty = (float(v) for v in obs[:8])
        q1, q2 = math.atan2(s1, c1), math.atan2(s2, c2)
        g1, g2 = self.inverse_kinematics(tx, ty, q1, q2)
        v1 = self.kp * _wrap(g1 - q1)
        v2 = self.kp * _wrap(g2 - q2)
        if self.feedforward and self._prev_goal is not None:
            v1 += _wrap(g1 - self._prev_goal[0]) / self.dt
            v2 += _wrap(g2 - self._prev_goal[1]) / self.dt
        self._prev_goal = (g1, g2)
        a1, a2 = v1 * self.scale, v2 * self.scale
        peak = max(abs(a1), abs(a2))
        if peak > 1.0:
            a1, a2 = a1 / peak, a2 / peak
        return np.array([a1, a2], dtype=np.float32)

    def inverse_kinematics(self, x: float, y: float, q1: float, q2: float) -> tuple[float, float]:
        """Joint angles that put the tip at ``(x, y)``, the elbow solution nearest ``(q1, q2)``.

        Targets out of reach are projected onto the workspace boundary (``cos q2`` clipped).
        """
        l1, l2 = self.l1, self.l2
        c = (x * x + y * y - l1 * l1 - l2 * l2) / (2.0 * l1 * l2)
        e = math.acos(min(1.0, max(-1.0, c)))
        best: tuple[float, float] | None = None
        best_cost = math.inf
        for e2 in (e, -e):
            e1 = math.atan2(y, x) - math.atan2(l2 * math.sin(e2), l1 + l2 * math.cos(e2))
            cost = abs(_wrap(e1 - q1)) + abs(_wrap(e2 - q2))
            if cost < best_cost:
                best, best_cost = (e1, e2), cost
        assert best is not None
        return best


class DriveExpert:
    """Pure pursuit for ``drive2d``, bound to the env whose car it drives.

    Steering: the point ``lookahead + lookahead_time·speed`` metres ahead on the centreline
    is the goal; the bicycle's steering angle that puts the rear axle on a circle through it
    is ``atan(2·wheelbase·sin α / distance)`` (α: the goal's bearing), scaled to the
    ``angle`` command (negative: left) and clipped. Throttle: the speed at which the sharpest
    curve within the braking preview stays under ``max_lateral_accel``
    (``v = sqrt(a / |κ|)``, at most ``cruise_speed``), plus a proportional term on the
    speed error; the car's speed lag then follows it.

    ``make_expert(env)`` binds it; ``make_expert("drive2d")`` gives an unbound one, which
    must be :meth:`bind`-ed before it acts.
    """

    def __init__(
        self,
        env: gym.Env | None = None,
        lookahead: float = 0.45,
        lookahead_time: float = 0.25,
        cruise_speed: float = 2.2,
        max_lateral_accel: float = 2.5,
        min_speed: float = 0.6,
        speed_gain: float = 0.5,
    ) -> None:
        self.lookahead = float(lookahead)
        self.lookahead_time = float(lookahead_time)
        self.cruise_speed = float(cruise_speed)
        self.max_lateral_accel = float(max_lateral_accel)
        self.min_speed = float(min_speed)
        self.speed_gain = float(speed_gain)
        self.env: Any = None
        if env is not None:
            self.bind(env)

    def bind(self, env: gym.Env) -> DriveExpert:
        from continuonbrain.sim.drive2d import Drive2DEnv

        base = env.unwrapped
        if not isinstance(base, Drive2DEnv):
            raise ValueError(f"DriveExpert drives a Drive2DEnv, not {type(base).__name__}")
        self.env = base
        return self

    def reset(self) -> None:
        pass

    def __call__(self, obs: Any) -> np.ndarray:
        return self.act(obs)

    def act(self, obs: Any) -> np.ndarray:
        env = self.env
        if env is None:
            raise RuntimeError("DriveExpert is not bound to an env: use make_expert(env) or bind(env)")
        track = env.track
        if track is None:
            raise RuntimeError("the env has not been reset")
        x, y, yaw = env.pose
        v = env.speed
        s = env.arc_length
        ld = self.lookahead + self.lookahead_time * v
        gx, gy = track.point_at(s + ld)
        dx, dy = gx - x, gy - y
        dist = max(1e-6, math.hypot(dx, dy))
        alpha = _wrap(math.atan2(dy, dx) - yaw)
        delta = math.atan(2.0 * env.wheelbase * math.sin(alpha) / dist)  # positive: turn left
        angle = -delta / env.max_steering
        preview = 0.6 + v * v / (2.0 * self.max_lateral_accel)
        kappa = track.max_abs_curvature(s, preview)
        target = min(self.cruise_speed, math.sqrt(self.max_lateral_accel / max(kappa, 1e-6)))
        target = max(self.min_speed, target)
        throttle = (target + self.speed_gain * (target - v)) / env.max_speed
        return np.array([min(1.0, max(-1.0, angle)), min(1.0, max(-1.0, throttle))], dtype=np.float32)


class RandomPolicy:
    """Uniform random actions from a Box, from its own seeded generator (reproducible)."""

    def __init__(self, action_space: gym.spaces.Box, seed: int | Sequence[int] | None = None) -> None:
        self.low = np.asarray(action_space.low, dtype=np.float64)
        self.high = np.asarray(action_space.high, dtype=np.float64)
        self.dtype = action_space.dtype
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.act(obs)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(self.dtype)


def make_expert(env: str | gym.Env, **kwargs: Any) -> ArmExpert | DriveExpert:
    """The scripted expert for a built-in env id, or for an env instance.

    Given an instance, the expert is matched to it (arms: link lengths, speed, control period
    and actuator gain, so it stays an oracle on shifted variants; the car: bound to the env,
    whose track and pose it reads). ``"drive2d"`` as a string gives an unbound
    :class:`DriveExpert`. Raises ``ValueError`` for envs that have no expert.
    """
    if isinstance(env, str):
        if env not in BUILTIN_ENVS:
            raise ValueError(f"no scripted expert for env {env!r} (have: {', '.join(BUILTIN_ENVS)})")
        return DriveExpert(**kwargs) if env == "drive2d" else ArmExpert(**kwargs)
    base = env.unwrapped
    from continuonbrain.sim.drive2d import Drive2DEnv
    from continuonbrain.sim.envs import TwoLinkArmEnv

    if isinstance(base, Drive2DEnv):
        return DriveExpert(base, **kwargs)
    if not isinstance(base, TwoLinkArmEnv):
        raise ValueError(f"no scripted expert for {type(base).__name__}")
    params: dict[str, Any] = {
        "link_lengths": base.link_lengths,
        "max_speed": base.max_speed,
        "dt": base.dt,
        "gain": base.gain,
    }
    params.update(kwargs)
    return ArmExpert(**params)


def has_expert(env: str | gym.Env) -> bool:
    """Whether :func:`make_expert` can build an expert for ``env``."""
    try:
        make_expert(env)
    except ValueError:
        return False
    return True


def _wrap(angle: float) -> float:
    return math.remainder(angle, 2.0 * math.pi)
