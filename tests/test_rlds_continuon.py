"""The Continuon JSON layouts: directory, single .json, single .jsonl, round trips."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode, make_image_episode, png_bytes

from continuonbrain.rlds import RLDSError, read_episodes, scan_episodes, write_episodes


def assert_same_episode(a, b) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.observation_vector(), b.observation_vector())
    np.testing.assert_array_equal(a.action_vector(), b.action_vector())
    for col in ("reward", "discount", "is_first", "is_last", "is_terminal"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
    assert a.language_instruction == b.language_instruction
    assert a.step_metadata == b.step_metadata


def test_directory_round_trip(tmp_path: Path) -> None:
    eps = [make_episode(episode_id=f"ep{i}", n=5 + i) for i in range(3)]
    paths = write_episodes(eps, tmp_path / "out")
    assert [p.name for p in paths] == ["ep0", "ep1", "ep2"]
    assert (tmp_path / "out" / "ep0" / "metadata.json").is_file()
    assert (tmp_path / "out" / "ep0" / "steps" / "000000.jsonl").is_file()
    back = list(read_episodes(tmp_path / "out", on_error="raise"))
    assert [e.episode_id for e in back] == ["ep0", "ep1", "ep2"]
    for a, b in zip(eps, back, strict=True):
        assert_same_episode(a, b)
        assert b.metadata["robot_id"] == "test-bot"
        np.testing.assert_allclose(b.timestamp, a.timestamp)
    # Reading a single episode directory, or a steps file inside it, gives the same episode.
    one = list(read_episodes(tmp_path / "out" / "ep1"))
    assert [e.episode_id for e in one] == ["ep1"]
    via_chunk = list(read_episodes(tmp_path / "out" / "ep1" / "steps" / "000000.jsonl"))
    assert_same_episode(one[0], via_chunk[0])


def test_steps_view_is_rlds_shaped(tmp_path: Path) -> None:
    ep = make_episode(n=4)
    steps = list(ep.steps)
    assert [s.is_first for s in steps] == [True, False, False, False]
    assert [s.is_last for s in steps] == [False, False, False, True]
    assert steps[2].reward == 2.0
    assert steps[-1].language_instruction == "reach the target"
    np.testing.assert_allclose(steps[1].observation, [1.0, 1.1, 1.2, 1.3], rtol=1e-6)


def test_chunked_steps_are_concatenated_in_order(tmp_path: Path) -> None:
    write_episodes([make_episode(n=25)], tmp_path, steps_per_chunk=10)
    chunks = sorted(p.name for p in (tmp_path / "ep0" / "steps").iterdir())
    assert chunks == ["000000.jsonl", "000001.jsonl", "000002.jsonl"]
    (ep,) = read_episodes(tmp_path)
    assert len(ep) == 25
    np.testing.assert_array_equal(ep.reward, np.arange(25))


def test_single_json_file_and_inferred_flags(tmp_path: Path) -> None:
    doc = {
        "episode_metadata": {"episode_id": "from-app", "robot_model": "donkey"},
        "steps": [{"observation": [i, i], "action": [0.5]} for i in range(4)],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (ep,) = read_episodes(tmp_path / "a.json", on_error="raise")
    assert ep.episode_id == "from-app"
    assert ep.is_first.tolist() == [True, False, False, False]
    assert ep.is_last.tolist() == [False, False, False, True]
    assert ep.is_terminal.tolist() == [False, False, False, True]
    assert ep.discount.tolist() == [1.0] * 4


def test_single_jsonl_file_with_old_obs_key_and_nested_action(tmp_path: Path) -> None:
    lines = [json.dumps({"obs": [i, 2 * i], "action": {"command": [i / 10, 0.0]}}) for i in range(3)]
    (tmp_path / "old_log.jsonl").write_text("\n".join(lines) + "\n")
    (ep,) = read_episodes(tmp_path / "old_log.jsonl", action_key="action.command", on_error="raise")
    assert ep.episode_id == "old_log"
    np.testing.assert_allclose(ep.observation, [[0, 0], [1, 2], [2, 4]])
    np.testing.assert_allclose(ep.action, [[0, 0], [0.1, 0], [0.2, 0]], rtol=1e-6)
    # Without the key path, the action is a dict of named arrays.
    (ep2,) = read_episodes(tmp_path / "old_log.jsonl", on_error="raise")
    assert set(ep2.action) == {"command"}


def test_images_round_trip_as_blobs_and_decode_lazily(tmp_path: Path) -> None:
    ep = make_image_episode(n=3)
    write_episodes([ep], tmp_path)
    blobs = sorted((tmp_path / "img0" / "blobs").rglob("*.png"))
    assert len(blobs) == 3
    (back,) = read_episodes(tmp_path, on_error="raise")
    cam = back.observation["camera"]
    assert len(cam) == 3
    frame = cam[2].decode()
    assert frame.shape == (8, 6, 3) and frame[1, 1, 0] == 20
    np.testing.assert_allclose(back.action["steering"][:, 0], [0, 0.1, 0.2], rtol=1e-6)


def test_inline_base64_image(tmp_path: Path) -> None:
    b64 = base64.b64encode(png_bytes(value=7)).decode()
    doc = {"steps": [{"observation": {"cam": {"b64": b64, "format": "png"}, "v": [1.0]}, "action": [0.0]}] * 2}
    (tmp_path / "inline.json").write_text(json.dumps(doc))
    (ep,) = read_episodes(tmp_path / "inline.json", on_error="raise")
    assert ep.observation["cam"][0].decode()[2, 2, 0] == 7


def test_blob_paths_cannot_escape_the_episode(tmp_path: Path) -> None:
    doc = {"steps": [{"observation": {"cam": "../../etc/passwd"}, "action": [0.0]}]}
    (tmp_path / "evil.json").write_text(json.dumps(doc))
    (result,) = scan_episodes(tmp_path / "evil.json")
    assert result.error is not None and "leaves the episode directory" in str(result.error)
    assert result.error.field == "observation.cam"


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RLDSError, match="path does not exist") as info:
        list(read_episodes(tmp_path / "nope"))
    assert info.value.file == str(tmp_path / "nope")


def test_good_episodes_survive_a_bad_neighbour(episodes_dir: Path) -> None:
    (episodes_dir / "ep1" / "steps" / "000000.jsonl").write_text('{"observation": [1,2,3,4], "action": [1, 2]\n')
    seen: list[RLDSError] = []
    good = list(read_episodes(episodes_dir, on_error=seen.append))
    assert [e.episode_id for e in good] == ["ep0", "ep2"]
    assert len(seen) == 1 and seen[0].line == 1 and "malformed JSON" in seen[0].message
    with pytest.raises(RLDSError):
        list(read_episodes(episodes_dir, on_error="raise"))
