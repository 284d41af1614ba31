"""Decoding parsed ``tf.train.Example`` records (plus a :class:`FeatureSpec`) into :class:`Episode` objects.

Both record layouts of :mod:`continuonbrain.rlds.tfds` are decoded: one Example per episode
(:func:`_decode_episode_record`), and the older one Example per step, whose consecutive
records of one ``episode_id`` are grouped into an episode by :class:`_StepGroup`.

Each step field is converted with one numpy call over the whole episode; no per-step Python
work happens except for text and images. Step fields other than the RLDS ones
(``observation``, ``action``, ``reward``, ``discount``, ``is_first``, ``is_last``,
``is_terminal``, ``language_instruction``, ``timestamp``, ``step_metadata``) are skipped, as
are text fields inside ``observation``/``action`` (an RT-1 style
``observation/natural_language_instruction`` becomes the language instruction when there is
no ``steps/language_instruction``).

Episode metadata is the ``episode_metadata/metadata_json`` object, exactly, when this
project wrote the dataset (the episode-metadata decision is explained in
:mod:`continuonbrain.rlds.tfds_writer`). Foreign datasets have no ``metadata_json``; their
metadata is rebuilt from the ``episode_metadata/a/b`` keys as nested dicts. The placeholders
the writer stores for absent step data (``""`` language instruction and step metadata, NaN
timestamps) are read back as ``None``.

Why one module of 449 lines: it is the one decoder of this project's TFDS record format (both
layouts share every field converter); its writer is already its own module
(:mod:`continuonbrain.rlds.tfds_writer`).
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from continuonbrain.rlds.episode import Episode, ImageColumn, LazyImage, StepMetaValue, step_metadata_maps
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.example_proto import FeatureValue
from continuonbrain.rlds.tfds_features import (
    _RLDS_STEP_FIELDS,
    _STEP_COUNT_FIELDS,
    METADATA_JSON_KEY,
    FeatureSpec,
    Leaf,
    _fmt_shape,
    _guess_episode_spec,
    _guess_step_record_spec,
    _image_format,
    _is_used_step_field,
    _is_utf8,
    _set_nested,
    _step_name,
)

# --- decoding one record's fields ---------------------------------------------------------

Column = np.ndarray | ImageColumn | list


def _decode_step_leaf(leaf: Leaf, value: FeatureValue, steps: int) -> Column | None:
    """Decode a step feature concatenated over ``steps`` steps into a ``[T, ...]`` column.

    ``None`` for string tensors that are not one text per step: no RLDS field holds those.
    """
    if leaf.kind == "image":
        entries = _bytes_entries(leaf, value, steps)
        fmt = leaf.image_format
        return ImageColumn([LazyImage(data=b, format=_image_format(b) or fmt) for b in entries])
    if leaf.kind == "text" or leaf.dtype == "string":
        return _texts(leaf, _bytes_entries(leaf, value, steps)) if not leaf.shape else None
    if leaf.encoding != "none":
        arr = _from_raw_bytes(leaf, _bytes_entries(leaf, value, steps))
    else:
        arr = _numeric(leaf, value)
    return _reshape(leaf, arr, steps)


def _bytes_entries(leaf: Leaf, value: FeatureValue, count: int) -> list[bytes]:
    if not isinstance(value, list):
        if value.size == 0 and count == 0:
            return []
        raise RLDSError(f"expected a bytes_list ({leaf.kind} {leaf.dtype}), got numeric values", field=leaf.key)
    if len(value) != count:
        raise RLDSError(f"has {len(value)} entries, expected one per step ({count})", field=leaf.key)
    return value


def _texts(leaf: Leaf, entries: list[bytes]) -> list[str]:
    try:
        return [b.decode("utf-8") for b in entries]
    except UnicodeDecodeError:
        step = next(i for i, b in enumerate(entries) if not _is_utf8(b))
        raise RLDSError("text is not valid UTF-8", step=step, field=leaf.key) from None


def _numeric(leaf: Leaf, value: FeatureValue) -> np.ndarray:
    """The flat values of a ``float_list``/``int64_list`` feature, in the declared dtype."""
    if isinstance(value, list):
        if not value:
            return np.zeros(0, _np_dtype(leaf.dtype))
        raise RLDSError(f"expected numeric values ({leaf.dtype}), got a bytes_list", field=leaf.key)
    wants_float = leaf.dtype.startswith("float")
    if value.size and (value.dtype.kind == "f") != wants_float:
        want, got = ("float_list", "int64_list") if wants_float else ("int64_list", "float_list")
        raise RLDSError(f"expected {want} for {leaf.dtype}, got {got}", field=leaf.key)
    if leaf.dtype == "bool":
        return value != 0
    if leaf.dtype == "uint64" and value.dtype == np.int64:
        return value.view(np.uint64)  # TFDS bitcasts uint64 to int64 on write
    return value.astype(_np_dtype(leaf.dtype), copy=False)


def _from_raw_bytes(leaf: Leaf, entries: list[bytes]) -> np.ndarray:
    """``Tensor(encoding="bytes"|"zlib")``: each entry is one step's ``ndarray.tobytes()``."""
    if leaf.encoding == "zlib":
        try:
            entries = [zlib.decompress(b) for b in entries]
        except zlib.error as exc:
            raise RLDSError(f"zlib-encoded tensor does not decompress ({exc})", field=leaf.key) from None
    dtype = _np_dtype(leaf.dtype).newbyteorder("<")
    buf = bytearray().join(entries)  # bytearray: the array we return stays writable
    if len(buf) % dtype.itemsize:
        raise RLDSError(f"{len(buf)} bytes are not a whole number of {leaf.dtype} values", field=leaf.key)
    return np.frombuffer(buf, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def _known_size(leaf: Leaf) -> int:
    return math.prod(d for d in leaf.shape if d is not None)


def _reshape(leaf: Leaf, flat: np.ndarray, steps: int) -> np.ndarray:
    known = _known_size(leaf)
    shape = list(leaf.shape)
    if None in shape:
        if steps == 0 or known == 0 or flat.size % (steps * known):
            raise RLDSError(
                f"{flat.size} values do not fit {steps} steps of shape {_fmt_shape(leaf.shape)}", field=leaf.key
            )
        shape[shape.index(None)] = flat.size // (steps * known)
    elif flat.size != steps * known:
        raise RLDSError(
            f"{flat.size} values do not fit {steps} steps of shape {_fmt_shape(leaf.shape)} ({steps * known} expected)",
            field=leaf.key,
        )
    return flat.reshape(steps, *shape)


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(bool) if name == "bool" else np.dtype(name)


def _count_steps(spec: FeatureSpec, feats: Mapping[str, FeatureValue]) -> int:
    """The number of steps, from the most reliable step feature present."""
    candidates = sorted(
        (leaf for leaf in spec.step_leaves.values() if leaf.key in feats and leaf.problem is None),
        key=lambda leaf: _count_priority(leaf.key),
    )
    for leaf in candidates:
        value = feats[leaf.key]
        if leaf.per_step_bytes_entries:
            return len(value)
        known = _known_size(leaf)
        if not isinstance(value, list) and None not in leaf.shape and known:
            if value.size % known:
                raise RLDSError(
                    f"{value.size} values are not a whole number of steps of shape {_fmt_shape(leaf.shape)}",
                    field=leaf.key,
                )
            return value.size // known
    raise RLDSError("cannot tell the number of steps: no step feature is present", field="steps")


def _count_priority(key: str) -> int:
    name = _step_name(key) or key
    return _STEP_COUNT_FIELDS.index(name) if name in _STEP_COUNT_FIELDS else len(_STEP_COUNT_FIELDS)


def _decode_metadata_leaf(leaf: Leaf, value: FeatureValue) -> Any:
    """An episode-level feature as a JSON-like Python value."""
    if leaf.kind == "image":
        raise RLDSError("images in episode metadata are not supported", field=leaf.key)
    if leaf.kind == "text" or leaf.dtype == "string":
        if not isinstance(value, list):
            raise RLDSError("expected text (a bytes_list), got numeric values", field=leaf.key)
        texts = [b.decode("utf-8", "backslashreplace") for b in value]
        return texts[0] if len(texts) == 1 and not leaf.shape and not leaf.sequence else texts
    if leaf.encoding != "none":
        if not isinstance(value, list):
            raise RLDSError(f"expected a bytes_list ({leaf.encoding}-encoded tensor)", field=leaf.key)
        arr = _from_raw_bytes(leaf, value)
    else:
        arr = _numeric(leaf, value)
    if not leaf.shape and not leaf.sequence and arr.size == 1:
        return arr.reshape(()).item()
    if None not in leaf.shape and not leaf.sequence and arr.size == _known_size(leaf):
        arr = arr.reshape(leaf.shape)
    return arr.tolist()


def _metadata(spec: FeatureSpec, feats: Mapping[str, FeatureValue]) -> dict[str, Any]:
    """Episode metadata: the exact JSON when this project wrote it, else the nested keys."""
    raw = feats.get(METADATA_JSON_KEY)
    if isinstance(raw, list) and len(raw) == 1:
        try:
            meta = json.loads(raw[0])
        except (ValueError, RecursionError) as exc:
            raise RLDSError(f"metadata JSON is malformed ({exc})", field=METADATA_JSON_KEY) from None
        if not isinstance(meta, dict):
            raise RLDSError(f"metadata JSON must be an object, got {type(meta).__name__}", field=METADATA_JSON_KEY)
        return meta
    meta: dict[str, Any] = {}
    for key, leaf in spec.episode_leaves.items():
        if key not in feats:
            if leaf.optional:
                continue
            raise RLDSError("feature listed in features.json is missing from the record", field=key)
        _set_nested(meta, key.removeprefix("episode_metadata/"), _decode_metadata_leaf(leaf, feats[key]))
    return meta


# --- columns -> Episode -------------------------------------------------------------------


def _assemble(columns: dict[str, Column], steps: int, metadata: dict[str, Any], source: str) -> Episode:
    """Build the columnar :class:`Episode` from step-relative columns (``observation/state``)."""
    if steps == 0:
        raise RLDSError("episode has no steps", field="steps")
    for name, col in columns.items():
        if len(col) != steps:
            raise RLDSError(f"has {len(col)} steps, the episode has {steps}", field=f"steps/{name}")
    language = columns.get("language_instruction")
    obs = _features(columns, "observation")
    act = _features(columns, "action")
    if language is None:
        for name in ("observation/natural_language_instruction", "observation/language_instruction"):
            if isinstance(columns.get(name), list):
                language = columns[name]
                break
    pos = np.arange(steps)
    is_last = _flag(columns, "is_last", pos == steps - 1)
    return Episode(
        observation=obs,
        action=act,
        reward=_scalar(columns, "reward", steps, 0.0),
        discount=_scalar(columns, "discount", steps, 1.0),
        is_first=_flag(columns, "is_first", pos == 0),
        is_last=is_last,
        is_terminal=_flag(columns, "is_terminal", is_last),
        metadata=metadata,
        language_instruction=_language(language),
        step_metadata=_step_metadata(columns.get("step_metadata")),
        timestamp=_timestamp(columns.get("timestamp")),
        source=source,
    )


def _features(columns: dict[str, Column], name: str) -> np.ndarray | dict[str, np.ndarray | ImageColumn]:
    col = columns.get(name)
    if isinstance(col, np.ndarray):
        return col
    if isinstance(col, ImageColumn):
        return {"image": col}
    prefix = name + "/"
    out = {
        k[len(prefix) :]: v
        for k, v in columns.items()
        if k.startswith(prefix) and isinstance(v, np.ndarray | ImageColumn)
    }
    if not out:
        raise RLDSError("required field is missing (or holds no numeric or image data)", field=f"steps/{name}")
    return out


def _scalar(columns: dict[str, Column], name: str, steps: int, default: float) -> np.ndarray:
    col = columns.get(name)
    if col is None:
        return np.full(steps, default, np.float32)
    return _one_per_step(col, name).astype(np.float32, copy=False)


def _flag(columns: dict[str, Column], name: str, default: np.ndarray) -> np.ndarray:
    col = columns.get(name)
    if col is None:
        return np.array(default, dtype=bool)
    arr = _one_per_step(col, name)
    return arr if arr.dtype == bool else arr != 0


def _one_per_step(col: Column, name: str) -> np.ndarray:
    if not isinstance(col, np.ndarray):
        raise RLDSError("must be numeric", field=f"steps/{name}")
    if col.ndim != 1:
        if math.prod(col.shape[1:]) != 1:
            raise RLDSError(f"must be one value per step, got shape {col.shape[1:]}", field=f"steps/{name}")
        col = col.reshape(len(col))
    return col


def _language(col: Column | None) -> list[str | None] | None:
    if col is None:
        return None
    if not isinstance(col, list):
        raise RLDSError("must be text", field="steps/language_instruction")
    texts = [t if t else None for t in col]
    return texts if any(t is not None for t in texts) else None


def _timestamp(col: Column | None) -> np.ndarray | None:
    if col is None:
        return None
    arr = _one_per_step(col, "timestamp").astype(np.float64, copy=False)
    return None if np.isnan(arr).all() else arr


def _step_metadata(col: Column | None) -> list[dict[str, StepMetaValue]] | None:
    if col is None:
        return None
    if not isinstance(col, list):
        raise RLDSError("must be text (a JSON string map per step)", field="steps/step_metadata")
    out: list[dict[str, str]] = []
    for i, text in enumerate(col):
        if not text:
            out.append({})
            continue
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise RLDSError("is not valid JSON", step=i, field="steps/step_metadata") from None
        if not isinstance(value, dict):
            raise RLDSError("must be a JSON object (a map of named values)", step=i, field="steps/step_metadata")
        out.append(value)
    return step_metadata_maps(out)


# --- decoding records into episodes -------------------------------------------------------


def _decode_episode_record(feats: Mapping[str, FeatureValue], spec: FeatureSpec, source: str) -> Episode:
    """The TFDS RLDS layout: one Example holds a whole episode."""
    if not spec.has_steps:
        spec = _guess_episode_spec(feats)
    metadata = _metadata(spec, feats)
    steps = _count_steps(spec, feats)
    columns: dict[str, Column] = {}
    for key, leaf in spec.step_leaves.items():
        name = key[len("steps/") :]
        if not _is_used_step_field(name):
            continue
        if key not in feats:
            if leaf.optional or name in _RLDS_STEP_FIELDS:
                continue  # defaults exist for these (reward 0, flags from position, ...)
            raise RLDSError("feature listed in features.json is missing from the record", field=key)
        column = _decode_step_leaf(leaf, feats[key], steps)
        if column is not None:
            columns[name] = column
    return _assemble(columns, steps, metadata, source)


def _record_layout(feats: Mapping[str, FeatureValue], spec: FeatureSpec) -> str:
    if spec.has_steps or spec.step_leaves:
        return "episode" if spec.has_steps else "step"
    if any(k.startswith("steps/") for k in feats):
        return "episode"
    if "episode_id" in feats or "step_index" in feats:
        return "step"
    raise RLDSError(
        "record is neither a TFDS RLDS episode (no steps/... features) nor an RLDS step "
        f"(no episode_id/step_index); it has {sorted(feats)[:8]}"
    )


class _StepGroup:
    """Consecutive per-step records of one episode (the older step-per-Example layout)."""

    def __init__(self, episode_id: str, first_index: int):
        self.episode_id = episode_id
        self.first_index = first_index
        self.records: list[tuple[int, int, Mapping[str, FeatureValue]]] = []

    def add(self, index: int, step_index: int, feats: Mapping[str, FeatureValue]) -> None:
        self.records.append((step_index, index, feats))

    def episode(self, spec: FeatureSpec, source: str) -> Episode:
        self.records.sort(key=lambda r: r[0])
        order = [r[0] for r in self.records]
        for prev, cur in itertools.pairwise(order):
            if cur == prev:
                raise RLDSError(f"step_index {cur} appears twice", step=cur, field="step_index")
            if cur != prev + 1:
                raise RLDSError(
                    f"step_index jumps from {prev} to {cur} (missing records?)", step=cur, field="step_index"
                )
        first = self.records[0][2]
        if spec.has_steps or not spec.step_leaves:
            spec = _guess_step_record_spec(first)
        metadata = _metadata(spec, first)
        metadata.setdefault("episode_id", self.episode_id)
        per_step: dict[str, list[Column]] = {}
        for step, (_, _, feats) in enumerate(self.records):
            for key, leaf in spec.step_leaves.items():
                if key not in feats:
                    if leaf.optional or key in _RLDS_STEP_FIELDS:
                        continue
                    raise RLDSError("field is missing from this step's record", step=step, field=key)
                try:
                    column = _decode_step_leaf(leaf, feats[key], 1)
                except RLDSError as err:
                    raise err.at(step=step) from None
                if column is not None:
                    per_step.setdefault(key, []).append(column)
        columns = {key: _concat(parts, key) for key, parts in per_step.items()}
        return _assemble(columns, len(self.records), metadata, source)


def _concat(parts: list[Column], key: str) -> Column:
    first = parts[0]
    if isinstance(first, ImageColumn):
        return ImageColumn([img for p in parts for img in p])  # type: ignore[union-attr]
    if isinstance(first, list):
        return [x for p in parts for x in p]  # type: ignore[union-attr]
    for i, p in enumerate(parts):
        if not isinstance(p, np.ndarray) or p.shape[1:] != first.shape[1:]:
            shape = p.shape[1:] if isinstance(p, np.ndarray) else type(p).__name__
            raise RLDSError(f"shape {shape} differs from step 0's {first.shape[1:]}", step=i, field=key)
    return np.concatenate(parts)


def _step_episode_id(feats: Mapping[str, FeatureValue]) -> str:
    value = feats.get("episode_id")
    if value is None:
        return ""
    if isinstance(value, list):
        if len(value) != 1:
            raise RLDSError(f"must hold one value, has {len(value)}", field="episode_id")
        return value[0].decode("utf-8", "backslashreplace")
    if value.size != 1:
        raise RLDSError(f"must hold one value, has {value.size}", field="episode_id")
    return str(value.reshape(()).item())


def _step_index(feats: Mapping[str, FeatureValue], default: int) -> int:
    value = feats.get("step_index")
    if value is None:
        return default
    if isinstance(value, list) or value.size != 1 or value.dtype.kind not in "iu":
        raise RLDSError("must be one integer", field="step_index")
    return int(value.reshape(()).item())
