"""Configuration of HOPE sequential training (``configs/pi5-hope-v1.json``), field by field.

JSON has no comments, so every field is documented here, and ``continuonbrain train
--config FILE`` rejects unknown keys (a typo must not silently fall back to a default).
Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPONENT_ORDER = ("vqvae", "mid_loop", "fast_loop")


@dataclass
class ComponentTrainConfig:
    """Budgets and optimisation of one component."""

    #: Optimizer steps. ``--max-steps N`` caps every component at N. Under torchrun all ranks
    #: run the same number of steps (every stop decision is agreed between them).
    max_steps: int = 150
    #: Wall-clock budget in seconds (thermal pauses count); null: none.
    max_wall_time_s: float | None = 300.0
    #: Windows per batch, per rank: under ``torchrun --nproc_per_node=N`` each of the N ranks
    #: draws ``batch_size`` windows from its own shard of the episodes and a step averages the
    #: gradients of ``N * batch_size`` windows (the learning rate is not rescaled).
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    #: Linear warm-up steps, then cosine decay to ``min_lr_fraction`` of the rate.
    warmup_steps: int = 10
    min_lr_fraction: float = 0.1
    #: Gradient-norm clip (the logged ``grad_norm`` is the norm before clipping).
    grad_clip: float = 1.0
    #: Window length in seconds: null for the VQ-VAE (single steps), 1-10 s for the Mid loop,
    #: 0.05-0.1 s for the Fast loop.
    window_s: float | None = None
    #: Windows held in the shuffle buffer (bounded memory).
    shuffle_buffer: int = 2048
    #: Process RSS budget in MB, checked every ``memory_check_every`` steps; over it, the
    #: component checkpoints and stops with reason "memory". Null: no RSS budget.
    memory_budget_mb: float | None = 2048.0
    memory_check_every: int = 5
    #: Checkpoint (weights, optimizer, scheduler, RNG, data position) every N steps.
    checkpoint_every: int = 25
    #: Write a metrics.jsonl line every N steps.
    log_every: int = 1


@dataclass
class ThermalConfig:
    """Pause between steps above ``max_temp_c``; resume below ``resume_temp_c``."""

    max_temp_c: float = 80.0
    resume_temp_c: float = 70.0
    #: Root of sysfs; the SoC temperature is ``<root>/class/thermal/thermal_zone0/temp``.
    sysfs_root: str = "/sys"
    poll_s: float = 2.0
    #: Give up (stop the component with reason "thermal") after this long paused; null: wait.
    max_pause_s: float | None = 1800.0


@dataclass
class SequentialConfig:
    """HOPE v1 seed training: components trained one at a time (load, train, save, free)."""

    #: Where the RLDS episodes are (any layout ``read_episodes`` takes).
    rlds_dir: str = "/opt/continuonos/brain/rlds/episodes"
    #: The model store; each finished component is published to ``<model_root>/candidate``.
    model_root: str = "/opt/continuonos/brain/models"
    #: Logs (metrics.jsonl, summary.json), checkpoints and finished components of this run.
    run_dir: str = "/opt/continuonos/brain/runs/hope-v1"
    seed: int = 0
    #: Deterministic kernels and a fixed data order, so a killed-and-resumed run ends with the
    #: same weights as an uninterrupted one.
    deterministic: bool = True
    #: torch intra-op threads (a Pi 5 has 4 cores; leave some for the robot). Per process: under
    #: torchrun, N ranks on one board use N * torch_threads cores.
    torch_threads: int = 2
    #: Components to train, in order; each must come after the ones it depends on
    #: (mid_loop needs vqvae; fast_loop with ``model.fast.use_context`` needs mid_loop).
    order: list[str] = field(default_factory=lambda: list(COMPONENT_ORDER))
    #: HopeConfig fields (see continuonbrain/hope/config.py). ``obs_dim``/``action_dim`` are
    #: taken from the data when absent.
    model: dict[str, Any] = field(default_factory=dict)
    #: Dict observations: numeric keys concatenated into the state vector (null: all but the
    #: image keys, sorted). Recorded as the model's ``state_keys``, so the brain builds the same
    #: vector from a dict observation when it acts.
    observation_keys: list[str] | None = None
    #: Dict observations: camera keys (``uint8 [H, W, C]`` frames, encoded or raw) that the
    #: VQ-VAE's conv encoder tokenizes with the state vector. They feed the VQ-VAE and the Mid
    #: loop; the Fast loop sees them only through the Mid loop's context, as when the brain
    #: acts. ``model.image_shapes`` defaults to the first episode's first frame. Observations
    #: may hold images only (no numeric key: ``obs_dim`` 0) if ``model.fast.use_context`` is on.
    #: Windows then carry frames: a Mid shuffle buffer holds ``shuffle_buffer * L`` of them, so
    #: keep it small for cameras (2048 two-second windows of 64x64 RGB at 50 Hz are ~2.5 GB).
    image_keys: list[str] = field(default_factory=list)
    #: Dict actions: keys concatenated into the action vector (null: all, sorted).
    action_keys: list[str] | None = None
    #: Largest share of imagined episodes (provenance ``imagined:*`` or tag ``imagined``) in the
    #: training stream, counted in episodes at every point of the stream (null: no cap, allowed
    #: only without ``imagined_rlds_dirs``). It applies to imagined episodes in ``rlds_dir`` and in
    #: ``imagined_rlds_dirs`` alike.
    max_imagined_fraction: float | None = 0.5
    #: Directories of imagined episodes (``continuonbrain imagine --out DIR``) to mix into the
    #: training stream: each epoch is one pass over ``rlds_dir``, with imagined episodes inserted
    #: after the real ones as far as ``max_imagined_fraction`` allows, drawn from a per-epoch
    #: shuffle so that successive epochs use different ones (continuonbrain/trainer/episode_mix.py).
    #: Episodes there that are not marked imagined are skipped. Imagined episodes may also sit in
    #: ``rlds_dir`` itself; they are then capped in directory order, so a separate directory is
    #: the better place.
    imagined_rlds_dirs: list[str] = field(default_factory=list)
    #: Episodes sampled to fit the observation normaliser.
    normalizer_episodes: int = 200
    #: Stop a component when the system's available memory drops below this (MB).
    min_available_mb: float | None = 300.0
    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    #: Per-component budgets; missing fields take ComponentTrainConfig's defaults.
    components: dict[str, ComponentTrainConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.thermal, dict):
            self.thermal = _from_dict(ThermalConfig, self.thermal, "thermal")
        comps = {}
        for name, value in (self.components or {}).items():
            if name not in COMPONENT_ORDER:
                raise ValueError(f"components.{name}: unknown component (expected one of {COMPONENT_ORDER})")
            comps[name] = (
                value
                if isinstance(value, ComponentTrainConfig)
                else _from_dict(ComponentTrainConfig, value, f"components.{name}")
            )
        for name in COMPONENT_ORDER:
            comps.setdefault(name, ComponentTrainConfig())
        self.components = comps
        for name in self.order:
            if name not in COMPONENT_ORDER:
                raise ValueError(f"order: unknown component {name!r} (expected some of {COMPONENT_ORDER})")
        dirs = self.imagined_rlds_dirs
        if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
            raise ValueError(f"imagined_rlds_dirs must be a list of directory paths, got {dirs!r}")
        if dirs and self.max_imagined_fraction is None:
            raise ValueError("imagined_rlds_dirs needs max_imagined_fraction (it sets the imagined share), got null")

    @classmethod
    def from_json(cls, path: str | Path, **overrides: Any) -> SequentialConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the config ({exc})") from None
        data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" keys
        cfg = _from_dict(cls, data, str(path))
        for key in ("rlds_dir", "model_root", "run_dir"):
            value = getattr(cfg, key)
            if value and not Path(value).is_absolute():
                setattr(cfg, key, str((path.parent / value).resolve()))
        cfg.imagined_rlds_dirs = [
            d if Path(d).is_absolute() else str((path.parent / d).resolve()) for d in cfg.imagined_rlds_dirs
        ]
        for key, value in overrides.items():
            if value is not None:
                setattr(cfg, key, value)
        return cfg

    def cap_steps(self, max_steps: int) -> None:
        for comp in self.components.values():
            comp.max_steps = min(comp.max_steps, max_steps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls: type, data: Any, owner: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{owner} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{owner}: unknown field(s) {unknown} (known: {sorted(names)})")
    return cls(**data)
