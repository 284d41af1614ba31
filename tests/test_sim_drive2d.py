"""drive2d, the camera car: API, tracks, camera, episode ends, the pure-pursuit expert, recording
episodes with camera frames, and ``eval`` of an image model through BrainService."""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from conftest import TINY_CAMERA_MODEL, main_cli, seed_config, tiny_components
from gymnasium.utils.env_checker import check_env

import continuonbrain.sim  # noqa: F401  (registers drive2d)
from continuonbrain.cli import main
from continuonbrain.rlds import read_episodes
from continuonbrain.rlds.episode import ImageColumn
from continuonbrain.sim import Drive2DEnv, DriveExpert, collect_episodes, collect_to_dir, has_expert, make_expert
from continuonbrain.sim.collect import episode_seed, rollout
from continuonbrain.sim.drive2d import IMAGE_KEY, make_track
from continuonbrain.sim.evaluate import evaluate, fit_problems, observation_spaces, space_dims

INFO_KEYS = {"progress", "cross_track_error", "off_track", "success"}


def frame(obs: dict) -> np.ndarray:
    return obs[IMAGE_KEY]


def test_registered_and_passes_the_env_checker() -> None:
    env = gymnasium.make("drive2d")
    assert env.spec is not None and env.spec.id == "drive2d"
    assert isinstance(env.unwrapped, Drive2DEnv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker complaint fails the test
        check_env(env.unwrapped)
        check_env(gymnasium.make("drive2d", image_height=30, image_width=40, render_mode="rgb_array").unwrapped)


def test_spaces_rate_and_configurable_image_size() -> None:
    env = gymnasium.make("drive2d").unwrapped
    assert env.control_hz == 20 and env.metadata["control_hz"] == 20 and env.dt == pytest.approx(0.05)
    assert isinstance(env.observation_space, gymnasium.spaces.Dict)
    assert list(env.observation_space.spaces) == [IMAGE_KEY] == ["cam/image_array"]
    cam = env.observation_space[IMAGE_KEY]
    assert cam.shape == (120, 160, 3) and cam.dtype == np.uint8 and cam.low.min() == 0 and cam.high.max() == 255
    assert env.action_space.shape == (2,) and env.action_space.dtype == np.float32
    assert list(env.action_space.low) == [-1, -1] and list(env.action_space.high) == [1, 1]
    assert env.action_names == ("angle", "throttle")
    obs, info = env.reset(seed=0)
    assert frame(obs).shape == (120, 160, 3) and frame(obs).dtype == np.uint8 and env.observation_space.contains(obs)
    assert set(info) >= INFO_KEYS

    small = gymnasium.make("drive2d", image_height=60, image_width=80)
    obs, _ = small.reset(seed=0)
    assert frame(obs).shape == (60, 80, 3) and small.observation_space[IMAGE_KEY].shape == (60, 80, 3)
    with pytest.raises(ValueError, match="image size"):
        Drive2DEnv(image_height=2)
    with pytest.raises(ValueError, match="finite"):
        env.step([math.nan, 0.0])


def run(env: gymnasium.Env, actions: np.ndarray, seed: int) -> list:
    obs, info = env.reset(seed=seed)
    out = [(frame(obs), info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        out.append((frame(obs), reward, terminated, truncated, info))
    return out


def test_deterministic_per_seed_and_different_across_seeds() -> None:
    actions = np.random.default_rng(0).uniform(-0.3, 1.0, (25, 2)).astype(np.float32)
    a = run(gymnasium.make("drive2d"), actions, seed=7)
    b = run(gymnasium.make("drive2d"), actions, seed=7)
    c = run(gymnasium.make("drive2d"), actions, seed=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]
    assert not np.array_equal(a[0][0], c[0][0])
    # The frames change as the car moves.
    assert not np.array_equal(a[0][0], a[-1][0])


def test_tracks_are_closed_smooth_and_differ_per_seed() -> None:
    tracks = [make_track(np.random.default_rng(s)) for s in range(12)]
    for t in tracks:
        steps = np.linalg.norm(np.diff(np.vstack([t.points, t.points[:1]]), axis=0), axis=1)
        # Closed: the last sample is one spacing from the first, like every other pair.
        assert steps == pytest.approx(np.full(len(t), t.spacing), rel=0.02)
        assert 15.0 < t.length < 35.0 and 0.35 <= t.half_width <= 0.55
        assert np.abs(t.curvature).max() <= 1 / 1.2 + 1e-9
        np.testing.assert_allclose(np.linalg.norm(t.tangents, axis=1), 1.0)
        # The heading turns by one full turn over a lap, the direction the track is driven.
        turn = np.sum(t.curvature) * t.spacing
        assert turn == pytest.approx(-2 * math.pi if t.clockwise else 2 * math.pi, abs=0.05)
    assert len({round(t.length, 3) for t in tracks}) == len(tracks)
    assert {t.clockwise for t in tracks} == {True, False}
    assert len({t.style["surface"] for t in tracks}) > 6 and len({t.half_width for t in tracks}) == len(tracks)

    # track_seed pins the track and its look; the start still follows the reset seed.
    env = Drive2DEnv(track_seed=3)
    env.reset(seed=0)
    first, pose = env.track.points.copy(), env.pose
    env.reset(seed=1)
    np.testing.assert_array_equal(env.track.points, first)
    assert env.pose != pose


def median_colour(img: np.ndarray) -> np.ndarray:
    return np.median(img.reshape(-1, 3), axis=0)


def test_the_camera_sees_the_lane_the_ground_and_the_sky() -> None:
    env = Drive2DEnv()

    def nearer(colour: np.ndarray, a: tuple, b: tuple) -> bool:
        return bool(np.abs(colour - a).max() < min(25, np.abs(colour - b).max()))

    for seed in range(4):
        env.reset(seed=seed)
        track, style = env.track, env.track.style
        s = 0.3 * track.length
        x, y = track.point_at(s)
        # On the centreline, looking along the track: the lower middle of the image is the lane.
        img = env.place(x, y, track.heading_at(s))[IMAGE_KEY]
        assert nearer(median_colour(img[-30:, 40:120]), style["surface"], style["ground"]), seed
        assert np.abs(img[0].astype(int) - style["sky_top"]).max() <= 1  # sky above the horizon
        # 3 m outside the loop, looking away from it: ground only.
        p = track.points[int(s / track.spacing)]
        out = (p - track.points.mean(axis=0)) / np.linalg.norm(p - track.points.mean(axis=0))
        gx, gy = p + out * (track.half_width + 3.0)
        img = env.place(gx, gy, math.atan2(out[1], out[0]))[IMAGE_KEY]
        assert nearer(median_colour(img[-30:]), style["ground"], style["surface"]), seed
    # Turning changes the view.
    env.place(x, y, track.heading_at(s))
    before = env.render_frame()
    env.yaw += 0.3
    assert not np.array_equal(before, env.render_frame())


def test_info_conventions_and_how_episodes_end() -> None:
    env = Drive2DEnv(max_steps=30)
    _, info = env.reset(seed=2)
    track = env.track
    assert info["progress"] == 0.0 and not info["off_track"] and not info["success"]
    # Standing still (negative throttle brakes, never reverses): truncated, no progress.
    for _ in range(30):
        _, reward, terminated, truncated, info = env.step([0.0, -1.0])
    assert truncated and not terminated and info["speed"] == 0.0 and info["progress"] == pytest.approx(0.0)
    assert reward == pytest.approx(0.0)
    # A positive angle steers right (clockwise), a negative one left.
    for angle, sign in ((1.0, -1), (-1.0, 1)):
        env.reset(seed=2)
        yaw0 = env.yaw
        for _ in range(5):
            env.step([angle, 0.5])
        assert sign * math.remainder(env.yaw - yaw0, 2 * math.pi) > 0.05
    # cross_track_error is positive to the left of the centreline.
    env.reset(seed=2)
    s = env.arc_length
    x, y = track.point_at(s)
    i = int(s / track.spacing)
    env.place(x + 0.2 * track.normals[i, 0], y + 0.2 * track.normals[i, 1], track.heading_at(s))
    _, _, _, _, info = env.step([0.0, 0.0])
    assert info["cross_track_error"] == pytest.approx(0.2, abs=0.01) and not info["off_track"]
    # Driving straight on leaves the track; off it for more than max_off_track_steps ends the episode.
    env = Drive2DEnv(max_off_track_steps=5)
    env.reset(seed=2)
    edge = 0.9 * track.half_width
    env.place(x + edge * track.normals[i, 0], y + edge * track.normals[i, 1], track.heading_at(s) + 1.2)  # to the left
    off_steps, terminated = 0, False
    for _ in range(200):
        _, reward, terminated, truncated, info = env.step([0.0, 0.6])
        off_steps = off_steps + 1 if info["off_track"] else 0
        if terminated or truncated:
            break
    assert terminated and not info["success"] and off_steps == 6 and reward < 0


def test_expert_completes_laps_and_random_does_not() -> None:
    assert has_expert("drive2d") and isinstance(make_expert("drive2d"), DriveExpert)
    with pytest.raises(RuntimeError, match="not bound"):
        make_expert("drive2d").act(None)
    env = gymnasium.make("drive2d")
    assert isinstance(make_expert(env), DriveExpert)
    for i in range(5):
        for sigma in (0.0, 0.3):
            stats = rollout(env, "expert", episode_seed(0, i), dart_sigma=sigma)
            assert stats["success"] and stats["terminated"] and not stats["truncated"], (i, sigma, stats)
            assert env.unwrapped.progress >= 1.0 and stats["length"] < 400
            assert stats["return"] == pytest.approx(100.0, abs=1.5)  # a lap is worth 100
            assert stats["tracking_error"] < 0.12
    stats = rollout(env, "random", episode_seed(0, 0))
    assert not stats["success"] and stats["terminated"]  # it leaves the track


def test_evaluate_scores_laps_and_the_mean_cross_track_error() -> None:
    result = evaluate("drive2d", "expert", episodes=2, seed=1)
    assert result["success_rate"] == 1.0 and result["distance_metric"] == "tracking_error"
    assert 0 < result["mean_final_distance"] < 0.1 and result["mean_return"] > 99
    random = result["baselines"]["random"]
    assert random["success_rate"] == 0.0 and random["mean_return"] < result["mean_return"]
    assert [r["seed"] for r in random["per_episode"]] == [r["seed"] for r in result["per_episode"]]


def test_collect_writes_episodes_with_jpeg_frames_at_20_hz(tmp_path: Path, capsys) -> None:
    summary = collect_to_dir("drive2d", 2, tmp_path / "eps", seed=3, dart_sigma=0.2)
    assert summary["episodes"] == 2 and summary["success_rate"] == 1.0 and summary["control_role"] == "expert"
    eps = list(read_episodes(tmp_path / "eps"))
    assert len(eps) == 2
    for ep in eps:
        n = len(ep)
        assert set(ep.observation) == {IMAGE_KEY} and isinstance(ep.observation[IMAGE_KEY], ImageColumn)
        frames = ep.observation[IMAGE_KEY].decode()
        assert frames.shape == (n, 120, 160, 3) and frames.dtype == np.uint8
        assert ep.observation[IMAGE_KEY][0].format == "jpg"  # read back from a .jpg blob
        assert ep.action.shape == (n, 2) and (np.abs(ep.action) <= 1).all()
        np.testing.assert_allclose(ep.timestamp, np.arange(n) * 0.05, atol=1e-9)
        assert ep.control_hz == pytest.approx(20.0)
        assert ep.is_terminal[-1] and not ep.is_terminal[:-1].any()
        meta = ep.metadata
        assert meta["control_hz"] == 20 and meta["robot_model"] == "continuon-sim-car"
        caps = meta["capabilities"]
        assert caps["action_space"]["names"] == ["angle", "throttle"]
        assert caps["observation_space"] == {
            "type": "dict",
            "spaces": {
                IMAGE_KEY: {
                    "type": "box",
                    "shape": [120, 160, 3],
                    "dtype": "uint8",
                    "low": 0.0,
                    "high": 255.0,
                    "image": True,
                },
            },
        }
        assert caps["observation_names"] == [IMAGE_KEY]
        assert "executed_action" in ep.steps[0].step_metadata
    blobs = sorted((Path(summary["paths"][0]) / "blobs").rglob("*.jpg"))
    assert len(blobs) == len(eps[0])
    # The recorded frame is the rendered one (up to JPEG), and the recorded action the expert's.
    env = gymnasium.make("drive2d")
    obs, _ = env.reset(seed=eps[0].metadata["episode_seed"])
    assert np.abs(eps[0].observation[IMAGE_KEY][0].decode().astype(int) - frame(obs)).mean() < 4
    np.testing.assert_allclose(eps[0].action[0], make_expert(env).act(obs), atol=1e-6)

    png = next(collect_episodes("drive2d", 1, seed=0, max_steps=3, image_format="png"))
    assert png.observation[IMAGE_KEY][0].format == "png"
    code = main(["sim", "collect", "--env", "drive2d", "--episodes", "1", "--out", str(tmp_path / "cli"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["episodes"] == 1 and out["success_rate"] == 1.0


def test_fit_problems_name_the_keys_and_shapes() -> None:
    assert space_dims("drive2d") == (0, 2)
    assert observation_spaces("drive2d") == {IMAGE_KEY: {"kind": "image", "shape": [120, 160, 3], "dtype": "uint8"}}
    assert observation_spaces("reach2d") is None
    car = {"observation_dim": 0, "action_dim": 2, "image_keys": [IMAGE_KEY], "image_shapes": {IMAGE_KEY: [120, 160, 3]}}
    assert fit_problems(car, "drive2d") == []
    small = fit_problems(car, "drive2d", {"image_height": 60, "image_width": 80})
    assert small == ["image 'cam/image_array': the model takes [120, 160, 3], the env gives [60, 80, 3]"]
    other = {**car, "image_keys": ["front"], "image_shapes": {"front": [120, 160, 3]}}
    (missing, extra) = fit_problems(other, "drive2d")
    assert "'front'" in missing and "[120, 160, 3]" in missing
    assert "'cam/image_array'" in extra and "uint8 [120, 160, 3]" in extra
    (vector,) = fit_problems({"observation_dim": 10, "action_dim": 2}, "drive2d")
    assert "a vector of 10 numbers" in vector and "'cam/image_array' (an image uint8 [120, 160, 3])" in vector
    (dict_on_vector,) = fit_problems(car, "reach2d")
    assert "dict observations" in dict_on_vector and "a vector of 10" in dict_on_vector
    assert fit_problems({**car, "action_dim": 1}, "drive2d") == [
        "the model gives actions of 1 numbers, the env takes 2"
    ]


# --- eval of an image model through BrainService --------------------------------------------

VARIANTS = '''
import gymnasium

from continuonbrain.sim.drive2d import Drive2DEnv


class FrontCamera(gymnasium.ObservationWrapper):
    """drive2d with its camera under another key."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = gymnasium.spaces.Dict({"front": env.observation_space["cam/image_array"]})

    def observation(self, obs):
        return {"front": obs["cam/image_array"]}


def front_camera_car(**kwargs):
    return FrontCamera(Drive2DEnv(**kwargs))


for env_id, entry_point, kwargs in (
    ("ShortCar-v0", Drive2DEnv, {"max_steps": 40}),
    ("SmallCar-v0", Drive2DEnv, {"image_height": 60, "image_width": 80}),
    ("FrontCamCar-v0", front_camera_car, {}),
):
    if env_id not in gymnasium.registry:
        gymnasium.register(env_id, entry_point=entry_point, kwargs=kwargs)
'''


@pytest.fixture(scope="module")
def car_model(tmp_path_factory) -> Path:
    """A tiny HOPE seed trained for a few steps on drive2d camera episodes (plumbing, not
    driving quality): image key ``cam/image_array`` only, no state vector."""
    tmp = tmp_path_factory.mktemp("car")
    collect_to_dir("drive2d", 3, tmp / "episodes", seed=0, dart_sigma=0.2, max_steps=60)
    path = seed_config(
        tmp,
        tmp / "episodes",
        name="car.json",
        model=TINY_CAMERA_MODEL,
        components=tiny_components(3, batch=(8, 2, 8), shuffle_buffer=64),
        normalizer_episodes=3,
        image_keys=[IMAGE_KEY],
    )
    assert main(["train", "--config", str(path), "--json"]) == 0
    hope = json.loads((tmp / "models" / "candidate" / "config.json").read_text())
    assert hope["image_keys"] == [IMAGE_KEY] and hope["image_shapes"] == {IMAGE_KEY: [120, 160, 3]}
    assert hope["obs_dim"] == 0 and hope["action_dim"] == 2 and hope["control_hz"] == pytest.approx(20.0)
    return tmp / "models"


@pytest.fixture
def variants(tmp_path: Path, monkeypatch) -> str:
    """A module registering drive2d variants, importable as ``car_variants`` (for ``module:EnvId``)."""
    (tmp_path / "car_variants.py").write_text(textwrap.dedent(VARIANTS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "car_variants"


def test_eval_drives_an_image_model_through_brain_service(car_model: Path, capsys) -> None:
    capsys.readouterr()
    args = ["eval", "--model-root", str(car_model), "--slot", "candidate", "--episodes", "1"]
    code, out, err = main_cli(capsys, *args, "--env", "drive2d", "--json")
    assert code == 0, err
    result = json.loads(out)
    manifest = json.loads((car_model / "candidate" / "manifest.json").read_text())
    assert result["env"] == "drive2d" and result["model_versions"] == [manifest["version"]]
    assert result["distance_metric"] == "tracking_error" and result["success_rate"] in (0.0, 1.0)
    (row,) = result["per_episode"]
    assert row["length"] >= 1 and math.isfinite(row["return"])
    assert result["baselines"]["expert"]["success_rate"] == 1.0
    assert result["baselines"]["random"]["success_rate"] == 0.0
    code, out, err = main_cli(capsys, *args, "--env", "drive2d")
    assert code == 0 and "through BrainService.act" in out and "tracking error" in out


def test_eval_takes_module_env_ids_and_names_mismatched_keys_and_shapes(car_model: Path, variants: str, capsys) -> None:
    capsys.readouterr()
    args = ["eval", "--model-root", str(car_model), "--slot", "candidate", "--episodes", "1", "--json"]
    code, out, err = main_cli(capsys, *args, "--env", f"{variants}:ShortCar-v0")
    assert code == 0, err
    result = json.loads(out)
    assert result["env"] == f"{variants}:ShortCar-v0" and result["per_episode"][0]["length"] <= 40

    code, out, err = main_cli(capsys, *args, "--env", f"{variants}:FrontCamCar-v0")
    assert code == 2 and out == ""
    assert "does not fit env" in err and "'front'" in err and "'cam/image_array'" in err and "[120, 160, 3]" in err

    code, out, err = main_cli(capsys, *args, "--env", f"{variants}:SmallCar-v0")
    assert code == 2 and out == ""
    assert "image 'cam/image_array': the model takes [120, 160, 3], the env gives [60, 80, 3]" in err

    code, out, err = main_cli(capsys, *args, "--env", "no_such_module_for_cars:Car-v0")
    assert code == 2 and out == "" and "no_such_module_for_cars" in err
