"""The search: the cross-entropy method over held actions in the world model (:func:`cem_search`).

Why CEM rather than MPPI is explained in :mod:`continuonbrain.sim.imagine`. :class:`SearchConfig`
holds every parameter of a run (all recorded in each episode's metadata).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from continuonbrain.config_base import ConfigModel
from continuonbrain.sim.imagine.starts import StartState
from continuonbrain.sim.imagine.world_model import WorldModel

#: Search methods `imagine` implements (the CLI's ``--method`` choices).
METHODS = ("cem",)


class SearchConfig(ConfigModel):
    """Parameters of the search (all recorded in each episode's metadata). A strict
    :class:`~continuonbrain.config_base.ConfigModel`: a bad value or an unknown key raises
    :class:`~continuonbrain.config_base.ConfigError` naming the field."""

    method: str = "cem"
    """Search method; only "cem" (see the module doc for why)."""
    horizon: int = Field(8, ge=1)
    """Mid steps planned per episode (each ``mid_every`` control steps: 8 = 1.6 s at 50 Hz)."""
    history: int = Field(2, ge=0)
    """Real Mid ticks stepped through the Mid loop before the start (the start tick excluded).
    With the horizon it should fit the Mid loop's training window (2 s = 10 ticks)."""
    population: int = Field(64, ge=1)
    """CEM candidates per start and iteration."""
    elites: int = Field(8, ge=1)
    """Candidates refitted per iteration (the elite set); at most ``population``."""
    iterations: int = Field(5, ge=1)
    init_std: float = Field(0.6, gt=0)
    """Initial std of the sampling Gaussian, in normalised action units ([-1, 1] = the bounds)."""
    min_std: float = Field(0.05, gt=0)
    """Floor of the std, so the search never collapses to a single point before its end."""
    final_weight: float = Field(1.0, ge=0)
    """Weight of the final-tick cost added to the mean cost over the horizon."""
    oversample: float = Field(2.0, ge=1)
    """Start states searched per requested episode (the worst are dropped)."""
    max_final_cost: float | None = Field(None, gt=0)
    """Drop trajectories whose predicted final cost is above this; None: the goal's default."""
    batch_starts: int = Field(16, ge=1)
    """Start states searched at once: memory holds ``batch_starts * population`` rollouts."""
    seed: int = 0

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown search method {value!r} (known: {', '.join(METHODS)})")
        return value

    @model_validator(mode="after")
    def _elites_fit(self) -> Self:
        if self.elites > self.population:
            raise ValueError(f"elites ({self.elites}) must be <= population ({self.population})")
        return self


@dataclass
class SearchResult:
    """The best sequence found per start: robot-unit ``actions [B, H, A]``, predicted ``obs
    [B, H + 1, D]`` (index 0 is the real start), ``tick_costs [B, H]``, ``cost [B]`` (the
    search objective) and ``final_cost [B]`` (the predicted cost at the last tick)."""

    actions: Tensor
    obs: Tensor
    tick_costs: Tensor
    cost: Tensor
    final_cost: Tensor


@torch.inference_mode()
def cem_search(
    world: WorldModel, starts: list[StartState], cfg: SearchConfig, generator: torch.Generator
) -> SearchResult:
    """The cross-entropy method over ``cfg.horizon`` held actions, for all ``starts`` at once.

    Per iteration: sample ``population`` sequences per start from a diagonal Gaussian (in
    normalised action units, clipped to the bounds), roll them out, keep the ``elites``
    cheapest, refit mean and std to them (std floored at ``min_std``). The best sequence
    ever sampled is returned, so the result never gets worse with more iterations.
    """
    codes0, state0, start_obs = world.prepare(starts)
    b, h, a = len(starts), cfg.horizon, world.config.action_dim
    mean = torch.zeros(b, h, a)
    std = torch.full((b, h, a), float(cfg.init_std))
    best_cost = torch.full((b,), math.inf)
    best_actions = torch.zeros(b, h, a)
    best_ticks = torch.zeros(b, h)
    best_obs = torch.zeros(b, h + 1, world.config.obs_dim)
    rows = torch.arange(b)
    for it in range(cfg.iterations):
        noise = torch.randn(b, cfg.population, h, a, generator=generator)
        samples = (mean[:, None] + std[:, None] * noise).clamp(-1.0, 1.0)
        if it > 0:
            samples[:, 0] = mean
        cost, ticks, obs = world.evaluate(codes0, state0, start_obs, samples, cfg.final_weight)
        order = torch.argsort(cost, dim=1, stable=True)
        elite = samples[rows[:, None], order[:, : cfg.elites]]  # [B, E, H, A]
        mean = elite.mean(1)
        std = elite.std(1, unbiased=False).clamp_min(cfg.min_std) if cfg.elites > 1 else std.clamp_min(cfg.min_std)
        top = order[:, 0]
        better = cost[rows, top] < best_cost
        best_cost = torch.where(better, cost[rows, top], best_cost)
        best_actions[better] = samples[rows, top][better]
        best_ticks[better] = ticks[rows, top][better]
        best_obs[better] = obs[rows, top][better]
    best_obs[:, 0] = start_obs
    return SearchResult(
        actions=world.mid.actions.denormalize(best_actions),
        obs=best_obs,
        tick_costs=best_ticks,
        cost=best_cost,
        final_cost=best_ticks[:, -1],
    )
