"""Episodes for on-robot adaptation: the newest ``max_episodes`` good ones, oldest first.

Adaptation is about what the robot did lately, so the loader keeps only the newest episodes,
in a bounded deque while it streams the directory (memory stays flat whatever the history on
the SD card). "Newest" is read order, as for the promotion gate
(:func:`continuonbrain.trainer.promotion.tail_episodes`): readers walk directories sorted by
name, and episode ids and logger file names grow with time. Bad episodes are skipped (logged
by default): one corrupt recording must not stop the robot from learning from the others.
Imagined episodes (``provenance.origin`` ``imagined:*``) are left out unless asked for.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

from continuonbrain.rlds import Episode, read_episodes
from continuonbrain.rlds.reader import OnError

#: ``loader(rlds_dir, max_episodes) -> episodes``, oldest first, newest last.
EpisodeLoader = Callable[[str | os.PathLike, int], list[Episode]]

__all__ = ["EpisodeLoader", "make_episode_loader"]


def make_episode_loader(
    *,
    include_imagined: bool = False,
    split: str | None = None,
    on_error: OnError = "warn",
    validate: bool = True,
) -> EpisodeLoader:
    """A loader for :func:`~continuonbrain.trainer.local_lora_trainer.maybe_run_local_training`.

    Takes every layout ``read_episodes`` reads (Continuon JSON/JSONL, TFDS, TFRecord shards);
    ``split`` picks a TFDS split. A missing ``rlds_dir`` gives no episodes (the trainer then
    reports "no_data") rather than an error: a robot that has not recorded yet is normal.
    """

    def load(rlds_dir: str | os.PathLike, max_episodes: int) -> list[Episode]:
        root = Path(rlds_dir)
        if not root.exists():
            return []
        newest: deque[Episode] = deque(maxlen=max(1, int(max_episodes)))
        for ep in read_episodes(root, split, on_error=on_error, validate=validate):
            if include_imagined or not ep.is_imagined:
                newest.append(ep)
        return list(newest)

    return load
