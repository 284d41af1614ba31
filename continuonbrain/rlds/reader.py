"""One entry point for every RLDS layout: ``read_episodes(path)``.

The layout is recognised from what ``path`` is:

* a Continuon episode directory (``metadata.json`` and/or ``steps/*.jsonl``),
* a single ``.json`` file (``{"steps": [...], "episode_metadata"|"metadata": {...}}``),
* a single ``.jsonl`` file (one step per line),
* a TFDS version directory (``dataset_info.json`` + ``features.json`` + shards),
* a TFRecord shard (TFDS episode-per-Example, or the older step-per-Example layout),
* a Donkeycar tub v2 directory (``manifest.json`` + ``catalog_N.catalog`` + ``images/``),
* any directory above those, walked in sorted order (for TFDS dataset directories that hold
  several versions, only the newest version is read).

Walking never leaves the tree under ``path``: a symlink is followed only when it resolves
inside it, and each directory and file is read once, however many links lead to it (a
symlink loop, a second link). A link out of the tree is reported, since what it points to
would otherwise vanish without a word; one to something already read is skipped. Only
regular files are read, within the bounds of :mod:`continuonbrain.rlds.limits`. Episode ids
are unique within a split: the second episode with an id is an error naming both places.

Everything is streamed: one episode is in memory at a time. Bad episodes become
:class:`EpisodeResult` objects carrying an :class:`RLDSError`; :func:`read_episodes` skips
them (with a warning by default) so the good episodes beside a bad one are still used, and
:func:`scan_episodes` hands them to ``rlds validate`` and quarantine. (``EpisodeResult`` lives
in :mod:`continuonbrain.rlds.episode`; it is re-exported here, where it used to be.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from continuonbrain.rlds import continuon, tfds, tub
from continuonbrain.rlds.checks import check_episode
from continuonbrain.rlds.episode import Episode, EpisodeResult
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)


OnError = Literal["raise", "warn", "skip"] | Callable[[RLDSError], None]


def read_episodes(
    path: str | os.PathLike,
    split: str | None = None,
    *,
    on_error: OnError = "warn",
    validate: bool = True,
    **options,
) -> Iterator[Episode]:
    """Yield the good episodes under ``path`` (see the module doc for the layouts).

    ``on_error``: ``"warn"`` (default) logs each bad episode and goes on, ``"skip"`` goes on
    silently, ``"raise"`` raises the first :class:`RLDSError`, a callable receives each
    error. ``validate`` runs the content checks (NaN/Inf, timestamps, image decoding) of
    :mod:`continuonbrain.rlds.validate` on every episode. ``options`` go to the readers
    (``observation_key``/``action_key`` dotted paths for Continuon JSON, ``tfrecord_iter``
    and ``example_parser`` hooks for TFRecord, ``limits``: a
    :class:`~continuonbrain.rlds.limits.Limits` for everyone).
    """
    for result in scan_episodes(path, split, validate=validate, **options):
        if result.error is None:
            assert result.episode is not None
            yield result.episode
        elif on_error == "raise":
            raise result.error
        elif on_error == "warn":
            log.warning("skipping bad episode: %s", result.error)
        elif callable(on_error):
            on_error(result.error)


def scan_episodes(
    path: str | os.PathLike, split: str | None = None, *, validate: bool = True, **options
) -> Iterator[EpisodeResult]:
    """Yield one :class:`EpisodeResult` per episode found under ``path``, good or bad."""
    root = Path(path)
    if not root.exists():
        raise RLDSError("path does not exist", file=str(root))
    limits: Limits = options.get("limits") or DEFAULT_LIMITS
    options["limits"] = limits.within(root) if root.is_dir() else limits
    first_read: dict[tuple[str, str], str] = {}
    for result in _scan(root, split, options, visited=set()):
        if split is not None and result.episode is not None and result.episode.metadata.get("split") != split:
            continue  # TFDS filters by shard; the other layouts by the split their metadata records
        if result.episode is not None:
            result = _unique_id(result, first_read)
        if validate and result.episode is not None:
            try:
                check_episode(result.episode)
            except RLDSError as err:
                result = result.failed(err.at(file=result.episode.source, episode=result.episode.episode_id))
        yield result


def _unique_id(result: EpisodeResult, first_read: dict[tuple[str, str], str]) -> EpisodeResult:
    """``result``, or an error when its episode id (within its split: TFDS numbers episodes
    per split) was already read. ``first_read`` maps ids to where they were first read: the
    one thing a scan keeps per episode (some 250 bytes: 125 MB for half a million episodes)."""
    assert result.episode is not None
    eid = result.episode.episode_id
    key = (str(result.episode.metadata.get("split") or ""), eid)
    first = first_read.get(key)
    if first is None:
        first_read[key] = result.place
        return result
    err = RLDSError(f"duplicate episode id: read from {result.place}, and first from {first}", episode=eid)
    return result.failed(err.at(file=str(result.unit)))


def _scan(path: Path, split: str | None, options: dict, visited: set[tuple[int, int]]) -> Iterator[EpisodeResult]:
    is_dir = path.is_dir()
    if is_dir:
        options["limits"].check_inside(path)  # a directory symlinked out of the tree is not entered
    if not _first_visit(path, visited):
        log.info("not reading %s: already read through another link", path)
        return
    if not is_dir:  # files, and FIFOs or devices, which the readers refuse without opening them
        name = path.name
        if tfds.is_tfrecord_path(path):
            yield from tfds.scan_tfrecord_file(path, **_pick(options, tfds.TFRECORD_OPTIONS))
        elif name.endswith(".json") and name not in continuon.NON_EPISODE_JSON:
            yield continuon.scan_json_file(path, **_pick(options, continuon.OPTIONS))
        elif name.endswith(".jsonl"):
            if path.parent.name == "steps" and continuon.is_episode_dir(path.parent.parent):
                yield continuon.scan_episode_dir(path.parent.parent, **_pick(options, continuon.OPTIONS))
            else:
                yield continuon.scan_jsonl_file(path, **_pick(options, continuon.OPTIONS))
        else:
            raise RLDSError("not an RLDS file (expected .json, .jsonl or a TFRecord shard)", file=str(path))
        return
    try:
        layout = dir_layout(path)
    except RLDSError as err:  # one ambiguous directory must not hide the episodes beside it
        yield EpisodeResult(key=path.name, unit=path, error=err, movable=False)
        return
    if layout == "continuon":
        yield continuon.scan_episode_dir(path, **_pick(options, continuon.OPTIONS))
        return
    if layout == "tfds":
        yield from tfds.scan_tfds_dir(path, split=split, **_pick(options, tfds.TFRECORD_OPTIONS))
        return
    if layout == "tub":
        yield from tub.scan_tub_dir(path, **_pick(options, tub.OPTIONS))
        return
    children = _children(path)
    versions = [c for c in children if c.is_dir() and _is_tfds_version(c)]
    if len(versions) > 1:
        # A TFDS dataset/config dir with several versions: the newest one is the dataset.
        newest = max(versions, key=lambda p: tfds.version_key(p.name))
        children = [c for c in children if c not in versions or c == newest]
    for child in children:
        if child.is_dir() or is_episode_file(child):
            try:
                yield from _scan(child, split, options, visited)
            except RLDSError as err:  # one unreadable entry must not hide the episodes beside it
                yield EpisodeResult(key=child.name, unit=child, error=err.at(file=str(child)), movable=False)


def _first_visit(path: Path, visited: set[tuple[int, int]]) -> bool:
    """Record ``path`` as read; false when it (the same inode) was read before, which is how a
    symlink back to an ancestor or to something already read is recognised."""
    try:
        st = os.stat(path)
    except OSError:
        return True  # the reader names the problem
    if not st.st_ino:  # a file system without inode numbers: nothing to compare
        return True
    key = (st.st_dev, st.st_ino)
    if key in visited:
        return False
    visited.add(key)
    return True


def dir_layout(path: Path) -> Literal["continuon", "tfds", "tub"] | None:
    """Which layout the directory ``path`` itself is, or ``None`` for a plain folder.

    TFDS's own builders write a ``metadata.json`` into the version directory when the builder
    has ``metadata`` (``tfds.core.MetadataDict``), which also marks a Continuon episode
    directory. ``dataset_info.json`` *and* ``features.json`` are what only TFDS writes, so
    they win; a directory with one TFDS marker and shards that also looks like a Continuon
    episode is ambiguous, and reading it either way could silently misread it, so that is an
    error naming both layouts. A Donkeycar tub (``manifest.json`` whose first line lists the
    inputs, beside ``catalog_N.catalog`` files) that also looks like one of the others is
    ambiguous too.
    """
    if (path / "dataset_info.json").is_file() and (path / "features.json").is_file():
        return "tfds"
    is_tfds, is_continuon = tfds.is_tfds_dir(path), continuon.is_episode_dir(path)
    if is_tfds and is_continuon:
        raise RLDSError(
            "directory matches two layouts: a TFDS version directory (TFDS marker file and "
            "shards) and a Continuon episode directory (metadata.json or steps/); a TFDS "
            "directory needs both dataset_info.json and features.json",
            file=str(path),
        )
    if tub.is_tub_dir(path):
        if is_tfds or is_continuon:
            other = "a TFDS version directory (TFDS marker file and shards)"
            if not is_tfds:
                other = "a Continuon episode directory (metadata.json or steps/)"
            raise RLDSError(
                f"directory matches two layouts: a Donkeycar tub (manifest.json listing the inputs) and {other}",
                file=str(path),
            )
        return "tub"
    if is_tfds:
        return "tfds"
    return "continuon" if is_continuon else None


def _is_tfds_version(path: Path) -> bool:
    try:
        return dir_layout(path) == "tfds"
    except RLDSError:
        return False


def _children(path: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as exc:
        raise RLDSError(f"directory cannot be listed: {exc.strerror or exc}", file=str(path)) from None
    return [Path(e.path) for e in entries if not e.name.startswith(".") and e.name not in SKIP_DIRS]


#: Directories a scan never enters (image blobs, quarantined episodes); shared with the
#: new-data watermark, which must count what the reader reads.
SKIP_DIRS = {"blobs", "__pycache__", "quarantine"}


def is_episode_file(path: Path) -> bool:
    """Whether a scan reads the file ``path`` as (part of) an episode."""
    name = path.name
    if name in continuon.NON_EPISODE_JSON or name == "reason.txt":
        return False
    return name.endswith((".json", ".jsonl")) or tfds.is_tfrecord_path(path)


def _pick(options: dict, allowed: tuple[str, ...]) -> dict:
    return {k: v for k, v in options.items() if k in allowed}


__all__ = ["EpisodeResult", "OnError", "dir_layout", "read_episodes", "scan_episodes"]
