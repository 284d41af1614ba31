"""Safetensors bytes that depend only on what is saved, not on the process that saves them.

safetensors (0.8 and earlier) holds a file's ``__metadata__`` in a Rust ``HashMap`` and
writes it in that map's iteration order, which is randomised per process
(safetensors/safetensors#584): the same tensors with the same metadata, saved by two
processes, give files whose headers list the metadata keys in different orders. A component
file carries four keys, so two trainings that produced bit-identical weights would still
differ in ``sha256``, and a checksum could not tell a reproduced model from a different one.

:func:`safetensors_bytes` writes the metadata with its keys sorted (what the upstream fix,
safetensors/safetensors#790, does). The tensor entries need nothing: safetensors already
orders them by dtype alignment and name. Any reader of safetensors reads the result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from safetensors.torch import save
from torch import Tensor

__all__ = ["safetensors_bytes"]

#: safetensors pads its JSON header with spaces to this many bytes, so the tensor data
#: that follows starts aligned.
HEADER_ALIGNMENT = 8


def safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file of ``tensors`` and ``metadata`` (string to string), byte-identical
    for equal inputs in every process. The file is built in memory (HOPE components are a
    few MB at most)."""
    raw = save(dict(tensors))  # without metadata the header is already canonical
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    if metadata:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]
