"""A TFDS ``features.json``, parsed into the leaves the reader decodes, or guessed without one.

``features.json`` drives decoding (dtypes, per-step shapes, nested dicts, ``Image`` kept
encoded as :class:`LazyImage`, ``Text``, ``Scalar``, ``Tensor``, ``ClassLabel``,
``BBoxFeature``); both the proto-JSON format of TFDS >= 4.5 and the older
``{"type", "content"}`` format are read. Without a ``features.json``, fields are decoded
heuristically: a spec is guessed from what each Example holds (:func:`_guess_episode_spec`,
:func:`_guess_step_record_spec`).

The dataset layout is described in :mod:`continuonbrain.rlds.tfds`; records are decoded with
a spec in :mod:`continuonbrain.rlds.tfds_decode`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.example_proto import FeatureValue
from continuonbrain.rlds.limits import DEFAULT_LIMITS, Limits

#: The two episode-level features this project writes; why the metadata is stored as JSON
#: text is explained in :mod:`continuonbrain.rlds.tfds_writer`.
METADATA_JSON_KEY = "episode_metadata/metadata_json"
EPISODE_ID_KEY = "episode_metadata/episode_id"
#: The shard file name template (TFDS's default): what the writer names shards, and what the
#: reader assumes when ``dataset_info.json`` names no ``filepathTemplate``.
DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"

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


def load_features(path: Path, limits: Limits = DEFAULT_LIMITS) -> FeatureSpec:
    """Read and parse a ``features.json`` file (within ``limits``: size, nesting, a regular file)."""
    return parse_features(limits.loads(limits.read(path), str(path)), source=str(path))


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


# --- bytes sniffing and nesting, also used by tfds_decode and tfds_writer -----------------


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _image_format(data: bytes) -> str | None:
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    return None


def _set_nested(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    node = target
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


__all__ = [
    "EPISODE_ID_KEY",
    "METADATA_JSON_KEY",
    "FeatureSpec",
    "Leaf",
    "load_features",
    "parse_features",
]
