"""The Robot Editor's frame scrubber (continuonbrain.runtime.episode_viewer) and live car
(continuonbrain.runtime.live_car through LiveSims), without a browser: real episodes on disk,
the real drive2d env."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_episode
from PIL import Image

from continuonbrain.rlds import Episode, write_episodes
from continuonbrain.runtime.episode_viewer import EpisodeNotFound, EpisodeUnreadable, EpisodeViewer
from continuonbrain.runtime.episodes import EpisodeCatalog
from continuonbrain.runtime.live_sim import LiveSims


def viewer_over(episodes: list[Episode], root: Path) -> EpisodeViewer:
    write_episodes(episodes, root)
    return EpisodeViewer(EpisodeCatalog(root))


def test_png_frames_are_sent_as_stored_with_each_steps_action_and_state(tmp_path: Path) -> None:
    viewer = viewer_over([make_image_episode(n=6, episode_id="cam")], tmp_path / "eps")
    (entry,) = viewer.catalog.listing()["episodes"]
    assert entry["image_keys"] == ["camera"]

    info = viewer.describe(entry["key"])
    assert info["steps"] == 6 and info["image_keys"] == {"camera": [8, 6, 3]} and info["action_dim"] == 2
    step = viewer.step(entry["key"], 4)
    assert step["action"] == pytest.approx([0.4, 0.5])  # the action as the trainer flattens it
    assert step["observation"] == {"state": [4.0, 1.0]}  # images are left to the frame route
    data, media = viewer.frame(entry["key"], 4, "camera")
    assert media == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    assert pixels[1, 1].tolist() == [40, 40, 40]  # make_image_episode paints step t with 10 * t
    assert viewer.frame(entry["key"], 2, "camera")[0] != data


def test_pixels_stored_as_numbers_are_encoded_as_png(tmp_path: Path) -> None:
    """An image written as JSON lists reads back as a float array: shown as a PNG of its values."""
    frames = np.stack([np.full((4, 5, 3), 20 * t, np.uint8) for t in range(3)])
    ep = Episode.from_steps(
        [{"observation": {"cam": frames[t], "state": [float(t)]}, "action": [0.1 * t]} for t in range(3)],
        {"episode_id": "raw"},
    )
    viewer = viewer_over([ep], tmp_path / "eps")
    key = viewer.catalog.listing()["episodes"][0]["key"]
    assert viewer.describe(key)["image_keys"] == {"cam": [4, 5, 3]}
    data, media = viewer.frame(key, 2, "cam")
    assert media == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), frames[2])
    assert viewer.step(key, 2)["observation"] == {"state": [2.0]}


def test_donkeycar_tub_episodes_are_scrubbed_like_any_other(tmp_path: Path) -> None:
    """A tub holds several episodes (one per session) in one directory: each is found by its
    key, its frames are the tub's JPEG files as stored, its step shows Donkeycar's record fields."""
    from continuonbrain.sim.collect import collect_to_dir

    collect_to_dir("drive2d", 2, tmp_path / "tub", format="tub", seed=0, dart_sigma=0.2, max_steps=20)
    viewer = EpisodeViewer(EpisodeCatalog(tmp_path / "tub"))
    entries = viewer.catalog.listing()["episodes"]
    assert len(entries) == 2 and all(e["image_keys"] == ["cam/image_array"] for e in entries)
    second = entries[1]["key"]
    step = viewer.step(second, 3)
    assert step["step_metadata"]["_index"] == 23 and step["step_metadata"]["user/mode"] == "user"
    data, media = viewer.frame(second, 3, "cam/image_array")
    assert media == "image/jpeg"
    assert data == (tmp_path / "tub" / "images" / "23_cam_image_array_.jpg").read_bytes()


def test_unknown_keys_steps_and_cameras_are_not_found_and_never_paths(tmp_path: Path) -> None:
    viewer = viewer_over([make_image_episode(n=3, episode_id="cam")], tmp_path / "eps")
    key = viewer.catalog.listing()["episodes"][0]["key"]
    for bad in ("../../etc/passwd", "/etc/passwd", str(tmp_path / "eps" / key), "cam/../cam"):
        with pytest.raises(EpisodeNotFound, match="no episode"):
            viewer.describe(bad)
    with pytest.raises(EpisodeNotFound, match="has 3 steps"):
        viewer.frame(key, 3, "camera")
    with pytest.raises(EpisodeNotFound, match="no image 'state'"):
        viewer.frame(key, 0, "state")


def test_a_broken_frame_names_the_file_and_a_moved_episode_is_gone(tmp_path: Path) -> None:
    root = tmp_path / "eps"
    viewer = viewer_over([make_image_episode(n=3, episode_id="cam")], root)
    key = viewer.catalog.listing()["episodes"][0]["key"]
    viewer.describe(key)  # opened and cached
    blobs = sorted(p for p in (root / key).rglob("*.png"))
    blobs[1].write_bytes(b"not a png")
    with pytest.raises(EpisodeUnreadable, match=r"does not decode.*\(step 1\)") as err:
        viewer.frame(key, 1, "camera")
    assert str(blobs[1]) in str(err.value) and "observation/camera" in str(err.value)
    shutil.move(str(root / key), str(tmp_path / "elsewhere"))  # quarantined, say
    with pytest.raises(EpisodeNotFound):
        viewer.frame(key, 0, "camera")


def test_the_live_car_restarts_on_its_track_when_it_leaves_it() -> None:
    """Straight ahead at full throttle leaves the (curved) track: the car is put back on the same track
    (a new episode, a restart counted, the brain's session to start over), and keeps going."""
    sims = LiveSims()
    state = sims.reset("drive2d", seed=7)
    assert state["track_seed"] == 7 and len(state["track"]["centreline"]) > 50 and "frame" in state
    sim_id = state["sim_id"]
    for _ in range(400):
        state = sims.step(sim_id, [0.0, 1.0])
        if state["off_track_restarts"]:
            break
    assert state["off_track_restarts"] == 1 and state["episode"] == 1 and state["last_end"] == "off_track"
    assert not state["off_track"] and state["speed"] == 0.0 and state["progress"] == 0.0 and state["track_seed"] == 7
    again = sims.reset("drive2d", seed=7)
    assert again["track"] == sims.reset("drive2d", seed=7)["track"]  # one seed, one track
    with pytest.raises(ValueError, match="only reach2d targets"):
        sims.reset("drive2d", seed=1, target=(0.1, 0.2))
