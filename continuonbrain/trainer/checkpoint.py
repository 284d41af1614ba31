"""Training checkpoints as one ``.safetensors`` file, written atomically, loaded without pickle.

A checkpoint is one nested dict (nanoGPT style): model weights, optimizer and scheduler
state, RNG states, data position and step. ``torch.save`` would pickle it, and loading a
pickle runs code, so a robot must never do that with a file it did not write itself. Here
every tensor goes into the safetensors body and everything else (numbers, strings, the
structure) into a JSON "skeleton" stored in the safetensors header metadata. Python tuples,
non-string dict keys (optimizer state is keyed by int) and numpy arrays round-trip exactly.

Writes go to a temporary file that is fsynced and then renamed over the old checkpoint, and
the directory is fsynced too: a power cut or ``kill -9`` leaves either the old or the new
checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from continuonbrain.fsutil import atomic_write_bytes
from continuonbrain.hope.safetensors_io import safetensors_bytes

_SKELETON_KEY = "continuonbrain.checkpoint.skeleton"


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = path or "array"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _flatten(v, tensors, f"{path}/{k}" if path else k) for k, v in obj.items()}
        return {"__items__": [[k, _flatten(v, tensors, f"{path}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, tensors, f"{path}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, np.integer | np.floating | np.bool_):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {path or '<root>'}")


def _unflatten(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__ndarray__" in node:
            return tensors[node["__ndarray__"]].numpy()
        if "__tuple__" in node:
            return tuple(_unflatten(v, tensors) for v in node["__tuple__"])
        if "__items__" in node:
            return {k: _unflatten(v, tensors) for k, v in node["__items__"]}
        return {k: _unflatten(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_unflatten(v, tensors) for v in node]
    return node


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically to ``path`` (a ``.safetensors`` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "")
    # Serialised in memory and written by atomic_write_bytes: an OSError (a full disk names
    # the file; safetensors' own writer raises its own error type) and never a temporary file
    # left behind. A checkpoint is a few MB: weights plus the optimizer's two moments.
    atomic_write_bytes(path, safetensors_bytes(tensors, {_SKELETON_KEY: json.dumps(skeleton)}))
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if _SKELETON_KEY not in meta:
        raise ValueError(f"{path} is not a ContinuonBrain checkpoint (no skeleton in its header)")
    return _unflatten(json.loads(meta[_SKELETON_KEY]), load_file(str(path)))


def seed_rngs(seed: int) -> None:
    """Seed every RNG :func:`rng_state` saves. A component starts from here, so its first
    step does not depend on what ran before it in the process (the uninterrupted run trained
    the previous components first, the resumed one skipped them)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, so a resumed run draws the same numbers."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state(tuple(np_state))  # type: ignore[arg-type]
    torch.set_rng_state(state["torch"])
