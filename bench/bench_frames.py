"""``/api/infer`` with a 160x120 camera frame: base64 JPEG, base64 PNG or nested JSON lists.

    python bench/bench_frames.py [--requests 300]

``continuonbrain serve`` runs in its own process on loopback, serving the shipped config's
model (``continuonbrain/configs/pi5-hope-v1.json``) for a camera-only car, untrained (latency
does not depend on the weights' values). One keep-alive client (``http.client``) sends the
same drive2d frames in each encoding, ``--requests`` calls each (a fresh state every call),
the encodings interleaved call by call so that drift in the machine's load falls on all alike.
Reports the request body size, p50/p99 of the round trip and of the server's ``latency_us``
(the act alone). Writes ``bench/results/bench_frames.json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain.hope import HopeBrain, HopeConfig  # noqa: E402
from continuonbrain.models.store import PromotionStore  # noqa: E402
from continuonbrain.sim.drive2d import Drive2DEnv  # noqa: E402

KEY = "cam/image_array"


def camera_store(root: Path) -> None:
    model = json.loads((REPO / "continuonbrain/configs/pi5-hope-v1.json").read_text())["model"]
    cfg = HopeConfig(
        **{**model, "obs_dim": 0, "action_dim": 2, "image_keys": [KEY], "image_shapes": {KEY: [120, 160, 3]}}
    )
    torch.manual_seed(0)
    files = HopeBrain.build(cfg).save(root / "brain")
    store = PromotionStore(root / "models")
    components = [f.stem for f in files if f.suffix == ".safetensors"]
    store.write_slot("candidate", files, components=components, kind="hope-seed")
    store.promote({"passed": True, "reason": "bench"})


def encodings(frame: np.ndarray) -> dict[str, object]:
    def b64(fmt: str, **kw: object) -> str:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format=fmt, **kw)
        return base64.b64encode(buf.getvalue()).decode()

    return {"jpeg_q95_base64": b64("JPEG", quality=95), "png_base64": b64("PNG"), "nested_lists": frame.tolist()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen) -> None:
    """Until the server listens on ``port``; exits if it died or did not start in 120 s."""
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start") from None
            time.sleep(0.2)


@contextlib.contextmanager
def serving(root: Path, *extra: str) -> Iterator[int]:
    """``continuonbrain serve`` of the store ``root/models`` (runs in ``root/runs``, ``extra``
    arguments after) in its own process on a free loopback port, for the block -> the port.
    Shared with ``bench_live_car.py``: both measure the server as a robot's client sees it."""
    port = free_port()
    cmd = [sys.executable, "-m", "continuonbrain", "serve", "--model-root", str(root / "models")]
    cmd += ["--port", str(port), "--run-root", str(root / "runs"), *extra]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        wait_for_port(port, server)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    env = Drive2DEnv()
    frames = [env.reset(seed=0)[0][KEY]] + [env.step(np.array([0.1, 0.6], np.float32))[0][KEY] for _ in range(9)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        camera_store(root)
        with serving(root) as port:
            bodies = {
                name: [
                    json.dumps({"observation": {KEY: e[name]}, "session_id": "car", "reset": True}).encode()
                    for e in map(encodings, frames)
                ]
                for name in ("jpeg_q95_base64", "png_base64", "nested_lists")
            }
            conn = http.client.HTTPConnection("127.0.0.1", port)
            rtt: dict[str, list[float]] = {n: [] for n in bodies}
            act: dict[str, list[float]] = {n: [] for n in bodies}
            headers = {"Content-Type": "application/json"}
            for i in range(args.requests + 20):  # the first 20 rounds warm up
                for name, items in bodies.items():
                    t0 = time.perf_counter()
                    conn.request("POST", "/api/infer", items[i % len(items)], headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    dt = (time.perf_counter() - t0) * 1e3
                    if resp.status != 200:
                        raise SystemExit(f"{name}: {resp.status} {data[:300]!r}")
                    if i >= 20:
                        rtt[name].append(dt)
                        act[name].append(json.loads(data)["latency_us"] / 1e3)
            conn.close()
    load = os.getloadavg()[0]
    result = {
        "command": " ".join(["python", *sys.argv]),
        "requests": args.requests,
        "load_1m": round(load, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "encodings": {
            name: {
                "body_bytes": int(np.mean([len(b) for b in bodies[name]])),
                "round_trip_p50_ms": round(float(np.percentile(rtt[name], 50)), 2),
                "round_trip_p99_ms": round(float(np.percentile(rtt[name], 99)), 2),
                "act_p50_ms": round(float(np.percentile(act[name], 50)), 2),
                "act_p99_ms": round(float(np.percentile(act[name], 99)), 2),
            }
            for name in bodies
        },
    }
    print("| frame as | body | round trip p50 / p99 ms | act p50 / p99 ms |\n|---|---|---|---|")
    for name, r in result["encodings"].items():
        print(
            f"| {name} | {r['body_bytes'] / 1000:.1f} KB | {r['round_trip_p50_ms']} / {r['round_trip_p99_ms']} "
            f"| {r['act_p50_ms']} / {r['act_p99_ms']} |"
        )
    print(f"\nload average {load:.1f} on {os.cpu_count()} cores")
    out = REPO / "bench" / "results" / "bench_frames.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
