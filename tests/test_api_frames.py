"""Camera frames in ``/api/infer`` against a real server: base64 PNG (lossless) and nested lists
of the same frame give the same action, a base64 JPEG gives exactly what its decoded pixels
give, and bad frames (too long, not base64, not JPEG/PNG, another size, a decompression bomb)
are answered with the key, the shapes and the limit named."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from conftest import TINY_CAMERA_MODEL, live_server
from PIL import Image

from continuonbrain.hope import HopeBrain, HopeConfig
from continuonbrain.models.store import PromotionStore
from continuonbrain.runtime.api import create_app
from continuonbrain.runtime.limits import ServerLimits
from continuonbrain.sim.drive2d import Drive2DEnv

KEY = "cam/image_array"
SHAPE = (120, 160, 3)


def encode(frame: np.ndarray, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format=fmt, **options)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def car_store(tmp_path_factory) -> Path:
    """A store whose current is a freshly initialised camera brain (frame -> action plumbing)."""
    tmp = tmp_path_factory.mktemp("frames")
    cfg = HopeConfig(
        obs_dim=1, state_keys=["enc/speed"], image_keys=[KEY], image_shapes={KEY: list(SHAPE)}, **TINY_CAMERA_MODEL
    )
    torch.manual_seed(0)
    files = HopeBrain.build(cfg).save(tmp / "brain")
    store = PromotionStore(tmp / "models")
    components = [f.stem for f in files if f.suffix == ".safetensors"]
    store.write_slot("candidate", files, components=components, kind="hope-seed")
    store.promote({"passed": True, "reason": "test"})
    return tmp / "models"


@pytest.fixture(scope="module")
def client(car_store: Path, tmp_path_factory):
    run_root = tmp_path_factory.mktemp("runs")
    app = create_app(car_store, run_root=run_root, limits=ServerLimits(max_image_b64_bytes=64 << 10))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    env = Drive2DEnv()
    first = env.reset(seed=4)[0][KEY]
    return [first, *(env.step(np.array([0.3, 0.6], np.float32))[0][KEY] for _ in range(2))]


def act(client: httpx.Client, image: Any, session: str = "cam") -> list[float]:
    """One fresh-state act (``reset``), so equal inputs must give equal actions."""
    body = {"observation": {KEY: image, "enc/speed": [1.0]}, "session_id": session, "reset": True}
    r = client.post("/api/infer", json=body)
    assert r.status_code == 200, r.text
    return r.json()["action"]


def test_png_jpeg_and_nested_lists_of_one_frame(client: httpx.Client, frames: list[np.ndarray]) -> None:
    frame = frames[0]
    lists = act(client, frame.tolist())
    png = act(client, b64(encode(frame, "PNG")))
    assert png == lists  # lossless: the very same pixels
    assert act(client, "data:image/png;base64," + b64(encode(frame, "PNG"))) == lists  # a browser's data URL
    assert act(client, base64.encodebytes(encode(frame, "PNG")).decode()) == lists  # `base64` CLI: 76-char lines

    jpeg_bytes = encode(frame, "JPEG", quality=95)
    jpeg = act(client, b64(jpeg_bytes))
    decoded = np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"))
    assert jpeg == act(client, decoded.tolist())  # exactly what Pillow decodes the JPEG to
    assert np.abs(decoded.astype(int) - frame.astype(int)).mean() < 3  # ... which is close to the frame
    assert len(b64(jpeg_bytes)) < len(str(frame.tolist())) / 5  # why a car sends JPEG

    # Not a vacuous equality: other frames give other actions.
    others = [act(client, b64(encode(f, "PNG"))) for f in frames[1:]]
    assert any(not np.allclose(o, lists, atol=1e-6) for o in others)


def detail(r: httpx.Response) -> str:
    return str(r.json()["detail"])


def post(client: httpx.Client, image: Any, **extra: Any) -> httpx.Response:
    return client.post("/api/infer", json={"observation": {KEY: image, "enc/speed": [1.0], **extra}})


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (valid CRC) over one tiny compressed row:
    a decompression bomb's shape. Decoding it would need width x height x 3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_frames_are_named(client: httpx.Client, frames: list[np.ndarray]) -> None:
    frame = frames[0]
    r = post(client, "this is not base64!")
    assert r.status_code == 422 and KEY in detail(r) and "base64" in detail(r)

    r = post(client, b64(b"GIF89a" + b"\0" * 40))
    assert r.status_code == 422 and KEY in detail(r) and "not a decodable JPEG or PNG" in detail(r)

    r = post(client, b64(encode(frame[::2, ::2], "PNG")))  # a camera set to 80x60
    assert r.status_code == 422 and KEY in detail(r)
    assert "[60, 80, 3]" in detail(r) and "[120, 160, 3]" in detail(r)

    r = post(client, b64(png_claiming(4000, 3000)))  # 36 MB of pixels in 100 bytes: refused from its header
    assert r.status_code == 422 and "[3000, 4000, 3]" in detail(r) and "[120, 160, 3]" in detail(r)
    r = post(client, b64(png_claiming(60_000, 60_000)))  # over Pillow's own bomb bound
    assert r.status_code == 422 and "decompression-bomb" in detail(r) and "[120, 160, 3]" in detail(r)

    r = post(client, b64(encode(np.dstack([frame, frame[..., :1]]), "PNG")))  # RGBA: not silently dropped
    assert r.status_code == 422 and "'RGBA'" in detail(r)

    noise = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
    big = b64(encode(noise, "PNG"))  # ~77 KB of base64: over this server's 64 KiB bound
    r = post(client, big)
    assert r.status_code == 413 and KEY in detail(r) and "max_image_b64_bytes=65536" in detail(r)

    over = frame.astype(int).tolist()
    over[0][0][0] = 300
    r = post(client, over)
    assert r.status_code == 422 and "0-255" in detail(r)

    r = post(client, b64(encode(frame, "PNG")), **{"enc/speed": "fast"})
    assert r.status_code == 422 and "'enc/speed'" in detail(r) and "image keys" in detail(r)


# --- the decoder on its own ------------------------------------------------------------------


def test_palette_pngs_expand_and_gray_frames_fit_one_channel_models() -> None:
    from continuonbrain.runtime.frames import as_frame

    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[:, :6] = [200, 30, 10]
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)  # exact: two colours
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "P"
    np.testing.assert_array_equal(as_frame("cam", b64(buf.getvalue()), (8, 12, 3), max_chars=1 << 16), rgb)

    gray = np.arange(96, dtype=np.uint8).reshape(8, 12)
    got = as_frame("cam", b64(encode(gray, "PNG")), (8, 12, 1), max_chars=1 << 16)
    assert got.shape == (8, 12, 1) and got.dtype == np.uint8 and (got[..., 0] == gray).all()
    assert (as_frame("cam", gray.tolist(), (8, 12, 1), max_chars=0)[..., 0] == gray).all()  # 2-D lists too


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ((np.ones((8, 12, 3)) * 0.5).tolist(), "whole numbers 0-255"),  # a frame scaled to [0, 1]
        (np.ones((8, 12, 3), bool).tolist(), "must be numbers"),
        ([[1, 2], [3]], "not an image array"),  # ragged
        ([[[-1, 0, 0]] * 12] * 8, "within 0-255"),
        (np.zeros((8, 12, 4), np.uint8), "[8, 12, 4]"),
    ],
)
def test_array_frames_that_are_not_pixels_are_named(value: Any, message: str) -> None:
    from continuonbrain.runtime.frames import FrameError, as_frame

    with pytest.raises(FrameError, match=r"observation\['cam'\]") as err:
        as_frame("cam", value, (8, 12, 3), max_chars=0)
    assert message in str(err.value) and err.value.status_code == 422
