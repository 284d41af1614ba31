"""Configuration of the HOPE v1 seed model: one model per component plus the whole.

Each component (VQ-VAE tokenizer, Mid loop world model, Fast loop reflex policy) has its own
hyperparameter model, and :class:`HopeConfig` holds them together with the facts they
must agree on (observation and action sizes, action bounds, codebook size, the Mid loop's
rate). Components are built from the whole :class:`HopeConfig` rather than from their own
part alone because those shared facts must match across components: the Mid loop's
vocabulary is the VQ-VAE codebook, and the Fast loop's context input is the Mid loop's
context output. One config object makes a mismatch impossible instead of merely detectable.

Everything is plain JSON (``to_dict``/``from_dict``, ``to_json``/``from_json``,
``save``/``load``), because the model store keeps the config next to the weights as
``config.json`` and must never need pickle. The configs are
:class:`~continuonbrain.config_base.ConfigModel`\\ s, the project's one config base: unknown
keys and out-of-range values raise :class:`~continuonbrain.config_base.ConfigError` (a
``ValueError``) naming the field (``HopeConfig.vqvae.decay: ...``), so a hand-edited config
fails at load time, not deep inside a training run.

Time constants (``tau_*``) are in **steps of the loop that uses them**: control steps for the
Fast loop, Mid-loop steps (``mid_every`` control steps each) for the Mid loop.

Which keys of a dict observation form the state vector is decided here, once, by
:meth:`HopeConfig.vector_keys`: the trainers, the shadow gate and the brain all ask it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from continuonbrain.config_base import ConfigError, ConfigModel
from continuonbrain.fsutil import atomic_write_bytes

__all__ = ["FastLoopConfig", "HopeConfig", "MidLoopConfig", "VQVAEConfig", "pool_factor", "pooled_size"]

PositiveInt = Annotated[int, Field(ge=1)]


def pool_factor(shape: Sequence[int], max_side: int | None) -> int:
    """The integer average-pooling factor that brings a frame's longer side within
    ``max_side`` (1: no pooling); see :attr:`VQVAEConfig.max_image_side`."""
    longest = max(int(shape[0]), int(shape[1]))
    return 1 if max_side is None or longest <= max_side else -(-longest // max_side)


def pooled_size(shape: Sequence[int], max_side: int | None) -> tuple[int, int, int]:
    """``[H, W, C]`` after :func:`pool_factor` pooling (partial windows at the edges kept: ceil)."""
    p = pool_factor(shape, max_side)
    return (-(-int(shape[0]) // p), -(-int(shape[1]) // p), int(shape[2]))


def _check_taus(tau_min: float, tau_max: float, tau_cap: float | None) -> None:
    if tau_max < tau_min:
        raise ValueError(f"tau_max ({tau_max}) must be >= tau_min ({tau_min})")
    if tau_cap is not None and tau_cap <= tau_max:
        raise ValueError(f"tau_cap ({tau_cap}) must be > tau_max ({tau_max}), or null for no cap")


# --------------------------------------------------------------------------- components


class VQVAEConfig(ConfigModel):
    """The observation tokenizer.

    Each observation becomes ``n_tokens`` codes from one shared codebook of
    ``codebook_size`` entries of ``code_dim`` floats (product quantisation): several small
    tokens describe an observation far better than one code from the same codebook, while
    the Mid loop still predicts a small categorical per token.
    """

    config_name: ClassVar[str] = "HopeConfig.vqvae"

    codebook_size: int = Field(256, ge=2)
    code_dim: PositiveInt = 8
    n_tokens: PositiveInt = 4
    hidden_dim: PositiveInt = 128
    n_hidden: int = Field(2, ge=0)
    conv_channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32, 32], min_length=1)
    """Output channels of the stride-2 conv layers of the image encoder (one halving each,
    rounding down: any H and W of at least ``2 ** len(conv_channels)`` work; the decoder
    mirrors the exact sizes with ``output_padding``)."""
    max_image_side: PositiveInt | None = 80
    """Frames whose longer side exceeds this are average-pooled by the smallest integer factor
    that brings it within (160x120 -> 80x60) before the conv encoder, and reconstructed at that
    size (decoded frames are scaled back up). A 2x pool costs 4x less conv work in every
    component and at every tick, and a steering policy needs lane lines, not fine texture
    (BENCHMARKS.md, "Pixel reflex"). Null: full resolution."""
    image_feature_dim: PositiveInt = 64
    """Width of each image key's conv feature: what the VQ-VAE quantises (with the state) and,
    unquantised, what the Fast loop sees of the camera every tick (``fast.image_features``)."""
    decay: float = Field(0.95, gt=0.0, lt=1.0)
    """EMA decay of the codebook statistics. 0.99 (VQ-VAE-2) suits long runs; 0.95 lets the
    codebook follow the encoder within the ~100-step runs of on-robot training."""
    epsilon: float = Field(1e-5, gt=0.0)
    """Laplace smoothing of the EMA cluster sizes (keeps rare codes from dividing by ~0)."""
    commitment: float = Field(0.25, ge=0.0)
    """Weight of the commitment loss ``||z_e - sg(z_q)||^2`` (beta in the VQ-VAE paper)."""
    dead_code_steps: PositiveInt = 20
    """A code unused for this many training updates is re-initialised from a recent encoder output."""
    image_loss_weight: float = Field(1.0, ge=0.0)


class MidLoopConfig(ConfigModel):
    """The world model: an SSM over Mid-loop steps (one every ``HopeConfig.mid_every`` control steps)."""

    config_name: ClassVar[str] = "HopeConfig.mid"

    d_model: PositiveInt = 64
    d_state: PositiveInt = 64
    n_layers: PositiveInt = 2
    token_embed_dim: PositiveInt = 16
    context_dim: PositiveInt = 16
    tau_min: float = Field(1.0, gt=0.0)
    """Initial time constants (Mid steps), log-spaced over ``[tau_min, tau_max]``."""
    tau_max: float = Field(25.0, gt=0.0)
    tau_cap: float | None = Field(50.0, gt=0.0)
    """Hard upper bound on any learned time constant (None: unbounded). Training windows are
    finite while inference runs for ever; a cap keeps the state statistics the model sees at
    inference close to those it was trained on."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _taus(self) -> Self:
        _check_taus(self.tau_min, self.tau_max, self.tau_cap)
        return self


class FastLoopConfig(ConfigModel):
    """The reflex policy: a small SSM run every control tick.

    The defaults give ~20k parameters, few enough that the pure-numpy step
    (:class:`~continuonbrain.hope.fast_loop.FastLoopNumpy`) costs tens of microseconds.
    Time constants are capped near the 50-100 ms training window (5 steps at 50 Hz): the
    Fast loop learns from short windows that start from a zero state, so a state that
    remembered much longer at inference would feed it statistics it never saw. Longer
    memory is the Mid loop's job (through the context), or train with longer windows and
    ``burn_in``.
    """

    config_name: ClassVar[str] = "HopeConfig.fast"

    d_model: PositiveInt = 48
    d_state: PositiveInt = 48
    n_layers: PositiveInt = 2
    tau_min: float = Field(0.5, gt=0.0)
    tau_max: float = Field(4.0, gt=0.0)
    tau_cap: float | None = Field(5.0, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    image_features: bool = True
    """With ``image_keys``: feed the Fast loop, at **every** tick, each image's continuous conv
    feature (``vqvae.image_feature_dim`` floats per key, standardised) from the Fast loop's own
    conv encoder (:mod:`~continuonbrain.hope.pixels`; how it is trained: ``pixel_encoder``): a
    camera-only robot then drives from pixels without the Mid context. False: images reach
    the Fast loop only through the Mid context (every ``mid_every`` ticks)."""
    pixel_encoder: Literal["trained", "vqvae_finetuned", "vqvae_frozen"] = "trained"
    """How the Fast loop's conv encoder (the VQ-VAE's architecture: ``vqvae.conv_channels``,
    ``image_feature_dim``, ``max_image_side``) gets its weights:

    * ``"trained"`` (default): from scratch, trained end to end with the SSM on the action loss,
      so it learns what steering needs, on frames standardised one by one (per channel: any
      exposure or white balance reads the same). The Fast loop then needs no VQ-VAE.
    * ``"vqvae_finetuned"``: starts from the trained VQ-VAE's encoder, then trained end to end.
    * ``"vqvae_frozen"``: a frozen copy of the trained VQ-VAE's encoder (features computed once
      per frame, the cheapest to train; issue 14's first design).

    Measured on drive2d (``bench/bench_pixel_ablation.py``, BENCHMARKS.md "Drive2d proof"), lap
    progress on 50 unseen tracks: trained 100%, fine-tuned 98%, frozen 81%: an encoder trained
    to reconstruct 80-px frames keeps the wrong details for steering."""
    standardize_frames: bool = True
    """With ``pixel_encoder`` ``"trained"``: standardise each frame per colour channel before
    the convs (:func:`~continuonbrain.hope.pixels.standardize_frames`), at training and when
    acting, so any exposure or white balance reads the same. The ``"vqvae_*"`` encoders always
    read raw frames (the VQ-VAE was trained on them)."""
    channel_shuffle: float = Field(0.5, ge=0.0, le=1.0)
    """Training only, for an encoder that trains (``pixel_encoder`` not ``"vqvae_frozen"``): the
    probability that a training window's frames get their colour channels in a random order
    (one permutation per window). With ``"trained"``'s per-frame standardisation it makes the
    reflex steer by the road's shape, not its colours: trained on 15 drive2d tracks, unseen
    tracks with a ground colour no training track had were where it left the road
    (BENCHMARKS.md, "Pixel reflex"). 0: off."""
    use_context: bool = True
    """Feed the Mid loop's context (zeros when absent). False: the Fast loop ignores it. Camera
    observations no longer need it (``image_features`` reads the frame every tick; for the
    camera car see BENCHMARKS.md, "Pixel reflex", for the ablation); with vector observations
    that already hold the task state it costs success: the context is an untrained projection of quantised tokens, so it
    differs between episodes in ways the Fast loop memorises rather than generalises (reach2d,
    1000 steps: held-out action error near the target 2x, success 85% against 100%). The shipped
    ``pi5-hope-v1`` config therefore turns it off (BENCHMARKS.md, "Functional reflex")."""

    @model_validator(mode="after")
    def _taus(self) -> Self:
        _check_taus(self.tau_min, self.tau_max, self.tau_cap)
        return self


# --------------------------------------------------------------------------- the whole


class HopeConfig(ConfigModel):
    """The whole HOPE v1 seed: shared shapes and the three component configs.

    Observations are either a vector of ``obs_dim`` floats, or a dict whose numeric
    ``state_keys`` are flattened and concatenated in that order (``obs_dim`` is then the
    total) and whose ``image_keys`` are ``uint8 [H, W, C]`` images of ``image_shapes[key]``.
    Actions are ``action_dim`` floats within ``[action_low, action_high]`` (default
    ``[-1, 1]``); the policy's output is squashed into those bounds, and losses are computed
    in normalised units where the bounds map to ``[-1, 1]``.
    """

    config_name: ClassVar[str] = "HopeConfig"

    obs_dim: int = Field(10, ge=0)
    action_dim: PositiveInt = 2
    action_low: list[float] | None = None
    """Lower action bounds (null: -1 for every component)."""
    action_high: list[float] | None = None
    """Upper action bounds (null: 1 for every component)."""
    state_keys: list[str] = Field(default_factory=list)
    image_keys: list[str] = Field(default_factory=list)
    image_shapes: dict[str, list[PositiveInt]] = Field(default_factory=dict)
    """``{image_key: [H, W, C]}`` for every image key."""
    control_hz: float = Field(50.0, gt=0.0)
    mid_every: PositiveInt = 10
    """Fast ticks per Mid refresh (10 = 200 ms at 50 Hz). Also the Mid loop's training stride."""
    vqvae: VQVAEConfig = Field(default_factory=VQVAEConfig)
    mid: MidLoopConfig = Field(default_factory=MidLoopConfig)
    fast: FastLoopConfig = Field(default_factory=FastLoopConfig)
    model_type: Literal["hope-v1"] = "hope-v1"

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        dim = data.get("action_dim", 2)
        if isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1:
            if data.get("action_low") is None:
                data["action_low"] = [-1.0] * dim
            if data.get("action_high") is None:
                data["action_high"] = [1.0] * dim
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name in ("action_low", "action_high"):
            value = getattr(self, name)
            if value is None or len(value) != self.action_dim:
                raise ValueError(f"{name} must be a list of action_dim={self.action_dim} numbers, got {value!r}")
        for i, (lo, hi) in enumerate(zip(self.action_low or [], self.action_high or [], strict=True)):
            if not lo < hi:
                raise ValueError(f"action_low[{i}] ({lo}) must be < action_high[{i}] ({hi})")
        for name in ("state_keys", "image_keys"):
            keys = getattr(self, name)
            if not all(keys):
                raise ValueError(f"{name} must be a list of non-empty strings, got {keys!r}")
            if len(set(keys)) != len(keys):
                raise ValueError(f"{name} has duplicates: {keys!r}")
        both = set(self.state_keys) & set(self.image_keys)
        if both:
            raise ValueError(f"keys {sorted(both)} are listed both as state_keys and image_keys")
        missing = [k for k in self.image_keys if k not in self.image_shapes]
        if missing:
            raise ValueError(f"image_shapes has no [H, W, C] for image key(s) {missing}")
        extra = sorted(set(self.image_shapes) - set(self.image_keys))
        if extra:
            raise ValueError(f"image_shapes has key(s) {extra} that are not in image_keys")
        if self.obs_dim == 0 and not self.image_keys:
            raise ValueError("obs_dim is 0 and there are no image_keys: the observation would be empty")
        smallest = 2 ** len(self.vqvae.conv_channels)
        for key, shape in self.image_shapes.items():
            if len(shape) != 3:
                raise ValueError(f"image_shapes[{key!r}] must be [H, W, C], got {shape!r}")
            h, w, _ = pooled_size(shape, self.vqvae.max_image_side)
            if h < smallest or w < smallest:
                raise ValueError(
                    f"image_shapes[{key!r}] = {shape} (pooled to {h}x{w} by vqvae.max_image_side): H and W must "
                    f"be at least {smallest} (2 ** len(vqvae.conv_channels), one halving per conv layer)"
                )
        return self

    def validate(self) -> None:  # type: ignore[override]
        """Check the whole config again (after attribute changes); raise ``ConfigError`` naming the field."""
        type(self).from_dict(self.to_dict())

    # -- derived -------------------------------------------------------------------------

    @property
    def context_dim(self) -> int:
        """Width of the context the Fast loop receives (0 when it does not use one)."""
        return self.mid.context_dim if self.fast.use_context else 0

    @property
    def fast_image_dim(self) -> int:
        """Width of the image features the Fast loop receives every tick (0 without them)."""
        if not (self.fast.image_features and self.image_keys):
            return 0
        return self.vqvae.image_feature_dim * len(self.image_keys)

    @property
    def image_shape_tuples(self) -> dict[str, tuple[int, int, int]]:
        return {k: (int(s[0]), int(s[1]), int(s[2])) for k, s in self.image_shapes.items()}

    @property
    def dict_observations(self) -> bool:
        """Does this model take dict observations (named state keys and/or camera frames)?"""
        return bool(self.state_keys or self.image_keys)

    def vector_keys(self, fallback: Sequence[str] | None = None) -> list[str] | None:
        """The one rule for which keys form the state vector: for a model of dict observations
        its ``state_keys`` (possibly none: images only), else ``fallback`` (a config's
        ``observation_keys``; vector observations ignore keys)."""
        if self.dict_observations:
            return list(self.state_keys)
        return None if fallback is None else list(fallback)

    # -- JSON ----------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str) -> HopeConfig:  # type: ignore[override]
        """A config from JSON *text* (``load`` reads a file)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"HopeConfig JSON does not parse: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` atomically and durably (the model store's file)."""
        path = Path(path)
        atomic_write_bytes(path, (self.to_json() + "\n").encode("utf-8"))
        return path
