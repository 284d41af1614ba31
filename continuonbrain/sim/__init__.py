"""Built-in simulation: environments, scripted experts, episode collection.

Importing this package registers the built-in envs with gymnasium, so that
``gymnasium.make("reach2d")``, ``gymnasium.make("track2d")`` and ``gymnasium.make("drive2d")``
(the camera car) work (with env kwargs such as ``gymnasium.make("reach2d", target_shift=3.14,
gain=0.5)`` or ``gymnasium.make("drive2d", image_height=60, image_width=80)``). Registration
is skipped for an id that is already registered, so re-importing or reloading this module does
not trigger gymnasium's "overriding environment" warning.
"""

from __future__ import annotations

import gymnasium

from continuonbrain.sim.collect import collect_episodes, collect_to_dir, episode_seed, rollout
from continuonbrain.sim.drive2d import Drive2DEnv
from continuonbrain.sim.envs import CONTROL_HZ, OBSERVATION_NAMES, Reach2DEnv, Track2DEnv, TwoLinkArmEnv
from continuonbrain.sim.experts import BUILTIN_ENVS, ArmExpert, DriveExpert, RandomPolicy, has_expert, make_expert

_ENTRY_POINTS = {
    "reach2d": "continuonbrain.sim.envs:Reach2DEnv",
    "track2d": "continuonbrain.sim.envs:Track2DEnv",
    "drive2d": "continuonbrain.sim.drive2d:Drive2DEnv",
}


def register_envs() -> None:
    """Register the built-in env ids with gymnasium (idempotent).

    Truncation is done by the envs themselves (``max_steps``), not by a gymnasium
    ``TimeLimit`` wrapper, so an env built directly behaves like one built by ``make``.
    """
    for env_id, entry_point in _ENTRY_POINTS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point)


register_envs()

__all__ = [
    "BUILTIN_ENVS",
    "CONTROL_HZ",
    "OBSERVATION_NAMES",
    "ArmExpert",
    "Drive2DEnv",
    "DriveExpert",
    "RandomPolicy",
    "Reach2DEnv",
    "Track2DEnv",
    "TwoLinkArmEnv",
    "collect_episodes",
    "collect_to_dir",
    "episode_seed",
    "has_expert",
    "make_expert",
    "register_envs",
    "rollout",
]
