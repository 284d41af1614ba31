"""Episode building: one searched plan as an ordinary RLDS episode, tagged imagined.

What each step of an imagined episode holds is explained in :mod:`continuonbrain.sim.imagine`.
"""

from __future__ import annotations

import socket
from typing import Any

import numpy as np
import torch

import continuonbrain
from continuonbrain.rlds import Episode
from continuonbrain.sim.imagine.cem import SearchConfig
from continuonbrain.sim.imagine.starts import StartState
from continuonbrain.sim.imagine.world_model import ModelInfo, WorldModel


def imagined_episode(
    start: StartState,
    actions: np.ndarray,
    tick_obs: np.ndarray,
    tick_costs: np.ndarray,
    *,
    world: WorldModel,
    info: ModelInfo,
    cfg: SearchConfig,
    max_final_cost: float,
    rank: int,
) -> Episode:
    """One imagined RLDS episode at the control rate (see the module doc for what each step holds)."""
    m, hz = world.mid_every, float(world.config.control_hz)
    horizon = actions.shape[0]
    rows: list[dict[str, Any]] = []
    n_steps = horizon * m
    frac = np.arange(m, dtype=np.float64) / m
    obs_steps = np.concatenate(
        [tick_obs[j][None] + frac[:, None] * (tick_obs[j + 1] - tick_obs[j])[None] for j in range(horizon)]
    ).astype(np.float32)  # [H * m, D]
    next_obs = np.concatenate([obs_steps[1:], tick_obs[-1:]]).astype(np.float32)
    goal = world.goal
    with torch.inference_mode():
        rewards = -goal.cost(torch.from_numpy(next_obs), torch.from_numpy(start.observation)[None]).numpy()
    for t in range(n_steps):
        j, i = divmod(t, m)
        source = "real" if t == 0 else ("decoded" if i == 0 else "interpolated")
        rows.append(
            {
                "observation": obs_steps[t],
                "action": actions[j].astype(np.float32),
                "reward": float(rewards[t]),
                "discount": 1.0,
                "is_first": t == 0,
                "is_last": t == n_steps - 1,
                "is_terminal": False,
                "timestamp": t / hz,
                "step_metadata": {"obs_source": source, "mid_step": str(j)},
            }
        )
    origin = f"imagined:{cfg.method}:{info.version}"
    src = start.source_metadata
    env_id = goal.env_id
    meta: dict[str, Any] = {
        "schema_version": "1.1",
        "episode_id": f"imagined-{env_id}-{_short(info.version)}-s{cfg.seed}-{start.index:06d}",
        "robot_id": src.get("robot_id") or f"sim-{env_id}",
        "robot_model": src.get("robot_model"),
        "xr_mode": "none",
        "control_role": "planner",
        "environment_id": env_id,
        "tags": ["imagined", env_id, cfg.method],
        "software": {"name": "continuonbrain", "version": continuonbrain.__version__},
        "capabilities": src.get("capabilities") or {},
        "control_hz": _hz_value(hz),
        "safety": src.get("safety")
        or {
            "pii_attestation": "synthetic",
            "pii_cleared": True,
            "pii_redacted": False,
            "pending_review": False,
            "content_rating": "general",
        },
        "share": src.get("share") or {"public": False},
        "provenance": {
            "origin": origin,
            "source_commit": "",
            "source_host": socket.gethostname(),
            "notes": (
                f"imagined by {cfg.method} in the Mid-loop world model {info.version} ({info.slot} of "
                f"{info.model_root}) from step {start.step} of episode {start.episode_id}; observations after "
                "step 0 are world-model predictions, not measurements"
            ),
            "source_episode": start.episode_id,
            "source_step": start.step,
        },
        "imagination": {
            "method": cfg.method,
            "model_version": info.version,
            "model_slot": info.slot,
            "model_root": info.model_root,
            "source_rlds_dir": info.rlds_dir,
            "world_model": "mid_loop (most likely tokens fed back) + vqvae decoder",
            "observations": {
                "step_0": "real (the source episode's observation at source_step)",
                "mid_ticks": f"decoded world-model predictions, every {m} control steps",
                "between_ticks": "linear interpolation of the two neighbouring tick observations",
                "pinned": list(goal.pinned_names),
            },
            "actions": f"planned, each held for {m} control steps (one Mid step)",
            "reward": "minus the goal cost of the next observation (no success bonus); never terminal",
            "goal": {"env": env_id, "cost": goal.description, "max_final_cost": max_final_cost},
            "search": cfg.to_dict(),
            "mid_every": m,
            "predicted_cost": float(objective(tick_costs, cfg.final_weight)),
            "predicted_final_cost": float(tick_costs[-1]),
            "predicted_tick_costs": [round(float(c), 6) for c in tick_costs],
            "rank": rank,
        },
        "episode_index": start.index,
    }
    return Episode.from_steps(rows, meta)


def objective(tick_costs: np.ndarray, final_weight: float) -> float:
    """The search objective of one plan: the mean tick cost plus ``final_weight`` times the last."""
    return float(np.mean(tick_costs) + final_weight * tick_costs[-1])


def _short(version: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in version)[:40]


def _hz_value(hz: float) -> float | int:
    value = round(hz, 6)
    return int(value) if float(value).is_integer() else value
