"""LoRA adapters for the ``nn.Linear`` layers of a trained HOPE seed, in PEFT's file format.

On the robot, adapting the seed to new episodes must be cheap and safe: a LoRA adapter
trains ``r * (d_in + d_out)`` numbers per layer instead of ``d_in * d_out``, can be gated and
rolled back as a small separate file, and is merged into the weights for inference so that
serving costs nothing extra (the Fast loop's numpy export folds merged or unmerged layers
alike).

* :class:`LoRALinear` wraps an ``nn.Linear``: ``y = base(x) + scale * B(A(dropout(x)))`` with
  ``scale = alpha / r``. ``A`` is Kaiming-uniform and ``B`` is zero, so a fresh adapter leaves
  the function unchanged and training starts exactly from the seed.
* :func:`inject_lora` replaces the matching layers in place (PEFT's ``target_modules`` rules,
  plus globs), :func:`merge_lora` folds them back into plain ``nn.Linear`` layers.
* Files: :func:`save_adapter` writes ``adapter_model.safetensors`` with PEFT's key names
  (``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight``) and
  ``adapter_config.json`` in PEFT's ``LoraConfig`` format; :func:`load_adapter` reads them
  back (never pickle).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "PEFT_PREFIX",
    "LoRALinear",
    "adapter_config",
    "find_lora_layers",
    "inject_lora",
    "load_adapter",
    "lora_parameters",
    "lora_state_dict",
    "mark_only_lora_trainable",
    "match_target",
    "merge_lora",
    "save_adapter",
]

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a rank-``r`` update; see the module doc.

    Attribute names follow PEFT (``base_layer``, ``lora_A``, ``lora_B``, ``lora_dropout``) so
    that module paths, and hence adapter keys, look the same as PEFT's.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base_layer = base
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=dt)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev, dtype=dt)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> Tensor:
        """The base weight (what code that reads ``layer.weight`` for shape or device expects)."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def delta_weight(self) -> Tensor:
        """``scale * B @ A`` ``[out, in]``: what merging adds to the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function (in eval mode, i.e. without dropout)."""
        base = self.base_layer
        out = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                out.bias.copy_(base.bias)
        out.weight.requires_grad_(base.weight.requires_grad)
        if base.bias is not None:
            out.bias.requires_grad_(base.bias.requires_grad)
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


# --------------------------------------------------------------------------- selection


def match_target(name: str, targets: str | Sequence[str]) -> bool:
    """Does module path ``name`` match ``targets``?

    PEFT's rules: a string is a regular expression that must match the whole name; a list
    matches a name equal to an entry or ending with ``"." + entry`` (``"glu"`` matches
    ``fast_loop.ssm.blocks.0.glu``). In addition, a list entry containing ``*``, ``?`` or
    ``[`` is a glob over the whole name (``"fast_loop.*"``).
    """
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    for t in targets:
        if any(ch in t for ch in "*?["):
            if fnmatch.fnmatchcase(name, t):
                return True
        elif name == t or name.endswith("." + t):
            return True
    return False


def find_lora_layers(module: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, LoRALinear)}


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def inject_lora(
    module: nn.Module,
    target_modules: str | Sequence[str],
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    freeze_base: bool = True,
) -> list[str]:
    """Wrap every ``nn.Linear`` of ``module`` whose path matches ``target_modules`` (see
    :func:`match_target`) in a :class:`LoRALinear`; returns the wrapped paths.

    With ``freeze_base`` (the default, as in PEFT) every parameter of ``module`` except the
    LoRA matrices gets ``requires_grad=False``; merging does not unfreeze them.
    Raises :class:`ValueError` when nothing matches, listing the available layer paths.
    """
    existing = set(find_lora_layers(module))
    linears = [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and not any(name == e + ".base_layer" or name.startswith(e + ".") for e in existing)
    ]
    chosen = [name for name in linears if name and match_target(name, target_modules)]
    if not chosen:
        raise ValueError(f"no nn.Linear matches target_modules={target_modules!r}; the Linear layers are {linears}")
    for name in chosen:
        base = module.get_submodule(name)
        layer = LoRALinear(base, rank, alpha, dropout).train(base.training)  # keep the model's train/eval mode
        _set_submodule(module, name, layer)
    if freeze_base:
        mark_only_lora_trainable(module)
    return chosen


def mark_only_lora_trainable(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        p.requires_grad_(".lora_A." in f".{name}" or ".lora_B." in f".{name}")


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices (what an optimiser for adaptation should see)."""
    out: list[nn.Parameter] = []
    for layer in find_lora_layers(module).values():
        out += [layer.lora_A.weight, layer.lora_B.weight]
    return out


def merge_lora(module: nn.Module) -> list[str]:
    """Replace every :class:`LoRALinear` in ``module`` by the equivalent plain ``nn.Linear``
    (``W + scale * B @ A``); returns the merged paths."""
    layers = find_lora_layers(module)
    for name, layer in layers.items():
        if not name:
            raise ValueError("merge_lora needs the LoRALinear inside a parent module; call layer.merged() instead")
        _set_submodule(module, name, layer.merged())
    return list(layers)


# --------------------------------------------------------------------------- files


def lora_state_dict(module: nn.Module, prefix: str = PEFT_PREFIX) -> dict[str, Tensor]:
    """The adapter weights with PEFT key names: ``<prefix><path>.lora_A.weight`` / ``.lora_B.weight``.

    The default prefix is PEFT's ``base_model.model.``; paths are relative to ``module``.
    """
    out: dict[str, Tensor] = {}
    for name, layer in find_lora_layers(module).items():
        out[f"{prefix}{name}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().contiguous().clone()
        out[f"{prefix}{name}.lora_B.weight"] = layer.lora_B.weight.detach().cpu().contiguous().clone()
    return out


def adapter_config(
    target_modules: str | Sequence[str],
    r: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    base_model_name_or_path: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An ``adapter_config.json`` dict in the format PEFT's ``LoraConfig`` writes and reads.

    ``extra`` adds or overrides fields (``revision``, ``task_type``, ``modules_to_save``, ...).
    """
    targets: str | list[str] = target_modules if isinstance(target_modules, str) else sorted(target_modules)
    cfg: dict[str, Any] = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": int(r),
        "rank_pattern": {},
        "revision": None,
        "target_modules": targets,
        "task_type": None,
        "use_dora": False,
        "use_rslora": False,
    }
    cfg.update(extra)
    return cfg


def save_adapter(
    directory: str | Path,
    module: nn.Module,
    base_model_name_or_path: str | None = None,
    prefix: str = PEFT_PREFIX,
    **extra: Any,
) -> list[Path]:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` for the LoRA layers of ``module``.

    All LoRA layers must share one rank, alpha and dropout (as they do after one
    :func:`inject_lora`); ``target_modules`` lists their exact paths.
    """
    layers = find_lora_layers(module)
    if not layers:
        raise ValueError("the module has no LoRA layers to save (call inject_lora first)")
    ranks = {(lay.rank, lay.alpha) for lay in layers.values()}
    if len(ranks) != 1:
        raise ValueError(f"LoRA layers have different (rank, alpha) {sorted(ranks)}; save them separately")
    rank, alpha = ranks.pop()
    drop = next(iter(layers.values())).lora_dropout
    p = float(drop.p) if isinstance(drop, nn.Dropout) else 0.0
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / ADAPTER_WEIGHTS_NAME
    config = directory / ADAPTER_CONFIG_NAME
    save_file(lora_state_dict(module, prefix), str(weights), metadata={"format": "pt"})
    cfg = adapter_config(list(layers), rank, alpha, p, base_model_name_or_path, **extra)
    config.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return [weights, config]


def load_adapter(directory: str | Path, module: nn.Module, merge: bool = True, prefix: str = PEFT_PREFIX) -> list[str]:
    """Apply the adapter in ``directory`` to ``module`` (paths relative to it); returns the layer paths.

    The layers to wrap are read from the weight keys (exact paths), the rank from the weight
    shapes and ``lora_alpha`` from ``adapter_config.json``. With ``merge`` the adapter is folded
    into plain ``nn.Linear`` layers (inference); without it the :class:`LoRALinear` layers stay
    (further training). Requires-grad flags of ``module`` are left as they were.
    """
    directory = Path(directory)
    cfg = json.loads((directory / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{directory}: peft_type is {cfg.get('peft_type')!r}, only LORA is supported")
    if cfg.get("use_dora") or cfg.get("use_rslora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError(f"{directory}: DoRA, rsLoRA and per-layer rank/alpha patterns are not supported")
    tensors = load_file(str(directory / ADAPTER_WEIGHTS_NAME))
    paths: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        m = re.fullmatch(re.escape(prefix) + r"(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", key)
        if m is None:
            raise ValueError(f"{directory}: unexpected adapter key {key!r} (expected {prefix}<path>.lora_A.weight)")
        paths.setdefault(m.group(1), {})[m.group(2)] = value
    alpha = float(cfg.get("lora_alpha", 8))
    grads = {name: p.requires_grad for name, p in module.named_parameters()}
    for path, ab in sorted(paths.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise ValueError(f"{directory}: layer {path!r} lacks lora_A or lora_B")
        try:
            target = module.get_submodule(path)
        except AttributeError:
            raise ValueError(f"{directory}: the adapter targets {path!r}, which this model does not have") from None
        if not isinstance(target, nn.Linear):
            raise ValueError(f"{directory}: {path!r} is a {type(target).__name__}, not an nn.Linear")
        rank = ab["lora_A"].shape[0]
        layer = LoRALinear(target, rank, alpha, float(cfg.get("lora_dropout", 0.0))).train(target.training)
        if ab["lora_A"].shape != layer.lora_A.weight.shape or ab["lora_B"].shape != layer.lora_B.weight.shape:
            raise ValueError(
                f"{directory}: adapter shapes for {path!r} ({tuple(ab['lora_A'].shape)}, {tuple(ab['lora_B'].shape)}) "
                f"do not fit the layer ({tuple(layer.lora_A.weight.shape)}, {tuple(layer.lora_B.weight.shape)})"
            )
        with torch.no_grad():
            layer.lora_A.weight.copy_(ab["lora_A"])
            layer.lora_B.weight.copy_(ab["lora_B"])
        _set_submodule(module, path, layer.merged() if merge else layer)
    if merge:
        for name, p in module.named_parameters():
            if name in grads:
                p.requires_grad_(grads[name])
    return sorted(paths)
