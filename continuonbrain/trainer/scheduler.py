"""Run a training job only when the robot's gates allow it: :func:`run_if_idle`.

The gates, the sensors and the new-data watermark live in :mod:`continuonbrain.robot`
(:mod:`~continuonbrain.robot.gates`, :mod:`~continuonbrain.robot.sensors`,
:mod:`~continuonbrain.robot.watermark`), where the runtime reads them too. This module keeps
:func:`run_if_idle` (it runs the job, so it is the training side's) and re-exports the names
that used to live here, so ``from continuonbrain.trainer.scheduler import ...`` keeps
working; new code imports them from :mod:`continuonbrain.robot`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

# Re-exported from their new homes, where they used to be defined.
from continuonbrain.robot.gates import (
    GATE_ORDER,
    REASON_BATTERY,
    REASON_HOT,
    REASON_NO_DATA,
    REASON_NOT_IDLE,
    REASON_TELEOP,
    GateDecision,
    GatingConfig,
    check_gates,
    decide,
    evaluate_gates,
)
from continuonbrain.robot.sensors import (
    DEFAULT_STATE_FILE,
    GatingSensors,
    RobotState,
    parse_battery_level,
    read_battery_level,
    read_robot_state,
    read_sensors,
    read_temperature_c,
)
from continuonbrain.robot.watermark import WATERMARK_FILE, EpisodeSnapshot, EpisodeWatermark

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "DEFAULT_STATE_FILE",
    "GATE_ORDER",
    "REASON_BATTERY",
    "REASON_HOT",
    "REASON_NOT_IDLE",
    "REASON_NO_DATA",
    "REASON_TELEOP",
    "WATERMARK_FILE",
    "EpisodeSnapshot",
    "EpisodeWatermark",
    "GateDecision",
    "GatingConfig",
    "GatingSensors",
    "RobotState",
    "check_gates",
    "evaluate_gates",
    "parse_battery_level",
    "read_battery_level",
    "read_robot_state",
    "read_sensors",
    "read_temperature_c",
    "run_if_idle",
]


def run_if_idle(
    job: Callable[[], T],
    *,
    sensors: GatingSensors | Callable[[], GatingSensors] | None = None,
    cfg: GatingConfig | None = None,
    watermark: EpisodeWatermark | None = None,
    **reader_kwargs: Any,
) -> tuple[GateDecision, T | None]:
    """Run ``job`` only when every gate passes; returns (decision, the job's result or None).

    ``sensors`` None reads this board's sensors (``reader_kwargs`` go to
    :func:`~continuonbrain.robot.sensors.read_sensors`: ``sysfs_root``, ``state_file``,
    ``env``); a callable is called once. After ``job`` returns (an exception propagates and
    leaves the mark alone, so the data is retried), the watermark is marked with the snapshot
    taken before the job.
    """
    decision, snapshot = decide(sensors, cfg, watermark, **reader_kwargs)
    if not decision.ok:
        log.info("training skipped: %s (%s)", decision.reason, decision.detail)
        return decision, None
    result = job()
    if watermark is not None and snapshot is not None:
        watermark.mark_trained(snapshot)
    return decision, result
