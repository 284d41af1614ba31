"""The search: the cross-entropy method over held actions in the world model (:func:`cem_search`).

Why CEM rather than MPPI is explained in :mod:`continuonbrain.sim.imagine`. :class:`SearchConfig`
holds every parameter of a run (all recorded in each episode's metadata).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from continuonbrain.sim.imagine.errors import ImagineError
from continuonbrain.sim.imagine.starts import StartState
from continuonbrain.sim.imagine.world_model import WorldModel

#: Search methods `imagine` implements (the CLI's ``--method`` choices).
METHODS = ("cem",)


@dataclass
class SearchConfig:
    """Parameters of the search (all recorded in each episode's metadata)."""

    #: Search method; only "cem" (see the module doc for why).
    method: str = "cem"
    #: Mid steps planned per episode (each ``mid_every`` control steps: 8 = 1.6 s at 50 Hz).
    horizon: int = 8
    #: Real Mid ticks stepped through the Mid loop before the start (the start tick excluded).
    #: With the horizon it should fit the Mid loop's training window (2 s = 10 ticks).
    history: int = 2
    #: CEM candidates per start and iteration.
    population: int = 64
    #: Candidates refitted per iteration (the elite set).
    elites: int = 8
    iterations: int = 5
    #: Initial std of the sampling Gaussian, in normalised action units ([-1, 1] = the bounds).
    init_std: float = 0.6
    #: Floor of the std, so the search never collapses to a single point before its end.
    min_std: float = 0.05
    #: Weight of the final-tick cost added to the mean cost over the horizon.
    final_weight: float = 1.0
    #: Start states searched per requested episode (the worst are dropped).
    oversample: float = 2.0
    #: Drop trajectories whose predicted final cost is above this; None: the goal's default.
    max_final_cost: float | None = None
    #: Start states searched at once: memory holds ``batch_starts * population`` rollouts.
    batch_starts: int = 16
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ImagineError(f"unknown search method {self.method!r} (known: {', '.join(METHODS)})")
        for name in ("horizon", "population", "elites", "iterations", "batch_starts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ImagineError(f"search.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.history, int) or self.history < 0:
            raise ImagineError(f"search.history must be an integer >= 0, got {self.history!r}")
        if self.elites > self.population:
            raise ImagineError(f"search.elites ({self.elites}) must be <= search.population ({self.population})")
        for name in ("init_std", "min_std", "oversample"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ImagineError(f"search.{name} must be a positive number, got {value!r}")
        if self.oversample < 1:
            raise ImagineError(f"search.oversample must be >= 1, got {self.oversample}")
        if not (math.isfinite(self.final_weight) and self.final_weight >= 0):
            raise ImagineError(f"search.final_weight must be >= 0, got {self.final_weight}")
        if self.max_final_cost is not None and not (math.isfinite(self.max_final_cost) and self.max_final_cost > 0):
            raise ImagineError(f"search.max_final_cost must be a positive number, got {self.max_final_cost}")


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
