"""The local LoRA trainer's job config: :class:`LocalTrainerJobConfig` (``configs/sim-arm-lora.json``,
``configs/pi5-donkey.json``), every field documented, in sections.

A :class:`~continuonbrain.config_base.ConfigModel` like every config of the project: strict
keys, range checks naming the field (``LocalTrainerJobConfig.lora.rank: ...``), relative paths
resolved against the file, and dotted overrides (``continuonbrain adapt --set lora.rank=8``,
``LocalTrainerJobConfig.load(path, overrides={"budgets.max_steps": 50})``).

The fields are grouped into sections::

    rlds_dir, model_root, log_dir, base_model_path, seed, torch_threads     where things are, the run's seed
    data       min/max_episodes, max_imagined_fraction, observation_keys, action_keys, window_s
    budgets    max_steps, max_wall_time_s, memory_budget_mb, min_available_mb
    thermal    max_temp_c, resume_temp_c, sysfs_root, poll_s, max_pause_s   (the seed trainer's ThermalConfig)
    training   batch_size, shuffle_buffer_multiplier, learning_rate, weight_decay, grad_clip,
               log_every_steps, checkpoint_every
    lora       layers, rank, alpha, dropout
    guards     per_key_bounds, numeric_abs_limit, delta_weight   (the gate's default guards)
    safety     avg_action_delta_threshold, max_eval_steps, eval_tail_episodes, ...   (the gate's SafetyGateConfig)
    replay     rlds_dir, share, holdout_episodes, max_episodes   (rehearsal of the seed's task, the forgetting check)
    store      max_history, keep_logs
    gates      min_battery, max_temp_c, require_idle, min_new_episodes, robot_state_file (start gates)

**The flat layout still loads.** Configs written before the sections (every field at the top,
e.g. an older ``pi5-donkey.json``) load as they did: each old key is moved to its section
(:data:`LEGACY_KEYS`; ``include_imagined`` becomes ``data.max_imagined_fraction`` 1 or 0,
``thermal_stop_c`` becomes ``thermal.max_temp_c``, where training now pauses instead of
stopping). Old flat names work in overrides too (``--set max_steps=50``) and as read-only
attributes (``cfg.max_steps`` is ``cfg.budgets.max_steps``) for code written against them.

Torch-free at import: the command-line parser and ``import continuonbrain.trainer`` stay light.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import Field, field_validator, model_validator

from continuonbrain.config_base import ConfigModel, PathStr, parse_set
from continuonbrain.models.safety import ActionDistance, SafetyGateConfig, Violates, build_simple_action_guards
from continuonbrain.robot.gates import GatingConfig
from continuonbrain.robot.sensors import DEFAULT_STATE_FILE
from continuonbrain.trainer.train_config import ThermalConfig

__all__ = ["LEGACY_KEYS", "PATH_FIELDS", "LocalTrainerJobConfig", "ReplaySection", "parse_set"]

#: Fields holding paths (dotted): relative ones resolve against the config file (JSON) or the
#: working directory (command-line overrides).
PATH_FIELDS = (
    "rlds_dir",
    "model_root",
    "log_dir",
    "base_model_path",
    "thermal.sysfs_root",
    "gates.robot_state_file",
    "replay.rlds_dir",
)

NonEmpty = Annotated[str, Field(min_length=1)]


class AdaptData(ConfigModel):
    """Which episodes a run trains on."""

    config_name: ClassVar[str] = "LocalTrainerJobConfig.data"

    min_episodes: int = Field(16, ge=1)
    """Fewer good episodes than this: the run ends with status "no_data" and writes nothing."""
    max_episodes: int = Field(256, ge=1)
    """Only the newest ``max_episodes`` are used (read order: names grow with time)."""
    max_imagined_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Largest share of imagined (model-generated) episodes among those trained on, counted in
    episodes at every point of the stream (the seed trainer's rule). 0: real episodes only.
    The gate never uses imagined episodes: it compares with what the robot actually did."""
    observation_keys: list[NonEmpty] | None = None
    """Dict observations: numeric keys forming the state vector, in order. Null: the seed's
    ``state_keys`` (HOPE), else all numeric keys sorted."""
    action_keys: list[NonEmpty] | None = None
    """Names of the action components, in order: the keys of dict actions (concatenated in this
    order) or names for the components of vector actions. The guards' ``per_key_bounds``
    refer to these names, and shadow evaluation hands actions to the guards as
    ``{name: value}`` dicts. Null: vectors, components named "0", "1", ..."""
    window_s: float = Field(0.1, gt=0)
    """Fast-loop window length in seconds (50-100 ms)."""

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.max_episodes < self.min_episodes:
            raise ValueError(f"max_episodes ({self.max_episodes}) must be >= min_episodes ({self.min_episodes})")
        return self


class AdaptBudgets(ConfigModel):
    """What a run may spend; a spent budget ends training and the adapter is gated."""

    config_name: ClassVar[str] = "LocalTrainerJobConfig.budgets"

    max_steps: int = Field(300, ge=1)
    """Optimizer steps at most."""
    max_wall_time_s: float | None = Field(300.0, gt=0)
    """Wall-clock seconds at most, counted from the start of the job (loading and thermal pauses
    included; a resumed run counts on from where the killed one stopped)."""
    memory_budget_mb: float | None = Field(1024.0, gt=0)
    """Process RSS budget in MB, checked every step; over it, training checkpoints and stops
    ("memory", resumable with ``--resume``)."""
    min_available_mb: float | None = Field(300.0, gt=0)
    """Stop (as for ``memory_budget_mb``) when the system's available memory falls below this
    (MB); null: no floor."""


class AdaptTraining(ConfigModel):
    """Optimisation, logging and checkpoints."""

    config_name: ClassVar[str] = "LocalTrainerJobConfig.training"

    batch_size: int = Field(64, ge=1)
    """Windows per batch."""
    shuffle_buffer_multiplier: int = Field(8, ge=1)
    """Shuffle buffer size in batches (the buffer holds ``batch_size * this`` windows)."""
    learning_rate: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, ge=0)
    """Gradient-norm clip; null or 0: none."""
    log_every_steps: int = Field(10, ge=1)
    """A log line (mean loss since the last one) every N steps."""
    checkpoint_every: int = Field(25, ge=1)
    """Checkpoint (adapter weights, optimizer, RNG, data position) every N steps, so that a run
    killed mid-training continues with ``--resume`` and ends with the uninterrupted run's adapter."""


class LoraSection(ConfigModel):
    """The adapters."""

    config_name: ClassVar[str] = "LocalTrainerJobConfig.lora"

    layers: list[NonEmpty] = Field(default_factory=lambda: ["fast_loop.*"], min_length=1)
    """Linear layers that get adapters: exact module paths, names matched at the end of a path
    (PEFT's rule), or globs (``"fast_loop.*"``). HOPE: Fast-loop layers only (the
    behaviour-cloning loss trains the Fast loop)."""
    rank: int = Field(4, ge=1)
    alpha: float = Field(8.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("layers", mode="before")
    @classmethod
    def _one_layer(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class GuardsSection(ConfigModel):
    """The gate's default guards, used when the hooks bring none."""

    config_name: ClassVar[str] = "LocalTrainerJobConfig.guards"

    per_key_bounds: dict[str, list[float]] = Field(default_factory=dict)
    """Bounds per action name, e.g. ``{"steering": [-1, 1], "throttle": [-1, 1]}``."""
    numeric_abs_limit: float | None = Field(None, gt=0)
    """No action component may exceed this in absolute value; null: no limit."""
    delta_weight: float = Field(1.0, gt=0)
    """Scale of the action distance."""

    @field_validator("per_key_bounds")
    @classmethod
    def _pairs(cls, bounds: dict[str, list[float]]) -> dict[str, list[float]]:
        for key, pair in bounds.items():
            if len(pair) != 2 or not pair[0] < pair[1]:
                raise ValueError(f"per_key_bounds[{key!r}] must be [low, high] with low < high, got {pair!r}")
        return bounds


class ReplaySection(ConfigModel):
    """What the brain could already do: a replay set kept from the seed's data.

    An adapter trained only on a new task forgets the old one (the demo's adapter, trained on
    targets behind the robot, reached 26% of ordinary reach2d targets against the seed's 100%).
    So every run keeps a replay set: episodes of the data the seed was trained on, never the
    run's own episodes. A share of them is mixed into the adaptation's batches (rehearsal), and
    the newest ``holdout_episodes`` of them are never trained on: the gate runs candidate and
    current on them too (``checks["forgetting"]``), so an adapter that forgets is rejected.
    No replay data found (a base without a recorded ``rlds_dir``, a directory that is gone) is
    not an error when ``rlds_dir`` is null: the run says so in its result and its gate record.
    """

    config_name: ClassVar[str] = "LocalTrainerJobConfig.replay"

    rlds_dir: PathStr | None = None
    """Where the replay episodes are. Null: the base model's manifest says where the seed's data
    is (``replay.rlds_dir`` recorded by an earlier adaptation, else the seed's ``rlds_dir``).
    Episodes the run adapts on (same ids) are never replay episodes, so this may be the robot's
    one episode directory. Given explicitly, a directory with no usable episode is an error."""
    share: float = Field(0.5, ge=0.0, lt=1.0)
    """Fraction of the training windows drawn from replay episodes (rehearsal); 0: none (the
    forgetting check still runs). Why 0.5: measured on the demo's setup (BENCHMARKS.md,
    "Rehearsal: adaptation without forgetting"; 300 steps at learning rate 0.003, success on 100
    unseen episodes of each task, seed 16% behind / 100% original), shares 0 / 0.1 / 0.25 / 0.5 /
    0.75 gave 36/20, 29/35, 35/45, 47/77 and 30/81 (% behind / % original; over three
    adaptation seeds 0 gave 40/21 and 0.5 37/69). No share kept the original task within 5
    points of the seed, so the rule is the best sum of both, which is 0.5; more replay than
    that starves the new task. The forgetting
    check still refuses such an adapter (77% is not 100%): rehearsal narrows forgetting, the
    gate is what keeps a forgetful adapter from driving."""
    holdout_episodes: int = Field(8, ge=0)
    """Newest replay episodes held out for the gate's forgetting check, never trained on
    (the seed's own held-out episodes first, when its manifest lists them); 0: no check."""
    max_episodes: int = Field(64, ge=1)
    """Replay episodes trained on at most (the newest, after the held-out ones): bounded memory
    (episodes stay lazy, frames encoded) whatever the seed's data on the SD card."""


class StoreSection(ConfigModel):
    """What is kept."""

    config_name: ClassVar[str] = "LocalTrainerJobConfig.store"

    max_history: int = Field(10, ge=1)
    """Earlier currents kept in ``history/`` (and rejected candidates kept in ``rejected/``)."""
    keep_logs: int = Field(20, ge=1)
    """Run logs kept in ``log_dir``."""


class GatesSection(ConfigModel):
    """When a gated run (``--gated``, the scheduler) may start (:mod:`continuonbrain.robot.gates`)."""

    config_name: ClassVar[str] = "LocalTrainerJobConfig.gates"

    min_battery: float = Field(0.4, ge=0, le=1)
    """Battery fraction needed to start (0.4 = 40 %)."""
    max_temp_c: float = 75.0
    """SoC temperature above which a run does not start (°C); below ``thermal.max_temp_c``, where
    a running job pauses."""
    require_idle: bool = True
    """Only train when the robot says it is idle (false: boards without a robot stack)."""
    min_new_episodes: int = Field(1, ge=1)
    """New episodes needed since the last run that trained."""
    robot_state_file: PathStr = DEFAULT_STATE_FILE
    """The robot stack's state file (mode, idle, teleop); default
    :data:`continuonbrain.robot.sensors.DEFAULT_STATE_FILE`."""


def _thermal_stop(value: Any) -> dict[str, Any]:
    return {"thermal.max_temp_c": value}


def _include_imagined(value: Any) -> dict[str, Any]:
    if not isinstance(value, bool):
        raise ValueError(f"include_imagined must be true or false, got {value!r}")
    return {"data.max_imagined_fraction": 1.0 if value else 0.0}


#: The flat layout's keys (before the sections) -> where they live now.
LEGACY_KEYS: dict[str, Any] = {
    **{k: f"data.{k}" for k in ("min_episodes", "max_episodes", "observation_keys", "action_keys", "window_s")},
    "include_imagined": _include_imagined,
    **{k: f"budgets.{k}" for k in ("max_steps", "max_wall_time_s", "memory_budget_mb", "min_available_mb")},
    "thermal_stop_c": _thermal_stop,
    "sysfs_root": "thermal.sysfs_root",
    **{
        k: f"training.{k}"
        for k in ("batch_size", "shuffle_buffer_multiplier", "learning_rate", "weight_decay", "grad_clip")
    },
    "log_every_steps": "training.log_every_steps",
    **{f"lora_{k}": f"lora.{k}" for k in ("layers", "rank", "alpha", "dropout")},
    **{k: f"guards.{k}" for k in ("per_key_bounds", "numeric_abs_limit", "delta_weight")},
    **{k: f"store.{k}" for k in ("max_history", "keep_logs")},
    **{k: f"gates.{k}" for k in ("min_battery", "max_temp_c", "require_idle", "min_new_episodes", "robot_state_file")},
}


class LocalTrainerJobConfig(ConfigModel):
    """One on-robot adaptation job, field by field (see the module doc for the sections).

    JSON has no comments, so every field is documented here; unknown keys are rejected (a
    typo must not silently fall back to a default) and keys starting with ``_`` are ignored.
    """

    config_name: ClassVar[str] = "LocalTrainerJobConfig"
    legacy_keys: ClassVar[Mapping[str, Any]] = LEGACY_KEYS

    rlds_dir: PathStr = "/opt/continuonos/brain/rlds/episodes"
    """The robot's RLDS episodes (any layout ``read_episodes`` takes)."""
    model_root: PathStr = "/opt/continuonos/brain/models"
    """The model store: ``current/`` is the base, the adapter goes through ``candidate/``."""
    log_dir: PathStr = "/opt/continuonos/brain/trainer/logs"
    """Per-run JSONL logs, ``status.json``, the new-episode watermark and the checkpoint of an
    unfinished run (``adapt-run/``)."""
    base_model_path: PathStr | None = None
    """The model to adapt: a HOPE model directory. Null: ``<model_root>/current`` (loaded
    without its adapter: each run trains a fresh adapter on the seed). With a custom
    ``base_model_loader`` this is the path it is given."""
    seed: int = Field(0, ge=0)
    torch_threads: int = Field(1, ge=1)
    """torch intra-op threads. 1: the adapted layers are tiny, a second thread buys nothing,
    and when the robot's own processes hold a core, threads waiting for each other made
    steps ~10x slower (measured on 2 busy cores)."""
    data: AdaptData = Field(default_factory=AdaptData)
    budgets: AdaptBudgets = Field(default_factory=AdaptBudgets)
    thermal: ThermalConfig = Field(default_factory=ThermalConfig)
    """Pause between steps above ``max_temp_c`` until ``resume_temp_c``, as the seed trainer does;
    after ``max_pause_s`` the run checkpoints and stops ("thermal", resumable)."""
    training: AdaptTraining = Field(default_factory=AdaptTraining)
    lora: LoraSection = Field(default_factory=LoraSection)
    guards: GuardsSection = Field(default_factory=GuardsSection)
    safety: SafetyGateConfig = Field(default_factory=SafetyGateConfig)
    """The gate's thresholds (the Python API may pass a ``SafetyGateConfig`` argument instead)."""
    replay: ReplaySection = Field(default_factory=ReplaySection)
    store: StoreSection = Field(default_factory=StoreSection)
    gates: GatesSection = Field(default_factory=GatesSection)

    # -- derived

    def safety_config(self) -> SafetyGateConfig:
        """A copy of the ``safety`` section (changing it leaves this config as it is)."""
        return self.safety.model_copy()

    def gating_config(self) -> GatingConfig:
        g = self.gates
        return GatingConfig(
            min_battery=g.min_battery,
            max_temp_c=g.max_temp_c,
            require_idle=g.require_idle,
            min_new_episodes=g.min_new_episodes,
        )

    def default_guards(self) -> tuple[ActionDistance, Violates]:
        g = self.guards
        bounds = {k: (lo, hi) for k, (lo, hi) in g.per_key_bounds.items()}
        return build_simple_action_guards(g.numeric_abs_limit, bounds, g.delta_weight)

    def base_dir(self) -> Path:
        return Path(self.base_model_path) if self.base_model_path else Path(self.model_root) / "current"

    # -- JSON

    @classmethod
    def from_json(cls, path: str | os.PathLike, **overrides: Any) -> LocalTrainerJobConfig:
        """:meth:`load` with ``overrides`` as keywords (old flat names or dotted keys via
        ``**{"a.b": v}``; None values ignored)."""
        return cls.load(path, {k: v for k, v in overrides.items() if v is not None})


def _legacy_property(dotted: str) -> property:
    section, _, name = dotted.partition(".")
    return property(
        lambda self: getattr(getattr(self, section), name), doc=f"Old flat name of ``{dotted}`` (read-only)."
    )


for _old, _new in LEGACY_KEYS.items():
    if isinstance(_new, str):
        setattr(LocalTrainerJobConfig, _old, _legacy_property(_new))
LocalTrainerJobConfig.include_imagined = property(  # type: ignore[attr-defined]
    lambda self: self.data.max_imagined_fraction > 0, doc="Old flat name: ``data.max_imagined_fraction > 0``."
)
LocalTrainerJobConfig.thermal_stop_c = property(  # type: ignore[attr-defined]
    lambda self: self.thermal.max_temp_c, doc="Old flat name of ``thermal.max_temp_c`` (where training now pauses)."
)
del _old, _new
