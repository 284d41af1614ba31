"""The robot as the trainers and the runtime see it: its sensors and the gates on training.

* :mod:`~continuonbrain.robot.sensors`: SoC temperature, battery, the robot stack's mode
  (idle, teleop), read from sysfs and the robot's state file; standard library only.
* :mod:`~continuonbrain.robot.gates`: may a training run start now? idle, teleop, battery,
  thermal and new-data gates, in a fixed order, with stable reason codes.
* :mod:`~continuonbrain.robot.watermark`: how many episodes arrived since the last run, by
  the RLDS reader's own rules for what an episode is.

This package imports :mod:`continuonbrain.rlds` (the watermark) and
:mod:`continuonbrain.fsutil` only, never the trainers or the runtime. Running a job when the
gates allow it (:func:`~continuonbrain.trainer.scheduler.run_if_idle`) is the training
side's; ``continuonbrain.trainer.scheduler`` also re-exports these names, where they used to be.

The names below are imported lazily (PEP 562)::

    from continuonbrain.robot import GatingConfig, evaluate_gates, read_sensors, read_temperature_c
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from continuonbrain.lazy import lazy_exports

_EXPORTS = {
    "GatingSensors": "sensors",
    "read_sensors": "sensors",
    "read_temperature_c": "sensors",
    "DEFAULT_STATE_FILE": "sensors",
    "GatingConfig": "gates",
    "GateDecision": "gates",
    "check_gates": "gates",
    "evaluate_gates": "gates",
    "EpisodeWatermark": "watermark",
}

__all__ = [
    "DEFAULT_STATE_FILE",
    "EpisodeWatermark",
    "GateDecision",
    "GatingConfig",
    "GatingSensors",
    "check_gates",
    "evaluate_gates",
    "read_sensors",
    "read_temperature_c",
]

if TYPE_CHECKING:
    from continuonbrain.robot.gates import GateDecision, GatingConfig, check_gates, evaluate_gates
    from continuonbrain.robot.sensors import DEFAULT_STATE_FILE, GatingSensors, read_sensors, read_temperature_c
    from continuonbrain.robot.watermark import EpisodeWatermark


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
