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

This module recognises TFRecord files and TFDS version directories and scans them into
:class:`EpisodeResult` objects; the work is done by

* :mod:`continuonbrain.rlds.tfds_features` - ``features.json`` parsing (both JSON formats),
  and the heuristic spec for shards without one;
* :mod:`continuonbrain.rlds.tfds_decode` - records -> :class:`Episode` (both layouts);
* :mod:`continuonbrain.rlds.tfds_writer` - :func:`write_tfds`, whose docstring explains how
  episode metadata is stored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from continuonbrain.rlds.episode import EpisodeResult
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.example_proto import FeatureValue, parse_example
from continuonbrain.rlds.limits import DEFAULT_LIMITS, Limits
from continuonbrain.rlds.tfds_decode import (
    _decode_episode_record,
    _record_layout,
    _step_episode_id,
    _step_index,
    _StepGroup,
)
from continuonbrain.rlds.tfds_features import (
    DEFAULT_TEMPLATE,
    EPISODE_ID_KEY,
    METADATA_JSON_KEY,
    FeatureSpec,
    Leaf,
    load_features,
    parse_features,
)
from continuonbrain.rlds.tfds_writer import write_tfds  # re-exported: this module is the TFDS layout, both ways
from continuonbrain.rlds.tfrecord import Record, scan_records

#: Options the dispatcher passes through to these readers.
TFRECORD_OPTIONS = ("tfrecord_iter", "example_parser", "features", "limits")

TfrecordIter = Callable[[Path], Iterable[bytes]]
ExampleParser = Callable[[bytes], Mapping[str, Any]]

_TFRECORD_RE = re.compile(r"\.tfrecords?(-\d+-of-\d+)?(\.gz)?$")
_SHARD_RE = re.compile(r"^(?P<name>.+)-(?P<split>[^-.]+)\.tfrecords?(-\d+-of-\d+)?(\.gz)?$")
_VERSION_RE = re.compile(r"^v?(\d+(?:\.\d+)*)$")


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


# --- scanning shards and datasets ---------------------------------------------------------


def scan_tfrecord_file(
    path: Path,
    *,
    tfrecord_iter: TfrecordIter | None = None,
    example_parser: ExampleParser | None = None,
    features: FeatureSpec | Mapping[str, Any] | str | os.PathLike | None = None,
    limits: Limits = DEFAULT_LIMITS,
    declared_records: int | None = None,
) -> Iterator[EpisodeResult]:
    """Yield one :class:`EpisodeResult` per episode in a TFRecord shard, good or bad.

    ``features``: a parsed :class:`FeatureSpec`, the JSON of a ``features.json``, or its
    path; by default ``features.json`` beside the shard, and heuristic decoding without one.
    ``tfrecord_iter`` (path -> iterable of record bytes) and ``example_parser`` (bytes ->
    ``{field: values}``) replace the built-in framing and Example parsing. A damaged record
    becomes an error result and reading goes on with the next record; a truncated shard
    ends after its last complete record. ``declared_records`` (the shard's length in
    ``dataset_info.json``) adds an error when the shard holds fewer or more records than
    that: the records lost to a truncation must not vanish without a word.
    """
    path = Path(path)
    spec = _resolve_spec(path.parent, features, limits)
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

    found = 0
    for record in _records(path, tfrecord_iter, limits):
        found = record.index + 1
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
    if declared_records is not None and found != declared_records:
        yield EpisodeResult(key=path.name, unit=path, error=_count_error(path, declared_records, found), movable=False)


def _count_error(path: Path, declared: int, found: int) -> RLDSError:
    difference = f"{declared - found:,} missing" if found < declared else f"{found - declared:,} more than declared"
    return RLDSError(
        f"dataset_info.json declares {declared:,} records in this shard (shardLengths) and "
        f"{found:,} were found (good or bad): {difference}",
        file=str(path),
    )


def _resolve_spec(directory: Path, features: Any, limits: Limits) -> FeatureSpec:
    """The spec given, else ``directory/features.json``; an empty spec means heuristics."""
    if isinstance(features, FeatureSpec):
        return features
    if isinstance(features, Mapping):
        return parse_features(dict(features), source=f"features for {directory}")
    if isinstance(features, str | os.PathLike):
        return load_features(Path(features), limits)
    candidate = directory / "features.json"
    # lexists, not is_file: a features.json that is a FIFO or a dangling link is an error, not "none".
    return load_features(candidate, limits) if os.path.lexists(candidate) else FeatureSpec()


def _records(path: Path, tfrecord_iter: TfrecordIter | None, limits: Limits) -> Iterator[Record]:
    if tfrecord_iter is None:
        yield from scan_records(path, limits)
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
    limits = options.get("limits", DEFAULT_LIMITS)
    # Parsed once here rather than once per shard.
    spec = _resolve_spec(path, options.pop("features", None), limits)
    spec.check_usable()
    shards = dataset_shards(path, limits)
    if split is not None:
        if split not in shards:
            raise RLDSError(f"split {split!r} not found (splits: {sorted(shards)})", file=str(path))
        shards = {split: shards[split]}
    for split_name, split_shards in shards.items():
        for shard, declared in split_shards:
            if not os.path.lexists(shard):
                err = RLDSError("shard listed in dataset_info.json is missing", file=str(shard))
                yield EpisodeResult(key=shard.name, unit=shard, error=err, movable=False)
                continue
            try:
                for result in scan_tfrecord_file(shard, features=spec, declared_records=declared, **options):
                    if result.episode is not None and split_name:
                        # The split is part of where an episode belongs: convert keeps it by this.
                        result.episode.metadata["split"] = split_name
                    yield result
            except RLDSError as err:  # a shard that cannot be opened: the other shards are still read
                yield EpisodeResult(key=shard.name, unit=shard, error=err.at(file=str(shard)), movable=False)


class Shard(NamedTuple):
    """A shard file of a split and the number of records ``dataset_info.json`` says it holds
    (``shardLengths``), ``None`` where it does not say."""

    path: Path
    declared: int | None


def shard_files(path: Path) -> dict[str, list[Path]]:
    """The shard files of each split of a TFDS version directory, in order."""
    return {name: [shard.path for shard in shards] for name, shards in dataset_shards(path).items()}


def dataset_shards(path: Path, limits: Limits = DEFAULT_LIMITS) -> dict[str, list[Shard]]:
    """The shards of each split of a TFDS version directory, in order, with their declared lengths."""
    info_path = path / "dataset_info.json"
    info: Any = {}
    if os.path.lexists(info_path):
        info = limits.loads(limits.read(info_path), str(info_path))
        if not isinstance(info, dict):
            raise RLDSError("must be a JSON object", file=str(info_path))
    fmt = info.get("fileFormat") or "tfrecord"
    if fmt != "tfrecord":
        raise RLDSError(f"file format {fmt!r} is not supported (only tfrecord)", file=str(info_path))
    name, splits = info.get("name"), info.get("splits")
    if name and isinstance(splits, list) and splits:
        try:
            return {str(s["name"]): _split_shards(path, str(name), s) for s in splits}
        except (KeyError, TypeError, ValueError) as exc:
            raise RLDSError(f"malformed splits entry ({type(exc).__name__}: {exc})", file=str(info_path)) from None
    out: dict[str, list[Shard]] = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.name.startswith(".") or not is_tfrecord_path(Path(entry.name)):
            continue
        match = _SHARD_RE.match(entry.name)
        out.setdefault(match.group("split") if match else "", []).append(Shard(Path(entry.path), None))
    return out


def _split_shards(path: Path, name: str, split: Mapping[str, Any]) -> list[Shard]:
    lengths = [_shard_length(n) for n in split.get("shardLengths") or []]
    count = len(lengths) if lengths else int(split.get("numShards") or 0)
    template = str(split.get("filepathTemplate") or DEFAULT_TEMPLATE)
    files = [
        path
        / template.replace("{DATASET}", name)
        .replace("{SPLIT}", str(split["name"]))
        .replace("{FILEFORMAT}", "tfrecord")
        .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{count:05d}")
        .replace("{SHARD_INDEX}", f"{i:05d}")
        .replace("{NUM_SHARDS}", f"{count:05d}")
        for i in range(count)
    ]
    return [Shard(file, lengths[i] if lengths else None) for i, file in enumerate(files)]


def _shard_length(value: Any) -> int:
    """One ``shardLengths`` entry: TFDS writes decimal strings (int64 in proto JSON)."""
    if isinstance(value, bool) or not isinstance(value, int | str) or int(value) < 0:
        raise ValueError(f"shard length {value!r} is not a count")
    return int(value)


__all__ = [
    "DEFAULT_TEMPLATE",
    "EPISODE_ID_KEY",
    "METADATA_JSON_KEY",
    "TFRECORD_OPTIONS",
    "FeatureSpec",
    "Leaf",
    "Shard",
    "dataset_shards",
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
