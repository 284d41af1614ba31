"""In-memory RLDS episodes, stored by column.

An :class:`Episode` keeps each step field as one array over time (``observation`` of shape
``[T, D]``, ``reward`` of shape ``[T]``, ...) rather than a list of per-step objects. That is
what makes reading fast (one ``np.asarray`` per field instead of one per step), what lets the
window datasets slice ``[t0:t1]`` without copying step by step, and what makes validation a
few vectorised checks. The RLDS view that people expect, ``episode.steps[i].observation``,
is a cheap :class:`Sequence` over those columns.

``observation`` and ``action`` are either one numeric array ``[T, ...]`` or a dict of named
columns, each a numeric array ``[T, ...]`` or an :class:`ImageColumn` of lazily decoded
images.

:class:`EpisodeResult` is what a scan yields per episode: the :class:`Episode`, or the
:class:`~continuonbrain.rlds.errors.RLDSError` that kept it from being one.

Why one module of 658 lines: the in-memory episode and its columns are one data structure
that every reader builds and every consumer slices. Split candidate: the lazy image types
(:class:`LazyImage`, :class:`ImageColumn`, ~140 lines) into an images module, re-exported here.
"""

from __future__ import annotations

import io
import itertools
import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.limits import Limits

#: The control rate assumed when neither the step timestamps nor ``control_hz`` in the
#: episode metadata say otherwise (the built-in simulators and the Pi logger run at 50 Hz).
DEFAULT_CONTROL_HZ = 50.0


class LazyImage:
    """An encoded image (PNG or JPEG) decoded only when someone looks at its pixels.

    Episodes with camera streams are mostly image bytes; decoding them all on read would
    multiply memory by ~10 and waste time for consumers (validation of vector fields,
    ``rlds info``, conversion) that never need pixels.

    It behaves as the ``uint8 [H, W, C]`` array it stands for: ``np.asarray(img)`` decodes it
    (``__array__``), and ``shape``/``dtype``/``ndim`` come from the image header without
    decoding the pixels. Decoded pixels are not kept: holding them would undo the point of
    being lazy (an episode of 1,000 VGA frames is 900 MB decoded); keep the array you got.
    """

    __slots__ = ("_data", "_header", "_path", "format")

    def __init__(self, data: bytes | None = None, path: str | Path | None = None, format: str | None = None):
        if data is None and path is None:
            raise ValueError("LazyImage needs bytes or a path")
        self._data = data
        self._path = Path(path) if path is not None else None
        self.format = format or (self._path.suffix.lstrip(".").lower() if self._path else None)
        self._header: tuple[tuple[int, ...], np.dtype] | None = None

    @property
    def path(self) -> Path | None:
        return self._path

    def encoded(self) -> bytes:
        """The encoded bytes, read from disk if the image lives in a blob file."""
        if self._data is not None:
            return self._data
        assert self._path is not None
        try:
            # Guarded like every read: a FIFO or device as a blob must not block, a huge one not fill memory.
            return Limits().read(self._path)
        except RLDSError as err:
            raise RLDSError(f"image blob cannot be read: {err.message}", file=str(self._path)) from None

    def decode(self) -> np.ndarray:
        """Pixels as ``uint8 [H, W, C]``; raises :class:`RLDSError` when they do not decode."""
        from PIL import Image, UnidentifiedImageError

        data = self.encoded()
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                arr = np.asarray(img)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise RLDSError(f"image does not decode ({type(exc).__name__}: {exc})") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return arr

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.decode()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(H, W, C)`` of the decoded pixels, read from the header."""
        return self._read_header()[0]

    @property
    def dtype(self) -> np.dtype:
        """The dtype :meth:`decode` gives (``uint8`` for 8-bit images)."""
        return self._read_header()[1]

    @property
    def ndim(self) -> int:
        return 3

    def _read_header(self) -> tuple[tuple[int, ...], np.dtype]:
        if self._header is None:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(io.BytesIO(self.encoded())) as img:
                    mode, (w, h) = img.mode, img.size
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise RLDSError(f"image does not decode ({type(exc).__name__}: {exc})") from None
            known = _MODE_LAYOUT.get(mode)
            if known is None:  # a rare mode: let the decoder say what it gives
                arr = self.decode()
                self._header = (arr.shape, arr.dtype)
            else:
                self._header = ((h, w, known[0]), np.dtype(known[1]))
        return self._header

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazyImage) and self.encoded() == other.encoded()

    def __hash__(self) -> int:
        return hash(self.encoded())

    def __repr__(self) -> str:
        where = str(self._path) if self._path else f"{len(self._data or b'')} bytes"
        return f"LazyImage({where})"


#: PIL mode -> (channels, dtype) of ``np.asarray(image)`` as :meth:`LazyImage.decode` shapes it.
_MODE_LAYOUT: dict[str, tuple[int, str]] = {
    "1": (1, "bool"),
    "L": (1, "uint8"),
    "P": (1, "uint8"),
    "LA": (2, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "I;16": (1, "uint16"),
    "I": (1, "int32"),
    "F": (1, "float32"),
}


class ImageColumn(Sequence):
    """One image feature over an episode: ``T`` lazily decoded images."""

    def __init__(self, images: Sequence[LazyImage]):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ImageColumn(self.images[index])
        return self.images[index]

    def decode(self) -> np.ndarray:
        """All frames as ``uint8 [T, H, W, C]``."""
        return np.stack([img.decode() for img in self.images]) if self.images else np.zeros((0, 0, 0, 0), np.uint8)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.decode()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageColumn) and self.images == other.images

    __hash__ = None  # type: ignore[assignment]


Column = np.ndarray | ImageColumn
Features = np.ndarray | dict[str, Column]


def features_len(features: Features) -> int:
    if isinstance(features, dict):
        return len(next(iter(features.values()))) if features else 0
    return len(features)


def features_take(features: Features, index: int | slice | np.ndarray) -> Any:
    """Index every column of ``features`` the same way (one step, or a window)."""
    if isinstance(features, dict):
        return {k: v[index] for k, v in features.items()}
    return features[index]


def features_flat(features: Features, keys: Sequence[str] | None = None) -> np.ndarray:
    """Numeric features as one float32 ``[T, D]`` matrix.

    A vector is returned as is (flattened past the time axis); a dict has its numeric
    columns concatenated in ``keys`` order (default: sorted names), images skipped. This is
    how a model that wants a state vector sees a dict observation.
    """
    if not isinstance(features, dict):
        arr = np.asarray(features, dtype=np.float32)
        return arr.reshape(len(arr), -1)
    names = list(keys) if keys is not None else sorted(k for k, v in features.items() if isinstance(v, np.ndarray))
    parts = []
    for name in names:
        if name not in features:
            raise RLDSError(f"feature {name!r} is not in this episode (has {sorted(features)})", field=name)
        col = features[name]
        if isinstance(col, ImageColumn):
            raise RLDSError(f"feature {name!r} is an image, not a numeric array", field=name)
        parts.append(np.asarray(col, dtype=np.float32).reshape(len(col), -1))
    if not parts:
        return np.zeros((features_len(features), 0), np.float32)
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True, slots=True)
class Step:
    """One RLDS step, as a read-only view of an episode's columns at one index."""

    observation: Any
    action: Any
    reward: float
    discount: float
    is_first: bool
    is_last: bool
    is_terminal: bool
    language_instruction: str | None = None
    step_metadata: Mapping[str, StepMetaValue] = field(default_factory=dict)
    timestamp: float | None = None


class StepsView(Sequence):
    """``episode.steps``: steps built on demand from the columns."""

    def __init__(self, episode: Episode):
        self._ep = episode

    def __len__(self) -> int:
        return len(self._ep)

    def __getitem__(self, index):  # type: ignore[override]
        ep = self._ep
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(ep)))]
        n = len(ep)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        return Step(
            observation=features_take(ep.observation, index),
            action=features_take(ep.action, index),
            reward=float(ep.reward[index]),
            discount=float(ep.discount[index]),
            is_first=bool(ep.is_first[index]),
            is_last=bool(ep.is_last[index]),
            is_terminal=bool(ep.is_terminal[index]),
            language_instruction=ep.language_instruction[index] if ep.language_instruction else None,
            step_metadata=ep.step_metadata[index] if ep.step_metadata else {},
            timestamp=float(ep.timestamp[index]) if ep.timestamp is not None else None,
        )

    def __iter__(self) -> Iterator[Step]:
        for i in range(len(self)):
            yield self[i]


@dataclass(eq=False)
class Episode:
    """An RLDS episode: step fields stored as columns over time, plus episode metadata.

    ``source`` is where it was read from (for error messages and quarantine).
    """

    observation: Features
    action: Features
    reward: np.ndarray
    discount: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    is_terminal: np.ndarray
    metadata: dict = field(default_factory=dict)
    language_instruction: list[str | None] | None = None
    step_metadata: list[dict[str, StepMetaValue]] | None = None
    timestamp: np.ndarray | None = None
    source: str | None = None
    #: Per-step columns ``[T, ...]`` that a model derived from this episode (the Mid loop's
    #: context for the Fast loop, VQ codes, ...). Not RLDS fields: windows slice them like
    #: the others, writers never store them.
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def steps(self) -> StepsView:
        return StepsView(self)

    @property
    def episode_id(self) -> str:
        eid = self.metadata.get("episode_id")
        if eid:
            return str(eid)
        return Path(self.source).name if self.source else "<unnamed>"

    @property
    def control_hz(self) -> float:
        """The control rate: from step timestamps when present, else ``control_hz`` in the
        metadata, else :data:`DEFAULT_CONTROL_HZ`. Used to turn window lengths in seconds
        into steps."""
        if self.timestamp is not None and len(self.timestamp) > 1:
            dt = np.diff(self.timestamp)
            dt = dt[dt > 0]
            if len(dt):
                return float(1.0 / np.median(dt))
        hz = self.metadata.get("control_hz") or (self.metadata.get("capabilities") or {}).get("control_hz")
        try:
            hz = float(hz) if hz is not None else None
        except (TypeError, ValueError):
            hz = None
        if hz is not None and math.isfinite(hz) and hz > 0:
            return hz
        return DEFAULT_CONTROL_HZ

    @property
    def is_imagined(self) -> bool:
        origin = str((self.metadata.get("provenance") or {}).get("origin", ""))
        return origin.startswith("imagined:") or "imagined" in (self.metadata.get("tags") or [])

    def observation_vector(self, keys: Sequence[str] | None = None) -> np.ndarray:
        return features_flat(self.observation, keys)

    def action_vector(self, keys: Sequence[str] | None = None) -> np.ndarray:
        return features_flat(self.action, keys)

    @classmethod
    def from_steps(
        cls,
        steps: Iterable[Mapping[str, Any] | Step],
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> Episode:
        """Build an episode from per-step records (dicts with RLDS field names, or Steps).

        Missing ``is_first``/``is_last`` are inferred from position, missing ``reward`` is 0,
        ``discount`` 1 and ``is_terminal`` is ``is_last``. Raises :class:`RLDSError` naming
        the step and field when a field is missing or changes shape.
        """
        rows = [s if isinstance(s, Mapping) else _step_as_dict(s) for s in steps]
        return cls.from_rows(rows, metadata, source)

    @classmethod
    def from_rows(
        cls,
        rows: list[Mapping[str, Any]],
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
        **columns: list[Any],
    ) -> Episode:
        """:meth:`from_steps` for readers that hold a list of step dicts already; errors get
        the file and episode filled in."""
        meta = dict(metadata or {})
        try:
            return cls._from_rows(rows, meta, source, **columns)
        except RLDSError as err:
            raise err.at(file=source, episode=meta.get("episode_id")) from None

    @classmethod
    def _from_rows(
        cls,
        rows: list[Mapping[str, Any]],
        meta: dict,
        source: str | None,
        observations: list[Any] | None = None,
        actions: list[Any] | None = None,
        timestamps: list[Any] | None = None,
    ) -> Episode:
        """Columns from step records. Readers that already pulled ``observations``,
        ``actions`` or ``timestamps`` out of the records (other key names, image refs) pass
        them in; every column is built with one comprehension and one ``np.asarray``, and
        per-step loops only run to name the step of an error."""
        n = len(rows)
        if n == 0:
            raise RLDSError("episode has no steps", field="steps")
        cols = step_columns(rows)
        none = [None] * n
        if observations is None:
            observations = cols.get("observation", none)
        if actions is None:
            actions = cols.get("action", none)
        for name, values in (("observation", observations), ("action", actions)):
            if has_none(values):
                i = next(i for i, v in enumerate(values) if v is None)
                raise RLDSError(f"required field {name!r} is missing", step=i, field=name)
        pos = np.arange(n)
        is_last = _bool_column(cols.get("is_last", none), "is_last", pos == n - 1)
        lang = cols.get("language_instruction", none)
        if not set(map(type, lang)) <= {str, type(None)}:
            i = next(i for i, t in enumerate(lang) if t is not None and not isinstance(t, str))
            raise RLDSError(f"must be a string, got {type(lang[i]).__name__}", step=i, field="language_instruction")
        return cls(
            observation=stack_features(observations, "observation"),
            action=stack_features(actions, "action"),
            reward=_scalar_column(cols.get("reward", none), "reward", 0.0, np.float32),
            discount=_scalar_column(cols.get("discount", none), "discount", 1.0, np.float32),
            is_first=_bool_column(cols.get("is_first", none), "is_first", pos == 0),
            is_last=is_last,
            is_terminal=_bool_column(cols.get("is_terminal", none), "is_terminal", is_last),
            metadata=meta,
            language_instruction=None if all_none(lang) else lang,
            step_metadata=step_metadata_maps(cols.get("step_metadata", none)),
            timestamp=_timestamp_column(timestamps if timestamps is not None else cols.get("timestamp", none)),
            source=source,
        )


def step_columns(rows: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Turn step records into one list per key (missing values are ``None``).

    When every record has the same keys (what loggers write) this is one C-level
    ``itemgetter``/``zip`` pass instead of a comprehension per field.
    """
    keys = tuple(rows[0])
    if len(keys) > 1 and set(map(len, rows)) == {len(keys)}:
        try:
            return dict(zip(keys, map(list, zip(*map(operator.itemgetter(*keys), rows), strict=True)), strict=True))
        except (KeyError, TypeError):
            pass
    names = dict.fromkeys(k for r in rows for k in r)
    return {k: [r.get(k) for r in rows] for k in names}


def _step_as_dict(step: Step) -> dict[str, Any]:
    return {f: getattr(step, f) for f in Step.__dataclass_fields__}


def has_none(values: list[Any]) -> bool:
    """``None in values`` without ``==`` (which numpy arrays answer elementwise), at C speed."""
    return not all(map(operator.is_not, values, itertools.repeat(None)))


def all_none(values: list[Any]) -> bool:
    return all(map(operator.is_, values, itertools.repeat(None)))


_NUMBER_TYPES = {int, float, type(None), np.float32, np.float64, np.int32, np.int64}
_BOOL_TYPES = {bool, type(None), np.bool_}


def _scalar_column(values: list[Any], name: str, default: float, dtype: type) -> np.ndarray:
    if set(map(type, values)) <= _NUMBER_TYPES:
        if has_none(values):
            values = [default if v is None else v for v in values]
        return np.asarray(values, dtype=dtype)
    for i, v in enumerate(values):
        if type(v) not in _NUMBER_TYPES:
            raise RLDSError(f"must be a number, got {type(v).__name__} {v!r:.40}", step=i, field=name)
    raise AssertionError("unreachable")  # pragma: no cover


def _bool_column(values: list[Any], name: str, default: np.ndarray) -> np.ndarray:
    types = set(map(type, values))
    if types == {type(None)}:
        return np.array(default, dtype=bool, copy=True)
    if types <= _BOOL_TYPES:
        if type(None) in types:
            return np.array([bool(d) if v is None else bool(v) for v, d in zip(values, default, strict=True)])
        return np.asarray(values, dtype=bool)
    for i, v in enumerate(values):
        if type(v) not in _BOOL_TYPES:
            raise RLDSError(f"must be a boolean, got {type(v).__name__} {v!r:.40}", step=i, field=name)
    raise AssertionError("unreachable")  # pragma: no cover


#: A ``step_metadata`` value: text, a JSON scalar, or a numeric vector (e.g. the action a DART
#: collector really executed), kept as written rather than flattened to text.
StepMetaValue = str | bool | int | float | list[float]


def step_metadata_maps(values: Sequence[Any]) -> list[dict[str, StepMetaValue]] | None:
    """Check per-step ``step_metadata`` maps; ``None`` when every step has none.

    Keys become text; values must be text, booleans, finite numbers or flat lists of finite
    numbers (lists come back as ``float`` lists). Anything else (nested objects, NaN) is an
    error naming the step and key, because JSON could not keep it and TFDS's text column
    would silently change it.
    """
    if not any(values):  # all None or empty (C-level truthiness; values are dicts or None)
        return None
    out = []
    for i, m in enumerate(values):
        if m is None:
            m = {}
        if not isinstance(m, Mapping):
            raise RLDSError(
                f"must be a string map of named values, got {type(m).__name__}", step=i, field="step_metadata"
            )
        out.append({str(k): _step_meta_value(v, i, f"step_metadata.{k}") for k, v in m.items()})
    return out


def _step_meta_value(value: Any, step: int, name: str) -> StepMetaValue:
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple):
        if all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            return [float(v) for v in value]
        raise RLDSError("a list value must hold finite numbers only", step=step, field=name)
    raise RLDSError(
        f"value must be text, a boolean, a finite number or a list of numbers, got {type(value).__name__}",
        step=step,
        field=name,
    )


def _timestamp_column(values: list[Any]) -> np.ndarray | None:
    if all_none(values):
        return None
    if has_none(values):
        i = next(i for i, v in enumerate(values) if v is None)
        raise RLDSError("timestamp missing on this step while other steps have one", step=i, field="timestamp")
    return _scalar_column(values, "timestamp", 0.0, np.float64)


def stack_features(values: list[Any], name: str) -> Features:
    """Stack per-step observation/action values into columns.

    A value is a number, a (nested) list or array of numbers, a :class:`LazyImage`, or a
    dict of those (one level of names, nested dicts flattened with ``/``). All steps must
    agree on the keys and shapes; the first step that does not is named in the error.
    """
    first = values[0]
    if isinstance(first, Mapping):
        keys = list(_flatten_keys(first))
        flat_rows = []
        for i, v in enumerate(values):
            if not isinstance(v, Mapping):
                raise RLDSError(f"expected a dict like step 0, got {type(v).__name__}", step=i, field=name)
            flat = _flatten_keys(v)
            if list(flat) != keys and set(flat) != set(keys):
                missing = sorted(set(keys) - set(flat))
                added = sorted(set(flat) - set(keys))
                raise RLDSError(f"keys differ from step 0 (missing {missing}, unexpected {added})", step=i, field=name)
            flat_rows.append(flat)
        return {k: _stack_column([r[k] for r in flat_rows], f"{name}.{k}") for k in keys}
    return _stack_column(values, name)


def _flatten_keys(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_keys(v, key + "/"))
        else:
            out[key] = v
    return out


def _stack_column(values: list[Any], name: str) -> Column:
    if isinstance(values[0], LazyImage):
        for i, v in enumerate(values):
            if not isinstance(v, LazyImage):
                raise RLDSError(f"expected an image like step 0, got {type(v).__name__}", step=i, field=name)
        return ImageColumn(values)
    fast = _stack_flat_lists(values)
    if fast is not None:
        return fast
    try:
        arr = np.asarray(values)
    except ValueError:
        arr = None  # ragged: find the step below
    if arr is None or arr.dtype.kind not in "biuf":
        shape0 = None if arr is None else arr.shape[1:]
        for i, v in enumerate(values):
            try:
                item = np.asarray(v)
            except ValueError:
                raise RLDSError("ragged nested lists", step=i, field=name) from None
            shape0 = item.shape if shape0 is None else shape0
            if item.shape != shape0:
                raise RLDSError(f"shape {item.shape} differs from step 0's {shape0}", step=i, field=name)
            if item.dtype.kind not in "biuf":
                raise RLDSError(f"must be numeric, got {_describe(v)}", step=i, field=name)
        raise RLDSError(f"must be numeric, got dtype {arr.dtype if arr is not None else 'mixed'}", field=name)
    if (arr.dtype.kind == "f" and arr.dtype != np.float32) or (
        arr.dtype.kind in "iu" and arr.dtype.itemsize > 4 and name.split(".")[0] in ("observation", "action")
    ):
        arr = arr.astype(np.float32)
    return arr


def _stack_flat_lists(values: list[Any]) -> np.ndarray | None:
    """The common case of JSON vectors, ~2x faster than ``np.asarray``: equal-length flat
    lists of numbers streamed through ``np.fromiter``. ``None`` means "use the general path"
    (which also finds and names the step of any error)."""
    if type(values[0]) is not list or not set(map(type, values)) <= {list}:
        return None
    lengths = set(map(len, values))
    if len(lengths) != 1:
        return None
    width = lengths.pop()
    try:
        flat = np.fromiter(itertools.chain.from_iterable(values), dtype=np.float64, count=len(values) * width)
    except (TypeError, ValueError):
        return None  # nested lists, strings, nulls: the general path names them
    return flat.reshape(len(values), width).astype(np.float32)


def _describe(value: Any) -> str:
    """Name a non-numeric value; JSON ``null`` usually is a NaN/Inf that orjson or JS wrote."""
    flat = np.asarray(value, dtype=object).ravel()
    if any(x is None for x in flat):
        return "null (NaN or Inf written as JSON null?)"
    bad = next((x for x in flat if not isinstance(x, int | float | np.number)), value)
    return f"{type(bad).__name__} value {bad!r:.40}"


@dataclass
class EpisodeResult:
    """The outcome of reading one episode: either ``episode`` or ``error`` is set.

    ``unit`` is the file or directory that holds exactly this episode when ``movable`` is
    true (quarantine moves it); for a record inside a TFRecord shard ``unit`` is the shard,
    ``movable`` is false and ``raw`` holds the record's bytes so quarantine can keep a copy.
    """

    key: str
    unit: Path
    episode: Episode | None = None
    error: RLDSError | None = None
    movable: bool = True
    raw: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, error: RLDSError) -> EpisodeResult:
        """The same unit, now bad: its episode dropped, ``error`` set."""
        return replace(self, episode=None, error=error)

    @property
    def place(self) -> str:
        """Where the episode was read from, precisely enough to find it (a record in a shard
        is ``<shard dir>/<shard>#<index>``)."""
        return str(self.unit) if self.movable else str(self.unit.parent / self.key)
