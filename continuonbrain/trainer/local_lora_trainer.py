"""Local LoRA trainer: the robot keeps learning after the seed, and only a gated adapter drives.

When the robot is idle, cool, charged and not teleoperated, and new episodes have arrived,
:func:`maybe_run_local_training` fine-tunes LoRA adapters on the newest episodes, runs the
result *in shadow* against what the robot actually did, and only then swaps it in::

    gates (scheduler: idle, teleop, battery, thermal, new episodes)  -> "skipped" + the first failing gate
    episodes = the newest max_episodes; the newest eval_tail_episodes are held out for the gate
        too few                                                        -> "no_data", nothing written
    hooks.start: base model (<model_root>/current, adapter not applied), LoRA on lora_layers
    train under budgets: max_steps, max_wall_time_s, memory, SoC temperature (the result says which ended it)
    candidate slot = the base seed's files + adapter_config.json + adapter_model.safetensors (PEFT keys)
    shadow gate on the held-out tail: candidate vs logged actions, and vs the current model
        pass -> PromotionStore.promote (old current to history/)   fail -> PromotionStore.reject (rejected/)
    status.json in log_dir (after every run, skipped ones too), one JSONL log per run, rotated

Why held-out episodes and not the training ones: the gate must tell whether the adapter
generalises to what the robot will see next, and the newest episodes are the closest to that.
Why a fresh adapter on the seed each run (``HopeBrain.load(apply_adapter=False)``) rather than
stacking adapters: a chain of adapters, each trained on a few minutes of data, drifts; one
adapter on a fixed seed is small, gated against the same reference, and rolled back by the store.

The loop itself is framework-free: a :class:`ModelHooks` object does the model work.
:func:`~continuonbrain.trainer.hooks_torch.build_torch_hooks` gives torch hooks for the HOPE seed
(or any torch model); :func:`build_stub_hooks` runs the whole loop (episodes, budgets, gate,
rotation) without a model, for dry runs. A stub candidate is marked ``kind: "stub"`` and is
never promoted: it is set aside with the reason "stub", so a dry run can never replace a real
``current``.

Command line (also ``continuonbrain adapt``)::

    python -m continuonbrain.trainer.local_lora_trainer --config continuonbrain/configs/pi5-donkey.json \\
        [--rlds-dir DIR] [--model-root DIR] [--use-stub-hooks] [--gated] [--set key=value ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuonbrain.rlds import Episode
from continuonbrain.trainer.budgets import MemoryGuard, StepBudget, read_temperature_c, rss_mb
from continuonbrain.trainer.rlds_loader import EpisodeLoader, make_episode_loader
from continuonbrain.trainer.safety import (
    ActionDistance,
    GateResult,
    SafetyGateConfig,
    ShadowResult,
    Violates,
    build_simple_action_guards,
    gate,
    shadow_evaluate,
)

if TYPE_CHECKING:  # the scheduler (and the TFDS reader it pulls in) loads on first use: the CLI parser stays light
    from continuonbrain.trainer.scheduler import GatingConfig, GatingSensors

log = logging.getLogger(__name__)

__all__ = [
    "AdaptationError",
    "AdaptationJob",
    "CandidateFiles",
    "LocalTrainerJobConfig",
    "ModelHooks",
    "Policy",
    "StubHooks",
    "TrainerResult",
    "build_stub_hooks",
    "main",
    "maybe_run_local_training",
]

#: Candidate kinds this trainer writes; a pending candidate of another kind (a seed waiting
#: for ``models promote``) is never overwritten.
OWN_KINDS = ("hope-lora", "torch-lora", "stub")
STATUS_FILE = "status.json"
LOG_PREFIX = "adapt_"
STUB_FILE = "stub_adapter.json"
LOCK_FILE = ".adapt.lock"

#: Config fields holding paths: relative ones resolve against the config file (JSON) or the
#: working directory (command-line overrides).
PATH_FIELDS = ("rlds_dir", "model_root", "log_dir", "base_model_path", "sysfs_root", "robot_state_file")


# --------------------------------------------------------------------------- config


@dataclass
class LocalTrainerJobConfig:
    """One on-robot adaptation job (``configs/pi5-donkey.json``), field by field.

    JSON has no comments, so every field is documented here; unknown keys are rejected (a
    typo must not silently fall back to a default) and keys starting with ``_`` are ignored.
    """

    # -- where things are
    #: The robot's RLDS episodes (any layout ``read_episodes`` takes).
    rlds_dir: str = "/opt/continuonos/brain/rlds/episodes"
    #: The model store: ``current/`` is the base, the adapter goes through ``candidate/``.
    model_root: str = "/opt/continuonos/brain/models"
    #: Per-run JSONL logs, ``status.json`` and the new-episode watermark.
    log_dir: str = "/opt/continuonos/brain/trainer/logs"
    #: The model to adapt: a HOPE model directory. Null: ``<model_root>/current`` (loaded
    #: without its adapter: each run trains a fresh adapter on the seed). With a custom
    #: ``base_model_loader`` this is the path it is given.
    base_model_path: str | None = None

    # -- data
    #: Fewer good episodes than this: the run ends with status "no_data" and writes nothing.
    min_episodes: int = 16
    #: Only the newest ``max_episodes`` are used (read order: names grow with time).
    max_episodes: int = 256
    #: Train on imagined (model-generated) episodes too. The gate never uses them: it compares
    #: with what the robot actually did.
    include_imagined: bool = False
    #: Dict observations: numeric keys forming the state vector, in order. Null: the seed's
    #: ``state_keys`` (HOPE), else all numeric keys sorted.
    observation_keys: list[str] | None = None
    #: Names of the action components, in order: the keys of dict actions (concatenated in this
    #: order) or names for the components of vector actions. The guards' ``per_key_bounds``
    #: refer to these names, and shadow evaluation hands actions to the guards as
    #: ``{name: value}`` dicts. Null: vectors, components named "0", "1", ...
    action_keys: list[str] | None = None
    #: Fast-loop window length in seconds (50-100 ms).
    window_s: float = 0.1

    # -- budgets
    #: Optimizer steps at most.
    max_steps: int = 300
    #: Wall-clock seconds at most, counted from the start of the job (loading included).
    max_wall_time_s: float | None = 300.0
    #: Process RSS budget in MB, checked every step; over it, training stops ("memory").
    memory_budget_mb: float | None = 1024.0
    #: Stop when the system's available memory falls below this (MB); null: no floor.
    min_available_mb: float | None = 300.0
    #: Stop training when the SoC passes this temperature (°C, read every ``log_every_steps``);
    #: null: never. The start gate (``max_temp_c``) is lower, so this only trips when training
    #: itself heats the board.
    thermal_stop_c: float | None = 80.0

    # -- optimisation
    #: Windows per batch.
    batch_size: int = 64
    #: Shuffle buffer size in batches (the buffer holds ``batch_size * this`` windows).
    shuffle_buffer_multiplier: int = 8
    #: Linear layers that get adapters: exact module paths, names matched at the end of a path
    #: (PEFT's rule), or globs (``"fast_loop.*"``). HOPE: Fast-loop layers only (the
    #: behaviour-cloning loss trains the Fast loop).
    lora_layers: list[str] = field(default_factory=lambda: ["fast_loop.*"])
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    learning_rate: float = 1e-2
    weight_decay: float = 0.0
    #: Gradient-norm clip; null or 0: none.
    grad_clip: float | None = 1.0
    seed: int = 0
    #: torch intra-op threads. 1: the adapted layers are tiny, a second thread buys nothing,
    #: and when the robot's own processes hold a core, threads waiting for each other made
    #: steps ~10x slower (measured on 2 busy cores).
    torch_threads: int = 1
    #: A log line (mean loss since the last one) every N steps.
    log_every_steps: int = 10

    # -- gate and store
    #: Default guards (when the hooks bring none): bounds per action name, e.g.
    #: ``{"steering": [-1, 1], "throttle": [-1, 1]}``.
    per_key_bounds: dict[str, list[float]] = field(default_factory=dict)
    #: Default guards: no action component may exceed this in absolute value; null: no limit.
    numeric_abs_limit: float | None = None
    #: Default guards: scale of the action distance.
    delta_weight: float = 1.0
    #: ``SafetyGateConfig`` fields for the command line (the Python API takes a
    #: ``SafetyGateConfig`` argument instead).
    safety: dict[str, Any] = field(default_factory=dict)
    #: Earlier currents kept in ``history/`` (and rejected candidates kept in ``rejected/``).
    max_history: int = 10
    #: Run logs kept in ``log_dir``.
    keep_logs: int = 20

    # -- start gates (see continuonbrain.trainer.scheduler)
    #: Battery fraction needed to start (0.4 = 40 %).
    min_battery: float = 0.4
    #: SoC temperature above which a run does not start (°C).
    max_temp_c: float = 75.0
    #: Only train when the robot says it is idle (false: boards without a robot stack).
    require_idle: bool = True
    #: New episodes needed since the last run that trained.
    min_new_episodes: int = 1
    #: Root of sysfs for the temperature and battery readings.
    sysfs_root: str = "/sys"
    #: The robot stack's state file (mode, idle, teleop; scheduler.DEFAULT_STATE_FILE).
    robot_state_file: str = "/run/continuonos/robot_state.json"

    def __post_init__(self) -> None:
        self.validate()

    # -- validation

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the first bad field."""
        positive_ints = ("min_episodes", "max_episodes", "max_steps", "batch_size", "shuffle_buffer_multiplier")
        for name in (*positive_ints, "lora_rank", "log_every_steps", "keep_logs", "max_history", "torch_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_episodes < self.min_episodes:
            raise ValueError(f"max_episodes ({self.max_episodes}) must be >= min_episodes ({self.min_episodes})")
        for name in ("learning_rate", "window_s", "lora_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("max_wall_time_s", "memory_budget_mb", "min_available_mb", "thermal_stop_c", "numeric_abs_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"{name} must be a positive number or null, got {value!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.lora_layers, str):
            self.lora_layers = [self.lora_layers]
        if not self.lora_layers or not all(isinstance(x, str) and x for x in self.lora_layers):
            raise ValueError(f"lora_layers must be a non-empty list of names or patterns, got {self.lora_layers!r}")
        for name in ("observation_keys", "action_keys"):
            keys = getattr(self, name)
            if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys)):
                raise ValueError(f"{name} must be a list of names or null, got {keys!r}")
        bounds = {}
        for key, pair in dict(self.per_key_bounds or {}).items():
            if not isinstance(pair, list | tuple) or len(pair) != 2 or not float(pair[0]) < float(pair[1]):
                raise ValueError(f"per_key_bounds[{key!r}] must be [low, high] with low < high, got {pair!r}")
            bounds[str(key)] = [float(pair[0]), float(pair[1])]
        self.per_key_bounds = bounds
        self.safety_config()  # unknown SafetyGateConfig keys fail here, not mid-run
        self.gating_config()

    # -- derived

    def safety_config(self) -> SafetyGateConfig:
        names = {f.name for f in dataclasses.fields(SafetyGateConfig)}
        unknown = sorted(set(self.safety or {}) - names)
        if unknown:
            raise ValueError(f"safety: unknown field(s) {unknown} (known: {sorted(names)})")
        return SafetyGateConfig(**(self.safety or {}))

    def gating_config(self) -> GatingConfig:
        from continuonbrain.trainer.scheduler import GatingConfig

        return GatingConfig(
            min_battery=self.min_battery,
            max_temp_c=self.max_temp_c,
            require_idle=self.require_idle,
            min_new_episodes=self.min_new_episodes,
        )

    def default_guards(self) -> tuple[ActionDistance, Violates]:
        bounds = {k: (lo, hi) for k, (lo, hi) in self.per_key_bounds.items()}
        return build_simple_action_guards(self.numeric_abs_limit, bounds, self.delta_weight)

    def base_dir(self) -> Path:
        return Path(self.base_model_path) if self.base_model_path else Path(self.model_root) / "current"

    # -- JSON

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], owner: str = "LocalTrainerJobConfig") -> LocalTrainerJobConfig:
        if not isinstance(data, Mapping):
            raise ValueError(f"{owner} must be a JSON object, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if not str(k).startswith("_")}  # "_comment" keys
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{owner}: unknown field(s) {unknown} (known: {sorted(names)})")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{owner}: {exc}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> LocalTrainerJobConfig:
        """Read a config file; relative paths in it resolve against its directory.
        ``overrides`` (None values ignored) are applied with :meth:`with_overrides`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the config ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the config must be a JSON object")
        for key in PATH_FIELDS:
            value = data.get(key)
            if isinstance(value, str) and value and not Path(value).is_absolute():
                data[key] = str((path.parent / value).resolve())
        cfg = cls.from_dict(data, str(path))
        return cfg.with_overrides({k: v for k, v in overrides.items() if v is not None})

    def with_overrides(self, overrides: Mapping[str, Any]) -> LocalTrainerJobConfig:
        """A copy with ``overrides`` applied; ``"safety.max_eval_steps"`` sets one key of a
        dict field. Relative paths resolve against the working directory."""
        data = self.to_dict()
        for key, value in overrides.items():
            top, _, sub = key.partition(".")
            if top not in data:
                raise ValueError(f"unknown config field {top!r}")
            if sub:
                if not isinstance(data[top], dict):
                    raise ValueError(f"{top} is not an object; cannot set {key}")
                data[top] = {**data[top], sub: value}
                continue
            if top in PATH_FIELDS and isinstance(value, str | os.PathLike) and str(value):
                value = str(Path(value).resolve())
            data[top] = value
        return type(self).from_dict(data)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["max_steps=50", "lora_layers=[\\"fast_loop.head\\"]"]`` -> ``{"max_steps": 50, ...}``:
    values are JSON when they parse as JSON, strings otherwise."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


# --------------------------------------------------------------------------- hooks


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
    #: A scratch directory for this run, removed at the end (same filesystem as the store).
    workdir: Path
    #: Write an event to the run log.
    log_event: Callable[[dict[str, Any]], None] = lambda record: None


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

    ``action_distance_fn`` / ``safety_fn``: the gate's guards (see
    :func:`~continuonbrain.trainer.safety.build_simple_action_guards`); None: the config's
    default guards. ``is_stub``: a dry run, never promoted.
    """

    is_stub: bool = False
    action_distance_fn: ActionDistance | None = None
    safety_fn: Violates | None = None

    def start(self, job: AdaptationJob) -> None:
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns at least ``{"loss": float}``."""
        raise NotImplementedError

    def save_candidate(self, out_dir: Path) -> CandidateFiles:
        raise NotImplementedError

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

    def __init__(self, rate: float = 0.1):
        self.rate = rate
        self._actions: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._rng = np.random.default_rng(0)
        self._batch = 1
        self._steps = 0

    def start(self, job: AdaptationJob) -> None:
        keys = job.cfg.action_keys
        rows = [ep.action_vector(keys) for ep in job.train_episodes]
        if not rows or sum(len(r) for r in rows) == 0:
            raise AdaptationError("no_data", "the training episodes have no steps")
        self._actions = np.concatenate(rows).astype(np.float64)
        self._mean = np.zeros(self._actions.shape[1])
        self._rng = np.random.default_rng(job.cfg.seed)
        self._batch = job.cfg.batch_size

    def train_step(self) -> dict[str, float]:
        assert self._actions is not None and self._mean is not None
        batch = self._actions[self._rng.integers(len(self._actions), size=self._batch)]
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
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return CandidateFiles([path], ["stub"], "stub", {"stub": True, "action_dim": len(self._mean)})

    def load_policy(self, slot_dir: Path) -> Policy | None:
        path = slot_dir / STUB_FILE
        if not path.is_file():
            return None  # a real model: stub hooks cannot run it
        mean = np.asarray(json.loads(path.read_text())["mean_action"], dtype=np.float32)
        return Policy(act=lambda obs: mean.copy())

    def close(self) -> None:
        self._actions = None


def build_stub_hooks() -> StubHooks:
    """Hooks for dry runs (``--use-stub-hooks``): the whole loop, no torch, never promoted."""
    return StubHooks()


# --------------------------------------------------------------------------- result


@dataclass
class TrainerResult:
    """What one call of :func:`maybe_run_local_training` did.

    ``status``: "promoted", "rejected" (the gate said no; current untouched), "dry_run" (stub
    hooks: trained and gated, set aside with the reason "stub"), "skipped" (a start gate
    failed, or another run holds the store), "no_data" (too few episodes; nothing written),
    "no_base" (no model to adapt) or "error". For "skipped", ``reason`` is a stable code
    (the scheduler's ``not_idle``, ``teleop_active``, ``battery_low``, ``too_hot``,
    ``no_new_episodes``, or ``busy``, ``candidate_pending``) and ``detail`` the text; otherwise
    ``reason`` says why in words. ``stop_reason`` names the budget that ended training:
    "max_steps", "max_wall_time_s", "memory", "thermal" or "non_finite_loss".
    """

    status: str
    reason: str | None = None
    detail: str | None = None
    promoted: bool = False
    stub: bool = False
    steps: int = 0
    avg_loss: float | None = None
    initial_loss: float | None = None
    final_loss: float | None = None
    #: ``{"step", "loss"}`` every ``log_every_steps`` (mean loss since the previous record).
    losses: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str | None = None
    stop_detail: str | None = None
    wall_time_s: float = 0.0
    train_time_s: float = 0.0
    peak_rss_mb: float | None = None
    episodes: dict[str, int] = field(default_factory=dict)
    #: Mean action distance to the logged actions on the held-out episodes, of the model that
    #: was current before the run and of the candidate.
    before_avg_action_delta: float | None = None
    after_avg_action_delta: float | None = None
    candidate_version: str | None = None
    previous_version: str | None = None
    current_version: str | None = None
    gate: dict[str, Any] | None = None
    #: The start gates' decision and live values (when gating was given).
    gating: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None
    log_path: str | None = None
    status_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the loop


def maybe_run_local_training(
    cfg: LocalTrainerJobConfig,
    hooks: ModelHooks | None = None,
    safety_cfg: SafetyGateConfig | None = None,
    gating: GatingSensors | Callable[[], GatingSensors] | None = None,
    episode_loader: EpisodeLoader | None = None,
) -> TrainerResult:
    """Run one adaptation if the gates allow it; see the module doc for the steps.

    ``hooks``: None means torch hooks for the HOPE seed (``build_torch_hooks()``).
    ``safety_cfg``: None means the config's ``safety`` block. ``gating``: a
    :class:`~continuonbrain.trainer.scheduler.GatingSensors` reading, a callable returning one,
    or None to skip the start gates (a manual run). ``episode_loader``: ``(rlds_dir,
    max_episodes) -> episodes, oldest first`` (default :func:`make_episode_loader`).
    Never raises for a failed run: the result says what happened, and ``status.json`` too.
    """
    if hooks is None:
        from continuonbrain.trainer.hooks_torch import build_torch_hooks

        hooks = build_torch_hooks()
    run = _Run(
        cfg,
        hooks,
        safety_cfg or cfg.safety_config(),
        episode_loader or make_episode_loader(include_imagined=cfg.include_imagined),
    )
    return run.execute(gating)


class _RunLog:
    """One JSONL file per run, line-buffered so a killed run keeps what it logged."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("a", buffering=1)

    def __call__(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({"time": round(time.time(), 3), **record}, default=_json_default) + "\n")

    def close(self) -> None:
        self._file.close()


class _Run:
    def __init__(
        self, cfg: LocalTrainerJobConfig, hooks: ModelHooks, safety: SafetyGateConfig, loader: EpisodeLoader
    ) -> None:
        self.cfg, self.hooks, self.safety, self.loader = cfg, hooks, safety, loader
        self.started = time.monotonic()
        self.log_dir = Path(cfg.log_dir)
        self.result = TrainerResult(status="error", stub=hooks.is_stub)
        self.runlog: _RunLog | None = None

    # -- driver

    def execute(self, gating: GatingSensors | Callable[[], GatingSensors] | None) -> TrainerResult:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._execute(gating)
        except AdaptationError as exc:
            self.result.status, self.result.reason = exc.status, str(exc)
        except Exception as exc:  # a robot's trainer reports, it does not crash the scheduler
            log.exception("local LoRA training failed")
            self.result.status, self.result.reason = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self.result.wall_time_s = round(time.monotonic() - self.started, 3)
            self.event({"event": "result", **self.result.to_dict()})
            if self.runlog is not None:
                self.runlog.close()
                _rotate_logs(self.log_dir, self.cfg.keep_logs)
            self._write_status()
        return self.result

    def event(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            self.runlog(record)

    def _open_log(self) -> None:
        """A log file per run that got past the gates. Skips only update ``status.json``: a
        robot that is busy all afternoon must not rotate the last real run's log away."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.runlog = _RunLog(self.log_dir / f"{LOG_PREFIX}{stamp}.jsonl")
        self.result.log_path = str(self.runlog.path)
        self.event({"event": "start", "config": self.cfg.to_dict(), "stub": self.hooks.is_stub})
        if self.result.gating is not None:
            self.event({"event": "gates", **self.result.gating})

    def _execute(self, gating: GatingSensors | Callable[[], GatingSensors] | None) -> None:
        from continuonbrain.trainer.scheduler import EpisodeWatermark, evaluate_gates

        cfg, res = self.cfg, self.result
        watermark = EpisodeWatermark(cfg.rlds_dir, cfg.log_dir)
        snapshot = watermark.snapshot()
        if gating is not None:
            sensors = gating() if callable(gating) else gating
            decision = evaluate_gates(sensors, cfg.gating_config(), new_episodes=watermark.new_since(snapshot))
            res.gating = decision.to_dict()
            if not decision.ok:
                res.status, res.reason, res.detail = "skipped", decision.reason, decision.detail
                return
        with _store_lock(Path(cfg.model_root)) as locked:
            if not locked:
                res.status, res.reason = "skipped", "busy"
                res.detail = f"another adaptation run holds {Path(cfg.model_root) / LOCK_FILE}"
                return
            self._open_log()
            self._locked_run()
        if res.status in ("promoted", "rejected"):
            # The data was trained on (whatever the gate said): wait for new episodes. Dry runs
            # consume nothing, so a real run still sees these episodes as new.
            watermark.mark_trained(snapshot)

    def _locked_run(self) -> None:
        from continuonbrain.trainer.store import PromotionStore

        cfg, res = self.cfg, self.result
        store = PromotionStore(cfg.model_root, max_history=cfg.max_history)
        store.recover()
        pending = store.manifest("candidate") if store.slot("candidate").exists() else None
        if pending is not None and pending.get("kind") not in OWN_KINDS:
            res.status, res.reason = "skipped", "candidate_pending"
            res.detail = (
                f"candidate {pending.get('version')} ({pending.get('kind')}) awaits a decision: "
                "promote or reject it first (continuonbrain models promote)"
            )
            return
        res.previous_version = res.current_version = store.current_version()

        train, held_out = self._episodes()
        if train is None:
            return
        with tempfile.TemporaryDirectory(prefix=".adapt-", dir=cfg.model_root) as tmp:
            workdir = Path(tmp)
            files = self._train(train, workdir)
            if files is None:
                return
            manifest = store.write_slot(
                "candidate",
                files.files,
                components=files.components,
                kind="stub" if self.hooks.is_stub else files.kind,
                metrics=self._training_metrics(),
                parent=res.previous_version,
                extra={
                    "rlds_dir": cfg.rlds_dir,
                    "trainer": "local_lora",
                    "stub": self.hooks.is_stub,
                    "adapter": files.info,
                    "base_dir": str(cfg.base_dir()),
                    "episodes": res.episodes,
                },
            )
        res.candidate_version = manifest["version"]
        res.adapter = files.info
        self.event({"event": "candidate", "version": manifest["version"], "files": manifest["files"]})
        self._gate_and_rotate(store, held_out)

    # -- steps

    def _episodes(self) -> tuple[list[Episode] | None, list[Episode]]:
        cfg, res = self.cfg, self.result
        episodes = list(self.loader(cfg.rlds_dir, cfg.max_episodes))
        tail = self.safety.eval_tail_episodes
        # The gate compares with what the robot did: never hold out imagined episodes.
        real = [i for i, ep in enumerate(episodes) if not ep.is_imagined]
        held_idx = set(real[-tail:]) if tail > 0 else set()
        held_out = [ep for i, ep in enumerate(episodes) if i in held_idx]
        train = [ep for i, ep in enumerate(episodes) if i not in held_idx]
        res.episodes = {"found": len(episodes), "train": len(train), "eval": len(held_out)}
        self.event({"event": "episodes", **res.episodes})
        need = max(cfg.min_episodes, tail + 1)
        if len(episodes) < need or not train:
            res.status = "no_data"
            res.reason = (
                f"{len(episodes)} usable episode(s) in {cfg.rlds_dir}; need at least {need} "
                f"(min_episodes {cfg.min_episodes}, {tail} held out for the gate)"
            )
            return None, []
        return train, held_out

    def _train(self, train: list[Episode], workdir: Path) -> CandidateFiles | None:
        cfg, res, hooks = self.cfg, self.result, self.hooks
        job = AdaptationJob(cfg, cfg.base_dir(), train, workdir, self.event)
        budget = StepBudget(cfg.max_steps, cfg.max_wall_time_s, started=self.started)
        memory = MemoryGuard(cfg.memory_budget_mb, cfg.min_available_mb, check_every=1)
        losses: list[float] = []
        window: list[float] = []
        step, stop, detail = 0, None, None
        try:
            hooks.start(job)
            self.event({"event": "started", "rss_mb": round(rss_mb(), 1)})
            t0 = time.monotonic()
            while True:
                stop, detail = self._stop_reason(budget, memory, step)
                if stop:
                    break
                scalars = hooks.train_step()
                step += 1
                loss = float(scalars["loss"])
                losses.append(loss)
                window.append(loss)
                if not math.isfinite(loss):
                    stop, detail = "non_finite_loss", f"loss is {loss} at step {step}"
                    break
                if step % cfg.log_every_steps == 0 or step == cfg.max_steps:
                    self._log_step(step, window, scalars, t0)
                    window = []
            if window:
                self._log_step(step, window, {}, t0)
            res.steps, res.stop_reason, res.stop_detail = step, stop, detail
            res.train_time_s = round(time.monotonic() - t0, 3)
            res.peak_rss_mb = round(max(memory.peak_rss_mb, rss_mb()), 1)
            if losses:
                k = min(10, len(losses))
                res.initial_loss = float(np.mean(losses[:k]))
                res.final_loss = float(np.mean(losses[-k:]))
                res.avg_loss = float(np.mean(losses))
            self.event({"event": "stopped", "steps": step, "stop_reason": stop, "detail": detail})
            if step == 0:
                res.status = "error"
                res.reason = f"no training step before the budget ran out ({stop}: {detail})"
                return None
            return hooks.save_candidate(workdir)
        finally:
            hooks.close()
            gc.collect()

    def _stop_reason(self, budget: StepBudget, memory: MemoryGuard, step: int) -> tuple[str | None, str | None]:
        cfg = self.cfg
        exhausted = budget.exhausted(step)
        if exhausted == "max_steps":
            return exhausted, f"{step} steps done"
        if exhausted:
            return exhausted, f"{cfg.max_wall_time_s} s of wall time used"
        why = memory.check()
        if why:
            return "memory", why
        if cfg.thermal_stop_c is not None and step % cfg.log_every_steps == 0:
            temp = read_temperature_c(cfg.sysfs_root)
            if temp is not None and temp > cfg.thermal_stop_c:
                return "thermal", f"SoC at {temp:.1f} °C, over {cfg.thermal_stop_c} °C"
        return None, None

    def _log_step(self, step: int, window: list[float], scalars: Mapping[str, float], t0: float) -> None:
        mean = float(np.mean(window))
        self.result.losses.append({"step": step, "loss": mean})
        extra = {k: v for k, v in scalars.items() if k != "loss"}
        self.event(
            {
                "event": "step",
                "step": step,
                "loss": mean,
                **extra,
                "rss_mb": round(rss_mb(), 1),
                "train_time_s": round(time.monotonic() - t0, 3),
            }
        )

    def _training_metrics(self) -> dict[str, Any]:
        r = self.result
        return {
            "steps": r.steps,
            "stop_reason": r.stop_reason,
            "initial_loss": r.initial_loss,
            "final_loss": r.final_loss,
            "train_time_s": r.train_time_s,
            "peak_rss_mb": r.peak_rss_mb,
            "episodes": r.episodes,
        }

    # -- gate

    def _gate_and_rotate(self, store: Any, held_out: list[Episode]) -> None:
        from continuonbrain.trainer.store import StoreError

        res, hooks = self.result, self.hooks
        distance, violates = hooks.action_distance_fn, hooks.safety_fn
        if distance is None or violates is None:
            default_distance, default_violates = self.cfg.default_guards()
            distance, violates = distance or default_distance, violates or default_violates
        candidate_slot = store.slot("candidate")
        try:
            store.verify(candidate_slot)
            candidate = self._shadow(lambda: hooks.load_policy(candidate_slot), held_out, distance, violates)
        except StoreError as exc:
            candidate = ShadowResult(error=f"candidate files do not match its manifest: {exc}")
        current = None
        if not hooks.is_stub and store.current_version() is not None:
            current = self._shadow(lambda: hooks.load_policy(store.slot("current")), held_out, distance, violates)
        if hooks.is_stub:
            result = GateResult(
                False,
                "stub: a dry run of the trainer loop (no weights); never promoted",
                candidate.to_dict(),
                None,
                self.safety.to_dict(),
            )
        else:
            result = gate(candidate, current, self.safety)
        res.after_avg_action_delta = candidate.avg_action_delta
        res.before_avg_action_delta = current.avg_action_delta if current is not None else None
        pick = ("steps", "episodes", "avg_action_delta", "violations", "first_violation", "error")
        metrics = {
            "candidate": {k: result.candidate.get(k) for k in pick},
            "current": {k: result.current.get(k) for k in pick} if result.current else None,
            "training": self._training_metrics(),
        }
        record = {
            "passed": result.passed,
            "reason": result.reason,
            "metrics": metrics,
            "trainer": "local_lora",
            "stub": hooks.is_stub,
            "rlds_dir": self.cfg.rlds_dir,
        }
        res.gate = {"passed": result.passed, "reason": result.reason, **metrics, "config": result.config}
        self.event({"event": "gate", **res.gate})
        if result.passed:
            store.promote(record)
            res.status, res.promoted = "promoted", True
        else:
            store.reject(record)
            res.status = "dry_run" if hooks.is_stub else "rejected"
            _trim_dirs(Path(self.cfg.model_root) / "rejected", self.cfg.max_history)
        res.reason = result.reason
        res.current_version = store.current_version()

    def _shadow(
        self,
        load: Callable[[], Policy | None],
        episodes: list[Episode],
        distance: ActionDistance,
        violates: Violates,
    ) -> ShadowResult:
        try:
            policy = load()
        except Exception as exc:  # a model that does not even load is rejected, not a crash
            return ShadowResult(error=f"cannot load the model: {type(exc).__name__}: {exc}")
        if policy is None:
            return ShadowResult(error="these hooks cannot run this model")
        keys = self.cfg.observation_keys
        observations = policy.observations or (lambda ep: ep.observation_vector(keys))
        pairs = _shadow_pairs(episodes, observations, self.cfg.action_keys)  # lazy: one episode at a time
        namer = _ActionNamer.for_episodes(episodes, self.cfg.action_keys)

        def act(obs: Any) -> Any:
            return namer(policy.act(obs))

        return shadow_evaluate(act, policy.reset, pairs, distance, violates, self.safety.max_eval_steps)

    # -- status

    def _write_status(self) -> None:
        res = self.result
        try:
            summary = _store_summary(Path(self.cfg.model_root))
            status = {
                "updated": datetime.now(UTC).isoformat(),
                "status": res.status,
                "reason": res.reason,
                "detail": res.detail,
                "stub": res.stub,
                "promoted": res.promoted,
                "steps": res.steps,
                "stop_reason": res.stop_reason,
                "losses": res.losses,
                "initial_loss": res.initial_loss,
                "final_loss": res.final_loss,
                "avg_action_delta": {"current": res.before_avg_action_delta, "candidate": res.after_avg_action_delta},
                "candidate_version": res.candidate_version,
                "wall_time_s": res.wall_time_s,
                "peak_rss_mb": res.peak_rss_mb,
                **summary,
                "latest_log": res.log_path,
            }
            path = self.log_dir / STATUS_FILE
            tmp = path.with_name(f".{STATUS_FILE}.tmp")
            tmp.write_text(json.dumps(status, indent=2, default=_json_default) + "\n")
            os.replace(tmp, path)
            res.status_path = str(path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.log_dir / STATUS_FILE, exc)


# --------------------------------------------------------------------------- helpers


def _shadow_pairs(
    episodes: Sequence[Episode],
    observations: Callable[[Episode], Iterable[Any]],
    action_keys: Sequence[str] | None,
) -> Iterator[tuple[Iterable[Any], list[Any]]]:
    """(observations, logged actions) per held-out episode, newest first (the gate's step
    budget goes to the newest behaviour)."""
    for ep in reversed(episodes):
        namer = _ActionNamer.for_episodes([ep], action_keys)
        logged = ep.action_vector(action_keys)
        yield observations(ep), [namer(row) for row in logged]


class _ActionNamer:
    """Turns action vectors into ``{name: value}`` dicts by ``action_keys`` (identity without
    keys), so guards can bound components by name (``steering``, ``throttle``)."""

    def __init__(self, keys: Sequence[str] | None, sizes: Sequence[int] | None):
        self.keys = list(keys) if keys else None
        self.sizes = list(sizes) if sizes else ([1] * len(self.keys) if self.keys else None)

    @classmethod
    def for_episodes(cls, episodes: Sequence[Episode], keys: Sequence[str] | None) -> _ActionNamer:
        sizes = None
        if keys and episodes and isinstance(episodes[0].action, dict):
            cols = episodes[0].action
            sizes = [int(np.asarray(cols[k]).reshape(len(episodes[0]), -1).shape[1]) for k in keys]
        return cls(keys, sizes)

    def __call__(self, action: Any) -> Any:
        if self.keys is None:
            return np.asarray(action, dtype=np.float64).reshape(-1)
        vec = np.asarray(action, dtype=np.float64).reshape(-1)
        if len(vec) != sum(self.sizes or []):
            raise ValueError(f"action has {len(vec)} values, action_keys {self.keys} need {sum(self.sizes or [])}")
        out, start = {}, 0
        for key, size in zip(self.keys, self.sizes or [], strict=True):
            out[key] = vec[start : start + size]
            start += size
        return out


@contextlib.contextmanager
def _store_lock(root: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on the model store for one adaptation run (a timer and
    an API request must not train two candidates into the same slot). Released by the kernel
    when the process dies, so a crash never leaves it held."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _store_summary(root: Path) -> dict[str, Any]:
    """Current version, candidate and history count, read from manifests without the store
    class (whose import pulls in torch: a skipped run stays light)."""

    def version(path: Path) -> str | None:
        try:
            return json.loads((path / "manifest.json").read_text()).get("version")
        except (OSError, ValueError):
            return None

    history = root / "history"
    count = sum(1 for d in history.iterdir() if (d / "manifest.json").is_file()) if history.is_dir() else 0
    return {
        "current_version": version(root / "current"),
        "pending_candidate": version(root / "candidate"),
        "history_count": count,
    }


def _rotate_logs(log_dir: Path, keep: int) -> None:
    logs = sorted(log_dir.glob(f"{LOG_PREFIX}*.jsonl"), key=lambda p: p.name, reverse=True)
    for stale in logs[keep:]:
        stale.unlink(missing_ok=True)


def _trim_dirs(parent: Path, keep: int) -> None:
    """Keep the ``keep`` newest subdirectories (versions sort by creation time)."""
    if not parent.is_dir():
        return
    dirs = sorted((d for d in parent.iterdir() if d.is_dir()), key=lambda d: d.name, reverse=True)
    for stale in dirs[keep:]:
        shutil.rmtree(stale, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``continuonbrain adapt`` and of ``python -m ...local_lora_trainer``."""
    p.add_argument("--config", required=True, help="job config JSON (e.g. continuonbrain/configs/pi5-donkey.json)")
    p.add_argument("--rlds-dir", help="episodes to adapt on (overrides the config)")
    p.add_argument("--model-root", help="model store: current/ is adapted, candidates go through candidate/")
    p.add_argument("--use-stub-hooks", action="store_true", help="dry run of the whole loop without torch")
    p.add_argument("--gated", action="store_true", help="check idle/teleop/battery/thermal/new-data gates first")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def run_command(args: argparse.Namespace) -> int:
    """Exit 0: promoted, dry run, skipped or no data; 1: the gate rejected; 2: could not run."""
    try:
        overrides = parse_set(args.set)
        if args.rlds_dir:
            overrides["rlds_dir"] = args.rlds_dir
        if args.model_root:
            overrides["model_root"] = args.model_root
        cfg = LocalTrainerJobConfig.from_json(args.config).with_overrides(overrides)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.use_stub_hooks:
        hooks: ModelHooks = build_stub_hooks()
    else:
        from continuonbrain.trainer.hooks_torch import build_torch_hooks

        hooks = build_torch_hooks()
    gating = None
    if args.gated:
        from continuonbrain.trainer.scheduler import read_sensors

        gating = lambda: read_sensors(cfg.sysfs_root, cfg.robot_state_file)  # noqa: E731
    result = maybe_run_local_training(cfg, hooks, cfg.safety_config(), gating=gating)
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), default=_json_default) + "\n")
    else:
        _print_human(result)
    if result.status in ("error", "no_base"):
        if not args.json:
            print(f"error: {result.reason}", file=sys.stderr)
        return 2
    return 1 if result.status == "rejected" else 0


def _print_human(r: TrainerResult) -> None:
    head = f"adapt: {r.status.upper()}"
    if r.reason:
        head += f": {r.reason}"
    if r.detail:
        head += f" ({r.detail})"
    print(head)
    if r.steps:
        print(
            f"  steps {r.steps} (stop: {r.stop_reason}), loss {r.initial_loss:.4f} -> {r.final_loss:.4f}, "
            f"train {r.train_time_s:.1f} s, peak RSS {r.peak_rss_mb:.0f} MB"
        )
    if r.after_avg_action_delta is not None:
        before = "n/a" if r.before_avg_action_delta is None else f"{r.before_avg_action_delta:.4f}"
        print(f"  held-out avg action delta: current {before}, candidate {r.after_avg_action_delta:.4f}")
    if r.candidate_version:
        print(f"  candidate {r.candidate_version}; current {r.current_version}")
    print(f"  status {r.status_path}" + (f"; log {r.log_path}" if r.log_path else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m continuonbrain.trainer.local_lora_trainer", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
