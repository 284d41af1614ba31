"""Training gates: the robot keeps learning only when it is idle, cool, charged and not teleoperated.

On-robot LoRA training competes with the robot itself for CPU, memory, heat and battery. A
training run started while an operator teleoperates the robot adds control latency; one
started on a hot SoC throttles the motor loop; one started on a low battery strands the
robot away from its dock. And a run with no new episodes burns all of that for nothing.
So every scheduled run first asks :func:`evaluate_gates` (the trainers through
:func:`~continuonbrain.trainer.scheduler.run_if_idle`, ``/api/status`` through
:func:`check_gates`).

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

The inputs: :mod:`continuonbrain.robot.sensors` (temperature, battery, the robot's mode) and
:mod:`continuonbrain.robot.watermark` (new episodes since the last run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from continuonbrain.config_base import ConfigModel
from continuonbrain.robot.sensors import GatingSensors, read_sensors

if TYPE_CHECKING:  # the watermark (and the RLDS reader it uses) is the caller's to import
    from continuonbrain.robot.watermark import EpisodeSnapshot, EpisodeWatermark

__all__ = [
    "GATE_ORDER",
    "REASON_BATTERY",
    "REASON_HOT",
    "REASON_NOT_IDLE",
    "REASON_NO_DATA",
    "REASON_TELEOP",
    "GateDecision",
    "GatingConfig",
    "check_gates",
    "decide",
    "evaluate_gates",
]

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


# --- config, decision ------------------------------------------------------------------------


class GatingConfig(ConfigModel):
    """Thresholds for the gates (a strict :class:`~continuonbrain.config_base.ConfigModel`).

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
    min_new_episodes: int = Field(1, ge=1)

    @field_validator("min_battery")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"min_battery is a fraction in 0..1 (0.4 = 40 %), got {value}")
        return value


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


# --- reading and deciding --------------------------------------------------------------------


def check_gates(
    *,
    sensors: GatingSensors | Callable[[], GatingSensors] | None = None,
    cfg: GatingConfig | None = None,
    watermark: EpisodeWatermark | None = None,
    **reader_kwargs: Any,
) -> GateDecision:
    """Read the sensors (and the watermark) and evaluate, without running anything: for ``/api/status``."""
    decision, _ = decide(sensors, cfg, watermark, **reader_kwargs)
    return decision


def decide(
    sensors: GatingSensors | Callable[[], GatingSensors] | None = None,
    cfg: GatingConfig | None = None,
    watermark: EpisodeWatermark | None = None,
    **reader_kwargs: Any,
) -> tuple[GateDecision, EpisodeSnapshot | None]:
    """The decision and the watermark snapshot it was based on (None without a watermark).

    ``sensors`` None reads this board's sensors (``reader_kwargs`` go to
    :func:`~continuonbrain.robot.sensors.read_sensors`: ``sysfs_root``, ``state_file``,
    ``env``); a callable is called once. A caller that then runs a job marks the watermark
    with this snapshot, taken before the job.
    """
    if sensors is None:
        reading = read_sensors(**reader_kwargs)
    else:
        if reader_kwargs:
            raise TypeError(f"sensor reader options {sorted(reader_kwargs)} given with explicit sensors")
        reading = sensors() if callable(sensors) else sensors
    snapshot = watermark.snapshot() if watermark is not None else None
    new = watermark.new_since(snapshot) if watermark is not None and snapshot is not None else None
    return evaluate_gates(reading, cfg, new_episodes=new), snapshot
