"""``write_episodes``: one call for both on-disk layouts the project writes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from continuonbrain.rlds.episode import Episode


def write_episodes(
    episodes: Iterable[Episode],
    out: str | os.PathLike,
    format: Literal["continuon", "tfds"] = "continuon",
    **options,
) -> list[Path]:
    """Write ``episodes`` under ``out`` and return the paths written.

    ``continuon``: one episode directory per episode (``metadata.json`` +
    ``steps/000000.jsonl`` + ``blobs/``). ``tfds``: a TFDS RLDS dataset
    ``<out>/<name>/<version>/`` (``options``: ``name``, ``version``, ``split``,
    ``episodes_per_shard``) that ``tensorflow_datasets.builder_from_directory`` loads.
    Episodes are consumed one at a time, so a generator streams with bounded memory.
    """
    if format == "continuon":
        from continuonbrain.rlds.continuon import write_continuon

        return write_continuon(episodes, Path(out), **options)
    if format == "tfds":
        from continuonbrain.rlds.tfds import write_tfds

        return write_tfds(episodes, Path(out), **options)
    raise ValueError(f"unknown RLDS format {format!r} (expected 'continuon' or 'tfds')")
