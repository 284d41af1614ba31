"""Built-in simulators: a planar two-link arm that reaches (``reach2d``) or tracks (``track2d``).

Why these and not MuJoCo: the project must collect, train and evaluate on a Raspberry Pi with
no GPU and no rendering stack, and the tests must run in seconds. A two-link arm in pure
Python/numpy steps in a few microseconds, is fully deterministic given a seed, and is still a
real control problem (nonlinear kinematics, actuator lag, saturation), so a small policy has
something to learn and a scripted expert exists to learn it from.

Shared model (both envs):

* Links of length ``0.5`` and ``0.5`` (reach 1.0), revolute joints without limits (angles are
  observed as ``cos``/``sin``, so wrapping is harmless).
* Control at 50 Hz (``dt = 0.02`` s): a Fast-loop window of 50-100 ms spans 3-5 steps.
* Action: two joint-velocity commands in ``[-1, 1]`` (clipped to the Box), scaled by
  ``max_speed`` (3 rad/s) and the actuator ``gain``. The joints follow the command through a
  first-order lag (time constant ``tau`` = 50 ms), which is what a hobby servo with a speed
  loop does: a policy must anticipate, not teleport.
* Observation (float32, 10 values, names in :attr:`observation_names`)::

      0 cos_q1   1 sin_q1   2 cos_q2   3 sin_q2     joint angles (rad) as cos/sin
      4 dq1      5 dq2                              joint velocities (rad/s)
      6 target_x 7 target_y                         target position
      8 tip_x    9 tip_y                            end-effector position

* ``info``: ``distance`` (tip to target), ``success``, ``tracking_error`` (mean distance
  over the steps taken so far), ``in_target``.

Task variants for adaptation experiments: ``target_shift`` (radians) rotates the sector the
targets come from (the base task keeps targets in front of the robot, ``|angle| <= 90°``),
and ``gain`` scales the actuators (``gain=0.5``: a weaker, slower arm).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CONTROL_HZ = 50
DT = 1.0 / CONTROL_HZ
LINK_LENGTHS = (0.5, 0.5)
MAX_SPEED = 3.0
TAU = 0.05
OBSERVATION_NAMES = (
    "cos_q1",
    "sin_q1",
    "cos_q2",
    "sin_q2",
    "dq1",
    "dq2",
    "target_x",
    "target_y",
    "tip_x",
    "tip_y",
)
ACTION_NAMES = ("dq1_cmd", "dq2_cmd")
_TWO_PI = 2.0 * math.pi


class TwoLinkArmEnv(gym.Env[np.ndarray, np.ndarray]):
    """Common dynamics, spaces and bookkeeping of the two arm tasks.

    Subclasses provide the target: :meth:`_reset_target` draws it at reset and
    :meth:`_move_target` advances it after every step. The state is kept in Python floats
    rather than numpy arrays because for ten numbers ``math`` is several times faster than
    numpy's per-call overhead, and a step allocates exactly one array (the observation).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": [], "render_fps": CONTROL_HZ, "control_hz": CONTROL_HZ}
    control_hz: int = CONTROL_HZ
    dt: float = DT
    link_lengths: tuple[float, float] = LINK_LENGTHS
    observation_names: tuple[str, ...] = OBSERVATION_NAMES
    action_names: tuple[str, ...] = ACTION_NAMES

    def __init__(
        self,
        max_steps: int = 200,
        gain: float = 1.0,
        target_shift: float = 0.0,
        max_speed: float = MAX_SPEED,
        tau: float = TAU,
        render_mode: str | None = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not math.isfinite(gain) or gain == 0:
            raise ValueError(f"gain must be finite and non-zero, got {gain}")
        if max_speed <= 0 or tau <= 0:
            raise ValueError("max_speed and tau must be positive")
        if render_mode is not None:
            raise ValueError("these environments do not render (render_modes is empty)")
        self.render_mode = render_mode
        self.max_steps = int(max_steps)
        self.gain = float(gain)
        self.target_shift = float(target_shift)
        self.max_speed = float(max_speed)
        self.tau = float(tau)
        # Exact discretisation of the first-order lag over one control period.
        self._alpha = 1.0 - math.exp(-self.dt / self.tau)
        reach = sum(self.link_lengths)
        vmax = self.max_speed * abs(self.gain) * 1.01
        xy = reach + 0.01  # float32 rounding of a fully stretched arm must stay inside the box
        high = np.array([1, 1, 1, 1, vmax, vmax, xy, xy, xy, xy], np.float32)
        self.observation_space = spaces.Box(low=-high, high=high, dtype=np.float32)
        self.action_space = spaces.Box(low=-1.0, high=1.0, shape=(2,), dtype=np.float32)
        self._q1 = self._q2 = self._dq1 = self._dq2 = 0.0
        self._tx = self._ty = self._px = self._py = 0.0
        self._t = 0
        self._dist_sum = 0.0

    # -- kinematics ---------------------------------------------------------------------

    def tip(self) -> tuple[float, float]:
        """End-effector position (forward kinematics)."""
        l1, l2 = self.link_lengths
        q12 = self._q1 + self._q2
        return l1 * math.cos(self._q1) + l2 * math.cos(q12), l1 * math.sin(self._q1) + l2 * math.sin(q12)

    def _kinematics(self) -> float:
        """Recompute the cached tip position after the joints moved; returns the distance."""
        self._px, self._py = self.tip()
        return math.hypot(self._px - self._tx, self._py - self._ty)

    @property
    def target(self) -> tuple[float, float]:
        return self._tx, self._ty

    def distance(self) -> float:
        """Tip-to-target distance."""
        px, py = self.tip()
        return math.hypot(px - self._tx, py - self._ty)

    # -- gymnasium API ------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        self._t = 0
        self._dist_sum = 0.0
        self._dq1 = self._dq2 = 0.0
        self._q1 = float(rng.uniform(-math.pi, math.pi))
        self._q2 = float(rng.uniform(-2.6, 2.6))
        self._reset_target(rng)
        d = self._kinematics()
        return self._obs(), self._info(d, success=False, tracking_error=d)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a0, a1 = self.clip_action(action)
        speed = self.max_speed * self.gain
        k = self._alpha
        self._dq1 += (speed * a0 - self._dq1) * k
        self._dq2 += (speed * a1 - self._dq2) * k
        self._q1 = math.remainder(self._q1 + self._dq1 * self.dt, _TWO_PI)
        self._q2 = math.remainder(self._q2 + self._dq2 * self.dt, _TWO_PI)
        self._t += 1
        self._move_target()
        d = self._kinematics()
        self._dist_sum += d
        reward, terminated, success = self._outcome(d)
        truncated = not terminated and self._t >= self.max_steps
        return self._obs(), reward, terminated, truncated, self._info(d, success, self._dist_sum / self._t)

    @staticmethod
    def clip_action(action: Any) -> tuple[float, float]:
        """The action as two floats clipped to ``[-1, 1]``.

        Out-of-range commands are clipped (a real motor driver saturates), but NaN/inf are
        refused: silently turning a broken policy output into motion would hide the bug.
        """
        if isinstance(action, np.ndarray):
            action = action.tolist()  # one call instead of two numpy scalar conversions
        a0, a1 = action
        a0, a1 = float(a0), float(a1)
        if not (math.isfinite(a0) and math.isfinite(a1)):
            raise ValueError(f"action must be finite, got {action!r}")
        return min(1.0, max(-1.0, a0)), min(1.0, max(-1.0, a1))

    # -- helpers ------------------------------------------------------------------------

    def _obs(self) -> np.ndarray:
        return np.array(
            [
                math.cos(self._q1),
                math.sin(self._q1),
                math.cos(self._q2),
                math.sin(self._q2),
                self._dq1,
                self._dq2,
                self._tx,
                self._ty,
                self._px,
                self._py,
            ],
            dtype=np.float32,
        )

    def _info(self, distance: float, success: bool, tracking_error: float) -> dict[str, Any]:
        return {
            "distance": distance,
            "success": success,
            "in_target": False,
            "tracking_error": tracking_error,
        }

    def _reset_target(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _move_target(self) -> None:
        """Advance the target by one control period (static by default)."""

    def _outcome(self, distance: float) -> tuple[float, bool, bool]:
        """``(reward, terminated, success)`` after a step."""
        return -distance, False, False


class Reach2DEnv(TwoLinkArmEnv):
    """Reach a random static target and hold the tip there.

    Targets lie at radius 0.3-0.9 in front of the robot (angle within ±90°, rotated by
    ``target_shift``); the arm starts in a random configuration at least 0.2 away.

    Success means the tip stayed within ``success_radius`` (0.05) for ``hold_steps`` (5 steps
    = 100 ms) consecutive steps; the episode then terminates with ``info["success"]``. The
    hold is what makes the task a control task rather than a lucky pass-through: random
    actions wander across targets now and then, but almost never stop on one. Otherwise the
    episode is truncated after ``max_steps`` (200 = 4 s).

    Reward: ``-distance`` every step, plus ``success_bonus`` (10) on the success step.
    """

    def __init__(
        self,
        max_steps: int = 200,
        gain: float = 1.0,
        target_shift: float = 0.0,
        success_radius: float = 0.05,
        hold_steps: int = 5,
        success_bonus: float = 10.0,
        max_speed: float = MAX_SPEED,
        tau: float = TAU,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(max_steps, gain, target_shift, max_speed, tau, render_mode)
        if success_radius <= 0 or hold_steps < 1:
            raise ValueError("success_radius must be positive and hold_steps >= 1")
        self.success_radius = float(success_radius)
        self.hold_steps = int(hold_steps)
        self.success_bonus = float(success_bonus)
        self._held = 0

    def _reset_target(self, rng: np.random.Generator) -> None:
        self._held = 0
        for _ in range(100):
            r = float(rng.uniform(0.3, 0.9))
            a = float(rng.uniform(-math.pi / 2, math.pi / 2)) + self.target_shift
            self._tx, self._ty = r * math.cos(a), r * math.sin(a)
            if self.distance() >= 0.2:
                return
            self._q1 = float(rng.uniform(-math.pi, math.pi))  # start pose too close: draw another

    def move_target(self, x: float, y: float) -> tuple[float, float]:
        """Put the target at ``(x, y)`` mid-episode (an operator clicking in the Robot Editor's
        live sim); returns where it went. The point is pulled into the reachable annulus (radius
        0.1 to 0.95 of full reach: the arm cannot fold onto its shoulder nor stretch past its
        links) and the hold count restarts, so success means holding the *new* target."""
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"target must be finite, got ({x}, {y})")
        reach = sum(self.link_lengths)
        r = math.hypot(x, y)
        lo, hi = 0.1 * reach, 0.95 * reach
        if r < 1e-9:
            x, y, r = lo, 0.0, lo
        scale = min(hi, max(lo, r)) / r
        self._tx, self._ty = x * scale, y * scale
        self._held = 0
        self._kinematics()
        return self._tx, self._ty

    def _outcome(self, distance: float) -> tuple[float, bool, bool]:
        self._held = self._held + 1 if distance <= self.success_radius else 0
        success = self._held >= self.hold_steps
        return -distance + (self.success_bonus if success else 0.0), success, success

    def _info(self, distance: float, success: bool, tracking_error: float) -> dict[str, Any]:
        info = super()._info(distance, success, tracking_error)
        info["in_target"] = distance <= self.success_radius
        return info


class Track2DEnv(TwoLinkArmEnv):
    """Follow a target moving along a smooth random path; fixed length, no success.

    The path is polar around the shoulder: ``r(t) = r0 + ar·sin(2π fr t + φr)`` and
    ``θ(t) = θ0 + Σ_k aθk·sin(2π fk t + φk)`` (two components), with ``r`` kept in
    0.35-0.85 so the arm never needs to pass a kinematic singularity (fully stretched or
    folded), and speeds (at most ~1.2 units/s, typically 0.5) that the arm can follow at 3 rad/s.
    ``θ0`` lies in front of the robot, rotated by ``target_shift``.

    The metric is the mean tracking error: ``info["distance"]`` every step and its running
    mean ``info["tracking_error"]``. Reward: ``-distance``. Episodes are truncated after
    ``max_steps`` (200 = 4 s) and never terminate. ``info["success"]`` is always false.
    """

    #: (r0, ar, wr, phr, th0, a1, w1, p1, a2, w2, p2), drawn at reset (a tuple: replaced, never mutated).
    _path: tuple[float, ...] = (0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def _reset_target(self, rng: np.random.Generator) -> None:
        def wave(amp: tuple[float, float], hz: tuple[float, float]) -> tuple[float, float, float]:
            """(amplitude, angular frequency, phase) of one random sinusoid."""
            return float(rng.uniform(*amp)), _TWO_PI * float(rng.uniform(*hz)), float(rng.uniform(0, _TWO_PI))

        r0 = float(rng.uniform(0.5, 0.7))
        ar, wr, phr = wave((0.05, 0.15), (0.1, 0.4))
        th0 = float(rng.uniform(-math.pi / 2, math.pi / 2)) + self.target_shift
        a1, w1, p1 = wave((0.3, 0.6), (0.1, 0.3))
        a2, w2, p2 = wave((0.05, 0.2), (0.3, 0.6))
        self._path = (r0, ar, wr, phr, th0, a1, w1, p1, a2, w2, p2)
        self._set_target(0.0)

    def _set_target(self, t: float) -> None:
        r0, ar, wr, phr, th0, a1, w1, p1, a2, w2, p2 = self._path
        r = r0 + ar * math.sin(wr * t + phr)
        th = th0 + a1 * math.sin(w1 * t + p1) + a2 * math.sin(w2 * t + p2)
        self._tx, self._ty = r * math.cos(th), r * math.sin(th)

    def _move_target(self) -> None:
        self._set_target(self._t * self.dt)
