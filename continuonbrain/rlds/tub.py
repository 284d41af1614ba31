"""Donkeycar tub v2: what ``donkeycar.parts.tub_v2.Tub`` writes, read and written.

Layout (Donkeycar 4.x/5.x, ``donkeycar/parts/datastore_v2.py``)::

    <tub>/manifest.json               five JSON lines:
                                        1. the inputs, e.g. ["cam/image_array", "user/angle", ...]
                                        2. their types ("image_array", "float", "str", "int",
                                           "boolean", "nparray", "list", "vector", "gray16_array")
                                        3. user metadata ({"key": "value"} from ``--meta key:value``)
                                        4. {"created_at": <s>, "sessions": {"all_full_ids": [...],
                                           "last_id": <n>, "last_full_id": "<yy-mm-dd>_<n>"}}
                                        5. {"paths": ["catalog_0.catalog", ...], "current_index": <n>,
                                           "max_len": 1000, "deleted_indexes": [...]}
    <tub>/catalog_N.catalog           one JSON record a line: the inputs plus ``_index``,
                                      ``_session_id`` and ``_timestamp_ms``; catalog N holds
                                      the records ``N*max_len`` .. ``(N+1)*max_len - 1``
    <tub>/catalog_N.catalog_manifest  one JSON line: ``{created_at, line_lengths, path, start_index}``
    <tub>/images/<index>_<key with / as _>_.jpg   the image inputs, named in the records

Every drive that opens the tub (``manage.py drive``) appends records under a new session id.
Donkeycar users clean their data by *marking* records deleted (``deleted_indexes``; the tub
web UI, the Kivy UI and ``TubWiper`` do so); nothing is ever removed from the catalogs.

Reading: **one episode per maximal run of consecutive, undeleted records of one session**
(ordered by ``_index``, which must be the record's position in the catalogs, as ``Tub``
writes it). Observation: a dict of every ``image_array`` input under its tub key (a
:class:`TubImage`, decoded lazily) and the other numeric inputs that are not ``user/*`` or
``pilot/*`` commands; action: float32 ``[user/angle, user/throttle]`` (``action_keys``),
bounded to [-1, 1] (Donkeycar's convention, ``action_bounds``). Each step's
``step_metadata`` holds ``_index``, ``_session_id``, ``_timestamp_ms``, ``user/mode`` and the
other text, boolean and command inputs; the timestamps are the step timestamps (so the
control rate comes from them). Donkeycar has no rewards and no terminal states: reward is 0,
``is_terminal`` false (a drive is cut, not finished).

Bad tubs are treated like every other layout: a problem is one :class:`RLDSError` naming the
file, line, record index and field, and only the episode holding that record is bad. A tub
whose ``manifest.json`` cannot be read is one error (without it, which records are deleted is
unknown). Quarantining a tub episode (:func:`quarantine_run`) marks its records deleted in
the manifest, as Donkeycar's own cleaners do (reversible with :func:`restore_records` or
Donkeycar's ``Tub.restore_records``), and writes the reason to the quarantine directory.

Writing (:func:`write_tub`): each episode becomes one session of a tub that Donkeycar's
``Tub`` opens (to read, or to record more sessions into).

Why one module of 1120 lines: it is one file format's reader and writer (the manifest,
catalogs and image naming they share must match Donkeycar's). Split candidate: the writer
(:func:`write_tub`, :class:`_TubWriter`, ~380 lines) into a ``tub_writer`` module, as
``tfds_writer`` is for TFDS, re-exported here.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from continuonbrain.fsutil import atomic_write_bytes, fsync_dir, naming, temp_dir
from continuonbrain.rlds.checks import check_episode
from continuonbrain.rlds.episode import Episode, EpisodeResult, ImageColumn, LazyImage
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.limits import DEFAULT_LIMITS, Limits
from continuonbrain.rlds.written import WrittenEpisodes

log = logging.getLogger(__name__)

#: Options the dispatcher passes through to the reader.
OPTIONS = ("action_keys", "action_bounds", "limits")

MANIFEST = "manifest.json"
IMAGES = "images"
#: Donkeycar's steering and throttle, in [-1, 1].
DEFAULT_ACTION_KEYS = ("user/angle", "user/throttle")
DEFAULT_ACTION_BOUNDS = (-1.0, 1.0)
#: Inputs under these prefixes are commands (the user's or the autopilot's), never observations.
COMMAND_PREFIXES = ("user/", "pilot/")
PRIVATE_KEYS = ("_index", "_session_id", "_timestamp_ms")
MODE_KEY = "user/mode"
IMAGE_TYPES = {"image_array"}
#: Types whose record value is a file name (16-bit depth images, Tub v1's "image"): not read.
FILE_TYPES = {"image_array", "gray16_array", "image"}
NUMERIC_TYPES = {"float", "int", "nparray", "list", "vector"}
#: Donkeycar's default ``DRIVE_LOOP_HZ``: the rate of a one-record episode, which has no interval.
DONKEY_DEFAULT_HZ = 20.0
#: Donkeycar's default ``max_catalog_len``.
DEFAULT_MAX_LEN = 1000
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
#: ``user/mode`` -> ``control_role``: Donkeycar's user, local_angle (pilot steers) and local (pilot drives).
_ROLES = {"user": "teleop", "local_angle": "shared", "local": "policy"}


# --- recognising a tub ---------------------------------------------------------------------


def is_tub_dir(path: Path) -> bool:
    """``path`` holds a ``manifest.json`` whose first line is a JSON list (the inputs), or a
    ``manifest.json`` beside ``catalog_*.catalog`` files (a tub whose manifest is damaged is
    still a tub, and its reader says what is wrong). The model store's ``manifest.json`` is
    one JSON object, and no catalogs are beside it."""
    manifest = path / MANIFEST
    if not os.path.lexists(manifest):
        return False
    try:
        with DEFAULT_LIMITS.open(manifest) as fh:
            first = fh.readline(1 << 20)
        if isinstance(orjson.loads(first), list):
            return True
    except (RLDSError, orjson.JSONDecodeError, OSError):
        pass
    return any(path.glob("catalog_*.catalog"))


# --- reading -------------------------------------------------------------------------------


@dataclass
class TubRun(EpisodeResult):
    """An :class:`EpisodeResult` for the records ``first`` .. ``last`` of one session of the
    tub ``unit``; quarantine marks exactly these records deleted."""

    first: int = -1
    last: int = -1
    session_id: str = ""

    @property
    def place(self) -> str:
        return f"{self.unit}#{self.first}-{self.last}"


@dataclass
class _Manifest:
    inputs: list[str]
    types: list[str]
    metadata: dict
    manifest_metadata: dict
    paths: list[str]
    current_index: int
    max_len: int
    deleted: set[int]

    @property
    def input_types(self) -> dict[str, str]:
        return dict(zip(self.inputs, self.types, strict=True))


@dataclass
class _Record:
    pos: int
    file: str
    line: int
    data: dict | None = None
    error: RLDSError | None = None

    @property
    def session(self) -> str | None:
        sid = self.data.get("_session_id") if self.data is not None else None
        return sid if isinstance(sid, str) else None


class TubImage(LazyImage):
    """An image file of a tub, which names the catalog line, record and input that refer to
    it when it cannot be read or decoded."""

    __slots__ = ("_limits", "_where")

    def __init__(self, path: Path, where: tuple[str, int, int, str], limits: Limits = DEFAULT_LIMITS):
        super().__init__(path=path, format="jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else None)
        self._where = where  # (catalog file, line, record index, input key)
        self._limits = limits

    def _error(self, message: str) -> RLDSError:
        file, line, index, key = self._where
        name = self._path.name if self._path is not None else "?"
        return RLDSError(f"record {index}: image {IMAGES}/{name}: {message}", file=file, line=line, field=key)

    def encoded(self) -> bytes:
        assert self._path is not None
        if not os.path.lexists(self._path):
            raise self._error("the image file does not exist")
        try:
            data = self._limits.read(self._path)
        except RLDSError as err:
            raise self._error(err.message) from None
        if not data.startswith((_JPEG, _PNG)):
            raise self._error(f"image does not decode (not a JPEG or PNG file, starts with {data[:8]!r})")
        return data

    def decode(self) -> np.ndarray:
        try:
            return super().decode()
        except RLDSError as err:
            raise err if err.line is not None else self._error(err.message) from None

    def _read_header(self) -> tuple[tuple[int, ...], np.dtype]:
        try:
            return super()._read_header()
        except RLDSError as err:
            raise err if err.line is not None else self._error(err.message) from None


def scan_tub_dir(
    path: Path,
    action_keys: Sequence[str] = DEFAULT_ACTION_KEYS,
    action_bounds: tuple[float, float] | None = DEFAULT_ACTION_BOUNDS,
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[EpisodeResult]:
    """Yield one result per episode of the tub ``path`` (see the module doc), plus one per
    problem that belongs to no episode (a catalog that is missing, records the manifest does
    not count). Streams: one run of records is in memory at a time."""
    try:
        manifest = _read_manifest(path, limits, tuple(action_keys))
    except RLDSError as err:
        yield EpisodeResult(key=path.name, unit=path, error=err.at(file=str(path / MANIFEST)), movable=False)
        return
    yield from _TubReader(path, manifest, tuple(action_keys), action_bounds, limits).results()


def _read_manifest(path: Path, limits: Limits, action_keys: tuple[str, ...]) -> _Manifest:
    file = str(path / MANIFEST)
    lines = limits.read(path / MANIFEST).split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != 5:
        raise RLDSError(
            f"manifest.json has {len(lines)} lines; a Donkeycar tub v2 manifest has 5 (inputs, types, "
            "user metadata, manifest metadata, catalog metadata)",
            file=file,
        )
    docs = []
    for n, raw in enumerate(lines, start=1):
        limits.check_line(raw, file, n)
        docs.append(limits.loads(raw, file, line=n))
    inputs, types, metadata, manifest_metadata, catalogs = docs

    def bad(line: int, field: str, message: str) -> RLDSError:
        return RLDSError(message, file=file, line=line, field=field)

    if not isinstance(inputs, list) or not all(isinstance(k, str) for k in inputs):
        raise bad(1, "inputs", "must be a JSON list of input names")
    if len(set(inputs)) != len(inputs):
        raise bad(1, "inputs", f"lists an input twice: {sorted(k for k in set(inputs) if inputs.count(k) > 1)}")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise bad(2, "types", "must be a JSON list of type names")
    if len(types) != len(inputs):
        raise bad(2, "types", f"lists {len(types)} types for {len(inputs)} inputs")
    if not isinstance(metadata, dict):
        raise bad(3, "metadata", f"must be a JSON object, got {type(metadata).__name__}")
    if not isinstance(manifest_metadata, dict):
        raise bad(4, "manifest_metadata", f"must be a JSON object, got {type(manifest_metadata).__name__}")
    if not isinstance(catalogs, dict):
        raise bad(5, "catalog_metadata", f"must be a JSON object, got {type(catalogs).__name__}")
    for key in ("paths", "current_index", "max_len", "deleted_indexes"):
        if key not in catalogs:
            raise bad(5, key, "is missing")
    paths, current, max_len, deleted = (catalogs[k] for k in ("paths", "current_index", "max_len", "deleted_indexes"))
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise bad(5, "paths", "must be a list of catalog file names")
    for p in paths:
        if not p or p != os.path.basename(p) or p.startswith("."):
            raise bad(5, "paths", f"{p!r} is not a file name inside the tub")
    if not _is_int(current) or current < 0:
        raise bad(5, "current_index", f"must be a non-negative integer, got {current!r:.40}")
    if not _is_int(max_len) or max_len < 1:
        raise bad(5, "max_len", f"must be a positive integer, got {max_len!r:.40}")
    if not isinstance(deleted, list) or not all(_is_int(i) for i in deleted):
        raise bad(5, "deleted_indexes", "must be a list of record indexes")
    types_of = dict(zip(inputs, types, strict=True))
    for key in action_keys:
        if key not in types_of:
            raise bad(1, "inputs", f"the tub has no input {key!r} (its inputs: {inputs}); choose action_keys")
        if types_of[key] not in ("float", "int"):
            raise bad(2, "types", f"the action input {key!r} has type {types_of[key]!r}, not a number")
    return _Manifest(inputs, types, metadata, manifest_metadata, paths, current, max_len, set(deleted))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _TubReader:
    def __init__(
        self,
        path: Path,
        manifest: _Manifest,
        action_keys: tuple[str, ...],
        action_bounds: tuple[float, float] | None,
        limits: Limits,
    ):
        self.path = path
        self.manifest = manifest
        self.action_keys = action_keys
        self.bounds = action_bounds
        self.limits = limits
        self.label = _label(path, limits)
        self.types = manifest.input_types
        self.images = [k for k, t in self.types.items() if t in IMAGE_TYPES and not self._command(k)]
        self.numeric = [k for k, t in self.types.items() if t in NUMERIC_TYPES and not self._command(k)]
        taken = {*self.images, *self.numeric, *action_keys, *PRIVATE_KEYS}
        self.meta_keys = [k for k in self.types if k not in taken and self.types[k] not in FILE_TYPES]
        self.problems: list[EpisodeResult] = []  # errors that belong to no episode, yielded as found

    def _command(self, key: str) -> bool:
        return key.startswith(COMMAND_PREFIXES) or key in self.action_keys

    # -- records in catalog order, grouped into runs --

    def results(self) -> Iterator[EpisodeResult]:
        run: list[_Record] = []
        deleted, current = self.manifest.deleted, self.manifest.current_index
        uncounted: list[_Record] = []
        total = 0
        for rec in self._records():
            yield from self._drain()
            if rec.pos >= current:
                uncounted.append(rec)
                continue
            total = rec.pos + 1
            if rec.pos in deleted:
                continue
            if run and (rec.pos != run[-1].pos + 1 or _other_session(run, rec)):
                yield self._episode(run)
                run = []
            run.append(rec)
        yield from self._drain()
        if run:
            yield self._episode(run)
        file = str(self.path / MANIFEST)
        if uncounted:
            a, b = uncounted[0], uncounted[-1]
            err = RLDSError(
                f"records {a.pos}..{b.pos} ({a.file} line {a.line} on) are beyond the manifest's current_index "
                f"{current}: the manifest disagrees with the catalogs (a recording cut before Donkeycar "
                "updated its manifest?); they are not read",
                file=a.file,
                line=a.line,
                field="current_index",
            )
            yield EpisodeResult(key=f"{self.label}#{a.pos}-{b.pos}", unit=self.path, error=err, movable=False)
        elif total < current:
            err = RLDSError(
                f"the manifest's current_index says {current} records were written, the catalogs hold {total}: "
                "the manifest disagrees with the catalogs (records lost?)",
                file=file,
                line=5,
                field="current_index",
            )
            yield EpisodeResult(key=f"{self.label}#{total}-{current - 1}", unit=self.path, error=err, movable=False)

    def _drain(self) -> Iterator[EpisodeResult]:
        while self.problems:
            yield self.problems.pop(0)

    def _problem(self, err: RLDSError, key: str) -> None:
        self.problems.append(EpisodeResult(key=key, unit=self.path, error=err, movable=False))

    def _records(self) -> Iterator[_Record]:
        pos = 0
        listed = set(self.manifest.paths)
        for extra in sorted(self.path.glob("*.catalog")):
            if extra.name not in listed and extra.is_file() and extra.stat().st_size:
                err = RLDSError(
                    "this catalog holds records but the manifest does not list it (manifest.json line 5, paths): "
                    "the manifest disagrees with the catalogs; it is not read",
                    file=str(extra),
                    field="paths",
                )
                self._problem(err, f"{self.label}/{extra.name}")
        for name in self.manifest.paths:
            catalog = self.path / name
            file = str(catalog)
            if not os.path.lexists(catalog):
                err = RLDSError(
                    f"the manifest lists {name} (manifest.json line 5, paths) but it does not exist: the manifest "
                    "disagrees with the catalogs",
                    file=file,
                    field="paths",
                )
                self._problem(err, f"{self.label}/{name}")
                continue
            try:
                data = self.limits.read(catalog)
            except RLDSError as err:
                self._problem(err.at(file=file), f"{self.label}/{name}")
                continue
            lines = data.split(b"\n")
            if lines and not lines[-1]:
                lines.pop()
            for lineno, raw in enumerate(lines, start=1):
                if not raw.strip():
                    err = RLDSError(
                        "blank line in a catalog (Donkeycar's reader stops reading this catalog here)",
                        file=file,
                        line=lineno,
                    )
                    self._problem(err, f"{self.label}/{name}:{lineno}")
                    continue
                yield self._parse(raw, pos, file, lineno)
                pos += 1

    def _parse(self, raw: bytes, pos: int, file: str, line: int) -> _Record:
        rec = _Record(pos, file, line)

        def fail(message: str, field: str | None = None) -> _Record:
            rec.error = RLDSError(f"record {pos}: {message}", file=file, line=line, field=field)
            return rec

        try:
            self.limits.check_line(raw, file, line)
            data = self.limits.loads(raw, file, line=line)
        except RLDSError as err:
            return fail(f"malformed catalog line ({err.message})")
        if not isinstance(data, dict):
            return fail(f"a record must be a JSON object, got {type(data).__name__}")
        rec.data = data
        index = data.get("_index")
        if not _is_int(index):
            return fail(f"_index must be an integer, got {index!r:.40}", "_index")
        if index != pos:
            return fail(
                f"_index is {index}, but this is record {pos} of the tub (counting the catalogs in the manifest's "
                "order): the manifest disagrees with the catalogs, and which records deleted_indexes means is unclear",
                "_index",
            )
        if not isinstance(data.get("_session_id"), str):
            return fail(f"_session_id must be text, got {data.get('_session_id')!r:.40}", "_session_id")
        ts = data.get("_timestamp_ms")
        if not _is_number(ts) or not math.isfinite(ts):
            return fail(f"_timestamp_ms must be a number, got {ts!r:.40}", "_timestamp_ms")
        return rec

    # -- one run -> one episode --

    def _episode(self, run: list[_Record]) -> EpisodeResult:
        first, last = run[0].pos, run[-1].pos
        session = next((r.session for r in run if r.session), "unknown")
        eid = f"{self.label}:{session}:{first:06d}"  # zero-padded: names sort in record order
        result = TubRun(key=eid, unit=self.path, movable=False, first=first, last=last, session_id=session)
        try:
            bad = next((r for r in run if r.error is not None), None)
            if bad is not None:
                raise bad.error  # type: ignore[misc]
            episode = self._build(run, eid, session)
        except RLDSError as err:
            return result.failed(err.at(episode=eid))
        return replace(result, episode=episode)

    def _fail(self, run: list[_Record], i: int, field: str, message: str) -> RLDSError:
        r = run[i]
        return RLDSError(f"record {r.pos}: {message}", file=r.file, line=r.line, field=field, step=i)

    def _build(self, run: list[_Record], eid: str, session: str) -> Episode:
        recs = [r.data for r in run]
        assert all(r is not None for r in recs)
        n = len(run)
        action = np.empty((n, len(self.action_keys)), np.float32)
        for j, key in enumerate(self.action_keys):
            action[:, j] = self._numbers(run, [r.get(key) for r in recs], key)  # type: ignore[union-attr]
        if self.bounds is not None:
            lo, hi = self.bounds
            outside = (action < np.float32(lo)) | (action > np.float32(hi))
            if outside.any():
                i, j = (int(x) for x in np.argwhere(outside)[0])
                raise self._fail(
                    run, i, self.action_keys[j], f"{float(action[i, j])} is outside Donkeycar's [{lo:g}, {hi:g}]"
                )
        obs: dict[str, Any] = {}
        images = self.path / IMAGES
        for key in self.images:
            names = [r.get(key) for r in recs]  # type: ignore[union-attr]
            if not self._present(run, names, key):
                continue
            column = []
            for i, name in enumerate(names):
                if not isinstance(name, str) or not name or name != os.path.basename(name) or name.startswith("."):
                    raise self._fail(run, i, key, f"{name!r:.60} is not an image file name inside {IMAGES}/")
                column.append(TubImage(images / name, (run[i].file, run[i].line, run[i].pos, key), self.limits))
            obs[key] = ImageColumn(column)
        for key in self.numeric:
            values = [r.get(key) for r in recs]  # type: ignore[union-attr]
            if self._present(run, values, key):
                obs[key] = self._array(run, values, key)
        if not obs:
            raise RLDSError(
                f"the tub has no observation inputs (no image_array input and no numeric input outside "
                f"{'/'.join(COMMAND_PREFIXES)}; its inputs: {self.manifest.inputs})",
                file=str(self.path / MANIFEST),
                line=1,
                field="inputs",
            )
        ts_ms = np.asarray([r["_timestamp_ms"] for r in recs], np.float64)  # type: ignore[index]  # checked by _parse
        back = np.flatnonzero(np.diff(ts_ms) < 0)
        if len(back):
            i = int(back[0]) + 1
            raise self._fail(run, i, "_timestamp_ms", f"goes backwards ({ts_ms[i]:.0f} after {ts_ms[i - 1]:.0f})")
        step_metadata = [self._step_meta(run, i, r) for i, r in enumerate(recs)]  # type: ignore[arg-type]
        is_first = np.zeros(n, bool)
        is_first[0] = True
        is_last = np.zeros(n, bool)
        is_last[-1] = True
        return Episode(
            observation=obs,
            action=action,
            reward=np.zeros(n, np.float32),
            discount=np.ones(n, np.float32),
            is_first=is_first,
            is_last=is_last,
            is_terminal=np.zeros(n, bool),
            metadata=self._metadata(run, eid, session, ts_ms, step_metadata),
            step_metadata=step_metadata,
            timestamp=ts_ms / 1000.0,
            source=str(self.path),
        )

    def _present(self, run: list[_Record], values: list[Any], key: str) -> bool:
        """Whether the input ``key`` is in this episode: Donkeycar leaves out an input whose
        value was ``None``; one left out of every record is not in the episode, one left out of
        some is an error."""
        missing = [i for i, v in enumerate(values) if v is None]
        if len(missing) == len(values):
            return False
        if missing:
            have = next(i for i, v in enumerate(values) if v is not None)
            raise self._fail(run, missing[0], key, f"has no {key!r}, which record {run[have].pos} of its episode has")
        return True

    def _numbers(self, run: list[_Record], values: list[Any], key: str) -> np.ndarray:
        if set(map(type, values)) <= {int, float}:
            arr = np.asarray(values, np.float64)
            if np.isfinite(arr).all():
                return arr
        for i, v in enumerate(values):
            if v is None:
                raise self._fail(run, i, key, f"has no {key!r}")
            if not _is_number(v):
                raise self._fail(run, i, key, f"must be a number, got {type(v).__name__} {v!r:.40}")
            if not math.isfinite(v):
                raise self._fail(run, i, key, f"value is {v}")
        raise AssertionError("unreachable")  # pragma: no cover

    def _array(self, run: list[_Record], values: list[Any], key: str) -> np.ndarray:
        if self.types[key] in ("float", "int"):
            return self._numbers(run, values, key).astype(np.float32)
        try:
            arr = np.asarray(values)
        except ValueError:
            arr = None
        if arr is None or arr.dtype.kind not in "iuf" or arr.ndim < 2:
            shape0 = np.shape(values[0]) if not isinstance(values[0], str) else None
            for i, v in enumerate(values):
                try:
                    item = np.asarray(v)
                except ValueError:
                    raise self._fail(run, i, key, "ragged nested lists") from None
                if item.dtype.kind not in "iuf" or item.ndim == 0:
                    raise self._fail(run, i, key, f"must be a list of numbers, got {v!r:.40}")
                if item.shape != shape0:
                    raise self._fail(run, i, key, f"shape {item.shape} differs from record {run[0].pos}'s {shape0}")
            raise self._fail(run, 0, key, "must be lists of numbers")
        arr = arr.astype(np.float32)
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise self._fail(run, i, key, "holds a value that is not finite")
        return arr

    def _step_meta(self, run: list[_Record], i: int, rec: dict) -> dict[str, Any]:
        out: dict[str, Any] = {key: rec[key] for key in PRIVATE_KEYS}
        for key in self.meta_keys:
            value = rec.get(key)
            if value is None:
                continue
            if isinstance(value, str | bool) or (_is_number(value) and math.isfinite(value)):
                out[key] = value
            elif isinstance(value, list) and all(_is_number(v) and math.isfinite(v) for v in value):
                out[key] = [float(v) for v in value]
            else:
                raise self._fail(
                    run, i, key, f"must be text, a boolean, a number or a list of numbers, got {value!r:.40}"
                )
        return out

    def _metadata(
        self, run: list[_Record], eid: str, session: str, ts_ms: np.ndarray, step_metadata: list[dict]
    ) -> dict[str, Any]:
        dt = np.diff(ts_ms)
        dt = dt[dt > 0]
        hz = round(float(1000.0 / np.median(dt)), 3) if len(dt) else DONKEY_DEFAULT_HZ
        modes = {m.get(MODE_KEY) for m in step_metadata}
        roles = {_ROLES.get(m, "unknown") for m in modes if isinstance(m, str)}
        space: dict[str, Any] = {"type": "box", "shape": [len(self.action_keys)], "dtype": "float32"}
        space["names"] = list(self.action_keys)
        if self.bounds is not None:
            space["low"], space["high"] = float(self.bounds[0]), float(self.bounds[1])
        meta: dict[str, Any] = {
            "schema_version": "1.1",
            "episode_id": eid,
            "robot_model": "donkeycar",
            "xr_mode": "none",
            "tags": ["donkeycar"],
            "control_hz": hz,
            "capabilities": {"control_hz": hz, "action_space": space},
            "provenance": {
                "origin": "donkeycar:tub",
                "notes": f"records {run[0].pos}-{run[-1].pos} (session {session}) of the Donkeycar tub {self.path}",
            },
            "tub": {
                "path": str(self.path),
                "session_id": session,
                "first_index": run[0].pos,
                "last_index": run[-1].pos,
                "inputs": list(self.manifest.inputs),
                "types": list(self.manifest.types),
                "metadata": dict(self.manifest.metadata),
            },
        }
        if roles:
            meta["control_role"] = roles.pop() if len(roles) == 1 else "mixed"
        stored = _stored_metadata(self.manifest.manifest_metadata, session)
        if stored:  # written by write_tub: the episode's own metadata comes back (the tub parts stay)
            capabilities = {**(stored.get("capabilities") or {}), **meta["capabilities"]}
            meta = {**stored, **{k: meta[k] for k in _RECOMPUTED}, "capabilities": capabilities}
        split = self.manifest.metadata.get("split")
        if isinstance(split, str) and split:
            meta["split"] = split
        return meta


#: Metadata a tub episode always gets from the tub, even when write_tub stored the episode's own.
_RECOMPUTED = ("schema_version", "episode_id", "control_hz", "tub")
#: Where write_tub keeps each session's episode metadata: a key of manifest.json's line 4,
#: which Donkeycar keeps as it is when it records more sessions into the tub.
STORED_KEY = "continuonbrain"


def _stored_metadata(manifest_metadata: Mapping[str, Any], session: str) -> dict | None:
    stored = manifest_metadata.get(STORED_KEY)
    episodes = stored.get("episode_metadata") if isinstance(stored, Mapping) else None
    meta = episodes.get(session) if isinstance(episodes, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else None


def _other_session(run: list[_Record], rec: _Record) -> bool:
    """``rec`` belongs to another session than ``run`` (a record whose session is unknown, a
    malformed line, stays with its neighbours: the episode holding it is then bad)."""
    mine = next((r.session for r in reversed(run) if r.session is not None), None)
    return rec.session is not None and mine is not None and rec.session != mine


def _label(path: Path, limits: Limits) -> str:
    """The tub's name in episode ids: its path under the directory being scanned (two cars'
    ``data`` tubs stay apart), or its directory name when it is that directory."""
    real = os.path.realpath(path)
    if limits.root is not None and real != limits.root and real.startswith(limits.root.rstrip(os.sep) + os.sep):
        return os.path.relpath(real, limits.root).replace(os.sep, "/")
    return os.path.basename(real) or "tub"


# --- quarantine: mark deleted, reversibly ----------------------------------------------------


def mark_deleted(tub: str | os.PathLike, indexes: Iterable[int]) -> None:
    """Add ``indexes`` to the tub's ``deleted_indexes`` (what Donkeycar's ``Tub.delete_records``
    does). The manifest's other lines are kept byte for byte; it is replaced atomically.
    Donkeycar must not have the tub open for recording meanwhile (it rewrites that line)."""
    _update_deleted(Path(tub), set(indexes), add=True)


def restore_records(tub: str | os.PathLike, indexes: Iterable[int]) -> None:
    """Undo :func:`mark_deleted` (Donkeycar's ``Tub.restore_records``)."""
    _update_deleted(Path(tub), set(indexes), add=False)


def _update_deleted(tub: Path, indexes: set[int], *, add: bool) -> None:
    path = tub / MANIFEST
    file = str(path)
    lines = DEFAULT_LIMITS.read(path).split(b"\n")
    if len([x for x in lines if x.strip()]) < 5:
        raise RLDSError("not a Donkeycar tub v2 manifest (fewer than 5 lines)", file=file)
    catalogs = DEFAULT_LIMITS.loads(lines[4], file, line=5)
    if not isinstance(catalogs, dict) or not isinstance(catalogs.get("deleted_indexes"), list):
        raise RLDSError("line 5 has no deleted_indexes list", file=file, line=5, field="deleted_indexes")
    deleted = set(catalogs["deleted_indexes"])
    catalogs["deleted_indexes"] = sorted(deleted | indexes if add else deleted - indexes)
    lines[4] = json.dumps(catalogs).encode()
    atomic_write_bytes(path, b"\n".join(lines))


def quarantine_run(result: TubRun, error: RLDSError, qdir: Path) -> Path:
    """Quarantine a tub episode the Donkeycar way: mark its records deleted in the tub's
    manifest (nothing is moved or removed) and write why, and how to undo it, to
    ``<qdir>/<tub>.<first>-<last>.reason.txt``; returns that file."""
    qdir.mkdir(parents=True, exist_ok=True)
    indexes = range(result.first, result.last + 1)
    mark_deleted(result.unit, indexes)
    name = result.key.split(":")[0].replace("/", "_")
    reason = qdir / f"{name}.{result.session_id}.{result.first}-{result.last}.reason.txt"
    n = 1
    while reason.exists():
        reason = reason.with_name(f"{name}.{result.session_id}.{result.first}-{result.last}.{n}.reason.txt")
        n += 1
    reason.write_text(
        f"{error}\n"
        f"Records {result.first}..{result.last} (session {result.session_id}) of the Donkeycar tub {result.unit} "
        "were marked deleted in its manifest.json (deleted_indexes), as Donkeycar's own cleaners do; nothing "
        "was moved or removed.\n"
        "To restore them: continuonbrain.rlds.tub.restore_records("
        f"{str(result.unit)!r}, range({result.first}, {result.last + 1})), or Donkeycar's "
        f"Tub({str(result.unit)!r}).restore_records(range({result.first}, {result.last + 1})).\n"
    )
    return reason


# --- writing -------------------------------------------------------------------------------


def write_tub(
    episodes: Iterable[Episode],
    out: Path,
    *,
    split: str | None = None,
    action_keys: Sequence[str] = DEFAULT_ACTION_KEYS,
    max_catalog_len: int = DEFAULT_MAX_LEN,
    overwrite: bool = False,
) -> WrittenEpisodes:
    """Write ``episodes`` as Donkeycar tubs, one session per episode.

    Episodes without a split (and without ``split``) make ``out`` the tub; an episode with a
    split goes to the tub ``<out>/<split>/`` (its name is kept in the tub's user metadata, so
    it survives a round trip). An episode needs an image observation (``image_array``
    inputs, RGB uint8) and an action of ``len(action_keys)`` numbers a step (written as
    ``user/angle``, ``user/throttle``); numeric observations become ``float``/``list``
    inputs and ``step_metadata["user/mode"]`` the mode (default ``user``). Images stay as
    encoded (JPEG as ``.jpg``, PNG as ``.png``; Donkeycar opens either); rewards, terminal
    flags and language instructions have no place in a tub and are not written.

    Each tub is written under a temporary name and renamed into place at the end, so an error
    or a crash leaves nothing that looks like a tub. A tub already at the target (or any
    non-empty directory) is never replaced silently: that is an error before anything is
    written, unless ``overwrite=True``, which replaces a tub (and lists it in ``replaced``).
    """
    out = Path(out)
    action_keys = tuple(action_keys)
    writers: dict[Path, _TubWriter] = {}
    written = WrittenEpisodes()
    try:
        for number, ep in enumerate(episodes):
            eid = ep.metadata.get("episode_id") or f"#{number}"
            try:
                check_episode(ep)
                target_split = str(ep.metadata.get("split") or split or "")
                target = out / _safe_name(target_split) if target_split else out
                if target not in writers:
                    _check_target(target, out, writers, overwrite)
                    writers[target] = _TubWriter(target, action_keys, max_catalog_len, target_split)
                writers[target].add(ep)
            except RLDSError as err:
                raise err.at(file=ep.source, episode=eid) from None
            written.episodes[target_split] += 1
        for target, writer in writers.items():
            writer.finish()
            if writer.place(overwrite):
                written.replaced.append(str(target))
            written.append(target)
        return written
    finally:
        for writer in writers.values():
            writer.abort()


def _check_target(target: Path, out: Path, writers: Mapping[Path, Any], overwrite: bool) -> None:
    nested = [t for t in writers if t == out or target == out]
    if nested:
        raise RLDSError(
            f"episodes with and without a split: a tub cannot hold another tub ({out} and its split "
            "directories); give every episode a split (split=...)",
            file=str(out),
            field="split",
        )
    if target != out and is_tub_dir(out):
        raise RLDSError(f"{out} is a tub itself; a tub cannot hold the split tubs", file=str(out), field="split")
    if not target.exists():
        return
    if is_tub_dir(target):
        if overwrite:
            return
        raise RLDSError(
            f"{target} already holds a Donkeycar tub; write to another directory, or overwrite it explicitly "
            "(overwrite=True, --overwrite)",
            file=str(target),
        )
    if not target.is_dir() or any(target.iterdir()):
        raise RLDSError(
            f"{target} exists and is not an empty directory; refusing to write a tub there", file=str(target)
        )


def _safe_name(name: str) -> str:
    text = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return text or "split"


@dataclass
class _Input:
    key: str
    type: str
    role: str  # "image", "obs", "action", "mode", "meta"
    shape: tuple[int, ...] = ()


class _TubWriter:
    """One tub being written under a temporary name beside ``target``."""

    def __init__(self, target: Path, action_keys: tuple[str, ...], max_len: int, split: str):
        if max_len < 1:
            raise ValueError("max_catalog_len must be >= 1")
        self.target = target
        self.action_keys = action_keys
        self.max_len = max_len
        self.split = split
        target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_dir(target)
        (self.tmp / IMAGES).mkdir()
        self.schema: list[_Input] | None = None
        self.index = 0
        self.sessions: list[str] = []
        self.user_metadata: dict[str, Any] = {}
        self.episode_metadata: dict[str, dict] = {}
        self.order: list[str] = []
        self.catalog: io.BufferedWriter | None = None
        self.line_lengths: list[int] = []
        self.paths: list[str] = []
        self.clock_ms = round(time.time() * 1000)
        self.created_at = time.time()
        self.placed = False

    # -- schema --

    def _schema_of(self, ep: Episode) -> list[_Input]:
        if not isinstance(ep.observation, dict) or not any(isinstance(c, ImageColumn) for c in ep.observation.values()):
            raise RLDSError(
                "a tub needs an image observation (a dict observation with an image, e.g. cam/image_array)",
                field="observation",
            )
        tub = ep.metadata.get("tub") or {}
        tub_types = dict(zip(tub.get("inputs") or [], tub.get("types") or [], strict=False))
        inputs: list[_Input] = []
        for key, col in ep.observation.items():
            if key.startswith(COMMAND_PREFIXES) or key in PRIVATE_KEYS or key in self.action_keys:
                raise RLDSError(
                    f"observation {key!r} would read back as a command or a private field of the tub",
                    field=f"observation.{key}",
                )
            if isinstance(col, ImageColumn):
                inputs.append(_Input(key, "image_array", "image"))
                continue
            arr = np.asarray(col)
            shape = arr.shape[1:]
            if shape == ():
                typ = tub_types.get(key) if tub_types.get(key) in ("float", "int") else None
                typ = typ or ("float" if arr.dtype.kind == "f" else "int")
            else:
                typ = tub_types.get(key) if tub_types.get(key) in ("nparray", "list", "vector") else "list"
            inputs.append(_Input(key, typ, "obs", shape))
        action = ep.action
        width = len(self.action_keys)
        if isinstance(action, dict):
            ok = set(action) == set(self.action_keys) and all(
                np.asarray(action[k]).reshape(len(ep), -1).shape[1] == 1 for k in self.action_keys
            )
        else:
            ok = np.asarray(action).ndim == 2 and np.asarray(action).shape[1] == width
        if not ok:
            shape = (
                {k: list(np.shape(v)[1:]) for k, v in action.items()}
                if isinstance(action, dict)
                else list(np.shape(action)[1:])
            )
            raise RLDSError(
                f"a tub holds {width} action numbers a step ({', '.join(self.action_keys)}); this action is {shape}",
                field="action",
            )
        inputs += [_Input(k, "float", "action") for k in self.action_keys]
        inputs.append(_Input(MODE_KEY, "str", "mode"))
        return inputs

    def _extra_inputs(self, ep: Episode) -> list[_Input]:
        """Inputs of the tub an episode was read from that its step_metadata holds (pilot/*,
        text and boolean inputs), so that tub -> tub keeps them."""
        tub = ep.metadata.get("tub") or {}
        known = {i.key for i in self.schema or []}
        out = []
        for key, typ in zip(tub.get("inputs") or [], tub.get("types") or [], strict=False):
            if key in known or key in PRIVATE_KEYS or typ in FILE_TYPES or not ep.step_metadata:
                continue
            if any(key in m for m in ep.step_metadata):
                out.append(_Input(key, typ, "meta"))
        return out

    def add(self, ep: Episode) -> None:
        schema = self._schema_of(ep)
        if self.schema is None:
            self.schema = schema
        else:
            mine = {(i.key, i.role, i.shape) for i in self.schema if i.role != "meta"}
            theirs = {(i.key, i.role, i.shape) for i in schema}
            if mine != theirs:
                raise RLDSError(
                    f"differs from the episodes already in the tub {self.target} (one tub has one set of inputs): "
                    f"{sorted(theirs - mine)} instead of {sorted(mine - theirs)}",
                    field="observation",
                )
        for extra in self._extra_inputs(ep):
            have = next((i for i in self.schema if i.key == extra.key), None)
            if have is None:
                self.schema.append(extra)
            elif have.type != extra.type:
                raise RLDSError(
                    f"input {extra.key!r} is {extra.type!r} here, {have.type!r} before", field="step_metadata"
                )
        tub = ep.metadata.get("tub") or {}
        for k, v in (tub.get("metadata") or {}).items():
            if k != "split":
                self.user_metadata.setdefault(k, v)
        self.order += [k for k in tub.get("inputs") or [] if k not in self.order]
        self._write_session(ep)

    # -- records --

    def _write_session(self, ep: Episode) -> None:
        assert self.schema is not None
        n = len(ep)
        stamps = self._timestamps(ep)
        day = time.strftime("%y-%m-%d", time.localtime(stamps[0] / 1000.0))
        session = f"{day}_{len(self.sessions)}"
        self.sessions.append(session)
        kept = {k: v for k, v in ep.metadata.items() if k not in ("tub", "split")}
        self.episode_metadata[session] = orjson.loads(orjson.dumps(kept, option=orjson.OPT_SERIALIZE_NUMPY))
        default_mode = "local" if ep.metadata.get("control_role") == "policy" else "user"
        obs = ep.observation
        assert isinstance(obs, dict)
        action = (
            np.stack([np.asarray(ep.action[k], np.float32).reshape(n) for k in self.action_keys], axis=1)
            if isinstance(ep.action, dict)
            else np.asarray(ep.action, np.float32)
        )
        columns = {i.key: np.asarray(obs[i.key]) for i in self.schema if i.role == "obs"}
        meta = ep.step_metadata or [{}] * n
        for t in range(n):
            g = self.index
            rec: dict[str, Any] = {"_index": g, "_session_id": session, "_timestamp_ms": int(stamps[t])}
            for j, key in enumerate(self.action_keys):
                rec[key] = action[t, j]
            for inp in self.schema:
                if inp.role == "image":
                    rec[inp.key] = self._image(obs[inp.key][t], g, inp.key)  # type: ignore[index]
                elif inp.role == "obs":
                    value = columns[inp.key][t]
                    if inp.type == "int":
                        value = round(float(value))
                    elif inp.shape:
                        value = np.ascontiguousarray(value)
                    rec[inp.key] = value
                elif inp.role == "mode":
                    mode = meta[t].get(MODE_KEY)
                    rec[MODE_KEY] = mode if isinstance(mode, str) else default_mode
                elif inp.role == "meta" and meta[t].get(inp.key) is not None:
                    rec[inp.key] = meta[t][inp.key]
            self._write_record(rec)
            self.index += 1

    def _timestamps(self, ep: Episode) -> np.ndarray:
        """``_timestamp_ms`` of each step: the episode's timestamps when they are wall-clock
        times, else sessions laid one after another from the time of writing at the episode's
        control rate."""
        n = len(ep)
        if ep.timestamp is not None and ep.timestamp[0] > 1e9:  # seconds since 1970, after 2001
            stamps = np.round(ep.timestamp * 1000.0).astype(np.int64)
        else:
            rel = ep.timestamp - ep.timestamp[0] if ep.timestamp is not None else np.arange(n) / ep.control_hz
            stamps = self.clock_ms + np.round(rel * 1000.0).astype(np.int64)
        step = round(1000.0 / ep.control_hz) or 1
        self.clock_ms = max(self.clock_ms, int(stamps[-1]) + step)
        return stamps

    def _image(self, img: LazyImage, index: int, key: str) -> str:
        from PIL import Image, UnidentifiedImageError

        data = img.encoded()
        try:
            with Image.open(io.BytesIO(data)) as pil:
                mode, kind = pil.mode, pil.format
                if mode == "RGB" and kind not in ("JPEG", "PNG"):  # GIF, BMP, WebP: stored as PNG, losslessly
                    buf = io.BytesIO()
                    pil.save(buf, format="PNG")
                    data, kind = buf.getvalue(), "PNG"
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise RLDSError(f"image does not decode ({type(exc).__name__}: {exc})", field=key) from None
        if mode != "RGB":
            raise RLDSError(f"a tub image is RGB (uint8 [H, W, 3]); this one is PIL mode {mode!r}", field=key)
        ext = ".jpg" if kind == "JPEG" else ".png"
        name = "_".join([str(index), key.replace("/", "_"), ext])  # Donkeycar's Tub._image_file_name
        path = self.tmp / IMAGES / name
        with naming(path):
            path.write_bytes(data)
        return name

    def _write_record(self, rec: dict[str, Any]) -> None:
        if self.catalog is None or (self.index % self.max_len == 0 and self.index > 0):
            self._close_catalog()
            name = f"catalog_{len(self.paths)}.catalog"
            self.paths.append(name)
            self.catalog = open(self.tmp / name, "wb")  # noqa: SIM115 (closed in _close_catalog)
            self.line_lengths = []
        line = orjson.dumps(rec, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        with naming(self.tmp / self.paths[-1]):
            self.catalog.write(line)
        self.line_lengths.append(len(line.decode()))  # Donkeycar counts characters (text mode)

    def _close_catalog(self) -> None:
        if self.catalog is None:
            return
        name = self.paths[-1]
        catalog, self.catalog = self.catalog, None
        with naming(self.tmp / name):
            catalog.close()  # the last buffered records are written here
        stem = name[: -len(".catalog")]
        contents = {
            "path": f"{stem}.catalog_manifest",
            "created_at": time.time(),
            "start_index": (len(self.paths) - 1) * self.max_len,
            "line_lengths": self.line_lengths,
        }
        path = self.tmp / f"{stem}.catalog_manifest"
        with naming(path):
            path.write_text(json.dumps(contents, allow_nan=False, sort_keys=True) + "\n")

    # -- the manifest, and placing the tub --

    def finish(self) -> None:
        assert self.schema is not None
        self._close_catalog()
        metadata = dict(self.user_metadata)
        if self.split:
            metadata["split"] = self.split
        sessions = {
            "all_full_ids": list(self.sessions),
            "last_id": len(self.sessions) - 1,
            "last_full_id": self.sessions[-1],
        }
        catalogs = {"paths": self.paths, "current_index": self.index, "max_len": self.max_len, "deleted_indexes": []}
        rank = {k: i for i, k in enumerate(self.order)}  # the inputs in the order of the tub they came from
        schema = sorted(self.schema, key=lambda i: rank.get(i.key, len(rank)))
        manifest_metadata = {
            "created_at": self.created_at,
            "sessions": sessions,
            STORED_KEY: {"episode_metadata": self.episode_metadata},
        }
        lines = [
            json.dumps([i.key for i in schema]),
            json.dumps([i.type for i in schema]),
            json.dumps(metadata),
            json.dumps(manifest_metadata),
            json.dumps(catalogs),
        ]
        path = self.tmp / MANIFEST
        with naming(path):
            path.write_text("".join(f"{line}\n" for line in lines))

    def place(self, overwrite: bool) -> bool:
        """Rename the tub into place; true when it replaced a tub (``overwrite``)."""
        target = self.target
        replaced = False
        if target.exists() and is_tub_dir(target):
            if not overwrite:  # appeared while writing
                raise RLDSError(f"{target} already holds a Donkeycar tub", file=str(target))
            old = temp_dir(target)
            os.replace(target, old / target.name)
            os.replace(self.tmp, target)
            shutil.rmtree(old)
            log.warning("replaced the tub %s (overwrite)", target)
            replaced = True
        else:
            os.replace(self.tmp, target)  # onto nothing, or an empty directory
        self.placed = True
        fsync_dir(target.parent)
        return replaced

    def abort(self) -> None:
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None
        if not self.placed:
            shutil.rmtree(self.tmp, ignore_errors=True)


__all__ = [
    "DEFAULT_ACTION_KEYS",
    "TubImage",
    "TubRun",
    "is_tub_dir",
    "mark_deleted",
    "quarantine_run",
    "restore_records",
    "scan_tub_dir",
    "write_tub",
]
