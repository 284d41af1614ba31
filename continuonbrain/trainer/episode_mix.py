"""The training stream: real episodes with imagined ones mixed in, never above ``max_imagined_fraction``.

Imagined episodes (``continuonbrain imagine``; ``provenance.origin`` ``imagined:*``, tag
``imagined``) can reach the trainer two ways, and both count against one cap:

* in ``rlds_dir`` beside the real ones: they are admitted in stream order while the share
  of imagined episodes among those yielded so far stays within the cap (the exact prefix
  rule of :func:`~continuonbrain.rlds.windows.limit_imagined`); the rest are dropped. Where
  they sit in the directory order then decides which get in.
* in ``imagined_rlds_dirs`` (the recommended way): an epoch is one pass over the real
  episodes, and after each real episode imagined ones are offered while the share stays
  within the cap, so they are spread evenly through the epoch and fill the cap exactly.
  They are drawn from a bounded shuffle (``IMAGINED_SHUFFLE_EPISODES`` episodes) of those
  dirs seeded with ``(seed, epoch)``: when there are more imagined episodes than the cap
  admits in one epoch, successive epochs use different ones. Episodes in those dirs that
  are not marked imagined are skipped with a warning (real data belongs in ``rlds_dir``,
  where it is not capped).

The stream depends on the epoch, so the source is an :class:`EpochSource`: the window
datasets call ``iter_episodes(epoch)`` (see :func:`~continuonbrain.rlds.windows.open_source`),
which keeps a resumed run's data exactly that of an uninterrupted one, and calling it
(``source()``) gives epoch 0, for shape inference and normaliser fitting.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from continuonbrain.rlds import Episode
from continuonbrain.rlds.windows import EpisodeSource, limit_imagined, open_source, shuffle_stream

__all__ = ["IMAGINED_SHUFFLE_EPISODES", "EpochSource", "ImaginedMix"]

log = logging.getLogger(__name__)

#: Imagined episodes held by the per-epoch shuffle (bounded memory: whole episodes are held).
IMAGINED_SHUFFLE_EPISODES = 64


class EpochSource:
    """A re-iterable episode source whose stream may depend on the epoch.

    ``fn(epoch)`` returns an iterable of episodes; ``iter_episodes(epoch)`` is what
    :func:`~continuonbrain.rlds.windows.open_source` calls, and ``source()`` is epoch 0.
    """

    def __init__(self, fn: Callable[[int], Iterable[Episode]]):
        self._fn = fn

    def iter_episodes(self, epoch: int = 0) -> Iterator[Episode]:
        return iter(self._fn(int(epoch)))

    def __call__(self) -> Iterator[Episode]:
        return self.iter_episodes(0)


class ImaginedMix(EpochSource):
    """Real episodes, plus imagined ones offered after each real one, capped (see the module doc).

    ``real``: any episode source (a path, a callable, ...). ``imagined``: sources holding
    imagined episodes. ``max_fraction`` None means no cap, which is only allowed without
    imagined sources (with them the cap is what sets their share).
    """

    def __init__(
        self,
        real: EpisodeSource,
        imagined: Sequence[EpisodeSource] = (),
        max_fraction: float | None = None,
        seed: int = 0,
        shuffle_episodes: int = IMAGINED_SHUFFLE_EPISODES,
    ):
        if imagined and max_fraction is None:
            raise ValueError("imagined episode sources need max_imagined_fraction: the cap sets their share")
        if max_fraction is not None and not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_imagined_fraction must be in [0, 1], got {max_fraction}")
        self.real = real
        self.imagined = list(imagined)
        self.max_fraction = max_fraction
        self.seed = int(seed)
        self.shuffle_episodes = int(shuffle_episodes)
        self._warned: set[str] = set()
        super().__init__(self._epoch)

    def _imagined_stream(self, epoch: int) -> Iterator[Episode]:
        """One shuffled pass over the imagined sources, non-imagined episodes skipped."""

        def only_imagined() -> Iterator[Episode]:
            for ep in itertools.chain.from_iterable(open_source(s, epoch) for s in self.imagined):
                if ep.is_imagined:
                    yield ep
                elif ep.episode_id not in self._warned:
                    self._warned.add(ep.episode_id)
                    log.warning(
                        "episode %s is in an imagined_rlds_dirs directory but is not marked imagined "
                        "(provenance.origin 'imagined:*' or tag 'imagined'): skipped; real episodes go in rlds_dir",
                        ep.episode_id,
                    )

        rng = np.random.default_rng([self.seed, int(epoch), 0x1A9])
        return shuffle_stream(only_imagined(), self.shuffle_episodes, rng)

    def _epoch(self, epoch: int) -> Iterator[Episode]:
        admitted = {"total": 0, "imagined": 0}  # what the cap let through, updated as it is yielded
        f = self.max_fraction

        def room() -> bool:
            return f is not None and admitted["imagined"] + 1 <= f * (admitted["total"] + 1)

        def offered() -> Iterator[Episode]:
            extra = self._imagined_stream(epoch) if self.imagined and f else None
            for ep in open_source(self.real, epoch):
                yield ep
                while extra is not None and room():
                    nxt = next(extra, None)
                    if nxt is None:
                        extra = None
                        break
                    yield nxt

        for ep in limit_imagined(offered(), f):
            admitted["total"] += 1
            admitted["imagined"] += int(ep.is_imagined)
            yield ep
