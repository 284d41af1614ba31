"""Live simulations for the Robot Editor: the built-in arm envs and the camera car, one tick per request.

The Robot Editor's live-sim panel shows ``reach2d`` driven by the *served* policy: the page
asks this module for the arm's observation, sends it to ``/api/infer`` exactly as a robot
would, and sends the action back here. The physics stays in Python (:mod:`continuonbrain.sim`),
the one implementation the policy was trained and evaluated on, rather than a JavaScript
copy that could drift from it. Clicking the canvas moves the target
(:meth:`~continuonbrain.sim.envs.Reach2DEnv.move_target`).

The camera car (``drive2d``, :mod:`continuonbrain.runtime.live_car`) is driven by the
served brain on the server instead (:meth:`LiveSims.drive`): its observation is a camera frame,
which the page only needs to *see*, a few times a second, as a JPEG.

A live sim never truncates (it runs until the page leaves) and keeps stepping after a success,
so the arm can be seen holding the target and then chasing the next click. Sims are few
(:data:`MAX_SIMS`, least recently used dropped first) and expire after :data:`SIM_TTL_S`
without a step, so an open tab costs a few hundred bytes and a closed one nothing.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from continuonbrain.runtime.live_car import ActFn, CarRun, apply_action, car_state, drive_tick, new_car
from continuonbrain.sim.drive2d import Drive2DEnv
from continuonbrain.sim.envs import Reach2DEnv, Track2DEnv, TwoLinkArmEnv

LIVE_ENVS: dict[str, type[TwoLinkArmEnv]] = {"reach2d": Reach2DEnv, "track2d": Track2DEnv}
#: The camera car: driven by the served brain on the server (:meth:`LiveSims.drive`).
CAR_ENV = "drive2d"
MAX_SIMS = 16
SIM_TTL_S = 600.0
#: Effectively never truncate: the page decides when a sim ends.
NEVER = 10**9


class SimNotFound(KeyError):
    """No live sim with that id (never made, expired or evicted): the API answers 404."""


@dataclass
class _Sim:
    sim_id: str
    env_id: str
    env: TwoLinkArmEnv | Drive2DEnv
    obs: Any  # the arm's float vector, or the car's {"cam/image_array": frame}
    last_used: float
    steps: int = 0
    reward: float = 0.0
    success: bool = False
    car: CarRun | None = None  # set for the camera car
    lock: threading.Lock = field(default_factory=threading.Lock)


class LiveSims:
    """The live sims of this server; thread-safe (the API serves requests from a pool)."""

    def __init__(self, max_sims: int = MAX_SIMS, ttl_s: float = SIM_TTL_S):
        self.max_sims = max_sims
        self.ttl_s = ttl_s
        self._sims: OrderedDict[str, _Sim] = OrderedDict()
        self._lock = threading.Lock()

    def reset(
        self,
        env_id: str = "reach2d",
        seed: int | None = None,
        target: tuple[float, float] | None = None,
        sim_id: str | None = None,
        image_shape: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """A new episode: in the sim ``sim_id`` if it still exists, else in a new sim.
        ``image_shape``: the camera car's ``(H, W)`` (the served brain's camera)."""
        car: CarRun | None = None
        if env_id == CAR_ENV:
            if target is not None:
                raise ValueError("only reach2d targets can be placed (the car drives its track)")
            env, obs, car = new_car(seed, image_shape)
        elif env_id in LIVE_ENVS:
            env = LIVE_ENVS[env_id](max_steps=NEVER)
            obs, _ = env.reset(seed=seed)
            if target is not None:
                obs = self._move(env, target)
        else:
            raise ValueError(f"env must be one of {sorted([*LIVE_ENVS, CAR_ENV])}, got {env_id!r}")
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            if sim_id is None or sim_id not in self._sims:
                sim_id = secrets.token_hex(8)
            sim = _Sim(sim_id, env_id, env, obs, now, car=car)
            self._sims[sim_id] = sim
            self._sims.move_to_end(sim_id)
            while len(self._sims) > self.max_sims:
                self._sims.popitem(last=False)
        if car is not None:
            return _car_state(sim, frame=True, geometry=True)
        assert isinstance(env, TwoLinkArmEnv)
        return _state(sim, reward=0.0, distance=env.distance())

    def step(self, sim_id: str, action: Any, target: tuple[float, float] | None = None) -> dict[str, Any]:
        """One control tick with ``action`` (clipped to [-1, 1]); ``target`` first moves the target."""
        sim = self._get(sim_id)
        with sim.lock:
            if sim.car is not None:  # a manual action for the car (teleop from a client)
                if target is not None:
                    raise ValueError("only reach2d targets can be placed (the car drives its track)")
                assert isinstance(sim.env, Drive2DEnv)
                sim.obs = apply_action(sim.env, sim.car, action)
                sim.steps += 1
                return _car_state(sim, frame=False, geometry=False)
            if target is not None:
                self._move(sim.env, target)
                sim.success = False
            obs, reward, terminated, _, info = sim.env.step(action)
            sim.obs, sim.steps, sim.reward = obs, sim.steps + 1, float(reward)
            sim.success = sim.success or bool(terminated and info.get("success"))
            return _state(sim, reward=float(reward), distance=float(info["distance"]), info=info)

    def drive(self, sim_id: str, act: ActFn, frame: bool = False, geometry: bool = False) -> dict[str, Any]:
        """One tick of the camera car ``sim_id`` driven by ``act`` (the served brain's
        :meth:`~continuonbrain.runtime.brain_service.BrainService.act`), in a session of its own.
        ``frame``: include the camera picture; ``geometry``: the track map."""
        sim = self._get(sim_id)
        with sim.lock:
            if sim.car is None:
                raise ValueError(f"live sim {sim_id} is {sim.env_id}, not the camera car: drive the arm via /api/infer")
            assert isinstance(sim.env, Drive2DEnv)
            sim.obs = drive_tick(sim.env, sim.obs, sim.car, act, session_id=f"live-sim-{sim_id}")
            sim.steps += 1
            return _car_state(sim, frame=frame, geometry=geometry)

    def close(self, sim_id: str) -> bool:
        with self._lock:
            return self._sims.pop(sim_id, None) is not None

    def __len__(self) -> int:
        return len(self._sims)

    def _get(self, sim_id: str) -> _Sim:
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            sim = self._sims.get(sim_id)
            if sim is None:
                raise SimNotFound(sim_id)
            sim.last_used = now
            self._sims.move_to_end(sim_id)
            return sim

    def _expire(self, now: float) -> None:
        while self._sims:
            oldest = next(iter(self._sims.values()))
            if now - oldest.last_used <= self.ttl_s:
                break
            self._sims.popitem(last=False)

    @staticmethod
    def _move(env: TwoLinkArmEnv, target: tuple[float, float]) -> np.ndarray:
        if not isinstance(env, Reach2DEnv):
            raise ValueError("only reach2d targets can be placed (track2d's target moves by itself)")
        env.move_target(*target)
        return env._obs()


def _car_state(sim: _Sim, *, frame: bool, geometry: bool) -> dict[str, Any]:
    assert sim.car is not None and isinstance(sim.env, Drive2DEnv)
    state = car_state(sim.env, sim.obs, sim.car, frame=frame, geometry=geometry)
    return {"sim_id": sim.sim_id, "env": sim.env_id, "steps": sim.steps, "control_hz": sim.env.control_hz, **state}


def _state(sim: _Sim, reward: float, distance: float, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the page draws: the observation for ``/api/infer`` and the arm's geometry."""
    env = sim.env
    l1, _ = env.link_lengths
    q1 = math.atan2(float(sim.obs[1]), float(sim.obs[0]))
    return {
        "sim_id": sim.sim_id,
        "env": sim.env_id,
        "observation": [float(v) for v in sim.obs],
        "elbow": [l1 * math.cos(q1), l1 * math.sin(q1)],
        "tip": [float(sim.obs[8]), float(sim.obs[9])],
        "target": [float(sim.obs[6]), float(sim.obs[7])],
        "link_lengths": list(env.link_lengths),
        "distance": distance,
        "in_target": bool(info.get("in_target")) if info else False,
        "success": sim.success,
        "reward": reward,
        "steps": sim.steps,
        "control_hz": env.control_hz,
    }
