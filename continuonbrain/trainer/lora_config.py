"""The local LoRA trainer's job config: :class:`LocalTrainerJobConfig` (``configs/pi5-donkey.json``)
with every field documented, JSON loading and ``--set key=value`` overrides.

Torch-free and scheduler-free at import: the command-line parser and ``import
continuonbrain.trainer`` stay light (the scheduler loads on the first :meth:`gating_config`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuonbrain.trainer.safety import ActionDistance, SafetyGateConfig, Violates, build_simple_action_guards

if TYPE_CHECKING:  # the scheduler (and the TFDS reader it pulls in) loads on first use: the CLI parser stays light
    from continuonbrain.trainer.scheduler import GatingConfig

__all__ = ["PATH_FIELDS", "LocalTrainerJobConfig", "parse_set"]

#: Config fields holding paths: relative ones resolve against the config file (JSON) or the
#: working directory (command-line overrides).
PATH_FIELDS = ("rlds_dir", "model_root", "log_dir", "base_model_path", "sysfs_root", "robot_state_file")


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
