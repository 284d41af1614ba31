"""Training windows over RLDS episodes at the three HOPE time scales.

The brain runs three loops at different rates, and each one learns from windows of
experience as long as the horizon it reasons over:

* **Fast** (reflex policy), 50-100 ms: the last few control steps, enough to see velocity
  and react. :class:`FastWindowDataset`, default 0.1 s, one window ending at *every* step.
* **Mid** (world model), 1-10 s: long enough to predict the consequence of an action and to
  carry context to the Fast loop. :class:`MidTrajectoryDataset`, default 2 s.
* **Slow** (task level), minutes: whole sub-tasks. :class:`SlowDataset`, default 120 s.

Windows are sized in **seconds**, not steps, because episodes come from robots and
simulators logging at different control rates (a 50 Hz Pi logger, a 10 Hz teleop rig): a
"2 s" world-model horizon must mean 2 s of the world on each of them. Each episode's rate is
``episode.control_hz`` (median step timestamp spacing, else ``control_hz`` in the metadata,
else :data:`~continuonbrain.rlds.episode.DEFAULT_CONTROL_HZ` = 50 Hz), and
:func:`window_steps` turns seconds into steps: at 50 Hz 0.1 s is 5 steps and 2 s is 100.
Episodes at different rates therefore give windows of different lengths; to batch them
together, pass ``steps=`` (a fixed length) or ``control_hz=`` (one assumed rate).

Alignment convention (exact; the tests check it): a window of length ``L`` *ending* at step
``t`` covers steps ``[t - L + 1, t]``. Window ends run ``first, first + stride, ...`` up to
the last step ``T - 1``, where ``first = 0`` with ``pad_start=True`` (a window ends at the
very first step, so the policy also learns how episodes begin) and ``first = L - 1``
otherwise (only full windows; an episode shorter than ``L`` still gives one window, itself).
With ``cover_end=True`` (the default) one more window ends at ``T - 1`` when the stride does
not land there, so the last step (``is_last``/``is_terminal``) is always seen. Windows never
run past the end of an episode and never cross into another one. Steps before the start of
the episode are padding: zeros (``False`` for flags) with ``mask`` ``False``; ``start`` is
``t - L + 1`` and is negative for padded windows.

The pure-numpy core (:func:`window_steps`, :func:`window_ends`, :func:`count_windows`,
:func:`iter_windows`) slices column views and holds no per-step Python objects, so the
slicing is fast and testable without torch. The torch ``IterableDataset`` classes wrap it
with episode streaming, worker/rank sharding, a bounded shuffle buffer, weighted source
mixing (:class:`MixedSource`) and a resumable position. This module imports torch (guarded);
``import continuonbrain.rlds`` does not import this module.

Why one module of 731 lines: the numpy window core and the torch datasets share the alignment
convention above, which the tests check on both. Split candidate: episode sources and mixing
(:func:`open_source`, :func:`limit_imagined`, :class:`MixedSource`, :func:`shuffle_stream`,
~170 lines) into a sources module, re-exported here.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from continuonbrain.rlds.episode import Episode, ImageColumn, features_flat
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.reader import read_episodes

try:  # torch is a project dependency, but the numpy core must not need it.
    import torch
    from torch.utils.data import IterableDataset as _TorchIterableDataset
    from torch.utils.data import get_worker_info
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None  # type: ignore[assignment]
    _TorchIterableDataset = object  # type: ignore[assignment,misc]

    def get_worker_info() -> Any:  # type: ignore[misc]
        return None


log = logging.getLogger(__name__)

#: Default window lengths in seconds for the three loops.
DEFAULT_FAST_S = 0.1
DEFAULT_MID_S = 2.0
DEFAULT_SLOW_S = 120.0

#: The intended ranges (seconds). Anything positive is allowed; a length outside its range is
#: logged as a warning because it is usually a unit mistake (``fast=100`` meaning 100 ms).
FAST_RANGE_S = (0.05, 0.1)
MID_RANGE_S = (1.0, 10.0)
SLOW_RANGE_S = (60.0, 3600.0)

#: A window item: numpy arrays (or torch tensors), an ``images`` dict, and int trace fields.
Window = dict[str, Any]

#: Where episodes come from: a path for :func:`~continuonbrain.rlds.read_episodes`, a
#: re-iterable collection of episodes, a callable returning a fresh iterable, or an object
#: with ``iter_episodes(epoch)`` (such as :class:`MixedSource`).
EpisodeSource = Any

ImaginedUnit = Literal["episodes", "steps"]


# --------------------------------------------------------------------------- numpy core


def window_steps(seconds: float, hz: float) -> int:
    """Steps in a window of ``seconds`` at ``hz``: the nearest integer (halves up), at least 1.

    Rounding to nearest (not up) keeps 0.1 s at 50 Hz at exactly 5 steps despite float error
    (``0.1 * 50 == 5.000000000000001``); the floor of 1 keeps a very short window usable at a
    low rate instead of empty.
    """
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"window length must be a positive number of seconds, got {seconds!r}")
    if not (math.isfinite(hz) and hz > 0):
        raise ValueError(f"control rate must be a positive number of Hz, got {hz!r}")
    return max(1, math.floor(round(seconds * hz, 6) + 0.5))


def window_ends(
    n_steps: int, length: int, stride: int = 1, *, pad_start: bool = False, cover_end: bool = True
) -> np.ndarray:
    """The step index at which each window ends, in order (see the module doc for the rule).

    Windows are indexed by their *last* step so that a window exists for every step at which
    a policy has to act, and so that padding is only ever needed at the start.
    """
    if length < 1 or stride < 1:
        raise ValueError(f"window length and stride must be >= 1, got length={length}, stride={stride}")
    if n_steps <= 0:
        return np.zeros(0, np.int64)
    first = 0 if pad_start else min(length - 1, n_steps - 1)
    ends = np.arange(first, n_steps, stride, dtype=np.int64)
    if cover_end and ends[-1] != n_steps - 1:
        ends = np.append(ends, n_steps - 1)
    return ends


def count_windows(
    n_steps: int, length: int, stride: int = 1, *, pad_start: bool = False, cover_end: bool = True
) -> int:
    """How many windows :func:`iter_windows` yields for an episode of ``n_steps`` steps."""
    if n_steps <= 0:
        return 0
    first = 0 if pad_start else min(length - 1, n_steps - 1)
    regular = (n_steps - 1 - first) // stride + 1
    return regular + int(cover_end and (n_steps - 1 - first) % stride != 0)


def iter_windows(
    episode: Episode,
    length: int,
    stride: int = 1,
    *,
    pad_start: bool = False,
    cover_end: bool = True,
    observation_keys: Sequence[str] | None = None,
    action_keys: Sequence[str] | None = None,
    image_keys: Sequence[str] = (),
    episode_index: int = 0,
) -> Iterator[Window]:
    """Yield the windows of one episode as dicts of numpy arrays.

    Keys: ``observation`` float32 ``[L, D]`` (dict observations: numeric keys concatenated in
    ``observation_keys`` order, default sorted, via :func:`features_flat`), ``action`` float32
    ``[L, A]``, ``reward``/``discount`` float32 ``[L]``, ``is_first``/``is_last``/
    ``is_terminal``/``mask`` bool ``[L]``, ``episode_index`` and ``start`` ints, and
    ``images`` (only when ``image_keys`` is given): name -> ``uint8 [L, H, W, C]``.

    The arrays are views into one per-episode column block (copied once per episode only
    when padding is needed), so a window costs a handful of slices; do not modify them in
    place. Images are decoded only for ``image_keys`` and each frame only once per episode
    pass (a cache as long as one window), since overlapping windows share frames.
    """
    n = len(episode)
    ends = window_ends(n, length, stride, pad_start=pad_start, cover_end=cover_end)
    if len(ends) == 0:
        return
    pad = max(0, length - 1 - int(ends[0]))
    cols, numeric_images, lazy_images = _episode_columns(episode, observation_keys, action_keys, image_keys, pad)
    frames = _FrameCache(lazy_images, length)
    for end in ends.tolist():
        start = end - length + 1
        o = start + pad
        item: Window = {k: v[o : o + length] for k, v in cols.items()}
        if image_keys:
            item["images"] = {
                name: col[o : o + length]
                if (col := numeric_images.get(name)) is not None
                else frames.window(name, start)
                for name in image_keys
            }
        item["episode_index"] = episode_index
        item["start"] = start
        yield item


def _episode_columns(
    episode: Episode,
    observation_keys: Sequence[str] | None,
    action_keys: Sequence[str] | None,
    image_keys: Sequence[str],
    pad: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, ImageColumn]]:
    """The episode's ``[T, ...]`` columns and numeric image columns, left-padded by ``pad``
    rows, and its encoded image columns, which are decoded per window, never whole."""
    obs = episode.observation
    lazy: dict[str, ImageColumn] = {}
    numeric_images: dict[str, np.ndarray] = {}
    for name in image_keys:
        if not isinstance(obs, dict) or name not in obs:
            have = sorted(obs) if isinstance(obs, dict) else "a vector observation"
            raise RLDSError(f"image key {name!r} is not in the observation (has {have})", field=name)
        col = obs[name]
        if isinstance(col, ImageColumn):
            lazy[name] = col
        else:
            numeric_images[name] = np.asarray(col)
    if isinstance(obs, dict) and observation_keys is None:
        observation_keys = sorted(k for k, v in obs.items() if isinstance(v, np.ndarray) and k not in image_keys)
    n = len(episode)
    cols: dict[str, np.ndarray] = {
        "observation": features_flat(obs, observation_keys),
        "action": features_flat(episode.action, action_keys),
        "reward": np.asarray(episode.reward, np.float32),
        "discount": np.asarray(episode.discount, np.float32),
        "is_first": np.asarray(episode.is_first, bool),
        "is_last": np.asarray(episode.is_last, bool),
        "is_terminal": np.asarray(episode.is_terminal, bool),
        "mask": np.ones(n, bool),
    }
    for name, extra in episode.extras.items():
        if name in cols:
            raise RLDSError(f"extra column {name!r} would shadow an RLDS field", field=name)
        cols[name] = np.asarray(extra)
    if pad:
        cols = {k: _left_pad(v, pad) for k, v in cols.items()}
        numeric_images = {k: _left_pad(v, pad) for k, v in numeric_images.items()}
    return cols, numeric_images, lazy


def _left_pad(column: np.ndarray, pad: int) -> np.ndarray:
    return np.concatenate([np.zeros((pad, *column.shape[1:]), column.dtype), column])


class _FrameCache:
    """Decoded frames of the current window span, so overlapping windows decode each frame once."""

    def __init__(self, columns: dict[str, ImageColumn], length: int):
        self.columns = columns
        self.length = length
        self.frames: dict[str, dict[int, np.ndarray]] = {name: {} for name in columns}

    def window(self, name: str, start: int) -> np.ndarray:
        col, cache = self.columns[name], self.frames[name]
        for old in [i for i in cache if i < start]:
            del cache[old]
        frames = []
        for i in range(max(start, 0), start + self.length):
            frame = cache.get(i)
            if frame is None:
                frame = cache[i] = np.asarray(col[i].decode(), np.uint8)
            frames.append(frame)
        real = np.stack(frames)
        if start >= 0:
            return real
        out = np.zeros((self.length, *real.shape[1:]), np.uint8)
        out[-start:] = real
        return out


# --------------------------------------------------------------------------- sources


def open_source(source: EpisodeSource, epoch: int = 0) -> Iterator[Episode]:
    """A fresh iterator over the episodes of ``source`` for ``epoch`` (see :data:`EpisodeSource`).

    One-shot iterators (generators) are refused: every epoch, every DataLoader worker and
    every resume has to replay the same stream, so the source must be re-openable.
    """
    if hasattr(source, "iter_episodes"):
        return iter(source.iter_episodes(epoch))
    if isinstance(source, str | os.PathLike):
        return read_episodes(source)
    if isinstance(source, Episode):
        return iter([source])
    if isinstance(source, Iterator):
        raise TypeError("an episode source must be re-iterable: pass a list, a path or a callable, not an iterator")
    if callable(source):
        return iter(source())
    if isinstance(source, Iterable):
        return iter(source)
    raise TypeError(f"not an episode source: {type(source).__name__}")


class _ImaginedCap:
    """The exact prefix rule for imagined data: after every accepted episode,
    ``imagined <= max_fraction * total`` (counted in episodes or in steps)."""

    def __init__(self, max_fraction: float | None, unit: ImaginedUnit):
        if max_fraction is not None and not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_imagined_fraction must be in [0, 1], got {max_fraction}")
        if unit not in ("episodes", "steps"):
            raise ValueError(f"imagined_unit must be 'episodes' or 'steps', got {unit!r}")
        self.max_fraction = max_fraction
        self.unit = unit
        self.total = 0
        self.imagined = 0

    def admit(self, episode: Episode) -> bool:
        size = 1 if self.unit == "episodes" else len(episode)
        imagined = episode.is_imagined
        # (imagined + size) / (total + size) <= max_fraction, with a float tolerance so that an
        # exactly reachable share (29 of 100 at 0.29, where 0.29 * 100 < 29 in floats) is admitted.
        n = self.total + size
        if imagined and self.max_fraction is not None and self.imagined + size > self.max_fraction * n + 1e-9 * n:
            return False
        self.total += size
        self.imagined += size if imagined else 0
        return True


def limit_imagined(
    episodes: Iterable[Episode], max_fraction: float | None, unit: ImaginedUnit = "episodes"
) -> Iterator[Episode]:
    """Drop imagined episodes so that at every point of the stream at most ``max_fraction``
    of what was yielded (episodes, or steps) is imagined. Dropped episodes are not deferred:
    deferring would need an unbounded buffer."""
    cap = _ImaginedCap(max_fraction, unit)
    for ep in episodes:
        if cap.admit(ep):
            yield ep


class MixedSource:
    """Several episode sources interleaved by weighted sampling, with a cap on imagined data.

    For each episode drawn, source ``i`` is picked with probability ``weight_i / sum(weights)``
    (a numpy generator seeded with ``(seed, epoch)``: same seed and epoch, same stream).
    Weights are fractions of *episodes*; sources whose episodes differ in length contribute
    windows in a different ratio.

    ``episodes_per_epoch=None``: the epoch ends as soon as one source runs out, so the ratio
    holds over the whole epoch. With a number, exhausted sources are reopened (cycled) and the
    epoch is exactly that many episodes (fewer only if no source can give an admissible one).

    ``max_imagined_fraction``: imagined episodes (``episode.is_imagined``) are admitted only
    while, counting them, imagined ``<= max_imagined_fraction * total`` holds for the yielded
    stream, in ``imagined_unit`` ("episodes", or "steps", which is also the window share of
    stride-1 Fast windows). The rule holds exactly at every prefix; refused imagined episodes
    are dropped (they still consumed their draw). The cap acts on the stream before
    worker/rank sharding, so it is the same whatever the number of workers.
    """

    def __init__(
        self,
        sources: Sequence[tuple[EpisodeSource, float]],
        seed: int = 0,
        *,
        max_imagined_fraction: float | None = None,
        imagined_unit: ImaginedUnit = "episodes",
        episodes_per_epoch: int | None = None,
    ):
        if not sources:
            raise ValueError("MixedSource needs at least one (source, weight) pair")
        weights = np.asarray([float(w) for _, w in sources], np.float64)
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights.tolist()}")
        if episodes_per_epoch is not None and episodes_per_epoch < 0:
            raise ValueError("episodes_per_epoch must be >= 0")
        _ImaginedCap(max_imagined_fraction, imagined_unit)  # validate now, not at iteration
        self.sources = [s for s, _ in sources]
        self.weights = weights
        self.seed = seed
        self.max_imagined_fraction = max_imagined_fraction
        self.imagined_unit: ImaginedUnit = imagined_unit
        self.episodes_per_epoch = episodes_per_epoch

    def __iter__(self) -> Iterator[Episode]:
        return self.iter_episodes(0)

    def iter_episodes(self, epoch: int = 0) -> Iterator[Episode]:
        rng = np.random.default_rng([self.seed, epoch])
        cap = _ImaginedCap(self.max_imagined_fraction, self.imagined_unit)
        cycle = self.episodes_per_epoch is not None
        limit = self.episodes_per_epoch if cycle else None
        iters: list[Iterator[Episode] | None] = [open_source(s, epoch) for s in self.sources]
        active = [i for i in range(len(iters)) if self.weights[i] > 0]
        # Stall detection when cycling: a source that went through a whole pass while nothing
        # at all was admitted can only offer refused imagined episodes; once every active
        # source is like that, nothing will ever be admitted again.
        admitted = 0
        pass_start = dict.fromkeys(active, 0)
        pass_size = dict.fromkeys(active, 0)
        stalled: set[int] = set()
        while active and (limit is None or admitted < limit):
            w = self.weights[active]
            k = int(np.searchsorted(np.cumsum(w), rng.random() * w.sum(), side="right"))
            pick = active[min(k, len(active) - 1)]
            ep = next(iters[pick], None)  # type: ignore[arg-type]
            if ep is None:
                if not cycle:
                    return
                empty_pass = pass_size[pick] == 0
                if empty_pass or pass_start[pick] == admitted:
                    stalled.add(pick)
                if empty_pass:
                    active.remove(pick)
                elif set(active) <= stalled:
                    return
                else:
                    iters[pick] = open_source(self.sources[pick], epoch)
                    pass_start[pick], pass_size[pick] = admitted, 0
                continue
            pass_size[pick] += 1
            if cap.admit(ep):
                admitted += 1
                stalled.clear()
                yield ep


# --------------------------------------------------------------------------- shuffling


def shuffle_stream(items: Iterable[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A bounded shuffle: hold ``buffer_size`` items, emit a random one as each new item arrives.

    At most ``buffer_size`` items are held (the one handed out is replaced before it is
    yielded), so memory is bounded whatever the stream length. The order depends only on the
    stream and ``rng``: the same seed gives the same order.
    """
    if buffer_size <= 1:
        yield from items
        return
    buf: list[Any] = []
    draws: list[int] = []  # slot indices drawn in blocks: one rng call per 1024 items, not per item
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        if not draws:
            draws = rng.integers(buffer_size, size=1024).tolist()[::-1]
        j = draws.pop()
        out, buf[j] = buf[j], item
        yield out
    for j in rng.permutation(len(buf)).tolist():
        yield buf[j]


def _copy_window(item: Window) -> Window:
    """Own copies of a window's arrays, so a buffered window does not keep its episode alive."""
    out: Window = {}
    for k, v in item.items():
        if isinstance(v, np.ndarray):
            out[k] = v.copy()
        elif isinstance(v, dict):
            out[k] = {n: a.copy() for n, a in v.items()}
        else:
            out[k] = v
    return out


def _to_tensors(item: Window) -> Window:
    assert torch is not None
    out: Window = {}
    for k, v in item.items():
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(v)
        elif isinstance(v, dict):
            out[k] = {n: torch.from_numpy(a) for n, a in v.items()}
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------- torch datasets


class WindowDataset(_TorchIterableDataset):  # type: ignore[misc,valid-type]
    """A torch ``IterableDataset`` of windows streamed from an episode source.

    Episodes are read one at a time from ``source`` (never all loaded). The episode stream of
    an epoch is numbered ``0, 1, 2, ...``; with ``world_size`` DDP ranks and ``W`` DataLoader
    workers there are ``world_size * W`` shards, shard ``rank * W + worker_id`` takes the
    episodes whose number is congruent to it modulo the shard count, so each window is
    produced by exactly one worker of one rank. (Every worker reads the stream and skips the
    episodes of the others: cheap for lists, a re-parse for file sources.)

    Each shard's windows go through a bounded shuffle buffer of ``shuffle_buffer`` windows
    (0 or 1: no shuffling) seeded with ``(seed, epoch, shard)``; buffered windows are copied
    so the buffer holds exactly its windows, not the episodes behind them. Call
    :meth:`set_epoch` before each epoch (as with ``DistributedSampler``) to get a new order;
    with ``persistent_workers=True`` the workers would not see the new epoch.

    Items are :func:`iter_windows` dicts plus ``shard``, ``num_shards`` and ``position`` (the
    item's index in its shard's stream this epoch), numpy arrays unless ``as_tensors``; a
    DataLoader collates them into tensors either way.

    Resuming: pass each consumed batch (or item) to :meth:`mark_consumed`; :meth:`state_dict`
    is then ``{"epoch", "seed", "num_shards", "consumed": {shard: items}, "consumed_total"}``.
    After :meth:`load_state_dict`, iteration replays the same epoch and skips, in every
    shard, the items already consumed, which is exact because each shard's stream is
    deterministic and a DataLoader delivers a shard's items in order (prefetched, unconsumed
    batches are produced again). The skipped windows are regenerated, not stored. Resume
    with the same ``seed``, ``world_size`` and number of workers.

    ``length_s`` is the window length in seconds, turned into steps per episode at its
    control rate (``control_hz`` overrides the episode's rate); ``steps`` fixes the length in
    steps instead. ``stride_s`` / ``stride_steps`` likewise; by default the subclass decides.
    """

    #: Subclass defaults.
    default_length_s: float = DEFAULT_MID_S
    intended_range_s: tuple[float, float] | None = None
    default_pad_start: bool = False
    default_stride_steps: int | None = None  # None: half a window

    def __init__(
        self,
        source: EpisodeSource,
        *,
        length_s: float | None = None,
        steps: int | None = None,
        stride_s: float | None = None,
        stride_steps: int | None = None,
        pad_start: bool | None = None,
        cover_end: bool = True,
        control_hz: float | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        observation_keys: Sequence[str] | None = None,
        action_keys: Sequence[str] | None = None,
        image_keys: Sequence[str] = (),
        as_tensors: bool = False,
    ):
        if torch is None:  # pragma: no cover
            raise ImportError("the window datasets need torch; use iter_windows for the numpy core")
        if isinstance(source, Iterator):
            raise TypeError("an episode source must be re-iterable: pass a list, a path or a callable, not an iterator")
        if steps is not None and length_s is not None:
            raise ValueError("give the window length as length_s (seconds) or steps, not both")
        if stride_steps is not None and stride_s is not None:
            raise ValueError("give the stride as stride_s (seconds) or stride_steps, not both")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if stride_steps is not None and stride_steps < 1:
            raise ValueError(f"stride_steps must be >= 1, got {stride_steps}")
        if length_s is None and steps is None:
            length_s = self.default_length_s
        if length_s is not None:
            window_steps(length_s, 1.0)  # validates
            lo_hi = self.intended_range_s
            if lo_hi is not None and not lo_hi[0] - 1e-9 <= length_s <= lo_hi[1] + 1e-9:
                log.warning(
                    "%s window of %g s is outside its intended range %g-%g s (seconds, not ms?)",
                    type(self).__name__,
                    length_s,
                    *lo_hi,
                )
        if stride_s is not None:
            window_steps(stride_s, 1.0)
        if control_hz is not None:
            window_steps(1.0, control_hz)
        if shuffle_buffer < 0:
            raise ValueError("shuffle_buffer must be >= 0")
        if (
            rank is None
            and world_size is None
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank = 0 if rank is None else int(rank)
        self.world_size = 1 if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")
        self.source = source
        self.length_s = length_s
        self.steps = steps
        self.stride_s = stride_s
        self.stride_steps = (
            stride_steps if stride_steps is not None or stride_s is not None else self.default_stride_steps
        )
        self.pad_start = self.default_pad_start if pad_start is None else pad_start
        self.cover_end = cover_end
        self.control_hz = control_hz
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.observation_keys = observation_keys
        self.action_keys = action_keys
        self.image_keys = tuple(image_keys)
        self.as_tensors = as_tensors
        self.epoch = 0
        self._consumed: dict[int, int] = {}
        self._num_shards: int | None = None

    # -- sizing

    def window_length(self, episode: Episode) -> int:
        """This episode's window length in steps."""
        if self.steps is not None:
            return self.steps
        assert self.length_s is not None
        return window_steps(self.length_s, self.control_hz or episode.control_hz)

    def window_stride(self, episode: Episode) -> int:
        """This episode's stride in steps (default: the subclass's, else half a window)."""
        if self.stride_s is not None:
            return window_steps(self.stride_s, self.control_hz or episode.control_hz)
        if self.stride_steps is not None:
            return self.stride_steps
        return max(1, self.window_length(episode) // 2)

    # -- epochs and resume

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (new shuffle and mixing order, nothing consumed)."""
        self.epoch = int(epoch)
        self._consumed = {}
        self._num_shards = None

    def mark_consumed(self, batch: Window) -> None:
        """Record that the training loop used ``batch`` (a collated batch or one item)."""
        shards = np.asarray(batch["shard"]).reshape(-1).astype(np.int64)
        positions = np.asarray(batch["position"]).reshape(-1).astype(np.int64)
        for s in np.unique(shards).tolist():
            top = int(positions[shards == s].max()) + 1
            self._consumed[s] = max(self._consumed.get(s, 0), top)
        self._num_shards = int(np.asarray(batch["num_shards"]).reshape(-1)[0])

    def state_dict(self) -> dict[str, Any]:
        """The data position: epoch, seed, shard count and items consumed per shard."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "num_shards": self._num_shards,
            "consumed": {int(s): int(n) for s, n in sorted(self._consumed.items())},
            "consumed_total": int(sum(self._consumed.values())),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a position saved by :meth:`state_dict` (JSON round trips are fine)."""
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        self.epoch = int(state["epoch"])
        self._consumed = {int(s): int(n) for s, n in (state.get("consumed") or {}).items()}
        self._num_shards = int(state["num_shards"]) if state.get("num_shards") is not None else None

    # -- iteration

    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker_id, self.world_size * workers

    def episodes(self, shard: int = 0, num_shards: int = 1) -> Iterator[tuple[int, Episode]]:
        """``(episode_index, episode)`` for the episodes of one shard this epoch."""
        for index, ep in enumerate(open_source(self.source, self.epoch)):
            if index % num_shards == shard:
                yield index, ep

    def iter_shard(self, shard: int = 0, num_shards: int = 1) -> Iterator[Window]:
        """One shard's windows, shuffled, numbered, as the workers yield them (no skipping)."""
        windows = (
            w
            for index, ep in self.episodes(shard, num_shards)
            for w in iter_windows(
                ep,
                self.window_length(ep),
                self.window_stride(ep),
                pad_start=self.pad_start,
                cover_end=self.cover_end,
                observation_keys=self.observation_keys,
                action_keys=self.action_keys,
                image_keys=self.image_keys,
                episode_index=index,
            )
        )
        if self.shuffle_buffer > 1:
            rng = np.random.default_rng([self.seed, self.epoch, shard])
            windows = shuffle_stream(map(_copy_window, windows), self.shuffle_buffer, rng)
        for position, item in enumerate(windows):
            item["shard"] = shard
            item["num_shards"] = num_shards
            item["position"] = position
            yield item

    def __iter__(self) -> Iterator[Window]:
        shard, num_shards = self._shard()
        skip = self._consumed.get(shard, 0)
        if self._consumed and self._num_shards is not None and self._num_shards != num_shards:
            raise RuntimeError(
                f"cannot resume: the position was saved with {self._num_shards} shards (world_size x workers), "
                f"this run has {num_shards}"
            )
        items = itertools.islice(self.iter_shard(shard, num_shards), skip, None)
        return map(_to_tensors, items) if self.as_tensors else items


class FastWindowDataset(WindowDataset):
    """Fast-loop (reflex policy) windows: 50-100 ms, default 0.1 s (5 steps at 50 Hz).

    Defaults: a window ends at every step (``stride_steps=1``, ``pad_start=True``), because
    the policy acts at every step, including the first ones of an episode.
    """

    default_length_s = DEFAULT_FAST_S
    intended_range_s = FAST_RANGE_S
    default_pad_start = True
    default_stride_steps = 1


class MidTrajectoryDataset(WindowDataset):
    """Mid-loop (world model) trajectories: 1-10 s, default 2 s (100 steps at 50 Hz).

    Defaults: full windows only, stride half a window (each step seen in about two windows,
    without the 100x redundancy of a stride of one), a last window ending at the last step.
    """

    default_length_s = DEFAULT_MID_S
    intended_range_s = MID_RANGE_S
    default_pad_start = False
    default_stride_steps = None


class SlowDataset(WindowDataset):
    """Slow-loop (task level) windows: minutes, default 120 s (6000 steps at 50 Hz).

    Defaults as for Mid. Most episodes are shorter than two minutes; each of those gives one
    left-padded window holding the whole episode, with ``mask`` marking its steps.
    """

    default_length_s = DEFAULT_SLOW_S
    intended_range_s = SLOW_RANGE_S
    default_pad_start = False
    default_stride_steps = None
