"""The Donkeycar part inside a real ``donkeycar.vehicle.Vehicle`` loop: a drive2d camera part
feeds it frames (closed loop: the sim steps with the pilot's last outputs), a recorder part
writes down what reached ``pilot/angle`` and ``pilot/throttle`` every loop, and a promoter part
changes the model store mid-run. Brains are freshly initialised (what they drive is not the
point here; that they are served, swapped and refused exactly as BrainService does is), and
every recorded action is checked against the same brain replayed on the same frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_CAMERA_MODEL, wait_for

from continuonbrain.hope import HopeBrain, HopeConfig
from continuonbrain.integrations.donkeycar import SAFE_ACTION, ContinuonPilot
from continuonbrain.models.store import PromotionStore
from continuonbrain.sim.drive2d import Drive2DEnv

KEY = "cam/image_array"
SHAPE = (120, 160, 3)
#: Loops in which the camera has no frame yet (a Donkeycar camera's first loops).
WARMUP = 2


def require_vehicle() -> Any:
    """The real ``donkeycar.vehicle.Vehicle``; skipped without it, a failure under CI=true.
    ``import donkeycar`` raises the recursion limit for the whole process: it is put back."""
    limit = sys.getrecursionlimit()
    try:
        from donkeycar.vehicle import Vehicle
    except ImportError as err:
        problem = err
    else:
        return Vehicle
    finally:
        sys.setrecursionlimit(limit)
    why = f"donkeycar is not importable ({problem}); it is the donkey-test extra, which `make venv` installs"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def Vehicle() -> Any:
    return require_vehicle()


def camera_config(**extra: Any) -> HopeConfig:
    fields = {"obs_dim": 0, "image_keys": [KEY], "image_shapes": {KEY: list(SHAPE)}, **TINY_CAMERA_MODEL, **extra}
    return HopeConfig(**fields)


def save_brain(tmp: Path, cfg: HopeConfig, seed: int, *, nan: bool = False) -> Path:
    """A freshly initialised brain (``seed``) saved to its own directory (NaN in a Fast-loop weight)."""
    torch.manual_seed(seed)
    brain = HopeBrain.build(cfg)
    if nan:
        assert brain.fast_loop is not None
        with torch.no_grad():
            next(p for p in brain.fast_loop.parameters() if p.ndim == 2)[0, 0] = float("nan")
    work = tmp / f"brain-{seed}-{nan}"
    brain.save(work)
    return work


def promote(models: Path, work: Path) -> str:
    """``work`` as the candidate, then promoted to current (as ``models promote`` does)."""
    store = PromotionStore(models)
    files = sorted(work.iterdir())
    components = [f.stem for f in files if f.suffix == ".safetensors"]
    manifest = store.write_slot("candidate", files, components=components, kind="hope-seed", parent=None)
    store.promote({"passed": True, "reason": "test"})
    return manifest["version"]


class SimCamera:
    """A Donkeycar camera part on drive2d: ``run(angle, throttle)`` steps the car with the
    pilot's previous outputs and returns the frame it sees (None while "warming up")."""

    def __init__(self, seed: int = 3):
        self.env = Drive2DEnv()
        self.obs, _ = self.env.reset(seed=seed)
        self.loops = 0

    def run(self, angle: float | None, throttle: float | None) -> np.ndarray | None:
        self.loops += 1
        if self.loops <= WARMUP:
            return None
        if self.loops > WARMUP + 1:  # the first frame is the reset's
            action = np.array([angle or 0.0, throttle or 0.0], np.float32)
            self.obs, _, terminated, truncated, _ = self.env.step(action)
            if terminated or truncated:
                self.obs, _ = self.env.reset(seed=self.loops)
        return self.obs[KEY]


class Recorder:
    """What reached the vehicle's memory each loop, with the version the pilot acted with."""

    def __init__(self, pilot: ContinuonPilot):
        self.pilot = pilot
        self.rows: list[dict[str, Any]] = []

    def run(self, frame: np.ndarray | None, angle: float, throttle: float) -> None:
        self.rows.append(
            {
                "frame": None if frame is None else frame.copy(),
                "action": (angle, throttle),
                "version": self.pilot.model_version,
            }
        )


class AtLoop:
    """Calls ``action()`` in loop ``loop`` (a part, after the recorder)."""

    def __init__(self, loop: int, action: Callable[[], None]):
        self.loop, self.action, self.count = loop, action, 0

    def run(self) -> None:
        self.count += 1
        if self.count == self.loop:
            self.action()


def build_car(Vehicle: Any, pilot: ContinuonPilot, *extra: Any) -> tuple[Any, Recorder]:
    """A vehicle wired like Donkeycar's ``complete.py``: camera -> pilot -> (recorder, extras)."""
    car = Vehicle()
    recorder = Recorder(pilot)
    car.add(SimCamera(), inputs=["pilot/angle", "pilot/throttle"], outputs=[KEY])
    car.add(pilot, inputs=[KEY], outputs=["pilot/angle", "pilot/throttle"], run_condition="run_pilot")
    car.add(recorder, inputs=[KEY, "pilot/angle", "pilot/throttle"], outputs=[])
    for part in extra:
        car.add(part)
    car.mem["run_pilot"] = True
    return car, recorder


def replay(work: Path, frames: list[np.ndarray]) -> np.ndarray:
    """The actions a fresh load of the brain in ``work`` gives on ``frames`` (from a zero state),
    in Donkeycar units (clipped to [-1, 1])."""
    brain = HopeBrain.load(work)
    return np.clip(np.array([brain.act({KEY: f})[:2] for f in frames], np.float64), -1.0, 1.0)


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Any]:
    """A model store whose current is a camera brain (seed 0)."""
    models = tmp_path / "models"
    work = save_brain(tmp_path, camera_config(), seed=0)
    return {"models": models, "work": work, "version": promote(models, work), "tmp": tmp_path}


def test_drives_in_a_real_vehicle_loop_and_a_promotion_drives_from_the_next_frame(Vehicle: Any, store) -> None:
    tmp, models = store["tmp"], store["models"]
    new_work = save_brain(tmp, camera_config(), seed=1)
    pilot = ContinuonPilot(models, reset_after_s=60.0)  # the loop may stall on a loaded machine: no reset
    swap_loop = 12
    promoted: dict[str, str] = {}

    def promote_and_wait() -> None:  # blocks the loop until the service's watcher serves it
        promoted["version"] = promote(models, new_work)
        wait_for(lambda: pilot.served_version == promoted["version"], what="the watcher to serve the promotion")

    car, recorder = build_car(Vehicle, pilot, AtLoop(swap_loop, promote_and_wait))
    loops, _ = car.start(rate_hz=200, max_loop_count=25)

    assert loops == 25 and len(recorder.rows) == 25
    rows = recorder.rows
    assert all(r["frame"] is None and r["action"] == SAFE_ACTION for r in rows[:WARMUP])
    before, after = rows[WARMUP:swap_loop], rows[swap_loop:]
    assert {r["version"] for r in before} == {store["version"]}
    assert {r["version"] for r in after} == {promoted["version"]} != {store["version"]}
    for row in rows:
        assert all(type(v) is float and -1.0 <= v <= 1.0 for v in row["action"])
    # Each brain's actions are exactly its own on those frames; the new one starts from a zero state.
    np.testing.assert_allclose(
        [r["action"] for r in before], replay(store["work"], [r["frame"] for r in before]), atol=1e-6
    )
    np.testing.assert_allclose([r["action"] for r in after], replay(new_work, [r["frame"] for r in after]), atol=1e-6)
    assert not np.allclose([r["action"] for r in after], replay(store["work"], [r["frame"] for r in after]), atol=1e-4)
    status = pilot.status()
    assert status["driven"] == 25 - WARMUP and status["stopped"]["no_frame"] == WARMUP
    assert status["service"]["watching"] is False  # Vehicle.stop() called shutdown()


@pytest.mark.parametrize("damage", ["tampered file", "unloadable weights", "nan weights"])
def test_a_damaged_promotion_is_refused_and_the_last_good_brain_keeps_driving(Vehicle: Any, store, damage) -> None:
    tmp, models = store["tmp"], store["models"]
    # A damaged file is caught only if it is damaged before the service loads it: the watcher
    # is slowed to a crawl for that case and reload() is the check, as in test_brain_service.
    pilot = ContinuonPilot(models, reset_after_s=60.0, watch_interval_s=3600 if damage == "tampered file" else 0.02)
    bad: dict[str, str] = {}

    def promote_damaged() -> None:
        if damage == "nan weights":  # passes every checksum; the service's smoke act refuses it
            bad["version"] = promote(models, save_brain(tmp, camera_config(), seed=2, nan=True))
        elif damage == "unloadable weights":  # hashed into the manifest as they are: they fail to load
            work = save_brain(tmp, camera_config(), seed=2)
            (work / "fast_loop.safetensors").write_bytes(b"not a safetensors file")
            bad["version"] = promote(models, work)
        else:  # a byte changed after the manifest was written
            bad["version"] = promote(models, save_brain(tmp, camera_config(), seed=2))
            target = PromotionStore(models).slot("current").resolve() / "fast_loop.safetensors"
            data = bytearray(target.read_bytes())
            data[-1] ^= 0xFF
            target.write_bytes(bytes(data))
        pilot.reload()  # the operator's "check now" (the watcher would find it at its next poll too)
        refused = {r["version"] for r in pilot.status()["service"]["refused"]}
        assert bad["version"] in refused

    car, recorder = build_car(Vehicle, pilot, AtLoop(8, promote_damaged))
    loops, _ = car.start(rate_hz=200, max_loop_count=16)

    assert loops == 16
    driven = recorder.rows[WARMUP:]
    assert {r["version"] for r in driven} == {store["version"]}  # the good brain, before and after
    np.testing.assert_allclose(
        [r["action"] for r in driven], replay(store["work"], [r["frame"] for r in driven]), atol=1e-6
    )
    status = pilot.status()
    assert status["driven"] == 16 - WARMUP and status["service"]["version"] == store["version"]
    reason = next(r["reason"] for r in status["service"]["refused"] if r["version"] == bad["version"])
    expected = {"tampered file": "sha256", "unloadable weights": "SafetensorError", "nan weights": "not finite"}[damage]
    assert expected in reason, reason


def test_inputs_map_to_the_models_state_keys_and_mismatches_are_named(tmp_path: Path) -> None:
    models = tmp_path / "models"
    cfg = camera_config(obs_dim=1, state_keys=["enc/speed"])
    work = save_brain(tmp_path, cfg, seed=4)
    promote(models, work)
    frame = Drive2DEnv().reset(seed=1)[0][KEY]

    with pytest.raises(ValueError, match=r"input_keys \['imu/x'\].*\['enc/speed'\].*missing \['enc/speed'\]"):
        ContinuonPilot(models, input_keys=["imu/x"])
    with pytest.raises(ValueError, match=r"image_key 'front' is not an image key.*\['cam/image_array'\]"):
        ContinuonPilot(models, image_key="front")

    pilot = ContinuonPilot(models)  # input_keys default: the model's state keys
    try:
        angle, throttle = pilot.run(frame, 1.5)
        expected = np.clip(HopeBrain.load(work).act({KEY: frame, "enc/speed": np.float32(1.5)})[:2], -1, 1)
        np.testing.assert_allclose([angle, throttle], expected, atol=1e-6)
        assert pilot.run(frame, None) == SAFE_ACTION  # an odometer not ready yet
        assert (
            pilot.status()["last_stop"]["reason"] == "no_input"
            and "enc/speed" in pilot.status()["last_stop"]["message"]
        )

        assert pilot.run(frame) == SAFE_ACTION  # manage.py forgot the input: named, the car keeps running
        stop = pilot.status()["last_stop"]
        assert stop["reason"] == "bad_input" and "got 0 input(s)" in stop["message"] and "enc/speed" in stop["message"]

        assert pilot.run(frame[::2, ::2], 1.5) == SAFE_ACTION  # a camera set to 80x60
        stop = pilot.status()["last_stop"]
        assert "[60, 80, 3]" in stop["message"] and "[120, 160, 3]" in stop["message"] and KEY in stop["message"]

        assert pilot.run(frame.astype(np.float32) / 255.0, 1.5) == SAFE_ACTION  # a normalised frame, not pixels
        assert "whole numbers 0-255" in pilot.status()["last_stop"]["message"]
        assert pilot.run(frame, 1.5) != SAFE_ACTION
        assert pilot.status()["stopped"] == {
            "no_frame": 0,
            "no_input": 1,
            "no_model": 0,
            "bad_input": 3,
            "non_finite": 0,
            "error": 0,
        }
    finally:
        pilot.shutdown()


def test_nothing_served_yet_outputs_zeros_until_a_brain_is_promoted(tmp_path: Path) -> None:
    models = tmp_path / "models"
    pilot = ContinuonPilot(models)
    try:
        frame = Drive2DEnv().reset(seed=0)[0][KEY]
        assert pilot.run(frame) == SAFE_ACTION and pilot.model_version is None
        assert pilot.status()["stopped"]["no_model"] == 1
        version = promote(models, save_brain(tmp_path, camera_config(), seed=5))
        assert pilot.reload() == version
        assert pilot.run(frame) != SAFE_ACTION and pilot.model_version == version
    finally:
        pilot.shutdown()


def test_a_pause_in_pilot_mode_starts_the_recurrent_state_over(tmp_path: Path) -> None:
    """Donkeycar skips the part while ``run_pilot`` is false; after a longer pause than
    ``reset_after_s`` the next frame is acted on from a zero state."""
    models = tmp_path / "models"
    work = save_brain(tmp_path, camera_config(), seed=6)
    promote(models, work)
    env = Drive2DEnv()
    frames = [env.reset(seed=2)[0][KEY]] + [env.step(np.array([0.1, 0.5], np.float32))[0][KEY] for _ in range(6)]
    pilot = ContinuonPilot(models, reset_after_s=1e-9)  # every call is "after a pause"
    try:
        got = [pilot.run(f) for f in frames]
    finally:
        pilot.shutdown()
    fresh = [replay(work, [f])[0] for f in frames]
    np.testing.assert_allclose(got, fresh, atol=1e-6)


def test_the_part_imports_without_donkeycar() -> None:
    code = (
        "import sys; sys.modules['donkeycar'] = None\n"  # any import of donkeycar would fail
        "from continuonbrain.integrations.donkeycar import ContinuonPilot\n"
        "assert callable(ContinuonPilot.run) and callable(ContinuonPilot.shutdown)\n"
        "assert not [m for m in sys.modules if m.startswith('continuonbrain.trainer')]  # runtime, not training\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_example_drives_the_sim_car_through_a_vehicle(Vehicle: Any, store) -> None:
    """examples/donkeycar_drive2d.py: the README's lines in a vehicle, drive2d as the car."""
    example = Path(__file__).resolve().parents[1] / "examples" / "donkeycar_drive2d.py"
    cmd = [sys.executable, str(example), "--model-root", str(store["models"]), "--loops", "30", "--rate-hz", "200"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["driven"] == 30 and summary["stopped"] == {} and summary["versions"] == [store["version"]]
    assert summary["episodes"] >= 1 and 0.0 <= summary["mean_progress"] <= 1.0


class SeededEpisodes:
    """A camera-and-motors part playing drive2d episodes of the given seeds, one after the
    other, summing each one's reward; it stops the vehicle after the last."""

    def __init__(self, vehicle: Any, seeds: list[int], **env_kwargs: Any):
        self.vehicle, self.seeds = vehicle, list(seeds)
        self.env = Drive2DEnv(**env_kwargs)
        self.obs, _ = self.env.reset(seed=self.seeds[0])
        self.episodes: list[dict[str, Any]] = []
        self.length, self.ret, self.started = 0, 0.0, False

    def run(self, angle: float | None, throttle: float | None) -> np.ndarray | None:
        if self.started:  # the pilot's outputs of the previous loop act on the car now
            self.obs, reward, terminated, truncated, _ = self.env.step(np.array([angle, throttle], np.float32))
            self.length, self.ret = self.length + 1, self.ret + float(reward)
            if terminated or truncated:
                self.episodes.append(
                    {"seed": self.seeds[len(self.episodes)], "length": self.length, "return": self.ret}
                )
                if len(self.episodes) == len(self.seeds):
                    self.vehicle.on = False
                    return None
                self.obs, _ = self.env.reset(seed=self.seeds[len(self.episodes)])
                self.length, self.ret = 0, 0.0
        self.started = True
        return self.obs[KEY]


def test_in_a_vehicle_the_part_drives_exactly_as_eval_through_brain_service(Vehicle: Any, store) -> None:
    """The same brain, the same episodes: the part's closed loop in a real vehicle and
    ``eval``'s rollout through BrainService give the same lengths and returns. (A car has no
    episodes: each one is its own drive here, as ``eval`` starts each from a zero state.)"""
    from continuonbrain.runtime.served_policy import evaluate_served

    kwargs = {"max_steps": 40}
    scored = evaluate_served(
        store["models"], "drive2d", episodes=2, seed=7, baselines=False, env_kwargs=kwargs, record=False
    )
    driven = []
    for row in scored["per_episode"]:
        car = Vehicle()
        episode = SeededEpisodes(car, [row["seed"]], **kwargs)
        car.add(episode, inputs=["pilot/angle", "pilot/throttle"], outputs=[KEY])
        pilot = ContinuonPilot(store["models"], reset_after_s=60.0)  # no reset if the loop stalls on a busy machine
        car.add(pilot, inputs=[KEY], outputs=["pilot/angle", "pilot/throttle"])
        car.start(rate_hz=1000, max_loop_count=500)  # a bound; the part stops the car after the episode
        driven += episode.episodes

    assert [e["seed"] for e in driven] == [e["seed"] for e in scored["per_episode"]]
    assert [e["length"] for e in driven] == [e["length"] for e in scored["per_episode"]]
    np.testing.assert_allclose(
        [e["return"] for e in driven], [e["return"] for e in scored["per_episode"]], rtol=1e-6, atol=1e-6
    )
