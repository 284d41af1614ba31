"""Camera frames as a served brain takes them: ``uint8 [H, W, C]`` of the model's image shape.

A car sends its frame to ``/api/infer`` as a base64 JPEG or PNG string (a 160x120 JPEG is
~10 KB of base64, the same frame as nested JSON lists ~200 KB of text that the server must
parse number by number) or as nested lists of numbers; an in-process caller (the Donkeycar
part) has a numpy array. All three become the same ``uint8`` array here, checked against the
shape the served model was trained on, so a wrong camera setting is a clear error naming the
key and both shapes rather than a confusing one from inside the model.

Bounds (why): the base64 text is limited by length *before* it is decoded
(:class:`FrameTooLarge`, 413), and the encoded image's width and height, read from its header
by Pillow without decoding the pixels, must equal the model's before any pixel is decoded: a
small file that claims 60,000 x 60,000 pixels (a decompression bomb) is refused after reading
a few header bytes. Only JPEG and PNG are accepted (what cameras and ``cv2.imencode`` write);
palette PNGs are expanded losslessly, any other pixel layout that does not match the model's
channels is refused rather than converted (nothing is dropped silently, e.g. an alpha channel).

The decoded pixels are exactly Pillow's decoding of the bytes, so a PNG (lossless) gives the
same action as the nested lists of the same frame; a JPEG gives what its lossy pixels give.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MAX_IMAGE_B64_BYTES",
    "FrameError",
    "FrameTooLarge",
    "as_frame",
    "decode_base64_image",
    "prepare_frames",
]

#: Default bound on one base64 image string (characters): a 640x480 JPEG at quality 95 is
#: ~200 KB of base64, a 160x120 PNG at most ~80 KB.
DEFAULT_MAX_IMAGE_B64_BYTES = 512 << 10

#: ``data:image/png;base64,`` and the like, as a browser's ``canvas.toDataURL`` writes it.
_DATA_URL = re.compile(r"^data:image/(?:png|jpeg|jpg);base64,", re.IGNORECASE)
_FORMATS = frozenset({"JPEG", "PNG"})
#: Pillow modes accepted per channel count (palette images are expanded: that loses nothing).
_MODES: dict[int, tuple[str, ...]] = {1: ("L",), 3: ("RGB",)}


class FrameError(ValueError):
    """An image value that cannot be the model's frame; the API answers ``status_code``."""

    status_code = 422


class FrameTooLarge(FrameError):
    """A base64 image string over the size bound (413: the request is too large for this route)."""

    status_code = 413


def _where(key: str) -> str:
    return f"observation[{key!r}]"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def _check_shape(key: str, got: tuple[int, ...], expected: tuple[int, int, int], what: str) -> None:
    if tuple(got) != tuple(expected):
        raise FrameError(
            f"{_where(key)}: the {what} is {_shape_text(got)} (H, W, C); "
            f"the model takes images of {_shape_text(expected)}"
        )


def decode_base64_image(key: str, text: str, shape: tuple[int, int, int], *, max_chars: int) -> np.ndarray:
    """A base64 JPEG/PNG string (optionally a ``data:image/...;base64,`` URL) -> ``uint8 [H, W, C]``.

    Raises :class:`FrameTooLarge` when ``text`` is longer than ``max_chars``, and
    :class:`FrameError` naming ``key`` for anything else: not base64, not a JPEG or PNG, a
    size or pixel layout other than ``shape``, or bytes that do not decode.
    """
    from PIL import Image, UnidentifiedImageError

    if len(text) > max_chars:
        raise FrameTooLarge(
            f"{_where(key)}: the base64 image is {len(text)} characters, more than the server's "
            f"max_image_b64_bytes={max_chars}"
        )
    # Line breaks are what `base64` writes without -w0 (every 76 characters): not an error.
    payload = "".join(_DATA_URL.sub("", text, count=1).split())
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError(f"{_where(key)}: a string image value must be base64 JPEG or PNG bytes ({exc})") from None
    h, w, c = (int(n) for n in shape)
    try:
        with Image.open(io.BytesIO(data), formats=sorted(_FORMATS)) as img:
            # Header only so far: refuse a wrong (or bomb-sized) image before decoding any pixel.
            width, height = img.size
            channels = {"L": 1, "P": c, "RGB": 3, "RGBA": 4, "LA": 2}.get(img.mode)
            if (height, width) != (h, w):
                shown = (height, width, channels) if channels is not None else (height, width)
                _check_shape(key, shown, (h, w, c), f"{img.format} image")
            if img.mode == "P":
                img = img.convert(_MODES.get(c, ("RGB",))[0])
            if img.mode not in _MODES.get(c, ()):
                raise FrameError(
                    f"{_where(key)}: the {img.format} image has pixel mode {img.mode!r}; the model takes "
                    f"{c}-channel images ({' or '.join(_MODES.get(c, ('?',)))})"
                )
            img.load()
            arr = np.array(img, dtype=np.uint8)  # a writable copy (torch refuses read-only buffers)
    except FrameError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own bound, hit before the header is ours
        raise FrameError(
            f"{_where(key)}: the image's header claims a decompression-bomb size ({exc}); "
            f"the model takes images of {_shape_text((h, w, c))}"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise FrameError(
            f"{_where(key)}: the base64 bytes are not a decodable JPEG or PNG image ({type(exc).__name__}: {exc})"
        ) from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    _check_shape(key, arr.shape, (h, w, c), "decoded image")
    return arr


def as_frame(key: str, value: Any, shape: tuple[int, int, int], *, max_chars: int) -> np.ndarray:
    """Any accepted image value (base64 string, nested lists, numpy array) -> ``uint8 [H, W, C]``
    of ``shape``; :class:`FrameError` names ``key`` and both shapes when it does not fit.

    Numbers must be integers in ``[0, 255]`` (a float array scaled to ``[0, 1]`` would otherwise
    become an all-black frame without a word). A 2-D value is a one-channel image.
    """
    if isinstance(value, str):
        return decode_base64_image(key, value, shape, max_chars=max_chars)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        arr = value
    else:
        try:
            raw = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise FrameError(f"{_where(key)}: not an image array ({exc})") from None
        if raw.dtype.kind not in "iuf":
            raise FrameError(f"{_where(key)}: an image must be numbers (nested lists H x W x C) or a base64 string")
        if raw.size:
            if raw.dtype.kind == "f" and not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
                raise FrameError(f"{_where(key)}: image values must be whole numbers 0-255")
            lo, hi = raw.min(), raw.max()
            if lo < 0 or hi > 255:
                raise FrameError(f"{_where(key)}: image values must be within 0-255, got {lo}..{hi}")
        arr = raw.astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    _check_shape(key, arr.shape, shape, "image")
    return arr


def prepare_frames(
    observation: Mapping[str, Any], image_shapes: Mapping[str, tuple[int, int, int]], *, max_chars: int
) -> dict[str, Any]:
    """The observation with every image key's value as ``uint8 [H, W, C]`` (the other values as
    given: the brain checks them). A string under a key that is not one of the model's image
    keys is a :class:`FrameError` naming the key and the image keys."""
    out = dict(observation)
    for key, value in observation.items():
        shape = image_shapes.get(key)
        if shape is not None:
            out[key] = as_frame(key, value, shape, max_chars=max_chars)
        elif isinstance(value, str):
            keys = sorted(image_shapes) or "none"
            raise FrameError(f"{_where(key)}: a string is accepted only for the model's image keys ({keys})")
    return out
