"""Scheduler gating: each gate's reason, gate order, the new-data watermark and the Pi 5 sensor readers.

Sensors are faked with tmp dirs laid out like /sys and a tmp robot state file; nothing here
sleeps or asserts on timing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from continuonbrain.robot.gates import GATE_ORDER, GateDecision, GatingConfig, check_gates, evaluate_gates
from continuonbrain.robot.sensors import (
    GatingSensors,
    parse_battery_level,
    read_battery_level,
    read_robot_state,
    read_sensors,
)
from continuonbrain.robot.watermark import EpisodeWatermark
from continuonbrain.trainer.scheduler import run_if_idle

GOOD = {"robot_idle": True, "battery_level": 0.8, "cpu_temp_c": 50.0, "teleop_active": False}


def sensors(**overrides: object) -> GatingSensors:
    return GatingSensors(**{**GOOD, **overrides})  # type: ignore[arg-type]


def write_sysfs(root: Path, temp_milli: int | None = None, supplies: dict[str, dict[str, str]] | None = None) -> Path:
    """A fake /sys: thermal_zone0/temp and power_supply/<name>/{type,capacity,scope}."""
    if temp_milli is not None:
        zone = root / "class/thermal/thermal_zone0"
        zone.mkdir(parents=True)
        (zone / "temp").write_text(f"{temp_milli}\n")
    for name, files in (supplies or {}).items():
        d = root / "class/power_supply" / name
        d.mkdir(parents=True)
        for fname, text in files.items():
            (d / fname).write_text(text + "\n")
    return root


def write_state(path: Path, doc: object) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


class Job:
    def __init__(self, result: object = "trained") -> None:
        self.calls = 0
        self.result = result

    def __call__(self) -> object:
        self.calls += 1
        return self.result


# --- evaluate_gates ---------------------------------------------------------------------------


def test_all_gates_pass() -> None:
    decision = evaluate_gates(sensors(), GatingConfig(), new_episodes=3)
    assert decision.ok and decision.reason is None and decision.detail is None
    assert list(decision.gates) == [key for key, _ in GATE_ORDER]
    assert all(g["ok"] and g["reason"] is None for g in decision.gates.values())
    assert decision.gates["battery"] == {
        "ok": True,
        "value": 0.8,
        "min": 0.4,
        "detail": "battery 0.80 >= 0.40",
        "reason": None,
    }
    assert decision.gates["new_episodes"]["value"] == 3


@pytest.mark.parametrize(
    ("overrides", "new", "reason", "detail"),
    [
        ({"robot_idle": False, "mode": "autonomous"}, 1, "not_idle", "robot not idle (mode 'autonomous')"),
        ({"teleop_active": True}, 1, "teleop_active", "teleoperation active"),
        ({"battery_level": 0.31}, 1, "battery_low", "battery 0.31 < 0.40"),
        ({"cpu_temp_c": 78.2}, 1, "too_hot", "cpu 78.2 °C > 75.0 °C"),
        ({}, 0, "no_new_episodes", "0 new episode(s), need 1"),
    ],
)
def test_each_gate_skips_with_its_reason(overrides: dict, new: int, reason: str, detail: str) -> None:
    decision = evaluate_gates(sensors(**overrides), GatingConfig(), new_episodes=new)
    assert not decision.ok
    assert decision.reason == reason
    assert decision.detail == detail
    failing = [k for k, g in decision.gates.items() if not g["ok"]]
    assert len(failing) == 1 and decision.gates[failing[0]]["reason"] == reason


def test_first_failing_gate_wins() -> None:
    """Fail every gate, then fix them one at a time in order: the reason walks down GATE_ORDER."""
    bad = {"robot_idle": False, "teleop_active": True, "battery_level": 0.1, "cpu_temp_c": 90.0}
    fixes = [("robot_idle", True), ("teleop_active", False), ("battery_level", 0.9), ("cpu_temp_c", 40.0)]
    seen = []
    for key, good_value in fixes:
        decision = evaluate_gates(sensors(**bad), GatingConfig(), new_episodes=0)
        seen.append(decision.reason)
        # Every gate is still evaluated and shown, not only the first failure.
        assert sum(not g["ok"] for g in decision.gates.values()) == len(GATE_ORDER) - len(seen) + 1
        bad[key] = good_value
    seen.append(evaluate_gates(sensors(**bad), GatingConfig(), new_episodes=0).reason)
    assert seen == [code for _, code in GATE_ORDER]
    assert evaluate_gates(sensors(**bad), GatingConfig(), new_episodes=1).ok


def test_thresholds_are_inclusive_of_the_limit() -> None:
    assert evaluate_gates(sensors(battery_level=0.4, cpu_temp_c=75.0), new_episodes=1).ok


def test_unknown_battery_and_temperature_pass_but_are_reported() -> None:
    decision = evaluate_gates(sensors(battery_level=None, cpu_temp_c=None), new_episodes=1)
    assert decision.ok
    assert decision.gates["battery"]["value"] is None and decision.gates["battery"]["ok"]
    assert decision.gates["thermal"]["value"] is None and decision.gates["thermal"]["ok"]
    assert "unknown" in decision.gates["thermal"]["detail"]
    # A flaky sensor's NaN is no reading, not a number that compares False against everything.
    decision = evaluate_gates(sensors(battery_level=float("nan"), cpu_temp_c=float("inf")), new_episodes=1)
    assert decision.ok and decision.gates["battery"]["value"] is None and decision.gates["thermal"]["value"] is None


def test_untracked_new_episodes_pass() -> None:
    decision = evaluate_gates(sensors(), GatingConfig())
    assert decision.ok and decision.gates["new_episodes"]["value"] is None


def test_optional_gates_and_min_new_episodes() -> None:
    relaxed = GatingConfig(require_idle=False, require_new_episodes=False)
    decision = evaluate_gates(sensors(robot_idle=False), relaxed, new_episodes=0)
    assert decision.ok
    assert decision.gates["idle"]["value"] is False and decision.gates["idle"]["required"] is False
    # Not requiring idle never lets teleoperation through.
    assert evaluate_gates(sensors(robot_idle=False, teleop_active=True), relaxed).reason == "teleop_active"

    batch = GatingConfig(min_new_episodes=5)
    assert evaluate_gates(sensors(), batch, new_episodes=4).reason == "no_new_episodes"
    assert evaluate_gates(sensors(), batch, new_episodes=5).ok


def test_config_rejects_percent_battery_threshold() -> None:
    with pytest.raises(ValueError, match="fraction"):
        GatingConfig(min_battery=40)
    with pytest.raises(ValueError):
        GatingConfig(min_new_episodes=0)


def test_decision_is_json_serialisable() -> None:
    worst = GatingSensors(
        robot_idle=False, battery_level=None, cpu_temp_c=None, teleop_active=True, state_error="no state file"
    )
    for decision in (
        evaluate_gates(worst, GatingConfig(), new_episodes=None),
        evaluate_gates(sensors(battery_level=0.1, cpu_temp_c=99.5), GatingConfig(), new_episodes=0),
        evaluate_gates(sensors(), GatingConfig(), new_episodes=7),
    ):
        doc = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
        assert doc == decision.to_dict()
        assert set(doc) == {"ok", "reason", "detail", "gates"}
        for gate in doc["gates"].values():
            assert {"ok", "value", "detail", "reason"} <= set(gate)
            assert isinstance(gate["ok"], bool)


# --- the watermark and run_if_idle ------------------------------------------------------------


def test_run_if_idle_runs_then_waits_for_new_episodes(tmp_path: Path) -> None:
    rlds = tmp_path / "rlds"
    rlds.mkdir()
    (rlds / "ep0.json").write_text('{"steps": []}')
    wm = EpisodeWatermark(rlds, tmp_path / "state")
    job = Job()

    decision, result = run_if_idle(job, sensors=sensors(), watermark=wm)
    assert decision.ok and result == "trained" and job.calls == 1
    assert decision.gates["new_episodes"]["value"] == 1
    assert wm.path.is_file()

    for _ in range(2):
        decision, result = run_if_idle(job, sensors=sensors(), watermark=wm)
        assert (decision.reason, result, job.calls) == ("no_new_episodes", None, 1)

    (rlds / "ep1.jsonl").write_text("{}\n")
    decision, result = run_if_idle(job, sensors=sensors(), watermark=wm)
    assert decision.ok and decision.gates["new_episodes"]["value"] == 1 and job.calls == 2
    assert run_if_idle(job, sensors=sensors(), watermark=wm)[0].reason == "no_new_episodes"


def test_skipped_gate_does_not_run_or_mark(tmp_path: Path) -> None:
    rlds = tmp_path / "rlds"
    rlds.mkdir()
    (rlds / "ep0.json").write_text("{}")
    wm = EpisodeWatermark(rlds, tmp_path / "state")
    job = Job()
    decision, result = run_if_idle(job, sensors=sensors(teleop_active=True), watermark=wm)
    assert decision.reason == "teleop_active" and result is None and job.calls == 0
    assert not wm.path.exists() and wm.new_episodes() == 1


def test_failed_job_leaves_the_mark_alone(tmp_path: Path) -> None:
    rlds = tmp_path / "rlds"
    rlds.mkdir()
    (rlds / "ep0.json").write_text("{}")
    wm = EpisodeWatermark(rlds, tmp_path / "state")

    def boom() -> None:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        run_if_idle(boom, sensors=sensors(), watermark=wm)
    assert wm.new_episodes() == 1


def test_episodes_arriving_during_the_job_count_as_new(tmp_path: Path) -> None:
    rlds = tmp_path / "rlds"
    rlds.mkdir()
    (rlds / "ep0.json").write_text("{}")
    wm = EpisodeWatermark(rlds, tmp_path / "state")

    def job() -> str:
        (rlds / "ep1.json").write_text("{}")  # the robot logs while the trainer trains
        return "ok"

    assert run_if_idle(job, sensors=sensors(), watermark=wm)[0].ok
    assert wm.new_episodes() == 1


def test_watermark_counts_episode_entries_of_every_layout(tmp_path: Path, episodes_dir: Path) -> None:
    """Episode dirs, .json/.jsonl files and TFRecord shards count; sidecars, temp files, blobs do not."""
    rlds = episodes_dir  # three real Continuon episode dirs
    (rlds / "one.json").write_text("{}")
    (rlds / "two.jsonl").write_text("{}\n")
    tfds = rlds / "tfds/robo/1.0.0"
    tfds.mkdir(parents=True)
    (tfds / "dataset_info.json").write_text("{}")
    (tfds / "features.json").write_text("{}")
    for i in range(2):
        (tfds / f"robo-train.tfrecord-{i:05d}-of-00002").write_bytes(b"")
    # Never episodes: writers' hidden temp names, quarantine, README, sidecar JSON.
    (rlds / ".ep9.abc123").mkdir()
    (rlds / ".robo-train.tfrecord-00000.partial").write_bytes(b"")
    (rlds / "x.json.tmp").write_text("{}")
    (rlds / "quarantine/bad").mkdir(parents=True)
    (rlds / "quarantine/bad/metadata.json").write_text("{}")
    (rlds / "README.md").write_text("notes")
    (rlds / "manifest.json").write_text("{}")

    wm = EpisodeWatermark(rlds, tmp_path / "state")
    snap = wm.snapshot()
    assert snap.count == 3 + 2 + 2
    assert wm.new_episodes() == 7  # never marked: everything is new
    wm.mark_trained()
    assert wm.new_episodes() == 0

    # A new chunk in an existing episode is not a new episode; a new episode dir is.
    next(iter(sorted(rlds.glob("ep*/steps/*.jsonl")))).with_name("000099.jsonl").write_text("{}\n")
    (rlds / "ep_new/steps").mkdir(parents=True)
    (rlds / "ep_new/steps/000000.jsonl").write_text("{}\n")
    (rlds / "ep_new/metadata.json").write_text("{}")
    assert wm.snapshot().count == 8
    # Same episode-dir test as the RLDS reader: metadata.json alone or steps/ alone is enough.
    (rlds / "meta_only").mkdir()
    (rlds / "meta_only/metadata.json").write_text("{}")
    (rlds / "steps_only/steps").mkdir(parents=True)
    assert wm.snapshot().count == 10


def test_watermark_sees_copied_in_and_replaced_episodes(tmp_path: Path) -> None:
    rlds = tmp_path / "rlds"
    rlds.mkdir()
    for i in range(3):
        (rlds / f"ep{i}.json").write_text("{}")
    wm = EpisodeWatermark(rlds, tmp_path / "state")
    snap = wm.mark_trained()

    # rsync -a from another robot keeps old mtimes: the count still grows.
    old = rlds / "old.json"
    old.write_text("{}")
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    assert wm.new_episodes() == 1
    wm.mark_trained()

    # One episode deleted, one recorded: same count, but a newer mtime.
    (rlds / "ep0.json").unlink()
    fresh = rlds / "fresh.json"
    fresh.write_text("{}")
    later = snap.max_mtime_ns + 10**9
    os.utime(fresh, ns=(later, later))
    assert wm.snapshot().count == 4
    assert wm.new_episodes() == 1


def test_watermark_file_is_atomic_json_and_not_counted(tmp_path: Path) -> None:
    rlds = tmp_path / "rlds"
    rlds.mkdir()
    (rlds / "ep0.json").write_text("{}")
    wm = EpisodeWatermark(rlds, rlds)  # state dir inside rlds_dir: its own file must not count
    wm.mark_trained()
    assert sorted(p.name for p in rlds.iterdir()) == ["ep0.json", "episode_watermark.json"]  # no temp left
    doc = json.loads(wm.path.read_text())
    assert doc["count"] == 1 and doc["rlds_dir"] == str(rlds)
    assert wm.new_episodes() == 0


def test_watermark_missing_dir_corrupt_mark_and_other_rlds_dir(tmp_path: Path) -> None:
    assert EpisodeWatermark(tmp_path / "nope", tmp_path / "state").new_episodes() == 0

    rlds = tmp_path / "rlds"
    rlds.mkdir()
    (rlds / "ep0.json").write_text("{}")
    wm = EpisodeWatermark(rlds, tmp_path / "state")
    wm.mark_trained()
    for corrupt in ("{not json", "[]", '{"count": "x"}'):
        wm.path.write_text(corrupt)
        assert wm.load() is None and wm.new_episodes() == 1
    wm.mark_trained()
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.json").write_text("{}")
    # The same state dir pointed at another rlds_dir: the old mark says nothing about it.
    assert EpisodeWatermark(other, tmp_path / "state").new_episodes() == 1


def test_watermark_on_a_single_episode_dir(tmp_path: Path, episodes_dir: Path) -> None:
    one = next(p for p in sorted(episodes_dir.iterdir()) if p.is_dir())
    assert EpisodeWatermark(one, tmp_path / "state").snapshot().count == 1


# --- sensor readers ---------------------------------------------------------------------------


def test_temperature_from_thermal_zone_millidegrees(tmp_path: Path) -> None:
    root = write_sysfs(tmp_path / "sys", temp_milli=78_250)
    s = read_sensors(sysfs_root=root, state_file=tmp_path / "none.json", env={})
    assert s.cpu_temp_c == pytest.approx(78.25)
    assert read_sensors(sysfs_root=tmp_path / "empty", state_file=tmp_path / "none.json", env={}).cpu_temp_c is None


def test_battery_from_power_supply(tmp_path: Path) -> None:
    root = write_sysfs(
        tmp_path / "sys",
        supplies={
            "AC": {"type": "Mains"},  # sorts first, not a battery
            "hid-gamepad-battery": {"type": "Battery", "scope": "Device", "capacity": "5"},  # the gamepad's
            "ups0": {"type": "Battery", "scope": "System", "capacity": "57"},
            "ups1": {"type": "Battery", "capacity": "99"},
        },
    )
    assert read_battery_level(root, env={}) == pytest.approx(0.57)


def test_battery_skips_unreadable_capacity_and_defaults_to_unknown(tmp_path: Path) -> None:
    root = write_sysfs(
        tmp_path / "sys",
        supplies={"bat0": {"type": "Battery", "capacity": "n/a"}, "bat1": {"type": "Battery", "capacity": "42"}},
    )
    assert read_battery_level(root, env={}) == pytest.approx(0.42)
    mains = write_sysfs(tmp_path / "mains", supplies={"AC": {"type": "Mains"}})
    assert read_battery_level(mains, env={}) is None
    assert read_battery_level(tmp_path / "no_sys", env={}) is None


@pytest.mark.parametrize(
    ("text", "level"),
    [("0.57", 0.57), ("57", 0.57), ("57%", 0.57), (" 1 ", 1.0), ("1%", 0.01), ("0", 0.0), ("100", 1.0)],
)
def test_battery_level_override_forms(tmp_path: Path, text: str, level: float) -> None:
    root = write_sysfs(tmp_path / "sys", supplies={"bat": {"type": "Battery", "capacity": "12"}})
    assert read_battery_level(root, env={"BATTERY_LEVEL": text}) == pytest.approx(level)


@pytest.mark.parametrize("text", ["", "abc", "nan", "-0.5", "150", "inf"])
def test_bad_battery_override_falls_back_to_sysfs(tmp_path: Path, text: str) -> None:
    assert parse_battery_level(text) is None
    root = write_sysfs(tmp_path / "sys", supplies={"bat": {"type": "Battery", "capacity": "12"}})
    assert read_battery_level(root, env={"BATTERY_LEVEL": text}) == pytest.approx(0.12)


@pytest.mark.parametrize(
    ("doc", "idle", "teleop", "mode"),
    [
        ({"mode": "idle"}, True, False, "idle"),
        ({"mode": "Teleop"}, False, True, "teleop"),
        ({"mode": "autonomous"}, False, False, "autonomous"),
        ({"mode": "autonomous", "idle": True}, True, False, "autonomous"),  # explicit flags win
        ({"mode": "idle", "teleop_active": True}, False, True, "idle"),  # teleoperated is never idle
        ({"idle": True, "teleop_active": False}, True, False, None),
        ({"mode": "idle", "idle": "yes"}, True, False, "idle"),  # wrong type: ignored, mode decides
    ],
)
def test_state_file_parsing(tmp_path: Path, doc: dict, idle: bool, teleop: bool, mode: str | None) -> None:
    state = read_robot_state(write_state(tmp_path / "state.json", doc), env={})
    assert (state.idle, state.teleop_active, state.mode, state.error) == (idle, teleop, mode, None)


@pytest.mark.parametrize("content", [None, "", "{not json", "[1, 2]", '"idle"', '{"other": 1}', b"\xff\xfe"])
def test_missing_or_corrupt_state_file_is_not_idle(tmp_path: Path, content: str | bytes | None) -> None:
    path = tmp_path / "state.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    state = read_robot_state(path, env={})
    assert state.idle is False and state.teleop_active is False and state.error
    decision = evaluate_gates(read_sensors(tmp_path / "sys", path, env={}), new_episodes=1)
    assert decision.reason == "not_idle"
    assert decision.gates["idle"]["known"] is False and "unknown" in decision.detail
    # The opt-out for boards without a robot stack.
    assert evaluate_gates(read_sensors(tmp_path / "sys", path, env={}), GatingConfig(require_idle=False)).ok


def test_env_overrides_robot_state(tmp_path: Path) -> None:
    teleop_file = write_state(tmp_path / "state.json", {"mode": "teleop", "idle": False, "teleop_active": True})
    state = read_robot_state(teleop_file, env={"ROBOT_MODE": "idle"})
    assert (state.mode, state.idle, state.teleop_active) == ("idle", True, False)
    # Without a state file at all (a bench Pi).
    assert read_robot_state(tmp_path / "missing.json", env={"ROBOT_MODE": "idle"}).idle is True

    state = read_robot_state(tmp_path / "missing.json", env={"ROBOT_MODE": "idle", "TELEOP_ACTIVE": "yes"})
    assert (state.idle, state.teleop_active) == (False, True)
    idle_file = write_state(tmp_path / "idle.json", {"mode": "idle"})
    assert read_robot_state(idle_file, env={"TELEOP_ACTIVE": "1"}).teleop_active is True
    assert read_robot_state(idle_file, env={"TELEOP_ACTIVE": "maybe"}).teleop_active is False  # ignored


def test_run_if_idle_reads_the_pi_sensors(tmp_path: Path) -> None:
    root = write_sysfs(tmp_path / "sys", temp_milli=61_000, supplies={"bat": {"type": "Battery", "capacity": "80"}})
    state = write_state(tmp_path / "state.json", {"mode": "idle", "teleop_active": False, "idle": True})
    job = Job()
    kwargs = {"sysfs_root": root, "state_file": state, "env": {}}

    decision, result = run_if_idle(job, **kwargs)
    assert decision.ok and result == "trained"
    assert decision.gates["thermal"]["value"] == pytest.approx(61.0)
    assert decision.gates["battery"]["value"] == pytest.approx(0.8)
    assert decision.gates["idle"]["mode"] == "idle"

    (root / "class/thermal/thermal_zone0/temp").write_text("76500\n")
    decision, result = run_if_idle(job, **kwargs)
    assert (decision.reason, decision.detail, result) == ("too_hot", "cpu 76.5 °C > 75.0 °C", None)
    decision, _ = run_if_idle(job, **{**kwargs, "env": {"BATTERY_LEVEL": "31"}})
    assert (decision.reason, decision.detail) == ("battery_low", "battery 0.31 < 0.40")
    assert check_gates(**kwargs).reason == "too_hot"
    assert job.calls == 1


def test_run_if_idle_sensor_callable_and_argument_checks() -> None:
    calls = []

    def reader() -> GatingSensors:
        calls.append(1)
        return sensors()

    decision, result = run_if_idle(Job(42), sensors=reader)
    assert isinstance(decision, GateDecision) and decision.ok and result == 42 and calls == [1]
    with pytest.raises(TypeError, match="explicit sensors"):
        run_if_idle(Job(), sensors=sensors(), sysfs_root="/sys")
