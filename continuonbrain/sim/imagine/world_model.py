"""The world model: the frozen VQ-VAE and Mid loop of one model store slot (:class:`WorldModel`).

:func:`open_slot` finds and verifies the slot through the model store
(:class:`~continuonbrain.models.store.ModelStore`: links resolved and kept inside the model
root, every file checked against its sha256 in the manifest), so nothing unverified is
loaded; :func:`load_world_model` loads the world model from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from continuonbrain.hope import HopeConfig, list_components, load_component
from continuonbrain.hope.mid_loop import MidLoop, MidState
from continuonbrain.hope.vqvae import VQVAE
from continuonbrain.models.store import SLOTS, ModelStore, StoreError
from continuonbrain.sim.imagine.errors import ImagineError
from continuonbrain.sim.imagine.goals import Goal, goal_for
from continuonbrain.sim.imagine.starts import StartState


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


# --------------------------------------------------------------------------- from the model store


@dataclass(frozen=True)
class ModelSlot:
    """A verified slot of a model store: the ``directory`` it holds (links resolved) and its manifest."""

    model_root: Path
    name: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest.get("version") or "unversioned")

    def rlds_dir(self) -> str:
        """The episodes the model was trained on, as its manifest records them."""
        value = self.manifest.get("rlds_dir")
        if not value:
            raise ImagineError(
                f"{self.directory / 'manifest.json'} records no rlds_dir: pass the episodes to start from (--rlds-dir)"
            )
        return str(value)


def open_slot(model_root: str | Path, slot: str | None = None) -> ModelSlot:
    """Slot ``slot`` of the store at ``model_root`` (default: current, else candidate), verified.

    Through :class:`~continuonbrain.models.store.ModelStore`: a slot link that leads nowhere or
    out of the model root, an unreadable manifest, or a file that does not match its sha256
    is an :class:`ImagineError`, before anything is loaded.
    """
    root = Path(model_root)
    if not root.is_dir():
        raise ImagineError(f"no model store at {root}: train a model first (continuonbrain train)")
    if slot is not None and slot not in SLOTS:
        raise ImagineError(f"unknown slot {slot!r} (expected 'current' or 'candidate')")
    store = ModelStore(root)
    try:
        for name in (slot,) if slot is not None else ("current", "candidate"):
            directory = store.slot_dir(name)
            if directory is None or store.manifest(directory) is None:
                continue
            return ModelSlot(root, name, directory, store.verify(directory))
    except StoreError as exc:
        raise ImagineError(f"cannot use the model: {exc}") from None
    if slot is not None:
        raise ImagineError(f"{root / slot} holds no model (no manifest.json)")
    raise ImagineError(f"no model in {root}: neither current/ nor candidate/ holds a manifest.json (train one first)")


def world_model_from_slot(slot: ModelSlot, env: str) -> tuple[WorldModel, ModelInfo]:
    """The world model of a verified slot, scored by ``env``'s goal."""
    goal = goal_for(env)
    directory = slot.directory
    have = list_components(directory)
    missing = [c for c in ("vqvae", "mid_loop") if c not in have]
    if missing:
        raise ImagineError(
            f"{slot.model_root / slot.name} has no world model: component(s) {missing} missing (it has {have}); "
            "imagined rollouts need the VQ-VAE and the Mid loop"
        )
    try:
        vqvae = load_component(directory, "vqvae")
        mid = load_component(directory, "mid_loop")
    except (ValueError, FileNotFoundError) as exc:
        raise ImagineError(f"{slot.model_root / slot.name}: cannot load the world model: {exc}") from None
    info = ModelInfo(
        model_root=str(slot.model_root),
        slot=slot.name,
        version=slot.version,
        rlds_dir=slot.manifest.get("rlds_dir"),
    )
    return WorldModel(vqvae, mid, goal), info  # type: ignore[arg-type]


def load_world_model(model_root: str | Path, env: str, slot: str | None = None) -> tuple[WorldModel, ModelInfo]:
    """The world model of ``<model_root>/<slot>`` (default: current, else candidate) for ``env``'s goal."""
    goal_for(env)  # an env without a goal fails before the store is read
    return world_model_from_slot(open_slot(model_root, slot), env)
