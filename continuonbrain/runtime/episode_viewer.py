"""One episode's steps and camera frames for the Robot Editor's scrubber (``/api/episodes/{view,step,frame}``).

A user opens an image episode listed by ``GET /api/episodes`` and drags a slider through its
frames, seeing each step's action beside the picture. Decisions:

* **Episodes are named by their listing key, never by a path.** A key is looked up among the
  episodes the catalogue found under the server's RLDS directory; a key that is not there
  (``../../etc/passwd`` included) is a 404. No part of a request becomes a file name.
* **Lazy.** Opening an episode reads its steps as the RLDS readers do (images stay
  :class:`~continuonbrain.rlds.LazyImage`); a frame request reads *one* image. A JPEG or PNG
  as stored is sent as is (its header checked first, so a broken file is a clear error, not a
  broken picture); raw pixel arrays are encoded as PNG.
* **Small cache.** The last :data:`CACHED_EPISODES` opened episodes are kept (scrubbing asks
  for many frames of one episode), each re-read when its file or directory changes or goes
  (a quarantine moves it: the next request is a 404).
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.rlds import Episode, ImageColumn, LazyImage, RLDSError
from continuonbrain.rlds.reader import scan_episodes
from continuonbrain.runtime.episodes import EpisodeCatalog

#: Opened episodes kept in memory (steps and encoded-image references, not decoded pixels).
CACHED_EPISODES = 2
#: Numbers of one observation key shown in a step (a long state vector is cut, and says so).
MAX_STEP_VALUES = 64
MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}


class EpisodeNotFound(LookupError):
    """No such episode, step or image key: the API answers 404 with this message."""


class EpisodeUnreadable(ValueError):
    """The episode (or one of its frames) cannot be read: 422, naming the file and field."""


@dataclass
class _Opened:
    episode: Episode
    unit: Path
    mark: tuple[int, int] | None


def image_keys(episode: Episode) -> dict[str, list[int]]:
    """The observation keys that hold camera frames, with their ``[H, W, C]`` (from headers)."""
    obs = episode.observation
    if not isinstance(obs, dict) or len(episode) == 0:
        return {}
    out: dict[str, list[int]] = {}
    for key, col in obs.items():
        if isinstance(col, ImageColumn):
            try:
                out[key] = [int(v) for v in col[0].shape]
            except RLDSError:
                out[key] = []  # the first frame does not decode: listed; its frame request says why
        elif isinstance(col, np.ndarray) and _is_pixels(col):
            out[key] = [int(v) for v in col.shape[1:]]
    return out


def _is_pixels(col: np.ndarray) -> bool:
    """``[T, H, W, C]`` pixels stored as numbers: uint8, or floats (an image written as JSON
    lists reads back as float32), with 1, 3 or 4 channels."""
    return col.dtype.kind in "uf" and col.ndim == 4 and col.shape[-1] in (1, 3, 4) and min(col.shape[1:3]) >= 2


class EpisodeViewer:
    """Steps and frames of the episodes of one :class:`EpisodeCatalog`; thread-safe."""

    def __init__(self, catalog: EpisodeCatalog, cached: int = CACHED_EPISODES):
        self.catalog = catalog
        self.cached = cached
        self._open: OrderedDict[str, _Opened] = OrderedDict()
        self._lock = threading.Lock()

    def describe(self, key: str) -> dict[str, Any]:
        """What the scrubber needs up front: length, rate, image keys and shapes, action size."""
        ep = self._episode(key)
        action = ep.action_vector()
        return {
            "key": key,
            "episode_id": ep.episode_id,
            "steps": len(ep),
            "control_hz": ep.control_hz,
            "image_keys": image_keys(ep),
            "action_dim": int(action.shape[1]) if action.ndim == 2 else 0,
            "action_keys": sorted(ep.action) if isinstance(ep.action, dict) else None,
        }

    def step(self, key: str, t: int) -> dict[str, Any]:
        """Step ``t``: its action (as the trainer flattens it), reward, flags, time, the
        numeric observation values (images left out: ask for the frame) and step metadata."""
        ep = self._episode(key)
        self._check_t(key, ep, t)
        step = ep.steps[t]
        observation: dict[str, Any] = {}
        if isinstance(step.observation, dict):
            for name, value in step.observation.items():
                if isinstance(value, LazyImage) or (isinstance(value, np.ndarray) and _is_pixels(value[None])):
                    continue
                observation[name] = _values(value)
        else:
            observation["observation"] = _values(step.observation)
        return {
            "key": key,
            "t": t,
            "steps": len(ep),
            "action": [float(v) for v in ep.action_vector()[t]],
            "action_raw": {k: _values(v) for k, v in step.action.items()} if isinstance(step.action, dict) else None,
            "reward": step.reward,
            "is_first": step.is_first,
            "is_last": step.is_last,
            "is_terminal": step.is_terminal,
            "timestamp": step.timestamp,
            "observation": observation,
            "step_metadata": {str(k): _plain(v) for k, v in (step.step_metadata or {}).items()},
        }

    def frame(self, key: str, t: int, image_key: str) -> tuple[bytes, str]:
        """``(encoded image, media type)`` of ``image_key`` at step ``t``."""
        ep = self._episode(key)
        self._check_t(key, ep, t)
        obs = ep.observation
        keys = image_keys(ep)
        if not isinstance(obs, dict) or image_key not in keys:
            raise EpisodeNotFound(f"episode {key} has no image {image_key!r} (its images: {sorted(keys) or 'none'})")
        col = obs[image_key]
        source = ep.source
        try:
            if isinstance(col, ImageColumn):
                img = col[t]
                source = str(img.path) if img.path is not None else source
                media = MEDIA_TYPES.get((img.format or "").lower())
                if media is not None:
                    img.shape  # noqa: B018 - reads the header: a broken file fails here, not in the browser
                    return img.encoded(), media
                return _png(img.decode()), "image/png"
            return _png(np.asarray(col[t])), "image/png"
        except RLDSError as err:
            where = err.at(file=source, episode=ep.episode_id, field=f"observation/{image_key}")
            raise EpisodeUnreadable(f"{where} (step {t})") from None

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _check_t(key: str, ep: Episode, t: int) -> None:
        if not 0 <= t < len(ep):
            raise EpisodeNotFound(f"episode {key} has {len(ep)} steps (t = 0..{len(ep) - 1}); t={t} is not one")

    def _episode(self, key: str) -> Episode:
        with self._lock:
            opened = self._open.get(key)
            if opened is not None and _mark(opened.unit) == opened.mark and opened.mark is not None:
                self._open.move_to_end(key)
                return opened.episode
            self._open.pop(key, None)
            opened = self._read(key)
            self._open[key] = opened
            while len(self._open) > self.cached:
                self._open.popitem(last=False)
            return opened.episode

    def _read(self, key: str) -> _Opened:
        entry = self.catalog.entry(key)
        if entry is None:
            raise EpisodeNotFound(f"no episode {key!r} under the server's episode directory (see GET /api/episodes)")
        if not entry["valid"]:
            raise EpisodeUnreadable(f"episode {key} fails validation: {entry['error']}")
        root = self.catalog.rlds_dir
        assert root is not None
        unit = root / entry["unit"]
        # Read only the unit that holds the episode when it is a directory or file of its own;
        # a record in a shard (TFDS) is found by scanning from the root.
        for where in (unit, root) if unit != root else (root,):
            try:
                for result in scan_episodes(where, validate=False):
                    if result.key == key and result.episode is not None:
                        return _Opened(result.episode, unit, _mark(unit))
            except RLDSError:
                continue
        raise EpisodeNotFound(f"episode {key} is no longer under the server's episode directory")


def _mark(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of the episode's file or directory; None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _values(value: Any) -> Any:
    """A step value as JSON numbers (a long array cut to :data:`MAX_STEP_VALUES`, marked)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        return str(value)[:200]
    flat = arr.reshape(-1)
    out: list[Any] = [float(v) if arr.dtype.kind == "f" else int(v) for v in flat[:MAX_STEP_VALUES]]
    if flat.size > MAX_STEP_VALUES:
        out.append(f"… {flat.size - MAX_STEP_VALUES} more")
    return out


def _plain(value: Any) -> Any:
    """A step-metadata value as JSON (TFDS metadata may hold numpy scalars, arrays or bytes)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")[:200]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple | np.ndarray):
        return _values(value)
    return str(value)[:200]


def _png(pixels: np.ndarray) -> bytes:
    """Pixels as PNG. Floats are taken as 0-255 values, or as 0-1 when none exceeds 1 (both
    conventions are in use), clipped to that range."""
    from PIL import Image

    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        arr = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
