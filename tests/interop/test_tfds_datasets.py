"""Whole multi-split TFDS datasets, checked against the real tensorflow_datasets.

Runs in the side environment ``.venv-tfds`` (``make interop-venvs test-interop``); without
``tensorflow_datasets`` it is skipped, and under ``CI=true`` it fails.

* A dataset written by a real ``tfds.core.GeneratorBasedBuilder`` the way RLDS datasets are
  built (TFDS's own ``metadata.json`` from a ``MetadataDict`` in the version directory,
  three splits of two shards each, RGB and one-channel PNG images, text in the steps and in
  the episode metadata, nested episode metadata) reads with our reader, whole and split by split, with exactly the
  values TFDS gives; ``rlds info`` and ``rlds validate`` count it right.
* Our writer's output of a multi-split dataset (``write_tfds`` once per split into one
  directory) loads in TFDS with every split intact, also after one split is rewritten.
* Real TFDS -> ``rlds convert --format continuon`` -> ``rlds convert --format tfds`` ->
  real TFDS: every split comes back with its episodes and their values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_interop

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tfds_lib = require_interop("tensorflow_datasets", ".venv-tfds")
tf = require_interop("tensorflow", ".venv-tfds")

from test_tfds import rich_episode  # noqa: E402
from test_tfds_compat import assert_tfds_equals, stack, tfds_episodes  # noqa: E402

from continuonbrain.rlds import Episode, ImageColumn, read_episodes  # noqa: E402
from continuonbrain.rlds import tfds as our_tfds  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

#: Episodes per split of the probe dataset; every split is written in SHARDS shards.
SPLITS = {"train": 5, "test": 3, "val": 2}
SHARDS = 2
H, W = 12, 10


def probe_episode(split: str, e: int) -> dict[str, Any]:
    """Episode ``e`` of ``split``: its values follow from (split, e), so each is distinct."""
    rng = np.random.default_rng([len(split), ord(split[0]), e])
    n = 3 + (e + len(split)) % 4
    steps = []
    for t in range(n):
        steps.append(
            {
                "observation": {
                    "image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                    "depth": rng.integers(0, 256, (H, W, 1), dtype=np.uint8),
                    "state": rng.standard_normal(5).astype(np.float32),
                },
                "action": rng.uniform(-1, 1, 3).astype(np.float32),
                "reward": np.float32(t == n - 1),
                "discount": np.float32(0.99),
                "is_first": t == 0,
                "is_last": t == n - 1,
                "is_terminal": t == n - 1 and e % 2 == 0,
                "language_instruction": f"put the ü-block {e} in the {split} bin" if t % 3 else "",
            }
        )
    meta = {
        "file_path": f"/raw/{split}/episode_{e:03d}.h5",
        "operator": ["ana", "bo"][e % 2],
        "episode_index": e,
        "success": e % 2 == 0,
        "robot": {"name": "probe-arm", "serial": 1000 + e, "gains": np.array([0.1, e / 3], np.float32)},
    }
    return {"steps": steps, "episode_metadata": meta}


class RobotProbe(tfds_lib.core.GeneratorBasedBuilder, skip_registration=True):
    """An RLDS dataset written the way TFDS dataset builders write them."""

    VERSION = tfds_lib.core.Version("2.1.0")
    RELEASE_NOTES = {"2.1.0": "Three splits, a depth camera."}  # noqa: RUF012 (TFDS's own class attribute)

    def _info(self):
        f = tfds_lib.features
        return tfds_lib.core.DatasetInfo(
            builder=self,
            description="A probe arm: RGB and depth cameras, joint states, text instructions.",
            features=f.FeaturesDict(
                {
                    "steps": f.Dataset(
                        {
                            "observation": f.FeaturesDict(
                                {
                                    "image": f.Image(shape=(H, W, 3), encoding_format="png", doc="front camera"),
                                    "depth": f.Image(shape=(H, W, 1), encoding_format="png", doc="depth camera"),
                                    "state": f.Tensor(shape=(5,), dtype=np.float32, doc="joint angles"),
                                }
                            ),
                            "action": f.Tensor(shape=(3,), dtype=np.float32),
                            "reward": f.Scalar(dtype=np.float32),
                            "discount": f.Scalar(dtype=np.float32),
                            "is_first": f.Scalar(dtype=np.bool_),
                            "is_last": f.Scalar(dtype=np.bool_),
                            "is_terminal": f.Scalar(dtype=np.bool_),
                            "language_instruction": f.Text(doc="what the operator asked for"),
                        }
                    ),
                    "episode_metadata": f.FeaturesDict(
                        {
                            "file_path": f.Text(doc="the raw recording"),
                            "operator": f.Text(),
                            "episode_index": f.Scalar(dtype=np.int64),
                            "success": f.Scalar(dtype=np.bool_),
                            "robot": f.FeaturesDict(
                                {
                                    "name": f.Text(),
                                    "serial": f.Scalar(dtype=np.int64),
                                    "gains": f.Tensor(shape=(2,), dtype=np.float32),
                                }
                            ),
                        }
                    ),
                }
            ),
            metadata=tfds_lib.core.MetadataDict(robot="probe-arm", control_hz=10, cameras=["front", "depth"]),
            homepage="https://example.org/robot-probe",
            citation="@misc{robot_probe}",
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in SPLITS.items()}

    def _generate_examples(self, split: str, n: int):
        for e in range(n):
            yield f"{split}-{e}", probe_episode(split, e)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """The probe dataset built by TFDS; returns its version directory."""
    data_dir = tmp_path_factory.mktemp("tfds-probe")
    builder = RobotProbe(data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds_lib.download.DownloadConfig(num_shards=SHARDS))
    return Path(builder.data_dir)


def by_file_path(episodes: list[dict]) -> dict[str, dict]:
    out = {e["episode_metadata"]["file_path"].decode(): e for e in episodes}
    assert len(out) == len(episodes)
    return out


def assert_reads_as_tfds(theirs: dict, ours: Episode, split: str) -> None:
    """Our Episode holds exactly the values TFDS gives for the same episode."""
    steps = list(theirs["steps"])
    assert len(ours) == len(steps)
    assert set(ours.observation) == {"image", "depth", "state"}
    for name in ("image", "depth"):
        want = stack(steps, "observation", name)
        col = ours.observation[name]
        assert isinstance(col, ImageColumn), name
        got = col.decode()
        assert got.dtype == want.dtype == np.uint8 and got.shape == want.shape, (name, got.shape, want.shape)
        assert np.array_equal(got, want), name
    for name, got in (("state", ours.observation["state"]), ("action", ours.action)):
        want = stack(steps, *(("observation", name) if name == "state" else (name,)))
        assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want), name
    for name in ("reward", "discount", "is_first", "is_last", "is_terminal"):
        want, got = stack(steps, name), getattr(ours, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    # An empty Text is "no instruction" (None), as the reader documents.
    assert ours.language_instruction == [s["language_instruction"].decode() or None for s in steps]
    meta = theirs["episode_metadata"]
    assert ours.metadata == {
        "file_path": meta["file_path"].decode(),
        "operator": meta["operator"].decode(),
        "episode_index": int(meta["episode_index"]),
        "success": bool(meta["success"]),
        "robot": {  # nested metadata stays nested; arrays become lists of the same numbers
            "name": meta["robot"]["name"].decode(),
            "serial": int(meta["robot"]["serial"]),
            "gains": meta["robot"]["gains"].tolist(),
        },
        "episode_id": ours.metadata["episode_id"],  # not in the data: "<shard>#<record>"
        "split": split,
    }


def test_tfds_wrote_what_we_claim_to_read(probe: Path) -> None:
    """The probe really has TFDS's own metadata.json and several shards per split."""
    assert json.loads((probe / "metadata.json").read_text())["robot"] == "probe-arm"
    builder = tfds_lib.builder_from_directory(str(probe))
    assert builder.info.metadata["cameras"] == ["front", "depth"]
    for split, n in SPLITS.items():
        assert builder.info.splits[split].num_examples == n
        assert builder.info.splits[split].num_shards == SHARDS
        assert len(list(probe.glob(f"robot_probe-{split}.tfrecord-*-of-{SHARDS:05d}"))) == SHARDS


def test_our_reader_reads_a_multi_split_multi_shard_builder_exactly(probe: Path) -> None:
    everything = list(read_episodes(probe, on_error="raise"))
    assert len(everything) == sum(SPLITS.values())
    assert {ep.metadata["split"] for ep in everything} == set(SPLITS)
    # From the data dir above (TFDS's downloads/ folder beside the dataset) as well.
    assert len(list(read_episodes(probe.parent.parent, on_error="raise"))) == len(everything)
    for split, n in SPLITS.items():
        theirs = by_file_path(tfds_episodes(probe, split))
        ours = list(read_episodes(probe, split=split, on_error="raise"))
        assert len(theirs) == len(ours) == n, split
        assert {ep.metadata["file_path"] for ep in ours} == set(theirs)
        for ep in ours:
            assert_reads_as_tfds(theirs[ep.metadata["file_path"]], ep, split)
            assert ep.source is not None and f"robot_probe-{split}.tfrecord-" in ep.source


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "continuonbrain", *args], capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_rlds_info_and_validate_count_the_builders_dataset(probe: Path) -> None:
    total_steps = {split: sum(len(probe_episode(split, e)["steps"]) for e in range(n)) for split, n in SPLITS.items()}
    proc = cli("rlds", "info", str(probe), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads(proc.stdout)
    assert info["episodes"] == sum(SPLITS.values()) and info["episodes_bad"] == 0, info["errors"]
    assert info["steps"] == sum(total_steps.values())
    assert info["language_instructions"] == sum(SPLITS.values())
    assert info["observation"]["image"] == {"type": "image", "shape": [H, W, 3], "dtype": "uint8"}
    for split, n in SPLITS.items():
        proc = cli("rlds", "info", str(probe), "--split", split, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        info = json.loads(proc.stdout)
        assert (info["episodes"], info["steps"]) == (n, total_steps[split]), split

    proc = cli("rlds", "validate", str(probe), "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["episodes_bad"] == 0 and report["errors"] == [], report["errors"]
    assert report["episodes_ok"] == sum(SPLITS.values()) and report["steps_ok"] == sum(total_steps.values())


# --- our writer -> real TFDS ----------------------------------------------------------------


def test_our_multi_split_dataset_loads_in_tfds_with_every_split_intact(tmp_path: Path) -> None:
    splits = {
        "train": [rich_episode(3 + i, f"train{i}") for i in range(5)],
        "validation": [rich_episode(4, f"val{i}") for i in range(2)],
        "test": [rich_episode(2 + i, f"test{i}") for i in range(3)],
    }
    for split, episodes in splits.items():
        our_tfds.write_tfds(episodes, tmp_path, name="multi", split=split, episodes_per_shard=2)
    root = tmp_path / "multi" / "1.0.0"

    def check(expected: dict[str, list[Episode]]) -> None:
        builder = tfds_lib.builder_from_directory(str(root))
        assert set(builder.info.splits) == set(expected)
        for split, episodes in expected.items():
            info = builder.info.splits[split]
            assert info.num_examples == len(episodes) and info.num_shards == (len(episodes) + 1) // 2, split
            loaded = {e["episode_metadata"]["episode_id"].decode(): e for e in tfds_episodes(root, split)}
            assert sorted(loaded) == sorted(ep.episode_id for ep in episodes), split
            for ep in episodes:
                assert_tfds_equals(loaded[ep.episode_id], ep)
        # The splits also load together, as TFDS split arithmetic.
        everything = builder.as_dataset(split="+".join(expected))
        assert sum(1 for _ in everything) == sum(len(v) for v in expected.values())

    check(splits)
    # Rewriting one split (explicitly) replaces only that split; the others stay as they were.
    splits["train"] = [rich_episode(5, "train-again")]
    our_tfds.write_tfds(splits["train"], tmp_path, name="multi", split="train", episodes_per_shard=2, overwrite=True)
    check(splits)


# --- real TFDS -> convert -> convert -> real TFDS ------------------------------------------


def test_convert_round_trip_keeps_every_split(probe: Path, tmp_path: Path) -> None:
    continuon, back = tmp_path / "continuon", tmp_path / "back"
    proc = cli("rlds", "convert", str(probe), str(continuon), "--format", "continuon")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for split, n in SPLITS.items():  # the Continuon copy knows each episode's split
        assert len(list(read_episodes(continuon, split=split, on_error="raise"))) == n, split
    proc = cli("rlds", "convert", str(continuon), str(back), "--format", "tfds")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (root,) = {p.parent for p in back.rglob("dataset_info.json")}
    builder = tfds_lib.builder_from_directory(str(root))
    assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == SPLITS

    for split in SPLITS:
        original = by_file_path(tfds_episodes(probe, split))
        final = {}
        for e in tfds_episodes(root, split):
            meta = json.loads(e["episode_metadata"]["metadata_json"])
            final[meta["file_path"]] = (e, meta)
        assert sorted(final) == sorted(original), split
        for key, theirs in original.items():
            got, meta = final[key]
            want_steps, got_steps = list(theirs["steps"]), list(got["steps"])
            assert len(got_steps) == len(want_steps), key
            for path in (
                ("observation", "image"),
                ("observation", "depth"),
                ("observation", "state"),
                ("action",),
                ("reward",),
                ("discount",),
                ("is_first",),
                ("is_last",),
                ("is_terminal",),
                ("language_instruction",),
            ):
                want, have = stack(want_steps, *path), stack(got_steps, *path)
                assert have.dtype == want.dtype and have.shape == want.shape, (key, path, have.shape, want.shape)
                assert np.array_equal(have, want), (key, path)
            m = theirs["episode_metadata"]
            assert meta["operator"] == m["operator"].decode() and meta["episode_index"] == int(m["episode_index"])
            assert meta["success"] == bool(m["success"]) and meta.get("split", split) == split
            assert meta["robot"] == {
                "name": "probe-arm",
                "serial": int(m["robot"]["serial"]),
                "gains": m["robot"]["gains"].tolist(),
            }
