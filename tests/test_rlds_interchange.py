"""Data that moves between layouts and tools loses nothing and says what it did: layout
detection where two layouts match, splits through convert round trips, writers that never
overwrite an episode silently, printed counts equal to what is on disk, lazy images that are
arrays, one permission rule for written files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode, make_image_episode, run_cli

from continuonbrain.rlds import RLDSError, read_episodes, scan_episodes, tfds, write_episodes

# --- 1. layout detection ------------------------------------------------------------------


def test_tfds_version_dir_with_tfds_own_metadata_json_is_read_as_tfds(tmp_path: Path) -> None:
    # A GeneratorBasedBuilder with `metadata = tfds.core.MetadataDict(...)` writes the builder's
    # metadata as metadata.json beside dataset_info.json and features.json.
    tfds.write_tfds([make_episode(episode_id=f"e{i}") for i in range(3)], tmp_path, name="ds")
    version = tmp_path / "ds" / "1.0.0"
    (version / "metadata.json").write_text(json.dumps({"robot": "franka", "fps": 10}))
    for path in (version, tmp_path / "ds", tmp_path):
        assert [e.episode_id for e in read_episodes(path, on_error="raise")] == ["e0", "e1", "e2"]
    info = run_cli("rlds", "info", str(version), "--json")
    assert info.returncode == 0, info.stdout + info.stderr
    assert json.loads(info.stdout)["episodes"] == 3


def test_a_directory_matching_two_layouts_is_an_error_naming_both(tmp_path: Path) -> None:
    tfds.write_tfds([make_episode(episode_id="e0")], tmp_path / "data", name="ds")
    version = tmp_path / "data" / "ds" / "1.0.0"
    (version / "features.json").unlink()  # one TFDS marker left, plus shards ...
    (version / "metadata.json").write_text(json.dumps({"episode_id": "x"}))  # ... and a Continuon one
    write_episodes([make_episode(episode_id="good")], tmp_path / "data" / "episodes")
    results = list(scan_episodes(tmp_path / "data"))
    bad = [r for r in results if not r.ok]
    assert len(bad) == 1 and "matches two layouts" in str(bad[0].error)
    assert "TFDS" in str(bad[0].error) and "Continuon" in str(bad[0].error) and str(version) in str(bad[0].error)
    assert [r.episode.episode_id for r in results if r.ok] == ["good"]  # the episode beside it is still read


# --- 2. splits survive conversion; nothing is overwritten silently; counts are on disk -----


def split_dataset(root: Path, n_train: int = 12, n_test: int = 4) -> Path:
    """A TFDS dataset whose episode ids restart in every split, as TFDS builders number them."""
    tfds.write_tfds([make_episode(n=5 + i % 3, episode_id=str(i)) for i in range(n_train)], root, name="ds")
    tfds.write_tfds(
        [make_episode(n=4, obs_dim=4, episode_id=str(i), task="held-out") for i in range(n_test)],
        root,
        name="ds",
        split="test",
    )
    return root / "ds" / "1.0.0"


def by_split(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for ep in read_episodes(path, on_error="raise"):
        out.setdefault(ep.metadata["split"], []).append(ep)
    return out


def assert_same_episodes(got: list, want: list) -> None:
    assert [e.episode_id for e in got] == [e.episode_id for e in want]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.observation, w.observation) and np.array_equal(g.action, w.action)
        assert np.array_equal(g.reward, w.reward) and np.array_equal(g.timestamp, w.timestamp)
        assert g.step_metadata == w.step_metadata and g.metadata == w.metadata


def test_tfds_to_continuon_to_tfds_keeps_every_split(tmp_path: Path) -> None:
    source = split_dataset(tmp_path / "src")
    want = by_split(source)
    assert {k: len(v) for k, v in want.items()} == {"train": 12, "test": 4}

    proc = run_cli("rlds", "convert", str(source), str(tmp_path / "cont"), "--format", "continuon")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 16 episodes (test 4, train 12)" in proc.stdout
    on_disk = sorted(p.parent.relative_to(tmp_path / "cont") for p in (tmp_path / "cont").rglob("metadata.json"))
    assert len(on_disk) == 16  # the count printed is the count on disk: ids 0-3 exist in both splits
    assert {p.parts[0] for p in on_disk} == {"train", "test"}
    cont = by_split(tmp_path / "cont")
    for split in want:
        assert_same_episodes(sorted(cont[split], key=lambda e: int(e.episode_id)), want[split])
    assert [e.episode_id for e in read_episodes(tmp_path / "cont", split="test")] == ["0", "1", "2", "3"]

    proc = run_cli("rlds", "convert", str(tmp_path / "cont"), str(tmp_path / "back"), "--format", "tfds")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 16 episodes (test 4, train 12)" in proc.stdout
    (back,) = {p.parent for p in (tmp_path / "back").rglob("dataset_info.json")}
    info = json.loads((back / "dataset_info.json").read_text())
    assert {s["name"]: sum(map(int, s["shardLengths"])) for s in info["splits"]} == {"train": 12, "test": 4}
    again = by_split(back)
    for split in want:
        assert_same_episodes(sorted(again[split], key=lambda e: int(e.episode_id)), want[split])


def test_continuon_writer_keeps_both_when_a_name_is_taken_and_says_so(tmp_path: Path, caplog) -> None:
    first = write_episodes([make_episode(episode_id="a", n=5)], tmp_path)
    assert first.kept_both == [] and dict(first.episodes) == {"": 1}
    again = write_episodes([make_episode(episode_id="a", n=7), make_episode(episode_id="a", n=9)], tmp_path)
    assert [p.name for p in again] == ["a-1", "a-2"]
    assert again.kept_both == [(tmp_path / "a", tmp_path / "a-1"), (tmp_path / "a", tmp_path / "a-2")]
    assert "kept it and wrote the new episode" in caplog.text
    # Nothing was lost: every episode is on disk as written ...
    assert {p.name: len(next(read_episodes(p))) for p in tmp_path.iterdir()} == {"a": 5, "a-1": 7, "a-2": 9}
    # ... and a scan of the tree says that the copies repeat an id, naming both places.
    bad = {r.unit.name: str(r.error) for r in scan_episodes(tmp_path) if not r.ok}
    assert set(bad) == {"a-1", "a-2"} and all(
        "duplicate episode id" in e and str(tmp_path / "a") in e for e in bad.values()
    )
    # overwrite=True replaces what was there before the call, and says so.
    replaced = write_episodes([make_episode(episode_id="a", n=3)], tmp_path, overwrite=True)
    assert replaced.replaced == [str(tmp_path / "a")] and len(next(read_episodes(tmp_path / "a"))) == 3


def test_convert_into_a_taken_tfds_split_refuses_then_overwrites_when_asked(tmp_path: Path) -> None:
    source = split_dataset(tmp_path / "src", n_train=3, n_test=2)
    dst = tmp_path / "dst"
    assert run_cli("rlds", "convert", str(source), str(dst), "--format", "tfds").returncode == 0
    (version,) = {p.parent for p in dst.rglob("dataset_info.json")}
    before = {p.name: p.read_bytes() for p in version.iterdir()}
    proc = run_cli("rlds", "convert", str(source), str(dst), "--format", "tfds")
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert {p.name: p.read_bytes() for p in version.iterdir()} == before  # nothing touched, no partials left
    proc = run_cli("rlds", "convert", str(source), str(dst), "--format", "tfds", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "replaced (--overwrite): train" in proc.stderr and "wrote 5 episodes (test 2, train 3)" in proc.stdout
    assert {k: len(v) for k, v in by_split(version).items()} == {"train": 3, "test": 2}


def test_convert_into_a_continuon_dir_that_has_the_episodes_keeps_both(tmp_path: Path) -> None:
    write_episodes([make_episode(episode_id=f"e{i}") for i in range(2)], tmp_path / "src")
    assert (
        run_cli("rlds", "convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--format", "continuon").returncode
        == 0
    )
    proc = run_cli("rlds", "convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--format", "continuon")
    assert proc.returncode == 0 and proc.stderr.count("kept both:") == 2 and "wrote 2 episodes" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["e0", "e0-1", "e1", "e1-1"]


def test_sim_collect_prints_the_episodes_on_disk(tmp_path: Path) -> None:
    for _ in range(2):
        proc = run_cli("sim", "collect", "--env", "reach2d", "--episodes", "2", "--out", str(tmp_path), "--json")
        assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["episodes"] == 2 and len(summary["kept_both"]) == 2
    assert len(list(tmp_path.rglob("metadata.json"))) == 4


# --- 4. lazy images are the arrays they stand for ---------------------------------------------


def test_lazy_images_read_from_tfds_behave_as_uint8_arrays(tmp_path: Path) -> None:
    tfds.write_tfds([make_image_episode(n=3)], tmp_path)
    ep = next(read_episodes(tmp_path, on_error="raise"))
    image = ep.steps[1].observation["camera"]
    arr = np.asarray(image)
    assert arr.dtype == np.uint8 and arr.shape == (8, 6, 3) and arr.shape == image.shape and image.dtype == np.uint8
    assert np.array_equal(arr, image.decode()) and arr[0, 0].tolist() == [255, 0, 0] and arr[1, 1, 0] == 10
    assert np.asarray(image, np.float32).dtype == np.float32 and image.ndim == 3
    column = np.asarray(ep.observation["camera"])
    assert column.shape == (3, 8, 6, 3) and column.dtype == np.uint8
    assert np.stack([np.asarray(s.observation["camera"]) for s in ep.steps]).tolist() == column.tolist()


# --- 6. one permission rule; numbers stay numbers ------------------------------------------


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_follow_the_umask_and_the_token_stays_private(
    tmp_path: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    from continuonbrain.hope import HopeBrain, HopeConfig, save_component
    from continuonbrain.runtime.auth import load_or_create_token

    brain = HopeBrain.build(HopeConfig(fast={"d_model": 8, "d_state": 8}), ["fast_loop"])

    old = os.umask(umask)
    try:
        episodes = write_episodes([make_episode(episode_id="e0")], tmp_path / "cont")
        shards = write_episodes([make_episode(episode_id="e0")], tmp_path / "tf", format="tfds")
        weights = save_component(tmp_path / "model", "fast_loop", brain.fast_loop)
        token = tmp_path / "api_token"
        load_or_create_token(token)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(episodes[0]) == dir_mode and mode(episodes[0] / "steps") == dir_mode
    assert {mode(p) for p in episodes[0].rglob("*") if p.is_file()} == {file_mode}
    assert {mode(p) for p in shards} == {file_mode}  # shards, features.json, dataset_info.json
    assert mode(weights) == file_mode and mode(weights.parent / "config.json") == file_mode
    assert mode(token) == 0o600


def test_dart_executed_action_is_stored_as_numbers(tmp_path: Path) -> None:
    from continuonbrain.sim.collect import collect_to_dir

    collect_to_dir("reach2d", 1, tmp_path / "c", seed=0, dart_sigma=0.2)
    collect_to_dir("reach2d", 1, tmp_path / "t", seed=0, dart_sigma=0.2, format="tfds")
    line = json.loads(next((tmp_path / "c").rglob("000000.jsonl")).read_text().splitlines()[0])
    executed = line["step_metadata"]["executed_action"]
    assert isinstance(executed, list) and len(executed) == 2 and all(isinstance(x, float) for x in executed)
    (cont,), (tf,) = read_episodes(tmp_path / "c"), read_episodes(tmp_path / "t")
    assert cont.step_metadata == tf.step_metadata and cont.step_metadata[0]["executed_action"] == executed


def test_an_image_blob_that_is_a_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    write_episodes([make_image_episode(n=2)], tmp_path)
    (ep,) = read_episodes(tmp_path, validate=False)
    image = ep.observation["camera"][0]
    image.path.unlink()
    os.mkfifo(image.path)  # opening it for reading would block forever
    with pytest.raises(RLDSError, match="image blob cannot be read") as info:
        np.asarray(image)
    assert str(image.path) in str(info.value)
