"""TFDS RLDS datasets and TFRecord shards, read and written without TensorFlow.

Layout (what ``tensorflow_datasets`` and the RLDS / Open X-Embodiment datasets use)::

    <data_dir>/<name>/[<config>/]<version>/
        dataset_info.json                    splits, shard lengths, file name template
        features.json                        the FeaturesDict, as TFDS 4.9 writes it
        <name>-<split>.tfrecord-00000-of-00004

Each record is one ``tf.train.Example`` per *episode*: step fields are flattened under
``steps/...`` and concatenated over the steps (a ``[3]`` float state over ``T`` steps is one
``float_list`` of ``3T`` values; bools are ``int64`` 0/1; text and encoded images are one
``bytes`` entry per step; ``Tensor(..., encoding="bytes")`` is one raw little-endian buffer
per step). Everything that is not under ``steps/`` is episode metadata, conventionally
``episode_metadata/...``. An older layout, one Example per *step* carrying ``episode_id``
and ``step_index``, is also read (consecutive records of one ``episode_id`` are one episode).

Reading: ``features.json`` drives decoding (dtypes, per-step shapes, nested dicts, ``Image``
kept encoded as :class:`LazyImage`, ``Text``, ``Scalar``, ``Tensor``, ``ClassLabel``,
``BBoxFeature``; both the proto-JSON format of TFDS >= 4.5 and the older
``{"type", "content"}`` format). Without one, fields are decoded heuristically from what the
Example holds. Each step field is converted with one numpy call over the whole episode; no
per-step Python work happens except for text and images. Step fields other than the RLDS
ones (``observation``, ``action``, ``reward``, ``discount``, ``is_first``, ``is_last``,
``is_terminal``, ``language_instruction``, ``timestamp``, ``step_metadata``) are skipped, as
are text fields inside ``observation``/``action`` (an RT-1 style
``observation/natural_language_instruction`` becomes the language instruction when there is
no ``steps/language_instruction``).

Writing (:func:`write_tfds`), and the episode-metadata decision. Continuon metadata is a
nested, per-episode-varying JSON object (``provenance{...}``, ``safety{...}``, ``tags``
list, free-form ``capabilities``). TFDS has one schema per dataset, fixed in
``features.json``, and a top-level feature missing from a record makes TFDS fail to parse
it; a writer that streams episodes cannot know the union of all metadata keys before the
first shard is written. So the metadata is stored as two ``Text`` features:

* ``episode_metadata/episode_id`` - the id as plain text, for TFDS users and filtering;
* ``episode_metadata/metadata_json`` - the whole metadata object as JSON, which is what
  our reader returns (exactly: JSON keeps int/float/bool/str/list/dict apart, and floats
  round-trip through ``repr``).

Foreign datasets have no ``metadata_json``; their metadata is rebuilt from the
``episode_metadata/a/b`` keys as nested dicts. The step schema comes from the first episode;
every step feature is always written so all records share it: ``language_instruction``
(``""`` for none), ``timestamp`` (float64 stored as raw bytes so epoch seconds keep full
precision, NaN for none) and ``step_metadata`` (the string map as JSON text, ``""`` for
empty). Reading maps these back to ``None``. float64 tensors are stored with
``encoding="bytes"`` for the same reason as ``timestamp``; every other numeric dtype is
exact in ``float_list``/``int64_list``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.rlds.episode import Episode, ImageColumn, LazyImage
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.example_proto import FeatureValue, build_example, parse_example
from continuonbrain.rlds.reader import EpisodeResult
from continuonbrain.rlds.tfrecord import Record, TFRecordWriter, scan_records

#: Options the dispatcher passes through to these readers.
TFRECORD_OPTIONS = ("tfrecord_iter", "example_parser", "features")

TfrecordIter = Callable[[Path], Iterable[bytes]]
ExampleParser = Callable[[bytes], Mapping[str, Any]]

METADATA_JSON_KEY = "episode_metadata/metadata_json"
EPISODE_ID_KEY = "episode_metadata/episode_id"
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

_TFDS = "tensorflow_datasets.core.features"
_CLS = {
    "dict": f"{_TFDS}.features_dict.FeaturesDict",
    "dataset": f"{_TFDS}.dataset_feature.Dataset",
    "tensor": f"{_TFDS}.tensor_feature.Tensor",
    "scalar": f"{_TFDS}.scalar.Scalar",
    "image": f"{_TFDS}.image_feature.Image",
    "text": f"{_TFDS}.text_feature.Text",
}

_TFRECORD_RE = re.compile(r"\.tfrecords?(-\d+-of-\d+)?(\.gz)?$")
_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<split>[^-.]+)\.tfrecords?(-\d+-of-\d+)?(\.gz)?$")
_VERSION_RE = re.compile(r"^v?(\d+(?:\.\d+)*)$")

_NUMERIC_DTYPES = {
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool",
}  # fmt: skip
_RLDS_STEP_FIELDS = {
    "reward", "discount", "is_first", "is_last", "is_terminal",
    "language_instruction", "timestamp", "step_metadata",
}  # fmt: skip
_SCALAR_STEP_FIELDS = {"reward", "discount", "is_first", "is_last", "is_terminal", "timestamp"}
_BOOL_STEP_FIELDS = {"is_first", "is_last", "is_terminal"}
#: Fields that tell the number of steps most reliably, in order of preference.
_STEP_COUNT_FIELDS = ("is_first", "is_last", "is_terminal", "reward", "discount", "language_instruction")
_PER_STEP_BOOKKEEPING = {"episode_id", "step_index"}
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


# --- recognising paths --------------------------------------------------------------------


def is_tfrecord_path(path: Path) -> bool:
    """``*.tfrecord``, ``*.tfrecords``, ``*.tfrecord.gz`` and TFDS shard names
    (``<name>-<split>.tfrecord-00000-of-00004``)."""
    return bool(_TFRECORD_RE.search(Path(path).name))


def is_tfds_dir(path: Path) -> bool:
    """A TFDS version directory: ``dataset_info.json`` and/or ``features.json`` plus shards."""
    path = Path(path)
    if not ((path / "dataset_info.json").is_file() or (path / "features.json").is_file()):
        return False
    try:
        return any(is_tfrecord_path(Path(e.name)) and not e.name.startswith(".") for e in os.scandir(path))
    except OSError:
        return False


def version_key(name: str) -> tuple[int, tuple[int, ...]]:
    """Sort key for version directory names: ``"1.10.0"`` > ``"1.9.0"``; non-versions lowest."""
    match = _VERSION_RE.match(name)
    if not match:
        return (0, ())
    return (1, tuple(int(p) for p in match.group(1).split(".")))


# --- features.json ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leaf:
    """One serialized feature of a ``features.json``.

    ``key`` is the flattened Example key (``steps/observation/state``); ``shape`` is per
    step for step features and per record otherwise (``None`` = unknown dimension).
    ``problem`` is set when the feature cannot be decoded (unknown type or dtype); it is
    only an error if the feature is actually needed.
    """

    key: str
    kind: str  # "tensor" | "image" | "text"
    dtype: str  # numpy dtype name, or "string"
    shape: tuple[int | None, ...] = ()
    encoding: str = "none"  # "none" | "bytes" | "zlib"
    image_format: str | None = None
    optional: bool = False
    sequence: bool = False  # a top-level Sequence other than steps: a leading unknown dim
    problem: str | None = None

    @property
    def per_step_bytes_entries(self) -> bool:
        """True when the Example holds exactly one bytes entry per step for this feature."""
        return self.kind in ("image", "text") or self.encoding != "none" or (self.dtype == "string" and not self.shape)


@dataclass
class FeatureSpec:
    """A parsed ``features.json``: step leaves and episode (metadata) leaves.

    With ``has_steps`` (the TFDS RLDS layout) step leaf keys start with ``steps/``; without
    it (the per-step layout) they are the RLDS field names of each record. An empty spec
    means "no features.json": decode from what each record holds.
    """

    step_leaves: dict[str, Leaf] = field(default_factory=dict)
    episode_leaves: dict[str, Leaf] = field(default_factory=dict)
    has_steps: bool = False
    source: str | None = None

    def check_usable(self) -> None:
        """Raise for a feature the reader needs but cannot decode, once per dataset."""
        for leaf in [*self.step_leaves.values(), *self.episode_leaves.values()]:
            if leaf.problem is None:
                continue
            step_name = _step_name(leaf.key) if self.has_steps else leaf.key
            if leaf.key in self.episode_leaves or (step_name is not None and _is_used_step_field(step_name)):
                raise RLDSError(leaf.problem, file=self.source, field=leaf.key)


def load_features(path: Path) -> FeatureSpec:
    """Read and parse a ``features.json`` file."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise RLDSError(f"cannot be read: {exc.strerror or exc}", file=str(path)) from None
    except (ValueError, RecursionError) as exc:
        raise RLDSError(f"malformed JSON: {exc}", file=str(path)) from None
    return parse_features(doc, source=str(path))


def parse_features(doc: Any, source: str | None = None) -> FeatureSpec:
    """Parse the JSON of a ``features.json`` (top-level ``FeaturesDict``)."""
    spec = FeatureSpec(source=source)
    try:
        node = _normalize(doc)
        if "featuresDict" not in node:
            raise RLDSError("the top-level feature must be a FeaturesDict", file=source)
        for name, child in _dict_children(node).items():
            _walk(child, str(name), spec, in_steps=False, sequence=False)
    except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
        raise RLDSError(f"malformed features.json ({type(exc).__name__}: {exc})", file=source) from None
    if not spec.has_steps:
        # The per-step layout: the RLDS step fields are top-level features of each record.
        top = spec.episode_leaves
        spec.step_leaves = {k: leaf for k, leaf in top.items() if _is_used_step_field(k)}
        spec.episode_leaves = {k: leaf for k, leaf in top.items() if k.startswith("episode_metadata/")}
    return spec


def _normalize(node: Any) -> dict[str, Any]:
    """Turn the legacy ``{"type": cls, "content": ...}`` form into the proto-JSON form."""
    if not isinstance(node, dict):
        raise TypeError(f"a feature must be a JSON object, got {type(node).__name__}")
    if "type" not in node or "content" not in node:
        return node
    cls = str(node["type"])
    short = cls.rsplit(".", 1)[-1]
    content = node["content"]
    if isinstance(content, str):
        content = json.loads(content)
    out: dict[str, Any] = {"pythonClassName": cls}
    if short == "FeaturesDict":
        feats = content["features"] if set(content) == {"features"} else content
        out["featuresDict"] = {"features": feats}
    elif short in ("Sequence", "Dataset"):
        out["sequence"] = {"feature": content["feature"], "length": content.get("length")}
    elif short in ("Image", "LabeledImage"):
        fmt = content.get("encoding_format", content.get("encodingFormat"))
        out["image"] = {"shape": content.get("shape"), "dtype": content.get("dtype", "uint8"), "encodingFormat": fmt}
    elif short == "Text":
        out["text"] = {}
    elif short == "ClassLabel":
        out["classLabel"] = content
    elif short in ("BBoxFeature",):
        out["boundingBox"] = content
    elif short in ("Tensor", "Scalar"):
        out["tensor"] = content
    else:
        out["unsupported"] = content
    return out


def _dict_children(node: dict[str, Any]) -> dict[str, Any]:
    feats = (node.get("featuresDict") or {}).get("features") or {}
    if not isinstance(feats, dict):
        raise TypeError("featuresDict.features must be an object")
    return feats


def _walk(node: Any, key: str, spec: FeatureSpec, in_steps: bool, sequence: bool) -> None:
    node = _normalize(node)
    cls = str(node.get("pythonClassName", ""))
    leaves = spec.step_leaves if in_steps else spec.episode_leaves
    if "featuresDict" in node:
        for name, child in _dict_children(node).items():
            _walk(child, f"{key}/{name}", spec, in_steps, sequence)
        return
    if "sequence" in node:
        inner = (node["sequence"] or {}).get("feature")
        if key == "steps" and not in_steps and not sequence:
            spec.has_steps = True
            _walk(inner, key, spec, in_steps=True, sequence=False)
        elif in_steps or sequence:
            leaves[key] = Leaf(key, "tensor", "?", problem="a nested Sequence (ragged per-step data) is not supported")
        else:
            _walk(inner, key, spec, in_steps, sequence=True)
        return
    leaves[key] = _leaf(node, key, cls, sequence)


def _leaf(node: dict[str, Any], key: str, cls: str, sequence: bool) -> Leaf:
    if "tensor" in node:
        t = node["tensor"] or {}
        dtype = _dtype_name(t.get("dtype"))
        leaf = Leaf(
            key,
            "tensor",
            dtype,
            _shape(t.get("shape")),
            encoding=str(t.get("encoding") or "none").lower(),
            optional=bool(t.get("optional", False)),
            sequence=sequence,
        )
        return _check_tensor(leaf)
    if "image" in node:
        t = node["image"] or {}
        dtype = _dtype_name(t.get("dtype") or "uint8")
        fmt = t.get("encodingFormat") or t.get("encoding_format")
        leaf = Leaf(key, "image", dtype, _shape(t.get("shape")), image_format=fmt, sequence=sequence)
        if dtype not in ("uint8", "uint16"):
            return _with_problem(leaf, f"Image dtype {dtype!r} is not supported (uint8 and uint16 are)")
        return leaf
    if "text" in node:
        return Leaf(key, "text", "string", sequence=sequence)
    if "classLabel" in node:
        return Leaf(key, "tensor", "int64", sequence=sequence)
    if "boundingBox" in node:
        shape = _shape((node["boundingBox"] or {}).get("shape")) or (4,)
        return Leaf(key, "tensor", "float32", shape, sequence=sequence)
    kind = cls.rsplit(".", 1)[-1] or ",".join(sorted(k for k in node if k != "description")) or "empty"
    return Leaf(key, "tensor", "?", sequence=sequence, problem=f"feature type {kind!r} is not supported")


def _check_tensor(leaf: Leaf) -> Leaf:
    if leaf.dtype not in _NUMERIC_DTYPES and leaf.dtype != "string":
        return _with_problem(leaf, f"dtype {leaf.dtype!r} is not supported")
    if leaf.encoding not in ("none", "bytes", "zlib"):
        return _with_problem(leaf, f"tensor encoding {leaf.encoding!r} is not supported")
    if leaf.encoding != "none" and leaf.dtype == "string":
        return _with_problem(leaf, "a string tensor cannot have a bytes encoding")
    if sum(d is None for d in leaf.shape) > 1:
        return _with_problem(leaf, f"shape {_fmt_shape(leaf.shape)} has more than one unknown dimension")
    return leaf


def _with_problem(leaf: Leaf, problem: str) -> Leaf:
    return replace(leaf, problem=problem)


def _dtype_name(value: Any) -> str:
    name = str(value or "?").removeprefix("tf.")
    return "string" if name in ("string", "object", "str", "bytes") else name


def _shape(value: Any) -> tuple[int | None, ...]:
    if value is None:
        return ()
    dims = value.get("dimensions", []) if isinstance(value, dict) else value
    out: list[int | None] = []
    for d in dims:
        n = None if d is None else int(d)
        out.append(None if n is None or n < 0 else n)
    return tuple(out)


def _fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


# --- which step fields the reader uses ----------------------------------------------------


def _step_name(key: str) -> str | None:
    return key[len("steps/") :] if key.startswith("steps/") else None


def _is_used_step_field(name: str) -> bool:
    head = name.split("/", 1)[0]
    return head in ("observation", "action") or name in _RLDS_STEP_FIELDS


# --- guessing a spec when there is no features.json ---------------------------------------


def _guess_leaf(key: str, value: FeatureValue, steps: int | None, rel: str) -> Leaf:
    """A leaf for ``value`` from what it holds; ``steps`` is T for step fields (else None)."""
    if isinstance(value, list):
        if rel == "timestamp" and steps is not None and all(len(v) == 8 for v in value):
            return Leaf(key, "tensor", "float64", encoding="bytes")  # how write_tfds stores it
        if steps is not None and len(value) == steps and value and all(_image_format(v) for v in value):
            return Leaf(key, "image", "uint8")
        if all(_is_utf8(v) for v in value):
            return Leaf(key, "text", "string")
        return Leaf(key, "tensor", "string", (None,))  # opaque bytes: skipped when decoding
    if rel in _BOOL_STEP_FIELDS:
        dtype = "bool"
    elif rel == "timestamp":
        dtype = "float64"
    else:
        dtype = "float32" if value.dtype.kind == "f" else "int64"
    if steps is None:
        return Leaf(key, "tensor", dtype, () if value.size == 1 else (None,))
    if steps == 0 or value.size % steps:
        raise RLDSError(f"{value.size} values do not split evenly into {steps} steps", field=key)
    per = value.size // steps
    vector = rel.split("/", 1)[0] in ("observation", "action")
    scalar = rel in _SCALAR_STEP_FIELDS or (per == 1 and not vector)
    return Leaf(key, "tensor", dtype, () if scalar else (per,))


def _guess_episode_spec(feats: Mapping[str, FeatureValue]) -> FeatureSpec:
    steps = _guess_step_count(feats)
    spec = FeatureSpec(has_steps=True)
    for key, value in feats.items():
        rel = _step_name(key)
        if rel is None:
            spec.episode_leaves[key] = _guess_leaf(key, value, None, key)
        elif _is_used_step_field(rel):
            spec.step_leaves[key] = _guess_leaf(key, value, steps, rel)
    return spec


def _guess_step_count(feats: Mapping[str, FeatureValue]) -> int:
    for name in _STEP_COUNT_FIELDS:
        value = feats.get(f"steps/{name}")
        if value is not None:
            return len(value)
    for key, value in feats.items():
        if key.startswith("steps/") and isinstance(value, list):
            return len(value)
    raise RLDSError(
        "cannot tell the number of steps without features.json (no steps/is_first, steps/reward, ...)",
        field="steps",
    )


def _guess_step_record_spec(feats: Mapping[str, FeatureValue]) -> FeatureSpec:
    """The per-step layout: each field holds one step."""
    spec = FeatureSpec(has_steps=False)
    for key, value in feats.items():
        if key in _PER_STEP_BOOKKEEPING:
            continue
        if key.startswith("episode_metadata/"):
            spec.episode_leaves[key] = _guess_leaf(key, value, None, key)
        elif _is_used_step_field(key):
            spec.step_leaves[key] = _guess_leaf(key, value, 1, key)
    return spec


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


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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


def _image_format(data: bytes) -> str | None:
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    return None


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


def _set_nested(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    node = target
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


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


def _step_metadata(col: Column | None) -> list[dict[str, str]] | None:
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
            raise RLDSError("must be a JSON object (a string map)", step=i, field="steps/step_metadata")
        out.append({str(k): str(v) for k, v in value.items()})
    return out if any(out) else None


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


# --- scanning shards and datasets ---------------------------------------------------------


def scan_tfrecord_file(
    path: Path,
    *,
    tfrecord_iter: TfrecordIter | None = None,
    example_parser: ExampleParser | None = None,
    features: FeatureSpec | Mapping[str, Any] | str | os.PathLike | None = None,
) -> Iterator[EpisodeResult]:
    """Yield one :class:`EpisodeResult` per episode in a TFRecord shard, good or bad.

    ``features``: a parsed :class:`FeatureSpec`, the JSON of a ``features.json``, or its
    path; by default ``features.json`` beside the shard, and heuristic decoding without one.
    ``tfrecord_iter`` (path -> iterable of record bytes) and ``example_parser`` (bytes ->
    ``{field: values}``) replace the built-in framing and Example parsing. A damaged record
    becomes an error result and reading goes on with the next record; a truncated shard
    ends after its last complete record.
    """
    path = Path(path)
    spec = _resolve_spec(path.parent, features)
    spec.check_usable()
    parse = _hooked_parser(example_parser) if example_parser is not None else parse_example
    source = str(path)
    group: _StepGroup | None = None

    def finish(g: _StepGroup) -> EpisodeResult:
        key = f"{path.name}#{g.first_index}"
        try:
            ep = g.episode(spec, source)
            return EpisodeResult(key=key, unit=path, episode=ep, movable=False)
        except RLDSError as err:
            return EpisodeResult(key=key, unit=path, error=err.at(file=source, episode=g.episode_id), movable=False)

    for record in _records(path, tfrecord_iter):
        key = f"{path.name}#{record.index}"
        if record.error is not None:
            yield EpisodeResult(key=key, unit=path, error=record.error.at(episode=key), movable=False)
            continue
        data = record.data or b""
        try:
            feats = parse(data)
            layout = _record_layout(feats, spec)
            if layout == "step":
                eid = _step_episode_id(feats)
                if group is not None and group.episode_id != eid:
                    yield finish(group)
                    group = None
                # Checked before a new group exists, so a bad first record cannot leave an empty one.
                step_index = _step_index(feats, default=len(group.records) if group is not None else 0)
                if group is None:
                    group = _StepGroup(eid, record.index)
                group.add(record.index, step_index, feats)
                continue
            if group is not None:
                yield finish(group)
                group = None
            episode = _decode_episode_record(feats, spec, source)
            eid = episode.metadata.get("episode_id")
            if eid is None:
                episode.metadata["episode_id"] = key
            elif not isinstance(eid, str):
                episode.metadata["episode_id"] = str(eid)  # the schema wants a string id
            yield EpisodeResult(key=key, unit=path, episode=episode, movable=False, raw=data)
        except RLDSError as err:
            yield EpisodeResult(key=key, unit=path, error=err.at(file=source, episode=key), movable=False, raw=data)
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError, RecursionError) as exc:
            # Defence in depth: whatever slips past the checks above must still come out as
            # an RLDSError for this one record, never as a crash of the whole scan.
            err = RLDSError(f"record does not decode ({type(exc).__name__}: {exc})", file=source, episode=key)
            yield EpisodeResult(key=key, unit=path, error=err, movable=False, raw=data)
    if group is not None:
        yield finish(group)


def _resolve_spec(directory: Path, features: Any) -> FeatureSpec:
    """The spec given, else ``directory/features.json``; an empty spec means heuristics."""
    if isinstance(features, FeatureSpec):
        return features
    if isinstance(features, Mapping):
        return parse_features(dict(features), source=f"features for {directory}")
    if isinstance(features, str | os.PathLike):
        return load_features(Path(features))
    candidate = directory / "features.json"
    return load_features(candidate) if candidate.is_file() else FeatureSpec()


def _records(path: Path, tfrecord_iter: TfrecordIter | None) -> Iterator[Record]:
    if tfrecord_iter is None:
        yield from scan_records(path)
        return
    index = 0
    try:
        for data in tfrecord_iter(path):
            yield Record(index, -1, data=bytes(data))
            index += 1
    except Exception as exc:  # a user hook may raise anything: report it, don't crash
        err = RLDSError(f"record {index}: tfrecord_iter failed ({type(exc).__name__}: {exc})", file=str(path))
        yield Record(index, -1, error=err, fatal=True)


def _hooked_parser(example_parser: ExampleParser) -> Callable[[bytes], dict[str, FeatureValue]]:
    """Wrap a user ``example_parser`` so its output looks like :func:`parse_example`'s."""

    def parse(data: bytes) -> dict[str, FeatureValue]:
        try:
            parsed = example_parser(data)
            return {str(k): _as_feature_value(v) for k, v in parsed.items()}
        except RLDSError:
            raise
        except Exception as exc:  # a user hook may raise anything
            raise RLDSError(f"example_parser failed ({type(exc).__name__}: {exc})") from None

    return parse


def _as_feature_value(value: Any) -> FeatureValue:
    if isinstance(value, bytes | str):
        return [value.encode() if isinstance(value, str) else value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, bytes | str) for v in value):
        return [v.encode() if isinstance(v, str) else v for v in value]
    arr = np.asarray(value)
    if arr.dtype.kind in "SUO":
        return [v.encode() if isinstance(v, str) else bytes(v) for v in arr.ravel().tolist()]
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"unsupported value dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        return arr.ravel()
    return arr.ravel().astype(np.int64, copy=False)


def scan_tfds_dir(path: Path, split: str | None = None, **options: Any) -> Iterator[EpisodeResult]:
    """Yield every episode of a TFDS version directory (one split, or all splits in order).

    Shard files come from ``dataset_info.json`` (``splits[].shardLengths`` and
    ``filepathTemplate``) or, without one, from the ``<name>-<split>.tfrecord*`` files
    present. ``options`` are those of :func:`scan_tfrecord_file`.
    """
    path = Path(path)
    # Parsed once here rather than once per shard.
    spec = _resolve_spec(path, options.pop("features", None))
    spec.check_usable()
    shards = shard_files(path)
    if split is not None:
        if split not in shards:
            raise RLDSError(f"split {split!r} not found (splits: {sorted(shards)})", file=str(path))
        shards = {split: shards[split]}
    for files in shards.values():
        for shard in files:
            if not shard.is_file():
                err = RLDSError("shard listed in dataset_info.json is missing", file=str(shard))
                yield EpisodeResult(key=shard.name, unit=shard, error=err, movable=False)
                continue
            yield from scan_tfrecord_file(shard, features=spec, **options)


def shard_files(path: Path) -> dict[str, list[Path]]:
    """The shard files of each split of a TFDS version directory, in order."""
    info_path = path / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            raise RLDSError(f"cannot be read: {exc}", file=str(info_path)) from None
        if not isinstance(info, dict):
            raise RLDSError("must be a JSON object", file=str(info_path))
    fmt = info.get("fileFormat") or "tfrecord"
    if fmt != "tfrecord":
        raise RLDSError(f"file format {fmt!r} is not supported (only tfrecord)", file=str(info_path))
    name, splits = info.get("name"), info.get("splits")
    if name and isinstance(splits, list) and splits:
        try:
            return {str(s["name"]): _split_files(path, str(name), s) for s in splits}
        except (KeyError, TypeError, ValueError) as exc:
            raise RLDSError(f"malformed splits entry ({type(exc).__name__}: {exc})", file=str(info_path)) from None
    out: dict[str, list[Path]] = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.name.startswith(".") or not is_tfrecord_path(Path(entry.name)):
            continue
        match = _SHARD_RE.match(entry.name)
        out.setdefault(match.group("split") if match else "", []).append(Path(entry.path))
    return out


def _split_files(path: Path, name: str, split: Mapping[str, Any]) -> list[Path]:
    lengths = split.get("shardLengths") or []
    count = len(lengths) if lengths else int(split.get("numShards") or 0)
    template = str(split.get("filepathTemplate") or DEFAULT_TEMPLATE)
    return [
        path
        / template.replace("{DATASET}", name)
        .replace("{SPLIT}", str(split["name"]))
        .replace("{FILEFORMAT}", "tfrecord")
        .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{count:05d}")
        .replace("{SHARD_INDEX}", f"{i:05d}")
        .replace("{NUM_SHARDS}", f"{count:05d}")
        for i in range(count)
    ]


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Column:
    """How one step column is stored; fixed by the first episode written."""

    kind: str  # "tensor" | "image"
    dtype: str
    shape: tuple[int, ...] = ()
    encoding: str = "none"
    image_format: str = "png"


class _Schema:
    """The step features of a dataset being written, taken from its first episode."""

    def __init__(self, first: Episode):
        self.observation = _feature_columns(first.observation, "observation")
        self.action = _feature_columns(first.action, "action")

    def features_json(self) -> dict[str, Any]:
        steps: dict[str, Any] = {
            "observation": _json_features(self.observation),
            "action": _json_features(self.action),
            "reward": _json_tensor("float32", (), scalar=True, doc="Reward of this step."),
            "discount": _json_tensor("float32", (), scalar=True, doc="Discount of this step."),
            "is_first": _json_tensor("bool", (), scalar=True, doc="True on the first step of the episode."),
            "is_last": _json_tensor("bool", (), scalar=True, doc="True on the last step of the episode."),
            "is_terminal": _json_tensor("bool", (), scalar=True, doc="True if the episode ended in a terminal state."),
            "language_instruction": _json_text("Language instruction; empty when there is none."),
            "timestamp": _json_tensor(
                "float64", (), encoding="bytes", doc="Seconds; NaN when the episode has no timestamps."
            ),
            "step_metadata": _json_text("Step metadata (a string map) as JSON; empty when there is none."),
        }
        episode_metadata = {
            "episode_id": _json_text("Episode id."),
            "metadata_json": _json_text("The complete Continuon episode metadata as a JSON object."),
        }
        return _json_dict(
            {
                "steps": {
                    "pythonClassName": _CLS["dataset"],
                    "sequence": {"feature": _json_dict(steps), "length": "-1"},
                },
                "episode_metadata": _json_dict(episode_metadata),
            }
        )

    def encode(self, ep: Episode, number: int) -> bytes:
        """One Example holding the whole episode."""
        steps = len(ep)
        feats: dict[str, Any] = {}
        _encode_features(feats, "steps/observation", ep.observation, self.observation, steps)
        _encode_features(feats, "steps/action", ep.action, self.action, steps)
        feats["steps/reward"] = np.asarray(ep.reward, np.float32)
        feats["steps/discount"] = np.asarray(ep.discount, np.float32)
        feats["steps/is_first"] = np.asarray(ep.is_first, bool)
        feats["steps/is_last"] = np.asarray(ep.is_last, bool)
        feats["steps/is_terminal"] = np.asarray(ep.is_terminal, bool)
        lang = ep.language_instruction or [None] * steps
        feats["steps/language_instruction"] = [text or "" for text in lang]
        ts = ep.timestamp if ep.timestamp is not None else np.full(steps, np.nan)
        feats["steps/timestamp"] = _per_step_bytes(np.asarray(ts, "<f8"), steps)
        smeta = ep.step_metadata or [{}] * steps
        feats["steps/step_metadata"] = [_json_text_value(m, "steps/step_metadata") if m else "" for m in smeta]
        meta = dict(ep.metadata)
        meta.setdefault("episode_id", f"episode_{number:06d}")
        feats[EPISODE_ID_KEY] = str(meta["episode_id"])
        feats[METADATA_JSON_KEY] = _json_text_value(meta, "episode_metadata")
        return build_example(feats)


def _feature_columns(features: Any, name: str) -> dict[str, _Column]:
    """``{"": column}`` for a plain array, ``{"state": ..., "camera": ...}`` for a dict."""
    if isinstance(features, dict):
        if not features:
            raise RLDSError("has no columns", field=name)
        return {k: _column_spec(v, f"{name}/{k}") for k, v in features.items()}
    return {"": _column_spec(features, name)}


def _column_spec(col: Any, name: str) -> _Column:
    if isinstance(col, ImageColumn):
        return _image_spec(col, name)
    arr = np.asarray(col)
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "f" and size == 8:
        return _Column("tensor", "float64", arr.shape[1:], encoding="bytes")  # exact, unlike float_list
    if (kind == "f" and size in (2, 4)) or kind in "iub":
        return _Column("tensor", arr.dtype.name, arr.shape[1:])
    raise RLDSError(f"dtype {arr.dtype} cannot be stored in TFDS", field=f"steps/{name}")


def _image_spec(col: ImageColumn, name: str) -> _Column:
    """Channels and dtype from the first frame's header (TFDS's Image needs them)."""
    from PIL import Image, UnidentifiedImageError

    if not len(col):
        raise RLDSError("image column is empty", field=f"steps/{name}")
    data = col[0].encoded()
    fmt = _image_format(data)
    if fmt is None:
        raise RLDSError("only PNG and JPEG images can be stored in TFDS", step=0, field=f"steps/{name}")
    import io

    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RLDSError(f"image does not decode ({exc})", step=0, field=f"steps/{name}") from None
    dtype = "uint16" if mode.startswith("I;16") else "uint8"
    channels = {"1": 1, "L": 1, "P": 3, "LA": 2, "RGBA": 4, "CMYK": 4}.get(mode, 1 if mode.startswith("I") else 3)
    return _Column("image", dtype, (-1, -1, channels), image_format=fmt)


def _encode_features(feats: dict[str, Any], key: str, features: Any, spec: dict[str, _Column], steps: int) -> None:
    columns = _feature_columns(features, key.removeprefix("steps/"))
    if columns.keys() != spec.keys():
        missing, extra = sorted(spec.keys() - columns.keys()), sorted(columns.keys() - spec.keys())
        raise RLDSError(
            f"keys differ from the dataset's first episode (missing {missing}, unexpected {extra}); "
            "a TFDS dataset has one schema",
            field=key,
        )
    for name, want in spec.items():
        got = columns[name]
        full = f"{key}/{name}" if name else key
        if (got.kind, got.dtype, got.shape if got.kind == "tensor" else ()) != (
            want.kind,
            want.dtype,
            want.shape if want.kind == "tensor" else (),
        ):
            raise RLDSError(
                f"is {got.kind} {got.dtype} {got.shape}, the dataset's first episode has "
                f"{want.kind} {want.dtype} {want.shape}; a TFDS dataset has one schema",
                field=full,
            )
        col = features[name] if name else features
        if want.kind == "image":
            feats[full] = [img.encoded() for img in col]
        elif want.encoding == "bytes":
            feats[full] = _per_step_bytes(np.asarray(col, np.dtype(want.dtype).newbyteorder("<")), steps)
        else:
            feats[full] = np.asarray(col)


def _per_step_bytes(arr: np.ndarray, steps: int) -> list[bytes]:
    """``Tensor(encoding="bytes")``: each step's values as one raw buffer."""
    buf = np.ascontiguousarray(arr).tobytes()
    step = len(buf) // steps if steps else 0
    return [buf[i * step : (i + 1) * step] for i in range(steps)]


def _json_text_value(value: Any, name: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, default=_json_default, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise RLDSError(f"cannot be stored as JSON ({exc})", field=name) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_dict(features: dict[str, Any]) -> dict[str, Any]:
    return {"pythonClassName": _CLS["dict"], "featuresDict": {"features": features}}


def _json_shape(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"dimensions": [str(d) for d in shape]} if shape else {}


def _json_tensor(
    dtype: str, shape: tuple[int, ...], encoding: str = "none", scalar: bool = False, doc: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pythonClassName": _CLS["scalar" if scalar else "tensor"],
        "tensor": {"shape": _json_shape(shape), "dtype": dtype, "encoding": encoding},
    }
    if doc:
        out["description"] = doc
    return out


def _json_text(doc: str) -> dict[str, Any]:
    return {"pythonClassName": _CLS["text"], "text": {}, "description": doc}


def _json_column(col: _Column) -> dict[str, Any]:
    if col.kind == "image":
        return {
            "pythonClassName": _CLS["image"],
            "image": {"shape": _json_shape(col.shape), "dtype": col.dtype, "encodingFormat": col.image_format},
        }
    return _json_tensor(col.dtype, col.shape, encoding=col.encoding)


def _json_features(columns: dict[str, _Column]) -> dict[str, Any]:
    """A plain tensor, or a (nested, from ``a/b`` names) FeaturesDict of columns."""
    if list(columns) == [""]:
        return _json_column(columns[""])
    tree: dict[str, Any] = {}
    for name, col in columns.items():
        _set_nested(tree, name, _json_column(col))
    return _nest_json(tree)


def _nest_json(tree: dict[str, Any]) -> dict[str, Any]:
    return _json_dict({k: v if "pythonClassName" in v else _nest_json(v) for k, v in tree.items()})


def write_tfds(
    episodes: Iterable[Episode],
    data_dir: Path,
    *,
    name: str = "continuon_rlds",
    version: str = "1.0.0",
    split: str = "train",
    episodes_per_shard: int = 256,
    config: str | None = None,
) -> list[Path]:
    """Write ``episodes`` as a TFDS RLDS dataset that ``tfds.builder_from_directory`` loads.

    Goes to ``<data_dir>/<name>/[<config>/]<version>/``. Episodes are streamed (one in
    memory at a time) into hidden partial shards, which are renamed to
    ``<name>-<split>.tfrecord-NNNNN-of-MMMMM`` once the shard count is known; the JSON files
    are written last, so an interrupted write never looks like a complete dataset. Other
    splits already in the directory are kept (their schema must match); shards of ``split``
    are replaced. Every episode is checked first (:func:`check_episode`). Returns the shard
    paths followed by ``features.json`` and ``dataset_info.json``; nothing is written for an
    empty ``episodes``.
    """
    from continuonbrain.rlds.validate import check_episode

    if episodes_per_shard < 1:
        raise ValueError("episodes_per_shard must be >= 1")
    out = Path(data_dir) / name / config / version if config else Path(data_dir) / name / version
    out.mkdir(parents=True, exist_ok=True)
    schema: _Schema | None = None
    partials: list[Path] = []
    lengths: list[int] = []
    writer: TFRecordWriter | None = None
    try:
        for number, ep in enumerate(episodes):
            try:
                check_episode(ep)
                if schema is None:
                    schema = _Schema(ep)
                payload = schema.encode(ep, number)
            except RLDSError as err:
                raise err.at(file=ep.source, episode=ep.metadata.get("episode_id") or f"#{number}") from None
            if writer is None or writer.count >= episodes_per_shard:
                if writer is not None:
                    writer.close()
                    lengths.append(writer.count)
                partials.append(out / f".{name}-{split}.tfrecord-{len(partials):05d}.partial")
                writer = TFRecordWriter(partials[-1])
            writer.write(payload)
        if writer is not None:
            writer.close()
            lengths.append(writer.count)
            writer = None
        if schema is None:
            return []
        return _finish_dataset(out, name, version, split, config, schema, partials, lengths)
    finally:
        if writer is not None:
            writer.abort()
        for p in partials:
            p.unlink(missing_ok=True)


def _finish_dataset(
    out: Path,
    name: str,
    version: str,
    split: str,
    config: str | None,
    schema: _Schema,
    partials: list[Path],
    lengths: list[int],
) -> list[Path]:
    features = schema.features_json()
    info = _read_existing_info(out)
    others = [s for s in info.get("splits", []) if isinstance(s, dict) and s.get("name") != split]
    features_path = out / "features.json"
    if others and features_path.is_file():
        try:
            same = json.loads(features_path.read_bytes()) == features
        except (OSError, ValueError):
            same = False
        if not same:
            raise RLDSError(
                f"split {split!r} has a different feature schema than the splits already there "
                f"({[s.get('name') for s in others]}); write it to another version or name",
                file=str(out),
            )
    total = len(partials)
    shards = [out / f"{name}-{split}.tfrecord-{i:05d}-of-{total:05d}" for i in range(total)]
    for old in out.glob(f"{name}-{split}.tfrecord-*"):
        if old not in shards:
            old.unlink()
    for partial, shard in zip(partials, shards, strict=True):
        os.replace(partial, shard)
    num_bytes = sum(s.stat().st_size for s in shards)
    info.update(
        {
            "name": name,
            "version": version,
            "description": info.get("description") or "RLDS episodes written by ContinuonBrain.",
            "fileFormat": "tfrecord",
            "splits": [
                *others,
                {
                    "name": split,
                    "numBytes": str(num_bytes),
                    "shardLengths": [str(n) for n in lengths],
                    "filepathTemplate": DEFAULT_TEMPLATE,
                },
            ],
        }
    )
    if config:
        info["configName"] = config
    _write_json(features_path, features)
    _write_json(out / "dataset_info.json", info)
    return [*shards, features_path, out / "dataset_info.json"]


def _read_existing_info(out: Path) -> dict[str, Any]:
    path = out / "dataset_info.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = [
    "DEFAULT_TEMPLATE",
    "EPISODE_ID_KEY",
    "METADATA_JSON_KEY",
    "TFRECORD_OPTIONS",
    "FeatureSpec",
    "Leaf",
    "is_tfds_dir",
    "is_tfrecord_path",
    "load_features",
    "parse_features",
    "scan_tfds_dir",
    "scan_tfrecord_file",
    "shard_files",
    "version_key",
    "write_tfds",
]
