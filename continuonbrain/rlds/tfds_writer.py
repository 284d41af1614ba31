"""Writing a TFDS RLDS dataset (:func:`write_tfds`) that ``tfds.builder_from_directory`` loads.

The directory layout and record format are those described in :mod:`continuonbrain.rlds.tfds`.

The episode-metadata decision. Continuon metadata is a nested, per-episode-varying JSON
object (``provenance{...}``, ``safety{...}``, ``tags`` list, free-form ``capabilities``).
TFDS has one schema per dataset, fixed in ``features.json``, and a top-level feature missing
from a record makes TFDS fail to parse it; a writer that streams episodes cannot know the
union of all metadata keys before the first shard is written. So the metadata is stored as
two ``Text`` features:

* ``episode_metadata/episode_id`` - the id as plain text, for TFDS users and filtering;
* ``episode_metadata/metadata_json`` - the whole metadata object as JSON, which is what
  our reader returns (exactly: JSON keeps int/float/bool/str/list/dict apart, and floats
  round-trip through ``repr``).

The step schema comes from the first episode; every step feature is always written so all
records share it: ``language_instruction`` (``""`` for none), ``timestamp`` (float64 stored
as raw bytes so epoch seconds keep full precision, NaN for none) and ``step_metadata`` (the
string map as JSON text, ``""`` for empty). Reading (:mod:`continuonbrain.rlds.tfds_decode`)
maps these back to ``None``. float64 tensors are stored with ``encoding="bytes"`` for the
same reason as ``timestamp``; every other numeric dtype is exact in
``float_list``/``int64_list``.

Why one module of 458 lines: it is the one TFDS writer, and its parts (the step schema, the
feature encoding, the ``features.json`` description of that schema, the shards and
``dataset_info.json``) must agree on the same schema; split apart they would be edited out of
step.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.fsutil import atomic_write_bytes, fsync_dir
from continuonbrain.rlds.checks import check_episode
from continuonbrain.rlds.episode import Episode, ImageColumn
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.example_proto import build_example
from continuonbrain.rlds.tfds_features import (
    DEFAULT_TEMPLATE,
    EPISODE_ID_KEY,
    METADATA_JSON_KEY,
    _image_format,
    _set_nested,
)
from continuonbrain.rlds.tfrecord import TFRecordWriter
from continuonbrain.rlds.written import WrittenEpisodes

log = logging.getLogger(__name__)

_TFDS = "tensorflow_datasets.core.features"
_CLS = {
    "dict": f"{_TFDS}.features_dict.FeaturesDict",
    "dataset": f"{_TFDS}.dataset_feature.Dataset",
    "tensor": f"{_TFDS}.tensor_feature.Tensor",
    "scalar": f"{_TFDS}.scalar.Scalar",
    "image": f"{_TFDS}.image_feature.Image",
    "text": f"{_TFDS}.text_feature.Text",
}


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
    overwrite: bool = False,
) -> WrittenEpisodes:
    """Write ``episodes`` as a TFDS RLDS dataset that ``tfds.builder_from_directory`` loads.

    Goes to ``<data_dir>/<name>/[<config>/]<version>/``. Each episode goes to the split its
    metadata names (``metadata["split"]``, which every episode read from TFDS carries), or to
    ``split`` when it names none, so one streaming pass writes a multi-split dataset. Episodes
    are streamed (one in memory at a time) into hidden partial shards, which are renamed to
    ``<name>-<split>.tfrecord-NNNNN-of-MMMMM`` once each split's shard count is known; the
    JSON files are written last, so an interrupted write never looks like a complete dataset.

    Splits already in the directory that this call does not write are kept (their schema must
    match). A split that is already there is never replaced silently: that is an error before
    anything of it is written, unless ``overwrite=True``, which replaces its shards and lists
    it in ``replaced``. Every episode is checked first (:func:`check_episode`). Returns the
    shard paths followed by ``features.json`` and ``dataset_info.json`` (nothing is written
    for an empty ``episodes``), with the episodes written per split.
    """
    if episodes_per_shard < 1:
        raise ValueError("episodes_per_shard must be >= 1")
    out = Path(data_dir) / name / config / version if config else Path(data_dir) / name / version
    out.mkdir(parents=True, exist_ok=True)
    existing = {s.get("name") for s in _read_existing_info(out).get("splits", []) if isinstance(s, dict)}
    schema: _Schema | None = None
    splits: dict[str, _SplitShards] = {}
    try:
        for number, ep in enumerate(episodes):
            target = str(ep.metadata.get("split") or split)
            try:
                if not _SPLIT_NAME.fullmatch(target):
                    raise RLDSError(
                        f"split name {target!r} is not a TFDS split name (letters, digits, '_')", field="split"
                    )
                if target not in splits and target in existing and not overwrite:
                    raise RLDSError(
                        f"split {target!r} already exists in {out}; write to another directory, or "
                        "overwrite it explicitly (overwrite=True, --overwrite)",
                        field="split",
                    )
                check_episode(ep)
                if schema is None:
                    schema = _Schema(ep)
                payload = schema.encode(ep, number)
            except RLDSError as err:
                raise err.at(file=ep.source, episode=ep.metadata.get("episode_id") or f"#{number}") from None
            if target not in splits:
                splits[target] = _SplitShards(out, f"{name}-{target}", episodes_per_shard)
            splits[target].write(payload)
        if schema is None:
            return WrittenEpisodes()
        for shards in splits.values():
            shards.close()
        return _finish_dataset(out, name, version, config, schema, splits)
    finally:
        for shards in splits.values():
            shards.abort()


_SPLIT_NAME = re.compile(r"\w+", re.ASCII)


class _SplitShards:
    """The hidden partial shards of one split being written, ``episodes_per_shard`` each."""

    def __init__(self, out: Path, stem: str, episodes_per_shard: int):
        self.out, self.stem, self.per_shard = out, stem, episodes_per_shard
        self.partials: list[Path] = []
        self.lengths: list[int] = []
        self._writer: TFRecordWriter | None = None

    def write(self, payload: bytes) -> None:
        if self._writer is None or self._writer.count >= self.per_shard:
            self.close()
            self.partials.append(self.out / f".{self.stem}.tfrecord-{len(self.partials):05d}.partial")
            self._writer = TFRecordWriter(self.partials[-1])
        self._writer.write(payload)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.lengths.append(self._writer.count)
            self._writer = None

    def abort(self) -> None:
        """Remove whatever is still partial (after :func:`_finish_dataset` nothing is)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for partial in self.partials:
            partial.unlink(missing_ok=True)


def _finish_dataset(
    out: Path, name: str, version: str, config: str | None, schema: _Schema, splits: dict[str, _SplitShards]
) -> WrittenEpisodes:
    features = schema.features_json()
    info = _read_existing_info(out)
    old_entries = [s for s in info.get("splits", []) if isinstance(s, dict)]
    others = [s for s in old_entries if s.get("name") not in splits]
    features_path = out / "features.json"
    if others and features_path.is_file():
        try:
            same = json.loads(features_path.read_bytes()) == features
        except (OSError, ValueError):
            same = False
        if not same:
            raise RLDSError(
                f"splits {sorted(splits)} have a different feature schema than the splits already there "
                f"({[s.get('name') for s in others]}); write them to another version or name",
                file=str(out),
            )
    written = WrittenEpisodes()
    entries: dict[str, dict[str, Any]] = {str(s.get("name")): s for s in old_entries}
    for split, shards in splits.items():
        total = len(shards.partials)
        files = [out / f"{name}-{split}.tfrecord-{i:05d}-of-{total:05d}" for i in range(total)]
        for old in out.glob(f"{name}-{split}.tfrecord-*"):
            if old not in files:
                old.unlink()
        for partial, shard in zip(shards.partials, files, strict=True):
            os.replace(partial, shard)
        if split in entries:
            log.warning("replaced split %r of %s (overwrite)", split, out)
            written.replaced.append(split)
        entries[split] = {
            "name": split,
            "numBytes": str(sum(f.stat().st_size for f in files)),
            "shardLengths": [str(n) for n in shards.lengths],
            "filepathTemplate": DEFAULT_TEMPLATE,
        }
        written.extend(files)
        written.episodes[split] += sum(shards.lengths)
    info.update(
        {
            "name": name,
            "version": version,
            "description": info.get("description") or "RLDS episodes written by ContinuonBrain.",
            "fileFormat": "tfrecord",
            "splits": list(entries.values()),
        }
    )
    if config:
        info["configName"] = config
    _write_json(features_path, features)
    _write_json(out / "dataset_info.json", info)
    fsync_dir(out)
    written.extend([features_path, out / "dataset_info.json"])
    return written


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
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


__all__ = ["DEFAULT_TEMPLATE", "write_tfds"]
