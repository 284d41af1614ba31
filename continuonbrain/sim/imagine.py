"""Imagined rollouts: offline search in the learned Mid-loop world model, written as RLDS episodes.

The HOPE Mid loop is a one-step world model over VQ-VAE tokens: given the tokens of the
current observation, the history in its SSM state and an action held for one Mid step
(``mid_every`` control steps, 200 ms at 50 Hz), it predicts the tokens of the observation one
Mid step later (:meth:`~continuonbrain.hope.mid_loop.MidLoop.next_logits`). This module
plans in that model and turns the plans into training data:

1. **Start states** are drawn (seeded) from the steps of real episodes: the ``rlds_dir``
   recorded in the model's manifest, or an explicit one. Imagined episodes found there are
   skipped: imagining from imagined states would compound the model's errors.
2. **History**: the real observations at the ``history`` Mid ticks before the start (every
   ``mid_every`` steps, as the Mid loop was trained) are tokenized and stepped through the
   Mid loop with the mean real action of each interval, so the search starts from the
   state the world model would have on the robot at that moment.
3. **Search**: the cross-entropy method (CEM, below) over sequences of ``horizon``
   actions, each held for one Mid step, rolled forward in token space (most likely tokens,
   fed back) and decoded with the VQ-VAE decoder to score them against the env's goal
   (:data:`GOALS`).
4. **Selection**: each start keeps its best sequence; sequences whose *predicted final*
   cost is above ``max_final_cost`` are dropped, and of the rest the ``n`` with the lowest
   predicted cost are kept (a bounded heap: memory holds ``n`` trajectories, not all).
5. **Output**: ordinary RLDS episodes in the Continuon layout, tagged ``imagined`` with
   ``provenance.origin = "imagined:cem:<model version>"`` (the DESIGN contract the
   trainer's ``max_imagined_fraction`` cap recognises), the search parameters and the
   predicted costs in ``metadata["imagination"]``.

What the observations of an imagined episode are, honestly: step 0 is the real observation
of the source episode; the observation at every Mid tick after it is the VQ-VAE decoding of
the world model's predicted tokens (a prediction, never simulated or measured); the
``mid_every - 1`` control steps between two ticks are linear interpolations of the two tick
observations, because the world model has no finer time resolution. Each step says which in
``step_metadata["obs_source"]`` (``real``, ``decoded``, ``interpolated``). Observation fields
that the env holds constant during an episode (the reach2d target) are pinned to the start
state's values (listed in ``metadata["imagination"]["observations"]["pinned"]``): the world
model's quantisation noise on them is not information. Actions are the planned ones, held
for ``mid_every`` steps. ``reward`` is minus the goal cost of the next observation (no
success bonus), and ``is_terminal`` is always false: the world model predicts no termination.

Why CEM rather than MPPI: the world model decodes the *most likely* tokens, so the predicted
cost is piecewise constant in the actions (it only changes when a token flips). CEM ranks
the candidates and refits a Gaussian to the elite fraction, which needs no gradient and is
invariant to the scale of the cost; MPPI's exponential weighting needs a temperature matched
to the cost scale, which differs per env and per model, and on plateaus it averages
candidates that tie. CEM here is vectorised over start states and candidates (one batched
Mid-loop step per horizon step for all of them), keeps the best sequence ever sampled per
start (so more iterations never make the result worse), and re-inserts the current mean as
a candidate from the second iteration on.

Bounded memory: start states are chosen in a first streaming pass that keeps episode
lengths only, and their histories extracted in a second one; the search runs
``batch_starts`` starts at a time (``batch_starts * population`` rollouts), and only the
kept trajectories are held until writing. Seeded and deterministic: the same model, data,
parameters and seed give the same episodes (on one torch build and thread count: float sums
in other orders can flip a most-likely token).
"""

from __future__ import annotations

import heapq
import json
import math
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import continuonbrain
from continuonbrain.hope import HopeConfig, list_components, load_component
from continuonbrain.hope.mid_loop import MidLoop, MidState
from continuonbrain.hope.vqvae import VQVAE
from continuonbrain.rlds import Episode, read_episodes, write_episodes

__all__ = [
    "GOALS",
    "METHODS",
    "Goal",
    "ImagineError",
    "SearchConfig",
    "SearchResult",
    "StartState",
    "WorldModel",
    "cem_search",
    "goal_for",
    "imagine_to_dir",
    "imagined_episode",
    "load_world_model",
    "select_starts",
]

#: Search methods `imagine` implements (the CLI's ``--method`` choices).
METHODS = ("cem",)


class ImagineError(RuntimeError):
    """Imagination cannot run: no model, no world model in it, no data, an env without a goal."""


# --------------------------------------------------------------------------- goals


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
            f"known for {sorted(GOALS)} only (add one to GOALS in continuonbrain/sim/imagine.py)"
        )
    return goal


# --------------------------------------------------------------------------- parameters


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


# --------------------------------------------------------------------------- the world model


@dataclass
class ModelInfo:
    """Where the world model came from (recorded in every episode)."""

    model_root: str
    slot: str
    version: str
    rlds_dir: str | None


class WorldModel:
    """The frozen VQ-VAE and Mid loop of one model slot, with a goal to score decoded predictions."""

    def __init__(self, vqvae: VQVAE, mid: MidLoop, goal: Goal):
        cfg: HopeConfig = mid.config
        if cfg.image_keys or cfg.state_keys:
            raise ImagineError(
                "imagined rollouts need a model of vector observations (the built-in envs); this one reads "
                f"dict observations (state_keys={cfg.state_keys}, image_keys={cfg.image_keys})"
            )
        if (cfg.obs_dim, cfg.action_dim) != (goal.obs_dim, goal.action_dim):
            raise ImagineError(
                f"the model observes {cfg.obs_dim} and acts with {cfg.action_dim} values, the goal of "
                f"{goal.env_id!r} expects {goal.obs_dim} and {goal.action_dim}: is it a model of another env?"
            )
        self.vqvae, self.mid, self.goal, self.config = vqvae.eval(), mid.eval(), goal, cfg
        self.mid_every = cfg.mid_every
        self._pinned = torch.tensor(goal.pinned, dtype=torch.long)

    # -- pieces

    def decode(self, codes: Tensor, start_obs: Tensor) -> Tensor:
        """Tokens ``[R, ..., T]`` -> raw observations ``[R, ..., D]``, pinned fields from ``start_obs [R, D]``."""
        obs = self.vqvae.decode(codes).observation
        assert obs is not None
        if len(self._pinned):
            view = start_obs.reshape(start_obs.shape[0], *([1] * (obs.dim() - 2)), -1)
            obs[..., self._pinned] = view[..., self._pinned].expand(*obs.shape[:-1], len(self._pinned))
        return obs

    def prepare(self, starts: list[StartState]) -> tuple[Tensor, MidState, Tensor]:
        """Tokenize the starts and step their histories: ``(codes [B, T], state, start_obs [B, D])``.

        The returned state has seen every history tick and holds, as ``last_action``, the mean
        action of the interval that ended at the start (zeros without history), so that the
        first rollout step observes the start tick exactly as the Mid loop does on the robot.
        """
        obs = torch.from_numpy(np.stack([s.tick_obs for s in starts]))  # [B, K+1, D]
        prev = torch.from_numpy(np.stack([s.tick_prev_action for s in starts]))  # [B, K+1, A], robot units
        valid = torch.from_numpy(np.stack([s.tick_valid for s in starts]))  # [B, K+1]
        # Normalised as in training (clamped to the bounds); the first real tick of a row gets a
        # zero previous action in normalised units, as the first tick of a Mid training window.
        first = valid & ~torch.nn.functional.pad(valid[:, :-1], (1, 0))
        prev_n = torch.where(first[..., None], 0.0, self.mid.actions.normalize(prev).clamp(-1.0, 1.0))
        codes, _ = self.vqvae.encode(obs)
        state = self.mid.init_state(len(starts))
        for k in range(obs.shape[1] - 1):
            state.last_action = prev_n[:, k]
            _, new = self.mid.step(codes[:, k], state)
            v = valid[:, k, None]
            state = MidState(
                h=[torch.where(v, hn, ho) for hn, ho in zip(new.h, state.h, strict=True)],
                last_action=state.last_action,
                y=new.y,
            )
        state.last_action = prev_n[:, -1]
        return codes[:, -1], state, obs[:, -1]

    def rollout(self, codes0: Tensor, state0: MidState, actions_n: Tensor) -> Tensor:
        """Predicted tokens ``[R, H + 1, T]`` (start included) under normalised actions ``[R, H, A]``.

        Each action is held for one Mid step; the most likely tokens are fed back (the
        deterministic mode of :meth:`MidLoop.imagine`, without keeping the logits).
        """
        state, cur, seq = state0, codes0, [codes0]
        for j in range(actions_n.shape[1]):
            _, state = self.mid.step(cur, state)
            a_n = actions_n[:, j]
            cur = self.mid.next_logits(state, self.mid.actions.denormalize(a_n)).argmax(-1)
            state.last_action = a_n
            seq.append(cur)
        return torch.stack(seq, 1)

    def tick_costs(self, obs: Tensor, start_obs: Tensor) -> Tensor:
        """Goal cost of every predicted tick after the start: ``obs [R, H + 1, D]`` -> ``[R, H]``."""
        return self.goal.cost(obs[:, 1:], start_obs[:, None, :])

    def evaluate(
        self, codes0: Tensor, state0: MidState, start_obs: Tensor, actions_n: Tensor, final_weight: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Score candidates: ``actions_n [B, N, H, A]`` (normalised) for ``B`` prepared starts.

        Returns ``(cost [B, N], tick_costs [B, N, H], obs [B, N, H + 1, D])``, where
        ``cost = mean(tick_costs) + final_weight * tick_costs[..., -1]``.
        """
        b, n, h, a = actions_n.shape
        rep = MidState(
            h=[x.repeat_interleave(n, 0) for x in state0.h],
            last_action=state0.last_action.repeat_interleave(n, 0),
            y=None,
        )
        start_rep = start_obs.repeat_interleave(n, 0)
        codes = self.rollout(codes0.repeat_interleave(n, 0), rep, actions_n.reshape(b * n, h, a))
        obs = self.decode(codes, start_rep)
        ticks = self.tick_costs(obs, start_rep)
        cost = ticks.mean(-1) + final_weight * ticks[:, -1]
        return cost.reshape(b, n), ticks.reshape(b, n, h), obs.reshape(b, n, h + 1, -1)


def _slot_dir(model_root: Path, slot: str | None) -> tuple[Path, str]:
    if not model_root.is_dir():
        raise ImagineError(f"no model store at {model_root}: train a model first (continuonbrain train)")
    if slot is not None:
        if slot not in ("current", "candidate"):
            raise ImagineError(f"unknown slot {slot!r} (expected 'current' or 'candidate')")
        if not (model_root / slot / "manifest.json").is_file():
            raise ImagineError(f"{model_root / slot} holds no model (no manifest.json)")
        return model_root / slot, slot
    for name in ("current", "candidate"):
        if (model_root / name / "manifest.json").is_file():
            return model_root / name, name
    raise ImagineError(
        f"no model in {model_root}: neither current/ nor candidate/ holds a manifest.json (train one first)"
    )


def load_world_model(model_root: str | Path, env: str, slot: str | None = None) -> tuple[WorldModel, ModelInfo]:
    """The world model of ``<model_root>/<slot>`` (default: current, else candidate) for ``env``'s goal."""
    goal = goal_for(env)
    root = Path(model_root)
    directory, slot_name = _slot_dir(root, slot)
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ImagineError(f"{manifest_path}: unreadable manifest ({exc})") from None
    have = list_components(directory)
    missing = [c for c in ("vqvae", "mid_loop") if c not in have]
    if missing:
        raise ImagineError(
            f"{directory} has no world model: component(s) {missing} missing (it has {have}); imagined "
            "rollouts need the VQ-VAE and the Mid loop"
        )
    try:
        vqvae = load_component(directory, "vqvae")
        mid = load_component(directory, "mid_loop")
    except (ValueError, FileNotFoundError) as exc:
        raise ImagineError(f"{directory}: cannot load the world model: {exc}") from None
    info = ModelInfo(
        model_root=str(root),
        slot=slot_name,
        version=str(manifest.get("version") or "unversioned"),
        rlds_dir=manifest.get("rlds_dir"),
    )
    return WorldModel(vqvae, mid, goal), info  # type: ignore[arg-type]


# --------------------------------------------------------------------------- start states


@dataclass
class StartState:
    """A real state to imagine from, with the Mid-tick history that leads to it.

    ``tick_obs [K + 1, D]``: the observations at the ``K`` history ticks and the start
    (left-padded with zeros where the episode began later, ``tick_valid`` false there).
    ``tick_prev_action [K + 1, A]``: the mean real action of the interval before each tick
    (zeros for the first real tick, as at the start of a Mid training window).
    """

    index: int
    episode_id: str
    step: int
    observation: np.ndarray
    tick_obs: np.ndarray
    tick_prev_action: np.ndarray
    tick_valid: np.ndarray
    source_metadata: dict[str, Any]


def _eligible(path: str | Path, env: str | None) -> Iterator[tuple[Episode, str | None]]:
    """Real episodes of ``path`` (imagined ones are skipped), with their environment id."""
    for ep in read_episodes(path, on_error="warn"):
        if ep.is_imagined:
            continue
        env_id = ep.metadata.get("environment_id")
        if env is not None and env_id not in (None, env):
            raise ImagineError(f"episode {ep.episode_id} in {path} was recorded in {env_id!r}, not {env!r}")
        yield ep, env_id


def detect_env(path: str | Path) -> str:
    """The ``environment_id`` of the first real episode under ``path``."""
    for ep, env_id in _eligible(path, None):
        if not env_id:
            raise ImagineError(f"episode {ep.episode_id} in {path} has no environment_id: pass the env explicitly")
        return str(env_id)
    raise ImagineError(f"no real (non-imagined) episodes in {path} to start imagining from")


def select_starts(
    path: str | Path, n: int, *, history: int, mid_every: int, seed: int = 0, env: str | None = None
) -> list[StartState]:
    """``n`` start states drawn uniformly (seeded) over the steps of the real episodes under ``path``.

    Two streaming passes: the first keeps only episode lengths, the second extracts each
    chosen start's history. Steps are drawn without replacement while there are enough of them.
    """
    lengths = [len(ep) for ep, _ in _eligible(path, env)]
    total = int(sum(lengths))
    if total == 0:
        raise ImagineError(f"no real (non-imagined) episodes in {path} to start imagining from")
    rng = np.random.default_rng([int(seed), 0x1A9])
    flat = np.sort(rng.choice(total, size=n, replace=n > total))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ep_of = np.searchsorted(offsets, flat, side="right") - 1
    wanted: dict[int, list[tuple[int, int]]] = {}
    for order, (e, g) in enumerate(zip(ep_of.tolist(), flat.tolist(), strict=True)):
        wanted.setdefault(e, []).append((order, g - int(offsets[e])))
    starts: list[StartState] = []
    for e, (ep, _) in enumerate(_eligible(path, env)):
        if e not in wanted:
            continue
        obs, act = ep.observation_vector(), ep.action_vector()
        meta = {k: ep.metadata.get(k) for k in ("robot_id", "robot_model", "environment_id", "capabilities")}
        meta["safety"], meta["share"] = ep.metadata.get("safety"), ep.metadata.get("share")
        for order, t0 in wanted[e]:
            starts.append(_start_state(order, ep.episode_id, t0, obs, act, history, mid_every, meta))
    starts.sort(key=lambda s: s.index)
    return starts


def _start_state(
    index: int,
    episode_id: str,
    t0: int,
    obs: np.ndarray,
    act: np.ndarray,
    history: int,
    mid_every: int,
    meta: dict[str, Any],
) -> StartState:
    k1 = history + 1
    ticks = [t0 - k * mid_every for k in range(history, -1, -1)]
    tick_obs = np.zeros((k1, obs.shape[1]), np.float32)
    prev = np.zeros((k1, act.shape[1]), np.float32)
    valid = np.zeros(k1, bool)
    first = True
    for i, t in enumerate(ticks):
        if t < 0:
            continue
        tick_obs[i], valid[i] = obs[t], True
        if not first:
            prev[i] = act[ticks[i - 1] : t].mean(0)
        first = False
    return StartState(index, episode_id, t0, obs[t0].astype(np.float32), tick_obs, prev, valid, meta)


# --------------------------------------------------------------------------- the search


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


# --------------------------------------------------------------------------- episodes


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
            "search": asdict(cfg),
            "mid_every": m,
            "predicted_cost": float(_objective(tick_costs, cfg.final_weight)),
            "predicted_final_cost": float(tick_costs[-1]),
            "predicted_tick_costs": [round(float(c), 6) for c in tick_costs],
            "rank": rank,
        },
        "episode_index": start.index,
    }
    return Episode.from_steps(rows, meta)


def _objective(tick_costs: np.ndarray, final_weight: float) -> float:
    return float(np.mean(tick_costs) + final_weight * tick_costs[-1])


def _short(version: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in version)[:40]


def _hz_value(hz: float) -> float | int:
    value = round(hz, 6)
    return int(value) if float(value).is_integer() else value


# --------------------------------------------------------------------------- the whole


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
    cfg = search or SearchConfig()
    cfg.validate()
    if not isinstance(n_episodes, int) or n_episodes < 1:
        raise ImagineError(f"the number of episodes must be an integer >= 1, got {n_episodes!r}")
    root = Path(model_root)
    directory, _ = _slot_dir(root, slot)  # fail on a missing model before looking at any data
    data = rlds_dir if rlds_dir is not None else _manifest_rlds_dir(directory)
    if not Path(data).exists():
        raise ImagineError(f"the episodes to start from are not there: {data} does not exist")
    env_id = env or detect_env(data)
    world, info = load_world_model(root, env_id, slot)
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
    costs = [_objective(k.ticks, cfg.final_weight) for k in kept]
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


def _manifest_rlds_dir(directory: Path) -> str:
    try:
        manifest: Mapping[str, Any] = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise ImagineError(f"{directory / 'manifest.json'}: unreadable manifest ({exc})") from None
    value = manifest.get("rlds_dir")
    if not value:
        raise ImagineError(
            f"{directory / 'manifest.json'} records no rlds_dir: pass the episodes to start from (--rlds-dir)"
        )
    return str(value)


def _chunk_seed(seed: int, chunk: int) -> int:
    """Independent generator seeds per chunk of starts (SeedSequence mixing, as episode seeds)."""
    return int(np.random.SeedSequence([int(seed), int(chunk), 0x1A9]).generate_state(1, np.uint64)[0] >> 1)
