"""ContinuonBrain: offline-first robot learning that runs on the robot itself.

The folders follow the data path: ``rlds`` (episodes in) -> ``trainer`` (HOPE seed and LoRA
training) -> ``models`` (the model store and the promotion gate) -> ``runtime``
(BrainService, HTTP API, Robot Editor), with ``hope`` (the model), ``robot`` (sensors and
the gates on training) and ``sim`` (built-in environments, experts, evaluation) beside them.
"""

__version__ = "0.1.0"
