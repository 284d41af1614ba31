"""Training checkpoints as one ``.safetensors`` file, written atomically, loaded without pickle.

A checkpoint is one nested dict (nanoGPT style): model weights, optimizer and scheduler
state, RNG states, data position and step. ``torch.save`` would pickle it, and loading a
pickle runs code, so a robot must never do that with a file it did not write itself. Here
every tensor goes into the safetensors body and everything else (numbers, strings, the
structure) into a JSON "skeleton" stored in the safetensors header metadata. Python tuples,
non-string dict keys (optimizer state is keyed by int) and numpy arrays round-trip exactly.

Writes go to a temporary file that is fsynced and then renamed over the old checkpoint, and
the directory is fsynced too: a power cut or ``kill -9`` leaves either the old or the new
checkpoint, never a torn one (:func:`~continuonbrain.fsutil.atomic_write_bytes`, the one
durable writer). The bytes depend only on what is saved (sorted header metadata), so equal
states give equal files.

Both trainers checkpoint here. torch is imported only for a state that holds torch tensors
(and by the RNG helpers): a checkpoint of numpy arrays and numbers (the stub hooks' dry runs)
is written and read without it.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.fsutil import atomic_write_bytes

_SKELETON_KEY = "continuonbrain.checkpoint.skeleton"
#: safetensors pads its JSON header with spaces to this many bytes.
_HEADER_ALIGNMENT = 8


def _is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch tensor exists only if torch was imported
    return torch is not None and isinstance(obj, torch.Tensor)


def _flatten(obj: Any, tensors: dict[str, Any], path: str) -> Any:
    if _is_tensor(obj):
        key = path or "tensor"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = path or "array"
        tensors[key] = np.ascontiguousarray(obj).copy()
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


def _unflatten(node: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__ndarray__" in node:
            value = tensors[node["__ndarray__"]]
            return value if isinstance(value, np.ndarray) else value.numpy()
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
    tensors: dict[str, Any] = {}
    skeleton = _flatten(state, tensors, "")
    metadata = {_SKELETON_KEY: json.dumps(skeleton)}
    # Serialised in memory and written by atomic_write_bytes: an OSError (a full disk names
    # the file; safetensors' own writer raises its own error type) and never a temporary file
    # left behind. A checkpoint is a few MB: weights plus the optimizer's two moments.
    if any(_is_tensor(t) for t in tensors.values()):
        import torch

        from continuonbrain.hope.safetensors_io import safetensors_bytes

        as_torch = {k: v if _is_tensor(v) else torch.from_numpy(v) for k, v in tensors.items()}
        data = safetensors_bytes(as_torch, metadata)
    else:
        data = _numpy_safetensors_bytes(tensors, metadata)
    atomic_write_bytes(path, data)
    return path


def _numpy_safetensors_bytes(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """safetensors bytes of numpy arrays with ``metadata`` in sorted order (what
    :func:`~continuonbrain.hope.safetensors_io.safetensors_bytes` does for torch tensors)."""
    from safetensors.numpy import save

    raw = save(arrays)
    size = int.from_bytes(raw[:8], "little")
    header = {"__metadata__": dict(sorted(metadata.items())), **json.loads(raw[8 : 8 + size])}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _HEADER_ALIGNMENT)
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved)."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
    if _SKELETON_KEY not in meta:
        raise ValueError(f"{path} is not a ContinuonBrain checkpoint (no skeleton in its header)")
    skeleton = json.loads(meta[_SKELETON_KEY])
    if _has_tensor(skeleton):  # torch tensors were saved: read them back as torch tensors
        from safetensors.torch import load_file

        tensors: dict[str, Any] = load_file(str(path))
    else:
        from safetensors.numpy import load_file as load_numpy

        tensors = load_numpy(str(path))
    return _unflatten(skeleton, tensors)


def _has_tensor(node: Any) -> bool:
    if isinstance(node, dict):
        return "__tensor__" in node or any(_has_tensor(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_tensor(v) for v in node)
    return False


def seed_rngs(seed: int) -> None:
    """Seed every RNG :func:`rng_state` saves. A component starts from here, so its first
    step does not depend on what ran before it in the process (the uninterrupted run trained
    the previous components first, the resumed one skipped them)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, so a resumed run draws the same numbers."""
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state(tuple(np_state))  # type: ignore[arg-type]
    torch.set_rng_state(state["torch"])
