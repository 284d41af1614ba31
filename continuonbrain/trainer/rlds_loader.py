"""Episodes for on-robot adaptation: the newest ``max_episodes`` good ones, oldest first.

Adaptation is about what the robot did lately, so the loader keeps only the newest episodes,
in a bounded deque while it streams the directory (memory stays flat whatever the history on
the SD card). "Newest" is read order, as for the promotion gate
(:func:`continuonbrain.models.promotion.tail_episodes`): readers walk directories sorted by
name, and episode ids and logger file names grow with time. Bad episodes are skipped (logged
by default): one corrupt recording must not stop the robot from learning from the others.
Imagined episodes are admitted under ``max_imagined_fraction`` (default 0: none), the seed
trainer's rule; reading and the rule are :mod:`continuonbrain.trainer.episode_mix`'s, the one
episode source of both trainers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from continuonbrain.rlds import Episode
from continuonbrain.rlds.reader import OnError
from continuonbrain.trainer.episode_mix import newest, read_source, select

#: ``loader(rlds_dir, max_episodes) -> episodes``, oldest first, newest last.
EpisodeLoader = Callable[[str | os.PathLike, int], list[Episode]]

__all__ = ["EpisodeLoader", "RLDSEpisodeLoader", "make_episode_loader"]


@dataclass
class RLDSEpisodeLoader:
    """The default :data:`EpisodeLoader`; :meth:`select` re-reads a resumed run's exact episodes."""

    max_imagined_fraction: float = 0.0
    split: str | None = None
    on_error: OnError = "warn"
    validate: bool = True

    def _source(self, rlds_dir: str | os.PathLike):
        return read_source(rlds_dir, self.split, self.on_error, self.validate, missing_ok=True)

    def __call__(self, rlds_dir: str | os.PathLike, max_episodes: int) -> list[Episode]:
        return newest(self._source(rlds_dir)(), max_episodes, self.max_imagined_fraction)

    def select(self, rlds_dir: str | os.PathLike, ids: Sequence[str]) -> list[Episode]:
        """The episodes with these ids, in this order (``KeyError`` when one is gone)."""
        return select(self._source(rlds_dir)(), ids)


def make_episode_loader(
    *,
    include_imagined: bool = False,
    split: str | None = None,
    on_error: OnError = "warn",
    validate: bool = True,
    max_imagined_fraction: float | None = None,
) -> RLDSEpisodeLoader:
    """A loader for :func:`~continuonbrain.trainer.local_lora_trainer.maybe_run_local_training`.

    Takes every layout ``read_episodes`` reads (Continuon JSON/JSONL, TFDS, TFRecord shards,
    Donkeycar tubs); ``split`` picks a TFDS split. A missing ``rlds_dir`` gives no episodes (the
    trainer then reports "no_data") rather than an error: a robot that has not recorded yet is
    normal. ``max_imagined_fraction`` caps imagined episodes (default: 1 with
    ``include_imagined``, the old switch, else 0).
    """
    fraction = max_imagined_fraction if max_imagined_fraction is not None else (1.0 if include_imagined else 0.0)
    return RLDSEpisodeLoader(fraction, split, on_error, validate)
