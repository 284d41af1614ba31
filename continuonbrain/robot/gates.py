"""Scheduler gating: the robot keeps learning only when it is idle, cool, charged and not teleoperated.

On-robot LoRA training competes with the robot itself for CPU, memory, heat and battery. A
training run started while an operator teleoperates the robot adds control latency; one
started on a hot SoC throttles the motor loop; one started on a low battery strands the
robot away from its dock. And a run with no new episodes burns all of that for nothing.
So every scheduled run first asks :func:`evaluate_gates`, and :func:`run_if_idle` runs the
job only when every gate passes.

Gates, checked in this fixed order (the FIRST failing gate is the skip reason)::

    order  gate key       reason code        fails when
    1      idle           not_idle           cfg.require_idle and the robot is not idle (or its state is unknown)
    2      teleop         teleop_active      an operator is teleoperating the robot
    3      battery        battery_low        battery_level < cfg.min_battery (unknown battery passes: mains power)
    4      thermal        too_hot            cpu_temp_c > cfg.max_temp_c (unknown temperature passes, reported)
    5      new_episodes   no_new_episodes    cfg.require_new_episodes and fewer than cfg.min_new_episodes arrived

The order runs from "the robot is busy" (an answer that changes within seconds and that an
operator acts on) to "there is nothing worth training on". Every gate is evaluated even when
an earlier one fails, so :attr:`GateDecision.gates` always shows the live value of each for
the HTTP API and the Robot Editor; it holds only JSON types.

Sensors (:func:`read_sensors`) on a Raspberry Pi 5; the sysfs root is configurable so tests
and other boards can point it elsewhere:

* temperature: ``<root>/class/thermal/thermal_zone0/temp`` (millidegrees), via
  :func:`continuonbrain.trainer.budgets.read_temperature_c`;
* battery: the first ``<root>/class/power_supply/*`` whose ``type`` is ``Battery`` (and whose
  ``scope`` is not ``Device``: that is a Bluetooth gamepad's battery, not the robot's), its
  ``capacity`` percent as a fraction. The env var ``BATTERY_LEVEL`` overrides it for UPS HATs
  without a kernel driver: a fraction (``"0.57"``) or a percent (``"57"`` or ``"57%"``);
* idle / teleop: the robot stack's state file (default :data:`DEFAULT_STATE_FILE`), a JSON
  object ``{"mode": "idle"|"teleop"|"autonomous"|..., "teleop_active": bool, "idle": bool}``;
  the env vars ``ROBOT_MODE`` and ``TELEOP_ACTIVE`` override it (see :func:`read_robot_state`).

New data (:class:`EpisodeWatermark`): a small JSON file remembers how many episode entries
``rlds_dir`` held, and their newest mtime, when training last succeeded; the next check counts
what arrived since. It only lists directories and stats entries, never parses episodes, so it
stays cheap on thousands of files on an SD card.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from continuonbrain.fsutil import atomic_write_bytes
from continuonbrain.rlds.continuon import NON_EPISODE_JSON
from continuonbrain.rlds.tfds import is_tfrecord_path
from continuonbrain.trainer.budgets import read_temperature_c

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where the robot stack publishes its mode (tmpfs: it vanishes on reboot, as it should).
DEFAULT_STATE_FILE = "/run/continuonos/robot_state.json"
#: File name of the watermark inside the trainer's state/log directory.
WATERMARK_FILE = "episode_watermark.json"

#: Stable reason codes, in gate order. The HTTP API and the web page key on these.
REASON_NOT_IDLE = "not_idle"
REASON_TELEOP = "teleop_active"
REASON_BATTERY = "battery_low"
REASON_HOT = "too_hot"
REASON_NO_DATA = "no_new_episodes"
#: (gate key, reason code) in evaluation order.
GATE_ORDER: tuple[tuple[str, str], ...] = (
    ("idle", REASON_NOT_IDLE),
    ("teleop", REASON_TELEOP),
    ("battery", REASON_BATTERY),
    ("thermal", REASON_HOT),
    ("new_episodes", REASON_NO_DATA),
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# --- sensors, config, decision ---------------------------------------------------------------


@dataclass
class GatingSensors:
    """One reading of everything the gates look at.

    ``battery_level`` is a fraction in 0..1; None means unknown (a robot on mains has no
    battery). ``cpu_temp_c`` None means no thermal zone could be read. ``mode`` is the robot
    stack's mode for display. ``state_error`` says why the robot state is unknown (no state
    file, corrupt file); it is None when the state is known, and the idle gate then explains
    that ``robot_idle`` False is a conservative guess rather than an observation.
    """

    robot_idle: bool
    battery_level: float | None
    cpu_temp_c: float | None
    teleop_active: bool
    mode: str | None = None
    state_error: str | None = None


@dataclass
class GatingConfig:
    """Thresholds for the gates.

    ``min_battery`` is a fraction (0.4 = 40 %); a percent here (40) is rejected, since it would
    silently block training forever. ``max_temp_c`` sits below the Pi 5's 80-85 °C throttling
    point, because training adds heat after the check. ``require_idle`` False is for boards
    without a robot stack (a bench Pi, a desktop): the teleop gate still applies.
    ``min_new_episodes``: how many new episode entries must arrive before a run is
    worth it; raise it so the robot does not spin up a LoRA run for every 10 s episode.
    """

    min_battery: float = 0.4
    max_temp_c: float = 75.0
    require_idle: bool = True
    require_new_episodes: bool = True
    min_new_episodes: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_battery <= 1.0:
            raise ValueError(f"min_battery is a fraction in 0..1 (0.4 = 40 %), got {self.min_battery}")
        if self.min_new_episodes < 1:
            raise ValueError(f"min_new_episodes must be >= 1, got {self.min_new_episodes}")


@dataclass
class GateDecision:
    """The answer to "may the trainer run now?".

    ``reason`` is the stable code of the first failing gate (None when ``ok``); ``detail`` its
    human text (e.g. ``"battery 0.31 < 0.40"``); ``gates`` every gate's live value, pass/fail,
    threshold and text, in gate order, JSON-serialisable as is.
    """

    ok: bool
    reason: str | None
    gates: dict[str, dict[str, Any]]
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "detail": self.detail, "gates": self.gates}


def evaluate_gates(
    sensors: GatingSensors, cfg: GatingConfig | None = None, *, new_episodes: int | None = None
) -> GateDecision:
    """Check every gate in :data:`GATE_ORDER`; the first failing one is the skip reason.

    ``new_episodes`` None means the caller keeps no watermark (a manual run): the new-data gate
    cannot judge, so it passes and reports the value as unknown.
    """
    cfg = cfg or GatingConfig()
    gates: dict[str, dict[str, Any]] = {}

    if sensors.robot_idle:
        idle_detail = f"robot idle (mode {sensors.mode!r})" if sensors.mode else "robot idle"
    elif sensors.state_error:
        idle_detail = f"robot state unknown ({sensors.state_error}): treated as not idle"
    else:
        idle_detail = f"robot not idle (mode {sensors.mode!r})" if sensors.mode else "robot not idle"
    if not cfg.require_idle:
        idle_detail += " (idle not required)"
    gates["idle"] = {
        "ok": bool(sensors.robot_idle or not cfg.require_idle),
        "value": bool(sensors.robot_idle),
        "required": cfg.require_idle,
        "mode": sensors.mode,
        "known": sensors.state_error is None,
        "detail": idle_detail,
    }

    teleop = bool(sensors.teleop_active)
    gates["teleop"] = {
        "ok": not teleop,
        "value": teleop,
        "detail": "teleoperation active" if teleop else "no teleoperation",
    }

    battery = _finite_or_none(sensors.battery_level)
    if battery is None:
        battery_ok, battery_detail = True, "battery unknown (mains power?)"
    else:
        battery_ok = battery >= cfg.min_battery
        op = ">=" if battery_ok else "<"
        battery_detail = f"battery {battery:.2f} {op} {cfg.min_battery:.2f}"
    gates["battery"] = {"ok": battery_ok, "value": battery, "min": cfg.min_battery, "detail": battery_detail}

    temp = _finite_or_none(sensors.cpu_temp_c)
    if temp is None:
        temp_ok, temp_detail = True, "cpu temperature unknown"
    else:
        temp_ok = temp <= cfg.max_temp_c
        op = "<=" if temp_ok else ">"
        temp_detail = f"cpu {temp:.1f} °C {op} {cfg.max_temp_c:.1f} °C"
    gates["thermal"] = {"ok": temp_ok, "value": temp, "max": cfg.max_temp_c, "detail": temp_detail}

    if new_episodes is None:
        data_ok, data_detail = True, "new episodes not tracked"
    else:
        enough = new_episodes >= cfg.min_new_episodes
        data_ok = enough or not cfg.require_new_episodes
        data_detail = f"{new_episodes} new episode(s)"
        if not enough:
            data_detail += f", need {cfg.min_new_episodes}"
        if not cfg.require_new_episodes:
            data_detail += " (new data not required)"
    gates["new_episodes"] = {
        "ok": data_ok,
        "value": None if new_episodes is None else int(new_episodes),
        "min": cfg.min_new_episodes,
        "required": cfg.require_new_episodes,
        "detail": data_detail,
    }

    for key, code in GATE_ORDER:
        gates[key]["reason"] = None if gates[key]["ok"] else code
    for key, code in GATE_ORDER:
        if not gates[key]["ok"]:
            return GateDecision(ok=False, reason=code, gates=gates, detail=gates[key]["detail"])
    return GateDecision(ok=True, reason=None, gates=gates, detail=None)


def _finite_or_none(value: float | None) -> float | None:
    """NaN/inf from a flaky sensor are no reading at all, not a number to compare against."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --- Pi 5 sensor readers ---------------------------------------------------------------------


@dataclass
class RobotState:
    """What the robot stack says about itself; ``error`` set (and idle False) when unknown."""

    mode: str | None
    idle: bool
    teleop_active: bool
    error: str | None = None


def parse_battery_level(text: str) -> float | None:
    """``"0.57"`` -> 0.57; ``"57"`` or ``"57%"`` -> 0.57; anything else (or out of range) -> None.

    A bare number <= 1 is a fraction, a bare number > 1 a percent; so ``"1"`` is a full battery.
    A trailing ``%`` always means percent (``"1%"`` -> 0.01), for when that matters.
    """
    text = text.strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1].strip()
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value < 0:
        return None
    if percent or value > 1.0:
        value /= 100.0
    return value if value <= 1.0 else None


def read_battery_level(sysfs_root: str | os.PathLike = "/sys", env: Mapping[str, str] | None = None) -> float | None:
    """Battery charge as a fraction, or None (no battery found: a robot on mains).

    ``BATTERY_LEVEL`` in ``env`` wins when it parses; an unparsable value is logged and
    ignored (the sysfs reading is still a better answer than none).
    """
    env = os.environ if env is None else env
    override = env.get("BATTERY_LEVEL", "").strip()
    if override:
        level = parse_battery_level(override)
        if level is not None:
            return level
        log.warning("ignoring BATTERY_LEVEL=%r: expected a fraction 0..1 or a percent like 57", override)
    supplies = Path(sysfs_root) / "class" / "power_supply"
    try:
        entries = sorted(supplies.iterdir())
    except OSError:
        return None
    for supply in entries:
        if _read_text(supply / "type") != "Battery":
            continue
        # Peripherals (HID gamepads, mice) expose their batteries with scope "Device".
        if _read_text(supply / "scope") == "Device":
            continue
        capacity = _read_text(supply / "capacity")
        try:
            percent = float(capacity) if capacity is not None else math.nan
        except ValueError:
            continue
        if math.isfinite(percent):
            return min(max(percent / 100.0, 0.0), 1.0)
    return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _parse_bool(text: str) -> bool | None:
    text = text.strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def read_robot_state(
    state_file: str | os.PathLike = DEFAULT_STATE_FILE, env: Mapping[str, str] | None = None
) -> RobotState:
    """The robot's mode, idle and teleop flags from its state file, with env overrides.

    Fields: ``idle`` and ``teleop_active`` (JSON booleans) win; without them they follow from
    ``mode`` (``"idle"`` is idle, ``"teleop"`` is teleoperated). ``ROBOT_MODE`` replaces the
    file's mode *and* its flags (it states the whole situation, e.g. ``Environment=ROBOT_MODE=idle``
    in a systemd unit on a bench Pi without a robot stack); ``TELEOP_ACTIVE`` (1/0, true/false,
    yes/no, on/off) then overrides the teleop flag alone.

    A missing, unreadable or corrupt file, or one from which idleness cannot be derived, means
    "unknown", and unknown is *not idle*: a robot stack that is not publishing may be starting
    up or driving on, and skipping one training slot costs minutes, while training under a
    moving robot costs control latency. Teleop unknown is reported as False, so that
    ``require_idle=False`` (the opt-out for boards without a robot stack) can still train;
    with the default config the idle gate already blocks.
    """
    env = os.environ if env is None else env
    mode: str | None = None
    idle: bool | None = None
    teleop: bool | None = None
    error: str | None = None

    env_mode = env.get("ROBOT_MODE", "").strip().lower()
    if env_mode:
        mode = env_mode
    else:
        doc, error = _load_state_file(Path(state_file))
        if doc is not None:
            raw_mode = doc.get("mode")
            mode = raw_mode.strip().lower() if isinstance(raw_mode, str) and raw_mode.strip() else None
            idle = doc["idle"] if isinstance(doc.get("idle"), bool) else None
            teleop = doc["teleop_active"] if isinstance(doc.get("teleop_active"), bool) else None
    if mode is not None:
        idle = (mode == "idle") if idle is None else idle
        teleop = (mode == "teleop") if teleop is None else teleop

    env_teleop = env.get("TELEOP_ACTIVE", "").strip()
    if env_teleop:
        parsed = _parse_bool(env_teleop)
        if parsed is None:
            log.warning("ignoring TELEOP_ACTIVE=%r: expected 1/0, true/false, yes/no or on/off", env_teleop)
        else:
            teleop = parsed

    if idle is None and error is None:
        error = f"{state_file} has neither 'idle' nor 'mode'"
    if teleop:
        # Whatever the file claims, a teleoperated robot is not idle.
        idle = False
    return RobotState(mode=mode, idle=bool(idle), teleop_active=bool(teleop), error=error if idle is None else None)


def _load_state_file(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(document, None) or (None, why it is unusable)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, f"no state file {path}"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"state file {path} unreadable: {exc}"
    try:
        doc = json.loads(text)
    except ValueError:
        return None, f"state file {path} is not valid JSON"
    if not isinstance(doc, dict):
        return None, f"state file {path} is not a JSON object"
    return doc, None


def read_sensors(
    sysfs_root: str | os.PathLike = "/sys",
    state_file: str | os.PathLike = DEFAULT_STATE_FILE,
    env: Mapping[str, str] | None = None,
) -> GatingSensors:
    """Read every gate input on this board. Never raises for a missing sensor: it reports None/unknown."""
    env = os.environ if env is None else env
    state = read_robot_state(state_file, env)
    return GatingSensors(
        robot_idle=state.idle,
        battery_level=read_battery_level(sysfs_root, env),
        cpu_temp_c=read_temperature_c(sysfs_root),
        teleop_active=state.teleop_active,
        mode=state.mode,
        state_error=state.error,
    )


# --- new-data watermark ----------------------------------------------------------------------

#: Directories under rlds_dir that hold no episodes of their own (mirrors the RLDS reader).
_SKIP_DIRS = {"blobs", "__pycache__", "quarantine"}


@dataclass(frozen=True)
class EpisodeSnapshot:
    """Episode entries under ``rlds_dir`` at one moment: how many, and the newest mtime.

    An entry is an episode directory, a ``.json``/``.jsonl`` episode file or a TFRecord shard
    (a shard may hold many episodes; counting them would mean parsing it). ``mtimes_ns`` are
    kept in memory only, to count entries newer than a mark; they are not persisted.
    """

    count: int
    max_mtime_ns: int
    mtimes_ns: tuple[int, ...] = field(default=(), repr=False, compare=False)


class EpisodeWatermark:
    """Remembers what ``rlds_dir`` held at the last successful training run.

    New episodes since the mark = max(entries with an mtime newer than the mark's newest,
    growth in the entry count). The mtime test catches episodes that replaced deleted ones;
    the count test catches episodes copied in with old mtimes (``rsync -a`` from another robot)
    and episodes that land within the same mtime tick on coarse filesystems. Never marked (or
    the mark names another rlds_dir, or is corrupt): every entry is new.

    The mark is written atomically (temp file, fsync, rename), so a power cut mid-write leaves
    the old mark, never a torn one.
    """

    def __init__(self, rlds_dir: str | os.PathLike, state_dir: str | os.PathLike, filename: str = WATERMARK_FILE):
        self.rlds_dir = Path(rlds_dir)
        self.path = Path(state_dir) / filename

    # -- scanning

    def snapshot(self) -> EpisodeSnapshot:
        """List the episode entries under ``rlds_dir`` (stat only; never opens an episode).

        Plain ``str`` paths and ``os.scandir``: about 1-2 stats per entry, so thousands of
        episodes on an SD card take a fraction of a second.
        """
        root = os.fspath(self.rlds_dir)
        with contextlib.suppress(OSError):  # rlds_dir is itself one episode: do not count its chunks
            mtime = _episode_dir_mtime(root, os.stat(root).st_mtime_ns)
            if mtime is not None:
                return EpisodeSnapshot(count=1, max_mtime_ns=mtime, mtimes_ns=(mtime,))
        mtimes: list[int] = []
        skip_file = os.path.abspath(self.path)
        seen: set[tuple[int, int]] = set()
        stack = [root]
        while stack:
            directory = stack.pop()
            try:
                st = os.stat(directory)
                if (st.st_dev, st.st_ino) in seen:  # a symlink loop
                    continue
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(directory) as it:
                    entries = list(it)
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                # Writers build episodes under hidden temp names and rename them into place.
                if name.startswith(".") or name.endswith((".tmp", ".partial")):
                    continue
                try:
                    if entry.is_dir():
                        if name in _SKIP_DIRS:
                            continue
                        mtime = _episode_dir_mtime(entry.path, entry.stat().st_mtime_ns)
                        if mtime is None:
                            stack.append(entry.path)
                        else:
                            mtimes.append(mtime)
                    elif entry.is_file() and _is_episode_file(name) and os.path.abspath(entry.path) != skip_file:
                        mtimes.append(entry.stat().st_mtime_ns)
                except OSError:  # vanished between listing and stat
                    continue
        return EpisodeSnapshot(count=len(mtimes), max_mtime_ns=max(mtimes, default=0), mtimes_ns=tuple(mtimes))

    # -- the mark

    def load(self) -> EpisodeSnapshot | None:
        """The mark of the last successful run, or None (never marked, other rlds_dir, corrupt)."""
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("episode watermark %s unusable (%s): treating every episode as new", self.path, exc)
            return None
        try:
            if doc["rlds_dir"] != str(_abspath(self.rlds_dir)):
                return None
            return EpisodeSnapshot(count=int(doc["count"]), max_mtime_ns=int(doc["max_mtime_ns"]))
        except (KeyError, TypeError, ValueError):
            log.warning("episode watermark %s malformed: treating every episode as new", self.path)
            return None

    def new_since(self, snapshot: EpisodeSnapshot) -> int:
        """How many of ``snapshot``'s entries arrived after the mark."""
        mark = self.load()
        if mark is None:
            return snapshot.count
        newer = sum(1 for m in snapshot.mtimes_ns if m > mark.max_mtime_ns)
        return max(newer, snapshot.count - mark.count, 0)

    def new_episodes(self) -> int:
        """Scan now and count what arrived since the mark."""
        return self.new_since(self.snapshot())

    def mark_trained(self, snapshot: EpisodeSnapshot | None = None) -> EpisodeSnapshot:
        """Record ``snapshot`` (default: a fresh scan) as trained on.

        Pass the snapshot taken *before* the run, as :func:`run_if_idle` does: episodes that
        arrive while the job runs were not trained on and must count as new next time.
        """
        snapshot = snapshot if snapshot is not None else self.snapshot()
        doc = {
            "schema": 1,
            "rlds_dir": str(_abspath(self.rlds_dir)),
            "count": snapshot.count,
            "max_mtime_ns": snapshot.max_mtime_ns,
            "marked_at": time.time(),
        }
        _write_json_atomic(self.path, doc)
        return snapshot


def _is_episode_file(name: str) -> bool:
    if name in NON_EPISODE_JSON:
        return False
    return name.endswith((".json", ".jsonl")) or is_tfrecord_path(Path(name))


def _episode_dir_mtime(path: str, dir_mtime_ns: int) -> int | None:
    """Newest of an episode dir and its ``steps/`` (a new chunk bumps ``steps/``, not the dir).

    None when ``path`` is not an episode dir: the same test as
    :func:`continuonbrain.rlds.continuon.is_episode_dir`, folded into the stat we need anyway.
    """
    try:
        steps = os.stat(os.path.join(path, "steps"))
        if stat.S_ISDIR(steps.st_mode):
            return max(dir_mtime_ns, steps.st_mtime_ns)
    except OSError:
        pass
    return dir_mtime_ns if os.path.isfile(os.path.join(path, "metadata.json")) else None


def _abspath(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(doc, indent=2) + "\n").encode())


# --- running ---------------------------------------------------------------------------------


def check_gates(
    *,
    sensors: GatingSensors | Callable[[], GatingSensors] | None = None,
    cfg: GatingConfig | None = None,
    watermark: EpisodeWatermark | None = None,
    **reader_kwargs: Any,
) -> GateDecision:
    """Read the sensors (and the watermark) and evaluate, without running anything: for ``/api/status``."""
    decision, _ = _decide(sensors, cfg, watermark, reader_kwargs)
    return decision


def run_if_idle(
    job: Callable[[], T],
    *,
    sensors: GatingSensors | Callable[[], GatingSensors] | None = None,
    cfg: GatingConfig | None = None,
    watermark: EpisodeWatermark | None = None,
    **reader_kwargs: Any,
) -> tuple[GateDecision, T | None]:
    """Run ``job`` only when every gate passes; returns (decision, the job's result or None).

    ``sensors`` None reads this board's sensors (``reader_kwargs`` go to :func:`read_sensors`:
    ``sysfs_root``, ``state_file``, ``env``); a callable is called once. After ``job`` returns
    (an exception propagates and leaves the mark alone, so the data is retried), the watermark
    is marked with the snapshot taken before the job.
    """
    decision, snapshot = _decide(sensors, cfg, watermark, reader_kwargs)
    if not decision.ok:
        log.info("training skipped: %s (%s)", decision.reason, decision.detail)
        return decision, None
    result = job()
    if watermark is not None and snapshot is not None:
        watermark.mark_trained(snapshot)
    return decision, result


def _decide(
    sensors: GatingSensors | Callable[[], GatingSensors] | None,
    cfg: GatingConfig | None,
    watermark: EpisodeWatermark | None,
    reader_kwargs: dict[str, Any],
) -> tuple[GateDecision, EpisodeSnapshot | None]:
    if sensors is None:
        reading = read_sensors(**reader_kwargs)
    else:
        if reader_kwargs:
            raise TypeError(f"sensor reader options {sorted(reader_kwargs)} given with explicit sensors")
        reading = sensors() if callable(sensors) else sensors
    snapshot = watermark.snapshot() if watermark is not None else None
    new = watermark.new_since(snapshot) if watermark is not None and snapshot is not None else None
    return evaluate_gates(reading, cfg, new_episodes=new), snapshot
