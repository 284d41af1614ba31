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


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    format: Literal["continuon", "tfds"],
    *,
    for_upload: bool = False,
    **options,
) -> dict:
    """Copy every good episode under ``src`` to ``dst`` in ``format``.

    Bad episodes are skipped and listed (the good ones are still converted). With
    ``for_upload`` only upload-ready episodes are written and their local-only ``owner``
    block is stripped (see :mod:`continuonbrain.rlds.schema`).
    """
    from continuonbrain.rlds.reader import read_episodes
    from continuonbrain.rlds.schema import export_metadata, upload_problems

    report: dict = {"written": 0, "steps": 0, "errors": [], "not_upload_ready": []}

    def good() -> Iterable[Episode]:
        for ep in read_episodes(src, on_error=lambda e: report["errors"].append(str(e))):
            if for_upload:
                problems = upload_problems(ep.metadata)
                if problems:
                    report["not_upload_ready"].append({"episode": ep.episode_id, "problems": problems})
                    continue
                ep.metadata = export_metadata(ep.metadata)
            report["written"] += 1
            report["steps"] += len(ep)
            yield ep

    report["paths"] = [str(p) for p in write_episodes(good(), dst, format, **options)]
    return report
