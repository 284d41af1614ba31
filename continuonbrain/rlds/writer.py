"""``write_episodes``: one call for every on-disk layout the project writes."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from continuonbrain.rlds.continuon import write_continuon
from continuonbrain.rlds.episode import Episode
from continuonbrain.rlds.reader import read_episodes
from continuonbrain.rlds.schema import export_metadata, upload_problems
from continuonbrain.rlds.tfds_writer import write_tfds
from continuonbrain.rlds.tub import write_tub
from continuonbrain.rlds.written import WrittenEpisodes


def write_episodes(
    episodes: Iterable[Episode],
    out: str | os.PathLike,
    format: Literal["continuon", "tfds", "tub"] = "continuon",
    **options,
) -> WrittenEpisodes:
    """Write ``episodes`` under ``out``; returns the paths written with the episodes per split.

    ``continuon``: one episode directory per episode (``metadata.json`` +
    ``steps/000000.jsonl`` + ``blobs/``), under ``<out>/<split>/`` for episodes that carry
    a ``split``. ``tfds``: a TFDS RLDS dataset ``<out>/<name>/<version>/`` (``options``:
    ``name``, ``version``, ``split`` for episodes without one, ``episodes_per_shard``) that
    ``tensorflow_datasets.builder_from_directory`` loads, one split per episode split.
    ``tub``: a Donkeycar tub v2 (``<out>/``, or ``<out>/<split>/`` per split) that
    ``donkeycar.parts.tub_v2.Tub`` opens, one session per episode (``options``: ``split``,
    ``action_keys``, ``max_catalog_len``); episodes need an image observation and a
    two-number action (see :func:`continuonbrain.rlds.tub.write_tub`). None overwrites an
    existing episode, split or tub silently (``overwrite=True`` replaces them, and says so in
    the result). Episodes are consumed one at a time, so a generator streams with bounded
    memory.
    """
    if format == "continuon":
        return write_continuon(episodes, Path(out), **options)
    if format == "tfds":
        return write_tfds(episodes, Path(out), **options)
    if format == "tub":
        return write_tub(episodes, Path(out), **options)
    raise ValueError(f"unknown RLDS format {format!r} (expected 'continuon', 'tfds' or 'tub')")


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    format: Literal["continuon", "tfds", "tub"],
    *,
    for_upload: bool = False,
    **options,
) -> dict:
    """Copy every good episode under ``src`` to ``dst`` in ``format``, split by split.

    Bad episodes are skipped and listed (the good ones are still converted). With
    ``for_upload`` only upload-ready episodes are written and their local-only ``owner``
    block is stripped (see :mod:`continuonbrain.rlds.schema`). The report's ``written`` and
    ``splits`` are what the writer put on disk (not how many episodes were read), and
    ``kept_both``/``replaced`` say what happened where a name was already taken.
    """
    report: dict = {"read": 0, "steps": 0, "errors": [], "not_upload_ready": []}

    def good() -> Iterable[Episode]:
        for ep in read_episodes(src, on_error=lambda e: report["errors"].append(str(e))):
            if for_upload:
                problems = upload_problems(ep.metadata)
                if problems:
                    report["not_upload_ready"].append({"episode": ep.episode_id, "problems": problems})
                    continue
                ep.metadata = export_metadata(ep.metadata)
            report["read"] += 1
            report["steps"] += len(ep)
            yield ep

    written = write_episodes(good(), dst, format, **options)
    report["written"] = written.total
    report["splits"] = dict(sorted(written.episodes.items()))
    report["summary"] = written.describe()
    report["kept_both"] = [{"existing": str(a), "written": str(b)} for a, b in written.kept_both]
    report["replaced"] = written.replaced
    report["paths"] = [str(p) for p in written]
    return report
