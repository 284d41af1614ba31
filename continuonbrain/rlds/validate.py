"""Content checks on episodes, the ``rlds validate`` report, and quarantine.

The readers already reject what cannot be parsed (bad JSON, CRC mismatches, ragged shapes,
wrong types). :func:`check_episode` adds what parses but must not reach a trainer: NaN or
Inf values, timestamps that go backwards, ``is_first``/``is_last`` flags that contradict
their position (two episodes glued together), images that do not decode, metadata that
breaks the schema, and actions that contradict the action space the metadata declares.

For a report (``rlds validate``, ``rlds info``) a path under which nothing at all is found
is a problem too (a typo, an unmounted disk, a dataset whose shards are gone); for a reader
it is just nothing to read.

Quarantine *moves* a bad episode out of the data directory (never deletes it) and writes a
``reason.txt`` beside it, so nothing recorded on the robot is lost and a person can fix and
put it back.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.rlds.episode import Episode, Features, ImageColumn
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.reader import EpisodeResult, scan_episodes
from continuonbrain.rlds.schema import BoxSpace, check_metadata, upload_problems


def check_episode(episode: Episode, decode_images: bool = False) -> None:
    """Raise :class:`RLDSError` (naming step and field) for the first content problem.

    Images: the header is always checked (cheap); ``decode_images=True`` decodes every
    frame, which ``rlds validate`` does and the training read path does not.
    """
    metadata = check_metadata(episode.metadata)
    n = len(episode)
    if n == 0:
        raise RLDSError("episode has no steps", field="steps")
    _check_features(episode.observation, "observation", decode_images)
    _check_features(episode.action, "action", decode_images)
    if metadata.capabilities.action_space is not None:
        _check_action_space(episode.action, metadata.capabilities.action_space)
    _check_finite(episode.reward, "reward")
    _check_finite(episode.discount, "discount")
    if not episode.is_first[0]:
        raise RLDSError("the first step must have is_first=true", step=0, field="is_first")
    extra_first = np.flatnonzero(episode.is_first[1:])
    if len(extra_first):
        raise RLDSError("is_first=true after the first step", step=int(extra_first[0]) + 1, field="is_first")
    if not episode.is_last[-1]:
        raise RLDSError("the last step must have is_last=true", step=n - 1, field="is_last")
    early_last = np.flatnonzero(episode.is_last[:-1])
    if len(early_last):
        raise RLDSError("is_last=true before the last step", step=int(early_last[0]), field="is_last")
    if episode.timestamp is not None:
        _check_finite(episode.timestamp, "timestamp")
        back = np.flatnonzero(np.diff(episode.timestamp) < 0)
        if len(back):
            i = int(back[0]) + 1
            raise RLDSError(
                f"timestamp goes backwards ({episode.timestamp[i]:.6f} s after {episode.timestamp[i - 1]:.6f} s)",
                step=i,
                field="timestamp",
            )


def _check_features(features: Features, name: str, decode_images: bool) -> None:
    columns = features.items() if isinstance(features, dict) else [(None, features)]
    for key, col in columns:
        fname = name if key is None else f"{name}.{key}"
        if isinstance(col, ImageColumn):
            for i, img in enumerate(col):
                try:
                    img.decode() if decode_images else _check_image_header(img.encoded())
                except RLDSError as err:
                    raise err.at(step=i, field=fname) from None
        else:
            _check_finite(col, fname)


_SPACE = "metadata.capabilities.action_space"


def _check_action_space(action: Features, space: BoxSpace) -> None:
    """Vector actions must have the declared shape and stay within the declared bounds (a
    dict action has no one Box to compare with). The bounds are compared in the actions'
    own dtype: a float32 action clipped to 0.1 is float32(0.1), above the float64 0.1."""
    if isinstance(action, dict) or action.dtype.kind not in "fiu":
        return
    shape = list(action.shape[1:])
    if space.shape is not None and space.shape != shape:
        raise RLDSError(f"declares shape {space.shape}, the actions have shape {shape}", field=f"{_SPACE}.shape")
    flat = action.reshape(len(action), -1)
    dtype = flat.dtype if flat.dtype.kind == "f" else np.float64
    low = _bound(space.low, flat.shape[1], -math.inf, "low").astype(dtype)
    high = _bound(space.high, flat.shape[1], math.inf, "high").astype(dtype)
    if (low > high).any():
        i = int(np.flatnonzero(low > high)[0])
        raise RLDSError(f"low {low[i]} is above high {high[i]} at index {i}", field=_SPACE)
    for name, outside, bound in (("low", flat < low, low), ("high", flat > high, high)):
        if outside.any():
            step, i = (int(x) for x in np.argwhere(outside)[0])
            raise RLDSError(
                f"value {flat[step, i]} at index {i} is {'below' if name == 'low' else 'above'} the declared "
                f"{name} {bound[i]} ({_SPACE}.{name})",
                step=step,
                field="action",
            )


def _bound(value: float | list[float | None] | None, size: int, unbounded: float, name: str) -> np.ndarray:
    """A declared bound as one float per action element (``null``: unbounded)."""
    values = value if isinstance(value, list) else [value] * size
    if len(values) != size:
        raise RLDSError(f"declares {len(values)} values for an action of {size}", field=f"{_SPACE}.{name}")
    out = np.array([unbounded if v is None else v for v in values], dtype=np.float64)
    if np.isnan(out).any():
        raise RLDSError("a bound is NaN", field=f"{_SPACE}.{name}")
    return out


_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")


def _check_image_header(data: bytes) -> None:
    """The cheap check of the read path: the bytes start like an image file. Full decoding
    (``decode_images=True``) is what ``rlds validate`` does."""
    if not data.startswith(_IMAGE_MAGIC):
        raise RLDSError(f"image does not decode (not a PNG/JPEG/GIF/BMP/WebP file, starts with {data[:8]!r})")


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        value = arr[tuple(bad)]
        where = f" at index {tuple(int(b) for b in bad[1:])}" if len(bad) > 1 else ""
        raise RLDSError(f"value is {value}{where}", step=int(bad[0]), field=name)


@dataclass
class ValidationReport:
    """What ``rlds validate`` prints; ``to_json`` is the DESIGN.md contract."""

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
    from continuonbrain.rlds.tub import TubRun, quarantine_run

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
        from continuonbrain.rlds.tfrecord import write_records

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
