"""The Continuon JSON layouts: episode directories, single ``.json`` and ``.jsonl`` files.

Layout v1.1 (what the XR app and the Pi logger write)::

    <episode_dir>/metadata.json          episode metadata (see schema.EpisodeMetadata)
    <episode_dir>/steps/000000.jsonl     one step per line (more chunks: 000001.jsonl, ...)
    <episode_dir>/blobs/...              encoded images referenced from steps

A step line is ``{"observation": ..., "action": ..., "reward": .., "discount": ..,
"is_first": .., "is_last": .., "is_terminal": .., "language_instruction": ..,
"step_metadata": {..}, "timestamp_ns": ..}``. ``observation`` and ``action`` are a numeric
vector or a dict of named numeric arrays; inside such a dict a string value is an image blob
path relative to the episode directory, and ``{"b64": "...", "format": "png"}`` an inline
image. Older logs use ``obs`` instead of ``observation``; Continuon steps may omit
``is_first``/``is_last`` (inferred from position). Where the app nests the command deeper
(``{"action": {"command": [...]}}``), pass ``action_key="action.command"``.

Timestamps may be given as ``timestamp`` (seconds), ``timestamp_s``, ``timestamp_ns`` or
``step_metadata.timestamp_ns``; they become the episode's ``timestamp`` column in seconds.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from continuonbrain.fsutil import fsync_dir, naming, temp_dir
from continuonbrain.rlds.checks import check_episode
from continuonbrain.rlds.episode import Episode, EpisodeResult, ImageColumn, LazyImage, has_none
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.limits import DEFAULT_LIMITS, Limits, json_depth
from continuonbrain.rlds.written import WrittenEpisodes

log = logging.getLogger(__name__)

#: Options the dispatcher passes through to these readers.
OPTIONS = ("observation_key", "action_key", "limits")
#: JSON files that live beside episodes but are not episodes themselves.
NON_EPISODE_JSON = {"metadata.json", "dataset_info.json", "features.json", "manifest.json", "status.json"}


def is_episode_dir(path: Path) -> bool:
    return (path / "metadata.json").is_file() or (path / "steps").is_dir()


def scan_episode_dir(
    path: Path, observation_key: str = "observation", action_key: str = "action", limits: Limits = DEFAULT_LIMITS
) -> EpisodeResult:
    """Read one Continuon episode directory into an :class:`EpisodeResult`."""
    try:
        meta = _load_metadata(path / "metadata.json", limits)
        eid = str(meta.get("episode_id") or path.name)
        chunks = sorted((path / "steps").glob("*.jsonl")) if (path / "steps").is_dir() else []
        if not chunks:
            raise RLDSError("episode has no steps/*.jsonl files", file=str(path), episode=eid, field="steps")
        rows: list[Any] = []
        for chunk in chunks:
            rows.extend(_parse_jsonl(chunk, limits))
        episode = _episode_from_rows(rows, meta, path, str(path), eid, observation_key, action_key)
        return EpisodeResult(key=eid, unit=path, episode=episode)
    except RLDSError as err:
        return EpisodeResult(key=path.name, unit=path, error=err.at(file=str(path), episode=path.name))


def scan_jsonl_file(
    path: Path, observation_key: str = "observation", action_key: str = "action", limits: Limits = DEFAULT_LIMITS
) -> EpisodeResult:
    """Read a single ``.jsonl`` file (one step per line) as one episode named by its file."""
    eid = path.stem
    try:
        rows = _parse_jsonl(path, limits)
        episode = _episode_from_rows(
            rows, {"episode_id": eid}, path.parent, str(path), eid, observation_key, action_key
        )
        return EpisodeResult(key=eid, unit=path, episode=episode)
    except RLDSError as err:
        return EpisodeResult(key=eid, unit=path, error=err.at(file=str(path), episode=eid))


def scan_json_file(
    path: Path, observation_key: str = "observation", action_key: str = "action", limits: Limits = DEFAULT_LIMITS
) -> EpisodeResult:
    """Read a single ``.json`` episode: ``{"steps": [...], "episode_metadata": {...}}``."""
    eid = path.stem
    try:
        doc = limits.loads(limits.read(path), str(path))
        if not isinstance(doc, Mapping):
            raise RLDSError(f"expected a JSON object with 'steps', got {type(doc).__name__}", field="steps")
        if "steps" not in doc:
            raise RLDSError("required field 'steps' is missing", field="steps")
        steps = doc["steps"]
        if not isinstance(steps, list):
            raise RLDSError(f"must be a list of steps, got {type(steps).__name__}", field="steps")
        meta = doc.get("episode_metadata", doc.get("metadata")) or {}
        if not isinstance(meta, Mapping):
            raise RLDSError(f"must be an object, got {type(meta).__name__}", field="episode_metadata")
        meta = {"episode_id": eid, **meta}
        eid = str(meta["episode_id"])
        episode = _episode_from_rows(steps, meta, path.parent, str(path), eid, observation_key, action_key)
        return EpisodeResult(key=eid, unit=path, episode=episode)
    except RLDSError as err:
        return EpisodeResult(key=eid, unit=path, error=err.at(file=str(path), episode=eid))


# --- parsing -----------------------------------------------------------------------------


def _load_metadata(path: Path, limits: Limits) -> dict:
    if not os.path.lexists(path):  # not is_file(): a metadata.json that is a FIFO must be refused, not ignored
        return {}
    meta = limits.loads(limits.read(path), str(path))
    if not isinstance(meta, dict):
        raise RLDSError(f"metadata must be a JSON object, got {type(meta).__name__}", file=str(path), field="metadata")
    return meta


def _parse_jsonl(path: Path, limits: Limits) -> list[Any]:
    """Parse a JSONL file, in one ``orjson`` call where that is safe; else line by line, which
    names the bad line.

    One call is safe when no line can be over the line limit (the whole file is not) and the
    file's nesting is within the depth limit. The lines are joined with ``,\\n``, not ``,``: a
    line broken inside a string then still holds a raw newline, which JSON forbids in strings,
    instead of gluing with the next line into one step.
    """
    data = limits.read(path)
    body = data.strip()
    if body and len(data) <= limits.max_line_bytes and json_depth(data) <= limits.max_json_depth:
        try:
            return orjson.loads(b"[" + body.replace(b"\n", b",\n") + b"]")
        except orjson.JSONDecodeError:
            pass  # blank lines, NaN tokens or a bad line: go line by line
    file = str(path)
    rows = []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        if raw.strip():
            limits.check_line(raw, file, lineno)
            rows.append(limits.loads(raw, file, line=lineno))
    return rows


def _get_path(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _episode_from_rows(
    rows: list[Any],
    meta: dict,
    base: Path,
    source: str,
    eid: str,
    observation_key: str,
    action_key: str,
) -> Episode:
    """Pull the Continuon-specific parts out of the step records (key paths, the old
    ``obs`` name, image references, timestamp spellings) and build the columns."""
    if not set(map(type, rows)) <= {dict}:
        i = next(i for i, r in enumerate(rows) if not isinstance(r, dict))
        raise RLDSError(f"a step must be a JSON object, got {type(rows[i]).__name__}", step=i, episode=eid)
    first = rows[0] if rows else {}
    obs = act = None  # None: the episode builder reads the plain keys itself
    if observation_key != "observation" or "observation" not in first or isinstance(first["observation"], Mapping):
        obs = _column(rows, observation_key)
        if observation_key == "observation" and has_none(obs):
            obs = [o if o is not None else r.get("obs") for o, r in zip(obs, rows, strict=True)]
        if obs and isinstance(obs[0], Mapping):
            obs = [
                _resolve_images(o, base, i, "observation") if isinstance(o, Mapping) else o for i, o in enumerate(obs)
            ]
    if action_key != "action":
        act = _column(rows, action_key)
    try:
        return Episode.from_rows(rows, meta, source, observations=obs, actions=act, timestamps=_timestamps(rows))
    except RLDSError as err:
        if err.field == "observation" and "missing" in err.message:
            err.field = observation_key
        elif err.field == "action" and "missing" in err.message:
            err.field = action_key
        raise err.at(episode=eid) from None


def _column(rows: list[dict], dotted: str) -> list[Any]:
    if "." not in dotted:
        return [r.get(dotted) for r in rows]
    return [_get_path(r, dotted) for r in rows]


def _timestamps(rows: list[dict]) -> list[Any] | None:
    """The timestamp column in seconds when the first step spells it other than
    ``timestamp`` (seconds, which the episode builder reads itself)."""
    first = rows[0] if rows else {}
    if "timestamp" in first:
        return None
    if "timestamp_s" in first:
        return [r.get("timestamp_s") for r in rows]
    if "timestamp_ns" in first:
        values = [r.get("timestamp_ns") for r in rows]
        return [v * 1e-9 if isinstance(v, int | float) and not isinstance(v, bool) else v for v in values]
    sm = first.get("step_metadata")
    if isinstance(sm, Mapping) and "timestamp_ns" in sm:
        return [
            _number((r.get("step_metadata") or {}).get("timestamp_ns"), i, "step_metadata.timestamp_ns") * 1e-9
            for i, r in enumerate(rows)
        ]
    return None


def _number(value: Any, i: int, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RLDSError(f"must be a number, got {type(value).__name__}", step=i, field=name)
    try:
        return float(value)
    except ValueError:
        raise RLDSError(f"must be a number, got {value!r:.40}", step=i, field=name) from None


def _resolve_images(obs: Mapping[str, Any], base: Path, i: int, prefix: str) -> dict[str, Any]:
    """Turn blob references and inline base64 images into :class:`LazyImage` values."""
    out: dict[str, Any] = {}
    for key, value in obs.items():
        name = f"{prefix}.{key}"
        if isinstance(value, str):
            try:
                blob = (base / value).resolve()
            except (ValueError, OSError):
                raise RLDSError(f"blob path {value!r:.60} is not a valid path", step=i, field=name) from None
            if not value or not blob.is_relative_to(base.resolve()) or blob == base.resolve():
                raise RLDSError(f"blob path {value!r} leaves the episode directory", step=i, field=name)
            out[key] = LazyImage(path=blob)
        elif isinstance(value, Mapping) and "b64" in value:
            try:
                data = base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise RLDSError("inline image is not valid base64", step=i, field=name) from None
            out[key] = LazyImage(data=data, format=value.get("format"))
        elif isinstance(value, Mapping):
            out[key] = _resolve_images(value, base, i, name)
        else:
            out[key] = value
    return out


# --- writing -----------------------------------------------------------------------------


def write_continuon(
    episodes: Iterable[Episode], out: Path, steps_per_chunk: int = 0, *, overwrite: bool = False
) -> WrittenEpisodes:
    """Write each episode as ``<out>/[<split>/]<episode_id>/`` in the Continuon v1.1 layout.

    An episode with a ``split`` in its metadata (every episode read from a TFDS dataset has
    one) goes under ``<out>/<split>/``, so ids that restart in every split (as TFDS builders
    number them) stay apart and the split survives a round trip. Each episode directory is
    written under a temporary name and renamed into place, so a crash never leaves a
    half-written episode that looks complete. Images are written as blob files under
    ``blobs/``. ``steps_per_chunk`` > 0 splits long episodes into several
    ``steps/NNNNNN.jsonl`` chunks. An episode that fails :func:`check_episode` raises
    :class:`RLDSError` before anything of it is written.

    An existing episode directory is never replaced silently: the new episode is written
    beside it as ``<name>-1`` (``-2``, ...), logged, and listed in ``kept_both``; with
    ``overwrite=True`` an episode directory that existed *before this call* is replaced (and
    listed in ``replaced``), while two episodes of this call with one name are still both kept.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = WrittenEpisodes()
    for n, ep in enumerate(episodes):
        # JSON has no NaN: orjson would silently write null. Refuse bad episodes instead.
        check_episode(ep)
        eid = _safe_name(ep.metadata.get("episode_id") or f"episode_{n:06d}")
        split = ep.metadata.get("split")
        parent = out / _safe_name(split) if split else out
        parent.mkdir(exist_ok=True)
        tmp = temp_dir(parent / eid)
        try:
            with naming(parent / eid):
                _write_episode_dir(ep, tmp, eid, steps_per_chunk)
            final = _place(tmp, parent / eid, overwrite, written)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(parent)
        written.append(final)
        written.episodes[str(split or "")] += 1
    return written


def _place(tmp: Path, final: Path, overwrite: bool, written: WrittenEpisodes) -> Path:
    """Rename ``tmp`` to ``final``, or beside it when that name is taken (see write_continuon)."""
    if not final.exists():
        os.replace(tmp, final)
        return final
    if overwrite and final not in written:
        old = temp_dir(final)
        os.replace(final, old / final.name)
        os.replace(tmp, final)
        shutil.rmtree(old)
        log.warning("replaced episode directory %s (overwrite)", final)
        written.replaced.append(str(final))
        return final
    k = 1
    while (beside := final.with_name(f"{final.name}-{k}")).exists():
        k += 1
    os.replace(tmp, beside)
    log.warning("episode directory %s already exists: kept it and wrote the new episode to %s", final, beside)
    written.kept_both.append((final, beside))
    return beside


def _safe_name(name: object) -> str:
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)).strip(".")
    return text or "episode"


def _write_episode_dir(ep: Episode, path: Path, eid: str, steps_per_chunk: int) -> None:
    (path / "steps").mkdir()
    meta = {"schema_version": "1.1", **ep.metadata}
    if not meta.get("episode_id"):
        meta["episode_id"] = eid
    (path / "metadata.json").write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    obs = _jsonable_features(ep.observation, path, "observation")
    act = _jsonable_features(ep.action, path, "action")
    n = len(ep)
    chunk = steps_per_chunk or n
    for c, start in enumerate(range(0, n, chunk)):
        lines = []
        for i in range(start, min(n, start + chunk)):
            row: dict[str, Any] = {
                "observation": _take(obs, i),
                "action": _take(act, i),
                "reward": float(ep.reward[i]),
                "discount": float(ep.discount[i]),
                "is_first": bool(ep.is_first[i]),
                "is_last": bool(ep.is_last[i]),
                "is_terminal": bool(ep.is_terminal[i]),
            }
            if ep.language_instruction and ep.language_instruction[i] is not None:
                row["language_instruction"] = ep.language_instruction[i]
            if ep.step_metadata and ep.step_metadata[i]:
                row["step_metadata"] = ep.step_metadata[i]
            if ep.timestamp is not None:
                row["timestamp"] = float(ep.timestamp[i])
            lines.append(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY))
        (path / "steps" / f"{c:06d}.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def _jsonable_features(features: Any, path: Path, name: str) -> Any:
    """Columns ready for per-step JSON: numeric arrays stay numpy (orjson writes float32 in
    its shortest form, which is also faster to read back), images become blob paths."""
    if not isinstance(features, dict):
        return np.asarray(features)
    out = {}
    for key, col in features.items():
        if isinstance(col, ImageColumn):
            blob_dir = path / "blobs" / _safe_name(f"{name}.{key}")
            blob_dir.mkdir(parents=True)
            refs = []
            for i, img in enumerate(col):
                ext = img.format or "png"
                blob = blob_dir / f"{i:06d}.{'jpg' if ext == 'jpeg' else ext}"
                blob.write_bytes(img.encoded())
                refs.append(str(blob.relative_to(path)))
            out[key] = refs
        else:
            out[key] = np.asarray(col)
    return out


def _take(features: Any, i: int) -> Any:
    if isinstance(features, dict):
        return _nest({k: v[i] for k, v in features.items()})
    return features[i]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Undo the ``a/b`` flattening of nested observation dicts."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
