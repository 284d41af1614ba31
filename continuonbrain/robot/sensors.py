"""The robot's sensors, as the training gates read them on a Raspberry Pi 5.

Every reader takes its sysfs root (and the robot state file, and the environment) as
arguments, so tests and other boards can point them elsewhere; none raises for a missing
sensor: it reports None or "unknown".

* temperature (:func:`read_temperature_c`): ``<root>/class/thermal/thermal_zone0/temp``
  (millidegrees). Also what the trainers' thermal guards and ``/api/status`` read;
* battery (:func:`read_battery_level`): the first ``<root>/class/power_supply/*`` whose
  ``type`` is ``Battery`` (and whose ``scope`` is not ``Device``: that is a Bluetooth
  gamepad's battery, not the robot's), its ``capacity`` percent as a fraction. The env var
  ``BATTERY_LEVEL`` overrides it for UPS HATs without a kernel driver: a fraction (``"0.57"``)
  or a percent (``"57"`` or ``"57%"``);
* idle / teleop (:func:`read_robot_state`): the robot stack's state file (default
  :data:`DEFAULT_STATE_FILE`), a JSON object ``{"mode": "idle"|"teleop"|"autonomous"|...,
  "teleop_active": bool, "idle": bool}``; the env vars ``ROBOT_MODE`` and ``TELEOP_ACTIVE``
  override it.

:func:`read_sensors` reads them all into one :class:`GatingSensors`, which
:func:`continuonbrain.robot.gates.evaluate_gates` judges. Standard library only.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STATE_FILE",
    "THERMAL_ZONE",
    "GatingSensors",
    "RobotState",
    "parse_battery_level",
    "read_battery_level",
    "read_robot_state",
    "read_sensors",
    "read_temperature_c",
]

#: Where the robot stack publishes its mode (tmpfs: it vanishes on reboot, as it should).
DEFAULT_STATE_FILE = "/run/continuonos/robot_state.json"
#: The SoC's thermal zone, below the sysfs root.
THERMAL_ZONE = "class/thermal/thermal_zone0/temp"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


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


# --- Pi 5 sensor readers ---------------------------------------------------------------------


def read_temperature_c(sysfs_root: str | os.PathLike = "/sys") -> float | None:
    """SoC temperature from ``<root>/class/thermal/thermal_zone0/temp`` (millidegrees), or None."""
    path = Path(sysfs_root) / THERMAL_ZONE
    try:
        return int(path.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


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
