"""Content checks on one episode: what parses but must not reach a trainer.

The readers already reject what cannot be parsed (bad JSON, CRC mismatches, ragged shapes,
wrong types). :func:`check_episode` adds NaN or Inf values, timestamps that go backwards,
``is_first``/``is_last`` flags that contradict their position (two episodes glued together),
images that do not decode, metadata that breaks the schema, and actions that contradict the
action space the metadata declares. The readers run it on every episode they yield, the
writers on every episode before writing it, ``rlds validate`` (:mod:`continuonbrain.rlds.validate`)
with ``decode_images=True``.
"""

from __future__ import annotations

import math

import numpy as np

from continuonbrain.rlds.episode import Episode, Features, ImageColumn
from continuonbrain.rlds.errors import RLDSError
from continuonbrain.rlds.schema import BoxSpace, check_metadata


def check_episode(episode: Episode, decode_images: bool = False) -> None:
    """Raise :class:`RLDSError` (naming step and field) for the first content problem.

    Images: the header is always checked (cheap); ``decode_images=True`` decodes every
    frame, which ``rlds validate`` does and the training read path does not.
    """
    metadata = check_metadata(episode.metadata)
    n = len(episode)
    if n == 0:
        raise RLDSError("episode has no steps", field="steps")
    _check_features(episode.observation, "observation", decode_images)
    _check_features(episode.action, "action", decode_images)
    if metadata.capabilities.action_space is not None:
        _check_action_space(episode.action, metadata.capabilities.action_space)
    _check_finite(episode.reward, "reward")
    _check_finite(episode.discount, "discount")
    if not episode.is_first[0]:
        raise RLDSError("the first step must have is_first=true", step=0, field="is_first")
    extra_first = np.flatnonzero(episode.is_first[1:])
    if len(extra_first):
        raise RLDSError("is_first=true after the first step", step=int(extra_first[0]) + 1, field="is_first")
    if not episode.is_last[-1]:
        raise RLDSError("the last step must have is_last=true", step=n - 1, field="is_last")
    early_last = np.flatnonzero(episode.is_last[:-1])
    if len(early_last):
        raise RLDSError("is_last=true before the last step", step=int(early_last[0]), field="is_last")
    if episode.timestamp is not None:
        _check_finite(episode.timestamp, "timestamp")
        back = np.flatnonzero(np.diff(episode.timestamp) < 0)
        if len(back):
            i = int(back[0]) + 1
            raise RLDSError(
                f"timestamp goes backwards ({episode.timestamp[i]:.6f} s after {episode.timestamp[i - 1]:.6f} s)",
                step=i,
                field="timestamp",
            )


def _check_features(features: Features, name: str, decode_images: bool) -> None:
    columns = features.items() if isinstance(features, dict) else [(None, features)]
    for key, col in columns:
        fname = name if key is None else f"{name}.{key}"
        if isinstance(col, ImageColumn):
            for i, img in enumerate(col):
                try:
                    img.decode() if decode_images else _check_image_header(img.encoded())
                except RLDSError as err:
                    raise err.at(step=i, field=fname) from None
        else:
            _check_finite(col, fname)


_SPACE = "metadata.capabilities.action_space"


def _check_action_space(action: Features, space: BoxSpace) -> None:
    """Vector actions must have the declared shape and stay within the declared bounds (a
    dict action has no one Box to compare with). The bounds are compared in the actions'
    own dtype: a float32 action clipped to 0.1 is float32(0.1), above the float64 0.1."""
    if isinstance(action, dict) or action.dtype.kind not in "fiu":
        return
    shape = list(action.shape[1:])
    if space.shape is not None and space.shape != shape:
        raise RLDSError(f"declares shape {space.shape}, the actions have shape {shape}", field=f"{_SPACE}.shape")
    flat = action.reshape(len(action), -1)
    dtype = flat.dtype if flat.dtype.kind == "f" else np.float64
    low = _bound(space.low, flat.shape[1], -math.inf, "low").astype(dtype)
    high = _bound(space.high, flat.shape[1], math.inf, "high").astype(dtype)
    if (low > high).any():
        i = int(np.flatnonzero(low > high)[0])
        raise RLDSError(f"low {low[i]} is above high {high[i]} at index {i}", field=_SPACE)
    for name, outside, bound in (("low", flat < low, low), ("high", flat > high, high)):
        if outside.any():
            step, i = (int(x) for x in np.argwhere(outside)[0])
            raise RLDSError(
                f"value {flat[step, i]} at index {i} is {'below' if name == 'low' else 'above'} the declared "
                f"{name} {bound[i]} ({_SPACE}.{name})",
                step=step,
                field="action",
            )


def _bound(value: float | list[float | None] | None, size: int, unbounded: float, name: str) -> np.ndarray:
    """A declared bound as one float per action element (``null``: unbounded)."""
    values = value if isinstance(value, list) else [value] * size
    if len(values) != size:
        raise RLDSError(f"declares {len(values)} values for an action of {size}", field=f"{_SPACE}.{name}")
    out = np.array([unbounded if v is None else v for v in values], dtype=np.float64)
    if np.isnan(out).any():
        raise RLDSError("a bound is NaN", field=f"{_SPACE}.{name}")
    return out


_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM", b"RIFF")


def _check_image_header(data: bytes) -> None:
    """The cheap check of the read path: the bytes start like an image file. Full decoding
    (``decode_images=True``) is what ``rlds validate`` does."""
    if not data.startswith(_IMAGE_MAGIC):
        raise RLDSError(f"image does not decode (not a PNG/JPEG/GIF/BMP/WebP file, starts with {data[:8]!r})")


def _check_finite(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        value = arr[tuple(bad)]
        where = f" at index {tuple(int(b) for b in bad[1:])}" if len(bad) > 1 else ""
        raise RLDSError(f"value is {value}{where}", step=int(bad[0]), field=name)
