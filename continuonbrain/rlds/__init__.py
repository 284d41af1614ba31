"""RLDS in: read, validate, convert, write and window robot episodes, with no TensorFlow.

``read_episodes(path, split=None)`` takes any supported layout (Continuon JSON/JSONL episode
directories, single ``.json``/``.jsonl`` files, TFDS RLDS datasets and TFRecord shards) and
yields :class:`Episode` objects one at a time; ``write_episodes`` writes the Continuon or the
TFDS layout. Bad data raises or reports :class:`RLDSError`, which names the file, episode,
step and field.
"""

from continuonbrain.rlds.episode import DEFAULT_CONTROL_HZ, Episode, ImageColumn, LazyImage, Step
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.reader import EpisodeResult, read_episodes, scan_episodes
from continuonbrain.rlds.writer import write_episodes

__all__ = [
    "DEFAULT_CONTROL_HZ",
    "Episode",
    "EpisodeResult",
    "ImageColumn",
    "LazyImage",
    "RLDSError",
    "Step",
    "read_episodes",
    "scan_episodes",
    "write_episodes",
]
