"""Orchestration: :func:`imagine_to_dir`, from a model store and real episodes to imagined ones on disk."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from continuonbrain.rlds import Episode, write_episodes
from continuonbrain.sim.imagine.cem import SearchConfig, cem_search
from continuonbrain.sim.imagine.episodes import imagined_episode, objective
from continuonbrain.sim.imagine.errors import ImagineError
from continuonbrain.sim.imagine.starts import StartState, detect_env, select_starts
from continuonbrain.sim.imagine.world_model import open_slot, world_model_from_slot


@dataclass(order=True)
class _Kept:
    """A heap entry: ordered so that the heap's top is the *worst* kept trajectory."""

    neg_cost: float
    neg_index: int
    start: StartState = field(compare=False)
    actions: np.ndarray = field(compare=False)
    obs: np.ndarray = field(compare=False)
    ticks: np.ndarray = field(compare=False)


def imagine_to_dir(
    model_root: str | Path,
    out: str | Path,
    n_episodes: int,
    *,
    rlds_dir: str | Path | None = None,
    env: str | None = None,
    slot: str | None = None,
    search: SearchConfig | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Search ``n_episodes`` imagined episodes in the model's world model and write them under ``out``.

    ``rlds_dir`` defaults to the one recorded in the model's manifest, ``env`` to the
    ``environment_id`` of its first real episode. Returns a summary: ``out``, ``env``,
    ``method``, ``model_version``, ``slot``, ``rlds_dir``, ``requested``, ``episodes``
    (written), ``start_states``, ``dropped`` (predicted final cost too high), ``steps``,
    ``max_final_cost``, ``mean_predicted_cost``, ``mean_predicted_final_cost``, ``seed`` and
    the ``paths`` written.
    """
    cfg = search or SearchConfig()  # validated when built (and on every assignment)
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ImagineError(f"the number of episodes must be an integer >= 1, got {n_episodes!r}")
    model = open_slot(model_root, slot)  # fail on a missing model before looking at any data
    data = rlds_dir if rlds_dir is not None else model.rlds_dir()
    if not Path(data).exists():
        raise ImagineError(f"the episodes to start from are not there: {data} does not exist")
    env_id = env or detect_env(data)
    world, info = world_model_from_slot(model, env_id)
    info.rlds_dir = str(data)
    max_final = cfg.max_final_cost if cfg.max_final_cost is not None else world.goal.max_final_cost
    n_starts = math.ceil(n_episodes * cfg.oversample)
    starts = select_starts(data, n_starts, history=cfg.history, mid_every=world.mid_every, seed=cfg.seed, env=env_id)
    heap: list[_Kept] = []
    dropped = 0
    for chunk_no, lo in enumerate(range(0, len(starts), cfg.batch_starts)):
        chunk = starts[lo : lo + cfg.batch_starts]
        gen = torch.Generator().manual_seed(_chunk_seed(cfg.seed, chunk_no))
        res = cem_search(world, chunk, cfg, gen)
        for i, s in enumerate(chunk):
            final = float(res.final_cost[i])
            if not final <= max_final:
                dropped += 1
                continue
            item = _Kept(
                -float(res.cost[i]),
                -s.index,
                s,
                res.actions[i].numpy().copy(),
                res.obs[i].numpy().copy(),
                res.tick_costs[i].numpy().copy(),
            )
            if len(heap) < n_episodes:
                heapq.heappush(heap, item)
            else:
                heapq.heappushpop(heap, item)  # the worst of the kept ones leaves
        if on_progress is not None:
            on_progress({"searched": min(lo + cfg.batch_starts, len(starts)), "of": len(starts), "kept": len(heap)})
    ranked = sorted(heap, key=lambda k: (-k.neg_cost, -k.neg_index))
    rank_of = {id(k): r for r, k in enumerate(ranked)}
    kept = sorted(heap, key=lambda k: k.start.index)

    def episodes() -> Iterator[Episode]:
        for k in kept:
            yield imagined_episode(
                k.start,
                k.actions,
                k.obs,
                k.ticks,
                world=world,
                info=info,
                cfg=cfg,
                max_final_cost=max_final,
                rank=rank_of[id(k)],
            )

    paths = write_episodes(episodes(), out, format="continuon")
    costs = [objective(k.ticks, cfg.final_weight) for k in kept]
    finals = [float(k.ticks[-1]) for k in kept]
    return {
        "out": str(out),
        "env": env_id,
        "method": cfg.method,
        "model_version": info.version,
        "slot": info.slot,
        "rlds_dir": str(data),
        "requested": n_episodes,
        "episodes": len(kept),
        "start_states": len(starts),
        "dropped": dropped,
        "steps": len(kept) * cfg.horizon * world.mid_every,
        "max_final_cost": max_final,
        "mean_predicted_cost": float(np.mean(costs)) if costs else None,
        "mean_predicted_final_cost": float(np.mean(finals)) if finals else None,
        "seed": cfg.seed,
        "paths": [str(p) for p in paths],
    }


def _chunk_seed(seed: int, chunk: int) -> int:
    """Independent generator seeds per chunk of starts (SeedSequence mixing, as episode seeds)."""
    return int(np.random.SeedSequence([int(seed), int(chunk), 0x1A9]).generate_state(1, np.uint64)[0] >> 1)
