"""Compatibility with the real tensorflow_datasets / TensorFlow, both directions.

Runs in the side environment ``.venv-tfds`` (``make interop-venvs test-interop``; the main
venv has no TensorFlow). Without ``tensorflow_datasets`` it is skipped, and under ``CI=true``
it fails:

* what ``write_tfds`` writes loads with ``tfds.builder_from_directory`` with equal values;
* what a real TFDS builder and ``tf.io.TFRecordWriter`` write is read by our reader with
  the values TFDS/TensorFlow give;
* our TFRecord framing (plain and gzip) reads in ``tf.data.TFRecordDataset`` and back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode, png_bytes, require_interop

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tfds_lib = require_interop("tensorflow_datasets", ".venv-tfds")
tf = require_interop("tensorflow", ".venv-tfds")

from test_tfds import rich_episode  # noqa: E402

from continuonbrain.rlds import Episode, ImageColumn, tfds  # noqa: E402
from continuonbrain.rlds.tfrecord import iter_records, write_records  # noqa: E402


def tfds_episodes(root: Path, split: str) -> list[dict]:
    builder = tfds_lib.builder_from_directory(str(root))
    return list(tfds_lib.as_numpy(builder.as_dataset(split=split)))


def stack(steps: list[dict], *path: str) -> np.ndarray:
    def get(step: dict) -> np.ndarray:
        for part in path:
            step = step[part]
        return step

    return np.stack([get(s) for s in steps])


def assert_images_equal(theirs: np.ndarray, ours: ImageColumn, lossy: bool) -> None:
    mine = ours.decode()
    assert theirs.shape == mine.shape
    if lossy:  # TensorFlow's and Pillow's JPEG decoders may differ by a grey level or two
        assert np.abs(theirs.astype(int) - mine.astype(int)).mean() < 2
    else:
        assert np.array_equal(theirs, mine)


def assert_tfds_equals(theirs: dict, ours: Episode) -> None:
    steps = list(theirs["steps"])
    assert len(steps) == len(ours)
    columns = ours.observation if isinstance(ours.observation, dict) else {"": ours.observation}
    for name, col in columns.items():
        path = ("observation", *name.split("/")) if name else ("observation",)
        got = stack(steps, *path)
        if isinstance(col, ImageColumn):
            assert_images_equal(got, col, lossy=col[0].format == "jpeg")
        else:
            assert got.dtype == col.dtype and np.array_equal(got, col), name
    assert np.array_equal(stack(steps, "action"), ours.action)
    for name in ("reward", "discount", "is_first", "is_last", "is_terminal"):
        assert np.array_equal(stack(steps, name), getattr(ours, name)), name
    ts = stack(steps, "timestamp")
    assert ts.dtype == np.float64
    if ours.timestamp is None:
        assert np.isnan(ts).all()
    else:
        assert np.array_equal(ts, ours.timestamp)  # float64 survives exactly (bytes encoding)
    lang = [s["language_instruction"].decode() or None for s in steps]
    assert lang == (ours.language_instruction or [None] * len(ours))
    smeta = [json.loads(s["step_metadata"]) if s["step_metadata"] else {} for s in steps]
    assert smeta == (ours.step_metadata or [{}] * len(ours))
    meta = theirs["episode_metadata"]
    assert json.loads(meta["metadata_json"]) == ours.metadata
    assert meta["episode_id"].decode() == ours.metadata["episode_id"]


def test_write_tfds_loads_in_tfds(tmp_path: Path) -> None:
    vectors = [make_episode(n=5 + i, episode_id=f"v{i}") for i in range(3)]
    tfds.write_tfds(vectors, tmp_path, episodes_per_shard=2)
    loaded = tfds_episodes(tmp_path / "continuon_rlds" / "1.0.0", "train")
    assert len(loaded) == 3
    for theirs, ours in zip(loaded, vectors, strict=True):
        assert_tfds_equals(theirs, ours)

    rich = [rich_episode(4, "r0"), rich_episode(3, "r1")]
    tfds.write_tfds(rich, tmp_path, name="rich", config="cams", split="validation")
    loaded = tfds_episodes(tmp_path / "rich" / "cams" / "1.0.0", "validation")
    for theirs, ours in zip(loaded, rich, strict=True):
        assert_tfds_equals(theirs, ours)
        assert theirs["steps"]  # nested dict observation came back nested
    builder = tfds_lib.builder_from_directory(str(tmp_path / "rich" / "cams" / "1.0.0"))
    assert builder.info.config_name == "cams"
    assert builder.info.splits["validation"].num_examples == 2


class CompatProbe(tfds_lib.core.GeneratorBasedBuilder, skip_registration=True):
    """A tiny RLDS-shaped dataset written by TFDS itself."""

    VERSION = tfds_lib.core.Version("1.2.0")

    def _info(self):
        f = tfds_lib.features
        return tfds_lib.core.DatasetInfo(
            builder=self,
            features=f.FeaturesDict(
                {
                    "steps": f.Dataset(
                        {
                            "observation": {
                                "image": f.Image(shape=(8, 6, 3), encoding_format="png"),
                                "wrist": f.Image(shape=(8, 6, 3), encoding_format="jpeg"),
                                "state": f.Tensor(shape=(2, 3), dtype=np.float32),
                                "grid": f.Tensor(shape=(2,), dtype=np.int32),
                                "precise": f.Tensor(shape=(2,), dtype=np.float64, encoding=f.Encoding.BYTES),
                            },
                            "action": f.Tensor(shape=(3,), dtype=np.float64),
                            "reward": f.Scalar(dtype=np.float32),
                            "discount": f.Scalar(dtype=np.float32),
                            "is_first": np.bool_,
                            "is_last": np.bool_,
                            "is_terminal": np.bool_,
                            "language_instruction": f.Text(),
                            "language_embedding": f.Tensor(shape=(4,), dtype=np.float32),
                        }
                    ),
                    "episode_metadata": {"file_path": f.Text(), "n": np.int64, "ok": np.bool_, "gain": np.float32},
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(3), "test": self._generate_examples(1)}

    def _generate_examples(self, n: int):
        from PIL import Image

        for e in range(n):
            steps = []
            for t in range(3 + e):
                frame = np.zeros((8, 6, 3), np.uint8)
                frame[0, 0] = [t * 20, 255 - t, e]
                steps.append(
                    {
                        "observation": {
                            "image": frame,
                            "wrist": np.asarray(Image.open(__import__("io").BytesIO(png_bytes(value=t * 30)))),
                            "state": np.arange(6, dtype=np.float32).reshape(2, 3) + t,
                            "grid": np.array([t, -t], np.int32),
                            "precise": np.array([1 / 3 + t, 1e-12], np.float64),
                        },
                        "action": np.array([t / 3, -1.0, 2.5], np.float64),
                        "reward": float(t == 2 + e),
                        "discount": 1.0,
                        "is_first": t == 0,
                        "is_last": t == 2 + e,
                        "is_terminal": t == 2 + e,
                        "language_instruction": f"stack {e} ü",
                        "language_embedding": np.full(4, t, np.float32),
                    }
                )
            meta = {"file_path": f"/raw/{e}.h5", "n": e, "ok": e % 2 == 0, "gain": 0.5}
            yield f"ep{e}", {"steps": steps, "episode_metadata": meta}


def test_our_reader_reads_a_real_tfds_builder(tmp_path: Path) -> None:
    builder = CompatProbe(data_dir=str(tmp_path))
    builder.download_and_prepare()
    root = Path(builder.data_dir)
    for split in ("train", "test"):
        theirs = tfds_episodes(root, split)
        ours = list(tfds.scan_tfds_dir(root, split=split))
        assert len(theirs) == len(ours) > 0
        for t, result in zip(theirs, ours, strict=True):
            assert result.ok, result.error
            ep = result.episode
            steps = list(t["steps"])
            for name in ("state", "grid", "precise"):
                want = stack(steps, "observation", name)
                assert want.dtype == ep.observation[name].dtype and np.array_equal(want, ep.observation[name]), name
            assert_images_equal(stack(steps, "observation", "image"), ep.observation["image"], lossy=False)
            assert_images_equal(stack(steps, "observation", "wrist"), ep.observation["wrist"], lossy=True)
            action = stack(steps, "action")
            assert action.dtype == ep.action.dtype == np.float64 and np.array_equal(action, ep.action)
            for name in ("reward", "discount", "is_first", "is_last", "is_terminal"):
                assert np.array_equal(stack(steps, name), getattr(ep, name)), name
            assert ep.language_instruction == [s["language_instruction"].decode() for s in steps]
            meta = t["episode_metadata"]
            assert ep.metadata == {
                "file_path": meta["file_path"].decode(),
                "n": int(meta["n"]),
                "ok": bool(meta["ok"]),
                "gain": float(meta["gain"]),
                "episode_id": ep.metadata["episode_id"],  # not in the data: "<shard>#<record>"
                "split": split,  # recorded by the reader, so that convert keeps the splits
            }


def test_our_reader_reads_tf_written_per_step_gzip(tmp_path: Path) -> None:
    path = tmp_path / "steps.tfrecord.gz"
    feature = tf.train.Feature
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for episode, n in (("a", 3), ("b", 2)):
            for i in range(n):
                example = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "episode_id": feature(bytes_list=tf.train.BytesList(value=[episode.encode()])),
                            "step_index": feature(int64_list=tf.train.Int64List(value=[i])),
                            "observation/state": feature(float_list=tf.train.FloatList(value=[i, i + 0.5])),
                            "observation/camera": feature(bytes_list=tf.train.BytesList(value=[png_bytes(value=i)])),
                            "action": feature(float_list=tf.train.FloatList(value=[-i])),
                            "reward": feature(float_list=tf.train.FloatList(value=[float(i)])),
                            "is_first": feature(int64_list=tf.train.Int64List(value=[int(i == 0)])),
                            "is_last": feature(int64_list=tf.train.Int64List(value=[int(i == n - 1)])),
                            "language_instruction": feature(bytes_list=tf.train.BytesList(value=[b"go"])),
                        }
                    )
                )
                writer.write(example.SerializeToString())
    a, b = (r.episode for r in tfds.scan_tfrecord_file(path))
    assert a.episode_id == "a" and b.episode_id == "b"
    assert a.observation["state"].tolist() == [[0, 0.5], [1, 1.5], [2, 2.5]]
    assert a.action.tolist() == [[0], [-1], [-2]] and a.is_last.tolist() == [False, False, True]
    assert [img.decode()[1, 1, 0] for img in a.observation["camera"]] == [0, 1, 2]
    assert b.language_instruction == ["go", "go"]


@pytest.mark.parametrize("compress", [False, True])
def test_framing_interoperates_with_tf_data(tmp_path: Path, compress: bool) -> None:
    payloads = [b"alpha", b"", bytes(range(256)) * 50]
    ours = tmp_path / "ours.tfrecord"
    write_records(ours, payloads, gzip=compress)
    compression = "GZIP" if compress else ""
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(ours), compression_type=compression)] == payloads
    theirs = tmp_path / "theirs.tfrecord"
    with tf.io.TFRecordWriter(str(theirs), options=compression or None) as writer:
        for p in payloads:
            writer.write(p)
    assert [p for _, p in iter_records(theirs)] == payloads
