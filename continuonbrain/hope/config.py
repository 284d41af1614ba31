"""Configuration of the HOPE v1 seed model: one dataclass per component plus the whole.

Each component (VQ-VAE tokenizer, Mid loop world model, Fast loop reflex policy) has its own
hyperparameter dataclass, and :class:`HopeConfig` holds them together with the facts they
must agree on (observation and action sizes, action bounds, codebook size, the Mid loop's
rate). Components are built from the whole :class:`HopeConfig` rather than from their own
part alone because those shared facts must match across components: the Mid loop's
vocabulary is the VQ-VAE codebook, and the Fast loop's context input is the Mid loop's
context output. One config object makes a mismatch impossible instead of merely detectable.

Everything is plain JSON (``to_dict``/``from_dict``, ``to_json``/``from_json``,
``save``/``load``), because the model store keeps the config next to the weights as
``config.json`` and must never need pickle. Unknown keys and out-of-range values raise
:class:`ValueError` naming the field, so a hand-edited config fails at load time, not deep
inside a training run.

Time constants (``tau_*``) are in **steps of the loop that uses them**: control steps for the
Fast loop, Mid-loop steps (``mid_every`` control steps each) for the Mid loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = ["FastLoopConfig", "HopeConfig", "MidLoopConfig", "VQVAEConfig"]


# --------------------------------------------------------------------------- validation helpers


def _int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


def _float(
    owner: str, name: str, value: Any, lo: float | None = None, hi: float | None = None, lo_inclusive: bool = False
) -> None:
    """``lo < value < hi`` (``lo <= value`` with ``lo_inclusive``), finite."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value >= lo if lo_inclusive else value > lo
    if ok and hi is not None:
        ok = value < hi
    if not ok:
        lo_s = "" if lo is None else f" {'>=' if lo_inclusive else '>'} {lo}"
        hi_s = "" if hi is None else f" < {hi}"
        raise ValueError(f"{owner}.{name} must be a finite number{lo_s}{hi_s}, got {value!r}")


def _check_taus(owner: str, tau_min: Any, tau_max: Any, tau_cap: Any) -> None:
    _float(owner, "tau_min", tau_min, lo=0.0)
    _float(owner, "tau_max", tau_max, lo=0.0)
    if tau_max < tau_min:
        raise ValueError(f"{owner}.tau_max ({tau_max}) must be >= tau_min ({tau_min})")
    if tau_cap is not None:
        _float(owner, "tau_cap", tau_cap, lo=0.0)
        if tau_cap <= tau_max:
            raise ValueError(f"{owner}.tau_cap ({tau_cap}) must be > tau_max ({tau_max}), or null for no cap")


class _JSONConfig:
    """``to_dict``/``from_dict`` for flat dataclasses with strict key checking."""

    _name: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any], owner: str | None = None):
        owner = owner or cls._name
        if not isinstance(data, dict):
            raise ValueError(f"{owner} must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown} in {owner}; known fields: {sorted(names)}")
        return cls(**data)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()  # type: ignore[attr-defined]
    return value


# --------------------------------------------------------------------------- components


@dataclass
class VQVAEConfig(_JSONConfig):
    """The observation tokenizer.

    Each observation becomes ``n_tokens`` codes from one shared codebook of
    ``codebook_size`` entries of ``code_dim`` floats (product quantisation): several small
    tokens describe an observation far better than one code from the same codebook, while
    the Mid loop still predicts a small categorical per token.
    """

    _name: ClassVar[str] = "HopeConfig.vqvae"

    codebook_size: int = 256
    code_dim: int = 8
    n_tokens: int = 4
    hidden_dim: int = 128
    n_hidden: int = 2
    #: Output channels of the stride-2 conv layers of the image encoder (one halving each).
    conv_channels: list[int] = field(default_factory=lambda: [16, 32, 32])
    image_feature_dim: int = 64
    #: EMA decay of the codebook statistics. 0.99 (VQ-VAE-2) suits long runs; 0.95 lets the
    #: codebook follow the encoder within the ~100-step runs of on-robot training.
    decay: float = 0.95
    #: Laplace smoothing of the EMA cluster sizes (keeps rare codes from dividing by ~0).
    epsilon: float = 1e-5
    #: Weight of the commitment loss ``||z_e - sg(z_q)||^2`` (beta in the VQ-VAE paper).
    commitment: float = 0.25
    #: A code unused for this many training updates is re-initialised from a recent encoder output.
    dead_code_steps: int = 20
    image_loss_weight: float = 1.0

    def validate(self) -> None:
        o = self._name
        for name in ("codebook_size", "code_dim", "n_tokens", "hidden_dim", "image_feature_dim", "dead_code_steps"):
            _int(o, name, getattr(self, name))
        if self.codebook_size < 2:
            raise ValueError(f"{o}.codebook_size must be >= 2, got {self.codebook_size}")
        _int(o, "n_hidden", self.n_hidden, minimum=0)
        if not isinstance(self.conv_channels, list | tuple) or not self.conv_channels:
            raise ValueError(
                f"{o}.conv_channels must be a non-empty list of channel counts, got {self.conv_channels!r}"
            )
        for c in self.conv_channels:
            _int(o, "conv_channels[]", c)
        _float(o, "decay", self.decay, lo=0.0, hi=1.0)
        _float(o, "epsilon", self.epsilon, lo=0.0)
        _float(o, "commitment", self.commitment, lo=0.0, lo_inclusive=True)
        _float(o, "image_loss_weight", self.image_loss_weight, lo=0.0, lo_inclusive=True)


@dataclass
class MidLoopConfig(_JSONConfig):
    """The world model: an SSM over Mid-loop steps (one every ``HopeConfig.mid_every`` control steps)."""

    _name: ClassVar[str] = "HopeConfig.mid"

    d_model: int = 64
    d_state: int = 64
    n_layers: int = 2
    token_embed_dim: int = 16
    context_dim: int = 16
    #: Initial time constants (Mid steps), log-spaced over ``[tau_min, tau_max]``.
    tau_min: float = 1.0
    tau_max: float = 25.0
    #: Hard upper bound on any learned time constant (None: unbounded). Training windows are
    #: finite while inference runs for ever; a cap keeps the state statistics the model sees at
    #: inference close to those it was trained on.
    tau_cap: float | None = 50.0
    dropout: float = 0.0
    label_smoothing: float = 0.0

    def validate(self) -> None:
        o = self._name
        for name in ("d_model", "d_state", "n_layers", "token_embed_dim", "context_dim"):
            _int(o, name, getattr(self, name))
        _check_taus(o, self.tau_min, self.tau_max, self.tau_cap)
        _float(o, "dropout", self.dropout, lo=0.0, lo_inclusive=True, hi=1.0)
        _float(o, "label_smoothing", self.label_smoothing, lo=0.0, lo_inclusive=True, hi=1.0)


@dataclass
class FastLoopConfig(_JSONConfig):
    """The reflex policy: a small SSM run every control tick.

    The defaults give ~20k parameters, few enough that the pure-numpy step
    (:class:`~continuonbrain.hope.fast_loop.FastLoopNumpy`) costs tens of microseconds.
    Time constants are capped near the 50-100 ms training window (5 steps at 50 Hz): the
    Fast loop learns from short windows that start from a zero state, so a state that
    remembered much longer at inference would feed it statistics it never saw. Longer
    memory is the Mid loop's job (through the context), or train with longer windows and
    ``burn_in``.
    """

    _name: ClassVar[str] = "HopeConfig.fast"

    d_model: int = 48
    d_state: int = 48
    n_layers: int = 2
    tau_min: float = 0.5
    tau_max: float = 4.0
    tau_cap: float | None = 5.0
    dropout: float = 0.0
    #: Feed the Mid loop's context (zeros when absent). False: the Fast loop ignores it. Needed
    #: when observations are images only; with vector observations that already hold the task
    #: state it costs success: the context is an untrained projection of quantised tokens, so it
    #: differs between episodes in ways the Fast loop memorises rather than generalises (reach2d,
    #: 1000 steps: held-out action error near the target 2x, success 85% against 100%). The shipped
    #: ``pi5-hope-v1`` config therefore turns it off (BENCHMARKS.md, "Functional reflex").
    use_context: bool = True

    def validate(self) -> None:
        o = self._name
        for name in ("d_model", "d_state", "n_layers"):
            _int(o, name, getattr(self, name))
        _check_taus(o, self.tau_min, self.tau_max, self.tau_cap)
        _float(o, "dropout", self.dropout, lo=0.0, lo_inclusive=True, hi=1.0)
        if not isinstance(self.use_context, bool):
            raise ValueError(f"{o}.use_context must be true or false, got {self.use_context!r}")


# --------------------------------------------------------------------------- the whole


@dataclass
class HopeConfig(_JSONConfig):
    """The whole HOPE v1 seed: shared shapes and the three component configs.

    Observations are either a vector of ``obs_dim`` floats, or a dict whose numeric
    ``state_keys`` are flattened and concatenated in that order (``obs_dim`` is then the
    total) and whose ``image_keys`` are ``uint8 [H, W, C]`` images of ``image_shapes[key]``.
    Actions are ``action_dim`` floats within ``[action_low, action_high]`` (default
    ``[-1, 1]``); the policy's output is squashed into those bounds, and losses are computed
    in normalised units where the bounds map to ``[-1, 1]``.
    """

    _name: ClassVar[str] = "HopeConfig"

    obs_dim: int = 10
    action_dim: int = 2
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    state_keys: list[str] = field(default_factory=list)
    image_keys: list[str] = field(default_factory=list)
    #: ``{image_key: [H, W, C]}`` for every image key.
    image_shapes: dict[str, list[int]] = field(default_factory=dict)
    control_hz: float = 50.0
    #: Fast ticks per Mid refresh (10 = 200 ms at 50 Hz). Also the Mid loop's training stride.
    mid_every: int = 10
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    mid: MidLoopConfig = field(default_factory=MidLoopConfig)
    fast: FastLoopConfig = field(default_factory=FastLoopConfig)
    model_type: str = "hope-v1"

    def __post_init__(self) -> None:
        if isinstance(self.vqvae, dict):
            self.vqvae = VQVAEConfig.from_dict(self.vqvae)
        if isinstance(self.mid, dict):
            self.mid = MidLoopConfig.from_dict(self.mid)
        if isinstance(self.fast, dict):
            self.fast = FastLoopConfig.from_dict(self.fast)
        if isinstance(self.action_dim, int) and not isinstance(self.action_dim, bool) and self.action_dim >= 1:
            if self.action_low is None:
                self.action_low = [-1.0] * self.action_dim
            if self.action_high is None:
                self.action_high = [1.0] * self.action_dim
        for name in ("state_keys", "image_keys", "action_low", "action_high", "vqvae.conv_channels"):
            obj, attr = (self.vqvae, "conv_channels") if name.startswith("vqvae.") else (self, name)
            value = getattr(obj, attr)
            if isinstance(value, tuple):
                setattr(obj, attr, list(value))
        if isinstance(self.image_shapes, dict):
            self.image_shapes = {k: list(v) if isinstance(v, tuple) else v for k, v in self.image_shapes.items()}
        self.validate()

    # -- validation ----------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the first bad field."""
        o = self._name
        _int(o, "obs_dim", self.obs_dim, minimum=0)
        _int(o, "action_dim", self.action_dim)
        _int(o, "mid_every", self.mid_every)
        _float(o, "control_hz", self.control_hz, lo=0.0)
        if self.model_type != "hope-v1":
            raise ValueError(f"{o}.model_type must be 'hope-v1', got {self.model_type!r}")
        for name in ("action_low", "action_high"):
            value = getattr(self, name)
            if not isinstance(value, list) or len(value) != self.action_dim:
                raise ValueError(f"{o}.{name} must be a list of action_dim={self.action_dim} numbers, got {value!r}")
            for v in value:
                _float(o, f"{name}[]", v)
        for i, (lo, hi) in enumerate(zip(self.action_low, self.action_high, strict=True)):  # type: ignore[arg-type]
            if not lo < hi:
                raise ValueError(f"{o}: action_low[{i}] ({lo}) must be < action_high[{i}] ({hi})")
        for name in ("state_keys", "image_keys"):
            keys = getattr(self, name)
            if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
                raise ValueError(f"{o}.{name} must be a list of non-empty strings, got {keys!r}")
            if len(set(keys)) != len(keys):
                raise ValueError(f"{o}.{name} has duplicates: {keys!r}")
        both = set(self.state_keys) & set(self.image_keys)
        if both:
            raise ValueError(f"{o}: keys {sorted(both)} are listed both as state_keys and image_keys")
        if not isinstance(self.image_shapes, dict):
            raise ValueError(f"{o}.image_shapes must be an object {{key: [H, W, C]}}, got {self.image_shapes!r}")
        missing = [k for k in self.image_keys if k not in self.image_shapes]
        if missing:
            raise ValueError(f"{o}.image_shapes has no [H, W, C] for image key(s) {missing}")
        extra = sorted(set(self.image_shapes) - set(self.image_keys))
        if extra:
            raise ValueError(f"{o}.image_shapes has key(s) {extra} that are not in image_keys")
        if self.obs_dim == 0 and not self.image_keys:
            raise ValueError(f"{o}: obs_dim is 0 and there are no image_keys: the observation would be empty")
        if not isinstance(self.vqvae, VQVAEConfig):
            raise ValueError(f"{o}.vqvae must be an object, got {self.vqvae!r}")
        if not isinstance(self.mid, MidLoopConfig):
            raise ValueError(f"{o}.mid must be an object, got {self.mid!r}")
        if not isinstance(self.fast, FastLoopConfig):
            raise ValueError(f"{o}.fast must be an object, got {self.fast!r}")
        self.vqvae.validate()
        self.mid.validate()
        self.fast.validate()
        factor = 2 ** len(self.vqvae.conv_channels)
        for key, shape in self.image_shapes.items():
            if not (isinstance(shape, list) and len(shape) == 3):
                raise ValueError(f"{o}.image_shapes[{key!r}] must be [H, W, C], got {shape!r}")
            for v in shape:
                _int(o, f"image_shapes[{key!r}][]", v)
            h, w, _ = shape
            if h % factor or w % factor:
                raise ValueError(
                    f"{o}.image_shapes[{key!r}] = {shape}: H and W must be multiples of {factor} "
                    f"(2 ** len(vqvae.conv_channels), one halving per conv layer)"
                )

    # -- derived -------------------------------------------------------------------------

    @property
    def context_dim(self) -> int:
        """Width of the context the Fast loop receives (0 when it does not use one)."""
        return self.mid.context_dim if self.fast.use_context else 0

    @property
    def image_shape_tuples(self) -> dict[str, tuple[int, int, int]]:
        return {k: (int(s[0]), int(s[1]), int(s[2])) for k, s in self.image_shapes.items()}

    # -- JSON ----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], owner: str | None = None) -> HopeConfig:
        if not isinstance(data, dict):
            raise ValueError(f"HopeConfig must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        for key, sub in (("vqvae", VQVAEConfig), ("mid", MidLoopConfig), ("fast", FastLoopConfig)):
            if key in data:
                if not isinstance(data[key], dict):
                    raise ValueError(f"HopeConfig.{key} must be a JSON object, got {data[key]!r}")
                data[key] = sub.from_dict(data[key])
        return super().from_dict(data, owner)  # type: ignore[return-value]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> HopeConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"HopeConfig JSON does not parse: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> HopeConfig:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read HopeConfig from {path}: {exc.strerror or exc}") from None
        try:
            return cls.from_json(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
