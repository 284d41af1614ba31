"""The model side of the local LoRA trainer: the :class:`ModelHooks` contract, what flows
through it (:class:`AdaptationJob`, :class:`CandidateFiles`, :class:`Policy`), and
:class:`StubHooks`, which run the whole loop without a model framework (dry runs).

:func:`~continuonbrain.trainer.hooks_torch.build_torch_hooks` gives the torch implementation.
Hooks that can be checkpointed (``resumable``: both of these) give the trainer their training
state (:meth:`ModelHooks.state_dict`) and take it back after a kill (:meth:`ModelHooks.load_state_dict`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuonbrain.fsutil import atomic_write_bytes
from continuonbrain.models.safety import ActionDistance, Violates
from continuonbrain.rlds import Episode
from continuonbrain.trainer.episode_mix import rehearsal_mix
from continuonbrain.trainer.lora_config import LocalTrainerJobConfig

if TYPE_CHECKING:
    from continuonbrain.rlds.windows import EpisodeSource

__all__ = [
    "STUB_FILE",
    "AdaptationError",
    "AdaptationJob",
    "CandidateFiles",
    "ModelHooks",
    "Policy",
    "StubHooks",
    "build_stub_hooks",
]

STUB_FILE = "stub_adapter.json"


class AdaptationError(RuntimeError):
    """The job cannot go on; ``status`` becomes the result's status ("no_base", "no_data", "error")."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class AdaptationJob:
    """What the hooks get at the start of a run."""

    cfg: LocalTrainerJobConfig
    #: The model to adapt (``base_model_path`` or ``<model_root>/current``); may not exist
    #: (stub hooks do not need one).
    base_dir: Path
    train_episodes: list[Episode]
    #: The run's scratch directory (``<log_dir>/adapt-run/work``): kept until the candidate is in
    #: the store, so a killed run finds there what it had (the seed's files it adapts).
    workdir: Path
    #: Write an event to the run log.
    log_event: Callable[[dict[str, Any]], None] = lambda record: None
    #: This run continues a killed one: ``load_state_dict`` follows ``start``, and what the
    #: killed run put in ``workdir`` (the seed snapshot) is to be used as it is.
    resuming: bool = False
    #: Episodes of the seed's task rehearsed during adaptation (the replay set, held-out ones
    #: excluded), and the share of training windows they make up (``replay.share``).
    replay_episodes: list[Episode] = field(default_factory=list)
    replay_share: float = 0.0

    def training_source(self) -> Sequence[Episode] | EpisodeSource:
        """What the hooks train on: the run's episodes with the replay episodes mixed in
        (:func:`~continuonbrain.trainer.episode_mix.rehearsal_mix`, the one mixer)."""
        return rehearsal_mix(self.train_episodes, self.replay_episodes, self.replay_share, self.cfg.seed)


@dataclass
class CandidateFiles:
    """What the hooks saved for the candidate slot."""

    files: list[Path]
    components: list[str]
    #: Manifest kind: "hope-lora", "torch-lora", "stub".
    kind: str
    #: Adapter facts for the manifest (target modules, rank, trainable parameters...).
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Policy:
    """A model acting in shadow: ``act(observation) -> action``, ``reset()`` between episodes.

    ``observations(episode)``: the episode's observations, one per step, as ``act`` takes them
    on the robot (state vectors, or dicts with decoded camera frames; an iterable, so frames
    are decoded one step at a time). None: state vectors of the config's ``observation_keys``.
    """

    act: Callable[[Any], Any]
    reset: Callable[[], None] = lambda: None
    observations: Callable[[Episode], Iterable[Any]] | None = None


class ModelHooks:
    """The model side of the trainer; the loop calls, in order::

        start(job) ; train_step() * N ; save_candidate(dir) ; close() ; load_policy(slot) (candidate, current)

    and, when ``resumable``, ``state_dict()`` every ``training.checkpoint_every`` steps and
    ``load_state_dict(state)`` right after ``start`` when a killed run is resumed: the run then
    continues exactly (same batches, same random draws) and ends with the uninterrupted run's
    candidate. ``action_distance_fn`` / ``safety_fn``: the gate's guards (see
    :func:`~continuonbrain.models.safety.build_simple_action_guards`); None: the config's
    default guards. ``is_stub``: a dry run, never promoted.
    """

    is_stub: bool = False
    resumable: bool = False
    action_distance_fn: ActionDistance | None = None
    safety_fn: Violates | None = None

    def start(self, job: AdaptationJob) -> None:
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns at least ``{"loss": float}``."""
        raise NotImplementedError

    def save_candidate(self, out_dir: Path) -> CandidateFiles:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The training state (trainable weights, optimizer, data position, RNG), for a
        checkpoint: tensors, arrays, numbers, strings, lists and dicts (no pickle)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be checkpointed")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (called right after :meth:`start`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be resumed")

    def load_policy(self, slot_dir: Path) -> Policy | None:
        """The model stored in ``slot_dir`` (adapter merged), ready to act; None when these
        hooks cannot run that slot (stub hooks and a real model)."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop the training state (model, optimizer, data) before the gate loads models."""


class StubHooks(ModelHooks):
    """Hooks that exercise the loop without a model framework.

    The "model" is the mean action, fitted by a running average on random training steps (the
    loss is real: the spread of the actions around it); the "adapter" is a small JSON file; the
    policy acts with the mean action. Enough to test episodes, budgets, logging, the gate and the store's rotation
    on a robot before any weights are at stake.
    """

    is_stub = True
    resumable = True

    def __init__(self, rate: float = 0.1):
        self.rate = rate
        self._actions: np.ndarray | None = None
        self._replay: np.ndarray | None = None
        self._share = 0.0
        self._mean: np.ndarray | None = None
        self._rng = np.random.default_rng(0)
        self._batch = 1
        self._steps = 0

    def start(self, job: AdaptationJob) -> None:
        keys = job.cfg.data.action_keys
        rows = [ep.action_vector(keys) for ep in job.train_episodes]
        if not rows or sum(len(r) for r in rows) == 0:
            raise AdaptationError("no_data", "the training episodes have no steps")
        self._actions = np.concatenate(rows).astype(np.float64)
        replay = [ep.action_vector(keys) for ep in job.replay_episodes]
        self._replay = np.concatenate(replay).astype(np.float64) if replay and job.replay_share > 0 else None
        self._share = job.replay_share
        self._mean = np.zeros(self._actions.shape[1])
        self._rng = np.random.default_rng(job.cfg.seed)
        self._batch = job.cfg.training.batch_size
        self._steps = 0

    def train_step(self) -> dict[str, float]:
        assert self._actions is not None and self._mean is not None
        batch = self._actions[self._rng.integers(len(self._actions), size=self._batch)]
        if self._replay is not None:  # rehearsal: ``replay_share`` of the rows from the replay set
            n = round(self._share * self._batch)
            batch[:n] = self._replay[self._rng.integers(len(self._replay), size=n)]
        loss = float(((batch - self._mean) ** 2).mean())
        self._mean += self.rate * (batch.mean(0) - self._mean)
        self._steps += 1
        return {"loss": loss}

    def save_candidate(self, out_dir: Path) -> CandidateFiles:
        assert self._mean is not None
        path = out_dir / STUB_FILE
        doc = {
            "stub": True,
            "note": "dry run of the local LoRA trainer: no weights, never promoted",
            "mean_action": self._mean.tolist(),
            "steps": self._steps,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
        return CandidateFiles([path], ["stub"], "stub", {"stub": True, "action_dim": len(self._mean)})

    def load_policy(self, slot_dir: Path) -> Policy | None:
        path = slot_dir / STUB_FILE
        if not path.is_file():
            return None  # a real model: stub hooks cannot run it
        mean = np.asarray(json.loads(path.read_text())["mean_action"], dtype=np.float32)
        return Policy(act=lambda obs: mean.copy())

    def state_dict(self) -> dict[str, Any]:
        assert self._mean is not None
        return {"mean": self._mean.copy(), "rng": self._rng.bit_generator.state, "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self._rng.bit_generator.state = state["rng"]
        self._steps = int(state["steps"])

    def close(self) -> None:
        self._actions = self._replay = None


def build_stub_hooks() -> StubHooks:
    """Hooks for dry runs (``--use-stub-hooks``): the whole loop, no torch, never promoted."""
    return StubHooks()
