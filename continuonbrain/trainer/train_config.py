"""Configuration of HOPE sequential training (``configs/pi5-hope-v1.json``), field by field.

JSON has no comments, so every field is documented here. The configs are
:class:`~continuonbrain.config_base.ConfigModel`\\ s (the project's one config base): unknown
keys are refused (a typo must not silently fall back to a default), values are range-checked
with errors naming the field, relative paths resolve against the config file's directory, and
``continuonbrain train --set a.b=v`` (or ``SequentialConfig.load(path, overrides={"a.b": v})``)
overrides any field, ``components.*.max_steps`` setting it for every component.

:class:`ThermalConfig` is shared with the LoRA adapter trainer: both pause above
``max_temp_c`` and resume below ``resume_temp_c`` (:class:`~continuonbrain.trainer.budgets.ThermalGuard`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from continuonbrain.config_base import ConfigModel, PathStr, parse_set

__all__ = [
    "COMPONENT_ORDER",
    "DEFAULT_CONFIG",
    "ComponentTrainConfig",
    "SequentialConfig",
    "ThermalConfig",
    "add_train_arguments",
    "train_config_from_args",
]

COMPONENT_ORDER = ("vqvae", "mid_loop", "fast_loop")
ComponentName = Literal["vqvae", "mid_loop", "fast_loop"]
NonEmpty = Annotated[str, Field(min_length=1)]


class ComponentTrainConfig(ConfigModel):
    """Budgets and optimisation of one component."""

    max_steps: int = Field(150, ge=1)
    """Optimizer steps. ``--max-steps N`` caps every component at N. Under torchrun all ranks
    run the same number of steps (every stop decision is agreed between them)."""
    max_wall_time_s: float | None = Field(300.0, gt=0)
    """Wall-clock budget in seconds (thermal pauses count); null: none."""
    batch_size: int = Field(64, ge=1)
    """Windows per batch, per rank: under ``torchrun --nproc_per_node=N`` each of the N ranks
    draws ``batch_size`` windows from its own shard of the episodes and a step averages the
    gradients of ``N * batch_size`` windows (the learning rate is not rescaled)."""
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    """Linear warm-up steps, then cosine decay to ``min_lr_fraction`` of the rate."""
    min_lr_fraction: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    """Gradient-norm clip (the logged ``grad_norm`` is the norm before clipping)."""
    window_s: float | None = Field(None, gt=0)
    """Window length in seconds: null for the VQ-VAE (single steps), 1-10 s for the Mid loop,
    0.05-0.1 s for the Fast loop."""
    shuffle_buffer: int = Field(2048, ge=0)
    """Windows held in the shuffle buffer (bounded memory)."""
    memory_budget_mb: float | None = Field(2048.0, gt=0)
    """Process RSS budget in MB, checked every ``memory_check_every`` steps; over it, the
    component checkpoints and stops with reason "memory". Null: no RSS budget."""
    memory_check_every: int = Field(5, ge=1)
    checkpoint_every: int = Field(25, ge=1)
    """Checkpoint (weights, optimizer, scheduler, RNG, data position) every N steps."""
    log_every: int = Field(1, ge=1)
    """Write a metrics.jsonl line every N steps."""


class ThermalConfig(ConfigModel):
    """Pause between steps above ``max_temp_c``; resume below ``resume_temp_c`` (both trainers)."""

    max_temp_c: float | None = 80.0
    """Pause training when the SoC reaches this (°C); null: never pause."""
    resume_temp_c: float = 70.0
    """Resume once the SoC has cooled to this (°C); below ``max_temp_c`` (hysteresis)."""
    sysfs_root: PathStr = "/sys"
    """Root of sysfs; the SoC temperature is ``<root>/class/thermal/thermal_zone0/temp``."""
    poll_s: float = Field(2.0, gt=0)
    max_pause_s: float | None = Field(1800.0, ge=0)
    """Give up (stop with reason "thermal", checkpointed and resumable) after this long paused; null: wait."""

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.max_temp_c is not None and self.resume_temp_c > self.max_temp_c:
            raise ValueError(f"resume_temp_c ({self.resume_temp_c}) must be <= max_temp_c ({self.max_temp_c})")
        return self


class SequentialConfig(ConfigModel):
    """HOPE v1 seed training: components trained one at a time (load, train, save, free)."""

    rlds_dir: PathStr = "/opt/continuonos/brain/rlds/episodes"
    """Where the RLDS episodes are (any layout ``read_episodes`` takes)."""
    model_root: PathStr = "/opt/continuonos/brain/models"
    """The model store; each finished component is published to ``<model_root>/candidate``."""
    run_dir: PathStr = "/opt/continuonos/brain/runs/hope-v1"
    """Logs (metrics.jsonl, summary.json), checkpoints and finished components of this run."""
    seed: int = Field(0, ge=0)
    deterministic: bool = True
    """Deterministic kernels and a fixed data order, so a killed-and-resumed run ends with the
    same weights as an uninterrupted one."""
    torch_threads: int = Field(2, ge=1)
    """torch intra-op threads (a Pi 5 has 4 cores; leave some for the robot). Per process: under
    torchrun, N ranks on one board use N * torch_threads cores."""
    order: list[ComponentName] = Field(default_factory=lambda: list(COMPONENT_ORDER), min_length=1)
    """Components to train, in order; each must come after the ones it depends on
    (mid_loop needs vqvae; fast_loop with ``model.fast.use_context`` needs mid_loop, and on
    camera observations with ``model.fast.pixel_encoder`` ``"vqvae_finetuned"`` or
    ``"vqvae_frozen"`` the vqvae whose encoder it copies; the default ``"trained"`` needs none)."""
    model: dict[str, Any] = Field(default_factory=dict)
    """HopeConfig fields (see continuonbrain/hope/config.py). ``obs_dim``/``action_dim`` are
    taken from the data when absent."""
    observation_keys: list[NonEmpty] | None = None
    """Dict observations: numeric keys concatenated into the state vector (null: all but the
    image keys, sorted). Recorded as the model's ``state_keys``, so the brain builds the same
    vector from a dict observation when it acts."""
    image_keys: list[NonEmpty] = Field(default_factory=list)
    """Dict observations: camera keys (``uint8 [H, W, C]`` frames, encoded or raw) that the
    VQ-VAE's conv encoder tokenizes with the state vector. Empty: every camera key of the first
    episode (encoded frames or ``uint8 [T, H, W, C]`` arrays), unless ``model.image_keys`` is
    given (``[]``: no cameras). They feed the VQ-VAE, the Mid loop and, every tick, the Fast loop
    (``model.fast.image_features``: its own conv encoder, trained with it on the action loss; see
    continuonbrain/hope/pixels.py), as when the brain acts. ``model.image_shapes`` defaults to
    the first episode's first frame, any size. Observations may hold images only (no numeric
    key: ``obs_dim`` 0, a Donkeycar tub).
    Windows then carry frames: a Mid shuffle buffer holds ``shuffle_buffer * L`` of them, so
    keep it small for cameras (2048 two-second windows of 64x64 RGB at 50 Hz are ~2.5 GB)."""
    action_keys: list[NonEmpty] | None = None
    """Dict actions: keys concatenated into the action vector (null: all, sorted)."""
    max_imagined_fraction: float | None = Field(0.5, ge=0, le=1)
    """Largest share of imagined episodes (provenance ``imagined:*`` or tag ``imagined``) in the
    training stream, counted in episodes at every point of the stream (null: no cap, allowed
    only without ``imagined_rlds_dirs``). It applies to imagined episodes in ``rlds_dir`` and in
    ``imagined_rlds_dirs`` alike (continuonbrain/trainer/episode_mix.py: the one rule)."""
    imagined_rlds_dirs: list[Annotated[PathStr, Field(min_length=1)]] = Field(default_factory=list)
    """Directories of imagined episodes (``continuonbrain imagine --out DIR``) to mix into the
    training stream: each epoch is one pass over ``rlds_dir``, with imagined episodes inserted
    after the real ones as far as ``max_imagined_fraction`` allows, drawn from a per-epoch
    shuffle so that successive epochs use different ones (continuonbrain/trainer/episode_mix.py).
    Episodes there that are not marked imagined are skipped. Imagined episodes may also sit in
    ``rlds_dir`` itself; they are then capped in directory order, so a separate directory is
    the better place."""
    holdout_episodes: int = Field(8, ge=0)
    """The newest real episodes of ``rlds_dir`` held out for the promotion gate and never
    trained on (at most a quarter of the real episodes; imagined ones never count). Their ids
    go into the candidate's manifest (``held_out``), where the gate reads them: candidate and
    current are compared on exactly those. Kept across ``--resume`` (``state.json``), so
    episodes recorded meanwhile do not move the split. 0: none (the gate then falls back to
    the newest episodes, which were training data, and says so)."""
    normalizer_episodes: int = Field(200, ge=1)
    """Episodes sampled to fit the observation normaliser."""
    min_available_mb: float | None = Field(300.0, gt=0)
    """Stop a component when the system's available memory drops below this (MB)."""
    thermal: ThermalConfig = Field(default_factory=ThermalConfig)
    components: dict[ComponentName, ComponentTrainConfig] = Field(default_factory=dict)
    """Per-component budgets; missing components and fields take ComponentTrainConfig's defaults."""

    @model_validator(mode="after")
    def _complete(self) -> Self:
        for name in COMPONENT_ORDER:  # in place: every component has its budgets
            self.components.setdefault(name, ComponentTrainConfig())
        if len(set(self.order)) != len(self.order):
            raise ValueError(f"order lists a component twice: {self.order}")
        if self.imagined_rlds_dirs and self.max_imagined_fraction is None:
            raise ValueError("imagined_rlds_dirs needs max_imagined_fraction (it sets the imagined share), got null")
        _check_model_block(self.model)
        return self

    @classmethod
    def from_json(
        cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None, **fields: Any
    ) -> SequentialConfig:
        """:meth:`load` with ``overrides`` (dotted keys) and, as before, top-level fields as
        keywords (``rlds_dir=...``; None values ignored)."""
        merged = {k: v for k, v in fields.items() if v is not None}
        merged.update(overrides or {})
        return cls.load(path, merged)

    def cap_steps(self, max_steps: int) -> None:
        """``--max-steps N``: no component trains more than N steps."""
        for comp in self.components.values():
            comp.max_steps = min(comp.max_steps, max_steps)


def _check_model_block(model: dict[str, Any]) -> None:
    """The ``model`` block holds HopeConfig fields: unknown keys are refused now, not at the
    start of training, and the component sub-blocks (which depend on nothing in the data) are
    validated whole. Shapes and keys are checked once the data has filled them in."""
    # Here, not at the top: ``continuonbrain.hope`` imports torch (the model), and the command
    # line parses its options with this module.
    from continuonbrain.hope.config import FastLoopConfig, HopeConfig, MidLoopConfig, VQVAEConfig

    known = set(HopeConfig.model_fields)
    unknown = sorted(set(model) - known)
    if unknown:
        raise ValueError(f"model: unknown HopeConfig field(s) {unknown} (known: {sorted(known)})")
    parts: dict[str, type[ConfigModel]] = {"vqvae": VQVAEConfig, "mid": MidLoopConfig, "fast": FastLoopConfig}
    for key, sub in parts.items():
        if key in model:
            try:
                sub.from_dict(model[key])
            except ValueError as exc:
                raise ValueError(f"model.{key}: {exc}") from None


# --------------------------------------------------------------------------- command line

#: ``continuonbrain train``'s default config.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "pi5-hope-v1.json"


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``continuonbrain train`` (also ``python run_trainer.py``). Torch-free, so
    building the command's parser stays light."""
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config JSON (default: pi5-hope-v1)")
    p.add_argument("--rlds-dir", help="episodes to train on (overrides the config)")
    p.add_argument(
        "--imagined-dir",
        action="append",
        metavar="DIR",
        help="imagined episodes to mix in under max_imagined_fraction (repeatable; adds to imagined_rlds_dirs)",
    )
    p.add_argument("--model-root", help="model store; finished components go to its candidate slot")
    p.add_argument("--run-dir", help="logs, checkpoints and components of this run")
    p.add_argument("--max-steps", type=int, help="cap every component at N steps")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoints")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by its dotted name (components.fast_loop.max_steps=500, "
        "components.*.batch_size=32, thermal.max_temp_c=85; repeatable; VALUE is JSON or a string)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--events", metavar="FILE", help="also append every progress event to FILE as JSON lines")


def train_config_from_args(args: argparse.Namespace) -> SequentialConfig:
    """The config ``continuonbrain train`` runs with: the file, then ``--set`` overrides, then
    the path options (relative paths on the command line resolve against the working directory)."""
    overrides = parse_set(getattr(args, "set", None) or [])
    for key in ("rlds_dir", "model_root", "run_dir"):
        if getattr(args, key, None):
            overrides[key] = getattr(args, key)
    cfg = SequentialConfig.load(args.config, overrides)
    if getattr(args, "imagined_dir", None):
        extra = [str(Path(d).resolve()) for d in args.imagined_dir]
        cfg = cfg.with_overrides({"imagined_rlds_dirs": [*cfg.imagined_rlds_dirs, *extra]})
    if getattr(args, "max_steps", None) is not None:
        cfg.cap_steps(args.max_steps)
    return cfg
