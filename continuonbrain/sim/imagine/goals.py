"""Goals: what the search drives the world model toward, per env (:data:`GOALS`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from continuonbrain.sim.imagine.errors import ImagineError


@dataclass(frozen=True)
class Goal:
    """What the search drives the world model toward in one env.

    ``cost(obs, start)`` maps decoded observations ``[..., D]`` (raw units) and the start
    observation (broadcastable) to a non-negative cost ``[...]``, lower is better.
    ``pinned``: observation indices the env holds constant within an episode; decoded values
    there are replaced by the start state's. ``max_final_cost``: default threshold on the
    predicted cost at the end of the horizon above which a trajectory is dropped.
    """

    env_id: str
    description: str
    obs_dim: int
    action_dim: int
    cost: Callable[[Tensor, Tensor], Tensor]
    pinned: tuple[int, ...] = ()
    pinned_names: tuple[str, ...] = ()
    max_final_cost: float = 0.1


def _tip_to_fixed_target(obs: Tensor, start: Tensor) -> Tensor:
    """reach2d: distance from the decoded tip (obs 8, 9) to the start state's target (obs 6, 7)."""
    return torch.linalg.vector_norm(obs[..., 8:10] - start[..., 6:8], dim=-1)


def _tip_to_moving_target(obs: Tensor, start: Tensor) -> Tensor:
    """track2d: distance from the decoded tip (obs 8, 9) to the decoded target (obs 6, 7),
    which moves, so the world model's prediction of it is what the plan must follow."""
    return torch.linalg.vector_norm(obs[..., 8:10] - obs[..., 6:8], dim=-1)


#: The per-env goals, keyed by env id. The built-in arm envs observe ``cos q1, sin q1, cos q2,
#: sin q2, dq1, dq2, target x, target y, tip x, tip y`` and act with two joint-velocity
#: commands in [-1, 1]; both goals put the tip on the target. ``max_final_cost`` is twice
#: reach2d's 5 cm success radius. An env missing here cannot be imagined in (ImagineError).
GOALS: dict[str, Goal] = {
    "reach2d": Goal(
        env_id="reach2d",
        description="distance from the predicted tip to the (static) target of the start state",
        obs_dim=10,
        action_dim=2,
        cost=_tip_to_fixed_target,
        pinned=(6, 7),
        pinned_names=("target_x", "target_y"),
        max_final_cost=0.1,
    ),
    "track2d": Goal(
        env_id="track2d",
        description="distance from the predicted tip to the predicted (moving) target",
        obs_dim=10,
        action_dim=2,
        cost=_tip_to_moving_target,
        max_final_cost=0.1,
    ),
}


def goal_for(env_id: str) -> Goal:
    """The registered goal of ``env_id``; :class:`ImagineError` for an env with none."""
    goal = GOALS.get(env_id)
    if goal is None:
        raise ImagineError(
            f"no known goal for env {env_id!r}: imagined rollouts search toward a goal, and goals are "
            f"known for {sorted(GOALS)} only (add one to GOALS in continuonbrain/sim/imagine/goals.py)"
        )
    return goal
