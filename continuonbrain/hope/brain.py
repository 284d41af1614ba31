"""HopeBrain: the assembled HOPE v1 seed that acts, and its safetensors persistence.

A brain holds up to three components, by name:

* ``vqvae`` (:class:`~continuonbrain.hope.vqvae.VQVAE`): observations -> tokens,
* ``mid_loop`` (:class:`~continuonbrain.hope.mid_loop.MidLoop`): tokens + actions -> context (and world model),
* ``fast_loop`` (:class:`~continuonbrain.hope.fast_loop.FastLoop`): observation (+ camera
  features, + context) -> action.

Any subset may be present: a brain with only a Fast loop acts (with a zero context), which
is what sequential training produces first and what a minimal robot runs. ``act`` needs a
Fast loop; the Mid loop is used only together with the VQ-VAE that tokenizes for it.

Acting (:meth:`HopeBrain.act`) carries recurrent state between calls: the Fast loop steps on
every call, the Mid loop every ``mid_every`` calls (on calls 0, k, 2k, ... after a reset,
with the mean of the actions taken since its last step), and its context is held in
between. A Fast loop that reads images (``fast.image_features``) encodes this tick's frames
with its own conv encoder (:class:`~continuonbrain.hope.pixels.PixelEncoder`, torch
inference) on every call. By default the Fast loop runs on its pure-numpy export
(:class:`~continuonbrain.hope.fast_loop.FastLoopNumpy`); :meth:`HopeBrain.reset` re-exports
it when the torch weights have changed since the last export.

Persistence is one ``<name>.safetensors`` file per component (its ``state_dict``, buffers
included, so observation normaliser statistics, action bounds and the VQ codebook travel
with the weights) plus ``config.json`` (the :class:`~continuonbrain.hope.config.HopeConfig`).
Files are written atomically (temporary file + rename) because the runtime may be reading a
slot while the trainer writes the next one, and read with ``safetensors.torch.load_file``:
no pickle anywhere. :func:`save_component` / :func:`load_component` let a trainer train,
save and free one component at a time. A LoRA adapter (``adapter_config.json`` +
``adapter_model.safetensors``, keys relative to the brain, e.g.
``base_model.model.fast_loop.in_proj.lora_A.weight``) found beside the components is merged at
load time.

Why one module of 467 lines: the brain and its file format belong together: ``load`` and
``save`` must match what :func:`save_component` / :func:`load_component` write, and acting
depends on the buffers that persistence carries; most of the length is :class:`HopeBrain`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from continuonbrain.fsutil import temp_file
from continuonbrain.hope.config import HopeConfig
from continuonbrain.hope.fast_loop import FastLoop, FastLoopNumpy, FastLoopNumpyState
from continuonbrain.hope.lora import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, find_lora_layers, load_adapter
from continuonbrain.hope.mid_loop import MidLoop, MidState
from continuonbrain.hope.safetensors_io import safetensors_bytes
from continuonbrain.hope.vqvae import VQVAE

__all__ = [
    "COMPONENTS",
    "CONFIG_NAME",
    "HopeBrain",
    "build_component",
    "component_path",
    "list_components",
    "load_component",
    "save_component",
]

log = logging.getLogger(__name__)

#: Component names, in the order sequential training builds them.
COMPONENTS: tuple[str, ...] = ("vqvae", "mid_loop", "fast_loop")
CONFIG_NAME = "config.json"
_CLASSES: dict[str, type[nn.Module]] = {"vqvae": VQVAE, "mid_loop": MidLoop, "fast_loop": FastLoop}

Backend = Literal["numpy", "torch"]
_NO_IMAGES: dict[str, np.ndarray] = {}


# --------------------------------------------------------------------------- component files


def _check_name(name: str) -> None:
    if name not in _CLASSES:
        raise ValueError(f"unknown HOPE component {name!r}; components are {list(COMPONENTS)}")


def build_component(name: str, config: HopeConfig) -> nn.Module:
    """A freshly initialised component ``name`` for ``config``."""
    _check_name(name)
    return _CLASSES[name](config)


def component_path(directory: str | Path, name: str) -> Path:
    _check_name(name)
    return Path(directory) / f"{name}.safetensors"


def list_components(directory: str | Path) -> list[str]:
    """Names of the components saved in ``directory``, in :data:`COMPONENTS` order."""
    return [n for n in COMPONENTS if component_path(directory, n).is_file()]


def _atomic_write(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename over ``path``, so readers never see a partial file."""
    tmp = temp_file(path)  # mode from the umask, like every file the project writes
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_config(directory: Path, config: HopeConfig) -> Path:
    path = directory / CONFIG_NAME
    _atomic_write(path, lambda tmp: Path(tmp).write_text(config.to_json() + "\n", encoding="utf-8"))
    return path


def save_component(directory: str | Path, name: str, module: nn.Module, overwrite_config: bool = False) -> Path:
    """Write ``<directory>/<name>.safetensors`` (all parameters and buffers of ``module``).

    ``config.json`` is written from ``module.config`` when absent; when present and different
    this raises (components of one directory must share one config) unless
    ``overwrite_config``. A module with unmerged LoRA layers is refused: merge it
    (:func:`~continuonbrain.hope.lora.merge_lora`) or save the adapter separately
    (:func:`~continuonbrain.hope.lora.save_adapter`).
    """
    _check_name(name)
    if not isinstance(module, _CLASSES[name]):
        raise TypeError(f"component {name!r} must be a {_CLASSES[name].__name__}, got {type(module).__name__}")
    if find_lora_layers(module):
        raise ValueError(
            f"component {name!r} has unmerged LoRA layers {sorted(find_lora_layers(module))}: "
            "merge_lora() it, or save the adapter with save_adapter()"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: HopeConfig = module.config  # type: ignore[assignment]
    cfg_path = directory / CONFIG_NAME
    if cfg_path.is_file() and not overwrite_config:
        existing = HopeConfig.load(cfg_path)
        if existing.to_dict() != config.to_dict():
            raise ValueError(
                f"{cfg_path} holds a different HopeConfig than component {name!r} was built with; "
                "save into a fresh directory or pass overwrite_config=True"
            )
    else:
        _write_config(directory, config)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    meta = {
        "format": "pt",
        "component": name,
        "model_type": config.model_type,
        "hope_config": config.to_json(indent=None),
    }
    path = component_path(directory, name)
    data = safetensors_bytes(tensors, meta)  # canonical header: equal weights, equal sha256
    _atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


def load_component(directory: str | Path, name: str, config: HopeConfig | None = None) -> nn.Module:
    """Build component ``name`` and load ``<directory>/<name>.safetensors`` into it (eval mode).

    ``config`` defaults to ``<directory>/config.json`` (else the config stored in the file's
    metadata). A file that does not fit the config raises :class:`ValueError`.
    """
    path = component_path(directory, name)
    if not path.is_file():
        raise FileNotFoundError(f"no component {name!r} in {directory} ({path.name} is missing)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("component", name) != name:
        raise ValueError(f"{path} holds component {meta.get('component')!r}, not {name!r}")
    if config is None:
        cfg_path = Path(directory) / CONFIG_NAME
        if cfg_path.is_file():
            config = HopeConfig.load(cfg_path)
        elif "hope_config" in meta:
            config = HopeConfig.from_json(meta["hope_config"])
        else:
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory} and no config in {path.name}")
    module = build_component(name, config)
    tensors = load_file(str(path))
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit the config: {exc}") from None
    return module.eval()


# --------------------------------------------------------------------------- the brain


class _Stream:
    """The mutable state of one control stream. A plain slotted object rather than brain
    attributes, because every attribute write on an ``nn.Module`` goes through its slow
    ``__setattr__``, and ``act`` updates several of them per tick."""

    __slots__ = (
        "act_count",
        "act_sum",
        "context",
        "fast_np",
        "mid_active",
        "mid_every",
        "mid_state",
        "np_state",
        "np_version",
        "ready",
        "tick",
        "torch_state",
    )

    def __init__(self, action_dim: int, mid_every: int):
        self.fast_np: FastLoopNumpy | None = None
        self.np_version: tuple | None = None
        self.np_state: FastLoopNumpyState | None = None
        self.torch_state: list[Tensor] | None = None
        self.context: Tensor | None = None
        self.mid_state: MidState | None = None
        self.act_sum = np.zeros(action_dim, np.float64)
        self.act_count = 0
        self.tick = 0
        self.ready = False
        self.mid_active = False
        self.mid_every = mid_every


class HopeBrain(nn.Module):
    """The assembled model that acts; see the module doc.

    ``backend``: ``"numpy"`` (default) runs the Fast loop on its numpy export, ``"torch"`` on
    the module itself (same function; slower per call, but follows weight changes at once).
    A brain carries one control stream's state; :meth:`fork` makes another stream that
    shares the weights. The modules passed in are shared, not copied, must have been built
    from an equal ``config``, and are put in eval mode (a brain is built to act).
    """

    def __init__(
        self,
        config: HopeConfig,
        *,
        vqvae: VQVAE | None = None,
        mid_loop: MidLoop | None = None,
        fast_loop: FastLoop | None = None,
        backend: Backend = "numpy",
    ):
        super().__init__()
        if backend not in ("numpy", "torch"):
            raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
        for name, module in (("vqvae", vqvae), ("mid_loop", mid_loop), ("fast_loop", fast_loop)):
            if module is None:
                continue
            if not isinstance(module, _CLASSES[name]):
                raise TypeError(f"{name} must be a {_CLASSES[name].__name__}, got {type(module).__name__}")
            if module.config.to_dict() != config.to_dict():  # type: ignore[union-attr]
                raise ValueError(f"{name} was built from a different HopeConfig than the brain's")
        self.config = config
        self.backend: Backend = backend
        self.vqvae = vqvae
        self.mid_loop = mid_loop
        self.fast_loop = fast_loop
        self._s = _Stream(config.action_dim, config.mid_every)
        self._obs_shape = (config.obs_dim,)
        self.eval()

    # -- construction --------------------------------------------------------------------

    @classmethod
    def build(cls, config: HopeConfig, components: Iterable[str] = COMPONENTS, backend: Backend = "numpy") -> HopeBrain:
        """A brain with freshly initialised ``components``."""
        mods = {}
        for name in components:
            mods[name] = build_component(name, config)
        return cls(config, backend=backend, **mods)

    def components(self) -> list[str]:
        """Names of the components present, in :data:`COMPONENTS` order."""
        return [n for n in COMPONENTS if getattr(self, n) is not None]

    def fork(self) -> HopeBrain:
        """Another control stream over the same modules (and the same numpy export), with its own state."""
        other = HopeBrain(
            self.config, vqvae=self.vqvae, mid_loop=self.mid_loop, fast_loop=self.fast_loop, backend=self.backend
        )
        other._s.fast_np, other._s.np_version = self._s.fast_np, self._s.np_version
        return other

    def fit_normalizer(self, observations: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> None:
        """Fit the observation statistics of every component that has them (raw ``[..., obs_dim]``)."""
        for module in (self.vqvae, self.fast_loop):
            if module is not None:
                module.fit_normalizer(observations, mask)

    # -- persistence ---------------------------------------------------------------------

    def save(self, directory: str | Path) -> list[Path]:
        """Write ``config.json`` and one ``<name>.safetensors`` per present component."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = [_write_config(directory, self.config)]
        for name in self.components():
            paths.append(save_component(directory, name, getattr(self, name), overwrite_config=True))
        return paths

    @classmethod
    def load(
        cls,
        directory: str | Path,
        components: Sequence[str] | None = None,
        *,
        apply_adapter: bool = True,
        backend: Backend = "numpy",
    ) -> HopeBrain:
        """Read a brain saved by :meth:`save` (all components found, or only ``components``).

        With ``apply_adapter`` a PEFT-format LoRA adapter in the same directory is merged into
        the weights.
        """
        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a HOPE model directory")
        config = HopeConfig.load(cfg_path)
        names = list_components(directory) if components is None else list(components)
        if not names:
            raise FileNotFoundError(f"no component files (<{'|'.join(COMPONENTS)}>.safetensors) in {directory}")
        mods = {name: load_component(directory, name, config) for name in names}
        brain = cls(config, backend=backend, **mods)
        if (
            apply_adapter
            and (directory / ADAPTER_CONFIG_NAME).is_file()
            and (directory / ADAPTER_WEIGHTS_NAME).is_file()
        ):
            load_adapter(directory, brain, merge=True)
        return brain.eval()

    # -- acting --------------------------------------------------------------------------

    def _weights_version(self) -> tuple:
        """Changes whenever a Fast-loop parameter or buffer is modified in place (optimiser
        steps, ``load_state_dict``) or replaced (LoRA merge), so :meth:`reset` knows when to
        re-export the numpy path."""
        assert self.fast_loop is not None
        return tuple((id(t), t._version) for t in (*self.fast_loop.parameters(), *self.fast_loop.buffers()))

    @property
    def uses_mid(self) -> bool:
        """True when acting refreshes a Mid-loop context (Mid loop, VQ-VAE and a context input present)."""
        return (
            self.mid_loop is not None
            and self.vqvae is not None
            and self.fast_loop is not None
            and self.fast_loop.context_dim > 0
        )

    def reset(self) -> None:
        """Start a new control stream (episode): zero all recurrent state and the context."""
        s = self._s
        if self.fast_loop is not None and self.backend == "numpy":
            version = self._weights_version()
            if s.fast_np is None or version != s.np_version:
                s.fast_np = FastLoopNumpy.from_torch(self.fast_loop)
                s.np_version = version
            s.np_state = s.fast_np.init_state()
        else:
            s.fast_np, s.np_version, s.np_state = None, None, None
        s.torch_state = None
        s.context = None
        s.mid_state = None
        if self.mid_loop is not None and self.vqvae is None:
            log.warning("this brain has a mid_loop but no vqvae to tokenize for it; acting with a zero context")
        s.act_sum[:] = 0.0
        s.act_count = 0
        s.tick = 0
        s.mid_active = self.uses_mid
        s.mid_every = self.config.mid_every
        s.ready = self.fast_loop is not None

    def split_observation(self, observation: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(vector float32 [obs_dim], images {key: uint8 [H, W, C]})`` from a vector or dict observation."""
        cfg = self.config
        if isinstance(observation, Mapping):
            missing = [k for k in (*cfg.state_keys, *cfg.image_keys) if k not in observation]
            if missing:
                raise ValueError(f"observation lacks key(s) {missing} (has {sorted(observation)})")
            if cfg.state_keys:
                parts = [np.asarray(observation[k], dtype=np.float32).reshape(-1) for k in cfg.state_keys]
                vec = np.concatenate(parts) if len(parts) > 1 else parts[0]
            elif cfg.obs_dim:
                raise ValueError("a dict observation needs config.state_keys to say which keys form the state vector")
            else:
                vec = np.zeros(0, np.float32)
            images = {}
            for k in cfg.image_keys:
                img = np.asarray(observation[k])
                if img.ndim == 2:
                    img = img[:, :, None]
                images[k] = img
        else:
            vec = np.asarray(observation, dtype=np.float32).reshape(-1)
            images = {}
        if vec.shape[0] != cfg.obs_dim:
            raise ValueError(f"observation has {vec.shape[0]} state features, the brain expects obs_dim={cfg.obs_dim}")
        return vec, images

    def act(self, observation: Any) -> np.ndarray:
        """One control tick: observation (vector, or dict per the config) -> action ``float32 [A]``.

        State is carried between calls until :meth:`reset` (called automatically before the first act).
        """
        s = self._s
        if not s.ready:
            if self.fast_loop is None:
                raise RuntimeError(f"this brain has no fast_loop (components: {self.components()}); it cannot act")
            self.reset()
        if type(observation) is np.ndarray and observation.dtype == np.float32 and observation.shape == self._obs_shape:
            obs, images = observation, _NO_IMAGES  # the common case, without the general parsing
        else:
            obs, images = self.split_observation(observation)
        if s.mid_active and s.tick % s.mid_every == 0:
            self._refresh_context(obs, images)
        pixels = self.fast_loop.pixels  # type: ignore[union-attr]
        feats = pixels.features(images) if pixels is not None else None  # every tick: the reflex sees the frame
        if s.fast_np is not None:
            action, _ = s.fast_np.step(obs, s.np_state, image_features=feats)
        else:
            with torch.inference_mode():
                a, s.torch_state = self.fast_loop.step(  # type: ignore[union-attr]
                    torch.from_numpy(obs)[None],
                    s.torch_state,
                    s.context,
                    image_features=None if feats is None else torch.from_numpy(feats)[None],
                )
            action = a[0].numpy()
        if s.mid_active:
            s.act_sum += action
            s.act_count += 1
        s.tick += 1
        return action

    def _refresh_context(self, obs: np.ndarray, images: dict[str, np.ndarray]) -> None:
        """Tokenize the observation and advance the Mid loop one step (``mid_every`` ticks)."""
        assert self.vqvae is not None and self.mid_loop is not None
        s = self._s
        with torch.inference_mode():
            prev = None
            if s.act_count:
                prev = torch.from_numpy((s.act_sum / s.act_count).astype(np.float32))[None]
            codes, _ = self.vqvae.encode(
                torch.from_numpy(obs)[None] if obs.size else None,
                {k: torch.from_numpy(np.array(v))[None] for k, v in images.items()},
            )
            ctx, s.mid_state = self.mid_loop.step(codes, s.mid_state, prev)
        s.act_sum[:] = 0.0
        s.act_count = 0
        if s.fast_np is not None:
            assert s.np_state is not None
            s.fast_np.set_context(s.np_state, ctx[0].numpy())
        else:
            s.context = ctx

    @property
    def tick(self) -> int:
        """Calls to :meth:`act` since the last reset."""
        return self._s.tick

    def extra_repr(self) -> str:
        return f"components={self.components()}, backend={self.backend!r}"
