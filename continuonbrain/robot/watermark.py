"""The new-data gate's memory: how many episodes ``rlds_dir`` held at the last training run.

A small JSON file remembers how many episode entries ``rlds_dir`` held, and their newest
mtime, when training last succeeded; the next check counts what arrived since. It lists
directories and stats entries, and never parses an episode, so it stays cheap on thousands
of files on an SD card.

What counts as an episode entry is the RLDS reader's rule, not a copy of it: each directory's
layout comes from :func:`continuonbrain.rlds.reader.dir_layout`, the entries the reader skips
(hidden names, ``blobs/``, ``quarantine/``...) and the files it reads (``.json`` / ``.jsonl``
but not ``metadata.json`` and the other :data:`~continuonbrain.rlds.continuon.NON_EPISODE_JSON`,
TFRecord shards by :func:`~continuonbrain.rlds.tfds.is_tfrecord_path`) come from the reader
too. So every layout the trainers can read is a layout whose new data starts a run:

* a Continuon episode directory is one entry (its newest of the directory and ``steps/``:
  a new chunk bumps ``steps/``);
* a Donkeycar tub is one entry (its newest of the directory, ``manifest.json`` and the
  ``catalog_*`` files: a drive appends to a catalog);
* a TFRecord shard (loose, or in a TFDS version directory) is one entry (a shard may hold many
  episodes; counting them would mean parsing it);
* a ``.json`` / ``.jsonl`` episode file is one entry.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuonbrain.fsutil import atomic_write_bytes
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.reader import SKIP_DIRS as READER_SKIP_DIRS  # the reader's own rule
from continuonbrain.rlds.reader import dir_layout
from continuonbrain.rlds.reader import is_episode_file as reader_reads_file  # the reader's own rule
from continuonbrain.rlds.tfds import is_tfrecord_path

log = logging.getLogger(__name__)

__all__ = ["WATERMARK_FILE", "EpisodeSnapshot", "EpisodeWatermark"]

#: File name of the watermark inside the trainer's state/log directory.
WATERMARK_FILE = "episode_watermark.json"


@dataclass(frozen=True)
class EpisodeSnapshot:
    """Episode entries under ``rlds_dir`` at one moment: how many, and the newest mtime.

    Entries are as the module doc lists them. ``mtimes_ns`` are kept in memory only, to count
    entries newer than a mark; they are not persisted.
    """

    count: int
    max_mtime_ns: int
    mtimes_ns: tuple[int, ...] = field(default=(), repr=False, compare=False)


class EpisodeWatermark:
    """Remembers what ``rlds_dir`` held at the last successful training run.

    New episodes since the mark = max(entries with an mtime newer than the mark's newest,
    growth in the entry count). The mtime test catches episodes that replaced deleted ones;
    the count test catches episodes copied in with old mtimes (``rsync -a`` from another robot)
    and episodes that land within the same mtime tick on coarse filesystems. Never marked (or
    the mark names another rlds_dir, or is corrupt): every entry is new.

    The mark is written atomically (temp file, fsync, rename), so a power cut mid-write leaves
    the old mark, never a torn one.
    """

    def __init__(self, rlds_dir: str | os.PathLike, state_dir: str | os.PathLike, filename: str = WATERMARK_FILE):
        self.rlds_dir = Path(rlds_dir)
        self.path = Path(state_dir) / filename

    # -- scanning

    def snapshot(self) -> EpisodeSnapshot:
        """List the episode entries under ``rlds_dir`` (stats and directory listings; of the
        files only a tub's ``manifest.json`` first line is read, to recognise the tub).

        A handful of stats per episode directory, so thousands of episodes on an SD card take
        a fraction of a second. Writers build episodes under hidden or ``.tmp`` / ``.partial``
        names and rename them into place; those are not counted yet.
        """
        root = os.fspath(self.rlds_dir)
        try:
            root_st = os.stat(root)
        except OSError:
            return EpisodeSnapshot(count=0, max_mtime_ns=0)
        if not stat.S_ISDIR(root_st.st_mode):  # rlds_dir is one episode file
            if reader_reads_file(Path(root)):
                return EpisodeSnapshot(count=1, max_mtime_ns=root_st.st_mtime_ns, mtimes_ns=(root_st.st_mtime_ns,))
            return EpisodeSnapshot(count=0, max_mtime_ns=0)
        mtimes: list[int] = []
        skip_file = os.path.abspath(self.path)
        seen: set[tuple[int, int]] = set()
        stack = [root]
        while stack:
            directory = stack.pop()
            try:
                st = os.stat(directory)
                if (st.st_dev, st.st_ino) in seen:  # a symlink loop
                    continue
                seen.add((st.st_dev, st.st_ino))
                layout = dir_layout(Path(directory))
            except RLDSError:  # matches two layouts: the reader reads nothing from it either
                continue
            except OSError:
                continue
            if layout in ("continuon", "tub"):
                mtimes.append(_unit_mtime(directory, layout, st.st_mtime_ns))
                continue
            try:
                with os.scandir(directory) as it:
                    entries = list(it)
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name.endswith((".tmp", ".partial")):
                    continue
                try:
                    if entry.is_dir():
                        if layout is None and name not in READER_SKIP_DIRS:  # a TFDS directory holds shards only
                            stack.append(entry.path)
                    elif entry.is_file() and os.path.abspath(entry.path) != skip_file:
                        path = Path(entry.path)
                        if is_tfrecord_path(path) if layout == "tfds" else reader_reads_file(path):
                            mtimes.append(entry.stat().st_mtime_ns)
                except OSError:  # vanished between listing and stat
                    continue
        return EpisodeSnapshot(count=len(mtimes), max_mtime_ns=max(mtimes, default=0), mtimes_ns=tuple(mtimes))

    # -- the mark

    def load(self) -> EpisodeSnapshot | None:
        """The mark of the last successful run, or None (never marked, other rlds_dir, corrupt)."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("episode watermark %s unusable (%s): treating every episode as new", self.path, exc)
            return None
        try:
            if doc["rlds_dir"] != str(_abspath(self.rlds_dir)):
                return None
            return EpisodeSnapshot(count=int(doc["count"]), max_mtime_ns=int(doc["max_mtime_ns"]))
        except (KeyError, TypeError, ValueError):
            log.warning("episode watermark %s malformed: treating every episode as new", self.path)
            return None

    def new_since(self, snapshot: EpisodeSnapshot) -> int:
        """How many of ``snapshot``'s entries arrived after the mark."""
        mark = self.load()
        if mark is None:
            return snapshot.count
        newer = sum(1 for m in snapshot.mtimes_ns if m > mark.max_mtime_ns)
        return max(newer, snapshot.count - mark.count, 0)

    def new_episodes(self) -> int:
        """Scan now and count what arrived since the mark."""
        return self.new_since(self.snapshot())

    def mark_trained(self, snapshot: EpisodeSnapshot | None = None) -> EpisodeSnapshot:
        """Record ``snapshot`` (default: a fresh scan) as trained on.

        Pass the snapshot taken *before* the run, as
        :func:`~continuonbrain.trainer.scheduler.run_if_idle` does: episodes that arrive while
        the job runs were not trained on and must count as new next time.
        """
        snapshot = snapshot if snapshot is not None else self.snapshot()
        doc = {
            "schema": 1,
            "rlds_dir": str(_abspath(self.rlds_dir)),
            "count": snapshot.count,
            "max_mtime_ns": snapshot.max_mtime_ns,
            "marked_at": time.time(),
        }
        _write_json_atomic(self.path, doc)
        return snapshot


def _unit_mtime(path: str, layout: str, dir_mtime_ns: int) -> int:
    """The newest mtime of an episode directory (``steps/``) or a tub (manifest, catalogs)."""
    newest = dir_mtime_ns
    if layout == "continuon":
        names: list[str] = ["steps"]
    else:
        try:
            names = [n for n in os.listdir(path) if n == "manifest.json" or n.startswith("catalog_")]
        except OSError:
            names = []
    for name in names:
        try:
            newest = max(newest, os.stat(os.path.join(path, name)).st_mtime_ns)
        except OSError:
            continue
    return newest


def _abspath(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())
