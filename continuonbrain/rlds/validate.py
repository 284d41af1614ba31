"""The ``rlds validate`` and ``rlds info`` reports, and quarantine.

The content checks themselves (:func:`check_episode`: NaN/Inf, timestamps, flags, images,
metadata, the declared action space) live in :mod:`continuonbrain.rlds.checks`, which the
readers and writers use; ``check_episode`` is re-exported here, where it has always been.

For a report (``rlds validate``, ``rlds info``) a path under which nothing at all is found
is a problem too (a typo, an unmounted disk, a dataset whose shards are gone); for a reader
it is just nothing to read.

Quarantine *moves* a bad episode out of the data directory (never deletes it) and writes a
``reason.txt`` beside it, so nothing recorded on the robot is lost and a person can fix and
put it back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuonbrain.rlds.checks import check_episode
from continuonbrain.rlds.episode import Episode, EpisodeResult, Features, ImageColumn
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.reader import scan_episodes
from continuonbrain.rlds.schema import upload_problems
from continuonbrain.rlds.tfrecord import write_records
from continuonbrain.rlds.tub import TubRun, quarantine_run


@dataclass
class ValidationReport:
    """What ``rlds validate`` prints; ``to_json`` is the contract in README "Commands"."""

    episodes_ok: int = 0
    episodes_bad: int = 0
    steps_ok: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    not_upload_ready: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    def to_json(self, upload: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "episodes_ok": self.episodes_ok,
            "episodes_bad": self.episodes_bad,
            "steps_ok": self.steps_ok,
            "errors": self.errors,
            "quarantined": self.quarantined,
        }
        if upload:
            out["not_upload_ready"] = self.not_upload_ready
        return out


def validate_path(
    path: str | os.PathLike,
    quarantine_dir: str | os.PathLike | None = None,
    upload: bool = False,
    decode_images: bool = True,
    **options,
) -> ValidationReport:
    """Check every episode under ``path``; optionally quarantine the bad ones."""
    report = ValidationReport()
    pending: list[tuple[EpisodeResult, RLDSError]] = []
    for result in _scan_for_report(path, validate=False, **options):
        error = result.error
        if error is None:
            assert result.episode is not None
            try:
                check_episode(result.episode, decode_images=decode_images)
            except RLDSError as err:
                error = err.at(file=result.episode.source, episode=result.episode.episode_id)
        if error is None:
            report.episodes_ok += 1
            report.steps_ok += len(result.episode)  # type: ignore[arg-type]
            if upload:
                problems = upload_problems(result.episode.metadata)  # type: ignore[union-attr]
                if problems:
                    report.not_upload_ready.append({"episode": result.key, "problems": problems})
            continue
        report.episodes_bad += 1
        report.errors.append({"episode": error.episode or result.key, "error": str(error), **error.to_dict()})
        if quarantine_dir is not None:
            pending.append((result, error))
    # Move after the scan: moving while a directory is being walked would skip entries.
    for result, error in pending:
        report.quarantined.append(str(quarantine(result, error, Path(quarantine_dir))))  # type: ignore[arg-type]
    return report


def quarantine(result: EpisodeResult, error: RLDSError, qdir: Path) -> Path:
    """Move the episode's file or directory into ``qdir`` with a ``reason.txt`` beside it.

    Episode directories get ``reason.txt`` inside them; files get ``<name>.reason.txt``
    next to them. A record inside a TFRecord shard cannot be moved without rewriting the
    shard (which could lose the good records if interrupted): its raw bytes are copied to
    ``<shard>.record-<n>.tfrecord`` and the shard is left in place; the readers skip the bad
    record on every read anyway. A problem with no bytes to keep (records missing from a
    shard, a damaged record, nothing found at all) gets its ``reason.txt`` alone. An episode
    of a Donkeycar tub is not moved either: its records are marked deleted in the tub's
    manifest (reversible; see :func:`continuonbrain.rlds.tub.quarantine_run`).
    """
    if isinstance(result, TubRun):  # records of a Donkeycar tub: marked deleted, as Donkeycar's cleaners do
        return quarantine_run(result, error, qdir)
    qdir.mkdir(parents=True, exist_ok=True)
    reason = f"{error}\n"
    if not result.movable and result.raw is None:
        reason_file = _unique(qdir / f"{result.key.replace('#', '.record-')}.reason.txt")
        reason_file.write_text(reason)
        return reason_file
    if result.movable:
        dest = _unique(qdir / result.unit.name)
        shutil.move(str(result.unit), dest)
        reason_file = dest / "reason.txt" if dest.is_dir() else dest.with_name(dest.name + ".reason.txt")
    else:
        dest = _unique(qdir / (result.key.replace("#", ".record-") + ".tfrecord"))
        write_records(dest, [result.raw or b""])
        reason_file = dest.with_name(dest.name + ".reason.txt")
        reason += f"The shard {result.unit} was left in place; this is a copy of the bad record.\n"
    reason_file.write_text(reason)
    return dest


def _unique(path: Path) -> Path:
    if not path.exists():
        return path
    for n in range(1, 10_000):
        candidate = path.with_name(f"{path.name}.{n}")
        if not candidate.exists():
            return candidate
    raise RLDSError("quarantine is full of episodes with this name", file=str(path))


def _scan_for_report(path: str | os.PathLike, split: str | None = None, **options) -> Iterator[EpisodeResult]:
    """:func:`scan_episodes`, and an error when it finds nothing at all under ``path``."""
    found = False
    for result in scan_episodes(path, split, **options):
        found = True
        yield result
    if not found:
        root = Path(path)
        err = RLDSError("no episodes found (no episode directory, .json/.jsonl file or TFDS dataset)", file=str(root))
        yield EpisodeResult(key=root.name or str(root), unit=root, error=err, movable=False)


def info_path(path: str | os.PathLike, split: str | None = None, **options) -> dict[str, Any]:
    """``rlds info``: :func:`summarize` of the good episodes, with the bad ones' errors."""
    errors: list[str] = []

    def good() -> Iterator[Episode]:
        for result in _scan_for_report(path, split, **options):
            if result.error is not None:
                errors.append(str(result.error))
            else:
                assert result.episode is not None
                yield result.episode

    info = summarize(good())
    info["episodes_bad"] = len(errors)
    info["errors"] = errors
    return info


def summarize(episodes: Iterable[Episode]) -> dict[str, Any]:
    """``rlds info``: counts, rates, durations and the observation/action specs."""
    info: dict[str, Any] = {
        "episodes": 0,
        "steps": 0,
        "duration_s": 0.0,
        "control_hz": set(),
        "observation": None,
        "action": None,
        "imagined_episodes": 0,
        "origins": {},
        "language_instructions": 0,
    }
    for ep in episodes:
        info["episodes"] += 1
        info["steps"] += len(ep)
        hz = ep.control_hz
        info["control_hz"].add(round(hz, 3))
        info["duration_s"] += len(ep) / hz
        info["imagined_episodes"] += int(ep.is_imagined)
        origin = str((ep.metadata.get("provenance") or {}).get("origin", "unknown"))
        info["origins"][origin] = info["origins"].get(origin, 0) + 1
        info["language_instructions"] += int(bool(ep.language_instruction))
        if info["observation"] is None:
            info["observation"] = _spec(ep.observation)
            info["action"] = _spec(ep.action)
    info["control_hz"] = sorted(info["control_hz"])
    info["duration_s"] = round(info["duration_s"], 3)
    return info


def _spec(features: Features) -> Any:
    if isinstance(features, dict):
        return {k: _spec_column(v) for k, v in features.items()}
    return _spec_column(features)


def _spec_column(col: Any) -> dict[str, Any]:
    if isinstance(col, ImageColumn):
        shape = list(col[0].decode().shape) if len(col) else []
        return {"type": "image", "shape": shape, "dtype": "uint8"}
    return {"type": "tensor", "shape": list(col.shape[1:]), "dtype": str(col.dtype)}


__all__ = ["ValidationReport", "check_episode", "info_path", "quarantine", "summarize", "validate_path"]
