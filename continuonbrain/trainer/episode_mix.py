"""The one episode source of both trainers: good episodes read from disk, imagined ones capped by one rule.

**The rule for imagined episodes** (``provenance.origin`` ``imagined:*`` or tag ``imagined``,
:attr:`Episode.is_imagined <continuonbrain.rlds.Episode.is_imagined>`): at every point of the
stream at most ``max_imagined_fraction`` of the episodes yielded so far are imagined
(:func:`~continuonbrain.rlds.windows.limit_imagined`, the exact prefix rule). The seed trainer
applies it to its training stream (:class:`ImaginedMix`, below), the adapter trainer to the newest
episodes it selects (:func:`newest`; its ``data.max_imagined_fraction`` defaults to 0: real
episodes only), and neither gate ever holds out an imagined episode. Episodes are read by
:func:`read_source` (bad ones skipped with a warning; a directory that does not exist yet holds
no episodes).

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

**Rehearsal** (the adapter trainer's replay set, :func:`rehearsal_mix`): the run's own episodes
and replay episodes of the seed's task interleaved by the window mixer
(:class:`~continuonbrain.rlds.windows.MixedSource`), weighted so that ``share`` of the
training *windows* (steps: Fast windows end at every step) come from replay, and one epoch is
about one pass over the run's own episodes.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuonbrain.rlds import Episode, read_episodes
from continuonbrain.rlds.reader import OnError

if TYPE_CHECKING:
    from continuonbrain.rlds.windows import EpisodeSource

# ``continuonbrain.rlds.windows`` (where the imagined cap, ``open_source`` and ``shuffle_stream``
# live) imports torch. This module is also the adapter's episode source, which the command
# line, ``import continuonbrain.trainer`` and stub dry runs load without torch, so the three
# are imported where they are used (:func:`_windows`), not here.


def _windows() -> Any:
    from continuonbrain.rlds import windows

    return windows


__all__ = [
    "IMAGINED_SHUFFLE_EPISODES",
    "EpochSource",
    "ImaginedMix",
    "newest",
    "read_source",
    "rehearsal_mix",
    "select",
    "training_stream",
]

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
            for ep in itertools.chain.from_iterable(_windows().open_source(s, epoch) for s in self.imagined):
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
        return _windows().shuffle_stream(only_imagined(), self.shuffle_episodes, rng)

    def _epoch(self, epoch: int) -> Iterator[Episode]:
        admitted = {"total": 0, "imagined": 0}  # what the cap let through, updated as it is yielded
        f = self.max_fraction

        def room() -> bool:
            return f is not None and admitted["imagined"] + 1 <= f * (admitted["total"] + 1)

        def offered() -> Iterator[Episode]:
            extra = self._imagined_stream(epoch) if self.imagined and f else None
            for ep in _windows().open_source(self.real, epoch):
                yield ep
                while extra is not None and room():
                    nxt = next(extra, None)
                    if nxt is None:
                        extra = None
                        break
                    yield nxt

        for ep in _windows().limit_imagined(offered(), f):
            admitted["total"] += 1
            admitted["imagined"] += int(ep.is_imagined)
            yield ep


# --------------------------------------------------------------------------- reading


def read_source(
    path: str | os.PathLike,
    split: str | None = None,
    on_error: OnError = "warn",
    validate: bool = True,
    missing_ok: bool = False,
) -> Callable[[], Iterator[Episode]]:
    """A re-iterable source of the good episodes under ``path`` (every layout ``read_episodes``
    takes; bad episodes are skipped, logged by default). ``missing_ok``: a path that does not
    exist holds no episodes (a robot that has not recorded yet), instead of an error."""

    def episodes() -> Iterator[Episode]:
        if missing_ok and not Path(path).exists():
            return iter(())
        return read_episodes(path, split, on_error=on_error, validate=validate)

    return episodes


def training_stream(
    rlds_dir: str | os.PathLike,
    imagined_dirs: Sequence[str | os.PathLike] = (),
    max_imagined_fraction: float | None = None,
    seed: int = 0,
) -> ImaginedMix:
    """The seed trainer's stream: the episodes of ``rlds_dir`` with those of ``imagined_dirs``
    mixed in, imagined ones (from either) under the cap."""
    return ImaginedMix(read_source(rlds_dir), [read_source(p) for p in imagined_dirs], max_imagined_fraction, seed=seed)


def newest(episodes: Iterable[Episode], n: int, max_imagined_fraction: float | None = 0.0) -> list[Episode]:
    """The newest ``n`` episodes of a stream (read order: names grow with time), oldest first,
    with imagined ones admitted under the cap (counted over the selection, in order). Streams
    with a bounded deque: memory stays flat whatever the history on the SD card."""
    keep: deque[Episode] = deque(maxlen=max(1, int(n)))
    for ep in episodes:
        if ep.is_imagined and not max_imagined_fraction:
            continue  # never kept: a cap of 0 must not let imagined episodes push real ones out
        keep.append(ep)
    if max_imagined_fraction is None or max_imagined_fraction >= 1 or not any(ep.is_imagined for ep in keep):
        return list(keep)  # nothing for the cap to do
    return list(_windows().limit_imagined(keep, max_imagined_fraction))


def select(episodes: Iterable[Episode], ids: Sequence[str]) -> list[Episode]:
    """The episodes whose ids are ``ids``, in that order (a resumed run's exact selection);
    raises ``KeyError`` naming the first one that is not there."""
    wanted: Collection[str] = set(ids)
    found = {ep.episode_id: ep for ep in episodes if ep.episode_id in wanted}
    missing = [i for i in ids if i not in found]
    if missing:
        raise KeyError(f"{len(missing)} episode(s) are gone, e.g. {missing[0]!r}")
    return [found[i] for i in ids]


def rehearsal_mix(
    episodes: Sequence[Episode], replay: Sequence[Episode], share: float, seed: int = 0
) -> Sequence[Episode] | EpisodeSource:
    """The adapter's training source: ``episodes`` (the new task) with ``replay`` (the seed's
    task) mixed in so that ``share`` of the windows are replay windows.

    Without replay or with ``share`` 0 this is ``episodes`` itself. Otherwise the two lists go
    to :class:`~continuonbrain.rlds.windows.MixedSource` (seeded with ``(seed, epoch)``: a
    resumed run sees the same stream) with episode weights divided by each list's mean length
    (its weights count episodes; a replay set of longer episodes would otherwise bring more
    than ``share`` of the windows), cycling both, and an epoch of as many draws as bring each
    new episode about once. Why episodes are interleaved rather than appended: the windows of
    an epoch come in episode order through a bounded shuffle buffer, so appended replay
    episodes would give batches of the new task only, then of the old one only.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"replay share must be in [0, 1), got {share}")
    if not replay or share == 0.0 or not episodes:
        return list(episodes)

    def mean_len(eps: Sequence[Episode]) -> float:
        return max(1.0, float(np.mean([len(ep) for ep in eps])))

    w_new, w_replay = (1.0 - share) / mean_len(episodes), share / mean_len(replay)
    p_new = w_new / (w_new + w_replay)
    per_epoch = max(len(episodes) + 1, round(len(episodes) / p_new))
    return _windows().MixedSource(
        [(list(episodes), w_new), (list(replay), w_replay)], seed=seed, episodes_per_epoch=per_epoch
    )
