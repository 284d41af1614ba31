"""The episode catalogue behind ``GET /api/episodes``: what the trainer sees, and what it does not.

Each entry is one episode under the server's RLDS directory with its validation state (the
same checks as ``continuonbrain rlds validate``: a bad episode shows the error naming its
file, episode and field), its length, duration, tags and whether it is imagined; the
quarantine lists what was set aside and why (the ``reason.txt`` written beside it).

Validating reads every episode, which on an SD card with thousands of them takes seconds, and
the Robot Editor polls. So the listing is cached against a cheap fingerprint of the directory
(its files and their mtimes and sizes, from ``scandir``: no file is opened) and rebuilt only when an
episode arrives, leaves or changes.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from continuonbrain.rlds import ImageColumn, RLDSError
from continuonbrain.rlds.reader import scan_episodes
from continuonbrain.rlds.validate import quarantine

#: Directory levels the change fingerprint looks into (episode dir / steps / step file; a TFDS
#: dataset / config / version / shard).
FINGERPRINT_DEPTH = 3
#: Characters of a quarantine reason shown in the listing.
MAX_REASON = 2_000


class EpisodeCatalog:
    """Listing, validation state and quarantine of one RLDS directory."""

    def __init__(self, rlds_dir: str | os.PathLike | None, quarantine_dir: str | os.PathLike | None = None):
        self.rlds_dir = None if rlds_dir is None else Path(rlds_dir)
        if quarantine_dir is None and self.rlds_dir is not None:
            quarantine_dir = self.rlds_dir / "quarantine"  # the readers skip this name
        self.quarantine_dir = None if quarantine_dir is None else Path(quarantine_dir)
        self._lock = threading.Lock()
        self._cache: tuple[Any, list[dict[str, Any]]] | None = None

    def listing(self, offset: int = 0, limit: int = 200) -> dict[str, Any]:
        """One page of episodes (oldest first), the totals and the quarantine."""
        if self.rlds_dir is None:
            return {"rlds_dir": None, "total": 0, "ok": 0, "bad": 0, "episodes": [], "quarantine": []}
        entries = self._scan()
        bad = sum(1 for e in entries if not e["valid"])
        return {
            "rlds_dir": str(self.rlds_dir),
            "quarantine_dir": str(self.quarantine_dir) if self.quarantine_dir else None,
            "total": len(entries),
            "ok": len(entries) - bad,
            "bad": bad,
            "steps": sum(e["steps"] for e in entries),
            "imagined": sum(1 for e in entries if e["imagined"]),
            "offset": offset,
            "limit": limit,
            "episodes": entries[offset : offset + limit],
            "quarantine": self.quarantined(),
        }

    def quarantine_bad(self) -> dict[str, Any]:
        """Move every bad episode to the quarantine (with its reason); returns what moved."""
        if self.rlds_dir is None or self.quarantine_dir is None:
            raise ValueError("no episode directory configured")
        with self._lock:
            self._cache = None
            moved = []
            results = [r for r in scan_episodes(self.rlds_dir) if not r.ok]
            for result in results:
                assert result.error is not None
                moved.append(
                    {
                        "episode": result.key,
                        "error": str(result.error),
                        "to": str(quarantine(result, result.error, self.quarantine_dir)),
                    }
                )
        return {"quarantined": moved}

    def entry(self, key: str) -> dict[str, Any] | None:
        """The listing entry of the episode ``key`` (None when there is no such episode): how
        the frame viewer finds an episode without ever taking a path from a request."""
        if self.rlds_dir is None:
            return None
        return next((e for e in self._scan() if e["key"] == key), None)

    def quarantined(self) -> list[dict[str, Any]]:
        qdir = self.quarantine_dir
        if qdir is None or not qdir.is_dir():
            return []
        out = []
        for entry in sorted(qdir.iterdir()):
            if entry.name.endswith(".reason.txt"):
                continue
            reason_file = entry / "reason.txt" if entry.is_dir() else entry.with_name(entry.name + ".reason.txt")
            try:
                reason = reason_file.read_text(errors="replace")[:MAX_REASON].strip()
            except OSError:
                reason = None
            out.append({"name": entry.name, "path": str(entry), "reason": reason})
        return out

    # -- internals -------------------------------------------------------------------------

    def _fingerprint(self) -> Any:
        """Every file down to :data:`FINGERPRINT_DEPTH` levels (episode dir, ``steps/``, step
        files) with its mtime and size: ``stat`` calls only, a few ms for a thousand episodes."""
        assert self.rlds_dir is not None
        marks: list[tuple[str, int, int]] = []

        def walk(path: str, depth: int) -> None:
            with os.scandir(path) as it:
                for e in it:
                    if e.name == "quarantine" and depth == 0:
                        continue
                    st = e.stat()
                    marks.append((e.path, st.st_mtime_ns, st.st_size))
                    if e.is_dir() and depth < FINGERPRINT_DEPTH:
                        walk(e.path, depth + 1)

        try:
            walk(str(self.rlds_dir), 0)
        except OSError as exc:
            return ("error", str(exc))
        return tuple(sorted(marks))

    def _scan(self) -> list[dict[str, Any]]:
        fingerprint = self._fingerprint()
        with self._lock:
            if self._cache is not None and self._cache[0] == fingerprint:
                return self._cache[1]
            entries = list(self._entries())
            self._cache = (fingerprint, entries)
            return entries

    def _entries(self):
        assert self.rlds_dir is not None
        try:
            results = scan_episodes(self.rlds_dir)
            for result in results:
                yield _entry(result, self.rlds_dir)
        except RLDSError as exc:  # the directory itself is unreadable
            yield _bad_entry(str(self.rlds_dir), str(self.rlds_dir), exc)


def _bad_entry(key: str, unit: str, err: RLDSError) -> dict[str, Any]:
    """An episode (or a directory) that failed validation: the error, and the field it names."""
    return {
        "key": key,
        "unit": unit,
        "episode_id": err.episode,
        "valid": False,
        "error": str(err),
        "field": err.field,
        "steps": 0,
        "duration_s": None,
        "tags": [],
        "imagined": False,
        "origin": None,
        "image_keys": [],
    }


def _entry(result: Any, root: Path) -> dict[str, Any]:
    try:
        unit = str(Path(result.unit).relative_to(root))
    except ValueError:
        unit = str(result.unit)
    if result.error is not None:
        return _bad_entry(result.key, unit, result.error)
    ep = result.episode
    meta = ep.metadata or {}
    tags = [str(t) for t in meta.get("tags") or []]
    origin = (meta.get("provenance") or {}).get("origin") if isinstance(meta.get("provenance"), dict) else None
    hz = ep.control_hz
    duration = round(len(ep) / hz, 3) if hz else None
    return {
        "key": result.key,
        "unit": unit,
        "episode_id": ep.episode_id,
        "valid": True,
        "error": None,
        "field": None,
        "steps": len(ep),
        "duration_s": duration,
        "tags": tags,
        "imagined": "imagined" in tags or str(origin or "").startswith("imagined:"),
        "origin": origin,
        "environment_id": meta.get("environment_id"),
        "robot_model": meta.get("robot_model"),
        # camera streams: the Robot Editor offers to scrub through their frames
        "image_keys": sorted(k for k, v in ep.observation.items() if isinstance(v, ImageColumn))
        if isinstance(ep.observation, dict)
        else [],
    }
