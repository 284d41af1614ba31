"""TFDS RLDS datasets and TFRecord shards: features.json-driven decoding, the per-step
layout, damaged shards, the trainer hooks, and write_tfds -> read_episodes round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import consume_scan, fuzz_settings, make_episode, make_image_episode, png_bytes
from hypothesis import given
from hypothesis import strategies as st

from continuonbrain.rlds import Episode, ImageColumn, LazyImage, RLDSError, read_episodes, scan_episodes, tfds
from continuonbrain.rlds.example_proto import build_example, parse_example
from continuonbrain.rlds.tfrecord import frame_record, iter_records, write_records

SETTINGS = fuzz_settings(40)
CLS = "tensorflow_datasets.core.features"


# --- features.json builders (the format tensorflow_datasets 4.9 writes) -------------------


def tensor(dtype: str, *shape: int, encoding: str = "none", scalar: bool = False) -> dict[str, Any]:
    cls = f"{CLS}.scalar.Scalar" if scalar else f"{CLS}.tensor_feature.Tensor"
    dims = {"dimensions": [str(d) for d in shape]} if shape else {}
    return {"pythonClassName": cls, "tensor": {"shape": dims, "dtype": dtype, "encoding": encoding}}


def image(fmt: str = "png", channels: int = 3) -> dict[str, Any]:
    shape = {"dimensions": ["-1", "-1", str(channels)]}
    return {
        "pythonClassName": f"{CLS}.image_feature.Image",
        "image": {"shape": shape, "dtype": "uint8", "encodingFormat": fmt},
    }


def text() -> dict[str, Any]:
    return {"pythonClassName": f"{CLS}.text_feature.Text", "text": {}}


def fdict(**features: Any) -> dict[str, Any]:
    return {"pythonClassName": f"{CLS}.features_dict.FeaturesDict", "featuresDict": {"features": features}}


def rlds_features(steps: dict[str, Any], **episode: Any) -> dict[str, Any]:
    dataset = {
        "pythonClassName": f"{CLS}.dataset_feature.Dataset",
        "sequence": {"feature": fdict(**steps), "length": "-1"},
    }
    return fdict(steps=dataset, **episode)


def write_dataset(
    root: Path, records: list[bytes], features: dict[str, Any] | None, name: str = "ext", split: str = "train"
) -> Path:
    """A TFDS version dir with one shard (and dataset_info.json listing it)."""
    root.mkdir(parents=True, exist_ok=True)
    if features is not None:
        (root / "features.json").write_text(json.dumps(features))
    shard = root / f"{name}-{split}.tfrecord-00000-of-00001"
    write_records(shard, records)
    info = {"name": name, "version": "1.0.0", "splits": [{"name": split, "shardLengths": [str(len(records))]}]}
    (root / "dataset_info.json").write_text(json.dumps(info))
    return shard


def only(results: list) -> Episode:
    assert len(results) == 1 and results[0].error is None, results[0].error
    return results[0].episode


# --- paths --------------------------------------------------------------------------------


def test_path_recognition(tmp_path: Path) -> None:
    for name in ["a-train.tfrecord-00000-of-00004", "x.tfrecord", "x.tfrecords", "x.tfrecord.gz"]:
        assert tfds.is_tfrecord_path(Path(name)), name
    for name in ["x.json", "tfrecord.txt", "x.tfrecord.partial"]:
        assert not tfds.is_tfrecord_path(Path(name)), name
    assert not tfds.is_tfds_dir(tmp_path)
    (tmp_path / "features.json").write_text("{}")
    assert not tfds.is_tfds_dir(tmp_path)
    write_records(tmp_path / "d-train.tfrecord-00000-of-00001", [])
    assert tfds.is_tfds_dir(tmp_path)


def test_version_key() -> None:
    names = ["1.10.0", "notes", "1.2.0", "1.9.1", "v2"]
    assert sorted(names, key=tfds.version_key) == ["notes", "1.2.0", "1.9.1", "1.10.0", "v2"]


# --- write_tfds -> read_episodes ----------------------------------------------------------


def assert_same(got: Episode, want: Episode, split: str | None = "train") -> None:
    for name in ("observation", "action"):
        g, w = getattr(got, name), getattr(want, name)
        if isinstance(w, dict):
            assert set(g) == set(w), name
            for key in w:
                if isinstance(w[key], ImageColumn):
                    assert g[key] == w[key], f"{name}.{key}"
                else:
                    assert g[key].dtype == w[key].dtype and np.array_equal(g[key], w[key]), f"{name}.{key}"
        else:
            assert g.dtype == w.dtype and np.array_equal(g, w), name
    for name in ("reward", "discount", "is_first", "is_last", "is_terminal"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == w.dtype and np.array_equal(g, w), name
    if want.timestamp is None:
        assert got.timestamp is None
    else:
        assert got.timestamp.dtype == np.float64 and np.array_equal(got.timestamp, want.timestamp)
    assert got.language_instruction == want.language_instruction
    assert got.step_metadata == want.step_metadata
    # Reading a dataset records the split an episode came from (write_tfds's default is "train").
    assert got.metadata == ({"split": split, **want.metadata} if split else want.metadata)


def rich_episode(n: int, episode_id: str) -> Episode:
    """Nested dict observation with every stored dtype, images, epoch timestamps, odd metadata."""
    rows = [
        {
            "observation": {
                "arm": {"joints": [0.1 * t, -1.5, 2.0], "gripper": [t % 2]},
                "grid": np.arange(4, dtype=np.int32).reshape(2, 2) * t,
                "pixels": np.full(3, t, np.uint8),
                "contact": np.array([t % 2 == 0, True]),
                "precise": np.array([1 / 3 + t], np.float64),
                "camera": LazyImage(data=png_bytes(value=t), format="png"),
                "wrist": LazyImage(data=png_bytes(value=t, fmt="JPEG"), format="jpeg"),
            },
            "action": [t / 7.0, -t / 3.0],
            "reward": 1.0 if t == n - 1 else 0.0,
            "discount": 0.99,
            "is_terminal": t == n - 1,
            "language_instruction": "pick the ü-shaped block" if t % 2 else None,
            "step_metadata": {"lap": str(t)} if t == 1 else {},
            "timestamp": 1_700_000_000.123456 + t / 30.0,
        }
        for t in range(n)
    ]
    ep = Episode.from_steps(
        rows,
        {
            "schema_version": "1.1",
            "episode_id": episode_id,
            "robot_id": "donkey-7",
            "tags": ["tfds", "round-trip"],
            "capabilities": {"control_hz": 30, "cameras": ["front", "wrist"], "gain": 0.1 + 0.2},
            "safety": {"pii_cleared": True, "pending_review": False, "content_rating": None},
            "provenance": {"origin": "xr_app", "notes": 'multi\nline "quoted"'},
        },
    )
    # from_steps keeps float64 columns as float32; force one float64 column to test its encoding.
    ep.observation["precise"] = np.array([[1 / 3 + t] for t in range(n)], np.float64)
    return ep


def test_round_trip_vectors_exact(tmp_path: Path) -> None:
    episodes = [make_episode(n=6 + i, episode_id=f"ep{i}") for i in range(5)]
    paths = tfds.write_tfds(iter(episodes), tmp_path, episodes_per_shard=2)
    root = tmp_path / "continuon_rlds" / "1.0.0"
    shards = [f"continuon_rlds-train.tfrecord-{i:05d}-of-00003" for i in range(3)]
    assert [p.name for p in paths] == [*shards, "features.json", "dataset_info.json"]
    assert sorted(p.name for p in root.iterdir()) == sorted([*shards, "features.json", "dataset_info.json"])
    info = json.loads((root / "dataset_info.json").read_text())
    (split,) = info["splits"]
    assert split["shardLengths"] == ["2", "2", "1"] and split["name"] == "train"
    assert int(split["numBytes"]) == sum((root / s).stat().st_size for s in shards)
    got = list(read_episodes(tmp_path, on_error="raise"))
    assert len(got) == 5
    for g, w in zip(got, episodes, strict=True):
        assert_same(g, w)
        assert g.source is not None and g.source.startswith(str(root))


def test_round_trip_dicts_images_dtypes_exact(tmp_path: Path) -> None:
    episodes = [rich_episode(5, "rich0"), rich_episode(3, "rich1")]
    tfds.write_tfds(episodes, tmp_path, name="rich")
    got = list(read_episodes(tmp_path / "rich", on_error="raise"))
    for g, w in zip(got, episodes, strict=True):
        assert_same(g, w)
        assert set(g.observation) == {
            "arm/joints",
            "arm/gripper",
            "grid",
            "pixels",
            "contact",
            "precise",
            "camera",
            "wrist",
        }
        assert g.observation["camera"].decode().shape == (len(w), 8, 6, 3)
    features = json.loads((tmp_path / "rich" / "1.0.0" / "features.json").read_text())
    obs = features["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"][
        "observation"
    ]
    arm = obs["featuresDict"]["features"]["arm"]
    assert arm["featuresDict"]["features"]["joints"]["tensor"]["shape"] == {"dimensions": ["3"]}
    assert obs["featuresDict"]["features"]["wrist"]["image"]["encodingFormat"] == "jpeg"
    assert obs["featuresDict"]["features"]["precise"]["tensor"]["encoding"] == "bytes"


def test_episode_without_optional_columns_round_trips(tmp_path: Path) -> None:
    ep = make_image_episode(n=4)
    assert ep.timestamp is None and ep.language_instruction is None and ep.step_metadata is None
    tfds.write_tfds([ep], tmp_path)
    assert_same(only(list(scan_episodes(tmp_path))), ep)


def test_splits_and_config(tmp_path: Path) -> None:
    tfds.write_tfds([make_episode(episode_id="a")], tmp_path, split="train", config="sim")
    tfds.write_tfds([make_episode(episode_id="b"), make_episode(episode_id="c")], tmp_path, split="test", config="sim")
    root = tmp_path / "continuon_rlds" / "sim" / "1.0.0"
    info = json.loads((root / "dataset_info.json").read_text())
    assert info["configName"] == "sim" and [s["name"] for s in info["splits"]] == ["train", "test"]
    ids = lambda split: [r.episode.episode_id for r in tfds.scan_tfds_dir(root, split=split)]  # noqa: E731
    assert ids("test") == ["b", "c"] and ids("train") == ["a"] and ids(None) == ["a", "b", "c"]
    assert [e.episode_id for e in read_episodes(tmp_path, split="test")] == ["b", "c"]
    with pytest.raises(RLDSError, match="split 'val' not found"):
        list(tfds.scan_tfds_dir(root, split="val"))
    # A split that is already there is never replaced silently: refused before anything is written ...
    with pytest.raises(RLDSError, match="split 'test' already exists"):
        tfds.write_tfds([make_episode(episode_id="d")], tmp_path, split="test", config="sim")
    assert ids("test") == ["b", "c"] and not list(root.glob(".*"))
    # ... and replaced only when asked, which the result says; the other split is kept.
    written = tfds.write_tfds([make_episode(episode_id="d")], tmp_path, split="test", config="sim", overwrite=True)
    assert written.replaced == ["test"] and dict(written.episodes) == {"test": 1}
    assert ids("test") == ["d"] and ids("train") == ["a"]


def test_newest_version_is_read(tmp_path: Path) -> None:
    tfds.write_tfds([make_episode(episode_id="old")], tmp_path, version="1.9.0")
    tfds.write_tfds([make_episode(episode_id="new")], tmp_path, version="1.10.0")
    assert [e.episode_id for e in read_episodes(tmp_path)] == ["new"]


def test_schema_change_between_episodes_is_refused(tmp_path: Path) -> None:
    episodes = [make_episode(episode_id="a", obs_dim=4), make_episode(episode_id="b", obs_dim=5)]
    with pytest.raises(RLDSError) as info:
        tfds.write_tfds(episodes, tmp_path)
    assert info.value.episode == "b" and info.value.field == "steps/observation"
    root = tmp_path / "continuon_rlds" / "1.0.0"
    assert list(root.iterdir()) == []  # no partial shard, no dataset_info.json


def test_bad_episode_is_refused_before_writing(tmp_path: Path) -> None:
    ep = make_episode(episode_id="nan")
    ep.observation[2, 1] = np.nan
    with pytest.raises(RLDSError) as info:
        tfds.write_tfds([ep], tmp_path)
    assert info.value.episode == "nan" and info.value.step == 2


def test_no_episodes_writes_nothing(tmp_path: Path) -> None:
    assert tfds.write_tfds([], tmp_path) == []
    assert not (tmp_path / "continuon_rlds" / "1.0.0" / "dataset_info.json").exists()


# --- decoding foreign datasets driven by features.json ------------------------------------


FOREIGN_FEATURES = rlds_features(
    {
        "observation": fdict(
            image=image("png"),
            wrist_image=image("jpeg"),
            state=tensor("float32", 2, 3),
            joint_ids=tensor("int32", 2),
            natural_language_instruction=text(),
        ),
        "action": fdict(world_vector=tensor("float32", 3), gripper_closed=tensor("bool", 1)),
        "reward": tensor("float32", scalar=True),
        "discount": tensor("float32", scalar=True),
        "is_first": tensor("bool"),
        "is_last": tensor("bool"),
        "is_terminal": tensor("bool"),
        "language_embedding": tensor("float32", 4),
    },
    episode_metadata=fdict(
        file_path=text(), episode_id=tensor("int64", scalar=True), success=tensor("bool", scalar=True),
        calibration=fdict(scale=tensor("float64", scalar=True), offsets=tensor("float32", 2)),
    ),
)  # fmt: skip


def foreign_record(steps: int, episode_id: int = 7, **overrides: Any) -> bytes:
    feats: dict[str, Any] = {
        "steps/observation/image": [png_bytes(value=t) for t in range(steps)],
        "steps/observation/wrist_image": [png_bytes(value=t, fmt="JPEG") for t in range(steps)],
        "steps/observation/state": np.arange(steps * 6, dtype=np.float32),
        "steps/observation/joint_ids": np.arange(steps * 2),
        "steps/observation/natural_language_instruction": ["open the drawer"] * steps,
        "steps/action/world_vector": np.arange(steps * 3, dtype=np.float32) / 10,
        "steps/action/gripper_closed": np.arange(steps) % 2 == 0,
        "steps/reward": np.eye(1, steps, steps - 1, dtype=np.float32).ravel(),
        "steps/discount": np.ones(steps, np.float32),
        "steps/is_first": np.arange(steps) == 0,
        "steps/is_last": np.arange(steps) == steps - 1,
        "steps/is_terminal": np.arange(steps) == steps - 1,
        "steps/language_embedding": np.zeros(steps * 4, np.float32),
        "episode_metadata/file_path": "/data/ep.h5",
        "episode_metadata/episode_id": np.array([episode_id]),
        "episode_metadata/success": np.array([True]),
        "episode_metadata/calibration/scale": np.array([0.5]),
        "episode_metadata/calibration/offsets": np.array([1.0, -1.0], np.float32),
    }
    feats.update(overrides)
    return build_example({k: v for k, v in feats.items() if v is not None})


def test_features_json_drives_decoding(tmp_path: Path) -> None:
    root = tmp_path / "ext" / "1.0.0"
    shard = write_dataset(root, [foreign_record(4)], FOREIGN_FEATURES)
    ep = only(list(tfds.scan_tfds_dir(root)))
    obs, act = ep.observation, ep.action
    assert set(obs) == {"image", "wrist_image", "state", "joint_ids"}  # text is not an observation column
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (4, 2, 3)
    assert obs["state"][1].tolist() == [[6, 7, 8], [9, 10, 11]]
    assert obs["joint_ids"].dtype == np.int32 and obs["joint_ids"].shape == (4, 2)
    assert isinstance(obs["image"], ImageColumn) and obs["image"][2].format == "png"
    assert obs["image"][2].decode()[1, 1].tolist() == [2, 2, 2]
    assert obs["wrist_image"][0].format == "jpeg" and obs["wrist_image"][0].decode().shape == (8, 6, 3)
    assert act["gripper_closed"].dtype == bool and act["gripper_closed"][:, 0].tolist() == [True, False, True, False]
    assert act["world_vector"].shape == (4, 3)
    assert ep.is_first.tolist() == [True, False, False, False] and ep.is_last[-1] and ep.reward[-1] == 1.0
    assert ep.language_instruction == ["open the drawer"] * 4  # from observation/natural_language_instruction
    assert ep.metadata == {
        "split": "train",  # the split it was read from
        "file_path": "/data/ep.h5",
        "episode_id": "7",  # the schema wants a string
        "success": True,
        "calibration": {"scale": 0.5, "offsets": [1.0, -1.0]},
    }
    assert ep.source == str(shard) and ep.timestamp is None
    # The same shard read on its own finds features.json beside it.
    assert only(list(tfds.scan_tfrecord_file(shard))).observation["state"].shape == (4, 2, 3)


def test_sizes_that_do_not_divide_name_the_field(tmp_path: Path) -> None:
    root = tmp_path / "ext" / "1.0.0"
    bad = foreign_record(4, **{"steps/observation/state": np.arange(23, dtype=np.float32)})
    shard = write_dataset(root, [foreign_record(3), bad], FOREIGN_FEATURES)
    good, broken = list(tfds.scan_tfds_dir(root))
    assert good.ok and not broken.ok
    err = broken.error
    assert err.field == "steps/observation/state" and err.file == str(shard)
    assert err.episode == f"{shard.name}#1" and "23 values" in err.message and "(2, 3)" in err.message
    assert broken.raw is not None and not broken.movable and broken.unit == shard


def test_wrong_list_kind_names_the_field(tmp_path: Path) -> None:
    root = tmp_path / "ext" / "1.0.0"
    write_dataset(root, [foreign_record(3, **{"steps/reward": np.zeros(3, np.int64)})], FOREIGN_FEATURES)
    (result,) = tfds.scan_tfds_dir(root)
    assert result.error.field == "steps/reward" and "float_list" in result.error.message


@pytest.mark.parametrize("dtype", ["bfloat16", "complex64", "qint8"])
def test_unknown_dtype_names_file_feature_and_dtype(tmp_path: Path, dtype: str) -> None:
    features = rlds_features({"observation": fdict(state=tensor(dtype, 2)), "action": tensor("float32", 1)})
    root = tmp_path / "ext" / "1.0.0"
    write_dataset(root, [b""], features)
    with pytest.raises(RLDSError) as info:
        list(read_episodes(root))
    err = info.value
    assert err.file == str(root / "features.json") and err.field == "steps/observation/state"
    assert dtype in err.message


def test_unknown_feature_type_is_an_error_only_where_used(tmp_path: Path) -> None:
    video = {"pythonClassName": f"{CLS}.video_feature.Video", "video": {"dtype": "uint8"}}
    used = rlds_features({"observation": fdict(clip=video), "action": tensor("float32", 1)})
    root = tmp_path / "a" / "1.0.0"
    write_dataset(root, [b""], used)
    with pytest.raises(RLDSError, match="'Video' is not supported") as info:
        list(tfds.scan_tfds_dir(root))
    assert info.value.field == "steps/observation/clip"
    # An extra step feature nobody reads does not make the dataset unreadable.
    unused = rlds_features({"observation": tensor("float32", 2), "action": tensor("float32", 1), "clip": video})
    record = build_example({"steps/observation": np.zeros(4, np.float32), "steps/action": np.zeros(2, np.float32)})
    root = tmp_path / "b" / "1.0.0"
    write_dataset(root, [record], unused)
    assert only(list(tfds.scan_tfds_dir(root))).observation.shape == (2, 2)


def test_unknown_dimension_is_inferred(tmp_path: Path) -> None:
    features = rlds_features(
        {"observation": tensor("float32", -1), "action": tensor("float32", 1), "is_first": tensor("bool")}
    )
    record = build_example(
        {"steps/observation": np.arange(15, dtype=np.float32), "steps/action": np.zeros(3, np.float32),
         "steps/is_first": np.array([1, 0, 0])}
    )  # fmt: skip
    root = tmp_path / "ext" / "1.0.0"
    write_dataset(root, [record], features)
    assert only(list(tfds.scan_tfds_dir(root))).observation.shape == (3, 5)


def test_legacy_type_content_features_json(tmp_path: Path) -> None:
    """The ``{"type", "content"}`` format of older tensorflow_datasets releases."""
    legacy = {
        "type": f"{CLS}.features_dict.FeaturesDict",
        "content": {
            "steps": {
                "type": f"{CLS}.dataset_feature.Dataset",
                "content": {
                    "feature": {
                        "type": f"{CLS}.features_dict.FeaturesDict",
                        "content": {
                            "observation": {
                                "type": f"{CLS}.features_dict.FeaturesDict",
                                "content": {
                                    "state": {
                                        "type": f"{CLS}.feature.Tensor",
                                        "content": {"shape": [2], "dtype": "float32"},
                                    },
                                    "image": {
                                        "type": f"{CLS}.image_feature.Image",
                                        "content": {
                                            "shape": [None, None, 3],
                                            "dtype": "uint8",
                                            "encoding_format": "png",
                                        },
                                    },
                                },
                            },
                            "action": {"type": f"{CLS}.feature.Tensor", "content": {"shape": [1], "dtype": "int32"}},
                            "is_first": {"type": f"{CLS}.feature.Tensor", "content": {"shape": [], "dtype": "bool"}},
                        },
                    },
                    "length": None,
                },
            }
        },
    }
    record = build_example(
        {
            "steps/observation/state": np.arange(4, dtype=np.float32),
            "steps/observation/image": [png_bytes(), png_bytes()],
            "steps/action": np.array([3, 4]),
            "steps/is_first": np.array([1, 0]),
        }
    )
    root = tmp_path / "legacy" / "1.0.0"
    write_dataset(root, [record], legacy)
    ep = only(list(tfds.scan_tfds_dir(root)))
    assert ep.observation["state"].tolist() == [[0, 1], [2, 3]]
    assert ep.action.dtype == np.int32 and ep.action.tolist() == [[3], [4]]
    assert len(ep.observation["image"]) == 2


def test_heuristic_decoding_without_features_json(tmp_path: Path) -> None:
    record = build_example(
        {
            "steps/observation/state": np.arange(6, dtype=np.float32),
            "steps/observation/camera": [png_bytes(), png_bytes()],
            "steps/action": np.array([0.5, -0.5], np.float32),
            "steps/reward": np.array([0.0, 1.0], np.float32),
            "steps/is_first": np.array([1, 0]),
            "steps/is_last": np.array([0, 1]),
            "steps/language_instruction": ["go", "go"],
            "episode_metadata/episode_id": "h1",
            "episode_metadata/n": np.array([3]),
        }
    )
    path = tmp_path / "loose.tfrecord"
    write_records(path, [record])
    ep = only(list(scan_episodes(path)))
    assert ep.observation["state"].shape == (2, 3) and isinstance(ep.observation["camera"], ImageColumn)
    assert ep.action.shape == (2, 1) and ep.is_last.tolist() == [False, True]  # actions stay vectors
    assert ep.language_instruction == ["go", "go"] and ep.metadata == {"episode_id": "h1", "n": 3}


def test_our_shard_alone_decodes_exactly_without_features_json(tmp_path: Path) -> None:
    """A shard copied out of its dataset (or a quarantined record) still reads exactly."""
    episodes = [make_episode(episode_id="solo0"), make_episode(n=3, episode_id="solo1")]
    tfds.write_tfds(episodes, tmp_path / "ds")
    (shard,) = (tmp_path / "ds").rglob("*.tfrecord-*")
    alone = tmp_path / "alone.tfrecord"
    alone.write_bytes(shard.read_bytes())
    got = [r.episode for r in scan_episodes(alone)]
    for g, w in zip(got, episodes, strict=True):
        assert_same(g, w, split=None)  # a lone shard is in no dataset, so in no split


def test_absurdly_nested_json_is_an_rlds_error(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "1.0.0"
    write_dataset(root, [b""], None)
    (root / "features.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RLDSError) as info:
        list(tfds.scan_tfds_dir(root))
    assert info.value.file == str(root / "features.json")
    record = build_example(
        {
            "steps/action": np.zeros(1, np.float32),
            "steps/reward": np.zeros(1, np.float32),
            tfds.METADATA_JSON_KEY: "[" * 100_000,
        }
    )
    path = tmp_path / "deep.tfrecord"
    write_records(path, [record])
    (result,) = scan_episodes(path)
    assert result.error.field == tfds.METADATA_JSON_KEY


# --- the older step-per-Example layout ----------------------------------------------------


def step_record(episode: str, index: int, n: int, **extra: Any) -> bytes:
    feats: dict[str, Any] = {
        "episode_id": episode,
        "step_index": np.array([index]),
        "observation/state": np.array([index, index + 0.5], np.float32),
        "observation/camera": [png_bytes(value=index)],
        "action": np.array([index / 10], np.float32),
        "reward": np.array([float(index)], np.float32),
        "is_first": np.array([index == 0]),
        "is_last": np.array([index == n - 1]),
        "language_instruction": "park",
        "episode_metadata/robot_id": "pi5",
    }
    feats.update(extra)
    return build_example(feats)


def test_per_step_layout_groups_and_orders(tmp_path: Path) -> None:
    records = [step_record("a", i, 3) for i in (1, 0, 2)] + [step_record("b", i, 2) for i in range(2)]
    path = tmp_path / "steps.tfrecord"
    write_records(path, records)
    a, b = list(scan_episodes(path))
    assert a.ok and b.ok and a.key == "steps.tfrecord#0" and b.key == "steps.tfrecord#3"
    ep = a.episode
    assert ep.episode_id == "a" and len(ep) == 3 and ep.metadata == {"robot_id": "pi5", "episode_id": "a"}
    assert ep.observation["state"].tolist() == [[0, 0.5], [1, 1.5], [2, 2.5]]
    assert ep.action.shape == (3, 1) and ep.reward.tolist() == [0, 1, 2]
    assert [img.decode()[1, 1, 0] for img in ep.observation["camera"]] == [0, 1, 2]
    assert ep.is_first.tolist() == [True, False, False] and ep.language_instruction == ["park"] * 3
    assert len(b.episode) == 2


def test_per_step_layout_with_features_json(tmp_path: Path) -> None:
    features = fdict(
        episode_id=text(),
        step_index=tensor("int64", scalar=True),
        observation=fdict(state=tensor("float32", 2), camera=image()),
        action=tensor("float32", 1),
        reward=tensor("float32", scalar=True),
        is_first=tensor("bool"),
        is_last=tensor("bool"),
        language_instruction=text(),
        episode_metadata=fdict(robot_id=text()),
    )
    (tmp_path / "features.json").write_text(json.dumps(features))
    path = tmp_path / "steps.tfrecord"
    write_records(path, [step_record("a", i, 2) for i in range(2)])
    ep = only(list(tfds.scan_tfrecord_file(path)))
    assert ep.observation["state"].dtype == np.float32 and ep.action.shape == (2, 1)


def test_per_step_gap_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "gap.tfrecord"
    write_records(path, [step_record("a", i, 4) for i in (0, 1, 3)])
    (result,) = scan_episodes(path)
    assert result.error.field == "step_index" and "jumps from 1 to 3" in result.error.message
    assert result.error.episode == "a" and result.error.file == str(path)


# --- damaged shards -----------------------------------------------------------------------


def shard_of_three(tmp_path: Path) -> tuple[Path, list[bytes]]:
    tfds.write_tfds([make_episode(episode_id=f"ep{i}") for i in range(3)], tmp_path)
    root = tmp_path / "continuon_rlds" / "1.0.0"
    (shard,) = root.glob("*.tfrecord-*")
    return shard, [p for _, p in iter_records(shard)]


def test_data_crc_mismatch_loses_one_episode(tmp_path: Path) -> None:
    shard, payloads = shard_of_three(tmp_path)
    framed = [bytearray(frame_record(p)) for p in payloads]
    framed[1][40] ^= 0xFF
    shard.write_bytes(b"".join(framed))
    results = list(tfds.scan_tfds_dir(shard.parent))
    assert [r.ok for r in results] == [True, False, True]
    err = results[1].error
    assert err.file == str(shard) and err.episode == f"{shard.name}#1"
    assert "data CRC mismatch" in err.message and f"byte offset {len(framed[0])}" in err.message
    assert [e.episode_id for e in read_episodes(shard.parent)] == ["ep0", "ep2"]


def test_truncated_shard_keeps_complete_episodes(tmp_path: Path) -> None:
    shard, _ = shard_of_three(tmp_path)
    shard.write_bytes(shard.read_bytes()[:-10])
    results = list(tfds.scan_tfds_dir(shard.parent))
    assert [r.ok for r in results] == [True, True, False]
    assert "truncated" in results[2].error.message and results[2].error.episode == f"{shard.name}#2"


def test_missing_shard_is_reported(tmp_path: Path) -> None:
    tfds.write_tfds([make_episode(episode_id=f"ep{i}") for i in range(4)], tmp_path, episodes_per_shard=2)
    root = tmp_path / "continuon_rlds" / "1.0.0"
    missing = root / "continuon_rlds-train.tfrecord-00000-of-00002"
    missing.unlink()
    results = list(tfds.scan_tfds_dir(root))
    assert not results[0].ok and results[0].error.file == str(missing) and "missing" in results[0].error.message
    assert [r.episode.episode_id for r in results[1:]] == ["ep2", "ep3"]


def test_validate_quarantines_a_bad_record(tmp_path: Path) -> None:
    from continuonbrain.rlds.validate import validate_path

    shard, payloads = shard_of_three(tmp_path)
    shard.write_bytes(frame_record(payloads[0]) + frame_record(b"not an example") + frame_record(payloads[2]))
    report = validate_path(shard.parent, quarantine_dir=tmp_path / "q")
    assert (report.episodes_ok, report.episodes_bad) == (2, 1)
    (copy,) = (Path(p) for p in report.quarantined)
    assert [p for _, p in iter_records(copy)] == [b"not an example"]
    assert shard.exists()


# --- hooks from the trainer API -----------------------------------------------------------


def test_tfrecord_iter_and_example_parser_hooks(tmp_path: Path) -> None:
    episodes = [make_episode(episode_id=f"ep{i}") for i in range(2)]
    tfds.write_tfds(episodes, tmp_path)
    calls = {"iter": 0, "parse": 0}

    def my_iter(path: Path):
        calls["iter"] += 1
        return (payload for _, payload in iter_records(path))

    def my_parser(data: bytes) -> dict[str, Any]:
        calls["parse"] += 1
        return {k: v if isinstance(v, list) else v.tolist() for k, v in parse_example(data).items()}

    got = list(read_episodes(tmp_path, tfrecord_iter=my_iter, example_parser=my_parser, on_error="raise"))
    assert calls == {"iter": 1, "parse": 2}
    for g, w in zip(got, episodes, strict=True):
        assert_same(g, w)


def test_failing_hooks_become_rlds_errors(tmp_path: Path) -> None:
    shard, _ = shard_of_three(tmp_path)

    def broken_iter(path: Path):
        yield from (payload for _, payload in iter_records(path))
        raise OSError("disk on fire")

    results = list(tfds.scan_tfrecord_file(shard, tfrecord_iter=broken_iter))
    assert [r.ok for r in results] == [True, True, True, False]
    assert "disk on fire" in results[-1].error.message

    def broken_parser(data: bytes) -> dict[str, Any]:
        raise ValueError("cannot parse")

    results = list(tfds.scan_tfrecord_file(shard, example_parser=broken_parser))
    assert all(not r.ok and "cannot parse" in r.error.message for r in results) and len(results) == 3


# --- property-based: only RLDSError ever comes out ----------------------------------------


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_bytes_shard(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("rb") / "x.tfrecord"
    path.write_bytes(data)
    consume_scan(path)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_random_record_payload(tmp_path_factory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("rp") / "x.tfrecord"
    write_records(path, [data])
    consume_scan(path)


def valid_dataset(root: Path) -> Path:
    ep = rich_episode(3, "fuzz")
    tfds.write_tfds([ep], root, name="fz")
    return root / "fz" / "1.0.0"


@SETTINGS
@given(
    edits=st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.none() | st.integers(0, 100_000),
)
def test_mutated_valid_shard(tmp_path_factory, edits: list[tuple[int, int]], cut: int | None) -> None:
    root = valid_dataset(tmp_path_factory.mktemp("mut"))
    (shard,) = root.glob("fz-train.tfrecord-*")
    (payload,) = [p for _, p in iter_records(shard)]
    data = bytearray(payload)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    write_records(shard, [bytes(data)])  # valid framing around a damaged Example
    consume_scan(root)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["float32", "bool", "string", "-1", "3", "x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["featuresDict", "features", "tensor", "image", "text", "sequence", "feature", "shape", "dtype",
         "dimensions", "encoding", "steps", "observation", "action", "type", "content", "pythonClassName"]
    ), inner, max_size=4),
    max_leaves=25,
)  # fmt: skip


@SETTINGS
@given(features=json_values)
def test_random_features_json(tmp_path_factory, features: Any) -> None:
    root = valid_dataset(tmp_path_factory.mktemp("fj"))
    (root / "features.json").write_text(json.dumps(features))
    consume_scan(root)


FUZZ_KEYS = [
    *(f"steps/{k}" for k in ["observation/image", "observation/state", "observation/joint_ids",
                             "observation/natural_language_instruction", "action/world_vector",
                             "action/gripper_closed", "reward", "discount", "is_first", "is_last", "is_terminal",
                             "timestamp", "step_metadata", "language_instruction", "observation", "action"]),
    *(f"episode_metadata/{k}" for k in ["file_path", "episode_id", "success", "calibration/scale", "metadata_json"]),
    "episode_id", "step_index", "observation/state", "action", "reward",
]  # fmt: skip
fuzz_values = st.one_of(
    st.lists(st.floats(allow_nan=True, width=32), max_size=30).map(lambda v: np.array(v, np.float32)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30).map(lambda v: np.array(v, np.int64)),
    st.lists(
        st.sampled_from([b"", b"\xff\xfe", png_bytes(), b"\x89PNG\r\n\x1a\nxx", b"{}", b"[1]", b'{"a": 1}', b"null"]),
        min_size=1,
        max_size=8,
    ),
)


@SETTINGS
@given(
    feats=st.dictionaries(st.sampled_from(FUZZ_KEYS), fuzz_values, max_size=12),
    spec=st.sampled_from(["foreign", "ours", None]),
)
def test_well_formed_examples_with_random_fields(tmp_path_factory, feats: dict[str, Any], spec: str | None) -> None:
    """Valid protobuf, nonsense content: reaches the decoders that byte mutations rarely do."""
    root = tmp_path_factory.mktemp("sf")
    if spec == "foreign":
        (root / "features.json").write_text(json.dumps(FOREIGN_FEATURES))
    elif spec == "ours":
        (root / "features.json").write_text((valid_dataset(root / "src") / "features.json").read_text())
    write_records(root / "x-train.tfrecord-00000-of-00001", [build_example(feats)] * 2)
    consume_scan(root)
